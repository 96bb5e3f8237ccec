//! Errors of the broker's own operations (its folder, its database, serving), by who is
//! at fault. Decisions about a job (denials) are not errors: they are replies with a
//! wire code (docs/broker-protocol.md §5) and an audit entry.

use std::path::PathBuf;

/// An error of the broker, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operator's input: a broker folder or file that is missing, malformed or
    /// already there, a TDX collateral file that is not one, an address that cannot be
    /// listened on.
    #[error("{0}")]
    BadInput(String),
    /// A policy that does not parse or breaks a rule (the owner's input).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A file of the broker's folder could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The service failed while serving (network, TLS).
    #[error("serving: {0}")]
    Serve(String),
    /// The database failed (a broken disk, or our bug).
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    /// The audit chain does not verify: an entry was edited, inserted or deleted, or the
    /// chain was recomputed without the broker's audit key (tampering).
    #[error("audit entry {seq}: {why}")]
    AuditBroken {
        /// The first entry that fails.
        seq: u64,
        /// What fails.
        why: String,
    },
    /// Something that should not happen: our bug or a broken platform.
    #[error("internal error (a bug in blindfold): {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub use blindfold_verify::policy::PolicyError;

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
