//! Writes the known-answer vectors in `testdata/vectors/` (§9 of docs/sealed-format.md).
//!
//! Run from the workspace root: `cargo run -p blindfold-format --example gen_vectors`.
//! The vectors use fixed keys, salts and nonce prefixes, so regenerating them gives the
//! same bytes; `tests/vectors.rs` checks them with an independent implementation.

use std::fmt::Write as _;

use blindfold_format::*;

struct V {
    name: &'static str,
    comment: &'static str,
    expect: &'static str,
    suite: Suite,
    schema: Schema,
    rpc: u32,
    records: u64,
    open_key: Option<[u8; 32]>,
    mutate: fn(&mut Vec<u8>),
}

fn seq(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn main() {
    let key = [0x42u8; 32];
    let id = DatasetId(*b"blindfold-vector");
    let u8x3 = Schema {
        dtype: DType::U8,
        shape: vec![3],
        label: Some(DType::U8),
    };
    let vectors = [
        V {
            name: "aes-multi-chunk",
            comment: "10 records of 3 u8 + u8 label, 4 per chunk: 3 chunks, the last short",
            expect: "ok",
            suite: Suite::Aes256Gcm,
            schema: u8x3.clone(),
            rpc: 4,
            records: 10,
            open_key: None,
            mutate: |_| {},
        },
        V {
            name: "chacha-multi-chunk",
            comment: "as aes-multi-chunk with ChaCha20-Poly1305",
            expect: "ok",
            suite: Suite::ChaCha20Poly1305,
            schema: u8x3.clone(),
            rpc: 4,
            records: 10,
            open_key: None,
            mutate: |_| {},
        },
        V {
            name: "aes-empty",
            comment: "no records: one empty final chunk",
            expect: "ok",
            suite: Suite::Aes256Gcm,
            schema: Schema::raw(),
            rpc: 16,
            records: 0,
            open_key: None,
            mutate: |_| {},
        },
        V {
            name: "aes-f32-2d-i64-label",
            comment: "2x2 f32 features and an i64 label, exact multiple of the chunk",
            expect: "ok",
            suite: Suite::Aes256Gcm,
            schema: Schema {
                dtype: DType::F32,
                shape: vec![2, 2],
                label: Some(DType::I64),
            },
            rpc: 2,
            records: 4,
            open_key: None,
            mutate: |_| {},
        },
        V {
            name: "tampered-chunk",
            comment: "aes-multi-chunk with the first ciphertext byte of chunk 1 flipped",
            expect: "tampered",
            suite: Suite::Aes256Gcm,
            schema: u8x3.clone(),
            rpc: 4,
            records: 10,
            open_key: None,
            mutate: |s| {
                let h = ShardHeader::parse(s).unwrap();
                let at = h.chunk_range(1).start as usize;
                s[at] ^= 1;
            },
        },
        V {
            name: "truncated-last-chunk",
            comment: "aes-multi-chunk without its last chunk",
            expect: "truncated",
            suite: Suite::Aes256Gcm,
            schema: u8x3.clone(),
            rpc: 4,
            records: 10,
            open_key: None,
            mutate: |s| {
                let h = ShardHeader::parse(s).unwrap();
                let at = h.chunk_range(2).start as usize;
                s.truncate(at);
            },
        },
        V {
            name: "wrong-key",
            comment: "aes-multi-chunk opened with another key: the commitment check refuses it",
            expect: "wrong-key",
            suite: Suite::Aes256Gcm,
            schema: u8x3.clone(),
            rpc: 4,
            records: 10,
            open_key: Some([0x43; 32]),
            mutate: |_| {},
        },
        V {
            name: "tampered-header",
            comment:
                "aes-multi-chunk with its record count changed from 10 to 8 (header tag fails)",
            expect: "tampered",
            suite: Suite::Aes256Gcm,
            schema: u8x3,
            rpc: 4,
            records: 10,
            open_key: None,
            mutate: |s| {
                let h = ShardHeader::parse(s).unwrap();
                let at = h.header_len - 32 - 16 + 7;
                s[at] = 8;
            },
        },
    ];
    let corpus = std::path::Path::new("fuzz/corpus");
    for t in ["shard_header", "shard_open", "manifest", "importers"] {
        std::fs::create_dir_all(corpus.join(t)).unwrap();
    }
    let dir = std::path::Path::new("testdata/vectors");
    std::fs::create_dir_all(dir).unwrap();
    for v in vectors {
        let params = ShardParams {
            suite: v.suite,
            dataset_id: id,
            split: "train".into(),
            index: 3,
            schema: v.schema.clone(),
            records_per_chunk: v.rpc,
            record_count: v.records,
            first_record: 30,
        };
        let plain = seq(
            v.records as usize * v.schema.record_size(),
            v.name.len() as u8,
        );
        let salt: [u8; 32] = core::array::from_fn(|i| i as u8);
        let prefix = [0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6];
        let sealer =
            ShardSealer::with_randomness(&DatasetKey::from_bytes(key), params, salt, prefix)
                .unwrap();
        let (mut shard, _) = seal_with(sealer, &plain).unwrap();
        (v.mutate)(&mut shard);
        let mut head = String::new();
        writeln!(head, "comment: {}", v.comment).unwrap();
        writeln!(head, "expect: {}", v.expect).unwrap();
        writeln!(head, "key: {}", hex::encode(key)).unwrap();
        writeln!(head, "open_key: {}", hex::encode(v.open_key.unwrap_or(key))).unwrap();
        writeln!(head, "plaintext: {}", hex::encode(&plain)).unwrap();
        writeln!(head, "plaintext_sha256: {}", hex::encode(sha256(&plain))).unwrap();
        head.push_str("---\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(&shard);
        std::fs::write(dir.join(format!("{}.vec", v.name)), out).unwrap();
        // Seeds for the fuzzers: every vector's shard (sealed under the fuzz key).
        assert_eq!(key, blindfold_format::fuzz::FUZZ_KEY);
        std::fs::write(corpus.join("shard_header").join(v.name), &shard).unwrap();
        std::fs::write(corpus.join("shard_open").join(v.name), &shard).unwrap();
        if v.name == "aes-multi-chunk" {
            let h = ShardHeader::parse(&shard).unwrap();
            // A manifest listing one split whose only shard is index 0.
            let p0 = ShardParams {
                index: 0,
                first_record: 0,
                ..h.params.clone()
            };
            let s0 = ShardSealer::with_randomness(&DatasetKey::from_bytes(key), p0, salt, prefix)
                .unwrap();
            let e0 = ShardEntry {
                index: 0,
                path: shard_path("train", 0, &salt),
                records: 10,
                first_record: 0,
                size: s0.header().shard_len(),
                header_sha256: s0.header_digest(),
            };
            let split = Split {
                name: "train".into(),
                records: 10,
                shards: vec![e0],
            };
            let (_, m) = Manifest::seal(
                &DatasetKey::from_bytes(key),
                id,
                Suite::Aes256Gcm,
                1,
                h.params.schema.clone(),
                h.params.records_per_chunk,
                vec![split],
                br#"{"importer":"raw","file":"x"}"#,
            )
            .unwrap();
            // The metadata nonce is random: keep committed manifest seeds as they are.
            if !corpus.join("manifest").join("one-split").exists() {
                std::fs::write(corpus.join("manifest").join("one-split"), &m).unwrap();
                let mut t = m.clone();
                let n = t.len();
                t[n - 1] ^= 1;
                std::fs::write(corpus.join("manifest").join("bad-tag"), &t).unwrap();
            }
        }
        println!("wrote {}.vec", v.name);
    }
    // Importer seeds: first byte 0 = IDX, 1 = NPY.
    let mut idx = vec![0u8, 0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
    idx.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    std::fs::write(corpus.join("importers").join("idx-u8"), &idx).unwrap();
    // Sealed outputs, one authenticated by a dataset key (the fuzz key) and one
    // unauthenticated (HPKE is randomized: written only when absent, so that rerunning
    // this program leaves the committed files unchanged).
    std::fs::create_dir_all(corpus.join("output")).unwrap();
    let fuzz_key = DatasetKey::from_bytes(blindfold_format::fuzz::FUZZ_KEY);
    for (seed, source) in [
        (
            "model",
            Some(blindfold_format::OutputSource {
                dataset_id: "42".repeat(16),
                version: 1,
                manifest_sha256: "ab".repeat(32),
            }),
        ),
        ("baseline", None),
    ] {
        let path = corpus.join("output").join(seed);
        if path.exists() {
            continue;
        }
        let key = source.as_ref().map(|_| &fuzz_key);
        let header = blindfold_format::OutputHeader::new(
            "model",
            "burnpack",
            source,
            serde_json::json!({"model": "lenet5", "classes": 10}),
        );
        let sealed = blindfold_format::seal_output(
            &blindfold_format::fuzz::fuzz_output_public(),
            &header,
            key,
            b"fuzz seed weights",
            "seed",
        )
        .unwrap();
        std::fs::write(path, sealed).unwrap();
    }
    let mut npy = vec![1u8];
    npy.extend_from_slice(b"\x93NUMPY\x01\x00");
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }          \n";
    npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
    npy.extend_from_slice(h.as_bytes());
    std::fs::write(corpus.join("importers").join("npy-f4"), &npy).unwrap();
}
