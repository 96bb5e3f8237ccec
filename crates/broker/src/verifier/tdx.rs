//! Intel TDX quotes, verified offline with `dcap-qvl` against Intel's built-in root,
//! with the quote's collateral (TCB info, QE identity, CRLs: all signed by Intel, so a
//! client may carry them). Evidence (blindfold's subset): `{"quote": base64 of the
//! quote, "collateral": <dcap-qvl QuoteCollateralV3 JSON>}`. Validity windows are
//! checked against the broker's clock.

use serde_json::Value;

use super::{b64_field, Claims, Rejection, Verifier};

/// Verifier of TDX quotes.
pub struct TdxVerifier {
    fixed_now: Option<u64>,
}

impl TdxVerifier {
    /// Checks collateral validity against the system clock.
    pub fn new() -> Self {
        TdxVerifier { fixed_now: None }
    }

    /// Checks collateral validity at a fixed time. Only for tests on captured evidence
    /// whose collateral has expired; never in a running broker.
    pub fn insecure_fixed_time(now: u64) -> Self {
        TdxVerifier {
            fixed_now: Some(now),
        }
    }
}

impl Default for TdxVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier for TdxVerifier {
    fn verify_signed(&self, evidence: &Value) -> Result<(Claims, Vec<u8>), Rejection> {
        let quote = b64_field(evidence, "quote")?;
        let coll: dcap_qvl::QuoteCollateralV3 = serde_json::from_value(
            evidence
                .get("collateral")
                .cloned()
                .ok_or_else(|| Rejection::Evidence("no collateral".into()))?,
        )
        .map_err(|e| Rejection::Evidence(format!("collateral: {e}")))?;
        let now = self.fixed_now.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        let v = dcap_qvl::verify::verify(&quote, &coll, now)
            .map_err(|e| Rejection::Evidence(format!("quote: {e}")))?;
        let (mr_td, report_data) = if let Some(r) = v.report.as_td10() {
            (r.mr_td, r.report_data)
        } else if let Some(r) = v.report.as_td15() {
            (r.base.mr_td, r.base.report_data)
        } else {
            return Err(Rejection::Evidence("not a TDX quote".into()));
        };
        let claims = Claims {
            tee: "tdx".into(),
            measurement: Some(hex::encode(mr_td)),
            snp_tcb: None,
            report_version: None,
            tdx_status: Some(v.status),
            insecure: false,
        };
        Ok((claims, report_data.to_vec()))
    }
}
