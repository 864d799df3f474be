//! The accuracy report: errors of the quantized network against its fp32 source in action units,
//! per action dimension, on held-out frames; latencies; the gate.

use anyhow::{bail, Context, Result};
use reflex_models::manifest::{ActionOutput, ActionSpec};
use serde::Serialize;
use std::collections::BTreeMap;

/// Error statistics of one action dimension, physical units.
#[derive(Debug, Clone, Serialize)]
pub struct DimError {
    pub name: String,
    pub unit: String,
    /// Over every held-out frame and chunk step.
    pub mean_abs: f32,
    pub p99_abs: f32,
    pub max_abs: f32,
    /// Chunk heads: per held-out frame, the largest error over the chunk's steps (the whole
    /// chunk's error); mean and p99 over frames (its max is `max_abs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_max_mean: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk_max_p99: Option<f32>,
    /// The `--max-error` limit for this dimension, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<f32>,
}

/// Nearest-rank percentile of `v` (sorted in place).
fn percentile(v: &mut [f32], p: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Per-dimension errors between `reference` and `candidate` raw network outputs (normalized,
/// row-major `[step][dim]`, one per held-out frame), after unnormalizing both with the
/// manifest's action normalization.
pub fn action_errors(
    reference: &[Vec<f32>],
    candidate: &[Vec<f32>],
    action: &ActionSpec,
    limits: &[Option<f32>],
) -> Vec<DimError> {
    let dim = action.names.len();
    let horizon = action.output.horizon();
    let chunk = matches!(action.output, ActionOutput::Chunk { .. });
    (0..dim)
        .map(|d| {
            let norm = action.normalization.affine(d);
            let phys = |y: f32| norm.unnormalize(y);
            let mut all = vec![];
            let mut per_chunk = vec![];
            for (r, c) in reference.iter().zip(candidate) {
                let mut worst = 0f32;
                for s in 0..horizon {
                    let i = s * dim + d;
                    let e = (phys(r[i]) - phys(c[i])).abs();
                    // A NaN error is the worst error.
                    let e = if e.is_nan() { f32::INFINITY } else { e };
                    all.push(e);
                    worst = worst.max(e);
                }
                per_chunk.push(worst);
            }
            let n = all.len().max(1) as f64;
            let mean_abs = (all.iter().map(|&e| e as f64).sum::<f64>() / n) as f32;
            let max_abs = all.iter().fold(0f32, |m, &e| m.max(e));
            let p99_abs = percentile(&mut all, 99.0);
            let (chunk_max_mean, chunk_max_p99) = if chunk {
                let m = per_chunk.iter().map(|&e| e as f64).sum::<f64>()
                    / per_chunk.len().max(1) as f64;
                (Some(m as f32), Some(percentile(&mut per_chunk, 99.0)))
            } else {
                (None, None)
            };
            DimError {
                name: action.names[d].clone(),
                unit: action.units[d].clone(),
                mean_abs,
                p99_abs,
                max_abs,
                chunk_max_mean,
                chunk_max_p99,
                limit: limits.get(d).copied().flatten(),
            }
        })
        .collect()
}

/// `--max-error`: one value for every dimension, and/or `name=value` per dimension (a named
/// value wins over the bare one).
pub fn parse_limits(spec: Option<&str>, action: &ActionSpec) -> Result<Vec<Option<f32>>> {
    let mut out = vec![None; action.names.len()];
    let Some(spec) = spec else { return Ok(out) };
    let value = |s: &str| -> Result<f32> {
        let v: f32 = s
            .trim()
            .parse()
            .with_context(|| format!("--max-error: `{s}` is not a number"))?;
        if !v.is_finite() || v < 0.0 {
            bail!("--max-error: {v} must be finite and >= 0");
        }
        Ok(v)
    };
    let mut named = vec![];
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((name, v)) => {
                let name = name.trim();
                let i = action
                    .names
                    .iter()
                    .position(|n| n == name)
                    .with_context(|| {
                        format!(
                            "--max-error {name}=...: not an action dimension (they are: {})",
                            action.names.join(", ")
                        )
                    })?;
                named.push((i, value(v)?));
            }
            None => {
                let v = value(part)?;
                out.iter_mut().for_each(|o| *o = Some(v));
            }
        }
    }
    for (i, v) in named {
        out[i] = Some(v);
    }
    Ok(out)
}

