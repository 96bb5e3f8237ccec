//! JWE to an ephemeral TEE key: `ECDH-ES+A256KW` on P-256 with `A256GCM` content
//! encryption, flattened JSON serialization, header member order `alg, enc, epk` (§3 of
//! docs/broker-protocol.md). Composed from RustCrypto primitives (`p256`, `aes-kw`,
//! `aes-gcm`, `sha2`).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use kbs_types::{ProtectedHeader, Response, TeePubKey};
use p256::elliptic_curve::sec1::{FromEncodedPoint, ToEncodedPoint};
use serde_json::{Map, Value};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// Key management algorithm.
pub const ALG: &str = "ECDH-ES+A256KW";
/// Content encryption algorithm.
pub const ENC: &str = "A256GCM";

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| Error::Random)?;
    Ok(b)
}

/// NIST SP 800-56A Concat KDF with SHA-256 as RFC 7518 §4.6.2 uses it.
pub fn concat_kdf(
    z: &[u8],
    alg: &str,
    apu: &[u8],
    apv: &[u8],
    key_bits: u32,
) -> Zeroizing<Vec<u8>> {
    let len = (key_bits / 8) as usize;
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter = 1u32;
    while out.len() < len {
        let mut h = sha2::Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        for field in [alg.as_bytes(), apu, apv] {
            h.update((field.len() as u32).to_be_bytes());
            h.update(field);
        }
        h.update(key_bits.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(len);
    out
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>> {
    B64URL
        .decode(s)
        .map_err(|_| Error::Malformed(format!("{what} is not base64url")))
}

/// A P-256 public key from a JWK-style `TeePubKey`.
pub fn public_key(k: &TeePubKey) -> Result<p256::PublicKey> {
    match k {
        TeePubKey::EC { crv, alg, x, y } => {
            if crv != "P-256" {
                return Err(Error::Unsupported(format!("curve {crv}")));
            }
            if alg != ALG {
                return Err(Error::Unsupported(format!("key algorithm {alg}")));
            }
            let (x, y) = (b64(x, "x")?, b64(y, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(Error::Malformed("P-256 coordinates are 32 bytes".into()));
            }
            let pt = p256::EncodedPoint::from_affine_coordinates(
                x.as_slice().into(),
                y.as_slice().into(),
                false,
            );
            Option::from(p256::PublicKey::from_encoded_point(&pt))
                .ok_or_else(|| Error::Malformed("not a point on P-256".into()))
        }
        TeePubKey::RSA { .. } => Err(Error::Unsupported("RSA TEE keys".into())),
        TeePubKey::AKP { .. } => Err(Error::Unsupported("AKP TEE keys".into())),
    }
}

fn coords(p: &p256::PublicKey) -> (String, String) {
    let e = p.to_encoded_point(false);
    (
        B64URL.encode(e.x().expect("uncompressed")),
        B64URL.encode(e.y().expect("uncompressed")),
    )
}

/// An ephemeral P-256 key pair made inside the trusted zone; the secret never leaves it.
pub struct TeeKeyPair {
    secret: p256::SecretKey,
}

impl TeeKeyPair {
    /// A fresh key pair from the OS random generator.
    pub fn generate() -> Result<Self> {
        loop {
            let bytes = Zeroizing::new(random::<32>()?);
            if let Ok(secret) = p256::SecretKey::from_slice(&bytes[..]) {
                return Ok(TeeKeyPair { secret });
            }
        }
    }

    /// The public half as the protocol sends it.
    pub fn public(&self) -> TeePubKey {
        let (x, y) = coords(&self.secret.public_key());
        TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG.into(),
            x,
            y,
        }
    }

    /// Decrypts a JWE addressed to this key. The additional data is recomputed from the
    /// parsed header as a stock Trustee client does.
    pub fn decrypt(&self, r: &Response) -> Result<Zeroizing<Vec<u8>>> {
        if r.protected.alg != ALG || r.protected.enc != ENC {
            return Err(Error::Unsupported(format!(
                "JWE {} / {}",
                r.protected.alg, r.protected.enc
            )));
        }
        let epk_v = r
            .protected
            .other_fields
            .get("epk")
            .ok_or_else(|| Error::Malformed("no epk".into()))?;
        let get = |k: &str| {
            epk_v
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::Malformed(format!("epk lacks {k}")))
        };
        if get("kty")? != "EC" {
            return Err(Error::Unsupported("epk key type".into()));
        }
        let epk = public_key(&TeePubKey::EC {
            crv: get("crv")?,
            alg: ALG.into(),
            x: get("x")?,
            y: get("y")?,
        })?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), epk.as_affine());
        let kek = concat_kdf(shared.raw_secret_bytes(), ALG, &[], &[], 256);
        let kek = aes_kw::KekAes256::try_from(&kek[..]).map_err(|_| Error::DecryptFailed)?;
        let cek = Zeroizing::new(
            kek.unwrap_vec(&r.encrypted_key)
                .map_err(|_| Error::DecryptFailed)?,
        );
        if cek.len() != 32 || r.iv.len() != 12 || r.tag.len() != 16 {
            return Err(Error::DecryptFailed);
        }
        let aad = r
            .protected
            .generate_aad()
            .map_err(|_| Error::Malformed("protected header".into()))?;
        let mut ct = r.ciphertext.clone();
        ct.extend_from_slice(&r.tag);
        let gcm = aes_gcm::Aes256Gcm::new_from_slice(&cek).map_err(|_| Error::DecryptFailed)?;
        gcm.decrypt(
            r.iv.as_slice().into(),
            Payload {
                msg: &ct,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| Error::DecryptFailed)
    }
}

/// Encrypts `plaintext` to a TEE public key (the broker's side).
pub fn encrypt(to: &TeePubKey, plaintext: &[u8]) -> Result<Response> {
    let recipient = public_key(to)?;
    let eph = TeeKeyPair::generate()?;
    let shared = p256::ecdh::diffie_hellman(eph.secret.to_nonzero_scalar(), recipient.as_affine());
    let kek = concat_kdf(shared.raw_secret_bytes(), ALG, &[], &[], 256);
    let cek = Zeroizing::new(random::<32>()?);
    let kek = aes_kw::KekAes256::try_from(&kek[..]).map_err(|_| Error::Random)?;
    let encrypted_key = kek.wrap_vec(&cek[..]).map_err(|_| Error::Random)?;
    let (x, y) = coords(&eph.secret.public_key());
    // Members inserted in sorted order, so the header serializes the same whether or not
    // serde_json preserves insertion order: alg, enc, epk{crv, kty, x, y}.
    let mut epk = Map::new();
    epk.insert("crv".into(), Value::String("P-256".into()));
    epk.insert("kty".into(), Value::String("EC".into()));
    epk.insert("x".into(), Value::String(x));
    epk.insert("y".into(), Value::String(y));
    let mut other = Map::new();
    other.insert("epk".into(), Value::Object(epk));
    let protected = ProtectedHeader {
        alg: ALG.into(),
        enc: ENC.into(),
        other_fields: other,
    };
    let aad = protected
        .generate_aad()
        .map_err(|_| Error::Malformed("protected header".into()))?;
    let iv = random::<12>()?;
    let gcm = aes_gcm::Aes256Gcm::new_from_slice(&cek[..]).map_err(|_| Error::Random)?;
    let mut ct = gcm
        .encrypt(
            (&iv).into(),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| Error::Random)?;
    let tag = ct.split_off(ct.len() - 16);
    Ok(Response {
        protected,
        encrypted_key,
        aad: None,
        iv: iv.to_vec(),
        ciphertext: ct,
        tag,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_kdf_matches_rfc7518_appendix_c() {
        // RFC 7518 Appendix C: ECDH-ES key agreement between Alice's ephemeral key and
        // Bob's static key, apu "Alice", apv "Bob", enc A128GCM.
        let d = |s: &str| B64URL.decode(s).unwrap();
        let alice =
            p256::SecretKey::from_slice(&d("0_NxaRPUMQoAJt50Gz8YiTr8gRTwyEaCumd-MToTmIo")).unwrap();
        let bob_pub = public_key(&TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG.into(),
            x: "weNJy2HscCSM6AEDTDg04biOvhFhyyWvOHQfeF_PxMQ".into(),
            y: "e8lnCO-AlStT-NJVX-crhB7QRYhiix03illJOVAOyck".into(),
        })
        .unwrap();
        let (ax, ay) = coords(&alice.public_key());
        assert_eq!(ax, "gI0GAILBdu7T53akrFmMyGcsF3n5dO7MmwNBHKW5SV0");
        assert_eq!(ay, "SLW_xSffzlPWrHEVI30DHM_4egVwt3NQqeUD7nMFpps");
        let z = p256::ecdh::diffie_hellman(alice.to_nonzero_scalar(), bob_pub.as_affine());
        let k = concat_kdf(z.raw_secret_bytes(), "A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(B64URL.encode(&k[..]), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn round_trip_through_json_and_header_order() {
        let kp = TeeKeyPair::generate().unwrap();
        let r = encrypt(&kp.public(), b"the dataset key").unwrap();
        let json = serde_json::to_string(&r).unwrap();
        let v: Value = serde_json::from_str(&json).unwrap();
        assert!(v.get("aad").is_none());
        let header =
            String::from_utf8(B64URL.decode(v["protected"].as_str().unwrap()).unwrap()).unwrap();
        assert!(
            header.starts_with(
                r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":""#
            ),
            "{header}"
        );
        let parsed: Response = serde_json::from_str(&json).unwrap();
        assert_eq!(&kp.decrypt(&parsed).unwrap()[..], b"the dataset key");
        // Another key cannot open it; a modified ciphertext fails.
        assert_eq!(
            TeeKeyPair::generate()
                .unwrap()
                .decrypt(&parsed)
                .unwrap_err(),
            Error::DecryptFailed
        );
        let mut bad = parsed.clone();
        bad.ciphertext[0] ^= 1;
        assert_eq!(kp.decrypt(&bad).unwrap_err(), Error::DecryptFailed);
    }

    /// A reply of Trustee's stock KBS, captured on loopback (testdata/trustee/SOURCE.md).
    #[test]
    fn decrypts_a_stock_trustee_kbs_reply() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/trustee");
        let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
        let key: Value = serde_json::from_slice(&read("kbs-resource-tee-key.json")).unwrap();
        let d = B64URL.decode(key["d"].as_str().unwrap()).unwrap();
        let kp = TeeKeyPair {
            secret: p256::SecretKey::from_slice(&d).unwrap(),
        };
        let TeePubKey::EC { x, y, .. } = kp.public() else {
            unreachable!()
        };
        assert_eq!(
            (x.as_str(), y.as_str()),
            (key["x"].as_str().unwrap(), key["y"].as_str().unwrap())
        );
        let r: Response = serde_json::from_slice(&read("kbs-resource-response.json")).unwrap();
        assert_eq!(
            &kp.decrypt(&r).unwrap()[..],
            &read("kbs-resource-plaintext.txt")[..]
        );
        let mut bad = r.clone();
        bad.tag[15] ^= 0x80;
        assert_eq!(kp.decrypt(&bad).unwrap_err(), Error::DecryptFailed);
        let mut bad = r.clone();
        bad.encrypted_key[0] ^= 1;
        assert_eq!(kp.decrypt(&bad).unwrap_err(), Error::DecryptFailed);
    }

    #[test]
    fn header_in_another_order_fails_like_a_stock_client() {
        // A JWE whose GCM additional data was computed over a header in another member
        // order (the josekit trap) fails: the reader recomputes alg, enc, epk.
        let kp = TeeKeyPair::generate().unwrap();
        let r = encrypt(&kp.public(), b"k").unwrap();
        let other = format!(
            r#"{{"enc":"A256GCM","epk":{},"alg":"ECDH-ES+A256KW"}}"#,
            serde_json::to_string(&r.protected.other_fields["epk"]).unwrap()
        );
        let recomputed = String::from_utf8(r.protected.generate_aad().unwrap()).unwrap();
        assert_ne!(B64URL.encode(other), recomputed);
    }

    #[test]
    fn unsupported_keys() {
        let rsa = TeePubKey::RSA {
            alg: "RSA-OAEP-256".into(),
            k_mod: "AQAB".into(),
            k_exp: "AQAB".into(),
        };
        assert!(matches!(encrypt(&rsa, b"x"), Err(Error::Unsupported(_))));
        let off_curve = TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG.into(),
            x: B64URL.encode([1u8; 32]),
            y: B64URL.encode([2u8; 32]),
        };
        assert!(matches!(
            encrypt(&off_curve, b"x"),
            Err(Error::Malformed(_))
        ));
    }
}
