//! reflex-runtime: the on-board runtime, from camera frames to CAN commands.
//!
//! Data flow per tick: [`io::Camera`] frames -> [`preprocess::Preprocessor`] (the training
//! pipeline, into preallocated tensors) -> [`engine::InferenceRunner`] running a
//! [`backend::PolicyBackend`] -> [`action::ActionPlanner`] (unnormalize, chunk schedule,
//! temporal ensembling, latency compensation) -> [`safety::SafetyFilter`] -> [`io::CommandSink`].
//! [`control::ControlLoop`] ties them together at a fixed rate on a caller-supplied
//! [`clock::Clock`].

pub mod action;
pub mod backend;
pub mod bench;
pub mod can;
pub mod clock;
pub mod codec;
pub mod control;
pub mod dbc;
pub mod engine;
pub mod estop;
pub mod io;
pub mod preprocess;
pub mod replay;
pub mod safety;
pub mod sinks;
pub mod socketcan;
pub mod timing;
pub mod v4l2;
