//! Replays fuzz/corpus/evidence and mutations of each seed through the fuzz entry point.

#[test]
fn evidence_corpus() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/evidence");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(seeds.len() >= 4);
    for seed in seeds {
        blindfold_broker::fuzz::evidence(&seed);
        // Every 7th byte mutated, and prefixes: the SNP seed is ~3 KB of JSON.
        for i in (0..seed.len()).step_by(7) {
            let mut m = seed.clone();
            m[i] ^= 0x01;
            blindfold_broker::fuzz::evidence(&m);
            blindfold_broker::fuzz::evidence(&seed[..i]);
        }
    }
}
