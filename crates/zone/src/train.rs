//! The training loop: the spec's optimizer and learning-rate schedule on cross-entropy,
//! batches in the order [`epoch_order`] fixes, validation (and early stopping) and
//! evaluation on the test split after every epoch.
//!
//! Nothing here knows whether the records were sealed: a sealed dataset and its
//! plaintext original give bit-identical weights for the same configuration.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, AdamWConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::data::{epoch_order, Batch, Dataset};
use crate::error::{Error, Result};
use crate::model::{self, ModelSpec, Net};
use crate::spec::{self, Spec};

/// Batches prepared ahead of the training step.
const PREFETCH: usize = 4;
/// Largest batch for evaluation.
const EVAL_BATCH: usize = 1000;
/// Most activation elements a training batch may make (8 GiB of `f32`, before the
/// gradients): bounds `--batch-size` for large models.
pub const MAX_BATCH_ACTIVATIONS: u64 = 1 << 31;

/// The evaluation batch for a model: up to [`EVAL_BATCH`] records, fewer when each
/// makes many activations (a batch stays within 1 GiB of `f32`).
fn eval_batch(spec: &ModelSpec) -> usize {
    let per = spec
        .spec
        .plan(spec.input, spec.classes)
        .map_or(1, |p| p.activations.max(1));
    ((1u64 << 28) / per).clamp(1, EVAL_BATCH as u64) as usize
}

/// What to train: saved beside the model as `train.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A built-in model (`mlp`, `lenet5`, `cnn`), or the name of the spec in
    /// `model_spec`.
    pub model: String,
    /// The TOML of a spec that is not built in (`docs/model-spec.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_spec: Option<String>,
    /// Passes over the training split.
    pub epochs: usize,
    /// Records per step.
    pub batch_size: usize,
    /// The optimizer's learning rate (of the first epoch, under a schedule).
    pub lr: f64,
    /// Fixes the initial weights, every epoch's record order and the held-out records.
    pub seed: u64,
    /// Where to train (and, for a sealed dataset, where records are decrypted).
    #[serde(default)]
    pub device: crate::device::DeviceKind,
    /// Share of the training split held out as a validation split (and, when the dataset
    /// has no test split, as much again as the test split), chosen by `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: "lenet5".into(),
            model_spec: None,
            epochs: 1,
            batch_size: 64,
            lr: 1e-3,
            seed: 42,
            device: crate::device::DeviceKind::Cpu,
            holdout: None,
        }
    }
}

impl TrainConfig {
    /// Checks that the spec fits records of shape `input` (with any number of classes),
    /// and that a batch of them stays within memory: what a job checks before it asks
    /// for a key.
    pub fn check_fits(&self, input: [usize; 3]) -> Result<()> {
        self.check()?;
        let plan = self.spec()?.plan(input, 2)?;
        if (self.batch_size as u64).saturating_mul(plan.activations) > MAX_BATCH_ACTIVATIONS {
            return Err(Error::BadInput(format!(
                "a batch of {} records makes {} activations per record: lower --batch-size (at most {} for this model)",
                self.batch_size,
                plan.activations,
                (MAX_BATCH_ACTIVATIONS / plan.activations).max(1)
            )));
        }
        Ok(())
    }

    /// What a job checks before it asks for a key, from the schema the dataset claims:
    /// the spec fits its records ([`TrainConfig::check_fits`]), a classification head
    /// gets integer labels, and the GPU path gets the u8 records it decrypts.
    pub fn check_schema(&self, schema: &blindfold_format::Schema) -> Result<()> {
        use blindfold_format::DType;
        self.check_fits(crate::data::input_shape(schema))?;
        let label = schema.label.ok_or_else(|| {
            Error::BadInput("the dataset's records carry no label: nothing to train on".into())
        })?;
        let real = matches!(label, DType::F32 | DType::F64);
        if real && self.spec()?.file.head == spec::Head::Classification {
            return Err(Error::BadInput(format!(
                "model {:?}: the labels are real values ({label}): a classification head needs integer class labels; use [head] type = \"regression\"",
                self.model
            )));
        }
        if !self.device.host_memory() && (schema.dtype != DType::U8 || label != DType::U8) {
            return Err(Error::BadInput(format!(
                "the GPU path takes u8 features with a u8 label; this dataset has {} features and {} labels: use --device cpu or torch-cpu",
                schema.dtype.name(),
                label.name()
            )));
        }
        Ok(())
    }

