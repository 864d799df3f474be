//! Is the camera where training saw it? Live frames against the training frames stored in the
//! bundle: image shift, rotation and scale, brightness, white balance and sharpness.
//!
//! A policy trained on one view fails on another even though every tensor check passes, so
//! `reflex check --cameras` (and a quick form at the start of `reflex run`) compares a live frame
//! with the bundle's reference frames (written by `reflex-tools export --reference-frames`) and
//! grades each measure against the manifest's [`ViewpointThresholds`].
//!
//! # Method
//! - **Rotation and scale** (Reddy & Chatterji, "An FFT-based technique for translation, rotation
//!   and scale-invariant image registration", IEEE TIP 5(8), 1996): the magnitude of the Fourier
//!   transform ignores translation; a rotation of the image rotates it and a scale change scales
//!   it inversely, so in log-polar coordinates (angle, log radius) both become shifts, which
//!   phase correlation measures. The magnitude is high-pass emphasized with their filter
//!   `H = (1 - X)(2 - X)`, `X = cos(pi u) cos(pi v)`. The magnitude is pi-periodic, so rotations
//!   are measured within +-90 degrees.
//! - **Translation**: the live frame is warped back by the measured rotation and scale, then
//!   phase correlation (Kuglin & Hines 1975: the inverse transform of the normalized cross-power
//!   spectrum peaks at the shift) on Hann-windowed, mean-free images, with the peak located on a
//!   fine grid by the matrix-multiply DFT (Guizar-Sicairos, Thurman & Fienup, "Efficient
//!   subpixel image registration algorithms", Opt. Lett. 33(2), 2008).
//! - **Refinement**: the window fixed in both pictures pulls a windowed phase correlation's
//!   sub-pixel peak towards zero, and log-polar bins are coarse, so the four parameters are then
//!   refined together by Gauss-Newton on the similarity warp with a brightness gain and offset
//!   (Lucas & Kanade 1981; Baker & Matthews, "Lucas-Kanade 20 years on", IJCV 56, 2004), at half
//!   then full resolution. Its normalized cross-correlation of the aligned pictures says whether
//!   they show the same scene at all.
//! - **Brightness**: mean ITU-R 601 luma (`0.299 R + 0.587 G + 0.114 B`) against the training
//!   frames'; **white balance**: the R/G and B/G ratios of the channel means against theirs;
//!   **sharpness**: the variance of the 4-neighbour Laplacian of luma (Pech-Pacheco et al., "Diatom
//!   autofocusing in brightfield microscopy", ICPR 2000) against theirs (only a drop counts).
//!
//! Conventions: `live(p) = reference(A^-1 (p - c - t) + c)` with `A = scale * R(rotation)`, `c`
//! the image centre and `p = (x, y)` in pixels (x right, y down), so a positive rotation turns the
//! picture clockwise on screen and `t` is the shift of the picture content, in capture pixels.
//!
//! The FFTs are `rustfft`'s. Registration runs on the downscaled references (about 160 pixels
//! wide), tens of milliseconds per camera; it is off the control loop (before the first tick).

use reflex_models::manifest::{
    CameraSpec, ColorOrder, Interpolation, Layout, PreprocessSpec, ResizeDtype, ResizeSpec,
    ViewpointLimit, ViewpointSpec, ViewpointThresholds,
};
use rustfft::num_complex::Complex;
use rustfft::FftPlanner;
use serde::Serialize;
use std::f64::consts::PI;

/// A single-channel image, row-major f32, on the 0-255 scale.
#[derive(Debug, Clone, PartialEq)]
pub struct GreyImage {
    pub width: usize,
    pub height: usize,
    /// `height * width` values, row by row.
    pub pixels: Vec<f32>,
}

impl GreyImage {
    /// `pixels` must hold `width * height` values (panics otherwise: a programming error).
    pub fn new(width: usize, height: usize, pixels: Vec<f32>) -> GreyImage {
        assert_eq!(pixels.len(), width * height, "GreyImage: pixel count");
        GreyImage {
            width,
            height,
            pixels,
        }
    }

    fn at(&self, x: usize, y: usize) -> f32 {
        self.pixels[y * self.width + x]
    }

