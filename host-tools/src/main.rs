//! `reflex-tools`: the workstation side. Turns checkpoints into bundles the robot can run.

mod quantize;
mod stats;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use reflex_models::bundle::{parse_manifest, stage_bundle, validate_manifest, BUNDLE_KIND};
use reflex_models::manifest::{
    BackendKind, Convention, Manifest, ModelFile, ModelRole, Precision, MANIFEST_FILE,
};
use reflex_models::npy;
use reflex_models::onnx::{
    export_policy, EncoderKind, HeadKind, KeyLayout, PolicyArch, SafetensorsWeights, SeededWeights,
    WeightSource,
};
use reflex_models::output::{self, OutDir, Replace};
use reflex_models::reference::{default_capture, reference_manifest};
use reflex_models::Bundle;
use std::path::{Path, PathBuf};
use tract_onnx::prelude::*;

#[derive(Parser)]
#[command(
    name = "reflex-tools",
    version,
    about = "Turn policy checkpoints into bundles reflex runs on the robot",
    long_about = "Turn policy checkpoints into bundles reflex runs on the robot.\n\n\
        A bundle is a directory: policy.toml (the manifest: cameras and their preprocessing, \
        state/action names, units, normalization, limits, control rate) plus the ONNX model. \
        `export` writes one from a safetensors checkpoint of a reference architecture (ResNet-18 \
        or ViT-S/16 with torchvision/timm key names), from seeded weights, or from an ONNX file \
        you exported with torch.onnx.export; `inspect` shows one; `infer` runs its network on \
        .npy tensors for parity checks against PyTorch; `quantize` writes its fp16 or int8 \
        forms (int8: QLinearConv/QLinearMatMul for tract, QDQ for TensorRT) with an accuracy \
        report in action units."
)]
struct Cli {
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a bundle from a reference architecture (checkpoint or seed) or from an ONNX file.
    Export(Box<ExportArgs>),
    /// Print a bundle's manifest, graph I/O, parameter count and FLOPs.
    Inspect {
        /// Bundle directory.
        bundle: PathBuf,
    },
    /// Run a bundle's raw network on .npy tensors (no pre/post-processing), write outputs as .npy.
    Infer {
        #[arg(long)]
        bundle: PathBuf,
        /// NAME=FILE.npy, one per graph input (names as `inspect` lists them).
        #[arg(long = "input", required = true)]
        inputs: Vec<String>,
        /// Output .npy file (the action output), or an existing folder to get every output as
        /// `NAME.npy`. An existing file is not overwritten unless --force is given.
        #[arg(long)]
        output: PathBuf,
        /// Overwrite existing output files.
        #[arg(long)]
        force: bool,
    },
    /// Quantize a bundle to fp16 or int8 (operator form for tract + QDQ for TensorRT), with an
    /// accuracy report in action units and a gate.
    Quantize(Box<quantize::QuantizeArgs>),
}

