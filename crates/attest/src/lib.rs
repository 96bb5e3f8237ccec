//! The trusted zone's client of the key broker: an ephemeral P-256 key made here, evidence
//! from the platform binding that key and the broker's nonce, the KBS protocol
//! (docs/broker-protocol.md), and the released dataset key decrypted in memory only.
//!
//! Nothing here writes to disk or logs key material.
#![forbid(unsafe_code)]

pub mod evidence;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blindfold_protocol::errors::{ErrorBody, ErrorCode};
use blindfold_protocol::jwe::TeeKeyPair;
use blindfold_protocol::{Challenge, Release, Response, PROTOCOL_VERSION, SESSION_COOKIE};
use serde_json::json;
use zeroize::Zeroizing;

pub use evidence::EvidenceSource;

/// Errors of the client, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker refused (policy, evidence, revocation, ...): the code says why.
    #[error("the broker refused: {code:?}: {detail}")]
    Denied {
        /// Stable error code.
        code: ErrorCode,
        /// The broker's explanation.
        detail: String,
    },
    /// The broker could not be reached, or spoke something else.
    #[error("broker {url}: {what}")]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        what: String,
    },
    /// The platform could not produce evidence.
    #[error("evidence: {0}")]
    Evidence(String),
    /// The broker's reply does not decrypt or does not match the request: a broken or
    /// impersonated broker.
    #[error("the broker's reply is invalid: {0}")]
    BadReply(String),
    /// The caller's options cannot be used (a broker URL that is not `https://`, say).
    #[error("{0}")]
    BadInput(String),
}

/// What the broker released, in memory only.
pub struct Released {
    /// Dataset id (hex).
    pub dataset_id: String,
    /// The dataset key, on the heap: moving a `Released` (in and out of futures, which
    /// an async runtime may box) moves a pointer, not a copy of the key.
    pub key: Box<Zeroizing<[u8; 32]>>,
    /// Manifest digest the owner registered.
    pub manifest_sha256: [u8; 32],
    /// Manifest version the owner registered.
    pub version: u64,
    /// The broker's release certificate, when the job sent a receipt key and the broker
    /// issues them (a stock KBS does not).
    pub certificate: Option<Certificate>,
    /// The owner's serving rules, when the released key is a model's whose policy has
    /// a `[serve]` table.
    pub serve: Option<blindfold_protocol::serve::ServeRules>,
}

/// A release certificate as the broker sent it, and what it claims (read, not verified:
/// the job does not need the broker's key; whoever checks the receipt does).
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The compact JWS.
    pub jws: String,
    /// Its claims.
    pub claims: blindfold_protocol::receipt::ReleaseClaims,
}

/// The job's receipt key: a P-256 key pair made in the zone's memory, never written,
/// that signs the training receipt (DSSE) once the broker has certified it.
pub struct ReceiptKey(aws_lc_rs::signature::EcdsaKeyPair);

impl std::fmt::Debug for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReceiptKey({})", self.public_hex())
    }
}

impl ReceiptKey {
    /// A fresh key pair.
    pub fn generate() -> Result<ReceiptKey, Error> {
        aws_lc_rs::signature::EcdsaKeyPair::generate(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        )
        .map(ReceiptKey)
        .map_err(|_| Error::Evidence("cannot make a receipt key".into()))
    }

    /// The public key, SEC1 uncompressed, lowercase hex: what the job sends the broker.
    pub fn public_hex(&self) -> String {
        use aws_lc_rs::signature::KeyPair;
        hex::encode(self.0.public_key().as_ref())
    }

    /// The training receipt of a job's sealed outputs (`sealed`: object names and the
    /// SHA-256 of their bytes as written), certified by `cert`, signed: the bytes of
    /// `receipt.json`.
    pub fn sign_receipt(
        &self,
        cert: &Certificate,
        sealed: &[(&str, [u8; 32])],
        training: &blindfold_protocol::receipt::Training,
    ) -> Result<Vec<u8>, Error> {
        use blindfold_protocol::receipt::{statement, Subject};
        let subjects: Vec<Subject> = sealed
            .iter()
            .map(|(name, sha256)| Subject {
                name: (*name).to_owned(),
                sha256: *sha256,
            })
            .collect();
        self.sign_statement(&statement(&subjects, &cert.jws, &cert.claims, training))
    }

