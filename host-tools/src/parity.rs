//! `reflex-tools parity`: does the bundle's preprocessing reproduce the tensors the user's own
//! training dataloader made from the same frames?
//!
//! For each raw frame (PNG/JPEG at the camera's capture size) and the `.npy` tensor the
//! dataloader produced from it (paired by file stem: `0001.png` with `0001.npy`), the bundle's
//! preprocessing ([`reflex_runtime::preprocess`]) runs on the frame and the two tensors are
//! compared per channel (max and mean absolute difference, in normalized units). When they differ,
//! each usual mistake is tried on the frame and the one that explains the difference is named:
//!
//! | mistake | hypothesis tried |
//! |---|---|
//! | RGB/BGR swap | the other channel order (before normalization, as OpenCV's BGR frames get it, or after) |
//! | crop offset or size | the crop moved by up to 2 px, or 1-2 px narrower/shorter |
//! | resize interpolation | nearest instead of bilinear (or the reverse) |
//! | antialias | `antialias` toggled |
//! | 0-255 vs 0-1 | normalized without `/ 255`, or raw 0-255 values |
//! | mean/std | not applied, or applied twice |
//! | layout | an HWC tensor, or HWC data reshaped (not permuted) to CHW |
//! | uint8 resize | the bundle's preprocessing with each other `resize.dtype`: torchvision's resize of uint8 tensors (`"uint8"`, or its native AVX2 kernel `"uint8-avx2"`), Pillow's 8-bit resampling (`"uint8-pil"`), or float tensors (`"float"`) |
//!
//! A hypothesis explains the difference when it matches the dataloader's tensor within the
//! tolerance and removes at least 80% of the mean difference.

use crate::images::{heat_colour, list_images, read_rgb, Rgb8};
use anyhow::{bail, Context, Result};
use reflex_models::manifest::{
    CameraSpec, ColorOrder, CropSpec, Interpolation, PixelFormat, ResizeDtype,
};
use reflex_models::npy::{read_npy, NpyArray};
use reflex_runtime::preprocess::Preprocessor;
use serde::Serialize;
use std::path::PathBuf;

/// Default match tolerance, normalized units: reflex's float resize agrees with torchvision's
/// to ~1e-6, with the numpy/PIL reference to 1e-4.
pub const DEFAULT_TOLERANCE: f32 = 2e-4;

/// Max and mean absolute difference.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Diff {
    pub max: f32,
    pub mean: f32,
}

fn diff(a: &[f32], b: &[f32]) -> Diff {
    let (mut max, mut sum) = (0f32, 0f64);
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        let d = if d.is_nan() { f32::INFINITY } else { d };
        max = max.max(d);
        sum += f64::from(d);
    }
    Diff {
        max,
        mean: (sum / a.len().max(1) as f64) as f32,
    }
}

/// One hypothesis and how close it came.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hypothesis {
    /// The mistake, in words (e.g. `channels swapped (RGB <-> BGR)`).
    pub mistake: String,
    pub diff: Diff,
}

/// The comparison of one frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameParity {
    pub frame: PathBuf,
    pub tensor: PathBuf,
    /// Per channel, in the tensor's channel order.
    pub channels: Vec<Diff>,
    pub overall: Diff,
    /// Within the tolerance.
    pub matches: bool,
    /// The mistake that explains the difference, if one does.
    pub diagnosis: Option<String>,
    /// Every hypothesis tried, closest first (empty when the tensors match).
    pub hypotheses: Vec<Hypothesis>,
}

