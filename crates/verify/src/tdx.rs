//! Intel TDX quotes, verified offline with `dcap-qvl` against Intel's built-in root,
//! with the quote's collateral (TCB info, QE identity, CRLs: all signed by Intel).
//!
//! Evidence: `{"quote": base64 of the quote}` as Trustee's stock attester sends it
//! (its `cc_eventlog` and any other member are ignored), optionally with
//! `"collateral": <dcap-qvl QuoteCollateralV3 JSON>` carried by the client.
//!
//! Where the collateral comes from: the broker's own store first (a folder of
//! collateral files the owner fetched from Intel PCS or a PCCS and added with
//! `blindfold broker tdx-collateral`, one per platform FMSPC and PCK CA); only for a
//! platform the store has nothing for, the collateral the client carried. So where the
//! owner keeps the store current, a client cannot choose an older collateral. Validity
//! windows are checked against the broker's clock.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{b64_field, Claims, Rejection, Verifier};

/// Verifier of TDX quotes.
pub struct TdxVerifier {
    fixed_now: Option<u64>,
    store: Option<PathBuf>,
}

impl TdxVerifier {
    /// Checks collateral validity against the system clock; uses only collateral that
    /// clients carry.
    pub fn new() -> Self {
        TdxVerifier {
            fixed_now: None,
            store: None,
        }
    }

    /// Checks collateral validity at a fixed time. Only for tests on captured evidence
    /// whose collateral has expired; never in a running broker.
    pub fn insecure_fixed_time(now: u64) -> Self {
        TdxVerifier {
            fixed_now: Some(now),
            store: None,
        }
    }

    /// Prefers collateral from `dir` (see [`add_collateral`]), read at each
    /// verification, so that files added while the broker runs take effect at once.
    pub fn with_collateral_store(mut self, dir: &Path) -> Self {
        self.store = Some(dir.to_owned());
        self
    }
}

impl Default for TdxVerifier {
    fn default() -> Self {
        Self::new()
    }
}

/// The file of a collateral store that holds the collateral for a platform: its FMSPC
/// (upper-case hex, as Intel writes it) and PCK CA (`processor` or `platform`).
pub fn store_file(dir: &Path, fmspc: &str, ca: &str) -> PathBuf {
    dir.join(format!("{fmspc}-{ca}.json"))
}

fn quote_platform(quote: &[u8]) -> Result<(String, String), Rejection> {
    let q = dcap_qvl::quote::Quote::parse(quote)
        .map_err(|e| Rejection::Evidence(format!("quote: {e}")))?;
    let fmspc = dcap_qvl::intel::quote_fmspc(&q)
        .map_err(|e| Rejection::Evidence(format!("quote's PCK certificate: {e}")))?;
    let ca = dcap_qvl::intel::quote_ca(&q)
        .map_err(|e| Rejection::Evidence(format!("quote's PCK certificate: {e}")))?;
    Ok((hex::encode_upper(fmspc), ca.as_id_str().to_owned()))
}

impl Verifier for TdxVerifier {
    fn verify_signed(&self, evidence: &Value) -> Result<(Claims, Vec<u8>), Rejection> {
        let quote = b64_field(evidence, "quote")?;
        // The platform the quote names (its PCK certificate's FMSPC and CA), parsed once:
        // the store is keyed by it, and a missing collateral is reported with it.
        let platform = quote_platform(&quote);
        let stored = match &self.store {
            Some(dir) => {
                let (fmspc, ca) = platform.clone()?;
                let f = store_file(dir, &fmspc, &ca);
                match std::fs::read(&f) {
                    Ok(b) => Some(serde_json::from_slice::<Value>(&b).map_err(|e| {
                        Rejection::Evidence(format!("the broker's collateral {}: {e}", f.display()))
                    })?),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                    Err(e) => {
                        return Err(Rejection::Evidence(format!(
                            "the broker's collateral {}: {e}",
                            f.display()
                        )))
                    }
                }
            }
            None => None,
        };
        let coll = match (stored, evidence.get("collateral")) {
            (Some(v), _) => v,
            (None, Some(v)) => v.clone(),
            (None, None) => {
                let platform = platform.map_or_else(
                    |_| String::new(),
                    |(f, c)| format!(" for FMSPC {f} ({c} CA)"),
                );
                return Err(Rejection::Evidence(format!(
                    "no collateral: the evidence carries none and the broker holds none{platform} (the owner adds it with `blindfold broker tdx-collateral`)"
                )));
            }
        };
        let coll: dcap_qvl::QuoteCollateralV3 = serde_json::from_value(coll)
            .map_err(|e| Rejection::Evidence(format!("collateral: {e}")))?;
        let now = self.fixed_now.unwrap_or_else(now_secs);
        let v = dcap_qvl::verify::verify(&quote, &coll, now)
            .map_err(|e| Rejection::Evidence(format!("quote: {e}")))?;
        let td = if let Some(r) = v.report.as_td10() {
            r
        } else if let Some(r) = v.report.as_td15() {
            &r.base
        } else {
            return Err(Rejection::Evidence("not a TDX quote".into()));
        };
        let claims = claims_from_report(td, v.status)?;
        Ok((claims, td.report_data.to_vec()))
    }
}

