//! Evidence from the platform. On SEV-SNP and TDX guests, Linux's configfs-tsm
//! (`/sys/kernel/config/tsm/report`) returns a hardware report over 64 bytes of report
//! data; elsewhere, only when asked for, the `sample` TEE's self-declared evidence.
//!
//! Hardware evidence is sent in the forms Trustee's stock attester sends
//! (docs/broker-protocol.md §2.1), so that both blindfold's broker and a stock Trustee
//! KBS read it: SNP as guest-components' `{attestation_report, cert_chain}`, TDX as
//! `{quote}` (base64), with quote collateral added only when the job was given some.

use std::fs;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};

use crate::Error;

/// Where evidence comes from.
#[derive(Debug, Clone)]
pub enum EvidenceSource {
    /// Self-declared evidence with no hardware root of trust. Tests and demos only.
    InsecureSample {
        /// A measurement to declare (hex), for policies that check one.
        measurement: Option<String>,
    },
    /// The kernel's configfs-tsm report interface; the TEE type is read from it.
    Tsm {
        /// The configfs-tsm report folder (normally `/sys/kernel/config/tsm/report`).
        root: std::path::PathBuf,
        /// The TEE it serves (`snp` or `tdx`), as found by [`EvidenceSource::detect`].
        tee: String,
        /// TDX: quote collateral JSON (dcap-qvl's `QuoteCollateralV3`, from Intel PCS or
        /// a PCCS) to carry to the broker. Not needed when the broker holds collateral
        /// for the platform (`broker tdx-collateral`).
        tdx_collateral: Option<Value>,
    },
}

/// The configfs-tsm report folder.
pub const TSM_ROOT: &str = "/sys/kernel/config/tsm/report";

impl EvidenceSource {
    /// Finds configfs-tsm and the TEE behind it.
    pub fn detect(root: &Path) -> Result<EvidenceSource, Error> {
        if !root.is_dir() {
            return Err(Error::Evidence(format!(
                "{} does not exist: this machine is not a SEV-SNP or TDX guest with configfs-tsm (use the sample TEE only for tests)",
                root.display()
            )));
        }
        let probe = tsm_report(root, &[0u8; 64])?;
        let tee = match probe.0.as_str() {
            p if p.starts_with("sev_guest") => "snp",
            p if p.starts_with("tdx_guest") => "tdx",
            p => {
                return Err(Error::Evidence(format!(
                    "unknown configfs-tsm provider {p:?}"
                )))
            }
        };
        Ok(EvidenceSource::Tsm {
            root: root.to_owned(),
            tee: tee.into(),
            tdx_collateral: None,
        })
    }

    /// The TEE name sent in the auth request.
    pub fn tee(&self) -> &str {
        match self {
            EvidenceSource::InsecureSample { .. } => "sample",
            EvidenceSource::Tsm { tee, .. } => tee,
        }
    }

    /// Evidence whose report data binds `binding`.
    pub fn evidence(&self, binding: &[u8; 48]) -> Result<Value, Error> {
        match self {
            EvidenceSource::InsecureSample { measurement } => serde_json::to_value(
                blindfold_protocol::SampleEvidence::new(binding, measurement.clone()),
            )
            .map_err(|e| Error::Evidence(e.to_string())),
            EvidenceSource::Tsm {
                root,
                tee,
                tdx_collateral,
            } => {
                let (_, out, aux) = tsm_report(root, &blindfold_protocol::report_data_64(binding))?;
                match tee.as_str() {
                    "snp" => snp_evidence(&out, aux.as_deref()),
                    _ => Ok(tdx_evidence(&out, tdx_collateral.as_ref())),
                }
            }
        }
    }

    /// The same source, carrying TDX quote collateral to the broker (read from a JSON
    /// file, e.g. Intel PCS's answer in dcap-qvl's `QuoteCollateralV3` form).
    pub fn with_tdx_collateral(self, file: &Path) -> Result<EvidenceSource, Error> {
        let text =
            fs::read(file).map_err(|e| Error::Evidence(format!("{}: {e}", file.display())))?;
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| Error::Evidence(format!("{}: not JSON: {e}", file.display())))?;
        match self {
            EvidenceSource::Tsm { root, tee, .. } if tee == "tdx" => Ok(EvidenceSource::Tsm {
                root,
                tee,
                tdx_collateral: Some(value),
            }),
            other => Err(Error::Evidence(format!(
                "TDX collateral given, but the evidence is {}",
                other.tee()
            ))),
        }
    }
}

/// SNP evidence in guest-components' form from configfs-tsm's `outblob` (the report)
/// and `auxblob` (the host's certificate table, which must hold the VCEK).
pub fn snp_evidence(report: &[u8], cert_table: Option<&[u8]>) -> Result<Value, Error> {
    let ev = blindfold_protocol::snp::SnpEvidence::from_raw(report, cert_table)
        .map_err(|e| Error::Evidence(e.to_string()))?;
    if ev.vcek().is_err() {
        return Err(Error::Evidence("the SNP report came without exactly one VCEK in its certificate table (configure the host's extended report certificates)".into()));
    }
    serde_json::to_value(ev).map_err(|e| Error::Evidence(e.to_string()))
}

/// TDX evidence as Trustee's attester sends it (`quote`, base64), plus `collateral`
/// when given.
pub fn tdx_evidence(quote: &[u8], collateral: Option<&Value>) -> Value {
    let mut v = json!({ "quote": STANDARD.encode(quote) });
    if let Some(c) = collateral {
        v["collateral"] = c.clone();
    }
    v
}

/// What configfs-tsm returns: provider name, report (outblob), certificates (auxblob).
type TsmReport = (String, Vec<u8>, Option<Vec<u8>>);

/// Asks configfs-tsm for a report.
fn tsm_report(root: &Path, inblob: &[u8; 64]) -> Result<TsmReport, Error> {
    let mut name = [0u8; 8];
    aws_lc_rs::rand::fill(&mut name).map_err(|_| Error::Evidence("random".into()))?;
    let dir = root.join(format!("blindfold-{}", hex::encode(name)));
    let e =
        |what: &str, err: std::io::Error| Error::Evidence(format!("configfs-tsm {what}: {err}"));
    fs::create_dir(&dir).map_err(|x| e("create", x))?;
    let result = (|| {
        fs::write(dir.join("inblob"), inblob).map_err(|x| e("write inblob", x))?;
        let out = fs::read(dir.join("outblob")).map_err(|x| e("read outblob", x))?;
        let provider = fs::read_to_string(dir.join("provider"))
            .map_err(|x| e("read provider", x))?
            .trim()
            .to_owned();
        let aux = fs::read(dir.join("auxblob")).ok().filter(|a| !a.is_empty());
        Ok((provider, out, aux))
    })();
    let _ = fs::remove_dir(&dir);
    result
}
