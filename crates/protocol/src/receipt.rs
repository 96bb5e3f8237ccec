//! Training receipts (`docs/receipts.md`): what a training job signs about the model it
//! wrote, and what anyone holding the broker's public key can check offline.
//!
//! Two signatures, two signers:
//! - the **release certificate**, a compact JWS (ES256) the broker signs when it releases
//!   a dataset key to an attested job: the dataset, version and manifest it released,
//!   the TEE type and measurement it verified, the job and model the job declared, the
//!   release's audit sequence number, and the receipt key the job sent before it was
//!   attested;
//! - the **receipt**, a DSSE envelope around an in-toto Statement v1 whose subjects are
//!   the sealed outputs, signed with that receipt key, which the job made in its own
//!   memory and never lets out.
//!
//! [`verify`] checks the certificate with the broker's key, every predicate field the
//! certificate also states (naming the first that differs), and then the envelope's
//! signature with the certified key. A `sample` TEE's certificate says `insecure`; such a
//! receipt is signed like any other and proves nothing about where the job ran.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// DSSE payload type of an in-toto statement.
pub const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of a blindfold training receipt.
pub const PREDICATE_TYPE: &str = "urn:blindfold:training-receipt:v1";
/// The JWS `typ` of a release certificate: no other token the broker signs has it.
pub const CERTIFICATE_TYP: &str = "blindfold-release+jwt";
/// The receipt's object name, beside the sealed outputs it is about.
pub const RECEIPT_OBJECT: &str = "receipt.json";
/// Largest receipt [`verify`] reads.
pub const MAX_RECEIPT: usize = 1 << 20;

/// What the broker certifies when it releases a key to a job that sent a receipt key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseClaims {
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// The job's receipt key: a P-256 public key, SEC1 uncompressed, lowercase hex.
    pub receipt_key: String,
    /// Dataset id released (hex).
    pub dataset_id: String,
    /// Manifest version registered, and so released.
    pub version: u64,
    /// SHA-256 of the registered manifest (hex).
    pub manifest_sha256: String,
    /// TEE type whose evidence the broker verified.
    pub tee: String,
    /// The measurement the verifier read from the evidence (hex), if it has one.
    pub measurement: Option<String>,
    /// True for the `sample` TEE: no hardware root of trust.
    pub insecure: bool,
    /// The job name the job declared.
    pub job: Option<String>,
    /// The model spec digest the job declared.
    pub model: Option<String>,
    /// Sequence number of the release's entry in the broker's audit log.
    pub audit_seq: u64,
}

/// Why a receipt or a certificate is refused: the field that failed and why. Every
/// refusal is the receipt's fault (edited, forged, or for another broker), never the
/// verifier's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("receipt refused: {field}: {why}")]
pub struct Refused {
    /// The field, as a JSON path (`predicate.dataset.version`, `signatures`,
    /// `predicate.release.certificate`).
    pub field: String,
    /// What is wrong with it.
    pub why: String,
}

fn refused(field: &str, why: impl Into<String>) -> Refused {
    Refused {
        field: field.into(),
        why: why.into(),
    }
}

/// DSSE's pre-authentication encoding: what a DSSE signature covers.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Checks a receipt key as the job sends it: a P-256 point, SEC1 uncompressed, in
/// lowercase hex.
pub fn check_receipt_key(hex_key: &str) -> std::result::Result<(), String> {
    if hex_key.len() != 130
        || !hex_key
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err("a receipt key is a P-256 public key, SEC1 uncompressed, in lowercase hex (130 characters)".into());
    }
    let bytes = hex::decode(hex_key).map_err(|e| e.to_string())?;
    p256::PublicKey::from_sec1_bytes(&bytes)
        .map(|_| ())
        .map_err(|_| "the receipt key is not a point on P-256".into())
}

