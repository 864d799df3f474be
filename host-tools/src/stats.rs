//! Normalization statistics, imported from what users already have.
//!
//! Silently unnormalized data is one of the most reported failures of LeRobot and openpi
//! deployments: a stats file whose keys do not line up with the policy's features gets ignored and
//! the robot moves in the wrong units. So import is strict both ways: a stats entry that matches no
//! state/action feature is an error, and a feature the chosen normalization needs but the file
//! lacks is an error naming what the file does have.
//!
//! Formats read:
//! - plain TOML or JSON: `{ state = { mean = [..], std = [..] }, action = { min = [..], max = [..] } }`
//!   (`observation.state` / `actions` accepted as aliases);
//! - LeRobot normalization safetensors: keys `observation.state.mean`, `action.std`, ... (also the
//!   `/` separator and the policy-buffer form `normalize_inputs.buffer_observation_state.mean`);
//!   image feature keys (`observation.image*`) are reported and skipped: images are normalized by
//!   the bundle's preprocessing spec;
//! - openpi `norm_stats.json`: `{ "norm_stats": { "state": {mean, std, q01, q99}, "actions": {...} } }`.

use anyhow::{anyhow, bail, Context, Result};
use reflex_models::manifest::Normalization;
use std::collections::BTreeMap;
use std::path::Path;

/// Statistics per feature (`state`, `action`) per statistic (`mean`, `std`, `min`, `max`, `q01`,
/// `q99`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub features: BTreeMap<String, BTreeMap<String, Vec<f32>>>,
    /// Keys present in the file but deliberately not used (image statistics).
    pub skipped: Vec<String>,
}

const STAT_NAMES: [&str; 6] = ["mean", "std", "min", "max", "q01", "q99"];

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
            return Ok(());
        }
        let f = canonical_feature(feature).ok_or_else(|| {
            anyhow!(
                "{}: stats key `{feature}.{stat}` matches no state or action feature of the policy \
                 (expected observation.state / state or action / actions)",
                path.display()
            )
        })?;
        if !STAT_NAMES.contains(&stat) {
            bail!(
                "{}: unknown statistic `{stat}` for `{feature}` (known: {})",
                path.display(),
                STAT_NAMES.join(", ")
            );
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: `{feature}.{stat}[{i}]` is {} (must be finite)",
                path.display(),
                values[i]
            );
        }
        self.features
            .entry(f.to_string())
            .or_default()
            .insert(stat.to_string(), values);
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
                let root = v.get("norm_stats").unwrap_or(&v);
                Self::from_tree(path, &json_to_tree(path, root)?)
            }
            "toml" => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let v: toml::Value = toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
                let j = serde_json::to_value(v)?;
                Self::from_tree(path, &json_to_tree(path, &j)?)
            }
            other => bail!(
                "{}: unknown stats format `.{other}` (expected .safetensors (LeRobot), .json (openpi or plain) or .toml)",
                path.display()
            ),
        }
    }

    fn from_tree(
        path: &Path,
        tree: &BTreeMap<String, BTreeMap<String, Vec<f32>>>,
    ) -> Result<Stats> {
        let mut s = Stats::default();
        for (feature, stats) in tree {
            for (stat, v) in stats {
                s.insert(path, feature, stat, v.clone())?;
            }
        }
        Ok(s)
    }

    fn load_safetensors(path: &Path) -> Result<Stats> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let mut s = Stats::default();
        let mut names: Vec<String> = st.names().into_iter().map(|n| n.to_string()).collect();
        names.sort();
        for key in names {
            let t = st
                .tensor(&key)
                .map_err(|e| anyhow!("{}: {key}: {e}", path.display()))?;
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
            if let Some(existing) = s
                .features
                .get(canonical_feature(&feature).unwrap_or(""))
                .and_then(|m| m.get(stat))
            {
                // The same buffer is often saved by both normalize_inputs and unnormalize_outputs.
                if *existing == values {
                    continue;
                }
                bail!(
                    "{}: `{key}` disagrees with another key for {feature}.{stat}",
                    path.display()
                );
            }
            s.insert(path, &feature, stat, values)?;
        }
        Ok(s)
    }

    /// Builds the normalization of one feature (`state` or `action`) with `dim` dimensions.
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
            if v.len() != dim {
                bail!(
                    "{}: `{feature}.{stat}` has {} values, the policy's {feature} has {dim} names",
                    source.display(),
                    v.len()
                );
            }
            Ok(v.clone())
        };
        Ok(match kind {
            "mean_std" => Normalization::MeanStd {
                mean: get("mean")?,
                std: get("std")?,
            },
            "min_max" => Normalization::MinMax {
                min: get("min")?,
                max: get("max")?,
            },
            "quantile" => Normalization::Quantile {
                q01: get("q01")?,
                q99: get("q99")?,
            },
            "identity" => Normalization::Identity,
            other => {
                bail!("unknown normalization `{other}` (mean_std, min_max, quantile, identity)")
            }
        })
    }
}

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
        other => bail!(
            "{}: `{key}` has dtype {other:?}; statistics must be floating point",
            path.display()
        ),
    })
}

/// `{feature: {stat: [values]}}` from a JSON tree.
fn json_to_tree(
    path: &Path,
    v: &serde_json::Value,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<f32>>>> {
    let obj = v
        .as_object()
        .ok_or_else(|| anyhow!("{}: expected a table of features", path.display()))?;
    let mut out = BTreeMap::new();
    for (feature, stats) in obj {
        let so = stats.as_object().ok_or_else(|| {
            anyhow!(
                "{}: `{feature}` must be a table of statistics",
                path.display()
            )
        })?;
        let mut m = BTreeMap::new();
        for (stat, vals) in so {
            let arr = match vals {
                serde_json::Value::Array(a) => a.clone(),
                serde_json::Value::Number(_) => vec![vals.clone()],
                _ => bail!(
                    "{}: `{feature}.{stat}` must be a list of numbers",
                    path.display()
                ),
            };
            let mut v = Vec::with_capacity(arr.len());
            for (i, x) in arr.iter().enumerate() {
                v.push(x.as_f64().ok_or_else(|| {
                    anyhow!(
                        "{}: `{feature}.{stat}[{i}]` is not a finite number (NaN, infinity or null)",
                        path.display()
                    )
                })? as f32);
            }
            m.insert(stat.clone(), v);
        }
        out.insert(feature.clone(), m);
    }
    Ok(out)
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
                q99: vec![3.0, 3.0]
            }
        );
        let n = s
            .normalization("state", "mean_std", 2, &p)
            .expect("mean_std");
        assert_eq!(
            n,
            Normalization::MeanStd {
                mean: vec![0.1, 0.2],
                std: vec![1.0, 2.0]
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
                std: vec![2.0, 4.0]
            }
        );
        assert!(s.normalization("action", "mean_std", 2, &p).is_ok());
    }
}
