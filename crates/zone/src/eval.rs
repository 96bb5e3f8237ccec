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
    /// Regression: root mean squared error.
    pub rmse: Option<f64>,
    /// Regression: coefficient of determination, 1 − SSE/SST (none for constant labels).
    pub r2: Option<f64>,
    /// With `logits`: each record's label and outputs (logits, or the predicted value),
    /// in the input's order.
    pub predictions: Option<Vec<(f32, Vec<f32>)>>,
}

/// Evaluates safetensors weights (`model open`'s output) on split `split` of a plaintext
/// input read as `seal` reads it (`labels` for a single IDX images file or `.npy`).
pub fn evaluate(
    model_file: &Path,
    test: &Path,
    labels: Option<PathBuf>,
    split: &str,
    logits: bool,
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
    let part = crate::train::Part::Train;
    let order: Vec<u32> = (0..data.train.count as u32).collect();
    let to_vec = |t: burn::tensor::TensorData| {
        t.convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::Bug(format!("outputs: {e:?}")))
    };
    if spec.spec.file.head == crate::spec::Head::Regression {
        use crate::train::Feed;
        // Every record's (label, prediction): the owner's own test set, on its machine.
        let mut pairs: Vec<(f32, Vec<f32>)> = Vec::with_capacity(order.len());
        Feed::<Cpu>::for_each_value_batch(&data, part, &order, 1000, &device, &mut |x, y| {
            let p = to_vec(net.forward(x).into_data())?;
            let y = to_vec(y.into_data())?;
            pairs.extend(y.into_iter().zip(p.into_iter().map(|v| vec![v])));
            Ok(())
        })?;
        let n = pairs.len().max(1) as f64;
        let mean = pairs.iter().map(|(y, _)| *y as f64).sum::<f64>() / n;
        let sse: f64 = pairs
            .iter()
            .map(|(y, p)| (p[0] as f64 - *y as f64).powi(2))
            .sum();
        let sst: f64 = pairs.iter().map(|(y, _)| (*y as f64 - mean).powi(2)).sum();
        return Ok(Evaluation {
            spec,
            accuracy: 0.0,
            records: data.train.count,
            confusion: vec![],
            rmse: Some((sse / n).sqrt()),
            r2: (sst > 0.0).then(|| 1.0 - sse / sst),
            predictions: logits.then_some(pairs),
        });
    }
    if let Some(p) = data.class_problem() {
        return Err(Error::BadInput(format!(
            "the model is a classifier; {}: {p}",
            test.display()
        )));
    }
    if data.classes > spec.classes {
        return Err(Error::BadInput(format!(
            "the test labels go up to {}; the model knows {} classes",
            data.classes - 1,
            spec.classes
        )));
    }
    let (accuracy, confusion) = crate::train::evaluate_feed(&net, &data, part, &spec, &device)?;
    let predictions = if logits {
        use crate::train::Feed;
        let mut out = Vec::with_capacity(order.len());
        Feed::<Cpu>::for_each_batch(&data, part, &order, 1000, &device, &mut |x, y| {
            let l = net.forward(x);
            let k = l.dims()[1];
            let l = to_vec(l.into_data())?;
            let y = to_vec(y.into_data())?;
            out.extend(y.into_iter().zip(l.chunks(k).map(<[f32]>::to_vec)));
            Ok(())
        })?;
        Some(out)
    } else {
        None
    };
    Ok(Evaluation {
        spec,
        accuracy,
        records: data.train.count,
        confusion,
        rmse: None,
        r2: None,
        predictions,
    })
}