    /// Bilinear sample at `(x, y)` (pixel centres at integers), edges clamped.
    pub fn sample(&self, x: f64, y: f64) -> f32 {
        let xc = x.clamp(0.0, (self.width - 1) as f64);
        let yc = y.clamp(0.0, (self.height - 1) as f64);
        let (x0, y0) = (xc.floor() as usize, yc.floor() as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (fx, fy) = ((xc - x0 as f64) as f32, (yc - y0 as f64) as f32);
        let top = self.at(x0, y0) * (1.0 - fx) + self.at(x1, y0) * fx;
        let bottom = self.at(x0, y1) * (1.0 - fx) + self.at(x1, y1) * fx;
        top * (1.0 - fy) + bottom * fy
    }

    /// Mean over `factor x factor` blocks (the last partial row/column of blocks is dropped).
    /// `factor` 0 is taken as 1.
    pub fn downscale(&self, factor: usize) -> GreyImage {
        let f = factor.max(1);
        let (w, h) = ((self.width / f).max(1), (self.height / f).max(1));
        let mut out = vec![0f32; w * h];
        let n = (f * f) as f32;
        for (y, row) in out.chunks_mut(w).enumerate() {
            for (x, o) in row.iter_mut().enumerate() {
                let mut s = 0f32;
                for dy in 0..f.min(self.height) {
                    for dx in 0..f.min(self.width) {
                        s += self.at(x * f + dx, y * f + dy);
                    }
                }
                *o = s / n.min((self.width * self.height) as f32);
            }
        }
        GreyImage::new(w, h, out)
    }

    /// Variance of the 4-neighbour Laplacian over the interior pixels (0 for images under 3x3).
    pub fn laplacian_variance(&self) -> f64 {
        if self.width < 3 || self.height < 3 {
            return 0.0;
        }
        let (mut s, mut s2, mut n) = (0f64, 0f64, 0f64);
        for y in 1..self.height - 1 {
            for x in 1..self.width - 1 {
                let l = f64::from(
                    self.at(x - 1, y) + self.at(x + 1, y) + self.at(x, y - 1) + self.at(x, y + 1)
                        - 4.0 * self.at(x, y),
                );
                s += l;
                s2 += l * l;
                n += 1.0;
            }
        }
        let mean = s / n;
        s2 / n - mean * mean
    }
}

/// A colour image as three planes (CHW: R, G, B), f32 on the 0-255 scale: what the preprocessing
/// decoder makes of a camera frame before crop and resize.
#[derive(Debug, Clone, PartialEq)]
pub struct RgbPlanes {
    pub width: usize,
    pub height: usize,
    /// `3 * height * width` values: the R plane, then G, then B.
    pub planes: Vec<f32>,
}

impl RgbPlanes {
    /// From packed 8-bit R, G, B (`3 * width * height` bytes; panics otherwise).
    pub fn from_rgb8(width: usize, height: usize, rgb: &[u8]) -> RgbPlanes {
        assert_eq!(rgb.len(), 3 * width * height, "RgbPlanes: byte count");
        let n = width * height;
        let mut planes = vec![0f32; 3 * n];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                planes[c * n + i] = f32::from(v);
            }
        }
        RgbPlanes {
            width,
            height,
            planes,
        }
    }

    fn plane(&self, c: usize) -> &[f32] {
        let n = self.width * self.height;
        &self.planes[c * n..(c + 1) * n]
    }

    /// ITU-R 601 luma, `0.299 R + 0.587 G + 0.114 B`.
    pub fn luma(&self) -> GreyImage {
        let (r, g, b) = (self.plane(0), self.plane(1), self.plane(2));
        let pixels = (0..r.len())
            .map(|i| 0.299 * r[i] + 0.587 * g[i] + 0.114 * b[i])
            .collect();
        GreyImage::new(self.width, self.height, pixels)
    }

    /// Channel means and sharpness (see [`ImageStats`]).
    pub fn stats(&self) -> ImageStats {
        let mean = |c: usize| {
            let p = self.plane(c);
            p.iter().map(|&v| f64::from(v)).sum::<f64>() / p.len().max(1) as f64
        };
        ImageStats {
            mean_rgb: [mean(0), mean(1), mean(2)],
            sharpness: self.luma().laplacian_variance(),
        }
    }
}

/// Decodes a camera's frames to [`RgbPlanes`] at capture size, exactly as preprocessing decodes
/// them (same YUYV/NV12/MJPEG/GREY conversions): the bundle's preprocessor with no crop, an
/// identity resize and no normalization. Allocates at construction only.
pub struct FrameDecoder {
    pre: crate::preprocess::Preprocessor,
    width: usize,
    height: usize,
    out: Vec<f32>,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder")
            .field("pre", &self.pre)
            .finish()
    }
}

impl FrameDecoder {
    /// For frames in `cam`'s capture mode.
    pub fn new(cam: &CameraSpec) -> Result<FrameDecoder, crate::preprocess::PreprocessError> {
        let mut spec = cam.clone();
        spec.preprocess = PreprocessSpec {
            crop: None,
            resize: ResizeSpec {
                width: cam.capture.width,
                height: cam.capture.height,
                interpolation: Interpolation::Nearest,
                antialias: false,
                dtype: ResizeDtype::Float,
            },
            color: ColorOrder::Rgb,
            mean: vec![0.0; 3],
            std: vec![1.0; 3],
            layout: Layout::Nchw,
        };
        spec.viewpoint = None;
        let pre = crate::preprocess::Preprocessor::new(&spec)?;
        let out = vec![0f32; pre.output_len()];
        Ok(FrameDecoder {
            pre,
            width: cam.capture.width as usize,
            height: cam.capture.height as usize,
            out,
        })
    }

    /// The frame as R, G, B planes on the 0-255 scale (rounded to the decoder's integers).
    pub fn decode(
        &mut self,
        frame: &crate::io::Frame<'_>,
    ) -> Result<RgbPlanes, crate::preprocess::PreprocessError> {
        let m = frame.meta;
        self.pre
            .run(frame.data, m.width, m.height, m.format, &mut self.out)?;
        Ok(RgbPlanes {
            width: self.width,
            height: self.height,
            planes: self.out.iter().map(|&v| (v * 255.0).round()).collect(),
        })
    }
}

/// What the viewpoint check compares besides geometry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ImageStats {
    /// Mean R, G, B, 0-255.
    pub mean_rgb: [f64; 3],
    /// Variance of the Laplacian of luma ([`GreyImage::laplacian_variance`]), levels^2.
    pub sharpness: f64,
}

impl ImageStats {
    /// Mean ITU-R 601 luma, 0-255.
    pub fn brightness(&self) -> f64 {
        let [r, g, b] = self.mean_rgb;
        0.299 * r + 0.587 * g + 0.114 * b
    }
}

/// Where the live picture is against the reference (see the module's conventions).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Registration {
    /// Content shift, pixels of the registered images (x right, y down).
    pub shift_x: f64,
    pub shift_y: f64,
    /// Degrees, positive = clockwise on screen.
    pub rotation_deg: f64,
    /// Live size over reference size (1 = same).
    pub scale: f64,
    /// Normalized cross-correlation of the aligned pictures, -1 to 1: near 1 for the same scene
    /// (whatever its brightness), near 0 for unrelated pictures (the other figures are then
    /// meaningless).
    pub peak: f64,
}

type C64 = Complex<f64>;

/// 2-D FFT in place (rows, then columns), unnormalized; `inverse` selects the sign.
fn fft2(data: &mut [C64], w: usize, h: usize, planner: &mut FftPlanner<f64>, inverse: bool) {
    let row = if inverse {
        planner.plan_fft_inverse(w)
    } else {
        planner.plan_fft_forward(w)
    };
    row.process(data);
    let mut t = vec![C64::new(0.0, 0.0); w * h];
    for y in 0..h {
        for x in 0..w {
            t[x * h + y] = data[y * w + x];
        }
    }
    let col = if inverse {
        planner.plan_fft_inverse(h)
    } else {
        planner.plan_fft_forward(h)
    };
    col.process(&mut t);
    for y in 0..h {
        for x in 0..w {
            data[y * w + x] = t[x * h + y];
        }
    }
}

