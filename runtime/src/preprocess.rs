//! Camera frame -> model input tensor, exactly as the training pipeline made it.
//!
//! A policy only behaves as evaluated if it sees the pixels it was trained on, so every stage here
//! reproduces what the (PyTorch/torchvision) training code did, and the tests compare it with an
//! independent numpy/PIL reimplementation (`tests/python/preprocess_ref.py`). In order:
//!
//! 1. **Decode to 8-bit RGB** (training frames were stored as 8-bit RGB images):
//!    - YUYV: ITU-R BT.601, limited ("studio swing") range, with the coefficients of ffmpeg's
//!      swscale BT.601 tables. With `Y' = Y - 16`, `U' = U - 128`, `V' = V - 128`:
//!      `R = 1.164 Y' + 1.596 V'`, `G = 1.164 Y' - 0.392 U' - 0.813 V'`, `B = 1.164 Y' + 2.017 U'`,
//!      each rounded half up (`floor(x + 0.5)`) and clamped to `[0, 255]`; both pixels of a pair
//!      share U and V. The coefficients are exact decimals: the result equals the integer form
//!      `floor((1164 Y' + 1596 V' + 500) / 1000)` for every (Y, U, V) (a unit test checks all
//!      2^24). Other converters round differently and can differ by one level (OpenCV's
//!      `COLOR_YUV2RGB_YUYV` uses 0.391 and 2.018 in fixed point); libv4l's
//!      `v4lconvert_yuyv_to_rgb24` is a different, full-range approximation (no 1.164 gain).
//!    - RGB24 as is; MJPEG decoded by `zune-jpeg` to RGB (see below).
//!    - GREY: replicated to three channels for an RGB/BGR model. Colour -> grey (`color = grey`)
//!      is PIL's `convert("L")`, ITU-R 601 luma in PIL's fixed point:
//!      `L = (19595 R + 38470 G + 7471 B + 32768) >> 16` on the 8-bit RGB values.
//! 2. **Crop** `(x, y, width, height)` on the decoded image.
//! 3. **Resize** with torchvision `Resize` semantics *on a float tensor*, i.e. `F.interpolate`:
//!    - bilinear, `antialias = true`: PyTorch's `_upsample_bilinear2d_aa`, the PIL-style triangle
//!      filter whose support is widened by the scale factor when downscaling (plain bilinear when
//!      upscaling). An exact 2x downscale is therefore *not* a 2x2 box average: the weights are
//!      (1/8, 3/8, 3/8, 1/8) over 4 pixels;
//!    - bilinear, `antialias = false`: `mode="bilinear", align_corners=False` (source coordinate
//!      `(i + 0.5) * in / out - 0.5`, clamped at 0);
//!    - nearest: PyTorch's legacy `nearest`, source index `floor(i * in / out)` (antialias does not
//!      apply).
//!
//!    The tap ranges and weights are computed at construction the way PyTorch computes them for
//!    `float32` tensors (same f32 arithmetic; it differs from exact arithmetic by up to ~3e-5 in
//!    the normalized output at 640 -> 224), and the passes run as PyTorch's portable kernels
//!    (`ATEN_CPU_CAPABILITY=default`) run them: horizontal first, each tap sum in order from
//!    the first product, in f32 without fused multiply-adds, the last sample read twice past
//!    the edge. The resized values are then PyTorch's bit for bit (tested against torch 2.7.1:
//!    antialiased, plain bilinear, nearest). Two PyTorch kernels round differently, by an f32
//!    ulp or so: its `AVX2`/`AVX512` builds fuse the multiply-adds of the tap sums (measured:
//!    the fused sums reproduce them exactly), and plain bilinear (`antialias = false`) of a
//!    3-channel image run with one thread (as in a `DataLoader` worker), or to an output whose
//!    height + width is at most 128, takes the channels-last kernel, which sums the four
//!    products `(w_y w_x) p` of the 2x2 neighbourhood. Those only matter to `dtype = "uint8"`,
//!    at values within an ulp of a half level.
//!
//!    *Element type* (`resize.dtype`): training pipelines normally convert to float first
//!    (`ToTensor`/`ConvertImageDtype`, or `ToImage` + `ToDtype(float32, scale=True)`) and resize
//!    after: `dtype = "float"` (the default) keeps the resized values as they are. A pipeline
//!    that resized uint8 tensors gets them rounded back to integers, up to half a level
//!    (0.5/255) away: `dtype = "uint8"` rounds each resized value the way torchvision does when
//!    it resizes uint8 in float (`round_()`, ties to even, then the cast to uint8; see
//!    [`ResizeDtype::Uint8`] for when torchvision takes that path). Pipelines that resized
//!    8-bit images in integer fixed point get it too: `dtype = "uint8-pil"` is Pillow's
//!    `Image.resize(BILINEAR)` and `dtype = "uint8-avx2"` torchvision's uint8 resize on AVX2
//!    CPUs (PyTorch's Pillow-SIMD kernel): triangle weights in double, scaled to integers with
//!    22 fractional bits (Pillow) or as many as keep the largest weight below 2^15 (Pillow-SIMD),
//!    rounded half away from zero; each pass, horizontal first, sums from half a unit in
//!    integers, shifts and clips to 0..255 ([`ResizeDtype::Uint8Pil`],
//!    [`ResizeDtype::Uint8Avx2`]).
//! 4. **Normalize** `(x / 255 - mean) / std` per channel, computed as one fused `a x + b` with
//!    `a = 1 / (255 std)`, `b = -mean / std` (within a few f32 ulps of the three-step form).
//! 5. **Layout** CHW (NCHW without the batch axis), channels in the bundle's order (BGR swaps R
//!    and B).
//!
//! A frame whose size, pixel format or byte length differs from the bundle's capture spec is
//! refused with an error; it is never resized to fit, because a camera silently delivering
//! another mode would feed the policy images unlike its training data.
//!
//! # Hot path
//! [`Preprocessor::new`] does all allocation and precomputes the resampling weights; `run`
//! allocates nothing for YUYV, RGB24 and GREY frames. For each output row, the source rows its
//! vertical taps need are decoded to f32 (each source row once) and resampled horizontally
//! into a ring of rows as deep as the vertical filter; the ring rows are then summed vertically
//! and normalized into the output planes (PyTorch's pass order, so that the f32 rounding is the
//! same). The horizontal pass reads pixels as overlapping 4-wide loads of packed R, G, B (the
//! 4th lane is ignored), so one tap of one output pixel is one vector multiply-add; tap counts up to 8 are compile-time constants (unrolled loops). Everything
//! stays in L1/L2, and the inner loops run over contiguous f32 slices so they vectorize with the
//! baseline SSE2 (x86-64) or NEON (aarch64), and wider when built with `-C target-cpu`. YUYV is
//! decoded a pixel pair (one 32-bit word) at a time into planes, with shifts and masks rather
//! than byte shuffles, which SSE2 lacks.
//!
//! MJPEG frames are decoded by `zune-jpeg` into an RGB buffer allocated at construction, but the
//! decoder itself allocates per frame (its tables and per-component buffers: 17 allocations for
//! a 640x480 4:2:2 frame, measured by `tests/preprocess.rs`). A corrupt JPEG is an error (strict
//! mode), so is a truncated one (no end-of-image marker: zune-jpeg would zero-fill it), and a
//! panic inside the decoder is caught and reported as an error. `zune-jpeg`'s IDCT and chroma
//! upsampling are not bit-exact to libjpeg-turbo (PIL, OpenCV): after a 640x480 -> 224x224
//! resize the two differ by up to ~2 levels (mean 0.02 to 0.2), so prefer a raw format for a
//! policy whose training frames were decoded by libjpeg.

use crate::io::{Fault, FaultKind};
use reflex_models::manifest::{
    CameraSpec, ColorOrder, Interpolation, Layout, PixelFormat, ResizeDtype, ResizeSpec,
};
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

/// Largest capture or resize side accepted (guards the allocations made at construction).
const MAX_SIDE: u32 = 16384;

/// Adding then subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to the nearest
/// integer (ties to even) with two plain additions, which vectorize everywhere.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Offsets the decoded value by half a thousandth so that round-to-nearest gives exactly
/// `floor(x + 0.5)` for the decimal coefficients (see [`yuv_luma`]).
const HALF_MILLI: f32 = 0.0005;

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The camera's preprocessing spec cannot be run (normally caught by bundle validation).
    #[error("camera `{camera}`: invalid preprocessing spec: {reason}")]
    Spec { camera: String, reason: String },
    /// The frame is not in the mode the bundle was trained with.
    #[error(
        "camera `{camera}`: frame is {got_width}x{got_height} {got_format}, the bundle expects \
         {width}x{height} {format} (frames are never resized to fit)",
        got_format = got_format.as_str(),
        format = format.as_str()
    )]
    FrameMismatch {
        camera: String,
        width: u32,
        height: u32,
        format: PixelFormat,
        got_width: u32,
        got_height: u32,
        got_format: PixelFormat,
    },
    /// A raw frame with the wrong number of bytes (truncated or padded).
    #[error(
        "camera `{camera}`: {width}x{height} {format} frame has {got} bytes, expected {expected}",
        format = format.as_str()
    )]
    FrameLength {
        camera: String,
        width: u32,
        height: u32,
        format: PixelFormat,
        expected: usize,
        got: usize,
    },
    /// The JPEG's own dimensions differ from the capture size.
    #[error(
        "camera `{camera}`: MJPEG frame decodes to {got_width}x{got_height}, the bundle expects \
         {width}x{height}"
    )]
    JpegSize {
        camera: String,
        width: u32,
        height: u32,
        got_width: usize,
        got_height: usize,
    },
    /// The MJPEG frame could not be decoded.
    #[error("camera `{camera}`: corrupt MJPEG frame ({got} bytes): {reason}")]
    Jpeg {
        camera: String,
        got: usize,
        reason: String,
    },
    /// The caller's output buffer has the wrong length.
    #[error(
        "camera `{camera}`: output buffer holds {got} f32, the preprocessed image needs {expected} \
         ({channels}x{height}x{width})"
    )]
    OutputLength {
        camera: String,
        channels: usize,
        height: usize,
        width: usize,
        expected: usize,
        got: usize,
    },
}

