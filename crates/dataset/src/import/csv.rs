//! CSV with a header row: one label column (by name, default `label`; if the file has
//! no such column the records have no label) and numeric feature columns, read as
//! `f32`. Labels are classes or real values: when every label is an integer they are
//! stored as `i64`, otherwise (any label with a fraction or an exponent) as `f32`, for
//! regression. The whole file is checked in a first pass, so a bad cell fails before
//! anything is written. `open` writes a CSV with the
//! same columns in the same order; numbers are written in Rust's shortest round-trip
//! form, so the text may differ from the input while the values are identical.

use std::fs;
use std::path::{Path, PathBuf};

use blindfold_format::{DType, Schema};
use serde_json::json;

use super::{file_name, Import, ImportOptions, RecordSource, SplitSource};
use crate::error::{Error, Result};

struct Layout {
    columns: Vec<String>,
    label: Option<usize>,
    /// `I64` or `F32`.
    label_type: DType,
}

fn reader(path: &Path) -> Result<::csv::Reader<fs::File>> {
    let f = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(::csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(f))
}

fn parse_row(
    rec: &::csv::StringRecord,
    layout: &Layout,
    out: &mut Vec<u8>,
    path: &Path,
) -> Result<()> {
    let line = rec.position().map_or(0, |p| p.line());
    if rec.len() != layout.columns.len() {
        return Err(Error::BadInput(format!(
            "{}:{line}: {} fields, the header has {}",
            path.display(),
            rec.len(),
            layout.columns.len()
        )));
    }
    let mut label: Option<[u8; 8]> = None;
    for (i, cell) in rec.iter().enumerate() {
        let cell = cell.trim();
        if Some(i) == layout.label {
            let bad = |what: &str| {
                Error::BadInput(format!(
                    "{}:{line}: column {:?}: the label is not {what}",
                    path.display(),
                    layout.columns[i]
                ))
            };
            let mut b = [0u8; 8];
            if layout.label_type == DType::F32 {
                let v: f32 = cell
                    .parse()
                    .ok()
                    .filter(|v: &f32| v.is_finite())
                    .ok_or_else(|| bad("a finite number"))?;
                b[..4].copy_from_slice(&v.to_le_bytes());
            } else {
                let v: i64 = cell.parse().map_err(|_| bad("an integer"))?;
                b = v.to_le_bytes();
            }
            label = Some(b);
        } else {
            let v: f32 = cell.parse().map_err(|_| {
                Error::BadInput(format!(
                    "{}:{line}: column {:?}: not a number",
                    path.display(),
                    layout.columns[i]
                ))
            })?;
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    if let Some(l) = label {
        out.extend_from_slice(&l[..layout.label_type.size()]);
    }
    Ok(())
}

struct CsvSource {
    rows: ::csv::StringRecordsIntoIter<fs::File>,
    layout: Layout,
    path: PathBuf,
    scratch: Vec<u8>,
}

impl RecordSource for CsvSource {
    fn read_records(&mut self, buf: &mut [u8]) -> Result<()> {
        self.scratch.clear();
        while self.scratch.len() < buf.len() {
            let rec = self
                .rows
                .next()
                .ok_or_else(|| {
                    Error::BadInput(format!(
                        "{}: the file shrank while it was being sealed",
                        self.path.display()
                    ))
                })?
                .map_err(|e| Error::BadInput(format!("{}: {e}", self.path.display())))?;
            parse_row(&rec, &self.layout, &mut self.scratch, &self.path)?;
        }
        if self.scratch.len() != buf.len() {
            return Err(Error::Bug("CSV record size".into()));
        }
        buf.copy_from_slice(&self.scratch);
        Ok(())
    }
}

/// Whether every cell of column `label` parses as an integer (a label column of
/// classes); rows too short for it are left to the full check.
fn all_integer_labels(path: &Path, label: usize) -> Result<bool> {
    let mut r = reader(path)?;
    for rec in r.records() {
        let rec = rec.map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))?;
        if let Some(cell) = rec.get(label) {
            if cell.trim().parse::<i64>().is_err() {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Imports a CSV file.
pub fn import(input: &Path, opts: &ImportOptions) -> Result<Import> {
    if opts.labels.is_some() {
        return Err(Error::BadInput(
            "--labels does not apply to CSV; use --label-column".into(),
        ));
    }
    let mut r = reader(input)?;
    let columns: Vec<String> = r
        .headers()
        .map_err(|e| Error::BadInput(format!("{}: {e}", input.display())))?
        .iter()
        .map(|s| s.trim().to_owned())
        .collect();
    let label_name = opts.label_column.clone().unwrap_or_else(|| "label".into());
    let label = columns.iter().position(|c| *c == label_name);
    if label.is_none() && opts.label_column.is_some() {
        return Err(Error::BadInput(format!(
            "{}: no column named {label_name:?}",
            input.display()
        )));
    }
    let features = columns.len() - usize::from(label.is_some());
    if features == 0 {
        return Err(Error::BadInput(format!(
            "{}: no feature columns",
            input.display()
        )));
    }
    // Integer labels are classes; any other number makes them real values.
    let label_type = match label {
        Some(l) if !all_integer_labels(input, l)? => DType::F32,
        _ => DType::I64,
    };
    let layout = Layout {
        columns,
        label,
        label_type,
    };
    // First pass: check every row, count them.
    let mut count = 0u64;
    let mut scratch = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| Error::BadInput(format!("{}: {e}", input.display())))?;
        scratch.clear();
        parse_row(&rec, &layout, &mut scratch, input)?;
        count += 1;
    }
    let schema = Schema {
        dtype: DType::F32,
        shape: vec![features as u32],
        label: layout.label.map(|_| label_type),
    };
    schema
        .validate(&blindfold_format::Object::Unnamed)
        .map_err(|e| Error::BadInput(format!("{}: {e}", input.display())))?;
    let split = opts.split.clone().unwrap_or_else(|| "data".into());
    let metadata = json!({
        "importer": "csv",
        "file": file_name(input)?,
        "columns": layout.columns,
        "label_column": layout.label,
    });
    Ok(Import {
        schema,
        splits: vec![SplitSource {
            name: split,
            records: count,
            source: Box::new(CsvSource {
                rows: reader(input)?.into_records(),
                layout,
                path: input.to_owned(),
                scratch: vec![],
            }),
        }],
        metadata,
    })
}
