//! One fault per exit status, for both binaries (`blindfold-job` and `blindfold`). The
//! errors of the crates a job links convert to a [`Failure`] here, each by an exhaustive
//! match (no catch-all arm: a new error variant does not compile until it is given its
//! fault); the CLI adds the owner's and the broker's. `--help`'s exit-status table is
//! written from [`Fault::ALL`].

use blindfold_protocol::errors::ErrorCode;

/// Who is at fault when a command fails, one exit status each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The command line, an input file, a policy, or an output that already exists.
    BadInput,
    /// Sealed data or a sealed output failed a check: tampering, truncation, a wrong
    /// key, a malformed or foreign object, a rolled-back or unregistered version, a
    /// broken audit chain, a broker reply that does not decrypt.
    Integrity,
    /// The owner's key store: missing, locked, damaged, or without the dataset's key.
    KeyStore,
    /// Reading or writing files, storage, the network or a device failed.
    Io,
    /// The key broker refused: policy, revocation, evidence, an unknown dataset.
    Denied,
    /// A bug in blindfold.
    Internal,
}

impl Fault {
    /// Every fault, in the order of their exit statuses.
    pub const ALL: [Fault; 6] = [
        Fault::BadInput,
        Fault::Integrity,
        Fault::KeyStore,
        Fault::Io,
        Fault::Denied,
        Fault::Internal,
    ];

    /// The faults the job binary can end with: every one but the key store's, which it
    /// does not hold (checked by `every_error_variant_has_its_fault`).
    pub const JOB: [Fault; 5] = [
        Fault::BadInput,
        Fault::Integrity,
        Fault::Io,
        Fault::Denied,
        Fault::Internal,
    ];

    /// The exit status.
    pub fn code(self) -> u8 {
        match self {
            Fault::BadInput => 3,
            Fault::Integrity => 4,
            Fault::KeyStore => 5,
            Fault::Io => 6,
            Fault::Denied => 7,
            Fault::Internal => 70,
        }
    }

    /// What the status means, for `--help`.
    pub fn meaning(self) -> &'static str {
        match self {
            Fault::BadInput => "bad input (arguments, files, a policy, an output that exists)",
            Fault::Integrity => {
                "integrity failure (tampering, truncation, wrong key, rollback, unregistered version)"
            }
            Fault::KeyStore => "key store (missing, locked, damaged, no key for the dataset)",
            Fault::Io => "I/O, storage, network or device failure",
            Fault::Denied => "the key broker refused (policy, revocation, evidence, unknown dataset)",
            Fault::Internal => "internal error (a bug in blindfold)",
        }
    }
}

/// The exit-status table of `--help`, for a binary that can end with `faults`.
pub fn exit_table(faults: &[Fault]) -> String {
    let mut s = String::from(
        "Exit status:\n  0   success\n  2   usage (unknown option, missing argument)\n",
    );
    for &f in faults {
        s.push_str(&format!("  {:<3} {}\n", f.code(), f.meaning()));
    }
    s
}

/// A failed command: its fault and the one line printed for it.
#[derive(Debug)]
pub struct Failure {
    /// Who is at fault (the exit status).
    pub fault: Fault,
    /// What happened (never plaintext or key material).
    pub message: String,
}

impl Failure {
    /// A failure of `fault` saying `message`.
    pub fn new(fault: Fault, message: impl Into<String>) -> Self {
        Failure {
            fault,
            message: message.into(),
        }
    }

