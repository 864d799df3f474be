//! The bundle manifest (`policy.toml`), format version 1.
//!
//! The manifest is the contract between training and the robot: everything the board needs to run a
//! policy exactly as it was trained (which network, how frames become tensors, how state and actions
//! are (un)normalized, what the robot may physically do) lives here, next to the model files, so
//! nothing is carried in a notebook of constants. Parsing is strict (`deny_unknown_fields`): a typo
//! in a field name is an error, never a silently ignored setting.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The only manifest format version this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;

/// Name of the manifest file inside a bundle directory.
pub const MANIFEST_FILE: &str = "policy.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version; must equal [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Short policy name, shown in logs and reports.
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub control: ControlSpec,
    /// Model files. A plain policy has one with role `policy`; later kinds (an encoder plus a
    /// denoiser for Diffusion Policy) list several, each with its own role.
    pub models: Vec<ModelFile>,
    pub cameras: Vec<CameraSpec>,
    pub state: StateSpec,
    pub action: ActionSpec,
    #[serde(default)]
    pub can: CanSpec,
    /// The settings of an `encoder` + `denoiser` policy (Diffusion Policy): history, horizon,
    /// scheduler, noise seed and the graphs' tensor names. Present exactly when the models have
    /// those roles; absent for a `policy` bundle (and in every bundle written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion: Option<DiffusionSpec>,
    /// Free-form provenance: training run, dataset, date, export tool, quantization report...
    #[serde(default)]
    pub provenance: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSpec {
    /// Control loop rate in Hz (one command per period); `reflex run --rate` overrides it.
    pub rate_hz: f64,
    /// Rate of the policy's action steps in Hz: the control rate of the data it was trained on
    /// (LeRobot's dataset `fps`). Step `k` of a chunk is the action for `k / chunk_rate_hz`
    /// seconds after the chunk's start, whatever rate the loop runs at: at another loop rate the
    /// planner interpolates linearly between steps, so the robot moves at its trained speed.
    /// Absent = `rate_hz` (the bundle's own rate, not a `--rate` override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_rate_hz: Option<f64>,
    /// For chunk policies: how many steps of each chunk are executed before the next inference
    /// result is taken (ACT calls this the query frequency), counted in chunk steps (at
    /// [`ControlSpec::chunk_rate`]). 1 = re-plan every step. The loop submits an inference
    /// earlier when the plan would otherwise run out before the result arrives (see
    /// `reflex_runtime::control::plan`).
    #[serde(default = "one")]
    pub steps_per_inference: usize,
    /// ACT-style temporal ensembling: weight `exp(-m * i)` for the i-th oldest prediction of the
    /// same time step. Absent = no ensembling (the newest chunk wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporal_ensemble_m: Option<f64>,
    /// Skip the chunk steps that correspond to time already spent (observation age + inference)
    /// when a new chunk arrives.
    #[serde(default = "yes")]
    pub latency_compensation: bool,
    /// Watchdog: no fresh (policy-derived) command for this many periods of `rate_hz` -> stop
    /// command. A time (3 periods at 20 Hz = 150 ms): a loop run at another rate (`--rate`)
    /// counts the same time in its own ticks ([`ControlSpec::watchdog_ticks`]).
    #[serde(default = "default_watchdog")]
    pub watchdog_periods: u32,
}

impl ControlSpec {
    /// The watchdog timeout in seconds: `watchdog_periods / rate_hz`.
    pub fn watchdog_s(&self) -> f64 {
        f64::from(self.watchdog_periods) / self.rate_hz
    }

    /// The watchdog timeout in ticks of a loop running at `loop_rate_hz`: [`Self::watchdog_s`]
    /// rounded up to whole ticks, at least 1, so `--rate` never shortens the time the robot is
    /// allowed without a fresh command (3 periods at 20 Hz: 3 ticks at 20 Hz, 8 at 50 Hz).
    /// A rate that is not finite and positive gives `watchdog_periods` unchanged.
    pub fn watchdog_ticks(&self, loop_rate_hz: f64) -> u64 {
        let ticks = self.watchdog_s() * loop_rate_hz;
        if ticks.is_finite() && ticks > 0.0 {
            ((ticks - 1e-9).ceil() as u64).max(1)
        } else {
            u64::from(self.watchdog_periods)
        }
    }

    /// Rate of the policy's action steps in Hz: `chunk_rate_hz`, or `rate_hz` when absent.
    pub fn chunk_rate(&self) -> f64 {
        self.chunk_rate_hz.unwrap_or(self.rate_hz)
    }
}

fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn default_watchdog() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
    Int8,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// tract on the CPU: runs everywhere.
    Tract,
    /// A TensorRT engine built from this ONNX on the board (not implemented yet in this build).
    Tensorrt,
    /// ONNX Runtime on the CPU, when its library is on the board. It reads the same standard
    /// ONNX as tract, so a file listed for tract serves it when none is listed for it
    /// ([`Manifest::model_for`]).
    Onnxruntime,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Tract => "tract",
            BackendKind::Tensorrt => "tensorrt",
            BackendKind::Onnxruntime => "onnxruntime",
        }
    }
}

/// What a model file does in the policy. A bundle has either one `policy` (per backend) or an
/// `encoder` + `denoiser` pair (Diffusion Policy: the encoder runs once per observation, the
/// denoiser K times under a scheduler, with the manifest's `[diffusion]` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelRole {
    /// Images + state -> action or chunk, in one network.
    Policy,
    /// Images (+ state) -> conditioning vector, once per observation.
    Encoder,
    /// Noisy action sample + timestep + conditioning -> predicted noise (or sample).
    Denoiser,
}

