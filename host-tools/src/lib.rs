//! `reflex-tools` as a library: the workstation side of reflex, which turns checkpoints into
//! bundles the robot can run. The `reflex-tools` binary (`src/bin/reflex-tools`) parses the
//! command line and calls one module per command:
//! - [`export`]: a bundle from a reference architecture (checkpoint or seed) or an ONNX file,
//!   with normalization statistics ([`stats`]);
//! - [`lerobot`]: a bundle from a LeRobot checkpoint folder (`import lerobot`), the ACT graph
//!   written from its safetensors;
//! - [`inspect`]: a bundle's manifest, graph I/O, parameter count and FLOPs;
//! - [`infer`]: a bundle's raw network on .npy tensors;
//! - [`quantize`]: fp16 and int8 forms of a bundle with an accuracy report and a gate.
//!
//! Errors are `anyhow` errors whose message names the file, flag or tensor at fault.

pub mod export;
pub mod infer;
pub mod inspect;
pub mod lerobot;
pub mod quantize;
pub mod stats;