    /// Reads a configuration file: JSON, as a job saves it in `train.json` (under
    /// `"config"`), or TOML with the same fields.
    pub fn from_file(path: &std::path::Path) -> Result<TrainConfig> {
        let bad = |what: String| Error::BadInput(format!("{}: {what}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .or_else(|_| toml::from_str::<serde_json::Value>(&text))
            .map_err(|e| bad(format!("neither JSON nor TOML: {e}")))?;
        // train.json wraps the configuration in "config".
        let v = v.get("config").cloned().unwrap_or(v);
        serde_json::from_value(v).map_err(|e| bad(e.to_string()))
    }

    /// Sets the model: a built-in name, or the path of a spec file (read now).
    pub fn set_model(&mut self, name_or_path: &str) -> Result<()> {
        let s = Spec::load(name_or_path)?;
        if Spec::builtin(name_or_path).is_some() {
            self.model = s.file.name;
            self.model_spec = None;
        } else {
            self.model = s.file.name.clone();
            self.model_spec = Some(s.text);
        }
        Ok(())
    }

    /// The model's spec.
    pub fn spec(&self) -> Result<Spec> {
        match &self.model_spec {
            Some(text) => Spec::parse(text)
                .map_err(|e| Error::BadInput(format!("model spec {:?}: {e}", self.model))),
            None => Spec::builtin(&self.model).ok_or_else(|| {
                Error::BadInput(format!(
                    "model {:?}: not a built-in model ({}); give a spec file (*.toml)",
                    self.model,
                    spec::BUILTIN.map(|(n, _)| n).join(", ")
                ))
            }),
        }
    }

    /// Checks the values are usable.
    pub fn check(&self) -> Result<()> {
        let spec = self.spec()?;
        if self.epochs == 0 || self.epochs > 10_000 {
            return Err(Error::BadInput("epochs must be 1 to 10000".into()));
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            return Err(Error::BadInput("batch size must be 1 to 65536".into()));
        }
        if !self.device.available() {
            return Err(self.device.not_built());
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 10.0) {
            return Err(Error::BadInput(
                "learning rate must be a positive number below 10".into(),
            ));
        }
        if let Some(h) = self.holdout {
            if !(h > 0.0 && h <= 0.4) {
                return Err(Error::BadInput(format!(
                    "--holdout {h}: a share of the training split above 0 and at most 0.4"
                )));
            }
            if !self.device.host_memory() {
                return Err(Error::BadInput(
                    "--holdout works on the CPU devices only (the GPU path does not split records yet)".into(),
                ));
            }
        }
        if spec.file.name != self.model {
            return Err(Error::BadInput(format!(
                "model {:?}: the spec is named {:?}",
                self.model, spec.file.name
            )));
        }
        if let spec::Schedule::Cosine { min_lr } = spec.file.schedule {
            if min_lr > self.lr {
                return Err(Error::BadInput(format!(
                    "the spec's schedule.min_lr ({min_lr}) is above the learning rate ({})",
                    self.lr
                )));
            }
        }
        if spec.file.head == spec::Head::Regression && !self.device.host_memory() {
            return Err(Error::BadInput(
                "a regression head trains on the CPU devices only".into(),
            ));
        }
        if spec.file.early_stopping.is_some() && self.holdout.is_none() {
            return Err(Error::BadInput(format!(
                "model {:?} stops early on a validation split: pass --holdout FRACTION",
                self.model
            )));
        }
        Ok(())
    }
}

/// Figures of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Accuracy on the training batches as they were trained (classification).
    #[serde(default)]
    pub train_accuracy: Option<f64>,
    /// Loss on the validation split after the epoch (with `--holdout`).
    #[serde(default)]
    pub validation_loss: Option<f64>,
    /// Accuracy on the validation split after the epoch.
    #[serde(default)]
    pub validation_accuracy: Option<f64>,
    /// Accuracy on the test split after the epoch.
    pub test_accuracy: Option<f64>,
    /// Regression: root mean squared error on the training batches as they were
    /// trained (the accuracies are then 0 or absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_rmse: Option<f64>,
    /// Regression: on the validation split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_rmse: Option<f64>,
    /// Regression: on the test split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_rmse: Option<f64>,
    /// The learning rate of the epoch.
    #[serde(default)]
    pub lr: f64,
    /// Seconds of training (not evaluation).
    pub seconds: f64,
    /// Training records per second.
    pub samples_per_s: f64,
}

/// Receives training progress (the CLI draws bars).
pub trait TrainProgress: Sync {
    /// An epoch starts with `records` to train.
    fn epoch_start(&self, _epoch: usize, _records: u64) {}
    /// `done` records trained so far this epoch, with running loss and accuracy (NaN
    /// for a regression).
    fn step(&self, _done: u64, _loss: f64, _accuracy: f64, _samples_per_s: f64) {}
    /// An epoch is over.
    fn epoch_end(&self, _m: &EpochMetrics) {}
}

/// Reports nothing.
pub struct Quiet;
impl TrainProgress for Quiet {}

/// A trained model, in memory.
pub struct Trained {
    /// What it is.
    pub spec: ModelSpec,
    /// Weights as Burnpack bytes.
    pub weights: Zeroizing<Vec<u8>>,
    /// SHA-256 of the weights ([`model::weights_digest`]).
    pub weights_sha256: [u8; 32],
    /// Per epoch.
    pub epochs: Vec<EpochMetrics>,
    /// With early stopping: the epoch whose weights these are (the lowest validation
    /// loss).
    pub best_epoch: Option<usize>,
    /// Seconds spent in the training loop (all epochs, evaluation included).
    pub seconds: f64,
}

impl std::fmt::Debug for Trained {
    /// Leaves the weights and their digest out: a digest of deterministic training
    /// confirms a guess of the data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Trained({}, {} epochs)",
            self.spec.name(),
            self.epochs.len()
        )
    }
}

