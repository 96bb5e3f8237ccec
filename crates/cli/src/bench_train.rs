//! `blindfold bench train`: the same training job from sealed and from plaintext
//! Fashion-MNIST, alternating, side by side in one process.

use std::path::{Path, PathBuf};

use blindfold_attest::{EvidenceSource, FetchOptions};
use blindfold_format::Suite;
use blindfold_owner::import::{import, Format, ImportOptions};
use blindfold_owner::{Error, KeyStore, NoProgress, SealOptions, SealedDataset};
use blindfold_store::Store;
use blindfold_zone::data::Splits;
use blindfold_zone::job::{self, JobReport, Source};
use blindfold_zone::train::{Quiet, TrainConfig};
use clap::Args;
use serde_json::json;

use crate::local_broker::LocalBroker;
use crate::Failure;
use blindfold_job::{epoch_line, Bars, DeviceArg, EpochBars};

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Model: built in (mlp, lenet5, cnn) or a spec file (*.toml, docs/model-spec.md).
    #[arg(long, default_value = "lenet5", value_name = "NAME|SPEC.toml")]
    model: String,
    /// Epochs per run.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Rounds; each runs the sealed and the plaintext job once, in alternating order.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Records per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// CPU backend: `cpu` (Burn's Flex) or `torch-cpu` (LibTorch, in a build with
    /// `--features torch`). The GPUs have `bench gpu`.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Where Fashion-MNIST's IDX files are.
    #[arg(long, default_value = crate::demo::FASHION_MNIST)]
    data: PathBuf,
    /// Scratch folder (a fresh temporary folder inside it is used and removed).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn last_acc(r: &JobReport) -> Option<f64> {
    r.epochs.last().and_then(|e| e.test_accuracy)
}

/// A sealed copy of Fashion-MNIST, the owner's key store and a local broker that
/// releases its key to `sample` evidence, in a scratch folder removed on drop.
pub struct Setup {
    pub root: tempfile::TempDir,
    pub sealed: String,
    pub ds: SealedDataset,
    /// Kept alive (it serves the jobs' key requests) until the setup is dropped.
    _broker: LocalBroker,
    pub opts: FetchOptions,
    pub evidence: EvidenceSource,
    pub owner_public: [u8; 32],
}

impl Setup {
    pub fn new(data: &Path, dir: &Path, suite: Suite, bars: &Bars) -> Result<Setup, Failure> {
        crate::demo::ensure_data(data)?;
        let tmp = tempfile::Builder::new()
            .prefix("blindfold-bench-train-")
            .tempdir_in(dir)
            .map_err(|e| Error::BadInput(format!("{}: {e}", dir.display())))?;
        let sealed = utf8(&tmp.path().join("sealed"))?;
        eprintln!(
            "setup: key store, seal {} ({suite}), local broker",
            data.display()
        );
        let ks = KeyStore::init(&tmp.path().join("keys"), None)?;
        let store = Store::open(&sealed, true)?;
        blindfold_owner::seal(
            &ks,
            import(data, Format::Idx, &ImportOptions::default())?,
            &store,
            &SealOptions {
                suite,
                ..SealOptions::default()
            },
            bars,
        )?;
        let ds = blindfold_owner::open(&ks, Store::open(&sealed, false)?)?;
        let broker = LocalBroker::start(&tmp.path().join("broker"))?;
        broker.register(&ds, "tee = [\"sample\"]\njobs = [\"bench\"]\n")?;
        let opts = broker.fetch_options("bench");
        let owner_public: [u8; 32] = ks
            .identity_public()
            .try_into()
            .map_err(|_| Error::Bug("identity key length".into()))?;
        Ok(Setup {
            root: tmp,
            sealed,
            ds,
            _broker: broker,
            opts,
            evidence: EvidenceSource::InsecureSample { measurement: None },
            owner_public,
        })
    }

    /// Runs one whole job, sealed or from the plaintext files, into a fresh output
    /// folder `out-N`, and prints its timings.
    #[allow(clippy::too_many_arguments)]
    pub fn job(
        &self,
        data: &Path,
        is_sealed: bool,
        n: usize,
        title: &str,
        cfg: &TrainConfig,
        bars: &Bars,
        quiet: bool,
    ) -> Result<JobReport, Failure> {
        let out = Store::open(&utf8(&self.root.path().join(format!("out-{n}")))?, true)?;
        let source = if is_sealed {
            Source::Sealed {
                dataset: &self.sealed,
                broker: &self.opts,
                evidence: &self.evidence,
            }
        } else {
            Source::Plaintext {
                import: import(data, Format::Idx, &ImportOptions::default())?,
                owner_public: self.owner_public,
                input: data.display().to_string(),
            }
        };
        let label = if is_sealed { "sealed" } else { "plaintext" };
        eprintln!("{title} {label}");
        let splits = Splits::default();
        let (r, _) = if quiet {
            job::run(source, &splits, cfg, &out, &NoProgress, &Quiet)
        } else {
            job::run(source, &splits, cfg, &out, bars, &EpochBars::new(false))
        }?;
        if quiet {
            for e in &r.epochs {
                eprintln!("  {}", epoch_line(e));
            }
        }
        eprintln!(
            "  job {:.2} s: key {:.3} s, load {:.3} s, train {:.2} s, seal+write {:.3} s; weights fingerprint {}",
            r.total_s,
            r.key_s,
            r.load_s,
            r.train_s,
            r.output_s,
            fingerprint(&r.weights_sha256)
        );
        Ok(r)
    }
}