impl ModelRole {
    /// The role's name as written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Policy => "policy",
            ModelRole::Encoder => "encoder",
            ModelRole::Denoiser => "denoiser",
        }
    }
}

/// How an `encoder` + `denoiser` bundle (Diffusion Policy, LeRobot's `DiffusionPolicy`) runs:
/// the encoder turns each observation into one row of features, the last `n_obs_steps` rows
/// (oldest first) condition the denoiser, which a DDPM or DDIM scheduler calls
/// `scheduler.num_inference_steps` times on a `[1, horizon, action_dim]` sample starting from
/// seeded Gaussian noise. The policy's output is the denoised sample from step
/// `n_obs_steps - 1` (the current observation's) to the end, so `action.output` is a chunk of
/// `horizon - n_obs_steps + 1` steps and `control.steps_per_inference` is LeRobot's
/// `n_action_steps`.
///
/// The encoder's inputs are the cameras' `onnx_input`s and `state.onnx_input`; the denoiser's
/// output is `action.onnx_output` (`[1, horizon, action_dim]`, normalized).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusionSpec {
    /// Observations the denoiser is conditioned on (LeRobot's `n_obs_steps`), >= 1: those of
    /// the last `n_obs_steps` control ticks, the current one last (LeRobot's observation queues
    /// fill once per `select_action` call, i.e. per control step, not per inference).
    pub n_obs_steps: usize,
    /// Steps of the denoised sample (LeRobot's `horizon`), >= `n_obs_steps`.
    pub horizon: usize,
    /// Seed of the noise generator (the initial sample and DDPM's per-step noise), so a run is
    /// reproducible; reseeded when the runtime prepares the policy.
    #[serde(default)]
    pub seed: u64,
    pub scheduler: SchedulerSpec,
    /// The encoder's output: one observation's features, `[1, D]`.
    #[serde(default = "default_features_output")]
    pub features_output: String,
    /// The denoiser's inputs: the noisy sample `[1, horizon, action_dim]`, the timestep `[1]`
    /// (an integer as f32) and the conditioning `[1, n_obs_steps * D]`.
    #[serde(default = "default_sample_input")]
    pub sample_input: String,
    #[serde(default = "default_timestep_input")]
    pub timestep_input: String,
    #[serde(default = "default_global_cond_input")]
    pub global_cond_input: String,
}

fn default_features_output() -> String {
    "features".into()
}
fn default_sample_input() -> String {
    "sample".into()
}
fn default_timestep_input() -> String {
    "timestep".into()
}
fn default_global_cond_input() -> String {
    "global_cond".into()
}

impl DiffusionSpec {
    /// Steps of the policy's output: `horizon - n_obs_steps + 1` (what `action.output`'s chunk
    /// must hold).
    pub fn output_horizon(&self) -> usize {
        (self.horizon + 1).saturating_sub(self.n_obs_steps)
    }
}

/// Which reverse process a diffusion policy's scheduler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedulerKind {
    /// Denoising diffusion probabilistic model (Ho et al. 2020): stochastic, fresh noise at every
    /// step but the last.
    #[serde(rename = "DDPM")]
    Ddpm,
    /// Denoising diffusion implicit model (Song et al. 2021) with eta 0: deterministic.
    #[serde(rename = "DDIM")]
    Ddim,
}

/// The forward-process variance schedule `beta_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    /// `torch.linspace(beta_start, beta_end, N, dtype=float32)`.
    Linear,
    /// The cosine schedule of Nichol & Dhariwal 2021: `beta_i = min(1 - abar((i+1)/N) /
    /// abar(i/N), 0.999)`, `abar(t) = cos((t + 0.008) / 1.008 * pi / 2)^2`, in f64, then f32.
    SquaredcosCapV2,
}

/// What the denoiser predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise that was added.
    Epsilon,
    /// The clean sample.
    Sample,
}

/// DDPM's posterior variance (diffusers' `variance_type`). Only `fixed_small`, diffusers' default
/// and what LeRobot's `DDPMScheduler` uses: `sigma_t^2 = (1 - abar_{t-1}) / (1 - abar_t) *
/// beta_t`, clamped at 1e-20. DDIM (eta 0) draws no noise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variance {
    #[default]
    FixedSmall,
}

/// A diffusion scheduler's settings, LeRobot's `DiffusionConfig` field names
/// (`noise_scheduler_type` is `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSpec {
    pub kind: SchedulerKind,
    /// Steps of the forward process the denoiser was trained with (N).
    pub num_train_timesteps: usize,
    /// Denoiser calls per inference (K), `1..=num_train_timesteps`.
    pub num_inference_steps: usize,
    pub beta_schedule: BetaSchedule,
    /// First and last beta of the `linear` schedule (unused by `squaredcos_cap_v2`).
    pub beta_start: f64,
    pub beta_end: f64,
    pub prediction_type: PredictionType,
    /// Clamp the predicted clean sample to `[-clip_sample_range, clip_sample_range]`.
    pub clip_sample: bool,
    pub clip_sample_range: f32,
    /// DDPM's posterior variance (default `fixed_small`, the only one).
    #[serde(default)]
    pub variance: Variance,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    pub role: ModelRole,
    /// Path relative to the bundle directory.
    pub file: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
    pub precision: Precision,
    /// Backends allowed to run this file (a quantized form that failed its accuracy gate on a
    /// backend is not listed for it).
    pub backends: Vec<BackendKind>,
    /// The files this model's tensors are stored in outside the ONNX file (ONNX external data,
    /// what `torch.onnx.export(..., dynamo=True)` writes as `model.onnx.data`), each with its
    /// hash. Absent (older bundles, models with no external data) = none: a model that
    /// references a data file not listed here is refused at load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_files: Vec<DataFile>,
}

