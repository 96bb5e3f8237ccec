//! The attestation session's state machine (§2 of docs/broker-protocol.md), kept apart
//! from HTTP so that it can be tested alone:
//!
//! ```text
//! auth ──► Challenged ──attest──► Spent ──evidence verified──► Attested ──► resource, resource, …
//!                        (a second attest on the same session is a replay)
//! ```
//!
//! Two bounded tables, so that what costs nothing cannot push out what cost something:
//!
//! - *pending* sessions (challenged, or spent while their evidence is checked), which
//!   anyone can open with one request: at most [`Limits::pending_per_client`] per client
//!   address, and at most [`Limits::pending`] in all, the oldest dropped first;
//! - *attested* sessions, which only verified evidence creates: at most
//!   [`Limits::attested`], the oldest dropped first.
//!
//! Every session lives equally long, so in each table the order sessions were made in
//! is the order they expire in: making one drops expired ones from the front, then, if
//! the table is full, the oldest live one. No operation scans a table.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use blindfold_protocol::TeePubKey;

use crate::verifier::Claims;

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
    /// The client address holds as many pending sessions as it may.
    TooManyPending,
}

/// What `attest` needs from the session it spends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Challenge {
    pub nonce: String,
    pub tee: String,
    pub job: Option<String>,
    pub model: Option<String>,
    /// The job's receipt key (hex), certified on release.
    pub receipt_key: Option<String>,
}

/// What a resource request needs from an attested session.
#[derive(Debug, Clone)]
pub(crate) struct Attested {
    pub pubkey: TeePubKey,
    pub claims: Claims,
    pub job: Option<String>,
    pub model: Option<String>,
    pub receipt_key: Option<String>,
}

/// The tables' bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Pending sessions in all.
    pub pending: usize,
    /// Pending sessions per client address.
    pub pending_per_client: usize,
    /// Attested sessions in all.
    pub attested: usize,
}

struct Pending {
    challenge: Challenge,
    created: Instant,
    client: IpAddr,
    spent: bool,
}

struct Done {
    attested: Attested,
    created: Instant,
}

/// A map whose entries leave in the order they came, when they expire or when the map
/// is full.
struct Fifo<T> {
    map: HashMap<String, T>,
    order: VecDeque<String>,
    cap: usize,
}

impl<T> Fifo<T> {
    fn new(cap: usize) -> Self {
        Fifo {
            map: HashMap::new(),
            order: VecDeque::new(),
            cap: cap.max(1),
        }
    }

    /// Drops entries from the front while `expired` says so or the map is full; hands
    /// each dropped entry to `gone`. Entries already removed are skipped.
    fn make_room(&mut self, expired: impl Fn(&T) -> bool, mut gone: impl FnMut(T)) {
        while let Some(front) = self.order.front() {
            match self.map.get(front) {
                Some(v) if !expired(v) && self.map.len() < self.cap => break,
                _ => {}
            }
            let front = self.order.pop_front().expect("non-empty");
            if let Some(v) = self.map.remove(&front) {
                gone(v);
            }
        }
    }

    fn insert(&mut self, id: String, v: T) {
        if self.map.insert(id.clone(), v).is_none() {
            self.order.push_back(id);
        }
    }
}

/// The session tables.
pub(crate) struct Sessions {
    pending: Fifo<Pending>,
    per_client: HashMap<IpAddr, usize>,
    attested: Fifo<Done>,
    ttl: Duration,
    limits: Limits,
}

impl Sessions {
    /// Tables bounded by `limits`, sessions living `ttl` each.
    pub fn new(ttl: Duration, limits: Limits) -> Self {
        Sessions {
            pending: Fifo::new(limits.pending),
            per_client: HashMap::new(),
            attested: Fifo::new(limits.attested),
            ttl,
            limits,
        }
    }

