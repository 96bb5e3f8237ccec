//! `blindfold bench train`: the same training job from sealed and from plaintext
//! Fashion-MNIST, alternating, side by side in one process.

use std::path::PathBuf;

use blindfold_attest::EvidenceSource;
use blindfold_owner::import::{import, Format, ImportOptions};
use blindfold_owner::{Error, KeyStore, NoProgress, SealOptions, SealedDataset};
use blindfold_store::Store;
use blindfold_zone::data::Splits;
use blindfold_zone::job::{self, JobReport, Source};
use blindfold_zone::train::{Quiet, TrainConfig};
use clap::Args;
use serde_json::json;

use crate::local_broker::LocalBroker;
use crate::progress::Bars;
use crate::train::{epoch_line, zone, EpochBars, ModelArg};
use crate::Failure;

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Model.
    #[arg(long, value_enum, default_value = "lenet5")]
    model: ModelArg,
    /// Epochs per run.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Rounds; each runs the sealed and the plaintext job once, in alternating order.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Records per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
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

pub fn run(a: &BenchTrainArgs, bars: &Bars, quiet: bool) -> Result<(), Failure> {
    crate::demo::ensure_data(&a.data)?;
    let cfg = TrainConfig {
        model: a.model.into(),
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        seed: a.seed,
    };
    cfg.check().map_err(zone)?;
    let tmp = tempfile::Builder::new()
        .prefix("blindfold-bench-train-")
        .tempdir_in(&a.dir)
        .map_err(|e| Error::BadInput(format!("{}: {e}", a.dir.display())))?;
    let root = tmp.path();
    let path = |name: &str| -> Result<String, Error> {
        root.join(name)
            .to_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::BadInput("scratch folder must be UTF-8".into()))
    };
    eprintln!("setup: key store, seal {}, local broker", a.data.display());
    let ks = KeyStore::init(&root.join("keys"), None)?;
    let sealed = path("sealed")?;
    let store = Store::open(&sealed, true)?;
    blindfold_owner::seal(
        &ks,
        import(&a.data, Format::Idx, &ImportOptions::default())?,
        &store,
        &SealOptions::default(),
        bars,
    )?;
    let ds = SealedDataset::open(&ks, Store::open(&sealed, false)?)?;
    let broker = LocalBroker::start(&root.join("broker"))?;
    broker.register(&ds, "tee = [\"sample\"]\njobs = [\"bench\"]\n")?;
    let opts = broker.fetch_options("bench");
    let evidence = EvidenceSource::InsecureSample { measurement: None };
    let owner_public: [u8; 32] = ks
        .identity_public()
        .try_into()
        .map_err(|_| Error::Bug("identity key length".into()))?;
    let splits = Splits::default();

    let (mut sealed_runs, mut plain_runs) = (Vec::new(), Vec::new());
    let mut n = 0;
    for round in 0..a.rounds.max(1) {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_sealed in order {
            n += 1;
            let out = Store::open(&path(&format!("out-{n}"))?, true)?;
            let source = if is_sealed {
                Source::Sealed {
                    dataset: &sealed,
                    broker: &opts,
                    evidence: &evidence,
                }
            } else {
                Source::Plaintext {
                    import: import(&a.data, Format::Idx, &ImportOptions::default())?,
                    owner_public,
                    input: a.data.display().to_string(),
                }
            };
            let label = if is_sealed { "sealed" } else { "plaintext" };
            eprintln!("round {} {label}", round + 1);
            let (r, _) = if quiet {
                job::run(source, &splits, &cfg, &out, &NoProgress, &Quiet)
            } else {
                job::run(source, &splits, &cfg, &out, bars, &EpochBars::new(false))
            }
            .map_err(zone)?;
            if quiet {
                for e in &r.epochs {
                    eprintln!("  {}", epoch_line(e));
                }
            }
            eprintln!(
                "  job {:.2} s: key {:.3} s, load {:.3} s, train {:.2} s, seal+write {:.3} s; weights {}",
                r.total_s,
                r.key_s,
                r.load_s,
                r.train_s,
                r.output_s,
                &r.weights_sha256[..16]
            );
            if is_sealed {
                sealed_runs.push(r);
            } else {
                plain_runs.push(r);
            }
        }
    }
    let sealed_s = median(&mut sealed_runs.iter().map(|r| r.total_s).collect::<Vec<_>>());
    let plaintext_s = median(&mut plain_runs.iter().map(|r| r.total_s).collect::<Vec<_>>());
    let first = &sealed_runs[0].weights_sha256;
    let identical = sealed_runs
        .iter()
        .chain(&plain_runs)
        .all(|r| &r.weights_sha256 == first);
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
            "model": cfg.model.name(),
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
