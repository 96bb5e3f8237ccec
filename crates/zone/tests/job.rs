//! Whole training jobs on a small synthetic image dataset: an in-process broker over
//! plain HTTP on loopback, the owner's key store and sealed copy in a temporary folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use blindfold_attest::{EvidenceSource, FetchOptions};
use blindfold_owner::import::{import, Format, ImportOptions};
use blindfold_owner::{KeyStore, NoProgress, SealOptions, SealedDataset};
use blindfold_store::Store;
use blindfold_zone::data::Splits;
use blindfold_zone::job::{self, Source, CONFIG_OBJECT, METRICS_OBJECT, MODEL_OBJECT};
use blindfold_zone::model::{Cpu, ModelSpec};
use blindfold_zone::spec::Spec;
use blindfold_zone::train::{Quiet, TrainConfig};
use blindfold_zone::Error;

mod common;
use common::{canary, write_dataset};

struct World {
    dir: tempfile::TempDir,
    ks: KeyStore,
    broker_url: String,
    admin: String,
    _rt: tokio::runtime::Runtime,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(&dir.path().join("plain"));
        let ks = KeyStore::init(&dir.path().join("keys"), None).unwrap();
        let imp = import(
            &dir.path().join("plain"),
            Format::Idx,
            &ImportOptions::default(),
        )
        .unwrap();
        let opts = SealOptions {
            chunk_target: 4096,
            ..SealOptions::default()
        };
        blindfold_owner::seal(
            &ks,
            imp,
            &Store::open(dir.path().join("sealed").to_str().unwrap(), true).unwrap(),
            &opts,
            &NoProgress,
        )
        .unwrap();
        let bdir = dir.path().join("broker");
        let admin = blindfold_broker::init(&bdir, &[]).unwrap();
        let state: Arc<blindfold_broker::AppState> =
            blindfold_broker::load(&bdir, None, blindfold_broker::Settings::default()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let broker_url = format!("http://{}", listener.local_addr().unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.spawn(async move { blindfold_broker::serve(state, listener, None).await });
        World {
            dir,
            ks,
            broker_url,
            admin,
            _rt: rt,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sealed(&self) -> String {
        self.path("sealed").to_str().unwrap().to_owned()
    }

    /// The sealed dataset as the owner opens it.
    fn owner_view(&self) -> SealedDataset {
        blindfold_owner::open(&self.ks, Store::open(&self.sealed(), false).unwrap()).unwrap()
    }

    fn register(&self, policy: &str) {
        let blindfold_owner::Release {
            dataset_id: id,
            key,
            manifest_sha256: digest,
            version,
        } = blindfold_owner::release(&self.owner_view());
        let body = serde_json::json!({
            "dataset_id": id,
            "key": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &key[..]),
            "manifest_sha256": hex::encode(digest),
            "version": version,
            "policy": policy,
        });
        let client = reqwest::Client::new();
        let url = format!("{}/admin/v0/datasets", self.broker_url);
        let status = self
            ._rt
            .block_on(async {
                client
                    .post(url)
                    .bearer_auth(&self.admin)
                    .json(&body)
                    .send()
                    .await
            })
            .unwrap()
            .status();
        assert!(status.is_success(), "registration: {status}");
    }

    fn fetch(&self, job: &str) -> FetchOptions {
        FetchOptions {
            broker: self.broker_url.clone(),
            ca_cert_pem: None,
            job: Some(job.into()),
            model: None,
            receipt_key: None,
            insecure_http: true,
        }
    }

    fn run_sealed(
        &self,
        job: &str,
        out: &str,
        cfg: &TrainConfig,
    ) -> blindfold_zone::Result<job::JobReport> {
        let ev = EvidenceSource::InsecureSample { measurement: None };
        let fetch = self.fetch(job);
        let out = Store::open(self.path(out).to_str().unwrap(), true).unwrap();
        job::run(
            Source::Sealed {
                dataset: &self.sealed(),
                broker: &fetch,
                evidence: &ev,
            },
            &Splits::default(),
            cfg,
            &out,
            &NoProgress,
            &Quiet,
        )
        .map(|r| r.0)
    }

    fn run_plain(&self, out: &str, cfg: &TrainConfig) -> job::JobReport {
        let out = Store::open(self.path(out).to_str().unwrap(), true).unwrap();
        let imp = import(&self.path("plain"), Format::Idx, &ImportOptions::default()).unwrap();
        job::run(
            Source::Plaintext {
                import: imp,
                owner_public: self.ks.identity_public().try_into().unwrap(),
                input: "plain".into(),
            },
            &Splits::default(),
            cfg,
            &out,
            &NoProgress,
            &Quiet,
        )
        .unwrap()
        .0
    }
}

fn cfg(model: &str) -> TrainConfig {
    TrainConfig {
        model: model.into(),
        epochs: 2,
        batch_size: 32,
        lr: 3e-3,
        seed: 7,
        ..TrainConfig::default()
    }
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sealed_and_plaintext_training_give_identical_weights() {
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\n");
    for arch in ["mlp", "lenet5"] {
        let c = cfg(arch);
        let s = w
            .run_sealed("train", &format!("m-sealed-{arch}"), &c)
            .unwrap();
        let p = w.run_plain(&format!("m-plain-{arch}"), &c);
        assert_eq!(s.data_sha256, p.data_sha256, "the same records");
        assert_eq!(
            s.weights_sha256, p.weights_sha256,
            "{arch}: bit-identical weights"
        );
        assert_eq!(s.epochs.len(), 2);
        for (a, b) in s.epochs.iter().zip(&p.epochs) {
            assert_eq!(a.loss, b.loss);
            assert_eq!(a.test_accuracy, b.test_accuracy);
        }
        // Another seed gives other weights: the digest is not a constant.
        let other = w.run_plain(
            &format!("m-plain-seed-{arch}"),
            &TrainConfig {
                seed: 8,
                ..c.clone()
            },
        );
        assert_ne!(other.weights_sha256, p.weights_sha256);
    }
    // The synthetic classes are easy: LeNet-5 must learn them (the test split is unseen).
    let s = w
        .run_sealed(
            "train",
            "m-lenet-long",
            &TrainConfig {
                epochs: 6,
                ..cfg("lenet5")
            },
        )
        .unwrap();
    let acc = s.epochs.last().unwrap().test_accuracy.unwrap();
    assert!(acc > 0.9, "test accuracy {acc}");
}

#[test]
fn outputs_open_only_with_the_owner_key_and_load_in_burn() {
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\n");
    let c = cfg("lenet5");
    let r = w.run_sealed("train", "model", &c).unwrap();
    let out = Store::open(w.path("model").to_str().unwrap(), false).unwrap();
    let sealed = out.get(MODEL_OBJECT).unwrap();
    let (header, weights) = w.ks.open_output(&sealed, "model", false).unwrap();
    assert_eq!(header.kind, "model");
    assert_eq!(header.info["model"], "lenet5");
    // The output names the dataset, version and manifest it was trained on.
    let src = header.source.clone().unwrap();
    let rel = blindfold_owner::release(&w.owner_view());
    let (id, digest, version) = (rel.dataset_id.clone(), rel.manifest_sha256, rel.version);
    assert_eq!(
        (src.dataset_id, src.version, src.manifest_sha256),
        (id, version, hex::encode(digest))
    );
    let spec = ModelSpec {
        spec: Spec::builtin("lenet5").unwrap(),
        input: [1, 28, 28],
        classes: 10,
    };
    let net = spec
        .from_burnpack::<Cpu>(&weights, &Default::default())
        .unwrap();
    assert_eq!(
        hex::encode(blindfold_zone::model::weights_digest(&net)),
        r.weights_sha256
    );
    let (_, metrics) =
        w.ks.open_output(&out.get(METRICS_OBJECT).unwrap(), "metrics", false)
            .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&metrics).unwrap();
    assert_eq!(m["weights_sha256"], r.weights_sha256);
    assert_eq!(m["epochs"].as_array().unwrap().len(), 2);
    let conf: serde_json::Value = serde_json::from_slice(&out.get(CONFIG_OBJECT).unwrap()).unwrap();
    assert_eq!(conf["config"]["seed"], 7);
    // Another owner's key store cannot open it.
    let other = KeyStore::init(&w.path("other-keys"), None).unwrap();
    assert!(other.open_output(&sealed, "model", false).is_err());
    // A second job refuses to overwrite a trained model.
    let again = w.run_sealed("train", "model", &c).unwrap_err();
    assert!(matches!(again, Error::BadInput(_)), "{again}");
}

#[test]
fn no_file_written_by_a_job_holds_a_plaintext_record() {
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\n");
    let before = std::time::SystemTime::now();
    w.run_sealed("train", "model", &cfg("mlp")).unwrap();
    // LibTorch (`--device torch-cpu`) as well, in a build that has it.
    #[cfg(feature = "torch")]
    w.run_sealed(
        "train",
        "model-torch",
        &TrainConfig {
            device: blindfold_zone::device::DeviceKind::TorchCpu,
            ..cfg("lenet5")
        },
    )
    .unwrap();
    let canary = canary();
    // The owner's plaintext folder holds it (the scan can find it)...
    let mut plain = vec![];
    files_under(&w.path("plain"), &mut plain);
    assert!(plain
        .iter()
        .any(|f| contains(&std::fs::read(f).unwrap(), &canary)));
    // ...and nothing in storage, the output, the broker's folder, or the temporary
    // folder written during the job does.
    let mut files = vec![];
    for d in ["sealed", "model", "broker"] {
        files_under(&w.path(d), &mut files);
    }
    #[cfg(feature = "torch")]
    files_under(&w.path("model-torch"), &mut files);
    for e in std::fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
        let p = e.path();
        let fresh = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| t >= before);
        if p.is_file() && fresh {
            files.push(p);
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        assert!(
            !contains(&bytes, &canary),
            "plaintext record in {}",
            f.display()
        );
        assert!(
            !contains(&bytes, &canary[..64]),
            "plaintext row in {}",
            f.display()
        );
    }
}

#[test]
fn a_tampered_chunk_stops_training_with_shard_and_chunk() {
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\n");
    let ds = blindfold_owner::open(&w.ks, Store::open(&w.sealed(), false).unwrap()).unwrap();
    let shard = w
        .path("sealed")
        .join(&ds.manifest().splits[0].shards[0].path);
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&shard, bytes).unwrap();
    let err = w.run_sealed("train", "model", &cfg("mlp")).unwrap_err();
    match &err {
        Error::Data(e @ blindfold_dataset::Error::Integrity { .. }) => {
            let s = e.to_string();
            assert!(s.contains("shard train/0"), "{s}");
            assert!(s.contains("chunk"), "{s}");
        }
        other => panic!("expected an integrity error, got {other}"),
    }
    assert!(!w.path("model").join(MODEL_OBJECT).exists());
}

