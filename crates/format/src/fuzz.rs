//! Entry points shared by the fuzz targets (`fuzz/`) and the corpus replay tests, so
//! that CI runs exactly what the fuzzer runs. Each must never panic, whatever the input.

use crate::{open_output, open_shard, output_header_unverified, DatasetKey, Manifest, ShardHeader};

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

/// The X25519 public key whose secret key is [`FUZZ_KEY`]: the corpus's sealed outputs
/// are sealed to it.
pub fn fuzz_output_public() -> Vec<u8> {
    use hpke::{Deserializable, Kem, Serializable};
    let sk = <hpke::kem::X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(&FUZZ_KEY)
        .expect("32 bytes are an X25519 secret key");
    <hpke::kem::X25519HkdfSha256 as Kem>::sk_to_pk(&sk)
        .to_bytes()
        .to_vec()
}

/// Parses a sealed output's header, then opens it with [`FUZZ_KEY`] as the recipient's
/// secret key and, when the header names a source dataset, [`FUZZ_KEY`] as its dataset
/// key too.
pub fn output(data: &[u8]) {
    let header = output_header_unverified(data, "fuzz");
    let key = DatasetKey::from_bytes(FUZZ_KEY);
    let dataset_key = match &header {
        Ok(h) if h.source.is_some() => Some(&key),
        _ => None,
    };
    if let Ok((h, _plain)) = open_output(&FUZZ_KEY, dataset_key, data, "fuzz") {
        assert_eq!(
            Some(h),
            header.ok(),
            "an output that opens has a parseable header"
        );
    }
}
