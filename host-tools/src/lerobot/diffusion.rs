//! LeRobot's Diffusion Policy (`"type": "diffusion"`, LeRobot 0.6.1 `modeling_diffusion.py`) as two
//! ONNX graphs written from its `model.safetensors`: an **encoder** and a **denoiser**.
//!
//! - Encoder: one observation step -> its conditioning features, `[1, D]` with
//!   `D = state_dim + cameras * 2 * spatial_softmax_num_keypoints`, in LeRobot's order (state,
//!   then each camera's `DiffusionRgbEncoder` output). Per camera: the eval-mode center crop, the
//!   `nn.Sequential` of torchvision's ResNet-18 children up to `layer4` (BatchNorm folded into the
//!   convolutions, or GroupNorm with `C / 16` groups when `use_group_norm`), `SpatialSoftmax`
//!   (1x1 conv to K keypoints, softmax over positions, expected x/y on a [-1, 1] grid), then
//!   `out` (Linear 2K -> 2K) and ReLU. LeRobot encodes every step of the history separately
//!   (`(b s)` batched), so the runtime encodes each new observation once and keeps the last
//!   `n_obs_steps` feature rows: their concatenation, oldest first, is LeRobot's `global_cond`.
//! - Denoiser: `DiffusionConditionalUnet1d`: noisy sample `[1, horizon, action_dim]`, timestep
//!   `[1]` (f32, an integer value) and `global_cond` `[1, n_obs_steps * D]` -> predicted noise
//!   (`prediction_type = "epsilon"`) or sample (`"sample"`), `[1, horizon, action_dim]`.
//!
//! Both take what LeRobot's model takes: images and state already normalized by the
//! preprocessor (MEAN_STD / MIN_MAX from the processor stats), images `[1, 3, H, W]` at the
//! feature's shape. Scheduler settings are returned as [`SchedulerSpec`] for the manifest; the
//! schedulers themselves run in the runtime (`reflex_runtime::infer::diffusion`).

use anyhow::{anyhow, bail, Context, Result};
use reflex_models::onnx::builder::{Attr, GraphBuilder};
use reflex_runtime::infer::diffusion::{
    BetaSchedule, PredictionType, SchedulerKind, SchedulerSpec, Variance,
};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tract_onnx::pb::ModelProto;

/// BatchNorm and GroupNorm epsilon (PyTorch's default for both).
const NORM_EPS: f32 = 1e-5;
/// Groups of the GroupNorm in `final_conv.0`, built with `DiffusionConv1dBlock`'s default
/// (`n_groups=8`), not the config's `n_groups`.
const FINAL_CONV_GROUPS: usize = 8;
/// ResNet-18 stages `(channels, stride)`, `nn.Sequential` indices 4..=7 of the backbone.
const STAGES: [(usize, usize); 4] = [(64, 1), (128, 2), (256, 2), (512, 2)];

/// One input or output feature of `config.json` (`{"type": "VISUAL", "shape": [3, 96, 96]}`).
#[derive(Debug, Clone, Deserialize)]
pub struct Feature {
    #[serde(rename = "type")]
    pub kind: String,
    pub shape: Vec<usize>,
}

/// The fields of a LeRobot 0.6.1 `DiffusionConfig` that decide the graphs and the scheduler, as
/// `config.json` stores them (other fields, the optimizer's for instance, are not read).
#[derive(Debug, Clone, Deserialize)]
pub struct DiffusionConfig {
    pub n_obs_steps: usize,
    pub horizon: usize,
    pub n_action_steps: usize,
    pub input_features: BTreeMap<String, Feature>,
    pub output_features: BTreeMap<String, Feature>,
    pub vision_backbone: String,
    #[serde(default)]
    pub resize_shape: Option<Vec<usize>>,
    #[serde(default)]
    pub crop_shape: Option<Vec<usize>>,
    #[serde(default)]
    pub use_group_norm: bool,
    pub spatial_softmax_num_keypoints: usize,
    pub use_separate_rgb_encoder_per_camera: bool,
    pub down_dims: Vec<usize>,
    pub kernel_size: usize,
    pub n_groups: usize,
    pub diffusion_step_embed_dim: usize,
    pub use_film_scale_modulation: bool,
    pub noise_scheduler_type: String,
    pub num_train_timesteps: usize,
    pub beta_schedule: String,
    pub beta_start: f64,
    pub beta_end: f64,
    pub prediction_type: String,
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    #[serde(default)]
    pub num_inference_steps: Option<usize>,
}

/// The shapes the graphs are built for, derived from a checked [`DiffusionConfig`].
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionDims {
    /// Camera names: the part after `observation.images.`, in `config.json`'s order (LeRobot's
    /// `image_features` order, which is its encoder order).
    pub cameras: Vec<String>,
    /// `[channels, height, width]` of every camera image (LeRobot requires them equal).
    pub image_shape: [usize; 3],
    /// `[top, left, height, width]` of the eval-mode center crop, or the whole image.
    pub crop: [usize; 4],
    pub state_dim: usize,
    pub action_dim: usize,
    /// Width of one step's features (the encoder's output).
    pub step_features: usize,
    /// Width of the denoiser's conditioning input: `n_obs_steps * step_features`.
    pub global_cond: usize,
}

/// What the import wrote and what the manifest needs.
#[derive(Debug, Clone)]
pub struct DiffusionImport {
    /// The encoder graph, role `encoder`, written as `out/encoder.onnx`.
    pub encoder: PathBuf,
    /// The denoiser graph, role `denoiser`, written as `out/denoiser.onnx`.
    pub denoiser: PathBuf,
    pub scheduler: SchedulerSpec,
    /// Observation history length (`n_obs_steps`).
    pub n_obs_steps: usize,
    /// Steps per predicted sample (`horizon`).
    pub horizon: usize,
    /// Steps executed per inference (`n_action_steps`), from index `n_obs_steps - 1`.
    pub n_action_steps: usize,
    pub dims: DiffusionDims,
}