#[test]
fn a_broker_denial_stops_the_job_before_any_data_is_read() {
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"someone-else\"]\n");
    // Remove every shard: a job that read any data before asking for the key would
    // fail on a missing shard instead of the denial.
    let ds = blindfold_owner::open(&w.ks, Store::open(&w.sealed(), false).unwrap()).unwrap();
    for s in &ds.manifest().splits {
        for e in &s.shards {
            std::fs::remove_file(w.path("sealed").join(&e.path)).unwrap();
        }
    }
    let err = w.run_sealed("train", "model", &cfg("mlp")).unwrap_err();
    assert!(
        matches!(err, Error::Broker(blindfold_attest::Error::Denied { .. })),
        "{err}"
    );
    assert!(!w.path("model").join(MODEL_OBJECT).exists());
}

#[test]
fn a_dataset_rolled_back_after_registration_is_refused() {
    let w = World::new();
    // The owner publishes version 2 and registers it; storage (the attacker) then
    // serves version 1 again, whose shards and manifest are all validly sealed.
    let old_manifest = std::fs::read(w.path("sealed/manifest.bfm")).unwrap();
    let imp = import(&w.path("plain"), Format::Idx, &ImportOptions::default()).unwrap();
    let old_shards: Vec<PathBuf> = {
        let mut v = vec![];
        files_under(&w.path("sealed"), &mut v);
        v
    };
    let saved: Vec<(PathBuf, Vec<u8>)> = old_shards
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();
    blindfold_owner::seal(
        &w.ks,
        imp,
        &Store::open(&w.sealed(), false).unwrap(),
        &SealOptions {
            update: true,
            chunk_target: 4096,
            ..SealOptions::default()
        },
        &NoProgress,
    )
    .unwrap();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\n");
    for (p, b) in saved {
        std::fs::write(p, b).unwrap();
    }
    std::fs::write(w.path("sealed/manifest.bfm"), old_manifest).unwrap();
    let err = w.run_sealed("train", "model", &cfg("mlp")).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Data(blindfold_dataset::Error::RolledBack { .. })
        ),
        "{err}"
    );
}

