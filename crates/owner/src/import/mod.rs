//! Importers: turn the owner's files into records (§3 of `docs/sealed-format.md`), and
//! exporters that turn records back into the original files for `blindfold open`.
//!
//! Every importer validates its whole input before the first byte is sealed where it
//! can do so cheaply (IDX and NPY headers and sizes, a full first pass over CSV), so a
//! malformed input fails with nothing written.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use blindfold_format::{DType, Schema};
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

/// Records held in memory: features (little-endian) and optional labels, interleaved
/// on the way out.
pub(crate) struct Interleave {
    pub features: Vec<u8>,
    pub feature_size: usize,
    pub labels: Option<Vec<u8>>,
    pub label_size: usize,
    pub next: usize,
}

impl RecordSource for Interleave {
    fn read_records(&mut self, buf: &mut [u8]) -> Result<()> {
        let rs = self.feature_size + self.label_size;
        let n = buf.len() / rs;
        for (k, rec) in buf.chunks_exact_mut(rs).enumerate() {
            let i = self.next + k;
            let f = self
                .features
                .get(i * self.feature_size..(i + 1) * self.feature_size)
                .ok_or_else(|| Error::Bug("read past the last record".into()))?;
            rec[..self.feature_size].copy_from_slice(f);
            if let Some(l) = &self.labels {
                rec[self.feature_size..]
                    .copy_from_slice(&l[i * self.label_size..(i + 1) * self.label_size]);
            }
        }
        self.next += n;
        Ok(())
    }
}

/// Swaps every element of `data` between big- and little-endian.
pub(crate) fn swap_bytes(data: &mut [u8], size: usize) {
    if size > 1 {
        for e in data.chunks_exact_mut(size) {
            e.reverse();
        }
    }
}

/// Receives the records of each split, in order, and writes the original files.
pub trait Exporter {
    /// Starts a split.
    fn begin_split(&mut self, out: &mut OutputSet, split: &str, records: u64) -> Result<()>;
    /// Writes the next records of the current split.
    fn records(&mut self, out: &mut OutputSet, data: &[u8]) -> Result<()>;
    /// Ends the current split.
    fn end_split(&mut self, out: &mut OutputSet) -> Result<()>;
}

/// The exporter for a sealed dataset's metadata.
pub fn exporter(metadata: &Value, schema: &Schema) -> Result<Box<dyn Exporter>> {
    let importer = metadata
        .get("importer")
        .and_then(Value::as_str)
        .unwrap_or("");
    match importer {
        "raw" => raw::exporter(metadata, schema),
        "idx" => idx::exporter(metadata, schema),
        "npy" => npy::exporter(metadata, schema),
        "csv" => csv::exporter(metadata, schema),
        other => Err(Error::BadInput(format!(
            "this dataset was sealed by an importer this build does not know ({other:?})"
        ))),
    }
}

pub(crate) fn meta_str<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadInput(format!("sealed metadata lacks {key:?}")))
}

/// A set of output files, written under temporary names in one folder and renamed into
/// place together by [`OutputSet::commit`]. Dropped without a commit, it deletes them.
pub struct OutputSet {
    dir: PathBuf,
    force: bool,
    files: Vec<(
        tempfile::NamedTempFile,
        std::io::BufWriter<fs::File>,
        PathBuf,
    )>,
}

impl OutputSet {
    /// Output into `dir` (created if missing). Existing files are only replaced when
    /// `force` is set.
    pub fn new(dir: &Path, force: bool) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(OutputSet {
            dir: dir.to_owned(),
            force,
            files: vec![],
        })
    }

    /// Creates an output file named `name` (a plain file name); returns its handle.
    pub fn create(&mut self, name: &str) -> Result<usize> {
        if name.is_empty()
            || name.contains('/')
            || name.contains('\\')
            || name == "."
            || name == ".."
        {
            return Err(Error::BadInput(format!(
                "refusing to write a file named {name:?}"
            )));
        }
        let target = self.dir.join(name);
        if !self.force && target.exists() {
            return Err(Error::OutputExists(target.display().to_string()));
        }
        if self.files.iter().any(|(_, _, t)| *t == target) {
            return Err(Error::BadInput(format!("two outputs named {name:?}")));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".blindfold-tmp-")
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        let f = tmp.reopen().map_err(|e| Error::io(tmp.path(), e))?;
        self.files
            .push((tmp, std::io::BufWriter::with_capacity(1 << 20, f), target));
        Ok(self.files.len() - 1)
    }

    /// Appends to output `h`.
    pub fn write(&mut self, h: usize, data: &[u8]) -> Result<()> {
        let (_, w, t) = &mut self.files[h];
        w.write_all(data).map_err(|e| Error::io(t.clone(), e))
    }

    /// Flushes, syncs and renames every file into place; returns their paths.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        for (_, w, t) in &mut self.files {
            w.flush().map_err(|e| Error::io(t.clone(), e))?;
            w.get_ref()
                .sync_all()
                .map_err(|e| Error::io(t.clone(), e))?;
        }
        let mut out = vec![];
        for (tmp, _, target) in self.files.drain(..) {
            tmp.persist(&target)
                .map_err(|e| Error::io(target.clone(), e.error))?;
            out.push(target);
        }
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(out)
    }
}

/// The little-endian bytes of one element of `dtype` formatted as text (CSV export).
pub(crate) fn format_element(dtype: DType, b: &[u8]) -> String {
    macro_rules! le {
        ($t:ty) => {
            <$t>::from_le_bytes(b.try_into().expect("element size")).to_string()
        };
    }
    match dtype {
        DType::U8 => le!(u8),
        DType::I8 => le!(i8),
        DType::U16 => le!(u16),
        DType::I16 => le!(i16),
        DType::U32 => le!(u32),
        DType::I32 => le!(i32),
        DType::U64 => le!(u64),
        DType::I64 => le!(i64),
        DType::F32 => le!(f32),
        DType::F64 => le!(f64),
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
