//! The prediction service's wire facts (docs/serving.md): the owner's serving rules
//! that the broker releases with a model's key, what the service says about itself,
//! and the attestation binding of its TLS key.
//!
//! The binding is what lets a client tell the attested process from the host: the
//! service's evidence covers `SHA-384(domain ‖ len ‖ info ‖ spki_sha256 ‖ nonce)`, where
//! `info` is the exact JSON text of [`ServiceInfo`] the service sent, `spki_sha256` the
//! SHA-256 of its TLS certificate's SubjectPublicKeyInfo and `nonce` the client's fresh
//! 32 bytes. A host that terminates TLS itself has another key, so its SPKI differs; a
//! replayed answer has another nonce.

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// Domain of the service binding.
pub const SERVE_BINDING_DOMAIN: &[u8] = b"blindfold/v1/serve-binding\0";
/// Protocol name in [`ServiceInfo::protocol`].
pub const SERVE_PROTOCOL: &str = "blindfold-serve/1";
/// Most records in one prediction request.
pub const MAX_BATCH: usize = 256;
/// Largest prediction request body (bytes).
pub const MAX_REQUEST: usize = 8 << 20;
/// Most clients a policy's `[serve]` table lists.
pub const MAX_CLIENTS: usize = 256;

/// The owner's rules for serving a model (a model policy's `[serve]` table). The broker
/// releases them with the model's key, encrypted to the attested job, so the cloud
/// operator cannot change them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeRules {
    /// Answer with the top-1 label only, never logits or scores (less to learn from
    /// per query for whoever tries to copy the model).
    #[serde(default)]
    pub top1_only: bool,
    /// Most records answered in total by one release, over all clients. None: no limit.
    #[serde(default)]
    pub global_budget: Option<u64>,
    /// SHA-256 (lowercase hex) of the model's training receipt (`receipt.json` of the
    /// job that trained it), as the owner vouches for it: the service names it in its
    /// description, which its evidence covers, and in every answer.
    #[serde(default)]
    pub receipt_sha256: Option<String>,
    /// The API keys accepted. Empty: the service answers nobody.
    #[serde(default)]
    pub clients: Vec<ClientRule>,
}

/// One client of a served model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientRule {
    /// A name for the audit trail and the error messages (1–64 of `A-Z a-z 0-9 . _ -`).
    pub name: String,
    /// SHA-256 of the client's API key, lowercase hex (`blindfold serve new-key` makes a
    /// key and prints both). The key itself is never written down at the broker.
    pub key_sha256: String,
    /// Most records this client may have answered per release. None: only the global
    /// budget limits it.
    #[serde(default)]
    pub budget: Option<u64>,
}

impl ServeRules {
    /// Checks the rules; `Err` names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.clients.len() > MAX_CLIENTS {
            return Err(format!(
                "serve.clients: {} clients, at most {MAX_CLIENTS}",
                self.clients.len()
            ));
        }
        if let Some(r) = &self.receipt_sha256 {
            if r.len() != 64
                || !r
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(
                    "serve.receipt_sha256: a SHA-256 in lowercase hex (64 characters)".into(),
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        for c in &self.clients {
            let ok_name = !c.name.is_empty()
                && c.name.len() <= 64
                && c.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !ok_name {
                return Err(format!(
                    "serve.clients.name {:?}: use 1-64 characters from A-Z a-z 0-9 . _ -",
                    c.name
                ));
            }
            if c.key_sha256.len() != 64
                || !c
                    .key_sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "serve.clients.key_sha256 of {:?}: a SHA-256 in lowercase hex (64 characters)",
                    c.name
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("serve.clients.name {:?} is listed twice", c.name));
            }
            if !keys.insert(c.key_sha256.as_str()) {
                return Err(format!(
                    "serve.clients.key_sha256 of {:?} is another client's too",
                    c.name
                ));
            }
        }
        Ok(())
    }
}

/// What a prediction service says about itself, covered by its evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceInfo {
    /// [`SERVE_PROTOCOL`].
    pub protocol: String,
    /// The sealed model's id (hex), as the broker released it.
    pub model_id: String,
    /// Its registered version.
    pub version: u64,
    /// Its registered manifest digest (hex).
    pub manifest_sha256: String,
    /// The model's name (from the weights' spec).
    pub model_name: String,
    /// SHA-256 of the model's spec (hex).
    pub spec_sha256: String,
    /// Input shape: channels, height, width.
    pub input: [usize; 3],
    /// Outputs per record (classes; 1 for a regression).
    pub outputs: usize,
    /// SHA-256 of the model's training receipt (hex), when the owner's serving rules
    /// name one.
    pub receipt_sha256: Option<String>,
    /// The owner's serving rules say: top-1 labels only.
    pub top1_only: bool,
}

/// Where a serving job reports its query counts to the broker (a blindfold extension of
/// the KBS protocol, docs/broker-protocol.md §6.1).
pub const USAGE_PATH: &str = "/blindfold/v0/usage";
/// DSSE-style payload type signed in a usage report (pre-authentication encoding,
/// [`crate::receipt::pae`]).
pub const USAGE_PAYLOAD_TYPE: &str = "application/vnd.blindfold.usage+json";

