//! `reflex-tools` as a library: the workstation side of reflex, which turns checkpoints into
//! bundles the robot can run. The `reflex-tools` binary (`src/bin/reflex-tools`) parses the
//! command line and calls one module per command:
//! - [`export`]: a bundle from a reference architecture (checkpoint or seed) or an ONNX file,
//!   with normalization statistics ([`stats`]);
//! - [`lerobot`]: a bundle from a LeRobot checkpoint folder (`import lerobot`), the ACT graph
//!   written from its safetensors;
//! - [`inspect`]: a bundle's manifest, graph I/O, parameter count and FLOPs;
//! - [`infer`]: a bundle's raw network on .npy tensors;
//! - [`lerobot`]: LeRobot checkpoint folders (Diffusion Policy) to ONNX graphs;
//! - [`quantize`]: fp16 and int8 forms of a bundle with an accuracy report and a gate;
//! - [`episode`]: a replay episode (`reflex-episode-v1`) from a folder of images and a state
//!   file;
//! - [`deploy`]: a binary and a bundle onto a board over ssh, as a new version, with rollback;
//! - [`parity`]: the bundle's preprocessing against the user's dataloader tensors, with the
//!   usual mistakes diagnosed;
//! - [`explain`]: occlusion sensitivity, a robustness sweep and (ViT policies) attention
//!   rollout ([`rollout`]) of a bundle's policy;
//! - [`reference_frames`]: the training frames `export --reference-frames` stores for the
//!   camera viewpoint check; [`images`]: the PNG/JPEG files these tools read and write.
//!
//! Errors are `anyhow` errors whose message names the file, flag or tensor at fault.

pub mod deploy;
pub mod episode;
pub mod explain;
pub mod export;
pub mod images;
pub mod infer;
pub mod inspect;
pub mod lerobot;
pub mod parity;
pub mod quantize;
pub mod reference_frames;
pub mod rollout;
pub mod stats;
