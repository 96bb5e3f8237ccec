//! The attestation session's state machine (§2 of docs/broker-protocol.md), kept apart
//! from HTTP so that it can be tested alone:
//!
//! ```text
//! auth ──► Challenged ──attest──► Spent ──evidence verified──► Attested ──► resource, resource, …
//!                        (a second attest on the same session is a replay)
//! ```
//!
//! The table is bounded: sessions are kept in the order they were made, and as every
//! session lives equally long, that is also the order they expire in. Making a session
//! first drops expired ones from the front, then, if the table is full, the oldest
//! live one. No operation scans the table.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use blindfold_protocol::TeePubKey;

use crate::verifier::Claims;

/// Where a session stands.
#[derive(Debug, Clone)]
pub(crate) enum Stage {
    /// A nonce was handed out; no evidence yet.
    Challenged,
    /// Evidence was verified for the session's nonce and this key.
    Attested {
        pubkey: TeePubKey,
        claims: Box<Claims>,
    },
    /// The nonce was used by an attestation that failed (or is being checked).
    Spent,
}

/// Why a session cannot do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionError {
    /// No such session (never made, or dropped from a full table).
    Unknown,
    /// Older than the session lifetime.
    Expired,
    /// The session's nonce was already used.
    Replayed,
    /// The session has not attested.
    NotAttested,
}

/// What `attest` needs from the session it spends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub nonce: String,
    pub tee: String,
    pub job: Option<String>,
}

/// What a resource request needs from an attested session.
#[derive(Debug, Clone)]
pub(crate) struct Attested {
    pub pubkey: TeePubKey,
    pub claims: Claims,
    pub job: Option<String>,
}

struct Session {
    challenge: Challenge,
    created: Instant,
    stage: Stage,
}

/// The session table.
pub(crate) struct Sessions {
    map: HashMap<String, Session>,
    /// Session ids in the order they were made (and so the order they expire in). Kept
    /// in step with `map`: a session leaves both at once, from the front.
    order: VecDeque<String>,
    ttl: Duration,
    cap: usize,
}

impl Sessions {
    /// A table of at most `cap` sessions living `ttl` each.
    pub fn new(ttl: Duration, cap: usize) -> Self {
        Sessions {
            map: HashMap::new(),
            order: VecDeque::new(),
            ttl,
            cap: cap.max(1),
        }
    }

    /// Sessions held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Makes a session `sid` at `now` for a challenge. Returns how many sessions were
    /// dropped to make room (expired ones, then the oldest live ones if the table was
    /// full).
    pub fn insert(&mut self, sid: String, challenge: Challenge, now: Instant) -> usize {
        let mut dropped = 0;
        while let Some(front) = self.order.front() {
            let expired = self
                .map
                .get(front)
                .is_none_or(|s| now.saturating_duration_since(s.created) >= self.ttl);
            if !expired && self.map.len() < self.cap {
                break;
            }
            let front = self.order.pop_front().expect("non-empty");
            self.map.remove(&front);
            dropped += 1;
        }
        if self
            .map
            .insert(
                sid.clone(),
                Session {
                    challenge,
                    created: now,
                    stage: Stage::Challenged,
                },
            )
            .is_some()
        {
            // A repeated id (never, with 128 random bits) would leave a second copy in
            // `order`; drop the older one so the two stay in step.
            self.order.retain(|s| *s != sid);
        }
        self.order.push_back(sid);
        dropped
    }

    fn live(&mut self, sid: &str, now: Instant) -> Result<&mut Session, SessionError> {
        let ttl = self.ttl;
        let s = self.map.get_mut(sid).ok_or(SessionError::Unknown)?;
        if now.saturating_duration_since(s.created) >= ttl {
            return Err(SessionError::Expired);
        }
        Ok(s)
    }

    /// Spends the session's nonce for an attestation: whatever the evidence turns out to
    /// be, the nonce cannot be used again.
    pub fn spend(&mut self, sid: &str, now: Instant) -> Result<Challenge, SessionError> {
        let s = self.live(sid, now)?;
        if !matches!(s.stage, Stage::Challenged) {
            return Err(SessionError::Replayed);
        }
        s.stage = Stage::Spent;
        Ok(s.challenge.clone())
    }

    /// Records verified evidence for a session whose nonce was spent. A session that is
    /// gone by now (dropped from a full table) stays gone.
    pub fn attest(&mut self, sid: &str, pubkey: TeePubKey, claims: Claims) {
        if let Some(s) = self.map.get_mut(sid) {
            if matches!(s.stage, Stage::Spent) {
                s.stage = Stage::Attested {
                    pubkey,
                    claims: Box::new(claims),
                };
            }
        }
    }

