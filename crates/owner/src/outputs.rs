//! A training job's sealed outputs as the owner opens them (docs/sealed-format.md §10):
//! the model and its metrics, each authenticated by the key of the dataset the owner
//! names, at a version the key store sealed, and written by the same job.

use blindfold_format::{output_header_unverified, OutputHeader, METRICS_OBJECT, MODEL_OBJECT};
use blindfold_store::Store;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::keystore::KeyStore;

/// A job's outputs, opened.
pub struct JobOutputs {
    /// The model's authenticated header (kind `model`).
    pub header: OutputHeader,
    /// The model's plaintext (its encoding is `header.content_type`).
    pub model: Zeroizing<Vec<u8>>,
    /// The metrics' plaintext, when the location holds them.
    pub metrics: Option<Zeroizing<Vec<u8>>>,
}

/// Opens `MODEL_DEST/model.sealed` (and `metrics.sealed`) with the owner's key store.
/// Both must be authenticated by the key of `dataset` (the dataset the owner expects:
/// the header's own claim would let whoever holds any of the owner's dataset keys choose
/// which key authenticates it), at a version this key store sealed, and carry the same
/// clear `info` (which holds the job's random run id). With `danger_unauthenticated` and
/// no `dataset`, an output that names no source (a plaintext baseline's) is accepted.
pub fn open_job_outputs(
    ks: &KeyStore,
    model_dest: &str,
    dataset: Option<&str>,
    danger_unauthenticated: bool,
) -> Result<JobOutputs> {
    let store = Store::open(model_dest, false)?;
    let bytes = store.get(MODEL_OBJECT)?;
    let name = format!("{model_dest}/{MODEL_OBJECT}");
    let claimed = output_header_unverified(&bytes, &name).map_err(|e| Error::sealed(&name, e))?;
    match (dataset, &claimed.source) {
        (Some(want), Some(src)) if src.dataset_id != want.to_ascii_lowercase() => {
            return Err(Error::Unauthenticated(format!(
                "{name} was made from dataset {}, not {want}",
                src.dataset_id
            )))
        }
        (Some(want), None) => {
            return Err(Error::Unauthenticated(format!(
                "{name} names no dataset: it is not authenticated by {want}'s key"
            )))
        }
        _ => {}
    }
    let (header, model) = ks.open_output(&bytes, &name, danger_unauthenticated)?;
    if header.kind != "model" {
        return Err(Error::BadInput(format!(
            "{name} holds a {}, not a model",
            header.kind
        )));
    }
    let metrics = match store.size(METRICS_OBJECT)? {
        None => None,
        Some(_) => {
            let m = store.get(METRICS_OBJECT)?;
            let name = format!("{model_dest}/{METRICS_OBJECT}");
            let (mh, plain) = ks.open_output(&m, &name, danger_unauthenticated)?;
            if mh.source != header.source || mh.kind != "metrics" || mh.info != header.info {
                return Err(Error::Unauthenticated(format!(
                    "{name} is not the metrics of this model (another job, source or kind)"
                )));
            }
            Some(plain)
        }
    };
    Ok(JobOutputs {
        header,
        model,
        metrics,
    })
}
