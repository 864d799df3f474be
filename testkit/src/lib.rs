//! reflex-testkit: what reflex's tests share, used as a dev-dependency.
//!
//! Fakes wrap the hardware and backend traits (never `cfg(test)` inside a driver); helpers give
//! every test a unique temporary directory, run the CLIs and Python references with one policy
//! for failures and skips, and count allocations.
//!
//! | module | what | feature |
//! |---|---|---|
//! | [`dirs`] | unique work dirs (removed on success, kept and named on failure), per-process fixtures | - |
//! | [`cli`] | runs a binary; its command line, stdout and stderr are printed when a test fails | - |
//! | [`lerobot_weights`] | deterministic LeRobot weights, bit for bit the same as `scripts/lerobot/weights.py` | - |
//! | [`python`] | the Python references in `tests/python/`, one skip policy (`REFLEX_SKIP_PY=1`) | - |
//! | [`lerobot_weights`] | deterministic LeRobot policy weights, bit for bit the same in Python (`scripts/lerobot/weights.py`) | - |
//! | [`counting`] | the counting global allocator of the "allocates nothing" tests | - |
//! | [`serial`] | one lock for the tests that run in real time or time themselves | - |
//! | `bundles` | a tiny bundle (one linear layer, builds in milliseconds), the shared demo bundle | `models` |
//! | `lerobot` | the LeRobot reference checkpoint folders of `tests/data/lerobot/`, weights regenerated | `models` |
//! | `fakes` | scripted camera, fixed and shared state, closure backend, tee sink | `runtime` |
//! | `conformance` | the backend conformance suite: the same bundles and inputs, outputs against ONNX Runtime | `runtime` |
//! | `rig` | the two-joint test manifest and a control loop around the fakes | `runtime` |
//!
//! The skip policy of the Python references, the test layout (one integration test binary per
//! crate) and how to run subsets are in TESTING.md.

pub mod cli;
pub mod counting;
pub mod dirs;
pub mod lerobot_weights;
pub mod python;
pub mod serial;

#[cfg(feature = "models")]
pub mod bundles;
#[cfg(feature = "runtime")]
pub mod conformance;
#[cfg(feature = "runtime")]
pub mod fake_tensorrt;
#[cfg(feature = "runtime")]
pub mod fakes;
#[cfg(feature = "models")]
pub mod lerobot;
#[cfg(feature = "runtime")]
pub mod rig;