/// A file a model needs besides its ONNX file, hashed like it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// Path relative to the bundle directory: the model file's folder joined with the
    /// `location` the ONNX file gives.
    pub file: String,
    /// Lower-case hex sha256 of the file's bytes.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelFormat {
    /// Packed YUV 4:2:2 (Y0 U Y1 V), BT.601 limited range, as UVC cameras deliver it.
    Yuyv,
    /// Packed 8-bit R, G, B.
    Rgb24,
    /// 8-bit luma only.
    Grey,
    /// Motion JPEG: one baseline JPEG per frame.
    Mjpeg,
    /// Planar YUV 4:2:0: the Y plane, then one interleaved U, V plane at half width and height
    /// (CSI cameras and ISPs). Converted per pixel exactly like YUYV, each 2x2 block sharing its
    /// chroma sample.
    Nv12,
}

impl PixelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Grey => "grey",
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Nv12 => "nv12",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Nominal camera frame rate, used to negotiate with the device.
    #[serde(default = "default_fps")]
    pub fps: u32,
}

fn default_fps() -> u32 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropSpec {
    /// Left edge, pixels.
    pub x: u32,
    /// Top edge, pixels.
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// torchvision `InterpolationMode.BILINEAR`.
    Bilinear,
    /// torchvision `InterpolationMode.NEAREST` (PyTorch's legacy `nearest`, floor of scaled index).
    Nearest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeSpec {
    pub width: u32,
    pub height: u32,
    #[serde(default = "default_interp")]
    pub interpolation: Interpolation,
    /// torchvision `Resize(antialias=True)`: when downscaling, the bilinear kernel is widened by
    /// the scale factor (as PIL does). Default true, torchvision's default since 0.17.
    #[serde(default = "yes")]
    pub antialias: bool,
    /// The element type training resized, and with which library: `float` (default; a float
    /// tensor, as after `ToTensor` or `ToDtype(float32, scale=True)`), `uint8` (torchvision's
    /// resize of a uint8 tensor, in float then rounded), `uint8-pil` (Pillow's
    /// `Image.resize(BILINEAR)`) or `uint8-avx2` (torchvision's resize of a uint8 tensor on an
    /// AVX2 CPU). See [`ResizeDtype`].
    #[serde(default, skip_serializing_if = "ResizeDtype::is_float")]
    pub dtype: ResizeDtype,
}

/// Which element type the training pipeline resized, so that deployment rounds where it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeDtype {
    /// A float tensor: the resized values are kept as they are (torchvision `Resize` after
    /// `ToTensor`/`ToDtype(float32)`).
    #[default]
    Float,
    /// A uint8 tensor resized by torchvision the way it does when it resizes in float and
    /// rounds: `F.interpolate` on the float image, then `round_()` (ties to even) and the cast
    /// back to uint8. Equal to torchvision's values, every one, when PyTorch runs its portable
    /// kernels (`ATEN_CPU_CAPABILITY=default`; tested against torch 2.7.1). torchvision 0.22
    /// resizes uint8 bilinear this way on CPUs whose `torch.backends.cpu.get_cpu_capability()`
    /// is not `AVX2`; on an `AVX512` CPU PyTorch's float kernels fuse multiply-adds, which moves
    /// values lying within an f32 ulp of a half level (measured: 3 of 298788 values one level
    /// off over four random-noise resizes). On an `AVX2` CPU it runs PyTorch's native uint8
    /// kernel instead, which differs from this on about 13% of the values (one level).
    Uint8,
    /// `uint8-pil`: an 8-bit image resized by Pillow, `Image.resize(size, Image.BILINEAR)` (as
    /// torchvision's `Resize` does on PIL images, and any dataloader that resizes before
    /// `ToTensor`). Pillow resamples in integer fixed point (`libImaging/Resample.c`): triangle
    /// weights computed in double, normalized, scaled by 2^22 and rounded half away from zero;
    /// each pass (horizontal first) sums `2^21 + sum x k` in integers, shifts right by 22 and
    /// clips to 0..255, so the image is rounded after each pass. Named for the library users
    /// know; bilinear with `antialias = true` only (Pillow always widens the filter when
    /// downscaling, and its NEAREST picks other pixels than torchvision's). Equal to Pillow's
    /// values, every one (tested against Pillow 13.0; the same algorithm in numpy matched Pillow
    /// 12.3). Pillow 13.0 runs the vertical pass first for some resizes that shrink the height
    /// (measured: 100x400 -> 90x50, 100x199 -> 50x50, 120x400 -> 150x90, 100x100 -> 101x99; not
    /// 100x150 -> 50x50, 480x480 -> 224x224 or any wide frame that we tried), which changes
    /// about one value in six by a level; reflex always runs horizontally first, as Pillow 12
    /// and earlier do.
    #[serde(rename = "uint8-pil")]
    Uint8Pil,
    /// `uint8-avx2`: a uint8 tensor resized by torchvision on a CPU whose
    /// `torch.backends.cpu.get_cpu_capability()` is `AVX2` (most AMD CPUs before Zen 4, Intel
    /// desktop CPUs): PyTorch's native uint8 kernel (from Pillow-SIMD), Pillow's fixed point
    /// with 16-bit weights: each axis's precision is the largest `p <= 22` for which the
    /// largest weight times `2^(p+1)` rounds below 2^15, instead of Pillow's 22 bits, so it
    /// differs from `uint8-pil` by one level on about 0.2% of the values. Bilinear with or
    /// without antialias (nearest copies pixels, as every dtype does). Equal to torchvision's
    /// values, every one (tested against torch 2.7.1 with `ATEN_CPU_CAPABILITY=avx2`).
    #[serde(rename = "uint8-avx2")]
    Uint8Avx2,
}