/// The dataloader's tensor as CHW, or the reason it is HWC.
fn chw_of(theirs: &NpyArray, c: usize, h: usize, w: usize) -> Result<(Vec<f32>, Option<String>)> {
    let data = theirs.data.to_f32();
    let shape: Vec<usize> = match theirs.shape.as_slice() {
        [1, rest @ ..] if rest.len() == 3 => rest.to_vec(),
        s => s.to_vec(),
    };
    if shape == [c, h, w] {
        return Ok((data, None));
    }
    if shape == [h, w, c] {
        let mut out = vec![0f32; c * h * w];
        for y in 0..h {
            for x in 0..w {
                for k in 0..c {
                    out[k * h * w + y * w + x] = data[(y * w + x) * c + k];
                }
            }
        }
        return Ok((
            out,
            Some(format!(
                "layout: the tensor is HWC {:?}, the model takes CHW [{c}, {h}, {w}] \
                 (`permute(2, 0, 1)` after the dataloader, as `ToTensor` does)",
                theirs.shape
            )),
        ));
    }
    bail!(
        "shape {:?}, expected [{c}, {h}, {w}] (CHW, optionally with a batch axis of 1) or \
         [{h}, {w}, {c}] (HWC)",
        theirs.shape
    )
}

/// Runs `cam`'s preprocessing on an RGB frame (the spec's capture format replaced by RGB24:
/// the frame is already decoded).
fn preprocess(cam: &CameraSpec, frame: &Rgb8) -> Result<Vec<f32>> {
    let mut spec = cam.clone();
    spec.capture.format = PixelFormat::Rgb24;
    spec.viewpoint = None;
    let mut p = Preprocessor::new(&spec)?;
    let mut out = vec![0f32; p.output_len()];
    p.run(
        &frame.data,
        frame.width as u32,
        frame.height as u32,
        PixelFormat::Rgb24,
        &mut out,
    )?;
    Ok(out)
}

/// Spec variants: the mistakes made before or during the resize.
fn spec_variants(cam: &CameraSpec) -> Vec<(String, CameraSpec)> {
    let mut v = Vec::new();
    let p = &cam.preprocess;
    let with = |f: &dyn Fn(&mut CameraSpec)| {
        let mut c = cam.clone();
        f(&mut c);
        c
    };
    match p.color {
        ColorOrder::Rgb => v.push((
            "channels swapped: training fed BGR, the bundle says RGB".to_string(),
            with(&|c| c.preprocess.color = ColorOrder::Bgr),
        )),
        ColorOrder::Bgr => v.push((
            "channels swapped: training fed RGB, the bundle says BGR".to_string(),
            with(&|c| c.preprocess.color = ColorOrder::Rgb),
        )),
        ColorOrder::Grey => {}
    }
    let cap = cam.capture;
    let crop = cam.crop_or_full();
    for dy in -2i64..=2 {
        for dx in -2i64..=2 {
            if (dx, dy) == (0, 0) {
                continue;
            }
            let (x, y) = (crop.x as i64 + dx, crop.y as i64 + dy);
            if x < 0 || y < 0 {
                continue;
            }
            let c = CropSpec {
                x: x as u32,
                y: y as u32,
                ..crop
            };
            if c.fits_in(cap.width, cap.height) {
                v.push((
                    format!(
                        "crop offset: training cropped at ({}, {}), the bundle at ({}, {}) \
                         ({dx:+}, {dy:+} px)",
                        c.x, c.y, crop.x, crop.y
                    ),
                    with(&|s| s.preprocess.crop = Some(c)),
                ));
            }
        }
    }
    for (dw, dh) in [(1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 2)] {
        for (ox, oy) in [(0, 0), (dw, dh)] {
            let c = CropSpec {
                x: crop.x + ox,
                y: crop.y + oy,
                width: crop.width.saturating_sub(dw),
                height: crop.height.saturating_sub(dh),
            };
            if c.fits_in(cap.width, cap.height) {
                v.push((
                    format!(
                        "crop size: training cropped {}x{} at ({}, {}), the bundle {}x{} at \
                         ({}, {})",
                        c.width, c.height, c.x, c.y, crop.width, crop.height, crop.x, crop.y
                    ),
                    with(&|s| s.preprocess.crop = Some(c)),
                ));
            }
        }
    }
    match p.resize.interpolation {
        Interpolation::Bilinear => v.push((
            "interpolation: training resized with nearest, the bundle says bilinear".to_string(),
            with(&|c| c.preprocess.resize.interpolation = Interpolation::Nearest),
        )),
        Interpolation::Nearest => v.push((
            "interpolation: training resized with bilinear, the bundle says nearest".to_string(),
            with(&|c| c.preprocess.resize.interpolation = Interpolation::Bilinear),
        )),
    }
    if p.resize.interpolation == Interpolation::Bilinear {
        let aa = p.resize.antialias;
        v.push((
            format!(
                "antialias: training resized with antialias={}, the bundle says {aa}",
                !aa
            ),
            with(&|c| c.preprocess.resize.antialias = !aa),
        ));
    }
    let dtypes = [
        ResizeDtype::Uint8,
        ResizeDtype::Uint8Pil,
        ResizeDtype::Uint8Avx2,
        ResizeDtype::Float,
    ];
    for dtype in dtypes {
        let spec = with(&|c| c.preprocess.resize.dtype = dtype);
        if dtype == p.resize.dtype || spec.preprocess.resize.dtype_problem().is_some() {
            continue;
        }
        let what = match dtype {
            ResizeDtype::Uint8 => {
                "uint8 resize: training resized uint8 tensors with torchvision (in float, the \
                 results rounded to integers)"
            }
            ResizeDtype::Uint8Pil => {
                "uint8 resize: training resized 8-bit images with Pillow \
                 (`Image.resize(BILINEAR)`: fixed point, rounded after each pass)"
            }
            ResizeDtype::Uint8Avx2 => {
                "uint8 resize: training resized uint8 tensors with torchvision on an AVX2 CPU \
                 (PyTorch's native fixed-point uint8 kernel)"
            }
            ResizeDtype::Float => "resize dtype: training resized float tensors",
        };
        let fix = if dtype == ResizeDtype::Float {
            " (or no `dtype`)"
        } else {
            ""
        };
        v.push((
            format!(
                "{what}, the bundle says {}; fix: `dtype = \"{}\"`{fix} in the camera's \
                 `[cameras.preprocess.resize]`",
                p.resize.dtype.name(),
                dtype.name()
            ),
            spec,
        ));
    }
    v
}

