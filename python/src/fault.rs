//! Every error of the crates below, sorted by who is at fault and raised as one Python
//! exception class each. Messages name objects and reasons, never plaintext.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::PyErr;

create_exception!(
    blindfold,
    BlindfoldError,
    PyException,
    "Base class of every blindfold error."
);
create_exception!(
    blindfold,
    IntegrityError,
    BlindfoldError,
    "Sealed data or a broker reply failed a check: tampering, truncation, a rollback to an older manifest, or objects that do not belong together. Not the caller's fault; do not retry."
);
create_exception!(
    blindfold,
    PolicyDenied,
    BlindfoldError,
    "The key broker refused to release the key: the dataset's policy, the evidence, or a revocation. The broker's reason is in the message."
);
create_exception!(
    blindfold,
    BadInput,
    BlindfoldError,
    "The caller's arguments or files are not usable (wrong path, split, schema, URL)."
);
create_exception!(
    blindfold,
    StorageError,
    BlindfoldError,
    "Storage, a local file or the network to the broker failed: may succeed on retry."
);
create_exception!(
    blindfold,
    InternalError,
    BlindfoldError,
    "A failure that should not happen: a bug in blindfold."
);

/// Who is at fault.
#[derive(Debug)]
pub enum Fault {
    /// Tampering, rollback, a broken broker reply.
    Integrity(String),
    /// The broker said no.
    Denied(String),
    /// The caller's input.
    BadInput(String),
    /// Storage, files, network.
    Io(String),
    /// Ours.
    Bug(String),
}

// The sorting below is the Burn job's (`crates/job/src/fault.rs`: `of_dataset`,
// `of_store`, `of_attest`, `of_code`), so a script and the job blame the same party
// for the same failure.

impl From<blindfold_dataset::Error> for Fault {
    fn from(e: blindfold_dataset::Error) -> Fault {
        use blindfold_dataset::Error as E;
        let m = e.to_string();
        match e {
            // Sealed data that fails a check or is malformed: storage's or an
            // attacker's doing, never the caller's.
            E::Integrity { .. }
            | E::Format { .. }
            | E::RolledBack { .. }
            | E::MissingShard { .. } => Fault::Integrity(m),
            E::BadInput(_) | E::NoDataset(_) => Fault::BadInput(m),
            E::Storage(s) => s.into(),
            E::Io { .. } => Fault::Io(m),
            E::Bug(_) => Fault::Bug(m),
        }
    }
}

impl From<blindfold_attest::Error> for Fault {
    fn from(e: blindfold_attest::Error) -> Fault {
        use blindfold_attest::Error as E;
        use blindfold_protocol::errors::ErrorCode as C;
        let m = e.to_string();
        match e {
            E::Denied { code, .. } => match code {
                // Decisions about the job or its right to the key.
                C::PolicyDenied
                | C::Revoked
                | C::EvidenceRejected
                | C::ReportDataMismatch
                | C::UnsupportedTee
                | C::NotFound
                | C::Unauthorized
                | C::Conflict => Fault::Denied(m),
                // A request the broker does not take: what the caller gave us to send.
                C::MalformedRequest
                | C::ProtocolVersion
                | C::UnsupportedTeeKey
                | C::PayloadTooLarge => Fault::BadInput(m),
                // A session that broke down, a busy or failing broker: try again.
                C::TokenNotFound
                | C::SessionExpired
                | C::NonceReplayed
                | C::TooManyRequests
                | C::Internal => Fault::Io(m),
            },
            E::Transport { .. } => Fault::Io(m),
            E::Evidence(_) | E::BadInput(_) => Fault::BadInput(m),
            E::BadReply(_) => Fault::Integrity(m),
        }
    }
}

impl From<blindfold_store::Error> for Fault {
    fn from(e: blindfold_store::Error) -> Fault {
        use blindfold_store::Error as E;
        let m = e.to_string();
        match e {
            E::NotFound { .. } | E::BadLocation(..) => Fault::BadInput(m),
            E::Backend { .. } => Fault::Io(m),
            E::Runtime(_) => Fault::Bug(m),
        }
    }
}

impl From<Fault> for PyErr {
    fn from(f: Fault) -> PyErr {
        match f {
            Fault::Integrity(m) => IntegrityError::new_err(m),
            Fault::Denied(m) => PolicyDenied::new_err(m),
            Fault::BadInput(m) => BadInput::new_err(m),
            Fault::Io(m) => StorageError::new_err(m),
            Fault::Bug(m) => InternalError::new_err(m),
        }
    }
}
