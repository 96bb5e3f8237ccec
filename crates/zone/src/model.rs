//! A model spec ([`crate::spec`]) built as a Burn network, with its weights as bytes
//! (Burnpack, what is sealed) and as PyTorch-layout safetensors.

use std::sync::Mutex;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig, MaxPool2d, MaxPool2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Gelu, Linear, LinearConfig,
    PaddingConfig2d, Relu, Sigmoid, Tanh,
};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_store::{
    BurnToPyTorchAdapter, BurnpackStore, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::spec::{Layer as LayerSpec, Shape, Spec};

/// The CPU backend (Burn's Flex): deterministic, pure Rust.
pub type Cpu = burn::backend::Flex;

/// What a model is built for: a spec over records of one shape, with a number of classes.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The architecture and how it is trained.
    pub spec: Spec,
    /// Input as (channels, height, width).
    pub input: [usize; 3],
    /// Number of classes.
    pub classes: usize,
}

/// Images to flat features (no parameters).
#[derive(Module, Clone, Debug, Default)]
pub struct Flatten;

/// Per-feature standardization, `(x − mean) · scale`, with statistics of the training
/// split computed inside the zone; constants, never trained. Part of the weights, so
/// that evaluation and any later use apply what training applied.
#[derive(Module, Debug)]
pub struct Standardize<B: Backend> {
    /// Mean of each input feature.
    mean: Param<Tensor<B, 1>>,
    /// 1 / standard deviation of each feature (1 where a feature is constant).
    scale: Param<Tensor<B, 1>>,
}

/// `x + body(x)`.
#[derive(Module, Debug)]
pub struct Residual<B: Backend> {
    layers: Vec<Layer<B>>,
}

/// One layer of a spec'd network (anything but a residual block).
// Burn's Module derive works on the variants directly; one network is built per job.
#[derive(Module, Debug)]
#[allow(missing_docs, clippy::large_enum_variant)]
pub enum Layer<B: Backend> {
    Conv2d(Conv2d<B>),
    MaxPool(MaxPool2d),
    AvgPool(AvgPool2d),
    BatchNorm(BatchNorm<B>),
    Dropout(Dropout),
    Linear(Linear<B>),
    Flatten(Flatten),
    Relu(Relu),
    Gelu(Gelu),
    Sigmoid(Sigmoid),
    Tanh(Tanh),
}

/// A top-level layer: a plain one or a residual block of plain ones (blocks do not
/// nest: Burn's records cannot be recursive types).
#[derive(Module, Debug)]
#[allow(missing_docs, clippy::large_enum_variant)]
pub enum Block<B: Backend> {
    Layer(Layer<B>),
    Residual(Residual<B>),
}

/// A network built from a [`Spec`]: optional standardization, the layers, and the head
/// (a linear layer to one logit per class). Its tensors are named `standardize.*`,
/// `layers.N.*` (`layers.N.layers.M.*` in a residual block) and `head.*`, as in the
/// PyTorch module of `docs/model-spec.md`.
#[derive(Module, Debug)]
pub struct Net<B: Backend> {
    standardize: Option<Standardize<B>>,
    layers: Vec<Block<B>>,
    head: Linear<B>,
}

/// Serializes model initialization: Burn's random initializers draw from one global,
/// seeded generator, so two models made at once on different threads would interleave.
static INIT: Mutex<()> = Mutex::new(());

fn build_blocks<B: Backend>(
    specs: &[LayerSpec],
    mut shape: Shape,
    device: &B::Device,
) -> Vec<Block<B>> {
    let mut out = Vec::with_capacity(specs.len());
    for l in specs {
        let (block, next) = match l {
            LayerSpec::Residual { layers } => {
                let mut body = Vec::with_capacity(layers.len());
                let mut s = shape;
                for l in layers {
                    let (layer, next) = build_layer(l, s, device);
                    body.push(layer);
                    s = next;
                }
                (Block::Residual(Residual { layers: body }), shape)
            }
            l => {
                let (layer, next) = build_layer(l, shape, device);
                (Block::Layer(layer), next)
            }
        };
        out.push(block);
        shape = next;
    }
    out
}

