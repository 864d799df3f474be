//! Normalization statistics, imported from what users already have.
//!
//! Silently unnormalized data is one of the most reported failures of LeRobot and openpi
//! deployments: a stats file whose keys do not line up with the policy's features gets ignored and
//! the robot moves in the wrong units. So import is strict where it matters: a stats entry of a
//! normalizer file that matches no state/action feature is an error, and a feature the chosen
//! normalization needs but the file lacks is an error naming what the file does have. Statistics a
//! normalization does not use (`count`, `q10`, `q50`, `q90`, ... ) are ignored and listed at
//! `--verbose`.
//!
//! Formats read, and the [`Convention`] (whose formula, epsilon included) each implies:
//! - LeRobot normalizer safetensors (`policy_preprocessor_step_*_normalizer_processor.safetensors`):
//!   keys `observation.state.mean`, `action.std`, ... (also the `/` separator and the older
//!   policy-buffer form `normalize_inputs.buffer_observation_state.mean`); tensors of any shape
//!   are flattened by their declared shape; image feature keys (`observation.image*`) are skipped:
//!   images are normalized by the bundle's preprocessing spec. Convention `lerobot` (LeRobot
//!   0.6's formulas; the older policy-buffer files come from LeRobot < 0.4, whose MIN_MAX added
//!   1e-8 to every range rather than only to a zero one: a relative difference of 1e-8 / range,
//!   1e-5 for a range of 1e-3).
//! - LeRobot dataset `meta/stats.json`: `{ "observation.state": {min, max, mean, std, count, q01,
//!   ...}, "action": {...}, "observation.images.front": {"mean": [[[x]]], ...}, "timestamp": ...}`;
//!   nested lists are flattened (they must be rectangular), the dataset's other columns
//!   (`timestamp`, `frame_index`, images, ...) are skipped. Recognized by its bookkeeping columns
//!   or a `count` statistic. Convention `lerobot`.
//! - openpi `norm_stats.json`: `{ "norm_stats": { "state": {mean, std, q01, q99}, "actions": {...} } }`;
//!   statistics longer than the robot's dimension (openpi pads to the model's 32 dimensions) are
//!   sliced to it, as openpi's `Normalize` does. Convention `openpi`.
//! - plain TOML or JSON: `{ state = { mean = [..], std = [..] }, action = { min = [..], max = [..] } }`
//!   (`observation.state` / `actions` accepted as aliases). Convention `plain`.

use anyhow::{anyhow, bail, Context, Result};
use reflex_models::manifest::{Convention, Manifest, Normalization};
use std::collections::BTreeMap;
use std::path::Path;

/// Statistics per feature (`state`, `action`) per statistic (`mean`, `std`, `min`, `max`, `q01`,
/// `q99`, and whatever else the file holds), each flattened to one value per dimension.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub features: BTreeMap<String, BTreeMap<String, Vec<f32>>>,
    /// Keys present in the file but deliberately not used (image statistics, dataset columns).
    pub skipped: Vec<String>,
    /// Image statistics by feature (`observation.images.front`): not imported (the bundle's
    /// preprocessing normalizes images) but compared with it.
    pub images: BTreeMap<String, BTreeMap<String, Vec<f32>>>,
    /// The convention of the framework that writes this format (see the module docs).
    pub convention: Convention,
}

/// Columns every LeRobot dataset has and `meta/stats.json` holds statistics for; their presence
/// marks a dataset stats file (LeRobot `datasets/utils.py`, `DEFAULT_FEATURES`).
const LEROBOT_DATASET_COLUMNS: [&str; 5] = [
    "timestamp",
    "frame_index",
    "episode_index",
    "index",
    "task_index",
];

/// The statistics each normalization kind reads.
fn needed(kind: &str) -> Result<&'static [&'static str]> {
    Ok(match kind {
        "mean_std" => &["mean", "std"],
        "min_max" => &["min", "max"],
        "quantile" => &["q01", "q99"],
        "quantile10" => &["q10", "q90"],
        "identity" => &[],
        other => bail!(
            "unknown normalization `{other}` (mean_std, min_max, quantile, quantile10, identity)"
        ),
    })
}

/// Maps a feature name as spelled by LeRobot / openpi / users to `state` or `action`.
fn canonical_feature(name: &str) -> Option<&'static str> {
    match name {
        "state" | "observation.state" | "observation_state" | "obs.state" => Some("state"),
        "action" | "actions" => Some("action"),
        _ => None,
    }
}

