//! The e-stop in the control loop, tick by tick on a manual clock: what reached the sink while it
//! was pressed, released and re-armed.

use reflex_runtime::can::sink::RecordingSink;
use reflex_runtime::clock::{Clock, ManualClock};
use reflex_runtime::control::estop::{EStop, EStopState, ManualInput, ManualInputHandle};
use reflex_runtime::control::{CommandKind, ControlLoop, HoldReason, LoopOptions, TickReport};
use reflex_runtime::infer::runner::ThreadedRunner;
use reflex_testkit::fakes::{FixedState, FnBackend, ScriptedCamera, SharedState};
use reflex_testkit::rig::{inline, request, scripted_loop, sent, Inline, MANIFEST, PERIOD};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// An e-stop on two manual inputs (stop, arm), and their handles.
fn estop(pressed: bool, with_arm: bool) -> (EStop, ManualInputHandle, ManualInputHandle) {
    let (stop, s) = ManualInput::new("test:estop", pressed);
    let (arm, a) = ManualInput::new("test:arm", false);
    let arm = with_arm.then(|| Box::new(arm) as Box<dyn reflex_board::input::SafetyInput>);
    (EStop::new(Box::new(stop), arm), s, a)
}

type TestLoop<F> = ControlLoop<ScriptedCamera, SharedState, RecordingSink, Inline<F>>;

struct Rig<F: FnMut(u64, &mut [f32]) + Send> {
    lp: TestLoop<F>,
    stop: ManualInputHandle,
    arm: ManualInputHandle,
    live: Rc<std::cell::Cell<bool>>,
    state: Rc<RefCell<Vec<f32>>>,
}

impl<F: FnMut(u64, &mut [f32]) + Send> Rig<F> {
    fn tick(&mut self, k: u64) -> TickReport {
        self.lp.tick(k * PERIOD).expect("tick")
    }

    /// A press and release of the arm button, over two ticks starting at `k`.
    fn arm_pulse(&mut self, k: u64) -> (TickReport, TickReport) {
        self.arm.set(true);
        let a = self.tick(k);
        self.arm.set(false);
        (a, self.tick(k + 1))
    }
}

/// A loop over the scripted camera and settable state [0, 0], seeded at [0, 0], with an e-stop.
fn rig<F: FnMut(u64, &mut [f32]) + Send>(f: F, pressed_at_start: bool) -> Rig<F> {
    let (state_src, state) = SharedState::new(&[0.0, 0.0]);
    let (e, stop, arm) = estop(pressed_at_start, true);
    let (lp, live, _) = scripted_loop(state_src, RecordingSink::with_capacity(1000), inline(f));
    let mut lp = lp.with_estop(e);
    lp.seed(&[0.0, 0.0]);
    Rig {
        lp,
        stop,
        arm,
        live,
        state,
    }
}

fn assert_estop_stop(r: &TickReport) {
    assert_eq!(
        (r.kind, r.reason),
        (CommandKind::Stop, HoldReason::EStop),
        "{r:?}"
    );
    assert!(!r.inference_submitted && !r.chunk_received, "{r:?}");
}

#[test]
fn pressing_stops_the_next_tick_and_every_tick_until_rearmed() {
    // The policy keeps proposing the same small move throughout.
    let mut rig = rig(|_, out: &mut [f32]| out.fill(0.05), false);
    for k in 0..5 {
        assert_eq!(rig.tick(k).kind, CommandKind::Fresh);
    }
    let inferences = rig.lp.counters.inferences;
    rig.stop.set(true);
    for k in 5..15 {
        assert_estop_stop(&rig.tick(k));
    }
    assert_eq!(
        rig.lp.counters.inferences, inferences,
        "no inference while stopped"
    );
    // Released alone: still stopped.
    rig.stop.set(false);
    for k in 15..20 {
        assert_estop_stop(&rig.tick(k));
    }
    assert_eq!(
        rig.lp.estop().map(|e| e.state()),
        Some(EStopState::Released)
    );
    let cmds = sent(&rig.lp);
    assert!(cmds[..5].iter().all(|c| !c.is_stop()));
    assert!(cmds[5..20].iter().all(|c| c.is_stop()), "{cmds:?}");
    assert_eq!(rig.lp.counters.estop_ticks, 15);
    // Release then arm: a new inference is submitted at the re-arm tick, fresh commands resume.
    let (r, next) = rig.arm_pulse(20);
    assert!(r.inference_submitted && r.chunk_received, "{r:?}");
    assert_eq!(r.kind, CommandKind::Fresh);
    assert_eq!(next.kind, CommandKind::Fresh);
    let e = rig.lp.estop().expect("e-stop");
    assert_eq!((e.counters().trips, e.counters().rearms), (1, 1));
    assert_eq!(rig.lp.counters.estop_ticks, 15);
}