/// Graph input and output names.
pub mod io {
    /// Encoder input of camera `c`: `observation.images.<c>`, `[1, 3, H, W]`, normalized.
    pub const IMAGE_PREFIX: &str = "observation.images.";
    /// Encoder input: normalized state, `[1, state_dim]`.
    pub const STATE: &str = "observation.state";
    /// Encoder output: one step's features, `[1, D]`.
    pub const FEATURES: &str = "features";
    /// Denoiser input: the noisy sample, `[1, horizon, action_dim]`.
    pub const SAMPLE: &str = "sample";
    /// Denoiser input: the diffusion timestep, `[1]`, an integer in f32.
    pub const TIMESTEP: &str = "timestep";
    /// Denoiser input: `n_obs_steps` feature rows, oldest first, `[1, n_obs_steps * D]`.
    pub const GLOBAL_COND: &str = "global_cond";
    /// Denoiser output, `[1, horizon, action_dim]`.
    pub const PREDICTION: &str = "prediction";
}

impl DiffusionConfig {
    /// Reads the diffusion fields of `config.json` (already parsed); `file` names it in errors.
    pub fn from_json(config: &serde_json::Value, file: &Path) -> Result<Self> {
        serde_json::from_value(config.clone())
            .with_context(|| format!("{}: not a LeRobot 0.6 diffusion config", file.display()))
    }

    /// Checks every value the import supports and derives the shapes; an unsupported value is
    /// refused with its field named.
    pub fn dims(&self, file: &Path) -> Result<DiffusionDims> {
        let f = file.display();
        let refuse = |field: &str, why: String| anyhow!("{f}: `{field}`: {why}");
        if self.vision_backbone != "resnet18" {
            return Err(refuse(
                "vision_backbone",
                format!(
                    "{:?} is not supported (only \"resnet18\")",
                    self.vision_backbone
                ),
            ));
        }
        if let Some(r) = &self.resize_shape {
            return Err(refuse(
                "resize_shape",
                format!("{r:?}: in-model resizing is not supported; set it to null and resize in the camera's preprocessing"),
            ));
        }
        match self.noise_scheduler_type.as_str() {
            "DDPM" | "DDIM" => {}
            other => {
                return Err(refuse(
                    "noise_scheduler_type",
                    format!("{other:?} is not supported (\"DDPM\" or \"DDIM\")"),
                ))
            }
        }
        match self.beta_schedule.as_str() {
            "linear" | "squaredcos_cap_v2" => {}
            other => {
                return Err(refuse(
                    "beta_schedule",
                    format!("{other:?} is not supported (\"linear\" or \"squaredcos_cap_v2\")"),
                ))
            }
        }
        match self.prediction_type.as_str() {
            "epsilon" | "sample" => {}
            other => {
                return Err(refuse(
                    "prediction_type",
                    format!("{other:?} is not supported (\"epsilon\" or \"sample\")"),
                ))
            }
        }
        if self.n_obs_steps == 0 {
            return Err(refuse("n_obs_steps", "must be at least 1".into()));
        }
        if self.down_dims.is_empty() {
            return Err(refuse("down_dims", "must not be empty".into()));
        }
        if !self.horizon.is_multiple_of(1 << self.down_dims.len()) {
            return Err(refuse(
                "horizon",
                format!(
                    "{} is not a multiple of 2^len(down_dims) = {}",
                    self.horizon,
                    1 << self.down_dims.len()
                ),
            ));
        }
        if self.n_action_steps == 0 || self.n_action_steps > self.horizon + 1 - self.n_obs_steps {
            return Err(refuse(
                "n_action_steps",
                format!(
                    "{} must be in 1..=horizon - n_obs_steps + 1 = {}",
                    self.n_action_steps,
                    self.horizon + 1 - self.n_obs_steps
                ),
            ));
        }
        if self.kernel_size.is_multiple_of(2) {
            return Err(refuse(
                "kernel_size",
                format!("{} must be odd", self.kernel_size),
            ));
        }
        for &d in &self.down_dims {
            if !d.is_multiple_of(self.n_groups) || !d.is_multiple_of(FINAL_CONV_GROUPS) {
                return Err(refuse(
                    "down_dims",
                    format!("{d} is not divisible by n_groups = {} and 8", self.n_groups),
                ));
            }
        }
        if self.diffusion_step_embed_dim < 4 || !self.diffusion_step_embed_dim.is_multiple_of(2) {
            return Err(refuse(
                "diffusion_step_embed_dim",
                format!(
                    "{} must be even and at least 4",
                    self.diffusion_step_embed_dim
                ),
            ));
        }
        if self.num_inference_steps == Some(0)
            || self.num_inference_steps.unwrap_or(0) > self.num_train_timesteps
        {
            return Err(refuse(
                "num_inference_steps",
                format!(
                    "must be in 1..=num_train_timesteps = {}",
                    self.num_train_timesteps
                ),
            ));
        }

        let mut cameras = vec![];
        let mut image_shape = None;
        let mut state_dim = None;
        for (key, feat) in &self.input_features {
            let field = format!("input_features.{key}");
            match (feat.kind.as_str(), key.as_str()) {
                ("VISUAL", k) if k.starts_with(io::IMAGE_PREFIX) => {
                    let [3, h, w] = feat.shape[..] else {
                        return Err(refuse(&field, format!("shape {:?} is not [3, H, W]", feat.shape)));
                    };
                    if image_shape.is_some_and(|s| s != [3, h, w]) {
                        return Err(refuse(&field, "all cameras must have the same shape".into()));
                    }
                    image_shape = Some([3, h, w]);
                    cameras.push(k[io::IMAGE_PREFIX.len()..].to_string());
                }
                ("STATE", "observation.state") => {
                    let [n] = feat.shape[..] else {
                        return Err(refuse(&field, format!("shape {:?} is not [n]", feat.shape)));
                    };
                    state_dim = Some(n);
                }
                (kind, _) => {
                    return Err(refuse(
                        &field,
                        format!("a {kind} input is not supported (cameras `observation.images.*` and `observation.state` are)"),
                    ))
                }
            }
        }
        let state_dim = state_dim
            .ok_or_else(|| refuse("input_features", "`observation.state` is missing".into()))?;
        let image_shape = image_shape.ok_or_else(|| {
            refuse(
                "input_features",
                "no camera (`observation.images.*`); a policy without images is not supported"
                    .into(),
            )
        })?;
        let action_dim = match self.output_features.get("action") {
            Some(Feature { kind, shape }) if kind == "ACTION" && shape.len() == 1 => shape[0],
            _ => {
                return Err(refuse(
                    "output_features",
                    "needs exactly `action` of type ACTION and shape [n]".into(),
                ))
            }
        };
        if self.output_features.len() != 1 {
            return Err(refuse(
                "output_features",
                "only `action` is supported".into(),
            ));
        }
        let [_, h, w] = image_shape;
        let crop = match &self.crop_shape {
            None => [0, 0, h, w],
            Some(c) => match c[..] {
                [ch, cw] if ch > 0 && cw > 0 && ch <= h && cw <= w => {
                    [center_offset(h, ch), center_offset(w, cw), ch, cw]
                }
                _ => {
                    return Err(refuse(
                        "crop_shape",
                        format!("{c:?} must be [h, w] within the image's {h}x{w}"),
                    ))
                }
            },
        };
        let step_features = state_dim + cameras.len() * 2 * self.spatial_softmax_num_keypoints;
        Ok(DiffusionDims {
            cameras,
            image_shape,
            crop,
            state_dim,
            action_dim,
            step_features,
            global_cond: self.n_obs_steps * step_features,
        })
    }

