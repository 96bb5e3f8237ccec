//! Inside the trusted zone: the training job.
//!
//! This crate runs in the cloud, inside the confidential VM. It gets a dataset's key
//! only through `blindfold-attest` (remote attestation to the owner's broker), holds
//! decrypted records only in zeroizing memory, trains with Burn, and writes nothing but
//! outputs sealed to the owner's public key and its own clear configuration.
//!
//! - [`data`]: records in memory, shuffling, the batch prefetch pipeline.
//! - [`spec`]: model specs (TOML): layers, head, optimizer, schedule, early stopping.
//! - [`model`]: a spec built as a Burn network; weights as Burnpack and safetensors.
//! - [`train`]: the training loop and evaluation.
//! - [`device`]: where training runs; the GPU path decrypts records in device memory.
//! - [`job`]: a whole job from key to sealed outputs; process hardening.
//! - [`eval`]: trained weights on a plaintext test set (the owner's `eval`).
// `unsafe` only in `libtorch` (glibc's allocator settings, one call into ATen), and only
// in a build with LibTorch (see Cargo.toml's lints).
#![cfg_attr(not(feature = "torch"), forbid(unsafe_code))]

pub mod data;
pub mod device;
mod error;
pub mod eval;
pub mod infer;
pub mod job;
#[cfg(feature = "torch")]
mod libtorch;
pub mod model;
pub mod spec;
pub mod train;

pub use error::{Error, Result};
