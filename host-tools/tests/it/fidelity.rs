//! The fidelity tools with known truth: `parity` names planted dataloader mistakes (tensors made
//! by a numpy/PIL script, not by reflex), `explain` finds the image region a constructed policy
//! reads and the brightness sensitivity of another, `export --reference-frames` stores what
//! the viewpoint check needs.

use reflex_models::manifest::{
    CameraSpec, CaptureSpec, CropSpec, Manifest, PixelFormat, ResizeDtype,
};
use reflex_models::npy::{read_npy, NpyArray};
use reflex_models::onnx::builder::{Attr, GraphBuilder};
use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch};
use reflex_models::Bundle;
use reflex_testkit::cli::{Cli, Run};
use reflex_testkit::dirs::WorkDir;
use reflex_tools::explain::{occlusion, sweep, Explainer, Perturbation};
use reflex_tools::images::{write_png, Rgb8};
use reflex_tools::parity::{compare, DEFAULT_TOLERANCE};
use std::path::Path;

fn tools(args: &[&str]) -> Run {
    Cli::new(env!("CARGO_BIN_EXE_reflex-tools"))
        .args(args)
        .run()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

/// A camera-like test picture: gradients, rectangles and a disc, with fine texture.
fn picture(w: usize, h: usize, seed: u32) -> Rgb8 {
    let mut img = Rgb8::new(w, h);
    let mut st = seed.wrapping_mul(2654435761).max(1);
    let mut rnd = move || {
        st ^= st << 13;
        st ^= st >> 17;
        st ^= st << 5;
        st
    };
    for y in 0..h {
        for x in 0..w {
            let r = 128.0 + 90.0 * ((x as f64) * 0.21).sin() * ((y as f64) * 0.13).cos();
            let g = 40.0 + 170.0 * y as f64 / h as f64;
            let b = 220.0 - 160.0 * x as f64 / w as f64;
            let n = f64::from(rnd() % 21) - 10.0;
            img.put(
                x,
                y,
                [r + n, g + n, b - n].map(|v| v.round().clamp(0.0, 255.0) as u8),
            );
        }
    }
    for _ in 0..6 {
        let (x0, y0) = ((rnd() as usize) % (w - 8), (rnd() as usize) % (h - 8));
        let c = [rnd() as u8, rnd() as u8, rnd() as u8];
        for y in y0..(y0 + 4 + (rnd() as usize) % (h / 3)).min(h) {
            for x in x0..(x0 + 4 + (rnd() as usize) % (w / 3)).min(w) {
                img.put(x, y, c);
            }
        }
    }
    img
}

/// The reference arm's manifest with one camera `front`, `capture` RGB24, resized to `side`.
fn manifest(capture: (u32, u32), side: u32) -> Manifest {
    let arch = PolicyArch {
        encoder: EncoderKind::Resnet18,
        cameras: vec!["front".into()],
        shared_encoder: false,
        state_dim: 6,
        action_dim: 6,
        hidden: vec![],
        head: HeadKind::Chunk { horizon: 4 },
    };
    let cap = CaptureSpec {
        width: capture.0,
        height: capture.1,
        format: PixelFormat::Rgb24,
        fps: 30,
    };
    let mut m = reflex_models::reference::reference_manifest(&arch, "fidelity", cap);
    m.cameras[0].preprocess.resize.width = side;
    m.cameras[0].preprocess.resize.height = side;
    m.models[0].backends = vec![reflex_models::manifest::BackendKind::Tract];
    m
}

/// A bundle whose every action is `sum_(c, y, x) weight(c, y, x) image[c, y, x]` (the
/// preprocessed image, `side x side`) plus 0.1 x the first state value, in normalized units.
fn linear_bundle(dir: &Path, side: usize, weight: impl Fn(usize, usize, usize) -> f32) -> Manifest {
    let mut m = manifest((2 * side as u32, 2 * side as u32), side as u32);
    let mut g = GraphBuilder::new("fidelity");
    let image = g.input("image.front", &[1, 3, side, side]);
    let state = g.input("state", &[1, 6]);
    let flat = g.node("flat", "Flatten", &[&image], &[("axis", Attr::Int(1))]);
    let features = g.node(
        "features",
        "Concat",
        &[&flat, &state],
        &[("axis", Attr::Int(1))],
    );
    let (inputs, out) = (3 * side * side + 6, 4 * 6);
    let mut w = vec![0f32; inputs * out];
    for c in 0..3 {
        for y in 0..side {
            for x in 0..side {
                let v = weight(c, y, x);
                let row = (c * side + y) * side + x;
                w[row * out..(row + 1) * out].fill(v);
            }
        }
    }
    w[3 * side * side * out..(3 * side * side + 1) * out].fill(0.1);
    let w = g.initializer("head.weight", &[inputs, out], &w);
    let b = g.initializer("head.bias", &[out], &vec![0.0; out]);
    let y = g.node("head", "Gemm", &[&features, &w, &b], &[]);
    let shape = g.shape_const(&[1, 4, 6]);
    let action = g.node("action", "Reshape", &[&y, &shape], &[]);
    g.output(&action, &[1, 4, 6]);
    let bytes = prost::Message::encode_to_vec(&g.finish());
    reflex_models::bundle::write_bundle(dir, &mut m, &[&bytes]).expect("writes the bundle");
    m
}

/// A tensor from torchvision's resize of a uint8 tensor (`tests/python/uint8_resize_ref.py`,
/// then `/ 255` and mean/std): `parity` names the uint8 resize and the `resize.dtype` field that
/// fixes it, and with `dtype = "uint8"` the bundle's preprocessing matches. torchvision runs where
/// `REFLEX_TORCH_PYTHON` names a python with torch and torchvision; elsewhere its output recorded
/// in `tests/data/torch/parity-uint8-96x72.u8` (torch 2.7.1, torchvision 0.22.1) is used.
#[test]
fn parity_recommends_the_uint8_resize_dtype() {
    let wd = WorkDir::new("parity-uint8");
    let mut cam: CameraSpec = manifest((96, 72), 32).cameras[0].clone();
    cam.preprocess.crop = Some(CropSpec {
        x: 5,
        y: 3,
        width: 80,
        height: 60,
    });
    cam.preprocess.resize.width = 40;
    cam.preprocess.resize.height = 30;
    let frame = picture(96, 72, 3);
    let (raw, out) = (wd.path().join("frame.rgb"), wd.path().join("frame.u8"));
    std::fs::write(&raw, &frame.data).expect("writes the frame");
    let args = [
        "96", "72", "5", "3", "80", "60", "40", "30", "bilinear", "1",
    ];
    // torchvision's output, recorded (3600 bytes) for the machines without torch; where torch
    // runs, its fresh output must equal the recording.
    let recorded_path =
        reflex_testkit::python::repo_root().join("tests/data/torch/parity-uint8-96x72.u8");
    let record = std::env::var(reflex_testkit::python::RECORD_ENV).as_deref() == Ok("1");
    let recorded = std::fs::read(&recorded_path).unwrap_or_default();
    let levels = match reflex_testkit::python::torch_reference(
        "uint8_resize_ref.py",
        std::iter::once(s(&raw))
            .chain(args)
            .chain(std::iter::once(s(&out))),
        "torch torchvision numpy",
    ) {
        Some(_) => {
            let fresh = std::fs::read(&out).expect("reads the resized tensor");
            if record {
                std::fs::write(&recorded_path, &fresh).expect("records the tensor");
            }
            assert!(
                record || fresh == recorded,
                "torchvision's output is not the one recorded in {}",
                recorded_path.display()
            );
            fresh
        }
        None => {
            assert_eq!(
                recorded.len(),
                3 * 40 * 30,
                "{}: the recorded torchvision tensor is missing or short (record it with {}=1)",
                recorded_path.display(),
                reflex_testkit::python::RECORD_ENV
            );
            recorded
        }
    };
    let p = &cam.preprocess;
    let n = 40 * 30;
    let tensor: Vec<f32> = levels
        .iter()
        .enumerate()
        .map(|(i, &v)| (f32::from(v) / 255.0 - p.mean[i / n]) / p.std[i / n])
        .collect();
    let theirs = NpyArray::f32(&[3, 30, 40], tensor);
    let level = 1.0 / (255.0 * p.std.iter().cloned().fold(f32::INFINITY, f32::min));

    let (r, _) = compare(&cam, &frame, &theirs, DEFAULT_TOLERANCE).expect("compares");
    assert!(!r.matches, "the float resize should differ: {r:?}");
    let d = r.diagnosis.as_deref().unwrap_or("(none)");
    assert!(
        d.contains("uint8 resize") && d.contains("dtype = \"uint8\""),
        "diagnosed `{d}`\n{r:#?}"
    );

    cam.preprocess.resize.dtype = ResizeDtype::Uint8;
    let float_mean = r.overall.mean;
    let (r, _) = compare(&cam, &frame, &theirs, DEFAULT_TOLERANCE).expect("compares");
    assert!(
        r.matches && r.overall.max < 0.01 * level && r.overall.mean < 0.01 * float_mean,
        "dtype = uint8 should match: {r:?}"
    );
    eprintln!(
        "torchvision uint8 resize: float dtype diagnosed `{d}`; uint8 dtype matches to {:?}",
        r.overall
    );
}

#[test]
fn parity_names_each_planted_mistake() {
    let wd = WorkDir::new("parity-planted");
    let mut cam: CameraSpec = manifest((96, 72), 32).cameras[0].clone();
    cam.preprocess.crop = Some(CropSpec {
        x: 5,
        y: 3,
        width: 80,
        height: 60,
    });
    cam.preprocess.resize.width = 40;
    cam.preprocess.resize.height = 30;
    let frame = picture(96, 72, 3);
    let frames = wd.path().join("frames");
    write_png(&frames.join("frame.png"), &frame).expect("writes the frame");
    let spec = serde_json::json!({
        "crop": {"x": 5, "y": 3, "width": 80, "height": 60},
        "resize": {"width": 40, "height": 30},
        "mean": cam.preprocess.mean,
        "std": cam.preprocess.std,
    });
    let spec_path = wd.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).expect("writes the spec");
    let tensors = wd.path().join("tensors");
    let Some(_) = reflex_testkit::python::reference(
        "parity_planted.py",
        [s(&frames.join("frame.png")), s(&spec_path), s(&tensors)],
        "numpy pillow",
    ) else {
        return;
    };
    let expect = [
        ("correct", None),
        ("channel_swap", Some("channels swapped")),
        (
            "crop_off_by_one",
            Some("crop offset: training cropped at (6, 3)"),
        ),
        ("missing_normalization", Some("mean/std missing")),
        ("scale_0_255", Some("no division by 255 before mean/std")),
        ("nearest", Some("training resized with nearest")),
        ("uint8_resize", Some("fix: `dtype = \"uint8-pil\"`")),
        ("hwc", Some("layout: the tensor is HWC")),
    ];
    for (case, cause) in expect {
        let theirs = read_npy(&tensors.join(case).join("frame.npy")).expect("reads the tensor");
        let (r, absdiff) = compare(&cam, &frame, &theirs, DEFAULT_TOLERANCE).expect("compares");
        if case == "uint8_resize" {
            // Pillow's 8-bit resampling is reproduced exactly (f32 normalization error only).
            let h = r
                .hypotheses
                .iter()
                .find(|h| h.mistake.starts_with("uint8 resize"))
                .expect("the uint8 hypothesis");
            assert!(
                h.diff.max < 1e-5,
                "PIL uint8 resize reproduced to {:?}",
                h.diff
            );
        }
        if case == "crop_off_by_one" {
            let pic = reflex_tools::parity::difference_png(&absdiff, 3, 30, 40, r.overall.max);
            docs_picture("parity-crop-diff.png", |p| {
                write_png(p, &pic).expect("writes")
            });
        }
        match cause {
            None => assert!(r.matches, "{case}: should match: {r:?}"),
            Some(cause) => {
                assert!(!r.matches, "{case}: should differ: {r:?}");
                let d = r.diagnosis.as_deref().unwrap_or("(none)");
                assert!(
                    d.contains(cause),
                    "{case}: diagnosed `{d}`, expected `{cause}`\n{r:#?}"
                );
            }
        }
    }
}

