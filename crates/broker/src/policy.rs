//! Per-dataset release policy (§4 of docs/broker-protocol.md), written by the owner in
//! TOML. A release is granted only if every rule present holds.

use serde::{Deserialize, Serialize};

use crate::verifier::Claims;

/// A dataset's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// TEE types accepted (`snp`, `tdx`, `sample`). Required: an empty list accepts none.
    pub tee: Vec<String>,
    /// Accepted measurements (SNP launch measurement, TDX MRTD), lowercase hex. Empty:
    /// any measurement.
    #[serde(default)]
    pub measurements: Vec<String>,
    /// Accepted job names. Empty: any job.
    #[serde(default)]
    pub jobs: Vec<String>,
    /// Unix seconds after which nothing is released.
    #[serde(default)]
    pub expires: Option<u64>,
    /// Most releases in total.
    #[serde(default)]
    pub max_releases: Option<u64>,
    /// Minimum reported TCB for SNP.
    #[serde(default)]
    pub snp: Option<SnpRules>,
    /// TDX rules.
    #[serde(default)]
    pub tdx: Option<TdxRules>,
}

/// Minimum SNP TCB components (reported TCB).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SnpRules {
    #[serde(default)]
    pub min_bootloader: u8,
    #[serde(default)]
    pub min_tee: u8,
    #[serde(default)]
    pub min_snp: u8,
    #[serde(default)]
    pub min_microcode: u8,
    /// Lowest report version accepted (default 2).
    #[serde(default)]
    pub min_report_version: Option<u32>,
}

/// TDX rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxRules {
    /// TCB statuses accepted (default `["UpToDate"]`).
    #[serde(default)]
    pub allow_status: Vec<String>,
    /// Accepted values of RTMR0 (firmware configuration), lowercase hex. Empty: any.
    #[serde(default)]
    pub rtmr0: Vec<String>,
    /// Accepted values of RTMR1 (OS loader and kernel). Empty: any.
    #[serde(default)]
    pub rtmr1: Vec<String>,
    /// Accepted values of RTMR2 (kernel command line, initrd). Empty: any.
    #[serde(default)]
    pub rtmr2: Vec<String>,
    /// Accepted values of RTMR3 (extended at run time). Empty: any.
    #[serde(default)]
    pub rtmr3: Vec<String>,
}

impl TdxRules {
    fn rtmrs(&self) -> [&[String]; 4] {
        [&self.rtmr0, &self.rtmr1, &self.rtmr2, &self.rtmr3]
    }
}

/// A 48-byte register value in lowercase hex, as the claims carry it.
fn check_48_hex(what: &str, m: &str) -> Result<(), String> {
    if hex::decode(m).map_or(true, |b| b.len() != 48) || m.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "policy: {what} {m:?} is not 48 bytes of lowercase hex"
        ));
    }
    Ok(())
}

