//! A training job's outputs, sealed to the data owner and written whole: the model, the
//! metrics, then the job's clear configuration. The Burn trainer (`blindfold-zone`) and
//! the PyTorch bridge (`python/`) write through here, so the owner's `model open` reads
//! both the same way (docs/sealed-format.md, "Sealed outputs").

use blindfold_format::{seal_output, OutputHeader, CONFIG_OBJECT, METRICS_OBJECT, MODEL_OBJECT};
use blindfold_store::Store;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::SealedDataset;

/// The content type of a model written by the PyTorch bridge: a `state_dict` as
/// safetensors, PyTorch's names and layout.
pub const SAFETENSORS_CONTENT_TYPE: &str = "safetensors";

/// Checks that `bytes` is a well-formed safetensors file and returns its tensor count
/// and total number of elements. An owner opens a PyTorch model only after this.
pub fn check_safetensors(bytes: &[u8]) -> Result<(usize, u64)> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::BadInput(format!("the sealed model is not valid safetensors: {e}")))?;
    let elements = st
        .tensors()
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>() as u64)
        .sum();
    Ok((st.len(), elements))
}

/// How a job's outputs are sealed to the owner.
pub enum OutputSealer<'a> {
    /// Authenticated by the dataset key, naming the dataset, version and manifest.
    Dataset(&'a SealedDataset),
    /// The plaintext baseline: to the owner's X25519 public key, authenticated by
    /// nothing (the owner opens it only with `--danger-unauthenticated`).
    Baseline([u8; 32]),
}

impl OutputSealer<'_> {
    /// Seals one output object.
    pub fn seal(
        &self,
        kind: &str,
        content_type: &str,
        info: Value,
        plaintext: &[u8],
        name: &str,
    ) -> Result<Vec<u8>> {
        match self {
            OutputSealer::Dataset(ds) => ds.seal_output(kind, content_type, info, plaintext, name),
            OutputSealer::Baseline(owner) => seal_output(
                owner,
                &OutputHeader::new(kind, content_type, None, info),
                None,
                plaintext,
                name,
            )
            .map_err(|e| Error::Bug(format!("sealing {name}: {e}"))),
        }
    }
}

/// Refuses a location that already holds a model: a trained model is never overwritten.
/// Jobs call it before they fetch a key, so a job that would fail at the end fails first.
pub fn check_output_location(out: &Store) -> Result<()> {
    if out.size(MODEL_OBJECT)?.is_some() {
        return Err(Error::BadInput(format!(
            "{}/{MODEL_OBJECT} exists: choose another output location (a trained model is never overwritten)",
            out.location()
        )));
    }
    Ok(())
}

/// A job's outputs in plaintext, before sealing. `info` is the clear header of both
/// sealed objects (it names the model's architecture or framework and the run).
pub struct JobOutputs<'a> {
    /// The model's content type (`burnpack`, `safetensors`).
    pub content_type: &'a str,
    /// The sealed outputs' clear header info.
    pub info: Value,
    /// Weights.
    pub model: &'a [u8],
    /// Metrics (JSON).
    pub metrics: &'a [u8],
    /// The job's clear configuration (JSON): no secret, written unsealed.
    pub config: &'a [u8],
}

/// What [`write_job_outputs`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The locations written.
    pub locations: Vec<String>,
    /// The sealed objects' names and the SHA-256 of their bytes as written: the
    /// subjects of a training receipt.
    pub sealed: Vec<(&'static str, [u8; 32])>,
}

/// Seals the model and the metrics to the owner and writes them, then the clear
/// configuration. Each object is written whole (temporary name, then rename), the
/// metrics only after the model, so a crash never leaves a half-written output.
pub fn write_job_outputs(
    out: &Store,
    sealer: &OutputSealer<'_>,
    o: &JobOutputs<'_>,
) -> Result<Written> {
    check_output_location(out)?;
    let model = sealer.seal(
        "model",
        o.content_type,
        o.info.clone(),
        o.model,
        MODEL_OBJECT,
    )?;
    let metrics = sealer.seal("metrics", "json", o.info.clone(), o.metrics, METRICS_OBJECT)?;
    let sealed = vec![
        (MODEL_OBJECT, blindfold_format::sha256(&model)),
        (METRICS_OBJECT, blindfold_format::sha256(&metrics)),
    ];
    out.put(MODEL_OBJECT, model)?;
    out.put(METRICS_OBJECT, metrics)?;
    out.put(CONFIG_OBJECT, o.config.to_vec())?;
    Ok(Written {
        locations: [MODEL_OBJECT, METRICS_OBJECT, CONFIG_OBJECT]
            .iter()
            .map(|n| format!("{}/{n}", out.location()))
            .collect(),
        sealed,
    })
}
