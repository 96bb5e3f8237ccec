//! Replays the importers' fuzz corpus (fuzz/corpus/importers) and its single-byte
//! mutations through the fuzz entry point.

#[test]
fn importers_corpus() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/importers");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!seeds.is_empty());
    for seed in seeds {
        blindfold_dataset::import::fuzz(&seed);
        for i in 0..seed.len() {
            for v in [0u8, 0xff, seed[i] ^ 1] {
                let mut m = seed.clone();
                m[i] = v;
                blindfold_dataset::import::fuzz(&m);
            }
            blindfold_dataset::import::fuzz(&seed[..i]);
        }
    }
}
