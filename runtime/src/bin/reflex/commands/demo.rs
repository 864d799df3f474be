//! `reflex demo`: the reference ResNet-18 bundle on a synthetic episode for ~10 s, commands into
//! a candump log.

use super::run::{run_loop, LoopArgs, LoopIo};
use super::{interrupt_flag, Outcome};
use crate::args::BackendArgs;
use crate::open::{load_bundle, Devices};
use anyhow::{bail, Context, Result};
use reflex_models::output;
use reflex_models::Bundle;
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode, ReplayMode};
use reflex_runtime::clock::MonotonicClock;
use reflex_runtime::io::Camera;
use reflex_runtime::spec::SinkSpec;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Where the bundle (`resnet18-chunk/`), episode (`episode/`) and CAN log (`can0.log`) go:
    /// a new or empty folder, or one a demo wrote before (its bundle and episode are reused, its
    /// log replaced). A folder holding anything else is refused.
    #[arg(long, default_value = "target/reflex-demo")]
    workdir: PathBuf,
    /// Stop after this many seconds (the same flag as `reflex run --duration`; `--seconds`, its
    /// old name, still works).
    #[arg(long, default_value_t = 10.0, alias = "seconds")]
    duration: f64,
    #[command(flatten)]
    backend: BackendArgs,
}

/// The demo's entries in its workdir.
const DEMO_ENTRIES: [&str; 3] = ["resnet18-chunk", "episode", "can0.log"];

/// A demo workdir is new, empty, holds a reflex bundle at `resnet18-chunk/` (a demo ran there;
/// other files beside it are left alone), or holds only the demo's entries and staging folders
/// of an interrupted demo. Anything else is refused: the demo would replace `can0.log`.
fn check_demo_workdir(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    if reflex_models::bundle::is_bundle_dir(&dir.join(DEMO_ENTRIES[0])).is_ok() {
        return Ok(());
    }
    let foreign: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| {
            !DEMO_ENTRIES
                .iter()
                .any(|d| n == d || output::is_staging_name(n, d))
        })
        .collect();
    if !foreign.is_empty() {
        bail!(
            "{}: not a demo workdir (it holds {}); nothing was changed: choose an empty or new \
             folder with --workdir",
            dir.display(),
            foreign.join(", ")
        );
    }
    Ok(())
}

pub fn run(a: Args) -> Result<Outcome> {
    interrupt_flag()?;
    let bundle_dir = a.workdir.join("resnet18-chunk");
    let episode_dir = a.workdir.join("episode");
    let log_path = a.workdir.join("can0.log");
    check_demo_workdir(&a.workdir)?;
    if Bundle::load(&bundle_dir).is_err() {
        println!(
            "building the reference ResNet-18 bundle in {} ...",
            bundle_dir.display()
        );
        reflex_models::reference::write_demo_bundle(&bundle_dir)
            .with_context(|| format!("writing {}", bundle_dir.display()))?;
    }
    let t_load = Instant::now();
    let clock = MonotonicClock::new();
    let bundle = load_bundle(&bundle_dir)?;
    if Episode::load(&episode_dir).is_err() {
        println!(
            "generating a synthetic episode in {} ...",
            episode_dir.display()
        );
        generate_synthetic_episode(&bundle.manifest, &episode_dir, 4.0, 30)?;
    }
    let ep = Episode::load(&episode_dir)?;
    let mut cameras: Vec<Box<dyn Camera>> = vec![];
    for c in &bundle.manifest.cameras {
        cameras.push(Box::new(ep.camera(&c.name, ReplayMode::RealTime)?));
    }
    let state = Box::new(ep.state_source(&bundle.manifest.state.names, ReplayMode::RealTime)?);
    let sink =
        Devices::new(&bundle).sink(&SinkSpec::Candump(log_path.clone()), "can0", &clock, true)?;
    let engine = LoopArgs {
        backend: a.backend,
        rate: None,
        allow_unlimited: false,
        duration: Some(a.duration),
    };
    let io = LoopIo {
        cameras,
        state,
        sink,
        estop: None,
    };
    let startup_ms = run_loop(&bundle, io, &engine, &clock, t_load)?;
    println!("start-up (bundle load to first action): {startup_ms:.0} ms");
    println!(
        "CAN frames written to {} (candump -l format; replay with canplayer)",
        log_path.display()
    );
    println!(
        "(the demo policy's weights are seeded, not trained: its actions jump from one step to \
         the next, and the safety filter rate-limits them, as it must)"
    );
    Ok(Outcome::Success)
}
