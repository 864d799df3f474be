//! `reflex bench`: will this bundle hold its control rate on this board?
//!
//! The network's time alone (what trtexec reports) does not answer that: frames must be captured,
//! decoded and preprocessed, the chunk post-processed and the command written, and the loop must
//! tick on time while inference runs. So the bench drives the real control loop (real backend,
//! real preprocessing, inference on its worker thread) at the bundle's rate with the robot output
//! replaced by a null sink, and times every stage.
//!
//! The verdict (see [`verdict`]) checks two budgets at p99, each shrunk by the safety margin:
//! - the tick (everything the loop thread does per period) must fit in one control period;
//! - frame-to-command latency (capture of an observation to the first command computed from it)
//!   must fit in the re-planning interval, `steps_per_inference` periods: a slower network means
//!   the plan runs dry and the robot holds (for single-action policies that interval is one
//!   period).
//!
//! [`measure`] runs the measurement (the whole loop, or the network alone) and builds the report.
//!
//! The JSON report's schema is `reflex-bench/1` (documented on [`BenchReport`]); fields are only
//! ever added to it.

pub mod measure;
pub mod plot;

use crate::timing::{Histogram, Stage, StageTimings};
use reflex_board::BoardIdentity;
use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "reflex-bench/1";

/// A JSON report `reflex bench` wrote (any `reflex-bench/` schema), for
/// [`reflex_models::output`]: such a file is replaced by the next run, any other only with
/// `--force`.
pub const JSON_KIND: reflex_models::output::Kind = reflex_models::output::Kind {
    what: "a reflex-bench JSON report",
    recognize: |p| {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| "not JSON")?;
        match v.get("schema").and_then(|s| s.as_str()) {
            Some(s) if s.starts_with("reflex-bench/") => Ok(()),
            _ => Err("no `schema: reflex-bench/...` in it".into()),
        }
    },
};

/// An SVG plot `reflex bench` wrote (its title starts `reflex bench:`); see [`JSON_KIND`].
pub const SVG_KIND: reflex_models::output::Kind = reflex_models::output::Kind {
    what: "a reflex bench plot",
    recognize: |p| {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        // The title is the text of an element: `>`, perhaps a line break (plotters writes one),
        // then `reflex bench: `.
        let titled = text
            .match_indices("reflex bench: ")
            .any(|(i, _)| text[..i].trim_end().ends_with('>'));
        if text.starts_with("<svg") && titled {
            Ok(())
        } else {
            Err("not an SVG with a `reflex bench:` title".into())
        }
    },
};

/// Percentiles of one stage, milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    pub stage: String,
    pub n: u64,
    pub min_ms: f64,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Histogram bins `[lower_ms, upper_ms, count]` (non-empty bins only), for plots.
    pub bins: Vec<[f64; 3]>,
}