/// The periodic Hann window of length `n`.
fn hann(n: usize) -> Vec<f64> {
    (0..n)
        .map(|i| 0.5 - 0.5 * (2.0 * PI * i as f64 / n as f64).cos())
        .collect()
}

/// Mean-free, windowed (`wx` along x, `wy` along y) complex copy of an image.
fn windowed(px: &[f32], w: usize, wx: &[f64], wy: &[f64]) -> Vec<C64> {
    let mean = px.iter().map(|&v| f64::from(v)).sum::<f64>() / px.len().max(1) as f64;
    px.iter()
        .enumerate()
        .map(|(i, &v)| C64::new((f64::from(v) - mean) * wx[i % w] * wy[i / w], 0.0))
        .collect()
}

/// Signed frequency of DFT bin `k` of `n`.
fn signed(k: usize, n: usize) -> f64 {
    if k > n / 2 {
        k as f64 - n as f64
    } else {
        k as f64
    }
}

/// Phase correlation of two equal-size images: `(dx, dy, peak)` with `b(p) ~ a(p - d)`.
/// `window_y = false` leaves the y axis unwindowed (periodic data such as angles).
fn phase_correlate(
    a: &[f32],
    b: &[f32],
    w: usize,
    h: usize,
    window_y: bool,
    planner: &mut FftPlanner<f64>,
) -> (f64, f64, f64) {
    let wx = hann(w);
    let wy = if window_y { hann(h) } else { vec![1.0; h] };
    let mut fa = windowed(a, w, &wx, &wy);
    let mut fb = windowed(b, w, &wx, &wy);
    fft2(&mut fa, w, h, planner, false);
    fft2(&mut fb, w, h, planner, false);
    // Normalized cross-power spectrum B conj(A) / |B conj(A)|: its inverse peaks at +d.
    let cross: Vec<C64> = fa
        .iter()
        .zip(&fb)
        .map(|(&a, &b)| {
            let c = b * a.conj();
            let m = c.norm();
            if m > 1e-12 {
                c / m
            } else {
                C64::new(0.0, 0.0)
            }
        })
        .collect();
    let mut r = cross.clone();
    fft2(&mut r, w, h, planner, true);
    let (mut best, mut bx, mut by) = (f64::MIN, 0usize, 0usize);
    for (i, v) in r.iter().enumerate() {
        if v.re > best {
            (best, bx, by) = (v.re, i % w, i / w);
        }
    }
    let (mut dx, mut dy) = (signed(bx, w), signed(by, h));
    // Refine: the inverse DFT evaluated on a fine grid around the peak, in two stages.
    let mut peak = best;
    for (half, step) in [(1.0, 0.05), (0.05, 0.0025)] {
        let (x, y, p) = upsampled_peak(&cross, w, h, dx, dy, half, step);
        (dx, dy, peak) = (x, y, p);
    }
    (dx, dy, peak / (w * h) as f64)
}

/// The maximum of `Re sum_k R(k) exp(2 pi i k.p / n)` over a grid of step `step` within
/// `+-half` of `(cx, cy)` (separable: the x sums first, then y).
fn upsampled_peak(
    cross: &[C64],
    w: usize,
    h: usize,
    cx: f64,
    cy: f64,
    half: f64,
    step: f64,
) -> (f64, f64, f64) {
    let n = (2.0 * half / step).round() as usize + 1;
    let xs: Vec<f64> = (0..n).map(|i| cx - half + i as f64 * step).collect();
    let ys: Vec<f64> = (0..n).map(|i| cy - half + i as f64 * step).collect();
    let ex: Vec<C64> = (0..n)
        .flat_map(|j| {
            let x = xs[j];
            (0..w).map(move |k| C64::from_polar(1.0, 2.0 * PI * signed(k, w) * x / w as f64))
        })
        .collect();
    // rows[ky][j] = sum_kx R(ky, kx) ex[j][kx]
    let mut rows = vec![C64::new(0.0, 0.0); h * n];
    for ky in 0..h {
        let r = &cross[ky * w..(ky + 1) * w];
        for j in 0..n {
            let e = &ex[j * w..(j + 1) * w];
            rows[ky * n + j] = r.iter().zip(e).map(|(a, b)| a * b).sum();
        }
    }
    let (mut best, mut bx, mut by) = (f64::MIN, cx, cy);
    for &y in &ys {
        let ey: Vec<C64> = (0..h)
            .map(|k| C64::from_polar(1.0, 2.0 * PI * signed(k, h) * y / h as f64))
            .collect();
        for (j, &x) in xs.iter().enumerate() {
            let v: f64 = (0..h).map(|ky| (ey[ky] * rows[ky * n + j]).re).sum();
            if v > best {
                (best, bx, by) = (v, x, y);
            }
        }
    }
    (bx, by, best)
}

/// Angles (over 180 degrees) and log-radius bins of the log-polar spectrum.
const N_ANGLE: usize = 360;
const N_RADIUS: usize = 128;