/// Tensor transforms: the mistakes made after the resize. `ours` is CHW normalized; `pix` the
/// same image on the 0-1 scale (before mean/std). Each comes with its own tolerance when it is
/// not `tolerance`.
fn tensor_variants(
    cam: &CameraSpec,
    ours: &[f32],
    c: usize,
    h: usize,
    w: usize,
    tolerance: f32,
) -> Vec<(String, Vec<f32>, Option<f32>)> {
    let p = &cam.preprocess;
    // Values 255 times larger carry 255 times the f32 rounding error.
    let wide = Some(255.0 * tolerance);
    let n = h * w;
    let per = |f: &dyn Fn(f32, f32, f32) -> f32| -> Vec<f32> {
        ours.iter()
            .enumerate()
            .map(|(i, &x)| {
                let k = i / n;
                let (m, s) = (p.mean[k], p.std[k]);
                f(x * s + m, m, s)
            })
            .collect()
    };
    let mut v = vec![
        (
            "0-255 vs 0-1: training normalized pixels of 0-255 (no division by 255 before \
             mean/std)"
                .to_string(),
            per(&|v, m, s| (255.0 * v - m) / s),
            wide,
        ),
        (
            "0-255 vs 0-1: training fed raw 0-255 pixels (no division by 255, no mean/std)"
                .to_string(),
            per(&|v, _, _| 255.0 * v),
            wide,
        ),
        (
            "mean/std missing: training fed 0-1 pixels without normalization".to_string(),
            per(&|v, _, _| v),
            None,
        ),
        (
            "mean/std applied twice: training normalized an already normalized tensor".to_string(),
            per(&|v, m, s| ((v - m) / s - m) / s),
            None,
        ),
    ];
    if c == 3 {
        let mut rev = ours.to_vec();
        rev[..n].copy_from_slice(&ours[2 * n..]);
        rev[2 * n..].copy_from_slice(&ours[..n]);
        v.push((
            "channels swapped after normalization: R, G, B normalized in order, then reversed"
                .to_string(),
            rev,
            None,
        ));
    }
    if c > 1 {
        // HWC data reshaped (not permuted) to CHW: element i of the CHW buffer holds HWC's i.
        let mut hwc = vec![0f32; c * n];
        for k in 0..c {
            for i in 0..n {
                hwc[i * c + k] = ours[k * n + i];
            }
        }
        v.push((
            "layout: HWC data reshaped to CHW (`view`/`reshape` instead of `permute(2, 0, 1)`)"
                .to_string(),
            hwc,
            None,
        ));
    }
    v
}

