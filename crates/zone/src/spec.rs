//! Model specs: an architecture, its head, optimizer, learning-rate schedule and early
//! stopping, declared in a TOML file (`docs/model-spec.md`) rather than written as code.
//!
//! A job trains only what a spec declares, with layers this crate implements: the
//! operator chooses an architecture, never code that runs beside the records. The spec's
//! SHA-256 (over the file's bytes) names it in `train.json`, in the sealed metrics and
//! in a dataset's policy (`models = [...]`).
//!
//! Everything here is checked before a job attests: [`Spec::parse`] reads the file and
//! [`Spec::plan`] walks the layers over the dataset's input shape, with errors that name
//! the layer (`layer 3 (linear)`) and the field.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The built-in models, as the spec files shipped in `models/`: (name, TOML).
pub const BUILTIN: [(&str, &str); 3] = [
    ("mlp", include_str!("../../../models/mlp.toml")),
    ("lenet5", include_str!("../../../models/lenet5.toml")),
    ("cnn", include_str!("../../../models/cnn.toml")),
];

/// Most layers in a spec, residual bodies included.
pub const MAX_LAYERS: usize = 256;
/// Most trainable parameters a spec may declare (400 MiB of `f32`).
pub const MAX_PARAMETERS: u64 = 100_000_000;
/// Largest channel or feature count of one layer.
const MAX_WIDTH: usize = 1 << 16;
/// Largest kernel side.
const MAX_KERNEL: usize = 64;
/// Longest spec file (bytes).
pub const MAX_SPEC_BYTES: usize = 64 << 10;
/// Most activation elements one record may make, summed over the input and every
/// layer's output (64 MiB of `f32`): what a batch's memory grows with.
pub const MAX_ACTIVATIONS: u64 = 1 << 24;
/// Most classes a head may have (as many as a dataset may have).
pub const MAX_CLASSES: usize = 100_000;

/// A model spec as declared (see `docs/model-spec.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// A name for reports.
    pub name: String,
    /// Standardize every input feature with the training split's mean and standard
    /// deviation, computed inside the zone; the statistics are part of the model.
    #[serde(default)]
    pub standardize: bool,
    /// The layers, in order.
    #[serde(rename = "layer", default)]
    pub layers: Vec<Layer>,
    /// What the model predicts.
    #[serde(default)]
    pub head: Head,
    /// How the weights are updated.
    #[serde(default)]
    pub optimizer: Optimizer,
    /// How the learning rate changes over the epochs.
    #[serde(default)]
    pub schedule: Schedule,
    /// Stop when the validation loss stops improving.
    #[serde(default)]
    pub early_stopping: Option<EarlyStopping>,
}

fn one() -> usize {
    1
}

/// One layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Layer {
    /// 2-D convolution with a square kernel (and bias).
    Conv2d {
        /// Output channels.
        out: usize,
        /// Kernel side.
        kernel: usize,
        /// Stride (default 1).
        #[serde(default = "one")]
        stride: usize,
        /// Zero padding on each side (default 0).
        #[serde(default)]
        padding: usize,
    },
    /// Max pooling over square windows.
    MaxPool {
        /// Window side.
        kernel: usize,
        /// Stride (default: the window side).
        #[serde(default)]
        stride: Option<usize>,
    },
    /// Average pooling over square windows.
    AvgPool {
        /// Window side.
        kernel: usize,
        /// Stride (default: the window side).
        #[serde(default)]
        stride: Option<usize>,
    },
    /// Batch normalization over channels (images) or features (flat).
    BatchNorm,
    /// Dropout while training.
    Dropout {
        /// Probability of zeroing an element, in [0, 1).
        p: f64,
    },
    /// Fully connected layer (and bias); needs a flat input.
    Linear {
        /// Output features.
        out: usize,
    },
    /// Images `[c, h, w]` to flat `[c·h·w]`.
    Flatten,
    /// max(0, x).
    Relu,
    /// Gaussian error linear unit.
    Gelu,
    /// Logistic function.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// `x + body(x)`: the body's output shape must equal its input's; blocks do not nest.
    Residual {
        /// The body's layers.
        #[serde(rename = "layer")]
        layers: Vec<Layer>,
    },
}