/// The broker's side: signs a release certificate.
pub fn sign_certificate(
    claims: &ReleaseClaims,
    key: &p256::ecdsa::SigningKey,
) -> crate::Result<String> {
    use p256::ecdsa::signature::Signer;
    let head = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&json!({"alg": "ES256", "typ": CERTIFICATE_TYP}))
            .map_err(|e| crate::Error::Malformed(e.to_string()))?,
    );
    let body = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(claims).map_err(|e| crate::Error::Malformed(e.to_string()))?);
    let input = format!("{head}.{body}");
    let sig: p256::ecdsa::Signature = key.sign(input.as_bytes());
    Ok(format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    ))
}

/// Checks a release certificate's signature with the broker's key and returns what it
/// certifies.
pub fn verify_certificate(
    jws: &str,
    broker: &p256::ecdsa::VerifyingKey,
) -> std::result::Result<ReleaseClaims, Refused> {
    use p256::ecdsa::signature::Verifier;
    const F: &str = "predicate.release.certificate";
    let bad = |why: &str| refused(F, why);
    let (input, sig) = jws
        .rsplit_once('.')
        .ok_or_else(|| bad("not a compact JWS"))?;
    let (head, body) = input
        .split_once('.')
        .ok_or_else(|| bad("not a compact JWS"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|s| p256::ecdsa::Signature::from_slice(&s).ok())
        .ok_or_else(|| bad("signature is not an ES256 signature"))?;
    broker
        .verify(input.as_bytes(), &sig)
        .map_err(|_| bad("not signed by this broker's key (edited, or another broker's)"))?;
    let head: Value = URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| bad("unreadable header"))?;
    if head["alg"] != "ES256" || head["typ"] != CERTIFICATE_TYP {
        return Err(bad(&format!(
            "the broker signed this token, but it is not a release certificate (typ {})",
            head["typ"]
        )));
    }
    URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("unreadable claims"))
}

/// What a release certificate claims, read without checking its signature: for the job,
/// which puts the certificate in its receipt (whoever verifies the receipt checks it).
pub fn certificate_claims_unverified(jws: &str) -> std::result::Result<ReleaseClaims, String> {
    let body = jws
        .split('.')
        .nth(1)
        .ok_or_else(|| "not a compact JWS".to_string())?;
    let bytes = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| "claims are not base64url".to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("claims: {e}"))
}

/// One thing a statement is about: a sealed output's object name and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Object name in the job's output location (`model.sealed`).
    pub name: String,
    /// SHA-256 of the object's bytes as written.
    pub sha256: [u8; 32],
}

/// What a training job states besides what the certificate already says.
#[derive(Debug, Clone)]
pub struct Training {
    /// `burn` or `pytorch`.
    pub framework: String,
    /// The model: `{"name": ..., "spec_sha256": ...}` for a Burn job; what the
    /// PyTorch script names for the bridge.
    pub model: Value,
    /// Hyperparameters (the job's clear configuration).
    pub hyperparameters: Value,
    /// SHA-256 of the metrics as sealed to the owner (their plaintext JSON): the owner
    /// who opens them can check them against the receipt; nobody else learns them.
    pub metrics_sha256: [u8; 32],
}

/// Most subjects a receipt may name.
pub const MAX_SUBJECTS: usize = 16;

/// The predicate's `assurance` sentence, which follows from the certificate alone (and
/// is checked against it: a sample TEE's signer cannot claim more).
pub fn assurance(insecure: bool) -> &'static str {
    if insecure {
        "none: the sample TEE has no hardware root of trust; anyone can produce this receipt's evidence, so it proves nothing about where or how the model was trained"
    } else {
        "the broker verified this TEE's hardware evidence and measurement before it released the dataset key to the job that signed this receipt"
    }
}