    /// Signs a serving job's usage report for the broker (docs/serving.md §4): the key
    /// is the one the release certificate names, so the broker knows which release it
    /// comes from.
    pub fn sign_usage(
        &self,
        report: &blindfold_protocol::serve::UsageReport,
        cert: &Certificate,
    ) -> Result<blindfold_protocol::serve::SignedUsage, Error> {
        use blindfold_protocol::receipt::pae;
        use blindfold_protocol::serve::{SignedUsage, USAGE_PAYLOAD_TYPE};
        let payload =
            serde_json::to_vec(report).map_err(|e| Error::BadInput(format!("usage: {e}")))?;
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self
            .0
            .sign(&rng, &pae(USAGE_PAYLOAD_TYPE, &payload))
            .map_err(|_| Error::Evidence("cannot sign the usage report".into()))?;
        Ok(SignedUsage {
            payload: STANDARD.encode(&payload),
            sig: STANDARD.encode(sig.as_ref()),
            certificate: cert.jws.clone(),
        })
    }

    /// Signs `statement` as a DSSE envelope (`receipt.json`).
    pub fn sign_statement(&self, statement: &serde_json::Value) -> Result<Vec<u8>, Error> {
        use blindfold_protocol::receipt::{envelope, pae, PAYLOAD_TYPE};
        let payload = serde_json::to_vec(statement)
            .map_err(|e| Error::BadInput(format!("statement: {e}")))?;
        let sig = self
            .0
            .sign(
                &aws_lc_rs::rand::SystemRandom::new(),
                &pae(PAYLOAD_TYPE, &payload),
            )
            .map_err(|_| Error::Evidence("cannot sign the receipt".into()))?;
        Ok(envelope(&payload, &self.public_hex(), sig.as_ref()))
    }
}

impl std::fmt::Debug for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Released({} v{}, key <redacted>)",
            self.dataset_id, self.version
        )
    }
}

/// Makes the process unfit to leak memory through a core dump or a debugger of the same
/// user: RLIMIT_CORE = 0 and PR_SET_DUMPABLE = 0. Every process that receives a key
/// (the Burn job, the PyTorch bridge) calls it before fetching one.
pub fn harden_process() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::resource::{setrlimit, Resource};
        setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
        nix::sys::prctl::set_dumpable(false)?;
    }
    Ok(())
}

/// How to reach the broker.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Broker base URL, `https://host:port` (`http://` only with `insecure_http`).
    pub broker: String,
    /// The broker's certificate (PEM) to trust, for a self-signed broker.
    pub ca_cert_pem: Option<Vec<u8>>,
    /// Job name, checked by the dataset's policy. The client chooses it: it names the
    /// job, it proves nothing.
    pub job: Option<String>,
    /// SHA-256 (lowercase hex) of the model spec the job trains, checked by policies
    /// that list the specs they accept. The training job sets it from the spec it
    /// loaded; like the job name, the broker trusts it as far as it trusts the measured
    /// code that sends it.
    pub model: Option<String>,
    /// Accept an `http://` broker URL on a loopback address (127.0.0.0/8, `::1`,
    /// `localhost`). The key itself stays encrypted to the job's ephemeral key, but the
    /// session cookie and the broker's replies (denials, the attestation token) are
    /// unauthenticated. Tests only; a remote `http://` broker is refused even with it.
    pub insecure_http: bool,
    /// The job's receipt key ([`ReceiptKey::public_hex`]): the broker certifies it with
    /// the release (a release certificate), for the job's training receipt.
    pub receipt_key: Option<String>,
}

impl FetchOptions {
    /// Checks the broker URL's scheme: `https://`, or `http://` to a loopback address
    /// with `insecure_http` ([`blindfold_protocol::check_broker_url`]).
    pub fn check(&self) -> Result<(), Error> {
        blindfold_protocol::check_broker_url(&self.broker, self.insecure_http)
            .map_err(Error::BadInput)
    }
}

/// The 32-byte key from its base64 in the release object, decoded straight into
/// zeroizing memory (no heap copy is left behind).
fn decode_key(b64: &str) -> Result<Box<Zeroizing<[u8; 32]>>, Error> {
    let bad = || Error::BadReply("key is not base64 of 32 bytes".into());
    // Room for any base64 up to 48 decoded bytes; only 32 are accepted.
    let mut buf = Zeroizing::new([0u8; 48]);
    let n = STANDARD
        .decode_slice(b64, &mut buf[..])
        .map_err(|_| bad())?;
    if n != 32 {
        return Err(bad());
    }
    let mut key = Box::new(Zeroizing::new([0u8; 32]));
    key.copy_from_slice(&buf[..32]);
    Ok(key)
}

