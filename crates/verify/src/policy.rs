//! Per-dataset release policy (§4 of docs/broker-protocol.md), written by the owner in
//! TOML. A release is granted only if every rule present holds.

use serde::{Deserialize, Serialize};

use crate::Claims;

/// A policy that does not parse or check (§4 of docs/broker-protocol.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy: {0}")]
pub struct PolicyError(pub String);

/// Longest job name a client may send, and a policy may list (bytes).
pub const MAX_JOB_NAME: usize = 64;

/// Whether `job` is a job name this broker accepts: 1 to [`MAX_JOB_NAME`] characters from
/// `A-Z a-z 0-9 . _ -`. The name is the client's choice, not something attested.
pub fn valid_job_name(job: &str) -> bool {
    !job.is_empty()
        && job.len() <= MAX_JOB_NAME
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `s` is `len` lowercase hex digits: dataset ids (32) and model-spec digests
/// (64), in the one form the policy and the wire both use, so they compare as strings.
pub fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

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
    /// Accepted model specs, by the SHA-256 of their file (lowercase hex, what
    /// `sha256sum spec.toml` prints; `blindfold model spec` prints it too). Empty: any
    /// model. The job declares the spec it trains; the measured image is what makes
    /// it keep its word (docs/threat-model.md).
    #[serde(default)]
    pub models: Vec<String>,
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
    /// For a sealed model: the rules of the service that may serve it (API keys,
    /// query budgets, top-1 only), released with the key (docs/serving.md).
    #[serde(default)]
    pub serve: Option<blindfold_protocol::serve::ServeRules>,
}

/// SEV-SNP rules. The four TCB minimums have no default: a policy that accepts `snp`
/// must state them (0 would accept firmware with every published vulnerability).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpRules {
    /// Lowest PSP bootloader SVN in the reported TCB.
    #[serde(default)]
    pub min_bootloader: Option<u8>,
    /// Lowest PSP OS (TEE) SVN.
    #[serde(default)]
    pub min_tee: Option<u8>,
    /// Lowest SNP firmware SVN.
    #[serde(default)]
    pub min_snp: Option<u8>,
    /// Lowest microcode patch level.
    #[serde(default)]
    pub min_microcode: Option<u8>,
    /// Lowest report version accepted (default 2).
    #[serde(default)]
    pub min_report_version: Option<u32>,
    /// Highest VMPL a report may come from (default 0: the guest's most privileged
    /// level; raise it only for a guest under an SVSM or paravisor whose own
    /// measurement you trust).
    #[serde(default)]
    pub max_vmpl: u32,
    /// Accept a guest whose policy allows a migration agent (bit 18), which can export
    /// the guest's memory (default false).
    #[serde(default)]
    pub allow_migration_agent: bool,
}

impl SnpRules {
    /// The four minimums, or the name of the first one missing.
    fn minimums(&self) -> Result<[u8; 4], &'static str> {
        Ok([
            self.min_bootloader.ok_or("min_bootloader")?,
            self.min_tee.ok_or("min_tee")?,
            self.min_snp.ok_or("min_snp")?,
            self.min_microcode.ok_or("min_microcode")?,
        ])
    }
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
fn check_48_hex(what: &str, m: &str) -> Result<(), PolicyError> {
    if hex::decode(m).map_or(true, |b| b.len() != 48) || m.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(PolicyError(format!(
            "{what} {m:?} is not 48 bytes of lowercase hex"
        )));
    }
    Ok(())
}