impl Layer {
    /// The layer's type as written in a spec.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Conv2d { .. } => "conv2d",
            Layer::MaxPool { .. } => "max_pool",
            Layer::AvgPool { .. } => "avg_pool",
            Layer::BatchNorm => "batch_norm",
            Layer::Dropout { .. } => "dropout",
            Layer::Linear { .. } => "linear",
            Layer::Flatten => "flatten",
            Layer::Relu => "relu",
            Layer::Gelu => "gelu",
            Layer::Sigmoid => "sigmoid",
            Layer::Tanh => "tanh",
            Layer::Residual { .. } => "residual",
        }
    }
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Head {
    /// One of the dataset's classes: a linear layer to one logit per class, trained on
    /// cross-entropy.
    #[default]
    Classification,
    /// A real value: a linear layer to one output, trained on the mean squared error.
    /// Needs real-valued labels (`f32`/`f64`).
    Regression,
}

impl Head {
    /// The head's outputs for a dataset of `classes` classes.
    pub fn outputs(self, classes: usize) -> usize {
        match self {
            Head::Classification => classes,
            Head::Regression => 1,
        }
    }
}

/// The optimizer. The learning rate itself is the job's (`--lr`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Stochastic gradient descent.
    Sgd {
        /// Momentum (0: none).
        #[serde(default)]
        momentum: f64,
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
    /// Adam (Kingma & Ba), Burn's defaults (β 0.9, 0.999; ε 1e-5).
    Adam {
        /// L2 penalty added to the gradient.
        #[serde(default)]
        weight_decay: f64,
    },
    /// AdamW: Adam with decoupled weight decay.
    #[serde(rename = "adamw")]
    AdamW {
        /// Decoupled weight decay (default 0.01, PyTorch's).
        #[serde(default = "adamw_decay")]
        weight_decay: f64,
    },
}

fn adamw_decay() -> f64 {
    0.01
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer::Adam { weight_decay: 0.0 }
    }
}

/// The learning rate over the epochs, as a multiple of `--lr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The same rate throughout.
    #[default]
    Constant,
    /// Multiplied by `gamma` every `every` epochs.
    Step {
        /// Epochs between two decays.
        every: usize,
        /// Factor, in (0, 1].
        gamma: f64,
    },
    /// Cosine annealing from `--lr` (first epoch) to `min_lr` (last epoch).
    Cosine {
        /// Rate of the last epoch.
        #[serde(default)]
        min_lr: f64,
    },
}

impl Schedule {
    /// The learning rate of epoch `epoch` (from 1) of `epochs`, from `lr`.
    pub fn lr(&self, lr: f64, epoch: usize, epochs: usize) -> f64 {
        match *self {
            Schedule::Constant => lr,
            Schedule::Step { every, gamma } => lr * gamma.powi(((epoch - 1) / every.max(1)) as i32),
            Schedule::Cosine { min_lr } => {
                if epochs <= 1 {
                    return lr;
                }
                let t = (epoch - 1) as f64 / (epochs - 1) as f64;
                min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Stop when the validation loss has not improved by `min_delta` for `patience` epochs;
/// the weights of the best epoch are the model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest decrease of the validation loss that counts as improvement.
    #[serde(default)]
    pub min_delta: f64,
}

/// A parsed, checked spec with its source text and digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// What it declares.
    pub file: SpecFile,
    /// The TOML it was read from.
    pub text: String,
    /// SHA-256 of `text`'s bytes: what a policy lists.
    pub sha256: [u8; 32],
}

/// A layer's output: images `[c, h, w]` or flat features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Channels, height, width.
    Image(usize, usize, usize),
    /// Features.
    Flat(usize),
}

impl Shape {
    /// The shape of a dataset's records: flat when they are one row of features.
    pub fn of_input([c, h, w]: [usize; 3]) -> Shape {
        if c == 1 && h == 1 {
            Shape::Flat(w)
        } else {
            Shape::Image(c, h, w)
        }
    }