    /// Bad input saying `message`.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Failure::new(Fault::BadInput, message)
    }

    /// Our bug, saying `message`.
    pub fn bug(message: impl std::fmt::Display) -> Self {
        Failure::new(
            Fault::Internal,
            format!("internal error (a bug in blindfold): {message}"),
        )
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The fault of a broker's error reply, by its code.
pub fn of_code(code: ErrorCode) -> Fault {
    match code {
        // Decisions about the job or the request's right to the key.
        ErrorCode::PolicyDenied
        | ErrorCode::Revoked
        | ErrorCode::EvidenceRejected
        | ErrorCode::ReportDataMismatch
        | ErrorCode::UnsupportedTee
        | ErrorCode::NotFound
        | ErrorCode::Unauthorized
        | ErrorCode::Conflict => Fault::Denied,
        // The request was not one the broker takes: what we sent, or were given to send.
        ErrorCode::MalformedRequest
        | ErrorCode::ProtocolVersion
        | ErrorCode::UnsupportedTeeKey
        | ErrorCode::PayloadTooLarge => Fault::BadInput,
        // The session broke down or the broker is busy or failing: try again.
        ErrorCode::TokenNotFound
        | ErrorCode::SessionExpired
        | ErrorCode::NonceReplayed
        | ErrorCode::TooManyRequests
        | ErrorCode::Internal => Fault::Io,
    }
}

/// The fault of a storage error.
pub fn of_store(e: &blindfold_store::Error) -> Fault {
    match e {
        blindfold_store::Error::NotFound { .. } | blindfold_store::Error::BadLocation(..) => {
            Fault::BadInput
        }
        blindfold_store::Error::Backend { .. } => Fault::Io,
        blindfold_store::Error::Runtime(_) => Fault::Internal,
    }
}

/// The fault of a sealed-format error.
pub fn of_format(e: &blindfold_format::Error) -> Fault {
    use blindfold_format::Error as F;
    match e {
        F::Malformed { .. }
        | F::Unsupported { .. }
        | F::WrongKey { .. }
        | F::Tampered { .. }
        | F::Length { .. }
        | F::Mismatch { .. } => Fault::Integrity,
        F::InvalidArgument(_) | F::Internal(_) => Fault::Internal,
    }
}

/// The fault of an error of reading a sealed dataset or importing files.
pub fn of_dataset(e: &blindfold_dataset::Error) -> Fault {
    use blindfold_dataset::Error as D;
    match e {
        D::BadInput(_) | D::NoDataset(_) => Fault::BadInput,
        D::Integrity { .. } | D::Format { .. } | D::MissingShard { .. } | D::RolledBack { .. } => {
            Fault::Integrity
        }
        D::Storage(s) => of_store(s),
        D::Io { .. } => Fault::Io,
        D::Bug(_) => Fault::Internal,
    }
}

/// The fault of a key-broker client's error.
pub fn of_attest(e: &blindfold_attest::Error) -> Fault {
    use blindfold_attest::Error as A;
    match e {
        A::Denied { code, .. } => of_code(*code),
        A::Transport { .. } => Fault::Io,
        A::Evidence(_) | A::BadInput(_) => Fault::BadInput,
        A::BadReply(_) => Fault::Integrity,
    }
}

/// The fault of a training job's error.
pub fn of_zone(e: &blindfold_zone::Error) -> Fault {
    use blindfold_zone::Error as Z;
    match e {
        Z::BadInput(_) => Fault::BadInput,
        Z::Data(d) => of_dataset(d),
        Z::Store(s) => of_store(s),
        Z::Broker(b) => of_attest(b),
        Z::Device(_) => Fault::Io,
        Z::Bug(_) => Fault::Internal,
    }
}

macro_rules! failure_from {
    ($($t:ty => $f:ident, $prefix:literal;)*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Failure::new($f(&e), format!(concat!($prefix, "{}"), e))
            }
        }
    )*};
}

