//! `reflex`: the on-board binary.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use reflex_models::Bundle;
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode, ReplayMode};
use reflex_runtime::can::codec::Codec;
use reflex_runtime::can::sink::CandumpSink;
use reflex_runtime::can::sink::NullSink;
use reflex_runtime::clock::{Clock, MonotonicClock};
use reflex_runtime::control::{ControlLoop, LoopOptions};
use reflex_runtime::infer::runner::{Request, ThreadedRunner};
use reflex_runtime::infer::select::{select_backend, survey, BackendChoice};
use reflex_runtime::infer::tract::TractOptions;
use reflex_runtime::io::{Camera, CommandSink, StateSource};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "reflex",
    version,
    about = "Run visuomotor robot policies on the robot: cameras -> policy -> safe CAN commands",
    long_about = "Run visuomotor robot policies on the robot.\n\n\
        reflex reads camera frames and joint state, preprocesses them exactly as in training, runs \
        the policy bundle's network, turns its output into physical commands (unnormalize, chunk \
        scheduling, hard limits, rate limits, watchdog) and sends them at a fixed rate.\n\n\
        Start with `reflex demo`: it builds a reference ResNet-18 bundle and a synthetic episode \
        and runs the whole loop for 10 s, writing CAN frames to a candump log."
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
    /// Run a bundle on cameras and a CAN output until Ctrl-C (or --duration).
    Run(RunArgs),
    /// Build the reference ResNet-18 bundle and a synthetic episode if absent, run ~10 s.
    Demo(DemoArgs),
    /// Offline latency check: time the whole frame-to-command path (or the network alone) and
    /// give a PASS/FAIL verdict against the bundle's control period. Exit code 0 = PASS, 2 = FAIL.
    Bench(BenchArgs),
    /// Motor bring-up in the bundle's CAN protocol: encode, send (through the safety filter) and
    /// decode frames by joint name, in physical units.
    #[command(subcommand)]
    Can(CanCmd),
    /// Validate a bundle (manifest, hashes, graph I/O) and print what it expects.
    Check {
        /// Bundle directory (or its policy.toml).
        #[arg(long)]
        bundle: PathBuf,
    },
}

#[derive(Subcommand)]
enum CanCmd {
    /// Print the frames a command would be sent as, without sending anything.
    ///
    /// Frames are printed as `ID#DATA` (the notation of can-utils' `cansend` and `candump -L`),
    /// one per line on stdout, with what each one means on stderr. Values are physical, in the
    /// bundle's action units, and go through its position limits.
    ///
    /// Example: reflex can encode --bundle B shoulder_pan=0.1 shoulder_lift=0 ...
    Encode {
        #[command(flatten)]
        target: CanTarget,
        /// Also print the protocol's start frames (MIT: command timeout and enable) first.
        #[arg(long)]
        start: bool,
        /// Encode a stop command at these values instead of a move.
        #[arg(long)]
        stop: bool,
    },
    /// Send a command (jog the motors): start frames, then the command through the safety filter.
    ///
    /// With `--state`, the filter is seeded from the measured joint positions and the
    /// command is repeated at the control rate for `--hold` seconds, so the rate limits ramp the
    /// joints to the target instead of jumping; without it only the position limits apply to
    /// the single command sent (keep steps small).
    Send {
        #[command(flatten)]
        target: CanTarget,
        /// Output: a SocketCAN interface (can0, vcan0) or candump:FILE.
        #[arg(long)]
        can: String,
        /// Joint state to start from: `can:IFACE[:BASE_ID]` (as for `reflex run`).
        #[arg(long)]
        state: Option<String>,
        /// Seconds to keep sending the command at the control rate (with --state; default 2).
        #[arg(long)]
        hold: Option<f64>,
        /// CAN interface name written into candump logs.
        #[arg(long, default_value = "can0")]
        iface: String,
    },
    /// Decode a candump log into joint names and values with units, like `cantools decode`.
    ///
    /// Reads the `candump -l` format; explains commands, the protocol's special frames (enable,
    /// timeout) and motor replies.
    Decode {
        /// Bundle directory (or its policy.toml).
        #[arg(long)]
        bundle: PathBuf,
        /// The candump log; `-` reads stdin.
        log: PathBuf,
    },
}

#[derive(Args)]
struct CanTarget {
    /// Bundle directory (or its policy.toml).
    #[arg(long)]
    bundle: PathBuf,
    /// Run a bundle without action limits (bench setups only).
    #[arg(long)]
    allow_unlimited: bool,
    /// `NAME=VALUE` for every action dimension, in its physical unit.
    #[arg(required = true, value_name = "NAME=VALUE")]
    values: Vec<String>,
}