    /// Elements per record.
    pub fn elements(self) -> usize {
        match self {
            Shape::Image(c, h, w) => c * h * w,
            Shape::Flat(n) => n,
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Image(c, h, w) => write!(f, "{c}×{h}×{w}"),
            Shape::Flat(n) => write!(f, "{n} features"),
        }
    }
}

impl Spec {
    /// A built-in model by name (`mlp`, `lenet5`, `cnn`).
    pub fn builtin(name: &str) -> Option<Spec> {
        let name = match name {
            "lenet" | "lenet-5" => "lenet5",
            n => n,
        };
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        Some(Spec::parse(text).expect("the built-in specs parse (tested)"))
    }

    /// Reads a spec: a built-in name, or the path of a TOML file.
    pub fn load(name_or_path: &str) -> Result<Spec> {
        if let Some(s) = Spec::builtin(name_or_path) {
            return Ok(s);
        }
        let path = std::path::Path::new(name_or_path);
        if !name_or_path.ends_with(".toml") && !path.exists() {
            return Err(Error::BadInput(format!(
                "model {name_or_path:?}: not a built-in model ({}) nor a spec file (*.toml)",
                BUILTIN.map(|(n, _)| n).join(", ")
            )));
        }
        let bytes = std::fs::read(path)
            .map_err(|e| Error::BadInput(format!("model spec {}: {e}", path.display())))?;
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(Error::BadInput(format!(
                "model spec {}: larger than {MAX_SPEC_BYTES} bytes",
                path.display()
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::BadInput(format!("model spec {}: not UTF-8", path.display())))?;
        Spec::parse(&text)
            .map_err(|e| Error::BadInput(format!("model spec {}: {}", path.display(), msg(e))))
    }

    /// Parses and checks a spec's TOML (everything that does not depend on the data).
    pub fn parse(text: &str) -> Result<Spec> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(Error::BadInput(format!(
                "larger than {MAX_SPEC_BYTES} bytes"
            )));
        }
        let file: SpecFile =
            toml::from_str(text).map_err(|e| Error::BadInput(e.to_string().trim().to_owned()))?;
        file.check()?;
        Ok(Spec {
            sha256: Sha256::digest(text.as_bytes()).into(),
            text: text.to_owned(),
            file,
        })
    }

    /// The spec's SHA-256, hex.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }

    /// Walks the layers over records of shape `input` for `classes` classes: the shape
    /// after each layer, the trainable parameters and the activations per record, or
    /// the first layer that does not fit. All arithmetic is checked: a shape or count
    /// too large for the limits is an error, never a wrap.
    pub fn plan(&self, input: [usize; 3], classes: usize) -> Result<Plan> {
        self.file.check()?;
        let [c, h, w] = input;
        if c == 0 || h == 0 || w == 0 {
            return Err(Error::BadInput("empty input shape".into()));
        }
        if !(1..=MAX_CLASSES).contains(&classes) {
            return Err(Error::BadInput(format!(
                "{classes} classes: a head has 1 to {MAX_CLASSES}"
            )));
        }
        let elements = c
            .checked_mul(h)
            .and_then(|v| v.checked_mul(w))
            .filter(|&e| e as u64 <= MAX_ACTIVATIONS)
            .ok_or_else(|| {
                Error::BadInput(format!(
                    "records of {c}×{h}×{w} elements are larger than a model takes"
                ))
            })?;
        // The input, and standardization's two constants per feature.
        let mut count = Count {
            params: if self.file.standardize {
                2 * elements as u64
            } else {
                0
            },
            activations: elements as u64,
        };
        let shape = walk(&self.file.layers, Shape::of_input(input), "", &mut count)?;
        let features = match shape {
            Shape::Flat(n) => n,
            Shape::Image(..) => {
                return Err(Error::BadInput(format!(
                    "the head needs flat features, but the last layer gives {shape} images: end with a flatten layer"
                )))
            }
        };
        count.add_params("the head", (features as u64 + 1) * classes as u64)?;
        count.add_activations("the head", classes as u64)?;
        Ok(Plan {
            features,
            parameters: count.params,
            activations: count.activations,
        })
    }
}

fn msg(e: Error) -> String {
    match e {
        Error::BadInput(m) => m,
        e => e.to_string(),
    }
}

/// What [`Spec::plan`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Features the head receives.
    pub features: usize,
    /// Trainable parameters (and standardization's constants).
    pub parameters: u64,
    /// Activation elements one record makes, input and every layer's output.
    pub activations: u64,
}

