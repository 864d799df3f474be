//! `reflex-tools export`: a bundle from a reference architecture (checkpoint or seeded weights)
//! or from an ONNX file exported with `torch.onnx.export`, with normalization statistics.

use crate::stats;
use anyhow::{bail, Context, Result};
use reflex_models::bundle::{parse_manifest, stage_bundle, validate_manifest, BUNDLE_KIND};
use reflex_models::manifest::{
    BackendKind, Convention, Manifest, ModelFile, ModelRole, Precision, MANIFEST_FILE,
};
use reflex_models::onnx::{
    export_policy, EncoderKind, HeadKind, KeyLayout, PolicyArch, SafetensorsWeights, SeededWeights,
    WeightSource,
};
use reflex_models::output::{OutDir, Replace};
use reflex_models::reference::{default_capture, reference_manifest};
use std::path::PathBuf;

/// What to export and where: the `reflex-tools export` flags (see the binary's `--help` for
/// each one's accepted forms and defaults).
#[derive(Debug, Clone)]
pub struct ExportArgs {
    /// Reference architecture: resnet18 or vit-s16.
    pub arch: Option<String>,
    /// A safetensors checkpoint with torchvision/timm key names (`encoder.<name>`, `head.<i>.*`).
    pub weights: Option<PathBuf>,
    /// Generate deterministic weights from this seed instead of reading a checkpoint.
    pub seed: Option<u64>,
    /// Policy config (TOML: encoder, cameras, shared_encoder, state_dim, action_dim, hidden, head),
    /// overriding the flags below.
    pub config: Option<PathBuf>,
    /// Camera names, comma-separated.
    pub cameras: Vec<String>,
    /// One encoder shared by all cameras.
    pub shared_encoder: bool,
    /// `single` or `chunk:H` (H future actions per inference).
    pub head: String,
    /// Hidden layer widths of the MLP head, comma-separated.
    pub hidden: Vec<usize>,
    /// Joint-state vector length.
    pub state_dim: usize,
    /// Action vector length (per step of a chunk).
    pub action_dim: usize,
    /// Checkpoint key prefix of the encoder (default `encoder.` shared, `encoders.CAMERA.` per
    /// camera; LeRobot ACT: `model.backbone.`).
    pub encoder_prefix: Option<String>,
    /// Checkpoint key prefix of the head.
    pub head_prefix: Option<String>,
    /// An ONNX file exported from PyTorch; needs --manifest.
    pub onnx: Option<PathBuf>,
    /// A policy.toml template describing the ONNX file's cameras, state and actions (its
    /// `models` entries are replaced).
    pub manifest: Option<PathBuf>,
    /// Normalization statistics: LeRobot normalizer .safetensors or dataset meta/stats.json, openpi
    /// norm_stats.json, or plain .toml/.json.
    pub stats: Option<PathBuf>,
    /// State normalization kind when --stats is given: mean_std, min_max, quantile, quantile10,
    /// identity.
    pub state_norm: String,
    /// Action normalization kind when --stats is given.
    pub action_norm: String,
    /// Whose formula (epsilon included) the normalization follows: lerobot, openpi or plain.
    /// Default: the framework that writes the --stats file's format (LeRobot safetensors or
    /// meta/stats.json: lerobot; openpi norm_stats.json: openpi; other TOML/JSON: plain).
    pub norm_convention: Option<Convention>,
    /// Bundle name (default: the output directory's name).
    pub name: Option<String>,
    /// Output bundle folder: a new or empty folder, or an existing bundle with --force. Written
    /// into a temporary sibling folder and renamed into place only once it loads back, so a
    /// failed export leaves nothing behind and the previous bundle untouched. A folder holding
    /// anything but a bundle is never replaced, nor the current or home folder.
    pub out: PathBuf,
    /// Replace the bundle already at --out (only a reflex bundle: never other files).
    pub force: bool,
    /// Training frames for the camera viewpoint check: `DIR/CAMERA/*.png|jpg` at capture size
    /// (see [`crate::reference_frames`]).
    pub reference_frames: Option<PathBuf>,
}

/// The policy architecture from `--config` (TOML) or from the `--arch`/`--head`/... flags.
/// Errors: an unreadable or invalid config, an unknown `--arch` or `--head`.
pub fn parse_arch(a: &ExportArgs) -> Result<PolicyArch> {
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

/// Export a bundle to `a.out` (staged in a sibling folder, renamed into place only once it
/// loads back) and print what was written. Errors: a refused `--out`, missing or conflicting
/// inputs, a checkpoint or ONNX file that does not match the manifest; nothing is written then.
pub fn export(a: ExportArgs) -> Result<()> {
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
    if let Some(dir) = &a.reference_frames {
        progress.set_message("reference frames");
        for note in crate::reference_frames::add_reference_frames(&mut manifest, dir, &out.path())?
        {
            log::info!("{note}");
        }
    }
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
