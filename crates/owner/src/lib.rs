//! The data owner's side of blindfold: the key store, importers, and sealing, opening,
//! verifying and inspecting datasets.
//!
//! Plaintext here is the owner's own, on the owner's machine. Nothing in this crate
//! runs in the broker or in the cloud.
#![forbid(unsafe_code)]

pub mod bench;
pub mod dataset;
mod error;
pub mod import;
pub mod keystore;
pub mod seal;

pub use dataset::{inspect, Expected, Inspection, SealedDataset, SealedShard, VerifyReport};
pub use error::{Error, Result};
pub use keystore::{default_home, KeyStore, Upgraded};
pub use seal::{seal, SealOptions, SealReport};

/// Receives progress of long operations (the CLI draws bars from it).
pub trait Progress: Sync {
    /// A phase starts; `total` bytes of plaintext will pass.
    fn begin(&self, _what: &str, _total: u64) {}
    /// `n` more bytes done.
    fn advance(&self, _n: u64) {}
    /// The phase is over.
    fn end(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {}
