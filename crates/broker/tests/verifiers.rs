//! The SNP and TDX verifiers on real captured evidence (testdata/evidence/SOURCE.md).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use blindfold_broker::verifier::{Rejection, Verifier};
use serde_json::{json, Value};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/evidence")
            .join(name),
    )
    .unwrap()
}

#[cfg(feature = "snp")]
mod snp {
    use super::*;
    use blindfold_broker::verifier::snp::SnpVerifier;

    fn report() -> Vec<u8> {
        hex::decode(String::from_utf8(data("report_milan.hex")).unwrap().trim()).unwrap()
    }

    fn evidence(report: &[u8]) -> Value {
        json!({"report": STANDARD.encode(report), "vcek": STANDARD.encode(data("vcek_milan.der"))})
    }

    fn own_binding(report: &[u8]) -> [u8; 48] {
        // Report data sits at 0x50..0x90 in the report (64 bytes).
        report[0x50..0x80].try_into().unwrap()
    }

    #[test]
    fn real_milan_report_verifies_and_reports_its_claims() {
        let r = report();
        let v = SnpVerifier::new();
        let (c, rd) = v.verify_signed(&evidence(&r)).unwrap();
        assert_eq!(c.tee, "snp");
        assert_eq!(c.measurement, Some(hex::encode(&r[0x90..0xc0])));
        let snp = c.snp.unwrap();
        assert_eq!(snp.report_version, 2);
        assert_eq!((snp.vmpl, snp.migrate_ma), (0, false));
        assert!(!c.insecure);
        assert_eq!(rd, r[0x50..0x90]);
        // The captured report data ends in non-zero bytes, so it is not a binding followed
        // by zeros: refused for that alone, never padded or truncated.
        assert!(rd[48..].iter().any(|&b| b != 0));
        assert!(
            matches!(v.verify(&evidence(&r), &own_binding(&r)), Err(Rejection::ReportData(m)) if m.contains("48..64"))
        );
        // Any other expected binding is a report-data mismatch (the signature is fine).
        assert!(matches!(
            v.verify(&evidence(&r), &[0x11; 48]),
            Err(Rejection::ReportData(_))
        ));
    }

    /// The same report in the form Trustee's stock client (guest-components' attester)
    /// sends: the raw report is rebuilt from its fields and gives the same claims.
    #[test]
    fn guest_components_form_verifies_like_the_raw_form() {
        let r = report();
        let v = SnpVerifier::new();
        let gc: Value = serde_json::from_slice(&data("snp_guest_components_milan.json")).unwrap();
        let (c, rd) = v.verify_signed(&gc).unwrap();
        let (c_raw, rd_raw) = v.verify_signed(&evidence(&r)).unwrap();
        assert_eq!(rd, rd_raw);
        assert_eq!(c.measurement, c_raw.measurement);
        assert_eq!(c.snp, c_raw.snp);
        assert_eq!(c.snp.unwrap().report_version, 2);
        // A changed measurement or report data no longer matches the signature; a changed
        // chip id no longer matches the VCEK (checked first).
        for (field, i, why) in [
            ("measurement", 0, "not signed"),
            ("report_data", 63, "not signed"),
            ("chip_id", 5, "another chip"),
        ] {
            let mut bad = gc.clone();
            let b = &mut bad["attestation_report"][field][i];
            *b = json!(b.as_u64().unwrap() ^ 1);
            assert!(
                matches!(v.verify_signed(&bad), Err(Rejection::Evidence(m)) if m.contains(why)),
                "{field}"
            );
        }
        // A report claiming another TCB than its VCEK was issued for is refused as such.
        let mut bad = gc.clone();
        bad["attestation_report"]["reported_tcb"]["snp"] = json!(9);
        assert!(
            matches!(v.verify_signed(&bad), Err(Rejection::Evidence(m)) if m.contains("the VCEK is for SNP SPL 8, the report says 9"))
        );
        // A field of the wrong length, a missing VCEK, or another certificate type.
        let mut bad = gc.clone();
        bad["attestation_report"]["measurement"]
            .as_array_mut()
            .unwrap()
            .pop();
        assert!(
            matches!(v.verify_signed(&bad), Err(Rejection::Evidence(m)) if m.contains("measurement is 47 bytes"))
        );
        let mut bad = gc.clone();
        bad["cert_chain"] = json!(null);
        assert!(
            matches!(v.verify_signed(&bad), Err(Rejection::Evidence(m)) if m.contains("no VCEK"))
        );
        let mut bad = gc.clone();
        bad["cert_chain"][0]["cert_type"] = json!("VLEK");
        assert!(v.verify_signed(&bad).is_err());
        let mut bad = gc;
        let c0 = bad["cert_chain"][0].clone();
        bad["cert_chain"].as_array_mut().unwrap().push(c0);
        assert!(
            matches!(v.verify_signed(&bad), Err(Rejection::Evidence(m)) if m.contains("two VCEKs"))
        );
    }

