//! `reflex record` (issue 15, kind 8): an episode recorded from a camera (here a replay camera,
//! the same `Camera` trait as a V4L2 device) in `reflex-episode-v1`, which `reflex run` replays.

use reflex_models::manifest::{CaptureSpec, PixelFormat};
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode};
use reflex_testkit::bundles::write_tiny_bundle;
use reflex_testkit::cli::Cli;
use reflex_testkit::dirs::WorkDir;

fn reflex() -> Cli {
    Cli::new(env!("CARGO_BIN_EXE_reflex"))
}

#[test]
fn a_recorded_episode_replays_in_reflex_run() {
    let _real_time = reflex_testkit::serial::real_time();
    let dir = WorkDir::new("record");
    let bundle = dir.join("bundle");
    let capture = CaptureSpec {
        width: 64,
        height: 48,
        format: PixelFormat::Yuyv,
        fps: 30,
    };
    let m = write_tiny_bundle(&bundle, capture);
    let source = dir.join("source");
    generate_synthetic_episode(&m, &source, 3.0, 30).expect("episode");

    let rec = dir.join("recorded");
    let out = reflex()
        .args(["record", "--bundle"])
        .arg(&bundle)
        .arg("--camera")
        .arg(format!("replay:{}", source.display()))
        .args(["--duration", "1.5", "--out"])
        .arg(&rec)
        .run()
        .success();
    assert!(out.stdout.contains("wrote"), "{}", out.stdout);

    let src = Episode::load(&source).expect("source");
    let e = Episode::load(&rec).expect("recorded episode loads");
    assert_eq!(e.index.format, "reflex-episode-v1");
    let cam = &e.index.cameras[0];
    assert_eq!(
        (cam.width, cam.height, cam.format),
        (64, 48, PixelFormat::Yuyv)
    );
    // 1.5 s of a 30 fps camera, every frame kept (a slow machine may lose a few at the edges).
    assert!(
        (35..=47).contains(&cam.frames.len()),
        "{} frames",
        cam.frames.len()
    );
    // Frames are the camera's bytes as delivered: each is one of the source's frames.
    let src_frames: Vec<&[u8]> = src.index.cameras[0]
        .frames
        .iter()
        .map(|&[_, o, l]| &src.data[0][o as usize..(o + l) as usize])
        .collect();
    for &[_, o, l] in &cam.frames {
        let f = &e.data[0][o as usize..(o + l) as usize];
        assert!(src_frames.contains(&f), "a frame the camera never sent");
    }
    // Timestamps from 0, increasing, ~33 ms apart.
    let ts: Vec<u64> = cam.frames.iter().map(|f| f[0]).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "{ts:?}");
    assert!(ts[0] < 40_000_000, "{ts:?}");
    assert!(!e.index.state.samples.is_empty());
    assert_eq!(e.index.state.names, m.state.names);

    // Replayed by `reflex run`.
    let log = dir.join("run.log");
    reflex()
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg("--camera")
        .arg(format!("replay:{}", rec.display()))
        .arg("--can")
        .arg(format!("candump:{}", log.display()))
        .args(["--duration", "1"])
        .run()
        .success();
    let frames = std::fs::read_to_string(&log).expect("log");
    assert!(frames.lines().count() >= 6 * 10, "{frames}");

    // Never over a folder that is not an episode.
    let other = dir.join("notes");
    std::fs::create_dir_all(&other).expect("mkdir");
    std::fs::write(other.join("todo.txt"), "mine").expect("write");
    let out = reflex()
        .args(["record", "--bundle"])
        .arg(&bundle)
        .arg("--camera")
        .arg(format!("replay:{}", source.display()))
        .args(["--duration", "0.3", "--out"])
        .arg(&other)
        .run()
        .failure();
    assert!(
        out.stderr.contains("not a reflex episode"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_to_string(other.join("todo.txt")).expect("kept"),
        "mine"
    );
}
