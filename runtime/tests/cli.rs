//! The `reflex` binary as a user runs it.

use std::path::PathBuf;
use std::process::Command;

fn reflex() -> Command {
    Command::new(env!("CARGO_BIN_EXE_reflex"))
}

fn workdir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&d).expect("workdir");
    d
}

#[test]
fn demo_runs_end_to_end_and_writes_a_candump_log() {
    let dir = workdir("cli-demo");
    let out = reflex()
        .args(["demo", "--seconds", "2", "--workdir"])
        .arg(&dir)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
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
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("image.front"));
}

#[test]
fn check_names_the_problem_of_a_broken_bundle() {
    let dir = workdir("cli-broken");
    std::fs::write(dir.join("policy.toml"), "format_version = 7\n").expect("write");
    let out = reflex()
        .args(["check", "--bundle"])
        .arg(&dir)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unsupported bundle version 7"), "{err}");
    assert!(err.contains("policy.toml"), "{err}");
}

#[test]
fn help_teaches() {
    let out = reflex().arg("--help").output().expect("runs");
    let s = String::from_utf8_lossy(&out.stdout);
    for w in ["run", "demo", "check"] {
        assert!(s.contains(w), "{s}");
    }
    let out = reflex().args(["run", "--help"]).output().expect("runs");
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("--allow-unlimited") && s.contains("replay:"),
        "{s}"
    );
}

#[test]
fn sigint_stops_the_run_with_a_stop_command() {
    // Reuse the demo's bundle and episode (built by a short demo run if absent).
    let dir = workdir("cli-sigint");
    if !dir.join("resnet18-chunk/policy.toml").exists() {
        let out = reflex()
            .args(["demo", "--seconds", "0.1", "--workdir"])
            .arg(&dir)
            .output()
            .expect("demo");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = dir.join("sigint.log");
    let _ = std::fs::remove_file(&log);
    let child = reflex()
        .args(["run", "--bundle"])
        .arg(dir.join("resnet18-chunk"))
        .arg("--camera")
        .arg(format!("front=replay:{}", dir.join("episode").display()))
        .arg("--can")
        .arg(format!("candump:{}", log.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
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
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("exits");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).expect("log");
    let last = text.lines().last().expect("frames");
    let data = last.split('#').nth(1).expect("data");
    assert_eq!(&data[8..10], "01", "the last command is a stop: {last}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("stage timings"));
}
