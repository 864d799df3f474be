//! The reference policies as real ONNX graphs, written in Rust.
//!
//! The runtime, its benchmarks and the demo need policies of the sizes robots actually run
//! (ResNet-18 and ViT-S/16 encoders, one per camera, an MLP or chunking head) without a Python
//! training stack on the machine. Graphs are emitted directly as ONNX protobuf with PyTorch's
//! parameter names, so the same code serves seeded demo weights and real checkpoints, and what
//! the runtime loads is the same kind of file a `torch.onnx.export` would produce.

pub mod builder;
pub mod header;
pub mod policy;
pub mod resnet18;
pub mod vit;
pub mod weights;

pub use policy::{
    build_policy, export_policy, macs, param_count, EncoderKind, HeadKind, PolicyArch, IMAGE_SIZE,
};
pub use weights::{
    save_safetensors, CheckpointMismatch, Init, KeyLayout, NamedTensor, Owner, Param,
    RecordingWeights, SafetensorsWeights, SeededWeights, ShapeMismatch, WeightSource,
};

use std::path::PathBuf;

/// Why a reference policy could not be built or its weights not read.
#[derive(Debug, thiserror::Error)]
pub enum OnnxExportError {
    #[error("invalid policy architecture: {0}")]
    InvalidArch(String),
    #[error("cannot access {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a valid safetensors file: {source}")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("checkpoint {path} does not fit the architecture: {mismatch}")]
    CheckpointMismatch {
        path: PathBuf,
        mismatch: Box<CheckpointMismatch>,
    },
    #[error("weight source gave {got} values for `{key}` of shape {shape:?}")]
    WeightSize {
        key: String,
        shape: Vec<usize>,
        got: usize,
    },
}