#[test]
fn parity_command_reports_and_draws_the_difference() {
    let wd = WorkDir::new("parity-cli");
    let bundle = wd.path().join("bundle");
    linear_bundle(&bundle, 16, |_, _, _| 0.0);
    let b = Bundle::load(&bundle).expect("loads");
    let cam = b.manifest.cameras[0].clone();
    let frame = picture(32, 32, 9);
    let frames = wd.path().join("frames");
    write_png(&frames.join("a.png"), &frame).expect("writes");
    // The dataloader's tensor, made with reflex's own preprocessing but BGR.
    let mut bgr = cam.clone();
    bgr.preprocess.color = reflex_models::manifest::ColorOrder::Bgr;
    let (r, _) = compare(
        &bgr,
        &frame,
        &read_tensor_of(&cam, &frame),
        DEFAULT_TOLERANCE,
    )
    .expect("compares");
    assert!(!r.matches);
    let tensors = wd.path().join("tensors");
    std::fs::create_dir_all(&tensors).expect("mkdir");
    reflex_models::npy::write_npy(&tensors.join("a.npy"), &read_tensor_of(&bgr, &frame))
        .expect("writes");
    let out = wd.path().join("out");
    let run = tools(&[
        "parity",
        "--bundle",
        s(&bundle),
        "--frames",
        s(&frames),
        "--tensors",
        s(&tensors),
        "--out",
        s(&out),
    ]);
    assert!(
        !run.status.success(),
        "a differing frame fails the command:\n{run}"
    );
    assert!(run.stdout.contains("channels swapped"), "{run}");
    assert!(out.join("diff-a.png").is_file(), "{run}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("parity.json")).expect("json"))
            .expect("parses");
    assert_eq!(json[0]["matches"], false);
    // The same tensor as the bundle makes it: a match, exit 0.
    reflex_models::npy::write_npy(&tensors.join("a.npy"), &read_tensor_of(&cam, &frame))
        .expect("writes");
    let run = tools(&[
        "parity",
        "--bundle",
        s(&bundle),
        "--frames",
        s(&frames),
        "--tensors",
        s(&tensors),
        "--out",
        s(&out),
    ]);
    assert!(run.status.success(), "{run}");
    assert!(run.stdout.contains("MATCH"), "{run}");
}

/// `cam`'s preprocessing of `frame` as a `[3, H, W]` f32 array.
fn read_tensor_of(cam: &CameraSpec, frame: &Rgb8) -> reflex_models::npy::NpyArray {
    let mut c = cam.clone();
    c.capture.format = PixelFormat::Rgb24;
    let mut p = reflex_runtime::preprocess::Preprocessor::new(&c).expect("spec");
    let mut out = vec![0f32; p.output_len()];
    p.run(
        &frame.data,
        frame.width as u32,
        frame.height as u32,
        PixelFormat::Rgb24,
        &mut out,
    )
    .expect("runs");
    let r = &c.preprocess.resize;
    reflex_models::npy::NpyArray::f32(&[3, r.height as usize, r.width as usize], out)
}

#[test]
fn occlusion_peaks_on_the_region_the_policy_reads() {
    let wd = WorkDir::new("occlusion");
    let side = 32;
    // Only the preprocessed pixels in rows 4..10, columns 20..26 matter: capture pixels
    // rows 8..20, columns 40..52 (the capture is 64x64).
    linear_bundle(wd.path(), side, |_, y, x| {
        if (4..10).contains(&y) && (20..26).contains(&x) {
            0.05
        } else {
            0.0
        }
    });
    let b = Bundle::load(wd.path()).expect("loads");
    let mut ex = Explainer::new(&b).expect("prepares");
    let frames = vec![picture(64, 64, 5)];
    let state = vec![0.0; 6];
    let occ = occlusion(&mut ex, &frames, &state, 0, 8, 4, |_, _| {}).expect("runs");
    assert_eq!((occ.cols, occ.rows), (15, 15));
    let heat = &occ.heat[0];
    let (peak, [px, py]) = occ.peak[0];
    assert!(peak > 1e-3, "the region moves the actions: {peak}");
    assert!(
        (36..=56).contains(&px) && (4..=24).contains(&py),
        "peak at ({px}, {py}), the region is x 40..52, y 8..20"
    );
    // Far from the region (a patch's width away) nothing moves.
    for y in 0..64 {
        for x in 0..64 {
            let far = !(32..60).contains(&x) || !(0..28).contains(&y);
            if far {
                assert!(
                    heat[y * 64 + x] < 1e-6,
                    "heat {} at ({x}, {y})",
                    heat[y * 64 + x]
                );
            }
        }
    }
    let pic = reflex_tools::images::overlay_heat(&frames[0], heat, 64, 64, peak);
    write_png(&wd.path().join("occlusion.png"), &pic).expect("writes");
    docs_picture("occlusion-region.png", |p| {
        write_png(p, &upscaled(&pic, 4)).expect("writes")
    });
}

/// With `REFLEX_DOCS_PICTURES=DIR`, writes a README picture into DIR (how docs/pictures/ was
/// made).
fn docs_picture(name: &str, write: impl FnOnce(&Path)) {
    if let Some(dir) = std::env::var_os("REFLEX_DOCS_PICTURES") {
        let p = Path::new(&dir).join(name);
        write(&p);
        eprintln!("wrote {}", p.display());
    }
}

/// Nearest-neighbour enlargement by `k`.
fn upscaled(img: &Rgb8, k: usize) -> Rgb8 {
    let mut out = Rgb8::new(img.width * k, img.height * k);
    for y in 0..out.height {
        for x in 0..out.width {
            out.put(x, y, img.get(x / k, y / k));
        }
    }
    out
}

#[test]
fn the_sweep_shows_brightness_sensitivity_and_invariance() {
    let wd = WorkDir::new("sweep");
    let sensitive = wd.path().join("sensitive");
    let invariant = wd.path().join("invariant");
    // The mean of the image: brightness moves it.
    linear_bundle(&sensitive, 16, |_, _, _| 1.0 / (3.0 * 256.0));
    // Blind to the image: nothing moves it.
    linear_bundle(&invariant, 16, |_, _, _| 0.0);
    let frames = vec![picture(32, 32, 7)];
    let state = vec![0.2; 6];
    let run = |dir: &Path| {
        let b = Bundle::load(dir).expect("loads");
        let mut ex = Explainer::new(&b).expect("prepares");
        sweep(&mut ex, &frames, &state, |_, _| {}).expect("sweeps")
    };
    let sens = run(&sensitive);
    let inv = run(&invariant);
    let brightness = |series: &[reflex_tools::explain::SweepSeries]| {
        series
            .iter()
            .find(|s| s.perturbation == Perturbation::Brightness)
            .expect("brightness series")
            .clone()
    };
    let sb = brightness(&sens);
    // Zero at strength 0, growing with |strength| on both sides.
    let at = |s: &reflex_tools::explain::SweepSeries, x: f64| {
        let i = s
            .strengths
            .iter()
            .position(|&v| (v - x).abs() < 1e-9)
            .expect("strength");
        s.change[i][0]
    };
    assert!(at(&sb, 0.0) < 1e-6);
    assert!(at(&sb, 0.1) > 1e-3, "{sb:?}");
    assert!(at(&sb, 0.3) > 2.0 * at(&sb, 0.1) * 0.9, "{sb:?}");
    assert!(at(&sb, -0.3) > at(&sb, -0.1), "{sb:?}");
    for s in &inv {
        for c in s.change.iter().flatten() {
            assert!(
                *c < 1e-6,
                "{:?} moved an image-blind policy: {s:?}",
                s.perturbation
            );
        }
    }
    let groups =
        reflex_tools::explain::action_groups(&Bundle::load(&sensitive).expect("loads").manifest);
    let svg = reflex_tools::explain::sweep_svg(&sens, &groups, "sensitive").expect("draws");
    assert!(svg.contains("<svg") && svg.contains("brightness"));
    std::fs::write(wd.path().join("sweep.svg"), &svg).expect("writes");
    docs_picture("sweep-brightness-sensitive.svg", |p| {
        std::fs::write(p, &svg).expect("writes")
    });
}

#[test]
fn explain_command_writes_pictures_and_json() {
    let wd = WorkDir::new("explain-cli");
    let bundle = wd.path().join("bundle");
    let m = linear_bundle(
        &bundle,
        16,
        |c, y, _| if c == 0 && y < 8 { 0.01 } else { 0.0 },
    );
    let episode = wd.path().join("episode");
    reflex_runtime::camera::replay::generate_synthetic_episode(&m, &episode, 0.3, 10)
        .expect("writes the episode");
    let out = wd.path().join("out");
    let run = tools(&[
        "explain",
        "--bundle",
        s(&bundle),
        "--episode",
        s(&episode),
        "--frame",
        "1",
        "--out",
        s(&out),
    ]);
    assert!(run.status.success(), "{run}");
    for f in [
        "occlusion-front-rad.png",
        "occlusion-front.json",
        "sweep.svg",
        "sweep.json",
        "frame-front.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing:\n{run}");
    }
    let occ: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("occlusion-front.json")).expect("reads"),
    )
    .expect("parses");
    assert_eq!(occ["camera"], "front");
    // A frame past the episode's end is refused, naming the count.
    let run = tools(&[
        "explain",
        "--bundle",
        s(&bundle),
        "--episode",
        s(&episode),
        "--frame",
        "99",
        "--out",
        s(&out),
    ]);
    assert!(!run.status.success());
    assert!(run.stderr.contains("--frame 99"), "{run}");
}

