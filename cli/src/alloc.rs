//! The allocator of rllr's engine binaries (server, trainer, benches) and its one setting, in one
//! place so they cannot drift apart.
//!
//! Every forward and backward pass allocates and frees activation tensors of tens to hundreds of
//! MiB. mimalloc by default hands freed memory back to the OS a second after it is freed (its purge
//! delay), so the next op faults the same pages in again and the kernel zeroes each one: `perf` showed
//! 28 % of a LoRA training step in `clear_page_erms`, and one bench run 2.5 million page faults.
//! [`retain_freed_memory`] turns purging off, so freed pages are reused without a fault: 3,100
//! faults, the LoRA step 31 % and a prefill 17–33 % faster (docs/performance.md, "Allocator").
//! The price is that the resident size stays at its high-water mark instead of shrinking when a
//! burst is over; a process that must give memory back sets `MIMALLOC_PURGE_DELAY` (milliseconds;
//! mimalloc 3's default is 1,000), which this module leaves alone.

// The two FFI calls below (mimalloc's option getter and setter) are this crate's only unsafe code.
#![allow(unsafe_code)]

use std::ffi::c_long;

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_t` (include/mimalloc.h); libmimalloc-sys
/// names only the older options. The test below checks the index against the option's default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable mimalloc itself reads for the purge delay.
pub const PURGE_DELAY_ENV: &str = "MIMALLOC_PURGE_DELAY";

/// Keep freed memory in the process for reuse (mimalloc purge delay −1) unless
/// `MIMALLOC_PURGE_DELAY` is set. Call it first thing in `main`, before the model is loaded.
pub fn retain_freed_memory() {
    if std::env::var_os(PURGE_DELAY_ENV).is_none() {
        set_purge_delay(-1);
    }
}

/// The purge delay in milliseconds (−1: never purge).
pub fn purge_delay() -> c_long {
    // SAFETY: reading an option by its index has no preconditions; mimalloc initialises options
    // on first use.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

fn set_purge_delay(ms: c_long) {
    // SAFETY: as above; an option write is a plain store that mimalloc reads on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, ms) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test, because the option is process-wide: the index names the purge delay (mimalloc
    /// 3's default, 1,000 ms, unless the environment sets it), and setting it takes.
    #[test]
    fn purge_delay_index_is_mimallocs_and_retaining_sets_it_to_never() {
        if std::env::var_os(PURGE_DELAY_ENV).is_none() {
            assert_eq!(
                purge_delay(),
                1000,
                "index 15 is not mimalloc's purge_delay"
            );
            retain_freed_memory();
            assert_eq!(purge_delay(), -1);
        }
        set_purge_delay(250);
        assert_eq!(purge_delay(), 250);
    }
}
