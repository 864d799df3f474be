//! `reflex-tools import lerobot DIR --out BUNDLE`: a LeRobot checkpoint folder (LeRobot 0.6.1's
//! `pretrained_model/`: `config.json`, `model.safetensors`, the pre- and postprocessor files) to a
//! checked bundle, without Python.
//!
//! - [`config`]: `config.json`, every field the graph depends on checked;
//! - [`processor`]: the processor pipelines and their statistics, matched both ways with the
//!   config's features;
//! - [`act`]: ACT's ONNX graph written from `model.safetensors` with LeRobot's key names;
//! - [`diffusion`]: Diffusion Policy's encoder and denoiser graphs from `model.safetensors` (not
//!   yet reachable from `import`: the manifest has no place for the scheduler settings).
//!
//! What the bundle gets from the folder: one camera per `VISUAL` input feature
//! (`observation.images.<camera>`, captured at the feature's size, uint8 RGB -> `/255` -> CHW ->
//! the VISUAL mode's normalization with the preprocessor's per-channel statistics), the state
//! (`observation.state`) and action normalization in the `lerobot` convention (its formulas and
//! epsilon) from the preprocessor's and postprocessor's statistics, the chunk
//! (`chunk_size`), `n_action_steps` as steps per inference and `temporal_ensemble_coeff` as the
//! loop's ensembling coefficient. What it cannot know is given on the command line: the control
//! rate (the dataset's fps), the camera pixel format, joint names and limits (a bundle without
//! limits runs only with `reflex run --allow-unlimited`).

pub mod act;
pub mod config;
pub mod diffusion;
pub mod processor;

use anyhow::{bail, Context, Result};
use config::{FeatureType, NormalizationMode, PolicyConfig};
use processor::StepStats;
use reflex_models::bundle::{
    stage_bundle, validate_denoiser_io, validate_encoder_io, validate_io, validate_manifest,
    BUNDLE_KIND,
};
use reflex_models::manifest::{
    ActionOutput, ActionSpec, BackendKind, CameraSpec, CaptureSpec, ColorOrder, ControlSpec,
    Convention, DiffusionSpec, Interpolation, Layout, Manifest, ModelFile, ModelRole,
    Normalization, PixelFormat, Precision, PreprocessSpec, ResizeDtype, ResizeSpec, StateSpec,
    FORMAT_VERSION, MANIFEST_FILE,
};
use reflex_models::output::{OutDir, Replace};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The state feature's key.
pub const STATE_KEY: &str = "observation.state";
/// The action feature's key.
pub const ACTION_KEY: &str = "action";
/// The key prefix of camera features.
pub const IMAGE_PREFIX: &str = "observation.images.";

/// The `reflex-tools import lerobot` flags (see the binary's `--help`).
#[derive(Debug, Clone)]
pub struct ImportArgs {
    /// The checkpoint folder (`.../pretrained_model`).
    pub dir: PathBuf,
    /// Output bundle folder (new, empty, or a bundle to replace with `force`).
    pub out: PathBuf,
    pub force: bool,
    /// Bundle name (default: the output folder's name).
    pub name: Option<String>,
    /// Control and chunk step rate in Hz: the dataset's `fps`.
    pub rate_hz: f64,
    /// The cameras' pixel format on the robot.
    pub capture_format: PixelFormat,
    /// Camera frame rate to negotiate.
    pub camera_fps: u32,
    /// Joint names, shared by state and action when both have this many dimensions (so the
    /// rate limiter can start from the measured position); default `state.i` / `action.i`.
    pub joint_names: Vec<String>,
    /// Unit of every joint (default `rad`).
    pub unit: String,
}