impl Fault for PreprocessError {
    /// What the control loop should do about it: a damaged frame (wrong length, corrupt JPEG) is
    /// transient; a camera in the wrong mode or a bad spec or buffer is a misconfiguration.
    fn kind(&self) -> FaultKind {
        match self {
            PreprocessError::FrameLength { .. } | PreprocessError::Jpeg { .. } => {
                FaultKind::Transient
            }
            PreprocessError::Spec { .. }
            | PreprocessError::FrameMismatch { .. }
            | PreprocessError::JpegSize { .. }
            | PreprocessError::OutputLength { .. } => FaultKind::Fatal,
        }
    }
}

impl PreprocessError {
    /// The camera at fault.
    pub fn camera(&self) -> &str {
        match self {
            PreprocessError::Spec { camera, .. }
            | PreprocessError::FrameMismatch { camera, .. }
            | PreprocessError::FrameLength { camera, .. }
            | PreprocessError::JpegSize { camera, .. }
            | PreprocessError::Jpeg { camera, .. }
            | PreprocessError::OutputLength { camera, .. } => camera,
        }
    }
}

/// How one row of the (decoded) frame becomes an f32 row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RowDecode {
    /// YUYV -> R, G, B planes of the even and the odd pixels.
    YuyvRgb,
    /// YUYV -> RGB -> PIL luma, one channel.
    YuyvLuma,
    /// NV12 -> the planes of [`RowDecode::YuyvRgb`].
    Nv12Rgb,
    /// NV12 -> RGB -> PIL luma, one channel.
    Nv12Luma,
    /// RGB24 (or decoded MJPEG) -> R, G, B.
    RgbRgb,
    /// RGB24 (or decoded MJPEG) -> PIL luma, one channel.
    RgbLuma,
    /// GREY -> one channel (replicated to the output channels at the end).
    Grey,
}

impl RowDecode {
    /// Three channels (R, G, B) per pixel, or one.
    fn colour(self) -> bool {
        match self {
            RowDecode::YuyvRgb | RowDecode::Nv12Rgb | RowDecode::RgbRgb => true,
            RowDecode::YuyvLuma | RowDecode::Nv12Luma | RowDecode::RgbLuma | RowDecode::Grey => {
                false
            }
        }
    }
}

/// A 1-D resampling: output `i` is `sum_k weights[i * stride + k] * input[start[i] + k]` for
/// `k < len[i]`.
#[derive(Debug, Clone)]
struct Kernel<W = f32> {
    start: Vec<usize>,
    len: Vec<usize>,
    stride: usize,
    weights: Vec<W>,
}

impl Kernel {
    /// The taps PyTorch uses to resize `in_len` samples to `out_len` (`in_len, out_len >= 1`),
    /// with zero-weight taps at either end dropped (they add exact zeros). A non-antialiased
    /// bilinear tap may be at index `in_len`: the replica of the last sample (see
    /// [`linear_taps`]), which the resampler provides.
    fn new(in_len: usize, out_len: usize, interp: Interpolation, antialias: bool) -> Kernel {
        let taps: Vec<(usize, Vec<f32>)> = (0..out_len)
            .map(|i| match interp {
                Interpolation::Nearest => (nearest_index(i, in_len, out_len), vec![1.0]),
                Interpolation::Bilinear if antialias => aa_taps(i, in_len, out_len),
                Interpolation::Bilinear => linear_taps(i, in_len, out_len),
            })
            .collect();
        Kernel::from_taps(taps)
    }
}

impl<W: Copy + Default + PartialEq> Kernel<W> {
    /// One output's taps per element, `(first input index, weights)`, with zero weights at
    /// either end dropped.
    fn from_taps(taps: Vec<(usize, Vec<W>)>) -> Kernel<W> {
        let taps: Vec<(usize, Vec<W>)> = taps.into_iter().map(|(s, w)| trim(s, w)).collect();
        let out_len = taps.len();
        let stride = taps.iter().map(|(_, w)| w.len()).max().unwrap_or(1).max(1);
        let mut k = Kernel {
            start: Vec::with_capacity(out_len),
            len: Vec::with_capacity(out_len),
            stride,
            weights: vec![W::default(); out_len * stride],
        };
        for (i, (start, w)) in taps.into_iter().enumerate() {
            k.start.push(start);
            k.len.push(w.len());
            k.weights[i * stride..i * stride + w.len()].copy_from_slice(&w);
        }
        k
    }

    /// The same kernel with every output using exactly `stride` taps (zero-padded, window moved
    /// left where it would pass `in_len`), for the horizontal pass's fixed-length inner loop.
    fn padded(&self, in_len: usize) -> Kernel<W> {
        let stride = self.stride.min(in_len);
        let n = self.start.len();
        let mut k = Kernel {
            start: Vec::with_capacity(n),
            len: vec![stride; n],
            stride,
            weights: vec![W::default(); n * stride],
        };
        for i in 0..n {
            let (s, l) = (self.start[i], self.len[i]);
            let ps = s.min(in_len - stride);
            let shift = s - ps;
            k.start.push(ps);
            k.weights[i * stride + shift..i * stride + shift + l]
                .copy_from_slice(&self.weights[i * self.stride..i * self.stride + l]);
        }
        k
    }

    fn taps(&self, i: usize) -> (usize, &[W]) {
        let w = &self.weights[i * self.stride..i * self.stride + self.len[i]];
        (self.start[i], w)
    }
}

/// Drops leading and trailing zero weights (keeping at least one tap).
fn trim<W: Copy + Default + PartialEq>(start: usize, mut w: Vec<W>) -> (usize, Vec<W>) {
    let zero = W::default();
    while w.len() > 1 && w.last() == Some(&zero) {
        w.pop();
    }
    let lead = w
        .iter()
        .position(|&x| x != zero)
        .unwrap_or(0)
        .min(w.len() - 1);
    (start + lead, w.split_off(lead))
}

/// `aten/src/ATen/native/UpSample.h` `nearest_idx` (legacy `nearest`), in its f32 arithmetic.
fn nearest_index(i: usize, in_len: usize, out_len: usize) -> usize {
    if out_len == in_len {
        i
    } else if out_len == 2 * in_len {
        i >> 1
    } else {
        let scale = in_len as f32 / out_len as f32;
        ((i as f32 * scale).floor() as usize).min(in_len - 1)
    }
}

/// `HelperInterpLinear::compute_indices_weights` (bilinear, `align_corners=False`, no
/// antialias): two taps around `(i + 0.5) * scale - 0.5`, clamped at 0; at the last sample the
/// second tap is at `in_len` (a copy of the last sample).
fn linear_taps(i: usize, in_len: usize, out_len: usize) -> (usize, Vec<f32>) {
    let scale = in_len as f32 / out_len as f32;
    let src = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(in_len - 1);
    let l1 = (src - i0 as f32).clamp(0.0, 1.0);
    let l0 = 1.0 - l1;
    // Past the last sample both taps are on it: PyTorch reads it twice and sums `x l0 + x l1`,
    // which can differ from `x (l0 + l1)` in the last bit, so the second tap is at `in_len`,
    // where the resampler keeps a copy of the last sample.
    (i0, vec![l0, l1])
}

/// `HelperInterpBase::_compute_indices_min_size_weights_aa` with the bilinear (triangle) filter,
/// for `float32` tensors: the same mix of f32 and f64 arithmetic as the C++ source.
fn aa_taps(i: usize, in_len: usize, out_len: usize) -> (usize, Vec<f32>) {
    let scale = in_len as f32 / out_len as f32;
    let (support, invscale) = if scale >= 1.0 {
        (scale, 1.0 / scale)
    } else {
        (1.0f32, 1.0f32)
    };
    let max_taps = support.ceil() as i64 * 2 + 1;
    let center = (f64::from(scale) * (i as f64 + 0.5)) as f32;
    let xmin = ((f64::from(center - support) + 0.5) as i64).max(0);
    let xmax = ((f64::from(center + support) + 0.5) as i64).min(in_len as i64);
    let xsize = (xmax - xmin).clamp(0, max_taps);
    let mut w: Vec<f32> = (0..xsize)
        .map(|j| {
            let x = (f64::from((j + xmin) as f32 - center) + 0.5) * f64::from(invscale);
            let x = (x as f32).abs();
            if x < 1.0 {
                1.0 - x
            } else {
                0.0
            }
        })
        .collect();
    let total: f32 = w.iter().fold(0.0, |s, &x| s + x);
    if total != 0.0 {
        for x in &mut w {
            *x /= total;
        }
    }
    if w.is_empty() {
        // Cannot happen for in_len, out_len >= 1 (the window always covers its centre); here
        // so that no kernel can ever have zero taps.
        return ((xmin as usize).min(in_len - 1), vec![1.0]);
    }
    (xmin as usize, w)
}

/// Pillow's fixed-point precision, `PRECISION_BITS = 32 - 8 - 2` (`libImaging/Resample.c`).
const PIL_BITS: u32 = 22;

