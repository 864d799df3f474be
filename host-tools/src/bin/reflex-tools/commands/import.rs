//! `reflex-tools import`: its flags and help text; the work is [`reflex_tools::lerobot`].

use anyhow::Result;
use reflex_models::manifest::PixelFormat;
use reflex_tools::lerobot::{import, ImportArgs};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub source: Source,
}

#[derive(clap::Subcommand)]
pub enum Source {
    /// A LeRobot (0.6.1) checkpoint folder: config.json, model.safetensors and the processor
    /// files (policy_preprocessor.json, policy_postprocessor.json and their .safetensors).
    #[command(long_about = "Import a LeRobot (0.6.1) checkpoint folder, e.g. \
        outputs/train/RUN/checkpoints/last/pretrained_model, into a bundle, without Python.\n\n\
        Read: config.json (policy type, features, normalization_mapping, architecture; a value \
        reflex does not reproduce, such as another vision_backbone, is refused with the field \
        named), the pre/postprocessor statistics (every feature matched both ways with the \
        config; a missing or foreign statistic is refused with the file and key), and \
        model.safetensors (the ONNX graph is written from it with LeRobot's key names; a \
        missing, mis-shaped or unexpected tensor is refused with its key).\n\n\
        The bundle gets one camera per observation.images.<camera> feature, captured at the \
        feature's size, uint8 RGB -> /255 -> CHW -> normalized as in training; state and action \
        normalization in LeRobot's formulas; chunk_size as the chunk, n_action_steps as steps \
        per inference and temporal_ensemble_coeff as the loop's ensembling.\n\n\
        What the folder does not say is given here: the control rate (the dataset's fps), the \
        cameras' pixel format, joint names. Limits are not known either: add an [action.limits] \
        section to policy.toml before running on a robot (reflex run refuses a bundle without \
        them unless --allow-unlimited).\n\n\
        Example: reflex-tools import lerobot pretrained_model --out act_bundle --rate 50")]
    Lerobot(LerobotArgs),
}

#[derive(clap::Args)]
pub struct LerobotArgs {
    /// The checkpoint folder (`.../pretrained_model`).
    pub dir: PathBuf,
    /// Output bundle folder: a new or empty folder, or an existing bundle with --force. Written
    /// into a temporary sibling folder and renamed into place only once it loads back.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the bundle already at --out (only a reflex bundle: never other files).
    #[arg(long)]
    pub force: bool,
    /// Bundle name (default: the output folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Control loop rate and the chunk's step rate in Hz: the training dataset's fps (LeRobot's
    /// `meta/info.json` `fps`; ALOHA 50, SO-100 30).
    #[arg(long, default_value_t = 30.0)]
    pub rate: f64,
    /// The cameras' pixel format on the robot: yuyv, rgb24, mjpeg, nv12 or grey.
    #[arg(long, default_value = "yuyv", value_parser = parse_format)]
    pub capture_format: PixelFormat,
    /// Camera frame rate to negotiate with the device.
    #[arg(long, default_value_t = 30)]
    pub camera_fps: u32,
    /// Joint names, comma-separated, for the state and the action dimensions (when they have
    /// that many): matching names let the rate limiter start from the measured position.
    /// Default: state.0, state.1, ... and action.0, action.1, ...
    #[arg(long, value_delimiter = ',')]
    pub joint_names: Vec<String>,
    /// Unit of every joint, as written in the manifest.
    #[arg(long, default_value = "rad")]
    pub unit: String,
}

fn parse_format(s: &str) -> Result<PixelFormat, String> {
    Ok(match s {
        "yuyv" => PixelFormat::Yuyv,
        "rgb24" => PixelFormat::Rgb24,
        "mjpeg" => PixelFormat::Mjpeg,
        "nv12" => PixelFormat::Nv12,
        "grey" => PixelFormat::Grey,
        _ => return Err(format!("`{s}`: expected yuyv, rgb24, mjpeg, nv12 or grey")),
    })
}

/// Import the folder (see [`reflex_tools::lerobot::import`]).
pub fn run(a: Args) -> Result<()> {
    match a.source {
        Source::Lerobot(l) => import(&ImportArgs {
            dir: l.dir,
            out: l.out,
            force: l.force,
            name: l.name,
            rate_hz: l.rate,
            capture_format: l.capture_format,
            camera_fps: l.camera_fps,
            joint_names: l.joint_names,
            unit: l.unit,
        }),
    }
}
