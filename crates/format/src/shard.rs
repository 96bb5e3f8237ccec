//! Shards: the header of §5.1 and the STREAM body of §5.2.

use crate::error::{Error, Object, Result};
use crate::keys::{
    commitment, ct_eq, hkdf32, random_bytes, sha256, AeadKey, DatasetId, DatasetKey, MacKey, Suite,
    COMMITMENT_LEN, DATASET_ID_LEN, LABEL_SHARD_HEADER, LABEL_SHARD_PAYLOAD, MAC_LEN,
    NONCE_PREFIX_LEN, SALT_LEN, TAG_LEN,
};
use crate::schema::{valid_split_name, DType, Schema, MAX_DIMS, MAX_RECORD_SIZE};

/// Magic bytes at the start of every shard (§5.1).
pub const SHARD_MAGIC: [u8; 8] = *b"BFSHARD\0";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Bytes needed to learn a header's length (magic, version, suite, reserved, length).
pub const HEADER_PREFIX_LEN: usize = 16;
/// Longest header accepted.
pub const MAX_HEADER_LEN: usize = 4096;

/// What the sealer is told about a shard; everything in the header but the randomness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardParams {
    /// AEAD suite.
    pub suite: Suite,
    /// Dataset the shard belongs to.
    pub dataset_id: DatasetId,
    /// Split name (§3).
    pub split: String,
    /// Index of the shard in its split.
    pub index: u32,
    /// Record schema.
    pub schema: Schema,
    /// Records per chunk.
    pub records_per_chunk: u32,
    /// Records in this shard.
    pub record_count: u64,
    /// Index of this shard's first record in its split.
    pub first_record: u64,
}

/// A parsed shard header. Parsing alone authenticates nothing: see [`ShardOpener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardHeader {
    /// Everything the sealer was told.
    pub params: ShardParams,
    /// Key commitment `C`.
    pub commitment: [u8; COMMITMENT_LEN],
    /// The shard's random salt.
    pub salt: [u8; SALT_LEN],
    /// The shard's random nonce prefix.
    pub nonce_prefix: [u8; NONCE_PREFIX_LEN],
    /// Total header length, tag included.
    pub header_len: usize,
}

impl ShardHeader {
    /// Which object this header describes, for error messages.
    pub fn object(&self) -> Object {
        Object::Shard {
            split: self.params.split.clone(),
            index: self.params.index,
        }
    }

    /// Plaintext bytes of a full chunk.
    pub fn chunk_plain_len(&self) -> u64 {
        self.params.records_per_chunk as u64 * self.params.schema.record_size() as u64
    }