/// Compares one frame's preprocessing with the dataloader's tensor and diagnoses a difference.
pub fn compare(
    cam: &CameraSpec,
    frame: &Rgb8,
    theirs: &NpyArray,
    tolerance: f32,
) -> Result<(FrameParity, Vec<f32>)> {
    if (frame.width, frame.height) != (cam.capture.width as usize, cam.capture.height as usize) {
        bail!(
            "frame is {}x{}, camera `{}` captures {}x{} (give the raw frames, before any crop \
             or resize)",
            frame.width,
            frame.height,
            cam.name,
            cam.capture.width,
            cam.capture.height
        );
    }
    let p = &cam.preprocess;
    let (c, h, w) = (
        p.color.channels(),
        p.resize.height as usize,
        p.resize.width as usize,
    );
    let ours = preprocess(cam, frame)?;
    let (theirs_chw, layout) = chw_of(theirs, c, h, w)?;
    let n = h * w;
    let channels: Vec<Diff> = (0..c)
        .map(|k| diff(&ours[k * n..(k + 1) * n], &theirs_chw[k * n..(k + 1) * n]))
        .collect();
    let overall = diff(&ours, &theirs_chw);
    let matches = overall.max <= tolerance && layout.is_none();
    let mut parity = FrameParity {
        frame: PathBuf::new(),
        tensor: PathBuf::new(),
        channels,
        overall,
        matches,
        diagnosis: layout,
        hypotheses: Vec::new(),
    };
    if overall.max > tolerance {
        // Each hypothesis with its own tolerance (None = the caller's).
        let mut tried: Vec<(Hypothesis, Option<f32>)> = Vec::new();
        for (mistake, spec) in spec_variants(cam) {
            let hyp = preprocess(&spec, frame)?;
            tried.push((
                Hypothesis {
                    mistake,
                    diff: diff(&hyp, &theirs_chw),
                },
                None,
            ));
        }
        for (mistake, hyp, levels) in tensor_variants(cam, &ours, c, h, w, tolerance) {
            tried.push((
                Hypothesis {
                    mistake,
                    diff: diff(&hyp, &theirs_chw),
                },
                levels,
            ));
        }
        tried.sort_by(|a, b| a.0.diff.mean.total_cmp(&b.0.diff.mean));
        let explains = |(h, tol): &(Hypothesis, Option<f32>)| {
            h.diff.max <= tol.unwrap_or(tolerance).max(tolerance)
                && h.diff.mean <= 0.2 * overall.mean
        };
        if parity.diagnosis.is_none() {
            parity.diagnosis = tried
                .iter()
                .find(|t| explains(t))
                .map(|t| t.0.mistake.clone());
        }
        parity.hypotheses = tried.into_iter().map(|t| t.0).collect();
    }
    let absdiff = ours
        .iter()
        .zip(&theirs_chw)
        .map(|(a, b)| (a - b).abs())
        .collect();
    Ok((parity, absdiff))
}

/// The difference picture: per pixel the largest channel difference, black = none, pale yellow
/// = `max` (at least the tolerance), upscaled (nearest) to at least 256 pixels wide.
pub fn difference_png(absdiff: &[f32], c: usize, h: usize, w: usize, max: f32) -> Rgb8 {
    let k = (256 / w.max(1)).max(1);
    let mut img = Rgb8::new(w * k, h * k);
    let n = h * w;
    for y in 0..h * k {
        for x in 0..w * k {
            let i = (y / k) * w + x / k;
            let d = (0..c).map(|ch| absdiff[ch * n + i]).fold(0f32, f32::max);
            img.put(x, y, heat_colour(f64::from(d / max)));
        }
    }
    img
}

