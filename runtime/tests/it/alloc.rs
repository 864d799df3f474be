//! The tick allocates nothing after warm-up: a counting global allocator proves it.
//!
//! Counting is per thread (a thread-local counter), so the test harness's own threads do not
//! disturb the figure; the inline runner keeps inference on the measuring thread.

use reflex_runtime::can::sink::NullSink;
use reflex_testkit::counting::assert_installed;
use reflex_testkit::fakes::FixedState;
use reflex_testkit::rig::{inline, manifest, scripted_loop, PERIOD};

use reflex_testkit::counting::allocs;

#[test]
fn loop_tick_allocates_nothing_after_warm_up() {
    // Outputs alternate so the plan, the ensembling buffer and the rate limiter all work.
    let runner = inline(|run, out: &mut [f32]| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = ((run as usize + i) % 5) as f32 * 0.1 - 0.2;
        }
    });
    let (mut lp, _, _) = scripted_loop(FixedState(vec![0.1, -0.1]), NullSink::default(), runner);
    lp.seed(&[0.0, 0.0]);
    for k in 0..10 {
        lp.tick(k * PERIOD).expect("tick");
    }
    // The counter sees allocations on this thread (the test could fail).
    assert_installed();
    let before = allocs();
    for k in 10..1010 {
        lp.tick(k * PERIOD).expect("tick");
    }
    let n = allocs() - before;
    assert_eq!(n, 0, "{n} heap allocations in 1000 ticks");
    assert!(lp.counters.inferences >= 400, "{:?}", lp.counters);
    assert!(lp.counters.fresh >= 990, "{:?}", lp.counters);
}

/// The systemd notification on the tick path (WATCHDOG=1 every tick, STATUS= with the counters
/// once a second) allocates nothing either.
#[test]
fn loop_tick_feeding_the_systemd_watchdog_allocates_nothing() {
    use reflex_runtime::control::notify::SdNotifier;
    use std::os::unix::net::UnixDatagram;
    let dir = reflex_testkit::dirs::WorkDir::new("alloc-notify");
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).expect("bind");
    let runner = inline(|run, out: &mut [f32]| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = ((run as usize + i) % 5) as f32 * 0.1 - 0.2;
        }
    });
    let notifier =
        SdNotifier::connect(path.to_str().expect("utf8"), Some(4 * PERIOD)).expect("connect");
    let (lp, _, _) = scripted_loop(FixedState(vec![0.1, -0.1]), NullSink::default(), runner);
    let mut lp = lp.with_notifier(Box::new(notifier));
    lp.seed(&[0.0, 0.0]);
    systemd.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 256];
    for k in 0..10 {
        lp.tick(k * PERIOD).expect("tick");
        while systemd.recv(&mut buf).is_ok() {}
    }
    let (mut pings, mut statuses) = (0, 0);
    let before = allocs();
    // 1000 ticks, reading the socket after each (it queues only a few datagrams), so that
    // every send really goes out; the reads allocate nothing either.
    for k in 10..1010 {
        lp.tick(k * PERIOD).expect("tick");
        while let Ok(len) = systemd.recv(&mut buf) {
            pings += usize::from(&buf[..len] == b"WATCHDOG=1");
            statuses += usize::from(buf[..len].starts_with(b"STATUS="));
        }
    }
    let n = allocs() - before;
    assert_eq!(
        n, 0,
        "{n} heap allocations in 1000 ticks feeding the watchdog"
    );
    assert_eq!((pings, statuses), (1000, 100));
}

#[test]
fn loop_tick_with_an_estop_allocates_nothing_through_trip_and_rearm() {
    use reflex_runtime::control::estop::{EStop, ManualInput};
    let runner = inline(|run, out: &mut [f32]| {
        for (i, v) in out.iter_mut().enumerate() {
            *v = ((run as usize + i) % 5) as f32 * 0.1 - 0.2;
        }
    });
    let (stop, stop_h) = ManualInput::new("test:estop", false);
    let (arm, arm_h) = ManualInput::new("test:arm", false);
    let (lp, _, _) = scripted_loop(FixedState(vec![0.1, -0.1]), NullSink::default(), runner);
    let mut lp = lp.with_estop(EStop::new(Box::new(stop), Some(Box::new(arm))));
    lp.seed(&[0.0, 0.0]);
    for k in 0..10 {
        lp.tick(k * PERIOD).expect("tick");
    }
    let before = allocs();
    // Every 100 ticks: pressed for 10, released, an arm press 5 ticks later (held 2 ticks).
    for k in 10..1010u64 {
        match k % 100 {
            50 => stop_h.set(true),
            60 => stop_h.set(false),
            65 => arm_h.set(true),
            67 => arm_h.set(false),
            _ => {}
        }
        lp.tick(k * PERIOD).expect("tick");
    }
    let n = allocs() - before;
    assert_eq!(n, 0, "{n} heap allocations in 1000 ticks with an e-stop");
    let c = lp.estop().expect("e-stop").counters().clone();
    assert_eq!((c.trips, c.rearms), (10, 10), "{c:?}");
    assert_eq!(lp.counters.estop_ticks, 150, "{:?}", lp.counters);
    assert!(lp.counters.fresh >= 800, "{:?}", lp.counters);
}

