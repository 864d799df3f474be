//! The tick allocates nothing after warm-up: a counting global allocator proves it.
//!
//! Counting is per thread (a thread-local counter), so the test harness's own threads do not
//! disturb the figure; the inline runner keeps inference on the measuring thread.
#![allow(unsafe_code)]

mod common;

use common::*;
use reflex_runtime::control::{ControlLoop, LoopOptions};
use reflex_runtime::engine::{InlineRunner, Request};
use reflex_runtime::sinks::NullSink;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call unchanged to the system allocator; the thread-local counter is a
// const-initialized `Cell` that itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn loop_tick_allocates_nothing_after_warm_up() {
    let (cam, _, _) = ScriptedCamera::new();
    // Outputs alternate so the plan, the ensembling buffer and the rate limiter all work.
    let backend = FnBackend::new(|run, out: &mut [f32]| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = ((run as usize + i) % 5) as f32 * 0.1 - 0.2;
        }
    });
    let mut lp = ControlLoop::new(
        &manifest(),
        vec![cam],
        FixedState(vec![0.1, -0.1]),
        NullSink::default(),
        InlineRunner::new(backend, Request::new(&[3 * 4 * 4], 2, 8)),
        &LoopOptions::default(),
    )
    .expect("loop");
    lp.seed(&[0.0, 0.0]);
    for k in 0..10 {
        lp.tick(k * PERIOD).expect("tick");
    }
    // The counter sees allocations on this thread (the test could fail).
    let probe = allocs();
    let v = std::hint::black_box(vec![1u8; 16]);
    assert!(allocs() > probe && v.len() == 16);
    let before = allocs();
    for k in 10..1010 {
        lp.tick(k * PERIOD).expect("tick");
    }
    let n = allocs() - before;
    assert_eq!(n, 0, "{n} heap allocations in 1000 ticks");
    assert!(lp.counters.inferences >= 400, "{:?}", lp.counters);
    assert!(lp.counters.fresh >= 990, "{:?}", lp.counters);
}

#[test]
fn loop_tick_with_an_estop_allocates_nothing_through_trip_and_rearm() {
    use reflex_runtime::estop::{EStop, ManualInput};
    let (cam, _, _) = ScriptedCamera::new();
    let backend = FnBackend::new(|run, out: &mut [f32]| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = ((run as usize + i) % 5) as f32 * 0.1 - 0.2;
        }
    });
    let (stop, stop_h) = ManualInput::new("test:estop", false);
    let (arm, arm_h) = ManualInput::new("test:arm", false);
    let mut lp = ControlLoop::new(
        &manifest(),
        vec![cam],
        FixedState(vec![0.1, -0.1]),
        NullSink::default(),
        InlineRunner::new(backend, Request::new(&[3 * 4 * 4], 2, 8)),
        &LoopOptions::default(),
    )
    .expect("loop")
    .with_estop(EStop::new(Box::new(stop), Some(Box::new(arm))));
    lp.seed(&[0.0, 0.0]);
    for k in 0..10 {
        lp.tick(k * PERIOD).expect("tick");
    }
    let before = allocs();
    // Every 100 ticks: pressed for 10, released, an arm press 5 ticks later (held 2 ticks).
    for k in 10..1010u64 {
        match k % 100 {
            50 => stop_h.set(true),
            60 => stop_h.set(false),
            65 => arm_h.set(true),
            67 => arm_h.set(false),
            _ => {}
        }
        lp.tick(k * PERIOD).expect("tick");
    }
    let n = allocs() - before;
    assert_eq!(n, 0, "{n} heap allocations in 1000 ticks with an e-stop");
    let c = lp.estop().expect("e-stop").counters().clone();
    assert_eq!((c.trips, c.rearms), (10, 10), "{c:?}");
    assert_eq!(lp.counters.estop_ticks, 150, "{:?}", lp.counters);
    assert!(lp.counters.fresh >= 800, "{:?}", lp.counters);
}
