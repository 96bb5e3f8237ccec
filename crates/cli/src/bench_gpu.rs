//! `blindfold bench gpu`: decryption on the device next to a device-to-device copy, and
//! GPU training from a sealed dataset (decrypted on the device) against the plaintext
//! baseline, alternating, in one process.

use std::path::PathBuf;

use blindfold_format::Suite;
use blindfold_zone::device::{self, DeviceKind};
use blindfold_zone::train::TrainConfig;
use clap::Args;
use serde_json::json;

use crate::bench_train::{alternate, summary, Setup};
use crate::Failure;
use blindfold_job::{Bars, DeviceArg};

#[derive(Args)]
pub struct BenchGpuArgs {
    /// Device: `cuda` (an NVIDIA GPU) or `wgpu` (any Vulkan device; Mesa's lavapipe
    /// on a machine without a GPU, where figures say nothing about GPUs).
    #[arg(long, value_enum, default_value = "cuda")]
    device: DeviceArg,
    /// Model for the training comparison: built in or a spec file (*.toml).
    #[arg(long, default_value = "lenet5", value_name = "NAME|SPEC.toml")]
    model: String,
    /// Epochs per training run (0: measure decryption only).
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Rounds of training; each runs the sealed and the plaintext job once, in
    /// alternating order.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Untimed plaintext training jobs before the timed rounds. The first job in a
    /// process compiles and autotunes every training kernel, which would be charged to
    /// whichever side runs first (on lavapipe, MLP: 94-128 s for the first job, 36-38 s after).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed repetitions of the decryption and of the copy.
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Records per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
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

pub fn run(a: &BenchGpuArgs, bars: &Bars, quiet: bool) -> Result<(), Failure> {
    let kind: DeviceKind = a.device.into();
    if kind.host_memory() {
        return Err(blindfold_owner::Error::BadInput(
            "bench gpu measures a device: --device cuda or wgpu (bench train is the CPUs')".into(),
        )
        .into());
    }
    let mut cfg = TrainConfig {
        epochs: a.epochs.max(1),
        batch_size: a.batch_size,
        seed: a.seed,
        device: kind,
        ..TrainConfig::default()
    };
    cfg.set_model(&a.model)?;
    cfg.check()?;
    // The device kernel decrypts ChaCha20-Poly1305.
    let setup = Setup::new(&a.data, &a.dir, Suite::ChaCha20Poly1305, bars)?;
    eprintln!(
        "decryption on {}: the training split, {} repetitions, then as many copies",
        kind.name(),
        a.iterations
    );
    let t = device::throughput(kind, &setup.ds, "train", a.iterations)?;
    let gb = (t.bytes * t.iterations as u64) as f64 / 1e9;
    let decrypt_gbps = gb / t.decrypt_s.max(1e-12);
    let copy_gbps = gb / t.copy_s.max(1e-12);
    eprintln!(
        "  {} chunks, {:.1} MB: decrypt+verify {decrypt_gbps:.2} GB/s, copy {copy_gbps:.2} GB/s ({:.1}% of copy); plaintext identical to the CPU decryptor: {}",
        t.chunks,
        t.bytes as f64 / 1e6,
        100.0 * decrypt_gbps / copy_gbps,
        t.identical_to_cpu
    );
    let mut out = json!({
        "device": kind.name(),
        "decrypt_gbps": decrypt_gbps,
        "copy_gbps": copy_gbps,
        "decrypt_vs_copy": decrypt_gbps / copy_gbps,
        "identical_plaintext": t.identical_to_cpu,
        "sealed_s": null,
        "plaintext_s": null,
        "overhead": null,
        "identical_weights": null,
    });
    if a.epochs > 0 {
        let (sealed, plain) = alternate(&setup, &a.data, a.warmup, a.rounds, &cfg, bars, quiet)?;
        let (sealed_s, plaintext_s, identical) = summary(&sealed, &plain);
        eprintln!(
            "training on {}: sealed {sealed_s:.2} s vs plaintext {plaintext_s:.2} s: overhead {:.4}; weights identical: {identical}",
            kind.name(),
            sealed_s / plaintext_s
        );
        out["model"] = json!(cfg.model);
        out["epochs"] = json!(cfg.epochs);
        out["sealed_s"] = json!(sealed_s);
        out["plaintext_s"] = json!(plaintext_s);
        out["overhead"] = json!(sealed_s / plaintext_s);
        out["identical_weights"] = json!(identical);
        out["sealed_acc"] = json!(sealed[0].epochs.last().and_then(|e| e.test_accuracy));
        out["plaintext_acc"] = json!(plain[0].epochs.last().and_then(|e| e.test_accuracy));
        out["runs_per_side"] = json!(sealed.len());
        out["warmup_runs"] = json!(a.warmup);
    }
    println!("{out}");
    Ok(())
}
