//! `blindfold-job`: one training job inside the trusted zone.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use blindfold_job::{exit_table, finish, init_logging, train, Bars, Fault, TrainArgs};
use clap::Parser;

/// Train a model inside the trusted zone on a sealed dataset.
///
/// The job proves by attestation to the owner's key broker that it runs the expected
/// code, receives the dataset key encrypted to an ephemeral key of its own, checks the
/// manifest against the version and digest the owner registered, decrypts the records
/// into memory only (or on the GPU), trains, and writes the weights and metrics sealed to
/// the owner. This binary holds no key store, no broker server and no benchmark: it is
/// the one a policy's measurement should cover (docs/threat-model.md).
#[derive(Parser)]
#[command(name = "blindfold-job", version, after_help = exit_table(&Fault::JOB), max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    train: Box<TrainArgs>,
    /// Print no progress bars and no per-epoch figures (stderr is the cloud's).
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    finish(
        "blindfold-job",
        train(&cli.train, &Bars::new(cli.quiet), cli.quiet),
    )
}