/// The statement a job signs: the sealed outputs as subjects, and a predicate that
/// repeats the certificate's facts in readable form beside the job's own.
pub fn statement(
    subjects: &[Subject],
    certificate: &str,
    claims: &ReleaseClaims,
    t: &Training,
) -> Value {
    let assurance = assurance(claims.insecure);
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects.iter().map(|s| json!({
            "name": s.name,
            "digest": {"sha256": hex::encode(s.sha256)},
        })).collect::<Vec<_>>(),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "assurance": assurance,
            "dataset": {
                "id": claims.dataset_id,
                "version": claims.version,
                "manifest_sha256": claims.manifest_sha256,
            },
            "tee": {
                "type": claims.tee,
                "measurement": claims.measurement,
                "insecure": claims.insecure,
            },
            "job": claims.job,
            "framework": t.framework,
            "model": t.model,
            "model_sha256": claims.model,
            "hyperparameters": t.hyperparameters,
            "metrics": {"sha256": hex::encode(t.metrics_sha256), "sealed_to_owner": true},
            "release": {
                "audit_seq": claims.audit_seq,
                "receipt_key": claims.receipt_key,
                "certificate": certificate,
            },
        },
    })
}

/// Wraps a signed payload in a DSSE envelope (JSON). `sig` is over
/// [`pae`]`(`[`PAYLOAD_TYPE`]`, payload)`.
pub fn envelope(payload: &[u8], receipt_key_hex: &str, sig: &[u8]) -> Vec<u8> {
    let keyid = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        receipt_key_hex.as_bytes(),
    ));
    let env = json!({
        "payloadType": PAYLOAD_TYPE,
        "payload": STANDARD.encode(payload),
        "signatures": [{"keyid": format!("sha256:{keyid}"), "sig": STANDARD.encode(sig)}],
    });
    let mut out = serde_json::to_vec_pretty(&env).expect("a JSON value serializes");
    out.push(b'\n');
    out
}

/// A receipt that verified.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What the broker certified.
    pub claims: ReleaseClaims,
    /// The sealed outputs the receipt is about.
    pub subjects: Vec<Subject>,
    /// The statement's predicate.
    pub predicate: Value,
}