    /// The scheduler settings (`num_inference_steps` absent = `num_train_timesteps`, as LeRobot).
    pub fn scheduler(&self) -> SchedulerSpec {
        SchedulerSpec {
            kind: if self.noise_scheduler_type == "DDIM" {
                SchedulerKind::Ddim
            } else {
                SchedulerKind::Ddpm
            },
            num_train_timesteps: self.num_train_timesteps,
            num_inference_steps: self.num_inference_steps.unwrap_or(self.num_train_timesteps),
            beta_schedule: if self.beta_schedule == "linear" {
                BetaSchedule::Linear
            } else {
                BetaSchedule::SquaredcosCapV2
            },
            beta_start: self.beta_start,
            beta_end: self.beta_end,
            prediction_type: if self.prediction_type == "sample" {
                PredictionType::Sample
            } else {
                PredictionType::Epsilon
            },
            clip_sample: self.clip_sample,
            clip_sample_range: self.clip_sample_range as f32,
            variance: Variance::FixedSmall,
        }
    }
}

/// torchvision's `center_crop` offset: `int(round((size - crop) / 2.0))`, Python's round (half
/// to even).
fn center_offset(size: usize, crop: usize) -> usize {
    let diff = size - crop;
    let half = diff / 2;
    if diff % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Imports the Diffusion Policy checkpoint in `dir` (`model.safetensors`; `config_json` is its
/// parsed `config.json`): writes `encoder.onnx` and `denoiser.onnx` into `out` (which must
/// exist) and returns what the manifest needs.
///
/// Errors name the file and field or tensor: an unsupported config value, a missing, extra or
/// mis-shaped tensor in `model.safetensors`.
pub fn import(dir: &Path, config_json: &serde_json::Value, out: &Path) -> Result<DiffusionImport> {
    let config_path = dir.join("config.json");
    let config = DiffusionConfig::from_json(config_json, &config_path)?;
    let dims = config.dims(&config_path)?;
    let mut ckpt = Checkpoint::open(&dir.join("model.safetensors"))?;
    let (encoder, denoiser) = build_graphs(&config, &dims, &mut ckpt)?;
    ckpt.finish()?;
    let write = |name: &str, model: &ModelProto| -> Result<PathBuf> {
        let path = out.join(name);
        std::fs::write(&path, prost::Message::encode_to_vec(model))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };
    Ok(DiffusionImport {
        encoder: write("encoder.onnx", &encoder)?,
        denoiser: write("denoiser.onnx", &denoiser)?,
        scheduler: config.scheduler(),
        n_obs_steps: config.n_obs_steps,
        horizon: config.horizon,
        n_action_steps: config.n_action_steps,
        dims,
    })
}

/// Builds the encoder and denoiser graphs from `ckpt` (see the module documentation).
pub fn build_graphs(
    config: &DiffusionConfig,
    dims: &DiffusionDims,
    ckpt: &mut Checkpoint,
) -> Result<(ModelProto, ModelProto)> {
    Ok((
        encoder_graph(config, dims, ckpt)?,
        denoiser_graph(config, dims, ckpt)?,
    ))
}

/// The tensors of a `model.safetensors`, as f32, with the keys used so far; integer tensors
/// (`num_batches_tracked`) are listed but hold no values.
#[derive(Debug)]
pub struct Checkpoint {
    path: PathBuf,
    tensors: BTreeMap<String, (Vec<usize>, Option<Vec<f32>>)>,
    used: BTreeSet<String>,
}

impl Checkpoint {
    /// Reads `path`; every floating tensor is converted to f32 (F32, F16, BF16, F64 accepted).
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| {
            format!("cannot read {} (the checkpoint's weights)", path.display())
        })?;
        let st = SafeTensors::deserialize(&bytes)
            .with_context(|| format!("{}: not a safetensors file", path.display()))?;
        let mut tensors = BTreeMap::new();
        for (key, view) in st.tensors() {
            let data = view.data();
            let values = match view.dtype() {
                Dtype::F32 => Some(
                    data.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect(),
                ),
                Dtype::F16 => Some(
                    data.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                ),
                Dtype::BF16 => Some(
                    data.chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                        .collect(),
                ),
                Dtype::F64 => Some(
                    data.chunks_exact(8)
                        .map(|b| {
                            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
                                as f32
                        })
                        .collect(),
                ),
                _ => None,
            };
            tensors.insert(key.clone(), (view.shape().to_vec(), values));
        }
        Ok(Checkpoint {
            path: path.to_path_buf(),
            tensors,
            used: BTreeSet::new(),
        })
    }

    /// Float tensor `key`, which must have `shape`.
    pub fn get(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let p = self.path.display();
        let (found, values) = self
            .tensors
            .get(key)
            .ok_or_else(|| anyhow!("{p}: tensor `{key}` (shape {shape:?}) is missing"))?;
        if found != shape {
            bail!("{p}: tensor `{key}` has shape {found:?}, the config needs {shape:?}");
        }
        let values = values
            .clone()
            .ok_or_else(|| anyhow!("{p}: tensor `{key}` is not a floating-point tensor"))?;
        self.used.insert(key.to_string());
        Ok(values)
    }

    /// Marks `key` as expected without reading it (buffers the graph recomputes).
    fn accept(&mut self, key: &str) {
        if self.tensors.contains_key(key) {
            self.used.insert(key.to_string());
        }
    }

    /// Fails if any tensor was not used: a checkpoint of another architecture or configuration.
    pub fn finish(&self) -> Result<()> {
        let unused: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .collect();
        if let Some(first) = unused.first() {
            bail!(
                "{}: {} tensor(s) the config does not use, first `{first}`: is config.json the checkpoint's own?",
                self.path.display(),
                unused.len()
            );
        }
        Ok(())
    }
}

