//! End to end through the public API, as a dry run uses it: proposals -> safety filter ->
//! candump sink -> log file -> parser -> per-joint decoder. What reaches the log must be exactly
//! the safe commands, bit for bit, and within the bundle's limits.

#![allow(clippy::unwrap_used)]

use reflex_models::manifest::{ActionLimits, ActionOutput, ActionSpec, Normalization};
use reflex_runtime::can::candump::read_candump_log;
use reflex_runtime::can::codec::Codec;
use reflex_runtime::can::frame::decode_per_joint;
use reflex_runtime::can::sink::CandumpSink;
use reflex_runtime::control::safety::SafetyFilter;
use reflex_runtime::io::CommandSink;

#[test]
fn safe_commands_reach_the_log_intact() {
    let spec = ActionSpec {
        onnx_output: "action".into(),
        names: vec!["shoulder".into(), "elbow".into(), "gripper".into()],
        units: vec!["rad".into(), "rad".into(), "m".into()],
        output: ActionOutput::Single,
        normalization: Normalization::Identity,
        limits: Some(ActionLimits {
            min: vec![-1.5, -2.0, 0.0],
            max: vec![1.5, 2.0, 0.08],
            max_rate: vec![1.0, 2.0, 0.1],
        }),
        parity_tolerance: None,
    };
    let rate_hz = 50.0;
    let mut filter = SafetyFilter::new(&spec, rate_hz, false).unwrap();
    assert!(filter.seed(&[0.0, 0.0, 0.04]));

    let dir = reflex_testkit::dirs::WorkDir::new("candump");
    let path = dir.join("can0.log");
    let base_id = 0x200;
    let epoch_offset_ns = 1_700_000_000_000_000_000;
    let mut sink = CandumpSink::new(
        &path,
        "can0",
        Codec::per_joint(base_id, 3).unwrap(),
        epoch_offset_ns,
    )
    .unwrap();

    let mut sent = Vec::new();
    for tick in 0..200u64 {
        let t = tick as f32 / rate_hz as f32;
        // A target far outside the limits, a NaN now and then.
        let proposal = if tick % 37 == 5 {
            [f32::NAN, 0.0, 0.0]
        } else {
            [3.0 * t.sin(), -4.0 * t.cos(), 0.5]
        };
        let cmd = if tick == 199 {
            filter.stop(tick)
        } else {
            filter.filter(&proposal, tick).command
        };
        sink.send(&cmd, tick * 20_000_000).unwrap();
        sent.push(cmd);
    }
    sink.flush().unwrap();

    let log = read_candump_log(&path).unwrap();
    assert_eq!(log.len(), 200 * 3);
    for (k, (ts_us, iface, frame)) in log.iter().enumerate() {
        let cmd = &sent[k / 3];
        assert_eq!(iface, "can0");
        assert_eq!(*ts_us, 1_700_000_000_000_000 + cmd.tick() * 20_000);
        let (joint, value, stop, tick) = decode_per_joint(frame, base_id, 3).unwrap();
        assert_eq!(joint, k % 3);
        assert_eq!(value.to_bits(), cmd.values()[joint].to_bits());
        assert_eq!((stop, tick), (cmd.is_stop(), cmd.tick() as u8));
        let limits = spec.limits.as_ref().unwrap();
        assert!(value >= limits.min[joint] && value <= limits.max[joint]);
    }
    assert!(log[597..].iter().all(|(_, _, f)| f.data()[4] == 1));
    let counters = filter.counters();
    assert_eq!(counters.rejected_nonfinite, 6);
    assert_eq!(counters.stops, 1);
}
