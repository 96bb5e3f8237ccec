//! Property tests: any schema, record count, chunk size and suite seals and opens back to
//! the same bytes, whole and chunk by chunk (random access).

use blindfold_format::*;
use proptest::prelude::*;

fn schema() -> impl Strategy<Value = Schema> {
    (
        prop::sample::select(DType::ALL.to_vec()),
        prop::collection::vec(1u32..5, 0..4),
        prop::option::of(prop::sample::select(DType::ALL.to_vec())),
    )
        .prop_map(|(dtype, shape, label)| Schema {
            dtype,
            shape,
            label,
        })
}

fn suite() -> impl Strategy<Value = Suite> {
    prop::sample::select(vec![Suite::Aes256Gcm, Suite::ChaCha20Poly1305])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn seal_open_roundtrip(schema in schema(), records in 0u64..120, rpc in 1u32..17, suite in suite(),
                           split in "[a-z0-9_-]{1,32}", index in any::<u32>(), first in 0u64..1_000_000, seed in any::<u8>()) {
        let key = DatasetKey::generate().unwrap();
        let len = records as usize * schema.record_size();
        let plain: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let params = ShardParams { suite, dataset_id: DatasetId::generate().unwrap(), split, index,
            schema: schema.clone(), records_per_chunk: rpc, record_count: records, first_record: first };
        let (shard, digest) = seal_shard(&key, params.clone(), &plain).unwrap();
        let (h, out) = open_shard(&key, &shard).unwrap();
        prop_assert_eq!(&out, &plain);
        prop_assert_eq!(&h.params, &params);
        prop_assert_eq!(h.shard_len(), shard.len() as u64);
        prop_assert_eq!(ShardHeader::header_len_from_prefix(&shard).unwrap(), h.header_len);
        // Random access: every chunk opens alone and holds the records it should.
        let opener = ShardOpener::new(&key, &shard).unwrap();
        prop_assert_eq!(opener.header_digest(), digest);
        let rs = schema.record_size();
        for i in 0..h.chunk_count() {
            let r = h.chunk_range(i);
            let mut buf = shard[r.start as usize..r.end as usize].to_vec();
            let pt = opener.open_chunk(i, &mut buf).unwrap();
            let from = (i * rpc as u64) as usize * rs;
            prop_assert_eq!(&pt[..], &plain[from..from + pt.len()]);
        }
    }

    #[test]
    fn parsers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = ShardHeader::parse(&bytes);
        let _ = Manifest::parse_unverified(&bytes);
        let key = DatasetKey::from_bytes([1; 32]);
        let _ = Manifest::open(&key, &bytes);
        let _ = ShardOpener::new(&key, &bytes);
    }

    #[test]
    fn manifest_roundtrip(version in 1u64..1000, n_splits in 1usize..4, meta in prop::collection::vec(any::<u8>(), 0..300)) {
        let (key, id, manifest, bytes) = sample_manifest(version, n_splits, &meta);
        let opened = Manifest::open(&key, &bytes).unwrap();
        prop_assert_eq!(&opened, &manifest);
        prop_assert_eq!(&opened.open_metadata(&key).unwrap()[..], &meta[..]);
        prop_assert_eq!(Manifest::parse_unverified(&bytes).unwrap().dataset_id, id);
    }
}