/// A policy that lists model specs releases the key only to a job that trains one of
/// them; the job declares the spec it trains, and its digest reaches the sealed metrics
/// and train.json.
#[test]
fn a_policy_that_lists_models_refuses_other_specs() {
    let w = World::new();
    let lenet = Spec::builtin("lenet5").unwrap().sha256_hex();
    w.register(&format!(
        "tee = [\"sample\"]\njobs = [\"train\"]\nmodels = [\"{lenet}\"]\n"
    ));
    let err = w.run_sealed("train", "m-mlp", &cfg("mlp")).unwrap_err();
    match &err {
        Error::Broker(blindfold_attest::Error::Denied { detail, .. }) => {
            assert!(detail.contains("model spec"), "{detail}")
        }
        other => panic!("expected a denial, got {other}"),
    }
    let c = TrainConfig {
        epochs: 1,
        ..cfg("lenet5")
    };
    w.run_sealed("train", "m-lenet", &c).unwrap();
    let out = Store::open(w.path("m-lenet").to_str().unwrap(), false).unwrap();
    let (_, metrics) =
        w.ks.open_output(&out.get(METRICS_OBJECT).unwrap(), "metrics", false)
            .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&metrics).unwrap();
    assert_eq!(m["model_sha256"], lenet);
    let conf: serde_json::Value = serde_json::from_slice(&out.get(CONFIG_OBJECT).unwrap()).unwrap();
    assert_eq!(conf["model_sha256"], lenet);
    // A spec file that is not built in: its TOML travels in train.json, so the same
    // configuration file trains the same model again.
    let spec = "name = \"small\"\n[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"linear\"\nout = 16\n[[layer]]\ntype = \"relu\"\n";
    let file = w.path("small.toml");
    std::fs::write(&file, spec).unwrap();
    let mut c = cfg("mlp");
    c.set_model(file.to_str().unwrap()).unwrap();
    assert_eq!(c.model, "small");
    assert_eq!(c.model_spec.as_deref(), Some(spec));
    assert_eq!(
        c.spec().unwrap().sha256_hex(),
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(spec))
    );
    let err = w.run_sealed("train", "m-small", &c).unwrap_err();
    assert!(
        matches!(err, Error::Broker(blindfold_attest::Error::Denied { .. })),
        "{err}"
    );
}

