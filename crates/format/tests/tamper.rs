//! Tampering with shards and manifests is detected (§5.3 of docs/sealed-format.md).

use blindfold_format::*;

const RPC: u32 = 4;

fn params(id: DatasetId, split: &str, index: u32, records: u64) -> ShardParams {
    ShardParams {
        suite: Suite::Aes256Gcm,
        dataset_id: id,
        split: split.into(),
        index,
        schema: Schema {
            dtype: DType::U8,
            shape: vec![5],
            label: Some(DType::U8),
        },
        records_per_chunk: RPC,
        record_count: records,
        first_record: 0,
    }
}

fn plain(records: u64, seed: u8) -> Vec<u8> {
    (0..records as usize * 6)
        .map(|i| (i as u8) ^ seed)
        .collect()
}

fn shard(key: &DatasetKey, id: DatasetId, index: u32, records: u64) -> (Vec<u8>, Vec<u8>) {
    let p = plain(records, index as u8);
    (
        seal_shard(key, params(id, "train", index, records), &p)
            .unwrap()
            .0,
        p,
    )
}

fn header_len(s: &[u8]) -> usize {
    ShardHeader::header_len_from_prefix(s).unwrap()
}

#[test]
fn every_flipped_bit_is_detected() {
    let key = DatasetKey::generate().unwrap();
    let id = DatasetId::generate().unwrap();
    let (s, _) = shard(&key, id, 0, 10);
    for i in 0..s.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = s.clone();
            t[i] ^= bit;
            let e = open_shard(&key, &t).expect_err(&format!("byte {i} bit {bit:#x} not detected"));
            // Before the tag, some bytes are caught as malformed; none may pass.
            assert!(
                !matches!(e, Error::InvalidArgument(_) | Error::Internal(_)),
                "byte {i}: {e}"
            );
        }
    }
}

#[test]
fn truncation_at_every_byte_is_detected() {
    let key = DatasetKey::generate().unwrap();
    let (s, _) = shard(&key, DatasetId::generate().unwrap(), 0, 10);
    for len in 0..s.len() {
        assert!(
            open_shard(&key, &s[..len]).is_err(),
            "truncated to {len} bytes opened"
        );
    }
    let mut longer = s.clone();
    longer.push(0);
    assert!(matches!(
        open_shard(&key, &longer),
        Err(Error::Length { .. })
    ));
}

#[test]
fn dropping_the_last_chunk_is_detected_even_with_a_forged_count() {
    // Truncating at a chunk boundary leaves a valid prefix; the header's record count
    // (authenticated) and the last-chunk flag both catch it.
    let key = DatasetKey::generate().unwrap();
    let (s, _) = shard(&key, DatasetId::generate().unwrap(), 0, 12);
    let h = ShardHeader::parse(&s).unwrap();
    for i in 1..h.chunk_count() {
        let cut = h.chunk_range(i).start as usize;
        assert!(matches!(
            open_shard(&key, &s[..cut]),
            Err(Error::Length { .. })
        ));
    }
    // Chunk 1 of 3 opened as if it were last: its nonce flag differs.
    let opener = ShardOpener::new(&key, &s).unwrap();
    let r = h.chunk_range(1);
    let mut c = s[r.start as usize..r.end as usize].to_vec();
    assert!(opener.open_chunk(1, &mut c).is_ok());
    let mut c = s[r.start as usize..r.end as usize].to_vec();
    assert!(
        opener.open_chunk(2, &mut c).is_err(),
        "chunk 1 accepted at position 2"
    );
}

#[test]
fn reordered_chunks_are_detected() {
    let key = DatasetKey::generate().unwrap();
    let (s, _) = shard(&key, DatasetId::generate().unwrap(), 0, 12);
    let h = ShardHeader::parse(&s).unwrap();
    let (a, b) = (h.chunk_range(0), h.chunk_range(1));
    let mut t = s.clone();
    t[a.start as usize..a.end as usize].copy_from_slice(&s[b.start as usize..b.end as usize]);
    t[b.start as usize..b.end as usize].copy_from_slice(&s[a.start as usize..a.end as usize]);
    assert!(
        matches!(open_shard(&key, &t), Err(Error::Tampered { what, .. }) if what.contains("chunk 0"))
    );
}

