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
use std::sync::mpsc;

use blindfold_format::TAG_LEN;
use blindfold_store::{ObjectWriter, Store};
use zeroize::Zeroizing;

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
    /// Objects in the shard folder that no manifest lists any more, removed after
    /// publishing: the previous version's shards, and what an interrupted seal left.
    pub leftovers_removed: usize,
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

/// Ciphertext bytes per write: a batch of whole chunks, each sealed where it is written.
const BATCH_BYTES: usize = 4 << 20;
/// Batches queued for the writer. With the one being filled and the one being written,
/// at most `IN_FLIGHT + 2` batch buffers exist: memory is bounded whatever the input
/// size (about 20 MiB, and one storage writer's buffer).
const IN_FLIGHT: usize = 2;

/// A batch buffer; it holds plaintext between a read and its sealing, so it is wiped when
/// dropped (an error between the two leaves plaintext in it).
type Batch = Zeroizing<Vec<u8>>;

/// What the sealing thread tells the writer thread, in order.
enum ToWriter {
    /// A shard starts: its writer, and its path.
    Start(Box<ObjectWriter>, String),
    /// The next bytes of the current shard.
    Bytes(Batch),
    /// The current shard is whole and has this size: finish it and sync it to disk.
    Finish(u64),
}

/// The writer thread: writes each shard, finishes it (it appears at its path in one
/// step) and syncs it before taking the next, so every shard is on disk before the
/// manifest that publishes it is written. Hands emptied buffers back for reuse.
fn write_shards(
    dest: &Store,
    rx: mpsc::Receiver<ToWriter>,
    free: mpsc::Sender<Batch>,
) -> Result<()> {
    let mut current: Option<(Box<ObjectWriter>, String)> = None;
    for m in rx {
        match m {
            ToWriter::Start(w, path) => current = Some((w, path)),
            ToWriter::Bytes(b) => {
                let (w, _) = current
                    .as_mut()
                    .ok_or_else(|| Error::Bug("bytes before a shard".into()))?;
                w.write(&b)?;
                let _ = free.send(b);
            }
            ToWriter::Finish(size) => {
                let (w, path) = current
                    .take()
                    .ok_or_else(|| Error::Bug("finish before a shard".into()))?;
                if w.written() != size {
                    return Err(Error::Bug(format!(
                        "{path}: {} bytes written, {size} sealed",
                        w.written()
                    )));
                }
                w.finish()?;
                dest.sync(&path)?;
            }
        }
    }
    Ok(())
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
    // Reading and sealing run here; writing and syncing on a writer thread, one batch
    // behind, so the disk works while the next batch is read and sealed.
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<ToWriter>(IN_FLIGHT);
        let (free_tx, free_rx) = mpsc::channel::<Batch>();
        let writer = s.spawn(move || write_shards(dest, rx, free_tx));
        // Sends to the writer; if it stopped, its own error is the one to report.
        let send = |m: ToWriter| -> Result<()> {
            tx.send(m)
                .map_err(|_| Error::Bug("the shard writer stopped".into()))
        };
        let mut made = 0;
        let cap = BATCH_BYTES.max(rpc as usize * record_size as usize + TAG_LEN);
        let sealed = (|| -> Result<()> {
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
                    let w = dest.writer(&path)?;
                    cleanup.paths.push(path.clone());
                    send(ToWriter::Start(Box::new(w), path.clone()))?;
                    // The header goes at the head of the shard's first batch.
                    let mut header = Some(sealer.header_bytes().to_vec());
                    while header.is_some() || sealer.next_chunk_len().is_some() {
                        // A batch buffer: a free one back from the writer, or a new one
                        // while fewer than IN_FLIGHT + 2 exist (memory stays bounded).
                        let mut batch = match free_rx.try_recv() {
                            Ok(b) => b,
                            Err(_) if made < IN_FLIGHT + 2 => {
                                made += 1;
                                Zeroizing::new(Vec::with_capacity(cap))
                            }
                            Err(_) => free_rx
                                .recv()
                                .map_err(|_| Error::Bug("the shard writer stopped".into()))?,
                        };
                        batch.clear();
                        // Room for the whole batch before any plaintext goes in: growing
                        // later would leave a copy of it in the freed allocation.
                        let h = header.take().unwrap_or_default();
                        batch.reserve(cap + h.len());
                        batch.extend_from_slice(&h);
                        while let Some(n) = sealer.next_chunk_len() {
                            if !batch.is_empty() && batch.len() + n + TAG_LEN > BATCH_BYTES {
                                break;
                            }
                            let at = batch.len();
                            batch.resize(at + n + TAG_LEN, 0);
                            src.source.read_records(&mut batch[at..at + n])?;
                            sealer
                                .seal_next_in(&mut batch[at..])
                                .map_err(|e| Error::Bug(e.to_string()))?;
                            progress.advance(n as u64);
                        }
                        send(ToWriter::Bytes(batch))?;
                    }
                    let size = sealer.header().shard_len();
                    send(ToWriter::Finish(size))?;
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
            Ok(())
        })();
        drop(tx);
        let written = writer
            .join()
            .map_err(|_| Error::Bug("the shard writer panicked".into()))?;
        // The writer's error explains a failed send; otherwise the reader's stands.
        written.and(sealed)
    })?;
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
    // Published. Every other shard object is garbage now: the previous version's, and
    // those a seal killed before it published left behind (shards and partial uploads).
    let keep: std::collections::HashSet<&str> = manifest
        .splits
        .iter()
        .flat_map(|s| s.shards.iter().map(|e| e.path.as_str()))
        .collect();
    let leftovers_removed = dest
        .list("shards/")
        .unwrap_or_default()
        .into_iter()
        .filter(|(p, _)| !keep.contains(p.as_str()))
        .filter(|(p, _)| p.ends_with(".bfs") || Store::is_partial_upload(p))
        .filter(|(p, _)| dest.delete(p).is_ok())
        .count();
    // The previous version's shards are listed above on a local folder; delete them by
    // name too, for stores whose listing lags.
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
        leftovers_removed,
    })
}
