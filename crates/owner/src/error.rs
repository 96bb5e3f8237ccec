//! Errors of the owner's tools, by who is at fault.

use std::path::PathBuf;

/// An error of the owner's tools. Each variant's doc says who is at fault; none carries
/// plaintext. Not `non_exhaustive`: the CLI gives every variant its exit status by an
/// exhaustive match.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's input is not what the importer or command expects (user's fault).
    #[error("{0}")]
    BadInput(String),
    /// Sealed data failed a check: tampering, truncation, a wrong key or a mix of
    /// objects that do not belong together (storage's or an attacker's fault).
    #[error("{at}: {source}")]
    Integrity {
        /// Where: the dataset location, with the object path when known.
        at: String,
        /// What the format layer found.
        #[source]
        source: blindfold_format::Error,
    },
    /// The sealed data is well-formed for another version of blindfold, or malformed
    /// before any tag could be checked.
    #[error("{at}: {source}")]
    Format {
        /// Where.
        at: String,
        /// What the format layer found.
        #[source]
        source: blindfold_format::Error,
    },
    /// A shard the authenticated manifest lists is not in storage.
    #[error("{location}: shard {path} is missing (listed in the manifest)")]
    MissingShard {
        /// The dataset location.
        location: String,
        /// The shard's object path.
        path: String,
    },
    /// No sealed dataset at the location.
    #[error("{0}: no sealed dataset here (no manifest.bfm)")]
    NoDataset(String),
    /// The manifest is not the version the owner recorded or registered: older
    /// (rollback), another manifest of the same version (fork), or newer but never
    /// registered (made by another holder of the dataset key).
    #[error("{location}: {what}")]
    RolledBack {
        /// The dataset location.
        location: String,
        /// Recorded vs found.
        what: String,
    },
    /// A sealed output that nothing authenticates (the plaintext baseline's), opened
    /// without accepting that.
    #[error("{0}")]
    Unauthenticated(String),
    /// The key store is missing, locked, or has no key for this dataset.
    #[error("key store: {0}")]
    KeyStore(String),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] blindfold_store::Error),
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An output already exists and will not be overwritten.
    #[error("{0} already exists; refusing to overwrite it")]
    OutputExists(String),
    /// A failure that should not happen: our bug.
    #[error("internal error (a bug in blindfold): {0}")]
    Bug(String),
}

impl From<blindfold_dataset::Error> for Error {
    /// The reader's and importers' errors, variant for variant.
    fn from(e: blindfold_dataset::Error) -> Self {
        use blindfold_dataset::Error as D;
        match e {
            D::BadInput(m) => Error::BadInput(m),
            D::Integrity { at, source } => Error::Integrity { at, source },
            D::Format { at, source } => Error::Format { at, source },
            D::MissingShard { location, path } => Error::MissingShard { location, path },
            D::NoDataset(l) => Error::NoDataset(l),
            D::RolledBack { location, what } => Error::RolledBack { location, what },
            D::Storage(s) => Error::Storage(s),
            D::Io { path, source } => Error::Io { path, source },
            D::Bug(m) => Error::Bug(m),
        }
    }
}

impl Error {
    /// Wraps a format error found at `at`, sorting integrity failures from the rest.
    pub fn sealed(at: impl Into<String>, source: blindfold_format::Error) -> Self {
        let at = at.into();
        match source {
            blindfold_format::Error::InvalidArgument(_) | blindfold_format::Error::Internal(_) => {
                Error::Bug(format!("{at}: {source}"))
            }
            s if s.is_integrity_failure() => Error::Integrity { at, source: s },
            s => Error::Format { at, source: s },
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
