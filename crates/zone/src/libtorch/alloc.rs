//! The C allocator's settings for training through LibTorch (`--device torch-cpu`): one
//! of the two modules of this crate that may use `unsafe` (with `ffi`), and only in a
//! build with the `torch` feature (the crate forbids it otherwise).
//!
//! LibTorch allocates every intermediate tensor with glibc's `malloc`. With glibc's
//! default thresholds, a tensor of a few MiB is mapped fresh from the kernel and
//! unmapped when freed, so every training step pays page faults and zeroed pages for
//! memory it just gave back: a quarter of an epoch's samples were in the kernel
//! (`docs/cpu-training-profile.md`). Raising the thresholds keeps freed memory in the
//! process for the next step. It changes no result, only where memory comes from.
#![allow(unsafe_code)]

/// Blocks up to this size come from the heap, not from a fresh mapping (glibc's
/// largest allowed value on 64-bit systems).
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the heap's top is given back to the kernel only beyond this.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Sets glibc's thresholds for this process (elsewhere: does nothing). Returns whether
/// glibc took both.
pub(crate) fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` sets an allocator parameter from two plain integers under
        // the allocator's own lock; it reads and writes no memory of the caller's.
        let set = |param, value| unsafe { libc::mallopt(param, value) } == 1;
        set(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) & set(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_thresholds() {
        assert_eq!(
            super::keep_freed_memory(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }
}