/// The triangle (bilinear) filter's taps for one output in double, as Pillow's
/// `precompute_coeffs` and PyTorch's `_compute_indices_min_size_weights_aa` compute them for
/// the fixed-point kernels: centre `(i + 0.5) in / out`, support widened by the downscale factor
/// when `antialias` (Pillow always), taps `xmin..xmax` truncated from `centre -/+ support + 0.5`,
/// weight `tri((x - centre + 0.5) / filterscale)` (times the reciprocal), normalized to sum 1.
fn fixed_point_taps(i: usize, in_len: usize, out_len: usize, antialias: bool) -> (usize, Vec<f64>) {
    let scale = in_len as f64 / out_len as f64;
    let filterscale = if antialias { scale.max(1.0) } else { 1.0 };
    let (support, ss) = (filterscale, 1.0 / filterscale);
    let center = (i as f64 + 0.5) * scale;
    let xmin = ((center - support + 0.5) as i64).max(0);
    let xmax = ((center + support + 0.5) as i64)
        .min(in_len as i64)
        .max(xmin);
    let mut w: Vec<f64> = (xmin..xmax)
        .map(|x| {
            let t = ((x as f64 - center + 0.5) * ss).abs();
            if t < 1.0 {
                1.0 - t
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = w.iter().fold(0.0, |s, &x| s + x);
    if total != 0.0 {
        for x in &mut w {
            *x /= total;
        }
    }
    if w.is_empty() {
        // Cannot happen for in_len, out_len >= 1; no kernel may have zero taps.
        return ((xmin as usize).min(in_len - 1), vec![1.0]);
    }
    (xmin as usize, w)
}

/// A fixed-point resampling kernel for `in_len -> out_len` and its fractional bits: the
/// weights of [`fixed_point_taps`] times `2^bits`, rounded half away from zero (Pillow's
/// `normalize_coeffs_8bpc`, PyTorch's `_compute_index_ranges_int16_weights`). `bits` is 22 for
/// Pillow; for PyTorch's 16-bit weights, the largest `p < 22` such that the largest weight
/// times `2^(p+1)` rounds below 2^15 (or 22).
fn fixed_point_kernel(
    in_len: usize,
    out_len: usize,
    antialias: bool,
    dtype: ResizeDtype,
) -> (Kernel<i32>, u32) {
    let taps: Vec<(usize, Vec<f64>)> = (0..out_len)
        .map(|i| fixed_point_taps(i, in_len, out_len, antialias))
        .collect();
    let bits = if dtype == ResizeDtype::Uint8Avx2 {
        let max = taps
            .iter()
            .flat_map(|(_, w)| w.iter().copied())
            .fold(0.0f64, f64::max);
        (0..PIL_BITS)
            .find(|&p| (0.5 + max * f64::from(1u32 << (p + 1))) as i64 >= 1 << 15)
            .unwrap_or(PIL_BITS)
    } else {
        PIL_BITS
    };
    let one = f64::from(1u32 << bits);
    let taps = taps
        .into_iter()
        .map(|(s, w)| {
            let k = w
                .iter()
                .map(|&x| {
                    let v = x * one;
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (s, k)
        })
        .collect();
    (Kernel::from_taps(taps), bits)
}

/// The integer result of a fixed-point tap sum: `acc >> bits`, clipped to 0..255 (Pillow's
/// `clip8`), as f32.
#[inline(always)]
fn clip8(acc: i32, bits: u32) -> f32 {
    (acc >> bits).clamp(0, 255) as f32
}

/// Fixed-point horizontal pass (Pillow's `ImagingResampleHorizontal_8bpc`): per output pixel
/// and channel `clip8(2^(bits-1) + sum x k)`, the 8-bit samples read from the f32 row (exact
/// integers), written in [`horizontal`]'s layout. The sums stay below 2^31 (samples <= 255,
/// weights summing to about 2^22).
#[inline(always)]
fn horizontal_int(row: &[f32], k: &Kernel<i32>, bits: u32, colour: bool, out: &mut [f32]) {
    let bias = 1i32 << (bits - 1);
    let t = k.stride;
    let weights = k.weights.chunks_exact(t);
    if colour {
        for ((o, &s), w) in out.chunks_exact_mut(4).zip(&k.start).zip(weights) {
            let mut acc = [bias; 3];
            for (px, &wk) in row[3 * s..3 * (s + t)].chunks_exact(3).zip(w) {
                for (a, &x) in acc.iter_mut().zip(px) {
                    *a += x as i32 * wk;
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                *o = clip8(a, bits);
            }
        }
    } else {
        for ((o, &s), w) in out.iter_mut().zip(&k.start).zip(weights) {
            let acc = row[s..s + t]
                .iter()
                .zip(w)
                .fold(bias, |a, (&x, &wk)| a + x as i32 * wk);
            *o = clip8(acc, bits);
        }
    }
}

/// Fixed-point vertical pass (Pillow's `ImagingResampleVertical_8bpc`): `acc[i] =
/// clip8(2^(bits-1) + sum_k rows(k)[i] w[k])`.
#[inline(always)]
fn vertical_int<'r>(acc: &mut [f32], w: &[i32], bits: u32, rows: impl Fn(usize) -> &'r [f32]) {
    let bias = 1i32 << (bits - 1);
    for (i, a) in acc.iter_mut().enumerate() {
        let sum = w
            .iter()
            .enumerate()
            .fold(bias, |s, (k, &wk)| s + rows(k)[i] as i32 * wk);
        *a = clip8(sum, bits);
    }
}

/// Luma term of the BT.601 limited-range conversion, `1.164 (Y - 16)`, plus 0.0005.
///
/// The coefficients are exact decimals, so `x = luma + chroma` (without the 0.0005) is a
/// multiple of 0.001 and `floor(x + 0.5)` equals round-to-nearest of `x + 0.0005`, which is never
/// within 0.0005 of a rounding boundary. Evaluated in f32 (offsets folded into one constant per
/// term) the sum errs by less than 2e-4 over the whole input range, so [`to_level`] of
/// `yuv_luma + yuv_chroma` is exact (checked for all inputs by a unit test).
#[inline(always)]
fn yuv_luma(y: u8) -> f32 {
    1.164 * f32::from(y) + (HALF_MILLI - 1.164 * 16.0)
}

/// Chroma terms `[1.596 V', -0.392 U' - 0.813 V', 2.017 U']` (see [`yuv_luma`]).
#[inline(always)]
fn yuv_chroma(u: u8, v: u8) -> [f32; 3] {
    let (u, v) = (f32::from(u), f32::from(v));
    [
        1.596 * v - 1.596 * 128.0,
        -0.392 * u - 0.813 * v + (0.392 + 0.813) * 128.0,
        2.017 * u - 2.017 * 128.0,
    ]
}

/// Rounds to the nearest integer and clamps to `[0, 255]`: an 8-bit level, as f32.
#[inline(always)]
fn to_level(x: f32) -> f32 {
    // Comparisons rather than f32::max/min, whose NaN rules cost extra instructions (x is never
    // NaN here); these map to single max/min instructions.
    let x = (x + ROUND_MAGIC) - ROUND_MAGIC;
    let x = if x > 0.0 { x } else { 0.0 };
    if x < 255.0 {
        x
    } else {
        255.0
    }
}

/// PIL's `convert("L")` of one 8-bit RGB pixel (`ImagingConvert`'s `L24`).
#[inline(always)]
fn pil_luma(r: u32, g: u32, b: u32) -> f32 {
    ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16) as f32
}

/// One YUYV row span (pixel pairs) -> the 6 planes of [`yuv_pairs_to_planes`].
///
/// Reads one 32-bit word (a pixel pair) per step and splits it with shifts and masks, so it
/// vectorizes with plain SSE2/NEON (no byte shuffles).
#[inline(always)]
fn yuyv_rgb_row(src: &[u8], dst: &mut [f32]) {
    let pairs = src.chunks_exact(4).map(|q| {
        let w = u32::from_le_bytes([q[0], q[1], q[2], q[3]]);
        [w as u8, (w >> 16) as u8, (w >> 8) as u8, (w >> 24) as u8]
    });
    yuv_pairs_to_planes(pairs, src.len() / 4, dst);
}

/// One NV12 row span: its Y row and the interleaved U, V row it shares with its neighbour
/// row -> the 6 planes of [`yuyv_rgb_row`] (same conversion, pixel pairs sharing chroma).
#[inline(always)]
fn nv12_rgb_row(y: &[u8], uv: &[u8], dst: &mut [f32]) {
    let pairs = y
        .chunks_exact(2)
        .zip(uv.chunks_exact(2))
        .map(|(y, c)| [y[0], y[1], c[0], c[1]]);
    yuv_pairs_to_planes(pairs, y.len() / 2, dst);
}

/// `n` pixel pairs `[Y0, Y1, U, V]` -> 6 planes of `n` f32: R, G, B of the even pixels, then R,
/// G, B of the odd pixels ([`yuyv_planes_to_rgb`] puts them in pixel order). Channel-by-channel
/// unit-stride stores vectorize with plain SSE2/NEON.
#[inline(always)]
fn yuv_pairs_to_planes(pairs: impl Iterator<Item = [u8; 4]>, n: usize, dst: &mut [f32]) {
    let (re, rest) = dst.split_at_mut(n);
    let (ge, rest) = rest.split_at_mut(n);
    let (be, rest) = rest.split_at_mut(n);
    let (ro, rest) = rest.split_at_mut(n);
    let (go, rest) = rest.split_at_mut(n);
    let bo = &mut rest[..n];
    for (i, [y0, y1, u, v]) in pairs.enumerate().take(n) {
        let y0 = yuv_luma(y0);
        let y1 = yuv_luma(y1);
        let [cr, cg, cb] = yuv_chroma(u, v);
        re[i] = to_level(y0 + cr);
        ge[i] = to_level(y0 + cg);
        be[i] = to_level(y0 + cb);
        ro[i] = to_level(y1 + cr);
        go[i] = to_level(y1 + cg);
        bo[i] = to_level(y1 + cb);
    }
}

/// The 6 planes of [`yuyv_rgb_row`] -> R, G, B per pixel, in pixel order.
#[inline(always)]
fn yuyv_planes_to_rgb(planes: &[f32], dst: &mut [f32]) {
    let n = planes.len() / 6;
    let (re, rest) = planes.split_at(n);
    let (ge, rest) = rest.split_at(n);
    let (be, rest) = rest.split_at(n);
    let (ro, rest) = rest.split_at(n);
    let (go, rest) = rest.split_at(n);
    let bo = &rest[..n];
    for (i, d) in dst.chunks_exact_mut(6).enumerate().take(n) {
        d[0] = re[i];
        d[1] = ge[i];
        d[2] = be[i];
        d[3] = ro[i];
        d[4] = go[i];
        d[5] = bo[i];
    }
}

#[inline(always)]
fn yuyv_luma_row(src: &[u8], dst: &mut [f32]) {
    yuv_pairs_to_luma(src.chunks_exact(4).map(|s| [s[0], s[2], s[1], s[3]]), dst);
}

#[inline(always)]
fn nv12_luma_row(y: &[u8], uv: &[u8], dst: &mut [f32]) {
    let pairs = y
        .chunks_exact(2)
        .zip(uv.chunks_exact(2))
        .map(|(y, c)| [y[0], y[1], c[0], c[1]]);
    yuv_pairs_to_luma(pairs, dst);
}

/// Pixel pairs `[Y0, Y1, U, V]` -> RGB -> PIL luma, one f32 per pixel.
#[inline(always)]
fn yuv_pairs_to_luma(pairs: impl Iterator<Item = [u8; 4]>, dst: &mut [f32]) {
    let luma = |y: f32, c: &[f32; 3]| {
        pil_luma(
            to_level(y + c[0]) as u32,
            to_level(y + c[1]) as u32,
            to_level(y + c[2]) as u32,
        )
    };
    for ([y0, y1, u, v], d) in pairs.zip(dst.chunks_exact_mut(2)) {
        let c = yuv_chroma(u, v);
        d[0] = luma(yuv_luma(y0), &c);
        d[1] = luma(yuv_luma(y1), &c);
    }
}

/// 8-bit samples to f32 (RGB24 rows, GREY rows).
#[inline(always)]
fn bytes_row(src: &[u8], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32::from(s);
    }
}

#[inline(always)]
fn rgb_luma_row(src: &[u8], dst: &mut [f32]) {
    for (s, d) in src.chunks_exact(3).zip(dst.iter_mut()) {
        *d = pil_luma(u32::from(s[0]), u32::from(s[1]), u32::from(s[2]));
    }
}

/// Horizontal pass over one row of R, G, B pixels (3 f32 each, in pixel order, followed by one
/// padding f32). Each tap reads 4 f32 — the pixel plus the next pixel's R, which lands in a
/// 4th lane that is never used — so that one tap of one output pixel is one 4-wide multiply-add.
/// `weights` holds each tap's weight broadcast to the 4 lanes, `taps` per output pixel (see
/// [`Kernel::padded`]); `out` gets 4 f32 per output pixel (R, G, B, unused).
///
/// `T` is the tap count when it is one of the common ones (the loop is then fully unrolled);
/// `T = 0` means `taps` at run time.
#[inline(always)]
fn horizontal_rgb<const T: usize>(
    row: &[f32],
    start: &[usize],
    weights: &[[f32; 4]],
    taps: usize,
    out: &mut [f32],
) {
    let t = if T == 0 { taps } else { T };
    for ((o, &s), w) in out
        .chunks_exact_mut(4)
        .zip(start)
        .zip(weights.chunks_exact(t))
    {
        let src = &row[3 * s..3 * (s + t) + 1];
        // Four independent lanes with the same operations each: LLVM packs them into one
        // vector multiply and add per tap (the sums stay in tap order per lane, bit-exact).
        let mut acc = [0.0f32; 4];
        for (k, wk) in w.iter().enumerate().take(t) {
            let px: &[f32; 4] = src[3 * k..3 * k + 4].try_into().expect("4 lanes");
            acc[0] += px[0] * wk[0];
            acc[1] += px[1] * wk[1];
            acc[2] += px[2] * wk[2];
            acc[3] += px[3] * wk[3];
        }
        // Lane by lane: a slice copy from `acc` would keep it in memory, and reloading its four
        // scalar stores as one vector stalls the store forwarding (measured: a third of the time).
        o[0] = acc[0];
        o[1] = acc[1];
        o[2] = acc[2];
        o[3] = acc[3];
    }
}

/// Horizontal pass over one row of single-channel pixels (see [`horizontal_rgb`]).
#[inline(always)]
fn horizontal_grey<const T: usize>(
    row: &[f32],
    start: &[usize],
    weights: &[f32],
    taps: usize,
    out: &mut [f32],
) {
    let t = if T == 0 { taps } else { T };
    for ((o, &s), w) in out.iter_mut().zip(start).zip(weights.chunks_exact(t)) {
        let src = &row[s..s + t];
        *o = src.iter().zip(w).fold(0.0, |a, (&x, &wk)| a + x * wk);
    }
}

/// Runs [`horizontal_rgb`] or [`horizontal_grey`] with the tap count as a constant when it is
/// at most 8 (every downscale by up to 3.5x), at run time otherwise.
#[inline(always)]
fn horizontal(row: &[f32], k: &Kernel, weights4: &[[f32; 4]], colour: bool, out: &mut [f32]) {
    macro_rules! dispatch {
        ($f:ident, $w:expr) => {
            match k.stride {
                1 => $f::<1>(row, &k.start, $w, 1, out),
                2 => $f::<2>(row, &k.start, $w, 2, out),
                3 => $f::<3>(row, &k.start, $w, 3, out),
                4 => $f::<4>(row, &k.start, $w, 4, out),
                5 => $f::<5>(row, &k.start, $w, 5, out),
                6 => $f::<6>(row, &k.start, $w, 6, out),
                7 => $f::<7>(row, &k.start, $w, 7, out),
                8 => $f::<8>(row, &k.start, $w, 8, out),
                t => $f::<0>(row, &k.start, $w, t, out),
            }
        };
    }
    if colour {
        dispatch!(horizontal_rgb, weights4)
    } else {
        dispatch!(horizontal_grey, &k.weights)
    }
}

/// Vertical pass: `acc = sum_k w[k] * rows(k)`, summed in tap order from `rows(0) * w[0]` (as
/// PyTorch does), in one sweep over the row with the tap count as a constant when it is at most
/// 8, one tap per sweep otherwise.
#[inline(always)]
fn vertical<'r>(acc: &mut [f32], w: &[f32], rows: impl Fn(usize) -> &'r [f32]) {
    match w.len() {
        1 => vertical_fixed::<1>(acc, w, rows),
        2 => vertical_fixed::<2>(acc, w, rows),
        3 => vertical_fixed::<3>(acc, w, rows),
        4 => vertical_fixed::<4>(acc, w, rows),
        5 => vertical_fixed::<5>(acc, w, rows),
        6 => vertical_fixed::<6>(acc, w, rows),
        7 => vertical_fixed::<7>(acc, w, rows),
        8 => vertical_fixed::<8>(acc, w, rows),
        _ => {
            let n = acc.len();
            for (a, &x) in acc.iter_mut().zip(&rows(0)[..n]) {
                *a = x * w[0];
            }
            for (k, &wk) in w.iter().enumerate().skip(1) {
                for (a, &x) in acc.iter_mut().zip(&rows(k)[..n]) {
                    *a += x * wk;
                }
            }
        }
    }
}

#[inline(always)]
fn vertical_fixed<'r, const T: usize>(
    acc: &mut [f32],
    w: &[f32],
    rows: impl Fn(usize) -> &'r [f32],
) {
    let n = acc.len();
    let r: [&[f32]; T] = std::array::from_fn(|k| &rows(k)[..n]);
    let w: [f32; T] = std::array::from_fn(|k| w[k]);
    for (i, a) in acc.iter_mut().enumerate() {
        let mut s = r[0][i] * w[0];
        for k in 1..T {
            s += r[k][i] * w[k];
        }
        *a = s;
    }
}

/// The frame bytes a run reads from: the caller's raw frame, or the decoded JPEG.
#[derive(Clone, Copy)]
struct Source<'a> {
    bytes: &'a [u8],
    /// Bytes per frame row.
    row_bytes: usize,
    /// Bytes per pixel (YUYV: 2; NV12: 1, its Y plane).
    pixel_bytes: usize,
    /// NV12: where the interleaved U, V plane starts (its rows are `row_bytes` long too).
    uv_offset: usize,
}

