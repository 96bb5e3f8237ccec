//! Evaluating trained weights on a plaintext test set (the owner's `blindfold eval`):
//! accuracy and confusion matrix, with the same data path and model code as training.

use std::path::{Path, PathBuf};

use blindfold_dataset::import::{import, Format, ImportOptions};
use blindfold_dataset::NoProgress;

use crate::data::{Dataset, Splits};
use crate::error::{Error, Result};
use crate::model::{self, Cpu, ModelSpec};

/// What [`evaluate`] found.
pub struct Evaluation {
    /// The model.
    pub spec: ModelSpec,
    /// Share of records classified right.
    pub accuracy: f64,
    /// Records evaluated.
    pub records: usize,
    /// Counts by true class (rows) and predicted class (columns).
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates safetensors weights (`model open`'s output) on split `split` of a plaintext
/// input read as `seal` reads it (`labels` for a single IDX images file or `.npy`).
pub fn evaluate(
    model_file: &Path,
    test: &Path,
    labels: Option<PathBuf>,
    split: &str,
) -> Result<Evaluation> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(model_file)
            .map_err(|e| Error::BadInput(format!("{}: {e}", model_file.display())))?,
    );
    let spec = model::safetensors_spec(&bytes)?;
    let device = Default::default();
    let net = spec.from_safetensors::<Cpu>(&bytes, &device)?;
    let import = import(
        test,
        Format::Auto,
        &ImportOptions {
            labels,
            split: Some(split.into()).filter(|_| !test.is_dir()),
            ..ImportOptions::default()
        },
    )?;
    let data = Dataset::from_import(
        import,
        &Splits {
            train: split.into(),
            test: String::new(),
        },
        &NoProgress,
    )?;
    if data.input_shape() != spec.input {
        return Err(Error::BadInput(format!(
            "the model takes {:?} inputs; {} has {:?}",
            spec.input,
            test.display(),
            data.input_shape()
        )));
    }
    if data.classes > spec.classes {
        return Err(Error::BadInput(format!(
            "the test labels go up to {}; the model knows {} classes",
            data.classes - 1,
            spec.classes
        )));
    }
    let (accuracy, confusion) = crate::train::evaluate_feed(&net, &data, false, &spec, &device)?;
    Ok(Evaluation {
        spec,
        accuracy,
        records: data.train.count,
        confusion,
    })
}