fn is_image_feature(name: &str) -> bool {
    name.starts_with("observation.image") || name.starts_with("observation_image")
}

impl Stats {
    fn insert(&mut self, path: &Path, feature: &str, stat: &str, values: Vec<f32>) -> Result<()> {
        if is_image_feature(feature) {
            self.skipped.push(format!("{feature}.{stat}"));
            self.images
                .entry(feature.to_string())
                .or_default()
                .insert(stat.to_string(), values);
            return Ok(());
        }
        let f = canonical_feature(feature).ok_or_else(|| {
            anyhow!(
                "{}: stats key `{feature}.{stat}` matches no state or action feature of the policy \
                 (expected observation.state / state or action / actions)",
                path.display()
            )
        })?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: `{feature}.{stat}[{i}]` is {} (must be finite)",
                path.display(),
                values[i]
            );
        }
        let stats = self.features.entry(f.to_string()).or_default();
        if let Some(existing) = stats.get(stat) {
            if *existing != values {
                bail!(
                    "{}: `{feature}.{stat}` is given twice, with different values (under two \
                     spellings of the {f} feature)",
                    path.display()
                );
            }
        }
        stats.insert(stat.to_string(), values);
        Ok(())
    }

    /// Reads a stats file, choosing the format from its extension and content.
    pub fn load(path: &Path) -> Result<Stats> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "safetensors" => Self::load_safetensors(path),
            "json" => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not valid JSON", path.display()))?;
                match v.get("norm_stats") {
                    Some(root) => Self::from_json(path, root, Convention::Openpi),
                    None => Self::from_json(path, &v, json_convention(&v)),
                }
            }
            "toml" => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let v: toml::Value = toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
                let j = serde_json::to_value(v)?;
                Self::from_json(path, &j, Convention::Plain)
            }
            other => bail!(
                "{}: unknown stats format `.{other}` (expected .safetensors (LeRobot), .json (LeRobot meta/stats.json, openpi norm_stats.json or plain) or .toml)",
                path.display()
            ),
        }
    }

    /// `{feature: {stat: [values, possibly nested]}}`. In a LeRobot dataset file every column has
    /// statistics: those that are not the state or the action are skipped, not refused.
    fn from_json(path: &Path, v: &serde_json::Value, convention: Convention) -> Result<Stats> {
        let dataset = convention == Convention::Lerobot;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("{}: expected a table of features", path.display()))?;
        let mut s = Stats {
            convention,
            ..Stats::default()
        };
        for (feature, stats) in obj {
            let so = stats.as_object().ok_or_else(|| {
                anyhow!(
                    "{}: `{feature}` must be a table of statistics",
                    path.display()
                )
            })?;
            let skip = dataset && canonical_feature(feature).is_none();
            for (stat, vals) in so {
                if is_image_feature(feature) {
                    let mut values = vec![];
                    match flatten_json(vals, &mut values) {
                        Ok(()) => s.insert(path, feature, stat, values)?,
                        Err(_) => s.skipped.push(format!("{feature}.{stat}")),
                    }
                    continue;
                }
                if skip {
                    s.skipped.push(format!("{feature}.{stat}"));
                    continue;
                }
                let mut values = vec![];
                flatten_json(vals, &mut values)
                    .map_err(|problem| anyhow!("{}: `{feature}.{stat}{problem}", path.display()))?;
                s.insert(path, feature, stat, values)?;
            }
        }
        Ok(s)
    }

    fn load_safetensors(path: &Path) -> Result<Stats> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let mut s = Stats {
            convention: Convention::Lerobot,
            ..Stats::default()
        };
        let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
        names.sort();
        for key in names {
            let t = st
                .tensor(&key)
                .map_err(|e| anyhow!("{}: {key}: {e}", path.display()))?;
            // Row-major data of any declared shape (image stats are [3, 1, 1], count [1]).
            let values = tensor_f32(path, &key, &t)?;
            // `observation.state.mean`, `observation.state/mean`, `normalize_inputs.buffer_observation_state.mean`
            let k = key.replace('/', ".");
            let k = k
                .strip_prefix("normalize_inputs.buffer_")
                .or_else(|| k.strip_prefix("normalize_targets.buffer_"))
                .or_else(|| k.strip_prefix("unnormalize_outputs.buffer_"))
                .map(|r| r.to_string())
                .unwrap_or(k.clone());
            let (feature, stat) = k
                .rsplit_once('.')
                .ok_or_else(|| anyhow!("{}: key `{key}` is not FEATURE.STAT", path.display()))?;
            let feature = feature.replace("observation_", "observation.");
            // The same buffer is often saved by both normalize_inputs and unnormalize_outputs:
            // `insert` accepts a repeat with equal values and refuses a disagreeing one.
            s.insert(path, &feature, stat, values)?;
        }
        Ok(s)
    }

    /// Builds the normalization of one feature (`state` or `action`) with `dim` dimensions, with
    /// this file's convention (`kind`: mean_std, min_max, quantile, quantile10, identity).
    /// Statistics must have `dim` values; under openpi longer ones are sliced to the first `dim`
    /// (openpi's `Normalize` slices `stats[..., :x.shape[-1]]`; its `Unnormalize` runs on the
    /// padded model output, whose first `dim` values are the robot's).
    pub fn normalization(
        &self,
        feature: &str,
        kind: &str,
        dim: usize,
        source: &Path,
    ) -> Result<Normalization> {
        let have = self.features.get(feature);
        let get = |stat: &str| -> Result<Vec<f32>> {
            let v = have.and_then(|m| m.get(stat)).ok_or_else(|| {
                anyhow!(
                    "{}: {feature} normalization `{kind}` needs `{feature}.{stat}`, the file has {}",
                    source.display(),
                    have.map(|m| m.keys().map(|k| format!("{feature}.{k}")).collect::<Vec<_>>().join(", "))
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| format!("no {feature} statistics"))
                )
            })?;
            if self.convention == Convention::Openpi && v.len() > dim {
                log::info!(
                    "{}: `{feature}.{stat}` has {} values; using the first {dim} (the policy's \
                     {feature} dimension), as openpi does with padded statistics",
                    source.display(),
                    v.len()
                );
                return Ok(v[..dim].to_vec());
            }
            if v.len() != dim {
                bail!(
                    "{}: `{feature}.{stat}` has {} values, the policy's {feature} has {dim} names",
                    source.display(),
                    v.len()
                );
            }
            Ok(v.clone())
        };
        let convention = self.convention;
        needed(kind)?;
        Ok(match kind {
            "mean_std" => Normalization::MeanStd {
                mean: get("mean")?,
                std: get("std")?,
                convention,
            },
            "min_max" => Normalization::MinMax {
                min: get("min")?,
                max: get("max")?,
                convention,
            },
            "quantile" => Normalization::Quantile {
                q01: get("q01")?,
                q99: get("q99")?,
                convention,
            },
            "quantile10" => Normalization::Quantile10 {
                q10: get("q10")?,
                q90: get("q90")?,
                convention,
            },
            _ => Normalization::Identity,
        })
    }

    /// The statistics of the file that the normalizations `kinds` (per feature) do not read, and
    /// the skipped keys: what `--verbose` lists.
    fn unused(&self, kinds: &[(&str, &str)]) -> Vec<String> {
        let mut out = vec![];
        for (feature, stats) in &self.features {
            let used = kinds
                .iter()
                .find(|(f, _)| f == feature)
                .and_then(|(_, k)| needed(k).ok())
                .unwrap_or(&[]);
            out.extend(
                stats
                    .keys()
                    .filter(|k| !used.contains(&k.as_str()))
                    .map(|k| format!("{feature}.{k}")),
            );
        }
        out.extend(self.skipped.iter().cloned());
        out
    }
}

