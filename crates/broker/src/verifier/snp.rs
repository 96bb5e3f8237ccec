//! AMD SEV-SNP attestation reports, verified with the `sev` crate (pure Rust): the
//! VCEK must chain to AMD's built-in ARK/ASK for Milan, Genoa or Turin, and sign the
//! report. Evidence (blindfold's subset): `{"report": base64 of the raw report,
//! "vcek": base64 of the VCEK certificate in DER}`.
//!
//! Not checked (stated in docs/threat-model.md): certificate validity dates and
//! revocation (AMD's CRL), and the VCEK's TCB and hardware-id extensions against the
//! report. The policy checks the reported TCB.

use serde_json::Value;
use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use super::{b64_field, Claims, Rejection, SnpTcb, Verifier};

/// Verifier of SNP reports.
pub struct SnpVerifier {
    roots: Vec<(&'static str, ca::Chain)>,
}

impl SnpVerifier {
    /// With AMD's built-in roots.
    pub fn new() -> Self {
        let mut roots = vec![];
        if let (Ok(ark), Ok(ask)) = (builtin::milan::ark(), builtin::milan::ask()) {
            roots.push(("milan", ca::Chain { ark, ask }));
        }
        if let (Ok(ark), Ok(ask)) = (builtin::genoa::ark(), builtin::genoa::ask()) {
            roots.push(("genoa", ca::Chain { ark, ask }));
        }
        if let (Ok(ark), Ok(ask)) = (builtin::turin::ark(), builtin::turin::ask()) {
            roots.push(("turin", ca::Chain { ark, ask }));
        }
        SnpVerifier { roots }
    }
}

impl Default for SnpVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier for SnpVerifier {
    fn verify_signed(&self, evidence: &Value) -> Result<(Claims, Vec<u8>), Rejection> {
        let raw = b64_field(evidence, "report")?;
        let vcek_der = b64_field(evidence, "vcek")?;
        if raw.len() != 1184 {
            return Err(Rejection::Evidence(format!(
                "report is {} bytes, expected 1184",
                raw.len()
            )));
        }
        let report = AttestationReport::from_bytes(&raw)
            .map_err(|e| Rejection::Evidence(format!("report: {e}")))?;
        let vcek = Certificate::from_der(&vcek_der)
            .map_err(|e| Rejection::Evidence(format!("VCEK: {e}")))?;
        let signed = self.roots.iter().any(|(_, ca)| {
            let chain = Chain {
                ca: ca.clone(),
                vek: vcek.clone(),
            };
            (&chain, &report).verify().is_ok()
        });
        if !signed {
            return Err(Rejection::Evidence(
                "the report is not signed by a VCEK chaining to an AMD root".into(),
            ));
        }
        let t = report.reported_tcb;
        let claims = Claims {
            tee: "snp".into(),
            measurement: Some(hex::encode(report.measurement)),
            snp_tcb: Some(SnpTcb {
                bootloader: t.bootloader,
                tee: t.tee,
                snp: t.snp,
                microcode: t.microcode,
            }),
            report_version: Some(report.version),
            tdx_status: None,
            insecure: false,
        };
        Ok((claims, report.report_data.to_vec()))
    }
}