/// Parameters and activations counted so far, within the limits.
struct Count {
    params: u64,
    activations: u64,
}

impl Count {
    fn add_params(&mut self, at: &str, n: u64) -> Result<()> {
        self.params = self
            .params
            .checked_add(n)
            .filter(|&p| p <= MAX_PARAMETERS)
            .ok_or_else(|| {
                Error::BadInput(format!(
                    "{at}: the model would have more than {MAX_PARAMETERS} parameters for this input"
                ))
            })?;
        Ok(())
    }

    fn add_activations(&mut self, at: &str, n: u64) -> Result<()> {
        self.activations = self
            .activations
            .checked_add(n)
            .filter(|&a| a <= MAX_ACTIVATIONS)
            .ok_or_else(|| {
                Error::BadInput(format!(
                    "{at}: the layers would make more than {MAX_ACTIVATIONS} activations per record (memory per batch grows with them)"
                ))
            })?;
        Ok(())
    }
}

impl SpecFile {
    /// The checks that do not depend on the data.
    fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::BadInput(m));
        // The name reaches the owner's terminal (`model open`): plain characters only.
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return bad(format!(
                "name {:?}: 1 to 64 characters from A-Z a-z 0-9 . _ -",
                self.name
            ));
        }
        if count(&self.layers) > MAX_LAYERS {
            return bad(format!("more than {MAX_LAYERS} layers"));
        }
        check_layers(&self.layers, "", 0)?;
        match self.optimizer {
            Optimizer::Sgd {
                momentum,
                weight_decay,
            } => {
                if !(0.0..1.0).contains(&momentum) {
                    return bad(format!(
                        "optimizer.momentum = {momentum}: must be in [0, 1)"
                    ));
                }
                check_decay(weight_decay)?;
            }
            Optimizer::Adam { weight_decay } | Optimizer::AdamW { weight_decay } => {
                check_decay(weight_decay)?
            }
        }
        match self.schedule {
            Schedule::Constant => {}
            Schedule::Step { every, gamma } => {
                if every == 0 {
                    return bad("schedule.every must be at least 1".into());
                }
                if !(gamma > 0.0 && gamma <= 1.0) {
                    return bad(format!("schedule.gamma = {gamma}: must be in (0, 1]"));
                }
            }
            Schedule::Cosine { min_lr } => {
                if !(min_lr.is_finite() && min_lr >= 0.0) {
                    return bad(format!("schedule.min_lr = {min_lr}: must be 0 or more"));
                }
            }
        }
        if let Some(es) = self.early_stopping {
            if es.patience == 0 {
                return bad("early_stopping.patience must be at least 1".into());
            }
            if !(es.min_delta.is_finite() && es.min_delta >= 0.0) {
                return bad("early_stopping.min_delta must be 0 or more".into());
            }
        }
        Ok(())
    }
}

fn check_decay(d: f64) -> Result<()> {
    if !(d.is_finite() && (0.0..1.0).contains(&d)) {
        return Err(Error::BadInput(format!(
            "optimizer.weight_decay = {d}: must be in [0, 1)"
        )));
    }
    Ok(())
}

fn count(layers: &[Layer]) -> usize {
    layers
        .iter()
        .map(|l| match l {
            Layer::Residual { layers } => 1 + count(layers),
            _ => 1,
        })
        .sum()
}

/// How a layer is named in errors: `layer 3 (linear)`, `layer 5.2 (conv2d)` inside a
/// residual block (counted from 1).
fn name(prefix: &str, i: usize, l: &Layer) -> String {
    format!("layer {prefix}{} ({})", i + 1, l.kind())
}

