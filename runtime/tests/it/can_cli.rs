//! `reflex can encode/send/decode` as a user runs them, on the reference arm with its default
//! per-joint protocol and with a Damiao MIT section. Expected frames are derived by hand from the
//! protocol formulas (see `codec.rs` for the derivations).

use reflex_models::manifest::{MitFlavor, MitStop};
use reflex_models::reference;
use reflex_testkit::cli::{Cli, Run};
use reflex_testkit::python;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn reflex(args: &[&str]) -> Run {
    Cli::new(env!("CARGO_BIN_EXE_reflex")).args(args).run()
}

/// This binary's scratch directory for the CAN CLI tests, emptied once per run.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| reflex_testkit::dirs::fixture_dir("can-cli"))
}

/// A bundle with the reference arm's manifest (per-joint), the test kit's tiny network and a
/// 640x480 camera, and a copy speaking Damiao MIT, built once per test binary.
fn bundles() -> &'static (PathBuf, PathBuf) {
    static B: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    B.get_or_init(|| {
        let pj = root().join("per-joint");
        reflex_testkit::bundles::write_tiny_bundle(&pj, reference::default_capture());
        let mit = root().join("mit");
        reflex_testkit::dirs::copy_files(&pj, &mit);
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

/// Command output as text (a test kit `Run`'s strings, or a `std::process::Output`'s bytes).
fn text<T: AsRef<[u8]> + ?Sized>(b: &T) -> String {
    String::from_utf8_lossy(b.as_ref()).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn encode_mit_prints_start_sequence_and_commands() {
    let (_, mit) = bundles();
    let mut args = vec!["can", "encode", "--bundle", s(mit), "--start"];
    args.extend(TARGET);
    let out = reflex(&args);
    assert!(out.status.success(), "{out}");
    let lines: Vec<String> = out.stdout.clone().lines().map(String::from).collect();
    assert_eq!(lines.len(), 18, "{lines:?}");
    // Damiao TIMEOUT register (9) = 100 ms / 50 µs = 2000 = 0x7D0, then enable.
    assert_eq!(lines[0], "7FF#01005509D0070000");
    assert_eq!(lines[6], "001#FFFFFFFFFFFFFFFC");
    // 0.1 rad: (0.1 + 12.5) * 65535 / 25 = 33029.6 -> 0x8105; kp 20 -> 0x0A3, kd 1 -> 0x333.
    assert_eq!(lines[12], "001#81057FF0A33337FF");
    // wrist_flex = 3 is clamped to its 1.8 rad limit: 14.3 * 65535 / 25 = 37486.0 -> 0x926E.
    assert_eq!(lines[15], "004#926E7FF0A33337FF");
    let err = out.stderr.clone();
    assert!(
        err.contains("wrist_flex 3 rad -> 1.8 (safety filter: position limits)"),
        "{err}"
    );
    assert!(err.contains("enable gripper"), "{err}");
}

#[test]
fn encode_per_joint_and_stop() {
    let (pj, _) = bundles();
    let mut args = vec!["can", "encode", "--bundle", s(pj)];
    args.extend(TARGET);
    let out = reflex(&args);
    assert!(out.status.success(), "{out}");
    let stdout = out.stdout.clone();
    let lines: Vec<&str> = stdout.lines().collect();
    // 0.1f32 = 0x3DCCCCCD, little-endian; flags 0, tick 0.
    assert_eq!(lines[0], "100#CDCCCC3D00000000");
    args.push("--stop");
    let out = reflex(&args);
    let stdout = out.stdout.clone();
    let lines: Vec<&str> = stdout.lines().collect();
    // The stop keeps the last safe values, flags bit 0 set, tick 1.
    assert_eq!(lines[0], "100#CDCCCC3D01010000");
}

#[test]
fn send_to_candump_then_decode_round_trips() {
    let (_, mit) = bundles();
    let log = root().join("sent.log");
    let can = format!("candump:{}", s(&log));
    let mut args = vec!["can", "send", "--bundle", s(mit), "--can", &can];
    args.extend(TARGET);
    let out = reflex(&args);
    assert!(out.status.success(), "{out}");
    let out = reflex(&["can", "decode", "--bundle", s(mit), s(&log)]);
    assert!(out.status.success(), "{out}");
    let stdout = out.stdout.clone();
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
    let stdout = out.stdout.clone();
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
        let err = out.stderr.clone();
        assert!(err.contains(want), "{vals:?}: {err}");
    }
    let broken = root().join("broken.log");
    std::fs::write(&broken, "(1.000000) can0 100#00\nnot a line\n").expect("write");
    let out = reflex(&["can", "decode", "--bundle", s(pj), s(&broken)]);
    assert!(!out.status.success());
    let err = out.stderr.clone();
    assert!(err.contains("broken.log:2"), "{err}");
}

/// A robot described by a DBC: three joints in a standard-ID message with Intel signals, an
/// enable constant and a stop bit; three in an extended-ID message with Motorola signals; the
/// joint state in a feedback message of 10-bit signals.
const ROBOT_DBC: &str = r#"VERSION ""

NS_ :

BS_:

BU_: Board Arm

BO_ 512 ArmCmdA: 7 Board
 SG_ ShoulderPan : 0|16@1- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ ShoulderLift : 16|16@1- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ ElbowFlex : 32|16@1- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ Enable : 48|1@1+ (1,0) [0|1] "" Arm
 SG_ Stop : 49|1@1+ (1,0) [0|1] "" Arm

BO_ 2147484161 ArmCmdB: 6 Board
 SG_ WristFlex : 7|16@0- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ WristRoll : 23|16@0- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ Gripper : 39|12@0+ (0.0001,0) [0|0.4] "m" Arm

BO_ 768 ArmState: 8 Arm
 SG_ PanPos : 0|10@1- (0.005,0) [-2.56|2.555] "rad" Board
 SG_ LiftPos : 10|10@1- (0.005,0) [-2.56|2.555] "rad" Board
 SG_ ElbowPos : 20|10@1- (0.005,0) [-2.56|2.555] "rad" Board
 SG_ WristFlexPos : 30|10@1- (0.005,0) [-2.56|2.555] "rad" Board
 SG_ WristRollPos : 40|10@1- (0.005,0) [-2.56|2.555] "rad" Board
 SG_ GripperPos : 50|10@1+ (0.0001,0) [0|0.1023] "m" Board

CM_ SG_ 512 Stop "1 = stop now";
"#;

const JOINTS: [(&str, &str, &str); 6] = [
    ("shoulder_pan", "ArmCmdA.ShoulderPan", "ArmState.PanPos"),
    ("shoulder_lift", "ArmCmdA.ShoulderLift", "ArmState.LiftPos"),
    ("elbow_flex", "ArmCmdA.ElbowFlex", "ArmState.ElbowPos"),
    ("wrist_flex", "ArmCmdB.WristFlex", "ArmState.WristFlexPos"),
    ("wrist_roll", "ArmCmdB.WristRoll", "ArmState.WristRollPos"),
    ("gripper", "ArmCmdB.Gripper", "ArmState.GripperPos"),
];

fn dbc_bundle(name: &str, dbc: &str) -> PathBuf {
    use reflex_models::manifest::{CanSpec, DbcSpec};
    let (pj, _) = bundles();
    let dir = root().join(name);
    reflex_testkit::dirs::copy_files(pj, &dir);
    std::fs::write(dir.join("robot.dbc"), dbc).expect("dbc");
    let spec = DbcSpec {
        file: "robot.dbc".into(),
        sha256: reflex_models::bundle::sha256_bytes(dbc.as_bytes()),
        actions: JOINTS
            .iter()
            .map(|(a, s, _)| (a.to_string(), s.to_string()))
            .collect(),
        constants: [("ArmCmdA.Enable".to_string(), 1.0)].into(),
        stop_signal: Some("ArmCmdA.Stop".into()),
        fd_brs: false,
        feedback: JOINTS
            .iter()
            .map(|(a, _, f)| (a.to_string(), f.to_string()))
            .collect(),
    };
    reference::set_bundle_can(&dir, CanSpec::Dbc(spec)).expect("DBC bundle");
    dir
}

/// The DBC codec's frames are byte for byte what Python cantools encodes for the same values.
#[test]
fn dbc_encode_matches_cantools_and_decode_names_signals() {
    let dir = dbc_bundle("dbc", ROBOT_DBC);
    // Values exact in f32 and f64 alike, within the bundle's limits.
    let targets = [0.5f32, -0.25, 1.25, -1.5, 2.5, 0.03125];
    let args: Vec<String> = JOINTS
        .iter()
        .zip(targets)
        .map(|((a, _, _), v)| format!("{a}={v}"))
        .collect();
    let mut cmd = vec!["can", "encode", "--bundle", s(&dir)];
    cmd.extend(args.iter().map(String::as_str));
    let out = reflex(&cmd);
    assert!(out.status.success(), "{out}");
    let ours: Vec<String> = out.stdout.clone().lines().map(String::from).collect();
    cmd.push("--stop");
    let out = reflex(&cmd);
    assert!(out.status.success(), "{out}");
    let ours_stop: Vec<String> = out.stdout.clone().lines().map(String::from).collect();

    let tmp = root();
    let (cases, result) = (tmp.join("dbc-cases.txt"), tmp.join("dbc-out.txt"));
    let t = targets;
    std::fs::write(
        &cases,
        format!(
            "E ArmCmdA ShoulderPan={} ShoulderLift={} ElbowFlex={} Enable=1 Stop=0\n\
             E ArmCmdB WristFlex={} WristRoll={} Gripper={}\n\
             E ArmCmdA ShoulderPan={} ShoulderLift={} ElbowFlex={} Enable=1 Stop=1\n\
             D ArmState 64000100C0FF0F00\n",
            t[0], t[1], t[2], t[3], t[4], t[5], t[0], t[1], t[2]
        ),
    )
    .expect("cases");
    let dbc_file = dir.join("robot.dbc");
    let cantools = python::reference(
        "dbc_cantools.py",
        [&dbc_file, &cases, &result],
        "cantools==45.1.0",
    );
    if cantools.is_none() {
        return;
    }
    let reference = std::fs::read_to_string(&result).expect("cantools output");
    let hex: Vec<&str> = reference
        .lines()
        .map(|l| l.split_whitespace().nth(1).expect("OK HEX"))
        .collect();
    assert_eq!(
        ours,
        [format!("200#{}", hex[0]), format!("00000201#{}", hex[1])]
    );
    assert_eq!(ours_stop[0], format!("200#{}", hex[2]));

    // Decoding a log: commands by joint, and the feedback message with its units.
    let log = tmp.join("dbc.log");
    std::fs::write(
        &log,
        format!(
            "(1.000000) can0 {}\n(1.000001) can0 {}\n(1.000002) can0 300#64000100C0FF0F00\n",
            ours[0], ours[1]
        ),
    )
    .expect("log");
    let out = reflex(&["can", "decode", "--bundle", s(&dir), s(&log)]);
    assert!(out.status.success(), "{out}");
    let stdout = out.stdout.clone();
    assert!(
        stdout.contains("command ArmCmdA: ShoulderPan(shoulder_pan)=0.5 rad"),
        "{stdout}"
    );
    assert!(stdout.contains("Enable=1 Stop=0"), "{stdout}");
    assert!(stdout.contains("Gripper(gripper)=0.0312 m"), "{stdout}");
    // cantools' decoding of the feedback payload, value for value.
    let fb = reference.lines().nth(3).expect("decode case");
    for kv in fb.split_whitespace().skip(1) {
        let (k, v) = kv.split_once('=').expect("k=v");
        let v: f64 = v.parse().expect("number");
        let shown = format!("{v:.6}");
        let shown = shown.trim_end_matches('0').trim_end_matches('.');
        assert!(
            stdout.contains(&format!("{k}={shown}")),
            "{k}={v}: {stdout}"
        );
    }
}

#[test]
fn dbc_mapping_errors_name_the_field() {
    let cases = [
        (
            ROBOT_DBC.replace("ArmCmdA: 7", "ArmCmdX: 7"),
            "`ArmCmdA.ShoulderPan`: robot.dbc has no message `ArmCmdA`",
        ),
        (
            ROBOT_DBC.replace(" SG_ ElbowFlex ", " SG_ Elbow "),
            "message `ArmCmdA` of robot.dbc has no signal `ElbowFlex` (it has: ShoulderPan, ShoulderLift, Elbow, Enable, Stop)",
        ),
        // The shoulder_pan limits (+-2 rad) do not fit a +-1 rad signal.
        (
            ROBOT_DBC.replace("(0.0001,0) [-3.2|3.2] \"rad\" Arm\n SG_ ShoulderLift", "(0.0001,0) [-1|1] \"rad\" Arm\n SG_ ShoulderLift"),
            "[can] actions.shoulder_pan: signal `ShoulderPan`: value -2 is outside the DBC range [-1, 1]",
        ),
        (ROBOT_DBC.replace("BO_ 768 ArmState: 8", "BO_ 768 ArmState: 8 Arm\n SG_ Broken : 0|99@1+ (1,0) [0|0] \"\" X\nBO_ 769 Other: 8"), "robot.dbc"),
    ];
    for (n, (dbc, want)) in cases.iter().enumerate() {
        let dir = dbc_bundle(&format!("dbc-bad-{n}"), dbc);
        let mut cmd = vec!["can", "encode", "--bundle", s(&dir)];
        cmd.extend(TARGET);
        let out = reflex(&cmd);
        assert!(!out.status.success(), "case {n}");
        let err = out.stderr.clone();
        assert!(err.contains(want), "case {n}: {err}");
        // `reflex check` refuses the bundle for the same reason.
        let out = reflex(&["check", "--bundle", s(&dir)]);
        assert!(!out.status.success(), "check, case {n}");
        assert!(out.stderr.clone().contains(want), "check, case {n}");
    }
}

/// `reflex run` on a DBC bundle: the loop's commands go out as the DBC's messages, and the log
/// decodes back into the joints, the stop bit set on the last command only.
#[test]
fn run_with_a_dbc_bundle_logs_its_messages() {
    let _real_time = reflex_testkit::serial::real_time();
    let dir = dbc_bundle("dbc-run", ROBOT_DBC);
    let bundle = reflex_models::Bundle::load(&dir).expect("bundle");
    let ep = dir.join("episode");
    reflex_runtime::camera::replay::generate_synthetic_episode(&bundle.manifest, &ep, 1.0, 30)
        .expect("episode");
    let log = dir.join("run.log");
    let camera = format!("replay:{}", s(&ep));
    let can = format!("candump:{}", s(&log));
    let out = reflex(&[
        "run",
        "--bundle",
        s(&dir),
        "--camera",
        &camera,
        "--can",
        &can,
        "--duration",
        "1.5",
    ]);
    assert!(out.status.success(), "{out}");
    let out = reflex(&["can", "decode", "--bundle", s(&dir), s(&log)]);
    let stdout = out.stdout.clone();
    let a: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("command ArmCmdA"))
        .collect();
    let b = stdout
        .lines()
        .filter(|l| l.contains("command ArmCmdB"))
        .count();
    assert!(a.len() >= 20 && a.len() == b, "{stdout}");
    let (last, rest) = a.split_last().expect("commands");
    assert!(last.contains("Enable=1 Stop=1"), "{last}");
    assert!(
        rest.iter().all(|l| l.contains("Enable=1 Stop=0")),
        "{stdout}"
    );
}

/// A DBC bundle from a field-case file (bytes as saved) and a `Message.Signal` per joint.
fn dbc_case_bundle(name: &str, file: &str, joints: [&str; 6], stop: &str) -> PathBuf {
    use reflex_models::manifest::{CanSpec, DbcSpec};
    let (pj, _) = bundles();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("can-cli")
        .join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for f in ["policy.onnx", "policy.toml"] {
        std::fs::copy(pj.join(f), dir.join(f)).expect("copy");
    }
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/dbc")
            .join(file),
    )
    .expect("case file");
    std::fs::write(dir.join("robot.dbc"), &bytes).expect("dbc");
    let spec = DbcSpec {
        file: "robot.dbc".into(),
        sha256: reflex_models::bundle::sha256_bytes(&bytes),
        actions: JOINTS
            .iter()
            .zip(joints)
            .map(|((a, _, _), s)| (a.to_string(), s.to_string()))
            .collect(),
        constants: Default::default(),
        stop_signal: Some(stop.into()),
        fd_brs: false,
        feedback: Default::default(),
    };
    reference::set_bundle_can(&dir, CanSpec::Dbc(spec)).expect("DBC bundle");
    dir
}

