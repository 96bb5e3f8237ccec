//! The manifest of §6: every shard of a dataset, authenticated under the dataset key.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Object, Result};
use crate::keys::{
    commitment, ct_eq, random_bytes, sha256, AeadKey, DatasetId, DatasetKey, MacKey, Suite,
    LABEL_MANIFEST, LABEL_METADATA, MAC_LEN, TAG_LEN,
};
use crate::schema::{valid_split_name, Schema};
use crate::shard::{ShardHeader, ShardOpener, FORMAT_VERSION};

/// Magic bytes at the start of a manifest (§6.1).
pub const MANIFEST_MAGIC: [u8; 8] = *b"BFMANIF\0";
/// Largest manifest body accepted.
pub const MAX_MANIFEST_BODY: usize = 16 << 20;
/// Largest manifest object accepted (body, framing and tag): a reader checks an object's
/// size against it before reading it.
pub const MAX_MANIFEST_LEN: u64 = (PREFIX_LEN + MAX_MANIFEST_BODY + MAC_LEN) as u64;
/// Most splits a manifest may list.
pub const MAX_SPLITS: usize = 1024;
/// Name of the manifest object under a dataset's location.
pub const MANIFEST_NAME: &str = "manifest.bfm";
const PREFIX_LEN: usize = 16;

/// One shard as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardEntry {
    /// Index within the split.
    pub index: u32,
    /// Object path under the dataset's location (§2).
    pub path: String,
    /// Records in the shard.
    pub records: u64,
    /// Index of its first record in the split.
    pub first_record: u64,
    /// Exact object size.
    pub size: u64,
    /// SHA-256 of the shard header.
    pub header_sha256: [u8; 32],
}

/// One split as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Split name.
    pub name: String,
    /// Records in the split.
    pub records: u64,
    /// Its shards, in index order.
    pub shards: Vec<ShardEntry>,
}