/// The graph under construction and the checkpoint it reads from.
struct Build<'a> {
    g: GraphBuilder,
    ckpt: &'a mut Checkpoint,
}

impl Build<'_> {
    fn node(&mut self, name: &str, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        self.g.node(name, op, inputs, attrs)
    }

    /// An initializer holding checkpoint tensor `key` (`shape`), stored as `store_shape`.
    fn weight(&mut self, key: &str, shape: &[usize], store_shape: &[usize]) -> Result<String> {
        let data = self.ckpt.get(key, shape)?;
        Ok(self.g.initializer(key, store_shape, &data))
    }

    /// `x * tanh(softplus(x))`: `nn.Mish` (ONNX has `Mish` only from opset 18).
    fn mish(&mut self, name: &str, x: &str) -> String {
        let sp = self.node(&format!("{name}.softplus"), "Softplus", &[x], &[]);
        let th = self.node(&format!("{name}.tanh"), "Tanh", &[&sp], &[]);
        self.node(name, "Mul", &[x, &th], &[])
    }

    /// `nn.Linear` `key` (`[out, in]` weight) on `x` `[1, in]`.
    fn linear(&mut self, key: &str, x: &str, fan_in: usize, out: usize) -> Result<String> {
        let w = self.weight(&format!("{key}.weight"), &[out, fan_in], &[out, fan_in])?;
        let b = self.weight(&format!("{key}.bias"), &[out], &[out])?;
        Ok(self.node(key, "Gemm", &[x, &w, &b], &[("transB", Attr::Int(1))]))
    }

    /// `nn.GroupNorm(groups, c)` `key` on `x` of `shape` (`[1, c, ...]`): normalized per group
    /// over channels and positions with the biased variance, then the per-channel affine.
    fn group_norm(&mut self, key: &str, x: &str, shape: &[usize], groups: usize) -> Result<String> {
        let c = shape[1];
        let mut affine_shape = vec![c];
        affine_shape.extend(std::iter::repeat_n(1, shape.len() - 2));
        let gamma = self.weight(&format!("{key}.weight"), &[c], &affine_shape)?;
        let beta = self.weight(&format!("{key}.bias"), &[c], &affine_shape)?;
        let grouped = self.g.shape_const(&[1, groups as i64, -1]);
        let back: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let back = self.g.shape_const(&back);
        let eps = self.g.scalar(NORM_EPS);
        let xg = self.node(&format!("{key}.group"), "Reshape", &[x, &grouped], &[]);
        let mean_attrs = [("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(1))];
        let mean = self.node(&format!("{key}.mean"), "ReduceMean", &[&xg], &mean_attrs);
        let d = self.node(&format!("{key}.centered"), "Sub", &[&xg, &mean], &[]);
        let sq = self.node(&format!("{key}.square"), "Mul", &[&d, &d], &[]);
        let var = self.node(&format!("{key}.var"), "ReduceMean", &[&sq], &mean_attrs);
        let ve = self.node(&format!("{key}.var_eps"), "Add", &[&var, &eps], &[]);
        let std = self.node(&format!("{key}.std"), "Sqrt", &[&ve], &[]);
        let n = self.node(&format!("{key}.normalized"), "Div", &[&d, &std], &[]);
        let n = self.node(&format!("{key}.ungroup"), "Reshape", &[&n, &back], &[]);
        let scaled = self.node(&format!("{key}.scale"), "Mul", &[&n, &gamma], &[]);
        Ok(self.node(key, "Add", &[&scaled, &beta], &[]))
    }
}

/// Spatial size after a convolution or pooling window.
fn conv_out(size: usize, k: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad - k) / stride + 1
}

