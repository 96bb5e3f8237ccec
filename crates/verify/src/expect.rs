//! What a prediction client expects of a service before it sends any input
//! (`blindfold predict --expect FILE`, docs/serving.md): the TEE rules of a broker policy
//! (`tee`, `measurements`, `[snp]`, `[tdx]`), judged by the same code, and the model the
//! service must serve.
//!
//! ```toml
//! model = "0123456789abcdef0123456789abcdef"  # the sealed model's id (required)
//! version = 1                                 # its registered version (optional)
//! receipt_sha256 = "…"                        # its training receipt (optional)
//! tee = ["snp"]
//! measurements = ["…"]
//! [snp]
//! min_bootloader = 3
//! min_tee = 0
//! min_snp = 8
//! min_microcode = 115
//! ```
//!
//! Every check fails closed, and a failure names the field that failed. An expectation
//! that accepts a hardware TEE must pin the code: `measurements` (SNP: the launch
//! measurement; TDX: MRTD) and, for TDX, RTMR1 and RTMR2 (MRTD measures only the
//! firmware), and must not accept `sample` beside it (self-declared evidence can claim
//! any measurement). Otherwise any code the host launches in such a VM passes, and says what it
//! likes about its model; `allow_unpinned = true` accepts that knowingly.

use blindfold_protocol::serve::{ServiceInfo, SERVE_PROTOCOL};

use crate::policy::{is_lower_hex, Policy, PolicyError};
use crate::Claims;

/// A parsed expectation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The TEE rules.
    pub policy: Policy,
    /// The sealed model's id (32 lowercase hex digits).
    pub model: String,
    /// Its registered version, when the client pins one.
    pub version: Option<u64>,
    /// SHA-256 of its training receipt (lowercase hex), when the client pins one.
    pub receipt_sha256: Option<String>,
}

/// A service that does not meet the expectation: the field, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct Mismatch {
    /// The field that failed (`tee`, `measurement`, `snp.tcb`, `model`, ...).
    pub field: &'static str,
    /// What the service showed.
    pub detail: String,
}

fn mismatch(field: &'static str, detail: impl Into<String>) -> Mismatch {
    Mismatch {
        field,
        detail: detail.into(),
    }
}

/// Broker-policy keys that mean nothing to a client.
const BROKER_ONLY: [&str; 5] = ["jobs", "models", "expires", "max_releases", "serve"];

/// Why an expectation that accepts `tee` pins no code, if it does not.
fn unpinned(p: &Policy) -> Option<String> {
    let hw: Vec<&str> = p
        .tee
        .iter()
        .map(String::as_str)
        .filter(|t| *t != "sample")
        .collect();
    if !hw.is_empty() && p.allows_sample() {
        return Some(format!(
            "`tee` names sample beside {}: sample evidence is self-declared and can claim any measurement, so the list accepts anything (name sample alone, for tests)",
            hw.join(" and ")
        ));
    }
    if !hw.is_empty() && p.measurements.is_empty() {
        return Some(format!(
            "`measurements` is empty: any code in a {} VM would pass (list the serving image's measurement)",
            hw.join(" or ")
        ));
    }
    let tdx_pinned = p
        .tdx
        .as_ref()
        .is_some_and(|t| !t.rtmr1.is_empty() && !t.rtmr2.is_empty());
    if hw.contains(&"tdx") && !tdx_pinned {
        return Some("[tdx] must pin rtmr1 (kernel) and rtmr2 (command line, initrd): MRTD measures only the firmware, so any OS and service it boots would pass".into());
    }
    None
}

