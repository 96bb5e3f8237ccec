//! The key broker's wire protocol, shared by the broker and the trusted zone's client:
//! the subset of Confidential Containers' Trustee KBS protocol 0.4.0 that blindfold
//! speaks (`docs/broker-protocol.md`), the report-data binding, the JWE profile used to
//! encrypt a released key to an ephemeral TEE key, and the release object.
//!
//! Holds no dataset-decryption code: a released key is opaque bytes here.
#![forbid(unsafe_code)]

pub mod canonical;
pub mod errors;
pub mod jwe;
pub mod receipt;
pub mod serve;
#[cfg(feature = "snp")]
pub mod snp;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use kbs_types::{
    Attestation, Challenge, CompositeEvidence, Request, Response, RuntimeData, Tee, TeePubKey,
};

/// The protocol version spoken, compared exactly.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// Resource repository and type under which datasets are released.
pub const RESOURCE_REPO: &str = "blindfold";
/// Resource type of a dataset key.
pub const RESOURCE_TYPE: &str = "dataset";
/// Largest request body accepted by the broker.
pub const MAX_BODY: usize = 1 << 20;

/// Checks a broker URL a client is about to use: `https://`, or `http://` to a loopback
/// address (127.0.0.0/8, `::1`, `localhost`) when the caller allows plain HTTP
/// (`--insecure-http`: a test broker). Over plain HTTP nothing authenticates the broker,
/// and an admin token or a session cookie crosses the network in the clear.
pub fn check_broker_url(url: &str, insecure_http: bool) -> std::result::Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    if !url.starts_with("http://") {
        return Err(format!("broker {url}: not an https:// URL"));
    }
    if !insecure_http {
        return Err(format!(
            "broker {url}: plain HTTP is refused (nothing authenticates the broker); use https://, or --insecure-http for a test broker on loopback"
        ));
    }
    if !loopback_host(url) {
        return Err(format!(
            "broker {url}: plain HTTP is allowed only to a loopback address, even with --insecure-http"
        ));
    }
    Ok(())
}

/// Whether a URL's host is a loopback address.
fn loopback_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The resource path of a dataset's key.
pub fn resource_path(dataset_id_hex: &str) -> String {
    format!("/kbs/v0/resource/{RESOURCE_REPO}/{RESOURCE_TYPE}/{dataset_id_hex}")
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A peer sent something this protocol does not allow.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A key type or algorithm this implementation does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Decryption failed (wrong key or modified message).
    #[error("decryption failed")]
    DecryptFailed,
    /// The platform's random generator failed.
    #[error("random number generator failed")]
    Random,
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// SHA-384 of the RFC 8785 canonical JSON of
/// `{"additional-evidence", "nonce", "tee-pubkey"}`: what a TEE's report data must hold
/// (§2 of docs/broker-protocol.md), as Trustee computes it.
pub fn report_data_binding(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<[u8; 48]> {
    let key = serde_json::to_value(tee_pubkey).map_err(|e| Error::Malformed(e.to_string()))?;
    let v = serde_json::json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": key,
    });
    let text = canonical::jcs(&v)?;
    Ok(sha2::Sha384::digest(text.as_bytes()).into())
}

/// The 64-byte report data of SNP and TDX: the binding followed by 16 zero bytes.
pub fn report_data_64(binding: &[u8; 48]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..48].copy_from_slice(binding);
    out
}

/// Evidence of the `sample` TEE (no hardware root of trust; tests only).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SampleEvidence {
    /// Security version, self-declared.
    pub svn: String,
    /// Base64 (standard alphabet, no padding) of the 48-byte binding.
    pub report_data: String,
    /// A self-declared measurement (hex); blindfold's extension, absent in stock clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement: Option<String>,
}

impl SampleEvidence {
    /// Evidence for a binding.
    pub fn new(binding: &[u8; 48], measurement: Option<String>) -> Self {
        SampleEvidence {
            svn: "1".into(),
            report_data: base64::engine::general_purpose::STANDARD_NO_PAD.encode(binding),
            measurement,
        }
    }
}

/// What the broker releases for a dataset, encrypted to the TEE key. Its `Debug` leaves
/// the key out; the key string is wiped on drop.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Dataset id (hex).
    pub dataset_id: String,
    /// Base64 of the 32-byte dataset key.
    pub key: String,
    /// SHA-256 of the manifest the owner registered (hex).
    pub manifest_sha256: String,
    /// Manifest version the owner registered.
    pub version: u64,
    /// The release certificate ([`receipt::sign_certificate`]), when the job sent a
    /// receipt key: what the broker certifies about this release, for the job's
    /// training receipt. Not secret; absent for a client that sent no receipt key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    /// The owner's serving rules, for a model whose policy has a `[serve]` table
    /// (docs/serving.md). Absent for a dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serve: Option<serve::ServeRules>,
}

impl Drop for Release {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Release")
            .field("dataset_id", &self.dataset_id)
            .field("key", &"<redacted>")
            .field("manifest_sha256", &self.manifest_sha256)
            .field("version", &self.version)
            .field("certificate", &self.certificate)
            .field("serve", &self.serve)
            .finish()
    }
}

impl Release {
    /// The release object as JSON, serialized into a fixed zeroizing buffer that cannot
    /// grow (growing one would free a copy of the key unwiped): an object too long for it
    /// is an error, never a reallocation.
    pub fn to_json(&self) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        // Room for the key, a release certificate (about 1 KiB of claims, base64) and
        // serving rules (at most MAX_CLIENTS clients of about 200 bytes each).
        const MAX: usize = 4096 + serve::MAX_CLIENTS * 256;
        let mut buf = zeroize::Zeroizing::new(vec![0u8; MAX]);
        let mut w = &mut buf[..];
        serde_json::to_writer(&mut w, self)
            .map_err(|e| Error::Malformed(format!("release object: {e}")))?;
        let n = MAX - w.len();
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(n));
        out.extend_from_slice(&buf[..n]);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        Release {
            dataset_id: "ab".repeat(16),
            key: "c2VjcmV0LWtleS1tYXRlcmlhbC0xMjM0NTY3ODkwYWI=".into(),
            manifest_sha256: "cd".repeat(32),
            version: 7,
            certificate: None,
            serve: None,
        }
    }

    #[test]
    fn debug_leaves_the_key_out() {
        let d = format!("{:?}", release());
        assert!(!d.contains("c2VjcmV0"), "{d}");
        assert!(
            d.contains("<redacted>") && d.contains(&"ab".repeat(16)),
            "{d}"
        );
    }

    #[test]
    fn to_json_is_the_serde_form_without_growing() {
        let r = release();
        assert_eq!(
            &r.to_json().unwrap()[..],
            &serde_json::to_vec(&r).unwrap()[..]
        );
    }
}

/// Claims the broker issues in its attestation token (a JWT, ES256).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Session id the token stands for.
    pub jti: String,
    /// TEE type.
    pub tee: String,
}

/// An error and its causes on one line (`outer: cause: root cause`), so that a transport
/// failure says why (refused connection, certificate not trusted, timeout), not only
/// "error sending request".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod error_chain_tests {
    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn names_every_cause_once() {
        let e = E(
            "error sending request",
            Some(Box::new(E("connect", Some(Box::new(E("refused", None)))))),
        );
        assert_eq!(
            super::error_chain(&e),
            "error sending request: connect: refused"
        );
        // A cause whose text the outer message already ends with is not repeated.
        let e = E("tls: refused", Some(Box::new(E("refused", None))));
        assert_eq!(super::error_chain(&e), "tls: refused");
    }
}
