//! The training job, as the trusted zone runs it: its command line, progress, exit
//! statuses, and the run itself (attest, fetch the key, check the manifest, train, seal
//! the outputs to the owner). The `blindfold-job` binary is what a confidential VM's
//! measurement should cover (docs/threat-model.md); `blindfold train` runs the same code
//! for local use.
//!
//! By construction this crate, and so the binary, links no key store, no broker server
//! or database, no exporter that writes plaintext to files, and no benchmark: its
//! dependencies are the zone, the broker client, the dataset reader and storage
//! (`tests/boundary.rs` fails if one of the others comes back).
#![forbid(unsafe_code)]

pub mod fault;
mod progress;
mod train;

pub use fault::{exit_table, Failure, Fault};
pub use progress::{epoch_line, Bars, EpochBars};
pub use train::{train, DeviceArg, EvidenceArgs, TrainArgs};

/// Logs to stderr, filtered by `$BLINDFOLD_LOG` (off by default).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("BLINDFOLD_LOG"))
        .with_writer(std::io::stderr)
        .init();
}

/// Ends a program run: removes the process's GPU runtime cache, prints a failure as one
/// line `PROGRAM: error: ...`, and returns its exit status.
pub fn finish(program: &str, result: Result<(), Failure>) -> std::process::ExitCode {
    // CubeCL's autotune cache of a GPU job (shapes and timings, no data) lives in a
    // per-process folder: gone when the process is.
    blindfold_zone::device::remove_runtime_cache();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{program}: error: {f}");
            std::process::ExitCode::from(f.fault.code())
        }
    }
}
