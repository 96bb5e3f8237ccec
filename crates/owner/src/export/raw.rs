//! A raw file back from its sealed bytes.

use blindfold_format::Schema;
use serde_json::Value;

use super::{meta_str, Exporter, OutputSet};
use crate::error::{Error, Result};

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
