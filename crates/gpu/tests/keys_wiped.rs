//! The payload keys a batch collects are never left in freed host memory: the keys
//! buffer grows by hand, wiping what it leaves behind (before, `push` reallocated it and
//! the old copies were freed unwiped). Runs without a device.

use blindfold_gpu::{Batch, Key};
use zeroize::Zeroizing;

#[global_allocator]
static ALLOC: blindfold_testkit::ScanningAllocator = blindfold_testkit::ScanningAllocator;

#[test]
fn a_growing_batch_leaves_no_key_in_freed_memory() {
    let keys: Vec<[u8; 32]> = (0..4u8)
        .map(|k| std::array::from_fn(|i| (i as u8).wrapping_mul(41) ^ (0x90 + k)))
        .collect();
    let w = blindfold_testkit::watch(&keys.iter().map(|k| &k[..]).collect::<Vec<_>>());
    let mut b = Batch::default();
    for i in 0..200 {
        b.add_key(Key::new(Zeroizing::new(keys[i % 4])));
    }
    drop(b);
    let (hits, block) = (w.hits(), w.largest_hit_block());
    drop(w);
    assert_eq!(
        hits, 0,
        "keys left in freed memory (largest block {block} bytes)"
    );
}
