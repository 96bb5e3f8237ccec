//! The CLI's failures: the job crate's [`Fault`] table and conversions
//! (`blindfold_job::fault`), plus the errors only the owner's tools and the broker meet.
//! Each converts by an exhaustive match, with no catch-all arm.

use blindfold_job::fault::of_store;
pub use blindfold_job::fault::Fault;

/// A failed command: its fault (the exit status) and the one line printed for it.
#[derive(Debug)]
pub struct Failure(pub blindfold_job::Failure);

impl std::ops::Deref for Failure {
    type Target = blindfold_job::Failure;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Failure {
    /// A failure of `fault` saying `message`.
    pub fn new(fault: Fault, message: impl Into<String>) -> Self {
        Failure(blindfold_job::Failure::new(fault, message))
    }

    /// Bad input saying `message`.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Failure(blindfold_job::Failure::bad_input(message))
    }

    /// Our bug, saying `message`.
    pub fn bug(message: impl std::fmt::Display) -> Self {
        Failure(blindfold_job::Failure::bug(message))
    }
}

/// The fault of an error of the owner's tools.
pub fn of_owner(e: &blindfold_owner::Error) -> Fault {
    use blindfold_owner::Error as O;
    match e {
        O::BadInput(_) | O::NoDataset(_) | O::OutputExists(_) => Fault::BadInput,
        O::Integrity { .. }
        | O::Format { .. }
        | O::MissingShard { .. }
        | O::RolledBack { .. }
        | O::Unauthenticated(_) => Fault::Integrity,
        O::KeyStore(_) => Fault::KeyStore,
        O::Storage(s) => of_store(s),
        O::Io { .. } => Fault::Io,
        O::Bug(_) => Fault::Internal,
    }
}

/// The fault of an error of the broker's own operations.
pub fn of_broker(e: &blindfold_broker::Error) -> Fault {
    use blindfold_broker::Error as B;
    match e {
        B::BadInput(_) | B::Policy(_) => Fault::BadInput,
        B::Io { .. } | B::Serve(_) | B::Db(_) => Fault::Io,
        B::AuditBroken { .. } => Fault::Integrity,
        B::Internal(_) => Fault::Internal,
    }
}

macro_rules! via_job {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Self {
                Failure(e.into())
            }
        }
    )*};
}

via_job!(
    blindfold_job::Failure,
    blindfold_dataset::Error,
    blindfold_store::Error,
    blindfold_format::Error,
    blindfold_attest::Error,
    blindfold_zone::Error
);

impl From<blindfold_owner::Error> for Failure {
    fn from(e: blindfold_owner::Error) -> Self {
        Failure::new(of_owner(&e), e.to_string())
    }
}

impl From<blindfold_broker::Error> for Failure {
    fn from(e: blindfold_broker::Error) -> Self {
        Failure::new(of_broker(&e), e.to_string())
    }
}

impl From<blindfold_broker::client::AdminError> for Failure {
    fn from(e: blindfold_broker::client::AdminError) -> Self {
        use blindfold_broker::client::AdminError as A;
        let fault = match &e {
            A::BadInput(_) => Fault::BadInput,
            A::Transport { .. } => Fault::Io,
            A::Refused { code, .. } => blindfold_job::fault::of_code(*code),
        };
        Failure::new(fault, e.to_string())
    }
}

impl From<blindfold_broker::PolicyError> for Failure {
    fn from(e: blindfold_broker::PolicyError) -> Self {
        blindfold_broker::Error::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::other("x")
    }

    fn store_errors() -> Vec<(blindfold_store::Error, Fault)> {
        // One of each fault the storage errors give (the job crate's tests walk them all).
        vec![
            (
                blindfold_store::Error::BadLocation("l".into(), "w".into()),
                Fault::BadInput,
            ),
            (blindfold_store::Error::Runtime(io()), Fault::Internal),
        ]
    }

    fn owner_errors() -> Vec<(blindfold_owner::Error, Fault)> {
        use blindfold_owner::Error as O;
        let mut v = vec![
            (O::BadInput("x".into()), Fault::BadInput),
            (
                O::Integrity {
                    at: "a".into(),
                    source: blindfold_format::Error::WrongKey {
                        object: blindfold_format::Object::Manifest,
                    },
                },
                Fault::Integrity,
            ),
            (
                O::Format {
                    at: "a".into(),
                    source: blindfold_format::Error::Unsupported {
                        object: blindfold_format::Object::Manifest,
                        what: "v9".into(),
                    },
                },
                Fault::Integrity,
            ),
            (
                O::MissingShard {
                    location: "l".into(),
                    path: "p".into(),
                },
                Fault::Integrity,
            ),
            (O::NoDataset("l".into()), Fault::BadInput),
            (
                O::RolledBack {
                    location: "l".into(),
                    what: "w".into(),
                },
                Fault::Integrity,
            ),
            (O::Unauthenticated("u".into()), Fault::Integrity),
            (O::KeyStore("k".into()), Fault::KeyStore),
            (
                O::Io {
                    path: "p".into(),
                    source: io(),
                },
                Fault::Io,
            ),
            (O::OutputExists("o".into()), Fault::BadInput),
            (O::Bug("b".into()), Fault::Internal),
        ];
        for (s, f) in store_errors() {
            v.push((O::Storage(s), f));
        }
        v
    }

    /// Every variant of the errors only the CLI meets, with its fault.
    #[test]
    fn every_owner_and_broker_error_variant_has_its_fault() {
        use blindfold_broker::client::AdminError as A;
        use blindfold_protocol::errors::ErrorCode;
        for (e, f) in [
            (A::BadInput("b".into()), Fault::BadInput),
            (
                A::Transport {
                    url: "u".into(),
                    what: "w".into(),
                },
                Fault::Io,
            ),
            (
                A::Refused {
                    url: "u".into(),
                    status: 409,
                    code: ErrorCode::Conflict,
                    detail: "revoked".into(),
                },
                Fault::Denied,
            ),
            (
                A::Refused {
                    url: "u".into(),
                    status: 500,
                    code: ErrorCode::Internal,
                    detail: "x".into(),
                },
                Fault::Io,
            ),
        ] {
            assert_eq!(Failure::from(e).fault, f);
        }
        for (e, f) in owner_errors() {
            assert_eq!(Failure::from(e).fault, f);
        }
        use blindfold_broker::Error as B;
        let broker = vec![
            (B::BadInput("x".into()), Fault::BadInput),
            (
                B::Policy(blindfold_broker::PolicyError("p".into())),
                Fault::BadInput,
            ),
            (
                B::Io {
                    path: "p".into(),
                    source: io(),
                },
                Fault::Io,
            ),
            (B::Serve("s".into()), Fault::Io),
            (B::Db(blindfold_broker::db::DbError("d".into())), Fault::Io),
            (
                B::AuditBroken {
                    seq: 2,
                    why: "w".into(),
                },
                Fault::Integrity,
            ),
            (B::Internal("i".into()), Fault::Internal),
        ];
        for (e, f) in broker {
            assert_eq!(Failure::from(e).fault, f);
        }
    }
}