impl Expectation {
    /// Parses and checks an expectation file.
    pub fn parse(text: &str) -> Result<Expectation, PolicyError> {
        let mut t: toml::Table = toml::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        for k in BROKER_ONLY {
            if t.contains_key(k) {
                return Err(PolicyError(format!(
                    "`{k}` is a broker policy's setting; an expectation has model, version, receipt_sha256 and the TEE rules (tee, measurements, [snp], [tdx])"
                )));
            }
        }
        let model = match t.remove("model") {
            Some(toml::Value::String(m)) if is_lower_hex(&m, 32) => m,
            Some(_) => {
                return Err(PolicyError(
                    "`model` must be the sealed model's id: 32 lowercase hex digits (`blindfold inspect` prints it)".into(),
                ))
            }
            None => {
                return Err(PolicyError(
                    "`model` is missing: name the sealed model's id the service must serve".into(),
                ))
            }
        };
        let version = match t.remove("version") {
            Some(toml::Value::Integer(v)) if v >= 1 => Some(v as u64),
            Some(_) => return Err(PolicyError("`version` must be a positive integer".into())),
            None => None,
        };
        let receipt_sha256 = match t.remove("receipt_sha256") {
            Some(toml::Value::String(r)) if is_lower_hex(&r, 64) => Some(r),
            Some(_) => {
                return Err(PolicyError(
                    "`receipt_sha256` must be a SHA-256 in lowercase hex (64 characters)".into(),
                ))
            }
            None => None,
        };
        let allow_unpinned = match t.remove("allow_unpinned") {
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => return Err(PolicyError("`allow_unpinned` must be true or false".into())),
            None => false,
        };
        let rest = toml::to_string(&t).map_err(|e| PolicyError(e.to_string()))?;
        let policy = Policy::parse(&rest)?;
        if let Some(why) = unpinned(&policy).filter(|_| !allow_unpinned) {
            return Err(PolicyError(format!(
                "{why}; `allow_unpinned = true` accepts that knowingly"
            )));
        }
        Ok(Expectation {
            policy,
            model,
            version,
            receipt_sha256,
        })
    }

