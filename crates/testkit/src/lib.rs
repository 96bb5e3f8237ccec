//! Test support: [`ScanningAllocator`], a global allocator that looks for watched
//! secrets in every heap block as it is freed (or moved by a reallocation, which frees
//! the old block). A secret found there was left in memory the process gave back
//! unwiped: a later allocation, a core dump or a swap file could read it.
//!
//! A test binary installs it and watches its secrets around the code under test:
//!
//! ```
//! #[global_allocator]
//! static ALLOC: blindfold_testkit::ScanningAllocator = blindfold_testkit::ScanningAllocator;
//!
//! # fn main() {
//! let key = [0x5au8; 32];
//! let w = blindfold_testkit::watch(&[&key[..]]);
//! let copy = zeroize::Zeroizing::new(key.to_vec()); // the code under test
//! drop(copy);
//! assert_eq!(w.hits(), 0);
//! # }
//! ```
//!
//! Every freed block is also overwritten with zeros (after the scan), watch or not. So
//! a block can never hold bytes left over from an earlier owner: a secret found in a
//! freed block was written there by the code that held the block, not inherited from
//! memory freed (unwiped) before the watch began, which would make such a hit tell
//! nothing about the code under test.
//!
//! Only what passes through the global allocator is seen: stack copies, memory of
//! other allocators (a GPU runtime's pools, C libraries with their own `malloc`) and
//! blocks still held when the watch ends are not.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Most secrets watched at once.
pub const MAX_SECRETS: usize = 4;
/// Longest secret (bytes); longer ones are watched by their first `MAX_LEN` bytes.
pub const MAX_LEN: usize = 64;
/// Shortest secret: shorter patterns would match by chance.
pub const MIN_LEN: usize = 12;

static ARMED: AtomicBool = AtomicBool::new(false);
static ABORT_ON_HIT: AtomicBool = AtomicBool::new(false);
static HITS: AtomicUsize = AtomicUsize::new(0);
static LARGEST_HIT_BLOCK: AtomicUsize = AtomicUsize::new(0);
static LENS: [AtomicUsize; MAX_SECRETS] = [const { AtomicUsize::new(0) }; MAX_SECRETS];
static SECRETS: [[AtomicU8; MAX_LEN]; MAX_SECRETS] =
    [const { [const { AtomicU8::new(0) }; MAX_LEN] }; MAX_SECRETS];
/// One watch at a time per process (tests of one binary run on several threads).
static ONE_WATCH: Mutex<()> = Mutex::new(());

/// The system allocator, scanning freed blocks while a [`Watch`] is active.
pub struct ScanningAllocator;

fn contains(block: &[u8], secret: usize, len: usize) -> bool {
    if len == 0 || block.len() < len {
        return false;
    }
    let first = SECRETS[secret][0].load(Ordering::Relaxed);
    'outer: for start in 0..=block.len() - len {
        if block[start] != first {
            continue;
        }
        for (i, b) in block[start..start + len].iter().enumerate() {
            if *b != SECRETS[secret][i].load(Ordering::Relaxed) {
                continue 'outer;
            }
        }
        return true;
    }
    false
}

fn scan(block: &[u8]) {
    for (s, len) in LENS.iter().enumerate() {
        if contains(block, s, len.load(Ordering::Relaxed)) {
            HITS.fetch_add(1, Ordering::SeqCst);
            if ABORT_ON_HIT.load(Ordering::Relaxed) {
                std::process::abort();
            }
            LARGEST_HIT_BLOCK.fetch_max(block.len(), Ordering::SeqCst);
        }
    }
}

// SAFETY: every call is forwarded to the system allocator with the same arguments; a
// block is read and then zeroed in `dealloc` while it is still allocated and no longer
// used by its owner.
unsafe impl GlobalAlloc for ScanningAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() > 0 {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes until the call below,
            // and nobody else holds it any more.
            let block = unsafe { std::slice::from_raw_parts_mut(ptr, layout.size()) };
            if ARMED.load(Ordering::Acquire) {
                scan(block);
            }
            // Volatile writes: not optimized away before the free.
            zeroize::Zeroize::zeroize(block);
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    // `realloc` is GlobalAlloc's default: allocate, copy, `dealloc` the old block. So a
    // block that a reallocation leaves behind is scanned like any freed one.
}

/// Watches secrets in freed memory until dropped.
pub struct Watch {
    _one: MutexGuard<'static, ()>,
}

/// Starts watching `secrets` (each [`MIN_LEN`] bytes or longer; at most
/// [`MAX_SECRETS`]). Waits for any other watch in the process to end. With
/// `BLINDFOLD_TESTKIT_ABORT=1` in the environment, the first hit aborts the process, so
/// that a debugger (`gdb -ex run -ex bt`) shows who freed the block.
pub fn watch(secrets: &[&[u8]]) -> Watch {
    assert!(
        secrets.len() <= MAX_SECRETS,
        "at most {MAX_SECRETS} secrets"
    );
    let one = ONE_WATCH.lock().unwrap_or_else(|p| p.into_inner());
    for (s, len) in LENS.iter().enumerate() {
        let secret = secrets.get(s).copied().unwrap_or(&[]);
        assert!(
            secret.is_empty() || secret.len() >= MIN_LEN,
            "a secret of {} bytes would match by chance",
            secret.len()
        );
        let n = secret.len().min(MAX_LEN);
        for (i, b) in secret[..n].iter().enumerate() {
            SECRETS[s][i].store(*b, Ordering::Relaxed);
        }
        len.store(n, Ordering::Relaxed);
    }
    ABORT_ON_HIT.store(
        std::env::var_os("BLINDFOLD_TESTKIT_ABORT").is_some_and(|v| v == "1"),
        Ordering::Relaxed,
    );
    HITS.store(0, Ordering::SeqCst);
    LARGEST_HIT_BLOCK.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::Release);
    Watch { _one: one }
}

impl Watch {
    /// Freed blocks that held a watched secret so far.
    pub fn hits(&self) -> usize {
        HITS.load(Ordering::SeqCst)
    }

    /// The size of the largest such block (to tell which buffer it was).
    pub fn largest_hit_block(&self) -> usize {
        LARGEST_HIT_BLOCK.load(Ordering::SeqCst)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        ARMED.store(false, Ordering::Release);
        for len in &LENS {
            len.store(0, Ordering::Relaxed);
        }
    }
}
