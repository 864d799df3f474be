//! reflex-tools' integration tests: export, inspect, infer and quantize as a user runs them.
//!
//! One integration test binary per crate (TESTING.md): every module under `it/` is a former
//! test binary of its own; a new test file goes there, with a `mod` line below.

mod it {
    mod export;
    mod lerobot;
    mod overwrite;
    mod quantize;
}
