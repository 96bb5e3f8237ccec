//! Evidence from the platform. On SEV-SNP and TDX guests, Linux's configfs-tsm
//! (`/sys/kernel/config/tsm/report`) returns a hardware report over 64 bytes of report
//! data; elsewhere, only when asked for, the `sample` TEE's self-declared evidence.

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
        /// TDX: quote collateral JSON (from Intel PCS or a PCCS), carried to the broker.
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
                    "snp" => {
                        let vcek = aux.as_deref().and_then(vcek_from_cert_table).ok_or_else(|| {
                            Error::Evidence("the SNP report came without a VCEK in its certificate table (configure the host's extended report certificates)".into())
                        })?;
                        Ok(json!({"report": STANDARD.encode(out), "vcek": STANDARD.encode(vcek)}))
                    }
                    _ => Ok(
                        json!({"quote": STANDARD.encode(out), "collateral": tdx_collateral.clone().ok_or_else(|| Error::Evidence("TDX needs quote collateral (BLINDFOLD_TDX_COLLATERAL)".into()))?}),
                    ),
                }
            }
        }
    }
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

/// The VCEK from an SNP certificate table (GUID, offset, length entries; zero GUID ends).
pub fn vcek_from_cert_table(t: &[u8]) -> Option<Vec<u8>> {
    // 63da758d-e664-4564-adc5-f4b93be8accd, in the table's little-endian GUID layout.
    const VCEK: [u8; 16] = [
        0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac,
        0xcd,
    ];
    let mut at = 0;
    while at + 24 <= t.len() {
        let guid = &t[at..at + 16];
        if guid.iter().all(|&b| b == 0) {
            break;
        }
        let off = u32::from_le_bytes(t[at + 16..at + 20].try_into().ok()?) as usize;
        let len = u32::from_le_bytes(t[at + 20..at + 24].try_into().ok()?) as usize;
        if guid == VCEK {
            return t.get(off..off.checked_add(len)?).map(<[u8]>::to_vec);
        }
        at += 24;
    }
    None
}
