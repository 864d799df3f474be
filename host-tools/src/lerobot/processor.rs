//! A checkpoint's processor files (LeRobot 0.6.1's `DataProcessorPipeline.save_pretrained`):
//! `policy_preprocessor.json` with its `normalizer_processor` step and that step's statistics
//! (`policy_preprocessor_step_N_normalizer_processor.safetensors`), and `policy_postprocessor.json`
//! with its `unnormalizer_processor` step likewise.
//!
//! The statistics are flat float32 tensors named `<feature>.<stat>` (`observation.state.mean`,
//! `action.std`, `observation.images.top.mean` of shape `[3, 1, 1]`, ...). Matching is strict
//! both ways, because a stat that silently fails to apply moves the robot in the wrong units:
//! every feature the config normalizes needs its statistics, of its dimension, in both files that
//! use it; a statistic of a feature the policy does not have is an error (the dataset's own
//! bookkeeping columns, which LeRobot writes into the same file, excepted); the steps' features
//! and modes must be the config's.

use super::config::{Feature, FeatureType, NormalizationMode, PolicyConfig};
use anyhow::{bail, Context, Result};
use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The preprocessor's pipeline file.
pub const PREPROCESSOR_FILE: &str = "policy_preprocessor.json";
/// The postprocessor's pipeline file.
pub const POSTPROCESSOR_FILE: &str = "policy_postprocessor.json";

/// Columns every LeRobot dataset has; `meta/stats.json` holds statistics for them and LeRobot's
/// training script hands all of it to the normalizer, so they appear in its file (LeRobot
/// `datasets/utils.py`, `DEFAULT_FEATURES`).
const DATASET_COLUMNS: [&str; 5] = [
    "timestamp",
    "frame_index",
    "episode_index",
    "index",
    "task_index",
];

/// Steps that leave values unchanged on the way to the policy (a batch dimension, a device, a
/// rename with an empty map), by `registry_name`.
const PASSIVE_STEPS: [&str; 3] = [
    "rename_observations_processor",
    "to_batch_processor",
    "device_processor",
];

