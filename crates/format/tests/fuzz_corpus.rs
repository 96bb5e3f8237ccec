//! Replays the committed fuzz corpus (fuzz/corpus/) through the same entry points the
//! fuzz targets call, plus every single-byte mutation of each seed, so CI exercises the
//! parsers without a nightly toolchain.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(!out.is_empty(), "empty corpus for {target}");
    out.sort();
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    for seed in corpus(target) {
        f(&seed);
        for i in 0..seed.len() {
            for v in [0u8, 0xff, seed[i] ^ 0x01] {
                let mut m = seed.clone();
                m[i] = v;
                f(&m);
            }
            f(&seed[..i]);
        }
    }
}

#[test]
fn shard_header_corpus() {
    replay("shard_header", blindfold_format::fuzz::shard_header);
}

#[test]
fn shard_open_corpus() {
    replay("shard_open", blindfold_format::fuzz::shard_open);
}

#[test]
fn manifest_corpus() {
    replay("manifest", blindfold_format::fuzz::manifest);
}

#[test]
fn output_corpus() {
    replay("output", blindfold_format::fuzz::output);
    // The committed seeds still open (the corpus is not stale): one authenticated by the
    // fuzz dataset key, one unauthenticated.
    let key = blindfold_format::DatasetKey::from_bytes(blindfold_format::fuzz::FUZZ_KEY);
    let seeds = corpus("output");
    assert_eq!(seeds.len(), 2);
    let mut opened_with_key = 0;
    for seed in &seeds {
        let h = blindfold_format::output_header_unverified(seed, "seed").unwrap();
        let k = h.source.as_ref().map(|_| &key);
        opened_with_key += usize::from(k.is_some());
        assert!(
            blindfold_format::open_output(&blindfold_format::fuzz::FUZZ_KEY, k, seed, "seed")
                .is_ok()
        );
    }
    assert_eq!(opened_with_key, 1);
}