    /// Number of chunks `N` (§5.2).
    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.params.record_count, self.params.records_per_chunk)
    }

    /// Plaintext bytes of chunk `i`.
    pub fn chunk_plain_len_of(&self, i: u64) -> u64 {
        let rpc = self.params.records_per_chunk as u64;
        let start = i * rpc;
        let end = ((i + 1) * rpc).min(self.params.record_count);
        end.saturating_sub(start) * self.params.schema.record_size() as u64
    }

    /// Byte range of chunk `i` (ciphertext and tag) in the shard object.
    pub fn chunk_range(&self, i: u64) -> std::ops::Range<u64> {
        let start = self.header_len as u64 + i * (self.chunk_plain_len() + TAG_LEN as u64);
        start..start + self.chunk_plain_len_of(i) + TAG_LEN as u64
    }

    /// Chunk holding record `r` of this shard.
    pub fn chunk_of_record(&self, r: u64) -> u64 {
        r / self.params.records_per_chunk as u64
    }

    /// Exact length of the shard object (§5.2).
    pub fn shard_len(&self) -> u64 {
        self.header_len as u64
            + self.params.record_count * self.params.schema.record_size() as u64
            + self.chunk_count() * TAG_LEN as u64
    }

    /// The AEAD nonce of chunk `i` (§5.2): nonce prefix, chunk counter, last-chunk flag.
    pub fn chunk_nonce(&self, i: u64) -> [u8; 12] {
        self.nonce(i)
    }

    fn nonce(&self, i: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        n[7..11].copy_from_slice(&(i as u32).to_be_bytes());
        n[11] = u8::from(i + 1 == self.chunk_count());
        n
    }

    /// Header bytes up to (not including) the tag.
    fn encode_unsigned(&self) -> Vec<u8> {
        let p = &self.params;
        let mut out = Vec::with_capacity(self.header_len);
        out.extend_from_slice(&SHARD_MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.push(p.suite.code());
        out.push(0);
        out.extend_from_slice(&(self.header_len as u32).to_be_bytes());
        out.extend_from_slice(&p.dataset_id.0);
        out.extend_from_slice(&self.commitment);
        out.extend_from_slice(&p.index.to_be_bytes());
        out.push(p.split.len() as u8);
        out.extend_from_slice(p.split.as_bytes());
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.nonce_prefix);
        out.push(p.schema.dtype.code());
        out.push(p.schema.label.map_or(0, DType::code));
        out.push(p.schema.shape.len() as u8);
        for d in &p.schema.shape {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(&p.records_per_chunk.to_be_bytes());
        out.extend_from_slice(&p.record_count.to_be_bytes());
        out.extend_from_slice(&p.first_record.to_be_bytes());
        debug_assert_eq!(out.len() + MAC_LEN, self.header_len);
        out
    }

    /// Reads the header length from the first [`HEADER_PREFIX_LEN`] bytes of a shard.
    pub fn header_len_from_prefix(prefix: &[u8]) -> Result<usize> {
        let obj = Object::Unnamed;
        if prefix.len() < HEADER_PREFIX_LEN {
            return Err(Error::Length {
                object: obj,
                what: "truncated inside the header".into(),
            });
        }
        if prefix[..8] != SHARD_MAGIC {
            return Err(Error::malformed(&obj, "not a blindfold shard (bad magic)"));
        }
        let version = u16::from_be_bytes([prefix[8], prefix[9]]);
        if version != FORMAT_VERSION {
            return Err(Error::Unsupported {
                object: obj,
                what: format!("format version {version}"),
            });
        }
        if Suite::from_code(prefix[10]).is_none() {
            return Err(Error::Unsupported {
                object: obj,
                what: format!("suite {}", prefix[10]),
            });
        }
        if prefix[11] != 0 {
            return Err(Error::malformed(&obj, "reserved byte is not zero"));
        }
        let len = u32::from_be_bytes(prefix[12..16].try_into().expect("4 bytes")) as usize;
        if !(HEADER_PREFIX_LEN + MAC_LEN..=MAX_HEADER_LEN).contains(&len) {
            return Err(Error::malformed(
                &obj,
                format!("header length {len} out of range"),
            ));
        }
        Ok(len)
    }

    /// Parses a header from the start of `bytes` (which may continue with the body).
    /// Authenticates nothing.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let header_len = Self::header_len_from_prefix(bytes)?;
        let obj = Object::Unnamed;
        if bytes.len() < header_len {
            return Err(Error::Length {
                object: obj,
                what: "truncated inside the header".into(),
            });
        }
        let mut r = Reader {
            buf: &bytes[..header_len - MAC_LEN],
            pos: HEADER_PREFIX_LEN,
            obj: &obj,
        };
        let suite = Suite::from_code(bytes[10]).expect("checked by header_len_from_prefix");
        let dataset_id = DatasetId(r.array::<DATASET_ID_LEN>()?);
        let commitment = r.array::<COMMITMENT_LEN>()?;
        let index = r.u32()?;
        let split_len = r.u8()? as usize;
        let split = std::str::from_utf8(r.take(split_len)?)
            .ok()
            .filter(|s| valid_split_name(s))
            .ok_or_else(|| Error::malformed(&obj, "invalid split name"))?
            .to_owned();
        let salt = r.array::<SALT_LEN>()?;
        let nonce_prefix = r.array::<NONCE_PREFIX_LEN>()?;
        let dtype =
            DType::from_code(r.u8()?).ok_or_else(|| Error::malformed(&obj, "unknown dtype"))?;
        let label = match r.u8()? {
            0 => None,
            c => Some(
                DType::from_code(c).ok_or_else(|| Error::malformed(&obj, "unknown label type"))?,
            ),
        };
        let ndim = r.u8()? as usize;
        if ndim > MAX_DIMS {
            return Err(Error::malformed(&obj, "too many dimensions"));
        }
        let mut shape = Vec::with_capacity(ndim);
        for _ in 0..ndim {
            shape.push(r.u32()?);
        }
        let schema = Schema {
            dtype,
            shape,
            label,
        };
        schema.validate(&obj)?;
        let records_per_chunk = r.u32()?;
        let record_count = r.u64()?;
        let first_record = r.u64()?;
        if r.pos != r.buf.len() {
            return Err(Error::malformed(
                &obj,
                "header length does not match its fields",
            ));
        }
        let params = ShardParams {
            suite,
            dataset_id,
            split,
            index,
            schema,
            records_per_chunk,
            record_count,
            first_record,
        };
        check_params(&params, &obj)?;
        Ok(ShardHeader {
            params,
            commitment,
            salt,
            nonce_prefix,
            header_len,
        })
    }
}

