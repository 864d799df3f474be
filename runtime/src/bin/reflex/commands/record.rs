//! `reflex record`: an episode (`reflex-episode-v1`) from the bundle's cameras and the joint
//! state, for `reflex run --camera replay:DIR`, `reflex bench` and quantization calibration.

use super::{interrupt_flag, Outcome};
use crate::args::BundleArg;
use crate::open::{load_bundle, Devices};
use anyhow::{bail, Context, Result};
use reflex_models::output::Replace;
use reflex_runtime::camera::record::EpisodeRecorder;
use reflex_runtime::clock::{Clock, MonotonicClock};
use reflex_runtime::spec::{CameraSource, StateSourceSpec};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArg,
    /// Camera source, once per bundle camera: `NAME=SOURCE` or `SOURCE` (bundle order). SOURCE:
    /// a V4L2 device (`/dev/video0`, `/dev/v4l/by-id/...`), opened in the bundle's capture
    /// mode, or `replay:EPISODE_DIR` (to re-record or trim an episode).
    #[arg(long = "camera", required = true)]
    cameras: Vec<CameraSource>,
    /// Joint state source: `can:IFACE[:BASE_ID]` (the bundle's feedback frames) or
    /// `replay:EPISODE_DIR` (default: the first replay camera's episode).
    #[arg(long)]
    state: Option<StateSourceSpec>,
    /// Stop after this many seconds (default: until Ctrl-C), as `reflex run --duration`.
    #[arg(long)]
    duration: Option<f64>,
    /// Output episode folder: a new or empty folder, or an episode with --force. Written in a
    /// sibling folder and renamed into place once it loads back.
    #[arg(long)]
    out: PathBuf,
    /// Replace the episode already at --out (only a reflex episode: never other files).
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args) -> Result<Outcome> {
    let stop = interrupt_flag()?;
    if let Some(d) = a.duration {
        if !(d > 0.0 && d.is_finite()) {
            bail!("--duration {d}: must be > 0 seconds");
        }
    }
    let bundle = load_bundle(&a.bundle.bundle)?;
    let out = EpisodeRecorder::prepare_out(&a.out, Replace::ours_if(a.force))?;
    let m = &bundle.manifest;
    let mut devices = Devices::new(&bundle);
    let (mut cameras, episode) = devices.cameras(&a.cameras)?;
    let mut state = devices.state(a.state.as_ref(), episode.as_deref())?;
    let names: Vec<String> = m.cameras.iter().map(|c| c.name.clone()).collect();
    let mut rec = EpisodeRecorder::new(&names, &m.state.names);
    // Polled at twice the fastest camera's frame rate (every frame is kept) or the control
    // rate if faster: every camera's newest frame and the newest state.
    let clock = MonotonicClock::new();
    let max_fps = m
        .cameras
        .iter()
        .map(|c| c.capture.fps)
        .max()
        .unwrap_or(30)
        .max(1);
    let period = bundle
        .period_ns()
        .min(1_000_000_000 / (2 * u64::from(max_fps)));
    let start = clock.now_ns();
    let end = a.duration.map(|d| start + (d * 1e9) as u64);
    let mut values = vec![0f32; m.state.names.len()];
    let mut t = start;
    while !stop.load(Ordering::Relaxed) && end.is_none_or(|e| t < e) {
        for (i, cam) in cameras.iter_mut().enumerate() {
            if let Some(f) = cam.latest(t, t + period)? {
                rec.add_frame(i, &f).map_err(anyhow::Error::msg)?;
            }
        }
        if let Some(ts) = state.latest(t, &mut values)? {
            rec.add_state(ts, &values);
        }
        t += period;
        clock.sleep_until(t);
    }
    let frames = rec.frame_counts();
    let samples = rec.sample_count();
    rec.write(out)
        .with_context(|| format!("writing the episode {}", a.out.display()))?;
    println!(
        "wrote {}: {} frame(s) of {}, {samples} state sample(s), {:.1} s",
        a.out.display(),
        frames
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
            .join(" + "),
        names.join(", "),
        (clock.now_ns() - start) as f64 / 1e9
    );
    Ok(Outcome::Success)
}