    #[test]
    fn the_vcek_must_match_the_reports_tcb_and_chip() {
        use sev::parser::ByteParser;
        let r = report();
        let vcek = data("vcek_milan.der");
        let rep = sev::firmware::guest::AttestationReport::from_bytes(&r).unwrap();
        blindfold_broker::verifier::snp::check_vcek_binds_report(&vcek, &rep).unwrap();
        // The same VCEK against a report claiming another TCB or chip (checked on the parsed
        // report: a modified report would also fail its signature).
        let mut other_tcb = rep;
        other_tcb.reported_tcb.snp += 1;
        let e = blindfold_broker::verifier::snp::check_vcek_binds_report(&vcek, &other_tcb)
            .unwrap_err();
        assert!(
            matches!(&e, Rejection::Evidence(m) if m.contains("SNP SPL")),
            "{e:?}"
        );
        let mut other_chip = rep;
        other_chip.chip_id[0] ^= 1;
        let e = blindfold_broker::verifier::snp::check_vcek_binds_report(&vcek, &other_chip)
            .unwrap_err();
        assert!(
            matches!(&e, Rejection::Evidence(m) if m.contains("another chip")),
            "{e:?}"
        );
    }

    /// The verifier itself (not only the helper) refuses a report whose reported TCB or
    /// chip id differs from what its VCEK was issued for.
    #[test]
    fn the_verifier_checks_the_vcek_against_the_report() {
        let r = report();
        let v = SnpVerifier::new();
        // REPORTED_TCB at 0x180: bootloader, TEE, 4 reserved, SNP, microcode.
        for (at, what) in [
            (0x180, "bootloader SPL"),
            (0x186, "SNP SPL"),
            (0x187, "microcode SPL"),
            (0x1a0, "another chip"),
        ] {
            let mut t = r.clone();
            t[at] ^= 0x01;
            let res = v.verify(&evidence(&t), &own_binding(&t));
            assert!(
                matches!(&res, Err(Rejection::Evidence(m)) if m.contains(what)),
                "byte {at:#x}: {res:?}"
            );
        }
    }

    /// What blindfold's trainer sends on an SNP guest (built from configfs-tsm's report
    /// and certificate table) is byte for byte what guest-components' attester sends for
    /// the same report, and the broker verifies it.
    #[test]
    fn the_trainers_snp_evidence_is_the_stock_attesters() {
        let r = report();
        let vcek = data("vcek_milan.der");
        // A certificate table as the host returns it: a VCEK entry, the zero entry, the DER.
        let mut table = hex::decode("8d75da6364e66445adc5f4b93be8accd").unwrap();
        table.extend_from_slice(&48u32.to_le_bytes());
        table.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
        table.extend_from_slice(&[0; 24]);
        table.extend_from_slice(&vcek);
        let ours = blindfold_attest::evidence::snp_evidence(&r, Some(&table)).unwrap();
        let stock = String::from_utf8(data("snp_guest_components_milan.json")).unwrap();
        assert_eq!(serde_json::to_string(&ours).unwrap(), stock.trim());
        let v = SnpVerifier::new();
        let (c, rd) = v.verify_signed(&ours).unwrap();
        assert_eq!(rd, r[0x50..0x90]);
        assert_eq!(c.measurement, Some(hex::encode(&r[0x90..0xc0])));
        // No certificate table, or one without a VCEK: the trainer says so before sending.
        for t in [None, Some(&[0u8; 24][..])] {
            let e = blindfold_attest::evidence::snp_evidence(&r, t).unwrap_err();
            assert!(e.to_string().contains("VCEK"), "{e}");
        }
        assert!(blindfold_attest::evidence::snp_evidence(&r[..1000], Some(&table)).is_err());
    }

