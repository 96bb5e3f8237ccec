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

    /// The code named in an error body, if it is one of ours.
    pub fn from_body(b: &ErrorBody) -> Option<ErrorCode> {
        let name = b.error_type.strip_prefix(PREFIX)?;
        ErrorCode::ALL.iter().copied().find(|c| c.name() == name)
    }
}

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
}
