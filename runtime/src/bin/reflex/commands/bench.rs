//! `reflex bench`: time the frame-to-command path (or the network alone) and give a PASS/FAIL
//! verdict; or compare two reports. The measurement is the library's
//! ([`reflex_runtime::bench::measure`]).

use super::Outcome;
use crate::args::BackendArgs;
use crate::open::load_bundle;
use anyhow::{Context, Result};
use reflex_models::output;
use reflex_runtime::bench::measure::{
    measure_model, measure_pipeline, read_report, report, BenchOptions, BenchSetup, BenchSource,
};
use reflex_runtime::bench::{self, compare};
use reflex_runtime::control::plan::feed_check;
use reflex_runtime::infer::preference;
use reflex_runtime::infer::select::{prepare_policy, select_backend, survey, BackendChoice};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Bundle directory.
    #[arg(long, required_unless_present = "compare")]
    bundle: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Camera source: `replay:EPISODE_DIR`, or `synthetic` (a generated episode matching the
    /// bundle's cameras).
    #[arg(long, default_value = "synthetic")]
    camera: BenchSource,
    /// Timed ticks (after warm-up).
    #[arg(long, conflicts_with = "duration")]
    iterations: Option<u64>,
    /// Timed seconds (after warm-up); default 10 s of ticks.
    #[arg(long)]
    duration: Option<f64>,
    /// Untimed warm-up ticks.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Safety margin on the budgets (0.2 = the p99 must fit in 80% of the budget).
    #[arg(long, default_value_t = 0.2)]
    margin: f64,
    /// Time the network alone on fixed inputs. With TensorRT the engine's own GPU time (CUDA
    /// events around each enqueue) is reported apart as `gpu_compute`, comparable to trtexec's
    /// "GPU Compute Time"; the engine's placement (GPU or DLA core) is in the backend line.
    /// With `--backend all`: every available backend in turn, then their ratios.
    #[arg(long)]
    model_only: bool,
    /// With `--model-only --backend all`: record the faster CPU backend for this board and model
    /// next to the bundle (backend-preference.json), so `--backend auto` uses it.
    #[arg(long, requires = "model_only")]
    record: bool,
    /// Control rate override, Hz.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the JSON report (schema reflex-bench/1) here. A report bench wrote before is
    /// replaced; any other existing file only with --force.
    #[arg(long, default_value = "bench.json")]
    json: PathBuf,
    /// Write the SVG plot (per-stage histograms, tick-period timeline) here; replaced as --json.
    #[arg(long, default_value = "bench.svg")]
    svg: PathBuf,
    /// Replace --json and --svg even if they are not reports bench wrote.
    #[arg(long)]
    force: bool,
    /// Compare two JSON reports side by side instead of running: --compare A.json B.json.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    compare: Option<Vec<PathBuf>>,
}

pub fn run(a: Args) -> Result<Outcome> {
    if let Some([ra, rb]) = a.compare.as_deref() {
        print!("{}", compare(&read_report(ra)?, &read_report(rb)?));
        return Ok(Outcome::Success);
    }
    let path = a.bundle.clone().context("--bundle is required")?;
    // Checked before the run, written after it.
    let replace = if a.force {
        output::Replace::Any
    } else {
        output::Replace::Ours
    };
    output::check_file(&a.json, replace, &bench::JSON_KIND)?;
    output::check_file(&a.svg, replace, &bench::SVG_KIND)?;
    let bundle = load_bundle(&path)?;
    let m = &bundle.manifest;
    let opts = BenchOptions {
        rate_hz: a.rate.unwrap_or(m.control.rate_hz),
        warmup: a.warmup,
        iterations: a.iterations,
        duration_s: a.duration,
    };
    if a.backend.backend == BackendChoice::All {
        return all_backends(&a, &bundle, &opts, replace);
    }
    anyhow::ensure!(
        !a.record,
        "--record needs --backend all (it records the faster of the backends measured)"
    );
    let (mut backend, reason) = select_backend(&bundle, a.backend.backend, a.backend.tract())?;
    let setup = BenchSetup {
        backend: backend.name().to_string(),
        backend_reason: reason.to_string(),
        model_only: a.model_only,
        margin: a.margin,
    };
    let measured = if a.model_only {
        measure_model(backend.as_mut(), m.cameras.len(), &opts)?
    } else {
        let episode = a.camera.episode(m)?;
        measure_pipeline(m, backend, &episode, &opts)?
    };
    let report = report(m, setup, &opts, measured);
    if let Some(inference) = report.stages.iter().find(|s| s.stage == "inference") {
        let h = m.action.output.horizon();
        let feed = feed_check(&m.control, h, opts.rate_hz, inference.p99_ms / 1e3);
        if !feed.fed() {
            eprintln!("warning: {}", feed.message);
        }
    }
    print!("{}", report.table());
    if let Some(d) = &m.diffusion {
        // An encoder + denoiser policy: where the inference time goes.
        let median = |name: &str| {
            report
                .stages
                .iter()
                .find(|s| s.stage == name)
                .map(|s| s.median_ms)
        };
        if let (Some(enc), Some(step), Some(total)) = (
            median("encoder"),
            median("denoiser_step"),
            median("inference"),
        ) {
            let k = d.scheduler.num_inference_steps;
            let n = d.n_obs_steps;
            println!(
                "diffusion ({:?}-{k}, medians): encoder on {n} observation(s) {enc:.2} ms + {k} denoiser steps x {step:.2} ms = {:.2} ms; inference {total:.2} ms",
                d.scheduler.kind,
                enc + k as f64 * step,
            );
        }
    }
    let json = serde_json::to_string_pretty(&report)?;
    output::write_file(&a.json, json.as_bytes(), replace, &bench::JSON_KIND)?;
    output::write_file(&a.svg, report.svg().as_bytes(), replace, &bench::SVG_KIND)?;
    println!("wrote {} and {}", a.json.display(), a.svg.display());
    Ok(if report.verdict.pass {
        Outcome::Success
    } else {
        Outcome::VerdictFail
    })
}

