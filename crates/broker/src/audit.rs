//! The hash-chained audit log (§6 of docs/broker-protocol.md):
//! `hash = HMAC-SHA-256(audit key, prev_hash ‖ JCS(entry))`, the first `prev_hash` all
//! zeros. The audit key is derived from the broker's master key, which is not in the
//! database: someone who can write the database but not read the broker's keys cannot
//! recompute the chain after editing an entry.

use aws_lc_rs::{hkdf, hmac};
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::db::DbError;

/// Longest reason kept in an entry (characters); longer ones are cut. Reasons can quote
/// what a client sent (a parse error, say), and entries are kept forever.
pub const MAX_REASON: usize = 200;

/// The key of the chain's MACs.
#[derive(Clone)]
pub struct AuditKey(hmac::Key);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

impl AuditKey {
    /// `HKDF-SHA-256(salt = "blindfold/v1/broker", ikm = master key, info = "audit-chain")`.
    pub fn derive(master: &[u8; 32]) -> AuditKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"blindfold/v1/broker").extract(master);
        let okm = prk
            .expand(&[b"audit-chain"], hmac::HMAC_SHA256)
            .expect("32 bytes is a valid HKDF-SHA-256 length");
        AuditKey(hmac::Key::from(okm))
    }
}

/// `s`, cut to at most `max` characters (an ellipsis marks a cut).
pub(crate) fn bounded(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// One decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Sequence number, from 1 (set when appended).
    pub seq: u64,
    /// Unix seconds.
    pub time: u64,
    /// `attest`, `release`, `register`, `revoke`, `usage`.
    pub event: String,
    /// Dataset id, if any.
    pub dataset: Option<String>,
    /// Job name, if any.
    pub job: Option<String>,
    /// SHA-256 of the model spec the job declared, if any (absent from entries written
    /// before model specs, so that their hashes stay what they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The receipt key the job sent (a P-256 public key, hex), if any: the release
    /// certificate names it (absent from entries without one, whose hashes stay what
    /// they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_key: Option<String>,
    /// A serving job's query counts (event `usage`), as it signed them (absent from
    /// every other entry, whose hashes stay what they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<blindfold_protocol::serve::UsageReport>,
    /// TEE type, if any.
    pub tee: Option<String>,
    /// Measurement, if any.
    pub measurement: Option<String>,
    /// `granted` or `denied`.
    pub outcome: String,
    /// Why.
    pub reason: String,
    /// True for decisions on evidence without a hardware root of trust (`sample`).
    pub insecure_sample: bool,
}

impl Entry {
    /// A new entry for `event` now.
    pub fn new(event: &str) -> Entry {
        Entry {
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            event: event.into(),
            ..Entry::default()
        }
    }

    /// Sets the outcome and reason (cut to [`MAX_REASON`] characters).
    pub fn outcome(mut self, outcome: &str, reason: &str) -> Entry {
        self.outcome = outcome.into();
        self.reason = bounded(reason, MAX_REASON);
        self
    }
}

/// The last entry's sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Sequence number of the last entry (0 when empty).
    pub seq: u64,
    /// Its hash (zeros when empty).
    pub hash: [u8; 32],
}

/// The chain older blindfold versions wrote: `SHA-256(prev_hash ‖ JCS(entry))`, no key.
/// Never accepted; only recognised, to say so.
fn unkeyed_hash(prev: &[u8; 32], e: &Entry) -> Result<[u8; 32], DbError> {
    use sha2::Digest;
    let v = serde_json::to_value(e).map_err(|e| DbError(e.to_string()))?;
    let c = blindfold_protocol::canonical::jcs(&v).map_err(|e| DbError(e.to_string()))?;
    let mut h = sha2::Sha256::new();
    h.update(prev);
    h.update(c.as_bytes());
    Ok(h.finalize().into())
}

/// Why an entry whose MAC fails does: a chain recomputed with plain SHA-256 is named as
/// such (an older blindfold's log, or one rewritten without the key).
fn mismatch(prev: &[u8; 32], e: &Entry, stored: &[u8]) -> Result<String, DbError> {
    Ok(if unkeyed_hash(prev, e)?[..] == stored[..] {
        "chained with plain SHA-256, not the broker's audit key: written by a blindfold older than the keyed chain, or rewritten by someone without the key; either way not tamper-evident".into()
    } else {
        "entry edited, or its MAC computed without the broker's audit key".into()
    })
}

/// Whether the log starts with an entry chained the unkeyed way (an older blindfold's
/// log): a broker refuses to append to it.
pub fn unkeyed(c: &Connection) -> Result<bool, DbError> {
    let first: Option<(String, Vec<u8>)> = c
        .query_row("SELECT entry, hash FROM audit WHERE seq = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let Some((text, hash)) = first else {
        return Ok(false);
    };
    let Ok(e) = serde_json::from_str::<Entry>(&text) else {
        return Ok(false);
    };
    Ok(unkeyed_hash(&[0; 32], &e)?[..] == hash[..])
}

fn entry_hash(key: &AuditKey, prev: &[u8; 32], e: &Entry) -> Result<[u8; 32], DbError> {
    let v = serde_json::to_value(e).map_err(|e| DbError(e.to_string()))?;
    let c = blindfold_protocol::canonical::jcs(&v).map_err(|e| DbError(e.to_string()))?;
    let mut h = hmac::Context::with_key(&key.0);
    h.update(prev);
    h.update(c.as_bytes());
    Ok(h.sign()
        .as_ref()
        .try_into()
        .expect("HMAC-SHA-256 is 32 bytes"))
}

