//! `blindfold train`, `model open`, `eval`: the training job (trusted zone) and the
//! owner's side of its outputs.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use blindfold_attest::FetchOptions;
use blindfold_owner::import::{Format, ImportOptions, OutputSet};
use blindfold_owner::{Error, KeyStore};
use blindfold_store::Store;
use blindfold_zone::data::{Dataset, Splits};
use blindfold_zone::device::DeviceKind;
use blindfold_zone::job::{self, Source, METRICS_OBJECT, MODEL_OBJECT};
use blindfold_zone::model::{self, Arch, ModelSpec};
use blindfold_zone::train::{EpochMetrics, TrainConfig, TrainProgress};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::Bars;
use crate::Failure;

#[derive(Clone, Copy, ValueEnum)]
pub enum ModelArg {
    /// Flatten → 256 → 128 → classes.
    Mlp,
    /// LeNet-5: conv 6@5×5 → pool → conv 16@5×5 → pool → 120 → 84 → classes.
    Lenet5,
    /// conv 32@3×3 → pool → conv 64@3×3 → pool → 128 → classes (90.4% on Fashion-MNIST after 3 epochs).
    Cnn,
}

impl From<ModelArg> for Arch {
    fn from(m: ModelArg) -> Arch {
        match m {
            ModelArg::Mlp => Arch::Mlp,
            ModelArg::Lenet5 => Arch::Lenet5,
            ModelArg::Cnn => Arch::Cnn,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    /// Burn's Flex CPU backend; records decrypted in the trusted zone's memory.
    Cpu,
    /// Any Vulkan device through wgpu (without a GPU: Mesa's lavapipe, slowly).
    Wgpu,
    /// An NVIDIA GPU through CUDA (loaded at run time).
    Cuda,
}

impl From<DeviceArg> for DeviceKind {
    fn from(d: DeviceArg) -> DeviceKind {
        match d {
            DeviceArg::Cpu => DeviceKind::Cpu,
            DeviceArg::Wgpu => DeviceKind::Wgpu,
            DeviceArg::Cuda => DeviceKind::Cuda,
        }
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("data").required(true).args(["dataset", "plaintext"])))]
pub struct TrainArgs {
    /// The sealed dataset (folder, file:///path, s3://bucket/prefix). Its key comes from
    /// the broker, by attestation.
    #[arg(long, value_name = "DEST")]
    dataset: Option<String>,
    /// The baseline: train on the owner's plaintext files instead (same importers as
    /// `seal`, same batches). Needs --owner-key.
    #[arg(long, value_name = "INPUT")]
    plaintext: Option<PathBuf>,
    /// Where the sealed model, sealed metrics and train.json go (must not hold a model).
    #[arg(long, value_name = "MODEL_DEST")]
    out: String,
    /// A training configuration (JSON, as saved in train.json's "config", or TOML with
    /// the same fields: model, epochs, batch_size, lr, seed, device). Flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model.
    #[arg(long, value_enum)]
    model: Option<ModelArg>,
    /// Passes over the training split [default: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Records per step [default: 64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Adam learning rate [default: 0.001].
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initial weights and of every epoch's shuffle [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train [default: cpu]. `cuda` (NVIDIA GPU) and `wgpu` (any Vulkan
    /// device) decrypt the sealed chunks on the device itself: the host holds only
    /// ciphertext. They need a binary built with `--features cuda` / `--features wgpu`,
    /// a dataset sealed with `--suite chacha20-poly1305`, and u8 records with a u8 label.
    #[arg(long, value_enum)]
    device: Option<DeviceArg>,
    /// Training split.
    #[arg(long, default_value = "train", value_name = "NAME")]
    train_split: String,
    /// Test split (accuracy after each epoch; skipped if the dataset lacks it).
    #[arg(long, default_value = "test", value_name = "NAME")]
    test_split: String,
    /// Broker URL.
    #[arg(long, default_value = "https://127.0.0.1:8443", value_name = "URL")]
    broker: String,
    /// The broker's TLS certificate to trust.
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// Job name, checked by the dataset's policy (the job chooses it: it is not
    /// attested).
    #[arg(long, value_name = "NAME")]
    job: Option<String>,
    /// Accept an http:// broker URL (a test broker on loopback): nothing authenticates
    /// the broker, and its replies cross the network in the clear.
    #[arg(long)]
    insecure_http: bool,
    #[command(flatten)]
    evidence: crate::broker::EvidenceArgs,
    /// With --plaintext: the owner's X25519 public key (hex, from `blindfold keys show`)
    /// to seal the outputs to. A sealed dataset names its owner itself.
    #[arg(long, value_name = "HEX")]
    owner_key: Option<String>,
    /// Print the job report as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
pub enum ModelCmd {
    /// Decrypt a sealed model with the owner's key store (owner only).
    ///
    /// Writes the weights as safetensors in PyTorch's layout (loads in PyTorch with
    /// `safetensors.torch.load_file`, and in Burn), or as Burnpack, exactly the bytes the
    /// job sealed. Prints the sealed metrics.
    Open {
        /// Where the job wrote its outputs.
        model_dest: String,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Weights format.
        #[arg(long, value_enum, default_value = "safetensors")]
        format: WeightsFormat,
        /// Overwrite FILE if it exists.
        #[arg(long)]
        force: bool,
        /// The dataset id the model was trained on (printed by `seal`). A model is
        /// accepted only if that dataset's key sealed it: the key of another dataset in
        /// your key store (one whose key a sample-TEE policy released, say) does not do.
        #[arg(
            long,
            value_name = "ID",
            required_unless_present = "danger_unauthenticated"
        )]
        dataset: Option<String>,
        /// Open an output that no dataset key authenticates: the plaintext baseline's
        /// (`train --plaintext`). Anyone who knows your public key can write such an
        /// output; use this only for a baseline you ran yourself.
        #[arg(long)]
        danger_unauthenticated: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum WeightsFormat {
    /// safetensors, PyTorch layout, with the architecture in its metadata.
    Safetensors,
    /// Burn's Burnpack, as sealed.
    Burnpack,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Weights from `blindfold model open` (safetensors).
    #[arg(long, value_name = "FILE")]
    model: PathBuf,
    /// Test data: an IDX folder or file, CSV or .npy, as `seal` reads it.
    #[arg(long, value_name = "INPUT")]
    test: PathBuf,
    /// Labels file for a single IDX images file or .npy.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// Which split of INPUT to evaluate.
    #[arg(long, default_value = "test", value_name = "NAME")]
    split: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Progress of a training run: one bar per epoch with loss, accuracy and samples/s.
pub struct EpochBars {
    quiet: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl EpochBars {
    pub fn new(quiet: bool) -> Self {
        EpochBars {
            quiet,
            bar: Mutex::new(None),
        }
    }
}

impl TrainProgress for EpochBars {
    fn epoch_start(&self, epoch: usize, records: u64) {
        let target = if self.quiet {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let pb = ProgressBar::with_draw_target(Some(records), target);
        pb.set_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(epoch.to_string());
        *self.bar.lock().expect("progress lock") = Some(pb);
    }

    fn step(&self, done: u64, loss: f64, accuracy: f64, samples_per_s: f64) {
        if let Some(b) = &*self.bar.lock().expect("progress lock") {
            b.set_position(done);
            b.set_message(format!(
                "loss {loss:.4} acc {:.2}% {samples_per_s:.0} samples/s",
                accuracy * 100.0
            ));
        }
    }

    fn epoch_end(&self, m: &EpochMetrics) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
        // --quiet withholds the figures too: on a real TEE, stderr is the cloud's.
        if !self.quiet {
            eprintln!("{}", epoch_line(m));
        }
    }
}

/// One line per epoch, as printed after its bar.
pub fn epoch_line(m: &EpochMetrics) -> String {
    format!(
        "epoch {}: loss {:.4}, train accuracy {:.2}%, test accuracy {}, {:.1} s, {:.0} samples/s",
        m.epoch,
        m.loss,
        m.train_accuracy * 100.0,
        m.test_accuracy
            .map_or("n/a".into(), |a| format!("{:.2}%", a * 100.0)),
        m.seconds,
        m.samples_per_s
    )
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::BadInput(format!("{}: {e}", path.display())))
}

/// The configuration from --config, then flags.
fn config(a: &TrainArgs) -> Result<TrainConfig, Error> {
    let mut cfg = match &a.config {
        None => TrainConfig::default(),
        Some(p) => {
            let text = String::from_utf8(read(p)?)
                .map_err(|_| Error::BadInput(format!("{}: not UTF-8", p.display())))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .or_else(|_| toml::from_str::<serde_json::Value>(&text))
                .map_err(|e| {
                    Error::BadInput(format!("{}: neither JSON nor TOML: {e}", p.display()))
                })?;
            // train.json wraps the configuration in "config".
            let v = v.get("config").cloned().unwrap_or(v);
            serde_json::from_value(v)
                .map_err(|e| Error::BadInput(format!("{}: {e}", p.display())))?
        }
    };
    if let Some(m) = a.model {
        cfg.model = m.into();
    }
    if let Some(v) = a.epochs {
        cfg.epochs = v;
    }
    if let Some(v) = a.batch_size {
        cfg.batch_size = v;
    }
    if let Some(v) = a.lr {
        cfg.lr = v;
    }
    if let Some(v) = a.seed {
        cfg.seed = v;
    }
    if let Some(v) = a.device {
        cfg.device = v.into();
    }
    cfg.check().map_err(|e| Error::BadInput(e.to_string()))?;
    Ok(cfg)
}

fn owner_key(hex_key: &str) -> Result<[u8; 32], Error> {
    hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Error::BadInput("--owner-key: 64 hex digits (see `blindfold keys show`)".into())
        })
}

pub fn train(a: &TrainArgs, bars: &Bars, quiet: bool) -> Result<(), Failure> {
    let cfg = config(a)?;
    job::harden_process()?;
    let splits = Splits {
        train: a.train_split.clone(),
        test: a.test_split.clone(),
    };
    let evidence;
    let fetch;
    let source = match (&a.dataset, &a.plaintext) {
        (Some(dataset), None) => {
            if a.owner_key.is_some() {
                return Err(Error::BadInput(
                    "--owner-key is for --plaintext: a sealed dataset names its owner, and a job cannot choose another".into(),
                )
                .into());
            }
            evidence = a.evidence.source()?;
            fetch = FetchOptions {
                broker: a.broker.clone(),
                ca_cert_pem: a.ca_cert.as_deref().map(read).transpose()?,
                job: a.job.clone(),
                insecure_http: a.insecure_http,
            };
            Source::Sealed {
                dataset,
                broker: &fetch,
                evidence: &evidence,
            }
        }
        (None, Some(input)) => {
            let key = a.owner_key.as_deref().ok_or_else(|| {
                Error::BadInput(
                    "--plaintext needs --owner-key HEX: the owner's public key to seal the model to"
                        .into(),
                )
            })?;
            let import =
                blindfold_owner::import::import(input, Format::Auto, &ImportOptions::default())?;
            Source::Plaintext {
                import,
                owner_public: owner_key(key)?,
                input: input.display().to_string(),
            }
        }
        _ => unreachable!("clap requires exactly one of --dataset and --plaintext"),
    };
    let out = Store::open(&a.out, true)?;
    let (report, _trained) = job::run(source, &splits, &cfg, &out, bars, &EpochBars::new(quiet))?;
    eprintln!(
        "trained {} ({}) in {:.1} s: key {:.3} s, load {:.3} s, train {:.1} s, seal+write {:.3} s",
        cfg.model,
        report.mode,
        report.total_s,
        report.key_s,
        report.load_s,
        report.train_s,
        report.output_s
    );
    for o in &report.outputs {
        eprintln!("  wrote {o}");
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| Error::Bug(e.to_string()))?
        );
    }
    Ok(())
}

