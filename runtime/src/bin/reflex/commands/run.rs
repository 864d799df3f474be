//! `reflex run`: a bundle on cameras and a CAN output until Ctrl-C (or `--duration`).

use super::{interrupt_flag, Outcome};
use crate::args::{BackendArgs, BundleArg, CanOutArgs};
use crate::open::{self, load_bundle, Devices};
use anyhow::{bail, Context, Result};
use reflex_board::input::{parse_gpio_spec, GpioSpec};
use reflex_models::Bundle;
use reflex_runtime::camera::viewpoint::Verdict;
use reflex_runtime::clock::MonotonicClock;
use reflex_runtime::control::estop::EStop;
use reflex_runtime::control::notify::SdNotifier;
use reflex_runtime::control::{ControlLoop, LoopOptions};
use reflex_runtime::infer::runner::{Request, ThreadedRunner};
use reflex_runtime::infer::select::select_backend;
use reflex_runtime::io::{Camera, CommandSink, StateSource};
use reflex_runtime::spec::{CameraSource, SafetyInputSpec, StateSourceSpec};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArg,
    /// Camera source, once per bundle camera: `NAME=SOURCE` or `SOURCE` (taken in bundle order).
    /// SOURCE: `replay:EPISODE_DIR` (a recorded episode, played in real time, looping) or a V4L2
    /// device (`/dev/video0`, `/dev/v4l/by-id/...`) opened in the bundle's capture mode.
    #[arg(long = "camera", required = true)]
    cameras: Vec<CameraSource>,
    /// Joint state source: `replay:EPISODE_DIR` (default: the first replay camera's episode), or
    /// `can:IFACE[:BASE_ID]`: per-joint feedback frames, joint i at BASE_ID + i (hex, default 200).
    #[arg(long)]
    state: Option<StateSourceSpec>,
    #[command(flatten)]
    out: CanOutArgs,
    /// E-stop input. Pressed (or unreadable) = every tick sends the stop command; the loop
    /// resumes only after it is released and re-armed with `--arm`.
    /// `gpio:CHIP:LINE[:active-low][:debounce=MS]` (a line of /dev/gpiochipN, release debounced,
    /// default 20 ms) or `can:IFACE:ID[:timeout=MS]` (frames with that hex ID, data byte 0 != 0 =
    /// pressed; with a timeout, silence for that long also counts as pressed).
    #[arg(long, value_name = "SPEC", value_parser = SafetyInputSpec::parse_estop)]
    estop: Option<SafetyInputSpec>,
    /// Re-arm input after an e-stop: `gpio:CHIP:LINE[:active-low]` (a button: its press re-arms)
    /// or `can:IFACE:ID` (any frame with that ID re-arms). Without it, a tripped e-stop needs a
    /// restart of reflex.
    #[arg(long, value_name = "SPEC", requires = "estop", value_parser = SafetyInputSpec::parse_arm)]
    arm: Option<SafetyInputSpec>,
    /// Status LED: `gpio:CHIP:LINE[:active-low]`, on while armed, blinking while stopped.
    #[arg(long, value_name = "SPEC", requires = "estop", value_parser = parse_gpio_spec)]
    status_led: Option<GpioSpec>,
    /// Start even when a camera's viewpoint check (against the bundle's training frames)
    /// refuses: the camera moved, the light changed or the lens is blurred. Only to look at
    /// what the policy does anyway, with the robot able to be stopped.
    #[arg(long)]
    skip_viewpoint_check: bool,
    #[command(flatten)]
    engine: LoopArgs,
}

/// How the loop runs: backend, rate, limits opt-out, duration.
#[derive(clap::Args, Clone)]
pub struct LoopArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Control rate in Hz (default: the bundle's control.rate_hz).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Run a bundle that has no action limits. Without limits nothing stops the policy from
    /// commanding any position at any speed: only for bench setups with the robot disconnected.
    #[arg(long)]
    pub allow_unlimited: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    pub duration: Option<f64>,
}

