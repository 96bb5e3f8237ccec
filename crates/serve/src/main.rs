//! `blindfold-serve`: a prediction service over a sealed model, inside the trusted zone.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use blindfold_job::{exit_table, finish, init_logging, Fault};
use blindfold_serve::{serve, ServeArgs};
use clap::Parser;

/// Serve predictions of a sealed model inside the trusted zone.
///
/// The service proves by attestation to the owner's key broker that it runs the
/// expected code, receives the model's key and the owner's serving rules (API keys,
/// query budgets, top-1 only) encrypted to an ephemeral key of its own, decrypts the
/// weights into memory only, and answers over HTTPS with a TLS key made at start and
/// bound into its evidence (`GET /v1/attestation?nonce=`). Clients check that evidence
/// before they send anything (`blindfold predict --expect`). This binary holds no key
/// store, no broker server and no training code: it is the one a serving policy's
/// measurement should cover (docs/serving.md).
#[derive(Parser)]
#[command(name = "blindfold-serve", version, after_help = exit_table(&Fault::JOB), max_term_width = 100)]
struct Cli {
    #[command(flatten)]
    serve: Box<ServeArgs>,
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    finish("blindfold-serve", serve(&cli.serve))
}
