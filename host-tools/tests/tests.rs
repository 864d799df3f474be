//! reflex-tools' integration tests: export, inspect, infer, quantize, parity and explain as a
//! user runs them.
//!
//! One integration test binary per crate (TESTING.md): every module under `it/` is a former
//! test binary of its own; a new test file goes there, with a `mod` line below.

mod it {
    mod contracts;
    mod episode;
    mod export;
    mod fidelity;
    mod lerobot;
    mod lerobot_diffusion;
    mod overwrite;
    mod quantize;
}