impl ResizeDtype {
    /// True for the default, [`ResizeDtype::Float`].
    pub fn is_float(&self) -> bool {
        *self == ResizeDtype::Float
    }

    /// The value as written in `policy.toml`.
    pub fn name(&self) -> &'static str {
        match self {
            ResizeDtype::Float => "float",
            ResizeDtype::Uint8 => "uint8",
            ResizeDtype::Uint8Pil => "uint8-pil",
            ResizeDtype::Uint8Avx2 => "uint8-avx2",
        }
    }
}

impl ResizeSpec {
    /// Why `dtype` cannot go with the interpolation and antialias settings, if it cannot:
    /// `uint8-pil` is Pillow's BILINEAR, which always antialiases (there is no Pillow resize
    /// to reproduce otherwise).
    pub fn dtype_problem(&self) -> Option<String> {
        if self.dtype != ResizeDtype::Uint8Pil {
            return None;
        }
        if self.interpolation == Interpolation::Nearest {
            return Some(
                "dtype = \"uint8-pil\" is Pillow's BILINEAR; Pillow's NEAREST picks pixel \
                 floor((i + 0.5) * in / out), not torchvision's floor(i * in / out), which is the \
                 only nearest reflex has: use interpolation = \"bilinear\", or another dtype"
                    .into(),
            );
        }
        if !self.antialias {
            return Some(
                "dtype = \"uint8-pil\" needs antialias = true: Pillow's BILINEAR always widens \
                 the filter when downscaling (`uint8-avx2` is torchvision's uint8 resize, with \
                 or without antialias)"
                    .into(),
            );
        }
        None
    }
}

fn default_interp() -> Interpolation {
    Interpolation::Bilinear
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
    /// One channel (luma); the model input has 1 channel.
    Grey,
}

impl ColorOrder {
    pub fn channels(self) -> usize {
        match self {
            ColorOrder::Rgb | ColorOrder::Bgr => 3,
            ColorOrder::Grey => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
}

/// How a captured frame becomes the model's input tensor, in this order: decode to 8-bit color,
/// crop, resize, scale to [0, 1], subtract mean, divide by std, write CHW.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<CropSpec>,
    pub resize: ResizeSpec,
    pub color: ColorOrder,
    /// Per-channel mean, applied after scaling pixels to [0, 1].
    pub mean: Vec<f32>,
    /// Per-channel std, applied after subtracting the mean.
    pub std: Vec<f32>,
    #[serde(default = "default_layout")]
    pub layout: Layout,
}

fn default_layout() -> Layout {
    Layout::Nchw
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSpec {
    pub name: String,
    /// Name of the ONNX graph input this camera feeds.
    pub onnx_input: String,
    pub capture: CaptureSpec,
    pub preprocess: PreprocessSpec,
    /// A frame older than this (capture timestamp to tick) is not used; the policy holds.
    #[serde(default = "default_max_age")]
    pub max_age_ms: u32,
    /// The training frames this camera's live view is checked against (`reflex check
    /// --cameras`, the start of `reflex run`); absent = no viewpoint check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub viewpoint: Option<ViewpointSpec>,
}

impl CropSpec {
    /// Whether this region is non-empty and lies inside a `width x height` frame (pixels; no
    /// overflow for any `u32` values).
    pub fn fits_in(&self, width: u32, height: u32) -> bool {
        let fits = |o: u32, l: u32, max: u32| l > 0 && o.checked_add(l).is_some_and(|e| e <= max);
        fits(self.x, self.width, width) && fits(self.y, self.height, height)
    }
}

impl CameraSpec {
    /// The region of the captured frame the preprocessing reads: `preprocess.crop`, else the
    /// whole `capture.width x capture.height` frame (pixels).
    pub fn crop_or_full(&self) -> CropSpec {
        self.preprocess.crop.unwrap_or(CropSpec {
            x: 0,
            y: 0,
            width: self.capture.width,
            height: self.capture.height,
        })
    }
}

/// A camera's reference view: a few training frames (downscaled luma) and their statistics,
/// written by `reflex-tools export --reference-frames`, and the thresholds of the check (see
/// `reflex_runtime::camera::viewpoint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewpointSpec {
    /// Bundle-relative `.npy` files: uint8 `(height, width)` ITU-R 601 luma of each reference
    /// frame, downscaled from the capture size by `downscale` (block mean).
    pub frames: Vec<String>,
    /// Capture size over reference size (an integer factor, >= 1).
    pub downscale: u32,
    /// Mean R, G, B of the reference frames at capture size, 0-255.
    pub mean_rgb: [f64; 3],
    /// Mean variance of the 4-neighbour Laplacian of the reference frames' luma at capture size
    /// (levels^2): their sharpness.
    pub sharpness: f64,
    #[serde(default)]
    pub thresholds: ViewpointThresholds,
}

/// Above `warn` the check warns, above `refuse` `reflex run` refuses to start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewpointLimit {
    pub warn: f64,
    pub refuse: f64,
}

