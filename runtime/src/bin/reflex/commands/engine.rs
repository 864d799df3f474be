//! `reflex engine`: TensorRT engines of a bundle, built on the board they will run on.

use super::Outcome;
use crate::args::BundleArg;
use crate::open::load_bundle;
use anyhow::{Context, Result};
use reflex_runtime::infer::tensorrt::builder::{build_engine, BuildOptions};
use reflex_runtime::infer::tensorrt::trtexec::{find_trtexec, JETPACK_TRTEXEC};
use reflex_runtime::infer::tensorrt::ThisMachine;
use reflex_runtime::progress::Progress;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Build the bundle's TensorRT engine here, with trtexec (strongly typed: the precision is
    /// the ONNX file's).
    ///
    /// Builds from the model file the manifest lists for tensorrt, writes
    /// `engines/<model>.engine` and its sidecar `engines/<model>.engine.toml` (TensorRT version,
    /// GPU, compute capability, SM count, L4T release, the model's sha256, precision, DLA core,
    /// the trtexec command, build time), keeps a timing cache per GPU and TensorRT version in
    /// `engines/`, and trtexec's log in `engines/<model>.build.log`. The manifest is not
    /// rewritten; a failed build leaves no half-written engine. `reflex check` then says
    /// whether the engine is selected, or why not.
    ///
    /// Example: reflex engine build --bundle B --dla 0
    Build {
        #[command(flatten)]
        bundle: BundleArg,
        /// Build for DLA core N (AGX Orin and Orin NX: 0 or 1; Orin Nano has none), layers the
        /// DLA cannot run falling back to the GPU.
        #[arg(long, value_name = "N")]
        dla: Option<u32>,
        /// Builder workspace limit in MiB (default: TensorRT's, the device's memory).
        #[arg(long, value_name = "MiB")]
        workspace: Option<u64>,
        /// The trtexec to run (default: REFLEX_TRTEXEC, else trtexec on PATH, else JetPack's
        /// /usr/src/tensorrt/bin/trtexec).
        #[arg(long, value_name = "PATH")]
        trtexec: Option<PathBuf>,
    },
}

pub fn run(c: Cmd) -> Result<Outcome> {
    match c {
        Cmd::Build {
            bundle,
            dla,
            workspace,
            trtexec,
        } => {
            let b = load_bundle(&bundle.bundle)?;
            let trtexec = trtexec.or_else(find_trtexec).with_context(|| {
                format!(
                    "trtexec not found on PATH nor at {JETPACK_TRTEXEC} (JetPack installs it \
                     with TensorRT's samples; or pass --trtexec PATH)"
                )
            })?;
            let opts = BuildOptions {
                trtexec,
                dla_core: dla,
                workspace_mib: workspace,
            };
            let bar = Progress::spinner("building the TensorRT engine");
            let sidecar = build_engine(&b, &opts, &ThisMachine, &mut |line| {
                bar.set_message(line.to_string());
                log::debug!(target: "trtexec", "{line}");
            });
            bar.finish();
            let sidecar = sidecar
                .with_context(|| format!("building the TensorRT engine of {}", b.dir.display()))?;
            println!(
                "engine {} built in {:.0} s: TensorRT {} on {}, {}, from {} ({})",
                b.dir.join("engines").join(&sidecar.engine).display(),
                sidecar.build_seconds,
                sidecar.tensorrt_version,
                sidecar.gpu,
                if sidecar.dla_core >= 0 {
                    format!("DLA core {} with GPU fallback", sidecar.dla_core)
                } else {
                    "GPU".to_string()
                },
                sidecar.source_model,
                sidecar.precision.as_str()
            );
            Ok(Outcome::Success)
        }
    }
}
