//! Sealing: importer records → STREAM shards in storage → manifest.
//!
//! Publishing order (so that a crash or error never leaves a dataset nobody can open,
//! nor a half-written one anybody can mistake for whole): shards are uploaded as whole
//! objects under fresh names; for a new dataset the key store records the key before
//! the manifest is written; the manifest, one object written atomically, publishes the
//! dataset. On any error before that, every shard written so far is deleted.

use blindfold_format::{
    manifest_digest, shard_path, DatasetId, DatasetKey, Manifest, ShardEntry, ShardParams,
    ShardSealer, Split, Suite, DEFAULT_CHUNK_TARGET, MANIFEST_NAME,
};
use blindfold_store::Store;
use zeroize::Zeroize;

use blindfold_dataset::import::Import;
use blindfold_dataset::{claimed_id, Progress, OWNER_PUBLIC_FIELD};

use crate::error::{Error, Result};
use crate::keystore::KeyStore;

/// Default plaintext bytes per shard.
pub const DEFAULT_SHARD_BYTES: u64 = 256 << 20;

/// How to seal.
#[derive(Debug, Clone)]
pub struct SealOptions {
    /// AEAD suite (ignored with `update`: a dataset keeps its suite).
    pub suite: Suite,
    /// Target plaintext bytes per shard.
    pub shard_bytes: u64,
    /// Target plaintext bytes per chunk.
    pub chunk_target: usize,
    /// Publish a new version of the dataset already at the destination (same key).
    pub update: bool,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            suite: Suite::Aes256Gcm,
            shard_bytes: DEFAULT_SHARD_BYTES,
            chunk_target: DEFAULT_CHUNK_TARGET,
            update: false,
        }
    }
}

/// What a seal produced.
#[derive(Debug, Clone)]
pub struct SealReport {
    /// The dataset id.
    pub dataset_id: DatasetId,
    /// Manifest version published.
    pub version: u64,
    /// Records per split.
    pub splits: Vec<(String, u64)>,
    /// Number of shards.
    pub shards: usize,
    /// Plaintext bytes sealed.
    pub plaintext_bytes: u64,
    /// Sealed bytes written (shards and manifest).
    pub sealed_bytes: u64,
    /// SHA-256 of the manifest.
    pub manifest_sha256: [u8; 32],
}

/// Deletes written shards unless disarmed.
struct Cleanup<'a> {
    store: &'a Store,
    paths: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = self.store.delete(p);
        }
    }
}

/// Writes the manifest. A write that reports an error may still have put the object in
/// place (the rename done, the sync failed): the manifest in storage is read back, and
/// if it is this one, it is published.
fn publish(dest: &Store, bytes: Vec<u8>, digest: &[u8; 32]) -> Result<()> {
    match dest.put(MANIFEST_NAME, bytes) {
        Ok(()) => Ok(()),
        Err(e) => match dest.get(MANIFEST_NAME) {
            Ok(b) if manifest_digest(&b) == *digest => Ok(()),
            _ => Err(e.into()),
        },
    }
}

