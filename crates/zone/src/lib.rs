//! Inside the trusted zone: the training job.
//!
//! This crate runs in the cloud, inside the confidential VM. It gets a dataset's key
//! only through `blindfold-attest` (remote attestation to the owner's broker), holds
//! decrypted records only in zeroizing memory, trains with Burn, and writes nothing but
//! outputs sealed to the owner's public key and its own clear configuration.
//!
//! - [`data`]: records in memory, shuffling, the batch prefetch pipeline.
//! - [`model`]: the MLP, LeNet-5 and CNN; weights as Burnpack and safetensors.
//! - [`train`]: the training loop and evaluation.
//! - [`device`]: where training runs; the GPU path decrypts records in device memory.
//! - [`job`]: a whole job from key to sealed outputs; process hardening.
//! - [`eval`]: trained weights on a plaintext test set (the owner's `eval`).
#![forbid(unsafe_code)]

pub mod data;
pub mod device;
mod error;
pub mod eval;
pub mod job;
pub mod model;
pub mod train;

pub use error::{Error, Result};