/// One plain layer over input `shape` (which [`Spec::plan`] checked), and its output.
fn build_layer<B: Backend>(l: &LayerSpec, shape: Shape, device: &B::Device) -> (Layer<B>, Shape) {
    match *l {
        LayerSpec::Conv2d {
            out: o,
            kernel,
            stride,
            padding,
        } => {
            let Shape::Image(c, h, w) = shape else {
                unreachable!("Spec::plan checked the shapes")
            };
            let p = padding;
            let conv = Conv2dConfig::new([c, o], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                .init(device);
            let side = |n: usize| (n + 2 * p - kernel) / stride + 1;
            (Layer::Conv2d(conv), Shape::Image(o, side(h), side(w)))
        }
        LayerSpec::MaxPool { kernel, stride } | LayerSpec::AvgPool { kernel, stride } => {
            let Shape::Image(c, h, w) = shape else {
                unreachable!("Spec::plan checked the shapes")
            };
            let s = stride.unwrap_or(kernel);
            let side = |n: usize| (n - kernel) / s + 1;
            let layer = if matches!(l, LayerSpec::MaxPool { .. }) {
                Layer::MaxPool(
                    MaxPool2dConfig::new([kernel, kernel])
                        .with_strides([s, s])
                        .init(),
                )
            } else {
                Layer::AvgPool(
                    AvgPool2dConfig::new([kernel, kernel])
                        .with_strides([s, s])
                        .init(),
                )
            };
            (layer, Shape::Image(c, side(h), side(w)))
        }
        LayerSpec::BatchNorm => {
            let n = match shape {
                Shape::Image(c, ..) => c,
                Shape::Flat(n) => n,
            };
            (
                Layer::BatchNorm(BatchNormConfig::new(n).init(device)),
                shape,
            )
        }
        LayerSpec::Dropout { p } => (Layer::Dropout(DropoutConfig::new(p).init()), shape),
        LayerSpec::Linear { out: o } => {
            let n = shape.elements();
            (
                Layer::Linear(LinearConfig::new(n, o).init(device)),
                Shape::Flat(o),
            )
        }
        LayerSpec::Flatten => (Layer::Flatten(Flatten), Shape::Flat(shape.elements())),
        LayerSpec::Relu => (Layer::Relu(Relu::new()), shape),
        LayerSpec::Gelu => (Layer::Gelu(Gelu::new()), shape),
        LayerSpec::Sigmoid => (Layer::Sigmoid(Sigmoid::new()), shape),
        LayerSpec::Tanh => (Layer::Tanh(Tanh::new()), shape),
        LayerSpec::Residual { .. } => unreachable!("Spec::parse refuses nested residual blocks"),
    }
}

impl ModelSpec {
    /// Checks that the spec fits the input.
    pub fn check(&self) -> Result<()> {
        self.spec.plan(self.input, self.classes).map(drop)
    }

    /// The model's name (the spec's).
    pub fn name(&self) -> &str {
        &self.spec.file.name
    }

    fn build<B: Backend>(&self, device: &B::Device) -> Result<Net<B>> {
        let plan = self.spec.plan(self.input, self.classes)?;
        let layers = build_blocks(&self.spec.file.layers, Shape::of_input(self.input), device);
        let standardize = self.spec.file.standardize.then(|| {
            let n = Shape::of_input(self.input).elements();
            Standardize {
                mean: Param::from_tensor(Tensor::zeros([n], device)).set_require_grad(false),
                scale: Param::from_tensor(Tensor::ones([n], device)).set_require_grad(false),
            }
        });
        Ok(Net {
            standardize,
            layers,
            head: LinearConfig::new(plan.features, self.classes).init(device),
        })
    }

    /// A fresh model with initial weights fixed by `seed` (the same in every process
    /// and on every thread).
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> Result<Net<B>> {
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        B::seed(device, seed);
        let net = self.build::<B>(device)?;
        // Parameters are created lazily: draw them all now, while the seed is ours.
        let _ = weights_digest(&net);
        Ok(net)
    }

    /// A model with the weights in `bytes` (Burnpack, as [`to_burnpack`] writes).
    pub fn from_burnpack<B: Backend>(&self, bytes: &[u8], device: &B::Device) -> Result<Net<B>> {
        let mut store =
            BurnpackStore::from_bytes(Some(burn::tensor::Bytes::from_bytes_vec(bytes.to_vec())));
        self.load(&mut store, device)
    }

    /// A model with the weights of a PyTorch-layout safetensors file (as
    /// [`to_safetensors`] writes).
    pub fn from_safetensors<B: Backend>(&self, bytes: &[u8], device: &B::Device) -> Result<Net<B>> {
        let mut store = SafetensorsStore::from_bytes(Some(bytes.to_vec()))
            .with_from_adapter(PyTorchToBurnAdapter)
            .skip_enum_variants(true);
        self.load(&mut store, device)
    }

    /// Builds the model and loads every parameter from `store`: a missing or misshapen
    /// tensor (weights of another architecture or input) is an error, never a default.
    fn load<B: Backend, S: ModuleStore>(
        &self,
        store: &mut S,
        device: &B::Device,
    ) -> Result<Net<B>> {
        let mut net = {
            let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
            self.build::<B>(device)?
        };
        let r = net
            .load_from(store)
            .map_err(|e| Error::BadInput(format!("model weights do not load: {e}")))?;
        if !r.missing.is_empty() || !r.errors.is_empty() {
            return Err(Error::BadInput(format!(
                "model weights do not match a {} for this input: missing {:?}, errors {:?}",
                self.name(),
                r.missing,
                r.errors
            )));
        }
        Ok(net)
    }
}

/// A layer's activations: images `[n, c, h, w]` or flat `[n, features]`.
enum Act<B: Backend> {
    Image(Tensor<B, 4>),
    Flat(Tensor<B, 2>),
}

impl<B: Backend> Act<B> {
    fn image(self) -> Tensor<B, 4> {
        match self {
            Act::Image(x) => x,
            Act::Flat(_) => unreachable!("Spec::plan checked the shapes"),
        }
    }
    fn flat(self) -> Tensor<B, 2> {
        match self {
            Act::Image(x) => x.flatten(1, 3),
            Act::Flat(x) => x,
        }
    }
    fn map(
        self,
        f4: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>,
        f2: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
    ) -> Act<B> {
        match self {
            Act::Image(x) => Act::Image(f4(x)),
            Act::Flat(x) => Act::Flat(f2(x)),
        }
    }
    fn add(self, other: Act<B>) -> Act<B> {
        match (self, other) {
            (Act::Image(a), Act::Image(b)) => Act::Image(a + b),
            (a, b) => Act::Flat(a.flat() + b.flat()),
        }
    }
}

// Convolutions and ReLUs: with PyTorch's backward passes when training on LibTorch
// (`crate::libtorch`), Burn's layers otherwise.
#[cfg(feature = "torch")]
use crate::libtorch::{conv2d, relu};
#[cfg(not(feature = "torch"))]
fn conv2d<B: Backend>(m: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    m.forward(x)
}
#[cfg(not(feature = "torch"))]
fn relu<B: Backend, const D: usize>(m: &Relu, x: Tensor<B, D>) -> Tensor<B, D> {
    m.forward(x)
}

fn forward_layer<B: Backend>(l: &Layer<B>, x: Act<B>) -> Act<B> {
    match l {
        Layer::Conv2d(m) => Act::Image(conv2d(m, x.image())),
        Layer::MaxPool(m) => Act::Image(m.forward(x.image())),
        Layer::AvgPool(m) => Act::Image(m.forward(x.image())),
        Layer::BatchNorm(m) => x.map(|t| m.forward(t), |t| m.forward(t)),
        Layer::Dropout(m) => x.map(|t| m.forward(t), |t| m.forward(t)),
        Layer::Linear(m) => Act::Flat(m.forward(x.flat())),
        Layer::Flatten(_) => Act::Flat(x.flat()),
        Layer::Relu(m) => x.map(|t| relu(m, t), |t| relu(m, t)),
        Layer::Gelu(m) => x.map(|t| m.forward(t), |t| m.forward(t)),
        Layer::Sigmoid(m) => x.map(|t| m.forward(t), |t| m.forward(t)),
        Layer::Tanh(m) => x.map(|t| m.forward(t), |t| m.forward(t)),
    }
}

fn forward_blocks<B: Backend>(blocks: &[Block<B>], mut x: Act<B>) -> Act<B> {
    for b in blocks {
        x = match b {
            Block::Layer(l) => forward_layer(l, x),
            Block::Residual(r) => {
                let skip = match &x {
                    Act::Image(t) => Act::Image(t.clone()),
                    Act::Flat(t) => Act::Flat(t.clone()),
                };
                r.layers
                    .iter()
                    .fold(x, |x, l| forward_layer(l, x))
                    .add(skip)
            }
        };
    }
    x
}

impl<B: Backend> Net<B> {
    /// Logits `[n, classes]` for records `[n, c, h, w]` (a row of features is
    /// `[n, 1, 1, features]`).
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let [n, c, h, w] = x.dims();
        let x = match &self.standardize {
            Some(s) => {
                let flat = x.reshape([n, c * h * w]);
                let flat = (flat - s.mean.val().unsqueeze::<2>()) * s.scale.val().unsqueeze::<2>();
                flat.reshape([n, c, h, w])
            }
            None => x,
        };
        let x = if c == 1 && h == 1 {
            Act::Flat(x.reshape([n, w]))
        } else {
            Act::Image(x)
        };
        self.head.forward(forward_blocks(&self.layers, x).flat())
    }

    /// Whether the network standardizes its input (and so needs [`Net::set_standardization`]
    /// before training).
    pub fn standardizes(&self) -> bool {
        self.standardize.is_some()
    }

    /// Sets the standardization statistics: per-feature `mean` and `std` (a constant
    /// feature, deviation 0, or a non-finite one scales by 1). No effect on a network
    /// without standardization.
    pub fn set_standardization(&mut self, mean: &[f32], std: &[f32], device: &B::Device) {
        if let Some(s) = &mut self.standardize {
            let scale: Vec<f32> = std
                .iter()
                .map(|&d| {
                    if d.is_finite() && d >= f32::MIN_POSITIVE {
                        1.0 / d
                    } else {
                        1.0
                    }
                })
                .collect();
            let mk = |v: &[f32]| {
                Tensor::<B, 1>::from_data(
                    burn::tensor::TensorData::new(v.to_vec(), [v.len()]),
                    device,
                )
            };
            s.mean = Param::from_tensor(mk(mean)).set_require_grad(false);
            s.scale = Param::from_tensor(mk(&scale)).set_require_grad(false);
        }
    }
}

