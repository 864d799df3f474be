//! No `reflex` command destroys what it did not write: user files planted where `bench`, `demo`,
//! `run` and `can send` write survive (the command fails with exit code 1, naming the path and
//! the fix), and `--force` replaces only the file named.

use reflex_models::manifest::{CaptureSpec, PixelFormat};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn reflex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reflex"))
        .args(args)
        .output()
        .expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The command failed (exit code 1) and its message names `path`; returns the message.
fn refused(o: &Output, path: &Path) -> String {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(1), "should fail: {e}");
    assert!(e.contains(s(path)), "names {}: {e}", path.display());
    e
}

fn dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("overwrite")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Every file under `d` with its bytes.
fn snapshot(d: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![d.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                m.insert(e.path(), std::fs::read(e.path()).expect("read"));
            }
        }
    }
    m
}

/// A small policy bundle on the reference arm: one 64x48 camera averaged per channel, with the
/// state, into a chunk of 4 actions by one linear layer; and a synthetic episode for it.
fn tiny(root: &Path) -> (PathBuf, PathBuf) {
    let capture = CaptureSpec {
        width: 64,
        height: 48,
        format: PixelFormat::Rgb24,
        fps: 30,
    };
    let bundle = root.join("bundle");
    let m = reflex_testkit::bundles::write_tiny_bundle(&bundle, capture);
    let ep = root.join("episode");
    reflex_runtime::camera::replay::generate_synthetic_episode(&m, &ep, 1.0, 30).expect("episode");
    (bundle, ep)
}

const TARGET: [&str; 6] = [
    "shoulder_pan=0.1",
    "shoulder_lift=0",
    "elbow_flex=0",
    "wrist_flex=0",
    "wrist_roll=0",
    "gripper=0.01",
];

#[test]
fn user_files_survive_every_writing_command() {
    let work = dir("reflex-cmds");
    let (bundle, ep) = tiny(&work);
    let user = work.join("user");
    std::fs::create_dir_all(user.join("data")).expect("mkdir");
    std::fs::write(user.join("notes.txt"), "my notes").expect("write");
    std::fs::write(user.join("data/bus.log"), "(1.0) can0 123#00\n").expect("write");
    let before = snapshot(&user);
    let intact = || assert_eq!(snapshot(&user), before, "user files changed");
    let notes = user.join("notes.txt");
    let log = user.join("data/bus.log");

    // bench --json / --svg: refused before the run.
    let (json, svg) = (work.join("bench.json"), work.join("bench.svg"));
    let bench = |json: &Path, svg: &Path, extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--bundle",
            s(&bundle),
            "--iterations",
            "5",
            "--warmup",
            "1",
            "--json",
            s(json),
            "--svg",
            s(svg),
        ];
        args.extend(extra);
        reflex(&args)
    };
    let e = refused(&bench(&notes, &svg, &[]), &notes);
    assert!(e.contains("--force"), "{e}");
    refused(&bench(&json, &notes, &[]), &notes);
    intact();
    assert!(!json.exists() && !svg.exists());
    // Its own reports are replaced by the next run, no --force needed.
    for _ in 0..2 {
        let o = bench(&json, &svg, &[]);
        assert!(matches!(o.status.code(), Some(0 | 2)), "{}", stderr(&o));
    }

    // demo --workdir: a folder that is not a demo's.
    let e = refused(&reflex(&["demo", "--workdir", s(&user)]), &user);
    assert!(e.contains("not a demo workdir"), "{e}");
    intact();

    // run and can send to candump:FILE over an existing log: refused without --force.
    let can = format!("candump:{}", s(&log));
    let camera = format!("replay:{}", s(&ep));
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--bundle",
            s(&bundle),
            "--camera",
            &camera,
            "--can",
            &can,
            "--duration",
            "0.2",
        ];
        args.extend(extra);
        reflex(&args)
    };
    let e = refused(&run(&[]), &log);
    assert!(e.contains("--force"), "{e}");
    intact();
    let mut send = vec!["can", "send", "--bundle", s(&bundle), "--can", &can];
    send.extend(TARGET);
    refused(&reflex(&send), &log);
    intact();

    // --force replaces the log named, and nothing else.
    let o = run(&["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = snapshot(&user);
    assert_eq!(after[&notes], before[&notes]);
    assert_ne!(after[&log], before[&log]);
    assert_eq!(after.len(), before.len());
}
