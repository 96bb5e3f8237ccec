//! Stable error codes on the wire (§5 of docs/broker-protocol.md), Trustee's format.

use serde::{Deserialize, Serialize};

/// Declares the codes once: each variant with its HTTP status; the enum, [`ErrorCode::ALL`],
/// [`ErrorCode::status`] and [`ErrorCode::name`] all come from this one table.
macro_rules! error_codes {
    ($($code:ident => $status:literal,)*) => {
        /// Every error the broker answers with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(missing_docs)]
        pub enum ErrorCode {
            $($code,)*
        }

        impl ErrorCode {
            /// Every code.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$code,)*];

            /// The HTTP status.
            pub fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$code => $status,)*
                }
            }

            /// The code's name (as in the error type URL).
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCode::$code => stringify!($code),)*
                }
            }
        }
    };
}

error_codes! {
    MalformedRequest => 400,
    ProtocolVersion => 400,
    UnsupportedTee => 400,
    UnsupportedTeeKey => 400,
    TokenNotFound => 401,
    SessionExpired => 401,
    NonceReplayed => 401,
    EvidenceRejected => 401,
    ReportDataMismatch => 401,
    PolicyDenied => 401,
    Revoked => 401,
    Unauthorized => 401,
    NotFound => 404,
    Conflict => 409,
    PayloadTooLarge => 413,
    TooManyRequests => 429,
    Internal => 500,
}

/// The JSON body of an error reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// `https://github.com/confidential-containers/kbs/errors/<Code>`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Human-readable detail (never key material).
    pub detail: String,
}

const PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";

impl ErrorCode {
    /// The body for this code.
    pub fn body(self, detail: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error_type: format!("{PREFIX}{}", self.name()),
            detail: detail.into(),
        }
    }

    /// The code named in an error body: one of ours, or one of the codes a stock Trustee
    /// KBS answers with that means the same refusal ([`TRUSTEE_ALIASES`]).
    pub fn from_body(b: &ErrorBody) -> Option<ErrorCode> {
        let name = b.error_type.strip_prefix(PREFIX)?;
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|c| c.name() == name)
            .or_else(|| {
                TRUSTEE_ALIASES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|&(_, c)| c)
            })
    }
}

/// Error codes of a stock Trustee KBS (its `kbs/src/error.rs`) that name a refusal, and
/// the code of ours that means the same, so that a trainer talking to a stock KBS tells
/// a denial from a fault. Trustee's other codes (its plugin, storage and configuration
/// errors) stay unrecognised: they are not decisions about the job.
pub const TRUSTEE_ALIASES: &[(&str, ErrorCode)] = &[
    // The resource policy refused the attested job.
    ("PolicyDeny", ErrorCode::PolicyDenied),
    // The attestation service refused the evidence, or could not parse or check it.
    ("AttestationError", ErrorCode::EvidenceRejected),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_body() {
        for &c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_body(&c.body("x")), Some(c));
            assert!((400..600).contains(&c.status()));
        }
    }

    /// Bodies as a stock Trustee KBS sends them (seen on loopback against Trustee's KBS).
    #[test]
    fn trustee_refusals_map_onto_ours() {
        let body = |code: &str| ErrorBody {
            error_type: format!("{PREFIX}{code}"),
            detail: "x".into(),
        };
        assert_eq!(
            ErrorCode::from_body(&body("PolicyDeny")),
            Some(ErrorCode::PolicyDenied)
        );
        assert_eq!(
            ErrorCode::from_body(&body("AttestationError")),
            Some(ErrorCode::EvidenceRejected)
        );
        assert_eq!(
            ErrorCode::from_body(&body("TokenNotFound")),
            Some(ErrorCode::TokenNotFound)
        );
        assert_eq!(ErrorCode::from_body(&body("PluginInternalError")), None);
        for (name, _) in TRUSTEE_ALIASES {
            assert!(ErrorCode::ALL.iter().all(|c| c.name() != *name));
        }
    }
}