#[test]
fn arming_while_pressed_or_holding_arm_through_the_release_does_nothing() {
    let mut rig = rig(|_, out: &mut [f32]| out.fill(0.05), false);
    for k in 0..3 {
        rig.tick(k);
    }
    rig.stop.set(true);
    assert_estop_stop(&rig.tick(3));
    // An arm press and release while the e-stop is pressed.
    let (a, b) = rig.arm_pulse(4);
    assert_estop_stop(&a);
    assert_estop_stop(&b);
    // Arm pressed while the e-stop is pressed, held through the release: not a new press.
    rig.arm.set(true);
    assert_estop_stop(&rig.tick(6));
    rig.stop.set(false);
    for k in 7..10 {
        assert_estop_stop(&rig.tick(k));
    }
    rig.arm.set(false);
    assert_estop_stop(&rig.tick(10));
    rig.arm.set(true);
    assert_eq!(rig.tick(11).kind, CommandKind::Fresh);
    assert_eq!(rig.lp.estop().map(|e| e.counters().rearms), Some(1));
}

#[test]
fn resuming_takes_a_new_inference_and_starts_from_the_measured_state() {
    // The policy proposes +1.0 rad (normalized 0.5, std 2) until `nan` is set.
    let nan = Arc::new(AtomicBool::new(false));
    let n = nan.clone();
    let mut rig = rig(
        move |_, out: &mut [f32]| {
            out.fill(if n.load(Ordering::Relaxed) {
                f32::NAN
            } else {
                0.5
            })
        },
        false,
    );
    for k in 0..5 {
        assert_eq!(rig.tick(k).kind, CommandKind::Fresh);
    }
    let cmds = sent(&rig.lp);
    assert!(
        (cmds[4].values()[0] - 1.0).abs() < 1e-6,
        "ramped to the limit at 0.2 rad per tick: {cmds:?}"
    );
    // Tick 5: pressed. The chunk submitted at tick 4 still plans ticks 5..7.
    rig.stop.set(true);
    let r = rig.tick(5);
    assert_estop_stop(&r);
    assert_eq!(
        sent(&rig.lp)[5].values(),
        &[1.0, 1.0],
        "stop at the last position"
    );
    // While stopped the robot is moved (or sags) to -0.5.
    *rig.state.borrow_mut() = vec![-0.5, -0.5];
    rig.stop.set(false);
    assert_estop_stop(&rig.tick(6));
    // Re-armed at tick 7, but the new inference fails: the old plan (which covered tick 7) is
    // gone, so the robot holds, at the measured position, not at the pre-trip command.
    nan.store(true, Ordering::Relaxed);
    rig.arm.set(true);
    let r = rig.tick(7);
    assert!(
        r.inference_submitted,
        "inference due at the re-arm tick: {r:?}"
    );
    assert_eq!(
        (r.kind, r.reason),
        (CommandKind::Hold, HoldReason::PlanExhausted)
    );
    assert_eq!(sent(&rig.lp)[7].values(), &[-0.5, -0.5]);
    let r = rig.tick(8);
    assert_eq!(r.kind, CommandKind::Hold);
    // A good inference: the first resumed command is rate limited from the measured state.
    nan.store(false, Ordering::Relaxed);
    let r = rig.tick(9);
    assert_eq!(r.kind, CommandKind::Fresh, "{r:?}");
    let first = sent(&rig.lp)[9].clone();
    for v in first.values() {
        assert!((v - (-0.3)).abs() < 1e-6, "{first:?}");
    }
}

