//! CSV back from its sealed records: the header row and the values, as text.

use blindfold_format::{DType, Schema};
use serde_json::Value;

use super::{format_element, meta_str, Exporter, OutputSet};
use crate::error::{Error, Result};

struct CsvExporter {
    name: String,
    columns: Vec<String>,
    label: Option<usize>,
    schema: Schema,
    handle: Option<usize>,
}

pub(super) fn exporter(meta: &Value, schema: &Schema) -> Result<Box<dyn Exporter>> {
    let columns: Vec<String> = meta
        .get("columns")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::BadInput("sealed metadata lacks \"columns\"".into()))?
        .iter()
        .map(|c| c.as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::BadInput("sealed metadata: bad column names".into()))?;
    let label = meta
        .get("label_column")
        .and_then(Value::as_u64)
        .map(|l| l as usize);
    let features = columns.len() - usize::from(label.is_some());
    if schema.elements() != features as u64 || schema.label.is_some() != label.is_some() {
        return Err(Error::BadInput(
            "sealed metadata and schema disagree about the CSV columns".into(),
        ));
    }
    Ok(Box::new(CsvExporter {
        name: meta_str(meta, "file")?.to_owned(),
        columns,
        label,
        schema: schema.clone(),
        handle: None,
    }))
}

/// A label as CSV text. Real values always carry a decimal point or an exponent
/// (`1.0`, not `1`), so that sealing the opened file gives real labels again.
fn label_cell(dtype: DType, b: &[u8]) -> String {
    match dtype {
        DType::F32 => format!(
            "{:?}",
            f32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
        ),
        DType::F64 => format!(
            "{:?}",
            f64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
        ),
        other => format_element(other, b),
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl Exporter for CsvExporter {
    fn begin_split(&mut self, out: &mut OutputSet, _split: &str, _records: u64) -> Result<()> {
        if self.handle.is_some() {
            return Err(Error::BadInput("a CSV dataset has one split".into()));
        }
        let h = out.create(&self.name)?;
        let head: Vec<String> = self.columns.iter().map(|c| csv_field(c)).collect();
        out.write(h, format!("{}\n", head.join(",")).as_bytes())?;
        self.handle = Some(h);
        Ok(())
    }

    fn records(&mut self, out: &mut OutputSet, data: &[u8]) -> Result<()> {
        let h = self.handle.expect("begun");
        let es = self.schema.dtype.size();
        let fsz = self.schema.feature_size();
        let mut text = String::new();
        for rec in data.chunks_exact(self.schema.record_size()) {
            let mut feats = rec[..fsz]
                .chunks_exact(es)
                .map(|e| format_element(self.schema.dtype, e));
            let cells: Vec<String> = (0..self.columns.len())
                .map(|i| {
                    if Some(i) == self.label {
                        label_cell(self.schema.label.unwrap_or(DType::I64), &rec[fsz..])
                    } else {
                        feats.next().unwrap_or_default()
                    }
                })
                .collect();
            text.push_str(&cells.join(","));
            text.push('\n');
        }
        out.write(h, text.as_bytes())
    }

    fn end_split(&mut self, _out: &mut OutputSet) -> Result<()> {
        Ok(())
    }
}
