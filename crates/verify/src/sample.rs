//! The `sample` TEE: evidence is self-declared and proves nothing. It exists so the
//! protocol can be exercised without TEE hardware; a policy must name it to accept it,
//! and every release through it is marked insecure in the audit log.

use base64::Engine;
use blindfold_protocol::SampleEvidence;
use serde_json::Value;

use super::{Claims, Rejection, Verifier};

/// Verifier of `sample` evidence: checks only the report-data binding.
pub struct SampleVerifier;

impl Verifier for SampleVerifier {
    fn verify_signed(&self, evidence: &Value) -> Result<(Claims, Vec<u8>), Rejection> {
        let e: SampleEvidence = serde_json::from_value(evidence.clone())
            .map_err(|e| Rejection::Evidence(format!("sample evidence: {e}")))?;
        let rd = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(e.report_data.trim_end_matches('='))
            .map_err(|_| Rejection::Evidence("report_data is not base64".into()))?;
        if let Some(m) = &e.measurement {
            if hex::decode(m).map_or(true, |b| b.len() != 48) {
                return Err(Rejection::Evidence(
                    "measurement is not 48 bytes of hex".into(),
                ));
            }
        }
        let claims = Claims {
            tee: "sample".into(),
            measurement: e.measurement.map(|m| m.to_ascii_lowercase()),
            snp: None,
            tdx_status: None,
            tdx_rtmrs: None,
            insecure: true,
        };
        Ok((claims, rd))
    }
}
