//! Safety rules and faults of the control loop, tick by tick on a manual clock. Each test checks
//! what did and did not reach the sink.

use reflex_runtime::can::sink::RecordingSink;
use reflex_runtime::clock::{Clock, ManualClock};
use reflex_runtime::control::safety::SafeCommand;
use reflex_runtime::control::{CommandKind, ControlLoop, HoldReason, LoopOptions};
use reflex_runtime::infer::runner::{InlineRunner, ThreadedRunner};
use reflex_runtime::io::CommandSink;
use reflex_testkit::fakes::{FixedState, FnBackend, ScriptedCamera, Switch};
use reflex_testkit::rig::{
    inline, manifest, request, scripted_loop, sent, Inline, MANIFEST, PERIOD,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

type TestLoop<F> = ControlLoop<ScriptedCamera, FixedState, RecordingSink, Inline<F>>;

/// A loop over the scripted camera, and its `live` and `gone` switches.
fn inline_loop<F: FnMut(u64, &mut [f32]) + Send>(f: F) -> (TestLoop<F>, Switch, Switch) {
    scripted_loop(
        FixedState(vec![0.0, 0.0]),
        RecordingSink::with_capacity(1000),
        inline(f),
    )
}

#[test]
fn nan_output_is_never_sent() {
    // First inference: small finite actions; every later one: NaN.
    let (mut lp, _, _) = inline_loop(|run, out: &mut [f32]| {
        for v in out.iter_mut() {
            *v = if run == 0 { 0.05 } else { f32::NAN };
        }
    });
    let mut kinds = vec![];
    for k in 0..10 {
        kinds.push(lp.tick(k * PERIOD).expect("tick").kind);
    }
    let cmds = sent(&lp);
    assert_eq!(cmds.len(), 10);
    for c in &cmds {
        assert!(c.values().iter().all(|v| v.is_finite()), "{c:?}");
    }
    // The finite chunk (4 steps) runs, then nothing fresh: hold, then the watchdog stops.
    assert_eq!(&kinds[..4], &[CommandKind::Fresh; 4]);
    assert_eq!(cmds[0].values(), &[0.1, 0.1]);
    assert!(lp.counters.rejected_nonfinite >= 2, "{:?}", lp.counters);
    assert_eq!(kinds[4], CommandKind::Hold);
    assert_eq!(
        cmds[4].values(),
        cmds[3].values(),
        "hold repeats the last safe command"
    );
    assert_eq!(
        kinds[6],
        CommandKind::Stop,
        "watchdog after 3 periods without a fresh command"
    );
    assert!(cmds[6].is_stop());
    assert_eq!(lp.counters.watchdog_trips, 1);
}

/// The watchdog is a time (3 periods of the bundle's 10 Hz = 300 ms), not a tick count: a loop
/// run at 20 Hz (`--rate 20`) stops after 6 ticks without a fresh command, not 3.
#[test]
fn watchdog_keeps_its_time_at_another_loop_rate() {
    let (cam, _live, _gone) = ScriptedCamera::new();
    let opts = LoopOptions {
        rate_hz: Some(20.0),
        ..LoopOptions::default()
    };
    let mut lp = ControlLoop::new(
        &manifest(),
        vec![cam],
        FixedState(vec![0.0, 0.0]),
        RecordingSink::with_capacity(1000),
        inline(|run, out: &mut [f32]| out.fill(if run == 0 { 0.05 } else { f32::NAN })),
        &opts,
    )
    .expect("loop builds");
    let half = PERIOD / 2;
    let kinds: Vec<CommandKind> = (0..30)
        .map(|k| lp.tick(k * half).expect("tick").kind)
        .collect();
    let last_fresh = kinds
        .iter()
        .rposition(|k| *k == CommandKind::Fresh)
        .expect("the finite chunk runs");
    let first_stop = kinds
        .iter()
        .position(|k| *k == CommandKind::Stop)
        .expect("the watchdog stops");
    assert_eq!(first_stop - last_fresh, 6, "{kinds:?}");
    assert_eq!(lp.counters.watchdog_trips, 1);
}

#[test]
fn commands_stay_within_limits_and_rate() {
    // Wild outputs: +-100 (normalized) jumping every run.
    let (mut lp, _, _) = inline_loop(|run, out: &mut [f32]| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = if (run + i as u64).is_multiple_of(2) {
                100.0
            } else {
                -100.0
            };
        }
    });
    lp.seed(&[0.0, 0.0]);
    for k in 0..40 {
        lp.tick(k * PERIOD).expect("tick");
    }
    let cmds = sent(&lp);
    let mut prev = [0.0f32, 0.0];
    for c in &cmds {
        for (d, v) in c.values().iter().enumerate() {
            assert!((-1.0..=1.0).contains(v), "{c:?}");
            assert!(
                (v - prev[d]).abs() <= 0.2 + 1e-6,
                "rate limit broken: {prev:?} -> {c:?}"
            );
            prev[d] = *v;
        }
    }
    assert!(lp.filter().counters().clamped_position > 0);
    assert!(lp.filter().counters().rate_limited > 0);
}

