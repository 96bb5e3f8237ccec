//! The scanner itself: a secret in a freed block, or in a block left behind by a
//! reallocation, is counted; a wiped one is not.

use zeroize::Zeroize;

#[global_allocator]
static ALLOC: blindfold_testkit::ScanningAllocator = blindfold_testkit::ScanningAllocator;

const SECRET: &[u8; 16] = b"\x8f\x11watched-secret";

#[test]
fn a_freed_copy_is_seen_and_a_wiped_one_is_not() {
    let w = blindfold_testkit::watch(&[SECRET]);
    let v = std::hint::black_box(SECRET.to_vec());
    drop(v);
    assert_eq!(w.hits(), 1);
    let mut v = std::hint::black_box(SECRET.to_vec());
    v.zeroize();
    drop(v);
    assert_eq!(w.hits(), 1);
    // Growing a vector moves it: the old block, secret and all, is freed.
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(SECRET);
    v.extend_from_slice(&[0; 1000]);
    assert_eq!(w.hits(), 2);
    v.zeroize();
    drop(v);
    assert_eq!(w.hits(), 2);
    drop(w);
    // Nothing is counted once the watch ends.
    let w = blindfold_testkit::watch(&[]);
    drop(std::hint::black_box(SECRET.to_vec()));
    assert_eq!(w.hits(), 0);
}
