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
