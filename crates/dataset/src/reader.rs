//! Reading a sealed dataset with its key: authenticate the manifest, check it against
//! the version the owner recorded, then stream or randomly access shards, checking every
//! header against the manifest and every chunk's tag before releasing its plaintext.

use std::sync::mpsc;

use blindfold_format::{
    manifest_digest, DatasetId, DatasetKey, Manifest, ShardEntry, ShardHeader, ShardOpener, Split,
    MANIFEST_NAME, MAX_HEADER_LEN, MAX_MANIFEST_LEN, TAG_LEN,
};
use blindfold_store::Store;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::Progress;

/// The sealed-metadata field holding the owner's X25519 public key (hex), to which
/// trained models and metrics are sealed (`seal` writes it, a training job reads it).
pub const OWNER_PUBLIC_FIELD: &str = "owner_public";

/// Bytes fetched from storage in one read while streaming a shard.
const BATCH_BYTES: u64 = 8 << 20;

/// The one version and manifest digest a reader accepts (the broker's registration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The registered version.
    pub version: u64,
    /// SHA-256 of that version's manifest.
    pub manifest_sha256: [u8; 32],
}

impl Expected {
    /// Why a manifest of `found` version and `digest`, authenticated under the key, is
    /// still not this one; `None` when it is.
    pub fn mismatch(&self, found: u64, digest: &[u8; 32]) -> Option<String> {
        version_mismatch(found, digest, self)
    }
}

fn version_mismatch(found: u64, digest: &[u8; 32], exp: &Expected) -> Option<String> {
    use std::cmp::Ordering;
    match found.cmp(&exp.version) {
        Ordering::Less => Some(format!(
            "rolled back: manifest version {found} is older than the recorded version {}",
            exp.version
        )),
        Ordering::Equal if *digest != exp.manifest_sha256 => Some(format!(
            "forked: manifest version {found} differs from the one recorded"
        )),
        Ordering::Equal => None,
        Ordering::Greater => Some(format!(
            "unregistered: manifest version {found} is newer than the recorded version {} (any holder of the dataset key can make one; only the owner's registration makes it current)",
            exp.version
        )),
    }
}