fn encoder_graph(
    config: &DiffusionConfig,
    dims: &DiffusionDims,
    ckpt: &mut Checkpoint,
) -> Result<ModelProto> {
    let mut b = Build {
        g: GraphBuilder::new("lerobot_diffusion_encoder"),
        ckpt,
    };
    let [c, h, w] = dims.image_shape;
    let images: Vec<String> = dims
        .cameras
        .iter()
        .map(|cam| {
            b.g.input(&format!("{}{cam}", io::IMAGE_PREFIX), &[1, c, h, w])
        })
        .collect();
    let state = b.g.input(io::STATE, &[1, dims.state_dim]);
    let mut features = vec![state];
    for (i, (cam, image)) in dims.cameras.iter().zip(&images).enumerate() {
        let prefix = if config.use_separate_rgb_encoder_per_camera {
            format!("diffusion.rgb_encoder.{i}.")
        } else {
            "diffusion.rgb_encoder.".to_string()
        };
        features.push(rgb_encoder(&mut b, config, dims, &prefix, cam, image)?);
    }
    let refs: Vec<&str> = features.iter().map(String::as_str).collect();
    let out = b.node(io::FEATURES, "Concat", &refs, &[("axis", Attr::Int(1))]);
    b.g.output(&out, &[1, dims.step_features]);
    b.g.metadata("lerobot.policy", "diffusion");
    b.g.metadata("reflex.role", "encoder");
    Ok(b.g.finish())
}

/// One `DiffusionRgbEncoder` (eval mode) on `image`; returns its `[1, 2K]` output.
fn rgb_encoder(
    b: &mut Build<'_>,
    config: &DiffusionConfig,
    dims: &DiffusionDims,
    prefix: &str,
    cam: &str,
    image: &str,
) -> Result<String> {
    let [top, left, ch, cw] = dims.crop;
    let [_, h, w] = dims.image_shape;
    let shared =
        !config.use_separate_rgb_encoder_per_camera && b.g.has(&format!("{prefix}out.weight"));
    let mut x = image.to_string();
    if [ch, cw] != [h, w] {
        let starts = b.g.initializer_i64(
            &format!("{cam}.crop.starts"),
            &[2],
            &[top as i64, left as i64],
        );
        let ends = b.g.initializer_i64(
            &format!("{cam}.crop.ends"),
            &[2],
            &[(top + ch) as i64, (left + cw) as i64],
        );
        let axes =
            b.g.initializer_i64(&format!("{cam}.crop.axes"), &[2], &[2, 3]);
        x = b.node(
            &format!("{cam}.crop"),
            "Slice",
            &[&x, &starts, &ends, &axes],
            &[],
        );
    }
    let bb = format!("{prefix}backbone.");
    let mut hw = [ch, cw];
    let conv = |b: &mut Build<'_>,
                x: &str,
                conv: &str,
                norm: &str,
                [cin, cout, k, stride, pad]: [usize; 5],
                hw: [usize; 2]|
     -> Result<String> {
        conv_norm(
            b,
            config,
            shared,
            cam,
            x,
            &format!("{bb}{conv}"),
            &format!("{bb}{norm}"),
            [cin, cout, k, stride, pad],
            hw,
        )
    };
    x = conv(b, &x, "0", "1", [3, 64, 7, 2, 3], hw)?;
    hw = hw.map(|s| conv_out(s, 7, 2, 3));
    x = b.node(&format!("{cam}.relu"), "Relu", &[&x], &[]);
    x = b.node(
        &format!("{cam}.maxpool"),
        "MaxPool",
        &[&x],
        &[
            ("kernel_shape", Attr::Ints(vec![3, 3])),
            ("strides", Attr::Ints(vec![2, 2])),
            ("pads", Attr::Ints(vec![1, 1, 1, 1])),
        ],
    );
    hw = hw.map(|s| conv_out(s, 3, 2, 1));
    let mut cin = 64;
    for (stage, &(cout, first_stride)) in STAGES.iter().enumerate() {
        for block in 0..2 {
            let p = format!("{}.{block}", stage + 4);
            let stride = if block == 0 { first_stride } else { 1 };
            let out_hw = hw.map(|s| conv_out(s, 3, stride, 1));
            let y = conv(
                b,
                &x,
                &format!("{p}.conv1"),
                &format!("{p}.bn1"),
                [cin, cout, 3, stride, 1],
                hw,
            )?;
            let y = b.node(&format!("{cam}.{p}.relu1"), "Relu", &[&y], &[]);
            let y = conv(
                b,
                &y,
                &format!("{p}.conv2"),
                &format!("{p}.bn2"),
                [cout, cout, 3, 1, 1],
                out_hw,
            )?;
            let identity = if stride != 1 || cin != cout {
                conv(
                    b,
                    &x,
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    [cin, cout, 1, stride, 0],
                    hw,
                )?
            } else {
                x.clone()
            };
            let sum = b.node(&format!("{cam}.{p}.add"), "Add", &[&y, &identity], &[]);
            x = b.node(&format!("{cam}.{p}.relu2"), "Relu", &[&sum], &[]);
            hw = out_hw;
            cin = cout;
        }
    }

    // SpatialSoftmax: 1x1 conv to K keypoint maps, softmax over the H*W positions, expected
    // (x, y) on `np.meshgrid(np.linspace(-1, 1, W), np.linspace(-1, 1, H))`.
    let k = config.spatial_softmax_num_keypoints;
    let [fh, fw] = hw;
    let pool = format!("{prefix}pool.");
    let (nw, nb) = if shared {
        (format!("{pool}nets.weight"), format!("{pool}nets.bias"))
    } else {
        (
            b.weight(
                &format!("{pool}nets.weight"),
                &[k, 512, 1, 1],
                &[k, 512, 1, 1],
            )?,
            b.weight(&format!("{pool}nets.bias"), &[k], &[k])?,
        )
    };
    let kp = b.node(
        &format!("{cam}.pool.nets"),
        "Conv",
        &[&x, &nw, &nb],
        &[("kernel_shape", Attr::Ints(vec![1, 1]))],
    );
    let flat_shape = b.g.shape_const(&[k as i64, (fh * fw) as i64]);
    let flat = b.node(
        &format!("{cam}.pool.flatten"),
        "Reshape",
        &[&kp, &flat_shape],
        &[],
    );
    let attention = b.node(
        &format!("{cam}.pool.softmax"),
        "Softmax",
        &[&flat],
        &[("axis", Attr::Int(-1))],
    );
    let grid_name = format!("{pool}pos_grid");
    b.ckpt.accept(&grid_name);
    if !b.g.has(&grid_name) {
        let lin = |n: usize, i: usize| {
            if n == 1 {
                -1.0
            } else {
                -1.0 + 2.0 * i as f64 / (n - 1) as f64
            }
        };
        let mut grid = Vec::with_capacity(fh * fw * 2);
        for y in 0..fh {
            for x in 0..fw {
                grid.push(lin(fw, x) as f32);
                grid.push(lin(fh, y) as f32);
            }
        }
        b.g.initializer(&grid_name, &[fh * fw, 2], &grid);
    }
    let xy = b.node(
        &format!("{cam}.pool.expected_xy"),
        "MatMul",
        &[&attention, &grid_name],
        &[],
    );
    let row = b.g.shape_const(&[1, (2 * k) as i64]);
    let xy = b.node(
        &format!("{cam}.pool.keypoints"),
        "Reshape",
        &[&xy, &row],
        &[],
    );
    let out_key = format!("{prefix}out");
    let (ow, ob) = if shared {
        (format!("{out_key}.weight"), format!("{out_key}.bias"))
    } else {
        (
            b.weight(
                &format!("{out_key}.weight"),
                &[2 * k, 2 * k],
                &[2 * k, 2 * k],
            )?,
            b.weight(&format!("{out_key}.bias"), &[2 * k], &[2 * k])?,
        )
    };
    let y = b.node(
        &format!("{cam}.out"),
        "Gemm",
        &[&xy, &ow, &ob],
        &[("transB", Attr::Int(1))],
    );
    Ok(b.node(&format!("{cam}.out.relu"), "Relu", &[&y], &[]))
}

