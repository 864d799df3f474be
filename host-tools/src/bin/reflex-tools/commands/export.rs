//! `reflex-tools export`: its flags and help text; the work is [`reflex_tools::export`].

use anyhow::Result;
use reflex_models::manifest::Convention;
use reflex_tools::export::{export, ExportArgs};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Reference architecture: resnet18 or vit-s16.
    #[arg(long, conflicts_with = "onnx")]
    pub arch: Option<String>,
    /// A safetensors checkpoint with torchvision/timm key names (`encoder.<name>`, `head.<i>.*`).
    #[arg(long, conflicts_with = "seed")]
    pub weights: Option<PathBuf>,
    /// Generate deterministic weights from this seed instead of reading a checkpoint.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Policy config (TOML: encoder, cameras, shared_encoder, state_dim, action_dim, hidden, head),
    /// overriding the flags below.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Camera names, comma-separated.
    #[arg(long, default_value = "front", value_delimiter = ',')]
    pub cameras: Vec<String>,
    /// One encoder shared by all cameras.
    #[arg(long)]
    pub shared_encoder: bool,
    /// `single` or `chunk:H` (H future actions per inference). With --weights, read from the
    /// checkpoint's head where its shapes determine it; else chunk:16.
    #[arg(long)]
    pub head: Option<String>,
    /// Hidden layer widths of the MLP head, comma-separated. With --weights, read from the
    /// checkpoint's head; else 256.
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// Joint-state vector length. With --weights, read from the checkpoint's first head layer
    /// (its inputs minus the encoders' features); else 6.
    #[arg(long)]
    pub state_dim: Option<usize>,
    /// Action vector length per step. With --weights, from the checkpoint's last head layer
    /// (horizon x action length) with --head, or assumed equal to the state length when that
    /// divides it (printed); else 6. A given value that contradicts the checkpoint is refused,
    /// naming the value it needs.
    #[arg(long)]
    pub action_dim: Option<usize>,
    /// Checkpoint key prefix of the encoder (default `encoder.` shared, `encoders.CAMERA.` per
    /// camera; LeRobot ACT: `model.backbone.`).
    #[arg(long)]
    pub encoder_prefix: Option<String>,
    /// Checkpoint key prefix of the head.
    #[arg(long)]
    pub head_prefix: Option<String>,
    /// An ONNX file exported from PyTorch; needs --manifest. Its external data files (what
    /// `torch.onnx.export(..., dynamo=True)` writes beside it as `NAME.onnx.data`) are read
    /// where they are and copied into the bundle, each hashed in the manifest. Its inputs and
    /// outputs may be float, double or float16 (converted at the boundary); other element types
    /// are refused, naming the tensor. The recorded precision is the model's own: int8 when
    /// the graph holds QuantizeLinear/DequantizeLinear (or QLinear*) nodes, fp16 when its
    /// weights are float16, else fp32.
    #[arg(long)]
    pub onnx: Option<PathBuf>,
    /// A policy.toml template describing the ONNX file's cameras, state and actions (its
    /// `models` entries are replaced).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
    /// Normalization statistics: LeRobot normalizer .safetensors or dataset meta/stats.json, openpi
    /// norm_stats.json, or plain .toml/.json.
    #[arg(long)]
    pub stats: Option<PathBuf>,
    /// State normalization kind when --stats is given: mean_std, min_max, quantile, quantile10,
    /// identity.
    #[arg(long, default_value = "mean_std")]
    pub state_norm: String,
    /// Action normalization kind when --stats is given.
    #[arg(long, default_value = "mean_std")]
    pub action_norm: String,
    /// Whose formula (epsilon included) the normalization follows: lerobot, openpi or plain.
    /// Default: the framework that writes the --stats file's format (LeRobot safetensors or
    /// meta/stats.json: lerobot; openpi norm_stats.json: openpi; other TOML/JSON: plain).
    #[arg(long, value_parser = parse_convention)]
    pub norm_convention: Option<Convention>,
    /// Bundle name (default: the output directory's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Output bundle folder: a new or empty folder, or an existing bundle with --force. Written
    /// into a temporary sibling folder and renamed into place only once it loads back, so a
    /// failed export leaves nothing behind and the previous bundle untouched. A folder holding
    /// anything but a bundle is never replaced, nor the current or home folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the bundle already at --out (only a reflex bundle: never other files).
    #[arg(long)]
    pub force: bool,
    /// A DBC file to bundle (copied and hashed like the model; `reflex check` fails if it
    /// changes) for the --manifest template's `[can]` section with `protocol = "dbc"`. Without
    /// it, the file that section names is bundled (its path relative to the template).
    #[arg(long, requires = "onnx")]
    pub dbc: Option<PathBuf>,
    /// Training frames for the camera viewpoint check (`reflex check --cameras`, the start of
    /// `reflex run`): a folder per camera (`DIR/CAMERA/*.png|jpg`, or the frames in DIR for a
    /// one-camera bundle), raw frames at the capture size. Up to 8 per camera are stored,
    /// downscaled, with their brightness, white balance and sharpness.
    #[arg(long, value_name = "DIR")]
    pub reference_frames: Option<PathBuf>,
}

fn parse_convention(s: &str) -> Result<Convention, String> {
    Convention::parse(s).ok_or_else(|| format!("`{s}`: expected lerobot, openpi or plain"))
}

impl From<Args> for ExportArgs {
    fn from(a: Args) -> ExportArgs {
        ExportArgs {
            arch: a.arch,
            weights: a.weights,
            seed: a.seed,
            config: a.config,
            cameras: a.cameras,
            shared_encoder: a.shared_encoder,
            head: a.head,
            hidden: a.hidden,
            state_dim: a.state_dim,
            action_dim: a.action_dim,
            encoder_prefix: a.encoder_prefix,
            head_prefix: a.head_prefix,
            onnx: a.onnx,
            manifest: a.manifest,
            stats: a.stats,
            state_norm: a.state_norm,
            action_norm: a.action_norm,
            norm_convention: a.norm_convention,
            name: a.name,
            out: a.out,
            force: a.force,
            dbc: a.dbc,
            reference_frames: a.reference_frames,
        }
    }
}

/// Write the bundle (see [`export`]).
pub fn run(a: Args) -> Result<()> {
    export(a.into())
}
