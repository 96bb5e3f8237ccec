//! The models: an MLP, LeNet-5 and a small CNN, as one Burn module enum, with their
//! weights as bytes (Burnpack, what is sealed) and as PyTorch-layout safetensors.

use std::sync::Mutex;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_store::{
    BurnToPyTorchAdapter, BurnpackStore, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    SafetensorsStore,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The CPU backend (Burn's Flex): deterministic, pure Rust.
pub type Cpu = burn::backend::Flex;

/// Which model to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Flatten → 256 → ReLU → 128 → ReLU → classes.
    Mlp,
    /// LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: conv 6@5×5 (pad 2) → pool
    /// → conv 16@5×5 → pool → 120 → 84 → classes.
    Lenet5,
    /// conv 32@3×3 → pool → conv 64@3×3 → pool → 128 → classes (pad 1).
    Cnn,
}

impl Arch {
    /// Name as written on the command line and in sealed headers.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Lenet5 => "lenet5",
            Arch::Cnn => "cnn",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "mlp" => Some(Arch::Mlp),
            "lenet5" | "lenet" | "lenet-5" => Some(Arch::Lenet5),
            "cnn" => Some(Arch::Cnn),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a model is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Architecture.
    pub arch: Arch,
    /// Input as (channels, height, width).
    pub input: [usize; 3],
    /// Number of classes.
    pub classes: usize,
}

/// A multi-layer perceptron.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    fc3: Linear<B>,
    act: Relu,
}

/// LeNet-5.
#[derive(Module, Debug)]
pub struct Lenet5<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    pool: MaxPool2d,
    fc1: Linear<B>,
    fc2: Linear<B>,
    fc3: Linear<B>,
    act: Relu,
}

/// The small CNN.
#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    pool: MaxPool2d,
    fc1: Linear<B>,
    fc2: Linear<B>,
    act: Relu,
}

/// One of the models.
// One model lives per job, moved rarely: the size difference does not matter, and
// Burn's Module derive works on the variants directly.
#[derive(Module, Debug)]
#[allow(missing_docs, clippy::large_enum_variant)]
pub enum Net<B: Backend> {
    Mlp(Mlp<B>),
    Lenet5(Lenet5<B>),
    Cnn(Cnn<B>),
}

/// Serializes model initialization: Burn's random initializers draw from one global,
/// seeded generator, so two models made at once on different threads would interleave.
static INIT: Mutex<()> = Mutex::new(());

impl ModelSpec {
    /// Checks that the architecture fits the input.
    pub fn check(&self) -> Result<()> {
        let [c, h, w] = self.input;
        if c == 0 || h == 0 || w == 0 {
            return Err(Error::BadInput("empty input shape".into()));
        }
        let need = match self.arch {
            Arch::Mlp => 1,
            // conv5 (pad 2) → pool2 → conv5 → pool2 leaves ((h/2)-4)/2 ≥ 1.
            Arch::Lenet5 => 12,
            Arch::Cnn => 4,
        };
        if self.arch != Arch::Mlp && (h < need || w < need) {
            return Err(Error::BadInput(format!(
                "{} needs images of at least {need}×{need}; records are {h}×{w} (schema shape [{c}, {h}, {w}])",
                self.arch
            )));
        }
        Ok(())
    }

    fn build<B: Backend>(&self, device: &B::Device) -> Net<B> {
        let [c, h, w] = self.input;
        let k = self.classes;
        let pool = MaxPool2dConfig::new([2, 2]).init();
        match self.arch {
            Arch::Mlp => Net::Mlp(Mlp {
                fc1: LinearConfig::new(c * h * w, 256).init(device),
                fc2: LinearConfig::new(256, 128).init(device),
                fc3: LinearConfig::new(128, k).init(device),
                act: Relu::new(),
            }),
            Arch::Lenet5 => {
                let (h2, w2) = ((h / 2 - 4) / 2, (w / 2 - 4) / 2);
                Net::Lenet5(Lenet5 {
                    conv1: Conv2dConfig::new([c, 6], [5, 5])
                        .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                        .init(device),
                    conv2: Conv2dConfig::new([6, 16], [5, 5]).init(device),
                    pool,
                    fc1: LinearConfig::new(16 * h2 * w2, 120).init(device),
                    fc2: LinearConfig::new(120, 84).init(device),
                    fc3: LinearConfig::new(84, k).init(device),
                    act: Relu::new(),
                })
            }
            Arch::Cnn => {
                let (h2, w2) = (h / 4, w / 4);
                Net::Cnn(Cnn {
                    conv1: Conv2dConfig::new([c, 32], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device),
                    conv2: Conv2dConfig::new([32, 64], [3, 3])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(device),
                    pool,
                    fc1: LinearConfig::new(64 * h2 * w2, 128).init(device),
                    fc2: LinearConfig::new(128, k).init(device),
                    act: Relu::new(),
                })
            }
        }
    }

