//! Inference: running the policy network. [`backend`] prepares a model once and runs it on
//! preallocated buffers (tract today); [`runner`] decides where it runs relative to the control
//! loop (inline, or on its own thread with one request in flight).

pub mod backend;
pub mod runner;