async fn reply_error(url: &str, r: reqwest::Response) -> Error {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text)
        .ok()
        .and_then(|b| ErrorCode::from_body(&b).map(|c| (c, b.detail)))
    {
        Some((code, detail)) => Error::Denied { code, detail },
        None => Error::Transport {
            url: url.into(),
            what: format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ),
        },
    }
}

/// Runs auth → attest → resource for one dataset and returns the released key.
pub fn fetch_key(
    opts: &FetchOptions,
    dataset_id: &str,
    evidence: &EvidenceSource,
) -> Result<Released, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Transport {
            url: opts.broker.clone(),
            what: e.to_string(),
        })?;
    opts.check()?;
    let client = client(opts)?;
    rt.block_on(fetch_key_async(&client, opts, dataset_id, evidence))
}

/// An HTTP client that trusts `opts.ca_cert_pem` (and only it, when given).
pub fn client(opts: &FetchOptions) -> Result<reqwest::Client, Error> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
    if let Some(pem) = &opts.ca_cert_pem {
        // The caller's file, not the network: bad input (as the admin client says).
        let c = reqwest::Certificate::from_pem(pem)
            .map_err(|e| Error::BadInput(format!("CA certificate: {e}")))?;
        b = b.tls_certs_only([c]);
    }
    b.build().map_err(|e| Error::Transport {
        url: opts.broker.clone(),
        what: blindfold_protocol::error_chain(&e),
    })
}

/// The flow on a caller's client (the benchmark shares one client across tasks).
pub async fn fetch_key_async(
    client: &reqwest::Client,
    opts: &FetchOptions,
    dataset_id: &str,
    evidence: &EvidenceSource,
) -> Result<Released, Error> {
    opts.check()?;
    // A session the broker dropped before it was used (its table full, or it expired
    // while evidence was made) is started again, once, with fresh evidence.
    match flow(client, opts, dataset_id, evidence).await {
        Err(Error::Denied {
            code: ErrorCode::TokenNotFound | ErrorCode::SessionExpired,
            ..
        }) => flow(client, opts, dataset_id, evidence).await,
        other => other,
    }
}