/// A bias-free backbone conv followed by its norm: BatchNorm (eval) folded into the conv, or
/// GroupNorm (`C / 16` groups) after it. `shared` reuses the initializers of the first camera.
#[allow(clippy::too_many_arguments)]
fn conv_norm(
    b: &mut Build<'_>,
    config: &DiffusionConfig,
    shared: bool,
    cam: &str,
    x: &str,
    conv: &str,
    norm: &str,
    [cin, cout, k, stride, pad]: [usize; 5],
    hw: [usize; 2],
) -> Result<String> {
    let w_name = format!("{conv}.weight");
    let b_name = format!("{conv}.folded_bias");
    let attrs = [
        ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
        ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
        ("pads", Attr::Ints(vec![pad as i64; 4])),
    ];
    let node = format!("{cam}.{conv}");
    if config.use_group_norm {
        if !shared {
            b.weight(&w_name, &[cout, cin, k, k], &[cout, cin, k, k])?;
        }
        let y = b.node(&node, "Conv", &[x, &w_name], &attrs);
        let out_hw = hw.map(|s| conv_out(s, k, stride, pad));
        if shared {
            // The shared encoder's GroupNorm affine tensors already exist: rebuild the nodes
            // only, reading nothing new.
            return group_norm_shared(b, norm, cam, &y, [1, cout, out_hw[0], out_hw[1]], cout / 16);
        }
        return b.group_norm(norm, &y, &[1, cout, out_hw[0], out_hw[1]], cout / 16);
    }
    if !shared {
        let mut w = b.ckpt.get(&w_name, &[cout, cin, k, k])?;
        let gamma = b.ckpt.get(&format!("{norm}.weight"), &[cout])?;
        let beta = b.ckpt.get(&format!("{norm}.bias"), &[cout])?;
        let mean = b.ckpt.get(&format!("{norm}.running_mean"), &[cout])?;
        let var = b.ckpt.get(&format!("{norm}.running_var"), &[cout])?;
        b.ckpt.accept(&format!("{norm}.num_batches_tracked"));
        let mut bias = vec![0.0; cout];
        for (o, filter) in w.chunks_exact_mut(cin * k * k).enumerate() {
            let scale = gamma[o] / (var[o] + NORM_EPS).sqrt();
            filter.iter_mut().for_each(|v| *v *= scale);
            bias[o] = beta[o] - mean[o] * scale;
        }
        b.g.initializer(&w_name, &[cout, cin, k, k], &w);
        b.g.initializer(&b_name, &[cout], &bias);
    }
    Ok(b.node(&node, "Conv", &[x, &w_name, &b_name], &attrs))
}

