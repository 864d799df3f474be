//! reflex-runtime: the on-board runtime, from camera frames to CAN commands.
//!
//! The modules follow a frame through the robot, in this order:
//!
//! 1. [`camera`]: V4L2 devices and replayed episodes yield frames ([`io::Camera`]).
//! 2. [`preprocess`]: the training pipeline, into preallocated CHW tensors.
//! 3. [`infer`]: the policy network, prepared once and run on preallocated buffers, inline or
//!    on its own thread.
//! 4. [`control`]: the fixed-rate loop ([`control::ControlLoop`]): action plan (unnormalize,
//!    chunk schedule, temporal ensembling, latency compensation), safety filter, e-stop latch.
//! 5. [`can`]: safe commands to CAN frames in the bundle's motor protocol, onto SocketCAN or a
//!    candump log.
//!
//! Beside the data path: [`io`] (the hardware traits, fault kinds and the [`io::Fault`] trait),
//! [`spec`] (typed command-line specs of sources, sinks and safety inputs), [`clock`]
//! (caller-supplied time), [`timing`] (per-stage latency histograms), [`bench`] (`reflex bench`
//! measurement, reports and plot) and [`progress`] (progress bars for long work off the loop).

pub mod bench;
pub mod camera;
pub mod can;
pub mod clock;
pub mod control;
pub mod infer;
pub mod io;
pub mod logging;
pub mod preprocess;
pub mod progress;
pub mod spec;
pub mod timing;