fn chunk_count(records: u64, rpc: u32) -> u64 {
    records.div_ceil(rpc.max(1) as u64).max(1)
}

/// Checks the arithmetic limits of §5.2 on parameters, before sealing or after parsing.
fn check_params(p: &ShardParams, obj: &Object) -> Result<()> {
    if !valid_split_name(&p.split) {
        return Err(Error::malformed(obj, "invalid split name"));
    }
    p.schema.validate(obj)?;
    if p.records_per_chunk == 0 {
        return Err(Error::malformed(obj, "zero records per chunk"));
    }
    let chunk_plain = p.records_per_chunk as u128 * p.schema.record_size() as u128;
    if chunk_plain > MAX_RECORD_SIZE as u128 {
        return Err(Error::malformed(obj, "chunk larger than 16 MiB"));
    }
    if chunk_count(p.record_count, p.records_per_chunk) >= u32::MAX as u64 {
        return Err(Error::malformed(obj, "too many chunks"));
    }
    let body = p.record_count as u128 * p.schema.record_size() as u128;
    if body > (u64::MAX / 2) as u128 || p.first_record.checked_add(p.record_count).is_none() {
        return Err(Error::malformed(obj, "record count too large"));
    }
    Ok(())
}

fn header_len_for(p: &ShardParams) -> usize {
    HEADER_PREFIX_LEN
        + DATASET_ID_LEN
        + COMMITMENT_LEN
        + 4
        + 1
        + p.split.len()
        + SALT_LEN
        + NONCE_PREFIX_LEN
        + 3
        + 4 * p.schema.shape.len()
        + 4
        + 8
        + 8
        + MAC_LEN
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    obj: &'a Object,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end
            .ok_or_else(|| Error::malformed(self.obj, "header length does not match its fields"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// Seals one shard, chunk by chunk, in order.
pub struct ShardSealer {
    header: ShardHeader,
    header_bytes: Vec<u8>,
    digest: [u8; 32],
    key: AeadKey,
    next: u64,
}

impl ShardSealer {
    /// Starts a shard with a fresh random salt and nonce prefix.
    pub fn new(key: &DatasetKey, params: ShardParams) -> Result<Self> {
        Self::with_randomness(key, params, random_bytes()?, random_bytes()?)
    }

    /// Starts a shard with the given salt and nonce prefix. Only for known-answer test
    /// vectors: reusing a salt under one key reuses nonces.
    #[doc(hidden)]
    pub fn with_randomness(
        key: &DatasetKey,
        params: ShardParams,
        salt: [u8; SALT_LEN],
        nonce_prefix: [u8; NONCE_PREFIX_LEN],
    ) -> Result<Self> {
        check_params(&params, &Object::Unnamed)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let header = ShardHeader {
            commitment: commitment(key, &params.dataset_id)?,
            header_len: header_len_for(&params),
            params,
            salt,
            nonce_prefix,
        };
        let mut header_bytes = header.encode_unsigned();
        let mac = MacKey::derive(&salt, key.expose_secret(), LABEL_SHARD_HEADER)?;
        header_bytes.extend_from_slice(&mac.sign(&header_bytes));
        let digest = sha256(&header_bytes);
        let aead = AeadKey::derive(
            header.params.suite,
            &salt,
            key.expose_secret(),
            LABEL_SHARD_PAYLOAD,
        )?;
        Ok(ShardSealer {
            header,
            header_bytes,
            digest,
            key: aead,
            next: 0,
        })
    }

    /// The header, as it is written at the start of the shard.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header_bytes
    }

    /// The parsed header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// SHA-256 of the header, recorded in the manifest.
    pub fn header_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Plaintext bytes the next chunk must have, or `None` when all chunks are sealed.
    pub fn next_chunk_len(&self) -> Option<usize> {
        (self.next < self.header.chunk_count())
            .then(|| self.header.chunk_plain_len_of(self.next) as usize)
    }

    /// Checks that a buffer of `got` bytes holds the next chunk's plaintext and `room`
    /// bytes more.
    fn check_next(&self, got: usize, room: usize) -> Result<()> {
        let want = self
            .next_chunk_len()
            .ok_or_else(|| Error::InvalidArgument("all chunks of this shard are sealed".into()))?;
        if got != want + room {
            return Err(Error::InvalidArgument(format!(
                "chunk {} must hold {want} bytes and {room} bytes of room, got {got}",
                self.next
            )));
        }
        Ok(())
    }

    /// Seals the next chunk in place: `buf` holds exactly [`Self::next_chunk_len`] bytes of
    /// plaintext and receives ciphertext ‖ tag.
    pub fn seal_chunk(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        self.check_next(buf.len(), 0)?;
        self.key
            .seal_in_place(self.header.nonce(self.next), &self.digest, buf)?;
        self.next += 1;
        Ok(())
    }

    /// Seals the next chunk in place where it will be written: `chunk` holds the
    /// chunk's [`Self::next_chunk_len`] bytes of plaintext followed by
    /// [`TAG_LEN`](crate::TAG_LEN) bytes of room, and receives ciphertext ‖ tag. Lets a
    /// writer seal a run of chunks inside one buffer and write it whole.
    pub fn seal_next_in(&mut self, chunk: &mut [u8]) -> Result<()> {
        self.check_next(chunk.len(), crate::TAG_LEN)?;
        self.key
            .seal_in_place_tag_last(self.header.nonce(self.next), &self.digest, chunk)?;
        self.next += 1;
        Ok(())
    }

    /// True once every chunk is sealed.
    pub fn is_complete(&self) -> bool {
        self.next == self.header.chunk_count()
    }
}

/// Opens chunks of one shard after authenticating its header.
pub struct ShardOpener {
    header: ShardHeader,
    digest: [u8; 32],
    key: AeadKey,
}

impl ShardOpener {
    /// Parses the header at the start of `bytes`, checks the key commitment (wrong key)
    /// and the header tag (tampered).
    pub fn new(key: &DatasetKey, bytes: &[u8]) -> Result<Self> {
        let header = ShardHeader::parse(bytes)?;
        let obj = header.object();
        let expected = commitment(key, &header.params.dataset_id)?;
        if !ct_eq(&expected, &header.commitment) {
            return Err(Error::WrongKey { object: obj });
        }
        let hb = &bytes[..header.header_len];
        let (body, tag) = hb.split_at(header.header_len - MAC_LEN);
        let mac = MacKey::derive(&header.salt, key.expose_secret(), LABEL_SHARD_HEADER)?;
        if !mac.verify(body, tag) {
            return Err(Error::Tampered {
                object: obj,
                what: "header tag".into(),
            });
        }
        let aead = AeadKey::derive(
            header.params.suite,
            &header.salt,
            key.expose_secret(),
            LABEL_SHARD_PAYLOAD,
        )?;
        Ok(ShardOpener {
            digest: sha256(hb),
            header,
            key: aead,
        })
    }

    /// The authenticated header.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// SHA-256 of the header bytes.
    pub fn header_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// Opens chunk `i` in place. `buf` must be exactly the bytes of
    /// [`ShardHeader::chunk_range`]`(i)`. Returns the plaintext, a prefix of `buf`. On
    /// failure `buf` is zeroed and nothing is returned.
    pub fn open_chunk<'b>(&self, i: u64, buf: &'b mut [u8]) -> Result<&'b mut [u8]> {
        let obj = self.header.object();
        if i >= self.header.chunk_count() {
            return Err(Error::InvalidArgument(format!("{obj} has no chunk {i}")));
        }
        let want = self.header.chunk_plain_len_of(i) as usize + TAG_LEN;
        if buf.len() != want {
            return Err(Error::Length {
                object: obj,
                what: format!("truncated in chunk {i}"),
            });
        }
        if !self
            .key
            .open_in_place(self.header.nonce(i), &self.digest, buf)
        {
            buf.fill(0);
            return Err(Error::Tampered {
                object: obj,
                what: format!("chunk {i} failed authentication"),
            });
        }
        let n = buf.len() - TAG_LEN;
        Ok(&mut buf[..n])
    }

    /// The raw payload key of this shard (§4), for a decryptor that is not this crate's:
    /// the device kernel in `blindfold-gpu`. The caller must keep it in zeroizing memory
    /// and drop it as soon as it has been handed over. `key` must be the key this opener
    /// was made with (the commitment is checked again).
    pub fn danger_payload_key(&self, key: &DatasetKey) -> Result<zeroize::Zeroizing<[u8; 32]>> {
        let expected = commitment(key, &self.header.params.dataset_id)?;
        if !ct_eq(&expected, &self.header.commitment) {
            return Err(Error::WrongKey {
                object: self.header.object(),
            });
        }
        hkdf32(
            &self.header.salt,
            key.expose_secret(),
            &[LABEL_SHARD_PAYLOAD, &[self.header.params.suite.code()]],
        )
    }

    /// Checks that a whole shard object has exactly the length its header implies.
    pub fn check_len(&self, len: u64) -> Result<()> {
        let want = self.header.shard_len();
        let obj = self.header.object();
        match len.cmp(&want) {
            std::cmp::Ordering::Less => Err(Error::Length {
                object: obj,
                what: format!("truncated: {len} bytes, header says {want}"),
            }),
            std::cmp::Ordering::Greater => Err(Error::Length {
                object: obj,
                what: format!("trailing data: {len} bytes, header says {want}"),
            }),
            std::cmp::Ordering::Equal => Ok(()),
        }
    }
}