#[derive(Args, Clone)]
struct EngineArgs {
    /// Inference backend: auto (TensorRT if available, else tract), tract, tensorrt.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// CPU threads for tract (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Control rate in Hz (default: the bundle's control.rate_hz).
    #[arg(long)]
    rate: Option<f64>,
    /// Run a bundle that has no action limits. Without limits nothing stops the policy from
    /// commanding any position at any speed: only for bench setups with the robot disconnected.
    #[arg(long)]
    allow_unlimited: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
}

#[derive(Args)]
struct RunArgs {
    /// Bundle directory (or its policy.toml).
    #[arg(long)]
    bundle: PathBuf,
    /// Camera source, once per bundle camera: `NAME=SOURCE` or `SOURCE` (taken in bundle order).
    /// SOURCE: `replay:EPISODE_DIR` (a recorded episode, played in real time, looping) or a V4L2
    /// device (`/dev/video0`, `/dev/v4l/by-id/...`) opened in the bundle's capture mode.
    #[arg(long = "camera", required = true)]
    cameras: Vec<String>,
    /// Joint state source: `replay:EPISODE_DIR` (default: the first replay camera's episode), or
    /// `can:IFACE[:BASE_ID]`: per-joint feedback frames, joint i at BASE_ID + i (hex, default 200).
    #[arg(long)]
    state: Option<String>,
    /// Command output: a SocketCAN interface (`can0`, `vcan0`), `candump:FILE` (can-utils
    /// `candump -l` log) or `null`.
    #[arg(long)]
    can: String,
    /// CAN interface name written into candump logs.
    #[arg(long, default_value = "can0")]
    iface: String,
    /// E-stop input. Pressed (or unreadable) = every tick sends the stop command; the loop
    /// resumes only after it is released and re-armed with `--arm`.
    /// `gpio:CHIP:LINE[:active-low][:debounce=MS]` (a line of /dev/gpiochipN, release debounced,
    /// default 20 ms) or `can:IFACE:ID[:timeout=MS]` (frames with that hex ID, data byte 0 != 0 =
    /// pressed; with a timeout, silence for that long also counts as pressed).
    #[arg(long, value_name = "SPEC")]
    estop: Option<String>,
    /// Re-arm input after an e-stop: `gpio:CHIP:LINE[:active-low]` (a button: its press re-arms)
    /// or `can:IFACE:ID` (any frame with that ID re-arms). Without it, a tripped e-stop needs a
    /// restart of reflex.
    #[arg(long, value_name = "SPEC", requires = "estop")]
    arm: Option<String>,
    /// Status LED: `gpio:CHIP:LINE[:active-low]`, on while armed, blinking while stopped.
    #[arg(long, value_name = "SPEC", requires = "estop")]
    status_led: Option<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(Args)]
struct BenchArgs {
    /// Bundle directory.
    #[arg(long, required_unless_present = "compare")]
    bundle: Option<PathBuf>,
    /// Backend: auto, tract, tensorrt.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// CPU threads for tract (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Camera source: `replay:EPISODE_DIR`, or `synthetic` (a generated episode matching the
    /// bundle's cameras).
    #[arg(long, default_value = "synthetic")]
    camera: String,
    /// Timed ticks (after warm-up).
    #[arg(long, conflicts_with = "duration")]
    iterations: Option<u64>,
    /// Timed seconds (after warm-up); default 10 s of ticks.
    #[arg(long)]
    duration: Option<f64>,
    /// Untimed warm-up ticks.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Safety margin on the budgets (0.2 = the p99 must fit in 80% of the budget).
    #[arg(long, default_value_t = 0.2)]
    margin: f64,
    /// Time the network alone on fixed inputs (comparable to trtexec's GPU compute time).
    #[arg(long)]
    model_only: bool,
    /// Control rate override, Hz.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the JSON report (schema reflex-bench/1) here.
    #[arg(long, default_value = "bench.json")]
    json: PathBuf,
    /// Write the SVG plot (per-stage histograms, tick-period timeline) here.
    #[arg(long, default_value = "bench.svg")]
    svg: PathBuf,
    /// Compare two JSON reports side by side instead of running: --compare A.json B.json.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Option<Vec<PathBuf>>,
}

#[derive(Args)]
struct DemoArgs {
    /// Where the bundle, episode and CAN log go (created if absent).
    #[arg(long, default_value = "target/reflex-demo")]
    workdir: PathBuf,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    #[arg(long)]
    threads: Option<usize>,
}