#[derive(Debug, Deserialize)]
struct Pipeline {
    #[serde(default)]
    steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
struct Step {
    #[serde(default)]
    registry_name: Option<String>,
    #[serde(default)]
    config: serde_json::Value,
    #[serde(default)]
    state_file: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NormalizerConfig {
    #[serde(default = "lerobot_eps")]
    eps: f64,
    features: BTreeMap<String, Feature>,
    norm_map: BTreeMap<String, NormalizationMode>,
}

fn lerobot_eps() -> f64 {
    1e-8
}

/// The statistics of one (un)normalizer step: feature -> stat -> values (flattened).
#[derive(Debug, Clone)]
pub struct StepStats {
    /// The `.safetensors` file they came from (for messages).
    pub path: PathBuf,
    pub stats: BTreeMap<String, BTreeMap<String, Vec<f32>>>,
}

impl StepStats {
    /// Statistic `stat` of `feature`, which [`read_step`] checked is present when the feature's
    /// mode needs it.
    pub fn get(&self, feature: &str, stat: &str) -> Result<&[f32]> {
        self.stats
            .get(feature)
            .and_then(|s| s.get(stat))
            .map(Vec::as_slice)
            .with_context(|| format!("{}: key `{feature}.{stat}` is missing", self.path.display()))
    }
}

/// The statistics a mode reads (LeRobot `NormalizerProcessorStep._apply_transform`).
pub fn needed(mode: NormalizationMode) -> &'static [&'static str] {
    match mode {
        NormalizationMode::MeanStd => &["mean", "std"],
        NormalizationMode::MinMax => &["min", "max"],
        NormalizationMode::Quantiles => &["q01", "q99"],
        NormalizationMode::Quantile10 => &["q10", "q90"],
        NormalizationMode::Identity => &[],
    }
}

/// The number of values a feature's statistic has: the state/action dimension, or the channel
/// count of an image (`[3, 1, 1]`).
fn stat_len(f: &Feature) -> usize {
    match f.kind {
        FeatureType::Visual => f.shape.first().copied().unwrap_or(0),
        _ => f.shape.iter().product(),
    }
}

/// Reads the pipeline `file` in `dir`, finds its `step_name` step (`normalizer_processor` or
/// `unnormalizer_processor`), checks its features and modes against `expected` and the config,
/// and reads and checks its statistics. Errors name the file and the step, feature or key.
pub fn read_step(
    dir: &Path,
    file: &str,
    step_name: &str,
    expected: &BTreeMap<String, Feature>,
    config: &PolicyConfig,
) -> Result<StepStats> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (LeRobot 0.5+ writes it next to config.json; older checkpoints kept the statistics inside model.safetensors and are not supported)",
            path.display()
        )
    })?;
    let pipeline: Pipeline = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a LeRobot processor pipeline", path.display()))?;
    let mut found = None;
    for (i, step) in pipeline.steps.iter().enumerate() {
        let name = step.registry_name.as_deref().unwrap_or("<unnamed>");
        if name == step_name {
            if found.is_some() {
                bail!("{}: step `{step_name}` appears twice", path.display());
            }
            found = Some(step);
        } else if name == "rename_observations_processor" {
            let empty = step
                .config
                .get("rename_map")
                .and_then(|m| m.as_object())
                .is_none_or(|m| m.is_empty());
            if !empty {
                bail!(
                    "{}: step {i} `{name}` renames features ({}): rename the features in config.json to the robot's names instead",
                    path.display(),
                    step.config["rename_map"]
                );
            }
        } else if !PASSIVE_STEPS.contains(&name) {
            bail!(
                "{}: step {i} `{name}` is not supported (reflex reproduces {step_name} and the passive steps {})",
                path.display(),
                PASSIVE_STEPS.join(", ")
            );
        }
    }
    let step = found.with_context(|| format!("{}: no `{step_name}` step", path.display()))?;
    let norm: NormalizerConfig =
        serde_json::from_value(step.config.clone()).with_context(|| {
            format!(
                "{}: step `{step_name}`: `config` lacks `features`/`norm_map` or is malformed",
                path.display()
            )
        })?;
    if (norm.eps - lerobot_eps()).abs() > 1e-15 {
        bail!(
            "{}: step `{step_name}`: `eps` = {} is not LeRobot's 1e-8 (the bundle's `lerobot` convention)",
            path.display(),
            norm.eps
        );
    }
    for (key, f) in expected {
        match norm.features.get(key) {
            None => bail!(
                "{}: step `{step_name}`: feature `{key}` of {} is missing from `features`",
                path.display(),
                config.path.display()
            ),
            Some(g) if g != f => bail!(
                "{}: step `{step_name}`: feature `{key}` is {g:?} here but {f:?} in {}",
                path.display(),
                config.path.display()
            ),
            Some(_) => {}
        }
    }
    if let Some(extra) = norm.features.keys().find(|k| !expected.contains_key(*k)) {
        bail!(
            "{}: step `{step_name}`: feature `{extra}` is not a feature of the policy in {}",
            path.display(),
            config.path.display()
        );
    }
    for f in expected.values() {
        let kind = format!("{:?}", f.kind).to_uppercase();
        let here = norm.norm_map.get(&kind).copied();
        let there = config.normalization_mapping.get(&kind).copied();
        if here.unwrap_or(NormalizationMode::Identity)
            != there.unwrap_or(NormalizationMode::Identity)
        {
            bail!(
                "{}: step `{step_name}`: `norm_map.{kind}` is {here:?} but `normalization_mapping.{kind}` is {there:?} in {}",
                path.display(),
                config.path.display()
            );
        }
    }
    let state_file = step.state_file.as_deref().with_context(|| {
        format!(
            "{}: step `{step_name}` has no `state_file`: the checkpoint was saved without dataset statistics",
            path.display()
        )
    })?;
    let stats_path = dir.join(state_file);
    let stats = read_stats(&stats_path, config)?;
    for (key, f) in expected {
        for stat in needed(config.mode(f.kind)) {
            let v = stats.get(key).and_then(|s| s.get(*stat)).with_context(|| {
                format!(
                    "{}: key `{key}.{stat}` is missing ({key} is {:?}-normalized in {})",
                    stats_path.display(),
                    config.mode(f.kind),
                    config.path.display()
                )
            })?;
            if v.len() != stat_len(f) {
                bail!(
                    "{}: key `{key}.{stat}` has {} values, feature `{key}` of shape {:?} needs {}",
                    stats_path.display(),
                    v.len(),
                    f.shape,
                    stat_len(f)
                );
            }
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                bail!("{}: key `{key}.{stat}` holds {bad}", stats_path.display());
            }
        }
    }
    Ok(StepStats {
        path: stats_path,
        stats,
    })
}

/// Reads a normalizer's `.safetensors` (flat f32 tensors `<feature>.<stat>`). Every key must be a
/// statistic of one of the config's features, or of a dataset bookkeeping column.
fn read_stats(
    path: &Path,
    config: &PolicyConfig,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<f32>>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{}: not a valid safetensors file", path.display()))?;
    let mut out: BTreeMap<String, BTreeMap<String, Vec<f32>>> = BTreeMap::new();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    for key in names {
        let Some((feature, stat)) = key.rsplit_once('.') else {
            bail!("{}: key `{key}` is not `<feature>.<stat>`", path.display());
        };
        if DATASET_COLUMNS.contains(&feature) {
            continue;
        }
        if !config.input_features.contains_key(feature)
            && !config.output_features.contains_key(feature)
        {
            bail!(
                "{}: key `{key}`: `{feature}` is not a feature of the policy in {} (a stats file of another policy or dataset?)",
                path.display(),
                config.path.display()
            );
        }
        let t = st
            .tensor(&key)
            .with_context(|| format!("{}: key `{key}` is unreadable", path.display()))?;
        if t.dtype() != Dtype::F32 {
            bail!(
                "{}: key `{key}` is {:?}, expected F32",
                path.display(),
                t.dtype()
            );
        }
        let values = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        out.entry(feature.to_string())
            .or_default()
            .insert(stat.to_string(), values);
    }
    Ok(out)
}
