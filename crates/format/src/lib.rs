//! The sealed dataset format of blindfold: shard headers, STREAM chunk sealing and
//! opening, key derivation and commitment, manifests, and sealed outputs (HPKE to the
//! owner).
//!
//! Pure functions over bytes and a key: no files, no network. The byte layout is
//! specified in `docs/sealed-format.md`; section numbers (§) in this crate refer to it.
//!
//! Sealing a shard:
//! ```
//! use blindfold_format::{DatasetId, DatasetKey, Schema, ShardParams, Suite, seal_shard, open_shard};
//! let key = DatasetKey::generate()?;
//! let params = ShardParams {
//!     suite: Suite::Aes256Gcm, dataset_id: DatasetId::generate()?, split: "train".into(),
//!     index: 0, schema: Schema::raw(), records_per_chunk: 4, record_count: 10, first_record: 0,
//! };
//! let (shard, _digest) = seal_shard(&key, params, b"0123456789")?;
//! let (_header, plain) = open_shard(&key, &shard)?;
//! assert_eq!(plain, b"0123456789");
//! # Ok::<(), blindfold_format::Error>(())
//! ```
#![forbid(unsafe_code)]

mod error;
pub mod fuzz;
mod keys;
mod manifest;
mod output;
mod schema;
mod shard;

pub use error::{Error, Object, Result};
pub use keys::{
    commitment, random_bytes, sha256, DatasetId, DatasetKey, Suite, COMMITMENT_LEN, DATASET_ID_LEN,
    KEY_LEN, NONCE_PREFIX_LEN, SALT_LEN, TAG_LEN,
};
pub use manifest::{
    manifest_digest, shard_path, valid_shard_path, Manifest, ShardEntry, Split, MANIFEST_MAGIC,
    MANIFEST_NAME, MAX_MANIFEST_BODY, MAX_MANIFEST_LEN, MAX_SPLITS,
};
pub use output::{
    open_output, output_header_unverified, output_psk, seal_output, OutputHeader, OutputSource,
    CONFIG_OBJECT, MAX_OUTPUT_HEADER, METRICS_OBJECT, MODEL_OBJECT, OUTPUT_INFO, OUTPUT_MAGIC,
    OUTPUT_SUITE, X25519_LEN,
};
pub use schema::{
    valid_split_name, DType, Schema, DEFAULT_CHUNK_TARGET, MAX_DIMS, MAX_RECORD_SIZE,
};
pub use shard::{
    open_shard, seal_shard, seal_with, ShardHeader, ShardOpener, ShardParams, ShardSealer,
    FORMAT_VERSION, HEADER_PREFIX_LEN, MAX_HEADER_LEN, SHARD_MAGIC,
};