/// The CPU training backend.
pub type CpuTrain = Autodiff<Flex>;

/// The CPU training backend through LibTorch (`--device torch-cpu`).
#[cfg(feature = "torch")]
pub type TorchCpuTrain = Autodiff<burn::backend::LibTorch<f32>>;

/// Trains on the CPU backend `cfg.device` names (Flex, or LibTorch in a build with the
/// `torch` feature), from records in host memory.
pub fn train(data: &Dataset, cfg: &TrainConfig, progress: &dyn TrainProgress) -> Result<Trained> {
    match cfg.device {
        crate::device::DeviceKind::Cpu => {
            train_on::<CpuTrain>(data, cfg, &Default::default(), progress)
        }
        #[cfg(feature = "torch")]
        crate::device::DeviceKind::TorchCpu => {
            crate::libtorch::keep_freed_memory();
            train_on::<TorchCpuTrain>(
                data,
                cfg,
                &burn::backend::libtorch::LibTorchDevice::Cpu,
                progress,
            )
        }
        other if !other.available() => Err(other.not_built()),
        other => Err(Error::Bug(format!(
            "train() is the CPU path; {} records are not in host memory",
            other.name()
        ))),
    }
}

/// A split a [`Feed`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// What the model is trained on.
    Train,
    /// Held out from training (`--holdout`): validation loss and early stopping.
    Validation,
    /// The test split: accuracy after every epoch.
    Test,
}

/// Where a job's batches come from: records in host memory ([`Dataset`], the CPU path)
/// or in device memory (the GPU path, `crate::device`). `B` is the backend the tensors
/// are made on (for training, the inner backend of the autodiff one).
pub trait Feed<B: Backend> {
    /// Records in a split, if the feed has it (the training split always).
    fn len(&self, part: Part) -> Option<usize>;
    /// Shape of one record as (channels, height, width).
    fn input_shape(&self) -> [usize; 3];
    /// Number of classes (1 for real-valued labels).
    fn classes(&self) -> usize;
    /// Why a classification head cannot train on these labels, if it cannot.
    fn class_problem(&self) -> Option<String> {
        None
    }
    /// Calls `f(features [n, c, h, w], labels [n])` for each run of `batch_size`
    /// records of `order` in split `part`.
    fn for_each_batch(
        &self,
        part: Part,
        order: &[u32],
        batch_size: usize,
        device: &B::Device,
        f: &mut dyn FnMut(Tensor<B, 4>, Tensor<B, 1, Int>) -> Result<()>,
    ) -> Result<()>;
    /// As [`Feed::for_each_batch`], with real-valued labels (regression).
    fn for_each_value_batch(
        &self,
        _part: Part,
        _order: &[u32],
        _batch_size: usize,
        _device: &B::Device,
        _f: &mut dyn FnMut(Tensor<B, 4>, Tensor<B, 1>) -> Result<()>,
    ) -> Result<()> {
        Err(Error::BadInput(
            "regression trains on the CPU device only".into(),
        ))
    }
}