/// --holdout takes validation (and test) records out of the training split by seed;
/// early stopping keeps the weights of the best validation epoch.
#[test]
fn holdout_and_early_stopping() {
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\n");
    let spec = "name = \"es\"\nstandardize = true\n[[layer]]\ntype = \"flatten\"\n[[layer]]\ntype = \"linear\"\nout = 32\n[[layer]]\ntype = \"relu\"\n[optimizer]\ntype = \"sgd\"\nmomentum = 0.9\n[early_stopping]\npatience = 2\n";
    let file = w.path("es.toml");
    std::fs::write(&file, spec).unwrap();
    let mut c = TrainConfig {
        epochs: 30,
        lr: 0.05,
        ..cfg("mlp")
    };
    c.set_model(file.to_str().unwrap()).unwrap();
    // Early stopping without a validation split is refused before the job starts.
    assert!(c.check().unwrap_err().to_string().contains("--holdout"));
    c.holdout = Some(0.2);
    let s = w.run_sealed("train", "m-es", &c).unwrap();
    let p = w.run_plain("m-es-plain", &c);
    assert_eq!(s.weights_sha256, p.weights_sha256, "sealed = plaintext");
    assert!(s.epochs.iter().all(|e| e.validation_loss.is_some()));
    let best = s
        .epochs
        .iter()
        .min_by(|a, b| a.validation_loss.partial_cmp(&b.validation_loss).unwrap())
        .unwrap();
    let last = s.epochs.last().unwrap();
    assert!(
        s.epochs.len() < 30,
        "the validation loss stopped falling before epoch 30"
    );
    assert_eq!(
        last.epoch - best.epoch,
        2,
        "stopped after `patience` epochs"
    );
    // The model is the best epoch's: the same weights as a run that ends there.
    let upto = w.run_plain(
        "m-es-best",
        &TrainConfig {
            epochs: best.epoch,
            ..c.clone()
        },
    );
    assert_eq!(upto.weights_sha256, s.weights_sha256);
    let out = Store::open(w.path("m-es").to_str().unwrap(), false).unwrap();
    let (_, metrics) =
        w.ks.open_output(&out.get(METRICS_OBJECT).unwrap(), "metrics", false)
            .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&metrics).unwrap();
    assert_eq!(m["best_epoch"], best.epoch);
}