/// A parsed manifest. Obtained from [`Manifest::open`] it is authenticated; from
/// [`Manifest::parse_unverified`] it is only well-formed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Dataset id.
    pub dataset_id: DatasetId,
    /// AEAD suite of every shard.
    pub suite: Suite,
    /// Key commitment.
    pub commitment: [u8; 32],
    /// Version (§6.3).
    pub version: u64,
    /// Record schema of every split.
    pub schema: Schema,
    /// Records per chunk in every shard.
    pub records_per_chunk: u32,
    /// Splits, in order.
    pub splits: Vec<Split>,
    metadata_nonce: [u8; 12],
    metadata_ciphertext: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyJson {
    format: u16,
    dataset_id: String,
    suite: String,
    commitment: String,
    version: u64,
    schema: Schema,
    records_per_chunk: u32,
    splits: Vec<SplitJson>,
    metadata: MetadataJson,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SplitJson {
    name: String,
    records: u64,
    shards: Vec<ShardJson>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardJson {
    index: u32,
    path: String,
    records: u64,
    first_record: u64,
    size: u64,
    header_sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataJson {
    nonce: String,
    ciphertext: String,
}

/// The path of shard `index` of `split` with the given salt (§2).
pub fn shard_path(split: &str, index: u32, salt: &[u8]) -> String {
    format!("shards/{split}-{index:05}-{}.bfs", hex::encode(&salt[..8]))
}

/// Whether `path` is exactly the shard path §2 allows for this split and index.
pub fn valid_shard_path(path: &str, split: &str, index: u32) -> bool {
    let Some(rest) = path
        .strip_prefix("shards/")
        .and_then(|r| r.strip_suffix(".bfs"))
    else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(split).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let Some((idx, tag)) = rest.rsplit_once('-') else {
        return false;
    };
    idx.len() >= 5
        && idx.bytes().all(|b| b.is_ascii_digit())
        && idx.parse::<u32>().ok() == Some(index)
        && (idx.len() == 5 || !idx.starts_with('0'))
        && tag.len() == 16
        && tag
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn metadata_aad(id: &DatasetId, version: u64) -> Vec<u8> {
    let mut aad = LABEL_METADATA.to_vec();
    aad.extend_from_slice(&id.0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn hex_array<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| {
            Error::malformed(&Object::Manifest, format!("{what} is not {N} bytes of hex"))
        })
}

impl Manifest {
    /// Builds and seals a manifest. `metadata` is the importer's description of the
    /// original files; it is encrypted under the metadata key.
    #[allow(clippy::too_many_arguments)]
    pub fn seal(
        key: &DatasetKey,
        dataset_id: DatasetId,
        suite: Suite,
        version: u64,
        schema: Schema,
        records_per_chunk: u32,
        splits: Vec<Split>,
        metadata: &[u8],
    ) -> Result<(Manifest, Vec<u8>)> {
        let nonce: [u8; 12] = random_bytes()?;
        let mkey = AeadKey::derive(suite, &dataset_id.0, key.expose_secret(), LABEL_METADATA)?;
        let mut ct = metadata.to_vec();
        mkey.seal_in_place(nonce, &metadata_aad(&dataset_id, version), &mut ct)?;
        let m = Manifest {
            dataset_id,
            suite,
            commitment: commitment(key, &dataset_id)?,
            version,
            schema,
            records_per_chunk,
            splits,
            metadata_nonce: nonce,
            metadata_ciphertext: ct,
        };
        m.validate()
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let body = serde_json::to_vec_pretty(&m.to_json()).map_err(|_| Error::Internal("json"))?;
        if body.len() > MAX_MANIFEST_BODY {
            return Err(Error::InvalidArgument("manifest larger than 16 MiB".into()));
        }
        let mut out = Vec::with_capacity(PREFIX_LEN + body.len() + MAC_LEN);
        out.extend_from_slice(&MANIFEST_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        let mac = MacKey::derive(&dataset_id.0, key.expose_secret(), LABEL_MANIFEST)?;
        let tag = mac.sign(&out);
        out.extend_from_slice(&tag);
        Ok((m, out))
    }

    fn to_json(&self) -> BodyJson {
        BodyJson {
            format: FORMAT_VERSION,
            dataset_id: self.dataset_id.to_hex(),
            suite: self.suite.name().into(),
            commitment: hex::encode(self.commitment),
            version: self.version,
            schema: self.schema.clone(),
            records_per_chunk: self.records_per_chunk,
            splits: self
                .splits
                .iter()
                .map(|s| SplitJson {
                    name: s.name.clone(),
                    records: s.records,
                    shards: s
                        .shards
                        .iter()
                        .map(|e| ShardJson {
                            index: e.index,
                            path: e.path.clone(),
                            records: e.records,
                            first_record: e.first_record,
                            size: e.size,
                            header_sha256: hex::encode(e.header_sha256),
                        })
                        .collect(),
                })
                .collect(),
            metadata: MetadataJson {
                nonce: hex::encode(self.metadata_nonce),
                ciphertext: hex::encode(&self.metadata_ciphertext),
            },
        }
    }

    /// Splits the framing: returns (signed bytes, tag, body).
    fn frame(bytes: &[u8]) -> Result<(&[u8], &[u8], &[u8])> {
        let obj = Object::Manifest;
        if bytes.len() < PREFIX_LEN {
            return Err(Error::Length {
                object: obj,
                what: "truncated inside the header".into(),
            });
        }
        if bytes[..8] != MANIFEST_MAGIC {
            return Err(Error::malformed(
                &obj,
                "not a blindfold manifest (bad magic)",
            ));
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(Error::Unsupported {
                object: obj,
                what: format!("format version {version}"),
            });
        }
        if bytes[10..12] != [0, 0] {
            return Err(Error::malformed(&obj, "reserved bytes are not zero"));
        }
        if bytes.len() as u64 > MAX_MANIFEST_LEN {
            return Err(Error::malformed(&obj, "larger than a manifest may be"));
        }
        let len = u32::from_be_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
        if len > MAX_MANIFEST_BODY {
            return Err(Error::malformed(&obj, "body larger than 16 MiB"));
        }
        let total = PREFIX_LEN + len + MAC_LEN;
        match bytes.len().cmp(&total) {
            std::cmp::Ordering::Less => Err(Error::Length {
                object: obj,
                what: format!("truncated: {} bytes, header says {total}", bytes.len()),
            }),
            std::cmp::Ordering::Greater => Err(Error::Length {
                object: obj,
                what: format!("trailing data: {} bytes, header says {total}", bytes.len()),
            }),
            std::cmp::Ordering::Equal => {
                let (signed, tag) = bytes.split_at(PREFIX_LEN + len);
                Ok((signed, tag, &signed[PREFIX_LEN..]))
            }
        }
    }

    fn from_body(body: &[u8]) -> Result<Manifest> {
        let obj = Object::Manifest;
        let j: BodyJson = serde_json::from_slice(body)
            .map_err(|e| Error::malformed(&obj, format!("body: {e}")))?;
        if j.format != FORMAT_VERSION {
            return Err(Error::Unsupported {
                object: obj,
                what: format!("format {}", j.format),
            });
        }
        let suite = Suite::from_name(&j.suite).ok_or_else(|| Error::Unsupported {
            object: obj.clone(),
            what: format!("suite {:?}", j.suite),
        })?;
        let mut splits = Vec::with_capacity(j.splits.len());
        for s in j.splits {
            let mut shards = Vec::with_capacity(s.shards.len());
            for e in s.shards {
                shards.push(ShardEntry {
                    index: e.index,
                    path: e.path,
                    records: e.records,
                    first_record: e.first_record,
                    size: e.size,
                    header_sha256: hex_array(&e.header_sha256, "header_sha256")?,
                });
            }
            splits.push(Split {
                name: s.name,
                records: s.records,
                shards,
            });
        }
        let m = Manifest {
            dataset_id: DatasetId(hex_array(&j.dataset_id, "dataset_id")?),
            suite,
            commitment: hex_array(&j.commitment, "commitment")?,
            version: j.version,
            schema: j.schema,
            records_per_chunk: j.records_per_chunk,
            splits,
            metadata_nonce: hex_array(&j.metadata.nonce, "metadata nonce")?,
            metadata_ciphertext: hex::decode(&j.metadata.ciphertext)
                .map_err(|_| Error::malformed(&obj, "metadata ciphertext is not hex"))?,
        };
        m.validate()?;
        Ok(m)
    }

    /// The structural rules of §6.2.
    fn validate(&self) -> Result<()> {
        let obj = Object::Manifest;
        let bad = |what: String| Err(Error::malformed(&obj, what));
        self.schema.validate(&obj)?;
        if self.records_per_chunk == 0 {
            return bad("zero records per chunk".into());
        }
        if self.version == 0 {
            return bad("version 0".into());
        }
        if self.metadata_ciphertext.len() < TAG_LEN {
            return bad("metadata ciphertext too short".into());
        }
        let record_size = self.schema.record_size() as u128;
        let chunk_plain = self.records_per_chunk as u128 * record_size;
        if chunk_plain > crate::schema::MAX_RECORD_SIZE as u128 {
            return bad("chunk larger than 16 MiB".into());
        }
        if self.splits.len() > MAX_SPLITS {
            return bad(format!(
                "{} splits (at most {MAX_SPLITS})",
                self.splits.len()
            ));
        }
        // Every check below is linear in the manifest's size: this runs on untrusted
        // bytes before any key exists (the trainer reads the dataset id this way).
        let mut names = std::collections::HashSet::with_capacity(self.splits.len());
        for (i, s) in self.splits.iter().enumerate() {
            if !valid_split_name(&s.name) {
                return bad(format!("split {i}: invalid name"));
            }
            if !names.insert(s.name.as_str()) {
                return bad(format!("split {}: listed twice", s.name));
            }
            let mut first = 0u64;
            for (k, e) in s.shards.iter().enumerate() {
                if e.index as usize != k {
                    return bad(format!(
                        "split {}: shard {k} listed with index {}",
                        s.name, e.index
                    ));
                }
                if !valid_shard_path(&e.path, &s.name, e.index) {
                    return bad(format!("split {}: shard {k}: invalid path", s.name));
                }
                if e.first_record != first {
                    return bad(format!(
                        "split {}: shard {k}: first_record is not cumulative",
                        s.name
                    ));
                }
                first = first
                    .checked_add(e.records)
                    .ok_or_else(|| Error::malformed(&obj, "record count overflow"))?;
                let chunks = (e.records as u128)
                    .div_ceil(self.records_per_chunk as u128)
                    .max(1);
                if chunks >= u32::MAX as u128 {
                    return bad(format!("split {}: shard {k}: too many chunks", s.name));
                }
                // The header length is not known here; the size must at least cover the
                // body and tags, and fit a header of legal length.
                let body = e.records as u128 * record_size + chunks * TAG_LEN as u128;
                let size = e.size as u128;
                if size < body + 16 || size > body + crate::shard::MAX_HEADER_LEN as u128 {
                    return bad(format!(
                        "split {}: shard {k}: size does not match its records",
                        s.name
                    ));
                }
            }
            if first != s.records {
                return bad(format!(
                    "split {}: shard record counts do not sum to {}",
                    s.name, s.records
                ));
            }
        }
        Ok(())
    }

    /// Parses a manifest without a key: well-formedness only, nothing authenticated.
    /// For `blindfold inspect`.
    pub fn parse_unverified(bytes: &[u8]) -> Result<Manifest> {
        let (_, _, body) = Self::frame(bytes)?;
        Self::from_body(body)
    }

    /// Parses and authenticates a manifest: checks the key commitment (wrong key), then
    /// the tag (tampered), then the structure.
    pub fn open(key: &DatasetKey, bytes: &[u8]) -> Result<Manifest> {
        let obj = Object::Manifest;
        let (signed, tag, body) = Self::frame(bytes)?;
        #[derive(Deserialize)]
        struct Peek {
            dataset_id: String,
            commitment: String,
        }
        let peek: Peek = serde_json::from_slice(body)
            .map_err(|e| Error::malformed(&obj, format!("body: {e}")))?;
        let id = DatasetId(hex_array(&peek.dataset_id, "dataset_id")?);
        let claimed: [u8; 32] = hex_array(&peek.commitment, "commitment")?;
        if !ct_eq(&commitment(key, &id)?, &claimed) {
            return Err(Error::WrongKey { object: obj });
        }
        let mac = MacKey::derive(&id.0, key.expose_secret(), LABEL_MANIFEST)?;
        if !mac.verify(signed, tag) {
            return Err(Error::Tampered {
                object: obj,
                what: "manifest tag".into(),
            });
        }
        Self::from_body(body)
    }

    /// Decrypts the importer metadata. Only meaningful on a manifest from [`Self::open`].
    pub fn open_metadata(&self, key: &DatasetKey) -> Result<Zeroizing<Vec<u8>>> {
        let mkey = AeadKey::derive(
            self.suite,
            &self.dataset_id.0,
            key.expose_secret(),
            LABEL_METADATA,
        )?;
        let mut buf = Zeroizing::new(self.metadata_ciphertext.clone());
        if !mkey.open_in_place(
            self.metadata_nonce,
            &metadata_aad(&self.dataset_id, self.version),
            &mut buf,
        ) {
            return Err(Error::Tampered {
                object: Object::Manifest,
                what: "metadata".into(),
            });
        }
        let n = buf.len() - TAG_LEN;
        buf.truncate(n);
        Ok(buf)
    }

    /// Size in bytes of the sealed metadata.
    pub fn metadata_len(&self) -> usize {
        self.metadata_ciphertext.len()
    }

    /// The split with this name.
    pub fn split(&self, name: &str) -> Option<&Split> {
        self.splits.iter().find(|s| s.name == name)
    }

    /// Total records over all splits.
    pub fn total_records(&self) -> u64 {
        self.splits.iter().map(|s| s.records).sum()
    }

    /// Checks an authenticated shard header against this manifest's entry for it
    /// (§6.2): digest, dataset, suite, split, index, schema, counts.
    pub fn check_shard(
        &self,
        split: &Split,
        entry: &ShardEntry,
        opener: &ShardOpener,
    ) -> Result<()> {
        let obj = Object::Shard {
            split: split.name.clone(),
            index: entry.index,
        };
        let h: &ShardHeader = opener.header();
        let p = &h.params;
        let mismatch = |what: &str| {
            Err(Error::Mismatch {
                object: obj.clone(),
                what: what.into(),
            })
        };
        if !ct_eq(&opener.header_digest(), &entry.header_sha256) {
            return mismatch("header digest (a shard from another place or version)");
        }
        if p.dataset_id != self.dataset_id || !ct_eq(&h.commitment, &self.commitment) {
            return mismatch("dataset");
        }
        if p.split != split.name || p.index != entry.index {
            return mismatch("split or index");
        }
        if p.suite != self.suite
            || p.schema != self.schema
            || p.records_per_chunk != self.records_per_chunk
        {
            return mismatch("suite or schema");
        }
        if p.record_count != entry.records
            || p.first_record != entry.first_record
            || h.shard_len() != entry.size
        {
            return mismatch("record count or size");
        }
        Ok(())
    }
}

/// SHA-256 of a manifest object: the digest the key store and broker record.
pub fn manifest_digest(bytes: &[u8]) -> [u8; 32] {
    sha256(bytes)
}
