//! Importers: turn the owner's files into records (§3 of `docs/sealed-format.md`). The
//! exporters that turn records back into files are the owner's (`blindfold-owner`): the
//! trusted zone reads files, it never writes plaintext to one.
//!
//! Every importer validates its whole input before the first byte is sealed where it
//! can do so cheaply (IDX and NPY headers and sizes, a full first pass over CSV), so a
//! malformed input fails with nothing written.

use std::fs;
use std::path::{Path, PathBuf};

use blindfold_format::Schema;
use serde_json::Value;

use crate::error::{Error, Result};

pub mod csv;
pub mod idx;
pub mod npy;
pub mod raw;

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Decide from the input (a folder or IDX magic: IDX; `.csv`; `.npy`).
    Auto,
    /// IDX (MNIST-style), plain or gzip.
    Idx,
    /// CSV with a header row.
    Csv,
    /// NumPy `.npy`.
    Npy,
    /// Any file, as opaque bytes.
    Raw,
}

/// Options of the importers.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// A labels file (IDX labels for an IDX images file, a 1-D `.npy` for a `.npy`).
    pub labels: Option<PathBuf>,
    /// CSV: the label column's name (default `label`; absent column: no labels).
    pub label_column: Option<String>,
    /// Split name for single-file inputs (default from the file name, else `data`).
    pub split: Option<String>,
}

/// Fills buffers with consecutive records.
pub trait RecordSource: Send {
    /// Fills `buf` (a whole number of records) with the next records.
    fn read_records(&mut self, buf: &mut [u8]) -> Result<()>;
}

/// One split of an import.
pub struct SplitSource {
    /// Split name.
    pub name: String,
    /// Number of records.
    pub records: u64,
    /// Where its records come from.
    pub source: Box<dyn RecordSource>,
}

/// An input ready to seal.
pub struct Import {
    /// Schema of every record.
    pub schema: Schema,
    /// Splits in order.
    pub splits: Vec<SplitSource>,
    /// Description of the original files, sealed into the manifest.
    pub metadata: Value,
}

impl Import {
    /// Total plaintext bytes.
    pub fn total_bytes(&self) -> u64 {
        self.splits.iter().map(|s| s.records).sum::<u64>() * self.schema.record_size() as u64
    }
}

/// Reads `input` with the given format.
pub fn import(input: &Path, format: Format, opts: &ImportOptions) -> Result<Import> {
    let format = match format {
        Format::Auto => detect(input)?,
        f => f,
    };
    match format {
        Format::Idx => idx::import(input, opts),
        Format::Csv => csv::import(input, opts),
        Format::Npy => npy::import(input, opts),
        Format::Raw => raw::import(input, opts),
        Format::Auto => unreachable!("resolved above"),
    }
}

fn detect(input: &Path) -> Result<Format> {
    let meta = fs::metadata(input).map_err(|e| Error::io(input, e))?;
    if meta.is_dir() {
        return Ok(Format::Idx);
    }
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if name.ends_with(".csv") {
        return Ok(Format::Csv);
    }
    if name.ends_with(".npy") {
        return Ok(Format::Npy);
    }
    if name.contains("idx") && (name.contains("-ubyte") || name.ends_with(".gz")) {
        return Ok(Format::Idx);
    }
    Err(Error::BadInput(format!(
        "cannot tell the format of {}: pass --format idx|csv|npy, or --format raw to seal it as opaque bytes",
        input.display()
    )))
}

/// The original file name of `path`, checked to be a plain name.
pub(crate) fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| Error::BadInput(format!("{}: not a file name in UTF-8", path.display())))
}

/// A split name from a free-form prefix.
pub(crate) fn split_name(prefix: &str) -> String {
    let s: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    match s.as_str() {
        "" => "data".into(),
        "t10k" => "test".into(),
        _ => s,
    }
}

/// Swaps every element of `data` between big- and little-endian.
pub fn swap_bytes(data: &mut [u8], size: usize) {
    if size > 1 {
        for e in data.chunks_exact_mut(size) {
            e.reverse();
        }
    }
}

/// Fuzz entry point for the IDX and NPY header parsers (the first byte picks which).
/// Must never panic.
pub fn fuzz(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which & 1 == 0 {
        let _ = idx::parse(rest, "fuzz");
    } else {
        let _ = npy::read_header(&mut &rest[..], "fuzz");
    }
}