/// A model opened by the owner: what it is, where it came from, its Burnpack weights,
/// the sealed metrics.
pub struct OpenedModel {
    pub spec: ModelSpec,
    /// The dataset, version and manifest its dataset key authenticates (`None`: an
    /// unauthenticated baseline output, opened on request).
    pub source: Option<blindfold_format::OutputSource>,
    pub weights: zeroize::Zeroizing<Vec<u8>>,
    pub metrics: Option<serde_json::Value>,
}

/// Opens `MODEL_DEST/model.sealed` (and the metrics) with the owner's key store: both
/// must be authenticated by the key of `dataset` (the dataset the owner expects), at a
/// version this key store sealed (or, with `danger_unauthenticated` and no dataset, be
/// a baseline's), and come from the same job.
pub fn open_model(
    ks: &KeyStore,
    model_dest: &str,
    dataset: Option<&str>,
    danger_unauthenticated: bool,
) -> Result<OpenedModel, Error> {
    let store = Store::open(model_dest, false)?;
    let bytes = store.get(MODEL_OBJECT)?;
    let name = format!("{model_dest}/{MODEL_OBJECT}");
    // The dataset named before anything is opened: the header's claim alone would let
    // whoever holds any dataset's key choose which key authenticates the model.
    let claimed = blindfold_format::output_header_unverified(&bytes, &name)
        .map_err(|e| Error::sealed(&name, e))?;
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
    let (header, weights) = ks.open_output(&bytes, &name, danger_unauthenticated)?;
    if header.kind != "model" || header.content_type != "burnpack" {
        return Err(Error::BadInput(format!(
            "{model_dest}/{MODEL_OBJECT} holds a {} ({}), not a model",
            header.kind, header.content_type
        )));
    }
    let spec: ModelSpec = serde_json::from_value(serde_json::json!({
        "arch": header.info.get("model"),
        "input": header.info.get("input"),
        "classes": header.info.get("classes"),
    }))
    .map_err(|e| Error::BadInput(format!("sealed model header: {e}")))?;
    let metrics = match store.size(METRICS_OBJECT)? {
        Some(_) => {
            let m = store.get(METRICS_OBJECT)?;
            let name = format!("{model_dest}/{METRICS_OBJECT}");
            let (mh, plain) = ks.open_output(&m, &name, danger_unauthenticated)?;
            if mh.source != header.source
                || mh.kind != "metrics"
                || mh.info.get("run") != header.info.get("run")
            {
                return Err(Error::Unauthenticated(format!(
                    "{name} is not the metrics of this model (another job, source or kind)"
                )));
            }
            Some(
                serde_json::from_slice(&plain)
                    .map_err(|e| Error::BadInput(format!("sealed metrics: {e}")))?,
            )
        }
        None => None,
    };
    Ok(OpenedModel {
        spec,
        source: header.source,
        weights,
        metrics,
    })
}