fn check_layers(layers: &[Layer], prefix: &str, depth: usize) -> Result<()> {
    for (i, l) in layers.iter().enumerate() {
        let at = || name(prefix, i, l);
        let bad = |m: String| Err(Error::BadInput(format!("{}: {m}", at())));
        match *l {
            Layer::Conv2d {
                out,
                kernel,
                stride,
                padding,
            } => {
                if out == 0 || out > MAX_WIDTH {
                    return bad(format!("out = {out}: must be 1 to {MAX_WIDTH}"));
                }
                if kernel == 0 || kernel > MAX_KERNEL {
                    return bad(format!("kernel = {kernel}: must be 1 to {MAX_KERNEL}"));
                }
                if stride == 0 || stride > MAX_KERNEL {
                    return bad(format!("stride = {stride}: must be 1 to {MAX_KERNEL}"));
                }
                if padding >= kernel {
                    return bad(format!(
                        "padding = {padding}: must be less than the kernel ({kernel})"
                    ));
                }
            }
            Layer::MaxPool { kernel, stride } | Layer::AvgPool { kernel, stride } => {
                if kernel == 0 || kernel > MAX_KERNEL {
                    return bad(format!("kernel = {kernel}: must be 1 to {MAX_KERNEL}"));
                }
                if stride.is_some_and(|s| s == 0 || s > MAX_KERNEL) {
                    return bad(format!("stride: must be 1 to {MAX_KERNEL}"));
                }
            }
            Layer::Dropout { p } => {
                if !(0.0..1.0).contains(&p) {
                    return bad(format!("p = {p}: must be in [0, 1)"));
                }
            }
            Layer::Linear { out } => {
                if out == 0 || out > MAX_WIDTH {
                    return bad(format!("out = {out}: must be 1 to {MAX_WIDTH}"));
                }
            }
            Layer::Residual { ref layers } => {
                if depth > 0 {
                    return bad("residual blocks do not nest".into());
                }
                if layers.is_empty() {
                    return bad("an empty body".into());
                }
                check_layers(layers, &format!("{prefix}{}.", i + 1), depth + 1)?;
            }
            Layer::BatchNorm
            | Layer::Flatten
            | Layer::Relu
            | Layer::Gelu
            | Layer::Sigmoid
            | Layer::Tanh => {}
        }
    }
    Ok(())
}

/// Output side of a window of `k` with `stride` and `padding` over `n`, if any.
fn out_side(n: usize, k: usize, stride: usize, padding: usize) -> Option<usize> {
    n.checked_add(padding.checked_mul(2)?)?
        .checked_sub(k)
        .map(|r| r / stride.max(1) + 1)
}

