//! `reflex-tools quantize`: an fp32 bundle -> an fp16 or int8 bundle, with an accuracy report in
//! action units and a gate.
//!
//! Pipeline:
//! 1. calibration and held-out samples ([`calib`]): episode frames (recorded, or synthetic for the
//!    bundle) through the bundle's preprocessing and state normalization;
//! 2. the graph rewrite ([`graph`]):
//!    - fp16: weights stored FLOAT16, each followed by a `Cast` to FLOAT; compute and I/O stay
//!      f32. This is the form both tract and ONNX Runtime run (tract 0.23 cannot load a graph
//!      computing in FLOAT16: see [`graph::to_fp16`]); the error is that of fp16 weights.
//!      When the source lists TensorRT, that form is listed for the CPU backends only, and
//!      `policy.fp16.onnx`, genuinely FLOAT16-typed ([`graph::to_fp16_typed`]: FLOAT16 weights
//!      and activations, FLOAT I/O cast at the boundary), is listed for TensorRT, whose strongly
//!      typed builds take precision from the ONNX types (10.12 deprecated the fp16 flag, 11
//!      removed it). tract does not fold casts
//!      that would more than double a constant above 4 MiB, so it re-casts the large weights on
//!      every run: slower than fp32 on tract (the report's latency says how much);
//!    - int8: one plan and one calibration ([`ranges`]: minmax, percentile, entropy), two files.
//!      Per-tensor symmetric int8 activations on the inputs of Conv, Gemm and MatMul,
//!      per-output-channel symmetric int8 weights; the policy's last layer (and any
//!      `--keep-float` node) stays float, and so do norms and Softmax.
//!      - `policy.qdq.onnx`, listed for `tensorrt`: explicit quantization (QDQ), the form
//!        TensorRT consumes ([`graph::apply_int8`]). tract would run it in float with Q/DQ as
//!        extra element-wise ops, dequantizing the large weights on every run;
//!      - `policy.qop.onnx`, listed for `tract`: the operator form ([`qop`]), QLinearConv and
//!        QLinearMatMul (standard `ai.onnx` ops only; tract 0.23 loads no com.microsoft op) on
//!        uint8 activations (zero point 128: the same grid), with each node's output scale from
//!        calibration of that output, which tract and ONNX Runtime run with integer kernels;
//! 3. the staged quantized bundle is loaded like the robot loads it, and both networks run on
//!    the CPU backend that will run the quantized bundle here (`--backend`, default `auto`: the
//!    choice `reflex run --backend auto` makes for it, so ONNX Runtime when its library loads,
//!    else tract; both run the file listed for tract, the operator form for int8) on the
//!    held-out samples; errors are unnormalized to action units ([`report`]), latencies measured
//!    in the same run. An encoder + denoiser bundle (fp16 only) has both models
//!    converted and its whole `EncoderDenoiserPolicy` run on tract, with the same seeded noise;
//! 4. the gate (`--max-error`): any dimension over its limit on the measured backend fails the
//!    command, which then writes nothing. The other CPU backend and `tensorrt` stay listed,
//!    marked as not measured (`--backend tract|onnxruntime` measures the other CPU backend; no
//!    TensorRT on this machine);
//! 5. the bundle (manifest with the new precision, sha256 and a provenance summary, the models,
//!    `quantization-report.json`) is renamed into place only when everything succeeded.
//!
//! ## Default CPU precision: fp32 (measured on the development machine)
//!
//! reflex runs tract on the CPU, and on this machine tract runs every reduced form slower than
//! fp32, so the CPU default stays fp32; int8 is for TensorRT (QDQ) and for CPUs whose tract
//! integer kernels are fast (ARM cores with dot-product instructions: not measured here).
//! `cargo bench -p reflex-tools --bench quantized`, 2 threads, median of 20 runs, on a 2-core
//! AMD EPYC VM with AVX-512 and AVX-512 VNNI (`avx512_vnni` in /proc/cpuinfo), tract 0.23.9,
//! ONNX Runtime 1.23 (CPUExecutionProvider), reference policies with seeded weights; ms, and the
//! ratio to fp32 of the same runtime in the same run (a quiet run; on the shared machine under
//! load, absolute times doubled but the order of the forms stayed the same):
//!
//! | model | form | tract ms | vs fp32 | ORT ms | vs fp32 |
//! |---|---|---|---|---|---|
//! | ResNet-18 | fp32 | 29.96 | 1.00 | 17.20 | 1.00 |
//! | | fp16 | 48.64 | 1.62 | 17.04 | 0.99 |
//! | | int8 operator form | 93.48 | 3.12 | 6.95 | 0.40 |
//! | | int8 QDQ | 52.75 | 1.76 | 40.84 | 2.37 |
//! | ViT-S/16 | fp32 | 70.49 | 1.00 | 49.10 | 1.00 |
//! | | fp16 | 73.20 | 1.04 | 50.02 | 1.02 |
//! | | int8 operator form | 209.56 | 2.97 | 21.36 | 0.43 |
//! | | int8 QDQ | 102.45 | 1.45 | 91.19 | 1.86 |
//!
//! - tract: the operator form (QLinearConv / QLinearMatMul) is 3x slower than fp32 here,
//!   AVX-512 VNNI notwithstanding (the same with int8 activations: 2.75x and 3.03x in an
//!   earlier run); fp16 weights
//!   are re-cast on every run; QDQ computes in float plus the Q/DQ ops: all slower than fp32;
//! - ONNX Runtime: the operator form with uint8 activations is 2.3-2.5x faster than fp32 (its
//!   u8s8 VNNI kernels); with int8 activations the same graph was 3.4-4.5x slower, hence uint8
//!   in [`qop`]. So int8 pays on this CPU in ONNX Runtime, not in tract;
//! - not measured: TensorRT (no GPU here), ARM boards (no board here), tract's int8 path on an
//!   ARM core with dot-product instructions, where it should pay. Measure there
//!   (`reflex bench --model-only` on each form) before changing a board's default.
//!