/// Per-measure limits of the viewpoint check. The defaults are starting points for a
/// 640x480-class camera and a policy trained without heavy augmentation; tighten or loosen them
/// per camera from what the policy tolerates (`reflex-tools explain`'s robustness sweep).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewpointThresholds {
    /// Content shift, capture pixels.
    pub shift_px: ViewpointLimit,
    /// Absolute rotation, degrees.
    pub rotation_deg: ViewpointLimit,
    /// `|scale - 1|`, percent.
    pub scale_pct: ViewpointLimit,
    /// `|brightness ratio - 1|`, percent.
    pub brightness_pct: ViewpointLimit,
    /// The larger of `|R/G ratio - 1|` and `|B/G ratio - 1|`, percent.
    pub white_balance_pct: ViewpointLimit,
    /// Sharpness drop (`1 - ratio`, only blurrier counts), percent.
    pub sharpness_drop_pct: ViewpointLimit,
    /// `1 - correlation` of the aligned pictures, percent: how unlike the reference scene the
    /// live one is (a covered lens, another scene); the geometry means nothing when this is
    /// high.
    pub mismatch_pct: ViewpointLimit,
}

impl Default for ViewpointThresholds {
    fn default() -> Self {
        let l = |warn, refuse| ViewpointLimit { warn, refuse };
        ViewpointThresholds {
            shift_px: l(3.0, 10.0),
            rotation_deg: l(1.0, 3.0),
            scale_pct: l(2.0, 5.0),
            brightness_pct: l(15.0, 40.0),
            white_balance_pct: l(10.0, 25.0),
            sharpness_drop_pct: l(40.0, 70.0),
            mismatch_pct: l(30.0, 60.0),
        }
    }
}

fn default_max_age() -> u32 {
    200
}

/// Whose formula a [`Normalization`] follows, epsilon included: the manifest's
/// `normalization.convention` (default `plain`).
///
/// A policy only behaves as trained if its inputs are normalized exactly as the training framework
/// did it; the frameworks differ in their epsilon and in how they treat a joint that never moved
/// in the dataset (std = 0, min = max). The formulas, per dimension, `d` = spread:
///
/// | kind | `plain` | `lerobot` (LeRobot 0.6.1, eps = 1e-8) | `openpi` (eps = 1e-6) |
/// |---|---|---|---|
/// | `mean_std` | `(x - mean) / std` | `(x - mean) / (std + eps)`, inverse `y * std + mean` | `(x - mean) / (std + eps)`, inverse `y * (std + eps) + mean` |
/// | `min_max` | `2 (x - min) / d - 1`, `d = max - min` | same, `d = eps` where `max == min` | (none in openpi) |
/// | `quantile` | `2 (x - q01) / d - 1`, `d = q99 - q01` | same, `d = eps` where `q99 == q01` | `d = q99 - q01 + eps` |
/// | `quantile10` | `2 (x - q10) / d - 1`, `d = q90 - q10` | same, `d = eps` where `q90 == q10` | (none in openpi) |
///
/// Sources: LeRobot `src/lerobot/processor/normalize_processor.py`
/// (`NormalizerProcessorStep._apply_transform`, v0.6.1; note its MEAN_STD inverse has no epsilon),
/// openpi `src/openpi/transforms.py` (`Normalize._normalize{,_quantile}`,
/// `Unnormalize._unnormalize{,_quantile}`). `plain` has no epsilon and so needs a non-zero spread
/// everywhere; it is what bundles written before conventions existed mean.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    /// The textbook formulas, no epsilon (zero spread is refused).
    #[default]
    Plain,
    /// LeRobot's `NormalizerProcessorStep` (eps = 1e-8).
    Lerobot,
    /// openpi's `Normalize` / `Unnormalize` transforms (eps = 1e-6).
    Openpi,
}

impl Convention {
    /// LeRobot's `eps` (`NormalizerProcessorStep.eps`).
    pub const LEROBOT_EPS: f32 = 1e-8;
    /// openpi's epsilon (a literal in `transforms.py`).
    pub const OPENPI_EPS: f32 = 1e-6;

    /// The name written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Convention::Plain => "plain",
            Convention::Lerobot => "lerobot",
            Convention::Openpi => "openpi",
        }
    }

    /// Parses a manifest/command-line name (`plain`, `lerobot`, `openpi`).
    pub fn parse(s: &str) -> Option<Convention> {
        match s {
            "plain" => Some(Convention::Plain),
            "lerobot" => Some(Convention::Lerobot),
            "openpi" => Some(Convention::Openpi),
            _ => None,
        }
    }

    /// True for the default, which is not written out (manifests stay as they were).
    pub fn is_plain(&self) -> bool {
        *self == Convention::Plain
    }
}

/// Per-dimension normalization, as the training code applied it. Models see normalized values;
/// the runtime normalizes state on the way in and unnormalizes actions on the way out, both
/// through [`Normalization::affine`]. `convention` selects the framework's exact formula (see
/// [`Convention`]); it is omitted from the manifest when `plain`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Normalization {
    /// `(x - mean) / std` (LeRobot MEAN_STD, openpi z-score; epsilon per `convention`).
    MeanStd {
        mean: Vec<f32>,
        std: Vec<f32>,
        #[serde(default, skip_serializing_if = "Convention::is_plain")]
        convention: Convention,
    },
    /// `2 (x - min) / (max - min) - 1` (LeRobot MIN_MAX).
    MinMax {
        min: Vec<f32>,
        max: Vec<f32>,
        #[serde(default, skip_serializing_if = "Convention::is_plain")]
        convention: Convention,
    },
    /// `2 (x - q01) / (q99 - q01) - 1` (openpi's quantile normalization, LeRobot QUANTILES).
    Quantile {
        q01: Vec<f32>,
        q99: Vec<f32>,
        #[serde(default, skip_serializing_if = "Convention::is_plain")]
        convention: Convention,
    },
    /// `2 (x - q10) / (q90 - q10) - 1` (LeRobot QUANTILE10).
    Quantile10 {
        q10: Vec<f32>,
        q90: Vec<f32>,
        #[serde(default, skip_serializing_if = "Convention::is_plain")]
        convention: Convention,
    },
    /// The model works in physical units; must be stated explicitly.
    Identity,
}

