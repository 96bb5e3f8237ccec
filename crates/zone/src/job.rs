//! A whole training job inside the trusted zone: key from the broker by attestation →
//! authenticated manifest at the released version → records decrypted into zeroizing
//! memory → training → model and metrics sealed to the owner → storage.
//!
//! The only things the job writes are sealed outputs and its (non-secret) configuration.

use std::time::Instant;

use blindfold_attest::{EvidenceSource, FetchOptions};
use blindfold_dataset::import::Import;
use blindfold_dataset::{
    check_output_location, write_job_outputs, JobOutputs, OutputSealer, Progress, SealedDataset,
};
use blindfold_format::OutputHeader;
use blindfold_store::Store;
use serde::Serialize;
use serde_json::json;

use crate::data::{Dataset, Splits};
use crate::device::{self, DeviceSource};
use crate::error::{Error, Result};
use crate::train::{self, TrainConfig, TrainProgress, Trained};

pub use blindfold_format::{CONFIG_OBJECT, METRICS_OBJECT, MODEL_OBJECT};

/// What a job's sealed outputs say in clear about the model (their header's `info`, the
/// same in both): written here by [`run`], read back by the owner's `model open`.
/// Fields a later version adds are ignored by this one, so that an older owner's tool
/// still opens a newer job's model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OutputInfo {
    /// The model's name.
    pub model: String,
    /// The model's spec (TOML, `docs/model-spec.md`); absent from models sealed before
    /// specs existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<String>,
    /// SHA-256 of `spec`, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_sha256: Option<String>,
    /// Input as (channels, height, width).
    pub input: [usize; 3],
    /// Number of classes.
    pub classes: usize,
    /// A random id shared by the job's two outputs: the owner opens a model only with the
    /// metrics the same job wrote.
    pub run: String,
}

impl OutputInfo {
    /// The info of a sealed output's header.
    pub fn from_header(h: &OutputHeader) -> Result<OutputInfo> {
        serde_json::from_value(h.info.clone())
            .map_err(|e| Error::BadInput(format!("sealed output header: {e}")))
    }

    /// What the model is built for.
    pub fn spec(&self) -> Result<crate::model::ModelSpec> {
        let text = self.spec.as_deref().ok_or_else(|| {
            Error::BadInput(format!(
                "this {} model was sealed by a blindfold before model specs, whose tensors are named differently: open it with --format burnpack",
                self.model
            ))
        })?;
        let spec = crate::spec::Spec::parse(text)
            .map_err(|e| Error::BadInput(format!("the sealed model's spec: {e}")))?;
        let spec = crate::model::ModelSpec {
            spec,
            input: self.input,
            classes: self.classes,
        };
        spec.check()?;
        Ok(spec)
    }
}

/// The content type of a job's sealed model: Burn's Burnpack.
pub const MODEL_CONTENT_TYPE: &str = "burnpack";

/// A job's model, opened by the owner: its header checked to be a Burnpack model this
/// code knows how to build, and the network loaded on the CPU (every tensor of the
/// header's architecture must load with its shape; tensors it does not use are ignored).
pub fn load_model(
    header: &OutputHeader,
    burnpack: &[u8],
) -> Result<(
    crate::model::ModelSpec,
    crate::model::Net<crate::model::Cpu>,
)> {
    if header.content_type != MODEL_CONTENT_TYPE {
        return Err(Error::BadInput(format!(
            "the sealed model is {:?}, not {MODEL_CONTENT_TYPE}",
            header.content_type
        )));
    }
    let spec = OutputInfo::from_header(header)?.spec()?;
    let net = spec.from_burnpack::<crate::model::Cpu>(burnpack, &Default::default())?;
    Ok((spec, net))
}

/// Where the data of a job comes from.
pub enum Source<'a> {
    /// A sealed dataset, its key released by the broker.
    Sealed {
        /// Dataset location (folder, `s3://`).
        dataset: &'a str,
        /// How to reach the broker.
        broker: &'a FetchOptions,
        /// Where the attestation evidence comes from.
        evidence: &'a EvidenceSource,
    },
    /// The baseline: the owner's plaintext files, through the same importers.
    Plaintext {
        /// The import, opened.
        import: Import,
        /// The owner's X25519 public key to seal outputs to.
        owner_public: [u8; 32],
        /// A name for reports.
        input: String,
    },
}