/// The weights as Burnpack bytes (Burn's own format): what a job seals.
pub fn to_burnpack<B: Backend>(net: &Net<B>) -> Result<Zeroizing<Vec<u8>>> {
    let mut store = BurnpackStore::from_bytes(None);
    net.save_into(&mut store)
        .map_err(|e| Error::Bug(format!("weights do not serialize: {e}")))?;
    let bytes = store
        .get_bytes()
        .map_err(|e| Error::Bug(format!("weights do not serialize: {e}")))?;
    Ok(Zeroizing::new(bytes.to_vec()))
}

/// The weights as safetensors in PyTorch's layout (Linear weights `[out, in]`), with
/// the spec in the file's metadata (`blindfold.spec`, its TOML; `blindfold.model`, its
/// name), for PyTorch (`docs/model-spec.md`) or Burn.
pub fn to_safetensors<B: Backend>(net: &Net<B>, spec: &ModelSpec) -> Result<Zeroizing<Vec<u8>>> {
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true)
        .metadata("blindfold.model", spec.name())
        .metadata("blindfold.spec", spec.spec.text.as_str())
        .metadata("blindfold.spec_sha256", spec.spec.sha256_hex())
        .metadata(
            "blindfold.input",
            format!("{},{},{}", spec.input[0], spec.input[1], spec.input[2]),
        )
        .metadata("blindfold.classes", spec.classes.to_string());
    net.save_into(&mut store)
        .map_err(|e| Error::Bug(format!("weights do not serialize: {e}")))?;
    let bytes = Zeroizing::new(
        store
            .get_bytes()
            .map_err(|e| Error::Bug(format!("weights do not serialize: {e}")))?,
    );
    sorted_header(&bytes)
}

