//! Hardware-in-the-loop tests: the real SocketCAN and V4L2 kernel drivers (vcan, vivid) in a
//! QEMU guest, driven by the `reflex` binary. See TESTING.md.
//!
//! They run only with `REFLEX_QEMU_TESTS=1` (scripts/test.sh sets it; everything they need is
//! installed by scripts/setup.sh) and use the `reflex` binary of the same target dir, which
//! `cargo test --workspace` builds; alone:
//!
//! ```text
//! cargo build -p reflex-runtime --bin reflex
//! REFLEX_QEMU_TESTS=1 cargo test -p reflex-tests --test qemu -- --nocapture
//! ```
//!
//! Each test builds a small bundle and episode here, boots a guest with tests/qemu/run-guest.sh,
//! runs one scenario from tests/qemu/scenarios/ and checks the `@@` markers and logs the guest
//! prints on its serial console.

use reflex_models::manifest::{CaptureSpec, Manifest, PixelFormat};
use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch};
use reflex_runtime::camera::replay::generate_synthetic_episode;
use reflex_runtime::can::candump::parse_candump_line;
use reflex_runtime::can::frame::decode_per_joint;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

/// One guest at a time: two emulated guests on a small machine would starve each other and
/// make the loop-rate checks meaningless.
static GUEST: Mutex<()> = Mutex::new(());

fn enabled(test: &str) -> bool {
    let on = std::env::var("REFLEX_QEMU_TESTS").is_ok_and(|v| v == "1");
    if !on {
        println!("{test}: skipped (set REFLEX_QEMU_TESTS=1 to run the QEMU tests, see TESTING.md)");
    }
    on
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `reflex` binary next to this test's own target directory (`target/debug/reflex`).
fn reflex_bin() -> PathBuf {
    reflex_testkit::cli::workspace_bin("reflex", "reflex-runtime")
}

fn workdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("workdir");
    d
}

/// A policy small enough to run at its control rate under software emulation (the test kit's
/// tiny bundle: 32x32 input averaged per channel, one linear layer, the reference arm's
/// manifest at 20 Hz, per-joint CAN at 0x100).
fn tiny_bundle(dir: &Path, capture: CaptureSpec) -> Manifest {
    reflex_testkit::bundles::write_tiny_bundle(dir, capture)
}

/// Boots a guest with `scenario`, `payload` and `bins` (in the guest's /usr/bin); returns its
/// console output.
fn run_guest_with(scenario: &str, payload: &Path, bins: &[&Path]) -> String {
    run_guest_env(scenario, payload, bins, &[])
}

/// [`run_guest_with`] with more environment for run-guest.sh (`REFLEX_QEMU_MODULES`,
/// `REFLEX_QEMU_DEVICES`).
fn run_guest_env(scenario: &str, payload: &Path, bins: &[&Path], env: &[(&str, &str)]) -> String {
    let root = repo_root();
    let t = Instant::now();
    let bins: Vec<String> = bins.iter().map(|b| b.display().to_string()).collect();
    let out = Command::new("bash")
        .arg(root.join("tests/qemu/run-guest.sh"))
        .arg(root.join("tests/qemu/scenarios").join(scenario))
        .arg(payload)
        .env("REFLEX_BIN", reflex_bin())
        .env("REFLEX_GUEST_BINS", bins.join(" "))
        .envs(env.iter().copied())
        .output()
        .expect("running tests/qemu/run-guest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!(
        "{scenario}: guest run took {:.1} s (exit {:?})",
        t.elapsed().as_secs_f64(),
        out.status.code()
    );
    assert!(
        out.status.success() && stdout.contains("@@SCENARIO_EXIT rc=0"),
        "guest run failed ({:?})\n--- stderr\n{stderr}\n--- console (end)\n{}",
        out.status.code(),
        tail(&stdout)
    );
    stdout
}

/// The lines between `@@BEGIN name` and `@@END name`.
fn section<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| *l != format!("@@BEGIN {name}"))
        .skip(1)
        .take_while(|l| *l != format!("@@END {name}"))
        .collect()
}

