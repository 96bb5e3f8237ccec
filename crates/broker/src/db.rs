//! The broker's state in SQLite (WAL, `synchronous=FULL`): registered datasets with
//! their wrapped keys, policies and release counts, and the hash-chained audit log.
//!
//! One writer thread owns the write connection. Requests queue to it; it applies every
//! queued request in one transaction (each in its own savepoint), commits, and only then
//! answers them: a decision and its audit entry are durable before any reply is sent,
//! and concurrent clients share one fsync (group commit).

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::{params, Connection, OptionalExtension};

use crate::audit::{self, AuditKey, Entry};
use crate::policy::Policy;
use crate::verifier::Claims;

/// A registered dataset as stored.
#[derive(Debug, Clone)]
pub struct DatasetRow {
    /// Dataset id (hex).
    pub id: String,
    /// Nonce of the wrapped key.
    pub nonce: Vec<u8>,
    /// The key wrapped under the broker's master key.
    pub wrapped_key: Vec<u8>,
    /// Registered manifest digest (hex).
    pub manifest_sha256: String,
    /// Registered manifest version.
    pub version: u64,
    /// Policy text (TOML).
    pub policy: String,
    /// Releases so far.
    pub releases: u64,
    /// Revoked.
    pub revoked: bool,
}

/// Why a release was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No such dataset.
    Unknown,
    /// Revoked by the owner.
    Revoked,
    /// The policy refused (reason).
    Policy(String),
}

/// Why a registration was refused: each is the owner's mistake, or an attempt to undo
/// a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    /// The dataset was revoked: revocation is final for a dataset id (the key may have
    /// leaked). Seal the data again under a new key to release it again.
    #[error("dataset {0} was revoked, and revocation is final: seal the data again (a new dataset id and key) to release it")]
    Revoked(String),
    /// A newer version is registered (rollback).
    #[error("registered version {registered} is newer than {offered}")]
    Older {
        /// Registered.
        registered: u64,
        /// Offered.
        offered: u64,
    },
    /// The same version is registered with another manifest (fork).
    #[error("version {0} is registered with another manifest digest")]
    Fork(u64),
}

/// A storage failure (our bug or a broken disk).
#[derive(Debug, thiserror::Error)]
#[error("broker database: {0}")]
pub struct DbError(pub String);

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError(e.to_string())
    }
}

type Reply<T> = mpsc::SyncSender<Result<T, DbError>>;
/// Answers one request once its transaction committed (or failed to).
type Deferred = Box<dyn FnOnce(Option<&DbError>)>;

enum Op {
    Register {
        row: DatasetRow,
        entry: Entry,
        reply: Reply<Result<(), Conflict>>,
    },
    Revoke {
        id: String,
        entry: Entry,
        reply: Reply<bool>,
    },
    Release {
        id: String,
        claims: Claims,
        job: Option<String>,
        model: Option<String>,
        now: u64,
        entry: Entry,
        /// On grant: the row, and the sequence number of the release's audit entry.
        reply: Reply<Result<(DatasetRow, u64), Denial>>,
    },
    Audit {
        entry: Entry,
        reply: Reply<()>,
    },
    Usage {
        entry: Entry,
        /// Ok(seq of the entry), or Err(the last report number recorded).
        reply: Reply<Result<u64, u64>>,
    },
}

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Op>,
    path: PathBuf,
    audit_key: AuditKey,
}