/// Verifies a receipt (`receipt.json`) with the broker's public key: the release
/// certificate, then each predicate field the certificate also states, then the DSSE
/// signature with the certified receipt key. The first failure is named.
pub fn verify(
    receipt: &[u8],
    broker: &p256::ecdsa::VerifyingKey,
) -> std::result::Result<Verified, Refused> {
    if receipt.len() > MAX_RECEIPT {
        return Err(refused(
            "receipt",
            format!("larger than {MAX_RECEIPT} bytes"),
        ));
    }
    let env: Value = serde_json::from_slice(receipt)
        .map_err(|e| refused("receipt", format!("not JSON: {e}")))?;
    if env["payloadType"] != PAYLOAD_TYPE {
        return Err(refused(
            "payloadType",
            format!("{} is not {PAYLOAD_TYPE}", env["payloadType"]),
        ));
    }
    let payload = env["payload"]
        .as_str()
        .and_then(|p| STANDARD.decode(p).ok())
        .ok_or_else(|| refused("payload", "not base64"))?;
    let sigs = env["signatures"]
        .as_array()
        .filter(|s| s.len() == 1)
        .ok_or_else(|| refused("signatures", "a receipt carries exactly one signature"))?;
    let sig = sigs[0]["sig"]
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or_else(|| refused("signatures[0].sig", "not base64"))?;
    let st: Value = serde_json::from_slice(&payload)
        .map_err(|e| refused("payload", format!("not a JSON statement: {e}")))?;
    // Exactly the bytes a job's signer writes for this value: no duplicate key (which
    // one parser would read first and another last), no other encoding of the same
    // statement.
    if serde_json::to_vec(&st).ok().as_deref() != Some(&payload[..]) {
        return Err(refused(
            "payload",
            "not in the form a blindfold job signs (a duplicate key, or re-encoded)",
        ));
    }
    for (field, want) in [("_type", STATEMENT_TYPE), ("predicateType", PREDICATE_TYPE)] {
        if st[field] != want {
            return Err(refused(field, format!("{} is not {want}", st[field])));
        }
    }
    let p = &st["predicate"];
    let cert = p["release"]["certificate"]
        .as_str()
        .ok_or_else(|| refused("predicate.release.certificate", "missing"))?;
    let claims = verify_certificate(cert, broker)?;
    // Every fact the broker certified must read the same in the predicate: an edit to
    // one of them is named here, before the signature (which any edit also breaks).
    let certified: [(&str, &Value, Value); 11] = [
        (
            "predicate.assurance",
            &p["assurance"],
            json!(assurance(claims.insecure)),
        ),
        (
            "predicate.dataset.id",
            &p["dataset"]["id"],
            json!(claims.dataset_id),
        ),
        (
            "predicate.dataset.version",
            &p["dataset"]["version"],
            json!(claims.version),
        ),
        (
            "predicate.dataset.manifest_sha256",
            &p["dataset"]["manifest_sha256"],
            json!(claims.manifest_sha256),
        ),
        ("predicate.tee.type", &p["tee"]["type"], json!(claims.tee)),
        (
            "predicate.tee.measurement",
            &p["tee"]["measurement"],
            json!(claims.measurement),
        ),
        (
            "predicate.tee.insecure",
            &p["tee"]["insecure"],
            json!(claims.insecure),
        ),
        ("predicate.job", &p["job"], json!(claims.job)),
        (
            "predicate.model_sha256",
            &p["model_sha256"],
            json!(claims.model),
        ),
        (
            "predicate.release.audit_seq",
            &p["release"]["audit_seq"],
            json!(claims.audit_seq),
        ),
        (
            "predicate.release.receipt_key",
            &p["release"]["receipt_key"],
            json!(claims.receipt_key),
        ),
    ];
    for (field, got, want) in certified {
        if *got != want {
            return Err(refused(
                field,
                format!("reads {got}, the broker certified {want}"),
            ));
        }
    }
    let key = hex::decode(&claims.receipt_key)
        .map_err(|_| refused("predicate.release.certificate", "receipt key is not hex"))?;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
        &key,
    )
    .verify(&pae(PAYLOAD_TYPE, &payload), &sig)
    .map_err(|_| {
        refused(
            "signatures[0].sig",
            "does not verify with the certified receipt key: the statement was edited after the job signed it, or another key signed it",
        )
    })?;
    let subjects = st["subject"]
        .as_array()
        .filter(|s| !s.is_empty() && s.len() <= MAX_SUBJECTS)
        .ok_or_else(|| refused("subject", format!("1 to {MAX_SUBJECTS} subjects")))?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = s["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| refused(&format!("subject[{i}].name"), "missing"))?
                .to_owned();
            let sha256 = s["digest"]["sha256"]
                .as_str()
                .and_then(|d| hex::decode(d).ok())
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| refused(&format!("subject[{i}].digest.sha256"), "not a SHA-256"))?;
            Ok(Subject { name, sha256 })
        })
        .collect::<std::result::Result<Vec<_>, Refused>>()?;
    for (i, s) in subjects.iter().enumerate() {
        if subjects[..i].iter().any(|t| t.name == s.name) {
            return Err(refused(&format!("subject[{i}].name"), "named twice"));
        }
    }
    Ok(Verified {
        claims,
        subjects,
        predicate: p.clone(),
    })
}

/// Reads the broker's public key as `blindfold broker public-key` prints it (a JWK).
pub fn broker_key_from_jwk(text: &str) -> std::result::Result<p256::ecdsa::VerifyingKey, String> {
    let pk = p256::PublicKey::from_jwk_str(text.trim())
        .map_err(|_| "not a P-256 public key in JWK form (`blindfold broker public-key`)")?;
    Ok(p256::ecdsa::VerifyingKey::from(pk))
}

