//! LeRobot checkpoints (`pretrained_model/` folders written by LeRobot 0.6.1's training script)
//! turned into bundles.
//!
//! - [`diffusion`]: Diffusion Policy's encoder and denoiser graphs from `model.safetensors`.

pub mod diffusion;
