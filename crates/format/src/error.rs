//! Errors of the sealed format, by who is at fault (§7 of `docs/sealed-format.md`).

use std::fmt;

/// Which object of a sealed dataset an error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// The manifest.
    Manifest,
    /// A shard, by split and index.
    Shard {
        /// Split name.
        split: String,
        /// Shard index within the split.
        index: u32,
    },
    /// A sealed output (model, metrics) by its object name.
    Output(String),
    /// Something without a name (a bare header being parsed, for example).
    Unnamed,
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Manifest => f.write_str("manifest"),
            Object::Shard { split, index } => write!(f, "shard {split}/{index}"),
            Object::Output(name) => write!(f, "sealed output {name}"),
            Object::Unnamed => f.write_str("object"),
        }
    }
}

/// An error from parsing, sealing or opening sealed data.
///
/// Decryption failures are deliberately coarse: they name the object and chunk, never
/// anything derived from the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The bytes are not a well-formed object of this format (bad input or corruption
    /// before any authentication could be attempted).
    #[error("{object}: malformed: {what}")]
    Malformed {
        /// Which object.
        object: Object,
        /// What is wrong, in words (never plaintext).
        what: String,
    },
    /// A format version or suite this build does not know.
    #[error("{object}: unsupported {what}")]
    Unsupported {
        /// Which object.
        object: Object,
        /// What is unsupported.
        what: String,
    },
    /// The key commitment does not match: this key is not the dataset's key.
    #[error("{object}: wrong key (the key commitment does not match)")]
    WrongKey {
        /// Which object.
        object: Object,
    },
    /// An authentication tag failed: the object was modified, or belongs elsewhere.
    #[error("{object}: tampered: {what}")]
    Tampered {
        /// Which object.
        object: Object,
        /// Which part failed ("header tag", "chunk 3", ...).
        what: String,
    },
    /// The object is shorter or longer than its header says.
    #[error("{object}: {what}")]
    Length {
        /// Which object.
        object: Object,
        /// "truncated at ..." or "trailing data ...".
        what: String,
    },
    /// The object does not match what the authenticated manifest says about it.
    #[error("{object}: does not match the manifest: {what}")]
    Mismatch {
        /// Which object.
        object: Object,
        /// Which field differs.
        what: String,
    },
    /// A caller passed arguments that cannot be sealed (API misuse).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A failure of the crypto library that should not happen: our bug or a broken
    /// platform.
    #[error("internal crypto failure: {0}")]
    Internal(&'static str),
}

impl Error {
    pub(crate) fn malformed(object: &Object, what: impl Into<String>) -> Self {
        Error::Malformed {
            object: object.clone(),
            what: what.into(),
        }
    }

    /// True when the error means the data was modified or does not belong together
    /// (tampering, truncation, a mismatch with the manifest, a wrong key).
    pub fn is_integrity_failure(&self) -> bool {
        matches!(
            self,
            Error::Tampered { .. }
                | Error::Length { .. }
                | Error::Mismatch { .. }
                | Error::WrongKey { .. }
        )
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
