//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay tests, so
//! that CI runs exactly what the fuzzer runs. Each must never panic, whatever the input.

use crate::{open_shard, DatasetKey, Manifest, ShardHeader};

/// The key the fuzz corpus's valid shards and manifests are sealed under.
pub const FUZZ_KEY: [u8; 32] = [0x42; 32];

/// Parses a shard header; re-encodes nothing. Checks the length helpers agree.
pub fn shard_header(data: &[u8]) {
    if let Ok(h) = ShardHeader::parse(data) {
        let len = ShardHeader::header_len_from_prefix(data).expect("parse implies a valid prefix");
        assert_eq!(len, h.header_len);
        let _ = h.shard_len();
        for i in 0..h.chunk_count().min(4) {
            let r = h.chunk_range(i);
            assert!(r.start < r.end);
        }
    }
}

/// Parses a manifest without and with a key.
pub fn manifest(data: &[u8]) {
    let _ = Manifest::parse_unverified(data);
    let key = DatasetKey::from_bytes(FUZZ_KEY);
    if let Ok(m) = Manifest::open(&key, data) {
        let _ = m.open_metadata(&key);
    }
}

/// Opens a whole shard under the fuzz key.
pub fn shard_open(data: &[u8]) {
    let key = DatasetKey::from_bytes(FUZZ_KEY);
    if let Ok((h, plain)) = open_shard(&key, data) {
        assert_eq!(
            plain.len() as u64,
            h.params.record_count * h.params.schema.record_size() as u64
        );
    }
}