#[test]
fn the_watchdog_still_applies_after_a_rearm() {
    let mut rig = rig(|_, out: &mut [f32]| out.fill(0.05), false);
    for k in 0..3 {
        rig.tick(k);
    }
    // The last frame is captured at tick 2 (too old from tick 5 on).
    rig.live.set(false);
    rig.stop.set(true);
    rig.tick(3);
    rig.stop.set(false);
    rig.tick(4);
    rig.tick(5);
    // Re-armed at tick 6 with stale frames: no inference, hold from the re-arm tick (3 periods),
    // then the watchdog stops.
    rig.arm.set(true);
    let reps: Vec<TickReport> = (6..12).map(|k| rig.tick(k)).collect();
    assert!(
        reps.iter().all(|r| r.kind != CommandKind::Fresh),
        "{reps:?}"
    );
    assert!(
        reps.iter().all(|r| r.reason != HoldReason::EStop),
        "{reps:?}"
    );
    assert_eq!(
        (reps[2].kind, reps[2].reason),
        (CommandKind::Hold, HoldReason::StaleFrame),
        "{reps:?}"
    );
    assert_eq!(
        (reps[3].kind, reps[3].reason),
        (CommandKind::Stop, HoldReason::Watchdog),
        "{reps:?}"
    );
    rig.live.set(true);
    assert_eq!(rig.tick(12).kind, CommandKind::Fresh);
}

#[test]
fn an_input_error_counts_as_pressed() {
    let mut rig = rig(|_, out: &mut [f32]| out.fill(0.05), false);
    for k in 0..3 {
        assert_eq!(rig.tick(k).kind, CommandKind::Fresh);
    }
    rig.stop.fail();
    for k in 3..6 {
        assert_estop_stop(&rig.tick(k));
    }
    // Reads again, released: still needs the arm.
    rig.stop.set(false);
    assert_estop_stop(&rig.tick(6));
    let (r, _) = rig.arm_pulse(7);
    assert_eq!(r.kind, CommandKind::Fresh);
    let c = rig.lp.estop().expect("e-stop").counters().clone();
    assert_eq!((c.trips, c.rearms, c.input_errors), (1, 1, 3));
}

#[test]
fn pressed_at_start_sends_nothing_fresh_until_released_and_armed() {
    let (e, stop, arm) = estop(true, true);
    let (lp, _, _) = scripted_loop(
        FixedState(vec![0.0, 0.0]),
        RecordingSink::with_capacity(100),
        inline(|_, out: &mut [f32]| out.fill(0.05)),
    );
    let mut lp = lp.with_estop(e);
    let clock = ManualClock::new(0);
    // The warm-up inference plans the first ticks; the e-stop must still win.
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let t0 = clock.now_ns();
    for k in 0..5 {
        assert_estop_stop(&lp.tick(t0 + k * PERIOD).expect("tick"));
    }
    stop.set(false);
    for k in 5..8 {
        assert_estop_stop(&lp.tick(t0 + k * PERIOD).expect("tick"));
    }
    assert!(sent(&lp).iter().all(|c| c.is_stop()));
    arm.set(true);
    let r = lp.tick(t0 + 8 * PERIOD).expect("tick");
    assert_eq!(r.kind, CommandKind::Fresh, "{r:?}");
    let e = lp.estop().expect("e-stop");
    assert_eq!((e.counters().trips, e.counters().rearms), (1, 1));
}

#[test]
fn without_an_arm_input_a_trip_lasts_until_restart() {
    let (e, stop, _) = estop(false, false);
    let (lp, _, _) = scripted_loop(
        FixedState(vec![0.0, 0.0]),
        RecordingSink::with_capacity(100),
        inline(|_, out: &mut [f32]| out.fill(0.05)),
    );
    let mut lp = lp.with_estop(e);
    lp.seed(&[0.0, 0.0]);
    assert_eq!(lp.tick(0).expect("tick").kind, CommandKind::Fresh);
    stop.set(true);
    assert_estop_stop(&lp.tick(PERIOD).expect("tick"));
    stop.set(false);
    for k in 2..50 {
        assert_estop_stop(&lp.tick(k * PERIOD).expect("tick"));
    }
}