/// A regression head on real-valued labels: y = 3·x₀ − 2·x₁ + 0.5 is learned to a small
/// error; a classifier refuses real-valued labels and a regression head class labels.
#[test]
fn regression_learns_a_linear_function() {
    use blindfold_format::{DType, Schema};
    use blindfold_zone::data::Dataset;
    let schema = Schema {
        dtype: DType::F32,
        shape: vec![2],
        label: Some(DType::F32),
    };
    let rows = |n: usize, salt: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let x0 = ((i * 37 + salt) % 100) as f32 / 10.0;
                let x1 = ((i * 61 + salt * 7) % 100) as f32 / 10.0;
                let y = 3.0 * x0 - 2.0 * x1 + 0.5;
                [x0, x1, y].into_iter().flat_map(f32::to_le_bytes)
            })
            .collect()
    };
    let data = || {
        Dataset::from_records(
            schema.clone(),
            ("train".into(), rows(400, 0)),
            Some(("test".into(), rows(100, 3))),
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reg.toml");
    std::fs::write(
        &file,
        "name = \"reg\"\nstandardize = true\n[head]\ntype = \"regression\"\n[optimizer]\ntype = \"sgd\"\nmomentum = 0.9\n",
    )
    .unwrap();
    let mut c = TrainConfig {
        epochs: 20,
        batch_size: 16,
        lr: 0.01,
        ..TrainConfig::default()
    };
    c.set_model(file.to_str().unwrap()).unwrap();
    let t = blindfold_zone::train::train(&data(), &c, &Quiet).unwrap();
    assert_eq!(t.spec.classes, 1, "one output");
    let last = t.epochs.last().unwrap();
    let (first, rmse) = (t.epochs[0].test_rmse.unwrap(), last.test_rmse.unwrap());
    assert!(rmse < 0.05 && rmse < first, "test RMSE {first} → {rmse}");
    assert!(last.test_accuracy.is_none());
    // The same configuration trains the same weights.
    let again = blindfold_zone::train::train(&data(), &c, &Quiet).unwrap();
    assert_eq!(again.weights_sha256, t.weights_sha256);
    // A classifier refuses real-valued labels, naming the head to use, from the schema
    // alone (a job checks it before it asks for a key)...
    let e = blindfold_zone::train::train(&data(), &cfg("mlp"), &Quiet).unwrap_err();
    assert!(
        e.to_string().contains("[head] type = \"regression\""),
        "{e}"
    );
    let e = cfg("mlp").check_schema(&schema).unwrap_err();
    assert!(
        e.to_string().contains("[head] type = \"regression\""),
        "{e}"
    );
    c.check_schema(&schema).unwrap();
    // ...while a regression head takes integer labels as numbers, negative ones too,
    // which a classifier refuses.
    let ints = Schema {
        label: Some(DType::I64),
        ..schema.clone()
    };
    let int_rows: Vec<u8> = (0..200i64)
        .flat_map(|i| {
            let (x0, x1) = ((i % 10) as f32, (i % 7) as f32);
            let y = 2 * (i % 10) - (i % 7) - 3;
            [x0.to_le_bytes(), x1.to_le_bytes()]
                .concat()
                .into_iter()
                .chain(y.to_le_bytes())
        })
        .collect();
    let d = Dataset::from_records(ints, ("train".into(), int_rows), None).unwrap();
    let t = blindfold_zone::train::train(&d, &c, &Quiet).unwrap();
    assert!(t.epochs.last().unwrap().train_rmse.unwrap() < 0.5);
    let e = blindfold_zone::train::train(&d, &cfg("mlp"), &Quiet).unwrap_err();
    assert!(e.to_string().contains("negative label"), "{e}");
}

/// A spec that cannot train on the dataset is refused before the key is asked for: it
/// uses no release (the policy allows one, which the next, fitting job gets).
#[test]
fn a_spec_that_does_not_fit_uses_no_release() {
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\nmax_releases = 1\n");
    let file = w.path("big.toml");
    std::fs::write(
        &file,
        "name = \"big\"\n[[layer]]\ntype = \"conv2d\"\nout = 4\nkernel = 64\n[[layer]]\ntype = \"flatten\"\n",
    )
    .unwrap();
    let mut c = cfg("mlp");
    c.set_model(file.to_str().unwrap()).unwrap();
    let e = w.run_sealed("train", "m-big", &c).unwrap_err();
    assert!(
        matches!(&e, Error::BadInput(m) if m.contains("layer 1 (conv2d)")),
        "{e}"
    );
    w.run_sealed("train", "m-fits", &cfg("mlp")).unwrap();
}

#[test]
fn a_sealed_job_signs_a_receipt_its_brokers_key_verifies() {
    use blindfold_protocol::receipt;
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\n");
    let r = w.run_sealed("train", "m-receipt", &cfg("mlp")).unwrap();
    let at = r.receipt.clone().expect("a sealed job writes a receipt");
    assert!(r.outputs.contains(&at), "{:?}", r.outputs);
    let out = Store::open(w.path("m-receipt").to_str().unwrap(), false).unwrap();
    let bytes = out.get(receipt::RECEIPT_OBJECT).unwrap();
    let jwk = blindfold_broker::public_key_jwk(&w.path("broker")).unwrap();
    let v = receipt::verify(&bytes, &receipt::broker_key_from_jwk(&jwk).unwrap()).unwrap();
    // What the broker certified is this release.
    let rel = blindfold_owner::release(&w.owner_view());
    assert_eq!(v.claims.dataset_id, rel.dataset_id);
    assert_eq!(v.claims.version, rel.version);
    assert_eq!(v.claims.manifest_sha256, hex::encode(rel.manifest_sha256));
    assert_eq!(v.claims.job.as_deref(), Some("train"));
    assert_eq!(
        v.claims.model,
        Some(Spec::load("mlp").unwrap().sha256_hex())
    );
    assert!(v.claims.insecure && v.claims.tee == "sample");
    assert!(v.predicate["assurance"]
        .as_str()
        .unwrap()
        .starts_with("none:"));
    assert_eq!(v.predicate["hyperparameters"]["seed"], 7);
    // The subjects are the sealed objects as stored.
    let names: Vec<&str> = v.subjects.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [MODEL_OBJECT, METRICS_OBJECT]);
    for s in &v.subjects {
        assert_eq!(
            blindfold_format::sha256(&out.get(&s.name).unwrap()),
            s.sha256
        );
    }
    // The owner who opens the metrics finds the digest the receipt holds.
    let (_, metrics) =
        w.ks.open_output(&out.get(METRICS_OBJECT).unwrap(), "metrics", false)
            .unwrap();
    assert_eq!(
        v.predicate["metrics"]["sha256"],
        hex::encode(blindfold_format::sha256(&metrics))
    );
    // The audit entry the certificate names is this release, with this receipt key.
    let log: serde_json::Value = w
        ._rt
        .block_on(async {
            reqwest::Client::new()
                .get(format!("{}/admin/v0/audit", w.broker_url))
                .bearer_auth(&w.admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
        })
        .unwrap();
    let entry = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["seq"] == v.claims.audit_seq)
        .unwrap();
    assert_eq!(entry["event"], "release");
    assert_eq!(entry["outcome"], "granted");
    assert_eq!(entry["receipt_key"], v.claims.receipt_key);
    // Another broker's key refuses it.
    let other = w.path("other-broker");
    blindfold_broker::init(&other, &[]).unwrap();
    let other =
        receipt::broker_key_from_jwk(&blindfold_broker::public_key_jwk(&other).unwrap()).unwrap();
    let e = receipt::verify(&bytes, &other).unwrap_err();
    assert_eq!(e.field, "predicate.release.certificate");
    // The metrics' digest confirms no guess: the same job again, on the same data, gives
    // identical weights and another digest (the sealed metrics hold random bytes).
    let again = w.run_sealed("train", "m-receipt-2", &cfg("mlp")).unwrap();
    assert_eq!(again.weights_sha256, r.weights_sha256);
    let out2 = Store::open(w.path("m-receipt-2").to_str().unwrap(), false).unwrap();
    let v2 = receipt::verify(
        &out2.get(receipt::RECEIPT_OBJECT).unwrap(),
        &receipt::broker_key_from_jwk(&jwk).unwrap(),
    )
    .unwrap();
    assert_ne!(
        v2.predicate["metrics"]["sha256"],
        v.predicate["metrics"]["sha256"]
    );
    // A plaintext baseline has no release, and writes no receipt.
    let p = w.run_plain("m-plain", &cfg("mlp"));
    assert!(p.receipt.is_none() && p.no_receipt.is_some());
    assert!(!w.path("m-plain").join(receipt::RECEIPT_OBJECT).exists());
}