impl<B: Backend> Feed<B> for Dataset {
    fn len(&self, part: Part) -> Option<usize> {
        self.split(part).map(|s| s.count)
    }

    fn input_shape(&self) -> [usize; 3] {
        Dataset::input_shape(self)
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn class_problem(&self) -> Option<String> {
        Dataset::class_problem(self).map(str::to_owned)
    }

    fn for_each_batch(
        &self,
        part: Part,
        order: &[u32],
        batch_size: usize,
        device: &B::Device,
        f: &mut dyn FnMut(Tensor<B, 4>, Tensor<B, 1, Int>) -> Result<()>,
    ) -> Result<()> {
        let split = self
            .split(part)
            .ok_or_else(|| Error::Bug(format!("no {part:?} split")))?;
        let input = Dataset::input_shape(self);
        split.for_each_batch(&self.schema, order, batch_size, PREFETCH, |b| {
            let (x, y) = (features::<B>(&b, input, device), labels::<B>(&b, device));
            drop(b);
            f(x, y)
        })
    }

    fn for_each_value_batch(
        &self,
        part: Part,
        order: &[u32],
        batch_size: usize,
        device: &B::Device,
        f: &mut dyn FnMut(Tensor<B, 4>, Tensor<B, 1>) -> Result<()>,
    ) -> Result<()> {
        let split = self
            .split(part)
            .ok_or_else(|| Error::Bug(format!("no {part:?} split")))?;
        let input = Dataset::input_shape(self);
        split.for_each_batch(&self.schema, order, batch_size, PREFETCH, |b| {
            let x = features::<B>(&b, input, device);
            let y = Tensor::<B, 1>::from_data(TensorData::new(b.values.clone(), [b.len()]), device);
            drop(b);
            f(x, y)
        })
    }
}

fn features<B: Backend>(b: &Batch, input: [usize; 3], device: &B::Device) -> Tensor<B, 4> {
    let [c, h, w] = input;
    Tensor::<B, 4>::from_data(
        TensorData::new(b.features.clone(), [b.len(), c, h, w]),
        device,
    )
}

fn labels<B: Backend>(b: &Batch, device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::<B, 1, Int>::from_data(TensorData::new(b.labels.clone(), [b.len()]), device)
}

fn correct<B: Backend>(logits: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> usize {
    let n = y.dims()[0];
    let pred = logits.argmax(1).reshape([n]);
    pred.equal(y).int().sum().into_scalar().elem::<i64>() as usize
}

fn in_order(n: usize) -> Vec<u32> {
    (0..n as u32).collect()
}

/// Accuracy and confusion matrix of `net` on split `part` of `feed`. Counts are
/// accumulated on the backend's device; only the `k × k` totals leave it.
pub fn evaluate_feed<B: Backend>(
    net: &Net<B>,
    feed: &dyn Feed<B>,
    part: Part,
    spec: &ModelSpec,
    device: &B::Device,
) -> Result<(f64, Vec<Vec<u64>>)> {
    let k = spec.classes;
    let count = feed.len(part).unwrap_or(0);
    let mut counts = Tensor::<B, 1, Int>::zeros([k * k], device);
    let batch = eval_batch(spec);
    feed.for_each_batch(part, &in_order(count), batch, device, &mut |x, y| {
        let n = y.dims()[0];
        let pred = net.forward(x).argmax(1).reshape([n]);
        // Cell (true, predicted) of the matrix; a label outside the model's classes
        // was refused when the data was loaded.
        let cell = y.clamp(0, k as i64 - 1) * (k as i64) + pred;
        counts = counts.clone().scatter(
            0,
            cell,
            Tensor::<B, 1, Int>::ones([n], device),
            burn::tensor::IndexingUpdateOp::Add,
        );
        Ok(())
    })?;
    let flat: Vec<i64> = counts
        .into_data()
        .convert::<i64>()
        .to_vec()
        .map_err(|e| Error::Bug(format!("confusion counts: {e:?}")))?;
    let confusion: Vec<Vec<u64>> = flat
        .chunks(k.max(1))
        .map(|row| row.iter().map(|&v| v.max(0) as u64).collect())
        .collect();
    let right: u64 = (0..k).map(|i| confusion[i][i]).sum();
    Ok((right as f64 / count.max(1) as f64, confusion))
}

/// Mean cross-entropy and accuracy of `net` on split `part` (no gradients).
fn loss_and_accuracy<B: Backend>(
    net: &Net<B>,
    feed: &dyn Feed<B>,
    part: Part,
    spec: &ModelSpec,
    device: &B::Device,
) -> Result<(f64, f64)> {
    let count = feed.len(part).unwrap_or(0);
    let loss_fn = CrossEntropyLossConfig::new().init::<B>(device);
    let (mut loss, mut right) = (0f64, 0usize);
    let batch = eval_batch(spec);
    feed.for_each_batch(part, &in_order(count), batch, device, &mut |x, y| {
        let n = y.dims()[0];
        let logits = net.forward(x);
        loss += loss_fn
            .forward(logits.clone(), y.clone())
            .into_scalar()
            .elem::<f64>()
            * n as f64;
        right += correct(logits, y);
        Ok(())
    })?;
    let n = count.max(1) as f64;
    Ok((loss / n, right as f64 / n))
}

/// Mean squared error of a regression `net` on split `part` (no gradients).
fn mean_squared_error<B: Backend>(
    net: &Net<B>,
    feed: &dyn Feed<B>,
    part: Part,
    spec: &ModelSpec,
    device: &B::Device,
) -> Result<f64> {
    let count = feed.len(part).unwrap_or(0);
    let mut sse = 0f64;
    feed.for_each_value_batch(
        part,
        &in_order(count),
        eval_batch(spec),
        device,
        &mut |x, y| {
            let n = y.dims()[0];
            let d = net.forward(x).reshape([n]) - y;
            sse += (d.clone() * d).sum().into_scalar().elem::<f64>();
            Ok(())
        },
    )?;
    Ok(sse / count.max(1) as f64)
}

/// Per-feature mean and standard deviation of the training split, on the backend's
/// device (only the two vectors leave it), in two passes over data shifted by the first
/// record: the sums then carry the features' spread, not their magnitude, so `f32`
/// keeps their precision, and a constant feature has a deviation of exactly 0.
fn feature_statistics<B: Backend>(
    feed: &dyn Feed<B>,
    device: &B::Device,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let [c, h, w] = feed.input_shape();
    let f = c * h * w;
    let n = feed.len(Part::Train).unwrap_or(0);
    let order = in_order(n);
    let mut shift: Option<Tensor<B, 2>> = None;
    let mut sum = Tensor::<B, 1>::zeros([f], device);
    feed.for_each_batch(Part::Train, &order, EVAL_BATCH, device, &mut |x, _| {
        let m = x.dims()[0];
        let x = x.reshape([m, f]);
        let s = shift
            .get_or_insert_with(|| x.clone().slice([0..1, 0..f]))
            .clone();
        sum = sum.clone() + (x - s).sum_dim(0).reshape([f]);
        Ok(())
    })?;
    let shift = shift.ok_or_else(|| Error::Bug("an empty training split".into()))?;
    let mean_shifted = (sum / (n.max(1) as f32)).unsqueeze::<2>();
    let mut sq = Tensor::<B, 1>::zeros([f], device);
    feed.for_each_batch(Part::Train, &order, EVAL_BATCH, device, &mut |x, _| {
        let m = x.dims()[0];
        let d = x.reshape([m, f]) - shift.clone() - mean_shifted.clone();
        sq = sq.clone() + (d.clone() * d).sum_dim(0).reshape([f]);
        Ok(())
    })?;
    let std = (sq / (n.max(1) as f32)).sqrt();
    let mean = (shift + mean_shifted).reshape([f]);
    let host = |t: Tensor<B, 1>| {
        t.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::Bug(format!("feature statistics: {e:?}")))
    };
    Ok((host(mean)?, host(std)?))
}

/// A batch's labels: classes or real values.
enum Target<B: Backend> {
    Class(Tensor<B, 1, Int>),
    Value(Tensor<B, 1>),
}

/// Trains on any autodiff backend, from records in host memory.
pub fn train_on<B: AutodiffBackend>(
    data: &Dataset,
    cfg: &TrainConfig,
    device: &B::Device,
    progress: &dyn TrainProgress,
) -> Result<Trained> {
    train_feed::<B>(data, cfg, device, progress)
}

/// Trains on any autodiff backend, from any [`Feed`], with the optimizer its spec names.
pub fn train_feed<B: AutodiffBackend>(
    data: &dyn Feed<B::InnerBackend>,
    cfg: &TrainConfig,
    device: &B::Device,
    progress: &dyn TrainProgress,
) -> Result<Trained> {
    cfg.check_fits(data.input_shape())?;
    let s = cfg.spec()?;
    if s.file.head == spec::Head::Classification {
        if let Some(p) = data.class_problem() {
            return Err(Error::BadInput(format!("model {:?}: {p}", cfg.model)));
        }
    }
    let spec = ModelSpec {
        input: data.input_shape(),
        classes: s.file.head.outputs(data.classes()),
        spec: s,
    };
    let mut net: Net<B> = spec.init(cfg.seed, device)?;
    if net.standardizes() {
        let (mean, std) = feature_statistics::<B::InnerBackend>(data, device)?;
        net.set_standardization(&mean, &std, device);
    }
    let f32_decay = |d: f64| (d > 0.0).then(|| WeightDecayConfig::new(d as f32));
    match spec.spec.file.optimizer {
        spec::Optimizer::Sgd {
            momentum,
            weight_decay,
        } => {
            let m = (momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0)
                    .with_nesterov(false)
            });
            let o = SgdConfig::new()
                .with_momentum(m)
                .with_weight_decay(f32_decay(weight_decay))
                .init::<B, Net<B>>();
            epochs(data, cfg, &spec, net, o, device, progress)
        }
        spec::Optimizer::Adam { weight_decay } => {
            let o = AdamConfig::new()
                .with_weight_decay(f32_decay(weight_decay))
                .init::<B, Net<B>>();
            epochs(data, cfg, &spec, net, o, device, progress)
        }
        spec::Optimizer::AdamW { weight_decay } => {
            let o = AdamWConfig::new()
                .with_weight_decay(weight_decay as f32)
                .init::<B, Net<B>>();
            epochs(data, cfg, &spec, net, o, device, progress)
        }
    }
}