#[test]
fn motor_codecs_and_the_candump_sink_allocate_nothing_per_command() {
    use reflex_models::manifest::{MitFlavor, MitStop};
    use reflex_runtime::can::codec::{Codec, FeedbackOutcome, Frames};
    use reflex_runtime::can::sink::CandumpSink;
    use reflex_runtime::can::CanFrame;
    use reflex_runtime::control::safety::SafetyFilter;
    use reflex_runtime::io::CommandSink;
    let mut m = manifest();
    m.action.units = vec!["rad".into(); 2];
    m.can = reflex_models::reference::example_mit_can(2, MitFlavor::Damiao, MitStop::Damp);
    let mit = Codec::from_manifest(&m).expect("MIT codec");
    let decoder = mit.feedback(&m.state.names, 0).expect("decoder");
    let per_joint = Codec::per_joint(0x100, 2).expect("per-joint codec");
    let mut filter = SafetyFilter::new(&m.action, 10.0, false).expect("filter");
    let dir = reflex_testkit::dirs::WorkDir::new("alloc-codecs");
    let log = dir.join("can0.log");
    let mut sink = CandumpSink::new(&log, "can0", mit.clone(), 0).expect("sink");
    let reply =
        CanFrame::new(0x12, false, &[0x12, 0x80, 0, 0x80, 0x07, 0xFF, 30, 30]).expect("frame");
    let mut frames = Frames::new();
    let mut state = [0f32; 2];
    // The first command also writes the start sequence.
    sink.send(&filter.filter(&[0.0, 0.0], 0).command, 0)
        .expect("send");
    let before = allocs();
    for tick in 1..1000u64 {
        let t = tick as f32 * 0.01;
        let cmd = if tick % 10 == 0 {
            filter.stop(tick)
        } else {
            filter.filter(&[t.sin(), t.cos()], tick).command
        };
        mit.encode(&cmd, &mut frames).expect("MIT");
        per_joint.encode(&cmd, &mut frames).expect("per-joint");
        sink.send(&cmd, tick * PERIOD).expect("send");
        assert!(matches!(
            decoder.decode(&reply, &mut state),
            FeedbackOutcome::Updated(_)
        ));
    }
    let n = allocs() - before;
    sink.flush().expect("flush");
    assert_eq!(
        n, 0,
        "{n} heap allocations encoding and logging 1000 commands"
    );
}

/// A session computing its outputs with a closure of its inputs (no network).
struct FnSession<F: FnMut(&[Vec<f32>], &mut [Vec<f32>]) + Send> {
    inputs: Vec<reflex_runtime::infer::session::TensorSpec>,
    outputs: Vec<reflex_runtime::infer::session::TensorSpec>,
    input_data: Vec<Vec<f32>>,
    output_data: Vec<Vec<f32>>,
    f: F,
}

impl<F: FnMut(&[Vec<f32>], &mut [Vec<f32>]) + Send> FnSession<F> {
    fn new(inputs: &[(&str, &[usize])], outputs: &[(&str, &[usize])], f: F) -> Self {
        let spec = |(name, shape): &(&str, &[usize])| reflex_runtime::infer::session::TensorSpec {
            name: name.to_string(),
            elem: reflex_models::onnx::header::ElemType::F32,
            shape: shape.to_vec(),
        };
        let inputs: Vec<_> = inputs.iter().map(spec).collect();
        let outputs: Vec<_> = outputs.iter().map(spec).collect();
        FnSession {
            input_data: inputs.iter().map(|s| vec![0.0; s.len()]).collect(),
            output_data: outputs.iter().map(|s| vec![0.0; s.len()]).collect(),
            inputs,
            outputs,
            f,
        }
    }
}

impl<F: FnMut(&[Vec<f32>], &mut [Vec<f32>]) + Send> reflex_runtime::infer::session::Session
    for FnSession<F>
{
    fn backend(&self) -> reflex_models::manifest::BackendKind {
        reflex_models::manifest::BackendKind::Tract
    }
    fn inputs(&self) -> &[reflex_runtime::infer::session::TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[reflex_runtime::infer::session::TensorSpec] {
        &self.outputs
    }
    fn input_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.input_data[i]
    }
    fn input(&self, i: usize) -> &[f32] {
        &self.input_data[i]
    }
    fn run(&mut self) -> Result<(), reflex_runtime::infer::session::SessionError> {
        (self.f)(&self.input_data, &mut self.output_data);
        Ok(())
    }
    fn output(&self, i: usize) -> &[f32] {
        &self.output_data[i]
    }
}