    /// A guest launched with DEBUG allowed (guest policy bit 19) is refused whatever
    /// the policy says; the migration-agent bit (18) and the VMPL are carried to the
    /// policy. The captured report allows neither.
    #[test]
    fn a_debug_guest_is_refused_and_migration_agent_and_vmpl_are_claimed() {
        use blindfold_broker::verifier::snp::{
            claims_from_report, POLICY_DEBUG, POLICY_MIGRATE_MA,
        };
        use sev::parser::ByteParser;
        let rep = sev::firmware::guest::AttestationReport::from_bytes(&report()).unwrap();
        assert_eq!(
            u64::from(rep.policy) & (POLICY_DEBUG | POLICY_MIGRATE_MA),
            0
        );
        claims_from_report(&rep).unwrap();
        let mut debug = rep;
        debug.policy = (u64::from(rep.policy) | POLICY_DEBUG).into();
        let e = claims_from_report(&debug).unwrap_err();
        assert!(
            matches!(&e, Rejection::Evidence(m) if m.contains("DEBUG")),
            "{e:?}"
        );
        let mut ma = rep;
        ma.policy = (u64::from(rep.policy) | POLICY_MIGRATE_MA).into();
        ma.vmpl = 2;
        let s = claims_from_report(&ma).unwrap().snp.unwrap();
        assert!(s.migrate_ma);
        assert_eq!(s.vmpl, 2);
        // In the signed bytes the policy is covered by the signature: a report edited to
        // clear the bit no longer verifies (policy at 0x08).
        let mut t = report();
        t[0x08 + 2] ^= 0x08;
        assert!(SnpVerifier::new().verify_signed(&evidence(&t)).is_err());
    }

    #[test]
    fn tampered_reports_and_foreign_vceks_are_rejected() {
        let r = report();
        let v = SnpVerifier::new();
        for at in [0x00usize, 0x21, 0x50, 0x90, 0x1a0, 0x2a0 + 5] {
            let mut t = r.clone();
            t[at] ^= 0x01;
            let res = v.verify(&evidence(&t), &own_binding(&t));
            assert!(
                matches!(res, Err(Rejection::Evidence(_))),
                "byte {at:#x}: {res:?}"
            );
        }
        let mut bad_cert = data("vcek_milan.der");
        let n = bad_cert.len();
        bad_cert[n - 10] ^= 1;
        let e = json!({"report": STANDARD.encode(&r), "vcek": STANDARD.encode(bad_cert)});
        assert!(v.verify(&e, &own_binding(&r)).is_err());
        assert!(matches!(
            v.verify(&json!({"report": "AAAA", "vcek": "AAAA"}), &[0; 48]),
            Err(Rejection::Evidence(_))
        ));
        assert!(matches!(
            v.verify(&json!({}), &[0; 48]),
            Err(Rejection::Evidence(_))
        ));
    }
}

#[cfg(feature = "tdx")]
mod tdx {
    use super::*;
    use blindfold_broker::verifier::tdx::TdxVerifier;

    const NOW: u64 = 1_750_400_000; // inside the collateral's validity window

    fn evidence(quote: &[u8]) -> Value {
        json!({"quote": STANDARD.encode(quote), "collateral": serde_json::from_slice::<Value>(&data("tdx_quote_collateral.json")).unwrap()})
    }

    fn report_data(quote: &[u8]) -> [u8; 64] {
        // TDX quote v4: 48-byte header, then the TD report; report data is its last 64 bytes
        // of the 584-byte TD 1.0 body.
        quote[48 + 520..48 + 584].try_into().unwrap()
    }

