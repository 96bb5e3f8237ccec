//! Plaintext decrypted from a batch of chunks that then fails (a tampered chunk
//! further on) is wiped before its memory is given back: every freed heap block is
//! scanned for the records' bytes.

mod common;

use blindfold_owner::import::Format;
use blindfold_owner::{Error, NoProgress, SealOptions};
use blindfold_store::Store;
use common::*;

#[global_allocator]
static ALLOC: blindfold_testkit::ScanningAllocator = blindfold_testkit::ScanningAllocator;

#[test]
fn a_batch_that_fails_halfway_leaves_no_plaintext_in_freed_memory() {
    let t = tempfile::tempdir().unwrap();
    let ks = keystore(t.path());
    // Records: a 32-byte canary over and over, so that every chunk holds it whole.
    let canary: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xc3);
    let data: Vec<u8> = canary.iter().copied().cycle().take(64 << 10).collect();
    let input = t.path().join("data.bin");
    std::fs::write(&input, &data).unwrap();
    drop(data);
    let dest = t.path().join("sealed");
    let opts = SealOptions {
        chunk_target: 4096,
        ..SealOptions::default()
    };
    seal_path(&ks, &input, Format::Raw, dest.to_str().unwrap(), &opts);
    let ds =
        blindfold_owner::open(&ks, Store::open(dest.to_str().unwrap(), false).unwrap()).unwrap();
    // Tamper the 6th chunk of the only shard: five chunks open before it fails, in one
    // batch.
    let entry = &ds.manifest().splits[0].shards[0];
    let shard = dest.join(&entry.path);
    let mut bytes = std::fs::read(&shard).unwrap();
    let header_len = bytes.len() - (64 << 10) - 16 * 16;
    bytes[header_len + 5 * (4096 + 16) + 7] ^= 1;
    std::fs::write(&shard, bytes).unwrap();

    let w = blindfold_testkit::watch(&[&canary[..]]);
    let e = Error::from(ds.verify(&NoProgress).unwrap_err());
    let (hits, block) = (w.hits(), w.largest_hit_block());
    drop(w);
    assert!(matches!(e, Error::Integrity { .. }), "{e}");
    assert!(e.to_string().contains("chunk 5"), "{e}");
    assert_eq!(
        hits, 0,
        "plaintext left in freed memory (largest block {block} bytes)"
    );
}
