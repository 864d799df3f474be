//! The control-loop rig the loop, e-stop and allocation tests share: a small two-joint chunk
//! policy ([`MANIFEST`]), its inference request, and a [`ControlLoop`] over a
//! [`ScriptedCamera`] built from the parts a test varies (state source, sink, runner), ticked on
//! the test's own clock (`tick(k * PERIOD)`).

use crate::fakes::{FnBackend, ScriptedCamera, Switch};
use reflex_models::bundle::parse_manifest;
use reflex_models::manifest::Manifest;
use reflex_runtime::can::sink::RecordingSink;
use reflex_runtime::control::safety::SafeCommand;
use reflex_runtime::control::{ControlLoop, LoopOptions};
use reflex_runtime::infer::runner::{InferenceRunner, InlineRunner, Request};
use reflex_runtime::io::{Camera, CommandSink, StateSource};
use std::path::Path;

/// A small two-joint chunk policy at 10 Hz: horizon 4, re-plan every 2 steps, one 8x6 RGB camera
/// resized to 4x4, limits +-1 rad, max rate 2 rad/s (0.2 rad per tick), watchdog 3 periods;
/// actions normalized by std 2 (a raw output of 0.05 is a command of 0.1 rad).
pub const MANIFEST: &str = r#"
format_version = 1
name = "test-policy"

[control]
rate_hz = 10.0
steps_per_inference = 2
latency_compensation = true
watchdog_periods = 3

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
capture = { width = 8, height = 6, format = "rgb24" }
preprocess = { resize = { width = 4, height = 4 }, color = "rgb", mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }

[state]
onnx_input = "state"
names = ["a", "b"]
units = ["rad", "rad"]
normalization = { kind = "mean_std", mean = [0.0, 0.0], std = [1.0, 1.0] }

[action]
onnx_output = "action"
names = ["a", "b"]
units = ["rad", "rad"]
output = { kind = "chunk", horizon = 4 }
normalization = { kind = "mean_std", mean = [0.0, 0.0], std = [2.0, 2.0] }
limits = { min = [-1.0, -1.0], max = [1.0, 1.0], max_rate = [2.0, 2.0] }
"#;

/// [`MANIFEST`], parsed.
pub fn manifest() -> Manifest {
    parse_manifest(MANIFEST, Path::new("test/policy.toml")).expect("test manifest parses")
}

/// The control period of [`MANIFEST`] (10 Hz), ns.
pub const PERIOD: u64 = 100_000_000;

/// The inference request of [`MANIFEST`]: one 3x4x4 image, 2 state values, 8 outputs.
pub fn request() -> Request {
    Request::new(&[3 * 4 * 4], 2, 8)
}

/// An inline runner over a [`FnBackend`] of `f`.
pub type Inline<F> = InlineRunner<FnBackend<F>>;

/// Runs `f(run, out)` inline, on the ticking thread.
pub fn inline<F: FnMut(u64, &mut [f32]) + Send>(f: F) -> Inline<F> {
    InlineRunner::new(FnBackend::new(f), request())
}

/// A control loop for [`MANIFEST`] over a [`ScriptedCamera`], with `state`, `sink`, `runner`
/// and the default options; also the camera's `live` and `gone` switches.
///
/// Panics if the loop refuses the parts (a test bug).
pub fn scripted_loop<S, K, R>(
    state: S,
    sink: K,
    runner: R,
) -> (ControlLoop<ScriptedCamera, S, K, R>, Switch, Switch)
where
    S: StateSource,
    K: CommandSink,
    R: InferenceRunner,
{
    let (cam, live, gone) = ScriptedCamera::new();
    let lp = ControlLoop::new(
        &manifest(),
        vec![cam],
        state,
        sink,
        runner,
        &LoopOptions::default(),
    )
    .expect("loop builds");
    (lp, live, gone)
}

/// The commands a loop's [`RecordingSink`] got, in order (without their times).
pub fn sent<C: Camera, S: StateSource>(
    lp: &ControlLoop<C, S, RecordingSink, impl InferenceRunner>,
) -> Vec<SafeCommand> {
    lp.sink().sent.iter().map(|(_, c)| c.clone()).collect()
}