/// Buffers and tables of the resampling, apart from the JPEG buffer so that a run can read the
/// latter while writing these.
///
/// Per output row: decode the source rows its vertical taps need that are not resampled yet, put
/// each in pixel order (YUYV) and resample it horizontally into a ring of horizontally resampled
/// rows, sum the ring rows vertically, then normalize into the output planes. Horizontal first,
/// as PyTorch does: its float kernels (`_upsample_bilinear2d_aa`'s separable passes, and the
/// generic bilinear kernel, which interpolates each source row along the width before combining
/// rows) resample along the width first and sum each pass's taps in order starting from the
/// first product, and so does this, so the float results are PyTorch's bit for bit (see the
/// module docs for the kernels this holds for).
struct Resampler {
    decode: RowDecode,
    /// First capture column decoded (YUYV: the crop's left edge rounded down to a pixel pair).
    x0: usize,
    /// First capture row of the crop.
    y0: usize,
    /// Pixels decoded per row (the crop width, widened to whole YUYV pairs).
    span: usize,
    /// Index in the decoded row of the crop's last pixel; the horizontal pass reads a copy of
    /// it in the next pixel (the second tap past the last sample of [`linear_taps`]).
    last_px: usize,
    /// Crop height: source rows `in_h` and above (the vertical taps past the last row) read
    /// row `in_h - 1`.
    in_h: usize,
    /// f32 per decoded row (`span * 3` for colour, `span` for grey); `row` and `pix` have room
    /// for one more pixel (the last pixel's copy) and one f32, the padding [`horizontal_rgb`]
    /// reads.
    row_len: usize,
    h: Kernel,
    /// `h`'s weights broadcast to 4 lanes (colour only).
    h4: Vec<[f32; 4]>,
    v: Kernel,
    out_w: usize,
    out_h: usize,
    /// `resize.dtype = "uint8"`: round each resized value to an integer (ties to even, as
    /// `torch.round`) before normalizing.
    round: bool,
    /// `resize.dtype = "uint8-pil"` / `"uint8-avx2"` (bilinear): the fixed-point kernels that
    /// replace `h` and `v`.
    fixed: Option<FixedPoint>,
    /// Per output channel: source lane, scale, offset (`out = lane * scale + offset`).
    norm: Vec<(usize, f32, f32)>,
    /// One decoded source row.
    row: Vec<f32>,
    /// YUYV: `row` in pixel order.
    pix: Vec<f32>,
    /// f32 per horizontally resampled row: `out_w * 4` (colour: R, G, B, unused) or `out_w`.
    hrow_len: usize,
    /// Horizontally resampled rows, `ring_rows` slots of `hrow_len`; source row `r` is in slot
    /// `r % ring_rows`.
    ring: Vec<f32>,
    ring_rows: usize,
    /// One vertically resampled row (`hrow_len`).
    acc: Vec<f32>,
}