/// High-pass emphasized Fourier magnitude of the centred square crop of `img`, resampled to
/// `N_ANGLE` angles x `N_RADIUS` log-spaced radii. Returns it and the log-radius step.
fn log_polar_spectrum(img: &GreyImage, n: usize, planner: &mut FftPlanner<f64>) -> (Vec<f32>, f64) {
    let (x0, y0) = ((img.width - n) / 2, (img.height - n) / 2);
    let crop: Vec<f32> = (0..n * n).map(|i| img.at(x0 + i % n, y0 + i / n)).collect();
    // A circular (raised-cosine in radius) window: a separable one would put its own
    // cross-shaped, non-rotating leakage into the spectrum.
    let mean = crop.iter().map(|&v| f64::from(v)).sum::<f64>() / (n * n) as f64;
    let r0 = n as f64 / 2.0;
    let mut f: Vec<C64> = crop
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let (x, y) = ((i % n) as f64 + 0.5 - r0, (i / n) as f64 + 0.5 - r0);
            let r = x.hypot(y) / r0;
            let w = if r < 1.0 {
                0.5 + 0.5 * (PI * r).cos()
            } else {
                0.0
            };
            C64::new((f64::from(v) - mean) * w, 0.0)
        })
        .collect();
    fft2(&mut f, n, n, planner, false);
    // Centred magnitude with the high-pass emphasis.
    let half = n as f64 / 2.0;
    let mut mag = GreyImage::new(n, n, vec![0.0; n * n]);
    for ky in 0..n {
        for kx in 0..n {
            let (u, v) = (signed(kx, n) / n as f64, signed(ky, n) / n as f64);
            let xx = (PI * u).cos() * (PI * v).cos();
            let hp = (1.0 - xx) * (2.0 - xx);
            let (cx, cy) = (
                (signed(kx, n) + half) as usize % n,
                (signed(ky, n) + half) as usize % n,
            );
            mag.pixels[cy * n + cx] = ((1.0 + f[ky * n + kx].norm()).ln() * hp) as f32;
        }
    }
    let (r_min, r_max) = ((n as f64 / 32.0).max(2.0), half - 1.0);
    let dlog = (r_max / r_min).ln() / N_RADIUS as f64;
    let mut lp = vec![0f32; N_ANGLE * N_RADIUS];
    for a in 0..N_ANGLE {
        let th = PI * a as f64 / N_ANGLE as f64;
        for r in 0..N_RADIUS {
            let rho = r_min * (dlog * r as f64).exp();
            lp[a * N_RADIUS + r] = mag.sample(half + rho * th.cos(), half + rho * th.sin());
        }
    }
    (lp, dlog)
}

/// Rotation, scale and translation of `live` against `reference` (same size, at least 32x32):
/// a coarse estimate by log-polar and translation phase correlation, refined by
/// [`refine`] (Gauss-Newton on a similarity warp with a brightness gain and offset).
///
/// Returns `None` for images of different sizes or smaller than 32 pixels on a side.
pub fn register(reference: &GreyImage, live: &GreyImage) -> Option<Registration> {
    let (w, h) = (reference.width, reference.height);
    if (live.width, live.height) != (w, h) || w < 32 || h < 32 {
        return None;
    }
    let mut planner = FftPlanner::new();
    let n = w.min(h) & !1;
    let (lp_ref, dlog) = log_polar_spectrum(reference, n, &mut planner);
    let (lp_live, _) = log_polar_spectrum(live, n, &mut planner);
    let (dr, da, _) = phase_correlate(&lp_ref, &lp_live, N_RADIUS, N_ANGLE, false, &mut planner);
    let rotation = da * PI / N_ANGLE as f64;
    let scale = (-dr * dlog).exp();
    // Warp the live picture back: live'(p) = live(A (p - c) + c).
    let (c, s) = (rotation.cos() * scale, rotation.sin() * scale);
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    let mut back = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (px, py) = (x as f64 - cx, y as f64 - cy);
            back[y * w + x] = live.sample(c * px - s * py + cx, s * px + c * py + cy);
        }
    }
    let (dx, dy, _) = phase_correlate(&reference.pixels, &back, w, h, true, &mut planner);
    // live'(p) = reference(p - A^-1 t), so t = A d.
    let coarse = Similarity {
        rotation,
        scale,
        tx: c * dx - s * dy,
        ty: s * dx + c * dy,
    };
    // A coarse estimate that is far off (unrelated pictures, a failed log-polar peak) is
    // worse than none: then start from the identity.
    let start = if coarse.rotation.abs() < 20f64.to_radians() && (0.7..1.4).contains(&coarse.scale)
    {
        coarse
    } else {
        Similarity::IDENTITY
    };
    let half_ref = reference.downscale(2);
    let half_live = live.downscale(2);
    let (mid, _) = refine(&half_ref, &half_live, start.scaled(0.5), 30);
    let (fine, correlation) = refine(reference, live, mid.scaled(2.0), 30);
    Some(Registration {
        shift_x: fine.tx,
        shift_y: fine.ty,
        rotation_deg: fine.rotation.to_degrees(),
        scale: fine.scale,
        peak: correlation,
    })
}

/// `live(p) = reference(A^-1 (p - c - t) + c)`, `A = scale R(rotation)` (radians).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Similarity {
    rotation: f64,
    scale: f64,
    tx: f64,
    ty: f64,
}

impl Similarity {
    const IDENTITY: Similarity = Similarity {
        rotation: 0.0,
        scale: 1.0,
        tx: 0.0,
        ty: 0.0,
    };

    /// The same motion on images resampled by `k` (pixel offsets scale, angles do not).
    fn scaled(self, k: f64) -> Similarity {
        Similarity {
            tx: self.tx * k,
            ty: self.ty * k,
            ..self
        }
    }
}