/// The claims of a verified TD report. `dcap-qvl`'s verification already refuses a TD
/// with DEBUG or profiling set in its attributes (its default, `allow_debug = false`);
/// this checks it again so that a change of that default, or of the library, cannot
/// quietly let a debug TD through: a debug TD's memory is open to the host.
pub fn claims_from_report(
    td: &dcap_qvl::quote::TDReport10,
    tcb_status: String,
) -> Result<Claims, Rejection> {
    // TDATTRIBUTES (Intel TDX module ABI): bit 0 DEBUG and bits 4..6 profiling (the TUD
    // group), bit 28 SEPT_VE_DISABLE, bit 29 MIGRATABLE.
    let a = dcap_qvl::quote::TDAttributes::parse(td.td_attributes)
        .map_err(|e| Rejection::Evidence(format!("TD attributes: {e}")))?;
    if a.tud & 0x01 != 0 {
        return Err(Rejection::Evidence(
            "the TD runs in debug mode (TDATTRIBUTES.DEBUG): the host can read its memory".into(),
        ));
    }
    if a.tud & 0x70 != 0 {
        return Err(Rejection::Evidence(
            "the TD allows profiling by the host (TDATTRIBUTES bits 4..6)".into(),
        ));
    }
    if a.sec.migratable {
        return Err(Rejection::Evidence(
            "the TD is migratable (TDATTRIBUTES.MIGRATABLE): a migration TD can export its memory"
                .into(),
        ));
    }
    if !a.sec.sept_ve_disable {
        return Err(Rejection::Evidence(
            "the TD does not set SEPT_VE_DISABLE (the host could inject #VE through its page tables)"
                .into(),
        ));
    }
    Ok(Claims {
        tee: "tdx".into(),
        measurement: Some(hex::encode(td.mr_td)),
        snp: None,
        tdx_status: Some(tcb_status),
        tdx_rtmrs: Some([td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3].map(hex::encode)),
        insecure: false,
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a collateral file is for, read by [`check_collateral`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollateralInfo {
    /// Platform FMSPC (upper-case hex).
    pub fmspc: String,
    /// `processor` or `platform`.
    pub ca: String,
    /// The TCB info's `nextUpdate`: after it, quotes checked with this collateral are
    /// refused until newer collateral is added.
    pub next_update: String,
}

/// Checks the form of TDX quote collateral (dcap-qvl's `QuoteCollateralV3` JSON, as
/// fetched from Intel PCS or a PCCS) and says which platform it is for. Its signatures
/// are checked, with the quote, at each verification.
pub fn check_collateral(json: &[u8]) -> Result<CollateralInfo, String> {
    let coll: dcap_qvl::QuoteCollateralV3 =
        serde_json::from_slice(json).map_err(|e| format!("not TDX quote collateral: {e}"))?;
    let tcb: Value = serde_json::from_str(&coll.tcb_info)
        .map_err(|e| format!("collateral's tcb_info is not JSON: {e}"))?;
    if tcb.get("id").and_then(Value::as_str) != Some("TDX") {
        return Err(format!(
            "collateral's TCB info is for {:?}, not TDX",
            tcb.get("id").and_then(Value::as_str).unwrap_or("?")
        ));
    }
    let fmspc = tcb
        .get("fmspc")
        .and_then(Value::as_str)
        .filter(|f| f.len() == 12 && f.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or("collateral's TCB info has no 12-hex-digit fmspc")?
        .to_ascii_uppercase();
    let next_update = tcb
        .get("nextUpdate")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let ca = crl_ca(&coll.pck_crl)?;
    Ok(CollateralInfo {
        fmspc,
        ca: ca.into(),
        next_update,
    })
}

/// Which PCK CA issued a PCK CRL, from its issuer's common name.
fn crl_ca(der: &[u8]) -> Result<&'static str, String> {
    use x509_cert::der::Decode;
    let crl = x509_cert::crl::CertificateList::from_der(der)
        .map_err(|e| format!("collateral's pck_crl is not a CRL: {e}"))?;
    let issuer = crl.tbs_cert_list.issuer.to_string();
    if issuer.contains("CN=Intel SGX PCK Processor CA") {
        Ok("processor")
    } else if issuer.contains("CN=Intel SGX PCK Platform CA") {
        Ok("platform")
    } else {
        Err(format!(
            "collateral's pck_crl is issued by {issuer}, not a PCK CA"
        ))
    }
}