#[test]
fn chunks_spliced_between_shards_and_datasets_are_detected() {
    let key = DatasetKey::generate().unwrap();
    let id = DatasetId::generate().unwrap();
    let (s0, _) = shard(&key, id, 0, 12);
    let (s1, _) = shard(&key, id, 1, 12);
    let other_key = DatasetKey::generate().unwrap();
    let (o, _) = shard(&other_key, DatasetId::generate().unwrap(), 0, 12);
    let h0 = ShardHeader::parse(&s0).unwrap();
    for donor in [&s1, &o] {
        let hd = ShardHeader::parse(donor).unwrap();
        let r = hd.chunk_range(1);
        let mut t = s0.clone();
        let r0 = h0.chunk_range(1);
        t[r0.start as usize..r0.end as usize]
            .copy_from_slice(&donor[r.start as usize..r.end as usize]);
        assert!(
            matches!(open_shard(&key, &t), Err(Error::Tampered { what, .. }) if what.contains("chunk 1"))
        );
    }
}

#[test]
fn headers_swapped_between_shards_and_datasets_are_detected() {
    let key = DatasetKey::generate().unwrap();
    let id = DatasetId::generate().unwrap();
    let (s0, _) = shard(&key, id, 0, 12);
    let (s1, _) = shard(&key, id, 1, 12);
    // Header of shard 1 on the body of shard 0: the header is valid, the body is not
    // sealed under its salt nor bound to its digest.
    let mut t = s1[..header_len(&s1)].to_vec();
    t.extend_from_slice(&s0[header_len(&s0)..]);
    assert!(matches!(open_shard(&key, &t), Err(Error::Tampered { .. })));
    // Header from another dataset under another key: wrong key (commitment).
    let k2 = DatasetKey::generate().unwrap();
    let (o, _) = shard(&k2, DatasetId::generate().unwrap(), 0, 12);
    let mut t = o[..header_len(&o)].to_vec();
    t.extend_from_slice(&s0[header_len(&s0)..]);
    assert!(matches!(open_shard(&key, &t), Err(Error::WrongKey { .. })));
    // Header from another dataset under the same key (a key reused by mistake): the
    // body is still bound to its own header.
    let (p, _) = shard(&key, DatasetId::generate().unwrap(), 0, 12);
    let mut t = p[..header_len(&p)].to_vec();
    t.extend_from_slice(&s0[header_len(&s0)..]);
    assert!(matches!(open_shard(&key, &t), Err(Error::Tampered { .. })));
}

#[test]
fn a_shard_opens_under_one_key_only() {
    let key = DatasetKey::generate().unwrap();
    let (s, _) = shard(&key, DatasetId::generate().unwrap(), 0, 12);
    let other = DatasetKey::generate().unwrap();
    assert!(matches!(
        open_shard(&other, &s),
        Err(Error::WrongKey { .. })
    ));
}

#[test]
fn failed_chunk_releases_nothing() {
    let key = DatasetKey::generate().unwrap();
    let (s, _) = shard(&key, DatasetId::generate().unwrap(), 0, 4);
    let opener = ShardOpener::new(&key, &s).unwrap();
    let r = opener.header().chunk_range(0);
    let mut buf = s[r.start as usize..r.end as usize].to_vec();
    buf[0] ^= 1;
    assert!(opener.open_chunk(0, &mut buf).is_err());
    assert!(
        buf.iter().all(|&b| b == 0),
        "buffer not wiped after a failed open"
    );
}

fn manifest(key: &DatasetKey, id: DatasetId, version: u64) -> Vec<u8> {
    let p = params(id, "train", 0, 10);
    let sealer = ShardSealer::new(key, p.clone()).unwrap();
    let e = ShardEntry {
        index: 0,
        path: shard_path("train", 0, &sealer.header().salt),
        records: 10,
        first_record: 0,
        size: sealer.header().shard_len(),
        header_sha256: sealer.header_digest(),
    };
    let split = Split {
        name: "train".into(),
        records: 10,
        shards: vec![e],
    };
    Manifest::seal(
        key,
        id,
        Suite::Aes256Gcm,
        version,
        p.schema,
        RPC,
        vec![split],
        b"{\"importer\":\"raw\"}",
    )
    .unwrap()
    .1
}

#[test]
fn every_flipped_manifest_byte_is_detected() {
    let key = DatasetKey::generate().unwrap();
    let m = manifest(&key, DatasetId::generate().unwrap(), 3);
    assert!(Manifest::open(&key, &m).is_ok());
    for i in 0..m.len() {
        let mut t = m.clone();
        t[i] ^= 0x01;
        assert!(
            Manifest::open(&key, &t).is_err(),
            "manifest byte {i} not detected"
        );
    }
    for len in 0..m.len() {
        assert!(Manifest::open(&key, &m[..len]).is_err());
    }
    assert!(matches!(
        Manifest::open(&DatasetKey::generate().unwrap(), &m),
        Err(Error::WrongKey { .. })
    ));
}