/// Gauss-Newton (Lucas & Kanade 1981, "An iterative image registration technique"; here with the
/// similarity warp of Baker & Matthews 2004, "Lucas-Kanade 20 years on") from `start`:
/// minimizes `sum_p (g reference(q(p)) + o - live(p))^2` over the warp `q(p) = B (p - c) + c + s`
/// (`B = [[a, -b], [b, a]] = A^-1`, `s = -A^-1 t`) and a brightness gain `g` and offset `o`, over
/// the pixels whose `q` falls inside the reference. Returns the motion and the normalized
/// cross-correlation of the aligned pictures (1 = the same picture up to brightness).
fn refine(
    reference: &GreyImage,
    live: &GreyImage,
    start: Similarity,
    iterations: usize,
) -> (Similarity, f64) {
    let (w, h) = (reference.width, reference.height);
    let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
    // Central-difference gradients of the reference.
    let mut gx = vec![0f32; w * h];
    let mut gy = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (xl, xr) = (x.saturating_sub(1), (x + 1).min(w - 1));
            let (yu, yd) = (y.saturating_sub(1), (y + 1).min(h - 1));
            gx[y * w + x] = (reference.at(xr, y) - reference.at(xl, y)) / (xr - xl).max(1) as f32;
            gy[y * w + x] = (reference.at(x, yd) - reference.at(x, yu)) / (yd - yu).max(1) as f32;
        }
    }
    let gxi = GreyImage::new(w, h, gx);
    let gyi = GreyImage::new(w, h, gy);
    let a_of = |m: &Similarity| {
        let (c, s) = (m.rotation.cos() / m.scale, m.rotation.sin() / m.scale);
        // B = R(-rotation) / scale = [[c, s], [-s, c]]: a = c, b = -s.
        let (a, b) = (c, -s);
        // s_vec = -B t
        let (sx, sy) = (-(a * m.tx - b * m.ty), -(b * m.tx + a * m.ty));
        [a, b, sx, sy]
    };
    let mut p = a_of(&start);
    let (mut gain, mut offset) = (1.0f64, 0.0f64);
    let margin = 1.0;
    for _ in 0..iterations {
        let mut jtj = [[0f64; 6]; 6];
        let mut jtr = [0f64; 6];
        let mut count = 0usize;
        for y in 0..h {
            for x in 0..w {
                let (ux, uy) = (x as f64 - cx, y as f64 - cy);
                let qx = p[0] * ux - p[1] * uy + cx + p[2];
                let qy = p[1] * ux + p[0] * uy + cy + p[3];
                if qx < margin
                    || qy < margin
                    || qx > w as f64 - 1.0 - margin
                    || qy > h as f64 - 1.0 - margin
                {
                    continue;
                }
                let r = f64::from(reference.sample(qx, qy));
                let (dx, dy) = (
                    f64::from(gxi.sample(qx, qy)) * gain,
                    f64::from(gyi.sample(qx, qy)) * gain,
                );
                let j = [dx * ux + dy * uy, -dx * uy + dy * ux, dx, dy, r, 1.0];
                let res = f64::from(live.at(x, y)) - (gain * r + offset);
                for (i, ji) in j.iter().enumerate() {
                    jtr[i] += ji * res;
                    for (k, jk) in j.iter().enumerate() {
                        jtj[i][k] += ji * jk;
                    }
                }
                count += 1;
            }
        }
        // Too little overlap left: the pictures do not show the same scene.
        if count < (w * h) / 2 {
            return (start, 0.0);
        }
        let Some(d) = solve6(jtj, jtr) else { break };
        for (pi, di) in p.iter_mut().zip(&d[..4]) {
            *pi += di;
        }
        gain += d[4];
        offset += d[5];
        if d[2].abs() + d[3].abs() < 1e-4 && d[0].abs() + d[1].abs() < 1e-7 {
            break;
        }
    }
    // Back to A = B^-1 and t = -A s.
    let det = p[0] * p[0] + p[1] * p[1];
    let scale = 1.0 / det.sqrt();
    let rotation = (-p[1]).atan2(p[0]);
    let (aa, ab) = (p[0] / det, -p[1] / det); // A = [[aa, -ab], [ab, aa]]
    let (tx, ty) = (-(aa * p[2] - ab * p[3]), -(ab * p[2] + aa * p[3]));
    // Normalized cross-correlation of the aligned pictures.
    let (mut n, mut sr, mut sl, mut srr, mut sll, mut srl) = (0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    for y in 0..h {
        for x in 0..w {
            let (ux, uy) = (x as f64 - cx, y as f64 - cy);
            let qx = p[0] * ux - p[1] * uy + cx + p[2];
            let qy = p[1] * ux + p[0] * uy + cy + p[3];
            if qx < 0.0 || qy < 0.0 || qx > w as f64 - 1.0 || qy > h as f64 - 1.0 {
                continue;
            }
            let (r, l) = (
                f64::from(reference.sample(qx, qy)),
                f64::from(live.at(x, y)),
            );
            n += 1.0;
            sr += r;
            sl += l;
            srr += r * r;
            sll += l * l;
            srl += r * l;
        }
    }
    let cov = srl / n - (sr / n) * (sl / n);
    let var = (srr / n - (sr / n).powi(2)) * (sll / n - (sl / n).powi(2));
    let correlation = if n > 0.0 && var > 1e-12 {
        cov / var.sqrt()
    } else {
        0.0
    };
    let m = Similarity {
        rotation,
        scale,
        tx,
        ty,
    };
    if [m.rotation, m.scale, m.tx, m.ty]
        .iter()
        .all(|v| v.is_finite())
    {
        (m, correlation)
    } else {
        (start, 0.0)
    }
}

/// Solves the 6x6 system `m x = v` (Gaussian elimination with partial pivoting); `None` when
/// singular.
fn solve6(mut m: [[f64; 6]; 6], mut v: [f64; 6]) -> Option<[f64; 6]> {
    for col in 0..6 {
        let piv = (col..6).max_by(|&a, &b| m[a][col].abs().total_cmp(&m[b][col].abs()))?;
        if m[piv][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, piv);
        v.swap(col, piv);
        let (pivot, pv) = (m[col], v[col]);
        for (row, vr) in m.iter_mut().zip(v.iter_mut()).skip(col + 1) {
            let f = row[col] / pivot[col];
            for (x, p) in row.iter_mut().zip(pivot.iter()).skip(col) {
                *x -= f * p;
            }
            *vr -= f * pv;
        }
    }
    let mut x = [0f64; 6];
    for r in (0..6).rev() {
        let s: f64 = (r + 1..6).map(|k| m[r][k] * x[k]).sum();
        x[r] = (v[r] - s) / m[r][r];
    }
    Some(x)
}

/// OK, warn or refuse to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Refuse,
}

impl Verdict {
    /// `OK`, `WARN`, `REFUSE`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "OK",
            Verdict::Warn => "WARN",
            Verdict::Refuse => "REFUSE",
        }
    }

    fn grade(value: f64, limit: &ViewpointLimit) -> Verdict {
        if !value.is_finite() || value > limit.refuse {
            Verdict::Refuse
        } else if value > limit.warn {
            Verdict::Warn
        } else {
            Verdict::Ok
        }
    }
}