#[test]
fn export_stores_reference_frames() {
    let wd = WorkDir::new("reference-frames");
    let frames = wd.path().join("frames").join("front");
    for k in 0..3 {
        write_png(&frames.join(format!("{k:04}.png")), &picture(640, 480, k)).expect("writes");
    }
    let out = wd.path().join("bundle");
    let run = tools(&[
        "export",
        "--arch",
        "resnet18",
        "--seed",
        "1",
        "--head",
        "single",
        "--reference-frames",
        s(&wd.path().join("frames")),
        "--out",
        s(&out),
    ]);
    assert!(run.status.success(), "{run}");
    let b = Bundle::load(&out).expect("loads");
    let vp = b.manifest.cameras[0]
        .viewpoint
        .as_ref()
        .expect("viewpoint table");
    assert_eq!(vp.frames.len(), 3);
    assert_eq!(vp.downscale, 4);
    let a = read_npy(&out.join(&vp.frames[0])).expect("reads");
    assert_eq!(a.shape, vec![120, 160]);
    assert!(vp.mean_rgb.iter().all(|&m| m > 10.0 && m < 250.0), "{vp:?}");
    // A frame of the wrong size is refused, naming it and the capture size.
    write_png(&frames.join("small.png"), &picture(320, 240, 1)).expect("writes");
    let run = tools(&[
        "export",
        "--arch",
        "resnet18",
        "--seed",
        "1",
        "--head",
        "single",
        "--reference-frames",
        s(&wd.path().join("frames")),
        "--out",
        s(&wd.path().join("bundle2")),
    ]);
    assert!(!run.status.success());
    assert!(
        run.stderr.contains("small.png") && run.stderr.contains("640x480"),
        "{run}"
    );
}

