//! Errors of a training job, by who is at fault.

/// Why a training job stopped. Not `non_exhaustive`: the CLI gives every variant its
/// exit status by an exhaustive match.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's configuration or data does not fit (bad input).
    #[error("{0}")]
    BadInput(String),
    /// Reading the dataset failed: tampering (names the shard and chunk), a rollback,
    /// storage, or bad input, as the owner-side error says.
    #[error(transparent)]
    Data(#[from] blindfold_dataset::Error),
    /// Storage failed while writing outputs.
    #[error(transparent)]
    Store(#[from] blindfold_store::Error),
    /// The key broker refused the key (policy denial) or could not be reached.
    #[error("key broker: {0}")]
    Broker(#[from] blindfold_attest::Error),
    /// The GPU or its runtime failed (the environment's fault).
    #[error("device: {0}")]
    Device(String),
    /// Something that should not happen: our bug.
    #[error("internal error (a bug in blindfold): {0}")]
    Bug(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
