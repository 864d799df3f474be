//! End-to-end tests across the crates, on the real reference network in tract: the pipeline from
//! bundle to candump log, what tract and ONNX Runtime allocate per inference, and the aarch64
//! board binary under qemu-user against the x86 build. (The QEMU tests are the
//! separate binary `qemu.rs`: they copy their own executable into the guest.)
//!
//! One integration test binary per crate (TESTING.md): every module under `it/` is a former
//! test binary of its own; a new test file goes there, with a `mod` line below.

/// The counting allocator of the "allocates nothing" tests; it counts per thread, so tests
/// running in parallel do not disturb each other's figures.
#[global_allocator]
static GLOBAL: reflex_testkit::counting::Counting = reflex_testkit::counting::Counting;

mod it {
    mod alloc_onnxruntime;
    mod alloc_tract;
    mod board;
    mod conformance;
    mod deploy;
    mod lerobot_act;
    mod lerobot_diffusion;
    mod pipeline;
}