/// One graded measure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measure {
    /// `shift_px`, `rotation_deg`, `scale_pct`, `brightness_pct`, `white_balance_pct`,
    /// `sharpness_drop_pct`, `match` (the registration's correlation peak: the same scene?).
    pub name: &'static str,
    /// The graded magnitude in the measure's unit.
    pub value: f64,
    pub warn: f64,
    pub refuse: f64,
    pub verdict: Verdict,
}

/// The check of one camera.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ViewpointReport {
    pub camera: String,
    /// Geometry, with the shift in capture pixels.
    pub registration: Registration,
    /// Live brightness over the training frames' (1 = same).
    pub brightness_ratio: f64,
    /// Live (R/G, B/G) over the training frames' (1 = same white balance).
    pub white_balance_ratio: [f64; 2],
    /// Live sharpness over the training frames' (1 = same; below 1 = blurrier).
    pub sharpness_ratio: f64,
    pub measures: Vec<Measure>,
    /// The worst of the measures.
    pub verdict: Verdict,
}

impl ViewpointReport {
    /// One line per measure, for the terminal.
    pub fn summary(&self) -> String {
        let r = &self.registration;
        let mut s = format!(
            "camera {}: {} (shift {:+.2}, {:+.2} px, rotation {:+.2} deg, scale {:.3}, \
             brightness x{:.3}, white balance R/G x{:.3} B/G x{:.3}, sharpness x{:.2})",
            self.camera,
            self.verdict.as_str(),
            r.shift_x,
            r.shift_y,
            r.rotation_deg,
            r.scale,
            self.brightness_ratio,
            self.white_balance_ratio[0],
            self.white_balance_ratio[1],
            self.sharpness_ratio
        );
        for m in self.measures.iter().filter(|m| m.verdict != Verdict::Ok) {
            s.push_str(&format!(
                "\n  {} {}: {:.2} (warn above {}, refuse above {})",
                m.verdict.as_str(),
                m.name,
                m.value,
                m.warn,
                m.refuse
            ));
        }
        s
    }
}

/// A camera's reference: the training frames' luma (downscaled) and statistics, and the
/// thresholds. Built once from the bundle ([`ViewpointSpec`]) before the loop starts.
#[derive(Debug, Clone)]
pub struct ViewpointReference {
    pub camera: String,
    /// Reference luma images at capture size / `downscale`.
    pub frames: Vec<GreyImage>,
    pub downscale: usize,
    pub stats: ImageStats,
    pub thresholds: ViewpointThresholds,
}

/// A reference frame that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ViewpointError {
    #[error(
        "camera `{camera}`: reference frame {path}: {reason} (re-export the bundle with \
         `reflex-tools export --reference-frames DIR`)"
    )]
    Reference {
        camera: String,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error(
        "camera `{camera}`: live frame is {got_w}x{got_h} after downscaling by {downscale}, the \
         reference frames are {w}x{h}"
    )]
    Size {
        camera: String,
        downscale: usize,
        w: usize,
        h: usize,
        got_w: usize,
        got_h: usize,
    },
}

