//! The `reflex` binary as a user runs it.

use reflex_testkit::bundles::demo_bundle;
use reflex_testkit::cli::{self, Cli};
use reflex_testkit::dirs::WorkDir;

fn reflex() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_reflex"))
}

#[test]
fn demo_runs_end_to_end_and_writes_a_candump_log() {
    let _real_time = reflex_testkit::serial::real_time();
    let dir = WorkDir::new("cli-demo");
    let out = reflex()
        .args(["demo", "--seconds", "2", "--workdir"])
        .arg(&*dir)
        .run()
        .success();
    let stdout = &out.stdout;
    assert!(stdout.contains("stage timings"), "{stdout}");
    assert!(stdout.contains("inference"), "{stdout}");
    assert!(stdout.contains("start-up"), "{stdout}");
    let log = std::fs::read_to_string(dir.join("can0.log")).expect("log written");
    let lines: Vec<&str> = log.lines().collect();
    // 2 s at 20 Hz, 6 joints, plus the final stop command.
    assert!(lines.len() >= 30 * 6, "{} lines", lines.len());
    assert!(
        lines[0].starts_with('(') && lines[0].contains(") can0 100#"),
        "{}",
        lines[0]
    );
    // The last command is the stop: flags byte (5th data byte) = 01.
    let last = lines.last().expect("lines");
    let data = last.split('#').nth(1).expect("data");
    assert_eq!(&data[8..10], "01", "last frame is a stop: {last}");
    // `check` validates the bundle the demo built.
    let out = reflex()
        .args(["check", "--bundle"])
        .arg(dir.join("resnet18-chunk"))
        .run()
        .success();
    assert!(out.stdout.contains("image.front"));
}

#[test]
fn check_names_the_problem_of_a_broken_bundle() {
    let dir = WorkDir::new("cli-broken");
    std::fs::write(dir.join("policy.toml"), "format_version = 7\n").expect("write");
    let out = reflex()
        .args(["check", "--bundle"])
        .arg(&*dir)
        .run()
        .failure();
    let err = &out.stderr;
    assert!(err.contains("unsupported bundle version 7"), "{err}");
    assert!(err.contains("policy.toml"), "{err}");
}

#[test]
fn help_teaches() {
    let out = reflex().arg("--help").run();
    let s = &out.stdout;
    for w in ["run", "demo", "check"] {
        assert!(s.contains(w), "{s}");
    }
    let out = reflex().args(["run", "--help"]).run();
    let s = &out.stdout;
    assert!(
        s.contains("--allow-unlimited") && s.contains("replay:"),
        "{s}"
    );
    // One name for one thing: `demo --duration` as `run --duration`; the old `--seconds` is a
    // hidden alias that the help names (and the demo test above still uses).
    let out = reflex().args(["demo", "--help"]).run();
    let s = &out.stdout;
    assert!(
        s.contains("--duration <DURATION>") && s.contains("`--seconds`, its old name"),
        "{s}"
    );
    assert!(!s.contains("--seconds <"), "{s}");
}