fn open(path: &Path) -> Result<Connection, DbError> {
    let c = Connection::open(path)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS datasets(
            id TEXT PRIMARY KEY, nonce BLOB NOT NULL, wrapped_key BLOB NOT NULL,
            manifest_sha256 TEXT NOT NULL, version INTEGER NOT NULL, policy TEXT NOT NULL,
            releases INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE IF NOT EXISTS audit(
            seq INTEGER PRIMARY KEY, entry TEXT NOT NULL, prev BLOB NOT NULL, hash BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS usage_last(
            release_seq INTEGER PRIMARY KEY, report INTEGER NOT NULL);",
    )?;
    Ok(c)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DatasetRow> {
    Ok(DatasetRow {
        id: r.get(0)?,
        nonce: r.get(1)?,
        wrapped_key: r.get(2)?,
        manifest_sha256: r.get(3)?,
        version: r.get::<_, i64>(4)? as u64,
        policy: r.get(5)?,
        releases: r.get::<_, i64>(6)? as u64,
        revoked: r.get::<_, i64>(7)? != 0,
    })
}

const SELECT: &str = "SELECT id, nonce, wrapped_key, manifest_sha256, version, policy, releases, revoked FROM datasets";

impl Db {
    /// Opens (creating if needed) the database and starts the writer thread, which
    /// chains audit entries under `audit_key`.
    pub fn open(path: &Path, audit_key: AuditKey) -> Result<Db, DbError> {
        let mut conn = open(path)?;
        let key = audit_key.clone();
        let (tx, rx) = mpsc::channel::<Op>();
        let mut head = audit::head(&conn)?;
        std::thread::Builder::new()
            .name("blindfold-broker-db".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut ops = vec![first];
                    while ops.len() < 256 {
                        match rx.try_recv() {
                            Ok(op) => ops.push(op),
                            Err(_) => break,
                        }
                    }
                    let saved_head = head.clone();
                    let mut replies: Vec<Deferred> = vec![];
                    let result = (|| -> Result<(), DbError> {
                        let txn = conn.transaction()?;
                        for op in ops {
                            replies.push(apply(&txn, &key, op, &mut head));
                        }
                        txn.commit()?;
                        Ok(())
                    })();
                    if result.is_err() {
                        head = saved_head;
                    }
                    let err = result.err();
                    for r in replies {
                        r(err.as_ref());
                    }
                }
            })
            .map_err(|e| DbError(e.to_string()))?;
        Ok(Db {
            tx,
            path: path.to_owned(),
            audit_key,
        })
    }

    fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Op) -> Result<T, DbError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.tx
            .send(make(tx))
            .map_err(|_| DbError("writer thread stopped".into()))?;
        rx.recv()
            .map_err(|_| DbError("writer thread stopped".into()))?
    }

    /// Registers a dataset, or re-registers it with a newer version (or the same
    /// version and manifest, to change its policy). Refused: a revoked dataset, an older
    /// version, the same version with another manifest.
    pub fn register(&self, row: DatasetRow, entry: Entry) -> Result<Result<(), Conflict>, DbError> {
        self.call(|reply| Op::Register { row, entry, reply })
    }

    /// Revokes a dataset; false if unknown.
    pub fn revoke(&self, id: String, entry: Entry) -> Result<bool, DbError> {
        self.call(|reply| Op::Revoke { id, entry, reply })
    }

    /// Decides a release: revocation, policy, count; appends `entry` completed with the
    /// outcome. On grant the count is incremented in the same transaction.
    pub fn release(
        &self,
        id: String,
        claims: Claims,
        job: Option<String>,
        model: Option<String>,
        now: u64,
        entry: Entry,
    ) -> Result<Result<(DatasetRow, u64), Denial>, DbError> {
        self.call(|reply| Op::Release {
            id,
            claims,
            job,
            model,
            now,
            entry,
            reply,
        })
    }

    /// Appends an audit entry.
    pub fn audit(&self, entry: Entry) -> Result<(), DbError> {
        self.call(|reply| Op::Audit { entry, reply })
    }

    /// Records a serving job's usage report (`entry.usage`), unless a report with the
    /// same or a higher number is recorded for the same release: `Err(last)` then.
    pub fn usage(&self, entry: Entry) -> Result<Result<u64, u64>, DbError> {
        self.call(|reply| Op::Usage { entry, reply })
    }

    /// The audit entry `seq`, if any.
    pub fn entry(&self, seq: u64) -> Result<Option<Entry>, DbError> {
        let c = self.reader()?;
        let text: Option<String> = c
            .query_row(
                "SELECT entry FROM audit WHERE seq = ?1",
                [seq as i64],
                |r| r.get(0),
            )
            .optional()?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| DbError(format!("audit entry: {e}"))))
            .transpose()
    }

    /// A read-only connection (WAL readers do not block the writer).
    pub fn reader(&self) -> Result<Connection, DbError> {
        open(&self.path)
    }

    /// Checks the audit chain (§6).
    pub fn verify_audit(&self) -> Result<Result<audit::Head, (u64, String)>, DbError> {
        audit::verify(&self.reader()?, &self.audit_key)
    }

    /// The registered dataset or model `id`, if any.
    pub fn dataset(&self, id: &str) -> Result<Option<DatasetRow>, DbError> {
        let c = self.reader()?;
        Ok(c.query_row(&format!("{SELECT} WHERE id = ?1"), [id], row)
            .optional()?)
    }

    /// Every registered dataset.
    pub fn datasets(&self) -> Result<Vec<DatasetRow>, DbError> {
        let c = self.reader()?;
        let mut st = c.prepare(SELECT)?;
        let rows = st.query_map([], row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

fn reply_after_commit<T: 'static>(reply: Reply<T>, value: Result<T, DbError>) -> Deferred {
    Box::new(move |commit_err| {
        let v = match commit_err {
            Some(e) => Err(DbError(format!("commit failed: {e}"))),
            None => value,
        };
        let _ = reply.send(v);
    })
}

fn apply(
    txn: &rusqlite::Transaction<'_>,
    key: &AuditKey,
    op: Op,
    head: &mut audit::Head,
) -> Deferred {
    match op {
        Op::Register {
            row: r,
            entry,
            reply,
        } => {
            let res = with_savepoint(txn, head, |sp, head| {
                let old: Option<(u64, String, bool)> = sp
                    .query_row(
                        "SELECT version, manifest_sha256, revoked FROM datasets WHERE id = ?1",
                        [&r.id],
                        |x| {
                            Ok((
                                x.get::<_, i64>(0)? as u64,
                                x.get(1)?,
                                x.get::<_, i64>(2)? != 0,
                            ))
                        },
                    )
                    .optional()?;
                let conflict = match old {
                    Some((_, _, true)) => Some(Conflict::Revoked(r.id.clone())),
                    Some((v, _, _)) if v > r.version => Some(Conflict::Older {
                        registered: v,
                        offered: r.version,
                    }),
                    Some((v, d, _)) if v == r.version && d != r.manifest_sha256 => {
                        Some(Conflict::Fork(v))
                    }
                    _ => None,
                };
                if let Some(c) = conflict {
                    audit::append(sp, key, head, entry.outcome("denied", &c.to_string()))?;
                    return Ok(Err(c));
                }
                sp.execute(
                    "INSERT INTO datasets(id, nonce, wrapped_key, manifest_sha256, version, policy, releases, revoked)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0)
                     ON CONFLICT(id) DO UPDATE SET nonce = ?2, wrapped_key = ?3, manifest_sha256 = ?4,
                       version = ?5, policy = ?6",
                    params![r.id, r.nonce, r.wrapped_key, r.manifest_sha256, r.version as i64, r.policy],
                )?;
                audit::append(sp, key, head, entry.outcome("granted", "registered"))?;
                Ok(Ok(()))
            });
            reply_after_commit(reply, res)
        }
        Op::Revoke { id, entry, reply } => {
            let res = with_savepoint(txn, head, |sp, head| {
                let n = sp.execute("UPDATE datasets SET revoked = 1 WHERE id = ?1", [&id])?;
                audit::append(
                    sp,
                    key,
                    head,
                    entry.outcome(
                        if n > 0 { "granted" } else { "denied" },
                        if n > 0 { "revoked" } else { "unknown dataset" },
                    ),
                )?;
                Ok(n > 0)
            });
            reply_after_commit(reply, res)
        }
        Op::Release {
            id,
            claims,
            job,
            model,
            now,
            entry,
            reply,
        } => {
            let res = with_savepoint(txn, head, |sp, head| {
                let r = sp
                    .query_row(&format!("{SELECT} WHERE id = ?1"), [&id], row)
                    .optional()?;
                let decision = match &r {
                    None => Err(Denial::Unknown),
                    Some(r) if r.revoked => Err(Denial::Revoked),
                    Some(r) => match Policy::parse(&r.policy) {
                        Err(e) => Err(Denial::Policy(format!("stored policy unreadable: {e}"))),
                        Ok(p) => p
                            .evaluate(&claims, job.as_deref(), model.as_deref(), now, r.releases)
                            .map_err(Denial::Policy),
                    },
                };
                match (decision, r) {
                    (Ok(()), Some(mut r)) => {
                        sp.execute(
                            "UPDATE datasets SET releases = releases + 1 WHERE id = ?1",
                            [&id],
                        )?;
                        r.releases += 1;
                        let reason = if claims.insecure {
                            "released (insecure_sample: no hardware root of trust)"
                        } else {
                            "released"
                        };
                        audit::append(sp, key, head, entry.outcome("granted", reason))?;
                        Ok(Ok((r, head.seq)))
                    }
                    (Err(d), _) => {
                        let reason = match &d {
                            Denial::Unknown => "unknown dataset".to_string(),
                            Denial::Revoked => "revoked".to_string(),
                            Denial::Policy(p) => p.clone(),
                        };
                        audit::append(sp, key, head, entry.outcome("denied", &reason))?;
                        Ok(Err(d))
                    }
                    (Ok(()), None) => unreachable!("a grant needs a row"),
                }
            });
            reply_after_commit(reply, res)
        }
        Op::Audit { entry, reply } => {
            let res = with_savepoint(txn, head, |sp, head| audit::append(sp, key, head, entry));
            reply_after_commit(reply, res)
        }
        Op::Usage { entry, reply } => {
            let res = with_savepoint(txn, head, |sp, head| {
                let (release, report) = match &entry.usage {
                    Some(u) => (u.release_seq, u.report),
                    None => return Err(DbError("a usage entry without usage".into())),
                };
                // The last report recorded per release, kept beside the chain (which
                // holds every report) so that a check costs one lookup, not a scan.
                let last: Option<i64> = sp
                    .query_row(
                        "SELECT report FROM usage_last WHERE release_seq = ?1",
                        [release as i64],
                        |r| r.get(0),
                    )
                    .optional()?;
                let last = last.unwrap_or(0) as u64;
                if report <= last {
                    return Ok(Err(last));
                }
                audit::append(sp, key, head, entry)?;
                sp.execute(
                    "INSERT INTO usage_last(release_seq, report) VALUES (?1, ?2)
                     ON CONFLICT(release_seq) DO UPDATE SET report = excluded.report",
                    params![release as i64, report as i64],
                )?;
                Ok(Ok(head.seq))
            });
            reply_after_commit(reply, res)
        }
    }
}

fn with_savepoint<T>(
    txn: &rusqlite::Transaction<'_>,
    head: &mut audit::Head,
    f: impl FnOnce(&rusqlite::Connection, &mut audit::Head) -> Result<T, DbError>,
) -> Result<T, DbError> {
    txn.execute_batch("SAVEPOINT op")?;
    let before = head.clone();
    match f(txn, head) {
        Ok(v) => {
            txn.execute_batch("RELEASE op")?;
            Ok(v)
        }
        Err(e) => {
            *head = before;
            txn.execute_batch("ROLLBACK TO op; RELEASE op")?;
            Err(e)
        }
    }
}
