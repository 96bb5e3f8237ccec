//! Sealed outputs (§8): what a training job sends back to the owner (model weights,
//! metrics), encrypted with HPKE (RFC 9180) to the owner's X25519 public key.
//!
//! Unlike a dataset, an output has no symmetric key anybody must share: the job only
//! holds the owner's public key, so nothing in the cloud can open an output once
//! written, not even the job that wrote it.
//!
//! Layout: `MAGIC ‖ u32 LE header length ‖ header (JSON) ‖ enc (32 bytes) ‖ ciphertext`.
//! The header travels in clear and is authenticated as HPKE associated data together
//! with the magic and the length.

use hpke::{
    aead::AesGcm256, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, Kem, OpModeR, OpModeS,
    Serializable,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Object, Result};

/// First 16 bytes of every sealed output.
pub const OUTPUT_MAGIC: &[u8; 16] = b"blindfold.out.v1";
/// The only suite: HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
pub const OUTPUT_SUITE: &str = "X25519-HKDF-SHA256/HKDF-SHA256/AES-256-GCM";
/// HPKE `info` of every sealed output.
pub const OUTPUT_INFO: &[u8] = b"blindfold/v1/output";
/// Largest header accepted.
pub const MAX_OUTPUT_HEADER: usize = 64 << 10;
/// Largest plaintext sealed or opened (HPKE single-shot: it is held in memory).
pub const MAX_OUTPUT_PLAINTEXT: usize = 1 << 32;
/// Length of an X25519 public key, and of the encapsulated key.
pub const X25519_LEN: usize = 32;
const TAG: usize = 16;

type Aead = AesGcm256;
type Kdf = HkdfSha256;
type Dhkem = X25519HkdfSha256;

/// The clear, authenticated header of a sealed output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputHeader {
    /// Always [`OUTPUT_SUITE`].
    pub suite: String,
    /// What the plaintext is (`model`, `metrics`).
    pub kind: String,
    /// How the plaintext is encoded (`burnpack`, `json`).
    pub content_type: String,
    /// Free-form, non-secret facts about it (model architecture, dataset id, manifest
    /// digest). Shown without any key: put nothing secret here.
    pub info: serde_json::Value,
}

impl OutputHeader {
    /// A header for `kind` encoded as `content_type`.
    pub fn new(kind: &str, content_type: &str, info: serde_json::Value) -> Self {
        OutputHeader {
            suite: OUTPUT_SUITE.into(),
            kind: kind.into(),
            content_type: content_type.into(),
            info,
        }
    }
}

/// Seals `plaintext` to the owner's X25519 public key `recipient`. `name` names the
/// object in errors.
pub fn seal_output(
    recipient: &[u8],
    header: &OutputHeader,
    plaintext: &[u8],
    name: &str,
) -> Result<Vec<u8>> {
    let object = Object::Output(name.into());
    if header.suite != OUTPUT_SUITE {
        return Err(Error::InvalidArgument(format!(
            "unknown output suite {:?}",
            header.suite
        )));
    }
    if plaintext.len() > MAX_OUTPUT_PLAINTEXT {
        return Err(Error::InvalidArgument(format!(
            "{object}: {} bytes is more than the {MAX_OUTPUT_PLAINTEXT} a sealed output holds",
            plaintext.len()
        )));
    }
    let pk = <Dhkem as Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| Error::InvalidArgument("not an X25519 public key (32 bytes)".into()))?;
    let head = serde_json::to_vec(header).map_err(|_| Error::Internal("header encoding"))?;
    if head.len() > MAX_OUTPUT_HEADER {
        return Err(Error::InvalidArgument(format!(
            "{object}: header of {} bytes is over the limit",
            head.len()
        )));
    }
    let mut out = Vec::with_capacity(20 + head.len() + X25519_LEN + plaintext.len() + TAG);
    out.extend_from_slice(OUTPUT_MAGIC);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    let mut rng = rand_core::UnwrapErr(rand_core::OsRng);
    let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Dhkem, _>(
        &OpModeS::Base,
        &pk,
        OUTPUT_INFO,
        plaintext,
        &out,
        &mut rng,
    )
    .map_err(|_| Error::Internal("HPKE seal"))?;
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Splits a sealed output into (associated data, header, enc, ciphertext), checking
/// only its shape.
fn split(bytes: &[u8], object: &Object) -> Result<(usize, OutputHeader)> {
    let rest = bytes
        .strip_prefix(OUTPUT_MAGIC.as_slice())
        .ok_or_else(|| Error::malformed(object, "not a sealed output (bad magic)"))?;
    let len = rest
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| Error::malformed(object, "truncated before the header length"))?;
    if len > MAX_OUTPUT_HEADER {
        return Err(Error::malformed(object, "header length over the limit"));
    }
    let head = rest
        .get(4..4 + len)
        .ok_or_else(|| Error::malformed(object, "truncated in the header"))?;
    let header: OutputHeader = serde_json::from_slice(head)
        .map_err(|e| Error::malformed(object, format!("header: {e}")))?;
    if header.suite != OUTPUT_SUITE {
        return Err(Error::Unsupported {
            object: object.clone(),
            what: format!("suite {:?}", header.suite),
        });
    }
    let aad_len = OUTPUT_MAGIC.len() + 4 + len;
    if bytes.len() < aad_len + X25519_LEN + TAG {
        return Err(Error::Length {
            object: object.clone(),
            what: "truncated before the end of the ciphertext".into(),
        });
    }
    Ok((aad_len, header))
}