/// Imports the folder in `a.dir` into a bundle at `a.out` (staged, loaded back, then renamed into
/// place; nothing is written on error). Errors: a missing file, a config value reflex does not
/// reproduce, a statistics file that does not match the features, weights that do not fit,
/// each naming the file and field or key.
pub fn import(a: &ImportArgs) -> Result<()> {
    let out = OutDir::prepare(&a.out, Replace::ours_if(a.force), &BUNDLE_KIND)?;
    let progress = reflex_runtime::progress::Progress::spinner("import");
    progress.set_message("reading config.json and the processor files");
    let config = PolicyConfig::load(&a.dir)?;
    let scratch = out.scratch()?;
    let (mut manifest, files) = match config.kind.as_str() {
        "act" => {
            let (m, bytes) = import_act(a, &config, &progress)?;
            (m, vec![bytes])
        }
        "diffusion" => import_diffusion(a, &config, &progress, &scratch)?,
        other => bail!(
            "{}: `type` = \"{other}\" is not supported (supported: act, diffusion)",
            config.path.display()
        ),
    };
    progress.set_message("checking the graphs");
    validate_manifest(&manifest, &a.out.join(MANIFEST_FILE))?;
    let mut features = None;
    for (f, bytes) in manifest.models.iter().zip(&files) {
        let tmp = scratch.join(&f.file);
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        let io = reflex_runtime::infer::tract::graph_io(&tmp)?;
        match (f.role, &manifest.diffusion) {
            (ModelRole::Encoder, Some(d)) => {
                features = validate_encoder_io(&manifest, d, &io, &tmp)?;
            }
            (ModelRole::Denoiser, Some(d)) => {
                validate_denoiser_io(&manifest, d, &io, &tmp, features)?;
            }
            _ => validate_io(&manifest, &io, &tmp)?,
        }
    }
    progress.set_message("hashing, writing and loading the bundle back");
    let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    stage_bundle(&out, &mut manifest, &refs).with_context(|| {
        format!(
            "{}: the bundle does not load back, so nothing was written",
            a.out.display()
        )
    })?;
    out.commit()?;
    progress.finish();
    println!(
        "wrote {} ({} policy, {} bytes of model)",
        a.out.display(),
        config.kind,
        files.iter().map(Vec::len).sum::<usize>()
    );
    // What the checkpoint does not say and this import assumed: said once more here, as a
    // wrong control rate or unit is silent until the robot moves.
    println!(
        "  control rate {} Hz (--rate): the loop and the chunk's steps; it must be the training \
         dataset's fps (meta/info.json `fps`)",
        a.rate_hz
    );
    println!(
        "  joints in {} (--unit), named {} (--joint-names)",
        a.unit,
        if a.joint_names.is_empty() {
            "state.i / action.i".to_string()
        } else {
            a.joint_names.join(", ")
        }
    );
    println!(
        "  no [action.limits] yet: add them to {} before running on a robot (reflex run refuses \
         a bundle without them unless --allow-unlimited)",
        a.out.join(MANIFEST_FILE).display()
    );
    Ok(())
}

/// The features of one type, checked to be of the shapes reflex handles.
struct Features {
    cameras: Vec<(String, [usize; 3])>,
    state_dim: usize,
    action_dim: usize,
}

fn features(config: &PolicyConfig) -> Result<Features> {
    let p = config.path.display();
    let mut cameras = vec![];
    let mut state_dim = None;
    for (key, f) in &config.input_features {
        match f.kind {
            FeatureType::Visual => {
                let Some(cam) = key.strip_prefix(IMAGE_PREFIX) else {
                    bail!("{p}: input feature `{key}` is VISUAL but not `{IMAGE_PREFIX}<camera>`");
                };
                let [3, h, w] = f.shape[..] else {
                    bail!(
                        "{p}: input feature `{key}` has shape {:?}, expected [3, H, W] (RGB)",
                        f.shape
                    );
                };
                cameras.push((cam.to_string(), [3, h, w]));
            }
            FeatureType::State if key == STATE_KEY && f.shape.len() == 1 => {
                state_dim = Some(f.shape[0]);
            }
            _ => bail!(
                "{p}: input feature `{key}` ({:?}, shape {:?}) is not supported (supported: {STATE_KEY} [dim] and {IMAGE_PREFIX}<camera> [3, H, W])",
                f.kind,
                f.shape
            ),
        }
    }
    let state_dim =
        state_dim.with_context(|| format!("{p}: input feature `{STATE_KEY}` is missing"))?;
    if cameras.is_empty() {
        bail!("{p}: no `{IMAGE_PREFIX}<camera>` input feature (reflex runs vision policies)");
    }
    let mut action_dim = None;
    for (key, f) in &config.output_features {
        if key == ACTION_KEY && f.kind == FeatureType::Action && f.shape.len() == 1 {
            action_dim = Some(f.shape[0]);
        } else {
            bail!(
                "{p}: output feature `{key}` ({:?}, shape {:?}) is not supported (only {ACTION_KEY} [dim])",
                f.kind,
                f.shape
            );
        }
    }
    let action_dim =
        action_dim.with_context(|| format!("{p}: output feature `{ACTION_KEY}` is missing"))?;
    Ok(Features {
        cameras,
        state_dim,
        action_dim,
    })
}