/// What a job did, with its timings. Holds no secret.
#[derive(Debug, Serialize)]
pub struct JobReport {
    /// `sealed` or `plaintext`.
    pub mode: &'static str,
    /// Dataset id (sealed jobs).
    pub dataset_id: Option<String>,
    /// Manifest version the broker released (sealed jobs).
    pub version: Option<u64>,
    /// Seconds from job start to the key in memory (sealed jobs).
    pub key_s: f64,
    /// Seconds reading (and decrypting) the records.
    pub load_s: f64,
    /// Seconds in the training loop.
    pub train_s: f64,
    /// Seconds sealing and writing the outputs.
    pub output_s: f64,
    /// Whole job.
    pub total_s: f64,
    /// Per-epoch figures.
    pub epochs: Vec<train::EpochMetrics>,
    /// SHA-256 of the trained weights (hex). Never serialized: training is
    /// deterministic and its configuration public, so whoever holds a candidate dataset
    /// could confirm it (or one differing record) from this digest. It travels inside
    /// the sealed metrics only.
    #[serde(skip)]
    pub weights_sha256: String,
    /// SHA-256 over the schema and records trained on (hex): equal for a sealed dataset
    /// and its plaintext. Never serialized: a digest of the records would let whoever
    /// reads the job's output confirm a guess of the whole dataset.
    #[serde(skip)]
    pub data_sha256: String,
    /// Objects written, by location.
    pub outputs: Vec<String>,
    /// Where the training receipt went (`receipt.json`, `docs/receipts.md`).
    pub receipt: Option<String>,
    /// Why there is no receipt, when there is none.
    pub no_receipt: Option<String>,
}

/// Makes the process unfit to leak memory through a core dump or a debugger of the same
/// user ([`blindfold_attest::harden_process`]). Call before any key is fetched.
pub fn harden_process() -> Result<()> {
    blindfold_attest::harden_process()
        .map_err(|e| Error::Bug(format!("cannot disable core dumps and ptrace: {e}")))
}

/// Runs a job: the data from `source`, the model trained per `cfg`, outputs sealed to the
/// owner and written to `out`. `out` is checked to be writable and free of an earlier
/// model before any key is fetched.
pub fn run(
    source: Source<'_>,
    splits: &Splits,
    cfg: &TrainConfig,
    out: &Store,
    load_progress: &dyn Progress,
    progress: &dyn TrainProgress,
) -> Result<(JobReport, Trained)> {
    cfg.check()?;
    check_output_location(out).map_err(|e| match e {
        blindfold_dataset::Error::BadInput(m) => Error::BadInput(m),
        e => e.into(),
    })?;
    let start = Instant::now();
    // The receipt key and the broker's certificate of it, for a sealed job.
    let mut receipt: Option<(blindfold_attest::ReceiptKey, blindfold_attest::Certificate)> = None;
    let mut no_receipt = "a plaintext baseline has no release to certify";
    let (trained, data_sha256, sealer, facts, mode, key_s, load_s) = match source {
        Source::Sealed {
            dataset,
            broker,
            evidence,
        } => {
            let store = Store::open(dataset, false)?;
            let manifest = blindfold_dataset::claimed_manifest(&store)?;
            let claimed = manifest.dataset_id;
            // The spec must fit the records before a key is asked for (a release counts
            // against the policy, and is audited as granted). The schema is the one
            // storage claims; it is checked again, with the real classes, on the
            // authenticated manifest.
            cfg.check_schema(&manifest.schema)?;
            // The job declares the spec it trains (for policies that list the specs
            // they accept), and trains no other: `cfg` is not changed after this.
            // A key made here, for the training receipt: the broker certifies it with
            // the release, and only this process ever holds its private half.
            let receipt_key = blindfold_attest::ReceiptKey::generate()?;
            let broker = FetchOptions {
                model: Some(cfg.spec()?.sha256_hex()),
                receipt_key: Some(receipt_key.public_hex()),
                ..broker.clone()
            };
            let mut released = blindfold_attest::fetch_key(&broker, &claimed.to_hex(), evidence)?;
            match released.certificate.take() {
                Some(c) => receipt = Some((receipt_key, c)),
                None => no_receipt = "the broker issued no release certificate (a stock KBS)",
            }
            if released.dataset_id != claimed.to_hex() {
                return Err(Error::Broker(blindfold_attest::Error::BadReply(
                    "the broker released the key of another dataset".into(),
                )));
            }
            let key_s = start.elapsed().as_secs_f64();
            let t = Instant::now();
            // The manifest must be the one the owner registered: an older one is a
            // rollback, another one of the same version a fork.
            let ds = SealedDataset::open_registered(
                store,
                &released.key,
                released.version,
                released.manifest_sha256,
            )?;
            let facts = json!({
                "dataset_id": ds.manifest().dataset_id.to_hex(),
                "version": ds.manifest().version,
                "manifest_sha256": hex::encode(ds.manifest_sha256()),
            });
            if cfg.device.host_memory() {
                let data = hold_out(Dataset::from_sealed(&ds, splits, load_progress)?, cfg)?;
                let load_s = t.elapsed().as_secs_f64();
                let digest = hex::encode(data.digest());
                let trained = train::train(&data, cfg, progress)?;
                (
                    trained,
                    digest,
                    Owner::Dataset(Box::new(ds)),
                    facts,
                    "sealed",
                    key_s,
                    load_s,
                )
            } else {
                // Records are decrypted on the device; the host never holds them, so
                // there is no record digest to report.
                let (trained, load_s) =
                    device::train(cfg.device, DeviceSource::Sealed(&ds), splits, cfg, progress)?;
                (
                    trained,
                    String::new(),
                    Owner::Dataset(Box::new(ds)),
                    facts,
                    "sealed",
                    key_s,
                    load_s,
                )
            }
        }
        Source::Plaintext {
            import,
            owner_public,
            input,
        } => {
            let t = Instant::now();
            cfg.check_schema(&import.schema)?;
            let data = hold_out(Dataset::from_import(import, splits, load_progress)?, cfg)?;
            let facts = json!({ "plaintext_input": input });
            let digest = hex::encode(data.digest());
            let (trained, load_s) = if cfg.device.host_memory() {
                let load_s = t.elapsed().as_secs_f64();
                (train::train(&data, cfg, progress)?, load_s)
            } else {
                // Read from files, then uploaded to the device: both count as loading.
                let read_s = t.elapsed().as_secs_f64();
                let (trained, upload_s) =
                    device::train(cfg.device, DeviceSource::Host(&data), splits, cfg, progress)?;
                (trained, read_s + upload_s)
            };
            (
                trained,
                digest,
                Owner::Baseline(owner_public),
                facts,
                "plaintext",
                0.0,
                load_s,
            )
        }
    };
    let t = Instant::now();
    let (written, metrics_sha256) = write_outputs(out, &sealer.sealer(), cfg, &trained, &facts)?;
    let mut outputs = written.locations;
    let (receipt, no_receipt) = match receipt {
        Some((key, cert)) => {
            let at = write_receipt(
                out,
                &key,
                &cert,
                &written.sealed,
                cfg,
                &trained,
                metrics_sha256,
            )?;
            outputs.push(at.clone());
            (Some(at), None)
        }
        None => (None, Some(no_receipt.to_owned())),
    };
    let output_s = t.elapsed().as_secs_f64();
    let report = JobReport {
        mode,
        dataset_id: facts
            .get("dataset_id")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        version: facts.get("version").and_then(|v| v.as_u64()),
        key_s,
        load_s,
        train_s: trained.seconds,
        output_s,
        total_s: start.elapsed().as_secs_f64(),
        epochs: trained.epochs.clone(),
        weights_sha256: hex::encode(trained.weights_sha256),
        data_sha256,
        outputs,
        receipt,
        no_receipt,
    };
    Ok((report, trained))
}