/// One dimension's normalization in the form every supported formula takes:
/// `y = (x - center) / denom + shift` (normalize) and `x = (y - shift) * gain + center`
/// (unnormalize). Written so that each framework's own expression is evaluated with the same f32
/// operations, hence the same rounding: e.g. LeRobot MIN_MAX `2 (x - min) / d - 1` is
/// `(x - min) / (d / 2) + (-1)` (halving is exact), its inverse `(y + 1) / 2 * d + min` is
/// `(y - (-1)) * (d / 2) + min`. `gain` is not always `denom` (LeRobot's MEAN_STD inverse has no
/// epsilon).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Affine {
    pub center: f32,
    pub denom: f32,
    pub shift: f32,
    pub gain: f32,
}

impl Affine {
    /// The identity map.
    pub const IDENTITY: Affine = Affine {
        center: 0.0,
        denom: 1.0,
        shift: 0.0,
        gain: 1.0,
    };

    /// Physical value -> what the model sees.
    #[inline]
    pub fn normalize(self, x: f32) -> f32 {
        (x - self.center) / self.denom + self.shift
    }

    /// What the model outputs -> physical value.
    #[inline]
    pub fn unnormalize(self, y: f32) -> f32 {
        (y - self.shift) * self.gain + self.center
    }
}