#[test]
fn inference_results_from_before_the_rearm_are_discarded() {
    // Run r proposes 0.02 (r + 1) rad; each run waits for a gate message. Without latency
    // compensation a chunk applies from the tick it arrives, so a stale chunk would show.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut backend = FnBackend::new(|run, out: &mut [f32]| out.fill(0.01 * (run + 1) as f32));
    backend.gate = Some(rx);
    let runner = ThreadedRunner::spawn(backend, request()).expect("worker");
    let m = reflex_models::bundle::parse_manifest(
        &MANIFEST.replace(
            "latency_compensation = true",
            "latency_compensation = false",
        ),
        std::path::Path::new("t/policy.toml"),
    )
    .expect("manifest");
    let (cam, _, _) = ScriptedCamera::new();
    let (e, stop, arm) = estop(false, true);
    let mut lp = ControlLoop::new(
        &m,
        vec![cam],
        FixedState(vec![0.0, 0.0]),
        RecordingSink::with_capacity(100),
        runner,
        &LoopOptions::default(),
    )
    .expect("loop")
    .with_estop(e);
    // Declared after the loop, so dropped first when an assertion fails: the worker's gate then
    // closes and the runner's drop does not wait on it forever.
    let tx = tx;
    let clock = ManualClock::new(0);
    tx.send(()).expect("gate"); // the warm-up inference (run 0)
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let t0 = clock.now_ns();
    let mut tick = |k: u64| lp.tick(t0 + k * PERIOD).expect("tick");
    let settle = || std::thread::sleep(std::time::Duration::from_millis(30));
    // Ticks 0, 1 run the warm-up chunk; tick 2 submits run 1 (blocked on the gate).
    for k in 0..3 {
        assert_eq!(tick(k).kind, CommandKind::Fresh);
    }
    // Pressed at tick 3; run 1 finishes during the stop and is discarded.
    stop.set(true);
    assert_estop_stop(&tick(3));
    tx.send(()).expect("gate");
    settle();
    assert_estop_stop(&tick(4));
    // Released and armed at tick 6: run 2 is submitted (and blocks).
    stop.set(false);
    assert_estop_stop(&tick(5));
    arm.set(true);
    let r = tick(6);
    assert!(r.inference_submitted && !r.chunk_received, "{r:?}");
    assert_eq!(r.kind, CommandKind::Hold);
    // Pressed again at 7, released at 8, armed at 10 while run 2 (submitted at tick 6) is still
    // in flight: counted as an overrun, nothing submitted.
    arm.set(false);
    stop.set(true);
    assert_estop_stop(&tick(7));
    stop.set(false);
    assert_estop_stop(&tick(8));
    assert_estop_stop(&tick(9));
    arm.set(true);
    let r = tick(10);
    assert!(!r.inference_submitted, "{r:?}");
    assert_eq!(r.kind, CommandKind::Hold);
    // Run 2 finishes after the re-arm: discarded. Run 3, submitted after the re-arm, is used.
    tx.send(()).expect("gate");
    settle();
    let r = tick(11);
    assert!(!r.chunk_received && r.kind != CommandKind::Fresh, "{r:?}");
    assert!(r.inference_submitted, "{r:?}");
    tx.send(()).expect("gate");
    settle();
    let r = tick(12);
    assert_eq!(r.kind, CommandKind::Fresh, "{r:?}");
    let cmd = &lp.sink().sent[12].1;
    assert!(
        (cmd.values()[0] - 0.08).abs() < 1e-6,
        "run 3's action: {cmd:?}"
    );
    assert_eq!(
        lp.counters.inferences, 2,
        "warm-up and run 3; runs 1 and 2 discarded: {:?}",
        lp.counters
    );
}
