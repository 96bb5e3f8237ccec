//! Dataset keys, suites and the HKDF derivations of §4.

use aws_lc_rs::{aead, digest, hkdf, hmac, rand};
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Error, Result};

/// Length of a dataset key.
pub const KEY_LEN: usize = 32;
/// Length of a dataset id.
pub const DATASET_ID_LEN: usize = 16;
/// Length of the key commitment.
pub const COMMITMENT_LEN: usize = 32;
/// Length of a shard salt.
pub const SALT_LEN: usize = 32;
/// Length of a shard's nonce prefix.
pub const NONCE_PREFIX_LEN: usize = 7;
/// Length of an AEAD tag (both suites).
pub const TAG_LEN: usize = 16;
/// Length of an HMAC-SHA-256 tag.
pub const MAC_LEN: usize = 32;

pub(crate) const LABEL_COMMIT: &[u8] = b"blindfold/v1/commit";
pub(crate) const LABEL_MANIFEST: &[u8] = b"blindfold/v1/manifest";
pub(crate) const LABEL_METADATA: &[u8] = b"blindfold/v1/metadata";
pub(crate) const LABEL_SHARD_HEADER: &[u8] = b"blindfold/v1/shard-header";
pub(crate) const LABEL_SHARD_PAYLOAD: &[u8] = b"blindfold/v1/shard-payload";
pub(crate) const LABEL_OUTPUT_PSK: &[u8] = b"blindfold/v1/output-psk";

/// The AEAD suite a dataset is sealed with (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Suite {
    /// AES-256-GCM, the default (fastest on CPUs with AES-NI).
    #[default]
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439), the suite GPU kernels handle best.
    ChaCha20Poly1305,
}

impl Suite {
    /// The one-byte code written in shard headers.
    pub fn code(self) -> u8 {
        match self {
            Suite::Aes256Gcm => 1,
            Suite::ChaCha20Poly1305 => 2,
        }
    }

    /// The suite for a header code.
    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Suite::Aes256Gcm),
            2 => Some(Suite::ChaCha20Poly1305),
            _ => None,
        }
    }

    /// The name used in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Aes256Gcm => "aes-256-gcm",
            Suite::ChaCha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// The suite for a name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "aes-256-gcm" => Some(Suite::Aes256Gcm),
            "chacha20-poly1305" => Some(Suite::ChaCha20Poly1305),
            _ => None,
        }
    }

    pub(crate) fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Suite::Aes256Gcm => &aead::AES_256_GCM,
            Suite::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

impl std::fmt::Display for Suite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A dataset key: 32 secret bytes, zeroized on drop, never printed.
#[derive(Clone)]
pub struct DatasetKey(Zeroizing<[u8; KEY_LEN]>);

impl DatasetKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        rand::fill(&mut k[..]).map_err(|_| Error::Internal("random"))?;
        Ok(DatasetKey(k))
    }

    /// Wraps existing key bytes (from the key store or the broker).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        DatasetKey(Zeroizing::new(bytes))
    }

    /// Copies a key out of a slice, which must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| Error::InvalidArgument("a dataset key is 32 bytes".into()))?;
        Ok(DatasetKey(Zeroizing::new(arr)))
    }

    /// The secret bytes. Callers must not log or persist them unwrapped.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for DatasetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatasetKey(<redacted>)")
    }
}

/// A dataset id: 16 random bytes, public.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DatasetId(pub [u8; DATASET_ID_LEN]);

impl DatasetId {
    /// A fresh random id.
    pub fn generate() -> Result<Self> {
        let mut id = [0u8; DATASET_ID_LEN];
        rand::fill(&mut id).map_err(|_| Error::Internal("random"))?;
        Ok(DatasetId(id))
    }

    /// Lowercase hex, as in manifests and on the command line.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(DatasetId(v.try_into().ok()?))
    }
}

impl std::fmt::Debug for DatasetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatasetId({})", self.to_hex())
    }
}

impl std::fmt::Display for DatasetId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256(salt, ikm, info, 32) of §4.
pub(crate) fn hkdf32(salt: &[u8], ikm: &[u8], info: &[&[u8]]) -> Result<Zeroizing<[u8; 32]>> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm);
    let okm = prk
        .expand(info, Len(32))
        .map_err(|_| Error::Internal("hkdf expand"))?;
    let mut out = Zeroizing::new([0u8; 32]);
    okm.fill(&mut out[..])
        .map_err(|_| Error::Internal("hkdf fill"))?;
    Ok(out)
}

/// The key commitment `C` of §4.
pub fn commitment(key: &DatasetKey, id: &DatasetId) -> Result<[u8; COMMITMENT_LEN]> {
    let c = hkdf32(&id.0, key.expose_secret(), &[LABEL_COMMIT])?;
    Ok(*c)
}

/// Compares two byte strings in constant time (for their common length).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut acc = 0u8;
    for (x, y) in a.iter().zip(b) {
        acc |= x ^ y;
    }
    // Keep the optimiser from short-circuiting the loop above.
    std::hint::black_box(acc) == 0
}

/// An HMAC-SHA-256 key that zeroizes its raw bytes.
pub(crate) struct MacKey(hmac::Key);

impl MacKey {
    pub(crate) fn derive(salt: &[u8], ikm: &[u8], label: &[u8]) -> Result<Self> {
        let mut raw = hkdf32(salt, ikm, &[label])?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &raw[..]);
        raw.zeroize();
        Ok(MacKey(key))
    }

    pub(crate) fn sign(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let tag = hmac::sign(&self.0, data);
        let mut out = [0u8; MAC_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.0, data, tag).is_ok()
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// An AEAD key for one suite.
pub(crate) struct AeadKey(aead::LessSafeKey);

impl AeadKey {
    pub(crate) fn derive(suite: Suite, salt: &[u8], ikm: &[u8], label: &[u8]) -> Result<Self> {
        let raw = hkdf32(salt, ikm, &[label, &[suite.code()]])?;
        let unbound = aead::UnboundKey::new(suite.algorithm(), &raw[..])
            .map_err(|_| Error::Internal("aead key"))?;
        Ok(AeadKey(aead::LessSafeKey::new(unbound)))
    }

    pub(crate) fn seal_in_place(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.0
            .seal_in_place_append_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                buf,
            )
            .map_err(|_| Error::Internal("aead seal"))
    }

    /// Seals `buf[..len - TAG_LEN]` in place and writes the tag into the last
    /// [`TAG_LEN`](crate::TAG_LEN) bytes: the chunk as stored, in a caller's buffer.
    pub(crate) fn seal_in_place_tag_last(
        &self,
        nonce: [u8; 12],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<()> {
        let n = buf
            .len()
            .checked_sub(crate::TAG_LEN)
            .ok_or(Error::Internal("chunk shorter than a tag"))?;
        let (text, tag_out) = buf.split_at_mut(n);
        let tag = self
            .0
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                text,
            )
            .map_err(|_| Error::Internal("aead seal"))?;
        tag_out.copy_from_slice(tag.as_ref());
        Ok(())
    }

    /// Opens `buf` (ciphertext ‖ tag) in place; returns the plaintext length.
    pub(crate) fn open_in_place(&self, nonce: [u8; 12], aad: &[u8], buf: &mut [u8]) -> bool {
        self.0
            .open_in_place(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                buf,
            )
            .is_ok()
    }
}

/// Random bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    rand::fill(&mut out).map_err(|_| Error::Internal("random"))?;
    Ok(out)
}