    /// The key and claims of an attested session, for a resource request.
    pub fn attested(&mut self, sid: &str, now: Instant) -> Result<Attested, SessionError> {
        let s = self.live(sid, now)?;
        match &s.stage {
            Stage::Attested { pubkey, claims } => Ok(Attested {
                pubkey: pubkey.clone(),
                claims: Claims::clone(claims),
                job: s.challenge.job.clone(),
            }),
            Stage::Challenged | Stage::Spent => Err(SessionError::NotAttested),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge(n: u8) -> Challenge {
        Challenge {
            nonce: format!("nonce-{n}"),
            tee: "sample".into(),
            job: Some("cnn".into()),
        }
    }

    fn claims() -> Claims {
        Claims {
            tee: "sample".into(),
            measurement: None,
            snp: None,
            tdx_status: None,
            tdx_rtmrs: None,
            insecure: true,
        }
    }

    fn key() -> TeePubKey {
        TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "x".into(),
            y: "y".into(),
        }
    }

    #[test]
    fn a_session_goes_challenged_spent_attested() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(60), 10);
        s.insert("a".into(), challenge(1), t0);
        assert_eq!(s.attested("a", t0).unwrap_err(), SessionError::NotAttested);
        assert_eq!(s.spend("a", t0).unwrap(), challenge(1));
        // The nonce is spent before the evidence is checked: a second attest is a replay,
        // and a failed attestation leaves the session unattested.
        assert_eq!(s.spend("a", t0).unwrap_err(), SessionError::Replayed);
        assert_eq!(s.attested("a", t0).unwrap_err(), SessionError::NotAttested);
        s.attest("a", key(), claims());
        let a = s.attested("a", t0).unwrap();
        assert_eq!(a.job.as_deref(), Some("cnn"));
        assert_eq!(a.claims, claims());
        // Attested sessions may fetch several resources, but never attest again.
        s.attested("a", t0).unwrap();
        assert_eq!(s.spend("a", t0).unwrap_err(), SessionError::Replayed);
    }

    #[test]
    fn unknown_and_expired_sessions_are_refused() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        let mut s = Sessions::new(ttl, 10);
        assert_eq!(s.spend("x", t0).unwrap_err(), SessionError::Unknown);
        s.insert("a".into(), challenge(1), t0);
        assert_eq!(s.spend("a", t0 + ttl).unwrap_err(), SessionError::Expired);
        s.insert("b".into(), challenge(2), t0);
        s.spend("b", t0).unwrap();
        s.attest("b", key(), claims());
        assert_eq!(
            s.attested("b", t0 + ttl).unwrap_err(),
            SessionError::Expired
        );
        // Attesting a session that is not spent (never challenged through `spend`) does
        // nothing.
        s.insert("c".into(), challenge(3), t0);
        s.attest("c", key(), claims());
        assert_eq!(s.attested("c", t0).unwrap_err(), SessionError::NotAttested);
    }

    #[test]
    fn the_table_is_bounded_and_drops_expired_then_oldest_first() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut s = Sessions::new(ttl, 3);
        for (i, sid) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(
                s.insert(
                    sid.to_string(),
                    challenge(i as u8),
                    t0 + Duration::from_secs(i as u64)
                ),
                0
            );
        }
        // Full: the oldest live session makes room.
        assert_eq!(
            s.insert("d".into(), challenge(4), t0 + Duration::from_secs(3)),
            1
        );
        assert_eq!(s.len(), 3);
        assert_eq!(
            s.spend("a", t0 + Duration::from_secs(3)).unwrap_err(),
            SessionError::Unknown
        );
        s.spend("b", t0 + Duration::from_secs(3)).unwrap();
        // Later, b and c have expired: both go, d stays.
        assert_eq!(
            s.insert("e".into(), challenge(5), t0 + Duration::from_secs(12)),
            2
        );
        assert_eq!(s.len(), 2);
        s.spend("d", t0 + Duration::from_secs(12)).unwrap();
        s.spend("e", t0 + Duration::from_secs(12)).unwrap();
        assert_eq!(s.order.len(), s.map.len());
    }

    #[test]
    fn many_sessions_never_exceed_the_cap() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(300), 1000);
        for i in 0..100_000u32 {
            s.insert(format!("{i}"), challenge(0), t0);
        }
        assert_eq!(s.len(), 1000);
        assert_eq!(s.order.len(), 1000);
        // The newest are the ones kept.
        s.spend("99999", t0).unwrap();
        assert_eq!(s.spend("98999", t0).unwrap_err(), SessionError::Unknown);
    }
}