/// The two passes of a fixed-point resampling, with their fractional bits.
struct FixedPoint {
    h: Kernel<i32>,
    h_bits: u32,
    v: Kernel<i32>,
    v_bits: u32,
}

impl Resampler {
    /// Runs the resampler compiled for the best instruction set this CPU has. The loops are
    /// written to autovectorize; the default x86-64 target only has SSE2, so the same code is also
    /// compiled with AVX2 and FMA enabled and chosen at run time when the CPU has them (results
    /// are bit-identical: Rust never fuses or reorders float operations on its own).
    fn run(&mut self, src: Source<'_>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: `run_avx2` only needs the CPU features checked just above.
            #[allow(unsafe_code)]
            unsafe {
                self.run_avx2(src, out)
            };
            return;
        }
        self.run_portable(src, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn run_avx2(&mut self, src: Source<'_>, out: &mut [f32]) {
        self.run_portable(src, out);
    }

    #[inline(always)]
    fn run_portable(&mut self, src: Source<'_>, out: &mut [f32]) {
        let colour = self.decode.colour();
        let plane = self.out_w * self.out_h;
        let hl = self.hrow_len;
        let mut next = 0;
        for oy in 0..self.out_h {
            let (s, taps) = match &self.fixed {
                Some(f) => (f.v.start[oy], f.v.len[oy]),
                None => (self.v.start[oy], self.v.len[oy]),
            };
            let end = s + taps;
            for iy in next.max(s)..end.min(self.in_h) {
                let at = (self.y0 + iy) * src.row_bytes + self.x0 * src.pixel_bytes;
                let bytes = &src.bytes[at..at + self.span * src.pixel_bytes];
                let dst = &mut self.row[..self.row_len];
                match self.decode {
                    RowDecode::YuyvRgb => yuyv_rgb_row(bytes, dst),
                    RowDecode::YuyvLuma => yuyv_luma_row(bytes, dst),
                    RowDecode::Nv12Rgb | RowDecode::Nv12Luma => {
                        let at = src.uv_offset + (self.y0 + iy) / 2 * src.row_bytes + self.x0;
                        let uv = &src.bytes[at..at + self.span];
                        if self.decode == RowDecode::Nv12Rgb {
                            nv12_rgb_row(bytes, uv, dst);
                        } else {
                            nv12_luma_row(bytes, uv, dst);
                        }
                    }
                    RowDecode::RgbRgb | RowDecode::Grey => bytes_row(bytes, dst),
                    RowDecode::RgbLuma => rgb_luma_row(bytes, dst),
                }
                let hin: &mut [f32] =
                    if matches!(self.decode, RowDecode::YuyvRgb | RowDecode::Nv12Rgb) {
                        yuyv_planes_to_rgb(&self.row[..self.row_len], &mut self.pix);
                        &mut self.pix
                    } else {
                        &mut self.row
                    };
                let n = if colour { 3 } else { 1 };
                hin.copy_within(
                    self.last_px * n..(self.last_px + 1) * n,
                    (self.last_px + 1) * n,
                );
                let slot = &mut self.ring[iy % self.ring_rows * hl..][..hl];
                match &self.fixed {
                    None => horizontal(hin, &self.h, &self.h4, colour, slot),
                    Some(f) => horizontal_int(hin, &f.h, f.h_bits, colour, slot),
                }
            }
            next = next.max(end);

            let ring = &self.ring;
            let rows = |k: usize| &ring[(s + k).min(self.in_h - 1) % self.ring_rows * hl..][..hl];
            let vrow: &[f32] = match &self.fixed {
                Some(f) => {
                    vertical_int(&mut self.acc, f.v.taps(oy).1, f.v_bits, rows);
                    &self.acc
                }
                // A single unit tap (nearest, or an unchanged height) reads the ring row.
                None => match self.v.taps(oy).1 {
                    [w] if *w == 1.0 => rows(0),
                    w => {
                        vertical(&mut self.acc, w, rows);
                        &self.acc
                    }
                },
            };
            for (c, &(lane, scale, offset)) in self.norm.iter().enumerate() {
                let dst = &mut out[c * plane + oy * self.out_w..][..self.out_w];
                if colour {
                    let src = vrow.chunks_exact(4).map(|px| px[lane]);
                    normalize(src, dst, scale, offset, self.round);
                } else {
                    normalize(vrow.iter().copied(), dst, scale, offset, self.round);
                }
            }
        }
    }
}

/// `dst = level(x) * scale + offset`, where `level` is the identity or, with `round`,
/// torchvision's uint8 resize: the float result `round_()`ed (ties to even) and cast to uint8.
/// Bilinear and nearest weights are non-negative and sum to 1, so the result stays in [0, 255];
/// the clamp only absorbs f32 rounding.
#[inline(always)]
fn normalize(
    src: impl Iterator<Item = f32>,
    dst: &mut [f32],
    scale: f32,
    offset: f32,
    round: bool,
) {
    if round {
        for (o, x) in dst.iter_mut().zip(src) {
            *o = x.round_ties_even().clamp(0.0, 255.0) * scale + offset;
        }
    } else {
        for (o, x) in dst.iter_mut().zip(src) {
            *o = x * scale + offset;
        }
    }
}

/// Turns one camera's frames into its model input, as the bundle's [`CameraSpec`] says.
pub struct Preprocessor {
    camera: String,
    width: u32,
    height: u32,
    format: PixelFormat,
    channels: usize,
    /// RGB buffer the MJPEG decoder writes into (empty for raw formats).
    jpeg: Vec<u8>,
    resampler: Resampler,
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = &self.resampler;
        f.debug_struct("Preprocessor")
            .field("camera", &self.camera)
            .field("capture", &(self.width, self.height, self.format))
            .field("decode", &r.decode)
            .field("output", &(self.channels, r.out_h, r.out_w))
            .field("taps", &(r.v.stride, r.h.stride))
            .finish()
    }
}

impl Preprocessor {
    /// Validates the spec, precomputes the resampling weights and allocates every buffer.
    pub fn new(cam: &CameraSpec) -> Result<Self, PreprocessError> {
        let spec_err = |reason: String| PreprocessError::Spec {
            camera: cam.name.clone(),
            reason,
        };
        let cap = cam.capture;
        let p = &cam.preprocess;
        if cap.width == 0 || cap.height == 0 || cap.width > MAX_SIDE || cap.height > MAX_SIDE {
            return Err(spec_err(format!(
                "capture size {}x{} out of range (1..={MAX_SIDE})",
                cap.width, cap.height
            )));
        }
        if cap.format == PixelFormat::Yuyv && !cap.width.is_multiple_of(2) {
            return Err(spec_err(format!(
                "YUYV needs an even capture width, not {}",
                cap.width
            )));
        }
        if cap.format == PixelFormat::Nv12
            && !(cap.width.is_multiple_of(2) && cap.height.is_multiple_of(2))
        {
            return Err(spec_err(format!(
                "NV12 needs an even capture width and height, not {}x{}",
                cap.width, cap.height
            )));
        }
        let crop = cam.crop_or_full();
        if !crop.fits_in(cap.width, cap.height) {
            return Err(spec_err(format!(
                "crop {}x{} at ({}, {}) does not fit in the {}x{} capture",
                crop.width, crop.height, crop.x, crop.y, cap.width, cap.height
            )));
        }
        if let Some(problem) = p.resize.dtype_problem() {
            return Err(spec_err(problem));
        }
        let ResizeSpec {
            width: rw,
            height: rh,
            interpolation,
            antialias,
            dtype,
        } = p.resize;
        if rw == 0 || rh == 0 || rw > MAX_SIDE || rh > MAX_SIDE {
            return Err(spec_err(format!(
                "resize {rw}x{rh} out of range (1..={MAX_SIDE})"
            )));
        }
        let Layout::Nchw = p.layout;
        let channels = p.color.channels();
        if p.mean.len() != channels || p.std.len() != channels {
            return Err(spec_err(format!(
                "color `{:?}` has {channels} channel(s) but mean has {} and std {} values",
                p.color,
                p.mean.len(),
                p.std.len()
            )));
        }
        if let Some(k) = (0..channels)
            .find(|&k| !(p.mean[k].is_finite() && p.std[k].is_finite() && p.std[k] > 0.0))
        {
            return Err(spec_err(format!(
                "channel {k}: mean {} / std {} (std must be finite and > 0)",
                p.mean[k], p.std[k]
            )));
        }

        let decode = match (cap.format, p.color) {
            (PixelFormat::Yuyv, ColorOrder::Grey) => RowDecode::YuyvLuma,
            (PixelFormat::Yuyv, _) => RowDecode::YuyvRgb,
            (PixelFormat::Nv12, ColorOrder::Grey) => RowDecode::Nv12Luma,
            (PixelFormat::Nv12, _) => RowDecode::Nv12Rgb,
            (PixelFormat::Rgb24 | PixelFormat::Mjpeg, ColorOrder::Grey) => RowDecode::RgbLuma,
            (PixelFormat::Rgb24 | PixelFormat::Mjpeg, _) => RowDecode::RgbRgb,
            (PixelFormat::Grey, _) => RowDecode::Grey,
        };
        let colour = decode.colour();
        let (cx, cw) = (crop.x as usize, crop.width as usize);
        // YUYV rows are decoded from the pixel pair holding the crop's left edge; the
        // horizontal taps are shifted by that lead.
        let (x0, lead, span) = if matches!(cap.format, PixelFormat::Yuyv | PixelFormat::Nv12) {
            let x0 = cx & !1;
            (x0, cx - x0, ((cx + cw + 1) & !1) - x0)
        } else {
            (cx, 0, cw)
        };
        let (out_w, out_h) = (rw as usize, rh as usize);
        let mut h = Kernel::new(cw, out_w, interpolation, antialias).padded(cw + 1);
        for s in &mut h.start {
            *s += lead;
        }
        let v = Kernel::new(crop.height as usize, out_h, interpolation, antialias);
        let fixed = (interpolation == Interpolation::Bilinear
            && matches!(dtype, ResizeDtype::Uint8Pil | ResizeDtype::Uint8Avx2))
        .then(|| {
            let (mut h, h_bits) = fixed_point_kernel(cw, out_w, antialias, dtype);
            h = h.padded(cw + 1);
            for s in &mut h.start {
                *s += lead;
            }
            let (v, v_bits) = fixed_point_kernel(crop.height as usize, out_h, antialias, dtype);
            FixedPoint {
                h,
                h_bits,
                v,
                v_bits,
            }
        });
        let ring_rows = fixed.as_ref().map_or(v.stride, |f| f.v.stride);
        let row_len = span * if colour { 3 } else { 1 };
        let hrow_len = out_w * if colour { 4 } else { 1 };

        let norm = (0..channels)
            .map(|c| {
                let lane = match (colour, p.color) {
                    (false, _) => 0,
                    (_, ColorOrder::Bgr) => 2 - c,
                    _ => c,
                };
                let (mean, std) = (f64::from(p.mean[c]), f64::from(p.std[c]));
                (lane, (1.0 / (255.0 * std)) as f32, (-mean / std) as f32)
            })
            .collect();
        let jpeg = if cap.format == PixelFormat::Mjpeg {
            vec![0; cap.width as usize * cap.height as usize * 3]
        } else {
            Vec::new()
        };
        Ok(Preprocessor {
            camera: cam.name.clone(),
            width: cap.width,
            height: cap.height,
            format: cap.format,
            channels,
            jpeg,
            resampler: Resampler {
                decode,
                x0,
                y0: crop.y as usize,
                span,
                last_px: lead + cw - 1,
                in_h: crop.height as usize,
                row_len,
                h4: if colour {
                    h.weights.iter().map(|&w| [w; 4]).collect()
                } else {
                    Vec::new()
                },
                h,
                v,
                out_w,
                out_h,
                round: dtype == ResizeDtype::Uint8,
                fixed,
                norm,
                row: vec![0.0; row_len + 4],
                pix: if matches!(decode, RowDecode::YuyvRgb | RowDecode::Nv12Rgb) {
                    vec![0.0; row_len + 4]
                } else {
                    Vec::new()
                },
                hrow_len,
                ring: vec![0.0; ring_rows * hrow_len],
                ring_rows,
                acc: vec![0.0; hrow_len],
            },
        })
    }