impl ViewpointReference {
    /// Reads the reference frames named by `spec` (uint8 `(height, width)` `.npy` files,
    /// relative to `bundle_dir`).
    pub fn load(
        camera: &str,
        spec: &ViewpointSpec,
        bundle_dir: &std::path::Path,
    ) -> Result<ViewpointReference, ViewpointError> {
        let frames = spec
            .frames
            .iter()
            .map(|f| {
                let path = bundle_dir.join(f);
                let err = |reason: String| ViewpointError::Reference {
                    camera: camera.to_string(),
                    path: path.clone(),
                    reason,
                };
                let a = reflex_models::npy::read_npy(&path).map_err(|e| err(e.to_string()))?;
                match (&a.shape[..], &a.data) {
                    ([h, w], reflex_models::npy::NpyData::U8(v)) if *h >= 32 && *w >= 32 => Ok(
                        GreyImage::new(*w, *h, v.iter().map(|&x| f32::from(x)).collect()),
                    ),
                    _ => Err(err(format!(
                        "expected a uint8 (height, width) array of at least 32x32, found {} \
                         of shape {:?}",
                        a.data.descr(),
                        a.shape
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ViewpointReference {
            camera: camera.to_string(),
            frames,
            downscale: spec.downscale.max(1) as usize,
            stats: ImageStats {
                mean_rgb: spec.mean_rgb,
                sharpness: spec.sharpness,
            },
            thresholds: spec.thresholds.clone(),
        })
    }

    /// Compares a live frame (decoded, capture size) with the reference frames: registered
    /// against each, the best-matching one (highest peak) counts. Shifts are in capture pixels.
    pub fn check(&self, live: &RgbPlanes) -> Result<ViewpointReport, ViewpointError> {
        let stats = live.stats();
        let grey = live.luma().downscale(self.downscale);
        let mut best: Option<Registration> = None;
        for f in &self.frames {
            let r = register(f, &grey).ok_or_else(|| ViewpointError::Size {
                camera: self.camera.clone(),
                downscale: self.downscale,
                w: f.width,
                h: f.height,
                got_w: grey.width,
                got_h: grey.height,
            })?;
            if best.is_none_or(|b| r.peak > b.peak) {
                best = Some(r);
            }
        }
        let mut reg = best.unwrap_or(Registration {
            shift_x: f64::NAN,
            shift_y: f64::NAN,
            rotation_deg: f64::NAN,
            scale: f64::NAN,
            peak: 0.0,
        });
        reg.shift_x *= self.downscale as f64;
        reg.shift_y *= self.downscale as f64;
        Ok(grade(
            &self.camera,
            reg,
            &stats,
            &self.stats,
            &self.thresholds,
        ))
    }
}

/// Grades a registration and live statistics against the reference statistics.
pub fn grade(
    camera: &str,
    reg: Registration,
    live: &ImageStats,
    reference: &ImageStats,
    t: &ViewpointThresholds,
) -> ViewpointReport {
    let ratio = |a: f64, b: f64| if b.abs() > 1e-9 { a / b } else { f64::NAN };
    let brightness_ratio = ratio(live.brightness(), reference.brightness());
    let [lr, lg, lb] = live.mean_rgb;
    let [rr, rg, rb] = reference.mean_rgb;
    let white_balance_ratio = [
        ratio(ratio(lr, lg), ratio(rr, rg)),
        ratio(ratio(lb, lg), ratio(rb, rg)),
    ];
    let sharpness_ratio = ratio(live.sharpness, reference.sharpness);
    let measure = |name: &'static str, value: f64, limit: &ViewpointLimit| Measure {
        name,
        value,
        warn: limit.warn,
        refuse: limit.refuse,
        verdict: Verdict::grade(value, limit),
    };
    let measures = vec![
        measure("shift_px", reg.shift_x.hypot(reg.shift_y), &t.shift_px),
        measure("rotation_deg", reg.rotation_deg.abs(), &t.rotation_deg),
        measure("scale_pct", (reg.scale - 1.0).abs() * 100.0, &t.scale_pct),
        measure(
            "brightness_pct",
            (brightness_ratio - 1.0).abs() * 100.0,
            &t.brightness_pct,
        ),
        measure(
            "white_balance_pct",
            (white_balance_ratio[0] - 1.0)
                .abs()
                .max((white_balance_ratio[1] - 1.0).abs())
                * 100.0,
            &t.white_balance_pct,
        ),
        measure(
            "sharpness_drop_pct",
            ((1.0 - sharpness_ratio) * 100.0).max(0.0),
            &t.sharpness_drop_pct,
        ),
        // A low peak means a different scene (or a covered lens): the geometry is unreliable.
        measure("match", (1.0 - reg.peak) * 100.0, &t.mismatch_pct),
    ];
    let verdict = measures
        .iter()
        .map(|m| m.verdict)
        .max()
        .unwrap_or(Verdict::Ok);
    ViewpointReport {
        camera: camera.to_string(),
        registration: reg,
        brightness_ratio,
        white_balance_ratio,
        sharpness_ratio,
        measures,
        verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth random scene: Gaussian blobs and a few gratings, defined everywhere, so that a
    /// transformed view can be sampled exactly (no interpolation in the ground truth).
    struct Scene {
        blobs: Vec<(f64, f64, f64, f64)>,
        /// A grating's frequencies along x and y, and its phase.
        grating: (f64, f64, f64),
    }

    impl Scene {
        fn new(seed: u64, w: f64, h: f64) -> Scene {
            let mut s = seed;
            let mut rnd = move || {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 11) as f64 / (1u64 << 53) as f64
            };
            let blobs = (0..60)
                .map(|_| {
                    (
                        rnd() * w * 1.4 - 0.2 * w,
                        rnd() * h * 1.4 - 0.2 * h,
                        2.0 + rnd() * 10.0,
                        rnd() * 160.0 - 80.0,
                    )
                })
                .collect();
            let grating = (0.05 + 0.1 * rnd(), 0.1 * rnd() - 0.05, 6.0 * rnd());
            Scene { blobs, grating }
        }

        fn at(&self, x: f64, y: f64) -> f64 {
            let (fx, fy, ph) = self.grating;
            let mut v = 110.0 + 20.0 * (x * fx + y * fy + ph).sin();
            for &(bx, by, r, a) in &self.blobs {
                let d2 = (x - bx).powi(2) + (y - by).powi(2);
                v += a * (-d2 / (2.0 * r * r)).exp();
            }
            v
        }

        /// The view with content shifted by `t`, rotated by `deg` (clockwise on screen) and
        /// scaled by `s` about the centre, times `gain`.
        fn view(
            &self,
            w: usize,
            h: usize,
            t: (f64, f64),
            deg: f64,
            s: f64,
            gain: f64,
        ) -> GreyImage {
            let (c, sn) = (deg.to_radians().cos(), deg.to_radians().sin());
            let (cx, cy) = ((w as f64 - 1.0) / 2.0, (h as f64 - 1.0) / 2.0);
            let mut px = Vec::with_capacity(w * h);
            for y in 0..h {
                for x in 0..w {
                    // A^-1 (p - c - t) + c, A^-1 = R(-deg) / s.
                    let (qx, qy) = (x as f64 - cx - t.0, y as f64 - cy - t.1);
                    let (ux, uy) = ((c * qx + sn * qy) / s, (-sn * qx + c * qy) / s);
                    px.push((self.at(ux + cx, uy + cy) * gain) as f32);
                }
            }
            GreyImage::new(w, h, px)
        }
    }

    fn assert_near(what: &str, got: f64, want: f64, tol: f64) {
        assert!(
            (got - want).abs() <= tol,
            "{what}: measured {got:.4}, true {want:.4} (tolerance {tol})"
        );
    }

    #[test]
    fn sub_pixel_shifts_are_measured_within_a_quarter_pixel() {
        let scene = Scene::new(1, 160.0, 120.0);
        let reference = scene.view(160, 120, (0.0, 0.0), 0.0, 1.0, 1.0);
        for t in [
            (0.3, -0.7),
            (2.45, 1.2),
            (-5.6, 3.35),
            (0.0, 0.0),
            (7.8, -6.1),
        ] {
            let live = scene.view(160, 120, t, 0.0, 1.0, 1.0);
            let r = register(&reference, &live).expect("same size");
            assert_near("shift x", r.shift_x, t.0, 0.25);
            assert_near("shift y", r.shift_y, t.1, 0.25);
            assert_near("rotation", r.rotation_deg, 0.0, 0.5);
            assert_near("scale", r.scale, 1.0, 0.02);
            assert!(r.peak > 0.95, "correlation {}", r.peak);
        }
    }

    #[test]
    fn rotation_and_scale_are_measured() {
        let scene = Scene::new(2, 160.0, 120.0);
        let reference = scene.view(160, 120, (0.0, 0.0), 0.0, 1.0, 1.0);
        for (deg, s, t) in [
            (3.0, 1.0, (0.0, 0.0)),
            (-4.5, 1.0, (1.5, -0.5)),
            (0.0, 1.05, (0.0, 0.0)),
            (0.0, 0.94, (-1.25, 2.0)),
            (2.2, 1.04, (2.6, 1.3)),
        ] {
            let live = scene.view(160, 120, t, deg, s, 1.0);
            let r = register(&reference, &live).expect("same size");
            assert_near("rotation", r.rotation_deg, deg, 0.5);
            assert_near("scale", r.scale, s, 0.02 * s);
            assert_near("shift x", r.shift_x, t.0, 0.25);
            assert_near("shift y", r.shift_y, t.1, 0.25);
        }
    }

    #[test]
    fn unrelated_pictures_do_not_match() {
        let a = Scene::new(3, 160.0, 120.0).view(160, 120, (0.0, 0.0), 0.0, 1.0, 1.0);
        let b = Scene::new(4, 160.0, 120.0).view(160, 120, (0.0, 0.0), 0.0, 1.0, 1.0);
        let same = register(&a, &a).expect("same size");
        let other = register(&a, &b).expect("same size");
        assert!(same.peak > 0.99, "self correlation {}", same.peak);
        assert!(other.peak < 0.5, "unrelated correlation {}", other.peak);
    }

    fn rgb_of(g: &GreyImage, gains: [f32; 3]) -> RgbPlanes {
        let n = g.width * g.height;
        let mut planes = vec![0f32; 3 * n];
        for (c, gain) in gains.iter().enumerate() {
            for (o, &v) in planes[c * n..(c + 1) * n].iter_mut().zip(&g.pixels) {
                *o = (v * gain).clamp(0.0, 255.0);
            }
        }
        RgbPlanes {
            width: g.width,
            height: g.height,
            planes,
        }
    }

    fn reference_of(scene: &Scene, downscale: usize) -> ViewpointReference {
        let (w, h) = (160 * downscale, 120 * downscale);
        let full = scene.view(w, h, (0.0, 0.0), 0.0, downscale as f64, 1.0);
        let rgb = rgb_of(&full, [1.0, 1.0, 1.0]);
        ViewpointReference {
            camera: "front".into(),
            frames: vec![rgb.luma().downscale(downscale)],
            downscale,
            stats: rgb.stats(),
            thresholds: ViewpointThresholds::default(),
        }
    }

    #[test]
    fn darkening_and_white_balance_are_measured() {
        let scene = Scene::new(5, 160.0, 120.0);
        let r = reference_of(&scene, 1);
        let live = scene.view(160, 120, (0.0, 0.0), 0.0, 1.0, 1.0);
        let dark = r.check(&rgb_of(&live, [0.7, 0.7, 0.7])).expect("checks");
        assert_near("brightness", dark.brightness_ratio, 0.7, 0.05);
        assert_near("R/G", dark.white_balance_ratio[0], 1.0, 0.01);
        let warm = r.check(&rgb_of(&live, [1.1, 1.0, 0.85])).expect("checks");
        assert_near("R/G", warm.white_balance_ratio[0], 1.1, 0.02);
        assert_near("B/G", warm.white_balance_ratio[1], 0.85, 0.02);
        // Brightness changes leave the geometry alone.
        assert_near("shift", dark.registration.shift_x, 0.0, 0.25);
    }

    #[test]
    fn the_check_passes_within_the_thresholds_and_refuses_beyond() {
        let scene = Scene::new(6, 320.0, 240.0);
        let r = reference_of(&scene, 2);
        let t = ViewpointThresholds::default();
        let view = |shift: (f64, f64), deg: f64, gain: f32| {
            let g = scene.view(320, 240, shift, deg, 2.0, 1.0);
            r.check(&rgb_of(&g, [gain; 3])).expect("checks")
        };
        // Same place: OK, measured in capture pixels (2x the reference's).
        let ok = view((0.8, -0.4), 0.0, 1.0);
        assert_eq!(ok.verdict, Verdict::Ok, "{}", ok.summary());
        assert_near("shift x", ok.registration.shift_x, 0.8, 0.25);
        assert_near("shift y", ok.registration.shift_y, -0.4, 0.25);
        // Moved past the refuse threshold.
        let moved = view((t.shift_px.refuse + 4.0, 0.0), 0.0, 1.0);
        assert_eq!(moved.verdict, Verdict::Refuse, "{}", moved.summary());
        // Between warn and refuse.
        let mid = (t.shift_px.warn + t.shift_px.refuse) / 2.0;
        let nudged = view((mid, 0.0), 0.0, 1.0);
        assert_eq!(nudged.verdict, Verdict::Warn, "{}", nudged.summary());
        // Rotated beyond the threshold.
        let turned = view((0.0, 0.0), t.rotation_deg.refuse + 2.0, 1.0);
        assert_eq!(turned.verdict, Verdict::Refuse, "{}", turned.summary());
        // Much darker.
        let dark = view((0.0, 0.0), 0.0, 0.4);
        assert_eq!(dark.verdict, Verdict::Refuse, "{}", dark.summary());
    }

    #[test]
    fn blur_lowers_sharpness() {
        let scene = Scene::new(7, 160.0, 120.0);
        let mut g = scene.view(160, 120, (0.0, 0.0), 0.0, 1.0, 1.0);
        // Fine texture, as a focused camera resolves it.
        for (i, v) in g.pixels.iter_mut().enumerate() {
            *v += ((i * 7919 % 23) as f32 - 11.0) * 1.5;
        }
        // A 3x3 box blur, three times (about a Gaussian of sigma 1.4 px).
        let box3 = |g: &GreyImage| {
            GreyImage::new(
                160,
                120,
                (0..160 * 120)
                    .map(|i| {
                        let (x, y) = ((i % 160) as i64, (i / 160) as i64);
                        let mut s = 0.0;
                        for dy in -1..=1 {
                            for dx in -1..=1 {
                                s += g.at(
                                    (x + dx).clamp(0, 159) as usize,
                                    (y + dy).clamp(0, 119) as usize,
                                );
                            }
                        }
                        s / 9.0
                    })
                    .collect(),
            )
        };
        let blurred = box3(&box3(&box3(&g)));
        let ratio = blurred.laplacian_variance() / g.laplacian_variance();
        assert!(ratio < 0.3, "sharpness ratio after the blur: {ratio}");
    }
}