/// The convention of a JSON stats file without openpi's `norm_stats` root: LeRobot's when it is
/// a dataset's `meta/stats.json` (bookkeeping columns, or the `count` statistic LeRobot writes),
/// else plain.
fn json_convention(v: &serde_json::Value) -> Convention {
    let Some(obj) = v.as_object() else {
        return Convention::Plain;
    };
    let columns = LEROBOT_DATASET_COLUMNS.iter().any(|c| obj.contains_key(*c));
    let count = obj
        .values()
        .any(|s| s.as_object().is_some_and(|m| m.contains_key("count")));
    if columns || count {
        Convention::Lerobot
    } else {
        Convention::Plain
    }
}

/// Sets the manifest's state and action normalization from the stats file at `path`:
/// `state_kind` / `action_kind` name the normalization (mean_std, min_max, quantile, quantile10,
/// identity), `convention` overrides the one implied by the file's format. Logs (warn) each joint
/// that never moved in the dataset (zero spread), and (debug) the statistics not used.
pub fn apply(
    m: &mut Manifest,
    path: &Path,
    state_kind: &str,
    action_kind: &str,
    convention: Option<Convention>,
) -> Result<()> {
    let mut s = Stats::load(path)?;
    if let Some(c) = convention {
        s.convention = c;
    }
    log::info!(
        "{}: normalization convention `{}`{}",
        path.display(),
        s.convention.as_str(),
        if convention.is_some() {
            " (as given)"
        } else {
            " (from the file's format; --norm-convention overrides)"
        }
    );
    let mut kinds = vec![("action", action_kind)];
    if !m.state.names.is_empty() {
        m.state.normalization = s.normalization("state", state_kind, m.state.names.len(), path)?;
        kinds.push(("state", state_kind));
    } else if s.features.contains_key("state") {
        bail!(
            "{}: has state statistics but the policy takes no state",
            path.display()
        );
    }
    m.action.normalization = s.normalization("action", action_kind, m.action.names.len(), path)?;
    for (feature, n, names) in [
        ("state", &m.state.normalization, &m.state.names),
        ("action", &m.action.normalization, &m.action.names),
    ] {
        warn_constant(path, feature, n, names);
    }
    if path.extension().is_some_and(|e| e == "safetensors") {
        // A normalizer file holds the image statistics the policy was trained with (a dataset's
        // meta/stats.json may not: LeRobot can replace them by ImageNet's at training time).
        compare_image_stats(path, &s, m);
    }
    let unused = s.unused(&kinds);
    if !unused.is_empty() {
        log::debug!(
            "{}: not used by this normalization: {}",
            path.display(),
            unused.join(", ")
        );
    }
    m.provenance.insert(
        "normalization_stats".into(),
        toml::Value::String(path.display().to_string()),
    );
    Ok(())
}