    /// Judges a service: the claims of its verified evidence, and its description
    /// (which that evidence covers).
    pub fn check(&self, claims: &Claims, info: &ServiceInfo) -> Result<(), Mismatch> {
        self.policy
            .evaluate(claims, None, None, 0, 0)
            .map_err(|why| mismatch(field_of(&why), why))?;
        if info.protocol != SERVE_PROTOCOL {
            return Err(mismatch(
                "protocol",
                format!(
                    "the service speaks {:?}, not {SERVE_PROTOCOL}",
                    info.protocol
                ),
            ));
        }
        if info.model_id != self.model {
            return Err(mismatch(
                "model",
                format!("the service serves {}, not {}", info.model_id, self.model),
            ));
        }
        if let Some(v) = self.version {
            if info.version != v {
                return Err(mismatch(
                    "version",
                    format!("the service serves version {}, not {v}", info.version),
                ));
            }
        }
        if let Some(r) = &self.receipt_sha256 {
            if info.receipt_sha256.as_ref() != Some(r) {
                return Err(mismatch(
                    "receipt_sha256",
                    format!(
                        "the service names the receipt {}, not {r}",
                        info.receipt_sha256.as_deref().unwrap_or("(none)")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The field a policy's denial is about, from its wording (`Policy::evaluate`).
fn field_of(why: &str) -> &'static str {
    let w = why.to_ascii_lowercase();
    if w.starts_with("tee ") {
        "tee"
    } else if w.contains("measurement") {
        "measurement"
    } else if w.starts_with("snp tcb") {
        "snp.tcb"
    } else if w.contains("vmpl") {
        "snp.vmpl"
    } else if w.contains("report version") {
        "snp.report_version"
    } else if w.contains("migration agent") {
        "snp.migration_agent"
    } else if w.starts_with("tdx tcb status") {
        "tdx.tcb_status"
    } else if w.starts_with("rtmr") {
        "tdx.rtmr"
    } else {
        "policy"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "0123456789abcdef0123456789abcdef";

    fn info() -> ServiceInfo {
        ServiceInfo {
            protocol: SERVE_PROTOCOL.into(),
            model_id: M.into(),
            version: 2,
            manifest_sha256: "00".repeat(32),
            model_name: "lenet5".into(),
            spec_sha256: "11".repeat(32),
            input: [1, 28, 28],
            outputs: 10,
            receipt_sha256: Some("22".repeat(32)),
            top1_only: false,
        }
    }

    fn sample(measurement: &str) -> Claims {
        Claims {
            tee: "sample".into(),
            measurement: Some(measurement.into()),
            snp: None,
            tdx_status: None,
            tdx_rtmrs: None,
            insecure: true,
        }
    }

    fn expect(extra: &str) -> Expectation {
        Expectation::parse(&format!("model = \"{M}\"\ntee = [\"sample\"]\n{extra}")).unwrap()
    }

    #[test]
    fn a_service_that_meets_the_expectation_passes() {
        let m = "ab".repeat(48);
        let e = expect(&format!(
            "version = 2\nreceipt_sha256 = \"{}\"\nmeasurements = [\"{m}\"]",
            "22".repeat(32)
        ));
        assert_eq!(e.check(&sample(&m), &info()), Ok(()));
    }

    #[test]
    fn each_failure_names_its_field() {
        let m = "ab".repeat(48);
        let other = "cd".repeat(48);
        let e = expect(&format!("measurements = [\"{m}\"]"));
        assert_eq!(
            e.check(&sample(&other), &info()).unwrap_err().field,
            "measurement"
        );
        let snp_only = Expectation::parse(&format!(
            "model = \"{M}\"\ntee = [\"snp\"]\nmeasurements = [\"{m}\"]\n[snp]\nmin_bootloader = 1\nmin_tee = 0\nmin_snp = 1\nmin_microcode = 1"
        ))
        .unwrap();
        assert_eq!(
            snp_only.check(&sample(&m), &info()).unwrap_err().field,
            "tee"
        );
        let mut i = info();
        i.model_id = "ff".repeat(16);
        assert_eq!(
            expect("").check(&sample(&m), &i).unwrap_err().field,
            "model"
        );
        assert_eq!(
            expect("version = 3")
                .check(&sample(&m), &info())
                .unwrap_err()
                .field,
            "version"
        );
        let r = format!("receipt_sha256 = \"{}\"", "33".repeat(32));
        assert_eq!(
            expect(&r).check(&sample(&m), &info()).unwrap_err().field,
            "receipt_sha256"
        );
        let mut i = info();
        i.protocol = "other/9".into();
        assert_eq!(
            expect("").check(&sample(&m), &i).unwrap_err().field,
            "protocol"
        );
    }

    #[test]
    fn an_expectation_must_pin_the_code_of_a_hardware_tee() {
        let snp = "[snp]\nmin_bootloader = 1\nmin_tee = 0\nmin_snp = 1\nmin_microcode = 1";
        let e =
            Expectation::parse(&format!("model = \"{M}\"\ntee = [\"snp\"]\n{snp}")).unwrap_err();
        assert!(e.0.contains("`measurements` is empty"), "{e}");
        let m = "ab".repeat(48);
        let tdx = Expectation::parse(&format!(
            "model = \"{M}\"\ntee = [\"tdx\"]\nmeasurements = [\"{m}\"]"
        ))
        .unwrap_err();
        assert!(tdx.0.contains("must pin rtmr1"), "{tdx}");
        let rtmr1_only = Expectation::parse(&format!(
            "model = \"{M}\"\ntee = [\"tdx\"]\nmeasurements = [\"{m}\"]\n[tdx]\nrtmr1 = [\"{m}\"]"
        ))
        .unwrap_err();
        assert!(rtmr1_only.0.contains("must pin rtmr1"), "{rtmr1_only}");
        Expectation::parse(&format!(
            "model = \"{M}\"\ntee = [\"tdx\"]\nmeasurements = [\"{m}\"]\n[tdx]\nrtmr1 = [\"{m}\"]\nrtmr2 = [\"{m}\"]"
        ))
        .unwrap();
        let mixed = Expectation::parse(&format!(
            "model = \"{M}\"\ntee = [\"snp\", \"sample\"]\nmeasurements = [\"{m}\"]\n{snp}"
        ))
        .unwrap_err();
        assert!(mixed.0.contains("sample beside snp"), "{mixed}");
        Expectation::parse(&format!(
            "model = \"{M}\"\ntee = [\"snp\"]\nallow_unpinned = true\n{snp}"
        ))
        .unwrap();
        // The sample TEE pins nothing anyway: it proves nothing, and says so.
        Expectation::parse(&format!("model = \"{M}\"\ntee = [\"sample\"]")).unwrap();
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let no_model = Expectation::parse("tee = [\"sample\"]").unwrap_err();
        assert!(no_model.0.contains("`model` is missing"), "{no_model}");
        let upper = Expectation::parse(&format!(
            "model = \"{}\"\ntee = [\"sample\"]",
            M.to_uppercase()
        ))
        .unwrap_err();
        assert!(upper.0.contains("32 lowercase hex"), "{upper}");
        let jobs = Expectation::parse(&format!(
            "model = \"{M}\"\ntee = [\"sample\"]\njobs = [\"x\"]"
        ))
        .unwrap_err();
        assert!(jobs.0.contains("broker policy"), "{jobs}");
        let no_tee = Expectation::parse(&format!("model = \"{M}\"")).unwrap_err();
        assert!(no_tee.0.contains("tee"), "{no_tee}");
        let typo = Expectation::parse(&format!(
            "model = \"{M}\"\ntee = [\"sample\"]\nmesurements = []"
        ))
        .unwrap_err();
        assert!(typo.0.contains("mesurements"), "{typo}");
    }
}