/// The broker's public key as a JWK, for [`broker_key_from_jwk`].
pub fn broker_key_to_jwk(key: &p256::ecdsa::VerifyingKey) -> String {
    p256::PublicKey::from(key).to_jwk_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    #[test]
    fn pae_is_the_dsse_specs_example() {
        // DSSE protocol.md, "Test Vectors".
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }

    #[test]
    fn the_dsse_specs_signature_verifies_over_our_pae() {
        // DSSE protocol.md, "Test Vectors": its ECDSA P-256 key (X, Y in decimal there,
        // SEC1 hex here) and envelope signature (raw r || s) over the PAE above.
        let key = hex::decode(
            "0467cd390f77aa359cb08c2235f652270493a9ed832b0abcc01f70954c0390d238\
             0c782bd54e269125a44f4433aff1432ce94e12bca73aa67ac80cea12608ddf74",
        )
        .unwrap();
        let sig = STANDARD
            .decode("A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA==")
            .unwrap();
        let pk = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            &key,
        );
        pk.verify(&pae("http://example.com/HelloWorld", b"hello world"), &sig)
            .unwrap();
        assert!(pk
            .verify(&pae("http://example.com/HelloWorld", b"hello world!"), &sig)
            .is_err());
    }

    /// A field's name and an edit of it.
    type Edit = (&'static str, fn(&mut Value));

    struct Fixture {
        broker: p256::ecdsa::SigningKey,
        job: EcdsaKeyPair,
        claims: ReleaseClaims,
    }

    fn fixture(insecure: bool) -> Fixture {
        let broker = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let job = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let claims = ReleaseClaims {
            iat: 1_790_000_000,
            receipt_key: hex::encode(job.public_key().as_ref()),
            dataset_id: "ab".repeat(16),
            version: 3,
            manifest_sha256: "cd".repeat(32),
            tee: if insecure { "sample" } else { "snp" }.into(),
            measurement: Some("ef".repeat(48)),
            insecure,
            job: Some("lenet".into()),
            model: Some("01".repeat(32)),
            audit_seq: 42,
        };
        Fixture {
            broker,
            job,
            claims,
        }
    }

    fn receipt(f: &Fixture, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let cert = sign_certificate(&f.claims, &f.broker).unwrap();
        let mut st = statement(
            &[Subject {
                name: "model.sealed".into(),
                sha256: [9; 32],
            }],
            &cert,
            &f.claims,
            &Training {
                framework: "burn".into(),
                model: json!({"name": "lenet5"}),
                hyperparameters: json!({"epochs": 2, "lr": 0.001}),
                metrics_sha256: [5; 32],
            },
        );
        edit(&mut st);
        let payload = serde_json::to_vec(&st).unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = f.job.sign(&rng, &pae(PAYLOAD_TYPE, &payload)).unwrap();
        envelope(&payload, &f.claims.receipt_key, sig.as_ref())
    }

    /// A receipt whose statement is edited after signing.
    fn edited(f: &Fixture, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
        let good: Value = serde_json::from_slice(&receipt(f, |_| {})).unwrap();
        let mut st: Value =
            serde_json::from_slice(&STANDARD.decode(good["payload"].as_str().unwrap()).unwrap())
                .unwrap();
        edit(&mut st);
        let mut env = good.clone();
        env["payload"] = json!(STANDARD.encode(serde_json::to_vec(&st).unwrap()));
        serde_json::to_vec(&env).unwrap()
    }

    #[test]
    fn a_receipt_verifies_with_the_brokers_key() {
        let f = fixture(false);
        let v = verify(&receipt(&f, |_| {}), f.broker.verifying_key()).unwrap();
        assert_eq!(v.claims, f.claims);
        assert_eq!(v.subjects[0].name, "model.sealed");
        assert_eq!(v.subjects[0].sha256, [9; 32]);
        assert!(v.predicate["assurance"]
            .as_str()
            .unwrap()
            .starts_with("the broker verified"));
        let other = p256::ecdsa::SigningKey::from_slice(&[8u8; 32]).unwrap();
        let e = verify(&receipt(&f, |_| {}), other.verifying_key()).unwrap_err();
        assert_eq!(e.field, "predicate.release.certificate");
    }

    #[test]
    fn a_sample_tee_receipt_says_it_proves_nothing() {
        let f = fixture(true);
        let v = verify(&receipt(&f, |_| {}), f.broker.verifying_key()).unwrap();
        assert!(v.claims.insecure);
        assert!(v.predicate["assurance"]
            .as_str()
            .unwrap()
            .starts_with("none: the sample TEE"));
    }

    #[test]
    fn every_certified_field_edited_is_named() {
        let f = fixture(false);
        let cases: [Edit; 11] = [
            ("predicate.assurance", |p| {
                p["assurance"] = json!(assurance(true))
            }),
            ("predicate.dataset.id", |p| {
                p["dataset"]["id"] = json!("00".repeat(16))
            }),
            ("predicate.dataset.version", |p| {
                p["dataset"]["version"] = json!(4)
            }),
            ("predicate.dataset.manifest_sha256", |p| {
                p["dataset"]["manifest_sha256"] = json!("00".repeat(32))
            }),
            ("predicate.tee.type", |p| p["tee"]["type"] = json!("tdx")),
            ("predicate.tee.measurement", |p| {
                p["tee"]["measurement"] = json!(null)
            }),
            ("predicate.tee.insecure", |p| {
                p["tee"]["insecure"] = json!(true)
            }),
            ("predicate.job", |p| p["job"] = json!("other")),
            ("predicate.model_sha256", |p| {
                p["model_sha256"] = json!("02".repeat(32))
            }),
            ("predicate.release.audit_seq", |p| {
                p["release"]["audit_seq"] = json!(41)
            }),
            ("predicate.release.receipt_key", |p| {
                p["release"]["receipt_key"] = json!("04".repeat(65))
            }),
        ];
        for (field, edit) in cases {
            // Edited after signing, and edited then signed by the job's key: both named.
            for r in [
                edited(&f, |st| edit(&mut st["predicate"])),
                receipt(&f, |st| edit(&mut st["predicate"])),
            ] {
                let e = verify(&r, f.broker.verifying_key()).unwrap_err();
                assert_eq!(e.field, field, "{e}");
            }
        }
    }

    #[test]
    fn a_sample_signer_cannot_claim_hardware_assurance() {
        // Anyone holds a sample TEE's receipt key: they sign what they like, but the
        // assurance sentence must be the one the certificate implies.
        let f = fixture(true);
        let r = receipt(&f, |st| {
            st["predicate"]["assurance"] = json!(assurance(false));
        });
        let e = verify(&r, f.broker.verifying_key()).unwrap_err();
        assert_eq!(e.field, "predicate.assurance", "{e}");
    }

    #[test]
    fn a_payload_with_a_duplicate_key_is_refused() {
        // A signer who puts a fake "tee" first and the certified one last: serde keeps
        // the last, another parser the first. The payload is refused whole.
        let f = fixture(true);
        let good: Value = serde_json::from_slice(&receipt(&f, |_| {})).unwrap();
        let payload =
            String::from_utf8(STANDARD.decode(good["payload"].as_str().unwrap()).unwrap()).unwrap();
        let forged = payload.replacen(
            "\"predicate\":{",
            "\"predicate\":{\"tee\":{\"type\":\"snp\",\"insecure\":false},",
            1,
        );
        assert_ne!(forged, payload);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = f
            .job
            .sign(&rng, &pae(PAYLOAD_TYPE, forged.as_bytes()))
            .unwrap();
        let r = envelope(forged.as_bytes(), &f.claims.receipt_key, sig.as_ref());
        let e = verify(&r, f.broker.verifying_key()).unwrap_err();
        assert_eq!(e.field, "payload", "{e}");
    }

    #[test]
    fn subjects_are_bounded_named_and_distinct() {
        let f = fixture(false);
        let many: Vec<Value> = (0..=MAX_SUBJECTS)
            .map(|i| json!({"name": format!("o{i}"), "digest": {"sha256": "00".repeat(32)}}))
            .collect();
        let cases: [(&str, Value); 4] = [
            ("subject", json!([])),
            ("subject", json!(many)),
            (
                "subject[0].name",
                json!([{"digest": {"sha256": "00".repeat(32)}}]),
            ),
            (
                "subject[1].name",
                json!([
                    {"name": "model.sealed", "digest": {"sha256": "00".repeat(32)}},
                    {"name": "model.sealed", "digest": {"sha256": "11".repeat(32)}}
                ]),
            ),
        ];
        for (field, subjects) in cases {
            let r = receipt(&f, |st| st["subject"] = subjects.clone());
            let e = verify(&r, f.broker.verifying_key()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn an_uncertified_field_edited_breaks_the_signature() {
        let f = fixture(false);
        for edit in [
            (|st: &mut Value| st["predicate"]["metrics"]["sha256"] = json!("00".repeat(32)))
                as fn(&mut Value),
            |st| st["predicate"]["hyperparameters"]["epochs"] = json!(3),
            |st| st["subject"][0]["digest"]["sha256"] = json!("00".repeat(32)),
        ] {
            let e = verify(&edited(&f, edit), f.broker.verifying_key()).unwrap_err();
            assert_eq!(e.field, "signatures[0].sig", "{e}");
        }
    }

    #[test]
    fn another_key_signing_is_refused() {
        // A forger with its own key signs a statement carrying the genuine certificate.
        let f = fixture(false);
        let forger = Fixture {
            job: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            broker: f.broker.clone(),
            claims: f.claims.clone(),
        };
        let e = verify(&receipt(&forger, |_| {}), f.broker.verifying_key()).unwrap_err();
        assert_eq!(e.field, "signatures[0].sig");
    }

    #[test]
    fn envelope_fields_are_checked_by_name() {
        let f = fixture(false);
        let good: Value = serde_json::from_slice(&receipt(&f, |_| {})).unwrap();
        let cases: [Edit; 4] = [
            ("payloadType", |e| {
                e["payloadType"] = json!("application/json")
            }),
            ("signatures", |e| e["signatures"] = json!([])),
            ("signatures[0].sig", |e| {
                e["signatures"][0]["sig"] = json!("%%")
            }),
            ("payload", |e| e["payload"] = json!("%%")),
        ];
        for (field, edit) in cases {
            let mut env = good.clone();
            edit(&mut env);
            let e =
                verify(&serde_json::to_vec(&env).unwrap(), f.broker.verifying_key()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn a_broker_token_of_another_kind_is_no_certificate() {
        // The broker signs attestation tokens with the same key: one of them, put where
        // a certificate goes, is refused for its type.
        let f = fixture(false);
        let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&f.claims).unwrap());
        let input = format!("{head}.{body}");
        use p256::ecdsa::signature::Signer;
        let sig: p256::ecdsa::Signature = f.broker.sign(input.as_bytes());
        let tok = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        let e = verify_certificate(&tok, f.broker.verifying_key()).unwrap_err();
        assert!(e.why.contains("not a release certificate"), "{e}");
    }

    #[test]
    fn receipt_keys_are_checked() {
        let f = fixture(false);
        check_receipt_key(&f.claims.receipt_key).unwrap();
        assert!(check_receipt_key(&"04".repeat(65)).is_err());
        assert!(check_receipt_key(&f.claims.receipt_key.to_uppercase()).is_err());
        assert!(check_receipt_key("04").is_err());
    }

    #[test]
    fn the_broker_key_round_trips_as_jwk() {
        let k = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let jwk = broker_key_to_jwk(k.verifying_key());
        assert_eq!(&broker_key_from_jwk(&jwk).unwrap(), k.verifying_key());
        assert!(broker_key_from_jwk("{}").is_err());
    }
}