/// Seals `import` into `dest`.
pub fn seal(
    ks: &KeyStore,
    mut import: Import,
    dest: &Store,
    opts: &SealOptions,
    progress: &dyn Progress,
) -> Result<SealReport> {
    let loc = dest.location().to_owned();
    let existing = dest.size(MANIFEST_NAME)?.is_some();
    // One `seal --update` of a dataset at a time, from reading its version to recording
    // the next one.
    let _lock = match (existing, opts.update) {
        (true, true) => Some(ks.lock_dataset(&claimed_id(dest)?)?),
        _ => None,
    };
    let (key, id, suite, version, previous) = match (existing, opts.update) {
        (true, false) => {
            return Err(Error::OutputExists(format!(
                "{loc} already holds a sealed dataset (use --update to publish a new version of it)"
            )))
        }
        (false, true) => return Err(Error::NoDataset(loc)),
        (false, false) => (
            DatasetKey::generate().map_err(|e| Error::Bug(e.to_string()))?,
            DatasetId::generate().map_err(|e| Error::Bug(e.to_string()))?,
            opts.suite,
            1,
            None,
        ),
        (true, true) => {
            let old = crate::open(ks, dest.clone())?;
            let m = old.manifest().clone();
            (
                old.key().clone(),
                m.dataset_id,
                m.suite,
                m.version + 1,
                Some(m),
            )
        }
    };
    let schema = import.schema.clone();
    let record_size = schema.record_size() as u64;
    let rpc = schema.records_per_chunk_for(opts.chunk_target);
    let per_shard = (opts.shard_bytes / record_size).max(1).div_ceil(rpc as u64) * rpc as u64;
    let total = import.total_bytes();
    progress.begin("sealing", total);
    let mut cleanup = Cleanup {
        store: dest,
        paths: vec![],
    };
    let mut splits = vec![];
    let mut sealed_bytes = 0u64;
    let mut buf: Vec<u8> = Vec::with_capacity(rpc as usize * record_size as usize + 16);
    for src in &mut import.splits {
        let mut entries = vec![];
        let mut first = 0u64;
        let mut index = 0u32;
        loop {
            let count = per_shard.min(src.records - first);
            let params = ShardParams {
                suite,
                dataset_id: id,
                split: src.name.clone(),
                index,
                schema: schema.clone(),
                records_per_chunk: rpc,
                record_count: count,
                first_record: first,
            };
            let mut sealer = ShardSealer::new(&key, params)
                .map_err(|e| Error::BadInput(format!("split {:?}: {e}", src.name)))?;
            let path = shard_path(&src.name, index, &sealer.header().salt);
            let mut w = dest.writer(&path)?;
            cleanup.paths.push(path.clone());
            w.write(sealer.header_bytes())?;
            while let Some(n) = sealer.next_chunk_len() {
                buf.clear();
                buf.resize(n, 0);
                src.source.read_records(&mut buf)?;
                sealer
                    .seal_chunk(&mut buf)
                    .map_err(|e| Error::Bug(e.to_string()))?;
                w.write(&buf)?;
                progress.advance(n as u64);
            }
            let size = w.written();
            debug_assert_eq!(size, sealer.header().shard_len());
            w.finish()?;
            sealed_bytes += size;
            entries.push(ShardEntry {
                index,
                path,
                records: count,
                first_record: first,
                size,
                header_sha256: sealer.header_digest(),
            });
            first += count;
            index += 1;
            if first >= src.records {
                break;
            }
        }
        splits.push(Split {
            name: src.name.clone(),
            records: src.records,
            shards: entries,
        });
    }
    buf.zeroize();
    // Every shard reaches the disk before the manifest that publishes it is written.
    for p in &cleanup.paths {
        dest.sync(p)?;
    }
    // The owner's public key travels inside the authenticated, encrypted metadata: a
    // training job sends its outputs to this key and to no other (docs/sealed-format.md §8).
    let mut metadata = import.metadata.clone();
    if let Some(obj) = metadata.as_object_mut() {
        obj.insert(
            OWNER_PUBLIC_FIELD.into(),
            hex::encode(ks.identity_public()).into(),
        );
    }
    let meta = serde_json::to_vec(&metadata).map_err(|e| Error::Bug(e.to_string()))?;
    let (manifest, bytes) = Manifest::seal(&key, id, suite, version, schema, rpc, splits, &meta)
        .map_err(|e| Error::BadInput(e.to_string()))?;
    let digest = manifest_digest(&bytes);
    sealed_bytes += bytes.len() as u64;
    if previous.is_none() {
        ks.add_dataset(&id, suite, &key, version, &digest, &loc)?;
        if let Err(e) = publish(dest, bytes, &digest) {
            let _ = ks.remove_dataset(&id);
            return Err(e);
        }
        cleanup.paths.clear();
    } else {
        // Recorded as sealed by this key store first, then published, then made the
        // latest: a crash in between leaves a version the owner's tools still accept.
        ks.add_version(&id, version, &digest)?;
        publish(dest, bytes, &digest)?;
        // Published: whatever fails from here, the new shards are the dataset's now.
        cleanup.paths.clear();
        ks.set_version(&id, version, &digest)?;
    }
    // The old version's shards are no longer referenced.
    if let Some(old) = previous {
        for s in &old.splits {
            for e in &s.shards {
                let _ = dest.delete(&e.path);
            }
        }
    }
    progress.end();
    Ok(SealReport {
        dataset_id: id,
        version,
        splits: manifest
            .splits
            .iter()
            .map(|s| (s.name.clone(), s.records))
            .collect(),
        shards: manifest.splits.iter().map(|s| s.shards.len()).sum(),
        plaintext_bytes: total,
        sealed_bytes,
        manifest_sha256: digest,
    })
}