/// What a serving job has answered since its release: counts, never contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageReport {
    /// The model (its sealed id, hex).
    pub model_id: String,
    /// The audit sequence number of the release the job's key was certified in.
    pub release_seq: u64,
    /// This report's number for that release, from 1; each must exceed the last one
    /// recorded (a replayed or reordered report is refused).
    pub report: u64,
    /// Records answered since the release, over all clients.
    pub total: u64,
    /// Records answered since the release, per client name.
    pub clients: std::collections::BTreeMap<String, u64>,
}

/// A usage report signed with the job's certified key (the receipt key the broker's
/// release certificate names): `sig` is ECDSA P-256 (fixed-length r ‖ s) over
/// `PAE(USAGE_PAYLOAD_TYPE, payload)`; both base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedUsage {
    /// The report's JSON, base64.
    pub payload: String,
    /// The signature, base64.
    pub sig: String,
    /// The release certificate that certifies the signing key (a compact JWS by the
    /// broker). It travelled only inside the release encrypted to the attested job, so
    /// a host that put its own key into the job's request has none for that key.
    pub certificate: String,
}

impl UsageReport {
    /// Checks the report's form; `Err` names the field.
    pub fn check(&self) -> Result<(), String> {
        let hex32 = self.model_id.len() == 32
            && self
                .model_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex32 {
            return Err("model_id: 32 lowercase hex digits".into());
        }
        if self.release_seq == 0 || self.report == 0 {
            return Err("release_seq and report count from 1".into());
        }
        // Integers a JSON reader (SQLite's included) keeps exact.
        const MAX_EXACT: u64 = 1 << 53;
        if self.release_seq > MAX_EXACT
            || self.report > MAX_EXACT
            || self.total > MAX_EXACT
            || self.clients.values().any(|&n| n > MAX_EXACT)
        {
            return Err(format!("numbers above {MAX_EXACT}"));
        }
        if self.clients.len() > MAX_CLIENTS {
            return Err(format!("clients: at most {MAX_CLIENTS}"));
        }
        let sum = self
            .clients
            .values()
            .try_fold(0u64, |a, &n| a.checked_add(n))
            .ok_or("clients: the counts overflow")?;
        if sum != self.total {
            return Err(format!(
                "total: {} is not the sum of the clients' counts ({sum})",
                self.total
            ));
        }
        Ok(())
    }
}

/// The 48 bytes a service's evidence binds: see the module's text.
pub fn service_binding(info_json: &[u8], spki_sha256: &[u8; 32], nonce: &[u8; 32]) -> [u8; 48] {
    let mut h = sha2::Sha384::new();
    h.update(SERVE_BINDING_DOMAIN);
    h.update((info_json.len() as u64).to_be_bytes());
    h.update(info_json);
    h.update(spki_sha256);
    h.update(nonce);
    h.finalize().into()
}

/// SHA-256 of the SubjectPublicKeyInfo of a DER certificate: what the binding covers,
/// computed the same way by the service (of its own certificate) and the client (of the
/// one its TLS handshake presented).
pub fn spki_sha256(cert_der: &[u8]) -> Result<[u8; 32], String> {
    use x509_cert::der::{Decode, Encode};
    let cert = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| format!("the service's certificate does not parse: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("the service's certificate: {e}"))?;
    Ok(sha2::Sha256::digest(&spki).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, key: &str) -> ClientRule {
        ClientRule {
            name: name.into(),
            key_sha256: key.into(),
            budget: None,
        }
    }

    #[test]
    fn rules_name_the_field_that_is_wrong() {
        let k = "ab".repeat(32);
        let ok = ServeRules {
            clients: vec![client("alice", &k)],
            ..ServeRules::default()
        };
        assert_eq!(ok.check(), Ok(()));
        let bad_name = ServeRules {
            clients: vec![client("a b", &k)],
            ..ServeRules::default()
        };
        assert!(bad_name.check().unwrap_err().contains("serve.clients.name"));
        let upper = ServeRules {
            clients: vec![client("a", &"AB".repeat(32))],
            ..ServeRules::default()
        };
        assert!(upper.check().unwrap_err().contains("key_sha256"));
        let twice = ServeRules {
            clients: vec![client("a", &k), client("b", &k)],
            ..ServeRules::default()
        };
        assert!(twice.check().unwrap_err().contains("another client's"));
        let same_name = ServeRules {
            clients: vec![client("a", &k), client("a", &"cd".repeat(32))],
            ..ServeRules::default()
        };
        assert!(same_name.check().unwrap_err().contains("twice"));
    }

    #[test]
    fn the_binding_covers_every_input() {
        let b = service_binding(b"{}", &[1; 32], &[2; 32]);
        assert_ne!(b, service_binding(b"{ }", &[1; 32], &[2; 32]));
        assert_ne!(b, service_binding(b"{}", &[3; 32], &[2; 32]));
        assert_ne!(b, service_binding(b"{}", &[1; 32], &[4; 32]));
    }
}