    #[test]
    fn real_tdx_quote_verifies_at_a_pinned_time() {
        let q = data("tdx_quote");
        let v = TdxVerifier::insecure_fixed_time(NOW);
        let (c, rd) = v.verify_signed(&evidence(&q)).unwrap();
        assert_eq!(c.tee, "tdx");
        assert_eq!(c.tdx_status.as_deref(), Some("UpToDate"));
        assert_eq!(
            c.measurement,
            Some(hex::encode(&q[48 + 136..48 + 184])),
            "MRTD"
        );
        assert_eq!(rd, report_data(&q));
        let expected: [u8; 48] = rd[..48].try_into().unwrap();
        assert!(rd[48..].iter().any(|&b| b != 0));
        assert!(
            matches!(v.verify(&evidence(&q), &expected), Err(Rejection::ReportData(m)) if m.contains("48..64"))
        );
        assert!(matches!(
            v.verify(&evidence(&q), &[0x22; 48]),
            Err(Rejection::ReportData(_))
        ));
        // Today the shipped collateral has expired: the real clock refuses it.
        assert!(matches!(
            TdxVerifier::new().verify(&evidence(&q), &expected),
            Err(Rejection::Evidence(_))
        ));
    }

    /// RTMR0..3 come out of the verified quote for the policy.
    #[test]
    fn rtmrs_are_claimed() {
        let q = data("tdx_quote");
        let (c, _) = TdxVerifier::insecure_fixed_time(NOW)
            .verify_signed(&evidence(&q))
            .unwrap();
        // TD 1.0 report: RTMR0 at 328, each 48 bytes.
        let want: [String; 4] = std::array::from_fn(|i| {
            let at = 48 + 328 + 48 * i;
            hex::encode(&q[at..at + 48])
        });
        assert_eq!(c.tdx_rtmrs, Some(want));
    }

    /// Trustee's stock client sends `{cc_eventlog, quote}` and no collateral: the broker
    /// verifies it with collateral from its own store, which wins over any a client carries.
    #[test]
    fn the_brokers_collateral_store_serves_quotes_without_collateral() {
        use blindfold_broker::add_tdx_collateral as add_collateral;
        let q = data("tdx_quote");
        let stock = json!({"cc_eventlog": "AAAA", "quote": STANDARD.encode(&q)});
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("tdx-collateral");
        let v = TdxVerifier::insecure_fixed_time(NOW).with_collateral_store(&store);
        let e = v.verify_signed(&stock).unwrap_err();
        assert!(
            matches!(&e, Rejection::Evidence(m) if m.contains("holds none for FMSPC B0C06F000000") && m.contains("broker tdx-collateral")),
            "{e:?}"
        );
        let added = add_collateral(&store, &data("tdx_quote_collateral.json")).unwrap();
        assert_eq!(added.fmspc, "B0C06F000000");
        assert_eq!(added.next_update, "2025-07-19T10:16:03Z");
        assert!(added
            .path
            .ends_with(format!("B0C06F000000-{}.json", added.ca)));
        let (c, _) = v.verify_signed(&stock).unwrap();
        assert_eq!(c.tdx_status.as_deref(), Some("UpToDate"));
        // A client's collateral is not used when the store has one for the platform.
        let mut broken = evidence(&q);
        broken["collateral"]["tcb_info"] = json!("{}");
        assert!(v.verify_signed(&broken).is_ok());
        assert!(TdxVerifier::insecure_fixed_time(NOW)
            .verify_signed(&broken)
            .is_err());
        // The store's collateral is checked like any other: expired at today's date.
        let today = TdxVerifier::new().with_collateral_store(&store);
        assert!(
            matches!(today.verify_signed(&stock), Err(Rejection::Evidence(m)) if m.starts_with("quote:"))
        );
        // Adding refuses what is not TDX collateral, and leaves the store as it was.
        let before = std::fs::read_dir(&store).unwrap().count();
        assert!(add_collateral(&store, b"{}").is_err());
        let mut sgx: Value = serde_json::from_slice(&data("tdx_quote_collateral.json")).unwrap();
        sgx["tcb_info"] = json!(sgx["tcb_info"]
            .as_str()
            .unwrap()
            .replace("\"id\":\"TDX\"", "\"id\":\"SGX\""));
        let e = add_collateral(&store, sgx.to_string().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("not TDX"), "{e}");
        assert_eq!(std::fs::read_dir(&store).unwrap().count(), before);
    }