/// The manifest normalization of a state or action feature with LeRobot's formulas.
fn normalization(mode: NormalizationMode, stats: &StepStats, key: &str) -> Result<Normalization> {
    let v = |s: &str| stats.get(key, s).map(<[f32]>::to_vec);
    let convention = Convention::Lerobot;
    Ok(match mode {
        NormalizationMode::MeanStd => Normalization::MeanStd {
            mean: v("mean")?,
            std: v("std")?,
            convention,
        },
        NormalizationMode::MinMax => Normalization::MinMax {
            min: v("min")?,
            max: v("max")?,
            convention,
        },
        NormalizationMode::Quantiles => Normalization::Quantile {
            q01: v("q01")?,
            q99: v("q99")?,
            convention,
        },
        NormalizationMode::Quantile10 => Normalization::Quantile10 {
            q10: v("q10")?,
            q90: v("q90")?,
            convention,
        },
        NormalizationMode::Identity => Normalization::Identity,
    })
}

/// An image's per-channel normalization as the preprocessing's `(x / 255 - mean) / std`:
/// MEAN_STD `(x - mean) / (std + 1e-8)`; MIN_MAX `2 (x - min) / d - 1` = `(x - (min + d / 2)) /
/// (d / 2)` with `d = max - min` (1e-8 where zero); IDENTITY mean 0, std 1. Quantile modes have
/// no per-channel form here and are refused.
fn image_normalization(
    mode: NormalizationMode,
    stats: &StepStats,
    key: &str,
    config: &Path,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let eps = Convention::LEROBOT_EPS;
    Ok(match mode {
        NormalizationMode::MeanStd => (
            stats.get(key, "mean")?.to_vec(),
            stats.get(key, "std")?.iter().map(|s| s + eps).collect(),
        ),
        NormalizationMode::MinMax => {
            let (lo, hi) = (stats.get(key, "min")?, stats.get(key, "max")?);
            let half: Vec<f32> = lo
                .iter()
                .zip(hi)
                .map(|(l, h)| if h - l == 0.0 { 0.5 * eps } else { 0.5 * (h - l) })
                .collect();
            (lo.iter().zip(&half).map(|(l, d)| l + d).collect(), half)
        }
        NormalizationMode::Identity => (vec![0.0; 3], vec![1.0; 3]),
        other => bail!(
            "{}: `normalization_mapping.VISUAL` = {other:?} is not supported for images (MEAN_STD, MIN_MAX or IDENTITY)",
            config.display()
        ),
    })
}

fn names(a: &ImportArgs, dim: usize, prefix: &str) -> Vec<String> {
    if a.joint_names.len() == dim {
        a.joint_names.clone()
    } else {
        (0..dim).map(|i| format!("{prefix}.{i}")).collect()
    }
}

/// What the bundle gets from the processor statistics, shared by every policy type: the
/// cameras (captured at the feature's size, VISUAL normalization as the preprocessing's
/// mean/std), the state's and the action's normalization (every feature matched both ways with
/// the pre- and postprocessor files).
struct Observation {
    cameras: Vec<CameraSpec>,
    state_norm: Normalization,
    action_norm: Normalization,
}

