//! `reflex-tools`: the workstation side. Turns checkpoints into bundles the robot can run.
//!
//! This file parses the command line, dispatches to one module per command (`commands/`, which
//! call the `reflex_tools` library) and turns every command's result into an exit status, in one
//! place ([`exit_code`]).

mod commands;

use clap::{Parser, Subcommand};
use commands::{deploy, episode, explain, export, import, infer, inspect, parity, quantize};
use std::process::ExitCode;

/// The exit statuses, for `--help` (the same meanings as `reflex`'s).
const EXIT_STATUS: &str = "Exit status:\n  \
    0  success\n  \
    1  error (a failed `quantize` gate included); the message on stderr names the file, flag \
       or tensor at fault\n  \
    2  a malformed command line (the message names the accepted forms)";

#[derive(Parser)]
#[command(
    name = "reflex-tools",
    version,
    about = "Turn policy checkpoints into bundles reflex runs on the robot",
    long_about = "Turn policy checkpoints into bundles reflex runs on the robot.\n\n\
        A bundle is a directory: policy.toml (the manifest: cameras and their preprocessing, \
        state/action names, units, normalization, limits, control rate) plus the ONNX model. \
        `export` writes one from a safetensors checkpoint of a reference architecture (ResNet-18 \
        or ViT-S/16 with torchvision/timm key names), from seeded weights, or from an ONNX file \
        you exported with torch.onnx.export; `import lerobot` writes one from a LeRobot ACT or Diffusion Policy checkpoint folder; \
        `inspect` shows one; `infer` runs its network on .npy tensors for parity checks against \
        PyTorch; `quantize` writes its fp16 or int8 forms (int8: QLinearConv/QLinearMatMul for \
        tract, QDQ for TensorRT) with an accuracy report in action units; `parity` checks the \
        bundle's preprocessing against your dataloader's tensors; `explain` shows what the policy \
        looks at; `deploy` puts a binary and a bundle on a board.",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// More logging (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less logging (errors only).
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a bundle from a reference architecture (checkpoint or seed) or from an ONNX file.
    Export(Box<export::Args>),
    /// Write a bundle from a training framework's checkpoint folder (`import lerobot DIR`).
    Import(import::Args),
    /// Print a bundle's manifest, graph I/O, parameter count and FLOPs.
    Inspect(inspect::Args),
    /// Run a bundle's raw network on .npy tensors (no pre/post-processing), write outputs as .npy.
    Infer(infer::Args),
    /// Quantize a bundle to fp16 or int8 (operator form for tract + QDQ for TensorRT), with an
    /// accuracy report in action units and a gate.
    Quantize(Box<quantize::Args>),
    /// Make replay episodes (`reflex-episode-v1`) from images and a state file.
    #[command(subcommand)]
    Episode(episode::Cmd),
    /// Put the reflex binary and a bundle on a board over ssh as a new version, switch to it
    /// atomically, install its systemd units (watchdog, CAN bring-up) and udev rules.
    Deploy(Box<deploy::Args>),
    /// Switch a board back to the previously deployed version and restart the service.
    Rollback(deploy::RollbackArgs),
    /// Compare the bundle's preprocessing with your training dataloader's tensors and name the
    /// mistake that explains a difference.
    Parity(parity::Args),
    /// Occlusion heatmaps and a robustness sweep: what the policy looks at, how brittle it is.
    Explain(explain::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    reflex_runtime::logging::init(cli.quiet, cli.verbose);
    let result = match cli.cmd {
        Cmd::Export(a) => export::run(*a),
        Cmd::Import(a) => import::run(a),
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::Infer(a) => infer::run(a),
        Cmd::Quantize(a) => quantize::run(*a),
        Cmd::Episode(c) => episode::run(c),
        Cmd::Deploy(a) => deploy::run(*a),
        Cmd::Rollback(a) => deploy::rollback(a),
        Cmd::Parity(a) => parity::run(a),
        Cmd::Explain(a) => explain::run(a),
    };
    ExitCode::from(exit_code(&result))
}

/// The one exit-status policy: 0 success, 1 error (printed on stderr, naming the file, flag or
/// tensor at fault). Command-line errors never get here: clap prints them and exits with 2.
fn exit_code(result: &anyhow::Result<()>) -> u8 {
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