/// `--model-only --backend all`: each available backend in turn on the same fixed inputs, its
/// table, then the medians as ratios to the fastest; the fastest's report goes to --json/--svg;
/// with --record, the faster CPU backend is recorded for this board and model.
fn all_backends(
    a: &Args,
    bundle: &reflex_models::Bundle,
    opts: &BenchOptions,
    replace: output::Replace,
) -> Result<Outcome> {
    anyhow::ensure!(
        a.model_only,
        "--backend all times the network alone: add --model-only"
    );
    let m = &bundle.manifest;
    let tract = a.backend.tract();
    let mut reports = vec![];
    for s in survey(bundle, tract) {
        let how = match s.status {
            Ok(how) => how,
            Err(why) => {
                println!("{}: not available: {why}", s.backend.as_str());
                continue;
            }
        };
        println!("{}: {how}", s.backend.as_str());
        let mut policy = prepare_policy(bundle, s.backend, tract)
            .with_context(|| format!("preparing {}", s.backend.as_str()))?;
        let measured = measure_model(policy.as_mut(), m.cameras.len(), opts)?;
        drop(policy);
        let setup = BenchSetup {
            backend: s.backend.as_str().to_string(),
            backend_reason: format!("{how}, --backend all"),
            model_only: true,
            margin: a.margin,
        };
        let r = report(m, setup, opts, measured);
        print!("{}", r.table());
        let median = r
            .stages
            .iter()
            .find(|st| st.stage == "inference")
            .map(|st| st.median_ms)
            .context("no inference timings")?;
        reports.push((s.backend, median, r));
    }
    let best = reports
        .iter()
        .enumerate()
        .min_by(|x, y| x.1 .1.total_cmp(&y.1 .1))
        .map(|(i, _)| i)
        .context("no backend could run this bundle (see the reasons above)")?;
    let fastest = reports[best].1;
    println!("median network time, {} thread(s):", tract.threads);
    for (b, median, _) in &reports {
        println!(
            "  {:<12} {median:>9.3} ms  {:>5.2}x the fastest",
            b.as_str(),
            median / fastest
        );
    }
    let medians: Vec<_> = reports.iter().map(|(b, md, _)| (*b, *md)).collect();
    if a.record {
        let sha = preference::model_sha256(bundle)
            .context("the bundle lists no policy file for a CPU backend")?
            .to_string();
        let board = preference::board_key(&reflex_board::BoardIdentity::detect());
        let entry = preference::entry(board, sha, tract.threads, medians)?;
        let winner = entry.winner;
        let path = preference::record(&bundle.dir, entry)?;
        println!(
            "recorded {} as the faster CPU backend for this board and model in {} (--backend auto uses it)",
            winner.as_str(),
            path.display()
        );
    }
    let (_, _, r) = reports.swap_remove(best);
    let json = serde_json::to_string_pretty(&r)?;
    output::write_file(&a.json, json.as_bytes(), replace, &bench::JSON_KIND)?;
    output::write_file(&a.svg, r.svg().as_bytes(), replace, &bench::SVG_KIND)?;
    println!(
        "wrote the fastest backend's report to {} and {}",
        a.json.display(),
        a.svg.display()
    );
    Ok(if r.verdict.pass {
        Outcome::Success
    } else {
        Outcome::VerdictFail
    })
}
