//! The data owner's side of blindfold: the key store, sealing, opening a sealed dataset
//! with the key store (checked against the versions it sealed), exporting records back
//! into files, the release object for the broker, and the benchmarks.
//!
//! Plaintext here is the owner's own, on the owner's machine. What the trusted zone
//! reads too (the sealed-dataset reader, the importers) is `blindfold-dataset`; the
//! zone's crates cannot link this one, so nothing here runs in the cloud.
#![forbid(unsafe_code)]

pub mod bench;
mod error;
pub mod export;
pub mod keystore;
mod open;
mod outputs;
pub mod seal;

pub use blindfold_dataset::{
    import, inspect, Expected, Inspection, NoProgress, Progress, SealedDataset, SealedShard,
    VerifyReport,
};
pub use error::{Error, Result};
pub use keystore::{default_home, KeyStore, Upgraded};
pub use open::{open, open_to_dir, release, Release};
pub use outputs::{open_job_outputs, JobOutputs};
pub use seal::{seal, SealOptions, SealReport};
