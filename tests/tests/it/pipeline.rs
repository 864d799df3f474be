//! End to end: reference bundle -> synthetic episode -> control loop on real tract -> candump log.
//! The log must decode back to exactly the commands that left the safety filter.

use reflex_models::Bundle;
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode, ReplayMode};
use reflex_runtime::can::candump::read_candump_log;
use reflex_runtime::can::codec::Codec;
use reflex_runtime::can::frame::decode_per_joint;
use reflex_runtime::can::sink::CandumpSink;
use reflex_runtime::clock::{Clock, ManualClock};
use reflex_runtime::control::{CommandKind, ControlLoop, LoopOptions};
use reflex_runtime::infer::policy::SinglePassPolicy;
use reflex_runtime::infer::runner::{InlineRunner, Request};
use reflex_runtime::infer::tract::TractOptions;
use reflex_testkit::bundles::demo_bundle;
use reflex_testkit::dirs::WorkDir;
use reflex_testkit::fakes::Tee;

#[test]
fn demo_bundle_runs_and_the_candump_log_decodes_to_the_filtered_commands() {
    let dir = WorkDir::new("pipeline");
    let bundle = Bundle::load(demo_bundle()).expect("bundle loads");
    let m = &bundle.manifest;
    let episode_dir = dir.join("episode");
    generate_synthetic_episode(m, &episode_dir, 2.0, 30).expect("episode");
    let ep = Episode::load(&episode_dir).expect("episode loads");

    let backend = SinglePassPolicy::tract(&bundle, TractOptions { threads: 2 }).expect("tract");
    let req = Request::for_manifest(m);
    let clock = ManualClock::new(1_000_000_000);
    let log_path = dir.join("can0.log");
    let sink = Tee::new(
        CandumpSink::new(
            &log_path,
            "can0",
            Codec::from_manifest(m).expect("codec"),
            clock.epoch_offset_ns(),
        )
        .expect("sink"),
        64,
    );
    let cams = vec![ep.camera("front", ReplayMode::RealTime).expect("camera")];
    let state = ep
        .state_source(&m.state.names, ReplayMode::RealTime)
        .expect("state");
    let mut lp = ControlLoop::new(
        m,
        cams,
        state,
        sink,
        InlineRunner::new(backend, req),
        &LoopOptions::default(),
    )
    .expect("loop");
    lp.warm_up(&clock, 1_000_000_000).expect("warm-up");
    let period = lp.period_ns();
    let t0 = clock.now_ns();
    let mut fresh = 0;
    for k in 0..30 {
        if lp.tick(t0 + k * period).expect("tick").kind == CommandKind::Fresh {
            fresh += 1;
        }
    }
    lp.shutdown(t0 + 30 * period);
    assert!(
        fresh >= 25,
        "fresh commands: {fresh}, counters {:?}",
        lp.counters
    );
    assert!(lp.counters.inferences >= 7, "{:?}", lp.counters);

    let seen = &lp.sink().seen;
    assert_eq!(seen.len(), 31, "30 ticks + the stop command");
    assert!(seen.last().map(|(_, c)| c.is_stop()).unwrap_or(false));
    // Every command is inside the bundle's limits.
    let limits = m.action.limits.as_ref().expect("limits");
    for (_, c) in seen {
        for (i, v) in c.values().iter().enumerate() {
            assert!(
                v.is_finite() && *v >= limits.min[i] && *v <= limits.max[i],
                "{c:?}"
            );
        }
    }

    let frames = read_candump_log(&log_path).expect("log parses");
    let dims = m.action.names.len();
    assert_eq!(
        frames.len(),
        seen.len() * dims,
        "one frame per joint per command"
    );
    for (k, (t, cmd)) in seen.iter().enumerate() {
        for j in 0..dims {
            let (ts_us, iface, frame) = &frames[k * dims + j];
            assert_eq!(iface, "can0");
            assert_eq!(*ts_us, (t + clock.epoch_offset_ns()) / 1000);
            let (idx, value, stop, tick) = decode_per_joint(frame, 0x100, dims).expect("decodes");
            assert_eq!(idx, j);
            assert_eq!(
                value.to_bits(),
                cmd.values()[j].to_bits(),
                "bit-exact value"
            );
            assert_eq!(stop, cmd.is_stop());
            assert_eq!(tick, cmd.tick() as u8);
        }
    }
}
