//! `reflex-tools episode from-images` (issue 15, kind 8): a folder of images and a state file
//! become a `reflex-episode-v1` folder that `reflex run --camera replay:DIR` plays.

use reflex_runtime::camera::replay::Episode;
use reflex_testkit::cli::{workspace_bin, Cli, Run};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn tools(args: &[&str]) -> Run {
    Cli::new(env!("CARGO_BIN_EXE_reflex-tools"))
        .args(args)
        .run()
}

fn ok(o: &Run) -> String {
    assert!(o.status.success(), "{o}");
    o.stdout.clone()
}

fn err(o: &Run) -> String {
    assert!(!o.status.success(), "should fail:\n{o}");
    o.stderr.clone()
}

fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| reflex_testkit::dirs::fixture_dir("episode"))
}

fn dir(name: &str) -> PathBuf {
    let d = root().join(name);
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

const NAMES: [&str; 6] = [
    "shoulder_pan",
    "shoulder_lift",
    "elbow_flex",
    "wrist_flex",
    "wrist_roll",
    "gripper",
];

/// Frame `k`'s 64x48 RGB pixels: a gradient moved by `k`.
fn pixels(k: usize) -> Vec<u8> {
    (0..48 * 64)
        .flat_map(|i| {
            let (x, y) = (i % 64, i / 64);
            [(x * 4 + k) as u8, (y * 5) as u8, (k * 20) as u8]
        })
        .collect()
}

fn write_png(path: &Path, rgb: &[u8]) {
    let f = std::fs::File::create(path).expect("create");
    let mut e = png::Encoder::new(std::io::BufWriter::new(f), 64, 48);
    e.set_color(png::ColorType::Rgb);
    e.set_depth(png::BitDepth::Eight);
    e.write_header()
        .expect("header")
        .write_image_data(rgb)
        .expect("png");
}

fn state_row(k: usize) -> Vec<f32> {
    (0..6).map(|j| 0.01 * (k * 6 + j) as f32 - 0.1).collect()
}

#[test]
fn png_frames_and_a_state_csv_become_an_episode_that_reflex_run_replays() {
    let _real_time = reflex_testkit::serial::real_time();
    let images = dir("pngs");
    std::fs::create_dir_all(&images).expect("mkdir");
    let n = 12;
    // Written out of order: the file names give the order.
    for k in (0..n).rev() {
        write_png(&images.join(format!("frame_{k:06}.png")), &pixels(k));
    }
    std::fs::write(images.join("notes.txt"), "not an image").expect("write");
    let csv = images.with_extension("csv");
    let mut text = NAMES.join(",") + "\n";
    for k in 0..n {
        let row: Vec<String> = state_row(k).iter().map(|v| v.to_string()).collect();
        text += &(row.join(",") + "\n");
    }
    std::fs::write(&csv, text).expect("csv");
    let bundle = dir("bundle");
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/stats");
    ok(&tools(&[
        "export",
        "--onnx",
        s(&data.join("tiny_base.onnx")),
        "--manifest",
        s(&data.join("policy_template.toml")),
        "--out",
        s(&bundle),
    ]));
    let ep = dir("converted");
    let stdout = ok(&tools(&[
        "episode",
        "from-images",
        "--images",
        s(&images),
        "--state",
        s(&csv),
        "--fps",
        "10",
        "--bundle",
        s(&bundle),
        "--out",
        s(&ep),
    ]));
    assert!(stdout.contains("12 frames"), "{stdout}");

    let e = Episode::load(&ep).expect("loads");
    assert_eq!(e.index.format, "reflex-episode-v1");
    let cam = &e.index.cameras[0];
    assert_eq!(
        (cam.name.as_str(), cam.width, cam.height),
        ("front", 64, 48)
    );
    assert_eq!(cam.frames.len(), n);
    for (k, &[t, off, len]) in cam.frames.iter().enumerate() {
        assert_eq!(t, k as u64 * 100_000_000, "frame {k} at k / 10 s");
        let bytes = &e.data[0][off as usize..(off + len) as usize];
        assert_eq!(bytes, pixels(k).as_slice(), "frame {k}: the PNG's pixels");
    }
    assert_eq!(e.index.state.names, NAMES);
    for (k, (t, v)) in e.index.state.samples.iter().enumerate() {
        assert_eq!(*t, k as u64 * 100_000_000);
        assert_eq!(v, &state_row(k));
    }

    // The converted episode replays in `reflex run`: commands go out every tick.
    let log = root().join("converted-run.log");
    let run = Cli::new(workspace_bin("reflex", "reflex-runtime"))
        .args([
            "run",
            "--bundle",
            s(&bundle),
            "--camera",
            &format!("replay:{}", s(&ep)),
            "--can",
            &format!("candump:{}", s(&log)),
            "--duration",
            "1",
        ])
        .run();
    assert!(run.status.success(), "{run}");
    let frames = std::fs::read_to_string(&log).expect("log");
    assert!(frames.lines().count() >= 6 * 10, "{frames}");

    // A state file with another row count: named, nothing written.
    let short = images.with_file_name("short.csv");
    std::fs::write(&short, "0,0,0,0,0,0\n").expect("csv");
    let out = dir("short");
    let e = err(&tools(&[
        "episode",
        "from-images",
        "--images",
        s(&images),
        "--state",
        s(&short),
        "--fps",
        "10",
        "--bundle",
        s(&bundle),
        "--out",
        s(&out),
    ]));
    assert!(e.contains("1 state rows") && e.contains("12 images"), "{e}");
    assert!(!out.exists());
}

#[test]
fn jpeg_frames_and_a_state_npy_are_kept_as_mjpeg() {
    let jpg = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/tests/data/preprocess_640x480_422.jpg");
    let images = dir("jpgs");
    std::fs::create_dir_all(&images).expect("mkdir");
    for k in 0..3 {
        std::fs::copy(&jpg, images.join(format!("{k}.jpg"))).expect("copy");
    }
    let npy = images.with_extension("npy");
    let rows: Vec<f32> = (0..3).flat_map(state_row).collect();
    reflex_models::npy::write_npy(
        &npy,
        &reflex_models::npy::NpyArray::f32(&[3, 6], rows.clone()),
    )
    .expect("npy");
    let ep = dir("jpg-episode");
    ok(&tools(&[
        "episode",
        "from-images",
        "--images",
        s(&images),
        "--state",
        s(&npy),
        "--fps",
        "30",
        "--camera",
        "wrist",
        "--state-names",
        &NAMES.join(","),
        "--out",
        s(&ep),
    ]));
    let e = Episode::load(&ep).expect("loads");
    let cam = &e.index.cameras[0];
    assert_eq!(cam.name, "wrist");
    assert_eq!((cam.width, cam.height), (640, 480));
    assert_eq!(cam.format.as_str(), "mjpeg");
    let original = std::fs::read(&jpg).expect("jpg");
    for &[_, off, len] in &cam.frames {
        assert_eq!(
            &e.data[0][off as usize..(off + len) as usize],
            original.as_slice()
        );
    }
    assert_eq!(e.index.state.samples[2].1, state_row(2));

    // Without names: told where they can come from.
    let e = err(&tools(&[
        "episode",
        "from-images",
        "--images",
        s(&images),
        "--state",
        s(&npy),
        "--fps",
        "30",
        "--out",
        s(&dir("no-names")),
    ]));
    assert!(e.contains("--state-names") && e.contains("--bundle"), "{e}");
}
