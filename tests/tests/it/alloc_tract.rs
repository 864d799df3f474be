//! How much tract itself allocates per inference, with the real reference ResNet-18 in the loop.
//!
//! The loop's own tick allocates nothing (runtime/tests/it/alloc.rs proves it with a fake backend).
//! tract allocates its intermediate tensors on every run; this test measures that figure, prints
//! it, and checks that all of it happens inside inference: ticks that do not run the network
//! allocate nothing even with the real backend in place.

use reflex_models::Bundle;
use reflex_runtime::camera::replay::generate_synthetic_episode;
use reflex_runtime::infer::policy::SinglePassPolicy;
use reflex_runtime::infer::tract::TractOptions;
use reflex_testkit::bundles::demo_bundle;
use reflex_testkit::dirs::WorkDir;
use reflex_testkit::rig::tick_replayed_episode;

#[test]
fn tract_allocations_per_inference_are_measured_and_confined_to_inference() {
    let dir = WorkDir::new("alloc-tract");
    let bundle = Bundle::load(demo_bundle()).expect("bundle");
    let m = &bundle.manifest;
    generate_synthetic_episode(m, &dir.join("episode"), 1.0, 30).expect("episode");
    // Single-threaded tract keeps every allocation on this (counted) thread.
    let backend = SinglePassPolicy::tract(&bundle, TractOptions { threads: 1 }).expect("tract");
    let t = tick_replayed_episode(m, &dir.join("episode"), backend, 8, 32);
    let (infer_ticks, infer_allocs, infer_bytes, other_allocs) = (
        t.inferences as u64,
        t.inference_allocs,
        t.inference_bytes,
        t.other_allocs,
    );
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