fn observation(a: &ImportArgs, config: &PolicyConfig, f: &Features) -> Result<Observation> {
    if !a.joint_names.is_empty()
        && a.joint_names.len() != f.state_dim
        && a.joint_names.len() != f.action_dim
    {
        bail!(
            "--joint-names has {} names; the state has {} dimensions and the action {}",
            a.joint_names.len(),
            f.state_dim,
            f.action_dim
        );
    }
    let all: BTreeMap<_, _> = config
        .input_features
        .iter()
        .chain(&config.output_features)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let pre = processor::read_step(
        &a.dir,
        processor::PREPROCESSOR_FILE,
        "normalizer_processor",
        &all,
        config,
    )?;
    let post = processor::read_step(
        &a.dir,
        processor::POSTPROCESSOR_FILE,
        "unnormalizer_processor",
        &config.output_features,
        config,
    )?;
    let action_norm = normalization(config.mode(FeatureType::Action), &post, ACTION_KEY)?;
    let pre_action = normalization(config.mode(FeatureType::Action), &pre, ACTION_KEY)?;
    if pre_action != action_norm {
        bail!(
            "{} and {}: the `{ACTION_KEY}` statistics differ between the preprocessor and the postprocessor",
            pre.path.display(),
            post.path.display()
        );
    }
    let state_norm = normalization(config.mode(FeatureType::State), &pre, STATE_KEY)?;

    let mut cameras = vec![];
    for (name, [_, h, w]) in &f.cameras {
        let key = format!("{IMAGE_PREFIX}{name}");
        let (mean, std) =
            image_normalization(config.mode(FeatureType::Visual), &pre, &key, &config.path)?;
        cameras.push(CameraSpec {
            name: name.clone(),
            onnx_input: key.clone(),
            capture: CaptureSpec {
                width: *w as u32,
                height: *h as u32,
                format: a.capture_format,
                fps: a.camera_fps,
            },
            preprocess: PreprocessSpec {
                crop: None,
                resize: ResizeSpec {
                    width: *w as u32,
                    height: *h as u32,
                    interpolation: Interpolation::Bilinear,
                    antialias: true,
                    dtype: ResizeDtype::Float,
                },
                color: ColorOrder::Rgb,
                mean,
                std,
                layout: Layout::Nchw,
            },
            max_age_ms: 200,
            viewpoint: None,
        });
    }
    Ok(Observation {
        cameras,
        state_norm,
        action_norm,
    })
}

/// The bundle's name: `--name`, else the output folder's name, else `fallback`.
fn bundle_name(a: &ImportArgs, fallback: &str) -> String {
    a.name.clone().unwrap_or_else(|| {
        a.out
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| fallback.into())
    })
}

fn import_act(
    a: &ImportArgs,
    config: &PolicyConfig,
    progress: &reflex_runtime::progress::Progress,
) -> Result<(Manifest, Vec<u8>)> {
    let c = config.act()?;
    let f = features(config)?;
    let Observation {
        cameras,
        state_norm,
        action_norm,
    } = observation(a, config, &f)?;
    let graph_cameras = f
        .cameras
        .iter()
        .map(|(name, [_, h, w])| act::ActCamera {
            input: format!("{IMAGE_PREFIX}{name}"),
            height: *h,
            width: *w,
        })
        .collect();

    progress.set_message("writing the ACT graph from model.safetensors");
    let weights = a.dir.join(act::WEIGHTS_FILE);
    let mut ckpt = act::Checkpoint::open(&weights)?;
    let spec = act::ActGraphSpec {
        config: c.clone(),
        cameras: graph_cameras,
        state_input: STATE_KEY.into(),
        state_dim: f.state_dim,
        action_output: ACTION_KEY.into(),
        action_dim: f.action_dim,
    };
    let bytes = act::build(&spec, &mut ckpt)?;

    let mut provenance = BTreeMap::new();
    provenance.insert(
        "source".to_string(),
        toml::Value::String(format!("LeRobot ACT checkpoint {}", a.dir.display())),
    );
    let name = bundle_name(a, "act");
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name,
        description: format!(
            "LeRobot ACT, {} camera(s), chunk {} of {} actions",
            f.cameras.len(),
            c.chunk_size,
            f.action_dim
        ),
        control: ControlSpec {
            rate_hz: a.rate_hz,
            chunk_rate_hz: None,
            steps_per_inference: c.n_action_steps,
            temporal_ensemble_m: c.temporal_ensemble_coeff,
            latency_compensation: true,
            watchdog_periods: 5,
        },
        models: vec![ModelFile {
            role: ModelRole::Policy,
            file: "policy.onnx".into(),
            sha256: "0".repeat(64),
            precision: Precision::Fp32,
            backends: vec![BackendKind::Tract, BackendKind::Tensorrt],
            data_files: vec![],
        }],
        cameras,
        state: StateSpec {
            onnx_input: Some(STATE_KEY.into()),
            names: names(a, f.state_dim, "state"),
            units: vec![a.unit.clone(); f.state_dim],
            normalization: state_norm,
            max_age_ms: 200,
        },
        action: ActionSpec {
            onnx_output: ACTION_KEY.into(),
            names: names(a, f.action_dim, "action"),
            units: vec![a.unit.clone(); f.action_dim],
            output: ActionOutput::Chunk {
                horizon: c.chunk_size,
            },
            normalization: action_norm,
            limits: None,
            parity_tolerance: None,
        },
        can: Default::default(),
        diffusion: None,
        provenance,
    };
    Ok((manifest, bytes))
}

