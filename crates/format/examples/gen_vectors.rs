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
        println!("wrote {}.vec", v.name);
    }
}