/// Warns when a normalizer's image mean/std differ from the bundle's preprocessing of the same
/// camera (`observation.images.NAME`, or the only image feature for a one-camera policy): the
/// preprocessing is what the robot applies, and LeRobot's MEAN_STD image normalization used the
/// file's values in training.
fn compare_image_stats(path: &Path, s: &Stats, m: &Manifest) {
    for cam in &m.cameras {
        let key = format!("observation.images.{}", cam.name);
        // A one-camera policy's only image feature may be named otherwise (`observation.image`).
        let only = m.cameras.len() == 1 && s.images.len() == 1;
        let stats = match s.images.get(&key) {
            Some(st) => Some(st),
            None if only => s.images.values().next(),
            None => None,
        };
        let Some(stats) = stats else { continue };
        let p = &cam.preprocess;
        let differs = |name: &str, ours: &[f32]| {
            stats.get(name).is_some_and(|v| {
                v.len() == ours.len() && v.iter().zip(ours).any(|(a, b)| (a - b).abs() > 1e-4)
            })
        };
        if differs("mean", &p.mean) || differs("std", &p.std) {
            log::warn!(
                "{}: camera `{}`: the file's image statistics (mean {:?}, std {:?}) differ from \
                 the bundle's preprocessing (mean {:?}, std {:?}); if the policy normalizes \
                 images by MEAN_STD (LeRobot's default for ACT and diffusion), set the camera's \
                 preprocess mean/std to the file's",
                path.display(),
                cam.name,
                stats.get("mean").map(Vec::as_slice).unwrap_or_default(),
                stats.get("std").map(Vec::as_slice).unwrap_or_default(),
                p.mean,
                p.std
            );
        }
    }
}

/// Warns about each dimension of `n` whose statistics have zero spread: a joint that never moved
/// in the dataset. Under an epsilon convention it normalizes exactly as in training; under
/// `plain` the bundle's validation refuses it next, naming the fix.
fn warn_constant(path: &Path, feature: &str, n: &Normalization, names: &[String]) {
    if n.convention() == Convention::Plain {
        return;
    }
    for i in n.constant_dims() {
        let (spread, value) = match n {
            Normalization::MeanStd { mean, .. } => ("std = 0", mean[i]),
            _ => {
                let v = n.vectors();
                ("equal range bounds", v.first().map_or(0.0, |(_, lo)| lo[i]))
            }
        };
        let effect = if feature == "state" {
            format!(
                "the network sees a huge input for any reading other than {value}, as it would \
                 have in training"
            )
        } else {
            format!("its command is the constant {value}, as in training")
        };
        log::warn!(
            "{}: {feature} `{}` never moved in the dataset ({spread}): normalized with {}'s \
             epsilon exactly as in training; {effect}",
            path.display(),
            names[i],
            n.convention().as_str()
        );
    }
}