fn sample_manifest(
    version: u64,
    n_splits: usize,
    meta: &[u8],
) -> (DatasetKey, DatasetId, Manifest, Vec<u8>) {
    let key = DatasetKey::generate().unwrap();
    let id = DatasetId::generate().unwrap();
    let schema = Schema {
        dtype: DType::U8,
        shape: vec![3],
        label: Some(DType::U8),
    };
    let splits = (0..n_splits)
        .map(|s| {
            let name = format!("s{s}");
            let mut params = ShardParams {
                suite: Suite::Aes256Gcm,
                dataset_id: id,
                split: name.clone(),
                index: 0,
                schema: schema.clone(),
                records_per_chunk: 4,
                record_count: 5,
                first_record: 0,
            };
            let mut shards = vec![];
            for index in 0..2u32 {
                params.index = index;
                params.first_record = 5 * index as u64;
                let sealer = ShardSealer::new(&key, params.clone()).unwrap();
                shards.push(ShardEntry {
                    index,
                    path: shard_path(&name, index, &sealer.header().salt),
                    records: 5,
                    first_record: 5 * index as u64,
                    size: sealer.header().shard_len(),
                    header_sha256: sealer.header_digest(),
                });
            }
            Split {
                name,
                records: 10,
                shards,
            }
        })
        .collect();
    let (m, bytes) =
        Manifest::seal(&key, id, Suite::Aes256Gcm, version, schema, 4, splits, meta).unwrap();
    (key, id, m, bytes)
}

#[test]
fn shard_paths_are_strict() {
    assert!(valid_shard_path(
        "shards/train-00000-0123456789abcdef.bfs",
        "train",
        0
    ));
    assert!(valid_shard_path(
        "shards/train-123456-0123456789abcdef.bfs",
        "train",
        123456
    ));
    for bad in [
        "shards/train-00001-0123456789abcdef.bfs",
        "shards/test-00000-0123456789abcdef.bfs",
        "shards/train-0000-0123456789abcdef.bfs",
        "shards/train-00000-0123456789ABCDEF.bfs",
        "shards/train-00000-0123456789abcde.bfs",
        "../train-00000-0123456789abcdef.bfs",
        "shards/../shards/train-00000-0123456789abcdef.bfs",
        "/shards/train-00000-0123456789abcdef.bfs",
        "shards/train-00000-0123456789abcdef.bfs/x",
        "shards/train-000000-0123456789abcdef.bfs",
    ] {
        assert!(!valid_shard_path(bad, "train", 0), "{bad}");
    }
}

/// A manifest's body re-framed (the tag left as it was): enough for
/// `parse_unverified`, which reads untrusted bytes before any key exists.
fn reframe(bytes: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = bytes[..12].to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&bytes[bytes.len() - 32..]);
    out
}

/// The split list is bounded ([`MAX_SPLITS`]) and checked for duplicates in linear
/// time: a manifest of many tiny splits cannot make the key-less parse (which the
/// trainer runs before it attests) quadratic. Before, 100 000 empty splits were
/// compared pairwise.
#[test]
fn a_manifest_with_too_many_splits_is_refused() {
    let (_, _, _, bytes) = sample_manifest(1, 1, b"m");
    let body_len = u32::from_be_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let mut body: serde_json::Value = serde_json::from_slice(&bytes[16..16 + body_len]).unwrap();
    let split = |i: usize| serde_json::json!({"name": format!("s{i}"), "records": 0, "shards": []});
    body["splits"] = (0..=MAX_SPLITS).map(split).collect();
    let too_many = reframe(&bytes, &serde_json::to_vec(&body).unwrap());
    let e = Manifest::parse_unverified(&too_many).unwrap_err();
    assert!(e.to_string().contains("splits (at most 1024)"), "{e}");
    body["splits"] = (0..MAX_SPLITS).map(split).collect();
    Manifest::parse_unverified(&reframe(&bytes, &serde_json::to_vec(&body).unwrap())).unwrap();
    // A duplicate far down the list is still found.
    body["splits"][MAX_SPLITS - 1]["name"] = "s3".into();
    let e = Manifest::parse_unverified(&reframe(&bytes, &serde_json::to_vec(&body).unwrap()))
        .unwrap_err();
    assert!(e.to_string().contains("listed twice"), "{e}");
    // An object longer than any manifest is refused by its length alone.
    let mut huge = bytes.clone();
    huge.resize(MAX_MANIFEST_LEN as usize + 1, 0);
    let e = Manifest::parse_unverified(&huge).unwrap_err();
    assert!(
        e.to_string().contains("larger than a manifest may be"),
        "{e}"
    );
}