    /// A TD in debug mode (or open to profiling) is refused: `dcap-qvl` refuses it by
    /// default, and blindfold checks the attributes again on the verified report.
    #[test]
    fn a_debug_td_is_refused() {
        use blindfold_broker::verifier::tdx::claims_from_report;
        let q = data("tdx_quote");
        let quote = dcap_qvl::quote::Quote::parse(&q).unwrap();
        let td = *quote.report.as_td10().unwrap();
        assert_eq!(
            td.td_attributes[0] & 0x71,
            0,
            "the captured TD is not a debug TD"
        );
        claims_from_report(&td, "UpToDate".into()).unwrap();
        for (bit, why) in [(0x01, "debug mode"), (0x10, "profiling")] {
            let mut t = td;
            t.td_attributes[0] |= bit;
            let e = claims_from_report(&t, "UpToDate".into()).unwrap_err();
            assert!(
                matches!(&e, Rejection::Evidence(m) if m.contains(why)),
                "{e:?}"
            );
        }
        // The attributes are signed: setting DEBUG in the captured quote breaks it
        // (TD report at 48, TDATTRIBUTES at its byte 120).
        let mut t = q.clone();
        t[48 + 120] |= 0x01;
        assert!(TdxVerifier::insecure_fixed_time(NOW)
            .verify_signed(&evidence(&t))
            .is_err());
    }

    #[test]
    fn tampered_quotes_are_rejected() {
        let q = data("tdx_quote");
        let v = TdxVerifier::insecure_fixed_time(NOW);
        let expected: [u8; 48] = report_data(&q)[..48].try_into().unwrap();
        // Bytes of the signed header and TD report (the quote's own copy of Intel's root
        // and its padding are not covered: the built-in root is what is trusted).
        for at in [8usize, 48 + 16, 48 + 136, 48 + 530] {
            let mut t = q.clone();
            t[at] ^= 0x01;
            let res = v.verify(&evidence(&t), &expected);
            assert!(res.is_err(), "byte {at}: accepted");
        }
        assert!(matches!(
            v.verify(&json!({"quote": "AAAA"}), &expected),
            Err(Rejection::Evidence(_))
        ));
    }
}

/// Requests of Trustee's stock `kbs-client`, captured byte for byte
/// (testdata/trustee/SOURCE.md): its report-data binding is the one blindfold computes.
#[cfg(feature = "sample")]
mod trustee_client {
    use super::*;
    use blindfold_broker::verifier::sample::SampleVerifier;
    use blindfold_protocol::{Attestation, Request, Tee};

    fn captured(name: &str) -> Vec<u8> {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../testdata/trustee")
                .join(name),
        )
        .unwrap()
    }

    #[test]
    fn stock_client_auth_request_parses() {
        let r: Request = serde_json::from_slice(&captured("kbs-client-auth.json")).unwrap();
        assert_eq!(r.version, blindfold_protocol::PROTOCOL_VERSION);
        assert!(matches!(r.tee, Tee::Sample));
    }

    #[test]
    fn stock_client_binding_equals_ours() {
        let a: Attestation = serde_json::from_slice(&captured("kbs-client-attest.json")).unwrap();
        let ours = blindfold_protocol::report_data_binding(
            &a.runtime_data.nonce,
            &a.runtime_data.tee_pubkey,
            &a.tee_evidence.additional_evidence,
        )
        .unwrap();
        let theirs = STANDARD
            .decode(
                a.tee_evidence.primary_evidence["report_data"]
                    .as_str()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(theirs, ours);
        let v = SampleVerifier;
        let c = v.verify(&a.tee_evidence.primary_evidence, &ours).unwrap();
        assert!(c.insecure && c.tee == "sample");
        // The same evidence for another nonce, or for another TEE key, is refused.
        let other_nonce = blindfold_protocol::report_data_binding(
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            &a.runtime_data.tee_pubkey,
            "",
        )
        .unwrap();
        assert!(matches!(
            v.verify(&a.tee_evidence.primary_evidence, &other_nonce),
            Err(Rejection::ReportData(_))
        ));
        let mut key = serde_json::to_value(&a.runtime_data.tee_pubkey).unwrap();
        key["x"] = json!("KUWBCKhF67mHslgORjkTdT9wEzK56mE0J9pbDfR_qsA");
        let other_key = blindfold_protocol::report_data_binding(
            &a.runtime_data.nonce,
            &serde_json::from_value(key).unwrap(),
            "",
        )
        .unwrap();
        assert!(matches!(
            v.verify(&a.tee_evidence.primary_evidence, &other_key),
            Err(Rejection::ReportData(_))
        ));
    }
}
