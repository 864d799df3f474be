//! reflex-runtime's integration tests: the control loop, e-stop and safety rules tick by tick, the
//! allocation-free hot path, preprocessing and the DBC codec against their Python references,
//! and the `reflex` CLI as a user runs it.
//!
//! One integration test binary per crate (TESTING.md): every module under `it/` is a former
//! test binary of its own; a new test file goes there, with a `mod` line below.

/// The counting allocator of the "allocates nothing" tests; it counts per thread, so tests
/// running in parallel do not disturb each other's figures.
#[global_allocator]
static GLOBAL: reflex_testkit::counting::Counting = reflex_testkit::counting::Counting;

mod it {
    mod alloc;
    mod bench_cli;
    mod bundle_files;
    mod can_cli;
    mod candump;
    mod chunk_timing;
    mod cli;
    mod control;
    mod dbc_cantools;
    mod estop;
    mod notify;
    mod onnxruntime_cli;
    mod overwrite;
    mod preprocess;
    mod record;
    mod tensorrt;
    mod viewpoint;
}