    /// Number of f32 written: channels * resize.height * resize.width (CHW).
    pub fn output_len(&self) -> usize {
        self.channels * self.resampler.out_w * self.resampler.out_h
    }

    /// The camera this preprocessor is for.
    pub fn camera(&self) -> &str {
        &self.camera
    }

    /// Decode + crop + resize + color order + `(x / 255 - mean) / std`, CHW f32 into `out`.
    ///
    /// Refuses a frame whose width, height or format differs from the bundle's capture spec, or
    /// whose byte length is wrong; never resizes to fit. Allocates nothing for raw formats.
    pub fn run(
        &mut self,
        data: &[u8],
        width: u32,
        height: u32,
        format: PixelFormat,
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        if (width, height, format) != (self.width, self.height, self.format) {
            return Err(PreprocessError::FrameMismatch {
                camera: self.camera.clone(),
                width: self.width,
                height: self.height,
                format: self.format,
                got_width: width,
                got_height: height,
                got_format: format,
            });
        }
        if out.len() != self.output_len() {
            return Err(PreprocessError::OutputLength {
                camera: self.camera.clone(),
                channels: self.channels,
                height: self.resampler.out_h,
                width: self.resampler.out_w,
                expected: self.output_len(),
                got: out.len(),
            });
        }
        let (w, h) = (width as usize, height as usize);
        let pixel_bytes = match format {
            PixelFormat::Yuyv => 2,
            PixelFormat::Rgb24 | PixelFormat::Mjpeg => 3,
            PixelFormat::Grey | PixelFormat::Nv12 => 1,
        };
        let bytes = if format == PixelFormat::Mjpeg {
            self.decode_jpeg(data)?;
            &self.jpeg[..]
        } else {
            let expected = if format == PixelFormat::Nv12 {
                w * h * 3 / 2
            } else {
                w * h * pixel_bytes
            };
            if data.len() != expected {
                return Err(PreprocessError::FrameLength {
                    camera: self.camera.clone(),
                    width,
                    height,
                    format,
                    expected,
                    got: data.len(),
                });
            }
            data
        };
        let src = Source {
            bytes,
            row_bytes: w * pixel_bytes,
            pixel_bytes,
            uv_offset: w * h,
        };
        self.resampler.run(src, out);
        Ok(())
    }