#[test]
fn stale_frame_holds_then_watchdog_stops() {
    let (mut lp, live, _) = inline_loop(|_, out: &mut [f32]| out.fill(0.05));
    let mut reps = vec![];
    for k in 0..12 {
        if k == 5 {
            live.set(false); // last frame captured at tick 4
        }
        reps.push(lp.tick(k * PERIOD).expect("tick"));
    }
    let cmds = sent(&lp);
    // max_age 250 ms: the tick-4 frame is still usable at ticks 5 and 6, stale from tick 7.
    assert_eq!(reps[6].reason, HoldReason::None);
    assert_eq!(reps[7].kind, CommandKind::Hold);
    assert_eq!(reps[7].reason, HoldReason::StaleFrame);
    assert_eq!(cmds[7].values(), cmds[6].values());
    assert!(
        reps[7..].iter().all(|r| !r.inference_submitted),
        "no inference on stale frames"
    );
    assert_eq!(reps[9].kind, CommandKind::Stop);
    assert!(cmds[9..].iter().all(|c| c.is_stop()));
    assert!(lp.counters.stale_frame_ticks >= 5);
    // Frames return: fresh commands resume.
    live.set(true);
    let r = lp.tick(12 * PERIOD).expect("tick");
    assert_eq!(r.kind, CommandKind::Fresh);
}

#[test]
fn camera_loss_stops_within_the_same_tick_and_recovers() {
    let (mut lp, _, gone) = inline_loop(|_, out: &mut [f32]| out.fill(0.05));
    for k in 0..5 {
        assert_eq!(lp.tick(k * PERIOD).expect("tick").kind, CommandKind::Fresh);
    }
    gone.set(true);
    for k in 5..8 {
        let r = lp.tick(k * PERIOD).expect("tick");
        assert_eq!(r.kind, CommandKind::Stop);
        assert_eq!(r.reason, HoldReason::CameraLost);
    }
    assert!(sent(&lp)[5..].iter().all(|c| c.is_stop()));
    gone.set(false);
    assert_eq!(lp.tick(8 * PERIOD).expect("tick").kind, CommandKind::Fresh);
}

