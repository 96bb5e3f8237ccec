//! Sealed outputs (§10): what a training job sends back to the owner (model weights,
//! metrics), encrypted with HPKE (RFC 9180) to the owner's X25519 public key.
//!
//! The job holds no secret that opens an output: once written, nothing in the cloud can
//! read it, not even the job that wrote it. An output of a job trained on a sealed
//! dataset is sealed in HPKE's PSK mode with a key derived from the dataset key
//! ([`output_psk`]): only a holder of that key could have made it, so the owner can
//! tell it from one planted by whoever can write the output location (the owner's
//! public key is no secret). The header names that dataset, version and manifest
//! ([`OutputSource`]). The plaintext baseline, which has no dataset key, seals in base
//! mode and names no source: such an output is unauthenticated.
//!
//! Layout: `MAGIC ‖ u32 LE header length ‖ header (JSON) ‖ enc (32 bytes) ‖ ciphertext`.
//! The header travels in clear and is authenticated as HPKE associated data together
//! with the magic and the length.

use hpke::{
    aead::AesGcm256, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, Kem, OpModeR, OpModeS,
    PskBundle, Serializable,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Object, Result};
use crate::keys::{hkdf32, DatasetId, DatasetKey, LABEL_OUTPUT_PSK};

/// Object name of the sealed weights in a job's output location (§10).
pub const MODEL_OBJECT: &str = "model.sealed";
/// Object name of the sealed metrics.
pub const METRICS_OBJECT: &str = "metrics.sealed";
/// Object name of the job's configuration (clear: it holds nothing secret).
pub const CONFIG_OBJECT: &str = "train.json";

/// First 16 bytes of every sealed output. Version 2: outputs of sealed datasets are
/// authenticated to the dataset key (version 1 outputs, base mode only, are refused).
pub const OUTPUT_MAGIC: &[u8; 16] = b"blindfold.out.v2";
/// The only suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM (PSK mode with
/// a source, base mode without).
pub const OUTPUT_SUITE: &str = "X25519-HKDF-SHA256/HKDF-SHA256/AES-256-GCM";
/// HPKE `info` of every sealed output.
pub const OUTPUT_INFO: &[u8] = b"blindfold/v2/output";
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

/// The sealed dataset an output was made from: the dataset key that authenticates
/// the output is this dataset's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSource {
    /// Dataset id (hex).
    pub dataset_id: String,
    /// The manifest version the job trained on.
    pub version: u64,
    /// SHA-256 of that manifest (hex).
    pub manifest_sha256: String,
}

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
    /// The dataset whose key authenticates the output (HPKE PSK mode); `None` for an
    /// unauthenticated output (base mode: the plaintext baseline).
    pub source: Option<OutputSource>,
    /// Free-form, non-secret facts about it (model architecture, input shape). Shown
    /// without any key: put nothing secret here.
    pub info: serde_json::Value,
}

impl OutputHeader {
    /// A header for `kind` encoded as `content_type`, made from `source` (or none).
    pub fn new(
        kind: &str,
        content_type: &str,
        source: Option<OutputSource>,
        info: serde_json::Value,
    ) -> Self {
        OutputHeader {
            suite: OUTPUT_SUITE.into(),
            kind: kind.into(),
            content_type: content_type.into(),
            source,
            info,
        }
    }
}

/// An HPKE pre-shared key and its id.
pub type Psk = (Zeroizing<[u8; 32]>, Vec<u8>);

/// The HPKE PSK of a dataset's outputs, `HKDF(DID, DK, "blindfold/v1/output-psk", 32)`,
/// and its PSK id, `"blindfold/v1/output-psk/" ‖ DID` (§4, §10).
pub fn output_psk(key: &DatasetKey, id: &DatasetId) -> Result<Psk> {
    let psk = hkdf32(&id.0, key.expose_secret(), &[LABEL_OUTPUT_PSK])?;
    let mut psk_id = LABEL_OUTPUT_PSK.to_vec();
    psk_id.push(b'/');
    psk_id.extend_from_slice(&id.0);
    Ok((psk, psk_id))
}