pub fn model(cmd: &ModelCmd, ks: &KeyStore) -> Result<(), Failure> {
    let ModelCmd::Open {
        model_dest,
        out,
        format,
        force,
        dataset,
        danger_unauthenticated,
    } = cmd;
    if out.exists() && !force {
        return Err(Error::OutputExists(out.display().to_string()).into());
    }
    let OpenedModel {
        spec,
        source,
        weights,
        metrics,
    } = open_model(ks, model_dest, dataset.as_deref(), *danger_unauthenticated)?;
    let bytes = match format {
        WeightsFormat::Burnpack => weights,
        WeightsFormat::Safetensors => {
            let net =
                spec.from_burnpack::<blindfold_zone::model::Cpu>(&weights, &Default::default())?;
            model::to_safetensors(&net, &spec)?
        }
    };
    // Through the owner's output set: a temporary file (0600) synced, then renamed.
    let name = out
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::BadInput(format!("{}: not a file name", out.display())))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut set = OutputSet::new(dir, *force)?;
    let h = set.create(name)?;
    set.write(h, &bytes)?;
    set.commit()?;
    eprintln!(
        "{}: {} for input {:?}, {} classes",
        out.display(),
        spec.arch,
        spec.input,
        spec.classes
    );
    match &source {
        Some(s) => eprintln!(
            "  trained on dataset {} version {} (manifest {}), authenticated by its key",
            s.dataset_id, s.version, s.manifest_sha256
        ),
        None => eprintln!("  WARNING: unauthenticated output (a plaintext baseline's): nothing shows who wrote it"),
    }
    if let Some(m) = metrics {
        if let Some(epochs) = m.get("epochs").and_then(|e| e.as_array()) {
            for e in epochs {
                if let Ok(e) = serde_json::from_value::<EpochMetrics>(e.clone()) {
                    eprintln!("  {}", epoch_line(&e));
                }
            }
        }
        println!(
            "{}",
            serde_json::to_string(&m).map_err(|e| Error::Bug(e.to_string()))?
        );
    }
    Ok(())
}