/// [`Build::group_norm`] for a second camera sharing the first one's encoder: the same
/// computation on the existing `key.weight` / `key.bias` initializers.
fn group_norm_shared(
    b: &mut Build<'_>,
    key: &str,
    cam: &str,
    x: &str,
    shape: [usize; 4],
    groups: usize,
) -> Result<String> {
    let grouped = b.g.shape_const(&[1, groups as i64, -1]);
    let back = b.g.shape_const(&shape.map(|d| d as i64));
    let eps = b.g.scalar(NORM_EPS);
    let n = format!("{cam}.{key}");
    let mean_attrs = [("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(1))];
    let xg = b.node(&format!("{n}.group"), "Reshape", &[x, &grouped], &[]);
    let mean = b.node(&format!("{n}.mean"), "ReduceMean", &[&xg], &mean_attrs);
    let d = b.node(&format!("{n}.centered"), "Sub", &[&xg, &mean], &[]);
    let sq = b.node(&format!("{n}.square"), "Mul", &[&d, &d], &[]);
    let var = b.node(&format!("{n}.var"), "ReduceMean", &[&sq], &mean_attrs);
    let ve = b.node(&format!("{n}.var_eps"), "Add", &[&var, &eps], &[]);
    let std = b.node(&format!("{n}.std"), "Sqrt", &[&ve], &[]);
    let nn = b.node(&format!("{n}.normalized"), "Div", &[&d, &std], &[]);
    let nn = b.node(&format!("{n}.ungroup"), "Reshape", &[&nn, &back], &[]);
    let scaled = b.node(
        &format!("{n}.scale"),
        "Mul",
        &[&nn, &format!("{key}.weight")],
        &[],
    );
    Ok(b.node(&n, "Add", &[&scaled, &format!("{key}.bias")], &[]))
}

fn denoiser_graph(
    config: &DiffusionConfig,
    dims: &DiffusionDims,
    ckpt: &mut Checkpoint,
) -> Result<ModelProto> {
    let mut b = Build {
        g: GraphBuilder::new("lerobot_diffusion_denoiser"),
        ckpt,
    };
    let (t, a) = (config.horizon, dims.action_dim);
    let sample = b.g.input(io::SAMPLE, &[1, t, a]);
    let timestep = b.g.input(io::TIMESTEP, &[1]);
    let cond = b.g.input(io::GLOBAL_COND, &[1, dims.global_cond]);

    // DiffusionSinusoidalPosEmb: freq_i = exp(-i * ln(10000) / (half - 1)), in f32 as torch.
    let e = config.diffusion_step_embed_dim;
    let half = e / 2;
    let step = (10000f64.ln() / (half - 1) as f64) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let freqs =
        b.g.initializer("diffusion.unet.step_embedding.freqs", &[1, half], &freqs);
    let col = b.g.shape_const(&[1, 1]);
    let tcol = b.node("timestep.column", "Reshape", &[&timestep, &col], &[]);
    let arg = b.node("step_embedding.arg", "Mul", &[&tcol, &freqs], &[]);
    let sin = b.node("step_embedding.sin", "Sin", &[&arg], &[]);
    let cos = b.node("step_embedding.cos", "Cos", &[&arg], &[]);
    let emb = b.node(
        "step_embedding",
        "Concat",
        &[&sin, &cos],
        &[("axis", Attr::Int(1))],
    );
    let enc = "diffusion.unet.diffusion_step_encoder";
    let h1 = b.linear(&format!("{enc}.1"), &emb, e, 4 * e)?;
    let h1 = b.mish(&format!("{enc}.2"), &h1);
    let temb = b.linear(&format!("{enc}.3"), &h1, 4 * e, e)?;
    let global = b.node(
        "global_feature",
        "Concat",
        &[&temb, &cond],
        &[("axis", Attr::Int(1))],
    );
    let cond_dim = e + dims.global_cond;
    // Every block's cond_encoder starts with Mish of the same vector: computed once.
    let global_mish = b.mish("global_feature.mish", &global);
    let unet = Unet {
        cond: global_mish,
        cond_dim,
        kernel: config.kernel_size,
        groups: config.n_groups,
        film_scale: config.use_film_scale_modulation,
    };

    let perm = [("perm", Attr::Ints(vec![0, 2, 1]))];
    let mut x = b.node("sample.channels_first", "Transpose", &[&sample], &perm);
    let dd = &config.down_dims;
    let mut in_out = vec![(a, dd[0])];
    in_out.extend(dd.windows(2).map(|p| (p[0], p[1])));
    let mut len = t;
    let mut skips = vec![];
    for (i, &(din, dout)) in in_out.iter().enumerate() {
        let p = format!("diffusion.unet.down_modules.{i}");
        x = unet.res_block(&mut b, &format!("{p}.0"), &x, din, dout, len)?;
        x = unet.res_block(&mut b, &format!("{p}.1"), &x, dout, dout, len)?;
        skips.push((x.clone(), dout));
        if i + 1 < in_out.len() {
            let w = b.weight(&format!("{p}.2.weight"), &[dout, dout, 3], &[dout, dout, 3])?;
            let bias = b.weight(&format!("{p}.2.bias"), &[dout], &[dout])?;
            x = b.node(
                &format!("{p}.2"),
                "Conv",
                &[&x, &w, &bias],
                &[
                    ("kernel_shape", Attr::Ints(vec![3])),
                    ("strides", Attr::Ints(vec![2])),
                    ("pads", Attr::Ints(vec![1, 1])),
                ],
            );
            len = conv_out(len, 3, 2, 1);
        }
    }
    let last = *dd.last().unwrap_or(&0);
    for i in 0..2 {
        x = unet.res_block(
            &mut b,
            &format!("diffusion.unet.mid_modules.{i}"),
            &x,
            last,
            last,
            len,
        )?;
    }
    // LeRobot's `is_last` test never holds for the up path, so every up module ends with a
    // ConvTranspose1d (kernel 4, stride 2, padding 1: doubles the length). The skips pop from
    // the deepest level; level 0's is never used.
    for (i, &(dout, din)) in in_out[1..].iter().rev().enumerate() {
        let p = format!("diffusion.unet.up_modules.{i}");
        let (skip, _) = skips
            .pop()
            .ok_or_else(|| anyhow!("U-Net skip stack underflow"))?;
        // torch.cat((x, skip)): x first.
        x = b.node(
            &format!("{p}.cat"),
            "Concat",
            &[&x, &skip],
            &[("axis", Attr::Int(1))],
        );
        x = unet.res_block(&mut b, &format!("{p}.0"), &x, din * 2, dout, len)?;
        x = unet.res_block(&mut b, &format!("{p}.1"), &x, dout, dout, len)?;
        let w = b.weight(&format!("{p}.2.weight"), &[dout, dout, 4], &[dout, dout, 4])?;
        let bias = b.weight(&format!("{p}.2.bias"), &[dout], &[dout])?;
        x = b.node(
            &format!("{p}.2"),
            "ConvTranspose",
            &[&x, &w, &bias],
            &[
                ("kernel_shape", Attr::Ints(vec![4])),
                ("strides", Attr::Ints(vec![2])),
                ("pads", Attr::Ints(vec![1, 1])),
            ],
        );
        len *= 2;
    }
    let d0 = dd[0];
    x = unet.conv_block(
        &mut b,
        "diffusion.unet.final_conv.0",
        &x,
        d0,
        d0,
        len,
        FINAL_CONV_GROUPS,
    )?;
    let w = b.weight(
        "diffusion.unet.final_conv.1.weight",
        &[a, d0, 1],
        &[a, d0, 1],
    )?;
    let bias = b.weight("diffusion.unet.final_conv.1.bias", &[a], &[a])?;
    x = b.node(
        "diffusion.unet.final_conv.1",
        "Conv",
        &[&x, &w, &bias],
        &[("kernel_shape", Attr::Ints(vec![1]))],
    );
    let out = b.node(io::PREDICTION, "Transpose", &[&x], &perm);
    b.g.output(&out, &[1, t, a]);
    b.g.metadata("lerobot.policy", "diffusion");
    b.g.metadata("reflex.role", "denoiser");
    Ok(b.g.finish())
}

/// The U-Net's shared settings.
struct Unet {
    /// `Mish(global_feature)`, `[1, cond_dim]`.
    cond: String,
    cond_dim: usize,
    kernel: usize,
    groups: usize,
    film_scale: bool,
}

impl Unet {
    /// `DiffusionConv1dBlock` `key` (`key.block.{0,1}`): Conv1d (same padding), GroupNorm, Mish.
    #[allow(clippy::too_many_arguments)]
    fn conv_block(
        &self,
        b: &mut Build<'_>,
        key: &str,
        x: &str,
        cin: usize,
        cout: usize,
        len: usize,
        groups: usize,
    ) -> Result<String> {
        let k = self.kernel;
        let w = b.weight(
            &format!("{key}.block.0.weight"),
            &[cout, cin, k],
            &[cout, cin, k],
        )?;
        let bias = b.weight(&format!("{key}.block.0.bias"), &[cout], &[cout])?;
        let pad = (k / 2) as i64;
        let y = b.node(
            &format!("{key}.block.0"),
            "Conv",
            &[x, &w, &bias],
            &[
                ("kernel_shape", Attr::Ints(vec![k as i64])),
                ("pads", Attr::Ints(vec![pad, pad])),
            ],
        );
        let y = b.group_norm(&format!("{key}.block.1"), &y, &[1, cout, len], groups)?;
        Ok(b.mish(&format!("{key}.block.2"), &y))
    }

    /// `DiffusionConditionalResidualBlock1d` `key` with FiLM conditioning.
    fn res_block(
        &self,
        b: &mut Build<'_>,
        key: &str,
        x: &str,
        cin: usize,
        cout: usize,
        len: usize,
    ) -> Result<String> {
        let out = self.conv_block(b, &format!("{key}.conv1"), x, cin, cout, len, self.groups)?;
        let cc = if self.film_scale { 2 * cout } else { cout };
        let embed = b.linear(
            &format!("{key}.cond_encoder.1"),
            &self.cond,
            self.cond_dim,
            cc,
        )?;
        let col = b.g.shape_const(&[1, cc as i64, 1]);
        let embed = b.node(
            &format!("{key}.cond_embed"),
            "Reshape",
            &[&embed, &col],
            &[],
        );
        let out = if self.film_scale {
            let axes = b.g.initializer_i64(&format!("{key}.film.axes"), &[1], &[1]);
            let s0 = b.g.initializer_i64(&format!("{key}.film.s0"), &[1], &[0]);
            let s1 =
                b.g.initializer_i64(&format!("{key}.film.s1"), &[1], &[cout as i64]);
            let s2 =
                b.g.initializer_i64(&format!("{key}.film.s2"), &[1], &[cc as i64]);
            let scale = b.node(
                &format!("{key}.film.scale"),
                "Slice",
                &[&embed, &s0, &s1, &axes],
                &[],
            );
            let shift = b.node(
                &format!("{key}.film.bias"),
                "Slice",
                &[&embed, &s1, &s2, &axes],
                &[],
            );
            let scaled = b.node(&format!("{key}.film.mul"), "Mul", &[&scale, &out], &[]);
            b.node(&format!("{key}.film"), "Add", &[&scaled, &shift], &[])
        } else {
            b.node(&format!("{key}.cond_add"), "Add", &[&out, &embed], &[])
        };
        let out = self.conv_block(
            b,
            &format!("{key}.conv2"),
            &out,
            cout,
            cout,
            len,
            self.groups,
        )?;
        let residual = if cin != cout {
            let w = b.weight(
                &format!("{key}.residual_conv.weight"),
                &[cout, cin, 1],
                &[cout, cin, 1],
            )?;
            let bias = b.weight(&format!("{key}.residual_conv.bias"), &[cout], &[cout])?;
            b.node(
                &format!("{key}.residual_conv"),
                "Conv",
                &[x, &w, &bias],
                &[("kernel_shape", Attr::Ints(vec![1]))],
            )
        } else {
            x.to_string()
        };
        Ok(b.node(key, "Add", &[&out, &residual], &[]))
    }
}