/// `value` of `key=value` on the first line starting with `@@MARKER`.
fn marker(out: &str, name: &str, key: &str) -> f64 {
    let tag = format!("@@{name} ");
    // The console may put terminal escapes before the guest's first line.
    let line = out
        .lines()
        .find_map(|l| l.find(&tag).map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no @@{name} marker in the console output:\n{}", tail(out)));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
}

/// The end of a long console output, for assertion messages.
fn tail(out: &str) -> &str {
    let mut at = out.len().saturating_sub(6000);
    while !out.is_char_boundary(at) {
        at += 1;
    }
    &out[at..]
}

/// The loop's counters (`counters: {json}` in reflex's report).
fn counters(report: &[&str]) -> serde_json::Value {
    let line = report
        .iter()
        .find_map(|l| l.strip_prefix("counters: "))
        .unwrap_or_else(|| panic!("no counters in reflex's output:\n{}", report.join("\n")));
    serde_json::from_str(line).expect("counters JSON")
}

#[test]
fn socketcan_sink_on_vcan() {
    if !enabled("socketcan_sink_on_vcan") {
        return;
    }
    let _guest = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let payload = workdir("qemu-socketcan");
    let capture = CaptureSpec {
        width: 320,
        height: 180,
        format: PixelFormat::Yuyv,
        fps: 30,
    };
    let m = tiny_bundle(&payload.join("bundle"), capture);
    generate_synthetic_episode(&m, &payload.join("episode"), 1.0, 30).expect("episode");
    let exe = std::env::current_exe().expect("test executable");
    let out = run_guest_with("socketcan.sh", &payload, &[exe.as_path()]);
    assert_eq!(
        marker(&out, "GUEST_TESTS", "rc"),
        0.0,
        "guest-side SocketCAN test failed:\n{}",
        tail(&out)
    );
    if let Some(line) = out
        .lines()
        .find_map(|l| l.find("@@CANSTATE ").map(|at| &l[at..]))
    {
        println!("{line}");
    }

    let report = section(&out, "reflex.out");
    let log = section(&out, "candump.log");
    let booted = marker(&out, "BOOTED", "uptime");
    let ready = marker(&out, "READY", "uptime");
    println!(
        "guest: kernel up at {booted:.1} s, drivers loaded at {ready:.1} s, scenario done at {:.1} s",
        marker(&out, "SCENARIO_EXIT", "uptime")
    );
    assert_eq!(
        marker(&out, "REFLEX_EXIT", "rc"),
        0.0,
        "reflex failed:\n{}",
        report.join("\n")
    );

    // What candump saw: only per-joint frames 0x100..0x105, whole commands in joint order.
    let base = 0x100;
    let mut commands: Vec<(u64, Vec<f32>, bool, u8)> = vec![];
    for (n, line) in log.iter().enumerate() {
        let (ts, iface, frame) =
            parse_candump_line(line).unwrap_or_else(|e| panic!("candump line {n} `{line}`: {e}"));
        assert_eq!(iface, "vcan0");
        let (joint, value, stop, tick) = decode_per_joint(&frame, base, 6)
            .unwrap_or_else(|| panic!("candump line {n} `{line}` is not a per-joint frame"));
        assert!(value.is_finite());
        if joint == 0 {
            commands.push((ts, vec![value], stop, tick));
        } else {
            let c = commands.last_mut().expect("a command starts at joint 0");
            assert_eq!(
                (c.1.len(), c.2, c.3),
                (joint, stop, tick),
                "line {n} `{line}`"
            );
            c.1.push(value);
        }
    }
    assert!(
        commands.len() > 40,
        "only {} commands on the bus",
        commands.len()
    );
    let last = commands.last().expect("commands");
    assert!(
        last.2,
        "the last command on the bus must be a stop: {last:?}"
    );
    assert_eq!(last.1.len(), 6);

    // The link was down for about a second: a gap in the log, then commands again.
    let gaps: Vec<u64> = commands.windows(2).map(|w| w[1].0 - w[0].0).collect();
    let longest_gap_ms = gaps.iter().max().copied().unwrap_or(0) / 1000;
    let before_down = marker(&out, "LINK_DOWN", "lines") as usize / 6;
    let after_up = marker(&out, "LINK_UP", "lines") as usize / 6;
    println!(
        "candump: {} commands ({} frames), longest gap {longest_gap_ms} ms, {} commands sent \
         while the link was down",
        commands.len(),
        log.len(),
        after_up.saturating_sub(before_down)
    );
    assert!(
        (700..3000).contains(&longest_gap_ms),
        "expected a ~1 s gap while vcan0 was down, longest is {longest_gap_ms} ms"
    );
    assert!(
        commands.len() > after_up + 10,
        "commands did not resume after the link came back"
    );

    // The loop kept its rate and counted the failed sends; the sink saw the bus-off report.
    let c = counters(&report);
    let (ticks, sink_errors, missed) = (
        c["ticks"].as_u64().unwrap_or(0),
        c["sink_errors"].as_u64().unwrap_or(0),
        c["missed_deadlines"].as_u64().unwrap_or(0),
    );
    println!("reflex counters: {c}");
    assert!(ticks >= 100, "{ticks} ticks in 6 s at 20 Hz");
    assert!(
        missed * 10 <= ticks,
        "{missed} missed deadlines in {ticks} ticks: the loop did not keep its rate"
    );
    assert!(
        (10..=60).contains(&sink_errors),
        "{sink_errors} sink errors: expected ~20 for 1 s down + ~10 for 0.5 s bus-off"
    );
    let sink_line = report
        .iter()
        .find(|l| l.contains("socketcan:vcan0:") && l.contains("commands"))
        .unwrap_or_else(|| panic!("no socketcan summary:\n{}", report.join("\n")));
    println!("{sink_line}");
    assert!(
        sink_line.contains(" 2 error frames, 1 bus-off"),
        "{sink_line}"
    );
    assert!(
        !report.iter().any(|l| l.contains("panicked")),
        "{}",
        report.join("\n")
    );
    // Every tick (and the final stop) is on the bus or a counted error. One command may be lost
    // in between: a write the kernel accepted in the instant the link went down, dropped before
    // candump's socket saw it (seen once in about ten runs under emulation).
    let accounted = commands.len() as u64 + sink_errors;
    assert!(
        accounted == ticks + 1 || accounted == ticks,
        "every tick (and the final stop) is either on the bus or a counted error: {accounted} of {}",
        ticks + 1
    );
}

#[test]
fn v4l2_camera_on_vivid() {
    if !enabled("v4l2_camera_on_vivid") {
        return;
    }
    let _guest = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let payload = workdir("qemu-v4l2");
    // vivid's webcam input has 320x180 among its discrete sizes.
    let capture = CaptureSpec {
        width: 320,
        height: 180,
        format: PixelFormat::Yuyv,
        fps: 30,
    };
    let m = tiny_bundle(&payload.join("bundle"), capture);
    // The episode only provides the joint state; frames come from vivid.
    generate_synthetic_episode(&m, &payload.join("episode"), 1.0, 30).expect("episode");
    let exe = std::env::current_exe().expect("test executable");
    let out = run_guest_with("v4l2.sh", &payload, &[exe.as_path()]);

    // The guest-side test's own assertions.
    assert_eq!(
        marker(&out, "GUEST_TESTS", "rc"),
        0.0,
        "guest-side V4L2 test failed:\n{}",
        tail(&out)
    );
    for line in out
        .lines()
        .filter_map(|l| l.find("@@V4L2 ").map(|at| &l[at..]))
    {
        println!("{line}");
    }
    assert!(out.contains("@@V4L2 format=yuyv"), "{}", tail(&out));
    assert!(out.contains("@@V4L2 format=grey"), "{}", tail(&out));
    assert!(out.contains("@@V4L2 format=nv12"), "{}", tail(&out));
    assert!(out.contains("@@V4L2 unplug"), "{}", tail(&out));

    // End to end: vivid -> reflex -> vcan0.
    let report = section(&out, "reflex.out");
    assert_eq!(
        marker(&out, "REFLEX_EXIT", "rc"),
        0.0,
        "reflex failed:\n{}",
        report.join("\n")
    );
    assert!(
        report
            .iter()
            .any(|l| l.contains("camera `/dev/v4l/by-id/platform-vivid.0-video-index0`: vivid")),
        "the camera is opened and named by its stable path:\n{}",
        report.join("\n")
    );
    let c = counters(&report);
    println!("reflex counters: {c}");
    let get = |k: &str| c[k].as_u64().unwrap_or(0);
    assert!(get("ticks") >= 60, "{c}");
    assert!(get("frames") >= 60, "camera delivered too few frames: {c}");
    assert!(
        get("fresh") * 10 >= get("ticks") * 8,
        "too few fresh commands: {c}"
    );
    assert!(get("missed_deadlines") * 10 <= get("ticks"), "{c}");
    assert_eq!(get("camera_errors"), 0, "{c}");
    let lines = marker(&out, "CANDUMP", "lines") as u64;
    assert_eq!(
        lines,
        6 * (get("ticks") + 1),
        "every tick and the final stop on the bus"
    );
    let last = section(&out, "candump.tail");
    let (_, _, frame) = parse_candump_line(last.last().expect("candump lines")).expect("line");
    assert!(decode_per_joint(&frame, 0x100, 6).is_some_and(|(j, _, stop, _)| j == 5 && stop));
}

/// Runs inside the guest (REFLEX_QEMU_GUEST=1, from tests/qemu/scenarios/v4l2.sh): the V4L2
/// camera on vivid's /dev/video0.
#[test]
fn guest_v4l2_capture() {
    use reflex_runtime::camera::v4l2::V4l2Camera;
    use reflex_runtime::clock::{Clock, MonotonicClock};
    use reflex_runtime::io::{Camera, FaultKind};
    if std::env::var("REFLEX_QEMU_GUEST").is_err() {
        println!("guest_v4l2_capture: runs only inside the QEMU guest (v4l2_camera_on_vivid)");
        return;
    }
    let dev = Path::new("/dev/video0");
    let clock = MonotonicClock::new();
    let mode = |width, height, format| CaptureSpec {
        width,
        height,
        format,
        fps: 30,
    };

    // Capture for `secs`, sleeping `pause_ms` between calls; checks every frame.
    let capture = |cam: &mut V4l2Camera, spec: &CaptureSpec, secs: f64, pause_ms: u64| {
        let frame_len = match spec.format {
            PixelFormat::Yuyv => spec.width * spec.height * 2,
            PixelFormat::Nv12 => spec.width * spec.height * 3 / 2,
            _ => spec.width * spec.height,
        } as usize;
        let (mut frames, mut last_seq, mut max_age_ms) = (0u64, None::<u64>, 0f64);
        let start = clock.now_ns();
        while clock.now_ns() - start < (secs * 1e9) as u64 {
            let now = clock.now_ns();
            match cam.latest(now, now + 50_000_000) {
                Ok(Some(f)) => {
                    assert_eq!(f.data.len(), frame_len);
                    assert_eq!((f.meta.width, f.meta.height), (spec.width, spec.height));
                    assert_eq!(f.meta.format, spec.format);
                    assert!(
                        last_seq.is_none_or(|l| f.meta.seq > l),
                        "sequence must increase"
                    );
                    last_seq = Some(f.meta.seq);
                    let after = clock.now_ns();
                    assert!(f.meta.capture_ns <= after, "frame from the future");
                    max_age_ms = max_age_ms.max((after - f.meta.capture_ns) as f64 / 1e6);
                    frames += 1;
                }
                Ok(None) => {}
                Err(e) => panic!("capture: {e}"),
            }
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        }
        (frames, max_age_ms)
    };

    for spec in [
        mode(320, 180, PixelFormat::Yuyv),
        mode(640, 480, PixelFormat::Grey),
        mode(320, 180, PixelFormat::Nv12),
    ] {
        let mut cam = V4l2Camera::open(dev, &spec).expect("open vivid");
        let (frames, max_age_ms) = capture(&mut cam, &spec, 1.5, 1);
        let c = cam.counters();
        println!(
            "@@V4L2 format={} size={}x{} frames={frames} dropped={} max_age_ms={max_age_ms:.1}",
            spec.format.as_str(),
            spec.width,
            spec.height,
            c.dropped
        );
        assert!(frames >= 20, "{frames} frames in 1.5 s at 30 fps");
        // A slow reader gets the newest frame, and the older ones are counted as dropped.
        let (slow, slow_age_ms) = capture(&mut cam, &spec, 1.0, 150);
        let dropped = cam.counters().dropped - c.dropped;
        println!(
            "@@V4L2 slow_reader format={} frames={slow} dropped={dropped} max_age_ms={slow_age_ms:.1}",
            spec.format.as_str()
        );
        assert!(
            dropped >= slow,
            "a reader at ~6 Hz must skip frames of a 30 fps camera"
        );
        assert!(
            slow_age_ms < 120.0,
            "stale frame handed out: {slow_age_ms} ms old"
        );
    }

    // A format vivid does not have: the error lists what it has.
    let err = V4l2Camera::open(dev, &mode(320, 180, PixelFormat::Mjpeg))
        .err()
        .expect("vivid has no MJPEG");
    println!("@@V4L2 mjpeg_error {err}");
    assert!(
        err.to_string().contains("offers:") && err.to_string().contains("YUYV"),
        "{err}"
    );
    let err = V4l2Camera::open(dev, &mode(123, 77, PixelFormat::Yuyv))
        .err()
        .expect("no such size");
    assert!(err.to_string().contains("proposes"), "{err}");

    // Unplug: unbind vivid while streaming, then bind it again.
    let spec = mode(320, 180, PixelFormat::Yuyv);
    let mut cam = V4l2Camera::open(dev, &spec).expect("open vivid");
    capture(&mut cam, &spec, 0.3, 1);
    let drv = Path::new("/sys/bus/platform/drivers/vivid");
    std::fs::write(drv.join("unbind"), "vivid.0").expect("unbind vivid");
    let t_unplug = clock.now_ns();
    let mut degraded = 0;
    let mut back_after_ms = None;
    let mut rebound = false;
    while clock.now_ns() - t_unplug < 5_000_000_000 {
        let now = clock.now_ns();
        if !rebound && now - t_unplug > 500_000_000 {
            std::fs::write(drv.join("bind"), "vivid.0").expect("bind vivid");
            rebound = true;
        }
        match cam.latest(now, now + 20_000_000) {
            Ok(Some(_)) if rebound => {
                back_after_ms = Some((clock.now_ns() - t_unplug) / 1_000_000);
                break;
            }
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.kind, FaultKind::Degraded, "{e}");
                degraded += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let c = cam.counters();
    println!(
        "@@V4L2 unplug degraded_calls={degraded} lost={} reopened={} frames_back_after_ms={back_after_ms:?}",
        c.lost, c.reopened
    );
    assert!(degraded > 0 && c.lost == 1 && c.reopened >= 1, "{c:?}");
    assert!(
        back_after_ms.is_some(),
        "no frames after the device came back"
    );
}

/// Runs inside the guest (REFLEX_QEMU_GUEST=1, from tests/qemu/scenarios/socketcan.sh): the
/// SocketCAN sink and state source on vcan0, closing the loop on the bus: what the sink sends at
/// 0x200 the state source reads back.
#[test]
fn guest_socketcan_state() {
    use reflex_runtime::can::codec::{Codec, Frames};
    use reflex_runtime::can::socketcan::{SocketCanSink, SocketCanStateSource};
    use reflex_runtime::control::safety::SafetyFilter;
    use reflex_runtime::io::{CommandSink, FaultKind, StateSource};
    if std::env::var("REFLEX_QEMU_GUEST").is_err() {
        println!("guest_socketcan_state: runs only inside the QEMU guest (socketcan_sink_on_vcan)");
        return;
    }
    let sh = |cmd: &str| {
        let ok = Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "`{cmd}` failed");
    };
    let capture = CaptureSpec {
        width: 320,
        height: 180,
        format: PixelFormat::Yuyv,
        fps: 30,
    };
    let arch = PolicyArch {
        encoder: EncoderKind::Resnet18,
        cameras: vec!["front".into()],
        shared_encoder: false,
        state_dim: 6,
        action_dim: 6,
        hidden: vec![],
        head: HeadKind::Single,
    };
    let m = reflex_models::reference::reference_manifest(&arch, "state", capture);
    let mut filter = SafetyFilter::new(&m.action, 1000.0, false).expect("filter");
    let codec = Codec::per_joint(0x200, 6).expect("codec");
    let decoder = codec.feedback(&m.state.names, 0x200).expect("decoder");
    let mut sink = SocketCanSink::open("vcan0", codec).expect("sink");
    let mut state =
        SocketCanStateSource::open("vcan0", decoder, Frames::new()).expect("state source");
    let mut out = [0f32; 6];
    assert_eq!(state.latest(0, &mut out).expect("nothing yet"), None);

    // Round trip: every command comes back as one complete state, bit for bit.
    for tick in 0..50u64 {
        let t = tick as f32 * 0.01;
        let cmd = filter
            .filter(&[t, -t, 0.5 * t, 0.1, -0.1, 0.01], tick)
            .command;
        sink.send(&cmd, tick).expect("send");
        let mut got = None;
        for _ in 0..100 {
            got = state.latest(tick * 1000, &mut out).expect("read");
            if got.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(got, Some(tick * 1000), "tick {tick}");
        assert_eq!(out.as_slice(), cmd.values(), "tick {tick}");
    }

    // A state needs every joint: five of six is not one; a malformed frame is counted.
    let f = |v: f32| {
        v.to_le_bytes()
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
    };
    for j in 0..5 {
        sh(&format!(
            "cansend vcan0 20{j}#{}00000000",
            f(1.0 + j as f32)
        ));
    }
    sh("cansend vcan0 205#0000803F02000000"); // reserved flag bit set
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(state.latest(1, &mut out).expect("read"), None);
    sh(&format!("cansend vcan0 205#{}00000000", f(6.0)));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(state.latest(2, &mut out).expect("read"), Some(2));
    assert_eq!(out, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);

    // Interface down: both sides report Degraded, and work again once it is up.
    sh("ip link set vcan0 down");
    let err = state.latest(3, &mut out).expect_err("down");
    assert_eq!(err.kind, FaultKind::Degraded, "{err}");
    let cmd = filter.filter(&[0.0; 6], 100).command;
    let err = sink.send(&cmd, 3).expect_err("down");
    assert_eq!(err.kind, FaultKind::Degraded, "{err}");
    sh("ip link set vcan0 up");
    sink.send(&cmd, 4).expect("send after up");
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(state.latest(5, &mut out).expect("read after up"), Some(5));
    let c = state.counters();
    println!(
        "@@CANSTATE states={} frames={} malformed={} errors={} sink={:?}",
        c.states,
        c.frames,
        c.malformed,
        c.errors,
        sink.counters()
    );
    assert_eq!((c.states, c.malformed, c.errors), (52, 1, 1), "{c:?}");
}

/// `reflex run` against simulated Damiao MIT motors on vcan0, with the e-stop on the bus: the
/// state comes from the motors' replies, the start sequence (command timeout, enable) precedes
/// every command, an e-stop frame turns the commands into damped stops until it is released and
/// an arm frame arrives.
#[test]
fn mit_motors_and_can_estop_on_vcan() {
    if !enabled("mit_motors_and_can_estop_on_vcan") {
        return;
    }
    let _guest = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let payload = workdir("qemu-motors");
    let capture = CaptureSpec {
        width: 320,
        height: 180,
        format: PixelFormat::Yuyv,
        fps: 30,
    };
    let bundle = payload.join("bundle");
    let m = tiny_bundle(&bundle, capture);
    generate_synthetic_episode(&m, &payload.join("episode"), 1.0, 30).expect("episode");
    // Every joint an MIT motor (the reference gripper becomes rotary), Damiao, damped stops.
    let can = reflex_models::reference::example_mit_can(
        6,
        reflex_models::manifest::MitFlavor::Damiao,
        reflex_models::manifest::MitStop::Damp,
    );
    reflex_models::reference::set_bundle_can(&bundle, can).expect("MIT bundle");
    reflex_models::Bundle::load(&bundle).expect("the MIT bundle is valid");

    let exe = std::env::current_exe().expect("test executable");
    let out = run_guest_with("motors.sh", &payload, &[exe.as_path()]);
    let report = section(&out, "reflex.out");
    assert_eq!(
        marker(&out, "REFLEX_EXIT", "rc"),
        0.0,
        "reflex failed:\n{}",
        report.join("\n")
    );
    assert_eq!(
        marker(&out, "SIM_EXIT", "rc"),
        0.0,
        "motor simulator failed:\n{}",
        section(&out, "sim.out").join("\n")
    );
    let sim = |k: &str| marker(&out, "SIM", k) as u64;
    println!(
        "simulated motors: {} state requests, {} timeout writes, {} enables, {} commands ({} \
         damped), {} commands before enable",
        sim("requests"),
        sim("timeouts"),
        sim("enables"),
        sim("commands"),
        sim("damped"),
        sim("disabled_commands")
    );
    assert!(sim("requests") >= 1, "the state was never requested");
    assert_eq!(
        sim("disabled_commands"),
        0,
        "a motor got a command before its enable frame"
    );
    assert!(
        sim("timeouts") >= 6,
        "each motor's command timeout is set at enable"
    );
    assert!(
        sim("commands") >= 6 * 40,
        "too few commands reached the motors"
    );

    // The bus, in order: requests and timeouts/enables before the first command of each motor.
    let log = section(&out, "candump.log");
    let frames: Vec<(String, reflex_runtime::can::CanFrame)> = log
        .iter()
        .map(|l| {
            let (_, _, f) = parse_candump_line(l).unwrap_or_else(|e| panic!("`{l}`: {e}"));
            (l.to_string(), f)
        })
        .collect();
    let is_command = |f: &reflex_runtime::can::CanFrame| {
        (1..=6).contains(&f.id()) && f.data().len() == 8 && f.data()[..7] != [0xFF; 7]
    };
    let kp_bits = |f: &reflex_runtime::can::CanFrame| {
        (u32::from(f.data()[3] & 0xF) << 8) | u32::from(f.data()[4])
    };
    let first_command = frames
        .iter()
        .position(|(_, f)| is_command(f))
        .expect("no command on the bus");
    for id in 1..=6u32 {
        let enable = frames
            .iter()
            .position(|(_, f)| {
                f.id() == id && f.data() == [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFC]
            })
            .unwrap_or_else(|| panic!("motor {id} never enabled"));
        let timeout = frames
            .iter()
            .position(|(_, f)| {
                f.id() == 0x7FF
                    && f.data().len() == 8
                    && f.data()[0] as u32 == id
                    && f.data()[2..4] == [0x55, 9]
            })
            .unwrap_or_else(|| panic!("motor {id}: no command timeout written"));
        assert!(
            timeout < enable && enable < first_command,
            "motor {id}: timeout {timeout}, enable {enable}, first command {first_command}"
        );
    }
    // E-stop: from (shortly after) the press to the arm frame, every command is a damped stop
    // (kp = 0); normal commands (kp = 20 -> 0x0A3) come back after the arm frame.
    let press = frames
        .iter()
        .position(|(_, f)| f.id() == 0xE0 && f.data() == [1])
        .expect("e-stop press frame on the bus");
    let release = frames
        .iter()
        .position(|(_, f)| f.id() == 0xE0 && f.data() == [0])
        .expect("e-stop release frame");
    let arm = frames
        .iter()
        .position(|(_, f)| f.id() == 0xE1)
        .expect("arm frame");
    assert!(press < release && release < arm);
    let commands_between = |a: usize, b: usize| -> Vec<u32> {
        frames[a..b]
            .iter()
            .filter(|(_, f)| is_command(f))
            .map(|(_, f)| kp_bits(f))
            .collect()
    };
    let before = commands_between(first_command, press);
    assert!(
        before.iter().filter(|kp| **kp == 0x0A3).count() > 12,
        "normal commands before the e-stop: {before:?}"
    );
    // At most one tick's commands (6 frames) may already be on their way when the press lands.
    let during = commands_between(press, arm);
    assert!(
        during.len() >= 6 * 10,
        "the loop kept sending during the e-stop: {}",
        during.len()
    );
    assert!(
        during.iter().skip(6).all(|kp| *kp == 0),
        "commands during the e-stop must be damped stops (kp = 0): {during:?}"
    );
    let after = commands_between(arm, frames.len());
    assert!(
        after.iter().filter(|kp| **kp == 0x0A3).count() >= 12,
        "normal commands resume after release + arm: {after:?}"
    );
    let c = counters(&report);
    println!("reflex counters: {c}");
    assert!(c["estop_ticks"].as_u64().unwrap_or(0) >= 20, "{c}");

    // `reflex can send --state`: seeded from the motors' replies, ramped at the bundle's rate
    // limits, it ends on the target, which the simulated motors then report.
    let send = section(&out, "cansend.out").join("\n");
    assert_eq!(
        marker(&out, "CANSEND", "rc"),
        0.0,
        "reflex can send failed:\n{send}"
    );
    println!("{send}");
    let last = send
        .lines()
        .find_map(|l| l.split("last: [").nth(1))
        .and_then(|r| r.split(']').next())
        .unwrap_or_else(|| panic!("no last command in:\n{send}"));
    let last: Vec<f32> = last
        .split(", ")
        .map(|v| v.parse().expect("number"))
        .collect();
    assert_eq!(last, [0.5, -0.5, 0.25, 0.0, 0.1, 0.04], "{send}");
    assert!(
        c["stale_state_ticks"].as_u64().unwrap_or(u64::MAX) * 10
            <= c["ticks"].as_u64().unwrap_or(0),
        "the motors' replies kept the state fresh: {c}"
    );
}

/// Runs inside the guest (REFLEX_QEMU_GUEST=1, from tests/qemu/scenarios/motors.sh): six
/// Damiao-like MIT motors on vcan0 (IDs 1..6, replies on 0x11..0x16). They answer state requests
/// and enable frames with their state, follow commands only once enabled (position = the
/// command's), and count what they saw until /tmp/sim.stop exists.
#[test]
fn guest_mit_motor_sim() {
    use reflex_runtime::can::codec::{float_to_uint, uint_to_float};
    use socketcan::{CanFrame as SocketFrame, CanSocket, EmbeddedFrame, Socket, StandardId};
    if std::env::var("REFLEX_QEMU_GUEST").is_err() {
        println!("guest_mit_motor_sim: runs only inside the QEMU guest (mit_motors_and_can_estop_on_vcan)");
        return;
    }
    let sock = CanSocket::open("vcan0").expect("vcan0");
    sock.set_read_timeout(std::time::Duration::from_millis(50))
        .expect("timeout");
    let mut enabled = [false; 6];
    let mut pos = [0.3f32, -0.2, 0.1, 0.0, 0.2, 0.05];
    let (mut requests, mut timeouts, mut enables, mut commands, mut damped, mut disabled_commands) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let reply = |i: usize, enabled: bool, p: f32| {
        let p = float_to_uint(p, -12.5, 12.5, 16);
        let (v, t) = (2047u32, 2047u32);
        let status = if enabled { 1u8 } else { 0 };
        let data = [
            (status << 4) | (i as u8 + 1),
            (p >> 8) as u8,
            p as u8,
            (v >> 4) as u8,
            (((v & 0xF) << 4) | (t >> 8)) as u8,
            t as u8,
            30,
            30,
        ];
        let id = StandardId::new(0x11 + i as u16).expect("id");
        let f = SocketFrame::new(id, &data).expect("frame");
        sock.write_frame(&f).expect("reply");
    };
    while !Path::new("/tmp/sim.stop").exists() {
        let Ok(frame) = sock.read_frame() else {
            continue;
        };
        let id = socketcan::Frame::raw_id(&frame);
        let data = socketcan::EmbeddedFrame::data(&frame).to_vec();
        if id == 0x7FF && data.len() >= 4 {
            let i = usize::from(data[0]).wrapping_sub(1);
            if i >= 6 {
                continue;
            }
            match data[2] {
                0xCC => {
                    requests += 1;
                    reply(i, enabled[i], pos[i]);
                }
                0x55 if data[3] == 9 => timeouts += 1,
                _ => {}
            }
        } else if (1..=6).contains(&id) && data.len() == 8 {
            let i = id as usize - 1;
            if data[..7] == [0xFF; 7] {
                match data[7] {
                    0xFC => {
                        enables += 1;
                        enabled[i] = true;
                    }
                    0xFD => enabled[i] = false,
                    _ => {}
                }
                reply(i, enabled[i], pos[i]);
            } else if enabled[i] {
                commands += 1;
                let kp = (u32::from(data[3] & 0xF) << 8) | u32::from(data[4]);
                if kp == 0 {
                    damped += 1;
                }
                pos[i] = uint_to_float(
                    (u32::from(data[0]) << 8) | u32::from(data[1]),
                    -12.5,
                    12.5,
                    16,
                );
                reply(i, true, pos[i]);
            } else {
                disabled_commands += 1;
            }
        }
    }
    println!(
        "@@SIM requests={requests} timeouts={timeouts} enables={enables} commands={commands} \
         damped={damped} disabled_commands={disabled_commands}"
    );
}

/// A DBC bundle whose command and state messages are 16-byte CAN FD frames: six joints as signed
/// 16-bit signals at 0.0001, the last ones past byte 8, plus enable and stop bits.
const FD_DBC: &str = r#"VERSION ""

NS_ :

BS_:

BU_: Board Arm

BO_ 512 ArmCmd: 16 Board
 SG_ ShoulderPan : 0|16@1- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ ShoulderLift : 16|16@1- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ ElbowFlex : 32|16@1- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ WristFlex : 48|16@1- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ WristRoll : 64|16@1- (0.0001,0) [-3.2|3.2] "rad" Arm
 SG_ Gripper : 80|16@1- (0.0001,0) [-0.4|0.4] "m" Arm
 SG_ Enable : 96|1@1+ (1,0) [0|1] "" Arm
 SG_ Stop : 97|1@1+ (1,0) [0|1] "" Arm

BO_ 768 ArmState: 16 Arm
 SG_ PanPos : 0|16@1- (0.0001,0) [-3.2|3.2] "rad" Board
 SG_ LiftPos : 16|16@1- (0.0001,0) [-3.2|3.2] "rad" Board
 SG_ ElbowPos : 32|16@1- (0.0001,0) [-3.2|3.2] "rad" Board
 SG_ WristFlexPos : 48|16@1- (0.0001,0) [-3.2|3.2] "rad" Board
 SG_ WristRollPos : 64|16@1- (0.0001,0) [-3.2|3.2] "rad" Board
 SG_ GripperPos : 80|16@1- (0.0001,0) [-0.4|0.4] "m" Board
"#;

/// CAN FD on vcan (MTU 72): `reflex can send --state can:vcan0` reads the state from 16-byte FD
/// frames and sends 16-byte FD commands; a classic vcan is refused with an error naming its MTU.
#[test]
fn can_fd_on_vcan() {
    use reflex_models::manifest::{CanSpec, DbcSpec};
    if !enabled("can_fd_on_vcan") {
        return;
    }
    let _guest = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let payload = workdir("qemu-canfd");
    let capture = CaptureSpec {
        width: 320,
        height: 180,
        format: PixelFormat::Yuyv,
        fps: 30,
    };
    let bundle = payload.join("bundle");
    let m = tiny_bundle(&bundle, capture);
    std::fs::write(bundle.join("robot.dbc"), FD_DBC).expect("dbc");
    let cmd = [
        "ShoulderPan",
        "ShoulderLift",
        "ElbowFlex",
        "WristFlex",
        "WristRoll",
        "Gripper",
    ];
    let spec = DbcSpec {
        file: "robot.dbc".into(),
        sha256: reflex_models::bundle::sha256_bytes(FD_DBC.as_bytes()),
        actions: m
            .action
            .names
            .iter()
            .zip(cmd)
            .map(|(a, s)| (a.clone(), format!("ArmCmd.{s}")))
            .collect(),
        constants: [("ArmCmd.Enable".to_string(), 1.0)].into(),
        stop_signal: Some("ArmCmd.Stop".into()),
        fd_brs: true,
        feedback: m
            .state
            .names
            .iter()
            .zip([
                "PanPos",
                "LiftPos",
                "ElbowPos",
                "WristFlexPos",
                "WristRollPos",
                "GripperPos",
            ])
            .map(|(n, s)| (n.clone(), format!("ArmState.{s}")))
            .collect(),
    };
    reflex_models::reference::set_bundle_can(&bundle, CanSpec::Dbc(spec)).expect("FD bundle");
    let loaded = reflex_models::Bundle::load(&bundle).expect("bundle");
    let codec = reflex_runtime::can::codec::Codec::from_bundle(&loaded).expect("codec");
    assert!(codec.uses_fd());

    let out = run_guest_with("canfd.sh", &payload, &[]);
    assert_eq!(marker(&out, "MTU", "vcan0"), 72.0);
    let send = section(&out, "send.out").join("\n");
    assert_eq!(marker(&out, "SEND", "rc"), 0.0, "{send}");
    println!("{send}");
    assert!(
        send.contains("last: [0.5, -0.5, 0.25, 0.0, 0.1, 0.04]"),
        "{send}"
    );
    let classic = section(&out, "classic.out").join("\n");
    assert_ne!(marker(&out, "CLASSIC", "rc"), 0.0, "{classic}");
    assert!(
        classic.contains("`vcan1` is in classic CAN mode (MTU 16"),
        "{classic}"
    );

    // What candump saw: the robot's 16-byte state frames and reflex's 16-byte commands, ramping
    // from the measured 0.1 rad (rate limit 1.5 rad/s at 20 Hz: 0.075 rad a tick) to 0.5.
    let log = section(&out, "candump.log");
    let mut commands = vec![];
    for l in &log {
        let (_, _, f) = parse_candump_line(l).unwrap_or_else(|e| panic!("`{l}`: {e}"));
        assert!(f.is_fd() && f.data().len() == 16, "`{l}`");
        if f.id() == 0x200 {
            let e = codec.explain(&f).expect("an ArmCmd frame");
            commands.push(e.values[0].1);
        }
    }
    println!(
        "candump: {} FD frames, {} commands; shoulder_pan {:?} .. {:?}",
        log.len(),
        commands.len(),
        commands.first(),
        commands.last()
    );
    assert!(commands.len() >= 15, "{commands:?}");
    assert!(
        (commands[0] - 0.175).abs() < 1e-3,
        "the first command is one rate-limited step from the measured state: {commands:?}"
    );
    assert!(
        (commands[commands.len() - 1] - 0.5).abs() < 1e-3,
        "{commands:?}"
    );
}

/// `reflex doctor` in the guest against real drivers: vivid, vcan, and QEMU's emulated Kvaser
/// PCIcan (an SJA1000 CAN controller with real bit timing, driven by the kernel's `kvaser_pci`).
/// A camera that does not exist, a CAN interface that is down and one at the wrong bitrate are
/// each a FAIL with the fix; fixed, they PASS.
#[test]
fn doctor_on_vivid_vcan_and_an_emulated_can_controller() {
    if !enabled("doctor_on_vivid_vcan_and_an_emulated_can_controller") {
        return;
    }
    let _guest = GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let payload = workdir("qemu-doctor");
    let capture = CaptureSpec {
        width: 320,
        height: 180,
        format: PixelFormat::Yuyv,
        fps: 30,
    };
    tiny_bundle(&payload.join("bundle"), capture);
    std::fs::write(
        payload.join("board.toml"),
        "name = \"qemu-guest\"\ndescription = \"the QEMU test guest\"\narch = \"x86_64\"\n\
         [[can]]\nname = \"can0\"\nbitrate = 1000000\nrestart_ms = 100\n\
         [[can]]\nname = \"vcan0\"\nbitrate = 1000000\n\
         [[can]]\nname = \"vcan1\"\nbitrate = 1000000\n\
         [[cameras]]\nname = \"front\"\ndevice = \"/dev/video0\"\n",
    )
    .expect("profile");
    let out = run_guest_env(
        "doctor.sh",
        &payload,
        &[],
        &[
            ("REFLEX_QEMU_MODULES", "kvaser_pci"),
            (
                "REFLEX_QEMU_DEVICES",
                "-object can-bus,id=canbus0 -device kvaser_pci,canbus=canbus0",
            ),
        ],
    );
    let first = section(&out, "doctor1");
    println!("first run:\n{}", first.join("\n"));
    let line = |lines: &[&str], start: &str| -> String {
        lines
            .iter()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line starting `{start}` in\n{}", lines.join("\n")))
            .to_string()
    };
    let can0 = line(&first, "FAIL  can can0: ");
    assert!(
        can0.contains("bitrate 500000 bit/s, expected 1000000")
            && can0.contains("fix: `sudo ip link set can0 down; sudo ip link set can0 type can bitrate 1000000 restart-ms 100"),
        "{can0}"
    );
    let vcan1 = line(&first, "FAIL  can vcan1: ");
    assert!(
        vcan1.contains("vcan interface is down")
            && vcan1.contains("fix: `sudo ip link set vcan1 up`"),
        "{vcan1}"
    );
    let wrist = line(&first, "FAIL  camera wrist: ");
    assert!(
        wrist.contains("/dev/video9 does not exist") && wrist.contains("v4l2-ctl --list-devices"),
        "{wrist}"
    );
    let front = line(&first, "PASS  camera front: ");
    assert!(front.contains("offers yuyv 320x180 at 30 fps"), "{front}");
    line(&first, "PASS  bundle: ");
    line(&first, "WARN  can vcan0: ");
    assert_eq!(marker(&out, "DOCTOR1", "rc"), 2.0, "a FAIL exits 2");
    assert!(first.iter().all(|l| !l.contains("panicked")));

    let second = section(&out, "doctor2");
    println!("second run:\n{}", second.join("\n"));
    let can0 = line(&second, "PASS  can can0: ");
    assert!(can0.contains("ERROR-ACTIVE, 1000000 bit/s"), "{can0}");
    line(&second, "WARN  can vcan1: ");
    assert!(
        second.iter().all(|l| !l.starts_with("FAIL")),
        "{}",
        second.join("\n")
    );
    // WARNs remain (virtual CAN, no e-stop, no systemd in the guest): exit 3.
    assert_eq!(marker(&out, "DOCTOR2", "rc"), 3.0);
}
