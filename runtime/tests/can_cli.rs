//! `reflex can encode/send/decode` as a user runs them, on the demo bundle with its default
//! per-joint protocol and with a Damiao MIT section. Expected frames are derived by hand from the
//! protocol formulas (see `codec.rs` for the derivations).

use reflex_models::manifest::{MitFlavor, MitStop};
use reflex_models::reference;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn reflex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reflex"))
        .args(args)
        .output()
        .expect("runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The demo bundle (per-joint) and a copy speaking Damiao MIT, built once per test binary.
fn bundles() -> &'static (PathBuf, PathBuf) {
    static B: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    B.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("can-cli");
        let _ = std::fs::remove_dir_all(&root);
        let pj = root.join("per-joint");
        reference::write_demo_bundle(&pj).expect("demo bundle");
        let mit = root.join("mit");
        std::fs::create_dir_all(&mit).expect("mkdir");
        for f in ["policy.onnx", "policy.toml"] {
            std::fs::copy(pj.join(f), mit.join(f)).expect("copy");
        }
        let can = reference::example_mit_can(6, MitFlavor::Damiao, MitStop::Hold);
        reference::set_bundle_can(&mit, can).expect("MIT bundle");
        (pj, mit)
    })
}

const TARGET: [&str; 6] = [
    "shoulder_pan=0.1",
    "shoulder_lift=0",
    "elbow_flex=0",
    "wrist_flex=3",
    "wrist_roll=0",
    "gripper=0.01",
];

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn encode_mit_prints_start_sequence_and_commands() {
    let (_, mit) = bundles();
    let mut args = vec!["can", "encode", "--bundle", s(mit), "--start"];
    args.extend(TARGET);
    let out = reflex(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    assert_eq!(lines.len(), 18, "{lines:?}");
    // Damiao TIMEOUT register (9) = 100 ms / 50 µs = 2000 = 0x7D0, then enable.
    assert_eq!(lines[0], "7FF#01005509D0070000");
    assert_eq!(lines[6], "001#FFFFFFFFFFFFFFFC");
    // 0.1 rad: (0.1 + 12.5) * 65535 / 25 = 33029.6 -> 0x8105; kp 20 -> 0x0A3, kd 1 -> 0x333.
    assert_eq!(lines[12], "001#81057FF0A33337FF");
    // wrist_flex = 3 is clamped to its 1.8 rad limit: 14.3 * 65535 / 25 = 37486.0 -> 0x926E.
    assert_eq!(lines[15], "004#926E7FF0A33337FF");
    let err = text(&out.stderr);
    assert!(err.contains("wrist_flex 3 rad -> 1.8"), "{err}");
    assert!(err.contains("enable gripper"), "{err}");
}

#[test]
fn encode_per_joint_and_stop() {
    let (pj, _) = bundles();
    let mut args = vec!["can", "encode", "--bundle", s(pj)];
    args.extend(TARGET);
    let out = reflex(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // 0.1f32 = 0x3DCCCCCD, little-endian; flags 0, tick 0.
    assert_eq!(lines[0], "100#CDCCCC3D00000000");
    args.push("--stop");
    let out = reflex(&args);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    // The stop keeps the last safe values, flags bit 0 set, tick 1.
    assert_eq!(lines[0], "100#CDCCCC3D01010000");
}

#[test]
fn send_to_candump_then_decode_round_trips() {
    let (_, mit) = bundles();
    let log = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("can-cli/sent.log");
    let can = format!("candump:{}", s(&log));
    let mut args = vec!["can", "send", "--bundle", s(mit), "--can", &can];
    args.extend(TARGET);
    let out = reflex(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = reflex(&["can", "decode", "--bundle", s(mit), s(&log)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 18, "{stdout}");
    assert!(
        stdout.contains("set command timeout shoulder_pan: timeout=100 ms"),
        "{stdout}"
    );
    assert!(stdout.contains("enable gripper"), "{stdout}");
    assert!(
        stdout.contains("001#81057FF0A33337FF  command shoulder_pan: position=0.099756 rad"),
        "{stdout}"
    );
    assert!(stdout.contains("position=1.799993 rad"), "{stdout}");
    // A Damiao reply and an unknown frame, appended by hand.
    let mut t = std::fs::read_to_string(&log).expect("log");
    t += "(1.000000) can0 013#138A3D8007FF231E\n(1.000001) can0 321#00\n";
    std::fs::write(&log, t).expect("write");
    let out = reflex(&["can", "decode", "--bundle", s(mit), s(&log)]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("reply elbow_flex: position=1.000038 rad"),
        "{stdout}"
    );
    assert!(stdout.contains("temperature=35 °C status=1"), "{stdout}");
    assert!(
        stdout.contains("321#00  not a mit frame of this bundle"),
        "{stdout}"
    );
}

#[test]
fn bad_input_is_named() {
    let (pj, _) = bundles();
    let cases: [(&[&str], &str); 4] = [
        (&["shoulder_pan=0.1"], "missing: shoulder_lift, elbow_flex"),
        (&["knee=1"], "`knee` is not an action name"),
        (&["shoulder_pan=abc"], "`abc` is not a number"),
        (&["shoulder_pan=NaN"], "must be finite"),
    ];
    for (vals, want) in cases {
        let mut args = vec!["can", "encode", "--bundle", s(pj)];
        args.extend(vals);
        let out = reflex(&args);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(err.contains(want), "{vals:?}: {err}");
    }
    let broken = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("can-cli/broken.log");
    std::fs::write(&broken, "(1.000000) can0 100#00\nnot a line\n").expect("write");
    let out = reflex(&["can", "decode", "--bundle", s(pj), s(&broken)]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("broken.log:2"), "{err}");
}