/// Seals a whole shard held in memory: `plaintext` is the records, back to back. For
/// tests and small inputs; the owner's tools stream instead.
pub fn seal_shard(
    key: &DatasetKey,
    params: ShardParams,
    plaintext: &[u8],
) -> Result<(Vec<u8>, [u8; 32])> {
    let sealer = ShardSealer::new(key, params)?;
    seal_with(sealer, plaintext)
}

#[doc(hidden)]
pub fn seal_with(mut sealer: ShardSealer, plaintext: &[u8]) -> Result<(Vec<u8>, [u8; 32])> {
    let expected = sealer.header.params.record_count as u128
        * sealer.header.params.schema.record_size() as u128;
    if plaintext.len() as u128 != expected {
        return Err(Error::InvalidArgument(
            "plaintext length does not match the record count".into(),
        ));
    }
    let mut out = sealer.header_bytes.clone();
    let mut pos = 0;
    let mut buf = Vec::new();
    while let Some(n) = sealer.next_chunk_len() {
        buf.clear();
        buf.extend_from_slice(&plaintext[pos..pos + n]);
        pos += n;
        sealer.seal_chunk(&mut buf)?;
        out.extend_from_slice(&buf);
    }
    Ok((out, sealer.digest))
}

/// Opens a whole shard held in memory, checking its exact length and every chunk.
pub fn open_shard(key: &DatasetKey, shard: &[u8]) -> Result<(ShardHeader, Vec<u8>)> {
    let opener = ShardOpener::new(key, shard)?;
    opener.check_len(shard.len() as u64)?;
    let h = opener.header().clone();
    let mut out =
        Vec::with_capacity((h.params.record_count * h.params.schema.record_size() as u64) as usize);
    let mut buf = Vec::new();
    for i in 0..h.chunk_count() {
        let r = h.chunk_range(i);
        buf.clear();
        buf.extend_from_slice(&shard[r.start as usize..r.end as usize]);
        let pt = opener.open_chunk(i, &mut buf)?;
        out.extend_from_slice(pt);
    }
    Ok((h, out))
}
