//! Chunk timing through the whole loop (issue 15, kinds 6 and 7): a chunk's steps are at the
//! training rate whatever the loop rate; the first chunk and every chunk boundary lose no step;
//! skipped steps are counted as they happen.
//!
//! Time is a manual clock; inference is either the real ramp policy (`data/chunk-rate/ramp.onnx`,
//! from `shared/cases/chunk-rate/`: step k commands 0.1 + 0.02 k rad on every joint, trained at
//! 20 Hz) through tract, or a fake runner that takes a fixed latency on the manual clock.

use reflex_models::bundle::{parse_manifest, sha256_bytes, Bundle};
use reflex_models::manifest::{Manifest, PixelFormat};
use reflex_runtime::can::sink::RecordingSink;
use reflex_runtime::clock::{Clock, ManualClock};
use reflex_runtime::control::{ControlLoop, LoopOptions};
use reflex_runtime::infer::policy::{PolicyError, SinglePassPolicy};
use reflex_runtime::infer::runner::{InferenceRunner, InlineRunner, Request};
use reflex_runtime::infer::tract::TractOptions;
use reflex_runtime::io::{Camera, CameraError, Frame, FrameMeta};
use reflex_testkit::fakes::{FixedState, ScriptedCamera};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::AtomicBool;

/// A camera that always has a new frame of a fixed size (RGB24), captured now.
struct StillCamera {
    frame: Vec<u8>,
    width: u32,
    height: u32,
    seq: u64,
}

impl StillCamera {
    fn new(width: u32, height: u32) -> Self {
        let frame = (0..width * height * 3)
            .map(|i| (i * 7 % 256) as u8)
            .collect();
        StillCamera {
            frame,
            width,
            height,
            seq: 0,
        }
    }
}

