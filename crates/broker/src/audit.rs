//! The hash-chained audit log (§6 of docs/broker-protocol.md):
//! `hash = SHA-256(prev_hash ‖ JCS(entry))`, the first `prev_hash` all zeros.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::db::DbError;

/// One decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Sequence number, from 1 (set when appended).
    pub seq: u64,
    /// Unix seconds.
    pub time: u64,
    /// `attest`, `release`, `register`, `revoke`.
    pub event: String,
    /// Dataset id, if any.
    pub dataset: Option<String>,
    /// Job name, if any.
    pub job: Option<String>,
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

    /// Sets the outcome and reason.
    pub fn outcome(mut self, outcome: &str, reason: &str) -> Entry {
        self.outcome = outcome.into();
        self.reason = reason.into();
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

fn entry_hash(prev: &[u8; 32], e: &Entry) -> Result<[u8; 32], DbError> {
    let v = serde_json::to_value(e).map_err(|e| DbError(e.to_string()))?;
    let c = blindfold_protocol::canonical::jcs(&v).map_err(|e| DbError(e.to_string()))?;
    let mut h = sha2::Sha256::new();
    h.update(prev);
    h.update(c.as_bytes());
    Ok(h.finalize().into())
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
pub fn append(c: &Connection, head: &mut Head, mut e: Entry) -> Result<(), DbError> {
    e.seq = head.seq + 1;
    let h = entry_hash(&head.hash, &e)?;
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

/// Recomputes the chain. `Ok(head)` when intact; `Err((seq, why))` names the first
/// broken entry. A deleted *last* entry cannot be seen from the chain alone: compare the
/// head with a copy kept elsewhere (`blindfold broker audit --verify` prints it).
pub fn verify(c: &Connection) -> Result<Result<Head, (u64, String)>, DbError> {
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
        let h = entry_hash(&head.hash, &e)?;
        if h[..] != hash[..] {
            return Ok(Err((seq, "entry edited (hash mismatch)".into())));
        }
        head = Head { seq, hash: h };
    }
    Ok(Ok(head))
}