/// A fingerprint of weights that tells equal weights apart from different ones within
/// this run only: HMAC-SHA-256 of their digest under a key made for this process. A
/// plain digest would let anyone with a candidate dataset confirm it (training is
/// deterministic and its configuration public).
pub fn fingerprint(weights_sha256: &str) -> String {
    use aws_lc_rs::hmac;
    static KEY: std::sync::OnceLock<hmac::Key> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| {
        hmac::Key::generate(hmac::HMAC_SHA256, &aws_lc_rs::rand::SystemRandom::new())
            .expect("the random generator works")
    });
    hex::encode(&hmac::sign(key, weights_sha256.as_bytes()).as_ref()[..8])
}

fn utf8(p: &Path) -> Result<String, Error> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::BadInput("scratch folder must be UTF-8".into()))
}

/// Runs `rounds` rounds of one sealed and one plaintext job, the order alternating
/// from round to round; returns the reports of each side.
pub fn alternate(
    setup: &Setup,
    data: &Path,
    warmup: usize,
    rounds: usize,
    cfg: &TrainConfig,
    bars: &Bars,
    quiet: bool,
) -> Result<(Vec<JobReport>, Vec<JobReport>), Failure> {
    let (mut sealed_runs, mut plain_runs) = (Vec::new(), Vec::new());
    let mut n = 0;
    for i in 0..warmup {
        n += 1;
        setup.job(
            data,
            false,
            n,
            &format!("warm-up {} (not timed):", i + 1),
            cfg,
            bars,
            quiet,
        )?;
    }
    for round in 0..rounds.max(1) {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_sealed in order {
            n += 1;
            let title = format!("round {}", round + 1);
            let r = setup.job(data, is_sealed, n, &title, cfg, bars, quiet)?;
            if is_sealed {
                sealed_runs.push(r);
            } else {
                plain_runs.push(r);
            }
        }
    }
    Ok((sealed_runs, plain_runs))
}

/// Median job time of each side and whether every run gave the same weights.
pub fn summary(sealed: &[JobReport], plain: &[JobReport]) -> (f64, f64, bool) {
    let sealed_s = median(&mut sealed.iter().map(|r| r.total_s).collect::<Vec<_>>());
    let plaintext_s = median(&mut plain.iter().map(|r| r.total_s).collect::<Vec<_>>());
    let first = &sealed[0].weights_sha256;
    let identical = sealed
        .iter()
        .chain(plain)
        .all(|r| &r.weights_sha256 == first);
    (sealed_s, plaintext_s, identical)
}

pub fn run(a: &BenchTrainArgs, bars: &Bars, quiet: bool) -> Result<(), Failure> {
    let mut cfg = TrainConfig {
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
        device: a.device.into(),
        ..TrainConfig::default()
    };
    if !cfg.device.host_memory() {
        return Err(Error::BadInput(format!(
            "bench train measures the CPU backends (--device cpu or torch-cpu); for {} use bench gpu",
            cfg.device.name()
        ))
        .into());
    }
    cfg.set_model(&a.model)?;
    cfg.check()?;
    let setup = Setup::new(&a.data, &a.dir, Suite::Aes256Gcm, bars)?;
    let (sealed_runs, plain_runs) = alternate(&setup, &a.data, 0, a.rounds, &cfg, bars, quiet)?;
    let (sealed_s, plaintext_s, identical) = summary(&sealed_runs, &plain_runs);
    let same_data = sealed_runs
        .iter()
        .chain(&plain_runs)
        .all(|r| r.data_sha256 == sealed_runs[0].data_sha256);
    let sealed_acc = last_acc(&sealed_runs[0]);
    let plaintext_acc = last_acc(&plain_runs[0]);
    eprintln!(
        "sealed {sealed_s:.2} s vs plaintext {plaintext_s:.2} s (median of {} each): overhead {:.4}; \
         test accuracy {} vs {}; weights identical: {identical}; records identical: {same_data}",
        sealed_runs.len(),
        sealed_s / plaintext_s,
        sealed_acc.map_or("n/a".into(), |v| format!("{:.2}%", v * 100.0)),
        plaintext_acc.map_or("n/a".into(), |v| format!("{:.2}%", v * 100.0)),
    );
    println!(
        "{}",
        json!({
            "model": cfg.model,
            "device": cfg.device.name(),
            "epochs": cfg.epochs,
            "sealed_s": sealed_s,
            "plaintext_s": plaintext_s,
            "overhead": sealed_s / plaintext_s,
            "sealed_acc": sealed_acc,
            "plaintext_acc": plaintext_acc,
            "identical_weights": identical,
            "key_and_decrypt_s": median(&mut sealed_runs.iter().map(|r| r.key_s + r.load_s).collect::<Vec<_>>()),
            "plaintext_read_s": median(&mut plain_runs.iter().map(|r| r.load_s).collect::<Vec<_>>()),
            "runs_per_side": sealed_runs.len(),
        })
    );
    Ok(())
}