#[derive(Args)]
struct ExportArgs {
    /// Reference architecture: resnet18 or vit-s16.
    #[arg(long, conflicts_with = "onnx")]
    arch: Option<String>,
    /// A safetensors checkpoint with torchvision/timm key names (`encoder.<name>`, `head.<i>.*`).
    #[arg(long, conflicts_with = "seed")]
    weights: Option<PathBuf>,
    /// Generate deterministic weights from this seed instead of reading a checkpoint.
    #[arg(long)]
    seed: Option<u64>,
    /// Policy config (TOML: encoder, cameras, shared_encoder, state_dim, action_dim, hidden, head),
    /// overriding the flags below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Camera names, comma-separated.
    #[arg(long, default_value = "front", value_delimiter = ',')]
    cameras: Vec<String>,
    /// One encoder shared by all cameras.
    #[arg(long)]
    shared_encoder: bool,
    /// `single` or `chunk:H` (H future actions per inference).
    #[arg(long, default_value = "chunk:16")]
    head: String,
    /// Hidden layer widths of the MLP head, comma-separated.
    #[arg(long, default_value = "256", value_delimiter = ',')]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 6)]
    state_dim: usize,
    #[arg(long, default_value_t = 6)]
    action_dim: usize,
    /// Checkpoint key prefix of the encoder (default `encoder.` shared, `encoders.CAMERA.` per
    /// camera; LeRobot ACT: `model.backbone.`).
    #[arg(long)]
    encoder_prefix: Option<String>,
    /// Checkpoint key prefix of the head.
    #[arg(long)]
    head_prefix: Option<String>,
    /// An ONNX file exported from PyTorch; needs --manifest.
    #[arg(long)]
    onnx: Option<PathBuf>,
    /// A policy.toml template describing the ONNX file's cameras, state and actions (its
    /// `models` entries are replaced).
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Normalization statistics: LeRobot normalizer .safetensors or dataset meta/stats.json, openpi
    /// norm_stats.json, or plain .toml/.json.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// State normalization kind when --stats is given: mean_std, min_max, quantile, quantile10,
    /// identity.
    #[arg(long, default_value = "mean_std")]
    state_norm: String,
    /// Action normalization kind when --stats is given.
    #[arg(long, default_value = "mean_std")]
    action_norm: String,
    /// Whose formula (epsilon included) the normalization follows: lerobot, openpi or plain.
    /// Default: the framework that writes the --stats file's format (LeRobot safetensors or
    /// meta/stats.json: lerobot; openpi norm_stats.json: openpi; other TOML/JSON: plain).
    #[arg(long, value_parser = parse_convention)]
    norm_convention: Option<Convention>,
    /// Bundle name (default: the output directory's name).
    #[arg(long)]
    name: Option<String>,
    /// Output bundle folder: a new or empty folder, or an existing bundle with --force. Written
    /// into a temporary sibling folder and renamed into place only once it loads back, so a
    /// failed export leaves nothing behind and the previous bundle untouched. A folder holding
    /// anything but a bundle is never replaced, nor the current or home folder.
    #[arg(long)]
    out: PathBuf,
    /// Replace the bundle already at --out (only a reflex bundle: never other files).
    #[arg(long)]
    force: bool,
}

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    let r = match cli.cmd {
        Cmd::Export(a) => cmd_export(*a),
        Cmd::Inspect { bundle } => cmd_inspect(&bundle),
        Cmd::Infer {
            bundle,
            inputs,
            output,
            force,
        } => cmd_infer(&bundle, &inputs, &output, force),
        Cmd::Quantize(a) => quantize::run(*a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn parse_convention(s: &str) -> Result<Convention, String> {
    Convention::parse(s).ok_or_else(|| format!("`{s}`: expected lerobot, openpi or plain"))
}

fn parse_arch(a: &ExportArgs) -> Result<PolicyArch> {
    if let Some(p) = &a.config {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        return toml::from_str(&text)
            .with_context(|| format!("{}: not a valid policy config", p.display()));
    }
    let encoder = match a.arch.as_deref() {
        Some("resnet18") => EncoderKind::Resnet18,
        Some("vit-s16") | Some("vit_s16") | Some("vit-s") => EncoderKind::VitS16,
        Some(other) => bail!("--arch {other}: expected resnet18 or vit-s16"),
        None => bail!("--arch or --config is needed (or --onnx with --manifest)"),
    };
    let head = match a.head.as_str() {
        "single" => HeadKind::Single,
        h => match h.strip_prefix("chunk:").map(str::parse::<usize>) {
            Some(Ok(horizon)) if horizon > 0 => HeadKind::Chunk { horizon },
            _ => bail!("--head {h}: expected single or chunk:H with H > 0"),
        },
    };
    Ok(PolicyArch {
        encoder,
        cameras: a.cameras.clone(),
        shared_encoder: a.shared_encoder,
        state_dim: a.state_dim,
        action_dim: a.action_dim,
        hidden: a.hidden.clone(),
        head,
    })
}

fn apply_stats(m: &mut Manifest, a: &ExportArgs) -> Result<()> {
    let Some(p) = &a.stats else { return Ok(()) };
    stats::apply(m, p, &a.state_norm, &a.action_norm, a.norm_convention)
}

fn cmd_export(a: ExportArgs) -> Result<()> {
    // The target is checked before any work, and written only at the end.
    let out = OutDir::prepare(&a.out, Replace::ours_if(a.force), &BUNDLE_KIND)?;
    let progress = reflex_runtime::progress::Progress::spinner("export");
    progress.set_message("building the graph");
    let name = a.name.clone().unwrap_or_else(|| {
        a.out
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "policy".into())
    });
    let (mut manifest, bytes) = if let Some(onnx) = &a.onnx {
        let tpl = a.manifest.as_ref().context(
            "--onnx needs --manifest TEMPLATE.toml describing cameras, state and actions",
        )?;
        let text =
            std::fs::read_to_string(tpl).with_context(|| format!("reading {}", tpl.display()))?;
        let mut m = parse_manifest(&text, tpl)?;
        let bytes = std::fs::read(onnx).with_context(|| format!("reading {}", onnx.display()))?;
        m.models = vec![ModelFile {
            role: ModelRole::Policy,
            file: "policy.onnx".into(),
            sha256: "0".repeat(64),
            precision: Precision::Fp32,
            backends: vec![BackendKind::Tract, BackendKind::Tensorrt],
        }];
        m.provenance.insert(
            "source_onnx".into(),
            toml::Value::String(onnx.display().to_string()),
        );
        (m, bytes)
    } else {
        let arch = parse_arch(&a)?;
        let mut layout = KeyLayout::default();
        if arch.cameras.len() == 1 {
            // A one-camera policy's module has a plain `encoder` child, whatever `shared_encoder`.
            layout.per_camera_encoder = layout.shared_encoder.clone();
        }
        if let Some(p) = &a.encoder_prefix {
            // One prefix for the encoder: used for the shared encoder, and for a single camera's.
            layout.shared_encoder = p.clone();
            layout.per_camera_encoder = if arch.cameras.len() == 1 {
                p.clone()
            } else {
                format!("{p}{{camera}}.")
            };
        }
        if let Some(p) = &a.head_prefix {
            layout.head = p.clone();
        }
        let mut weights: Box<dyn WeightSource> = match (&a.weights, a.seed) {
            (Some(p), _) => Box::new(SafetensorsWeights::open(p)?.with_layout(layout)),
            (None, Some(seed)) => Box::new(SeededWeights::new(seed)),
            (None, None) => bail!("give --weights FILE.safetensors or --seed N"),
        };
        let bytes = export_policy(&arch, weights.as_mut())?;
        let mut m = reference_manifest(&arch, &name, default_capture());
        let source = match (&a.weights, a.seed) {
            (Some(p), _) => format!("checkpoint {}", p.display()),
            (None, Some(seed)) => format!("seeded weights (seed {seed})"),
            _ => String::new(),
        };
        m.provenance
            .insert("source".into(), toml::Value::String(source));
        (m, bytes)
    };
    manifest.name = name;
    apply_stats(&mut manifest, &a)?;
    // Validate against the graph before anything is written.
    progress.set_message("checking the graph");
    let tmp = out.scratch()?.join("policy.onnx");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    // The graph as tract loads and types it: a file tract cannot run is refused here.
    let io = reflex_runtime::infer::tract::graph_io(&tmp)?;
    validate_manifest(&manifest, &a.out.join(MANIFEST_FILE))?;
    reflex_models::bundle::validate_io(&manifest, &io, &tmp)?;
    // Loaded back from the staging folder before it is renamed into place.
    progress.set_message("hashing, writing and loading the bundle back");
    stage_bundle(&out, &mut manifest, &[&bytes]).with_context(|| {
        format!(
            "{}: the bundle does not load back, so nothing was written",
            a.out.display()
        )
    })?;
    out.commit()?;
    progress.finish();
    println!("wrote {} ({} bytes of model)", a.out.display(), bytes.len());
    Ok(())
}

/// Parameters (initializer elements) and multiply-accumulates of a typed model, from tract's own
/// cost model, so it works for any ONNX file, not only the reference architectures.
fn graph_cost(model: &TypedModel) -> Result<(u64, u64)> {
    let mut macs = 0u64;
    let mut params = 0u64;
    for node in model.nodes() {
        if let Some(c) = node.op_as::<tract_onnx::tract_core::ops::konst::Const>() {
            params += c.val().len() as u64;
            continue;
        }
        let inputs: Vec<&TypedFact> = node
            .inputs
            .iter()
            .map(|o| model.outlet_fact(*o))
            .collect::<TractResult<_>>()?;
        for (cost, n) in node.op.cost(&inputs)? {
            if let tract_onnx::tract_core::ops::Cost::FMA(_) = cost {
                macs += n.to_i64().unwrap_or(0) as u64;
            }
        }
    }
    Ok((params, macs))
}

fn cmd_inspect(path: &Path) -> Result<()> {
    let b = Bundle::load(path)?;
    println!("# {}\n", b.dir.join(MANIFEST_FILE).display());
    println!("{}", b.manifest.to_toml()?);
    println!("# graph {}", b.policy_path.display());
    let typed = reflex_runtime::infer::tract::load_typed(&b.policy_path)?;
    let io = reflex_runtime::infer::tract::typed_io(&typed, &b.policy_path)?;
    for t in &io.inputs {
        println!("input  {} {:?}", t.name, t.shape);
    }
    for t in &io.outputs {
        println!("output {} {:?}", t.name, t.shape);
    }
    let decluttered = typed.into_decluttered()?;
    let (params, macs) = graph_cost(&decluttered)?;
    println!(
        "parameters: {params} ({:.2} M, after BatchNorm folding)\nFLOPs: {:.2} G ({:.2} G multiply-accumulates)",
        params as f64 / 1e6,
        2.0 * macs as f64 / 1e9,
        macs as f64 / 1e9
    );
    Ok(())
}

fn cmd_infer(path: &Path, inputs: &[String], output: &Path, force: bool) -> Result<()> {
    use reflex_runtime::infer::session::Session;
    let b = Bundle::load(path)?;
    let mut session = reflex_runtime::infer::tract::TractSession::prepare(
        &b.policy_path,
        reflex_runtime::infer::tract::TractOptions { threads: 1 },
    )?;
    let mut given = vec![false; session.inputs().len()];
    for spec in inputs {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--input {spec}: expected NAME=FILE.npy"))?;
        let ix = session.input_index(name).with_context(|| {
            format!(
                "--input {name}: not a graph input (inputs: {})",
                session
                    .inputs()
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let arr = npy::read_npy(Path::new(file)).with_context(|| format!("reading {file}"))?;
        let want = &session.inputs()[ix].shape;
        if arr.shape != *want {
            bail!(
                "{file}: shape {:?}, input `{name}` needs {want:?}",
                arr.shape
            );
        }
        session.input_mut(ix).copy_from_slice(&arr.data.to_f32());
        given[ix] = true;
    }
    let missing: Vec<&str> = session
        .inputs()
        .iter()
        .zip(&given)
        .filter(|(_, g)| !**g)
        .map(|(t, _)| t.name.as_str())
        .collect();
    if !missing.is_empty() {
        bail!("no --input for {}", missing.join(", "));
    }
    // Data files: who wrote an existing one cannot be told, so only --force replaces it.
    let replace = if force { Replace::Any } else { Replace::No };
    let targets: Vec<PathBuf> = if output.is_dir() {
        session
            .outputs()
            .iter()
            .map(|t| output.join(format!("{}.npy", t.name)))
            .collect()
    } else {
        vec![output.to_path_buf()]
    };
    for t in &targets {
        output::check_file(t, replace, &output::ANY_FILE)?;
    }
    session.run()?;
    let write = |p: &Path, i: usize| -> Result<()> {
        let shape = &session.outputs()[i].shape;
        let bytes = npy::encode_npy(&npy::NpyArray::f32(shape, session.output(i).to_vec()))
            .with_context(|| format!("encoding {}", p.display()))?;
        output::write_file(p, &bytes, replace, &output::ANY_FILE)?;
        Ok(())
    };
    if output.is_dir() {
        for (i, t) in session.outputs().iter().enumerate() {
            let p = output.join(format!("{}.npy", t.name));
            write(&p, i)?;
            println!("{} {:?} -> {}", t.name, t.shape, p.display());
        }
    } else {
        let ix = session
            .output_index(&b.manifest.action.onnx_output)
            .unwrap_or(0);
        write(output, ix)?;
        let t = &session.outputs()[ix];
        println!("{} {:?} -> {}", t.name, t.shape, output.display());
    }
    Ok(())
}