/// One shard of a sealed dataset as [`SealedDataset::for_each_sealed_shard`] hands it
/// over: ciphertext, with what a decryptor needs to open its chunks.
pub struct SealedShard {
    /// Where the shard is (for errors).
    pub at: String,
    /// Its authenticated header.
    pub header: blindfold_format::ShardHeader,
    /// SHA-256 of the header: every chunk's associated data.
    pub digest: [u8; 32],
    /// The shard's payload key (zeroized on drop).
    pub payload_key: Zeroizing<[u8; 32]>,
    /// The whole shard object (header and sealed chunks).
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for SealedShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedShard")
            .field("at", &self.at)
            .field("bytes", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// A sealed dataset opened with its key; its manifest is authenticated.
pub struct SealedDataset {
    store: Store,
    manifest: Manifest,
    manifest_sha256: [u8; 32],
    key: DatasetKey,
}

/// Reads the manifest object, mapping "not there" to [`Error::NoDataset`]. An object
/// larger than a manifest may be is refused before it is read: storage is untrusted,
/// and the trainer reads the manifest before it holds any key.
pub fn read_manifest(store: &Store) -> Result<Vec<u8>> {
    let size = store
        .size(MANIFEST_NAME)?
        .ok_or_else(|| Error::NoDataset(store.location().to_owned()))?;
    if size > MAX_MANIFEST_LEN {
        return Err(Error::sealed(
            format!("{}/{MANIFEST_NAME}", store.location()),
            blindfold_format::Error::Malformed {
                object: blindfold_format::Object::Manifest,
                what: format!("{size} bytes, more than a manifest may be ({MAX_MANIFEST_LEN})"),
            },
        ));
    }
    if size == 0 {
        return Ok(vec![]);
    }
    match store.get_range(MANIFEST_NAME, 0..size) {
        Ok(b) => Ok(b),
        Err(blindfold_store::Error::NotFound { .. }) => {
            Err(Error::NoDataset(store.location().to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}

/// The dataset id a manifest claims, before any authentication.
pub fn claimed_id(store: &Store) -> Result<DatasetId> {
    claimed_manifest(store).map(|m| m.dataset_id)
}

/// The manifest as storage serves it, before any authentication: what it claims (id,
/// schema) may be false, and is checked once the key opens it.
pub fn claimed_manifest(store: &Store) -> Result<Manifest> {
    let bytes = read_manifest(store)?;
    Manifest::parse_unverified(&bytes)
        .map_err(|e| Error::sealed(format!("{}/{MANIFEST_NAME}", store.location()), e))
}

impl SealedDataset {
    /// Opens the dataset at `store` with a key the broker released, at the version and
    /// manifest digest the owner registered with it: an older manifest is a rollback,
    /// another one of the same version a fork, a newer one unregistered.
    pub fn open_registered(
        store: Store,
        key: &[u8; 32],
        version: u64,
        manifest_sha256: [u8; 32],
    ) -> Result<Self> {
        Self::open_with_key(
            store,
            DatasetKey::from_bytes(*key),
            Some(Expected {
                version,
                manifest_sha256,
            }),
        )
    }

    /// Opens the dataset at `store` with `key`. With `expected`, the manifest must be
    /// exactly that version and digest: an older one is a rollback, another one of the
    /// same version a fork, a newer one unregistered.
    pub fn open_with_key(
        store: Store,
        key: DatasetKey,
        expected: Option<Expected>,
    ) -> Result<Self> {
        let at = format!("{}/{MANIFEST_NAME}", store.location());
        let bytes = read_manifest(&store)?;
        let manifest = Manifest::open(&key, &bytes).map_err(|e| Error::sealed(&at, e))?;
        let digest = manifest_digest(&bytes);
        if let Some(what) = expected.and_then(|e| version_mismatch(manifest.version, &digest, &e)) {
            return Err(Error::RolledBack {
                location: store.location().to_owned(),
                what,
            });
        }
        Ok(SealedDataset {
            store,
            manifest,
            manifest_sha256: digest,
            key,
        })
    }

    /// The same opened dataset over a new connection to its storage. A process forked
    /// after the dataset was opened (a PyTorch DataLoader worker) needs one: the storage
    /// runtime's threads do not survive a fork. The manifest stays the one authenticated
    /// at open; every shard read through the new connection is checked against it.
    pub fn reconnect(&self) -> Result<SealedDataset> {
        Ok(SealedDataset {
            store: Store::open(self.store.location(), false)?,
            manifest: self.manifest.clone(),
            manifest_sha256: self.manifest_sha256,
            key: self.key.clone(),
        })
    }

    /// The authenticated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the manifest object.
    pub fn manifest_sha256(&self) -> [u8; 32] {
        self.manifest_sha256
    }

    /// The dataset key it was opened with.
    pub fn key(&self) -> &DatasetKey {
        &self.key
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The importer's description of the original files.
    pub fn metadata(&self) -> Result<Value> {
        let raw = self
            .manifest
            .open_metadata(&self.key)
            .map_err(|e| Error::sealed(format!("{}/{MANIFEST_NAME}", self.store.location()), e))?;
        serde_json::from_slice(&raw)
            .map_err(|e| Error::Bug(format!("sealed metadata is not JSON: {e}")))
    }

    /// The owner's X25519 public key that `seal` put into the sealed metadata: a
    /// training job seals its outputs to it. Authenticated by the dataset key, so the
    /// cloud cannot substitute its own.
    pub fn owner_public(&self) -> Result<[u8; 32]> {
        self.metadata()?
            .get(OWNER_PUBLIC_FIELD)
            .and_then(|v| v.as_str())
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| {
                Error::BadInput(
                    "the sealed metadata names no owner public key (sealed by an older \
                     version): seal it again with `blindfold seal --update`"
                        .into(),
                )
            })
    }

    /// Seals a training job's output (model, metrics) to the owner named in the sealed
    /// metadata, authenticated by this dataset's key and naming this dataset, version
    /// and manifest as its source (docs/sealed-format.md §10).
    pub fn seal_output(
        &self,
        kind: &str,
        content_type: &str,
        info: Value,
        plaintext: &[u8],
        name: &str,
    ) -> Result<Vec<u8>> {
        let header = blindfold_format::OutputHeader::new(
            kind,
            content_type,
            Some(blindfold_format::OutputSource {
                dataset_id: self.manifest.dataset_id.to_hex(),
                version: self.manifest.version,
                manifest_sha256: hex::encode(self.manifest_sha256),
            }),
            info,
        );
        blindfold_format::seal_output(
            &self.owner_public()?,
            &header,
            Some(&self.key),
            plaintext,
            name,
        )
        .map_err(|e| Error::Bug(format!("sealing {name}: {e}")))
    }

    fn at(&self, path: &str) -> String {
        format!("{}/{path}", self.store.location())
    }

    /// Fetches and authenticates a shard's header, checks it against the manifest and
    /// the object's size.
    fn open_shard(&self, split: &Split, entry: &ShardEntry) -> Result<ShardOpener> {
        let at = self.at(&entry.path);
        let size = self
            .store
            .size(&entry.path)?
            .ok_or_else(|| Error::MissingShard {
                location: self.store.location().to_owned(),
                path: entry.path.clone(),
            })?;
        let head = self
            .store
            .get_range(&entry.path, 0..size.min(MAX_HEADER_LEN as u64))?;
        let opener = ShardOpener::new(&self.key, &head).map_err(|e| Error::sealed(&at, e))?;
        self.manifest
            .check_shard(split, entry, &opener)
            .map_err(|e| Error::sealed(&at, e))?;
        opener.check_len(size).map_err(|e| Error::sealed(&at, e))?;
        Ok(opener)
    }

    /// Hands `f` every shard of `split`, in order, still sealed: its authenticated
    /// header (checked against the manifest and the object's size), header digest, raw
    /// payload key and whole object bytes. Nothing is decrypted here: this feeds a
    /// decryptor elsewhere (the device kernel), which must check every chunk's tag.
    pub fn for_each_sealed_shard<E: From<Error>>(
        &self,
        split: &Split,
        mut f: impl FnMut(SealedShard) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for entry in &split.shards {
            let opener = self.open_shard(split, entry)?;
            let at = self.at(&entry.path);
            let payload_key = opener
                .danger_payload_key(&self.key)
                .map_err(|e| Error::sealed(&at, e))?;
            let size = opener.header().shard_len();
            let mut bytes = Vec::new();
            self.store
                .get_range_into(&entry.path, 0..size, &mut bytes)
                .map_err(Error::from)?;
            if bytes.len() as u64 != size {
                return Err(Error::sealed(
                    &at,
                    blindfold_format::Error::Length {
                        object: opener.header().object(),
                        what: format!("{} bytes read, header says {size}", bytes.len()),
                    },
                )
                .into());
            }
            f(SealedShard {
                at,
                header: opener.header().clone(),
                digest: opener.header_digest(),
                payload_key,
                bytes,
            })?;
        }
        Ok(())
    }

    /// Streams the plaintext of every record of `split`, chunk by chunk, in order. `f`
    /// sees only authenticated plaintext. Storage reads run one batch ahead on a helper
    /// thread.
    pub fn for_each_chunk<E: From<Error>>(
        &self,
        split: &Split,
        progress: &dyn Progress,
        mut f: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        for entry in &split.shards {
            let opener = self.open_shard(split, entry)?;
            let h = opener.header().clone();
            let at = self.at(&entry.path);
            let n = h.chunk_count();
            let per_batch = (BATCH_BYTES / (h.chunk_plain_len() + TAG_LEN as u64)).max(1);
            // Reading and opening run on a helper thread, one batch ahead of `f`, so
            // storage reads and decryption overlap with what `f` does (writing files).
            std::thread::scope(|s| -> std::result::Result<(), E> {
                // Every buffer that ever holds plaintext is zeroizing: wiped when it is
                // dropped, whether after use or on an error halfway through a batch.
                type Buf = Zeroizing<Vec<u8>>;
                type Batch = (Buf, usize);
                let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(1);
                // Buffers come back to the reader for reuse (no fresh allocation per batch).
                let (free_tx, free_rx) = mpsc::channel::<Buf>();
                let store = &self.store;
                let path = &entry.path;
                let (hh, opener, at) = (&h, &opener, &at);
                s.spawn(move || {
                    let mut i = 0;
                    while i < n {
                        let j = (i + per_batch).min(n);
                        let range = hh.chunk_range(i).start..hh.chunk_range(j - 1).end;
                        let base = hh.chunk_range(i).start;
                        let mut buf = free_rx.try_recv().unwrap_or_default();
                        let batch = store
                            .get_range_into(path, range, &mut buf)
                            .map_err(Error::from)
                            .map(|()| buf)
                            .and_then(|mut bytes| {
                                // Plaintexts are packed to the front of the buffer as chunks
                                // open, so the consumer gets one contiguous run of records.
                                let mut packed = 0usize;
                                for k in i..j {
                                    let r = hh.chunk_range(k);
                                    let (a, b) =
                                        ((r.start - base) as usize, (r.end - base) as usize);
                                    let chunk =
                                        bytes.get_mut(a..b).ok_or_else(|| Error::Integrity {
                                            at: at.clone(),
                                            source: blindfold_format::Error::Length {
                                                object: hh.object(),
                                                what: format!("truncated in chunk {k}"),
                                            },
                                        })?;
                                    let len = opener
                                        .open_chunk(k, chunk)
                                        .map_err(|e| Error::sealed(at, e))?
                                        .len();
                                    bytes.copy_within(a..a + len, packed);
                                    packed += len;
                                }
                                // Wipe the tail (tags and stale plaintext) before handing it on.
                                zeroize::Zeroize::zeroize(&mut bytes[packed..]);
                                Ok((bytes, packed))
                            });
                        let failed = batch.is_err();
                        if tx.send(batch).is_err() || failed {
                            return;
                        }
                        i = j;
                    }
                });
                for batch in rx {
                    let (mut bytes, packed) = batch?;
                    f(&bytes[..packed])?;
                    progress.advance(packed as u64);
                    zeroize::Zeroize::zeroize(&mut bytes[..]);
                    let _ = free_tx.send(bytes);
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Checks every shard and chunk; writes nothing.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let total: u64 = self.manifest.total_records() * self.manifest.schema.record_size() as u64;
        progress.begin("verifying", total);
        let mut report = VerifyReport::default();
        for split in &self.manifest.splits {
            self.for_each_chunk(split, progress, |pt| {
                report.plaintext_bytes += pt.len() as u64;
                Ok::<(), Error>(())
            })?;
            let rpc = self.manifest.records_per_chunk as u64;
            report.chunks += split
                .shards
                .iter()
                .map(|e| e.records.div_ceil(rpc).max(1))
                .sum::<u64>();
            report.shards += split.shards.len();
            report.records += split.records;
        }
        progress.end();
        Ok(report)
    }

    /// Random access: records `[start, start + count)` of `split`, reading only the
    /// chunks that hold them.
    pub fn read_records(&self, split: &str, start: u64, count: u64) -> Result<Zeroizing<Vec<u8>>> {
        let s = self
            .manifest
            .split(split)
            .ok_or_else(|| Error::BadInput(format!("no split {split:?}")))?;
        let end = start
            .checked_add(count)
            .filter(|&e| e <= s.records)
            .ok_or_else(|| {
                Error::BadInput(format!(
                    "records {start}..{start}+{count} are out of range (split has {})",
                    s.records
                ))
            })?;
        let rs = self.manifest.schema.record_size() as u64;
        let mut out = Zeroizing::new(Vec::with_capacity((count * rs) as usize));
        let mut r = start;
        while r < end {
            let entry = s
                .shards
                .iter()
                .find(|e| e.first_record <= r && r < e.first_record + e.records)
                .ok_or_else(|| Error::Bug("record not in any shard".into()))?;
            let opener = self.open_shard(s, entry)?;
            let h: &ShardHeader = opener.header();
            let at = self.at(&entry.path);
            while r < end && r < entry.first_record + entry.records {
                let local = r - entry.first_record;
                let ci = h.chunk_of_record(local);
                let mut buf = Zeroizing::new(self.store.get_range(&entry.path, h.chunk_range(ci))?);
                let pt = opener
                    .open_chunk(ci, &mut buf)
                    .map_err(|e| Error::sealed(&at, e))?;
                let chunk_first = ci * h.params.records_per_chunk as u64;
                let from = local - chunk_first;
                let take = (end - r).min(pt.len() as u64 / rs - from);
                out.extend_from_slice(&pt[(from * rs) as usize..((from + take) * rs) as usize]);
                r += take;
            }
        }
        Ok(out)
    }
}

/// What `verify` checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Shards checked.
    pub shards: usize,
    /// Chunks authenticated.
    pub chunks: u64,
    /// Records.
    pub records: u64,
    /// Plaintext bytes authenticated (and discarded).
    pub plaintext_bytes: u64,
}

/// What a dataset shows without its key (`blindfold inspect`). Nothing here is
/// authenticated.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The manifest as parsed, unverified.
    pub manifest: Manifest,
    /// SHA-256 of the manifest object.
    pub manifest_sha256: [u8; 32],
    /// Each listed shard and what storage holds for it.
    pub shards: Vec<ShardStatus>,
}

/// One shard as storage holds it.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    /// Split.
    pub split: String,
    /// Entry as listed.
    pub entry: ShardEntry,
    /// Size found in storage, or `None` if missing.
    pub found_size: Option<u64>,
    /// The header parsed (unverified), or why it could not be.
    pub header: std::result::Result<ShardHeader, String>,
}

/// Reads what a sealed dataset says about itself, without a key.
pub fn inspect(store: &Store) -> Result<Inspection> {
    let bytes = read_manifest(store)?;
    let manifest = Manifest::parse_unverified(&bytes)
        .map_err(|e| Error::sealed(format!("{}/{MANIFEST_NAME}", store.location()), e))?;
    let mut shards = vec![];
    for s in &manifest.splits {
        for e in &s.shards {
            let found_size = store.size(&e.path)?;
            let header = match found_size {
                None => Err("missing".to_owned()),
                Some(sz) => {
                    let head = store.get_range(&e.path, 0..sz.min(MAX_HEADER_LEN as u64))?;
                    ShardHeader::parse(&head).map_err(|e| e.to_string())
                }
            };
            shards.push(ShardStatus {
                split: s.name.clone(),
                entry: e.clone(),
                found_size,
                header,
            });
        }
    }
    Ok(Inspection {
        manifest_sha256: manifest_digest(&bytes),
        manifest,
        shards,
    })
}