mod calib;
pub(crate) mod graph;
mod qop;
mod ranges;
mod report;

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use reflex_models::bundle::{
    carried_files, sha256_bytes, stage_bundle_with, write_bundle_with, BUNDLE_KIND,
};
use reflex_models::manifest::{
    ActionOutput, BackendKind, Manifest, ModelFile, ModelRole, Precision,
};
use reflex_models::npy;
use reflex_models::output::{self, Kind, OutDir, Replace};
use reflex_models::Bundle;
use reflex_runtime::infer::policy::{Policy, SinglePassPolicy};
use reflex_runtime::infer::select::{
    decide, prepare_policy_read_only, BackendChoice, CPU_BACKENDS,
};
use reflex_runtime::infer::session::Session;
use reflex_runtime::infer::tract::{TractOptions, TractSession};
use reflex_runtime::progress::Progress;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Name of the report inside the written bundle.
pub const REPORT_FILE: &str = reflex_models::bundle::QUANTIZATION_REPORT_FILE;

/// A quantization report this tool wrote: JSON whose `tool` starts with `reflex-tools`.
const REPORT_KIND: Kind = Kind {
    what: "a reflex-tools quantization report",
    recognize: |p| {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| "not JSON")?;
        match v.get("tool").and_then(|t| t.as_str()) {
            Some(t) if t.starts_with("reflex-tools") => Ok(()),
            _ => Err("no `tool: reflex-tools ...` in it".into()),
        }
    },
};

