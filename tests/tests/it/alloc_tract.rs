//! How much tract itself allocates per inference, with the real reference ResNet-18 in the loop.
//!
//! The loop's own tick allocates nothing (runtime/tests/it/alloc.rs proves it with a fake backend).
//! tract allocates its intermediate tensors on every run; this test measures that figure, prints
//! it, and checks that all of it happens inside inference: ticks that do not run the network
//! allocate nothing even with the real backend in place.

use reflex_models::Bundle;
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode, ReplayMode};
use reflex_runtime::can::sink::NullSink;
use reflex_runtime::clock::ManualClock;
use reflex_runtime::control::{ControlLoop, LoopOptions};
use reflex_runtime::infer::policy::SinglePassPolicy;
use reflex_runtime::infer::runner::{InlineRunner, Request};
use reflex_runtime::infer::tract::TractOptions;
use reflex_testkit::bundles::demo_bundle;
use reflex_testkit::counting;
use reflex_testkit::dirs::WorkDir;

fn counts() -> (u64, u64) {
    (counting::allocs(), counting::bytes())
}

#[test]
fn tract_allocations_per_inference_are_measured_and_confined_to_inference() {
    let dir = WorkDir::new("alloc-tract");
    let bundle = Bundle::load(demo_bundle()).expect("bundle");
    let m = &bundle.manifest;
    generate_synthetic_episode(m, &dir.join("episode"), 1.0, 30).expect("episode");
    let ep = Episode::load(&dir.join("episode")).expect("episode");
    // Single-threaded tract keeps every allocation on this (counted) thread.
    let backend = SinglePassPolicy::tract(&bundle, TractOptions { threads: 1 }).expect("tract");
    let req = Request::for_manifest(m);
    let cams = vec![ep
        .camera("front", ReplayMode::AsFastAsPossible)
        .expect("cam")];
    let st = ep
        .state_source(&m.state.names, ReplayMode::AsFastAsPossible)
        .expect("state");
    let mut lp = ControlLoop::new(
        m,
        cams,
        st,
        NullSink::default(),
        InlineRunner::new(backend, req),
        &LoopOptions::default(),
    )
    .expect("loop");
    let clock = ManualClock::new(0);
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let period = lp.period_ns();
    for k in 0..8 {
        lp.tick(k * period).expect("tick");
    }
    let (mut infer_allocs, mut infer_bytes, mut infer_ticks) = (0, 0, 0);
    let mut other_allocs = 0;
    for k in 8..40 {
        let (a0, b0) = counts();
        let r = lp.tick(k * period).expect("tick");
        let (a1, b1) = counts();
        if r.inference_submitted {
            infer_allocs += a1 - a0;
            infer_bytes += b1 - b0;
            infer_ticks += 1;
        } else {
            other_allocs += a1 - a0;
        }
    }
    assert!(infer_ticks >= 7, "{infer_ticks}");
    println!(
        "tract (ResNet-18 chunk policy, 1 thread): {} allocations, {:.1} MiB per inference; \
         ticks without inference: {other_allocs} allocations",
        infer_allocs / infer_ticks,
        infer_bytes as f64 / infer_ticks as f64 / 1048576.0
    );
    assert_eq!(
        other_allocs, 0,
        "ticks that do not run the network allocate nothing"
    );
    assert!(infer_allocs > 0, "the counter sees tract's allocations");
}