/// A Diffusion Policy folder: the config checked first (cheap), then the statistics, then the
/// `encoder` and `denoiser` graphs written from `model.safetensors` into `scratch`
/// ([`diffusion::import`]). Returns the manifest (with its `[diffusion]` section) and the two
/// files' bytes, in `models` order.
fn import_diffusion(
    a: &ImportArgs,
    config: &PolicyConfig,
    progress: &reflex_runtime::progress::Progress,
    scratch: &Path,
) -> Result<(Manifest, Vec<Vec<u8>>)> {
    let dc = diffusion::DiffusionConfig::from_json(&config.raw, &config.path)?;
    dc.dims(&config.path)?;
    let f = features(config)?;
    let Observation {
        cameras,
        state_norm,
        action_norm,
    } = observation(a, config, &f)?;
    progress.set_message("writing the encoder and denoiser graphs from model.safetensors");
    let imp = diffusion::import(&a.dir, &config.raw, scratch)?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let files = vec![read(&imp.encoder)?, read(&imp.denoiser)?];
    let spec = DiffusionSpec {
        n_obs_steps: imp.n_obs_steps,
        horizon: imp.horizon,
        seed: 0,
        scheduler: imp.scheduler.clone(),
        features_output: diffusion::io::FEATURES.into(),
        sample_input: diffusion::io::SAMPLE.into(),
        timestep_input: diffusion::io::TIMESTEP.into(),
        global_cond_input: diffusion::io::GLOBAL_COND.into(),
    };
    let model = |role, file: &str| ModelFile {
        role,
        file: file.into(),
        sha256: "0".repeat(64),
        precision: Precision::Fp32,
        // TensorRT engines for the pair are not built yet (`reflex engine build` takes one
        // policy file): tract runs both.
        backends: vec![BackendKind::Tract],
        data_files: vec![],
    };
    let mut provenance = BTreeMap::new();
    provenance.insert(
        "source".to_string(),
        toml::Value::String(format!(
            "LeRobot Diffusion Policy checkpoint {}",
            a.dir.display()
        )),
    );
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        name: bundle_name(a, "diffusion"),
        description: format!(
            "LeRobot Diffusion Policy, {} camera(s), {:?} x {} steps, horizon {} of {} actions",
            f.cameras.len(),
            spec.scheduler.kind,
            spec.scheduler.num_inference_steps,
            imp.horizon,
            f.action_dim
        ),
        control: ControlSpec {
            rate_hz: a.rate_hz,
            chunk_rate_hz: None,
            steps_per_inference: imp.n_action_steps,
            temporal_ensemble_m: None,
            latency_compensation: true,
            watchdog_periods: 5,
        },
        models: vec![
            model(ModelRole::Encoder, "encoder.onnx"),
            model(ModelRole::Denoiser, "denoiser.onnx"),
        ],
        cameras,
        state: StateSpec {
            onnx_input: Some(STATE_KEY.into()),
            names: names(a, f.state_dim, "state"),
            units: vec![a.unit.clone(); f.state_dim],
            normalization: state_norm,
            max_age_ms: 200,
        },
        action: ActionSpec {
            onnx_output: diffusion::io::PREDICTION.into(),
            names: names(a, f.action_dim, "action"),
            units: vec![a.unit.clone(); f.action_dim],
            output: ActionOutput::Chunk {
                horizon: spec.output_horizon(),
            },
            normalization: action_norm,
            limits: None,
            parity_tolerance: None,
        },
        can: Default::default(),
        diffusion: Some(spec),
        provenance,
    };
    Ok((manifest, files))
}
