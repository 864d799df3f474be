//! Inference: running the policy network, in the shape of tract's own runtime seam
//! (`Runtime::prepare -> Runnable -> State::run`).
//!
//! - [`session`]: one graph prepared once, named inputs/outputs with element types and shapes,
//!   preallocated buffers, `run` ([`tract`]; `onnxruntime` with the cargo feature of that name;
//!   [`tensorrt`]'s session with the feature `tensorrt`);
//! - [`policy`]: observation -> raw action or chunk on one or more sessions; the one place the
//!   manifest's cameras, state and action are mapped onto graph inputs and outputs;
//! - [`diffusion`]: Diffusion Policy's DDPM and DDIM schedulers, allocation-free steps;
//! - [`select`]: each backend's availability with a reason, and the choice among them;
//! - [`parity`]: a backend against tract on the same inputs, in action units (`check --parity`);
//! - [`preference`]: the CPU backend measured fastest per board and model (`auto` reads it);
//! - [`runner`]: where the policy runs relative to the control loop (inline, or on its own
//!   thread with one request in flight).

pub mod diffusion;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod parity;
pub mod policy;
pub mod preference;
pub mod runner;
pub mod select;
pub mod session;
pub mod tensorrt;
pub mod tract;