/// One auth → attest → resource round.
async fn flow(
    client: &reqwest::Client,
    opts: &FetchOptions,
    dataset_id: &str,
    evidence: &EvidenceSource,
) -> Result<Released, Error> {
    let base = opts.broker.trim_end_matches('/');
    let t = |url: &str, e: reqwest::Error| Error::Transport {
        url: url.into(),
        what: blindfold_protocol::error_chain(&e),
    };
    let url = format!("{base}/kbs/v0/auth");
    let mut extra = json!({});
    if let Some(j) = &opts.job {
        extra["job"] = json!(j);
    }
    if let Some(m) = &opts.model {
        extra["model"] = json!(m);
    }
    if let Some(k) = &opts.receipt_key {
        extra["receipt-key"] = json!(k);
    }
    let r = client
        .post(&url)
        .json(&json!({"version": PROTOCOL_VERSION, "tee": evidence.tee(), "extra-params": extra}))
        .send()
        .await
        .map_err(|e| t(&url, e))?;
    if !r.status().is_success() {
        return Err(reply_error(&url, r).await);
    }
    let cookie = r
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .filter(|kv| kv.starts_with(&format!("{SESSION_COOKIE}=")))
                .map(str::to_owned)
        })
        .ok_or_else(|| Error::BadReply("no session cookie".into()))?;
    let ch: Challenge = r.json().await.map_err(|e| t(&url, e))?;
    let kp = TeeKeyPair::generate().map_err(|e| Error::Evidence(e.to_string()))?;
    let pubkey = kp.public();
    let binding = blindfold_protocol::report_data_binding(&ch.nonce, &pubkey, "")
        .map_err(|e| Error::Evidence(e.to_string()))?;
    let primary = evidence.evidence(&binding)?;
    let url = format!("{base}/kbs/v0/attest");
    let att = json!({
        "init-data": null,
        "runtime-data": {"nonce": ch.nonce, "tee-pubkey": pubkey},
        "tee-evidence": {"primary_evidence": primary, "additional_evidence": ""},
    });
    let r = client
        .post(&url)
        .header(reqwest::header::COOKIE, &cookie)
        .json(&att)
        .send()
        .await
        .map_err(|e| t(&url, e))?;
    if !r.status().is_success() {
        return Err(reply_error(&url, r).await);
    }
    let url = format!("{base}{}", blindfold_protocol::resource_path(dataset_id));
    let r = client
        .get(&url)
        .header(reqwest::header::COOKIE, &cookie)
        .send()
        .await
        .map_err(|e| t(&url, e))?;
    if !r.status().is_success() {
        return Err(reply_error(&url, r).await);
    }
    let jwe: Response = r.json().await.map_err(|e| t(&url, e))?;
    let plain = kp
        .decrypt(&jwe)
        .map_err(|e| Error::BadReply(e.to_string()))?;
    let mut rel: Release =
        serde_json::from_slice(&plain).map_err(|e| Error::BadReply(format!("release: {e}")))?;
    if rel.dataset_id != dataset_id {
        return Err(Error::BadReply(
            "the key released is for another dataset".into(),
        ));
    }
    let key = decode_key(&rel.key)?;
    let manifest_sha256 = hex::decode(&rel.manifest_sha256)
        .ok()
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| Error::BadReply("manifest digest".into()))?;
    // A certificate must be for this release and this job's receipt key: the job signs
    // its receipt on the strength of it.
    let certificate = match (rel.certificate.take(), &opts.receipt_key) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(Error::BadReply(
                "a release certificate for a job that sent no receipt key".into(),
            ))
        }
        (Some(c), Some(ours)) => {
            let claims = blindfold_protocol::receipt::certificate_claims_unverified(&c)
                .map_err(|e| Error::BadReply(format!("release certificate: {e}")))?;
            if claims.receipt_key != *ours
                || claims.dataset_id != rel.dataset_id
                || claims.version != rel.version
                || claims.manifest_sha256 != rel.manifest_sha256
            {
                return Err(Error::BadReply(
                    "the release certificate is for another release or another receipt key".into(),
                ));
            }
            Some(Certificate { jws: c, claims })
        }
    };
    Ok(Released {
        dataset_id: rel.dataset_id.clone(),
        key,
        manifest_sha256,
        version: rel.version,
        certificate,
        serve: rel.serve.take(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_needs_the_insecure_flag() {
        let mut o = FetchOptions {
            broker: "http://127.0.0.1:1".into(),
            ..FetchOptions::default()
        };
        let e = o.check().unwrap_err();
        assert!(
            matches!(&e, Error::BadInput(m) if m.contains("--insecure-http")),
            "{e:?}"
        );
        // fetch_key refuses before it sends anything.
        let e = fetch_key(
            &o,
            "00",
            &EvidenceSource::InsecureSample { measurement: None },
        )
        .unwrap_err();
        assert!(matches!(e, Error::BadInput(_)), "{e:?}");
        o.insecure_http = true;
        o.check().unwrap();
        for local in [
            "http://localhost:8080",
            "http://[::1]:80/x",
            "http://127.9.0.1",
        ] {
            o.broker = local.into();
            o.check().unwrap();
        }
        for remote in [
            "http://broker.example:8443",
            "http://10.0.0.1:80",
            "http://127.0.0.1.example.com/",
            "http://[2001:db8::1]:80",
        ] {
            o.broker = remote.into();
            let e = o.check().unwrap_err();
            assert!(
                matches!(&e, Error::BadInput(m) if m.contains("loopback")),
                "{remote}: {e:?}"
            );
        }
        o.broker = "ftp://x".into();
        assert!(o.check().is_err());
        o.broker = "https://broker:8443".into();
        o.insecure_http = false;
        o.check().unwrap();
    }

    #[test]
    fn the_key_decodes_into_32_bytes_only() {
        let k: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(**decode_key(&STANDARD.encode(k)).unwrap(), k);
        for bad in [
            STANDARD.encode([1u8; 31]),
            STANDARD.encode([1u8; 33]),
            "!!".into(),
        ] {
            assert!(matches!(decode_key(&bad), Err(Error::BadReply(_))), "{bad}");
        }
    }
}