/// `../shared/cases/dbc-cp1252/`: a DBC saved in Windows-1252 (as Vector's tools write it, a
/// `°` in a unit) with its `[can]` mapping. `reflex check` accepts it and prints OK as its last
/// line; the commands are cantools' bytes (the same script as above).
#[test]
fn windows_1252_dbc_bundle_checks_and_encodes_like_cantools() {
    let dir = dbc_case_bundle(
        "dbc-cp1252",
        "robot_cp1252.dbc",
        [
            "ArmCmdA.ShoulderPan",
            "ArmCmdA.ShoulderLift",
            "ArmCmdA.ElbowFlex",
            "ArmCmdA.WristFlex",
            "ArmCmdB.WristRoll",
            "ArmCmdB.Gripper",
        ],
        "ArmCmdB.Stop",
    );
    let out = reflex(&["check", "--bundle", s(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().expect("output");
    assert!(
        last.starts_with("bundle ") && last.contains(" OK ("),
        "{stdout}"
    );
    assert_eq!(stdout.matches(" OK (").count(), 1, "{stdout}");

    let mut cmd = vec!["can", "encode", "--bundle", s(&dir)];
    cmd.extend(TARGET);
    let out = reflex(&cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ours: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("can-cli");
    let (cases, result) = (tmp.join("cp1252-cases.txt"), tmp.join("cp1252-out.txt"));
    // TARGET after the safety filter's first command: the values as given (within limits;
    // wrist_flex=3 is clamped to its 1.8 rad limit).
    std::fs::write(
        &cases,
        "E ArmCmdA ShoulderPan=0.1 ShoulderLift=0 ElbowFlex=0 WristFlex=1.8\n\
         E ArmCmdB WristRoll=0 Gripper=0.01 Enable=0 Stop=0\n",
    )
    .expect("cases");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/dbc_cantools.py");
    let py = Command::new("python3")
        .arg(&script)
        .arg(dir.join("robot.dbc"))
        .arg(&cases)
        .arg(&result)
        .output()
        .unwrap_or_else(|e| panic!("python3 {}: {e}; run scripts/setup.sh", script.display()));
    assert!(py.status.success(), "cantools: {}", text(&py.stderr));
    let reference = std::fs::read_to_string(&result).expect("cantools output");
    let hex: Vec<&str> = reference
        .lines()
        .map(|l| l.split_whitespace().nth(1).expect("OK HEX"))
        .collect();
    assert_eq!(ours, [format!("100#{}", hex[0]), format!("101#{}", hex[1])]);
}

/// A `[can]` mapping written with the long names cantools shows
/// (`SystemMessageLongSymbol` / `SystemSignalLongSymbol`) resolves, in `check` and in the
/// frames; a short name written in the `BO_`/`SG_` line resolves too.
#[test]
fn long_dbc_names_resolve() {
    let long = "ArmCommandShoulderAndElbowJointTargets";
    let pan = format!("{long}.ShoulderPanTargetPositionRadians");
    let lift = format!("{long}.ShoulderLift");
    let dir = dbc_case_bundle(
        "dbc-long",
        "long_names.dbc",
        [
            &pan,
            &lift,
            "ArmCommandShoulderAndElbowJo.ElbowFlex",
            &format!("{long}.WristFlex"),
            "ArmCmdB.WristRoll",
            "ArmCmdB.GripperOpeningTargetMetersFromClosed",
        ],
        "ArmCmdB.Stop",
    );
    let out = reflex(&["check", "--bundle", s(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("ArmCommandShoulderAndElbowJointTargets (0x100)"),
        "{}",
        text(&out.stdout)
    );
    let mut cmd = vec!["can", "encode", "--bundle", s(&dir)];
    cmd.extend(TARGET);
    let out = reflex(&cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // shoulder_pan = 0.1 rad = raw 1000 = E8 03; wrist_flex clamped to 1.8 rad = raw 18000 =
    // 50 46; gripper 0.01 m = raw 1000 = E8 03.
    assert_eq!(
        text(&out.stdout).lines().collect::<Vec<_>>(),
        ["100#E803000000005046", "101#0000E80300000000"]
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("ShoulderPanTargetPositionRadians(shoulder_pan)=0.1 rad"),
        "{err}"
    );
}

/// `../shared/cases/candump-error-frames/`: a `candump -l` log with an error frame and a
/// remote frame between per-joint commands of the demo bundle. Every line decodes, in order,
/// as can-utils' `log2asc` reads it: 20 lines, the error frame (line 7) explained by its class
/// as `candump -e` names it, the remote frame (line 14) as a remote request.
#[test]
fn candump_log_with_error_and_remote_frames_decodes_every_line() {
    let (pj, _) = bundles();
    let log = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/candump_error_frames.log");
    let out = reflex(&["can", "decode", "--bundle", s(pj), s(&log)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 20, "{stdout}");
    assert_eq!(
        lines[6],
        "(1764500000.000070) can0 20000004#0020000000008000  error frame: \
         controller-problem{tx-error-passive},error-counter-tx-rx{{128}{0}}"
    );
    assert_eq!(
        lines[13],
        "(1764500000.050070) can0 123#R  remote request (DLC 0)"
    );
    // The commands after the error frame decode: third tick, gripper (joint 5) = 0.0420 m.
    assert!(
        lines[19].contains("command gripper: gripper=0.042 m tick=2"),
        "{}",
        lines[19]
    );
    // log2asc (can-utils), where installed, sees the same 20 frames with the error frame and
    // the remote frame at the same places.
    if let Ok(asc) = Command::new("log2asc")
        .args(["-I", s(&log), "can0"])
        .output()
    {
        let asc = text(&asc.stdout);
        let frames: Vec<&str> = asc.lines().filter(|l| l.starts_with("   ")).collect();
        assert_eq!(frames.len(), 20, "{asc}");
        assert!(frames[6].contains("ErrorFrame"), "{asc}");
        assert!(frames[13].contains(" r 0"), "{asc}");
    }
}