#[test]
fn overrun_keeps_executing_the_current_chunk() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut backend = FnBackend::new(|run, out: &mut [f32]| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = 0.001 * (run * 10 + (i / 2) as u64) as f32;
        }
    });
    backend.gate = Some(rx);
    let runner = ThreadedRunner::spawn(backend, request()).expect("worker");
    let (mut lp, _, _) = scripted_loop(
        FixedState(vec![0.0, 0.0]),
        RecordingSink::with_capacity(100),
        runner,
    );
    let clock = ManualClock::new(0);
    tx.send(()).expect("gate"); // lets the warm-up inference through
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let t0 = clock.now_ns();
    let mut reps = vec![];
    for k in 0..7 {
        reps.push(lp.tick(t0 + k * PERIOD).expect("tick"));
    }
    // Tick 2 submits (worker now blocked); ticks 2 and 3 still execute the warm-up chunk.
    assert!(reps[2].inference_submitted);
    assert_eq!(
        &reps[..4].iter().map(|r| r.kind).collect::<Vec<_>>(),
        &[CommandKind::Fresh; 4]
    );
    // Tick 4: the next inference is due but one is in flight: counted once, not queued.
    assert_eq!(lp.counters.overruns, 1);
    assert!(!reps[4].inference_submitted);
    assert_eq!(reps[4].kind, CommandKind::Hold);
    assert_eq!(reps[6].kind, CommandKind::Stop, "watchdog");
    // Release the worker; the late chunk arrives and fresh commands resume.
    tx.send(()).expect("gate");
    tx.send(()).expect("gate");
    let mut resumed = false;
    for k in 7..40 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        if lp.tick(t0 + k * PERIOD).expect("tick").kind == CommandKind::Fresh {
            resumed = true;
            break;
        }
        let _ = tx.send(());
    }
    assert!(
        resumed,
        "fresh commands after the worker caught up: {:?}",
        lp.counters
    );
    assert!(
        lp.counters.skipped_steps > 0,
        "the late chunk's past steps were skipped"
    );
}

#[test]
fn latency_compensation_skips_the_past_steps() {
    // Output encodes (run, step): value = 0.002 * (10 run + step) after unnormalization (std 2).
    let (cam, _, _) = ScriptedCamera::new();
    struct Old(ScriptedCamera);
    impl reflex_runtime::io::Camera for Old {
        fn name(&self) -> &str {
            "old"
        }
        fn latest(
            &mut self,
            now: u64,
            d: u64,
        ) -> Result<Option<reflex_runtime::io::Frame<'_>>, reflex_runtime::io::CameraError>
        {
            // Frames arrive 200 ms old (camera pipeline latency).
            Ok(self.0.latest(now, d)?.map(|mut f| {
                f.meta.capture_ns = now.saturating_sub(2 * PERIOD);
                f
            }))
        }
    }
    let backend = FnBackend::new(|run, out: &mut [f32]| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = 0.001 * (run * 10 + (i / 2) as u64) as f32;
        }
    });
    let mut lp = ControlLoop::new(
        &manifest(),
        vec![Old(cam)],
        FixedState(vec![0.0, 0.0]),
        RecordingSink::with_capacity(100),
        InlineRunner::new(backend, request()),
        &LoopOptions::default(),
    )
    .expect("loop");
    lp.seed(&[0.0, 0.0]);
    for k in 0..5 {
        lp.tick(1_000_000_000 + k * PERIOD).expect("tick");
    }
    let cmds = sent(&lp);
    // Tick 2: run 1 observed at tick 0 -> its steps 0 and 1 are the past; step 2 executes.
    assert!(
        (cmds[2].values()[0] - 0.002 * 12.0).abs() < 1e-6,
        "{:?}",
        cmds[2]
    );
    assert!(
        (cmds[3].values()[0] - 0.002 * 13.0).abs() < 1e-6,
        "{:?}",
        cmds[3]
    );
    assert!(lp.counters.skipped_steps >= 2);
}

/// Sets the "Ctrl-C" flag after a number of commands, like the signal handler would.
struct InterruptAfter {
    inner: RecordingSink,
    after: usize,
    flag: Arc<AtomicBool>,
}

