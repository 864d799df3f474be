//! `reflex check`: validate a bundle and print what it expects; with `--cameras`, check that
//! each camera sees what training saw.

use super::Outcome;
use crate::args::{BackendArgs, BundleArg};
use crate::open::{load_bundle, Devices};
use anyhow::{bail, Context, Result};
use reflex_models::manifest::BackendKind;
use reflex_models::Bundle;
use reflex_runtime::camera::viewpoint::{
    FrameDecoder, Verdict, ViewpointReference, ViewpointReport,
};
use reflex_runtime::can::codec::Codec;
use reflex_runtime::clock::{Clock, MonotonicClock};
use reflex_runtime::control::plan::feed_check;
use reflex_runtime::infer::parity;
use reflex_runtime::infer::select::{prepare_policy, select_backend, survey};
use reflex_runtime::infer::tensorrt::{self, ThisMachine};
use reflex_runtime::io::Camera;
use reflex_runtime::spec::CameraSource;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    bundle: BundleArg,
    /// Check each camera's viewpoint against the training frames stored in the bundle (`export
    /// --reference-frames`): shift, rotation, scale, brightness, white balance and sharpness,
    /// graded OK / WARN / REFUSE by the manifest's thresholds. Sources as `reflex run --camera`
    /// takes them (`[NAME=]/dev/videoN`, `[NAME=]replay:EPISODE_DIR`), comma-separated or repeated.
    /// Exit status 1 when a camera is refused.
    #[arg(long, value_name = "SOURCE", num_args = 1.., value_delimiter = ',')]
    cameras: Vec<CameraSource>,
    #[command(flatten)]
    backend: BackendArgs,
    /// Run the selected backend and tract on the same seeded inputs and print the largest
    /// difference per action dimension in the action's unit, against `action.parity_tolerance`
    /// in policy.toml (else a default per model precision). Exit status 1 beyond it.
    #[arg(long)]
    parity: bool,
}

