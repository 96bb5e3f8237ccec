//! `--format raw`: any file as opaque bytes, one byte per record, split `data`.

use std::fs;
use std::io::Read;
use std::path::Path;

use blindfold_format::Schema;
use serde_json::json;

use super::{file_name, Import, ImportOptions, RecordSource, SplitSource};
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