/// The camera named `camera`, or the bundle's only camera.
pub fn pick_camera<'a>(cams: &'a [CameraSpec], camera: Option<&str>) -> Result<&'a CameraSpec> {
    let names = || {
        cams.iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match camera {
        Some(n) => cams
            .iter()
            .find(|c| c.name == n)
            .with_context(|| format!("--camera {n}: the bundle's cameras are {}", names())),
        None if cams.len() == 1 => Ok(&cams[0]),
        None => bail!(
            "the bundle has {} cameras ({}): choose one with --camera",
            cams.len(),
            names()
        ),
    }
}

/// What [`parity`] needs.
#[derive(Debug, Clone)]
pub struct ParityArgs {
    pub bundle: PathBuf,
    pub frames: PathBuf,
    pub tensors: PathBuf,
    pub camera: Option<String>,
    /// Where `parity.json` and the difference PNGs go.
    pub out: PathBuf,
    pub tolerance: f32,
}

/// The whole run: every frame in `frames` with its tensor. Writes `OUT/parity.json` and
/// `OUT/diff-STEM.png` per differing frame; returns the per-frame results.
pub fn parity(a: &ParityArgs) -> Result<Vec<FrameParity>> {
    let bundle = reflex_models::Bundle::load(&a.bundle)?;
    let cam = pick_camera(&bundle.manifest.cameras, a.camera.as_deref())?;
    let p = &cam.preprocess;
    let (c, h, w) = (
        p.color.channels(),
        p.resize.height as usize,
        p.resize.width as usize,
    );
    let mut results = Vec::new();
    for frame_path in list_images(&a.frames)? {
        let stem = frame_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tensor_path = a.tensors.join(format!("{stem}.npy"));
        if !tensor_path.is_file() {
            bail!(
                "{}: no tensor {} for it (tensors are paired with frames by file name)",
                frame_path.display(),
                tensor_path.display()
            );
        }
        let frame = read_rgb(&frame_path)?;
        let theirs = read_npy(&tensor_path)?;
        let (mut r, absdiff) = compare(cam, &frame, &theirs, a.tolerance).with_context(|| {
            format!("{} against {}", frame_path.display(), tensor_path.display())
        })?;
        r.frame = frame_path;
        r.tensor = tensor_path;
        if !r.matches {
            let png = a.out.join(format!("diff-{stem}.png"));
            let max = r.overall.max.max(a.tolerance);
            crate::images::write_png(&png, &difference_png(&absdiff, c, h, w, max))?;
        }
        results.push(r);
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create {}", a.out.display()))?;
    let json = a.out.join("parity.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("cannot write {}", json.display()))?;
    Ok(results)
}

/// The report for the terminal.
pub fn summary(results: &[FrameParity], tolerance: f32) -> String {
    let mut s = String::new();
    for r in results {
        let per: Vec<String> = r
            .channels
            .iter()
            .map(|d| format!("max {:.2e} mean {:.2e}", d.max, d.mean))
            .collect();
        s.push_str(&format!(
            "{}: {} (per channel: {})\n",
            r.frame.display(),
            if r.matches {
                "MATCH".to_string()
            } else {
                format!("DIFFERS (max {:.3e} > {tolerance:.1e})", r.overall.max)
            },
            per.join("; ")
        ));
        if !r.matches {
            match (&r.diagnosis, r.hypotheses.first()) {
                (Some(d), _) => s.push_str(&format!("  cause: {d}\n")),
                (None, Some(h)) => s.push_str(&format!(
                    "  no single known mistake explains it; closest: {} (max {:.2e}, mean {:.2e})\n",
                    h.mistake, h.diff.max, h.diff.mean
                )),
                (None, None) => {}
            }
        }
    }
    s
}
