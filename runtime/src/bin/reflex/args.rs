//! Flag groups shared by several commands, flattened into each command's `Args`.

use clap::Args;
use reflex_runtime::infer::select::BackendChoice;
use reflex_runtime::infer::tract::TractOptions;
use reflex_runtime::spec::SinkSpec;
use std::path::PathBuf;

/// `--bundle`.
#[derive(Args, Debug, Clone)]
pub struct BundleArg {
    /// Bundle directory (or its policy.toml).
    #[arg(long)]
    pub bundle: PathBuf,
}

/// `--backend` and `--threads`.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Inference backend: auto (TensorRT if usable, else the CPU backend measured faster here
    /// by `reflex bench --model-only --backend all --record`, else ONNX Runtime if its library
    /// loads, else tract), tract, onnxruntime, tensorrt; `all` for `bench --model-only`.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// CPU threads for tract and ONNX Runtime (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl BackendArgs {
    /// tract's options: `--threads`, else all cores.
    pub fn tract(&self) -> TractOptions {
        TractOptions {
            threads: self
                .threads
                .unwrap_or_else(|| TractOptions::default().threads),
        }
    }
}

/// `--can` and `--iface`: where commands go.
#[derive(Args, Debug, Clone)]
pub struct CanOutArgs {
    /// Command output: a SocketCAN interface (`can0`, `vcan0`), `candump:FILE` (can-utils
    /// `candump -l` log: a new or empty file; an existing log only with --force) or `null`.
    #[arg(long)]
    pub can: SinkSpec,
    /// CAN interface name written into candump logs.
    #[arg(long, default_value = "can0")]
    pub iface: String,
    /// Replace the file of `--can candump:FILE` if it exists (it is never replaced otherwise: a
    /// log recorded from a real bus looks the same as one reflex wrote).
    #[arg(long)]
    pub force: bool,
}
