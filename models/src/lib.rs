//! reflex-models: the bundle format and the reference policy architectures.
//!
//! Everything that must agree between the workstation (export, quantization) and the robot
//! (runtime) is defined here once: the manifest schema, bundle validation against the real ONNX
//! graph, and the reference ResNet-18 / ViT-S policies written as ONNX graphs in Rust.

pub mod bundle;
pub mod manifest;
pub mod npy;
pub mod onnx;
pub mod output;
pub mod reference;

pub use bundle::{Bundle, BundleError, GraphIo, TensorSpec};
pub use manifest::Manifest;