    /// A fresh model with initial weights fixed by `seed` (the same in every process
    /// and on every thread).
    pub fn init<B: Backend>(&self, seed: u64, device: &B::Device) -> Result<Net<B>> {
        self.check()?;
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        B::seed(device, seed);
        let net = self.build::<B>(device);
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
        self.check()?;
        let mut net = {
            let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
            self.build::<B>(device)
        };
        let r = net
            .load_from(store)
            .map_err(|e| Error::BadInput(format!("model weights do not load: {e}")))?;
        if !r.missing.is_empty() || !r.errors.is_empty() {
            return Err(Error::BadInput(format!(
                "model weights do not match a {} for this input: missing {:?}, errors {:?}",
                self.arch, r.missing, r.errors
            )));
        }
        Ok(net)
    }
}

impl<B: Backend> Net<B> {
    /// Logits `[n, classes]` for images `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        match self {
            Net::Mlp(m) => {
                let x = x.flatten::<2>(1, 3);
                let x = m.act.forward(m.fc1.forward(x));
                let x = m.act.forward(m.fc2.forward(x));
                m.fc3.forward(x)
            }
            Net::Lenet5(m) => {
                let x = m.pool.forward(m.act.forward(m.conv1.forward(x)));
                let x = m.pool.forward(m.act.forward(m.conv2.forward(x)));
                let x = x.flatten::<2>(1, 3);
                let x = m.act.forward(m.fc1.forward(x));
                let x = m.act.forward(m.fc2.forward(x));
                m.fc3.forward(x)
            }
            Net::Cnn(m) => {
                let x = m.pool.forward(m.act.forward(m.conv1.forward(x)));
                let x = m.pool.forward(m.act.forward(m.conv2.forward(x)));
                let x = x.flatten::<2>(1, 3);
                let x = m.act.forward(m.fc1.forward(x));
                m.fc2.forward(x)
            }
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
/// the architecture in the file's metadata (`blindfold.model`), for PyTorch or Burn.
pub fn to_safetensors<B: Backend>(net: &Net<B>, spec: &ModelSpec) -> Result<Zeroizing<Vec<u8>>> {
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .skip_enum_variants(true)
        .metadata("blindfold.model", spec.arch.name())
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
    let arch = Arch::from_name(field("blindfold.model")?).ok_or_else(|| bad("unknown model"))?;
    let input: Vec<usize> = field("blindfold.input")?
        .split(',')
        .map(|s| s.parse().map_err(|_| bad("input shape")))
        .collect::<Result<_>>()?;
    let input: [usize; 3] = input.try_into().map_err(|_| bad("input shape"))?;
    let classes = field("blindfold.classes")?
        .parse()
        .map_err(|_| bad("classes"))?;
    Ok(ModelSpec {
        arch,
        input,
        classes,
    })
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

    fn spec(arch: Arch) -> ModelSpec {
        ModelSpec {
            arch,
            input: [1, 28, 28],
            classes: 10,
        }
    }

    #[test]
    fn init_is_fixed_by_the_seed_and_nothing_else() {
        let d = Default::default();
        let a = weights_digest(&spec(Arch::Lenet5).init::<Flex>(1, &d).unwrap());
        let _other = spec(Arch::Cnn).init::<Flex>(99, &d).unwrap();
        let b = weights_digest(&spec(Arch::Lenet5).init::<Flex>(1, &d).unwrap());
        let c = weights_digest(&spec(Arch::Lenet5).init::<Flex>(2, &d).unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn weights_roundtrip_through_burnpack_and_safetensors() {
        let d = Default::default();
        for arch in [Arch::Mlp, Arch::Lenet5, Arch::Cnn] {
            let s = spec(arch);
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
                assert_eq!(to_safetensors(&net, &s).unwrap(), st, "{arch}");
            }
            assert_eq!(
                weights_digest(&s.from_safetensors::<Flex>(&st, &d).unwrap()),
                want,
                "{arch}"
            );
            // Weights of another architecture do not load silently.
            let other = spec(if arch == Arch::Cnn {
                Arch::Mlp
            } else {
                Arch::Cnn
            });
            assert!(other.from_burnpack::<Flex>(&bp, &d).is_err());
        }
    }

    #[test]
    fn too_small_inputs_are_refused() {
        let s = ModelSpec {
            arch: Arch::Lenet5,
            input: [1, 8, 8],
            classes: 2,
        };
        assert!(s.check().is_err());
        assert!(ModelSpec {
            arch: Arch::Mlp,
            ..s
        }
        .check()
        .is_ok());
    }
}