failure_from! {
    blindfold_dataset::Error => of_dataset, "";
    blindfold_store::Error => of_store, "";
    blindfold_format::Error => of_format, "";
    blindfold_attest::Error => of_attest, "key broker: ";
    blindfold_zone::Error => of_zone, "";
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_fault_has_its_own_status_and_a_line_in_the_help() {
        let codes: HashSet<u8> = Fault::ALL.iter().map(|f| f.code()).collect();
        assert_eq!(codes.len(), Fault::ALL.len());
        assert!(!codes.contains(&0) && !codes.contains(&1) && !codes.contains(&2));
        let t = exit_table(&Fault::ALL);
        for f in Fault::ALL {
            assert!(
                t.contains(&format!("  {:<3} {}", f.code(), f.meaning())),
                "{f:?} missing from\n{t}"
            );
        }
    }

    fn io() -> std::io::Error {
        std::io::Error::other("x")
    }

    fn store_errors() -> Vec<(blindfold_store::Error, Fault)> {
        use blindfold_store::Error as S;
        vec![
            (
                S::NotFound {
                    location: "l".into(),
                    path: "p".into(),
                },
                Fault::BadInput,
            ),
            (S::BadLocation("l".into(), "w".into()), Fault::BadInput),
            (
                S::Backend {
                    location: "l".into(),
                    op: "get",
                    path: "p".into(),
                    source: Box::new(object_store_error()),
                },
                Fault::Io,
            ),
            (S::Runtime(io()), Fault::Internal),
        ]
    }

    fn object_store_error() -> object_store::Error {
        object_store::Error::Generic {
            store: "s3",
            source: Box::new(io()),
        }
    }

    fn format_errors() -> Vec<(blindfold_format::Error, Fault)> {
        use blindfold_format::{Error as F, Object};
        let o = Object::Manifest;
        vec![
            (
                F::Malformed {
                    object: o.clone(),
                    what: "w".into(),
                },
                Fault::Integrity,
            ),
            (
                F::Unsupported {
                    object: o.clone(),
                    what: "w".into(),
                },
                Fault::Integrity,
            ),
            (F::WrongKey { object: o.clone() }, Fault::Integrity),
            (
                F::Tampered {
                    object: o.clone(),
                    what: "w".into(),
                },
                Fault::Integrity,
            ),
            (
                F::Length {
                    object: o.clone(),
                    what: "w".into(),
                },
                Fault::Integrity,
            ),
            (
                F::Mismatch {
                    object: o,
                    what: "w".into(),
                },
                Fault::Integrity,
            ),
            (F::InvalidArgument("w".into()), Fault::Internal),
            (F::Internal("w"), Fault::Internal),
        ]
    }

    fn dataset_errors() -> Vec<(blindfold_dataset::Error, Fault)> {
        use blindfold_dataset::Error as D;
        let mut v = vec![
            (D::BadInput("x".into()), Fault::BadInput),
            (
                D::Integrity {
                    at: "a".into(),
                    source: blindfold_format::Error::WrongKey {
                        object: blindfold_format::Object::Manifest,
                    },
                },
                Fault::Integrity,
            ),
            (
                D::Format {
                    at: "a".into(),
                    source: blindfold_format::Error::Unsupported {
                        object: blindfold_format::Object::Manifest,
                        what: "v9".into(),
                    },
                },
                Fault::Integrity,
            ),
            (
                D::MissingShard {
                    location: "l".into(),
                    path: "p".into(),
                },
                Fault::Integrity,
            ),
            (D::NoDataset("l".into()), Fault::BadInput),
            (
                D::RolledBack {
                    location: "l".into(),
                    what: "w".into(),
                },
                Fault::Integrity,
            ),
            (
                D::Io {
                    path: "p".into(),
                    source: io(),
                },
                Fault::Io,
            ),
            (D::Bug("b".into()), Fault::Internal),
        ];
        for (s, f) in store_errors() {
            v.push((D::Storage(s), f));
        }
        v
    }

    fn attest_errors() -> Vec<(blindfold_attest::Error, Fault)> {
        use blindfold_attest::Error as A;
        let mut v = vec![
            (
                A::Transport {
                    url: "u".into(),
                    what: "w".into(),
                },
                Fault::Io,
            ),
            (A::Evidence("e".into()), Fault::BadInput),
            (A::BadReply("r".into()), Fault::Integrity),
            (A::BadInput("i".into()), Fault::BadInput),
        ];
        for &code in ErrorCode::ALL {
            v.push((
                A::Denied {
                    code,
                    detail: "d".into(),
                },
                of_code(code),
            ));
        }
        v
    }

    /// Every variant of every error a job meets, with the fault (and so the exit
    /// status) it must give.
    #[test]
    fn every_error_variant_has_its_fault() {
        for (e, f) in store_errors() {
            assert_eq!(Failure::from(e).fault, f);
        }
        for (e, f) in format_errors() {
            assert_eq!(Failure::from(e).fault, f);
        }
        for (e, f) in dataset_errors() {
            assert_eq!(Failure::from(e).fault, f);
        }
        for (e, f) in attest_errors() {
            assert_eq!(Failure::from(e).fault, f);
        }
        use blindfold_zone::Error as Z;
        let mut zone = vec![
            (Z::BadInput("x".into()), Fault::BadInput),
            (Z::Device("d".into()), Fault::Io),
            (Z::Bug("b".into()), Fault::Internal),
        ];
        zone.extend(dataset_errors().into_iter().map(|(e, f)| (Z::Data(e), f)));
        zone.extend(store_errors().into_iter().map(|(e, f)| (Z::Store(e), f)));
        zone.extend(attest_errors().into_iter().map(|(e, f)| (Z::Broker(e), f)));
        for (e, f) in zone {
            assert_eq!(Failure::from(e).fault, f);
            // What the job's --help lists covers everything its errors become.
            assert!(Fault::JOB.contains(&f), "{f:?} is not in the job's table");
        }
        assert!(!exit_table(&Fault::JOB).contains("key store"));
    }

    /// A refusal exits 7 whichever command met it (`train` and `broker fetch-key` used to
    /// differ).
    #[test]
    fn a_policy_denial_is_one_status() {
        let denied = || blindfold_attest::Error::Denied {
            code: ErrorCode::PolicyDenied,
            detail: "job".into(),
        };
        assert_eq!(Failure::from(denied()).fault.code(), 7);
        assert_eq!(
            Failure::from(blindfold_zone::Error::Broker(denied()))
                .fault
                .code(),
            7
        );
    }
}