fn walk(layers: &[Layer], mut shape: Shape, prefix: &str, count: &mut Count) -> Result<Shape> {
    for (i, l) in layers.iter().enumerate() {
        let at = name(prefix, i, l);
        let image = |s: Shape| match s {
            Shape::Image(c, h, w) => Ok((c, h, w)),
            Shape::Flat(n) => Err(Error::BadInput(format!(
                "{at}: needs images, but its input is {n} flat features"
            ))),
        };
        let too_big = || Error::BadInput(format!("{at}: its output is larger than a model takes"));
        shape = match *l {
            Layer::Conv2d {
                out,
                kernel,
                stride,
                padding,
            } => {
                let (c, h, w) = image(shape)?;
                let (Some(h2), Some(w2)) = (
                    out_side(h, kernel, stride, padding),
                    out_side(w, kernel, stride, padding),
                ) else {
                    return Err(Error::BadInput(format!(
                        "{at}: a {kernel}×{kernel} kernel with padding {padding} does not fit its {c}×{h}×{w} input"
                    )));
                };
                let per_out = (c as u64)
                    .checked_mul((kernel * kernel) as u64)
                    .and_then(|v| v.checked_add(1))
                    .and_then(|v| v.checked_mul(out as u64))
                    .ok_or_else(too_big)?;
                count.add_params(&at, per_out)?;
                Shape::Image(out, h2, w2)
            }
            Layer::MaxPool { kernel, stride } | Layer::AvgPool { kernel, stride } => {
                let (c, h, w) = image(shape)?;
                let s = stride.unwrap_or(kernel);
                let (Some(h2), Some(w2)) = (out_side(h, kernel, s, 0), out_side(w, kernel, s, 0))
                else {
                    return Err(Error::BadInput(format!(
                        "{at}: a {kernel}×{kernel} window does not fit its {c}×{h}×{w} input"
                    )));
                };
                Shape::Image(c, h2, w2)
            }
            Layer::BatchNorm => {
                let n = match shape {
                    Shape::Image(c, ..) => c,
                    Shape::Flat(n) => n,
                };
                count.add_params(&at, 2 * n as u64)?;
                shape
            }
            Layer::Linear { out } => {
                let n = match shape {
                    Shape::Flat(n) => n,
                    Shape::Image(..) => {
                        return Err(Error::BadInput(format!(
                            "{at}: needs flat features, but its input is {shape} images: put a flatten layer before it"
                        )))
                    }
                };
                let p = (n as u64 + 1).checked_mul(out as u64).ok_or_else(too_big)?;
                count.add_params(&at, p)?;
                Shape::Flat(out)
            }
            Layer::Flatten => Shape::Flat(shape.elements()),
            Layer::Residual { ref layers } => {
                let body = walk(layers, shape, &format!("{prefix}{}.", i + 1), count)?;
                if body != shape {
                    return Err(Error::BadInput(format!(
                        "{at}: its body turns {shape} into {body}; a residual block must keep the shape"
                    )));
                }
                shape
            }
            Layer::Dropout { .. } | Layer::Relu | Layer::Gelu | Layer::Sigmoid | Layer::Tanh => {
                shape
            }
        };
        let elements = match shape {
            Shape::Image(c, h, w) => c
                .checked_mul(h)
                .and_then(|v| v.checked_mul(w))
                .ok_or_else(too_big)?,
            Shape::Flat(n) => n,
        };
        if elements == 0 {
            return Err(Error::BadInput(format!("{at}: gives an empty output")));
        }
        count.add_activations(&at, elements as u64)?;
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, input: [usize; 3]) -> String {
        match Spec::parse(text).and_then(|s| s.plan(input, 10)) {
            Err(Error::BadInput(m)) => m,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn builtins_parse_and_fit_fashion_mnist() {
        for (name, _) in BUILTIN {
            let s = Spec::builtin(name).unwrap();
            assert_eq!(s.file.name, name);
            s.plan([1, 28, 28], 10).unwrap();
        }
        // LeNet-5's parameter count for 28×28 inputs and 10 classes, as published for
        // this variant (padding 2 on the first convolution): 61,706.
        let p = Spec::builtin("lenet5")
            .unwrap()
            .plan([1, 28, 28], 10)
            .unwrap();
        assert_eq!(p.parameters, 61_706);
        assert_eq!(p.features, 84);
    }

    #[test]
    fn errors_name_the_layer_and_the_field() {
        let e = err(
            "name = \"x\"\n[[layer]]\ntype = \"conv2d\"\nout = 4\nkernal = 3\n",
            [1, 8, 8],
        );
        assert!(e.contains("kernal") && e.contains("line"), "{e}");
        let e = err(
            "name = \"x\"\n[[layer]]\ntype = \"conv2d\"\nout = 4\nkernel = 3\n[[layer]]\ntype = \"linear\"\nout = 3\n",
            [1, 8, 8],
        );
        assert!(
            e.starts_with("layer 2 (linear): needs flat features") && e.contains("flatten"),
            "{e}"
        );
        let e = err(
            "name = \"x\"\n[[layer]]\ntype = \"conv2d\"\nout = 4\nkernel = 9\n",
            [1, 8, 8],
        );
        assert!(e.starts_with("layer 1 (conv2d): a 9×9 kernel"), "{e}");
        let e = err(
            "name = \"x\"\n[[layer]]\ntype = \"dropout\"\np = 1.0\n",
            [1, 1, 8],
        );
        assert!(e.starts_with("layer 1 (dropout): p = 1"), "{e}");
        let e = err(
            "name = \"x\"\n[[layer]]\ntype = \"residual\"\n[[layer.layer]]\ntype = \"linear\"\nout = 3\n",
            [1, 1, 8],
        );
        assert!(
            e.starts_with("layer 1 (residual): its body turns 8 features into 3 features"),
            "{e}"
        );
        let e = err(
            "name = \"x\"\n[[layer]]\ntype = \"residual\"\n[[layer.layer]]\ntype = \"conv2d\"\nout = 3\nkernel = 3\n",
            [1, 1, 8],
        );
        assert!(e.starts_with("layer 1.1 (conv2d): needs images"), "{e}");
        let e = err(
            "name = \"x\"\n[[layer]]\ntype = \"conv2d\"\nout = 2\nkernel = 1\n",
            [3, 4, 4],
        );
        assert!(e.contains("end with a flatten layer"), "{e}");
        let e = err(
            "name = \"x\"\n[optimizer]\ntype = \"sgd\"\nmomentum = 1.5\n",
            [1, 1, 4],
        );
        assert!(e.contains("optimizer.momentum = 1.5"), "{e}");
        let e = err("name = \"x\"\n[[layer]]\ntype = \"softmax\"\n", [1, 1, 4]);
        assert!(e.contains("softmax") && e.contains("relu"), "{e}");
        let e = err(
            "name = \"x\"\n[[layer]]\ntype = \"linear\"\nout = 65536\n[[layer]]\ntype = \"linear\"\nout = 65536\n",
            [1, 1, 4],
        );
        assert!(e.contains("parameters"), "{e}");
    }

    #[test]
    fn sizes_are_checked_without_overflow() {
        // Widths that overflow usize or u64 in products are errors, never wraps.
        let s = Spec::parse("name = \"x\"\n").unwrap();
        for input in [[1 << 32, 1 << 32, 2], [1, 1, usize::MAX], [0, 4, 4]] {
            assert!(s.plan(input, 10).is_err(), "{input:?}");
        }
        assert!(s.plan([1, 1, 4], 1 << 32).is_err());
        // Few parameters, huge activations: one 1×1 convolution to 65536 channels.
        let e = err(
            "name = \"wide\"\n[[layer]]\ntype = \"conv2d\"\nout = 65536\nkernel = 1\n[[layer]]\ntype = \"flatten\"\n",
            [1, 28, 28],
        );
        assert!(
            e.starts_with("layer 1 (conv2d):") && e.contains("activations"),
            "{e}"
        );
        // Padding that grows the image layer after layer.
        let grow = "[[layer]]\ntype = \"conv2d\"\nout = 1\nkernel = 64\npadding = 63\n".repeat(40);
        let e = err(&format!("name = \"grow\"\n{grow}"), [1, 28, 28]);
        assert!(e.contains("activations"), "{e}");
        // A name reaches the owner's terminal: plain characters only.
        let e = err("name = \"\\u001b[31mred\"\n", [1, 1, 4]);
        assert!(e.starts_with("name "), "{e}");
    }

    #[test]
    fn the_example_specs_parse_and_fit() {
        let resnet = Spec::parse(include_str!("../../../examples/models/resnet-small.toml"));
        resnet.unwrap().plan([1, 28, 28], 10).unwrap();
        let tabular = Spec::parse(include_str!("../../../examples/models/tabular.toml"));
        tabular.unwrap().plan([1, 1, 30], 2).unwrap();
    }

    #[test]
    fn the_digest_is_over_the_files_bytes() {
        let a = Spec::parse("name = \"x\"\n").unwrap();
        let b = Spec::parse("name = \"x\" # the same spec\n").unwrap();
        assert_eq!(a.file, b.file);
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(
            a.sha256_hex(),
            hex::encode(Sha256::digest(b"name = \"x\"\n"))
        );
    }

    #[test]
    fn schedules() {
        let s = Schedule::Step {
            every: 2,
            gamma: 0.5,
        };
        let lrs: Vec<f64> = (1..=5).map(|e| s.lr(1.0, e, 5)).collect();
        assert_eq!(lrs, [1.0, 1.0, 0.5, 0.5, 0.25]);
        let c = Schedule::Cosine { min_lr: 0.1 };
        assert_eq!(c.lr(1.0, 1, 3), 1.0);
        assert!((c.lr(1.0, 2, 3) - 0.55).abs() < 1e-12);
        assert!((c.lr(1.0, 3, 3) - 0.1).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.3, 7, 9), 0.3);
    }
}