/// The chain's head as stored.
pub fn head(c: &Connection) -> Result<Head, DbError> {
    let r: Option<(i64, Vec<u8>)> = c
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match r {
        None => Head {
            seq: 0,
            hash: [0; 32],
        },
        Some((seq, h)) => Head {
            seq: seq as u64,
            hash: h
                .try_into()
                .map_err(|_| DbError("audit hash length".into()))?,
        },
    })
}

/// Appends `e` after `head` and advances it.
pub fn append(
    c: &Connection,
    key: &AuditKey,
    head: &mut Head,
    mut e: Entry,
) -> Result<(), DbError> {
    e.seq = head.seq + 1;
    let h = entry_hash(key, &head.hash, &e)?;
    let text = serde_json::to_string(&e).map_err(|e| DbError(e.to_string()))?;
    c.execute(
        "INSERT INTO audit(seq, entry, prev, hash) VALUES (?1, ?2, ?3, ?4)",
        params![e.seq as i64, text, &head.hash[..], &h[..]],
    )?;
    *head = Head {
        seq: e.seq,
        hash: h,
    };
    Ok(())
}

/// Every entry, in order.
pub fn entries(c: &Connection) -> Result<Vec<Entry>, DbError> {
    let mut st = c.prepare("SELECT entry FROM audit ORDER BY seq")?;
    let rows = st.query_map([], |r| r.get::<_, String>(0))?;
    rows.map(|t| serde_json::from_str(&t?).map_err(|e| DbError(format!("audit entry: {e}"))))
        .collect()
}

/// Recomputes the chain with the audit key. `Ok(head)` when intact; `Err((seq, why))`
/// names the first broken entry. A deleted *last* entry cannot be seen from the chain
/// alone: compare the head with a copy kept elsewhere (`blindfold broker audit --verify`
/// prints it).
pub fn verify(c: &Connection, key: &AuditKey) -> Result<Result<Head, (u64, String)>, DbError> {
    let mut st = c.prepare("SELECT seq, entry, prev, hash FROM audit ORDER BY seq")?;
    let mut rows = st.query([])?;
    let mut head = Head {
        seq: 0,
        hash: [0; 32],
    };
    while let Some(r) = rows.next()? {
        let seq = r.get::<_, i64>(0)? as u64;
        let text: String = r.get(1)?;
        let prev: Vec<u8> = r.get(2)?;
        let hash: Vec<u8> = r.get(3)?;
        if seq != head.seq + 1 {
            return Ok(Err((
                head.seq + 1,
                format!("entry missing (next stored entry is {seq})"),
            )));
        }
        if prev != head.hash {
            return Ok(Err((seq, "link to the previous entry is broken".into())));
        }
        let e: Entry = match serde_json::from_str(&text) {
            Ok(e) => e,
            Err(e) => return Ok(Err((seq, format!("unreadable: {e}")))),
        };
        if e.seq != seq {
            return Ok(Err((seq, "sequence number edited".into())));
        }
        let h = entry_hash(key, &head.hash, &e)?;
        if !constant_time_eq(&h, &hash) {
            return Ok(Err((seq, mismatch(&head.hash, &e, &hash)?)));
        }
        head = Head { seq, hash: h };
    }
    Ok(Ok(head))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries without a model serialize as they did before the field existed, so the
    /// hashes of a log written then still verify.
    #[test]
    fn an_entry_without_a_model_keeps_its_old_form() {
        let mut e = Entry::new("release").outcome("granted", "ok");
        let v = serde_json::to_value(&e).unwrap();
        assert!(v.get("model").is_none(), "{v}");
        let old: Entry = serde_json::from_value(v).unwrap();
        assert_eq!(old.model, None);
        e.model = Some("ab".repeat(32));
        assert_eq!(serde_json::to_value(&e).unwrap()["model"], "ab".repeat(32));
    }

    #[test]
    fn long_reasons_are_cut() {
        let e = Entry::new("attest").outcome("denied", &"é".repeat(10_000));
        assert_eq!(e.reason.chars().count(), MAX_REASON + 1);
        assert!(e.reason.ends_with('…'));
        assert_eq!(Entry::new("x").outcome("denied", "short").reason, "short");
    }

    /// The chain is keyed: recomputing it with plain SHA-256, or with another broker's
    /// key, does not verify.
    #[test]
    fn the_chain_verifies_only_with_its_key() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE audit(seq INTEGER PRIMARY KEY, entry TEXT NOT NULL, prev BLOB NOT NULL, hash BLOB NOT NULL);",
        )
        .unwrap();
        let key = AuditKey::derive(&[1; 32]);
        let mut head = head(&c).unwrap();
        for i in 0..3 {
            append(
                &c,
                &key,
                &mut head,
                Entry::new("attest").outcome("granted", &format!("{i}")),
            )
            .unwrap();
        }
        assert_eq!(verify(&c, &key).unwrap().unwrap(), head);
        assert_eq!(
            verify(&c, &AuditKey::derive(&[2; 32]))
                .unwrap()
                .unwrap_err()
                .0,
            1
        );
    }
}