impl CommandSink for InterruptAfter {
    fn name(&self) -> &str {
        "interrupt-after"
    }
    fn send(&mut self, cmd: &SafeCommand, now: u64) -> Result<(), reflex_runtime::io::SinkError> {
        self.inner.send(cmd, now)?;
        if self.inner.sent.len() == self.after {
            self.flag.store(true, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[test]
fn ctrl_c_sends_the_stop_command() {
    let flag = Arc::new(AtomicBool::new(false));
    let (mut lp, _, _) = scripted_loop(
        FixedState(vec![0.0, 0.0]),
        InterruptAfter {
            inner: RecordingSink::with_capacity(100),
            after: 6,
            flag: flag.clone(),
        },
        inline(|_, out: &mut [f32]| out.fill(0.05)),
    );
    let clock = ManualClock::new(0);
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    lp.run(&clock, &flag, Some(1000)).expect("run");
    let cmds = &lp.sink().inner.sent;
    assert_eq!(cmds.len(), 7, "6 ticks then exactly one stop");
    assert!(cmds[..6].iter().all(|(_, c)| !c.is_stop()));
    let (t_stop, stop) = &cmds[6];
    assert!(stop.is_stop());
    assert!(
        *t_stop - cmds[5].0 <= PERIOD,
        "stop within one period of the interrupt"
    );
}

#[test]
fn bundle_without_limits_needs_the_explicit_flag() {
    let text = MANIFEST.replace(
        "limits = { min = [-1.0, -1.0], max = [1.0, 1.0], max_rate = [2.0, 2.0] }",
        "",
    );
    let m = reflex_models::bundle::parse_manifest(&text, std::path::Path::new("t/policy.toml"))
        .expect("parses");
    let mk = |allow| {
        let (cam, _, _) = ScriptedCamera::new();
        ControlLoop::new(
            &m,
            vec![cam],
            FixedState(vec![0.0, 0.0]),
            RecordingSink::with_capacity(1),
            inline(|_, o: &mut [f32]| o.fill(0.0)),
            &LoopOptions {
                rate_hz: None,
                allow_unlimited: allow,
            },
        )
    };
    let err = mk(false).err().expect("refused").to_string();
    assert!(err.contains("limits"), "{err}");
    assert!(mk(true).is_ok());
}

/// Wraps the scripted camera and lies about the frame: wrong size, or truncated bytes.
struct Mangled {
    inner: ScriptedCamera,
    wrong_size: bool,
}

impl reflex_runtime::io::Camera for Mangled {
    fn name(&self) -> &str {
        "mangled"
    }
    fn latest(
        &mut self,
        now: u64,
        d: u64,
    ) -> Result<Option<reflex_runtime::io::Frame<'_>>, reflex_runtime::io::CameraError> {
        let wrong_size = self.wrong_size;
        Ok(self.inner.latest(now, d)?.map(|mut f| {
            if wrong_size {
                f.meta.width = 16;
            } else {
                f.data = &f.data[..10];
            }
            f
        }))
    }
}

#[test]
fn a_frame_of_the_wrong_size_is_refused_and_a_short_frame_is_dropped() {
    let mk = |wrong_size| {
        let (cam, _, _) = ScriptedCamera::new();
        ControlLoop::new(
            &manifest(),
            vec![Mangled {
                inner: cam,
                wrong_size,
            }],
            FixedState(vec![0.0, 0.0]),
            RecordingSink::with_capacity(10),
            inline(|_, o: &mut [f32]| o.fill(0.0)),
            &LoopOptions::default(),
        )
        .expect("loop")
    };
    // Wrong size: never silently resized; the run stops with a message naming both sizes.
    let mut lp = mk(true);
    let e = lp.tick(0).expect_err("refused").to_string();
    assert!(e.contains("16") && e.contains('8'), "{e}");
    // A short frame is lost (counted); no observation, so nothing fresh is sent.
    let mut lp = mk(false);
    let r = lp.tick(0).expect("tick");
    assert_ne!(r.kind, CommandKind::Fresh);
    assert_eq!(lp.counters.camera_errors, 1);
    assert!(lp.sink().sent.iter().all(|(_, c)| c.is_stop()));
}

/// Per run of a [`HistoryProbe`]: the state's first value at each step, and whether every past
/// image matched the current one.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Vec<f32>, bool)>>>;

/// A policy conditioned on 3 observations that records, per run, the state it was given at each
/// step (oldest first) and whether every past image matched the current one.
struct HistoryProbe {
    images: Vec<Vec<f32>>,
    state: Vec<Vec<f32>>,
    out: Vec<f32>,
    seen: Seen,
}

impl reflex_runtime::infer::policy::Policy for HistoryProbe {
    fn name(&self) -> &'static str {
        "history-probe"
    }
    fn camera_input(&mut self, _cam: usize) -> &mut [f32] {
        &mut self.images[2]
    }
    fn state_input(&mut self) -> Option<&mut [f32]> {
        Some(&mut self.state[2])
    }
    fn n_obs_steps(&self) -> usize {
        3
    }
    fn past_camera_input(&mut self, step: usize, _cam: usize) -> Option<&mut [f32]> {
        self.images
            .get_mut(step)
            .filter(|_| step < 2)
            .map(Vec::as_mut_slice)
    }
    fn past_state_input(&mut self, step: usize) -> Option<&mut [f32]> {
        self.state
            .get_mut(step)
            .filter(|_| step < 2)
            .map(Vec::as_mut_slice)
    }
    fn run(&mut self) -> Result<(), reflex_runtime::infer::policy::PolicyError> {
        let firsts = self.state.iter().map(|s| s[0]).collect();
        let same_images = self.images.iter().all(|i| i == &self.images[2])
            && self.images[2].iter().any(|v| *v != 0.0);
        self.seen.lock().expect("lock").push((firsts, same_images));
        self.out.fill(0.05);
        Ok(())
    }
    fn output(&self) -> &[f32] {
        &self.out
    }
}

/// The observation history is per control tick, not per inference (LeRobot's queues fill at each
/// `select_action` call): a request submitted at tick t carries the observations of ticks t-2,
/// t-1 and t; at the start the missing older steps repeat the first observation.
#[test]
fn requests_carry_the_observations_of_the_last_ticks() {
    use reflex_models::manifest::{
        BetaSchedule, DiffusionSpec, PredictionType, SchedulerKind, SchedulerSpec, Variance,
    };
    use reflex_runtime::infer::runner::Request;
    use reflex_testkit::fakes::SharedState;
    let mut m = manifest();
    m.diffusion = Some(DiffusionSpec {
        n_obs_steps: 3,
        horizon: 6,
        seed: 0,
        scheduler: SchedulerSpec {
            kind: SchedulerKind::Ddim,
            num_train_timesteps: 100,
            num_inference_steps: 10,
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            beta_start: 1e-4,
            beta_end: 0.02,
            prediction_type: PredictionType::Epsilon,
            clip_sample: true,
            clip_sample_range: 1.0,
            variance: Variance::FixedSmall,
        },
        features_output: "features".into(),
        sample_input: "sample".into(),
        timestep_input: "timestep".into(),
        global_cond_input: "global_cond".into(),
    });
    assert_eq!(m.n_obs_steps(), 3);
    let seen: Seen = Default::default();
    let probe = HistoryProbe {
        images: vec![vec![0.0; 3 * 4 * 4]; 3],
        state: vec![vec![0.0; 2]; 3],
        out: vec![0.0; 8],
        seen: seen.clone(),
    };
    let req = Request::for_manifest(&m);
    assert_eq!(req.obs_steps, 3);
    assert_eq!(req.images[0].len(), 3 * 3 * 4 * 4);
    let (state, values) = SharedState::new(&[0.0, 0.0]);
    let (cam, _live, _gone) = ScriptedCamera::new();
    let mut lp = ControlLoop::new(
        &m,
        vec![cam],
        state,
        RecordingSink::with_capacity(100),
        InlineRunner::new(probe, req),
        &LoopOptions::default(),
    )
    .expect("loop builds");
    // The state's first value is the tick's index (normalization: mean 0, std 1).
    let mut submitted_at = vec![];
    for k in 0..9u64 {
        values.borrow_mut()[0] = k as f32;
        if lp.tick(k * PERIOD).expect("tick").inference_submitted {
            submitted_at.push(k);
        }
    }
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), submitted_at.len());
    assert!(submitted_at.len() >= 3, "{submitted_at:?}");
    for (&t, (steps, same_images)) in submitted_at.iter().zip(&seen) {
        let want: Vec<f32> = (0..3).map(|j| (t as i64 - 2 + j).max(0) as f32).collect();
        assert_eq!(steps, &want, "request at tick {t}");
        assert!(
            same_images,
            "the scripted camera's image at every step, tick {t}"
        );
    }
    assert_eq!(lp.history().expect("a history").len(), 3);
}