#[test]
fn sigint_stops_the_run_with_a_stop_command() {
    // The demo's bundle, and an episode as the demo makes it.
    let _real_time = reflex_testkit::serial::real_time();
    let dir = WorkDir::new("cli-sigint");
    let bundle = demo_bundle();
    let manifest = reflex_models::Bundle::load(bundle)
        .expect("demo bundle")
        .manifest;
    reflex_runtime::camera::replay::generate_synthetic_episode(
        &manifest,
        &dir.join("episode"),
        4.0,
        30,
    )
    .expect("episode");
    let log = dir.join("sigint.log");
    let (child, command) = reflex()
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg("--camera")
        .arg(format!("front=replay:{}", dir.join("episode").display()))
        .arg("--can")
        .arg(format!("candump:{}", log.display()))
        .spawn();
    // Wait until commands flow, then interrupt like Ctrl-C does.
    let start = std::time::Instant::now();
    while std::fs::read_to_string(&log)
        .map(|s| s.lines().count())
        .unwrap_or(0)
        < 60
    {
        assert!(start.elapsed().as_secs() < 60, "no commands within 60 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Cli::new("kill")
        .args(["-INT", &child.id().to_string()])
        .run()
        .success();
    let out = cli::wait(child, command).success();
    let text = std::fs::read_to_string(&log).expect("log");
    let last = text.lines().last().expect("frames");
    let data = last.split('#').nth(1).expect("data");
    assert_eq!(&data[8..10], "01", "the last command is a stop: {last}");
    assert!(out.stdout.contains("stage timings"));
}

#[test]
fn malformed_specs_fail_before_the_bundle_is_loaded_naming_the_accepted_forms() {
    let nowhere = "/nonexistent/reflex-bundle";
    let run = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["run", "--bundle", nowhere]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            run(&["--camera", "video0", "--can", "null"]),
            "video0",
            "expected replay:EPISODE_DIR or a V4L2 device (/dev/videoN, /dev/v4l/by-id/...)",
        ),
        (
            run(&["--camera", "replay:ep", "--state", "vcan0", "--can", "null"]),
            "vcan0",
            "expected replay:EPISODE_DIR or can:IFACE[:BASE_ID]",
        ),
        (
            run(&["--camera", "replay:ep", "--can", "/dev/can0"]),
            "/dev/can0",
            "expected a CAN interface name (can0, vcan0), candump:FILE or null",
        ),
        (
            run(&[
                "--camera",
                "replay:ep",
                "--can",
                "null",
                "--estop",
                "button:3",
            ]),
            "button:3",
            "expected gpio:CHIP:LINE[:active-low][:debounce=MS] or can:IFACE:ID[:timeout=MS]",
        ),
        (
            run(&[
                "--camera",
                "replay:ep",
                "--can",
                "null",
                "--estop",
                "can:vcan0:0E0",
                "--arm",
                "can:vcan0:0E1:timeout=5",
            ]),
            "timeout=5",
            "expected can:IFACE:ID (ID in hex; any frame with that ID = arm)",
        ),
        (
            run(&[
                "--camera",
                "replay:ep",
                "--can",
                "null",
                "--estop",
                "can:vcan0:0E0",
                "--status-led",
                "gpio:gpiochip0:led",
            ]),
            "`led` is not a line number",
            "expected gpio:CHIP:LINE",
        ),
        (
            [
                "can",
                "send",
                "--bundle",
                nowhere,
                "--can",
                "vcan0",
                "--state",
                "can:vcan0:zz",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(["shoulder_pan=0".to_string()])
            .collect(),
            "`zz` is not a hex CAN ID",
            "expected replay:EPISODE_DIR or can:IFACE[:BASE_ID]",
        ),
    ];
    for (args, value, forms) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_reflex"))
            .args(&args)
            .output()
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        // clap's usage error: exit status 2, the flag, the value and the accepted forms; the
        // bundle (which does not exist) was never opened.
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("invalid value"), "{args:?}: {err}");
        assert!(
            err.contains(value) && err.contains(forms),
            "{args:?}: {err}"
        );
        assert!(!err.contains("loading bundle"), "{args:?}: {err}");
    }
    // `--help` lists the forms.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reflex"))
        .args(["run", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for form in [
        "replay:EPISODE_DIR",
        "can:IFACE[:BASE_ID]",
        "candump:FILE",
        "gpio:CHIP:LINE[:active-low][:debounce=MS]",
        "can:IFACE:ID[:timeout=MS]",
    ] {
        assert!(help.contains(form), "{form}: {help}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reflex"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Exit status:"));
}

#[test]
fn check_warns_in_its_verdict_line_when_the_bundle_has_no_limits() {
    let dir = WorkDir::new("cli-no-limits");
    let mut m = reflex_testkit::bundles::write_tiny_bundle(
        &dir,
        reflex_models::reference::default_capture(),
    );
    let verdict = |out: &cli::Run| {
        out.stdout
            .lines()
            .rfind(|l| l.starts_with("bundle "))
            .unwrap_or_default()
            .to_string()
    };
    let out = reflex()
        .args(["check", "--bundle"])
        .arg(&*dir)
        .run()
        .success();
    assert!(!verdict(&out).contains("WARNING"), "{out}");
    m.action.limits = None;
    std::fs::write(
        dir.join(reflex_models::manifest::MANIFEST_FILE),
        m.to_toml().expect("toml"),
    )
    .expect("write");
    // Valid, so exit 0, but `run` would refuse it: the last line says so.
    let out = reflex()
        .args(["check", "--bundle"])
        .arg(&*dir)
        .run()
        .success();
    let line = verdict(&out);
    assert!(
        line.contains("OK") && line.contains("WARNING: no [action.limits]"),
        "{out}"
    );
}