    /// Decodes an MJPEG frame into `self.jpeg` (RGB, capture size).
    fn decode_jpeg(&mut self, data: &[u8]) -> Result<(), PreprocessError> {
        let jpeg_err = |reason: String| PreprocessError::Jpeg {
            camera: self.camera.clone(),
            got: data.len(),
            reason,
        };
        // zune-jpeg 0.4 fills a truncated entropy-coded segment with zeros and returns Ok even
        // in strict mode; a frame cut short (a lost USB packet) lacks the end-of-image marker.
        // Some UVC cameras pad frames with zero bytes after it.
        let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if !data[..end].ends_with(&[0xff, 0xd9]) {
            return Err(jpeg_err(
                "truncated: no end-of-image marker (FF D9) at the end".into(),
            ));
        }
        let opts = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_max_width(self.width as usize)
            .set_max_height(self.height as usize)
            .set_strict_mode(true);
        let buf = &mut self.jpeg;
        let (width, height) = (self.width as usize, self.height as usize);
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut dec = JpegDecoder::new_with_options(data, opts);
            dec.decode_headers()?;
            match dec.dimensions() {
                Some(dims) if dims == (width, height) => dec.decode_into(buf).map(|()| None),
                other => Ok(Some(other.unwrap_or((0, 0)))),
            }
        }));
        match decoded {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some((got_width, got_height)))) => Err(PreprocessError::JpegSize {
                camera: self.camera.clone(),
                width: self.width,
                height: self.height,
                got_width,
                got_height,
            }),
            Ok(Err(e)) => Err(jpeg_err(e.to_string())),
            Err(_) => Err(jpeg_err("the decoder panicked".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_models::manifest::{CaptureSpec, CropSpec, PreprocessSpec};

    fn cam(
        (width, height, format): (u32, u32, PixelFormat),
        crop: Option<(u32, u32, u32, u32)>,
        (rw, rh, interpolation, antialias): (u32, u32, Interpolation, bool),
        color: ColorOrder,
    ) -> CameraSpec {
        let n = color.channels();
        CameraSpec {
            name: "top".into(),
            onnx_input: "image.top".into(),
            capture: CaptureSpec {
                width,
                height,
                format,
                fps: 30,
            },
            preprocess: PreprocessSpec {
                crop: crop.map(|(x, y, width, height)| CropSpec {
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
                color,
                // Identity normalization: outputs are x / 255.
                mean: vec![0.0; n],
                std: vec![1.0; n],
                layout: Layout::Nchw,
            },
            max_age_ms: 200,
            viewpoint: None,
        }
    }

    /// NV12 is YUYV with chroma shared by row pairs too: a YUYV frame whose row pairs share
    /// chroma and its NV12 repacking preprocess to the same bits, with odd crops included.
    #[test]
    fn nv12_matches_yuyv_with_shared_chroma() {
        let (w, h) = (32usize, 24usize);
        let byte = |i: usize| (i * 7919 % 251) as u8;
        let mut yuyv = vec![0u8; w * h * 2];
        let mut nv12 = vec![0u8; w * h * 3 / 2];
        for y in 0..h {
            for x in (0..w).step_by(2) {
                let (y0, y1) = (byte(y * w + x), byte(y * w + x + 1 + 1000));
                let (u, v) = (byte((y / 2) * w + x + 5000), byte((y / 2) * w + x + 9000));
                yuyv[(y * w + x) * 2..][..4].copy_from_slice(&[y0, u, y1, v]);
                nv12[y * w + x] = y0;
                nv12[y * w + x + 1] = y1;
                nv12[w * h + (y / 2) * w + x..][..2].copy_from_slice(&[u, v]);
            }
        }
        for (crop, color) in [
            (None, ColorOrder::Rgb),
            (Some((3, 5, 21, 15)), ColorOrder::Bgr),
            (Some((1, 1, 30, 22)), ColorOrder::Grey),
        ] {
            let run_fmt = |fmt: PixelFormat, data: &[u8]| {
                let c = cam(
                    (w as u32, h as u32, fmt),
                    crop,
                    (11, 9, Interpolation::Bilinear, true),
                    color,
                );
                let mut p = Preprocessor::new(&c).unwrap();
                let mut out = vec![0f32; p.output_len()];
                p.run(data, w as u32, h as u32, fmt, &mut out).unwrap();
                out
            };
            let a = run_fmt(PixelFormat::Yuyv, &yuyv);
            let b = run_fmt(PixelFormat::Nv12, &nv12);
            assert!(
                a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{crop:?} {color:?}"
            );
        }
        // Odd sizes and wrong lengths are refused, naming the camera.
        let c = cam(
            (32, 23, PixelFormat::Nv12),
            None,
            (8, 8, Interpolation::Bilinear, true),
            ColorOrder::Rgb,
        );
        let e = Preprocessor::new(&c).unwrap_err().to_string();
        assert!(
            e.contains("NV12 needs an even capture width and height"),
            "{e}"
        );
        let c = cam(
            (32, 24, PixelFormat::Nv12),
            None,
            (8, 8, Interpolation::Bilinear, true),
            ColorOrder::Rgb,
        );
        let mut p = Preprocessor::new(&c).unwrap();
        let mut out = vec![0f32; p.output_len()];
        let e = p
            .run(&nv12[..w * h], 32, 24, PixelFormat::Nv12, &mut out)
            .unwrap_err();
        assert!(e.to_string().contains("top"), "{e}");
    }

    /// The run-time dispatch (AVX2 on CPUs that have it) and the portable build of the same
    /// loops give bit-identical outputs, for every decode path.
    #[test]
    fn dispatched_and_portable_paths_agree_bit_for_bit() {
        let cases = [
            (PixelFormat::Yuyv, ColorOrder::Rgb, Interpolation::Bilinear),
            (PixelFormat::Yuyv, ColorOrder::Grey, Interpolation::Bilinear),
            (PixelFormat::Rgb24, ColorOrder::Bgr, Interpolation::Bilinear),
            (PixelFormat::Rgb24, ColorOrder::Grey, Interpolation::Nearest),
            (PixelFormat::Grey, ColorOrder::Grey, Interpolation::Bilinear),
        ];
        for (format, color, interp) in cases {
            let c = cam(
                (64, 48, format),
                Some((2, 3, 60, 40)),
                (23, 17, interp, true),
                color,
            );
            let bpp = match format {
                PixelFormat::Yuyv => 2,
                PixelFormat::Grey => 1,
                _ => 3,
            };
            let data: Vec<u8> = (0..64 * 48 * bpp).map(|i| (i * 7919 % 251) as u8).collect();
            let mut p = Preprocessor::new(&c).unwrap();
            let mut a = vec![0f32; p.output_len()];
            let mut b = vec![0f32; p.output_len()];
            p.run(&data, 64, 48, format, &mut a).unwrap();
            let src = Source {
                bytes: &data,
                row_bytes: 64 * bpp,
                pixel_bytes: bpp,
                uv_offset: 0,
            };
            p.resampler.run_portable(src, &mut b);
            let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{format:?} -> {color:?} {interp:?}");
        }
    }

    /// Runs one frame, returns the output scaled back to 0..255.
    fn run(c: &CameraSpec, data: &[u8]) -> Vec<f32> {
        let mut p = Preprocessor::new(c).expect("valid spec");
        let mut out = vec![f32::NAN; p.output_len()];
        let cap = c.capture;
        p.run(data, cap.width, cap.height, cap.format, &mut out)
            .expect("frame accepted");
        out.iter().map(|v| v * 255.0).collect()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tol, "[{i}]: {g} vs {w}\n{got:?}\n{want:?}");
        }
    }

    const BILINEAR: Interpolation = Interpolation::Bilinear;

    /// The exact definition: coefficients in thousandths, rounded half up, clamped.
    fn yuv_reference(y: i32, u: i32, v: i32) -> [f32; 3] {
        let c = 1164 * (y - 16);
        let (u, v) = (u - 128, v - 128);
        let f = |n: i32| (n + 500).div_euclid(1000).clamp(0, 255) as f32;
        [f(c + 1596 * v), f(c - 392 * u - 813 * v), f(c + 2017 * u)]
    }

    fn yuv(y: u8, u: u8, v: u8) -> [f32; 3] {
        let mut planes = [0.0; 6];
        yuyv_rgb_row(&[y, u, y, v], &mut planes);
        assert_eq!(planes[..3], planes[3..], "both pixels of a pair");
        [planes[0], planes[1], planes[2]]
    }

    #[test]
    fn yuyv_known_pixels() {
        assert_eq!(yuv(16, 128, 128), [0.0, 0.0, 0.0], "video black");
        assert_eq!(yuv(235, 128, 128), [255.0, 255.0, 255.0], "video white");
        assert_eq!(yuv(0, 128, 128), [0.0, 0.0, 0.0], "below black clamps");
        assert_eq!(
            yuv(255, 128, 128),
            [255.0, 255.0, 255.0],
            "above white clamps"
        );
        // 1.164 * 110 = 128.04: mid grey.
        assert_eq!(yuv(126, 128, 128), [128.0, 128.0, 128.0]);
        // BT.601 saturated red (Y, Cb, Cr) = (81, 90, 240): R = 254.41, G = -0.5 (exactly half:
        // rounds up to 0), B = -0.986.
        assert_eq!(yuv(81, 90, 240), [254.0, 0.0, 0.0]);
        // Saturated blue (41, 240, 110): R = 0.232, G = 0.248, B = 254.964... -> 255.
        assert_eq!(yuv(41, 240, 110), [0.0, 0.0, 255.0]);
    }

    /// The f32 evaluation equals the exact integer definition for every (Y, U, V).
    #[test]
    fn yuyv_conversion_is_exact_for_every_input() {
        for y in 0..=255u8 {
            let mut src = Vec::with_capacity(4 * 256);
            for u in 0..=255u8 {
                src.clear();
                for v in 0..=255u8 {
                    src.extend_from_slice(&[y, u, y, v]);
                }
                let mut planes = vec![0.0; 6 * 256];
                yuyv_rgb_row(&src, &mut planes);
                for v in 0..256 {
                    let want = yuv_reference(i32::from(y), i32::from(u), v as i32);
                    let got = [planes[v], planes[256 + v], planes[512 + v]];
                    assert_eq!(got, want, "Y={y} U={u} V={v}");
                }
            }
        }
    }

    #[test]
    fn pil_luma_matches_pil() {
        // Values from PIL 13: Image.new("RGB", (1, 1), c).convert("L").getpixel((0, 0)).
        assert_eq!(pil_luma(255, 0, 0), 76.0);
        assert_eq!(pil_luma(0, 255, 0), 150.0);
        assert_eq!(pil_luma(0, 0, 255), 29.0);
        assert_eq!(pil_luma(255, 255, 255), 255.0);
        assert_eq!(pil_luma(0, 0, 0), 0.0);
    }

    fn taps(k: &Kernel) -> Vec<(usize, Vec<f32>)> {
        (0..k.start.len())
            .map(|i| {
                let (s, w) = k.taps(i);
                (s, w.to_vec())
            })
            .collect()
    }

    /// 4 -> 2 antialiased is the triangle of half-width 2 (PyTorch/PIL), not a 2x2 box:
    /// weights (1/8, 3/8, 3/8, 1/8) around the output centre, cut at the border and renormalized.
    #[test]
    fn antialiased_2x_downscale_weights() {
        let k = Kernel::new(4, 2, BILINEAR, true);
        let t = taps(&k);
        assert_eq!(t[0].0, 0);
        assert_close(&t[0].1, &[3.0 / 7.0, 3.0 / 7.0, 1.0 / 7.0], 1e-7);
        assert_eq!(t[1].0, 1);
        assert_close(&t[1].1, &[1.0 / 7.0, 3.0 / 7.0, 3.0 / 7.0], 1e-7);
        // 4 -> 1: the whole row, triangle of half-width 4 centred at 2.
        let t = taps(&Kernel::new(4, 1, BILINEAR, true));
        assert_eq!(t[0].0, 0);
        let w = [5.0 / 24.0, 7.0 / 24.0, 7.0 / 24.0, 5.0 / 24.0];
        assert_close(&t[0].1, &w, 1e-7);
    }

    /// Without antialias an exact 2x downscale averages pixel pairs.
    #[test]
    fn plain_bilinear_2x_downscale_averages_pairs() {
        let t = taps(&Kernel::new(4, 2, BILINEAR, false));
        assert_eq!(t, vec![(0, vec![0.5, 0.5]), (2, vec![0.5, 0.5])]);
    }

    /// Upscaling: antialias changes nothing (the kernel is not widened), both are the plain
    /// align_corners=False bilinear with the source index clamped at 0.
    #[test]
    fn upscale_is_plain_bilinear_with_or_without_antialias() {
        let t = taps(&Kernel::new(2, 4, BILINEAR, false));
        let want = vec![
            (0, vec![1.0]),
            (0, vec![0.75, 0.25]),
            (0, vec![0.25, 0.75]),
            // Index 2 is the copy of sample 1 (PyTorch reads the last sample twice).
            (1, vec![0.75, 0.25]),
        ];
        assert_eq!(t, want);
        // The same taps with those copies folded back onto the last sample.
        let folded = |k: &Kernel, n: usize| -> Vec<(usize, Vec<f32>)> {
            taps(k)
                .into_iter()
                .map(|(s, w)| {
                    let keep = w.len().min(n - s);
                    let extra: f32 = w[keep..].iter().sum();
                    let mut w = w[..keep].to_vec();
                    *w.last_mut().expect("a tap") += extra;
                    (s, w)
                })
                .collect()
        };
        for (n, m) in [
            (2, 4),
            (3, 7),
            (5, 6),
            (7, 20),
            (1, 5),
            (64, 224),
            (100, 101),
        ] {
            let a = taps(&Kernel::new(n, m, BILINEAR, true));
            let b = folded(&Kernel::new(n, m, BILINEAR, false), n);
            for (i, ((sa, wa), (sb, wb))) in a.iter().zip(&b).enumerate() {
                assert_eq!(sa, sb, "{n} -> {m}, output {i}");
                assert_close(wa, wb, 1e-6);
            }
        }
    }

    #[test]
    fn nearest_is_floor_of_scaled_index() {
        let idx = |n, m| -> Vec<usize> {
            taps(&Kernel::new(n, m, Interpolation::Nearest, true))
                .into_iter()
                .map(|(s, w)| {
                    assert_eq!(w, vec![1.0]);
                    s
                })
                .collect()
        };
        assert_eq!(idx(5, 3), vec![0, 1, 3]);
        assert_eq!(idx(2, 4), vec![0, 0, 1, 1]);
        assert_eq!(idx(3, 3), vec![0, 1, 2]);
        assert_eq!(idx(3, 5), vec![0, 0, 1, 1, 2]);
    }

    #[test]
    fn weights_sum_to_one_and_stay_in_range() {
        for n in [1, 2, 3, 7, 64, 480, 640] {
            for m in [1, 2, 5, 96, 224, 333] {
                for aa in [true, false] {
                    let k = Kernel::new(n, m, BILINEAR, aa);
                    for (i, (s, w)) in taps(&k).into_iter().enumerate() {
                        let sum: f32 = w.iter().sum();
                        assert!((sum - 1.0).abs() < 1e-5, "{n}->{m} aa={aa} [{i}]: {w:?}");
                        // Without antialias, the tap at `n` is the last sample's copy.
                        assert!(s + w.len() <= n + usize::from(!aa) && !w.is_empty());
                    }
                    let p = k.padded(n + 1);
                    assert!(p.start.iter().all(|&s| s + p.stride <= n + 1));
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let px = [10u8, 200, 77];
        let data: Vec<u8> = px.iter().copied().cycle().take(37 * 23 * 3).collect();
        for (aa, interp) in [
            (true, BILINEAR),
            (false, BILINEAR),
            (true, Interpolation::Nearest),
        ] {
            for (rw, rh) in [(11, 5), (64, 64), (37, 23), (1, 1)] {
                let c = cam(
                    (37, 23, PixelFormat::Rgb24),
                    Some((3, 2, 30, 20)),
                    (rw, rh, interp, aa),
                    ColorOrder::Rgb,
                );
                let out = run(&c, &data);
                let n = (rw * rh) as usize;
                for (ch, &v) in px.iter().enumerate() {
                    assert_close(&out[ch * n..(ch + 1) * n], &vec![f32::from(v); n], 1e-3);
                }
            }
        }
    }

    #[test]
    fn one_pixel_wide_and_high_frames() {
        // A 1x4 column -> 3x2: every output row is its source row's value spread horizontally.
        let data = [0u8, 40, 80, 120];
        let c = cam(
            (1, 4, PixelFormat::Grey),
            None,
            (3, 2, BILINEAR, true),
            ColorOrder::Grey,
        );
        // Rows: 4 -> 2 antialiased = (3/7, 3/7, 1/7) and (1/7, 3/7, 3/7).
        let r0 = (0.0 * 3.0 + 40.0 * 3.0 + 80.0) / 7.0;
        let r1 = (40.0 + 80.0 * 3.0 + 120.0 * 3.0) / 7.0;
        assert_close(&run(&c, &data), &[r0, r0, r0, r1, r1, r1], 1e-3);
        // A 4x1 row -> 1x1: the whole-row triangle.
        let c = cam(
            (4, 1, PixelFormat::Grey),
            None,
            (1, 1, BILINEAR, true),
            ColorOrder::Grey,
        );
        let want = (0.0 * 5.0 + 40.0 * 7.0 + 80.0 * 7.0 + 120.0 * 5.0) / 24.0;
        assert_close(&run(&c, &data), &[want], 1e-3);
    }

    #[test]
    fn bilinear_2x_downscale_of_a_grey_image() {
        // 4x4, values 16 * y + 4 * x.
        let data: Vec<u8> = (0..16)
            .map(|i| (16 * (i / 4) + 4 * (i % 4)) as u8)
            .collect();
        let c = |aa| {
            cam(
                (4, 4, PixelFormat::Grey),
                None,
                (2, 2, BILINEAR, aa),
                ColorOrder::Grey,
            )
        };
        // Plain bilinear: averages of 2x2 blocks.
        let box2 = |x: usize, y: usize| {
            let v = |x: usize, y: usize| f32::from(data[4 * y + x]);
            (v(x, y) + v(x + 1, y) + v(x, y + 1) + v(x + 1, y + 1)) / 4.0
        };
        let want = [box2(0, 0), box2(2, 0), box2(0, 2), box2(2, 2)];
        assert_close(&run(&c(false), &data), &want, 1e-3);
        // Antialiased: separable (3/7, 3/7, 1/7) / (1/7, 3/7, 3/7); on a linear ramp the
        // first output sits at 5/7 instead of 1/2 of a pixel step, and so on.
        let lo = (0.0 * 3.0 + 1.0 * 3.0 + 2.0) / 7.0;
        let hi = (1.0 + 2.0 * 3.0 + 3.0 * 3.0) / 7.0;
        let want = [
            16.0 * lo + 4.0 * lo,
            16.0 * lo + 4.0 * hi,
            16.0 * hi + 4.0 * lo,
            16.0 * hi + 4.0 * hi,
        ];
        assert_close(&run(&c(true), &data), &want, 1e-3);
    }

    #[test]
    fn bgr_swaps_red_and_blue() {
        let data = [1u8, 2, 3, 4, 5, 6];
        let size = (2, 1, PixelFormat::Rgb24);
        let same = (2, 1, BILINEAR, true);
        let rgb = run(&cam(size, None, same, ColorOrder::Rgb), &data);
        assert_close(&rgb, &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0], 1e-3);
        let bgr = run(&cam(size, None, same, ColorOrder::Bgr), &data);
        assert_close(&bgr, &[3.0, 6.0, 2.0, 5.0, 1.0, 4.0], 1e-3);
    }

    #[test]
    fn grey_frames_replicate_and_colour_frames_become_pil_luma() {
        let same = (2, 1, BILINEAR, true);
        let out = run(
            &cam((2, 1, PixelFormat::Grey), None, same, ColorOrder::Rgb),
            &[9, 250],
        );
        assert_close(&out, &[9.0, 250.0, 9.0, 250.0, 9.0, 250.0], 1e-3);
        let out = run(
            &cam((2, 1, PixelFormat::Rgb24), None, same, ColorOrder::Grey),
            &[255, 0, 0, 0, 0, 255],
        );
        assert_close(&out, &[76.0, 29.0], 1e-3);
        // YUYV -> RGB -> luma: video white and black.
        let out = run(
            &cam((2, 1, PixelFormat::Yuyv), None, same, ColorOrder::Grey),
            &[235, 128, 16, 128],
        );
        assert_close(&out, &[255.0, 0.0], 1e-3);
    }

    #[test]
    fn crop_offsets_select_the_right_pixels() {
        // Grey 6x4, value 10 * y + x; crop 3x2 at (2, 1), no resize.
        let data: Vec<u8> = (0..24).map(|i| (10 * (i / 6) + i % 6) as u8).collect();
        let c = cam(
            (6, 4, PixelFormat::Grey),
            Some((2, 1, 3, 2)),
            (3, 2, BILINEAR, true),
            ColorOrder::Grey,
        );
        assert_close(&run(&c, &data), &[12.0, 13.0, 14.0, 22.0, 23.0, 24.0], 1e-3);
        // YUYV with an odd left edge: pixels 1 and 2 of a 4-wide row, neutral chroma, luma
        // levels 0, 255, 128, 0 (Y = 16, 235, 126, 16).
        let row = [16u8, 128, 235, 128, 126, 128, 16, 128];
        let c = cam(
            (4, 1, PixelFormat::Yuyv),
            Some((1, 0, 2, 1)),
            (2, 1, BILINEAR, true),
            ColorOrder::Rgb,
        );
        assert_close(
            &run(&c, &row),
            &[255.0, 128.0, 255.0, 128.0, 255.0, 128.0],
            1e-3,
        );
    }

    #[test]
    fn mean_and_std_are_applied_per_channel() {
        let mut c = cam(
            (1, 1, PixelFormat::Rgb24),
            None,
            (1, 1, BILINEAR, true),
            ColorOrder::Rgb,
        );
        c.preprocess.mean = vec![0.5, 0.0, 1.0];
        c.preprocess.std = vec![0.25, 2.0, 0.5];
        let mut p = Preprocessor::new(&c).expect("valid spec");
        let mut out = [0.0; 3];
        p.run(&[255, 51, 0], 1, 1, PixelFormat::Rgb24, &mut out)
            .expect("frame accepted");
        assert_close(&out, &[2.0, 0.1, -2.0], 1e-6);
    }

    #[test]
    fn invalid_specs_are_refused_with_the_camera_name() {
        let ok = cam(
            (8, 8, PixelFormat::Yuyv),
            None,
            (4, 4, BILINEAR, true),
            ColorOrder::Rgb,
        );
        let mut bad = vec![];
        let mut c = ok.clone();
        c.capture.width = 7;
        bad.push((c, "even capture width"));
        let mut c = ok.clone();
        c.preprocess.crop = Some(CropSpec {
            x: 4,
            y: 0,
            width: 5,
            height: 8,
        });
        bad.push((c, "does not fit"));
        let mut c = ok.clone();
        c.preprocess.resize.width = 0;
        bad.push((c, "resize 0x4"));
        let mut c = ok.clone();
        c.preprocess.std[1] = 0.0;
        bad.push((c, "channel 1"));
        let mut c = ok.clone();
        c.preprocess.mean.pop();
        bad.push((c, "mean has 2"));
        for (c, what) in bad {
            let e = Preprocessor::new(&c).expect_err(what).to_string();
            assert!(e.contains("camera `top`") && e.contains(what), "{e}");
        }
        assert!(Preprocessor::new(&ok).is_ok());
    }

    /// `uint8-pil` is Pillow's antialiased BILINEAR: nearest or no antialias is refused, naming
    /// the field and what to set; `uint8-avx2` takes both.
    #[test]
    fn uint8_pil_needs_bilinear_with_antialias() {
        let spec = |interp, aa, dtype| {
            let mut c = cam(
                (64, 48, PixelFormat::Rgb24),
                None,
                (30, 20, interp, aa),
                ColorOrder::Rgb,
            );
            c.preprocess.resize.dtype = dtype;
            c
        };
        let pil = ResizeDtype::Uint8Pil;
        for (interp, aa, what) in [
            (Interpolation::Nearest, true, "interpolation = \"bilinear\""),
            (BILINEAR, false, "needs antialias = true"),
        ] {
            let e = Preprocessor::new(&spec(interp, aa, pil))
                .expect_err(what)
                .to_string();
            assert!(e.contains("camera `top`") && e.contains(what), "{e}");
        }
        assert!(Preprocessor::new(&spec(BILINEAR, true, pil)).is_ok());
        for (interp, aa) in [(BILINEAR, false), (Interpolation::Nearest, true)] {
            assert!(Preprocessor::new(&spec(interp, aa, ResizeDtype::Uint8Avx2)).is_ok());
        }
    }
}