/// Attention rollout of the reference ViT-S/16 (seeded weights) on one observation: 12 layers of
/// 6 heads over 197 tokens, the class token's shares a distribution over itself and the 14 x 14
/// patches, equal to the rollout computed from ONNX Runtime's attention tensors by numpy
/// (`tests/python/attention_rollout_ref.py`); then `reflex-tools explain` on that bundle writes
/// the rollout picture and its JSON.
#[test]
fn vit_attention_rollout_matches_onnx_runtime_and_explain_draws_it() {
    use reflex_models::npy::write_npy;
    let wd = WorkDir::new("rollout-vit");
    let bundle_dir = wd.path().join("vit");
    let run = tools(&[
        "export",
        "--arch",
        "vit-s16",
        "--seed",
        "0",
        "--out",
        s(&bundle_dir),
    ]);
    assert!(run.status.success(), "{run}");
    let bundle = Bundle::load(&bundle_dir).expect("loads");
    let m = &bundle.manifest;
    let episode = wd.path().join("episode");
    reflex_runtime::camera::replay::generate_synthetic_episode(m, &episode, 0.3, 10)
        .expect("writes the episode");
    let ep = reflex_runtime::camera::replay::Episode::load(&episode).expect("episode");
    let mut ex = Explainer::new(&bundle).expect("explainer");
    let (frames, state) =
        reflex_tools::explain::episode_observation(m, &ep, 1).expect("observation");
    let (images, normalized) = ex.inputs(&frames, &state).expect("inputs");
    let r =
        reflex_tools::rollout::attention_rollout(&bundle, &images, &normalized).expect("rollout");
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(r.cameras.len(), m.cameras.len());
    let c = &r.cameras[0];
    assert_eq!(
        (c.layers, c.heads, c.tokens, c.cols, c.rows, c.patch),
        (12, 6, 197, 14, 14, 16)
    );
    let total = c.cls_self + c.patch_weights.iter().sum::<f64>();
    assert!((total - 1.0).abs() < 1e-9, "shares sum to {total}");

    // The same rollout from ONNX Runtime's attention tensors.
    let cam = &m.cameras[0];
    let p = &cam.preprocess;
    let image_npy = wd.path().join("image.npy");
    let shape = [1, 3, p.resize.height as usize, p.resize.width as usize];
    write_npy(&image_npy, &NpyArray::f32(&shape, images[0].clone())).expect("npy");
    let mut feeds = vec![format!("{}={}", cam.onnx_input, s(&image_npy))];
    if let Some(name) = &m.state.onnx_input {
        let state_npy = wd.path().join("state.npy");
        write_npy(
            &state_npy,
            &NpyArray::f32(&[1, normalized.len()], normalized.clone()),
        )
        .expect("npy");
        feeds.push(format!("{name}={}", s(&state_npy)));
    }
    let out_npy = wd.path().join("rollout.npy");
    let mut args = vec![s(&bundle.policy_path).to_string(), s(&out_npy).to_string()];
    args.extend(feeds);
    if reflex_testkit::python::reference(
        "attention_rollout_ref.py",
        &args,
        "numpy onnx onnxruntime",
    )
    .is_some()
    {
        let reference = read_npy(&out_npy).expect("reference").data.to_f32();
        assert_eq!(reference.len(), 197);
        let ours: Vec<f64> = std::iter::once(c.cls_self)
            .chain(c.patch_weights.iter().copied())
            .collect();
        let worst = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - f64::from(*b)).abs())
            .fold(0.0, f64::max);
        let largest = c.patch_weights.iter().cloned().fold(0.0, f64::max);
        eprintln!("rollout vs ONNX Runtime: max difference {worst:.2e} (largest patch share {largest:.4})");
        assert!(
            worst < 1e-5,
            "rollout differs from ONNX Runtime's by {worst}"
        );
    }

    // The command: one large occlusion patch keeps it short; the rollout picture is drawn.
    let out = wd.path().join("explain");
    let side = cam.capture.width.min(cam.capture.height) / 2;
    let side = side.to_string();
    let run = tools(&[
        "explain",
        "--bundle",
        s(&bundle_dir),
        "--episode",
        s(&episode),
        "--frame",
        "1",
        "--patch",
        &side,
        "--stride",
        &side,
        "--out",
        s(&out),
    ]);
    assert!(run.status.success(), "{run}");
    let png = out.join(format!("rollout-{}.png", cam.name));
    assert!(png.is_file() && run.stdout.contains("rollout-"), "{run}");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("rollout.json")).expect("rollout.json"),
    )
    .expect("parses");
    assert_eq!(json["cameras"][0]["tokens"], 197);
    docs_picture("rollout-vit.png", |dst| {
        std::fs::copy(&png, dst).expect("copy");
    });
}
