//! The training job's command line and run: attest, fetch the key, train, seal the
//! outputs (`blindfold-job`, and `blindfold train` for local use).

use std::path::{Path, PathBuf};

use blindfold_attest::{EvidenceSource, FetchOptions};
use blindfold_dataset::import::{import, Format, ImportOptions};
use blindfold_store::Store;
use blindfold_zone::data::Splits;
use blindfold_zone::device::DeviceKind;
use blindfold_zone::job::{self, Source};
use blindfold_zone::train::TrainConfig;
use clap::{Args, ValueEnum};

use crate::fault::Failure;
use crate::progress::{Bars, EpochBars};

/// Where training runs.
#[derive(Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    /// Burn's Flex CPU backend; records decrypted in the trusted zone's memory.
    Cpu,
    /// The CPU through LibTorch, PyTorch's C++ library (4× Flex's speed on the CNNs);
    /// records decrypted in the trusted zone's memory. Needs a build with `--features
    /// torch`.
    TorchCpu,
    /// Any Vulkan device through wgpu (without a GPU: Mesa's lavapipe, slowly).
    Wgpu,
    /// An NVIDIA GPU through CUDA (loaded at run time).
    Cuda,
}

impl From<DeviceArg> for DeviceKind {
    fn from(d: DeviceArg) -> DeviceKind {
        match d {
            DeviceArg::Cpu => DeviceKind::Cpu,
            DeviceArg::TorchCpu => DeviceKind::TorchCpu,
            DeviceArg::Wgpu => DeviceKind::Wgpu,
            DeviceArg::Cuda => DeviceKind::Cuda,
        }
    }
}

/// A training job's arguments: the same for `blindfold-job` and `blindfold train`.
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
    /// the same fields: model, model_spec, epochs, batch_size, lr, seed, device,
    /// holdout). Flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Model: built in (`mlp`, `lenet5`, `cnn`: the specs in models/) or a spec file
    /// (`*.toml`: layers, head, optimizer, schedule, early stopping; see
    /// docs/model-spec.md). Its SHA-256 goes into train.json and the sealed metrics, and
    /// to the broker, whose policy may list the specs it accepts [default: lenet5].
    #[arg(long, value_name = "NAME|SPEC.toml")]
    model: Option<String>,
    /// Hold out this share of the training split (by --seed) as a validation split
    /// (validation loss per epoch, early stopping) and, when the dataset has no test
    /// split, as much again as the test split. 0 < FRACTION ≤ 0.4; CPU only.
    #[arg(long, value_name = "FRACTION")]
    holdout: Option<f64>,
    /// Passes over the training split [default: 1].
    #[arg(long)]
    epochs: Option<usize>,
    /// Records per step [default: 64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate of the spec's optimizer (of the first epoch under a schedule)
    /// [default: 0.001].
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the initial weights, of every epoch's shuffle and of the held-out records
    /// [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Where to train [default: cpu]. `cpu` is Burn's own CPU backend (pure Rust);
    /// `torch-cpu` trains on the CPU through LibTorch, much faster, and needs a binary
    /// built with `--features torch` (after `bash scripts/libtorch`) and LibTorch's
    /// libraries at run time. The two give different weights for the same seed; each
    /// gives the same weights sealed or not. `cuda` (NVIDIA GPU) and `wgpu` (any Vulkan
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
    evidence: EvidenceArgs,
    /// With --plaintext: the owner's X25519 public key (hex, from `blindfold keys show`)
    /// to seal the outputs to. A sealed dataset names its owner itself.
    #[arg(long, value_name = "HEX")]
    owner_key: Option<String>,
    /// Print the job report as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

/// Where a training job's evidence comes from (`train`, `broker fetch-key`).
#[derive(Args)]
pub struct EvidenceArgs {
    /// Evidence: `tsm` (SEV-SNP or TDX guest, via configfs-tsm) or `sample` (no hardware
    /// root of trust; only policies that name it accept it).
    #[arg(long, default_value = "tsm", value_parser = ["tsm", "sample"])]
    tee: String,
    /// Measurement to declare with `--tee sample`.
    #[arg(long, value_name = "HEX")]
    measurement: Option<String>,
    /// TDX: quote collateral (JSON, dcap-qvl's QuoteCollateralV3 form) to send with the
    /// quote, for a broker that holds none for this platform (`broker tdx-collateral`).
    #[arg(long, value_name = "FILE")]
    tdx_collateral: Option<PathBuf>,
}

impl EvidenceArgs {
    /// The evidence source these arguments name.
    pub fn source(&self) -> Result<EvidenceSource, Failure> {
        let bad = |e: blindfold_attest::Error| Failure::bad_input(e.to_string());
        let src = match self.tee.as_str() {
            "sample" => EvidenceSource::InsecureSample {
                measurement: self.measurement.clone(),
            },
            _ => EvidenceSource::detect(Path::new(blindfold_attest::evidence::TSM_ROOT))
                .map_err(bad)?,
        };
        match &self.tdx_collateral {
            Some(f) => src.with_tdx_collateral(f).map_err(bad),
            None => Ok(src),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|e| Failure::bad_input(format!("{}: {e}", path.display())))
}

/// The configuration from --config, then flags.
fn config(a: &TrainArgs) -> Result<TrainConfig, Failure> {
    let mut cfg = match &a.config {
        None => TrainConfig::default(),
        Some(p) => TrainConfig::from_file(p)?,
    };
    if let Some(m) = &a.model {
        cfg.set_model(m)?;
    }
    if let Some(h) = a.holdout {
        cfg.holdout = Some(h);
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
    cfg.check().map_err(|e| Failure::bad_input(e.to_string()))?;
    Ok(cfg)
}

fn owner_key(hex_key: &str) -> Result<[u8; 32], Failure> {
    hex::decode(hex_key.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| Failure::bad_input("--owner-key: 64 hex digits (see `blindfold keys show`)"))
}

/// Runs a training job (docs/threat-model.md, "The training job").
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
                return Err(Failure::bad_input(
                    "--owner-key is for --plaintext: a sealed dataset names its owner, and a job cannot choose another",
                ));
            }
            evidence = a.evidence.source()?;
            fetch = FetchOptions {
                broker: a.broker.clone(),
                ca_cert_pem: a.ca_cert.as_deref().map(read).transpose()?,
                job: a.job.clone(),
                model: None,
                receipt_key: None,
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
                Failure::bad_input(
                    "--plaintext needs --owner-key HEX: the owner's public key to seal the model to",
                )
            })?;
            let import = import(input, Format::Auto, &ImportOptions::default())?;
            Source::Plaintext {
                import,
                owner_public: owner_key(key)?,
                input: input.display().to_string(),
            }
        }
        _ => unreachable!("clap requires exactly one of --dataset and --plaintext"),
    };
    let out = Store::open(&a.out, true)?;
    let (mut report, _trained) =
        job::run(source, &splits, &cfg, &out, bars, &EpochBars::new(quiet))?;
    if quiet {
        // --quiet withholds the per-epoch figures (data statistics) from the JSON report
        // too; they are in the sealed metrics.
        report.epochs.clear();
    }
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
    match (&report.receipt, &report.no_receipt) {
        (Some(_), _) => eprintln!(
            "  the receipt is signed by a key the broker certified for this release: anyone \
             with the broker's public key checks it with `blindfold receipt verify`"
        ),
        (None, Some(why)) => eprintln!("  no training receipt: {why}"),
        (None, None) => {}
    }
    if a.json {
        println!("{}", serde_json::to_string(&report).map_err(Failure::bug)?);
    }
    Ok(())
}
