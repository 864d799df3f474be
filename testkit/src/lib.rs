//! reflex-testkit: what reflex's tests share, used as a dev-dependency.
//!
//! Fakes wrap the hardware and backend traits (never `cfg(test)` inside a driver); helpers give
//! every test a unique temporary directory, run the CLIs and Python references with one policy
//! for failures and skips, and count allocations.
pub mod conformance;