/// The dataset key a header's source calls for, checked against `key`.
fn source_psk(
    header: &OutputHeader,
    key: Option<&DatasetKey>,
    object: &Object,
) -> Result<Option<Psk>> {
    match (&header.source, key) {
        (None, None) => Ok(None),
        (Some(src), Some(key)) => {
            let id = DatasetId::from_hex(&src.dataset_id).ok_or_else(|| {
                Error::malformed(object, "source dataset_id is not 32 hex digits")
            })?;
            output_psk(key, &id).map(Some)
        }
        (Some(_), None) => Err(Error::InvalidArgument(format!(
            "{object} names a source dataset: its key is needed"
        ))),
        (None, Some(_)) => Err(Error::InvalidArgument(format!(
            "{object} names no source dataset: it is not authenticated by a dataset key"
        ))),
    }
}

/// Seals `plaintext` to the owner's X25519 public key `recipient`: with the dataset key
/// of `header.source` (PSK mode), or, with no source and no key, unauthenticated (base
/// mode). `name` names the object in errors.
pub fn seal_output(
    recipient: &[u8],
    header: &OutputHeader,
    dataset_key: Option<&DatasetKey>,
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
    let psk = source_psk(header, dataset_key, &object)?;
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
    let mode = match &psk {
        None => OpModeS::Base,
        Some((psk, id)) => OpModeS::Psk(
            PskBundle::new(&psk[..], id).map_err(|_| Error::Internal("HPKE PSK bundle"))?,
        ),
    };
    let (enc, ct) = hpke::single_shot_seal::<Aead, Kdf, Dhkem, _>(
        &mode,
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

/// Opens a sealed output with the owner's X25519 secret key and, for an output whose
/// header names a source dataset, that dataset's key (`None` opens only an output
/// without a source: unauthenticated; the caller decides whether to accept one). A
/// modified byte anywhere (header included), a truncation, another recipient's key, or
/// an output not made with the source's dataset key all fail the same way, as
/// [`Error::Tampered`]: the failure says nothing about the plaintext.
pub fn open_output(
    recipient_secret: &[u8],
    dataset_key: Option<&DatasetKey>,
    bytes: &[u8],
    name: &str,
) -> Result<(OutputHeader, Zeroizing<Vec<u8>>)> {
    let object = Object::Output(name.into());
    let (aad_len, header) = split(bytes, &object)?;
    let psk = source_psk(&header, dataset_key, &object)?;
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
    let tampered = || {
        Error::Tampered {
        object: object.clone(),
        what: if psk.is_some() {
            "does not open with the owner's key and the dataset's key (modified, sealed to another key, or not made by a holder of the dataset key)"
        } else {
            "does not open with the owner's key (modified, or sealed to another key)"
        }
        .into(),
    }
    };
    let mode = match &psk {
        None => OpModeR::Base,
        Some((psk, id)) => OpModeR::Psk(
            PskBundle::new(&psk[..], id).map_err(|_| Error::Internal("HPKE PSK bundle"))?,
        ),
    };
    let enc = <Dhkem as Kem>::EncappedKey::from_bytes(enc).map_err(|_| tampered())?;
    let plain = hpke::single_shot_open::<Aead, Kdf, Dhkem>(&mode, &sk, &enc, OUTPUT_INFO, ct, aad)
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

    fn dataset() -> (DatasetKey, DatasetId) {
        (DatasetKey::from_bytes([5; 32]), DatasetId([6; 16]))
    }

    fn source(id: &DatasetId) -> Option<OutputSource> {
        Some(OutputSource {
            dataset_id: id.to_hex(),
            version: 3,
            manifest_sha256: "ab".repeat(32),
        })
    }

    fn header() -> OutputHeader {
        let (_, id) = dataset();
        OutputHeader::new(
            "model",
            "burnpack",
            source(&id),
            serde_json::json!({"model": "lenet5"}),
        )
    }

    #[test]
    fn roundtrip_and_fresh_encapsulation() {
        let (sk, pk) = keypair(1);
        let (dk, _) = dataset();
        let a = seal_output(&pk, &header(), Some(&dk), b"weights", "model.sealed").unwrap();
        let b = seal_output(&pk, &header(), Some(&dk), b"weights", "model.sealed").unwrap();
        assert_ne!(a, b, "every seal uses a fresh ephemeral key");
        let (h, plain) = open_output(&sk, Some(&dk), &a, "model.sealed").unwrap();
        assert_eq!(h, header());
        assert_eq!(&plain[..], b"weights");
        assert_eq!(output_header_unverified(&a, "m").unwrap(), header());
    }

    /// Knowing the owner's public key is not enough to make an output the owner
    /// accepts as coming from a dataset: it needs the dataset key. Before, base mode
    /// needed nothing but the public key.
    #[test]
    fn an_output_not_made_with_the_dataset_key_does_not_open() {
        let (sk, pk) = keypair(7);
        let (dk, id) = dataset();
        // Someone with only the owner's public key: base mode, source claimed.
        let forged = {
            let mut h = header();
            h.source = None;
            let mut v = seal_output(&pk, &h, None, b"backdoor", "m").unwrap();
            // Rewrite the clear header to claim the source: the AAD then differs.
            let claimed = serde_json::to_vec(&header()).unwrap();
            let mut out = OUTPUT_MAGIC.to_vec();
            out.extend_from_slice(&(claimed.len() as u32).to_le_bytes());
            out.extend_from_slice(&claimed);
            let old_len = u32::from_le_bytes(v[16..20].try_into().unwrap()) as usize;
            out.extend_from_slice(&v.split_off(20 + old_len));
            out
        };
        assert!(matches!(
            open_output(&sk, Some(&dk), &forged, "m"),
            Err(Error::Tampered { .. })
        ));
        // Another dataset key, claiming this dataset's id.
        let other = DatasetKey::from_bytes([9; 32]);
        let wrong = seal_output(&pk, &header(), Some(&other), b"backdoor", "m").unwrap();
        assert!(matches!(
            open_output(&sk, Some(&dk), &wrong, "m"),
            Err(Error::Tampered { .. })
        ));
        // The source must come with its key, and no key without a source.
        assert!(seal_output(&pk, &header(), None, b"w", "m").is_err());
        let mut bare = header();
        bare.source = None;
        assert!(seal_output(&pk, &bare, Some(&dk), b"w", "m").is_err());
        let ok = seal_output(&pk, &header(), Some(&dk), b"w", "m").unwrap();
        assert!(matches!(
            open_output(&sk, None, &ok, "m"),
            Err(Error::InvalidArgument(_))
        ));
        // An unauthenticated output opens only as such.
        let plain = seal_output(&pk, &bare, None, b"baseline", "m").unwrap();
        assert_eq!(
            &open_output(&sk, None, &plain, "m").unwrap().1[..],
            b"baseline"
        );
        let _ = id;
    }

    #[test]
    fn the_psk_is_the_documented_derivation() {
        let (dk, id) = dataset();
        let (psk, psk_id) = output_psk(&dk, &id).unwrap();
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&id.0), dk.expose_secret());
        let mut want = [0u8; 32];
        hk.expand(b"blindfold/v1/output-psk", &mut want).unwrap();
        assert_eq!(*psk, want);
        assert_eq!(&psk_id[..24], b"blindfold/v1/output-psk/");
        assert_eq!(&psk_id[24..], &id.0);
    }

    #[test]
    fn every_byte_flip_is_refused() {
        let (sk, pk) = keypair(2);
        let (dk, _) = dataset();
        let sealed = seal_output(&pk, &header(), Some(&dk), b"some weights here", "m").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                open_output(&sk, Some(&dk), &bad, "m").is_err(),
                "flip at byte {i}"
            );
        }
        for cut in 0..sealed.len() {
            assert!(
                open_output(&sk, Some(&dk), &sealed[..cut], "m").is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn another_recipient_cannot_open() {
        let (_, pk) = keypair(3);
        let (other_sk, _) = keypair(4);
        let (dk, _) = dataset();
        let sealed = seal_output(&pk, &header(), Some(&dk), b"w", "m").unwrap();
        let err = open_output(&other_sk, Some(&dk), &sealed, "m").unwrap_err();
        assert!(matches!(err, Error::Tampered { .. }), "{err:?}");
    }

    #[test]
    fn bad_arguments() {
        let (_, pk) = keypair(5);
        let (dk, _) = dataset();
        assert!(seal_output(&pk[..31], &header(), Some(&dk), b"w", "m").is_err());
        let mut h = header();
        h.suite = "other".into();
        assert!(seal_output(&pk, &h, Some(&dk), b"w", "m").is_err());
    }
}