pub fn run(a: Args) -> Result<Outcome> {
    let t = Instant::now();
    let b = load_bundle(&a.bundle.bundle)?;
    let m = &b.manifest;
    println!("bundle {}", b.dir.display());
    println!("  name: {}  format_version: {}", m.name, m.format_version);
    for f in &m.models {
        let backends: Vec<&str> = f.backends.iter().map(|b| b.as_str()).collect();
        println!(
            "  model {:?}: {} ({}, backends: {})",
            f.role,
            f.file,
            f.precision.as_str(),
            backends.join(", ")
        );
    }
    // The tensor contract as the file declares it, element types included (float64 and
    // float16 tensors are converted from and to f32 at the boundary).
    let tensors = |v: &[reflex_models::TensorSpec]| {
        v.iter()
            .map(|t| format!("{} {} {}", t.name, t.elem, t.shape_text()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &m.diffusion {
        None => println!(
            "  tensors: in {}; out {}",
            tensors(&b.io.inputs),
            tensors(&b.io.outputs)
        ),
        Some(d) => {
            // `b.io` is the encoder's; the denoiser's header is read here (no graph built).
            println!(
                "  encoder tensors: in {}; out {}",
                tensors(&b.io.inputs),
                tensors(&b.io.outputs)
            );
            if let Some(f) = m
                .models_with_role(reflex_models::manifest::ModelRole::Denoiser)
                .next()
            {
                let io = reflex_models::bundle::read_model_io(&b.model_path(f))?;
                println!(
                    "  denoiser tensors: in {}; out {}",
                    tensors(&io.inputs),
                    tensors(&io.outputs)
                );
            }
            let s = &d.scheduler;
            println!(
                "  diffusion: {:?}, {} of {} timesteps per inference, beta {:?}, prediction {:?}, \
                 clip {}, seed {}; history {} observation(s), horizon {} (output from step {})",
                s.kind,
                s.num_inference_steps,
                s.num_train_timesteps,
                s.beta_schedule,
                s.prediction_type,
                if s.clip_sample {
                    format!("+-{}", s.clip_sample_range)
                } else {
                    "off".into()
                },
                d.seed,
                d.n_obs_steps,
                d.horizon,
                d.n_obs_steps - 1
            );
        }
    }
    for f in &m.models {
        for d in &f.data_files {
            println!("  data file {} of {}: sha256 checked", d.file, f.file);
        }
    }
    for s in survey(&b, a.backend.tract()) {
        match &s.status {
            Ok(how) => println!("  backend {}: available ({how})", s.backend.as_str()),
            Err(why) => println!("  backend {}: not available: {why}", s.backend.as_str()),
        }
    }
    // Every TensorRT condition, in the order selection checks them (the first failing one is
    // the reason above).
    for c in tensorrt::probe(&b, &ThisMachine).conditions {
        match &c.verdict {
            Ok(found) => println!("    tensorrt {}: yes: {found}", c.what),
            Err(why) => println!("    tensorrt {}: no: {why}", c.what),
        }
    }
    println!(
        "  control: {} Hz, {} step(s) per inference, {}, latency compensation {}",
        m.control.rate_hz,
        m.control.steps_per_inference,
        match m.control.temporal_ensemble_m {
            Some(k) => format!("temporal ensembling (weights exp(-{k} i))"),
            None => "no temporal ensembling".to_string(),
        },
        if m.control.latency_compensation {
            "on"
        } else {
            "off"
        }
    );
    for c in &m.cameras {
        println!(
            "  camera {}: {}x{} {} -> {} [1,{},{},{}]",
            c.name,
            c.capture.width,
            c.capture.height,
            c.capture.format.as_str(),
            c.onnx_input,
            c.preprocess.color.channels(),
            c.preprocess.resize.height,
            c.preprocess.resize.width
        );
    }
    println!(
        "  state: {} ({})",
        m.state.names.join(", "),
        m.state.normalization.kind_str()
    );
    println!(
        "  action: {} -> {} {} ({}), limits: {}",
        m.action.names.join(", "),
        m.action.onnx_output,
        match m.action.output {
            reflex_models::manifest::ActionOutput::Single => "one action per inference".to_string(),
            reflex_models::manifest::ActionOutput::Chunk { horizon } =>
                format!("chunk of {horizon} steps"),
        },
        m.action.normalization.kind_str(),
        if m.action.limits.is_some() {
            "yes"
        } else {
            "NONE (`reflex run` refuses the bundle until `[action.limits]` with min, max and \
             max_rate is added to policy.toml, or runs it with --allow-unlimited)"
        }
    );
    // The motor protocol is checked too (a DBC file's mapping and ranges), so that a bundle that
    // cannot drive its robot fails here and not at the first command.
    let codec = Codec::from_bundle(&b)?;
    println!("  can: {}", codec.describe());
    if codec.protocol() != "per-joint" {
        match codec.feedback(&m.state.names, 0) {
            Ok(_) => println!("  state from the bus (--state can:IFACE): every state dimension"),
            Err(e) => println!("  state from the bus (--state can:IFACE): not available: {e}"),
        }
    }
    // Can the plan stay fed at this machine's inference latency (slowest of 3 runs after one)?
    match select_backend(&b, a.backend.backend, a.backend.tract()) {
        Ok((mut backend, selection)) => {
            println!("  selected: {selection}");
            backend.run()?;
            let mut latency_s = 0f64;
            for _ in 0..3 {
                let t = Instant::now();
                backend.run()?;
                latency_s = latency_s.max(t.elapsed().as_secs_f64());
            }
            let h = m.action.output.horizon();
            let feed = feed_check(&m.control, h, m.control.rate_hz, latency_s);
            let warn = if feed.fed() { "" } else { "WARNING: " };
            println!("  {warn}{}", feed.message);
            if a.parity {
                check_parity(&b, backend.as_mut(), selection.backend, &a)?;
            }
        }
        Err(e) if a.parity => bail!("parity: no backend selected ({e})"),
        Err(e) => println!("  plan feed: not measured ({e})"),
    }
    if !a.cameras.is_empty() {
        let (mut cams, _) = Devices::new(&b).cameras(&a.cameras)?;
        let reports = viewpoint(&b, &mut cams, &MonotonicClock::new())?;
        if reports.iter().any(|r| r.verdict == Verdict::Refuse) {
            bail!("a camera does not see what training saw (see above)");
        }
    }
    // Last: OK only once every check above passed (the CAN protocol's included).
    println!(
        "bundle {} OK ({:.0} ms){}",
        b.dir.display(),
        t.elapsed().as_secs_f64() * 1e3,
        if m.action.limits.is_none() {
            "; WARNING: no [action.limits], so `reflex run` refuses it (see `limits` above)"
        } else {
            ""
        }
    );
    Ok(Outcome::Success)
}

/// `--parity`: the selected backend against tract on the same inputs, per action dimension.
fn check_parity(
    b: &Bundle,
    selected: &mut dyn reflex_runtime::infer::policy::Policy,
    backend: BackendKind,
    a: &Args,
) -> Result<()> {
    if backend == BackendKind::Tract {
        println!("  parity: tract selected, the reference itself: nothing to compare");
        return Ok(());
    }
    let m = &b.manifest;
    let precision = m
        .policy_model_for(backend)
        .or_else(|| m.policy_model())
        .map(|f| f.precision)
        .context("the bundle lists no policy model")?;
    let (tolerance, from) = parity::tolerances(m, precision);
    let mut tract = prepare_policy(b, BackendKind::Tract, a.backend.tract())
        .context("parity: tract, the reference, cannot run this bundle")?;
    let dims = parity::compare(m, selected, tract.as_mut(), &tolerance)?;
    println!(
        "  parity: {} vs tract on {} seeded inputs, action units (tolerance: {from})",
        backend.as_str(),
        parity::SAMPLES
    );
    for d in &dims {
        println!(
            "    {:<16} max |diff| {:.3e} {}  tolerance {:.3e}  {}",
            d.name,
            d.max_abs,
            d.unit,
            d.tolerance,
            if d.within() { "OK" } else { "OVER" }
        );
    }
    let over: Vec<&str> = dims
        .iter()
        .filter(|d| !d.within())
        .map(|d| d.name.as_str())
        .collect();
    if !over.is_empty() {
        bail!(
            "parity: {} differs from tract beyond the tolerance on {} (see above); do not run \
             this backend on the robot until it is explained",
            backend.as_str(),
            over.join(", ")
        );
    }
    Ok(())
}

/// How long to wait for each camera's first frame.
const FIRST_FRAME_TIMEOUT_NS: u64 = 3_000_000_000;

/// The viewpoint check of every camera that has reference frames: grabs one frame from each
/// (waiting up to 3 s), compares it with the bundle's training frames and prints one report per
/// camera. Cameras without reference frames are said to be unchecked.
pub fn viewpoint(
    b: &Bundle,
    cams: &mut [Box<dyn Camera>],
    clock: &dyn Clock,
) -> Result<Vec<ViewpointReport>> {
    let mut reports = Vec::new();
    for (spec, cam) in b.manifest.cameras.iter().zip(cams.iter_mut()) {
        let Some(vp) = &spec.viewpoint else {
            println!(
                "  camera {}: no reference frames in the bundle (viewpoint not checked; export with \
                 --reference-frames DIR to add them)",
                spec.name
            );
            continue;
        };
        let t = std::time::Instant::now();
        let reference = ViewpointReference::load(&spec.name, vp, &b.dir)?;
        let mut decoder = FrameDecoder::new(spec)?;
        let deadline = clock.now_ns() + FIRST_FRAME_TIMEOUT_NS;
        let planes = loop {
            let now = clock.now_ns();
            if let Some(f) = cam.latest(now, (now + 50_000_000).min(deadline))? {
                break decoder.decode(&f)?;
            }
            if now >= deadline {
                bail!(
                    "camera `{}` ({}): no frame within {} s for the viewpoint check",
                    spec.name,
                    cam.name(),
                    FIRST_FRAME_TIMEOUT_NS / 1_000_000_000
                );
            }
            clock.sleep_until(now + 5_000_000);
        };
        let report = reference
            .check(&planes)
            .with_context(|| format!("camera `{}`", spec.name))?;
        println!(
            "  {} ({:.0} ms)",
            report.summary().replace('\n', "\n  "),
            t.elapsed().as_secs_f64() * 1e3
        );
        reports.push(report);
    }
    Ok(reports)
}