/// A --save-held-out folder: numbered folders of `.npy` files, nothing else.
const HELD_OUT_KIND: Kind = Kind {
    what: "held-out inputs written by reflex-tools",
    recognize: |p| {
        for e in std::fs::read_dir(p).map_err(|e| e.to_string())?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.parse::<usize>().is_err() || !e.path().is_dir() {
                return Err(format!("it holds `{name}`"));
            }
            for f in std::fs::read_dir(e.path())
                .map_err(|e| e.to_string())?
                .flatten()
            {
                let n = f.file_name().to_string_lossy().to_string();
                if !n.ends_with(".npy") || !f.path().is_file() {
                    return Err(format!("it holds `{name}/{n}`"));
                }
            }
        }
        Ok(())
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Fp16,
    Int8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MethodArg {
    Minmax,
    Percentile,
    Entropy,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Input bundle directory (fp32).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Target precision.
    #[arg(long, value_enum)]
    pub precision: Target,
    /// Calibration data: an episode directory (episode.json + frames), or `synthetic` for an
    /// episode generated for the bundle's cameras and state.
    #[arg(long, default_value = "synthetic")]
    pub calibration: String,
    /// int8 activation range method: minmax, percentile (see --percentile) or entropy (KL, as
    /// TensorRT's entropy calibrator).
    #[arg(long, value_enum, default_value = "entropy")]
    pub method: MethodArg,
    /// Percentile of |x| for --method percentile.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f64,
    /// Frames used for calibration (int8).
    #[arg(long, default_value_t = 64)]
    pub calibration_frames: usize,
    /// Frames set aside to measure the error (never used for calibration).
    #[arg(long, default_value_t = 16)]
    pub held_out: usize,
    /// Accuracy gate in action units: one value for every dimension and/or NAME=VALUE per
    /// dimension, comma-separated. Exceeded: the command fails and writes nothing.
    #[arg(long)]
    pub max_error: Option<String>,
    /// Conv/Gemm/MatMul nodes to keep in float, besides the policy's last layer (int8).
    #[arg(long, value_delimiter = ',')]
    pub keep_float: Vec<String>,
    /// Timed runs per network for the latency comparison (median reported).
    #[arg(long, default_value_t = 20)]
    pub latency_runs: usize,
    /// CPU threads for evaluation and latency (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The CPU backend the gate and the latency are measured on: auto (the one `reflex run
    /// --backend auto` picks here for the quantized bundle: ONNX Runtime when its library loads,
    /// else tract), tract or onnxruntime.
    #[arg(long, default_value = "auto")]
    pub backend: BackendChoice,
    /// Report file (JSON); a copy is always written into the bundle as quantization-report.json.
    /// A report this tool wrote is replaced; any other existing file only with --force.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also write the held-out network inputs, `DIR/<i>/<graph input>.npy`, for checks with
    /// other runtimes: a new or empty folder, or held-out inputs written before with --force.
    #[arg(long)]
    pub save_held_out: Option<PathBuf>,
    /// Output bundle folder: a new or empty folder, or an existing bundle with --force (it may
    /// be --bundle itself). Written in a temporary sibling folder and renamed into place only on
    /// success; a folder holding anything but a bundle is never replaced.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the bundle at --out, the held-out folder and any file at --report.
    #[arg(long)]
    pub force: bool,
}

/// Writes a sample's observation into a policy's inputs; the policy maps cameras and state onto
/// its graph inputs.
fn feed(p: &mut dyn Policy, s: &calib::Sample) -> Result<()> {
    for (c, img) in s.images.iter().enumerate() {
        let buf = p.camera_input(c);
        ensure!(
            buf.len() == img.len(),
            "camera {c}: input buffer of {} values for an image of {}",
            buf.len(),
            img.len()
        );
        buf.copy_from_slice(img);
    }
    if let Some(buf) = p.state_input() {
        ensure!(
            buf.len() == s.state.len(),
            "state input buffer of {} values for a state of {}",
            buf.len(),
            s.state.len()
        );
        buf.copy_from_slice(&s.state);
    }
    Ok(())
}

/// Runs the fp32 graph with every value of `values` exposed as an output over the
/// calibration samples; returns each value's calibrated `amax` (and observed max).
fn calibrate(
    model: &tract_onnx::pb::ModelProto,
    values: &[String],
    samples: &[calib::Sample],
    bundle: &Bundle,
    method: ranges::Method,
) -> Result<BTreeMap<String, (f32, f32)>> {
    let cm = graph::with_outputs(model, values)?;
    let bytes = graph::encode(&cm);
    // The policy's own graph with every value to calibrate exposed as an extra output, fed
    // through the policy like the robot feeds it.
    let label = bundle.policy_path.with_extension("calibration.onnx");
    let session = TractSession::from_bytes(&bytes, &label, TractOptions { threads: 1 })
        .context("preparing the calibration graph in tract")?;
    let mut policy = SinglePassPolicy::new(session, &bundle.manifest, &label)?;
    enum Src {
        Input(usize),
        Output(usize),
    }
    let s = policy.session();
    let srcs = values
        .iter()
        .map(|a| {
            if let Some(i) = s.input_index(a) {
                Ok(Src::Input(i))
            } else if let Some(o) = s.output_index(a) {
                Ok(Src::Output(o))
            } else {
                bail!("activation `{a}` is neither a graph input nor exposed as an output")
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let mut collectors: Vec<ranges::Collector> = values
        .iter()
        .map(|_| ranges::Collector::new(method))
        .collect();
    let progress = Progress::new(samples.len() as u64, "calibrating");
    for (k, s) in samples.iter().enumerate() {
        progress.set_message(format!("frame {}", s.frame));
        feed(&mut policy, s)?;
        policy
            .run()
            .with_context(|| format!("calibration run on frame {}", s.frame))?;
        let session = policy.session();
        for (src, c) in srcs.iter().zip(collectors.iter_mut()) {
            match src {
                Src::Input(i) => c.add(session.input(*i)),
                Src::Output(o) => c.add(session.output(*o)),
            }
        }
        log::debug!(
            "calibration frame {} ({}/{})",
            s.frame,
            k + 1,
            samples.len()
        );
        progress.inc(1);
    }
    progress.finish();
    let mut out = BTreeMap::new();
    for (a, c) in values.iter().zip(&collectors) {
        let amax = c.amax(method);
        log::debug!(
            "range {a}: amax {amax:.4} (observed max {:.4})",
            c.max_abs()
        );
        out.insert(a.clone(), (amax, c.max_abs()));
    }
    Ok(out)
}

/// Raw outputs of both networks on the held-out samples, and their latencies (interleaved runs on
/// the first held-out sample after two warm-up runs each).
struct Evaluation {
    reference: Vec<Vec<f32>>,
    candidate: Vec<Vec<f32>>,
    fp32_ms: Vec<f64>,
    quantized_ms: Vec<f64>,
}

fn evaluate(
    a: &mut dyn Policy,
    b: &mut dyn Policy,
    held: &[calib::Sample],
    runs: usize,
) -> Result<Evaluation> {
    let mut e = Evaluation {
        reference: vec![],
        candidate: vec![],
        fp32_ms: vec![],
        quantized_ms: vec![],
    };
    // Held-out frames, then warm-up and timed runs, one step each.
    let progress = Progress::new((held.len() + 2 + runs) as u64, "accuracy run");
    progress.set_message("held-out frames");
    for s in held.iter().rev() {
        feed(a, s)?;
        feed(b, s)?;
        a.run()?;
        b.run()?;
        e.reference.push(a.output().to_vec());
        e.candidate.push(b.output().to_vec());
        progress.inc(1);
    }
    e.reference.reverse();
    e.candidate.reverse();
    // Both now hold the first held-out sample.
    progress.set_message("latency");
    for _ in 0..2 {
        a.run()?;
        b.run()?;
        progress.inc(1);
    }
    for _ in 0..runs {
        let t = Instant::now();
        a.run()?;
        e.fp32_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        b.run()?;
        e.quantized_ms.push(t.elapsed().as_secs_f64() * 1e3);
        progress.inc(1);
    }
    progress.finish();
    Ok(e)
}

/// Four significant digits, as a TOML float.
fn sig4(x: f32) -> toml::Value {
    toml::Value::Float(format!("{x:.4e}").parse::<f64>().unwrap_or(x as f64))
}

/// Writes each held-out sample as the graph inputs the policy feeds: `DIR/<i>/<input>.npy`.
fn write_held_out(
    dir: &Path,
    policy: &mut SinglePassPolicy<TractSession>,
    held: &[calib::Sample],
) -> Result<()> {
    for (i, s) in held.iter().enumerate() {
        let d = dir.join(i.to_string());
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        feed(policy, s)?;
        let session = policy.session();
        for (k, t) in session.inputs().iter().enumerate() {
            let p = d.join(format!("{}.npy", t.name));
            npy::write_npy(&p, &npy::NpyArray::f32(&t.shape, session.input(k).to_vec()))
                .with_context(|| format!("writing {}", p.display()))?;
        }
    }
    Ok(())
}

pub fn run(a: QuantizeArgs) -> Result<()> {
    let b_in = Bundle::load(&a.bundle)?;
    let m_in = &b_in.manifest;
    // The models converted: the policy, or an encoder + denoiser pair (fp16 only: int8 would
    // need the denoiser's activations calibrated over the scheduler's steps).
    let diffusion = m_in.diffusion.is_some();
    let roles: &[ModelRole] = if diffusion {
        if a.precision == Target::Int8 {
            bail!(
                "{}: an encoder + denoiser bundle (Diffusion Policy): int8 is not supported for \
                 its two models by this version; use --precision fp16",
                a.bundle.display()
            );
        }
        if a.save_held_out.is_some() {
            bail!(
                "--save-held-out writes one graph's inputs; an encoder + denoiser bundle has two \
                 graphs: leave it out"
            );
        }
        &[ModelRole::Encoder, ModelRole::Denoiser]
    } else {
        &[ModelRole::Policy]
    };
    let mut pis = vec![];
    for &role in roles {
        let pi = m_in
            .models
            .iter()
            .position(|f| f.role == role)
            .with_context(|| format!("the bundle has no {} model", role.as_str()))?;
        if m_in.models[pi].precision != Precision::Fp32 {
            bail!(
                "{}: the {} model is already {}; quantize its fp32 source",
                a.bundle.display(),
                role.as_str(),
                m_in.models[pi].precision.as_str()
            );
        }
        pis.push(pi);
    }
    let pi = pis[0];
    let limits = report::parse_limits(a.max_error.as_deref(), &m_in.action)?;
    let source = if a.calibration == "synthetic" {
        if a.precision == Target::Int8 {
            log::warn!(
                "int8 calibrated on a synthetic episode (the default): the activation ranges and \
                 the error report come from generated frames, not from your cameras; before this \
                 bundle drives a robot, quantize with --calibration EPISODE_DIR (frames recorded \
                 with `reflex record`)"
            );
        }
        calib::Source::Synthetic
    } else {
        calib::Source::Episode(PathBuf::from(&a.calibration))
    };
    let method = match a.method {
        MethodArg::Minmax => ranges::Method::MinMax,
        MethodArg::Percentile => {
            ensure!(
                a.percentile > 0.0 && a.percentile <= 100.0,
                "--percentile {} must be in (0, 100]",
                a.percentile
            );
            ranges::Method::Percentile(a.percentile)
        }
        MethodArg::Entropy => ranges::Method::Entropy,
    };
    let calibration_frames = match a.precision {
        Target::Fp16 => 0,
        Target::Int8 => {
            ensure!(
                a.calibration_frames > 0,
                "--calibration-frames must be at least 1"
            );
            a.calibration_frames
        }
    };
    // Every destination is checked before the work, and written only at the end.
    let out = OutDir::prepare(&a.out, Replace::ours_if(a.force), &BUNDLE_KIND)?;
    let report_replace = if a.force { Replace::Any } else { Replace::Ours };
    if let Some(p) = &a.report {
        output::check_file(p, report_replace, &REPORT_KIND)?;
    }
    let held_out_dir = a
        .save_held_out
        .as_deref()
        .map(|d| OutDir::prepare(d, Replace::ours_if(a.force), &HELD_OUT_KIND))
        .transpose()?;
    let scratch = out.scratch()?;
    let samples = calib::load(&b_in, &source, calibration_frames, a.held_out, &scratch)?;
    log::info!(
        "{}: {} calibration + {} held-out frames",
        source.describe(),
        samples.calibration.len(),
        samples.held_out.len()
    );

    // The fp32 sources: `b_in.policy_path` for a policy (the file tract runs), each role's
    // first file for an encoder + denoiser pair.
    let mut sources: Vec<(Vec<u8>, tract_onnx::pb::ModelProto)> = vec![];
    for &i in &pis {
        let path = if diffusion {
            b_in.model_path(&m_in.models[i])
        } else {
            b_in.policy_path.clone()
        };
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut model = graph::decode(&bytes).with_context(|| format!("{}", path.display()))?;
        // Weights kept in an external data file are read into the graph: the quantized model
        // is one file, its data files are not carried over.
        graph::inline_external_data(&mut model, path.parent().unwrap_or(&b_in.dir))
            .with_context(|| format!("{}", path.display()))?;
        sources.push((bytes, model));
    }
    let model = &sources[0].1;
    let mut info: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    // fp16 for TensorRT: the genuinely FLOAT16-typed form (strongly typed builds).
    let mut fp16_typed = None;
    // The QDQ model (every backend's form for fp16; TensorRT's for int8) and, for int8, the
    // operator form tract runs.
    let (qmodel, qop_model, precision, method_desc, scheme) = match a.precision {
        Target::Fp16 => {
            let (q, n) = graph::to_fp16(model)?;
            info.insert("fp16_initializers".into(), n.into());
            if m_in.models[pi].backends.contains(&BackendKind::Tensorrt) {
                fp16_typed = Some(graph::to_fp16_typed(model)?.0);
            }
            let scheme = "weights stored FLOAT16 with a Cast to FLOAT after each; compute and \
                          I/O in FLOAT";
            (
                q,
                None,
                Precision::Fp16,
                "fp16 weights".to_string(),
                scheme.to_string(),
            )
        }
        Target::Int8 => {
            let mut keep: BTreeSet<String> = a.keep_float.iter().cloned().collect();
            let last = graph::last_layer(model, &m_in.action.onnx_output)?;
            if let Some(l) = &last {
                keep.insert(l.clone());
            } else {
                log::warn!(
                    "no Gemm/MatMul/Conv found computing `{}`: the last layer is quantized too",
                    m_in.action.onnx_output
                );
            }
            let plan = graph::plan_int8(model, &keep)?;
            log::info!(
                "int8: {} nodes quantized, {} activations to calibrate, kept in float: {}",
                plan.quantized_nodes.len(),
                plan.activations.len(),
                plan.kept_float.join(", ")
            );
            let t = Instant::now();
            let mut values = plan.activations.clone();
            values.extend(
                plan.outputs
                    .iter()
                    .filter(|o| !plan.activations.contains(o))
                    .cloned(),
            );
            let amax = calibrate(model, &values, &samples.calibration, &b_in, method)?;
            log::info!(
                "calibrated {} ranges ({}) in {:.1} s",
                amax.len(),
                method.name(),
                t.elapsed().as_secs_f64()
            );
            let ranges: BTreeMap<String, f32> =
                amax.iter().map(|(k, v)| (k.clone(), v.0)).collect();
            let q = graph::apply_int8(model, &plan, &ranges)?;
            let (qop, op_float) = qop::apply(model, &plan, &ranges)?;
            info.insert(
                "operator_form_float_unsupported".into(),
                op_float.unsupported.into(),
            );
            info.insert("operator_form_float_scores".into(), op_float.scores.into());
            info.insert("quantized_nodes".into(), plan.quantized_nodes.len().into());
            info.insert("activations".into(), plan.activations.len().into());
            info.insert("kept_float".into(), plan.kept_float.clone().into());
            info.insert(
                "activation_amax".into(),
                amax.iter()
                    .map(|(k, (a, m))| {
                        (k.clone(), serde_json::json!({"amax": a, "observed_max": m}))
                    })
                    .collect::<serde_json::Map<_, _>>()
                    .into(),
            );
            let desc = match method {
                ranges::Method::Percentile(p) => format!("percentile {p}"),
                m => m.name().to_string(),
            };
            let scheme = "activations per-tensor symmetric 8-bit, weights per-output-channel \
                          symmetric int8 [-127, 127]; two files: QDQ (int8 activations with zero \
                          point 0, Q/DQ on the inputs of Conv/Gemm/MatMul, biases float) for \
                          TensorRT, operator form (uint8 activations with zero point 128, \
                          QLinearConv with int32 bias, QLinearMatMul, output scales from \
                          calibration, Gemm bias added in float) for tract";
            (q, Some(qop), Precision::Int8, desc, scheme.to_string())
        }
    };
    let qbytes = graph::encode(&qmodel);

    // The policy entries: one file for every backend (fp16), or for int8 the operator form for
    // tract and the QDQ form for TensorRT, each listed for its backend only.
    let src = &m_in.models[pi];
    let stem = src.file.strip_suffix(".onnx").unwrap_or(&src.file);
    // (index of the fp32 entry it replaces, entry, bytes)
    let mut entries: Vec<(usize, ModelFile, Vec<u8>)> = match &qop_model {
        // fp16 with TensorRT listed: the weights-only form for the CPU backends, the
        // FLOAT16-typed form for TensorRT.
        None if fp16_typed.is_some() => {
            let cpu: Vec<BackendKind> = src
                .backends
                .iter()
                .copied()
                .filter(|b| *b != BackendKind::Tensorrt)
                .collect();
            let mut v = vec![];
            if !cpu.is_empty() {
                v.push((
                    pi,
                    ModelFile {
                        precision,
                        backends: cpu,
                        // The weights are inlined (above).
                        data_files: vec![],
                        ..src.clone()
                    },
                    qbytes.clone(),
                ));
            }
            if let Some(t) = &fp16_typed {
                v.push((
                    pi,
                    ModelFile {
                        file: format!("{stem}.fp16.onnx"),
                        precision,
                        backends: vec![BackendKind::Tensorrt],
                        data_files: vec![],
                        ..src.clone()
                    },
                    graph::encode(t),
                ));
            }
            v
        }
        None => vec![(
            pi,
            ModelFile {
                precision,
                data_files: vec![],
                ..src.clone()
            },
            qbytes.clone(),
        )],
        Some(qop) => {
            let mut v = vec![];
            for (bk, form, bytes) in [
                (BackendKind::Tract, "qop", graph::encode(qop)),
                (BackendKind::Tensorrt, "qdq", qbytes.clone()),
            ] {
                if src.backends.contains(&bk) {
                    let f = ModelFile {
                        file: format!("{stem}.{form}.onnx"),
                        precision,
                        backends: vec![bk],
                        data_files: vec![],
                        ..src.clone()
                    };
                    v.push((pi, f, bytes));
                }
            }
            v
        }
    };
    // The denoiser of a pair, converted like the encoder (fp16 only, checked above).
    for (k, &i) in pis.iter().enumerate().skip(1) {
        let (q, n) = graph::to_fp16(&sources[k].1)?;
        let key = format!("fp16_initializers_{}", m_in.models[i].role.as_str());
        info.insert(key, n.into());
        let entry = ModelFile {
            precision,
            data_files: vec![],
            ..m_in.models[i].clone()
        };
        entries.push((i, entry, graph::encode(&q)));
    }

    // Stage the quantized bundle and load it as the robot would: the tract policy runs the file
    // listed for tract (`Bundle::policy_path`), so the evaluation below measures that form.
    let mut manifest: Manifest = m_in.clone();
    // Named apart from its source, so that logs, `reflex bench` reports and `--compare` tell the
    // two bundles apart: `NAME-int8` (unchanged if the name already ends so).
    let suffix = format!("-{}", precision.as_str());
    if !manifest.name.ends_with(&suffix) {
        manifest.name.push_str(&suffix);
    }
    let mut files: Vec<Vec<u8>> = vec![];
    let mut models = vec![];
    for (i, f) in m_in.models.iter().enumerate() {
        if pis.contains(&i) {
            for (_, e, bytes) in entries.iter().filter(|(j, _, _)| *j == i) {
                models.push(e.clone());
                files.push(bytes.clone());
            }
        } else {
            let p = b_in.dir.join(&f.file);
            files.push(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
            models.push(f.clone());
        }
    }
    manifest.models = models;
    let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
    let trial = scratch.join("trial");
    // The DBC and the other models' data files travel with the bundle, hashed again.
    let converted: Vec<&str> = pis.iter().map(|&i| m_in.models[i].file.as_str()).collect();
    let copies = carried_files(&b_in, &converted);
    write_bundle_with(
        &trial,
        &mut manifest.clone(),
        &refs,
        &copies,
        reflex_models::output::Replace::Ours,
    )?;
    let b_q = Bundle::load(&trial).context("the quantized bundle does not load")?;
    let threads = a.threads.unwrap_or_else(|| TractOptions::default().threads);
    let topts = TractOptions { threads };
    // The backend the quantized bundle will run on here: what `auto` picks for it (or the one
    // asked for); the gate and the latency are measured on it.
    let on = decide(&b_q, a.backend, topts)
        .context("choosing the backend to measure the quantized model on")?
        .backend;
    ensure!(
        CPU_BACKENDS.contains(&on),
        "--backend {}: quantize measures on a CPU backend (tract, onnxruntime)",
        on.as_str()
    );
    // The file listed for tract, which both CPU backends run, hence the one measured below
    // (both files of an encoder + denoiser pair).
    let measured = if diffusion {
        converted.join(" + ")
    } else {
        b_q.policy_path
            .strip_prefix(&trial)
            .unwrap_or(&b_q.policy_path)
            .display()
            .to_string()
    };
    info.insert("measured_file".into(), measured.into());

    // Both networks on the measured backend, nothing written next to either bundle.
    let mut fp32_policy = prepare_policy_read_only(&b_in, on, topts)
        .with_context(|| format!("the fp32 model on {}", on.as_str()))?;
    let mut q_policy = prepare_policy_read_only(&b_q, on, topts)
        .with_context(|| format!("the {} model on {}", precision.as_str(), on.as_str()))?;
    let ev = evaluate(
        fp32_policy.as_mut(),
        q_policy.as_mut(),
        &samples.held_out,
        a.latency_runs.max(1),
    )?;
    drop((fp32_policy, q_policy));
    let dims = report::action_errors(&ev.reference, &ev.candidate, &m_in.action, &limits);
    let failures = report::gate_failures(&dims);
    let (mut f_ms, mut q_ms) = (ev.fp32_ms.clone(), ev.quantized_ms.clone());
    let (fp32_median_ms, quantized_median_ms) =
        (report::median(&mut f_ms), report::median(&mut q_ms));
    let gated = limits.iter().any(Option::is_some);
    // A backend whose result fails the gate is dropped from the model entry. One backend is
    // measured here, so a failure leaves no measured backend and the command fails below; the
    // others, not measured, stay listed with that said.
    let failed = !failures.is_empty();
    let measured_verdict = if failed {
        "failed the gate: dropped"
    } else if gated {
        "passed the gate"
    } else {
        "measured, no gate (--max-error not given)"
    };
    let mut backends = BTreeMap::new();
    let mut allowed = vec![];
    for &bk in &m_in.models[pi].backends {
        let verdict = match bk {
            _ if bk == on => measured_verdict.to_string(),
            // The command fails below and writes no bundle: nothing is "kept".
            _ if failed => format!(
                "not measured here; no bundle written, as {} failed the gate",
                on.as_str()
            ),
            BackendKind::Tensorrt => "not measured here (no TensorRT on this machine): kept; \
                                      validate on the board before use"
                .to_string(),
            BackendKind::Tract | BackendKind::Onnxruntime => format!(
                "not measured here ({} measured the same file): kept; `reflex-tools quantize \
                 --backend {}` measures it",
                on.as_str(),
                bk.as_str()
            ),
        };
        if bk != on || !failed {
            allowed.push(bk);
        }
        backends.insert(bk.as_str().to_string(), verdict);
    }
    // ONNX Runtime runs the file listed for tract without being listed itself.
    backends
        .entry(on.as_str().to_string())
        .or_insert_with(|| format!("{measured_verdict} (runs the file listed for tract)"));
    let rep = report::Report {
        tool: format!("reflex-tools {} quantize", env!("CARGO_PKG_VERSION")),
        input_bundle: b_in.dir.display().to_string(),
        input_model_sha256: sources
            .iter()
            .map(|(b, _)| sha256_bytes(b))
            .collect::<Vec<_>>()
            .join(", "),
        precision: precision.as_str(),
        method: method_desc.clone(),
        scheme: scheme.clone(),
        calibration: report::Calibration {
            source: source.describe(),
            frames: samples.calibration.iter().map(|s| s.frame).collect(),
            held_out_frames: samples.held_out.iter().map(|s| s.frame).collect(),
        },
        graph: info,
        measured_on: on.as_str(),
        action_output: match m_in.action.output {
            ActionOutput::Single => "single".into(),
            ActionOutput::Chunk { horizon } => format!("chunk (horizon {horizon})"),
        },
        dims,
        latency: report::Latency {
            backend: on.as_str(),
            threads,
            runs: ev.fp32_ms.len(),
            fp32_median_ms,
            quantized_median_ms,
            speedup: fp32_median_ms / quantized_median_ms.max(1e-9),
        },
        gate_passed: failures.is_empty(),
        gate_failures: failures.clone(),
        backends,
    };
    print!("{}", rep.table());
    if failed {
        let advice = match a.precision {
            Target::Int8 => format!(
                "to lower the error: {}more calibration frames (--calibration-frames), another \
                 range method (--method percentile or minmax), keep the most sensitive layers in \
                 float (--keep-float NODE, the ONNX names of Conv/Gemm/MatMul nodes), or \
                 --precision fp16",
                // Said only when the frames were generated ones.
                if matches!(source, calib::Source::Synthetic) {
                    "calibrate on your robot's frames (--calibration EPISODE_DIR), "
                } else {
                    ""
                }
            ),
            Target::Fp16 => "fp16 keeps 11 significant bits in every weight: a limit below its \
                             error cannot be met; loosen the limit of the joints named \
                             (--max-error NAME=VALUE) or keep fp32"
                .to_string(),
        };
        bail!(
            "{} quantization exceeds --max-error on {}, the backend measured here ({}); nothing \
             written to {}; {advice}",
            precision.as_str(),
            on.as_str(),
            failures.join("; "),
            a.out.display()
        );
    }

    // Final bundle: manifest with precision, backends, provenance; the report inside. A gate
    // failure returned above, so every entry keeps its backends.
    debug_assert!(entries
        .iter()
        .all(|(_, e, _)| e.backends.iter().all(|b| allowed.contains(b))));
    let mut q = toml::map::Map::new();
    let s = |v: &str| toml::Value::String(v.to_string());
    q.insert("precision".into(), s(precision.as_str()));
    q.insert("method".into(), s(&method_desc));
    q.insert("scheme".into(), s(&scheme));
    q.insert("calibration".into(), s(&source.describe()));
    q.insert(
        "calibration_frames".into(),
        toml::Value::Integer(samples.calibration.len() as i64),
    );
    q.insert(
        "held_out_frames".into(),
        toml::Value::Integer(samples.held_out.len() as i64),
    );
    q.insert("measured_on".into(), s(on.as_str()));
    let mut max_err = toml::map::Map::new();
    for d in &rep.dims {
        max_err.insert(d.name.clone(), sig4(d.max_abs));
    }
    q.insert("max_error".into(), toml::Value::Table(max_err));
    if gated {
        let mut lim = toml::map::Map::new();
        for d in &rep.dims {
            if let Some(l) = d.limit {
                lim.insert(d.name.clone(), sig4(l));
            }
        }
        q.insert("max_error_limit".into(), toml::Value::Table(lim));
    }
    let mut lat = toml::map::Map::new();
    lat.insert("fp32".into(), sig4(fp32_median_ms as f32));
    lat.insert(precision.as_str().into(), sig4(quantized_median_ms as f32));
    // Measured on `on` (the backend that will run the bundle), so keyed by it.
    q.insert(
        format!("{}_latency_ms", on.as_str()),
        toml::Value::Table(lat),
    );
    if m_in.models[pi].backends.contains(&BackendKind::Tensorrt) {
        q.insert(
            "tensorrt".into(),
            s("not measured (no TensorRT where this was quantized): validate on the board"),
        );
    }
    q.insert("source_sha256".into(), s(&rep.input_model_sha256));
    q.insert("report".into(), s(REPORT_FILE));
    manifest
        .provenance
        .insert("quantization".into(), toml::Value::Table(q));

    let json = serde_json::to_string_pretty(&rep)?;
    stage_bundle_with(&out, &mut manifest, &refs, &copies)
        .context("the quantized bundle does not load")?;
    let rp = out.path().join(REPORT_FILE);
    std::fs::write(&rp, &json).with_context(|| format!("writing {}", rp.display()))?;
    if let Some(d) = &held_out_dir {
        // The graph inputs as the runtime's policy feeds them (tract's session names them).
        let mut fp32_policy = SinglePassPolicy::tract(&b_in, topts)?;
        write_held_out(&d.path(), &mut fp32_policy, &samples.held_out)?;
    }
    out.commit()?;
    if let Some(p) = &a.report {
        output::write_file(p, json.as_bytes(), report_replace, &REPORT_KIND)?;
    }
    if let Some(d) = held_out_dir {
        d.commit()?;
    }
    let sizes: Vec<String> = entries
        .iter()
        .map(|(_, e, b)| format!("{} {} bytes", e.file, b.len()))
        .collect();
    println!(
        "wrote {} ({} model: {}; fp32 was {} bytes)",
        a.out.display(),
        precision.as_str(),
        sizes.join(", "),
        sources.iter().map(|(b, _)| b.len()).sum::<usize>()
    );
    Ok(())
}
