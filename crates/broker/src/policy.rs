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
            if hex::decode(m).map_or(true, |b| b.len() != 48)
                || m.chars().any(|c| c.is_ascii_uppercase())
            {
                return Err(format!(
                    "policy: measurement {m:?} is not 48 bytes of lowercase hex"
                ));
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
        }
        Ok(())
    }
}
