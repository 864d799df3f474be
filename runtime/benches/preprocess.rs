//! Preprocessing cost per frame, against a `copy_from_slice` of the same frame bytes measured in
//! the same run (the floor: touching every input byte once).
//!
//! `cargo bench -p reflex-runtime --bench preprocess` (plain `Instant` timing, no harness).
//! Prints median and p99 over `ITERS` runs after a warm-up, and the ratio of the medians.
//! Arguments (other than cargo's `--bench`) select the cases whose label contains one of them.
//! On x86-64 the default target has only SSE2; the resampler is also compiled with AVX2+FMA and
//! chosen at run time on CPUs that have them (the loops are written to autovectorize at any
//! width), so this measures the AVX2 build on such CPUs.

use reflex_models::manifest::{
    CameraSpec, CaptureSpec, ColorOrder, Interpolation, Layout, PixelFormat, PreprocessSpec,
    ResizeDtype, ResizeSpec,
};
use reflex_runtime::preprocess::Preprocessor;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Timed runs per case; `cargo test` runs this bench binary without `--bench` as a quick smoke
/// check (a few runs), `cargo bench` passes `--bench` and gets the full count.
fn iters() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        300
    } else {
        5
    }
}
const WARMUP: usize = 30;

/// A 640x480 JPEG (4:2:2, as UVC cameras send MJPEG), made by `tests/python/preprocess_ref.py
/// --make-jpeg`.
const JPEG: &[u8] = include_bytes!("../tests/data/preprocess_640x480_422.jpg");

fn camera(format: PixelFormat, interpolation: Interpolation) -> CameraSpec {
    CameraSpec {
        name: "bench".into(),
        onnx_input: "image.bench".into(),
        capture: CaptureSpec {
            width: 640,
            height: 480,
            format,
            fps: 30,
        },
        preprocess: PreprocessSpec {
            crop: None,
            resize: ResizeSpec {
                width: 224,
                height: 224,
                interpolation,
                antialias: true,
                dtype: ResizeDtype::Float,
            },
            color: ColorOrder::Rgb,
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
            layout: Layout::Nchw,
        },
        max_age_ms: 200,
        viewpoint: None,
    }
}

/// Deterministic bytes with some structure (a pseudo-random walk), so nothing is constant.
fn frame(len: usize) -> Vec<u8> {
    let mut s = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((i / 7) as u64 + (s & 63)) as u8
        })
        .collect()
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn measure(mut f: impl FnMut()) -> Stats {
    for _ in 0..WARMUP {
        f();
    }
    let mut t: Vec<Duration> = (0..iters())
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    t.sort();
    Stats {
        median: t[t.len() / 2],
        p99: t[t.len() * 99 / 100],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn bench(label: &str, cam: &CameraSpec, data: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| label.contains(f.as_str())) {
        return Ok(());
    }
    let mut pre = Preprocessor::new(cam)?;
    let mut out = vec![0.0f32; pre.output_len()];
    let (w, h, fmt) = (cam.capture.width, cam.capture.height, cam.capture.format);
    pre.run(data, w, h, fmt, &mut out)?;
    let mut err = None;
    let run = measure(|| {
        if let Err(e) = pre.run(black_box(data), w, h, fmt, black_box(&mut out)) {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e.into());
    }
    let mut copy = vec![0u8; data.len()];
    let memcpy = measure(|| {
        copy.copy_from_slice(black_box(data));
        black_box(&mut copy);
    });
    println!(
        "{label:<44} median {:>7.3} ms  p99 {:>7.3} ms | memcpy of {:>6} B median {:.4} ms | \
         ratio {:>6.1}x",
        ms(run.median),
        ms(run.p99),
        data.len(),
        ms(memcpy.median),
        run.median.as_secs_f64() / memcpy.median.as_secs_f64().max(1e-12),
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "preprocess: 640x480 -> 3x224x224 f32 CHW, ImageNet mean/std, {} iterations",
        iters()
    );
    let bilinear = Interpolation::Bilinear;
    bench(
        "yuyv -> rgb, antialiased bilinear",
        &camera(PixelFormat::Yuyv, bilinear),
        &frame(640 * 480 * 2),
    )?;
    bench(
        "rgb24 -> rgb, antialiased bilinear",
        &camera(PixelFormat::Rgb24, bilinear),
        &frame(640 * 480 * 3),
    )?;
    bench(
        "yuyv -> rgb, nearest",
        &camera(PixelFormat::Yuyv, Interpolation::Nearest),
        &frame(640 * 480 * 2),
    )?;
    bench(
        "mjpeg (4:2:2) -> rgb, antialiased bilinear",
        &camera(PixelFormat::Mjpeg, bilinear),
        JPEG,
    )?;
    Ok(())
}