impl Policy {
    /// Parses and checks a policy.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let p: Policy = toml::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        if p.tee.is_empty() {
            return Err(PolicyError("`tee` must name at least one TEE type".into()));
        }
        for t in &p.tee {
            if !["snp", "tdx", "sample"].contains(&t.as_str()) {
                return Err(PolicyError(format!(
                    "unknown TEE type {t:?} (snp, tdx, sample)"
                )));
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
        for m in &p.models {
            if !is_lower_hex(m, 64) {
                return Err(PolicyError(format!(
                    "models: {m:?} is not a SHA-256 in lowercase hex (64 characters)"
                )));
            }
        }
        for j in &p.jobs {
            if !valid_job_name(j) {
                return Err(PolicyError(format!(
                    "job name {j:?}: use 1-{MAX_JOB_NAME} characters from A-Z a-z 0-9 . _ -"
                )));
            }
        }
        if let Some(s) = &p.serve {
            s.check().map_err(PolicyError)?;
        }
        if p.tee.iter().any(|t| t == "snp") {
            let rules = p.snp.as_ref().ok_or_else(|| {
                PolicyError(
                    "a policy that accepts `snp` needs an [snp] table with min_bootloader, min_tee, min_snp and min_microcode: there is no safe default (AMD's security bulletins give the fixed versions for your processors)".into(),
                )
            })?;
            if let Err(missing) = rules.minimums() {
                return Err(PolicyError(format!(
                    "[snp] {missing} is missing: state every TCB minimum (there is no safe default)"
                )));
            }
        }
        Ok(p)
    }

    /// Whether the policy accepts the `sample` TEE (no hardware root of trust).
    pub fn allows_sample(&self) -> bool {
        self.tee.iter().any(|t| t == "sample")
    }

    /// What the owner should know before registering this policy: settings that let
    /// jobs through that the owner may not mean to.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = vec![];
        if self.allows_sample() {
            w.push("this policy accepts the `sample` TEE, which proves nothing about the job; every such release is marked in the audit log".into());
        }
        if self.measurements.is_empty() && self.tee.iter().any(|t| t != "sample") {
            w.push("this policy lists no measurements: any code in an accepted TEE gets the key (list the launch measurement or MRTD of your job's image)".into());
        }
        if !self.models.is_empty() {
            let tdx_unpinned = self.tee.iter().any(|t| t == "tdx")
                && self
                    .tdx
                    .as_ref()
                    .is_none_or(|t| t.rtmrs().into_iter().all(|l| l.is_empty()));
            if self.measurements.is_empty() || tdx_unpinned || self.allows_sample() {
                w.push("this policy lists models, but a job declares its model itself: the list binds only code the policy pins (SNP: measurements; TDX: RTMRs too, since MRTD measures only the firmware), never the sample TEE".into());
            }
        }
        if self.serve.as_ref().is_some_and(|s| s.clients.is_empty()) {
            w.push("this policy's [serve] table lists no clients: a service given this model answers nobody".into());
        }
        if self.jobs.is_empty() {
            w.push("this policy lists no jobs: the job name is the client's choice anyway, not attested; it only keeps honest jobs apart".into());
        }
        w
    }

    /// Evaluates the policy; `Err` holds the reason for the audit log and the client.
    pub fn evaluate(
        &self,
        c: &Claims,
        job: Option<&str>,
        model: Option<&str>,
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
            let r = self.snp.as_ref().ok_or("the policy has no [snp] rules")?;
            let [min_bl, min_tee, min_snp, min_uc] = r
                .minimums()
                .map_err(|m| format!("the policy's [snp] {m} is missing"))?;
            let s = c.snp.ok_or("SNP evidence without a TCB")?;
            let tcb = s.tcb;
            let min_v = r.min_report_version.unwrap_or(2);
            if s.report_version < min_v {
                return Err(format!("SNP report version below {min_v}"));
            }
            if s.vmpl > r.max_vmpl {
                return Err(format!(
                    "SNP report from VMPL {} (the policy allows up to {})",
                    s.vmpl, r.max_vmpl
                ));
            }
            if s.migrate_ma && !r.allow_migration_agent {
                return Err(
                    "the SNP guest allows a migration agent (policy bit 18), which the policy does not"
                        .into(),
                );
            }
            if tcb.bootloader < min_bl
                || tcb.tee < min_tee
                || tcb.snp < min_snp
                || tcb.microcode < min_uc
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
        // Last, so that a denial names the model only to evidence every other rule
        // accepts (a guest the policy refuses anyway learns nothing of the list).
        if !self.models.is_empty() && !model.is_some_and(|m| self.models.iter().any(|x| x == m)) {
            return Err(match model {
                Some(m) => format!("model spec {m} not allowed"),
                None => "the job declared no model spec, and the policy lists the ones it accepts"
                    .into(),
            });
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
            snp: None,
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
            p.evaluate(&tdx_claims(["00", r1, "ff", "33"]), None, None, 0, 0)
                .unwrap();
        }
        let e = p
            .evaluate(&tdx_claims(["00", "13", "ff", "33"]), None, None, 0, 0)
            .unwrap_err();
        assert_eq!(e, format!("RTMR1 {} not allowed", "13".repeat(48)));
        let e = p
            .evaluate(&tdx_claims(["00", "11", "ff", "34"]), None, None, 0, 0)
            .unwrap_err();
        assert!(e.starts_with("RTMR3 "), "{e}");
        let mut none = tdx_claims(["00", "11", "ff", "33"]);
        none.tdx_rtmrs = None;
        assert_eq!(
            p.evaluate(&none, None, None, 0, 0).unwrap_err(),
            "TDX evidence without RTMRs"
        );
        // Without RTMR rules any value passes.
        let open = Policy::parse("tee = [\"tdx\"]\n").unwrap();
        open.evaluate(&tdx_claims(["01", "02", "03", "04"]), None, None, 0, 0)
            .unwrap();
    }

    #[test]
    fn malformed_rtmr_values_are_refused_at_parse() {
        for bad in ["AA".repeat(48), "aa".repeat(47), "zz".repeat(48)] {
            let e = Policy::parse(&format!("tee = [\"tdx\"]\n[tdx]\nrtmr2 = [\"{bad}\"]\n"))
                .unwrap_err();
            assert!(e.to_string().contains("tdx.rtmr2"), "{e}");
        }
        assert!(Policy::parse("tee = [\"tdx\"]\n[tdx]\nrtmr4 = []\n").is_err());
    }

    const SNP_RULES: &str =
        "[snp]\nmin_bootloader = 3\nmin_tee = 0\nmin_snp = 8\nmin_microcode = 115\n";

    fn snp_claims(vmpl: u32, migrate_ma: bool) -> Claims {
        Claims {
            tee: "snp".into(),
            measurement: Some("aa".repeat(48)),
            snp: Some(crate::SnpClaims {
                tcb: crate::SnpTcb {
                    bootloader: 3,
                    tee: 0,
                    snp: 8,
                    microcode: 115,
                },
                report_version: 2,
                vmpl,
                migrate_ma,
            }),
            tdx_status: None,
            tdx_rtmrs: None,
            insecure: false,
        }
    }

    /// There is no default TCB minimum: an SNP policy without them is refused when it
    /// is parsed, before it can release anything.
    #[test]
    fn an_snp_policy_must_state_every_tcb_minimum() {
        let e = Policy::parse("tee = [\"snp\"]\n").unwrap_err();
        assert!(e.to_string().contains("no safe default"), "{e}");
        for field in ["min_bootloader", "min_tee", "min_snp", "min_microcode"] {
            let partial: String = SNP_RULES
                .lines()
                .filter(|l| !l.starts_with(field))
                .map(|l| format!("{l}\n"))
                .collect();
            let e = Policy::parse(&format!("tee = [\"snp\"]\n{partial}")).unwrap_err();
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
        let p = Policy::parse(&format!("tee = [\"snp\"]\n{SNP_RULES}")).unwrap();
        p.evaluate(&snp_claims(0, false), None, None, 0, 0).unwrap();
        // One below any minimum is refused.
        let mut low = snp_claims(0, false);
        low.snp.as_mut().unwrap().tcb.microcode = 114;
        assert!(p
            .evaluate(&low, None, None, 0, 0)
            .unwrap_err()
            .contains("below"));
        // A TDX-only policy needs no [snp] table.
        Policy::parse("tee = [\"tdx\"]\n").unwrap();
    }

    #[test]
    fn snp_vmpl_and_migration_agent_are_refused_unless_allowed() {
        let strict = Policy::parse(&format!("tee = [\"snp\"]\n{SNP_RULES}")).unwrap();
        let e = strict
            .evaluate(&snp_claims(1, false), None, None, 0, 0)
            .unwrap_err();
        assert!(e.contains("VMPL 1"), "{e}");
        let e = strict
            .evaluate(&snp_claims(0, true), None, None, 0, 0)
            .unwrap_err();
        assert!(e.contains("migration agent"), "{e}");
        let lax = Policy::parse(&format!(
            "tee = [\"snp\"]\n{SNP_RULES}max_vmpl = 1\nallow_migration_agent = true\n"
        ))
        .unwrap();
        lax.evaluate(&snp_claims(1, true), None, None, 0, 0)
            .unwrap();
        assert!(lax
            .evaluate(&snp_claims(2, false), None, None, 0, 0)
            .is_err());
    }

    #[test]
    fn job_names_are_bounded_and_plain() {
        assert!(valid_job_name("fashion-cnn_v2.1"));
        for bad in ["", "a b", "x\n", "é", &"j".repeat(MAX_JOB_NAME + 1)] {
            assert!(!valid_job_name(bad), "{bad:?}");
            let e = Policy::parse(&format!("tee = [\"sample\"]\njobs = [{bad:?}]\n"));
            assert!(e.is_err(), "{bad:?}");
        }
        assert!(valid_job_name(&"j".repeat(MAX_JOB_NAME)));
    }

    #[test]
    fn warnings_name_what_the_policy_leaves_open() {
        let w = Policy::parse("tee = [\"tdx\"]\n").unwrap().warnings();
        assert!(w.iter().any(|w| w.contains("no measurements")), "{w:?}");
        let w = Policy::parse(&format!(
            "tee = [\"tdx\"]\nmeasurements = [\"{}\"]\njobs = [\"a\"]\n",
            "ab".repeat(48)
        ))
        .unwrap()
        .warnings();
        assert!(w.is_empty(), "{w:?}");
        let w = Policy::parse("tee = [\"sample\"]\njobs = [\"a\"]\n")
            .unwrap()
            .warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("sample"));
    }

    #[test]
    fn models_lists_the_spec_digests_it_accepts() {
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        let p = Policy::parse(&format!(
            "tee = [\"tdx\"]\nmeasurements = [\"{}\"]\nmodels = [\"{a}\"]\n",
            "aa".repeat(48)
        ))
        .unwrap();
        let c = tdx_claims(["00", "00", "00", "00"]);
        p.evaluate(&c, None, Some(&a), 0, 0).unwrap();
        let e = p.evaluate(&c, None, Some(&b), 0, 0).unwrap_err();
        assert!(e.contains("model spec") && e.contains(&b), "{e}");
        let e = p.evaluate(&c, None, None, 0, 0).unwrap_err();
        assert!(e.contains("declared no model spec"), "{e}");
        // No list: any model, or none.
        let open = Policy::parse("tee = [\"tdx\"]\n").unwrap();
        open.evaluate(&c, None, Some(&b), 0, 0).unwrap();
        open.evaluate(&c, None, None, 0, 0).unwrap();
        // Checked last: evidence another rule refuses learns nothing of the list.
        let pinned = Policy::parse(&format!(
            "tee = [\"tdx\"]\nmeasurements = [\"{}\"]\nmodels = [\"{a}\"]\n[tdx]\nrtmr1 = [\"{}\"]\n",
            "aa".repeat(48),
            "11".repeat(48)
        ))
        .unwrap();
        let e = pinned.evaluate(&c, None, Some(&b), 0, 0).unwrap_err();
        assert!(e.contains("RTMR1") && !e.contains("model"), "{e}");
        // A list that no pin binds is warned about (TDX without RTMRs; sample).
        assert!(p.warnings().iter().any(|w| w.contains("RTMRs")));
        assert!(!pinned.warnings().iter().any(|w| w.contains("lists models")));
        // Entries are digests, in the form sha256sum prints.
        for bad in ["AB".repeat(32), "ab".repeat(31), "lenet5".into()] {
            let e = Policy::parse(&format!("tee = [\"tdx\"]\nmodels = [\"{bad}\"]\n"));
            assert!(e.unwrap_err().to_string().contains("SHA-256"), "{bad}");
        }
    }
}