pub fn run(a: Args) -> Result<Outcome> {
    interrupt_flag()?;
    let t_load = Instant::now();
    let clock = MonotonicClock::new();
    let bundle = load_bundle(&a.bundle.bundle)?;
    let mut dev = Devices::new(&bundle);
    let (mut cameras, episode) = dev.cameras(&a.cameras)?;
    if bundle
        .manifest
        .cameras
        .iter()
        .any(|c| c.viewpoint.is_some())
    {
        let reports = super::check::viewpoint(&bundle, &mut cameras, &clock)?;
        let refused: Vec<&str> = reports
            .iter()
            .filter(|r| r.verdict == Verdict::Refuse)
            .map(|r| r.camera.as_str())
            .collect();
        if !refused.is_empty() && !a.skip_viewpoint_check {
            bail!(
                "camera(s) {} do not see what training saw (see above): fix the mount, light or \
                 focus, loosen the bundle's [cameras.viewpoint.thresholds], or pass \
                 --skip-viewpoint-check",
                refused.join(", ")
            );
        }
    }
    let state = dev.state(a.state.as_ref(), episode.as_deref())?;
    let estop = open::estop(a.estop.as_ref(), a.arm.as_ref(), a.status_led.as_ref())?;
    let sink = dev.sink(&a.out.can, &a.out.iface, &clock, a.out.force)?;
    let io = LoopIo {
        cameras,
        state,
        sink,
        estop,
    };
    run_loop(&bundle, io, &a.engine, &clock, t_load)?;
    Ok(Outcome::Success)
}

/// What the loop reads from and writes to.
pub struct LoopIo {
    pub cameras: Vec<Box<dyn Camera>>,
    pub state: Box<dyn StateSource>,
    pub sink: Box<dyn CommandSink>,
    pub estop: Option<EStop>,
}

/// Runs the loop until Ctrl-C or `--duration`, then prints its timings and counters. Returns
/// the start-up time (bundle load to first action), ms.
pub fn run_loop(
    bundle: &Bundle,
    io: LoopIo,
    engine: &LoopArgs,
    clock: &MonotonicClock,
    t_load: Instant,
) -> Result<f64> {
    let m = &bundle.manifest;
    let t_backend = Instant::now();
    let (backend, reason) = select_backend(bundle, engine.backend.backend, engine.backend.tract())?;
    log::info!(
        "backend: {reason} (prepared in {:.0} ms; bundle loaded in {:.0} ms)",
        t_backend.elapsed().as_secs_f64() * 1e3,
        (t_backend - t_load).as_secs_f64() * 1e3
    );
    let runner = ThreadedRunner::spawn(backend, Request::for_manifest(m))
        .context("starting the inference thread")?;
    let opts = LoopOptions {
        rate_hz: engine.rate,
        allow_unlimited: engine.allow_unlimited,
    };
    let mut lp = ControlLoop::new(m, io.cameras, io.state, io.sink, runner, &opts)?;
    if let Some(e) = io.estop {
        lp = lp.with_estop(e);
    }
    // Under systemd (`Type=notify`, the unit `reflex-tools deploy` installs): READY=1 after
    // warm-up, WATCHDOG=1 from the tick, so a stalled loop gets restarted.
    if let Some(n) = SdNotifier::from_env()? {
        log::info!("systemd notification socket found: READY/WATCHDOG/STATUS from the loop");
        lp = lp.with_notifier(Box::new(n));
    }
    let first_ms = lp.warm_up(clock, 5_000_000_000)? as f64 / 1e6;
    let startup_ms = t_load.elapsed().as_secs_f64() * 1e3;
    log::info!(
        "start-up {startup_ms:.0} ms (bundle load to first action; first inference {first_ms:.0} ms); \
         running at {:.1} Hz",
        1e9 / lp.period_ns() as f64
    );
    let stop = interrupt_flag()?;
    let max_ticks = engine
        .duration
        .map(|s| (s * 1e9 / lp.period_ns() as f64).round() as u64);
    let r = lp.run(clock, &stop, max_ticks);
    println!("\nstage timings:\n{}", lp.timings.summary());
    println!("counters: {}", serde_json::to_string(&lp.counters)?);
    let c = &lp.counters;
    println!(
        "commands over {} ticks: {} fresh from the policy's plan, {} hold(s) (last safe command \
         repeated), {} stop(s) (incl. the one at shutdown); {} watchdog trip(s), {} missed deadline(s) (a tick \
         started over 1.5 periods after the previous one); {} inferences, {} overruns (an \
         inference due while one was running); {} chunk steps skipped by latency compensation",
        c.ticks,
        c.fresh,
        c.holds,
        c.stops,
        c.watchdog_trips,
        c.missed_deadlines,
        c.inferences,
        c.overruns,
        c.skipped_steps
    );
    let f = lp.filter().counters();
    println!(
        "safety filter, per proposed command: {} passed unchanged, {} clamped into the position \
         limits, {} rate limited (the joint would have moved faster than its max_rate), {} \
         rejected (NaN/inf) and {} (wrong length); {} hold(s) and {} stop(s) made",
        f.passed,
        f.clamped_position,
        f.rate_limited,
        f.rejected_nonfinite,
        f.rejected_shape,
        f.holds,
        f.stops
    );
    if let Some(e) = lp.estop() {
        println!("estop: {}", serde_json::to_string(e.counters())?);
    }
    r?;
    Ok(startup_ms)
}