/// The epochs, with any optimizer.
fn epochs<B: AutodiffBackend, O: Optimizer<Net<B>, B>>(
    data: &dyn Feed<B::InnerBackend>,
    cfg: &TrainConfig,
    spec: &ModelSpec,
    net: Net<B>,
    mut optim: O,
    device: &B::Device,
    progress: &dyn TrainProgress,
) -> Result<Trained> {
    // An Option, so that each step can hand the model to the optimizer by value (no
    // second reference: the optimizer may then update parameters in place).
    let mut net = Some(net);
    let loss_fn = CrossEntropyLossConfig::new().init::<B>(device);
    let file = &spec.spec.file;
    let regression = file.head == spec::Head::Regression;
    let started = Instant::now();
    let mut epochs = Vec::with_capacity(cfg.epochs);
    let train_len = data.len(Part::Train).unwrap_or(0);
    // Early stopping: the best validation loss so far, its epoch and its weights.
    let mut best: Option<(f64, usize, Net<B::InnerBackend>)> = None;
    for epoch in 1..=cfg.epochs {
        let lr = file.schedule.lr(cfg.lr, epoch, cfg.epochs);
        let order = epoch_order(train_len, cfg.seed, epoch as u64);
        progress.epoch_start(epoch, train_len as u64);
        let t = Instant::now();
        let (mut loss_sum, mut right, mut done) = (0f64, 0usize, 0usize);
        let mut step = |x: Tensor<B::InnerBackend, 4>, y: Target<B::InnerBackend>| {
            let x = Tensor::<B, 4>::from_inner(x);
            let m = net.take().ok_or_else(|| Error::Bug("model lost".into()))?;
            let out = m.forward(x);
            let (loss, n) = match y {
                Target::Class(y) => {
                    let y = Tensor::<B, 1, Int>::from_inner(y);
                    let n = y.dims()[0];
                    let loss = loss_fn.forward(out.clone(), y.clone());
                    right += correct(out.detach(), y);
                    (loss, n)
                }
                Target::Value(y) => {
                    let y = Tensor::<B, 1>::from_inner(y);
                    let n = y.dims()[0];
                    let d = out.reshape([n]) - y;
                    ((d.clone() * d).mean(), n)
                }
            };
            let l = loss.clone().into_scalar().elem::<f64>();
            if !l.is_finite() {
                return Err(Error::BadInput(format!(
                    "training diverged in epoch {epoch} (loss {l}): lower the learning rate"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            net = Some(optim.step(lr, m, grads));
            loss_sum += l * n as f64;
            done += n;
            let secs = t.elapsed().as_secs_f64().max(1e-9);
            // Accuracy means nothing for a regression: NaN, which the bar leaves out.
            let accuracy = if regression {
                f64::NAN
            } else {
                right as f64 / done as f64
            };
            progress.step(
                done as u64,
                loss_sum / done as f64,
                accuracy,
                done as f64 / secs,
            );
            Ok(())
        };
        if regression {
            data.for_each_value_batch(Part::Train, &order, cfg.batch_size, device, &mut |x, y| {
                step(x, Target::Value(y))
            })?;
        } else {
            data.for_each_batch(Part::Train, &order, cfg.batch_size, device, &mut |x, y| {
                step(x, Target::Class(y))
            })?;
        }
        let seconds = t.elapsed().as_secs_f64();
        let valid = net
            .as_ref()
            .ok_or_else(|| Error::Bug("model lost".into()))?
            .valid();
        let has = |p: Part| data.len(p).is_some();
        // (loss, accuracy) on validation; for regression the loss is the MSE and the
        // accuracy field stays empty.
        let validation = match (has(Part::Validation), regression) {
            (false, _) => None,
            (true, false) => Some(loss_and_accuracy(
                &valid,
                data,
                Part::Validation,
                spec,
                device,
            )?),
            (true, true) => Some((
                mean_squared_error(&valid, data, Part::Validation, spec, device)?,
                f64::NAN,
            )),
        };
        let (test_accuracy, test_rmse) = match (has(Part::Test), regression) {
            (false, _) => (None, None),
            (true, false) => (
                Some(evaluate_feed(&valid, data, Part::Test, spec, device)?.0),
                None,
            ),
            (true, true) => (
                None,
                Some(mean_squared_error(&valid, data, Part::Test, spec, device)?.sqrt()),
            ),
        };
        let loss = loss_sum / done.max(1) as f64;
        let m = EpochMetrics {
            epoch,
            loss,
            train_accuracy: (!regression).then(|| right as f64 / done.max(1) as f64),
            validation_loss: validation.map(|v| v.0),
            validation_accuracy: validation.map(|v| v.1).filter(|a| !a.is_nan()),
            test_accuracy,
            train_rmse: regression.then(|| loss.sqrt()),
            validation_rmse: validation.filter(|_| regression).map(|v| v.0.sqrt()),
            test_rmse,
            lr,
            seconds,
            samples_per_s: done as f64 / seconds.max(1e-9),
        };
        progress.epoch_end(&m);
        epochs.push(m);
        if let (Some(es), Some((vl, _))) = (file.early_stopping, validation) {
            let improved = best.as_ref().is_none_or(|(b, _, _)| vl < b - es.min_delta);
            if improved {
                best = Some((vl, epoch, valid));
            } else if best
                .as_ref()
                .is_some_and(|(_, e, _)| epoch - e >= es.patience)
            {
                break;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (net, best_epoch) = match best {
        Some((_, e, n)) => (n, Some(e)),
        None => (
            net.ok_or_else(|| Error::Bug("model lost".into()))?.valid(),
            None,
        ),
    };
    Ok(Trained {
        spec: spec.clone(),
        weights_sha256: model::weights_digest(&net),
        weights: model::to_burnpack(&net)?,
        epochs,
        best_epoch,
        seconds,
    })
}
