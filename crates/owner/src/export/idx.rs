//! IDX files back from their sealed records, byte for byte as they were decompressed.

use blindfold_dataset::import::{idx::code_of, swap_bytes};
use blindfold_format::Schema;
use serde_json::Value;

use super::{meta_str, Exporter, OutputSet};
use crate::error::{Error, Result};

struct IdxExporter {
    meta: Value,
    schema: Schema,
    cur: Option<(usize, Option<usize>)>,
    scratch: Vec<u8>,
}

pub(super) fn exporter(meta: &Value, schema: &Schema) -> Result<Box<dyn Exporter>> {
    if code_of(schema.dtype).is_none() || schema.label.is_some_and(|l| code_of(l).is_none()) {
        return Err(Error::BadInput(
            "IDX metadata on a schema IDX cannot hold".into(),
        ));
    }
    Ok(Box::new(IdxExporter {
        meta: meta.clone(),
        schema: schema.clone(),
        cur: None,
        scratch: vec![],
    }))
}

fn idx_header(code: u8, dims: &[u32]) -> Vec<u8> {
    let mut h = vec![0, 0, code, dims.len() as u8];
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

impl Exporter for IdxExporter {
    fn begin_split(&mut self, out: &mut OutputSet, split: &str, records: u64) -> Result<()> {
        let m = self
            .meta
            .get("splits")
            .and_then(|s| s.get(split))
            .ok_or_else(|| Error::BadInput(format!("sealed metadata has no split {split:?}")))?
            .clone();
        let n = u32::try_from(records)
            .map_err(|_| Error::BadInput("too many records for IDX".into()))?;
        let img = out.create(meta_str(&m, "images")?)?;
        let mut dims = vec![n];
        dims.extend_from_slice(&self.schema.shape);
        out.write(
            img,
            &idx_header(code_of(self.schema.dtype).expect("checked"), &dims),
        )?;
        let lab = match (m.get("labels").and_then(Value::as_str), self.schema.label) {
            (Some(name), Some(l)) => {
                let h = out.create(name)?;
                out.write(h, &idx_header(code_of(l).expect("checked"), &[n]))?;
                Some(h)
            }
            (None, None) => None,
            _ => {
                return Err(Error::BadInput(
                    "sealed metadata and schema disagree about labels".into(),
                ))
            }
        };
        self.cur = Some((img, lab));
        Ok(())
    }

    fn records(&mut self, out: &mut OutputSet, data: &[u8]) -> Result<()> {
        let (img, lab) = self.cur.expect("begun");
        let fs = self.schema.feature_size();
        let rs = self.schema.record_size();
        let es = self.schema.dtype.size();
        // Features, back to big-endian, in one write.
        self.scratch.clear();
        for rec in data.chunks_exact(rs) {
            self.scratch.extend_from_slice(&rec[..fs]);
        }
        swap_bytes(&mut self.scratch, es);
        out.write(img, &self.scratch)?;
        if let (Some(h), Some(l)) = (lab, self.schema.label) {
            self.scratch.clear();
            for rec in data.chunks_exact(rs) {
                self.scratch.extend_from_slice(&rec[fs..]);
            }
            swap_bytes(&mut self.scratch, l.size());
            out.write(h, &self.scratch)?;
        }
        Ok(())
    }

    fn end_split(&mut self, _out: &mut OutputSet) -> Result<()> {
        self.cur = None;
        Ok(())
    }
}
