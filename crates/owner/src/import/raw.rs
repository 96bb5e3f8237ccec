//! `--format raw`: any file as opaque bytes, one byte per record, split `data`.

use std::fs;
use std::io::Read;
use std::path::Path;

use blindfold_format::Schema;
use serde_json::{json, Value};

use super::{
    file_name, meta_str, Exporter, Import, ImportOptions, OutputSet, RecordSource, SplitSource,
};
use crate::error::{Error, Result};

struct FileSource {
    file: std::io::BufReader<fs::File>,
    path: std::path::PathBuf,
}

impl RecordSource for FileSource {
    fn read_records(&mut self, buf: &mut [u8]) -> Result<()> {
        self.file.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::BadInput(format!(
                    "{}: the file shrank while it was being sealed",
                    self.path.display()
                ))
            } else {
                Error::io(&self.path, e)
            }
        })
    }
}

/// Imports one file as raw bytes.
pub fn import(input: &Path, opts: &ImportOptions) -> Result<Import> {
    let f = fs::File::open(input).map_err(|e| Error::io(input, e))?;
    let meta = f.metadata().map_err(|e| Error::io(input, e))?;
    if !meta.is_file() {
        return Err(Error::BadInput(format!(
            "{}: --format raw takes one regular file",
            input.display()
        )));
    }
    if opts.labels.is_some() {
        return Err(Error::BadInput(
            "--labels does not apply to --format raw".into(),
        ));
    }
    let name = file_name(input)?;
    Ok(Import {
        schema: Schema::raw(),
        splits: vec![SplitSource {
            name: opts.split.clone().unwrap_or_else(|| "data".into()),
            records: meta.len(),
            source: Box::new(FileSource {
                file: std::io::BufReader::with_capacity(1 << 20, f),
                path: input.to_owned(),
            }),
        }],
        metadata: json!({ "importer": "raw", "file": name }),
    })
}

struct RawExporter {
    name: String,
    handle: Option<usize>,
}

pub(super) fn exporter(meta: &Value, schema: &Schema) -> Result<Box<dyn Exporter>> {
    if *schema != Schema::raw() {
        return Err(Error::BadInput(
            "raw metadata on a dataset that is not raw bytes".into(),
        ));
    }
    Ok(Box::new(RawExporter {
        name: meta_str(meta, "file")?.to_owned(),
        handle: None,
    }))
}

impl Exporter for RawExporter {
    fn begin_split(&mut self, out: &mut OutputSet, _split: &str, _records: u64) -> Result<()> {
        if self.handle.is_some() {
            return Err(Error::BadInput("a raw dataset has one split".into()));
        }
        self.handle = Some(out.create(&self.name)?);
        Ok(())
    }
    fn records(&mut self, out: &mut OutputSet, data: &[u8]) -> Result<()> {
        out.write(self.handle.expect("begun"), data)
    }
    fn end_split(&mut self, _out: &mut OutputSet) -> Result<()> {
        Ok(())
    }
}