/// A tensor's values, row-major, as f32, whatever its declared shape.
fn tensor_f32(path: &Path, key: &str, t: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    use safetensors::Dtype;
    let d = t.data();
    Ok(match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        // Counts (`count`) may be saved as integers.
        Dtype::I64 => d
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::I32 => d
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        other => bail!(
            "{}: `{key}` has dtype {other:?}; statistics must be floating point (or integer \
             counts)",
            path.display()
        ),
    })
}

/// Appends the numbers of a possibly nested list, row-major, to `out`; a bare number is a list of
/// one. Nested lists must be rectangular (LeRobot writes image stats as `[[[x]], [[y]], [[z]]]`).
/// The error completes "`feature.stat" (`[i]` = flat index of the bad value).
fn flatten_json(v: &serde_json::Value, out: &mut Vec<f32>) -> Result<(), String> {
    fn shape(v: &serde_json::Value) -> Vec<usize> {
        match v {
            serde_json::Value::Array(a) => {
                let mut s = vec![a.len()];
                s.extend(a.first().map(shape).unwrap_or_default());
                s
            }
            _ => vec![],
        }
    }
    fn walk(v: &serde_json::Value, want: &[usize], out: &mut Vec<f32>) -> Result<(), String> {
        match (v, want.split_first()) {
            (serde_json::Value::Array(a), Some((&n, inner))) if a.len() == n => {
                a.iter().try_for_each(|x| walk(x, inner, out))
            }
            (serde_json::Value::Array(_), _) | (_, Some(_)) => Err(format!(
                "` is not a rectangular list (shape {want:?} expected at value {})",
                out.len()
            )),
            (x, None) => {
                let f = x.as_f64().ok_or_else(|| {
                    format!(
                        "[{}]` is not a finite number (NaN, infinity or null)",
                        out.len()
                    )
                })?;
                out.push(f as f32);
                Ok(())
            }
        }
    }
    match v {
        serde_json::Value::Array(_) | serde_json::Value::Number(_) => walk(v, &shape(v), out),
        _ => Err("` must be a list of numbers".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("reflex-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn openpi_norm_stats() {
        let p = write(
            "norm_stats.json",
            r#"{"norm_stats": {"state": {"mean": [0.1, 0.2], "std": [1.0, 2.0], "q01": [-1, -2], "q99": [1, 2]},
                               "actions": {"mean": [0, 0], "std": [1, 1], "q01": [-3, -3], "q99": [3, 3]}}}"#,
        );
        let s = Stats::load(&p).expect("loads");
        let n = s
            .normalization("action", "quantile", 2, &p)
            .expect("quantile");
        assert_eq!(
            n,
            Normalization::Quantile {
                q01: vec![-3.0, -3.0],
                q99: vec![3.0, 3.0],
                convention: Convention::Openpi,
            }
        );
        let n = s
            .normalization("state", "mean_std", 2, &p)
            .expect("mean_std");
        assert_eq!(
            n,
            Normalization::MeanStd {
                mean: vec![0.1, 0.2],
                std: vec![1.0, 2.0],
                convention: Convention::Openpi,
            }
        );
    }

    #[test]
    fn unknown_key_and_missing_stat_are_errors() {
        let p = write(
            "bad.json",
            r#"{"observation.environment_state": {"mean": [1.0]}}"#,
        );
        let e = Stats::load(&p).expect_err("unknown feature").to_string();
        assert!(
            e.contains("observation.environment_state.mean") && e.contains("matches no"),
            "{e}"
        );
        let p = write("partial.toml", "[state]\nmean = [0.0]\nstd = [1.0]\n");
        let s = Stats::load(&p).expect("loads");
        let e = s
            .normalization("action", "mean_std", 1, &p)
            .expect_err("no action")
            .to_string();
        assert!(
            e.contains("action.mean") && e.contains("no action statistics"),
            "{e}"
        );
        let e = s
            .normalization("state", "min_max", 1, &p)
            .expect_err("no min")
            .to_string();
        assert!(
            e.contains("state.min") && e.contains("state.mean, state.std"),
            "{e}"
        );
        let e = s
            .normalization("state", "mean_std", 3, &p)
            .expect_err("dims")
            .to_string();
        assert!(e.contains("has 1 values") && e.contains("3 names"), "{e}");
    }

    #[test]
    fn nan_stat_is_an_error() {
        let p = write("nan.toml", "[action]\nmean = [0.0, nan]\n");
        let e = Stats::load(&p).expect_err("nan").to_string();
        assert!(e.contains("action.mean[1]") && e.contains("NaN"), "{e}");
        let p = write("nan.json", r#"{"action": {"std": [1.0, NaN]}}"#);
        assert!(Stats::load(&p).is_err());
    }

    #[test]
    fn lerobot_safetensors() {
        use safetensors::tensor::TensorView;
        let mean: Vec<u8> = [0.5f32, -0.5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let std: Vec<u8> = [2.0f32, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let img: Vec<u8> = [0.4f32; 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = vec![
            (
                "observation.state.mean",
                TensorView::new(safetensors::Dtype::F32, vec![2], &mean).expect("t"),
            ),
            (
                "observation.state.std",
                TensorView::new(safetensors::Dtype::F32, vec![2], &std).expect("t"),
            ),
            (
                "action.mean",
                TensorView::new(safetensors::Dtype::F32, vec![2], &mean).expect("t"),
            ),
            (
                "action.std",
                TensorView::new(safetensors::Dtype::F32, vec![2], &std).expect("t"),
            ),
            (
                "observation.images.top.mean",
                TensorView::new(safetensors::Dtype::F32, vec![3], &img).expect("t"),
            ),
        ];
        let bytes = safetensors::serialize(tensors, &None).expect("serialize");
        let dir = std::env::temp_dir().join(format!("reflex-stats-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp");
        let p = dir.join("stats.safetensors");
        std::fs::write(&p, bytes).expect("write");
        let s = Stats::load(&p).expect("loads");
        assert_eq!(s.skipped, vec!["observation.images.top.mean".to_string()]);
        assert_eq!(
            s.normalization("state", "mean_std", 2, &p).expect("state"),
            Normalization::MeanStd {
                mean: vec![0.5, -0.5],
                std: vec![2.0, 4.0],
                convention: Convention::Lerobot,
            }
        );
        assert!(s.normalization("action", "mean_std", 2, &p).is_ok());
    }

    fn case(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/stats")
            .join(name)
    }

    /// `expected_meanstd.json`'s `{state,action}_{mean,std}`, as f32 (the files store f32).
    fn expected(key: &str) -> Vec<f32> {
        let text = std::fs::read_to_string(case("expected_meanstd.json")).expect("read");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        v[key]
            .as_array()
            .expect("list")
            .iter()
            .map(|x| x.as_f64().expect("number") as f32)
            .collect()
    }

    fn mean_std(s: &Stats, feature: &str, p: &Path) -> (Vec<f32>, Vec<f32>, Convention) {
        match s
            .normalization(feature, "mean_std", 6, p)
            .expect("mean_std")
        {
            Normalization::MeanStd {
                mean,
                std,
                convention,
            } => (mean, std, convention),
            other => panic!("{other:?}"),
        }
    }

    /// LeRobot's normalizer file (with count, q10, q50, q90) and a dataset's meta/stats.json
    /// (nested image stats, bookkeeping columns) both import the expected mean/std, under
    /// LeRobot's convention, with everything else skipped or unused.
    #[test]
    fn lerobot_files_as_they_exist() {
        for file in ["normalizer_processor.safetensors", "meta_stats.json"] {
            let p = case(file);
            let s = Stats::load(&p).unwrap_or_else(|e| panic!("{file}: {e:#}"));
            assert_eq!(s.convention, Convention::Lerobot, "{file}");
            for f in ["state", "action"] {
                let (mean, std, conv) = mean_std(&s, f, &p);
                assert_eq!(mean, expected(&format!("{f}_mean")), "{file} {f}");
                assert_eq!(std, expected(&format!("{f}_std")), "{file} {f}");
                assert_eq!(conv, Convention::Lerobot);
            }
            // The other statistics are there for other normalizations, and listed as unused.
            let q10 = match s.normalization("action", "quantile10", 6, &p).expect("q10") {
                Normalization::Quantile10 { q10, .. } => q10,
                other => panic!("{other:?}"),
            };
            assert_eq!(q10[0], -0.961_282, "{file}");
            let unused = s.unused(&[("state", "mean_std"), ("action", "mean_std")]);
            for k in [
                "state.count",
                "state.q10",
                "state.q50",
                "state.q90",
                "action.min",
                "observation.images.front.mean",
                "observation.images.front.count",
            ] {
                assert!(
                    unused.iter().any(|u| u == k),
                    "{file}: {k} not in {unused:?}"
                );
            }
            assert!(!unused.iter().any(|u| u == "state.mean"), "{unused:?}");
        }
        // The dataset file's bookkeeping columns are skipped, not refused.
        let s = Stats::load(&case("meta_stats.json")).expect("loads");
        assert!(
            s.skipped.iter().any(|k| k == "frame_index.q99"),
            "{:?}",
            s.skipped
        );
        assert!(
            s.skipped.iter().any(|k| k == "task_index.std"),
            "{:?}",
            s.skipped
        );
    }

    /// Nested lists are flattened by their shape; a ragged one is an error naming the key.
    #[test]
    fn nested_lists() {
        let p = write(
            "nested.json",
            r#"{"state": {"mean": [[0.5], [1.5]], "std": [[[1.0, 2.0]]]}}"#,
        );
        let s = Stats::load(&p).expect("loads");
        let n = s
            .normalization("state", "mean_std", 2, &p)
            .expect("mean_std");
        assert_eq!(
            n,
            Normalization::MeanStd {
                mean: vec![0.5, 1.5],
                std: vec![1.0, 2.0],
                convention: Convention::Plain,
            }
        );
        let p = write("ragged.json", r#"{"state": {"mean": [[0.5], [1.5, 2.5]]}}"#);
        let e = Stats::load(&p).expect_err("ragged").to_string();
        assert!(e.contains("state.mean") && e.contains("rectangular"), "{e}");
        let p = write("null.json", r#"{"state": {"mean": [[0.5], [null]]}}"#);
        let e = Stats::load(&p).expect_err("null").to_string();
        assert!(
            e.contains("state.mean[1]`") && e.contains("not a finite"),
            "{e}"
        );
    }

    /// openpi pads statistics to the model's 32 dimensions; a 6-joint robot uses the first 6, as
    /// openpi's `Normalize` slices them. Other conventions keep refusing a length mismatch.
    #[test]
    fn openpi_padded_stats_are_sliced() {
        let v: Vec<f32> = (0..32).map(|i| i as f32 * 0.25).collect();
        let std: Vec<f32> = (0..32).map(|i| 1.0 + i as f32).collect();
        let text = serde_json::json!({"norm_stats": {
            "state": {"mean": v, "std": std, "q01": v, "q99": std},
            "actions": {"mean": v, "std": std, "q01": v, "q99": std}}});
        let p = write("padded_norm_stats.json", &text.to_string());
        let s = Stats::load(&p).expect("loads");
        assert_eq!(
            s.normalization("action", "quantile", 6, &p)
                .expect("quantile"),
            Normalization::Quantile {
                q01: vec![0.0, 0.25, 0.5, 0.75, 1.0, 1.25],
                q99: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                convention: Convention::Openpi,
            }
        );
        let short = Stats {
            convention: Convention::Openpi,
            ..s.clone()
        };
        assert!(short.normalization("state", "mean_std", 40, &p).is_err());
        let plain = Stats {
            convention: Convention::Plain,
            ..s
        };
        let e = plain
            .normalization("state", "mean_std", 6, &p)
            .expect_err("plain: lengths must match")
            .to_string();
        assert!(e.contains("has 32 values"), "{e}");
    }

    /// A gripper that never moved: imported under LeRobot's convention, std 0 kept; the bundle
    /// validation accepts it there (see models/tests/normalization.rs).
    #[test]
    fn constant_joint_stats() {
        let p = case("stats_gripper_constant.safetensors");
        let s = Stats::load(&p).expect("loads");
        let (mean, std, conv) = mean_std(&s, "state", &p);
        assert_eq!((mean[5], std[5], conv), (0.035, 0.0, Convention::Lerobot));
        let n = s
            .normalization("action", "min_max", 6, &p)
            .expect("min_max");
        assert_eq!(n.constant_dims(), vec![5]);
        // LeRobot: max == min -> the range is 1e-8, so the recorded 0.035 is -1 and back.
        let a = n.affine(5);
        assert_eq!((a.normalize(0.035), a.unnormalize(-1.0)), (-1.0, 0.035));
    }
}