    fn release_client(per_client: &mut HashMap<IpAddr, usize>, client: IpAddr) {
        if let Some(n) = per_client.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                per_client.remove(&client);
            }
        }
    }

    /// Makes a pending session `sid` for `client` at `now`, unless that client already
    /// holds as many pending sessions as it may.
    pub fn insert(
        &mut self,
        sid: String,
        challenge: Challenge,
        client: IpAddr,
        now: Instant,
    ) -> Result<(), SessionError> {
        let ttl = self.ttl;
        let per_client = &mut self.per_client;
        self.pending.make_room(
            |p| now.saturating_duration_since(p.created) >= ttl,
            |p| Self::release_client(per_client, p.client),
        );
        let held = self.per_client.entry(client).or_insert(0);
        if *held >= self.limits.pending_per_client {
            return Err(SessionError::TooManyPending);
        }
        *held += 1;
        self.pending.insert(
            sid,
            Pending {
                challenge,
                created: now,
                client,
                spent: false,
            },
        );
        Ok(())
    }

    /// Spends the session's nonce for an attestation: whatever the evidence turns out to
    /// be, the nonce cannot be used again.
    pub fn spend(&mut self, sid: &str, now: Instant) -> Result<Challenge, SessionError> {
        if self.attested.map.contains_key(sid) {
            return Err(SessionError::Replayed);
        }
        let p = self.pending.map.get_mut(sid).ok_or(SessionError::Unknown)?;
        if now.saturating_duration_since(p.created) >= self.ttl {
            return Err(SessionError::Expired);
        }
        if p.spent {
            return Err(SessionError::Replayed);
        }
        p.spent = true;
        Ok(p.challenge.clone())
    }

    /// Records verified evidence for a session whose nonce was spent: it moves to the
    /// attested table (and no longer counts against its client's pending sessions). A
    /// session that is gone by now (dropped from a full table) stays gone.
    pub fn attest(&mut self, sid: &str, pubkey: TeePubKey, claims: Claims, now: Instant) {
        if !self.pending.map.get(sid).is_some_and(|p| p.spent) {
            return;
        }
        let p = self.pending.map.remove(sid).expect("checked");
        Self::release_client(&mut self.per_client, p.client);
        let ttl = self.ttl;
        self.attested
            .make_room(|d| now.saturating_duration_since(d.created) >= ttl, drop);
        self.attested.insert(
            sid.to_owned(),
            Done {
                attested: Attested {
                    pubkey,
                    claims,
                    job: p.challenge.job,
                    model: p.challenge.model,
                    receipt_key: p.challenge.receipt_key,
                },
                // The session's life still counts from its challenge.
                created: p.created,
            },
        );
    }

    /// The key and claims of an attested session, for a resource request.
    pub fn attested(&mut self, sid: &str, now: Instant) -> Result<Attested, SessionError> {
        if let Some(d) = self.attested.map.get(sid) {
            if now.saturating_duration_since(d.created) >= self.ttl {
                return Err(SessionError::Expired);
            }
            return Ok(d.attested.clone());
        }
        match self.pending.map.get(sid) {
            Some(p) if now.saturating_duration_since(p.created) >= self.ttl => {
                Err(SessionError::Expired)
            }
            Some(_) => Err(SessionError::NotAttested),
            None => Err(SessionError::Unknown),
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.pending.map.len(), self.attested.map.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn limits(pending: usize, per_client: usize, attested: usize) -> Limits {
        Limits {
            pending,
            pending_per_client: per_client,
            attested,
        }
    }

    fn challenge(n: u8) -> Challenge {
        Challenge {
            nonce: format!("nonce-{n}"),
            tee: "sample".into(),
            job: Some("cnn".into()),
            model: None,
            receipt_key: None,
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
        let mut s = Sessions::new(Duration::from_secs(60), limits(10, 10, 10));
        s.insert("a".into(), challenge(1), A, t0).unwrap();
        assert_eq!(s.attested("a", t0).unwrap_err(), SessionError::NotAttested);
        assert_eq!(s.spend("a", t0).unwrap(), challenge(1));
        // The nonce is spent before the evidence is checked: a second attest is a replay,
        // and a failed attestation leaves the session unattested.
        assert_eq!(s.spend("a", t0).unwrap_err(), SessionError::Replayed);
        assert_eq!(s.attested("a", t0).unwrap_err(), SessionError::NotAttested);
        s.attest("a", key(), claims(), t0);
        let a = s.attested("a", t0).unwrap();
        assert_eq!(a.job.as_deref(), Some("cnn"));
        assert_eq!(a.claims, claims());
        // Attested sessions may fetch several resources, but never attest again.
        s.attested("a", t0).unwrap();
        assert_eq!(s.spend("a", t0).unwrap_err(), SessionError::Replayed);
        assert_eq!(s.len(), (0, 1));
    }

    #[test]
    fn unknown_and_expired_sessions_are_refused() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(5);
        let mut s = Sessions::new(ttl, limits(10, 10, 10));
        assert_eq!(s.spend("x", t0).unwrap_err(), SessionError::Unknown);
        assert_eq!(s.attested("x", t0).unwrap_err(), SessionError::Unknown);
        s.insert("a".into(), challenge(1), A, t0).unwrap();
        assert_eq!(s.spend("a", t0 + ttl).unwrap_err(), SessionError::Expired);
        s.insert("b".into(), challenge(2), A, t0).unwrap();
        s.spend("b", t0).unwrap();
        s.attest("b", key(), claims(), t0);
        assert_eq!(
            s.attested("b", t0 + ttl).unwrap_err(),
            SessionError::Expired
        );
        // Attesting a session whose nonce was not spent does nothing.
        s.insert("c".into(), challenge(3), A, t0).unwrap();
        s.attest("c", key(), claims(), t0);
        assert_eq!(s.attested("c", t0).unwrap_err(), SessionError::NotAttested);
    }

    #[test]
    fn the_pending_table_is_bounded_and_drops_expired_then_oldest_first() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut s = Sessions::new(ttl, limits(3, 10, 10));
        for (i, sid) in ["a", "b", "c"].iter().enumerate() {
            s.insert(sid.to_string(), challenge(i as u8), A, at(i as u64))
                .unwrap();
        }
        // Full: the oldest pending session makes room.
        s.insert("d".into(), challenge(4), A, at(3)).unwrap();
        assert_eq!(s.len(), (3, 0));
        assert_eq!(s.spend("a", at(3)).unwrap_err(), SessionError::Unknown);
        s.spend("b", at(3)).unwrap();
        // Later, b and c have expired: both go, d stays.
        s.insert("e".into(), challenge(5), A, at(12)).unwrap();
        assert_eq!(s.len(), (2, 0));
        s.spend("d", at(12)).unwrap();
        s.spend("e", at(12)).unwrap();
    }

    /// One client cannot fill the pending table: it gets a refusal at its own limit,
    /// and what it opened counts again once it attests or its sessions are gone.
    #[test]
    fn one_client_holds_at_most_its_share_of_pending_sessions() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut s = Sessions::new(ttl, limits(100, 2, 10));
        s.insert("a1".into(), challenge(1), A, t0).unwrap();
        s.insert("a2".into(), challenge(2), A, t0).unwrap();
        assert_eq!(
            s.insert("a3".into(), challenge(3), A, t0).unwrap_err(),
            SessionError::TooManyPending
        );
        // Another client is not affected.
        s.insert("b1".into(), challenge(4), B, t0).unwrap();
        // An attested session leaves A's pending count.
        s.spend("a1", t0).unwrap();
        s.attest("a1", key(), claims(), t0);
        s.insert("a3".into(), challenge(3), A, t0).unwrap();
        // Expired ones too.
        s.insert("a4".into(), challenge(5), A, t0 + ttl).unwrap();
    }

    /// Flooding the pending table, from however many addresses, never drops an
    /// attested session: those only verified evidence creates.
    #[test]
    fn a_flood_of_challenges_does_not_drop_attested_sessions() {
        let t0 = Instant::now();
        let mut s = Sessions::new(Duration::from_secs(300), limits(1000, 4, 1000));
        s.insert("job".into(), challenge(0), A, t0).unwrap();
        s.spend("job", t0).unwrap();
        s.attest("job", key(), claims(), t0);
        for i in 0..100_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i / 4));
            s.insert(format!("{i}"), challenge(0), ip, t0).unwrap();
        }
        assert_eq!(s.len(), (1000, 1));
        assert!(s.pending.order.len() <= 1000);
        s.attested("job", t0).unwrap();
        assert!(s.per_client.len() <= 1000);
    }
}