impl Policy {
    /// Parses and checks a policy.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let p: Policy = toml::from_str(text).map_err(|e| format!("policy: {e}"))?;
        if p.tee.is_empty() {
            return Err("policy: `tee` must name at least one TEE type".into());
        }
        for t in &p.tee {
            if !["snp", "tdx", "sample"].contains(&t.as_str()) {
                return Err(format!("policy: unknown TEE type {t:?} (snp, tdx, sample)"));
            }
        }
        for m in &p.measurements {
            check_48_hex("measurement", m)?;
        }
        for (i, list) in p.tdx.iter().flat_map(|t| t.rtmrs().into_iter().enumerate()) {
            for m in list {
                check_48_hex(&format!("tdx.rtmr{i}"), m)?;
            }
        }
        Ok(p)
    }

    /// Whether the policy accepts the `sample` TEE (no hardware root of trust).
    pub fn allows_sample(&self) -> bool {
        self.tee.iter().any(|t| t == "sample")
    }

    /// Evaluates the policy; `Err` holds the reason for the audit log and the client.
    pub fn evaluate(
        &self,
        c: &Claims,
        job: Option<&str>,
        now: u64,
        releases: u64,
    ) -> Result<(), String> {
        if !self.tee.contains(&c.tee) {
            return Err(format!("TEE {} not allowed by the policy", c.tee));
        }
        if let Some(exp) = self.expires {
            if now >= exp {
                return Err(format!("policy expired at {exp}"));
            }
        }
        if let Some(max) = self.max_releases {
            if releases >= max {
                return Err(format!("release limit {max} reached"));
            }
        }
        if !self.measurements.is_empty() {
            match &c.measurement {
                Some(m) if self.measurements.contains(m) => {}
                Some(m) => return Err(format!("measurement {m} not allowed")),
                None => return Err("evidence carries no measurement".into()),
            }
        }
        if !self.jobs.is_empty() && !job.is_some_and(|j| self.jobs.iter().any(|x| x == j)) {
            return Err(format!("job {:?} not allowed", job.unwrap_or("")));
        }
        if c.tee == "snp" {
            let r = self.snp.clone().unwrap_or_default();
            let tcb = c.snp_tcb.ok_or("SNP evidence without a TCB")?;
            let min_v = r.min_report_version.unwrap_or(2);
            if c.report_version.unwrap_or(0) < min_v {
                return Err(format!("SNP report version below {min_v}"));
            }
            if tcb.bootloader < r.min_bootloader
                || tcb.tee < r.min_tee
                || tcb.snp < r.min_snp
                || tcb.microcode < r.min_microcode
            {
                return Err(format!(
                    "SNP TCB bootloader {} tee {} snp {} microcode {} below the policy's minimum",
                    tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode
                ));
            }
        }
        if c.tee == "tdx" {
            let allowed = self
                .tdx
                .as_ref()
                .map(|t| t.allow_status.clone())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| vec!["UpToDate".into()]);
            let st = c.tdx_status.as_deref().unwrap_or("");
            if !allowed.iter().any(|a| a == st) {
                return Err(format!("TDX TCB status {st:?} not allowed"));
            }
            if let Some(rules) = &self.tdx {
                for (i, list) in rules.rtmrs().into_iter().enumerate() {
                    if list.is_empty() {
                        continue;
                    }
                    match &c.tdx_rtmrs {
                        Some(r) if list.contains(&r[i]) => {}
                        Some(r) => return Err(format!("RTMR{i} {} not allowed", r[i])),
                        None => return Err("TDX evidence without RTMRs".into()),
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tdx_claims(rtmr: [&str; 4]) -> Claims {
        Claims {
            tee: "tdx".into(),
            measurement: Some("aa".repeat(48)),
            snp_tcb: None,
            report_version: None,
            tdx_status: Some("UpToDate".into()),
            tdx_rtmrs: Some(rtmr.map(|r| r.repeat(48))),
            insecure: false,
        }
    }

    #[test]
    fn rtmr_rules_accept_listed_values_and_deny_others() {
        let p = Policy::parse(&format!(
            "tee = [\"tdx\"]\n[tdx]\nrtmr1 = [\"{}\", \"{}\"]\nrtmr3 = [\"{}\"]\n",
            "11".repeat(48),
            "12".repeat(48),
            "33".repeat(48)
        ))
        .unwrap();
        // RTMR0 and RTMR2 are not constrained; RTMR1 may take either listed value.
        for r1 in ["11", "12"] {
            p.evaluate(&tdx_claims(["00", r1, "ff", "33"]), None, 0, 0)
                .unwrap();
        }
        let e = p
            .evaluate(&tdx_claims(["00", "13", "ff", "33"]), None, 0, 0)
            .unwrap_err();
        assert_eq!(e, format!("RTMR1 {} not allowed", "13".repeat(48)));
        let e = p
            .evaluate(&tdx_claims(["00", "11", "ff", "34"]), None, 0, 0)
            .unwrap_err();
        assert!(e.starts_with("RTMR3 "), "{e}");
        let mut none = tdx_claims(["00", "11", "ff", "33"]);
        none.tdx_rtmrs = None;
        assert_eq!(
            p.evaluate(&none, None, 0, 0).unwrap_err(),
            "TDX evidence without RTMRs"
        );
        // Without RTMR rules any value passes.
        let open = Policy::parse("tee = [\"tdx\"]\n").unwrap();
        open.evaluate(&tdx_claims(["01", "02", "03", "04"]), None, 0, 0)
            .unwrap();
    }

    #[test]
    fn malformed_rtmr_values_are_refused_at_parse() {
        for bad in ["AA".repeat(48), "aa".repeat(47), "zz".repeat(48)] {
            let e = Policy::parse(&format!("tee = [\"tdx\"]\n[tdx]\nrtmr2 = [\"{bad}\"]\n"))
                .unwrap_err();
            assert!(e.contains("tdx.rtmr2"), "{e}");
        }
        assert!(Policy::parse("tee = [\"tdx\"]\n[tdx]\nrtmr4 = []\n").is_err());
    }
}