/// The result of `eval`.
pub struct Evaluation {
    pub spec: ModelSpec,
    pub accuracy: f64,
    pub records: usize,
    pub confusion: Vec<Vec<u64>>,
}

/// Evaluates safetensors weights on a plaintext test input.
pub fn evaluate(
    model_file: &Path,
    test: &Path,
    labels: Option<PathBuf>,
    split: &str,
) -> Result<Evaluation, Failure> {
    let bytes = zeroize::Zeroizing::new(read(model_file)?);
    let spec = model::safetensors_spec(&bytes)?;
    let device = Default::default();
    let net = spec.from_safetensors::<blindfold_zone::model::Cpu>(&bytes, &device)?;
    let import = blindfold_owner::import::import(
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
        &blindfold_owner::NoProgress,
    )?;
    if data.input_shape() != spec.input {
        return Err(Error::BadInput(format!(
            "the model takes {:?} inputs; {} has {:?}",
            spec.input,
            test.display(),
            data.input_shape()
        ))
        .into());
    }
    if data.classes > spec.classes {
        return Err(Error::BadInput(format!(
            "the test labels go up to {}; the model knows {} classes",
            data.classes - 1,
            spec.classes
        ))
        .into());
    }
    let (accuracy, confusion) =
        blindfold_zone::train::evaluate_feed(&net, &data, false, &spec, &device)?;
    Ok(Evaluation {
        spec,
        accuracy,
        records: data.train.count,
        confusion,
    })
}

pub fn eval(a: &EvalArgs) -> Result<(), Failure> {
    let e = evaluate(&a.model, &a.test, a.labels.clone(), &a.split)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": e.spec.arch.name(), "records": e.records,
                "accuracy": e.accuracy, "confusion": e.confusion,
            })
        );
        return Ok(());
    }
    println!(
        "{} on {} records of {}: accuracy {:.2}%",
        e.spec.arch,
        e.records,
        a.test.display(),
        e.accuracy * 100.0
    );
    println!("confusion matrix (rows: true class, columns: predicted):");
    let w = e
        .confusion
        .iter()
        .flatten()
        .map(|v| v.to_string().len())
        .max()
        .unwrap_or(1)
        .max(3);
    print!("{:>5}", "");
    for j in 0..e.confusion.len() {
        print!(" {j:>w$}");
    }
    println!();
    for (i, row) in e.confusion.iter().enumerate() {
        print!("{i:>5}");
        for v in row {
            print!(" {v:>w$}");
        }
        println!();
    }
    Ok(())
}
