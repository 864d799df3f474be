//! reflex-models' integration tests: bundles (round trip, every corruption refused with its
//! file and field) and the reference graphs (PyTorch's sizes, tract, ONNX Runtime, checkpoints).
//!
//! One integration test binary per crate (TESTING.md): every module under `it/` is a former
//! test binary of its own; a new test file goes there, with a `mod` line below.

mod it {
    mod bundle;
    mod diffusion_manifest;
    mod graphs;
    mod normalization;
}
