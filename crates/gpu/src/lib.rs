//! Decryption on the device: sealed chunks travel as ciphertext to GPU memory, where a
//! CubeCL kernel authenticates and decrypts them (ChaCha20-Poly1305, RFC 8439). The
//! host never holds their plaintext.
//!
//! This crate runs inside the trusted zone. It knows nothing of the sealed format: the
//! caller (the zone's data pipeline) authenticates shard headers on the host, derives
//! each shard's payload key and hands over chunks as `(key slot, nonce, associated
//! data, ciphertext ‖ tag)`. See `docs/sealed-format.md` §5.2 and
//! `docs/threat-model.md` ("Decryption on the GPU") for what this protects and what not.
//!
//! The kernel is generic over CubeCL's `Runtime`; the `wgpu` feature compiles it for
//! Vulkan devices (CI runs it on Mesa's software lavapipe), `cuda` for NVIDIA GPUs.
#![deny(unsafe_code)]

// The `#[cube]` macro generates launch modules and structs without docs.
#[allow(missing_docs)]
pub mod kernel;
mod launch;
#[cfg(feature = "cuda")]
mod probe;

#[cfg(feature = "bench")]
pub use launch::copy_words;
pub use launch::{
    gather_u8, open, sync, upload_batch, upload_plaintext, wipe, Batch, ChunkPlace, Opened,
    Records, Uploaded, MAX_AAD,
};
#[cfg(feature = "cuda")]
pub use probe::cuda_ready;

use std::fmt;

/// What went wrong, and whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller passed something the kernel cannot take.
    #[error("bad input: {0}")]
    BadInput(String),
    /// Chunk `chunk` (in the order it was added) failed authentication on the device.
    /// Nothing of its plaintext exists: the kernel wrote zeros in its place.
    #[error("chunk {chunk} failed authentication on the device")]
    Tampered {
        /// Index of the chunk in the batch.
        chunk: usize,
    },
    /// The device or its runtime is not on this machine (the environment's fault):
    /// names what is missing.
    #[error("{0}")]
    Unavailable(String),
    /// The device or its runtime failed.
    #[error("device: {0}")]
    Device(String),
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A 32-byte ChaCha20-Poly1305 key; zeroized on drop, never printed.
pub struct Key(zeroize::Zeroizing<[u8; 32]>);

impl Key {
    /// Wraps raw key bytes (the caller zeroizes its own copy).
    pub fn new(bytes: zeroize::Zeroizing<[u8; 32]>) -> Self {
        Key(bytes)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Configures CubeCL for a job in the trusted zone, once per process, before any device
/// is used: CubeCL's autotune results (kernel names, tensor shapes and timings; no data)
/// go to `cache_dir` instead of a `target/` folder found above the working directory or
/// the user's cache folder, its logs are off, and no `cubecl.toml` from the working
/// directory is read. Returns false when CubeCL was already configured (or used) in this
/// process, which leaves its configuration as it was.
pub fn configure_runtime(cache_dir: &std::path::Path) -> bool {
    use cubecl::config::autotune::AutotuneLogLevel;
    use cubecl::config::cache::CacheConfig;
    use cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    static ONCE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    if *done || CubeClRuntimeConfig::storage().lock().is_some() {
        return false;
    }
    let mut cfg = CubeClRuntimeConfig::default();
    cfg.autotune.cache = CacheConfig::File(cache_dir.to_path_buf());
    cfg.autotune.logger.level = AutotuneLogLevel::Disabled;
    cfg.compilation.cache = None;
    CubeClRuntimeConfig::set(cfg);
    *done = true;
    true
}