/// The same safetensors file with its JSON header's members in sorted order: Burn's
/// writer emits the metadata map in hash order, so two exports of the same weights
/// differed in their first bytes. Tensor offsets are relative to the data section, so
/// only the header changes; it is padded with spaces to 8 bytes, as the format allows.
fn sorted_header(bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    use std::collections::BTreeMap;
    let bug = |what: &str| Error::Bug(format!("safetensors from Burn: {what}"));
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| bug("too short"))?;
    let end = 8usize
        .checked_add(len)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bug("truncated header"))?;
    let mut head: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|_| bug("header is not JSON"))?;
    if let Some(serde_json::Value::Object(meta)) = head.get("__metadata__") {
        let sorted: BTreeMap<&String, &serde_json::Value> = meta.iter().collect();
        let sorted = serde_json::to_value(sorted).map_err(|e| bug(&e.to_string()))?;
        head.insert("__metadata__".into(), sorted);
    }
    let mut json = serde_json::to_vec(&head).map_err(|e| bug(&e.to_string()))?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Zeroizing::new(Vec::with_capacity(8 + json.len() + bytes.len() - end));
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// Reads the [`ModelSpec`] that [`to_safetensors`] wrote into a file's metadata.
pub fn safetensors_spec(bytes: &[u8]) -> Result<ModelSpec> {
    let bad = |what: &str| Error::BadInput(format!("not a blindfold safetensors model: {what}"));
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| bad("too short"))?;
    let head = usize::try_from(len)
        .ok()
        .and_then(|l| bytes.get(8..8usize.checked_add(l)?))
        .ok_or_else(|| bad("truncated header"))?;
    let v: serde_json::Value =
        serde_json::from_slice(head).map_err(|_| bad("header is not JSON"))?;
    let meta = v.get("__metadata__").ok_or_else(|| bad("no metadata"))?;
    let field = |k: &str| {
        meta.get(k)
            .and_then(|x| x.as_str())
            .ok_or_else(|| bad(&format!("no {k}")))
    };
    let text = field("blindfold.spec").map_err(|_| {
        bad("no blindfold.spec in its metadata (written before model specs: open the sealed model again with this version)")
    })?;
    let spec = Spec::parse(text).map_err(|e| bad(&format!("its spec: {e}")))?;
    let input: Vec<usize> = field("blindfold.input")?
        .split(',')
        .map(|s| s.parse().map_err(|_| bad("input shape")))
        .collect::<Result<_>>()?;
    let input: [usize; 3] = input.try_into().map_err(|_| bad("input shape"))?;
    let classes = field("blindfold.classes")?
        .parse()
        .map_err(|_| bad("classes"))?;
    let spec = ModelSpec {
        spec,
        input,
        classes,
    };
    spec.check()?;
    Ok(spec)
}