impl StageStats {
    pub fn from_histogram(stage: &str, h: &Histogram) -> Option<StageStats> {
        if h.count() == 0 {
            return None;
        }
        let ms = |v: Option<u64>| v.unwrap_or(0) as f64 / 1e6;
        Some(StageStats {
            stage: stage.to_string(),
            n: h.count(),
            min_ms: ms(h.min()),
            median_ms: ms(h.quantile(0.5)),
            p90_ms: ms(h.quantile(0.9)),
            p99_ms: ms(h.quantile(0.99)),
            p999_ms: ms(h.quantile(0.999)),
            max_ms: ms(h.max()),
            bins: h
                .bins()
                .map(|(lo, hi, n)| [lo as f64 / 1e6, hi as f64 / 1e6, n as f64])
                .collect(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub pass: bool,
    /// One sentence a person can act on.
    pub reason: String,
    /// The stage with the largest p99 inside the failing budget (or the largest overall on PASS).
    pub limiting_stage: Option<String>,
}

/// The `reflex-bench/1` report.
///
/// - `schema`: always `"reflex-bench/1"`;
/// - `mode`: `"pipeline"` (whole loop) or `"model-only"` (network alone, fixed inputs);
/// - `bundle`, `backend`, `backend_reason`: what ran;
/// - `board`: the machine's identity;
/// - `rate_hz`, `period_ms`, `steps_per_inference`, `margin`: the budget's inputs;
/// - `tick_budget_ms`, `latency_budget_ms`: the two budgets after the margin;
/// - `ticks`, `duration_s`, `throughput_hz` (ticks per second; inferences per second in model-only
///   mode), `inferences_per_s`;
/// - `peak_rss_kib`: the process's peak resident memory;
/// - `stages`: [`StageStats`] per stage (`capture_wait`, `preprocess`, `inference`,
///   `post_process`, `send`, `tick`, `period`, `end_to_end`);
/// - `missed_deadlines`, `overruns`: counts from the loop;
/// - `periods_ms`: the start-to-start interval of every timed tick, in order (timeline);
/// - `model_output` (model-only mode only, absent otherwise): the network's raw output on the
///   fixed inputs, row-major `[horizon][dim]`, normalized units: what two machines (the x86
///   build and the aarch64 board build) must agree on;
/// - `verdict`: [`Verdict`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub schema: String,
    pub mode: String,
    pub bundle: String,
    pub backend: String,
    pub backend_reason: String,
    pub board: BoardIdentity,
    pub rate_hz: f64,
    pub period_ms: f64,
    pub steps_per_inference: u64,
    pub margin: f64,
    pub tick_budget_ms: f64,
    pub latency_budget_ms: f64,
    pub ticks: u64,
    pub duration_s: f64,
    pub throughput_hz: f64,
    pub inferences_per_s: f64,
    pub peak_rss_kib: Option<u64>,
    pub stages: Vec<StageStats>,
    pub missed_deadlines: u64,
    pub overruns: u64,
    pub periods_ms: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_output: Option<Vec<f32>>,
    pub verdict: Verdict,
}

/// Stages that make up frame-to-command latency, in pipeline order.
const LATENCY_STAGES: [&str; 5] = [
    "capture_wait",
    "preprocess",
    "inference",
    "post_process",
    "send",
];
/// Stages done on the loop thread every tick.
const TICK_STAGES: [&str; 4] = ["capture_wait", "preprocess", "post_process", "send"];

fn p99(stages: &[StageStats], name: &str) -> Option<f64> {
    stages.iter().find(|s| s.stage == name).map(|s| s.p99_ms)
}

fn largest(stages: &[StageStats], among: &[&str]) -> Option<String> {
    among
        .iter()
        .filter_map(|n| p99(stages, n).map(|v| (v, *n)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n.to_string())
}

/// The stage whose p99 the verdict holds against the latency budget: the network alone in
/// model-only mode, frame to command otherwise.
fn latency_stage(model_only: bool) -> &'static str {
    if model_only {
        "inference"
    } else {
        "end_to_end"
    }
}

/// PASS when the p99 tick fits `period * (1 - margin)` and the p99 frame-to-command latency fits
/// `steps_per_inference * period * (1 - margin)`; else FAIL naming the stage that eats the budget.
/// In model-only mode only the inference p99 is checked against the latency budget.
pub fn verdict(
    stages: &[StageStats],
    period_ms: f64,
    steps_per_inference: u64,
    margin: f64,
    model_only: bool,
) -> Verdict {
    let tick_budget = period_ms * (1.0 - margin);
    let latency_budget = period_ms * steps_per_inference as f64 * (1.0 - margin);
    let latency_stage = latency_stage(model_only);
    let Some(lat) = p99(stages, latency_stage) else {
        return Verdict {
            pass: false,
            reason: format!("no {latency_stage} samples: the policy never produced a command"),
            limiting_stage: None,
        };
    };
    if lat > latency_budget {
        let stage = if model_only {
            Some("inference".to_string())
        } else {
            largest(stages, &LATENCY_STAGES)
        };
        return Verdict {
            pass: false,
            reason: format!(
                "p99 {latency_stage} {lat:.2} ms exceeds the {latency_budget:.2} ms budget \
                 ({steps_per_inference} period(s) of {period_ms:.2} ms less {:.0}% margin); {} takes the most",
                margin * 100.0,
                stage.as_deref().unwrap_or("?")
            ),
            limiting_stage: stage,
        };
    }
    if !model_only {
        if let Some(tick) = p99(stages, "tick") {
            if tick > tick_budget {
                let stage = largest(stages, &TICK_STAGES);
                return Verdict {
                    pass: false,
                    reason: format!(
                        "p99 tick {tick:.2} ms exceeds the {tick_budget:.2} ms budget (one period less {:.0}% margin); {} takes the most",
                        margin * 100.0,
                        stage.as_deref().unwrap_or("?")
                    ),
                    limiting_stage: stage,
                };
            }
        }
    }
    Verdict {
        pass: true,
        reason: format!(
            "p99 {latency_stage} {lat:.2} ms within {latency_budget:.2} ms{}",
            if model_only {
                String::new()
            } else {
                format!(
                    ", p99 tick {:.2} ms within {tick_budget:.2} ms",
                    p99(stages, "tick").unwrap_or(0.0)
                )
            }
        ),
        limiting_stage: largest(stages, &LATENCY_STAGES),
    }
}

pub fn stage_stats(t: &StageTimings) -> Vec<StageStats> {
    Stage::ALL
        .iter()
        .filter_map(|s| StageStats::from_histogram(s.name(), t.get(*s)))
        .collect()
}

/// Peak resident set size of this process (VmHWM), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// `BenchReport::mode` of a run of the network alone on fixed inputs (else `"pipeline"`).
pub const MODEL_ONLY: &str = "model-only";

impl BenchReport {
    /// Whether the network ran alone on fixed inputs (no loop: no ticks, periods or sends).
    pub fn is_model_only(&self) -> bool {
        self.mode == MODEL_ONLY
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "reflex bench ({}) - {} on {} via {}\nboard: {} {}\n",
            self.mode,
            self.bundle,
            self.board.cpu_model,
            self.backend,
            self.board.cores,
            self.board
                .governor
                .as_deref()
                .map(|g| format!("cores, governor {g}"))
                .unwrap_or_else(|| "cores".into())
        );
        let rss = self
            .peak_rss_kib
            .map(|k| format!("{:.0} MiB", k as f64 / 1024.0))
            .unwrap_or_else(|| "?".into());
        let model_only = self.is_model_only();
        if model_only {
            // No loop ran: the rate only sets the budget.
            s += &format!(
                "{} runs in {:.1} s, {:.1} inferences/s, peak RSS {rss}; budget from rate {:.1} Hz \
                 (period {:.2} ms)\n\n",
                self.ticks, self.duration_s, self.inferences_per_s, self.rate_hz, self.period_ms,
            );
        } else {
            s += &format!(
                "rate {:.1} Hz (period {:.2} ms), {} ticks in {:.1} s, {:.1} ticks/s, {:.1} \
                 inferences/s, peak RSS {rss}\n\n",
                self.rate_hz,
                self.period_ms,
                self.ticks,
                self.duration_s,
                self.throughput_hz,
                self.inferences_per_s,
            );
        }
        s += &format!(
            "{:<13} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
            "stage (ms)", "n", "min", "median", "p90", "p99", "p99.9", "max"
        );
        for st in &self.stages {
            s += &format!(
                "{:<13} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n",
                st.stage,
                st.n,
                st.min_ms,
                st.median_ms,
                st.p90_ms,
                st.p99_ms,
                st.p999_ms,
                st.max_ms
            );
        }
        if model_only {
            s += &format!(
                "\nbudget: inference {:.2} ms (margin {:.0}%)\n",
                self.latency_budget_ms,
                self.margin * 100.0
            );
        } else {
            s += &format!(
                "\nmissed deadlines: {}, inference overruns: {}\nbudgets: tick {:.2} ms, \
                 frame-to-command {:.2} ms (margin {:.0}%)\n",
                self.missed_deadlines,
                self.overruns,
                self.tick_budget_ms,
                self.latency_budget_ms,
                self.margin * 100.0
            );
        }
        s += &format!(
            "VERDICT: {} - {}\n",
            if self.verdict.pass { "PASS" } else { "FAIL" },
            self.verdict.reason
        );
        // A p99 of fewer than 100 samples is their maximum: say so next to the verdict.
        let judged = latency_stage(model_only);
        if let Some(st) = self.stages.iter().find(|st| st.stage == judged) {
            if st.n < 100 {
                s += &format!(
                    "note: the verdict rests on {} {judged} sample(s), so its p99 is their \
                     maximum; run longer (--duration or --iterations) for 100 or more\n",
                    st.n
                );
            }
        }
        s
    }

    /// The plot as an SVG document: per-stage summary against the budgets, one histogram per
    /// stage (counts, p50/p99 markers, budget) and the tick period timeline; see [`plot`].
    pub fn try_svg(&self) -> Result<String, plot::PlotError> {
        plot::render(self)
    }

    /// [`Self::try_svg`], or, if plotters fails to draw (it writes into a string, so it is not
    /// expected to), an SVG that says why, so the file written in its place explains itself.
    pub fn svg(&self) -> String {
        self.try_svg().unwrap_or_else(|e| {
            format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"60\">\
                 <text x=\"20\" y=\"30\">{}</text></svg>\n",
                xml(&e.to_string())
            )
        })
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Two reports side by side: median and p99 per stage with the ratio b/a.
pub fn compare(a: &BenchReport, b: &BenchReport) -> String {
    let mut s = format!(
        "A: {} ({}, {})\nB: {} ({}, {})\n{}\n{:<13} {:>10} {:>10} {:>8} {:>10} {:>10} {:>8}\n",
        a.bundle,
        a.backend,
        a.mode,
        b.bundle,
        b.backend,
        b.mode,
        if a.mode == b.mode {
            String::new()
        } else {
            format!(
                "warning: a {} report against a {} one: the network alone on fixed inputs is not \
                 the whole loop's inference, so their ratios are not like for like\n",
                a.mode, b.mode
            )
        },
        "stage (ms)",
        "A median",
        "B median",
        "B/A",
        "A p99",
        "B p99",
        "B/A"
    );
    for sa in &a.stages {
        if let Some(sb) = b.stages.iter().find(|x| x.stage == sa.stage) {
            let r = |x: f64, y: f64| {
                if x > 0.0 {
                    format!("{:.2}", y / x)
                } else {
                    "-".into()
                }
            };
            s += &format!(
                "{:<13} {:>10.3} {:>10.3} {:>8} {:>10.3} {:>10.3} {:>8}\n",
                sa.stage,
                sa.median_ms,
                sb.median_ms,
                r(sa.median_ms, sb.median_ms),
                sa.p99_ms,
                sb.p99_ms,
                r(sa.p99_ms, sb.p99_ms)
            );
        }
    }
    s += &format!(
        "\nverdict: A {} / B {}\n",
        if a.verdict.pass { "PASS" } else { "FAIL" },
        if b.verdict.pass { "PASS" } else { "FAIL" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, p99: f64) -> StageStats {
        StageStats {
            stage: name.into(),
            n: 100,
            min_ms: p99 / 2.0,
            median_ms: p99 * 0.8,
            p90_ms: p99 * 0.9,
            p99_ms: p99,
            p999_ms: p99,
            max_ms: p99,
            bins: vec![],
        }
    }

    #[test]
    fn verdict_pass_and_fail() {
        // 20 Hz, re-plan every 4 steps: latency budget 200 ms * 0.8 = 160 ms, tick budget 40 ms.
        let ok = vec![
            stage("capture_wait", 0.1),
            stage("preprocess", 0.6),
            stage("inference", 80.0),
            stage("post_process", 0.05),
            stage("send", 0.02),
            stage("tick", 1.0),
            stage("end_to_end", 85.0),
        ];
        let v = verdict(&ok, 50.0, 4, 0.2, false);
        assert!(v.pass, "{v:?}");
        assert_eq!(v.limiting_stage.as_deref(), Some("inference"));

        let mut slow = ok.clone();
        slow[2] = stage("inference", 190.0);
        slow[6] = stage("end_to_end", 195.0);
        let v = verdict(&slow, 50.0, 4, 0.2, false);
        assert!(!v.pass);
        assert_eq!(v.limiting_stage.as_deref(), Some("inference"));
        assert!(v.reason.contains("160.00 ms budget"), "{}", v.reason);

        let mut slow_tick = ok.clone();
        slow_tick[1] = stage("preprocess", 45.0);
        slow_tick[5] = stage("tick", 46.0);
        let v = verdict(&slow_tick, 50.0, 4, 0.2, false);
        assert!(!v.pass);
        assert_eq!(v.limiting_stage.as_deref(), Some("preprocess"));

        // Model-only: inference alone against the latency budget.
        assert!(verdict(&[stage("inference", 150.0)], 50.0, 4, 0.2, true).pass);
        assert!(!verdict(&[stage("inference", 170.0)], 50.0, 4, 0.2, true).pass);
        // No samples at all: FAIL.
        assert!(!verdict(&[], 50.0, 4, 0.2, false).pass);
    }
}