/// The clear header of a sealed output, without any key. Nothing in it is
/// authenticated until [`open_output`] succeeds.
pub fn output_header_unverified(bytes: &[u8], name: &str) -> Result<OutputHeader> {
    split(bytes, &Object::Output(name.into())).map(|(_, h)| h)
}

/// Opens a sealed output with the owner's X25519 secret key. A modified byte anywhere
/// (header included), a truncation, or another recipient's key all fail the same way,
/// as [`Error::Tampered`]: the failure says nothing about the plaintext.
pub fn open_output(
    recipient_secret: &[u8],
    bytes: &[u8],
    name: &str,
) -> Result<(OutputHeader, Zeroizing<Vec<u8>>)> {
    let object = Object::Output(name.into());
    let (aad_len, header) = split(bytes, &object)?;
    if bytes.len() - aad_len - X25519_LEN - TAG > MAX_OUTPUT_PLAINTEXT {
        return Err(Error::Length {
            object,
            what: "longer than a sealed output may be".into(),
        });
    }
    let sk = <Dhkem as Kem>::PrivateKey::from_bytes(recipient_secret)
        .map_err(|_| Error::InvalidArgument("not an X25519 secret key (32 bytes)".into()))?;
    let (aad, rest) = bytes.split_at(aad_len);
    let (enc, ct) = rest.split_at(X25519_LEN);
    let tampered = || Error::Tampered {
        object: object.clone(),
        what: "does not open with the owner's key (modified, or sealed to another key)".into(),
    };
    let enc = <Dhkem as Kem>::EncappedKey::from_bytes(enc).map_err(|_| tampered())?;
    let plain =
        hpke::single_shot_open::<Aead, Kdf, Dhkem>(&OpModeR::Base, &sk, &enc, OUTPUT_INFO, ct, aad)
            .map_err(|_| tampered())?;
    Ok((header, Zeroizing::new(plain)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpke::Kem;

    fn keypair(seed: u8) -> (Vec<u8>, Vec<u8>) {
        let (sk, pk) = Dhkem::derive_keypair(&[seed; 32]);
        (sk.to_bytes().to_vec(), pk.to_bytes().to_vec())
    }

    fn header() -> OutputHeader {
        OutputHeader::new("model", "burnpack", serde_json::json!({"model": "lenet5"}))
    }

    #[test]
    fn roundtrip_and_fresh_encapsulation() {
        let (sk, pk) = keypair(1);
        let a = seal_output(&pk, &header(), b"weights", "model.sealed").unwrap();
        let b = seal_output(&pk, &header(), b"weights", "model.sealed").unwrap();
        assert_ne!(a, b, "every seal uses a fresh ephemeral key");
        let (h, plain) = open_output(&sk, &a, "model.sealed").unwrap();
        assert_eq!(h, header());
        assert_eq!(&plain[..], b"weights");
        assert_eq!(output_header_unverified(&a, "m").unwrap(), header());
    }

    #[test]
    fn every_byte_flip_is_refused() {
        let (sk, pk) = keypair(2);
        let sealed = seal_output(&pk, &header(), b"some weights here", "m").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(open_output(&sk, &bad, "m").is_err(), "flip at byte {i}");
        }
        for cut in 0..sealed.len() {
            assert!(
                open_output(&sk, &sealed[..cut], "m").is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn another_recipient_cannot_open() {
        let (_, pk) = keypair(3);
        let (other_sk, _) = keypair(4);
        let sealed = seal_output(&pk, &header(), b"w", "m").unwrap();
        let err = open_output(&other_sk, &sealed, "m").unwrap_err();
        assert!(matches!(err, Error::Tampered { .. }), "{err:?}");
    }

    #[test]
    fn bad_arguments() {
        let (_, pk) = keypair(5);
        assert!(seal_output(&pk[..31], &header(), b"w", "m").is_err());
        let mut h = header();
        h.suite = "other".into();
        assert!(seal_output(&pk, &h, b"w", "m").is_err());
    }
}
