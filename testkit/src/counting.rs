//! A counting global allocator for the "allocates nothing" tests (the hot-path rule: the
//! control-loop tick allocates nothing after warm-up).
//!
//! A test binary installs it once, as its global allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: reflex_testkit::counting::Counting = reflex_testkit::counting::Counting;
//! ```
//!
//! and reads [`allocs`] / [`bytes`] around the code under test. Counting is per thread
//! (thread-local counters), so the test harness's other threads, and other tests running in
//! parallel in the same binary, do not disturb the figures. Without the `#[global_allocator]`
//! line the counters stay at zero: a test proves the counter works by allocating once
//! (`allocs()` must grow) before it asserts that nothing else did.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting the allocations and bytes of each thread.
#[derive(Debug)]
pub struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call unchanged to the system allocator; the thread-local counters are
// const-initialized `Cell`s that themselves never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        let _ = BYTES.try_with(|c| c.set(c.get() + layout.size() as u64));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        let _ = BYTES.try_with(|c| c.set(c.get() + new_size as u64));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations (and reallocations) on this thread so far.
pub fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

/// Bytes requested by those allocations on this thread so far.
pub fn bytes() -> u64 {
    BYTES.with(|c| c.get())
}

/// Asserts that the counting allocator is this binary's global allocator (the counter sees an
/// allocation on this thread), so an "allocates nothing" assertion can fail.
#[track_caller]
pub fn assert_installed() {
    let before = allocs();
    let v = std::hint::black_box(vec![1u8; 16]);
    assert!(
        allocs() > before && v.len() == 16,
        "the counting allocator is not this binary's #[global_allocator]"
    );
}