#[test]
fn diffusion_policy_run_allocates_nothing_and_takes_the_history_it_is_given() {
    use reflex_runtime::infer::diffusion::{
        BetaSchedule, DiffusionIo, EncoderDenoiserPolicy, PredictionType, SchedulerKind,
        SchedulerSpec, SeededNoise, Variance,
    };
    use reflex_runtime::infer::policy::Policy;
    use reflex_runtime::infer::session::Session;
    type Boxed = Box<dyn reflex_runtime::infer::session::Session>;
    // Encoder: features = (mean pixel, state 0, state 1).
    let encoder: Boxed = Box::new(FnSession::new(
        &[("cam", &[1, 3, 4, 4]), ("state", &[1, 2])],
        &[("features", &[1, 3])],
        |i, o| {
            o[0][0] = i[0].iter().sum::<f32>() / i[0].len() as f32;
            o[0][1] = i[1][0];
            o[0][2] = i[1][1];
        },
    ));
    // Denoiser: a made-up epsilon prediction that depends on every input.
    let denoiser: Boxed = Box::new(FnSession::new(
        &[
            ("sample", &[1, 8, 2]),
            ("timestep", &[1]),
            ("cond", &[1, 6]),
        ],
        &[("prediction", &[1, 8, 2])],
        |i, o| {
            let c: f32 = i[2].iter().sum();
            for (k, v) in o[0].iter_mut().enumerate() {
                *v = 0.5 * i[0][k] + 0.001 * i[1][0] + 0.01 * c;
            }
        },
    ));
    let io = DiffusionIo {
        cameras: &["cam"],
        state: Some("state"),
        features: "features",
        sample: "sample",
        timestep: "timestep",
        global_cond: "cond",
        prediction: "prediction",
        n_obs_steps: 2,
        action_dim: 2,
    };
    let spec = SchedulerSpec {
        kind: SchedulerKind::Ddpm,
        num_train_timesteps: 100,
        num_inference_steps: 100,
        beta_schedule: BetaSchedule::SquaredcosCapV2,
        beta_start: 1e-4,
        beta_end: 0.02,
        prediction_type: PredictionType::Epsilon,
        clip_sample: true,
        clip_sample_range: 1.0,
        variance: Variance::FixedSmall,
    };
    let mut p = EncoderDenoiserPolicy::new(encoder, denoiser, &io, spec, SeededNoise::new(1))
        .expect("policy");
    // The current observation k; with `past`, observation j as the older step.
    let observe = |p: &mut EncoderDenoiserPolicy, past: Option<usize>, k: usize| {
        if let Some(j) = past {
            p.past_camera_input(0, 0)
                .expect("past image")
                .fill(j as f32);
            p.past_state_input(0)
                .expect("past state")
                .copy_from_slice(&[j as f32 + 0.5, -(j as f32)]);
        }
        p.camera_input(0).fill(k as f32);
        if let Some(s) = p.state_input() {
            s.copy_from_slice(&[k as f32 + 0.5, -(k as f32)]);
        }
        p.run().expect("run");
    };
    assert_eq!(p.n_obs_steps(), 2);
    assert!(
        p.past_camera_input(1, 0).is_none(),
        "step 1 is the current one"
    );
    observe(&mut p, None, 1);
    // No past observation given: the current one repeated (an episode's first step).
    assert_eq!(p.denoiser().input(2), &[1.0, 1.5, -1.0, 1.0, 1.5, -1.0]);
    observe(&mut p, Some(1), 2);
    assert_eq!(p.denoiser().input(2), &[1.0, 1.5, -1.0, 2.0, 2.5, -2.0]);
    // Output: from step n_obs_steps - 1 to the end of the horizon; finite, clipped scale.
    assert_eq!(p.output().len(), (8 - 1) * 2);
    assert!(
        p.output().iter().all(|v| v.is_finite() && v.abs() < 3.0),
        "{:?}",
        p.output()
    );
    assert_eq!(p.timings().denoiser_calls, 100);
    // A past step is used for the run it was written for only.
    observe(&mut p, None, 3);
    assert_eq!(p.denoiser().input(2), &[3.0, 3.5, -3.0, 3.0, 3.5, -3.0]);

    assert_installed();
    let before = allocs();
    for k in 0..50 {
        observe(&mut p, Some(k), k + 1);
    }
    let n = allocs() - before;
    assert_eq!(
        n, 0,
        "{n} heap allocations in 50 inferences of 100 denoiser steps"
    );
}
