//! Camera preprocessing against an independent reference and at its edges.
//!
//! - `matches_the_python_reference`: random frames through [`Preprocessor`] and through
//!   `tests/python/preprocess_ref.py` (numpy float64 + PIL, written from the PyTorch/PIL
//!   definitions), compared element by element. Needs `python3` with numpy and pillow
//!   (`scripts/setup.sh`); fails when they are missing unless `REFLEX_SKIP_PY=1`.
//! - frames in the wrong mode, of the wrong length, corrupt JPEGs: errors naming the camera.
//! - allocation: `run` allocates nothing for raw formats (a counting global allocator, per
//!   thread); the MJPEG decoder's per-frame allocations are measured and bounded.

use reflex_models::manifest::{
    CameraSpec, CaptureSpec, ColorOrder, CropSpec, Interpolation, Layout, PixelFormat,
    PreprocessSpec, ResizeDtype, ResizeSpec,
};
use reflex_models::npy::{read_npy, NpyData};
use reflex_runtime::io::{Fault, FaultKind};
use reflex_runtime::preprocess::{PreprocessError, Preprocessor};
use reflex_testkit::dirs::WorkDir;
use reflex_testkit::python;
use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

use reflex_testkit::counting::allocs;

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// One preprocessing case: capture, optional crop, resize, colour order, normalization.
#[derive(Clone)]
struct Case {
    name: &'static str,
    capture: (u32, u32, PixelFormat),
    crop: Option<(u32, u32, u32, u32)>,
    resize: (u32, u32, Interpolation, bool),
    color: ColorOrder,
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Case {
    fn new(
        name: &'static str,
        capture: (u32, u32, PixelFormat),
        crop: Option<(u32, u32, u32, u32)>,
        resize: (u32, u32, Interpolation, bool),
        color: ColorOrder,
    ) -> Case {
        let (mean, std) = match color {
            ColorOrder::Grey => (vec![0.5], vec![0.25]),
            _ => (IMAGENET_MEAN.to_vec(), IMAGENET_STD.to_vec()),
        };
        Case {
            name,
            capture,
            crop,
            resize,
            color,
            mean,
            std,
        }
    }

    fn spec(&self) -> CameraSpec {
        let (width, height, format) = self.capture;
        let (rw, rh, interpolation, antialias) = self.resize;
        CameraSpec {
            name: self.name.into(),
            onnx_input: format!("image.{}", self.name),
            capture: CaptureSpec {
                width,
                height,
                format,
                fps: 30,
            },
            preprocess: PreprocessSpec {
                crop: self.crop.map(|(x, y, width, height)| CropSpec {
                    x,
                    y,
                    width,
                    height,
                }),
                resize: ResizeSpec {
                    width: rw,
                    height: rh,
                    interpolation,
                    antialias,
                    dtype: ResizeDtype::Float,
                },
                color: self.color,
                mean: self.mean.clone(),
                std: self.std.clone(),
                layout: Layout::Nchw,
            },
            max_age_ms: 200,
            viewpoint: None,
        }
    }

    fn frame_len(&self) -> usize {
        let (w, h, f) = self.capture;
        match f {
            PixelFormat::Yuyv => (w * h) as usize * 2,
            PixelFormat::Rgb24 | PixelFormat::Mjpeg => (w * h) as usize * 3,
            PixelFormat::Grey => (w * h) as usize,
            PixelFormat::Nv12 => (w * h) as usize * 3 / 2,
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// sha256 of `v`'s little-endian f32 bytes, lower-case hex.
fn f32_digest(v: &[f32]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    hex::encode(h.finalize())
}

fn run_case(case: &Case, frame: &[u8]) -> Result<Vec<f32>, PreprocessError> {
    let mut pre = Preprocessor::new(&case.spec())?;
    let mut out = vec![f32::NAN; pre.output_len()];
    let (w, h, f) = case.capture;
    pre.run(frame, w, h, f, &mut out)?;
    Ok(out)
}

fn json_str(s: &str) -> String {
    format!("\"{s}\"")
}

fn case_json(case: &Case, frame: &Path, out: &Path, make_jpeg: Option<&str>) -> String {
    let (w, h, f) = case.capture;
    let (rw, rh, interp, aa) = case.resize;
    let crop = match case.crop {
        Some((x, y, cw, ch)) => format!(r#"{{"x": {x}, "y": {y}, "width": {cw}, "height": {ch}}}"#),
        None => "null".into(),
    };
    let interp = match interp {
        Interpolation::Bilinear => "bilinear",
        Interpolation::Nearest => "nearest",
    };
    let color = match case.color {
        ColorOrder::Rgb => "rgb",
        ColorOrder::Bgr => "bgr",
        ColorOrder::Grey => "grey",
    };
    let list = |v: &[f32]| {
        let items: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
        format!("[{}]", items.join(", "))
    };
    let make_jpeg = make_jpeg
        .map(|j| format!(r#", "make_jpeg": {j}"#))
        .unwrap_or_default();
    format!(
        r#"{{"name": {}, "frame": {}, "width": {w}, "height": {h}, "format": {}, "crop": {crop},
 "resize": {{"width": {rw}, "height": {rh}, "interpolation": {}, "antialias": {aa}}},
 "color": {}, "mean": {}, "std": {}, "out": {}{make_jpeg}}}"#,
        json_str(case.name),
        json_str(&frame.display().to_string()),
        json_str(f.as_str()),
        json_str(interp),
        json_str(color),
        list(&case.mean),
        list(&case.std),
        json_str(&out.display().to_string()),
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    a.iter()
        .zip(b)
        .enumerate()
        .fold((0.0, 0), |(m, at), (i, (x, y))| {
            let d = (x - y).abs();
            if d > m || d.is_nan() {
                (d, i)
            } else {
                (m, at)
            }
        })
}

/// Random frames, every format and resize mode, against numpy/PIL. Float paths agree to 1e-4
/// on normalized values. The residual (up to ~5e-5 at 640 -> 224) is mostly PyTorch's own f32
/// arithmetic for the filter centres and weights, which the Rust side reproduces and the float64
/// reference does not (~3e-5 by itself), plus f32 accumulation. MJPEG goes through two different
/// decoders (zune-jpeg here, libjpeg-turbo in PIL), so it is held to a bound on decoded-pixel
/// differences instead: see `MJPEG_*` below.
#[test]
fn matches_the_python_reference() -> TestResult {
    use ColorOrder::{Bgr, Grey, Rgb};
    use Interpolation::{Bilinear, Nearest};
    use PixelFormat::{Grey as GreyFmt, Mjpeg, Rgb24, Yuyv};
    let float_cases = [
        Case::new(
            "yuyv_640x480_to_224_aa",
            (640, 480, Yuyv),
            None,
            (224, 224, Bilinear, true),
            Rgb,
        ),
        Case::new(
            "yuyv_odd_crop_bgr_aa",
            (640, 480, Yuyv),
            Some((81, 30, 480, 400)),
            (224, 224, Bilinear, true),
            Bgr,
        ),
        Case::new(
            "yuyv_to_grey_aa",
            (160, 120, Yuyv),
            Some((3, 5, 150, 100)),
            (64, 48, Bilinear, true),
            Grey,
        ),
        Case::new(
            "yuyv_nearest",
            (640, 480, Yuyv),
            None,
            (224, 224, Nearest, true),
            Rgb,
        ),
        Case::new(
            "rgb24_upscale",
            (64, 48, Rgb24),
            None,
            (160, 120, Bilinear, true),
            Rgb,
        ),
        Case::new(
            "rgb24_plain_downscale_crop",
            (100, 80, Rgb24),
            Some((7, 9, 90, 61)),
            (37, 29, Bilinear, false),
            Bgr,
        ),
        Case::new(
            "rgb24_mixed_up_down",
            (120, 40, Rgb24),
            None,
            (50, 90, Bilinear, true),
            Rgb,
        ),
        Case::new(
            "rgb24_wide_kernel",
            (640, 480, Rgb24),
            None,
            (64, 40, Bilinear, true),
            Rgb,
        ),
        Case::new(
            "rgb24_to_grey",
            (96, 64, Rgb24),
            None,
            (40, 30, Bilinear, true),
            Grey,
        ),
        Case::new(
            "grey_aa",
            (96, 64, GreyFmt),
            None,
            (40, 30, Bilinear, true),
            Grey,
        ),
        Case::new(
            "grey_to_rgb_nearest",
            (96, 64, GreyFmt),
            Some((1, 2, 90, 60)),
            (50, 70, Nearest, true),
            Rgb,
        ),
        Case::new(
            "grey_nearest_2x",
            (30, 20, GreyFmt),
            None,
            (60, 10, Nearest, false),
            Grey,
        ),
        Case::new(
            "one_pixel_column",
            (2, 9, Yuyv),
            Some((1, 0, 1, 9)),
            (3, 4, Bilinear, true),
            Rgb,
        ),
    ];
    let jpeg_cases = [
        (
            Case::new(
                "mjpeg_422",
                (640, 480, Mjpeg),
                None,
                (224, 224, Bilinear, true),
                Rgb,
            ),
            r#"{"subsampling": "422", "quality": 85, "seed": 3}"#,
        ),
        (
            Case::new(
                "mjpeg_420_crop",
                (320, 240, Mjpeg),
                Some((40, 20, 240, 200)),
                (96, 80, Bilinear, true),
                Bgr,
            ),
            r#"{"subsampling": "420", "quality": 75, "seed": 4}"#,
        ),
    ];

    let dir = WorkDir::new("preprocess_ref");
    let mut json = vec![];
    let mut frames = vec![];
    for (i, case) in float_cases.iter().enumerate() {
        let frame = noise(case.frame_len(), 1000 + i as u64);
        let path = dir.join(format!("{}.frame", case.name));
        std::fs::write(&path, &frame)?;
        json.push(case_json(
            case,
            &path,
            &dir.join(format!("{}.npy", case.name)),
            None,
        ));
        frames.push(frame);
    }
    for (case, make) in &jpeg_cases {
        let path = dir.join(format!("{}.jpg", case.name));
        json.push(case_json(
            case,
            &path,
            &dir.join(format!("{}.npy", case.name)),
            Some(make),
        ));
    }
    let cases_json = dir.join("cases.json");
    std::fs::write(
        &cases_json,
        format!("{{\"cases\": [\n{}\n]}}\n", json.join(",\n")),
    )?;
    if python::reference("preprocess_ref.py", [&cases_json], "numpy pillow").is_none() {
        return Ok(());
    }

    let reference = |case: &Case| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
        let a = read_npy(&dir.join(format!("{}.npy", case.name)))?;
        let (rw, rh, _, _) = case.resize;
        let want = vec![case.color.channels(), rh as usize, rw as usize];
        assert_eq!(a.shape, want, "{}: reference shape", case.name);
        match a.data {
            NpyData::F32(v) => Ok(v),
            other => Err(format!("{}: reference dtype {}", case.name, other.descr()).into()),
        }
    };
    for (case, frame) in float_cases.iter().zip(&frames) {
        let ours = run_case(case, frame)?;
        let want = reference(case)?;
        let (diff, at) = max_abs_diff(&ours, &want);
        eprintln!("{:<28} max |diff| {diff:.2e}", case.name);
        assert!(
            diff <= 1e-4,
            "{}: max |ours - reference| = {diff} at {at} ({} vs {})",
            case.name,
            ours[at],
            want[at]
        );
    }
    for (case, _) in &jpeg_cases {
        let jpeg = std::fs::read(dir.join(format!("{}.jpg", case.name)))?;
        let ours = run_case(case, &jpeg)?;
        let want = reference(case)?;
        // Back to 0..255 units of the resized image, to bound decoder differences in levels.
        let levels: Vec<f32> = ours
            .iter()
            .zip(&want)
            .enumerate()
            .map(|(i, (a, b))| {
                let c = i / (ours.len() / case.color.channels());
                (a - b).abs() * case.std[c] * 255.0
            })
            .collect();
        let max = levels.iter().fold(0f32, |m, &d| m.max(d));
        let mean = levels.iter().sum::<f32>() / levels.len() as f32;
        eprintln!(
            "{:<28} decoder difference after resize: max {max:.2} levels, mean {mean:.3}",
            case.name
        );
        assert!(
            max <= MJPEG_MAX_LEVELS && mean <= MJPEG_MEAN_LEVELS,
            "{}: zune-jpeg vs libjpeg differ by max {max} / mean {mean} levels",
            case.name
        );
    }
    Ok(())
}

/// zune-jpeg and libjpeg-turbo differ in IDCT rounding and chroma upsampling; after an
/// antialiased downscale the difference is well under a level on average.
const MJPEG_MAX_LEVELS: f32 = 3.0;
const MJPEG_MEAN_LEVELS: f32 = 0.5;

fn yuyv_case() -> Case {
    Case::new(
        "front",
        (640, 480, PixelFormat::Yuyv),
        None,
        (224, 224, Interpolation::Bilinear, true),
        ColorOrder::Rgb,
    )
}

#[test]
fn frames_in_another_mode_are_refused_naming_camera_and_sizes() -> TestResult {
    let case = yuyv_case();
    let mut pre = Preprocessor::new(&case.spec())?;
    let mut out = vec![0.0; pre.output_len()];
    let frame = noise(1280 * 720 * 2, 1);
    let e = pre
        .run(&frame, 1280, 720, PixelFormat::Yuyv, &mut out)
        .expect_err("a 1280x720 frame for a 640x480 camera");
    let msg = e.to_string();
    for part in [
        "camera `front`",
        "1280x720 yuyv",
        "640x480 yuyv",
        "never resized",
    ] {
        assert!(msg.contains(part), "`{part}` missing from: {msg}");
    }
    assert_eq!(e.kind(), FaultKind::Fatal);
    assert_eq!(e.camera(), "front");

    let e = pre
        .run(
            &frame[..640 * 480 * 3],
            640,
            480,
            PixelFormat::Rgb24,
            &mut out,
        )
        .expect_err("wrong format");
    assert!(e.to_string().contains("640x480 rgb24"), "{e}");

    let e = pre
        .run(
            &frame[..640 * 480 * 2 - 2],
            640,
            480,
            PixelFormat::Yuyv,
            &mut out,
        )
        .expect_err("a truncated frame");
    let msg = e.to_string();
    for part in ["camera `front`", "614398 bytes", "expected 614400"] {
        assert!(msg.contains(part), "`{part}` missing from: {msg}");
    }
    assert_eq!(e.kind(), FaultKind::Transient);

    let e = pre
        .run(
            &frame[..640 * 480 * 2],
            640,
            480,
            PixelFormat::Yuyv,
            &mut out[1..],
        )
        .expect_err("a short output buffer");
    assert!(
        e.to_string().contains("150527 f32") && e.to_string().contains("3x224x224"),
        "{e}"
    );

    pre.run(
        &frame[..640 * 480 * 2],
        640,
        480,
        PixelFormat::Yuyv,
        &mut out,
    )?;
    Ok(())
}

/// A 640x480 4:2:2 JPEG from `preprocess_ref.py --make-jpeg` (also used by the bench).
const JPEG: &[u8] = include_bytes!("../data/preprocess_640x480_422.jpg");

fn mjpeg_case() -> Case {
    let mut c = yuyv_case();
    c.name = "wrist";
    c.capture.2 = PixelFormat::Mjpeg;
    c
}

#[test]
fn corrupt_or_mismatched_jpegs_are_errors_not_panics() -> TestResult {
    let case = mjpeg_case();
    let mut pre = Preprocessor::new(&case.spec())?;
    let mut out = vec![0.0; pre.output_len()];
    pre.run(JPEG, 640, 480, PixelFormat::Mjpeg, &mut out)?;
    assert!(out.iter().all(|v| v.is_finite()));
    // Some UVC cameras pad frames with zeros after the end-of-image marker.
    let padded = [JPEG, &[0; 100]].concat();
    let mut again = vec![0.0; out.len()];
    pre.run(&padded, 640, 480, PixelFormat::Mjpeg, &mut again)?;
    assert_eq!(out, again);

    let mut flipped = JPEG.to_vec();
    for i in (JPEG.len() / 3..JPEG.len() - 2).step_by(97) {
        flipped[i] ^= 0x5a;
    }
    let mut garbage = JPEG[..2].to_vec();
    garbage.extend(noise(4000, 9));
    garbage.extend([0xff, 0xd9]);
    let bad: [(&str, &[u8]); 6] = [
        ("empty", &[]),
        ("not a JPEG", &noise(5000, 7)),
        ("truncated", &JPEG[..JPEG.len() / 2]),
        ("truncated by one byte", &JPEG[..JPEG.len() - 1]),
        ("SOI, noise, EOI", &garbage),
        ("bit flips in the scan", &flipped),
    ];
    for (what, data) in bad {
        match pre.run(data, 640, 480, PixelFormat::Mjpeg, &mut out) {
            Err(e @ PreprocessError::Jpeg { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("camera `wrist`") && msg.contains("corrupt MJPEG"),
                    "{msg}"
                );
                assert_eq!(e.kind(), FaultKind::Transient);
            }
            // Flipped bits inside entropy-coded data can still decode to a (wrong) image; that
            // is the camera's CRC-less transport, not something a decoder can see.
            Ok(()) if what == "bit flips in the scan" => {}
            other => panic!("{what}: expected a JPEG error, got {other:?}"),
        }
    }

    // A valid JPEG of another size is refused like a raw frame of another size.
    let mut small = Preprocessor::new(
        &Case {
            capture: (320, 240, PixelFormat::Mjpeg),
            ..case.clone()
        }
        .spec(),
    )?;
    let mut out_small = vec![0.0; small.output_len()];
    let e = small
        .run(JPEG, 320, 240, PixelFormat::Mjpeg, &mut out_small)
        .expect_err("a 640x480 JPEG for a 320x240 camera");
    assert!(
        matches!(
            e,
            PreprocessError::Jpeg { .. } | PreprocessError::JpegSize { .. }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("camera `wrist`"), "{e}");
    Ok(())
}

#[test]
fn run_allocates_nothing_for_raw_formats() -> TestResult {
    use Interpolation::{Bilinear, Nearest};
    use PixelFormat::{Grey, Rgb24, Yuyv};
    let cases = [
        Case::new(
            "a",
            (640, 480, Yuyv),
            None,
            (224, 224, Bilinear, true),
            ColorOrder::Rgb,
        ),
        Case::new(
            "b",
            (640, 480, Yuyv),
            Some((1, 3, 401, 300)),
            (96, 96, Nearest, true),
            ColorOrder::Bgr,
        ),
        Case::new(
            "c",
            (64, 48, Rgb24),
            None,
            (224, 224, Bilinear, false),
            ColorOrder::Rgb,
        ),
        Case::new(
            "d",
            (64, 48, Rgb24),
            None,
            (30, 20, Bilinear, true),
            ColorOrder::Grey,
        ),
        Case::new(
            "e",
            (64, 48, Grey),
            None,
            (30, 20, Bilinear, true),
            ColorOrder::Rgb,
        ),
        Case::new(
            "f",
            (64, 48, Yuyv),
            None,
            (30, 20, Bilinear, true),
            ColorOrder::Grey,
        ),
    ];
    let dtypes = [
        ResizeDtype::Float,
        ResizeDtype::Uint8,
        ResizeDtype::Uint8Pil,
        ResizeDtype::Uint8Avx2,
    ];
    for (case, dtype) in cases
        .iter()
        .flat_map(|c| dtypes.map(|d| (c, d)))
        .filter(|(c, d)| {
            // Pillow's resize is bilinear with antialias only.
            *d != ResizeDtype::Uint8Pil || c.resize.2 == Interpolation::Bilinear && c.resize.3
        })
    {
        let mut spec = case.spec();
        spec.preprocess.resize.dtype = dtype;
        let mut pre = Preprocessor::new(&spec)?;
        let mut out = vec![0.0; pre.output_len()];
        let frame = noise(case.frame_len(), 5);
        let (w, h, f) = case.capture;
        pre.run(&frame, w, h, f, &mut out)?;
        let before = allocs();
        for _ in 0..3 {
            pre.run(&frame, w, h, f, &mut out)?;
        }
        assert_eq!(
            allocs() - before,
            0,
            "case {} ({dtype:?}): run allocated",
            case.name
        );
    }

    // MJPEG: the decoder allocates its own tables and buffers per frame; measure and bound it.
    let mut pre = Preprocessor::new(&mjpeg_case().spec())?;
    let mut out = vec![0.0; pre.output_len()];
    pre.run(JPEG, 640, 480, PixelFormat::Mjpeg, &mut out)?;
    let before = allocs();
    pre.run(JPEG, 640, 480, PixelFormat::Mjpeg, &mut out)?;
    let n = allocs() - before;
    eprintln!("MJPEG 640x480 4:2:2: {n} allocations per frame inside zune-jpeg");
    assert!(n <= 64, "MJPEG decoding allocated {n} times per frame");
    Ok(())
}

/// torchvision's resize, from `tests/python/uint8_resize_ref.py` (PyTorch's portable kernels,
/// `ATEN_CPU_CAPABILITY=default`, two threads): `resize.dtype = "float"` gives its float32
/// result bit for bit, and `dtype = "uint8"` its uint8 tensor exactly (every value, as an integer
/// level): an antialiased 640x480 -> 224x224, a crop upscaled without antialias, an exact 2x
/// downscale without antialias (every output an exact half-level tie, rounded to even), a 10x
/// antialiased downscale (21 and 25 taps), an antialiased width-up, height-down resize, and
/// nearest; and `dtype = "uint8-avx2"` its uint8 tensor on an AVX2 CPU (PyTorch's native
/// fixed-point kernel, `ATEN_CPU_CAPABILITY=avx2`), every value too. torchvision's values go
/// through the normalization as documented (`x * a + b`, with
/// `a = 1 / (255 std)` rounded to f32) before the bit comparison; the float default is checked
/// to differ from the uint8 tensors, so the comparison can fail. Where `REFLEX_TORCH_PYTHON`
/// names a python with torch and torchvision, torchvision runs and every value is compared (and
/// its outputs' digests checked against `tests/data/torch/torch-resize.sha256`); elsewhere (CI:
/// torch is too large to install) reflex's outputs are checked against those recorded digests of
/// torchvision's outputs (torch 2.7.1, torchvision 0.22.1), which fails on any differing bit.
#[test]
fn resize_matches_torchvision_float_and_uint8() -> TestResult {
    let dir = WorkDir::new("torch-resize");
    let rgb = (640, 480, PixelFormat::Rgb24);
    let bilinear = Interpolation::Bilinear;
    let cases = [
        Case::new("aa", rgb, None, (224, 224, bilinear, true), ColorOrder::Rgb),
        Case::new(
            "up",
            rgb,
            Some((101, 37, 150, 90)),
            (224, 160, bilinear, false),
            ColorOrder::Rgb,
        ),
        Case::new(
            "half",
            rgb,
            None,
            (320, 240, bilinear, false),
            ColorOrder::Rgb,
        ),
        Case::new("wide", rgb, None, (64, 40, bilinear, true), ColorOrder::Rgb),
        Case::new(
            "mixed",
            rgb,
            Some((3, 1, 120, 400)),
            (150, 90, bilinear, true),
            ColorOrder::Rgb,
        ),
        Case::new(
            "nearest",
            rgb,
            None,
            (224, 224, Interpolation::Nearest, false),
            ColorOrder::Rgb,
        ),
    ];
    let mut recorded = python::RecordedDigests::load("torch-resize.sha256");
    for (k, case) in cases.into_iter().enumerate() {
        let case = Case {
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
            ..case
        };
        let frame = noise(case.frame_len(), 40 + k as u64);
        let frame_path = dir.path().join(format!("{}.rgb", case.name));
        std::fs::write(&frame_path, &frame)?;
        let (x, y, cw, ch) = case.crop.unwrap_or((0, 0, 640, 480));
        let (ow, oh, interp, aa) = case.resize;
        let mode = match interp {
            Interpolation::Bilinear => "bilinear",
            Interpolation::Nearest => "nearest",
        };
        let args: Vec<String> = [640, 480, x, y, cw, ch, ow, oh]
            .iter()
            .map(u32::to_string)
            .chain([mode.to_string(), u8::from(aa).to_string()])
            .collect();
        let torch = |kind: &str| -> Option<Vec<u8>> {
            let out = dir.path().join(format!("{}.{kind}", case.name));
            python::torch_reference(
                "uint8_resize_ref.py",
                std::iter::once(frame_path.display().to_string())
                    .chain(args.iter().cloned())
                    .chain([out.display().to_string(), kind.to_string()]),
                "torch torchvision numpy",
            )?;
            Some(std::fs::read(&out).expect("reads the reference output"))
        };
        // The preprocessor's normalization with mean 0, std 1 (module docs, step 4).
        let scale = (1.0 / 255.0f64) as f32;
        let levels = |b: Vec<u8>| -> Vec<f32> { b.iter().map(|&w| f32::from(w) * scale).collect() };
        let want = torch("uint8").map(levels);
        let want_float: Option<Vec<f32>> = want.as_ref().map(|_| {
            torch("float")
                .expect("torch ran for uint8")
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * scale)
                .collect()
        });
        let want_avx2 = want
            .as_ref()
            .map(|_| levels(torch("avx2").expect("torch ran for uint8")));

        let mut spec = case.spec();
        spec.preprocess.resize.dtype = ResizeDtype::Uint8;
        let mut pre = Preprocessor::new(&spec)?;
        let mut got = vec![f32::NAN; pre.output_len()];
        pre.run(&frame, 640, 480, PixelFormat::Rgb24, &mut got)?;
        spec.preprocess.resize.dtype = ResizeDtype::Uint8Avx2;
        let mut pre = Preprocessor::new(&spec)?;
        let mut got_avx2 = vec![f32::NAN; pre.output_len()];
        pre.run(&frame, 640, 480, PixelFormat::Rgb24, &mut got_avx2)?;
        let float = run_case(&case, &frame)?;

        let (Some(want), Some(want_float), Some(avx2)) = (want, want_float, want_avx2) else {
            // No torch here: torchvision's outputs as recorded (their digests).
            for (kind, ours) in [("uint8", &got), ("float", &float), ("avx2", &got_avx2)] {
                let name = format!("{}.{kind}", case.name);
                assert_eq!(
                    f32_digest(ours),
                    recorded.digest(&name),
                    "{name}: differs from torchvision's output recorded in {} (run with \
                     REFLEX_TORCH_PYTHON set to see the differing values)",
                    recorded.path.display()
                );
            }
            eprintln!(
                "{}: uint8, float and uint8-avx2 equal torchvision's recorded outputs",
                case.name
            );
            continue;
        };
        for (kind, theirs) in [("uint8", &want), ("float", &want_float), ("avx2", &avx2)] {
            recorded.check(&format!("{}.{kind}", case.name), &f32_digest(theirs));
        }

        assert_eq!(got.len(), want.len(), "{}", case.name);
        let off: Vec<(usize, f32, f32)> = got
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
            .map(|(i, (&g, &w))| (i, g * 255.0, w * 255.0))
            .collect();
        assert!(
            off.is_empty(),
            "{}: {} of {} values differ from torchvision's uint8 resize, first {:?}",
            case.name,
            off.len(),
            want.len(),
            &off[..off.len().min(5)]
        );

        let off = got_avx2
            .iter()
            .zip(&avx2)
            .filter(|(g, w)| g.to_bits() != w.to_bits())
            .count();
        let native = avx2.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!(
            "{}: uint8-avx2 differs from torchvision's native uint8 resize on {off} of {} \
             values (its float-then-round path differs from the native one on {native})",
            case.name,
            avx2.len()
        );
        assert_eq!(off, 0, "{}: uint8-avx2 vs torchvision (AVX2)", case.name);

        assert_eq!(float.len(), want_float.len(), "{}", case.name);
        let float_off: Vec<(usize, f32, f32)> = float
            .iter()
            .zip(&want_float)
            .enumerate()
            .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
            .map(|(i, (&g, &w))| (i, g * 255.0, w * 255.0))
            .collect();
        assert!(
            float_off.is_empty(),
            "{}: {} of {} float values differ from torchvision's float resize, first {:?}",
            case.name,
            float_off.len(),
            want_float.len(),
            &float_off[..float_off.len().min(5)]
        );
        let differ = float
            .iter()
            .zip(&want)
            .filter(|(g, w)| g.to_bits() != w.to_bits())
            .count();
        eprintln!(
            "{}: float and uint8 dtypes equal torchvision's float and uint8 resize on all {} \
             values; the float result is not an integer on {differ}",
            case.name,
            want.len()
        );
        if case.name != "nearest" {
            assert!(
                differ > 0,
                "{}: the float path should not be integral",
                case.name
            );
        }
    }
    recorded.finish();
    Ok(())
}

/// `resize.dtype = "uint8-pil"` reproduces Pillow's `Image.resize(BILINEAR)` of 8-bit images
/// exactly (every value; `tests/python/pil_resize_ref.py`): an antialiased 640x480 -> 224x224,
/// a crop upscaled, an exact 2x downscale, a 10x downscale, a width-down, height-up resize, a
/// square centre crop and a grey image (`convert("L")` then resize). Pillow 13 runs the vertical
/// pass first for some tall or width-enlarging, height-shrinking resizes (see
/// `ResizeDtype::Uint8Pil`), which reflex does not reproduce; these cases are ones it runs
/// horizontally first, like every earlier Pillow. torchvision's float-then-round resize
/// (`dtype = "uint8"`) is checked to differ from Pillow, so the comparison can fail.
#[test]
fn uint8_pil_matches_pillow() -> TestResult {
    let dir = WorkDir::new("pil-resize");
    let rgb = (640, 480, PixelFormat::Rgb24);
    let bilinear = Interpolation::Bilinear;
    let cases = [
        Case::new("aa", rgb, None, (224, 224, bilinear, true), ColorOrder::Rgb),
        Case::new(
            "up",
            rgb,
            Some((101, 37, 150, 90)),
            (224, 160, bilinear, true),
            ColorOrder::Rgb,
        ),
        Case::new(
            "half",
            rgb,
            None,
            (320, 240, bilinear, true),
            ColorOrder::Rgb,
        ),
        Case::new("wide", rgb, None, (64, 40, bilinear, true), ColorOrder::Rgb),
        Case::new(
            "mixed",
            rgb,
            Some((3, 1, 400, 120)),
            (150, 200, bilinear, true),
            ColorOrder::Bgr,
        ),
        Case::new(
            "square",
            rgb,
            Some((80, 0, 480, 480)),
            (224, 224, bilinear, true),
            ColorOrder::Rgb,
        ),
        Case::new(
            "grey",
            rgb,
            Some((7, 9, 300, 200)),
            (96, 64, bilinear, true),
            ColorOrder::Grey,
        ),
    ];
    let mut rounded_differs = 0;
    for (k, case) in cases.into_iter().enumerate() {
        let n = case.color.channels();
        let case = Case {
            mean: vec![0.0; n],
            std: vec![1.0; n],
            ..case
        };
        let frame = noise(case.frame_len(), 70 + k as u64);
        let frame_path = dir.path().join(format!("{}.rgb", case.name));
        let out = dir.path().join(format!("{}.u8", case.name));
        std::fs::write(&frame_path, &frame)?;
        let (x, y, cw, ch) = case.crop.unwrap_or((0, 0, 640, 480));
        let (ow, oh, _, _) = case.resize;
        let sizes = [640, 480, x, y, cw, ch, ow, oh];
        let args = sizes.iter().map(u32::to_string).chain([
            if n == 1 { "grey" } else { "rgb" }.to_string(),
            out.display().to_string(),
        ]);
        let Some(_) = python::reference(
            "pil_resize_ref.py",
            std::iter::once(frame_path.display().to_string()).chain(args),
            "numpy pillow",
        ) else {
            return Ok(());
        };
        let mut want: Vec<f32> = std::fs::read(&out)?
            .iter()
            .map(|&w| f32::from(w) * (1.0 / 255.0f64) as f32)
            .collect();
        if case.color == ColorOrder::Bgr {
            let plane = want.len() / 3;
            let (r, rest) = want.split_at_mut(plane);
            r.swap_with_slice(&mut rest[plane..]);
        }
        let mut spec = case.spec();
        let mut run = |dtype| -> Result<Vec<f32>, PreprocessError> {
            spec.preprocess.resize.dtype = dtype;
            let mut pre = Preprocessor::new(&spec)?;
            let mut got = vec![f32::NAN; pre.output_len()];
            pre.run(&frame, 640, 480, PixelFormat::Rgb24, &mut got)?;
            Ok(got)
        };
        let got = run(ResizeDtype::Uint8Pil)?;
        assert_eq!(got.len(), want.len(), "{}", case.name);
        let off: Vec<(usize, f32, f32)> = got
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(_, (g, w))| g.to_bits() != w.to_bits())
            .map(|(i, (&g, &w))| (i, g * 255.0, w * 255.0))
            .collect();
        assert!(
            off.is_empty(),
            "{}: {} of {} values differ from Pillow, first {:?}",
            case.name,
            off.len(),
            want.len(),
            &off[..off.len().min(5)]
        );
        let rounded = run(ResizeDtype::Uint8)?;
        let differ = rounded.iter().zip(&want).filter(|(a, b)| a != b).count();
        eprintln!(
            "{}: uint8-pil equals Pillow on all {} values; dtype = uint8 differs on {differ}",
            case.name,
            want.len()
        );
        rounded_differs += differ;
    }
    assert!(
        rounded_differs > 0,
        "float-then-round should differ from Pillow somewhere"
    );
    Ok(())
}
