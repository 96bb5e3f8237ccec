//! AMD SEV-SNP attestation reports, verified with the `sev` crate (pure Rust): the
//! VCEK must chain to AMD's built-in ARK/ASK for Milan, Genoa or Turin, and sign the
//! report. Evidence in either of two forms:
//!
//! - blindfold's: `{"report": base64 of the raw report, "vcek": base64 of the VCEK
//!   certificate in DER}`;
//! - guest-components' (Trustee's stock attester): `{"attestation_report": the report
//!   as the `sev` crate's serde writes it (fields as JSON numbers and byte arrays),
//!   "cert_chain": [{"cert_type": "VCEK", "data": [DER bytes]}, ...]}`
//!   ([`blindfold_protocol::snp`]; blindfold's trainer sends this form too). The raw
//!   report is rebuilt from those fields with `sev`'s encoder and the signature is
//!   checked over the rebuilt bytes, so a field misread or left out fails the signature
//!   check.
//!
//! The VCEK's TCB extensions (bootloader, TEE, SNP, microcode SPLs) must equal the
//! report's reported TCB, and its hardware id the report's chip id (unless the report
//! masks it): a VCEK for another chip or TCB is refused. A guest launched with DEBUG
//! allowed (guest policy bit 19) is refused ([`claims_from_report`]). Not checked (stated in
//! docs/threat-model.md): certificate validity dates and revocation (AMD's CRL). The
//! policy checks the reported TCB against its minimums.

use serde_json::Value;
use sev::certs::snp::{builtin, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

use blindfold_protocol::snp::SnpEvidence;

use super::{b64_field, Claims, Rejection, SnpClaims, SnpTcb, Verifier};

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
        let (raw, vcek_der) = if evidence.get("attestation_report").is_some() {
            let gc: SnpEvidence = serde_json::from_value(evidence.clone()).map_err(|e| {
                Rejection::Evidence(format!("SNP evidence (guest-components form): {e}"))
            })?;
            let malformed = |e: blindfold_protocol::Error| Rejection::Evidence(e.to_string());
            (
                gc.raw_report().map_err(malformed)?,
                gc.vcek().map_err(malformed)?.to_vec(),
            )
        } else {
            (b64_field(evidence, "report")?, b64_field(evidence, "vcek")?)
        };
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
        // Before the signature, so that a mismatch is named as such (a VCEK of another
        // TCB or chip has another key and would fail the signature check anyway).
        check_vcek_binds_report(&vcek_der, &report)?;
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
        let claims = claims_from_report(&report)?;
        Ok((claims, report.report_data.to_vec()))
    }
}

/// Guest policy bit 19: DEBUG. The host may read and write the guest's memory with the
/// firmware's debug commands; the launch measurement is the same as without it.
pub const POLICY_DEBUG: u64 = 1 << 19;
/// Guest policy bit 18: MIGRATE_MA. A migration agent may be associated with the guest
/// and can export its memory.
pub const POLICY_MIGRATE_MA: u64 = 1 << 18;

/// The claims of a signed report. A guest launched with DEBUG allowed is refused here,
/// whatever the policy says: its memory (the released key, the records) is open to the
/// host. Whether a migration agent or a VMPL other than 0 is acceptable is the policy's
/// decision (docs/broker-protocol.md §4).
pub fn claims_from_report(report: &AttestationReport) -> Result<Claims, Rejection> {
    let policy = u64::from(report.policy);
    if policy & POLICY_DEBUG != 0 {
        return Err(Rejection::Evidence(
            "the guest was launched with DEBUG allowed (policy bit 19): the host can read its memory"
                .into(),
        ));
    }
    let t = report.reported_tcb;
    Ok(Claims {
        tee: "snp".into(),
        measurement: Some(hex::encode(report.measurement)),
        snp: Some(SnpClaims {
            tcb: SnpTcb {
                bootloader: t.bootloader,
                tee: t.tee,
                snp: t.snp,
                microcode: t.microcode,
            },
            report_version: report.version,
            vmpl: report.vmpl,
            migrate_ma: policy & POLICY_MIGRATE_MA != 0,
        }),
        tdx_status: None,
        tdx_rtmrs: None,
        insecure: false,
    })
}

/// AMD's VCEK extension OIDs (VCEK specification, chapter 3).
const OID_BL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// A small DER INTEGER (0..=255), as the SPL extensions hold.
fn der_u8(v: &[u8]) -> Option<u8> {
    match v {
        [0x02, 1, x] => Some(*x),
        [0x02, 2, 0, x] if *x >= 0x80 => Some(*x),
        _ => None,
    }
}

/// The VCEK must have been issued for the chip and TCB the report claims.
pub fn check_vcek_binds_report(
    vcek_der: &[u8],
    report: &AttestationReport,
) -> Result<(), Rejection> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(vcek_der)
        .map_err(|e| Rejection::Evidence(format!("VCEK: {e}")))?;
    let mut spl = [None::<u8>; 4];
    let mut hwid = None;
    for ext in cert.tbs_certificate.extensions.iter().flatten() {
        let v = ext.extn_value.as_bytes();
        match ext.extn_id.to_string().as_str() {
            OID_BL => spl[0] = der_u8(v),
            OID_TEE => spl[1] = der_u8(v),
            OID_SNP => spl[2] = der_u8(v),
            OID_UCODE => spl[3] = der_u8(v),
            OID_HWID => hwid = Some(v.to_vec()),
            _ => {}
        }
    }
    let t = report.reported_tcb;
    let want = [t.bootloader, t.tee, t.snp, t.microcode];
    for (i, name) in ["bootloader", "TEE", "SNP", "microcode"].iter().enumerate() {
        match spl[i] {
            Some(v) if v == want[i] => {}
            Some(v) => {
                return Err(Rejection::Evidence(format!(
                    "the VCEK is for {name} SPL {v}, the report says {}",
                    want[i]
                )))
            }
            None => {
                return Err(Rejection::Evidence(format!(
                    "the VCEK lacks its {name} SPL extension"
                )))
            }
        }
    }
    if report.chip_id.iter().any(|&b| b != 0) {
        match hwid {
            Some(h) if h[..] == report.chip_id[..] => {}
            Some(_) => {
                return Err(Rejection::Evidence(
                    "the VCEK was issued for another chip".into(),
                ))
            }
            None => {
                return Err(Rejection::Evidence(
                    "the VCEK lacks its hardware-id extension".into(),
                ))
            }
        }
    }
    Ok(())
}