fn main() {
    let cli = Cli::parse();
    let level = if cli.quiet {
        "error"
    } else {
        match cli.verbose {
            0 => "info",
            1 => "debug",
            _ => "trace",
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp_millis()
        .init();
    let r = match cli.cmd {
        Cmd::Run(a) => cmd_run(a),
        Cmd::Demo(a) => cmd_demo(a),
        Cmd::Check { bundle } => cmd_check(&bundle),
        Cmd::Can(c) => cmd_can(c),
        Cmd::Bench(a) => match cmd_bench(a) {
            Ok(true) => Ok(()),
            Ok(false) => std::process::exit(2),
            Err(e) => Err(e),
        },
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn load_bundle(path: &Path) -> Result<Bundle> {
    Bundle::load(path).with_context(|| format!("loading bundle {}", path.display()))
}

fn cmd_check(path: &Path) -> Result<()> {
    let t = Instant::now();
    let b = load_bundle(path)?;
    let m = &b.manifest;
    println!(
        "bundle {} OK ({:.0} ms)",
        b.dir.display(),
        t.elapsed().as_secs_f64() * 1e3
    );
    println!("  name: {}  format_version: {}", m.name, m.format_version);
    for f in &m.models {
        let backends: Vec<&str> = f.backends.iter().map(|b| b.as_str()).collect();
        println!(
            "  model {:?}: {} ({}, backends: {})",
            f.role,
            f.file,
            f.precision.as_str(),
            backends.join(", ")
        );
    }
    for s in survey(&b, TractOptions::default()) {
        match &s.status {
            Ok(how) => println!("  backend {}: available ({how})", s.backend.as_str()),
            Err(why) => println!("  backend {}: not available: {why}", s.backend.as_str()),
        }
    }
    println!(
        "  control: {} Hz, {} step(s) per inference, ensembling {:?}, latency compensation {}",
        m.control.rate_hz,
        m.control.steps_per_inference,
        m.control.temporal_ensemble_m,
        m.control.latency_compensation
    );
    for c in &m.cameras {
        println!(
            "  camera {}: {}x{} {} -> {} [1,{},{},{}]",
            c.name,
            c.capture.width,
            c.capture.height,
            c.capture.format.as_str(),
            c.onnx_input,
            c.preprocess.color.channels(),
            c.preprocess.resize.height,
            c.preprocess.resize.width
        );
    }
    println!(
        "  state: {} ({})",
        m.state.names.join(", "),
        m.state.normalization.kind_str()
    );
    println!(
        "  action: {} -> {} {:?} ({}), limits: {}",
        m.action.names.join(", "),
        m.action.onnx_output,
        m.action.output,
        m.action.normalization.kind_str(),
        if m.action.limits.is_some() {
            "yes"
        } else {
            "NONE"
        }
    );
    // The motor protocol is checked too (a DBC file's mapping and ranges), so that a bundle that
    // cannot drive its robot fails here and not at the first command.
    let codec = Codec::from_bundle(&b)?;
    println!("  can: {}", codec.describe());
    if codec.protocol() != "per-joint" {
        match codec.feedback(&m.state.names, 0) {
            Ok(_) => println!("  state from the bus (--state can:IFACE): every state dimension"),
            Err(e) => println!("  state from the bus (--state can:IFACE): not available: {e}"),
        }
    }
    Ok(())
}

/// Opened cameras in bundle order, and the first replay episode's directory (state default).
type OpenedCameras = (Vec<Box<dyn Camera>>, Option<PathBuf>);

/// Camera sources in bundle order.
fn open_cameras(bundle: &Bundle, specs: &[String]) -> Result<OpenedCameras> {
    let m = &bundle.manifest;
    let mut by_name: Vec<Option<String>> = vec![None; m.cameras.len()];
    let mut positional = vec![];
    for s in specs {
        match s.split_once('=') {
            Some((name, src)) if !name.contains(':') => {
                let i = m
                    .cameras
                    .iter()
                    .position(|c| c.name == name)
                    .with_context(|| format!("--camera {s}: the bundle has no camera `{name}`"))?;
                by_name[i] = Some(src.to_string());
            }
            _ => positional.push(s.clone()),
        }
    }
    let mut pos = positional.into_iter();
    for slot in by_name.iter_mut() {
        if slot.is_none() {
            *slot = pos.next();
        }
    }
    if pos.next().is_some() {
        bail!(
            "more --camera sources than bundle cameras ({})",
            m.cameras.len()
        );
    }
    let mut cams: Vec<Box<dyn Camera>> = vec![];
    let mut first_episode = None;
    for (spec, src) in m.cameras.iter().zip(by_name) {
        let src =
            src.with_context(|| format!("no --camera given for bundle camera `{}`", spec.name))?;
        if let Some(dir) = src.strip_prefix("replay:") {
            let dir = PathBuf::from(dir);
            let ep = Episode::load(&dir)?;
            cams.push(Box::new(ep.camera(&spec.name, ReplayMode::RealTime)?));
            first_episode.get_or_insert(dir);
        } else if src.starts_with("/dev/") {
            let cam =
                reflex_runtime::camera::v4l2::V4l2Camera::open(Path::new(&src), &spec.capture)?;
            cams.push(Box::new(cam));
        } else {
            bail!(
                "camera source `{src}`: expected replay:EPISODE_DIR or a V4L2 device \
                 (/dev/videoN, /dev/v4l/by-id/...)"
            );
        }
    }
    Ok((cams, first_episode))
}

fn open_state(
    bundle: &Bundle,
    spec: Option<&str>,
    default_episode: Option<&Path>,
) -> Result<Box<dyn StateSource>> {
    if let Some(rest) = spec.and_then(|s| s.strip_prefix("can:")) {
        // Joint feedback in the bundle's protocol; for the per-joint encoding, joint i at
        // BASE_ID + i (default 0x200).
        let (iface, base) = match rest.split_once(':') {
            Some((i, b)) => {
                let b = b.trim_start_matches("0x");
                let base = u32::from_str_radix(b, 16)
                    .with_context(|| format!("--state can:{rest}: `{b}` is not a hex CAN ID"))?;
                (i, base)
            }
            None => (rest, 0x200),
        };
        let codec = Codec::from_bundle(bundle)?;
        let decoder = codec
            .feedback(&bundle.manifest.state.names, base)
            .with_context(|| format!("--state can:{rest}"))?;
        let mut requests = reflex_runtime::can::codec::Frames::new();
        codec.state_request_frames(&mut requests)?;
        let src =
            reflex_runtime::can::socketcan::SocketCanStateSource::open(iface, decoder, requests)
                .with_context(|| format!("opening joint feedback on {iface}"))?;
        return Ok(Box::new(src));
    }
    let dir = match spec {
        Some(s) => PathBuf::from(s.strip_prefix("replay:").with_context(|| {
            format!("--state {s}: expected replay:EPISODE_DIR or can:IFACE[:BASE_ID]")
        })?),
        None => default_episode
            .context("no --state given and no replay camera to take state from")?
            .to_path_buf(),
    };
    let ep = Episode::load(&dir)?;
    Ok(Box::new(ep.state_source(
        &bundle.manifest.state.names,
        ReplayMode::RealTime,
    )?))
}

fn open_sink(
    bundle: &Bundle,
    spec: &str,
    iface: &str,
    clock: &MonotonicClock,
) -> Result<Box<dyn CommandSink>> {
    if spec == "null" {
        return Ok(Box::new(NullSink::default()));
    }
    if let Some(file) = spec.strip_prefix("candump:") {
        let codec = Codec::from_bundle(bundle)?;
        let sink = CandumpSink::new(Path::new(file), iface, codec, clock.epoch_offset_ns())
            .with_context(|| format!("opening candump log {file}"))?;
        return Ok(Box::new(sink));
    }
    if spec.is_empty() || spec.contains(':') || spec.contains('/') {
        bail!("--can {spec}: expected a CAN interface name (can0, vcan0), candump:FILE or null");
    }
    let codec = Codec::from_bundle(bundle)?;
    let sink = reflex_runtime::can::socketcan::SocketCanSink::open(spec, codec)?;
    Ok(Box::new(sink))
}

/// A safety input from its command-line spec: `gpio:...` or `can:...` (`level`: an e-stop's
/// status, else an arm button's event).
fn open_safety_input(spec: &str, level: bool) -> Result<Box<dyn reflex_board::input::SafetyInput>> {
    if spec.starts_with("gpio:") {
        let g = reflex_board::input::parse_gpio_spec(spec)?;
        return Ok(Box::new(g.open()?));
    }
    if spec.starts_with("can:") {
        let (iface, id, kind) = reflex_runtime::can::socketcan::parse_can_input_spec(spec, level)
            .map_err(anyhow::Error::msg)?;
        return Ok(Box::new(
            reflex_runtime::can::socketcan::CanSafetyInput::open(&iface, id, kind)?,
        ));
    }
    bail!(
        "`{spec}`: expected gpio:CHIP:LINE[:active-low][:debounce=MS] or can:IFACE:ID{}",
        if level { "[:timeout=MS]" } else { "" }
    )
}

fn open_estop(a: &RunArgs) -> Result<Option<reflex_runtime::control::estop::EStop>> {
    let Some(spec) = &a.estop else {
        return Ok(None);
    };
    let stop = open_safety_input(spec, true).context("--estop")?;
    let arm = a
        .arm
        .as_deref()
        .map(|s| open_safety_input(s, false).context("--arm"))
        .transpose()?;
    let mut e = reflex_runtime::control::estop::EStop::new(stop, arm);
    if let Some(led) = &a.status_led {
        let g = reflex_board::input::parse_gpio_spec(led).context("--status-led")?;
        let out = reflex_board::input::open_gpio_cdev_output(&g.chip, g.line, g.active_low)
            .context("--status-led")?;
        e = e.with_status_led(Box::new(out));
    }
    log::info!(
        "e-stop: {}{}",
        e.stop_name(),
        match e.arm_name() {
            Some(n) => format!(", re-armed by {n}"),
            None => ", no arm input: a trip needs a restart".into(),
        }
    );
    Ok(Some(e))
}

/// The Ctrl-C / SIGTERM flag, installed once per process (before anything slow, so an early
/// interrupt is handled too): the loop sees it, sends the stop command and exits.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    if let Some(f) = FLAG.get() {
        return Ok(f.clone());
    }
    let f = Arc::new(AtomicBool::new(false));
    let h = f.clone();
    ctrlc::set_handler(move || h.store(true, Ordering::Relaxed))
        .context("installing the Ctrl-C handler")?;
    Ok(FLAG.get_or_init(|| f).clone())
}

struct RunReport {
    startup_ms: f64,
}

/// What the loop reads from and writes to.
struct LoopIo {
    cameras: Vec<Box<dyn Camera>>,
    state: Box<dyn StateSource>,
    sink: Box<dyn CommandSink>,
    estop: Option<reflex_runtime::control::estop::EStop>,
}

fn run_loop(
    bundle: &Bundle,
    io: LoopIo,
    engine: &EngineArgs,
    clock: &MonotonicClock,
    t_load: Instant,
) -> Result<RunReport> {
    let LoopIo {
        cameras,
        state,
        sink,
        estop,
    } = io;
    let m = &bundle.manifest;
    let tract = TractOptions {
        threads: engine
            .threads
            .unwrap_or_else(|| TractOptions::default().threads),
    };
    let t_backend = Instant::now();
    let (backend, reason) = select_backend(bundle, engine.backend, tract)?;
    log::info!(
        "backend: {reason} (prepared in {:.0} ms; bundle loaded in {:.0} ms)",
        t_backend.elapsed().as_secs_f64() * 1e3,
        (t_backend - t_load).as_secs_f64() * 1e3
    );
    let req = Request::for_manifest(m);
    let runner = ThreadedRunner::spawn(backend, req).context("starting the inference thread")?;
    let opts = LoopOptions {
        rate_hz: engine.rate,
        allow_unlimited: engine.allow_unlimited,
    };
    let mut lp = ControlLoop::new(m, cameras, state, sink, runner, &opts)?;
    if let Some(e) = estop {
        lp = lp.with_estop(e);
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
    println!("safety: {:?}", lp.filter().counters());
    if let Some(e) = lp.estop() {
        println!("estop: {}", serde_json::to_string(e.counters())?);
    }
    r?;
    Ok(RunReport { startup_ms })
}

fn cmd_run(a: RunArgs) -> Result<()> {
    interrupt_flag()?;
    let t_load = Instant::now();
    let clock = MonotonicClock::new();
    let bundle = load_bundle(&a.bundle)?;
    let (cams, ep) = open_cameras(&bundle, &a.cameras)?;
    let state = open_state(&bundle, a.state.as_deref(), ep.as_deref())?;
    let estop = open_estop(&a)?;
    let sink = open_sink(&bundle, &a.can, &a.iface, &clock)?;
    let io = LoopIo {
        cameras: cams,
        state,
        sink,
        estop,
    };
    run_loop(&bundle, io, &a.engine, &clock, t_load)?;
    Ok(())
}

/// The action vector named by `NAME=VALUE` arguments, in manifest order.
fn parse_targets(bundle: &Bundle, args: &[String]) -> Result<Vec<f32>> {
    let names = &bundle.manifest.action.names;
    let mut values = vec![None; names.len()];
    for a in args {
        let (name, v) = a
            .split_once('=')
            .with_context(|| format!("`{a}`: expected NAME=VALUE"))?;
        let i = names
            .iter()
            .position(|n| n == name)
            .with_context(|| format!("`{name}` is not an action name ({})", names.join(", ")))?;
        let v: f32 = v
            .parse()
            .with_context(|| format!("`{a}`: `{v}` is not a number"))?;
        if !v.is_finite() {
            bail!("`{a}`: the value must be finite");
        }
        values[i] = Some(v);
    }
    let missing: Vec<String> = names
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    if !missing.is_empty() {
        bail!(
            "every action dimension needs a value (a command moves all joints); missing: {}",
            missing.join(", ")
        );
    }
    Ok(values.into_iter().flatten().collect())
}

/// The safety filter of `bundle` at its control rate, with a warning per clamped dimension.
fn filtered(
    filter: &mut reflex_runtime::control::safety::SafetyFilter,
    bundle: &Bundle,
    target: &[f32],
    tick: u64,
    warn: bool,
) -> reflex_runtime::control::safety::SafeCommand {
    let f = filter.filter(target, tick);
    if warn {
        let a = &bundle.manifest.action;
        let why = match (f.outcome.clamped_position, f.outcome.rate_limited) {
            (true, true) => "position limits, then the rate limit",
            (true, false) => "position limits",
            _ => "rate limit: the command ramps there",
        };
        for (i, (t, v)) in target.iter().zip(f.command.values()).enumerate() {
            if t != v {
                eprintln!(
                    "note: {} {t} {} -> {v} (safety filter: {why})",
                    a.names[i], a.units[i]
                );
            }
        }
    }
    f.command
}

fn frame_text(f: &reflex_runtime::can::CanFrame) -> String {
    let data: String = f.data().iter().map(|b| format!("{b:02X}")).collect();
    if f.is_extended() {
        format!("{:08X}#{data}", f.id())
    } else {
        format!("{:03X}#{data}", f.id())
    }
}

fn explain_text(codec: &Codec, f: &reflex_runtime::can::CanFrame) -> String {
    match codec.explain(f) {
        Some(e) => {
            let vals: Vec<String> = e
                .values
                .iter()
                .map(|(n, v, u)| {
                    let v = format!("{v:.6}");
                    let v = v.trim_end_matches('0').trim_end_matches('.');
                    if u.is_empty() {
                        format!("{n}={v}")
                    } else {
                        format!("{n}={v} {u}")
                    }
                })
                .collect();
            if vals.is_empty() {
                e.what
            } else {
                format!("{}: {}", e.what, vals.join(" "))
            }
        }
        None => format!("not a {} frame of this bundle", codec.protocol()),
    }
}

/// Prints a line; a closed pipe (`| head`) ends the program quietly, as for other Unix tools.
fn stdout_line(line: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

fn cmd_can(c: CanCmd) -> Result<()> {
    use reflex_runtime::can::codec::Frames;
    use reflex_runtime::control::safety::SafetyFilter;
    match c {
        CanCmd::Encode {
            target,
            start,
            stop,
        } => {
            let bundle = load_bundle(&target.bundle)?;
            let codec = Codec::from_bundle(&bundle)?;
            let values = parse_targets(&bundle, &target.values)?;
            let m = &bundle.manifest;
            let mut filter =
                SafetyFilter::new(&m.action, m.control.rate_hz, target.allow_unlimited)?;
            let mut cmd = filtered(&mut filter, &bundle, &values, 0, true);
            if stop {
                cmd = filter.stop(1);
            }
            let mut frames = Frames::new();
            let mut out = vec![];
            if start {
                codec.start_frames(&mut frames)?;
                out.extend(frames.iter().copied());
            }
            codec.encode(&cmd, &mut frames)?;
            out.extend(frames.iter().copied());
            for f in &out {
                eprintln!("  {} = {}", frame_text(f), explain_text(&codec, f));
                stdout_line(&frame_text(f))?;
            }
            Ok(())
        }
        CanCmd::Send {
            target,
            can,
            state,
            hold,
            iface,
        } => {
            let stop = interrupt_flag()?;
            let clock = MonotonicClock::new();
            let bundle = load_bundle(&target.bundle)?;
            let values = parse_targets(&bundle, &target.values)?;
            let m = &bundle.manifest;
            let mut filter =
                SafetyFilter::new(&m.action, m.control.rate_hz, target.allow_unlimited)?;
            let mut sink = open_sink(&bundle, &can, &iface, &clock)?;
            let Some(state_spec) = state else {
                eprintln!(
                    "note: no --state: the command is not rate-limited from the joints' positions"
                );
                let cmd = filtered(&mut filter, &bundle, &values, 0, true);
                sink.send(&cmd, clock.now_ns())?;
                sink.flush()?;
                println!("sent 1 command to {can}: {:?}", cmd.values());
                return Ok(());
            };
            if !state_spec.starts_with("can:") {
                bail!("--state {state_spec}: expected can:IFACE[:BASE_ID]");
            }
            let mut src = open_state(&bundle, Some(&state_spec), None)?;
            let mut st = vec![0f32; m.state.names.len()];
            let t0 = clock.now_ns();
            loop {
                if src.latest(clock.now_ns(), &mut st)?.is_some() {
                    break;
                }
                if clock.now_ns() - t0 > 2_000_000_000 {
                    bail!("no joint state from {state_spec} within 2 s: nothing sent");
                }
                clock.sleep_until(clock.now_ns() + 2_000_000);
            }
            let seed: Vec<f32> = m
                .action_state_indices()
                .iter()
                .map(|j| j.map_or(f32::NAN, |j| st[j]))
                .collect();
            if !filter.seed(&seed) {
                bail!(
                    "the state from {state_spec} does not give a finite position for every action \
                     dimension (state names must match action names): nothing sent"
                );
            }
            let period = bundle.period_ns();
            let ticks = ((hold.unwrap_or(2.0) * 1e9) as u64 / period).max(1);
            let start = clock.now_ns();
            let mut last = None;
            for tick in 0..ticks {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = src.latest(clock.now_ns(), &mut st);
                let cmd = filtered(&mut filter, &bundle, &values, tick, tick == 0);
                sink.send(&cmd, clock.now_ns())?;
                last = Some(cmd);
                clock.sleep_until(start + (tick + 1) * period);
            }
            sink.flush()?;
            if let Some(c) = last {
                println!(
                    "sent {ticks} commands to {can} at {} Hz; last: {:?}; measured: {:?}",
                    m.control.rate_hz,
                    c.values(),
                    st
                );
            }
            Ok(())
        }
        CanCmd::Decode { bundle, log } => {
            let bundle = load_bundle(&bundle)?;
            let codec = Codec::from_bundle(&bundle)?;
            let text = if log.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&log)
                    .with_context(|| format!("reading {}", log.display()))?
            };
            for (n, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let (ts, ifc, f) = reflex_runtime::can::candump::parse_candump_line(line)
                    .with_context(|| format!("{}:{}", log.display(), n + 1))?;
                stdout_line(&format!(
                    "({}.{:06}) {ifc} {}  {}",
                    ts / 1_000_000,
                    ts % 1_000_000,
                    frame_text(&f),
                    explain_text(&codec, &f)
                ))?;
            }
            Ok(())
        }
    }
}

fn cmd_demo(a: DemoArgs) -> Result<()> {
    interrupt_flag()?;
    let bundle_dir = a.workdir.join("resnet18-chunk");
    let episode_dir = a.workdir.join("episode");
    let log_path = a.workdir.join("can0.log");
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
    let mut cams: Vec<Box<dyn Camera>> = vec![];
    for c in &bundle.manifest.cameras {
        cams.push(Box::new(ep.camera(&c.name, ReplayMode::RealTime)?));
    }
    let state = Box::new(ep.state_source(&bundle.manifest.state.names, ReplayMode::RealTime)?);
    let sink = open_sink(
        &bundle,
        &format!("candump:{}", log_path.display()),
        "can0",
        &clock,
    )?;
    let engine = EngineArgs {
        backend: a.backend,
        threads: a.threads,
        rate: None,
        allow_unlimited: false,
        duration: Some(a.seconds),
    };
    let io = LoopIo {
        cameras: cams,
        state,
        sink,
        estop: None,
    };
    let rep = run_loop(&bundle, io, &engine, &clock, t_load)?;
    println!(
        "start-up (bundle load to first action): {:.0} ms",
        rep.startup_ms
    );
    println!(
        "CAN frames written to {} (candump -l format; replay with canplayer)",
        log_path.display()
    );
    Ok(())
}

fn cmd_bench(a: BenchArgs) -> Result<bool> {
    use reflex_runtime::bench::{self, BenchReport};
    if let Some(files) = &a.compare {
        let read = |p: &PathBuf| -> Result<BenchReport> {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let r: BenchReport = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a reflex-bench/1 report", p.display()))?;
            if r.schema != bench::SCHEMA {
                bail!(
                    "{}: schema {} (expected {})",
                    p.display(),
                    r.schema,
                    bench::SCHEMA
                );
            }
            Ok(r)
        };
        let (ra, rb) = (read(&files[0])?, read(&files[1])?);
        print!("{}", bench::compare(&ra, &rb));
        return Ok(true);
    }
    let path = a.bundle.clone().context("--bundle is required")?;
    let bundle = load_bundle(&path)?;
    let m = &bundle.manifest;
    let tract = TractOptions {
        threads: a.threads.unwrap_or_else(|| TractOptions::default().threads),
    };
    let (mut backend, reason) = select_backend(&bundle, a.backend, tract)?;
    let backend_name = backend.name().to_string();
    let rate = a.rate.unwrap_or(m.control.rate_hz);
    let period_ns = (1e9 / rate).round() as u64;
    let steps = m.control.steps_per_inference as u64;
    let board = reflex_board::BoardIdentity::detect();
    let mut timings = reflex_runtime::timing::StageTimings::new();
    let mut periods_ms = vec![];
    let (ticks, duration_s, infer_count, missed, overruns);
    let t_start;
    if a.model_only {
        // Fixed inputs: a mid-grey image and zero state, written once.
        for i in 0..m.cameras.len() {
            backend.camera_input(i).fill(0.0);
        }
        if let Some(s) = backend.state_input() {
            s.fill(0.0);
        }
        for _ in 0..a.warmup.max(1) {
            backend.run()?;
        }
        let n = a.iterations.unwrap_or(0);
        let dur = a
            .duration
            .unwrap_or(if n == 0 { 10.0 } else { f64::INFINITY });
        t_start = Instant::now();
        let mut k = 0;
        while (n == 0 || k < n) && t_start.elapsed().as_secs_f64() < dur {
            let t = Instant::now();
            backend.run()?;
            timings.record(
                reflex_runtime::timing::Stage::Inference,
                t.elapsed().as_nanos() as u64,
            );
            k += 1;
        }
        ticks = k;
        infer_count = k;
        duration_s = t_start.elapsed().as_secs_f64();
        missed = 0;
        overruns = 0;
    } else {
        let ep_dir = if a.camera == "synthetic" {
            let d = std::env::temp_dir().join(format!("reflex-bench-episode-{}", m.name));
            if Episode::load(&d).is_err() {
                generate_synthetic_episode(m, &d, 2.0, 30)?;
            }
            d
        } else {
            PathBuf::from(a.camera.strip_prefix("replay:").with_context(|| {
                format!("--camera {}: expected synthetic or replay:DIR", a.camera)
            })?)
        };
        let ep = Episode::load(&ep_dir)?;
        let mut cams: Vec<Box<dyn Camera>> = vec![];
        for c in &m.cameras {
            cams.push(Box::new(ep.camera(&c.name, ReplayMode::AsFastAsPossible)?));
        }
        let state = ep.state_source(&m.state.names, ReplayMode::AsFastAsPossible)?;
        let req = Request::for_manifest(m);
        let runner = ThreadedRunner::spawn(backend, req)?;
        let opts = LoopOptions {
            rate_hz: Some(rate),
            allow_unlimited: true,
        };
        let mut lp = ControlLoop::new(m, cams, state, NullSink::default(), runner, &opts)?;
        let clock = MonotonicClock::new();
        lp.warm_up(&clock, 5_000_000_000)?;
        let mut next = clock.now_ns();
        for _ in 0..a.warmup {
            lp.tick(clock.now_ns())?;
            next += period_ns;
            clock.sleep_until(next);
        }
        lp.timings = reflex_runtime::timing::StageTimings::new();
        lp.counters = Default::default();
        let n = a.iterations.unwrap_or(0);
        let dur = a.duration.unwrap_or(10.0);
        let max_ticks = if n > 0 { n } else { (dur * rate).ceil() as u64 };
        periods_ms.reserve(max_ticks as usize);
        t_start = Instant::now();
        let mut last: Option<u64> = None;
        for _ in 0..max_ticks {
            let now = clock.now_ns();
            if let Some(l) = last {
                periods_ms.push((now - l) as f64 / 1e6);
            }
            last = Some(now);
            lp.tick(now)?;
            next += period_ns;
            clock.sleep_until(next);
        }
        duration_s = t_start.elapsed().as_secs_f64();
        ticks = max_ticks;
        infer_count = lp.counters.inferences;
        missed = lp.counters.missed_deadlines;
        overruns = lp.counters.overruns;
        timings = lp.timings.clone();
        lp.shutdown(clock.now_ns());
    }
    let stages = bench::stage_stats(&timings);
    let period_ms = period_ns as f64 / 1e6;
    let verdict = bench::verdict(&stages, period_ms, steps, a.margin, a.model_only);
    let report = BenchReport {
        schema: bench::SCHEMA.into(),
        mode: if a.model_only {
            "model-only"
        } else {
            "pipeline"
        }
        .into(),
        bundle: m.name.clone(),
        backend: backend_name,
        backend_reason: reason.to_string(),
        board,
        rate_hz: rate,
        period_ms,
        steps_per_inference: steps,
        margin: a.margin,
        tick_budget_ms: period_ms * (1.0 - a.margin),
        latency_budget_ms: period_ms * steps as f64 * (1.0 - a.margin),
        ticks,
        duration_s,
        throughput_hz: ticks as f64 / duration_s.max(1e-9),
        inferences_per_s: infer_count as f64 / duration_s.max(1e-9),
        peak_rss_kib: bench::peak_rss_kib(),
        stages,
        missed_deadlines: missed,
        overruns,
        periods_ms,
        verdict,
    };
    print!("{}", report.table());
    std::fs::write(&a.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", a.json.display()))?;
    std::fs::write(&a.svg, report.svg()).with_context(|| format!("writing {}", a.svg.display()))?;
    println!("wrote {} and {}", a.json.display(), a.svg.display());
    Ok(report.verdict.pass)
}