/// Applies `--holdout`.
fn hold_out(data: Dataset, cfg: &TrainConfig) -> Result<Dataset> {
    match cfg.holdout {
        Some(f) => data.hold_out(f, cfg.seed),
        None => Ok(data),
    }
}

/// Whom a job's outputs are sealed to, held for the length of the job.
enum Owner {
    /// The sealed dataset's owner, authenticated by its key.
    Dataset(Box<SealedDataset>),
    /// The baseline's owner public key.
    Baseline([u8; 32]),
}

impl Owner {
    fn sealer(&self) -> OutputSealer<'_> {
        match self {
            Owner::Dataset(ds) => OutputSealer::Dataset(ds),
            Owner::Baseline(k) => OutputSealer::Baseline(*k),
        }
    }
}

/// Signs and writes the training receipt (`docs/receipts.md`): the sealed outputs as
/// subjects, the broker's certificate of this release, and what the job trained.
fn write_receipt(
    out: &Store,
    key: &blindfold_attest::ReceiptKey,
    cert: &blindfold_attest::Certificate,
    sealed: &[(&'static str, [u8; 32])],
    cfg: &TrainConfig,
    trained: &Trained,
    metrics_sha256: [u8; 32],
) -> Result<String> {
    use blindfold_protocol::receipt::{Training, RECEIPT_OBJECT};
    let training = Training {
        framework: "burn".into(),
        model: json!({
            "name": trained.spec.name(),
            "spec_sha256": trained.spec.spec.sha256_hex(),
        }),
        hyperparameters: serde_json::to_value(cfg).map_err(|e| Error::Bug(e.to_string()))?,
        metrics_sha256,
    };
    out.put(RECEIPT_OBJECT, key.sign_receipt(cert, sealed, &training)?)?;
    Ok(format!("{}/{RECEIPT_OBJECT}", out.location()))
}

/// Seals the weights and the metrics to the owner and writes them, then the clear
/// configuration ([`blindfold_dataset::write_job_outputs`]). Returns what was written
/// and the SHA-256 of the metrics' plaintext.
fn write_outputs(
    out: &Store,
    sealer: &OutputSealer<'_>,
    cfg: &TrainConfig,
    trained: &Trained,
    facts: &serde_json::Value,
) -> Result<(blindfold_dataset::Written, [u8; 32])> {
    let run: [u8; 16] = blindfold_format::random_bytes().map_err(|e| Error::Bug(e.to_string()))?;
    let info = serde_json::to_value(OutputInfo {
        model: trained.spec.name().to_owned(),
        spec: Some(trained.spec.spec.text.clone()),
        spec_sha256: Some(trained.spec.spec.sha256_hex()),
        input: trained.spec.input,
        classes: trained.spec.classes,
        run: hex::encode(run),
    })
    .map_err(|e| Error::Bug(e.to_string()))?;
    // Random bytes inside the sealed metrics: the receipt publishes the metrics' digest,
    // and without them that digest (of a deterministic job's metrics) would let anyone
    // confirm a guess of the dataset by training on it.
    let salt: [u8; 32] = blindfold_format::random_bytes().map_err(|e| Error::Bug(e.to_string()))?;
    let metrics = zeroize::Zeroizing::new(
        serde_json::to_vec_pretty(&json!({
            "salt": hex::encode(salt),
            "config": cfg,
            "model_sha256": trained.spec.spec.sha256_hex(),
            "input": trained.spec.input,
            "classes": trained.spec.classes,
            "epochs": trained.epochs,
            "best_epoch": trained.best_epoch,
            "train_seconds": trained.seconds,
            "weights_sha256": hex::encode(trained.weights_sha256),
            "data": facts,
        }))
        .map_err(|e| Error::Bug(e.to_string()))?,
    );
    let config = serde_json::to_vec_pretty(&json!({
        "config": cfg,
        "model_sha256": trained.spec.spec.sha256_hex(),
        "data": facts,
    }))
    .map_err(|e| Error::Bug(e.to_string()))?;
    let outputs = JobOutputs {
        content_type: MODEL_CONTENT_TYPE,
        info,
        model: &trained.weights,
        metrics: &metrics,
        config: &config,
    };
    let metrics_sha256 = blindfold_format::sha256(&metrics);
    Ok((write_job_outputs(out, sealer, &outputs)?, metrics_sha256))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;
    use crate::spec::Spec;

    fn info() -> serde_json::Value {
        let spec = Spec::builtin("mlp").unwrap().text;
        json!({"model": "mlp", "spec": spec, "input": [1, 4, 4], "classes": 3, "run": "00"})
    }

    #[test]
    fn load_model_refuses_what_is_not_a_burnpack_model() {
        let h = OutputHeader::new("model", "safetensors", None, info());
        let e = load_model(&h, b"whatever").unwrap_err();
        assert!(
            matches!(e, Error::BadInput(ref m) if m.contains("not burnpack")),
            "{e}"
        );
    }

    #[test]
    fn load_model_builds_the_headers_architecture() {
        let spec = ModelSpec {
            spec: Spec::builtin("mlp").unwrap(),
            input: [1, 4, 4],
            classes: 3,
        };
        let net = spec
            .init::<crate::model::Cpu>(1, &Default::default())
            .unwrap();
        let bytes = crate::model::to_burnpack(&net).unwrap();
        let h = OutputHeader::new("model", MODEL_CONTENT_TYPE, None, info());
        let (got, _) = load_model(&h, &bytes).unwrap();
        assert_eq!(got.name(), "mlp");
        assert_eq!(got.classes, 3);
        // Another architecture in the header: the weights do not fit it.
        let spec = Spec::builtin("lenet5").unwrap().text;
        let lenet = json!({"model": "lenet5", "spec": spec, "input": [1, 28, 28], "classes": 10, "run": "00"});
        let h = OutputHeader::new("model", MODEL_CONTENT_TYPE, None, lenet);
        assert!(load_model(&h, &bytes).is_err());
        // A model sealed before specs: refused with a way out, not misread.
        let old = json!({"model": "mlp", "input": [1, 4, 4], "classes": 3, "run": "00"});
        let h = OutputHeader::new("model", MODEL_CONTENT_TYPE, None, old);
        let e = load_model(&h, &bytes).unwrap_err();
        assert!(e.to_string().contains("--format burnpack"), "{e}");
    }

    #[test]
    fn output_info_ignores_fields_a_later_version_adds() {
        let mut v = info();
        v["added_later"] = json!(true);
        let h = OutputHeader::new("model", MODEL_CONTENT_TYPE, None, v);
        assert_eq!(OutputInfo::from_header(&h).unwrap().classes, 3);
    }
}