/// `--device torch-cpu` (LibTorch): for each built-in model, sealed and plaintext jobs
/// give bit-identical weights, a second run the same ones again, and other weights than
/// Flex's (another engine, not a relabelled one). The weights load into Flex, where the
/// serving and evaluation code runs, and classify as well there.
#[cfg(feature = "torch")]
#[test]
fn torch_cpu_trains_identically_sealed_or_not_and_its_weights_load_in_flex() {
    use blindfold_zone::device::DeviceKind;
    use blindfold_zone::train::{evaluate_feed, Part};
    let w = World::new();
    w.register("tee = [\"sample\"]\njobs = [\"train\"]\n");
    for arch in ["mlp", "lenet5", "cnn"] {
        let c = TrainConfig {
            device: DeviceKind::TorchCpu,
            ..cfg(arch)
        };
        let s = w
            .run_sealed("train", &format!("t-sealed-{arch}"), &c)
            .unwrap();
        let p = w.run_plain(&format!("t-plain-{arch}"), &c);
        let again = w.run_plain(&format!("t-again-{arch}"), &c);
        assert_eq!(s.data_sha256, p.data_sha256, "the same records");
        assert_eq!(
            s.weights_sha256, p.weights_sha256,
            "{arch}: sealed = plaintext"
        );
        assert_eq!(p.weights_sha256, again.weights_sha256, "{arch}: run to run");
        for (a, b) in s.epochs.iter().zip(&p.epochs) {
            assert_eq!((a.loss, a.test_accuracy), (b.loss, b.test_accuracy));
        }
        let flex = w.run_plain(&format!("f-plain-{arch}"), &cfg(arch));
        assert_ne!(flex.weights_sha256, p.weights_sha256, "{arch}: not Flex's");
    }
    // LeNet-5 learns the synthetic classes on LibTorch as on Flex, and the weights
    // classify the unseen test split as well when Flex runs them.
    let c = TrainConfig {
        epochs: 6,
        device: DeviceKind::TorchCpu,
        ..cfg("lenet5")
    };
    let r = w.run_sealed("train", "t-lenet-long", &c).unwrap();
    let acc = r.epochs.last().unwrap().test_accuracy.unwrap();
    assert!(acc > 0.9, "test accuracy {acc}");
    let sealed = Store::open(w.path("t-lenet-long").to_str().unwrap(), false)
        .unwrap()
        .get(MODEL_OBJECT)
        .unwrap();
    let (_, weights) = w.ks.open_output(&sealed, "model", false).unwrap();
    let spec = ModelSpec {
        spec: Spec::builtin("lenet5").unwrap(),
        input: [1, 28, 28],
        classes: 10,
    };
    let device = Default::default();
    let net = spec.from_burnpack::<Cpu>(&weights, &device).unwrap();
    assert_eq!(
        hex::encode(blindfold_zone::model::weights_digest(&net)),
        r.weights_sha256
    );
    let imp = import(&w.path("plain"), Format::Idx, &ImportOptions::default()).unwrap();
    let data =
        blindfold_zone::data::Dataset::from_import(imp, &Splits::default(), &NoProgress).unwrap();
    let (flex_acc, _) = evaluate_feed::<Cpu>(&net, &data, Part::Test, &spec, &device).unwrap();
    assert!(
        (flex_acc - acc).abs() <= 0.02,
        "LibTorch's test accuracy {acc}, Flex's on the same weights {flex_acc}"
    );
}