/// Dimensions over their limit, as `name: max error X unit > limit Y unit`.
pub fn gate_failures(dims: &[DimError]) -> Vec<String> {
    dims.iter()
        .filter_map(|d| {
            let limit = d.limit?;
            (d.max_abs > limit || d.max_abs.is_nan()).then(|| {
                format!(
                    "{}: max error {:.6} {} > limit {} {}",
                    d.name, d.max_abs, d.unit, limit, d.unit
                )
            })
        })
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub backend: &'static str,
    pub threads: usize,
    pub runs: usize,
    pub fp32_median_ms: f64,
    pub quantized_median_ms: f64,
    /// fp32 / quantized: above 1 means the quantized form is faster.
    pub speedup: f64,
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Calibration {
    pub source: String,
    /// Episode frame indices used for calibration (empty for fp16, which needs none).
    pub frames: Vec<usize>,
    /// Episode frame indices the errors are measured on; disjoint from `frames`.
    pub held_out_frames: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub input_bundle: String,
    pub input_model_sha256: String,
    pub precision: &'static str,
    /// Range method (int8) or fp16 form.
    pub method: String,
    /// What the graph rewrite did, in words.
    pub scheme: String,
    pub calibration: Calibration,
    /// Graph details: quantized nodes, activations, nodes kept in float, initializers converted.
    pub graph: BTreeMap<String, serde_json::Value>,
    /// Backend the errors were measured on.
    pub measured_on: &'static str,
    pub action_output: String,
    pub dims: Vec<DimError>,
    pub latency: Latency,
    pub gate_passed: bool,
    pub gate_failures: Vec<String>,
    /// Per backend of the input model entry: passed / no gate / failed (dropped) / not measured.
    pub backends: BTreeMap<String, String>,
}

impl Report {
    /// The text table printed on stdout.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{} quantization ({}) measured on {}: {} held-out frames, {} calibration frames ({})\n",
            self.precision,
            self.method,
            self.measured_on,
            self.calibration.held_out_frames.len(),
            self.calibration.frames.len(),
            self.calibration.source
        );
        let chunk = self.dims.iter().any(|d| d.chunk_max_mean.is_some());
        let w = self
            .dims
            .iter()
            .map(|d| d.name.len())
            .max()
            .unwrap_or(4)
            .max(5);
        s += &format!(
            "{:<w$}  {:<4}  {:>11}  {:>11}  {:>11}",
            "joint", "unit", "mean |err|", "p99 |err|", "max |err|"
        );
        if chunk {
            s += &format!("  {:>12}  {:>12}", "chunk mean", "chunk p99");
        }
        s += &format!("  {:>9}\n", "limit");
        for d in &self.dims {
            s += &format!(
                "{:<w$}  {:<4}  {:>11.3e}  {:>11.3e}  {:>11.3e}",
                d.name, d.unit, d.mean_abs, d.p99_abs, d.max_abs
            );
            if chunk {
                s += &format!(
                    "  {:>12.3e}  {:>12.3e}",
                    d.chunk_max_mean.unwrap_or(0.0),
                    d.chunk_max_p99.unwrap_or(0.0)
                );
            }
            let limit = d.limit.map_or("-".to_string(), |l| l.to_string());
            let flag = match d.limit {
                Some(l) if d.max_abs > l => "  EXCEEDED",
                _ => "",
            };
            s += &format!("  {limit:>9}{flag}\n");
        }
        let l = &self.latency;
        s += &format!(
            "latency ({}, {} thread(s), median of {}): fp32 {:.2} ms, {} {:.2} ms (speed-up x{:.2})\n",
            l.backend,
            l.threads,
            l.runs,
            l.fp32_median_ms,
            self.precision,
            l.quantized_median_ms,
            l.speedup
        );
        for (b, verdict) in &self.backends {
            s += &format!("backend {b}: {verdict}\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflex_models::manifest::Normalization;

    fn spec(output: ActionOutput) -> ActionSpec {
        ActionSpec {
            onnx_output: "action".into(),
            names: vec!["a".into(), "b".into()],
            units: vec!["rad".into(), "m".into()],
            output,
            normalization: Normalization::MeanStd {
                mean: vec![1.0, 0.0],
                std: vec![2.0, 0.5],
                convention: Default::default(),
            },
            limits: None,
            parity_tolerance: None,
        }
    }

    #[test]
    fn errors_are_in_action_units_with_chunk_maxima() {
        let s = spec(ActionOutput::Chunk { horizon: 2 });
        // Two frames, two steps, two dims; candidate differs by 0.1 (normalized) in dim a at
        // frame 0 step 1, and by 0.2 in dim b at frame 1 step 0.
        let r = vec![vec![0.0; 4], vec![0.0; 4]];
        let c = vec![vec![0.0, 0.0, 0.1, 0.0], vec![0.0, 0.2, 0.0, 0.0]];
        let d = action_errors(&r, &c, &s, &[Some(0.1), None]);
        // a: std 2 -> 0.2 rad; b: std 0.5 -> 0.1 m.
        assert!((d[0].max_abs - 0.2).abs() < 1e-6);
        assert!((d[0].mean_abs - 0.05).abs() < 1e-6);
        assert!((d[0].chunk_max_mean.unwrap_or(0.0) - 0.1).abs() < 1e-6);
        assert!((d[1].max_abs - 0.1).abs() < 1e-6);
        assert_eq!(gate_failures(&d).len(), 1);
        assert!(gate_failures(&d)[0].starts_with("a: max error 0.200000 rad > limit 0.1 rad"));
    }

    #[test]
    fn limits_parse_bare_and_named() {
        let s = spec(ActionOutput::Single);
        assert_eq!(parse_limits(None, &s).ok(), Some(vec![None, None]));
        assert_eq!(
            parse_limits(Some("b=0.5,0.01"), &s).ok(),
            Some(vec![Some(0.01), Some(0.5)])
        );
        let e = parse_limits(Some("c=1"), &s).err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("not an action dimension"));
        assert!(parse_limits(Some("-1"), &s).is_err());
    }

    #[test]
    fn percentile_and_median() {
        let mut v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(percentile(&mut v, 99.0), 99.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
