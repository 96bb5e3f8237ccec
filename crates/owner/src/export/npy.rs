//! `.npy` files back from their sealed records: the original header, then the data.

use blindfold_format::Schema;
use serde_json::Value;

use super::{meta_str, Exporter, OutputSet};
use crate::error::{Error, Result};

struct NpyExporter {
    meta: Value,
    schema: Schema,
    handles: Option<(usize, Option<usize>)>,
    scratch: Vec<u8>,
}

pub(super) fn exporter(meta: &Value, schema: &Schema) -> Result<Box<dyn Exporter>> {
    Ok(Box::new(NpyExporter {
        meta: meta.clone(),
        schema: schema.clone(),
        handles: None,
        scratch: vec![],
    }))
}

fn header_bytes(v: &Value) -> Result<Vec<u8>> {
    hex::decode(meta_str(v, "header")?)
        .map_err(|_| Error::BadInput("sealed metadata: header is not hex".into()))
}

impl Exporter for NpyExporter {
    fn begin_split(&mut self, out: &mut OutputSet, _split: &str, _records: u64) -> Result<()> {
        if self.handles.is_some() {
            return Err(Error::BadInput("an .npy dataset has one split".into()));
        }
        let d = out.create(meta_str(&self.meta, "file")?)?;
        out.write(d, &header_bytes(&self.meta)?)?;
        let l = match self.meta.get("labels").filter(|v| !v.is_null()) {
            Some(lm) => {
                let h = out.create(meta_str(lm, "file")?)?;
                out.write(h, &header_bytes(lm)?)?;
                Some(h)
            }
            None => None,
        };
        self.handles = Some((d, l));
        Ok(())
    }

    fn records(&mut self, out: &mut OutputSet, data: &[u8]) -> Result<()> {
        let (d, l) = self.handles.expect("begun");
        let Some(l) = l else {
            return out.write(d, data);
        };
        let fs = self.schema.feature_size();
        let rs = self.schema.record_size();
        self.scratch.clear();
        for rec in data.chunks_exact(rs) {
            self.scratch.extend_from_slice(&rec[..fs]);
        }
        out.write(d, &self.scratch)?;
        self.scratch.clear();
        for rec in data.chunks_exact(rs) {
            self.scratch.extend_from_slice(&rec[fs..]);
        }
        out.write(l, &self.scratch)
    }

    fn end_split(&mut self, _out: &mut OutputSet) -> Result<()> {
        Ok(())
    }
}
