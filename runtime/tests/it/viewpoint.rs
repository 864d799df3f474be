//! The camera viewpoint check as a user runs it: `reflex check --cameras` and the start of
//! `reflex run`, on a replayed camera against reference frames whose shift is known.

use reflex_models::manifest::{CaptureSpec, PixelFormat, ViewpointSpec, ViewpointThresholds};
use reflex_models::npy::{write_npy, NpyArray, NpyData};
use reflex_runtime::camera::replay::{generate_synthetic_episode, Episode};
use reflex_runtime::camera::viewpoint::{FrameDecoder, RgbPlanes};
use reflex_runtime::io::{Frame, FrameMeta};
use reflex_testkit::bundles::write_tiny_bundle;
use reflex_testkit::cli::{Cli, Run};
use reflex_testkit::dirs::WorkDir;
use std::path::Path;

fn reflex(args: &[&str]) -> Run {
    Cli::new(env!("CARGO_BIN_EXE_reflex")).args(args).run()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

const CAPTURE: CaptureSpec = CaptureSpec {
    width: 320,
    height: 240,
    format: PixelFormat::Rgb24,
    fps: 30,
};

/// A tiny bundle whose reference frame is the episode's first frame with its content moved
/// `shift` pixels left (so the live camera sees it `shift` pixels to the right).
fn bundle_with_reference(dir: &Path, episode: &Path, shift: usize) {
    let mut m = write_tiny_bundle(dir, CAPTURE);
    let ep = Episode::load(episode).expect("episode");
    let c = &ep.index.cameras[0];
    let [t, off, len] = c.frames[0];
    let frame = Frame {
        meta: FrameMeta {
            seq: 0,
            capture_ns: t,
            width: c.width,
            height: c.height,
            format: c.format,
        },
        data: &ep.data[0][off as usize..(off + len) as usize],
    };
    let live = FrameDecoder::new(&m.cameras[0])
        .expect("decoder")
        .decode(&frame)
        .expect("decodes");
    let (w, h) = (live.width, live.height);
    let mut planes = vec![0f32; 3 * w * h];
    for ch in 0..3 {
        for y in 0..h {
            for x in 0..w {
                planes[(ch * h + y) * w + x] =
                    live.planes[(ch * h + y) * w + (x + shift).min(w - 1)];
            }
        }
    }
    let reference = RgbPlanes {
        width: w,
        height: h,
        planes,
    };
    let stats = reference.stats();
    let grey = reference.luma().downscale(2);
    m.cameras[0].viewpoint = Some(ViewpointSpec {
        frames: vec!["reference/front/0.npy".into()],
        downscale: 2,
        mean_rgb: stats.mean_rgb,
        sharpness: stats.sharpness,
        thresholds: ViewpointThresholds::default(),
    });
    let model = std::fs::read(dir.join(&m.models[0].file)).expect("model");
    reflex_models::bundle::write_bundle(dir, &mut m, &[&model]).expect("rewrites the bundle");
    let npy = dir.join("reference/front/0.npy");
    std::fs::create_dir_all(npy.parent().expect("parent")).expect("mkdir");
    let data = grey.pixels.iter().map(|&v| v.round() as u8).collect();
    write_npy(
        &npy,
        &NpyArray {
            shape: vec![grey.height, grey.width],
            data: NpyData::U8(data),
        },
    )
    .expect("writes the reference");
}

#[test]
fn check_cameras_grades_the_viewpoint_and_run_refuses_a_moved_camera() {
    let _real_time = reflex_testkit::serial::real_time();
    let wd = WorkDir::new("viewpoint-cli");
    let episode = wd.path().join("episode");
    let probe = wd.path().join("probe");
    let m = write_tiny_bundle(&probe, CAPTURE);
    // A replay camera's timeline starts at its first read: the check grabs the first frame.
    generate_synthetic_episode(&m, &episode, 2.0, 10).expect("episode");
    let camera = format!("replay:{}", s(&episode));

    let same = wd.path().join("same");
    bundle_with_reference(&same, &episode, 0);
    let out = reflex(&["check", "--bundle", s(&same), "--cameras", &camera]);
    assert!(out.status.success(), "{out}");
    assert!(out.stdout.contains("camera front: OK"), "{out}");

    let moved = wd.path().join("moved");
    bundle_with_reference(&moved, &episode, 16);
    let out = reflex(&["check", "--bundle", s(&moved), "--cameras", &camera]);
    assert!(!out.status.success(), "{out}");
    eprintln!("{}", out.stdout);
    assert!(out.stdout.contains("camera front: REFUSE (shift "), "{out}");
    assert!(out.stdout.contains("REFUSE shift_px"), "{out}");
    let shift: f64 = out
        .stdout
        .split("(shift ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("the measured shift");
    assert!(
        (shift - 16.0).abs() < 0.25,
        "measured {shift} px, true 16 px\n{out}"
    );

    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--bundle",
            s(&moved),
            "--camera",
            &camera,
            "--can",
            "null",
            "--duration",
            "0.3",
        ];
        args.extend_from_slice(extra);
        reflex(&args)
    };
    let out = run(&[]);
    assert!(!out.status.success(), "{out}");
    assert!(
        out.stderr.contains("do not see what training saw")
            && out.stderr.contains("--skip-viewpoint-check"),
        "{out}"
    );
    let out = run(&["--skip-viewpoint-check"]);
    assert!(out.status.success(), "{out}");
}
