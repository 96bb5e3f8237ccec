//! The training loop: Adam on cross-entropy, batches in the order [`epoch_order`] fixes,
//! evaluation on the test split after every epoch.
//!
//! Nothing here knows whether the records were sealed: a sealed dataset and its
//! plaintext original give bit-identical weights for the same configuration.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::data::{epoch_order, Batch, Dataset};
use crate::error::{Error, Result};
use crate::model::{self, Arch, ModelSpec, Net};

/// Batches prepared ahead of the training step.
const PREFETCH: usize = 4;
/// Batch size for evaluation.
const EVAL_BATCH: usize = 1000;

/// What to train: saved beside the model as `train.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Architecture.
    pub model: Arch,
    /// Passes over the training split.
    pub epochs: usize,
    /// Records per step.
    pub batch_size: usize,
    /// Adam's learning rate.
    pub lr: f64,
    /// Fixes the initial weights and every epoch's record order.
    pub seed: u64,
    /// Where to train (and, for a sealed dataset, where records are decrypted).
    #[serde(default)]
    pub device: crate::device::DeviceKind,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: Arch::Lenet5,
            epochs: 1,
            batch_size: 64,
            lr: 1e-3,
            seed: 42,
            device: crate::device::DeviceKind::Cpu,
        }
    }
}

impl TrainConfig {
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

    /// Checks the values are usable.
    pub fn check(&self) -> Result<()> {
        if self.epochs == 0 || self.epochs > 10_000 {
            return Err(Error::BadInput("epochs must be 1 to 10000".into()));
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            return Err(Error::BadInput("batch size must be 1 to 65536".into()));
        }
        if !self.device.available() {
            return Err(Error::BadInput(format!(
                "this binary was built without the {0} backend: rebuild with `--features {0}`",
                self.device.name()
            )));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr < 10.0) {
            return Err(Error::BadInput(
                "learning rate must be a positive number below 10".into(),
            ));
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
    /// Accuracy on the training batches as they were trained.
    pub train_accuracy: f64,
    /// Accuracy on the test split after the epoch.
    pub test_accuracy: Option<f64>,
    /// Seconds of training (not evaluation).
    pub seconds: f64,
    /// Training records per second.
    pub samples_per_s: f64,
}

/// Receives training progress (the CLI draws bars).
pub trait TrainProgress: Sync {
    /// An epoch starts with `records` to train.
    fn epoch_start(&self, _epoch: usize, _records: u64) {}
    /// `done` records trained so far this epoch, with running loss and accuracy.
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
    /// Seconds spent in the training loop (all epochs, evaluation included).
    pub seconds: f64,
}

impl std::fmt::Debug for Trained {
    /// Leaves the weights and their digest out: a digest of deterministic training
    /// confirms a guess of the data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trained({:?}, {} epochs)", self.spec, self.epochs.len())
    }
}

/// The CPU training backend.
pub type CpuTrain = Autodiff<Flex>;

/// Trains on the CPU backend (Flex).
pub fn train(data: &Dataset, cfg: &TrainConfig, progress: &dyn TrainProgress) -> Result<Trained> {
    train_on::<CpuTrain>(data, cfg, &Default::default(), progress)
}

/// Where a job's batches come from: records in host memory ([`Dataset`], the CPU path)
/// or in device memory (the GPU path, `crate::device`). `B` is the backend the tensors
/// are made on (for training, the inner backend of the autodiff one).
pub trait Feed<B: Backend> {
    /// Records in the training split.
    fn train_len(&self) -> usize;
    /// Records in the test split, if there is one.
    fn test_len(&self) -> Option<usize>;
    /// Shape of one record as (channels, height, width).
    fn input_shape(&self) -> [usize; 3];
    /// Number of classes.
    fn classes(&self) -> usize;
    /// Calls `f(features [n, c, h, w], labels [n])` for each run of `batch_size`
    /// records of `order`, from the test split when `test`, else the training split.
    fn for_each_batch(
        &self,
        test: bool,
        order: &[u32],
        batch_size: usize,
        device: &B::Device,
        f: &mut dyn FnMut(Tensor<B, 4>, Tensor<B, 1, Int>) -> Result<()>,
    ) -> Result<()>;
}

impl<B: Backend> Feed<B> for Dataset {
    fn train_len(&self) -> usize {
        self.train.count
    }

    fn test_len(&self) -> Option<usize> {
        self.test.as_ref().map(|t| t.count)
    }

