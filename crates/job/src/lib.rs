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
pub use train::{train, DeviceArg, EvidenceArgs, ModelArg, TrainArgs};
