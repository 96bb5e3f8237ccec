//! Fuzz entry point for the evidence parsers, the policy parser and the SNP certificate
//! table parser of the trainer's side (fuzz/ and the corpus replay test call the same
//! function). Must never panic.

/// The first byte picks the parser; the rest is its input.
pub fn evidence(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let expected = [0u8; 48];
    match which % 5 {
        0 => {
            let _ = crate::policy::Policy::parse(&String::from_utf8_lossy(rest));
        }
        4 => {
            #[cfg(feature = "snp")]
            let _ = blindfold_protocol::snp::parse_cert_table(rest);
        }
        n => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest) else {
                return;
            };
            let tee = ["sample", "snp", "tdx"][(n - 1) as usize];
            if let Ok(ver) = crate::verifier::for_tee(tee) {
                let _ = ver.verify(&v, &expected);
            }
        }
    }
}