impl Normalization {
    pub fn kind_str(&self) -> &'static str {
        match self {
            Normalization::MeanStd { .. } => "mean_std",
            Normalization::MinMax { .. } => "min_max",
            Normalization::Quantile { .. } => "quantile",
            Normalization::Quantile10 { .. } => "quantile10",
            Normalization::Identity => "identity",
        }
    }

    /// The formula's convention (`plain` for identity).
    pub fn convention(&self) -> Convention {
        match self {
            Normalization::MeanStd { convention, .. }
            | Normalization::MinMax { convention, .. }
            | Normalization::Quantile { convention, .. }
            | Normalization::Quantile10 { convention, .. } => *convention,
            Normalization::Identity => Convention::Plain,
        }
    }

    /// The (low, high) statistics of a range kind at dimension `i`; `None` for mean_std and
    /// identity.
    fn range(&self, i: usize) -> Option<(f32, f32)> {
        match self {
            Normalization::MinMax { min, max, .. } => Some((min[i], max[i])),
            Normalization::Quantile { q01, q99, .. } => Some((q01[i], q99[i])),
            Normalization::Quantile10 { q10, q90, .. } => Some((q10[i], q90[i])),
            Normalization::MeanStd { .. } | Normalization::Identity => None,
        }
    }

    /// Dimension `i`'s map, with the convention's formula (see [`Convention`] for the table).
    /// Callers validate the manifest first (see `validate_manifest`), so `denom` is finite and
    /// non-zero.
    pub fn affine(&self, i: usize) -> Affine {
        let conv = self.convention();
        if let Normalization::MeanStd { mean, std, .. } = self {
            let (denom, gain) = match conv {
                Convention::Plain => (std[i], std[i]),
                Convention::Lerobot => (std[i] + Convention::LEROBOT_EPS, std[i]),
                Convention::Openpi => {
                    let d = std[i] + Convention::OPENPI_EPS;
                    (d, d)
                }
            };
            return Affine {
                center: mean[i],
                denom,
                shift: 0.0,
                gain,
            };
        }
        let Some((lo, hi)) = self.range(i) else {
            return Affine::IDENTITY;
        };
        let d = match conv {
            Convention::Plain => hi - lo,
            Convention::Lerobot if hi - lo == 0.0 => Convention::LEROBOT_EPS,
            Convention::Lerobot => hi - lo,
            Convention::Openpi => hi - lo + Convention::OPENPI_EPS,
        };
        Affine {
            center: lo,
            denom: 0.5 * d,
            shift: -1.0,
            gain: 0.5 * d,
        }
    }

    /// Dimensions whose spread is zero (std = 0, or equal range bounds): a joint that never moved
    /// in the dataset. Valid only under a convention with an epsilon, where it normalizes as the
    /// framework did in training; worth a warning all the same.
    pub fn constant_dims(&self) -> Vec<usize> {
        match self {
            Normalization::MeanStd { std, .. } => {
                (0..std.len()).filter(|&i| std[i] == 0.0).collect()
            }
            Normalization::Identity => vec![],
            _ => {
                let n = self.vectors().first().map_or(0, |(_, v)| v.len());
                (0..n)
                    .filter(|&i| self.range(i).is_some_and(|(lo, hi)| hi - lo == 0.0))
                    .collect()
            }
        }
    }

    /// The named per-dimension vectors, for validation and reports.
    pub fn vectors(&self) -> Vec<(&'static str, &[f32])> {
        match self {
            Normalization::MeanStd { mean, std, .. } => vec![("mean", mean), ("std", std)],
            Normalization::MinMax { min, max, .. } => vec![("min", min), ("max", max)],
            Normalization::Quantile { q01, q99, .. } => vec![("q01", q01), ("q99", q99)],
            Normalization::Quantile10 { q10, q90, .. } => vec![("q10", q10), ("q90", q90)],
            Normalization::Identity => vec![],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Name of the ONNX input ([1, dim]); absent for image-only policies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_input: Option<String>,
    pub names: Vec<String>,
    /// Physical unit per dimension ("rad", "m", "mm", ...).
    pub units: Vec<String>,
    pub normalization: Normalization,
    /// Proprioceptive state older than this is not used; the policy holds.
    #[serde(default = "default_max_age")]
    pub max_age_ms: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionOutput {
    /// Output `[1, dim]`.
    Single,
    /// Output `[1, horizon, dim]`, one action per control period.
    Chunk { horizon: usize },
}

impl ActionOutput {
    pub fn horizon(self) -> usize {
        match self {
            ActionOutput::Single => 1,
            ActionOutput::Chunk { horizon } => horizon,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionLimits {
    /// Hard lower limit per dimension, physical units. Commands are clamped into [min, max].
    pub min: Vec<f32>,
    pub max: Vec<f32>,
    /// Maximum rate of change per dimension, physical units per second.
    pub max_rate: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSpec {
    /// Name of the ONNX output carrying actions.
    pub onnx_output: String,
    pub names: Vec<String>,
    pub units: Vec<String>,
    pub output: ActionOutput,
    pub normalization: Normalization,
    /// Hard limits. A bundle without them only runs with an explicit opt-out flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ActionLimits>,
    /// Largest difference allowed between a backend and tract on the same inputs, per action
    /// dimension in the action's unit (`reflex check --parity`). Absent: a default per model
    /// precision, in normalized units times each dimension's normalization gain
    /// (`reflex_runtime::infer::parity::default_tolerance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parity_tolerance: Option<Vec<f32>>,
}

/// How commands are put on the CAN bus, and how joint feedback comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CanSpec {
    /// reflex's simple default encoding: one classic frame per action dimension, ID
    /// `base_id + index`, data = f32 little-endian value in the action's unit, flags byte (bit 0:
    /// stop), tick counter byte, two zero bytes. See `reflex_runtime::can`.
    PerJoint {
        #[serde(default = "default_base_id")]
        base_id: u32,
    },
    /// "MIT mode" motor drivers (mini-cheetah firmware lineage: CubeMars AK, Damiao, MyActuator
    /// and others): one 8-byte frame per motor packing position, velocity, kp, kd and feed-forward
    /// torque, enable/disable frames, and a reply frame per command. See `reflex_runtime::can::codec`.
    Mit(MitSpec),
    /// A DBC file in the bundle plus a mapping from action/state names to its signals.
    Dbc(DbcSpec),
}

/// MIT-mode motors, one per action dimension, in action order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MitSpec {
    /// Vendor dialect: it decides the reply layout and the extras set at enable.
    #[serde(default)]
    pub flavor: MitFlavor,
    /// Motor-side command timeout set at enable, in ms, for flavors that have one (Damiao): the
    /// motors stop by themselves when commands stop arriving (the board died, the cable fell).
    /// Required for such flavors; 0 is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_timeout_ms: Option<u32>,
    /// What a stop command does: `hold` keeps the last safe position with the normal gains (a
    /// controlled stop that keeps an arm up), `damp` sends kp = 0 and `damp_kd` (the joint yields
    /// slowly: for robots that must be back-drivable when stopped).
    #[serde(default)]
    pub stop: MitStop,
    pub motors: Vec<MitMotor>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MitFlavor {
    /// The original mini-cheetah / CubeMars layout: reply = motor ID, position (16 bits),
    /// velocity (12), current/torque (12).
    #[default]
    Cubemars,
    /// Damiao DM-J series: reply byte 0 = error << 4 | ID, then position, velocity, torque, MOS
    /// and rotor temperatures; register 9 (TIMEOUT) holds the command timeout.
    Damiao,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MitStop {
    #[default]
    Hold,
    Damp,
}

/// One MIT-mode motor. Ranges are the motor firmware's symmetric packing ranges (P_MAX, V_MAX,
/// T_MAX as configured in the driver): reflex packs with the same numbers or the motor moves to
/// the wrong place.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MitMotor {
    /// CAN ID of the motor's command frames (its "CAN ID" / ESC ID).
    pub id: u32,
    /// CAN ID of its reply frames (Damiao: the master ID; CubeMars replies on the host ID 0 with
    /// the motor ID in byte 0: leave this out). Absent = replies are matched by byte 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_id: Option<u32>,
    /// Packing ranges: position in [-p_max, p_max] rad, velocity in [-v_max, v_max] rad/s,
    /// torque in [-t_max, t_max] N·m, kp in [0, kp_max], kd in [0, kd_max].
    pub p_max: f32,
    pub v_max: f32,
    pub t_max: f32,
    #[serde(default = "default_kp_max")]
    pub kp_max: f32,
    #[serde(default = "default_kd_max")]
    pub kd_max: f32,
    /// Gains sent with every command.
    pub kp: f32,
    pub kd: f32,
    /// Damping gain of a `damp` stop.
    #[serde(default = "default_damp_kd")]
    pub damp_kd: f32,
    /// State dimensions (by name) filled from the replies: position defaults to the state
    /// dimension named like this motor's action dimension, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub velocity_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub torque_state: Option<String>,
}

fn default_kp_max() -> f32 {
    500.0
}
fn default_kd_max() -> f32 {
    5.0
}
fn default_damp_kd() -> f32 {
    1.0
}

/// A DBC-described protocol. Every action dimension is mapped to one signal; the messages that
/// carry them are sent every tick, with the signals not mapped set from `constants` (else 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbcSpec {
    /// DBC file, relative to the bundle directory.
    pub file: String,
    /// Lower-case hex sha256 of the DBC file.
    pub sha256: String,
    /// Action name -> `Message.Signal`.
    pub actions: BTreeMap<String, String>,
    /// `Message.Signal` -> physical value sent in every frame of that message (enable bits,
    /// modes).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub constants: BTreeMap<String, f64>,
    /// `Message.Signal` set to 1 in stop commands, 0 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// State name -> `Message.Signal` of the feedback.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub feedback: BTreeMap<String, String>,
    /// Messages longer than 8 bytes are CAN FD frames; send them with bit-rate switching (the
    /// bus's data bit rate) when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fd_brs: bool,
}

fn default_base_id() -> u32 {
    0x100
}

impl Default for CanSpec {
    fn default() -> Self {
        CanSpec::PerJoint {
            base_id: default_base_id(),
        }
    }
}

/// Rewrites each float of TOML `text` that is exactly an `f32` as that `f32`'s shortest decimal
/// (`0.485`, not the `0.48500001430511475` the serializer writes for `0.485f32`, which it widens
/// to f64). Floats are replaced only where the short form parses back to the very same `f32`,
/// so the f32 fields round-trip bit for bit; f64 values that are not f32-exact (`0.01`) are left
/// as they are. Layout and order are kept (`toml_edit` edits the parsed document in place).
/// Text that does not parse is returned unchanged.
fn shortest_f32_floats(text: &str) -> String {
    use toml_edit::visit_mut::VisitMut;
    struct Shorten;
    impl VisitMut for Shorten {
        fn visit_float_mut(&mut self, node: &mut toml_edit::Formatted<f64>) {
            let x = *node.value();
            let narrow = x as f32;
            if !x.is_finite() || f64::from(narrow) != x {
                return;
            }
            let Ok(short) = narrow.to_string().parse::<f64>() else {
                return;
            };
            // `x as f32` is how serde reads the short form back into an f32 field.
            if short != x && short as f32 == narrow {
                let mut f = toml_edit::Formatted::new(short);
                *f.decor_mut() = node.decor().clone();
                *node = f;
            }
        }
    }
    let Ok(mut doc) = text.parse::<toml_edit::DocumentMut>() else {
        return text.to_string();
    };
    Shorten.visit_document_mut(&mut doc);
    doc.to_string()
}

impl CanSpec {
    /// The protocol's name as written in the manifest.
    pub fn protocol(&self) -> &'static str {
        match self {
            CanSpec::PerJoint { .. } => "per-joint",
            CanSpec::Mit(_) => "mit",
            CanSpec::Dbc(_) => "dbc",
        }
    }
}

impl Manifest {
    /// The manifest as `policy.toml` text, with every float that is an `f32` written in its
    /// shortest form (see [`shortest_f32_floats`]).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        Ok(shortest_f32_floats(&toml::to_string_pretty(self)?))
    }

    /// For each action dimension, the state dimension of the same name: where a measured
    /// position can seed the rate limiter for that joint.
    pub fn action_state_indices(&self) -> Vec<Option<usize>> {
        self.action
            .names
            .iter()
            .map(|a| self.state.names.iter().position(|s| s == a))
            .collect()
    }

    /// Observations per inference, the current one included: the `[diffusion]` section's
    /// `n_obs_steps` (the control loop keeps that many ticks' observations), else 1.
    pub fn n_obs_steps(&self) -> usize {
        self.diffusion.as_ref().map_or(1, |d| d.n_obs_steps.max(1))
    }

    /// The first policy entry. A quantized bundle may list one policy file per backend (int8:
    /// the operator form for tract, QDQ for TensorRT); see [`Manifest::policy_model_for`].
    pub fn policy_model(&self) -> Option<&ModelFile> {
        self.models_with_role(ModelRole::Policy).next()
    }

    /// The policy entry listed for `backend` (validation allows at most one per backend).
    pub fn policy_model_for(&self, backend: BackendKind) -> Option<&ModelFile> {
        self.model_for(ModelRole::Policy, backend)
    }

    /// The entry of `role` listed for `backend`: one file per backend per role (validation
    /// refuses two). ONNX Runtime with no file of its own runs the one listed for tract: both
    /// read standard ONNX (opset and operators of the ONNX spec), tract's fp32 and int8
    /// operator-form (QLinearConv/QLinearMatMul) files included.
    pub fn model_for(&self, role: ModelRole, backend: BackendKind) -> Option<&ModelFile> {
        let listed = |b: BackendKind| {
            self.models_with_role(role)
                .find(|m| m.backends.contains(&b))
        };
        listed(backend).or_else(|| match backend {
            BackendKind::Onnxruntime => listed(BackendKind::Tract),
            BackendKind::Tract | BackendKind::Tensorrt => None,
        })
    }

    /// Every entry of `role`, in manifest order.
    pub fn models_with_role(&self, role: ModelRole) -> impl Iterator<Item = &ModelFile> {
        self.models.iter().filter(move |m| m.role == role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_a_time_counted_in_the_loop_s_ticks() {
        let c: ControlSpec = toml::from_str("rate_hz = 20.0\nwatchdog_periods = 3").unwrap();
        assert!((c.watchdog_s() - 0.15).abs() < 1e-12);
        assert_eq!(c.watchdog_ticks(20.0), 3);
        assert_eq!(
            c.watchdog_ticks(50.0),
            8,
            "150 ms = 7.5 ticks at 50 Hz, rounded up"
        );
        assert_eq!(
            c.watchdog_ticks(10.0),
            2,
            "150 ms = 1.5 ticks at 10 Hz, rounded up"
        );
        assert_eq!(c.watchdog_ticks(1.0), 1, "never less than one tick");
        assert_eq!(c.watchdog_ticks(f64::NAN), 3);
    }
}