/// What [`tick_replayed_episode`] saw over its measured ticks.
#[derive(Debug)]
pub struct ReplayedTicks {
    /// Ticks that submitted an inference (with an inline runner, ran the network).
    pub inferences: usize,
    /// Ticks that sent a fresh command.
    pub fresh: usize,
    /// Heap allocations in the ticks that did not run the network (counted only where the
    /// counting allocator is installed: see [`crate::counting`]).
    pub other_allocs: u64,
    /// Heap allocations and bytes in the ticks that ran the network, all together.
    pub inference_allocs: u64,
    pub inference_bytes: u64,
    pub counters: reflex_runtime::control::LoopCounters,
    pub timings: reflex_runtime::timing::StageTimings,
}

/// A bundle's control loop over a recorded episode, as `reflex run --camera NAME=replay:DIR`
/// plays it but on a manual clock: every camera of `m` and its state replayed as fast as asked,
/// a null CAN sink, `policy` inline on this thread (single-threaded backends keep every
/// allocation on the counted thread), no action limits required. Warms up, ticks `warm` ticks
/// unmeasured, then `measured` ticks counting allocations outside the ticks that ran the network.
///
/// Panics (a test bug or a broken bundle) when the episode, the loop or a tick fails.
pub fn tick_replayed_episode<P: reflex_runtime::infer::policy::Policy>(
    m: &Manifest,
    episode: &Path,
    policy: P,
    warm: u64,
    measured: u64,
) -> ReplayedTicks {
    use reflex_runtime::camera::replay::{Episode, ReplayMode};
    use reflex_runtime::control::CommandKind;
    let ep = Episode::load(episode).expect("episode");
    let cams = m
        .cameras
        .iter()
        .map(|c| {
            ep.camera(&c.name, ReplayMode::AsFastAsPossible)
                .expect("camera")
        })
        .collect();
    let state = ep
        .state_source(&m.state.names, ReplayMode::AsFastAsPossible)
        .expect("state");
    let opts = LoopOptions {
        allow_unlimited: true,
        ..LoopOptions::default()
    };
    let mut lp = ControlLoop::new(
        m,
        cams,
        state,
        reflex_runtime::can::sink::NullSink::default(),
        InlineRunner::new(policy, Request::for_manifest(m)),
        &opts,
    )
    .expect("loop");
    let clock = reflex_runtime::clock::ManualClock::new(0);
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let period = lp.period_ns();
    for k in 0..warm {
        lp.tick(k * period).expect("tick");
    }
    let (mut other_allocs, mut inferences, mut fresh) = (0, 0, 0);
    let (mut inference_allocs, mut inference_bytes) = (0, 0);
    for k in warm..warm + measured {
        let (a0, b0) = (crate::counting::allocs(), crate::counting::bytes());
        let r = lp.tick(k * period).expect("tick");
        let (a1, b1) = (crate::counting::allocs(), crate::counting::bytes());
        if r.inference_submitted {
            inferences += 1;
            inference_allocs += a1 - a0;
            inference_bytes += b1 - b0;
        } else {
            other_allocs += a1 - a0;
        }
        if r.kind == CommandKind::Fresh {
            fresh += 1;
        }
    }
    ReplayedTicks {
        inferences,
        fresh,
        other_allocs,
        inference_allocs,
        inference_bytes,
        counters: lp.counters.clone(),
        timings: lp.timings.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::FixedState;
    use reflex_runtime::control::CommandKind;

    #[test]
    fn the_rig_ticks_and_records() {
        let (mut lp, live, _) = scripted_loop(
            FixedState(vec![0.0, 0.0]),
            RecordingSink::with_capacity(10),
            inline(|_, out: &mut [f32]| out.fill(0.05)),
        );
        assert_eq!(lp.tick(0).expect("tick").kind, CommandKind::Fresh);
        live.set(false);
        lp.tick(PERIOD).expect("tick");
        let cmds = sent(&lp);
        assert_eq!(cmds.len(), 2);
        assert_eq!(cmds[0].values(), &[0.1, 0.1]);
    }
}
