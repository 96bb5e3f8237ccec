//! Stable error codes on the wire (§5 of docs/broker-protocol.md), Trustee's format.

use serde::{Deserialize, Serialize};

/// Every error the broker answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum ErrorCode {
    MalformedRequest,
    ProtocolVersion,
    UnsupportedTee,
    UnsupportedTeeKey,
    TokenNotFound,
    SessionExpired,
    NonceReplayed,
    EvidenceRejected,
    ReportDataMismatch,
    PolicyDenied,
    Revoked,
    Unauthorized,
    NotFound,
    Conflict,
    PayloadTooLarge,
    TooManyRequests,
    Internal,
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
    /// Every code.
    pub const ALL: [ErrorCode; 17] = {
        use ErrorCode::*;
        [
            MalformedRequest,
            ProtocolVersion,
            UnsupportedTee,
            UnsupportedTeeKey,
            TokenNotFound,
            SessionExpired,
            NonceReplayed,
            EvidenceRejected,
            ReportDataMismatch,
            PolicyDenied,
            Revoked,
            Unauthorized,
            NotFound,
            Conflict,
            PayloadTooLarge,
            TooManyRequests,
            Internal,
        ]
    };

    /// The HTTP status.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            MalformedRequest | ProtocolVersion | UnsupportedTee | UnsupportedTeeKey => 400,
            TokenNotFound | SessionExpired | NonceReplayed | EvidenceRejected
            | ReportDataMismatch | PolicyDenied | Revoked | Unauthorized => 401,
            NotFound => 404,
            Conflict => 409,
            PayloadTooLarge => 413,
            TooManyRequests => 429,
            Internal => 500,
        }
    }

    /// The code's name (as in the error type URL).
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            MalformedRequest => "MalformedRequest",
            ProtocolVersion => "ProtocolVersion",
            UnsupportedTee => "UnsupportedTee",
            UnsupportedTeeKey => "UnsupportedTeeKey",
            TokenNotFound => "TokenNotFound",
            SessionExpired => "SessionExpired",
            NonceReplayed => "NonceReplayed",
            EvidenceRejected => "EvidenceRejected",
            ReportDataMismatch => "ReportDataMismatch",
            PolicyDenied => "PolicyDenied",
            Revoked => "Revoked",
            Unauthorized => "Unauthorized",
            NotFound => "NotFound",
            Conflict => "Conflict",
            PayloadTooLarge => "PayloadTooLarge",
            TooManyRequests => "TooManyRequests",
            Internal => "Internal",
        }
    }

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
        ErrorCode::ALL.into_iter().find(|c| c.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_body() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_body(&c.body("x")), Some(c));
            assert!((400..600).contains(&c.status()));
        }
    }
}