    fn input_shape(&self) -> [usize; 3] {
        Dataset::input_shape(self)
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn for_each_batch(
        &self,
        test: bool,
        order: &[u32],
        batch_size: usize,
        device: &B::Device,
        f: &mut dyn FnMut(Tensor<B, 4>, Tensor<B, 1, Int>) -> Result<()>,
    ) -> Result<()> {
        let split = if test {
            self.test
                .as_ref()
                .ok_or_else(|| Error::Bug("no test split".into()))?
        } else {
            &self.train
        };
        let input = Dataset::input_shape(self);
        split.for_each_batch(&self.schema, order, batch_size, PREFETCH, |b| {
            let (x, y) = (features::<B>(&b, input, device), labels::<B>(&b, device));
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

/// Accuracy and confusion matrix of `net` on a split of `feed` (the test split when
/// `test`). Counts are accumulated on the backend's device; only the `k × k` totals
/// leave it.
pub fn evaluate_feed<B: Backend>(
    net: &Net<B>,
    feed: &dyn Feed<B>,
    test: bool,
    spec: &ModelSpec,
    device: &B::Device,
) -> Result<(f64, Vec<Vec<u64>>)> {
    let k = spec.classes;
    let count = if test {
        feed.test_len().unwrap_or(0)
    } else {
        feed.train_len()
    };
    let order: Vec<u32> = (0..count as u32).collect();
    let mut counts = Tensor::<B, 1, Int>::zeros([k * k], device);
    feed.for_each_batch(test, &order, EVAL_BATCH, device, &mut |x, y| {
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

/// Trains on any autodiff backend, from records in host memory.
pub fn train_on<B: AutodiffBackend>(
    data: &Dataset,
    cfg: &TrainConfig,
    device: &B::Device,
    progress: &dyn TrainProgress,
) -> Result<Trained> {
    train_feed::<B>(data, cfg, device, progress)
}

/// Trains on any autodiff backend, from any [`Feed`].
pub fn train_feed<B: AutodiffBackend>(
    data: &dyn Feed<B::InnerBackend>,
    cfg: &TrainConfig,
    device: &B::Device,
    progress: &dyn TrainProgress,
) -> Result<Trained> {
    cfg.check()?;
    let spec = ModelSpec {
        arch: cfg.model,
        input: data.input_shape(),
        classes: data.classes(),
    };
    // An Option, so that each step can hand the model to the optimizer by value (no
    // second reference: the optimizer may then update parameters in place).
    let mut net: Option<Net<B>> = Some(spec.init(cfg.seed, device)?);
    let mut optim = AdamConfig::new().init::<B, Net<B>>();
    let loss_fn = CrossEntropyLossConfig::new().init::<B>(device);
    let started = Instant::now();
    let mut epochs = Vec::with_capacity(cfg.epochs);
    for epoch in 1..=cfg.epochs {
        let order = epoch_order(data.train_len(), cfg.seed, epoch as u64);
        progress.epoch_start(epoch, data.train_len() as u64);
        let t = Instant::now();
        let (mut loss_sum, mut right, mut done) = (0f64, 0usize, 0usize);
        data.for_each_batch(false, &order, cfg.batch_size, device, &mut |x, y| {
            let n = y.dims()[0];
            let (x, y) = (
                Tensor::<B, 4>::from_inner(x),
                Tensor::<B, 1, Int>::from_inner(y),
            );
            let m = net.take().ok_or_else(|| Error::Bug("model lost".into()))?;
            let logits = m.forward(x);
            let loss = loss_fn.forward(logits.clone(), y.clone());
            let l = loss.clone().into_scalar().elem::<f64>();
            if !l.is_finite() {
                return Err(Error::BadInput(format!(
                    "training diverged in epoch {epoch} (loss {l}): lower the learning rate"
                )));
            }
            right += correct(logits.detach(), y);
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            net = Some(optim.step(cfg.lr, m, grads));
            loss_sum += l * n as f64;
            done += n;
            let secs = t.elapsed().as_secs_f64().max(1e-9);
            progress.step(
                done as u64,
                loss_sum / done as f64,
                right as f64 / done as f64,
                done as f64 / secs,
            );
            Ok(())
        })?;
        let seconds = t.elapsed().as_secs_f64();
        let net = net
            .as_ref()
            .ok_or_else(|| Error::Bug("model lost".into()))?;
        let test_accuracy = match data.test_len() {
            Some(_) => Some(evaluate_feed(&net.valid(), data, true, &spec, device)?.0),
            None => None,
        };
        let m = EpochMetrics {
            epoch,
            loss: loss_sum / done.max(1) as f64,
            train_accuracy: right as f64 / done.max(1) as f64,
            test_accuracy,
            seconds,
            samples_per_s: done as f64 / seconds.max(1e-9),
        };
        progress.epoch_end(&m);
        epochs.push(m);
    }
    let seconds = started.elapsed().as_secs_f64();
    let net = net.ok_or_else(|| Error::Bug("model lost".into()))?;
    Ok(Trained {
        spec,
        weights_sha256: model::weights_digest(&net),
        weights: model::to_burnpack(&net)?,
        epochs,
        seconds,
    })
}
