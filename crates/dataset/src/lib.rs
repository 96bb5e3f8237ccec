//! What both sides read: the sealed-dataset reader, the importers, `inspect`.
//!
//! The owner's tools (`blindfold-owner`) and the trusted zone (`blindfold-zone`) both
//! depend on this crate; it depends on neither. It holds no key store: a
//! [`SealedDataset`] is opened with a key its caller already has (the owner's key
//! store, or the broker's release), and checked against the version that caller
//! expects. It writes no plaintext to files: exporting records back into files is the
//! owner's (`blindfold-owner`), and the zone cannot link it.
#![forbid(unsafe_code)]

mod error;
pub mod import;
mod outputs;
mod reader;

pub use error::{Error, Result};
pub use outputs::{
    check_output_location, check_safetensors, write_job_outputs, JobOutputs, OutputSealer, Written,
    SAFETENSORS_CONTENT_TYPE,
};
pub use reader::{
    claimed_id, claimed_manifest, inspect, read_manifest, Expected, Inspection, SealedDataset,
    SealedShard, ShardStatus, VerifyReport, OWNER_PUBLIC_FIELD,
};

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