impl Camera for StillCamera {
    fn name(&self) -> &str {
        "still"
    }
    fn latest(&mut self, now_ns: u64, _deadline: u64) -> Result<Option<Frame<'_>>, CameraError> {
        self.seq += 1;
        Ok(Some(Frame {
            meta: FrameMeta {
                seq: self.seq,
                capture_ns: now_ns,
                width: self.width,
                height: self.height,
                format: PixelFormat::Rgb24,
            },
            data: &self.frame,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Kind 6: the ramp policy at its trained speed at two loop rates.

/// The ramp bundle (real ONNX file, hash filled in), with the rate limit raised so that the
/// jump back to step 0 at each new chunk is sent as it is and the commanded positions show the
/// planner's timing alone.
fn ramp_bundle() -> Bundle {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chunk-rate");
    let onnx = std::fs::read(data.join("ramp.onnx")).expect("ramp.onnx");
    let text = std::fs::read_to_string(data.join("policy_template_ramp.toml")).expect("template");
    let text = text.replace(&"0".repeat(64), &sha256_bytes(&onnx)).replace(
        "max_rate = [1.5, 1.5, 1.5, 2.0, 2.0, 0.2]",
        "max_rate = [20.0, 20.0, 20.0, 20.0, 20.0, 20.0]",
    );
    assert!(text.contains("max_rate = [20.0"), "template changed");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chunk-timing-ramp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("policy.onnx"), &onnx).expect("write model");
    std::fs::write(dir.join("policy.toml"), text).expect("write manifest");
    Bundle::load(&dir).expect("ramp bundle loads")
}

/// Runs the ramp bundle for `seconds` at `rate_hz` (None = the bundle's 20 Hz) through the loop,
/// warm-up included; returns (ns since the first tick, joint 0's command) per tick.
fn run_ramp(bundle: &Bundle, rate_hz: Option<f64>, seconds: f64) -> Vec<(u64, f64)> {
    let m = &bundle.manifest;
    let backend = SinglePassPolicy::tract(bundle, TractOptions::default()).expect("tract");
    let req = Request::new(&[3 * 32 * 32], 6, 4 * 6);
    let mut lp = ControlLoop::new(
        m,
        vec![StillCamera::new(64, 48)],
        // Measured joints at step 0's position: the first command does not jump.
        FixedState(vec![0.1; 6]),
        RecordingSink::with_capacity(1000),
        InlineRunner::new(backend, req),
        &LoopOptions {
            rate_hz,
            allow_unlimited: false,
        },
    )
    .expect("loop");
    let clock = ManualClock::new(1_000_000_000);
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let t0 = clock.now_ns();
    let ticks = (seconds * rate_hz.unwrap_or(m.control.rate_hz)).round() as u64;
    lp.run(&clock, &AtomicBool::new(false), Some(ticks))
        .expect("run");
    assert_eq!(lp.counters.watchdog_trips, 0, "{:?}", lp.counters);
    assert_eq!(lp.counters.fresh, ticks, "{:?}", lp.counters);
    let sent = &lp.sink().sent;
    assert_eq!(sent.len() as u64, ticks + 1, "the ticks and the final stop");
    sent[..ticks as usize]
        .iter()
        .map(|(t, c)| (t - t0, f64::from(c.values()[0])))
        .collect()
}

/// A chunk's duration at its trained 20 Hz (4 steps), and the time of its last step.
const CHUNK_NS: u64 = 200_000_000;
const LAST_STEP_NS: u64 = 150_000_000;

/// Joint speeds (rad/s) between consecutive commands that belong to the same chunk's first
/// 150 ms (steps 0 to 3: the chunk lasts 200 ms at 20 Hz and its last step is held for its period).
fn ramp_speeds(cmds: &[(u64, f64)]) -> Vec<f64> {
    cmds.windows(2)
        .filter(|w| {
            let (a, b) = (w[0].0 % CHUNK_NS, w[1].0 % CHUNK_NS);
            // Same chunk (no wrap) and the later one not past step 3.
            b > a && b <= LAST_STEP_NS
        })
        .map(|w| (w[1].1 - w[0].1) / ((w[1].0 - w[0].0) as f64 / 1e9))
        .collect()
}

#[test]
fn ramp_moves_at_its_trained_speed_at_20_and_50_hz() {
    let bundle = ramp_bundle();
    for rate in [None, Some(50.0)] {
        let cmds = run_ramp(&bundle, rate, 2.0);
        let speeds = ramp_speeds(&cmds);
        // 0.02 rad per 50 ms step = 0.4 rad/s (before the fix: 1.0 rad/s at 50 Hz).
        let expected_pairs = match rate {
            None => 3 * 10,    // commands at 0, 50, 100, 150 ms: 3 pairs per chunk, 10 chunks
            Some(_) => 7 * 10, // commands at 0, 20, .., 140 ms: 7 pairs per chunk
        };
        assert_eq!(
            speeds.len(),
            expected_pairs,
            "{rate:?}: speed samples {speeds:?}: {cmds:?}"
        );
        for v in &speeds {
            assert!(
                (v - 0.4).abs() < 1e-3,
                "{rate:?}: speed {v} rad/s: {cmds:?}"
            );
        }
        // And the position at every tick: 0.1 + 0.4 rad/s since the chunk started (every 200
        // ms, as trained), the last step held until the next chunk.
        for &(t, v) in &cmds {
            let since_chunk = (t % CHUNK_NS).min(LAST_STEP_NS) as f64 / 1e9;
            let want = 0.1 + 0.4 * since_chunk;
            assert!(
                (v - want).abs() < 1e-5,
                "{rate:?}: at {t} ns: {v} != {want}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kind 7: the first chunk and the chunk boundary, with a slow network on the manual clock.

/// Two joints, ACT-like: `horizon` = `steps_per_inference`, identity normalization, limits
/// that pass the test values through, watchdog 5 periods.
fn act_manifest(rate_hz: f64, horizon: usize, compensation: bool) -> Manifest {
    let text = format!(
        r#"
format_version = 1
name = "act-like"

[control]
rate_hz = {rate_hz}
steps_per_inference = {horizon}
latency_compensation = {compensation}
watchdog_periods = 5

[[models]]
role = "policy"
file = "policy.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
precision = "fp32"
backends = ["tract"]

[[cameras]]
name = "front"
onnx_input = "image.front"
max_age_ms = 250
capture = {{ width = 8, height = 6, format = "rgb24" }}
preprocess = {{ resize = {{ width = 4, height = 4 }}, color = "rgb", mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }}

[state]
onnx_input = "state"
names = ["a", "b"]
units = ["rad", "rad"]
normalization = {{ kind = "identity" }}

[action]
onnx_output = "action"
names = ["a", "b"]
units = ["rad", "rad"]
output = {{ kind = "chunk", horizon = {horizon} }}
normalization = {{ kind = "identity" }}
limits = {{ min = [-100.0, -100.0], max = [100.0, 100.0], max_rate = [1000.0, 1000.0] }}
"#
    );
    parse_manifest(&text, Path::new("act/policy.toml")).expect("ACT-like manifest")
}

/// An inference runner whose network takes `latency_ns` on the manual clock: a request
/// submitted at `t` is ready from `t + latency_ns`, and `wait` moves the clock there. Run `r`
/// outputs, for step `k` and joint `j`, `r + k / 1000` (so each command tells which run and
/// step it came from).
struct SlowRunner {
    clock: Rc<ManualClock>,
    latency_ns: u64,
    req: Request,
    runs: u64,
    ready_at: Option<u64>,
    done: bool,
}

impl SlowRunner {
    fn new(clock: Rc<ManualClock>, latency_ns: u64, horizon: usize) -> Self {
        SlowRunner {
            clock,
            latency_ns,
            req: Request::new(&[3 * 4 * 4], 2, horizon * 2),
            runs: 0,
            ready_at: None,
            done: false,
        }
    }
}

impl InferenceRunner for SlowRunner {
    fn slot(&mut self) -> Option<&mut Request> {
        (self.ready_at.is_none() && !self.done).then_some(&mut self.req)
    }
    fn submit(&mut self) -> Result<(), PolicyError> {
        let run = self.runs as f32;
        for (i, v) in self.req.output.iter_mut().enumerate() {
            *v = run + (i / 2) as f32 / 1000.0;
        }
        self.runs += 1;
        self.req.infer_ns = self.latency_ns;
        self.req.error = None;
        self.ready_at = Some(self.clock.now_ns() + self.latency_ns);
        Ok(())
    }
    fn poll(&mut self) -> Option<&Request> {
        if self.ready_at.is_some_and(|t| self.clock.now_ns() >= t) {
            self.ready_at = None;
            self.done = true;
        }
        self.done.then_some(&self.req)
    }
    fn release(&mut self) {
        self.done = false;
    }
    fn in_flight(&self) -> bool {
        self.ready_at.is_some()
    }
    fn wait(&mut self) -> Option<&Request> {
        if let Some(t) = self.ready_at {
            self.clock.sleep_until(t);
        }
        self.poll()
    }
}

type ActLoop = ControlLoop<ScriptedCamera, FixedState, RecordingSink, SlowRunner>;

/// Warms up and runs `ticks` ticks of an ACT-like loop; returns it and, per tick, (run, step)
/// decoded from joint 0's command.
fn run_act(
    rate_hz: f64,
    horizon: usize,
    compensation: bool,
    latency_ms: u64,
    ticks: u64,
) -> (ActLoop, Vec<(u64, u64)>) {
    let clock = Rc::new(ManualClock::new(1_000_000_000));
    let m = act_manifest(rate_hz, horizon, compensation);
    let (cam, _, _) = ScriptedCamera::new();
    let mut lp = ControlLoop::new(
        &m,
        vec![cam],
        FixedState(vec![0.0, 0.0]),
        RecordingSink::with_capacity(ticks as usize + 1),
        SlowRunner::new(clock.clone(), latency_ms * 1_000_000, horizon),
        &LoopOptions::default(),
    )
    .expect("loop");
    lp.seed(&[0.0, 0.0]);
    let warm = lp.warm_up(&*clock, 1_000_000_000).expect("warm-up");
    assert_eq!(warm, latency_ms * 1_000_000);
    lp.run(&*clock, &AtomicBool::new(false), Some(ticks))
        .expect("run");
    let decoded = lp.sink().sent[..ticks as usize]
        .iter()
        .map(|(_, c)| {
            let v = f64::from(c.values()[0]);
            let run = v.floor();
            (run as u64, ((v - run) * 1000.0).round() as u64)
        })
        .collect();
    (lp, decoded)
}

#[test]
fn act_like_bundle_runs_without_watchdog_trips_or_lost_steps() {
    // LeRobot's ACT defaults: n_action_steps = chunk_size = 100, at 50 Hz, 280 ms inference
    // (14 ticks). Before the fix the next inference started when the chunk ran out: 14 ticks
    // without a plan at every boundary, the watchdog (5 periods) stopping the robot each time.
    let ticks = 1000;
    let (lp, cmds) = run_act(50.0, 100, false, 280, ticks);
    let c = &lp.counters;
    assert_eq!(c.watchdog_trips, 0, "{c:?}");
    assert_eq!((c.fresh, c.holds, c.stops), (ticks, 0, 1), "{c:?}");
    assert_eq!(c.skipped_steps, 0, "{c:?}");
    // No step is lost: every chunk is sent from its step 0 on, one step per tick, until the next
    // chunk takes over; and each chunk runs long enough (more than 100 - 14 - 1 steps).
    assert_eq!(cmds[0], (0, 0), "the first chunk starts with its step 0");
    let mut switches = 0;
    for w in cmds.windows(2) {
        let ((r0, s0), (r1, s1)) = (w[0], w[1]);
        if r1 == r0 {
            assert_eq!(s1, s0 + 1, "{w:?}");
        } else {
            assert_eq!((r1, s1), (r0 + 1, 0), "{w:?}");
            assert!(s0 >= 84, "chunk {r0} replaced early, at step {s0}");
            switches += 1;
        }
    }
    assert!(switches >= 9, "{switches} chunk changes in {ticks} ticks");
    assert_eq!(c.overruns, 0, "{c:?}");
}

#[test]
fn act_like_bundle_with_latency_compensation_counts_what_it_skips() {
    // With compensation each chunk's first 14 steps are the time its inference took: skipped,
    // and counted, the warm-up chunk included; the plan never runs dry (100 >= 2 x 14).
    let ticks = 1000;
    let (lp, cmds) = run_act(50.0, 100, true, 280, ticks);
    let c = &lp.counters;
    assert_eq!(c.watchdog_trips, 0, "{c:?}");
    assert_eq!((c.fresh, c.holds), (ticks, 0), "{c:?}");
    assert_eq!(
        cmds[0],
        (0, 14),
        "warm-up chunk: 14 steps of warm-up time skipped"
    );
    // Every chunk taken (the warm-up's included) skipped exactly 14 steps.
    assert_eq!(c.skipped_steps, 14 * c.inferences, "{c:?}");
    for w in cmds.windows(2) {
        let ((r0, s0), (r1, s1)) = (w[0], w[1]);
        if r1 == r0 {
            assert_eq!(s1, s0 + 1, "{w:?}");
        } else {
            assert_eq!((r1, s1), (r0 + 1, 14), "{w:?}");
        }
    }
}

#[test]
fn first_chunk_without_compensation_sends_its_first_step() {
    // A short chunk at 10 Hz with a 250 ms warm-up inference (3 ticks), compensation off: the
    // first command is step 0 (before the fix: step 3, and skipped_steps 0).
    let (lp, cmds) = run_act(10.0, 8, false, 250, 4);
    assert_eq!(&cmds[..4], &[(0, 0), (0, 1), (0, 2), (0, 3)]);
    assert_eq!(lp.counters.skipped_steps, 0);
    // With compensation: the 3 ticks the warm-up took are skipped, and counted.
    let (lp, cmds) = run_act(10.0, 8, true, 250, 2);
    assert_eq!(cmds[0], (0, 3));
    assert_eq!(lp.counters.skipped_steps, 3);
}

#[test]
fn a_chunk_shorter_than_the_latency_holds_but_never_silently() {
    // Horizon 4 at 50 Hz (80 ms) with a 280 ms network cannot be kept fed; feed_check says by
    // how much and the loop's counters show the same: holds, then a watchdog stop per chunk.
    use reflex_runtime::control::plan::feed_check;
    let m = act_manifest(50.0, 4, false);
    let v = feed_check(&m.control, 4, 50.0, 0.280);
    assert!(!v.fed() && v.watchdog_trips, "{v:?}");
    assert_eq!(v.dry_ticks, 10);
    let (lp, _) = run_act(50.0, 4, false, 280, 140);
    let c = &lp.counters;
    // 140 ticks = 10 inference cycles of 14 ticks: 4 fresh + 10 without a plan each.
    assert_eq!(c.fresh, 40, "{c:?}");
    assert_eq!(c.watchdog_trips, 10, "{c:?}");
}
