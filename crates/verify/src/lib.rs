//! Evidence verifiers, one module per TEE behind a cargo feature. Each checks the
//! evidence's signature chain to the vendor's root and that its report data equals the
//! expected binding exactly, and returns the claims a [`policy::Policy`] evaluates.
//!
//! Two parties use them: the key broker, before it releases a key, and a prediction
//! client, before it sends a serving job any input. This crate has no server, no
//! database and no key: a client links it without linking the broker.
#![forbid(unsafe_code)]

use serde_json::Value;

pub mod expect;
pub mod policy;

#[cfg(feature = "sample")]
pub mod sample;
#[cfg(feature = "snp")]
pub mod snp;
#[cfg(feature = "tdx")]
pub mod tdx;

/// SNP TCB components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SnpTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
}

/// What a verified SEV-SNP report says beyond its measurement, for the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpClaims {
    /// The reported TCB (what the VCEK was issued for).
    pub tcb: SnpTcb,
    /// The report's version.
    pub report_version: u32,
    /// The VM privilege level the report was requested from (0 is the most privileged).
    pub vmpl: u32,
    /// Guest policy bit 18: a migration agent may be associated with the guest (it can
    /// export the guest's memory). A guest with bit 19 (DEBUG) never gets this far.
    pub migrate_ma: bool,
}

/// What verified evidence says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// TEE type (`snp`, `tdx`, `sample`).
    pub tee: String,
    /// Launch measurement / MRTD, lowercase hex.
    pub measurement: Option<String>,
    /// SNP: TCB, report version, VMPL, migration agent.
    pub snp: Option<SnpClaims>,
    /// TDX TCB status from Intel's collateral.
    pub tdx_status: Option<String>,
    /// TDX runtime measurement registers RTMR0..3, lowercase hex.
    pub tdx_rtmrs: Option<[String; 4]>,
    /// True for evidence without a hardware root of trust (`sample`).
    pub insecure: bool,
}

/// Why evidence was rejected.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Rejection {
    /// The evidence is malformed or its signature chain does not verify.
    #[error("evidence rejected: {0}")]
    Evidence(String),
    /// The report data is not the expected binding (other nonce, other key, or length).
    #[error("report data does not match the nonce and TEE key: {0}")]
    ReportData(String),
}

/// A verifier of one TEE's evidence.
pub trait Verifier: Send + Sync {
    /// Verifies the evidence's signatures back to the vendor's root; returns its claims
    /// and its report data, not yet compared with anything.
    fn verify_signed(&self, evidence: &Value) -> Result<(Claims, Vec<u8>), Rejection>;

    /// Verifies `evidence` and that its report data binds `expected` exactly: 48 bytes
    /// for `sample`, else the 48-byte binding followed by 16 zero bytes.
    fn verify(&self, evidence: &Value, expected: &[u8; 48]) -> Result<Claims, Rejection> {
        let (claims, rd) = self.verify_signed(evidence)?;
        if claims.insecure {
            if rd.len() != 48 {
                return Err(Rejection::ReportData(format!(
                    "{} bytes, expected 48",
                    rd.len()
                )));
            }
            if rd[..] != expected[..] {
                return Err(Rejection::ReportData("digest differs".into()));
            }
        } else {
            check_report_data_64(&rd, expected)?;
        }
        Ok(claims)
    }
}

/// A TEE type this build cannot verify (unknown, or its cargo feature is off).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Unsupported(pub String);

/// The verifier for a TEE type, or why there is none.
pub fn for_tee(tee: &str) -> Result<Box<dyn Verifier>, Unsupported> {
    match tee {
        #[cfg(feature = "sample")]
        "sample" => Ok(Box::new(sample::SampleVerifier)),
        #[cfg(feature = "snp")]
        "snp" => Ok(Box::new(snp::SnpVerifier::new())),
        #[cfg(feature = "tdx")]
        "tdx" => Ok(Box::new(tdx::TdxVerifier::new())),
        #[allow(unreachable_patterns)]
        "sample" | "snp" | "tdx" => Err(Unsupported(format!(
            "the {tee} verifier is not enabled in this build (cargo feature `{tee}`)"
        ))),
        other => Err(Unsupported(format!("TEE type {other:?} is not supported"))),
    }
}

/// Compares 64-byte hardware report data with the binding followed by 16 zero bytes.
pub fn check_report_data_64(found: &[u8], expected: &[u8; 48]) -> Result<(), Rejection> {
    if found.len() != 64 {
        return Err(Rejection::ReportData(format!(
            "{} bytes, expected 64",
            found.len()
        )));
    }
    if found[..48] != expected[..] {
        return Err(Rejection::ReportData("digest differs".into()));
    }
    if found[48..].iter().any(|&b| b != 0) {
        return Err(Rejection::ReportData("bytes 48..64 are not zero".into()));
    }
    Ok(())
}

pub(crate) fn b64_field(v: &Value, key: &str) -> Result<Vec<u8>, Rejection> {
    use base64::Engine;
    let s = v
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Rejection::Evidence(format!("no {key:?} string")))?;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .map_err(|_| Rejection::Evidence(format!("{key:?} is not base64")))
}