/// SHA-256 over every parameter's path, shape and bytes, in path order: equal exactly
/// when the weights are bit-identical.
pub fn weights_digest<B: Backend>(net: &Net<B>) -> [u8; 32] {
    let mut snaps = net.collect(None, None, false);
    snaps.sort_by_key(|s| s.full_path());
    let mut h = Sha256::new();
    for s in snaps {
        h.update(s.full_path().as_bytes());
        h.update([0]);
        if let Ok(d) = s.to_data() {
            for dim in d.shape.iter() {
                h.update((*dim as u64).to_le_bytes());
            }
            h.update(d.as_bytes());
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn spec(name: &str) -> ModelSpec {
        ModelSpec {
            spec: Spec::builtin(name).unwrap(),
            input: [1, 28, 28],
            classes: 10,
        }
    }

    #[test]
    fn init_is_fixed_by_the_seed_and_nothing_else() {
        let d = Default::default();
        let a = weights_digest(&spec("lenet5").init::<Flex>(1, &d).unwrap());
        let _other = spec("cnn").init::<Flex>(99, &d).unwrap();
        let b = weights_digest(&spec("lenet5").init::<Flex>(1, &d).unwrap());
        let c = weights_digest(&spec("lenet5").init::<Flex>(2, &d).unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn weights_roundtrip_through_burnpack_and_safetensors() {
        let d = Default::default();
        for name in ["mlp", "lenet5", "cnn"] {
            let s = spec(name);
            let net = s.init::<Flex>(5, &d).unwrap();
            let want = weights_digest(&net);
            let bp = to_burnpack(&net).unwrap();
            assert_eq!(
                weights_digest(&s.from_burnpack::<Flex>(&bp, &d).unwrap()),
                want
            );
            let st = to_safetensors(&net, &s).unwrap();
            assert_eq!(safetensors_spec(&st).unwrap(), s);
            // The same weights give the same file, byte for byte (Burn's metadata map
            // is in hash order, which differs between maps).
            for _ in 0..8 {
                assert_eq!(to_safetensors(&net, &s).unwrap(), st, "{name}");
            }
            assert_eq!(
                weights_digest(&s.from_safetensors::<Flex>(&st, &d).unwrap()),
                want,
                "{name}"
            );
            // Weights of another architecture do not load silently.
            let other = spec(if name == "cnn" { "mlp" } else { "cnn" });
            assert!(other.from_burnpack::<Flex>(&bp, &d).is_err());
        }
    }

    #[test]
    fn too_small_inputs_are_refused() {
        let s = ModelSpec {
            input: [1, 8, 8],
            classes: 2,
            ..spec("lenet5")
        };
        assert!(s.check().is_err());
        assert!(ModelSpec {
            spec: Spec::builtin("mlp").unwrap(),
            ..s
        }
        .check()
        .is_ok());
    }

    #[test]
    fn every_layer_type_builds_trains_and_roundtrips() {
        use burn::backend::Autodiff;
        use burn::optim::{AdamConfig, GradientsParams, Optimizer};
        type B = Autodiff<Flex>;
        let text = r#"
name = "all"
standardize = true
[[layer]]
type = "conv2d"
out = 4
kernel = 3
padding = 1
[[layer]]
type = "batch_norm"
[[layer]]
type = "gelu"
[[layer]]
type = "residual"
  [[layer.layer]]
  type = "conv2d"
  out = 4
  kernel = 3
  padding = 1
  [[layer.layer]]
  type = "tanh"
[[layer]]
type = "avg_pool"
kernel = 2
[[layer]]
type = "max_pool"
kernel = 2
stride = 1
[[layer]]
type = "flatten"
[[layer]]
type = "dropout"
p = 0.25
[[layer]]
type = "linear"
out = 8
[[layer]]
type = "batch_norm"
[[layer]]
type = "sigmoid"
"#;
        let s = ModelSpec {
            spec: Spec::parse(text).unwrap(),
            input: [2, 6, 6],
            classes: 3,
        };
        let d = Default::default();
        let mut net = s.init::<B>(3, &d).unwrap();
        // Dropout draws from Burn's process-wide generator: hold the lock that keeps
        // other tests' initializations from interleaving with it.
        let guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        net.set_standardization(&[0.5; 72], &[2.0; 72], &d);
        let x = Tensor::<B, 4>::ones([5, 2, 6, 6], &d);
        let y = Tensor::<B, 1, burn::tensor::Int>::from_data([0, 1, 2, 0, 1], &d);
        let mut optim = AdamConfig::new().init::<B, Net<B>>();
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&d)
            .forward(net.forward(x.clone()), y);
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = optim.step(1e-2, net, grads);
        drop(guard);
        // Standardization is constant: training left it alone.
        let st = net.standardize.as_ref().unwrap();
        assert_eq!(
            st.mean.val().into_data().to_vec::<f32>().unwrap(),
            vec![0.5; 72]
        );
        let net = burn::module::AutodiffModule::valid(&net);
        let st = to_safetensors(&net, &s).unwrap();
        let back = s.from_safetensors::<Flex>(&st, &d).unwrap();
        assert_eq!(weights_digest(&back), weights_digest(&net));
        let x = Tensor::<Flex, 4>::ones([5, 2, 6, 6], &d);
        assert_eq!(
            back.forward(x.clone()).into_data(),
            net.forward(x).into_data()
        );
    }

    /// LeNet-5 as blindfold compiled it before model specs, kept here to show that the
    /// spec (`models/lenet5.toml`) builds the same network: the same initial weights
    /// for a seed, and the same weights after training steps.
    mod compiled {
        use super::*;
        use burn::backend::Autodiff;
        use burn::nn::loss::CrossEntropyLossConfig;
        use burn::optim::{AdamConfig, GradientsParams, Optimizer};
        use burn::tensor::{Int, TensorData};

        #[derive(Module, Debug)]
        struct Lenet5<B: Backend> {
            conv1: Conv2d<B>,
            conv2: Conv2d<B>,
            pool: MaxPool2d,
            fc1: Linear<B>,
            fc2: Linear<B>,
            fc3: Linear<B>,
            act: Relu,
        }

        impl<B: Backend> Lenet5<B> {
            fn new(seed: u64, device: &B::Device) -> Self {
                let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
                B::seed(device, seed);
                let m = Lenet5 {
                    conv1: Conv2dConfig::new([1, 6], [5, 5])
                        .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                        .init(device),
                    conv2: Conv2dConfig::new([6, 16], [5, 5]).init(device),
                    pool: MaxPool2dConfig::new([2, 2]).init(),
                    fc1: LinearConfig::new(16 * 5 * 5, 120).init(device),
                    fc2: LinearConfig::new(120, 84).init(device),
                    fc3: LinearConfig::new(84, 10).init(device),
                    act: Relu::new(),
                };
                let _ = values(&m);
                m
            }
            fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
                let x = self.pool.forward(self.act.forward(self.conv1.forward(x)));
                let x = self.pool.forward(self.act.forward(self.conv2.forward(x)));
                let x = x.flatten::<2>(1, 3);
                let x = self.act.forward(self.fc1.forward(x));
                let x = self.act.forward(self.fc2.forward(x));
                self.fc3.forward(x)
            }
        }

        /// Every parameter's values, in the module's order (names differ).
        fn values<B: Backend, M: Module<B>>(m: &M) -> Vec<Vec<f32>> {
            m.collect(None, None, false)
                .into_iter()
                .map(|s| s.to_data().unwrap().to_vec::<f32>().unwrap())
                .collect()
        }

        #[test]
        fn lenet5_from_its_spec_trains_to_the_compiled_weights() {
            type B = Autodiff<Flex>;
            let d = Default::default();
            let mut old = Lenet5::<B>::new(7, &d);
            let mut new = spec("lenet5").init::<B>(7, &d).unwrap();
            assert_eq!(values(&old), values(&new));
            let mut o1 = AdamConfig::new().init::<B, Lenet5<B>>();
            let mut o2 = AdamConfig::new().init::<B, Net<B>>();
            let loss = CrossEntropyLossConfig::new().init::<B>(&d);
            for step in 0..3 {
                // Inputs from a formula, not Burn's generator (shared by the process).
                let v: Vec<f32> = (0..8 * 28 * 28)
                    .map(|i| ((i * 7919 + step as usize * 104_729) % 1000) as f32 / 1000.0)
                    .collect();
                let x = Tensor::<B, 4>::from_data(TensorData::new(v, [8, 1, 28, 28]), &d);
                let y = Tensor::<B, 1, Int>::from_data([0, 1, 2, 3, 4, 5, 6, step], &d);
                let l = loss.forward(old.forward(x.clone()), y.clone());
                let g = GradientsParams::from_grads(l.backward(), &old);
                old = o1.step(1e-3, old, g);
                let l = loss.forward(new.forward(x), y);
                let g = GradientsParams::from_grads(l.backward(), &new);
                new = o2.step(1e-3, new, g);
            }
            assert_eq!(values(&old), values(&new));
        }
    }
}
