//! `reflex-tools export`: a bundle from a reference architecture (checkpoint or seeded weights)
//! or from an ONNX file exported with `torch.onnx.export`, with normalization statistics.

use crate::stats;
use anyhow::{bail, Context, Result};
use reflex_models::bundle::{
    data_file_paths, parse_manifest, stage_bundle_with, validate_manifest, FileCopy, BUNDLE_KIND,
};
use reflex_models::manifest::{
    BackendKind, CanSpec, Convention, DataFile, Manifest, ModelFile, ModelRole, Precision,
    MANIFEST_FILE,
};
use reflex_models::onnx::header::read_header;
use reflex_models::onnx::{
    export_policy, EncoderKind, HeadKind, KeyLayout, PolicyArch, SafetensorsWeights, SeededWeights,
    WeightSource,
};
use reflex_models::output::{OutDir, Replace};
use reflex_models::reference::{default_capture, reference_manifest};
use std::path::{Path, PathBuf};

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
    /// `single` or `chunk:H` (H future actions per inference). `None`: read from the
    /// checkpoint's head where its shapes determine it, else [`DEFAULT_HEAD`].
    pub head: Option<String>,
    /// Hidden layer widths of the MLP head. `None`: from the checkpoint, else
    /// [`DEFAULT_HIDDEN`].
    pub hidden: Option<Vec<usize>>,
    /// Joint-state vector length. `None`: from the checkpoint, else [`DEFAULT_DIM`].
    pub state_dim: Option<usize>,
    /// Action vector length (per step of a chunk). `None`: from the checkpoint where
    /// determined, else [`DEFAULT_DIM`].
    pub action_dim: Option<usize>,
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
    /// A DBC file to put into the bundle (copied and hashed like the model) for the `[can]`
    /// section of --manifest (`protocol = "dbc"`), instead of the file that section names
    /// (relative to the template).
    pub dbc: Option<PathBuf>,
    /// Training frames for the camera viewpoint check: `DIR/CAMERA/*.png|jpg` at capture size
    /// (see [`crate::reference_frames`]).
    pub reference_frames: Option<PathBuf>,
}

/// `--head` when neither given nor read from a checkpoint.
pub const DEFAULT_HEAD: &str = "chunk:16";
/// `--hidden` when neither given nor read from a checkpoint.
pub const DEFAULT_HIDDEN: [usize; 1] = [256];
/// `--state-dim` and `--action-dim` when neither given nor read from a checkpoint.
pub const DEFAULT_DIM: usize = 6;

fn parse_head(h: &str) -> Result<HeadKind> {
    match h {
        "single" => Ok(HeadKind::Single),
        h => match h.strip_prefix("chunk:").map(str::parse::<usize>) {
            Some(Ok(horizon)) if horizon > 0 => Ok(HeadKind::Chunk { horizon }),
            _ => bail!("--head {h}: expected single or chunk:H with H > 0"),
        },
    }
}

fn head_flag(h: HeadKind) -> String {
    match h {
        HeadKind::Single => "single".into(),
        HeadKind::Chunk { horizon } => format!("chunk:{horizon}"),
    }
}

/// The head's sizes read from a checkpoint's shapes: the Linear layers `PREFIX<2i>.weight`
/// (`[out, in]`, `nn.Sequential` with ReLUs at the odd indices) give the state length (the
/// first layer's input minus the encoders' features), the hidden widths (each layer's output
/// but the last) and `horizon x action_dim` (the last layer's output). A flag given explicitly
/// must agree (else an error naming the flag and the value the checkpoint needs); the split of
/// the last output into horizon and action length comes from `--head` or `--action-dim`, or,
/// with neither, `action_dim = state_dim` when the output is a multiple of it (a joint-space
/// policy, printed as an assumption), else an error saying which flag to set. Returns what
/// was inferred, for the user.
fn fit_head_to_checkpoint(
    arch: &mut PolicyArch,
    a: &ExportArgs,
    ckpt: &SafetensorsWeights,
    prefix: &str,
    path: &Path,
) -> Result<Vec<String>> {
    let mut layers: Vec<(usize, String, Vec<usize>)> = ckpt
        .shapes_with_prefix(prefix)
        .into_iter()
        .filter_map(|(k, shape)| {
            let idx = k
                .strip_prefix(prefix)?
                .strip_suffix(".weight")?
                .parse()
                .ok()?;
            Some((idx, k, shape))
        })
        .collect();
    layers.sort();
    let Some(first) = layers.first() else {
        bail!(
            "{}: no head layers `{prefix}<i>.weight` in the checkpoint; give --head-prefix \
             (the key prefix of the MLP head) or export with --seed",
            path.display()
        );
    };
    if let Some((_, k, shape)) = layers.iter().find(|(_, _, s)| s.len() != 2) {
        bail!(
            "{}: `{k}` has shape {shape:?}; a Linear weight is [out, in]",
            path.display()
        );
    }
    let mut said = vec![];
    let features = arch.cameras.len() * arch.encoder.features();
    let fan_in = first.2[1];
    let Some(state_dim) = fan_in.checked_sub(features) else {
        bail!(
            "{}: `{}` takes {fan_in} inputs, fewer than the {features} features of {} camera(s) \
             with this encoder; check --arch and --cameras",
            path.display(),
            first.1,
            arch.cameras.len()
        );
    };
    match a.state_dim {
        Some(s) if s != state_dim => bail!(
            "--state-dim {s}, but the checkpoint's `{}` {:?} takes {features} encoder features + \
             {state_dim} state values: use --state-dim {state_dim} (or leave it out)",
            first.1,
            first.2
        ),
        Some(_) => {}
        None => said.push(format!("--state-dim {state_dim}")),
    }
    arch.state_dim = state_dim;
    let hidden: Vec<usize> = layers[..layers.len() - 1].iter().map(|l| l.2[0]).collect();
    let text = |h: &[usize]| {
        h.iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    match &a.hidden {
        Some(h) if *h != hidden => {
            bail!(
            "--hidden {}, but the checkpoint's head has hidden layers of {} ({}): use --hidden \
             {} (or leave it out)",
            text(h),
            if hidden.is_empty() { "none".into() } else { text(&hidden) },
            layers.iter().map(|l| format!("{} {:?}", l.1, l.2)).collect::<Vec<_>>().join(", "),
            text(&hidden)
        )
        }
        Some(_) => {}
        None => said.push(format!("--hidden {}", text(&hidden))),
    }
    arch.hidden = hidden;
    let (last_key, out) = layers
        .last()
        .map(|l| (l.1.clone(), l.2[0]))
        .unwrap_or_default();
    let given_head = a.head.as_deref().map(parse_head).transpose()?;
    let (head, action_dim) = match (given_head, a.action_dim) {
        (Some(h), Some(ad)) => {
            let want = match h {
                HeadKind::Single => ad,
                HeadKind::Chunk { horizon } => horizon * ad,
            };
            if want != out {
                bail!(
                    "--head {} with --action-dim {ad} needs {want} outputs, but the checkpoint's \
                     `{last_key}` has {out}: leave one of them out to read it from the checkpoint",
                    head_flag(h)
                );
            }
            (h, ad)
        }
        (Some(HeadKind::Single), None) => (HeadKind::Single, out),
        (Some(HeadKind::Chunk { horizon }), None) if out % horizon == 0 => {
            (HeadKind::Chunk { horizon }, out / horizon)
        }
        (Some(h), None) => bail!(
            "--head {}: the checkpoint's `{last_key}` has {out} outputs, not a multiple of the \
             horizon; give the horizon that divides it (and --action-dim)",
            head_flag(h)
        ),
        (None, Some(ad)) if ad == out => (HeadKind::Single, ad),
        (None, Some(ad)) if ad > 0 && out % ad == 0 => (HeadKind::Chunk { horizon: out / ad }, ad),
        (None, Some(ad)) => bail!(
            "--action-dim {ad}: the checkpoint's `{last_key}` has {out} outputs (horizon x \
             action length), not a multiple of {ad}"
        ),
        (None, None) if state_dim > 0 && out % state_dim == 0 => {
            let h = if out == state_dim {
                HeadKind::Single
            } else {
                HeadKind::Chunk {
                    horizon: out / state_dim,
                }
            };
            said.push(format!(
                "--action-dim {state_dim} (assumed equal to the state length: the checkpoint's \
                 `{last_key}` has {out} outputs = horizon x action length; give --action-dim or \
                 --head if not)"
            ));
            (h, state_dim)
        }
        (None, None) => bail!(
            "the checkpoint's `{last_key}` has {out} outputs = horizon x action length, which its \
             shapes do not split: give --action-dim A (--head is then chunk:{out}/A, or single \
             when A = {out}) or --head chunk:H"
        ),
    };
    if a.head.is_none() {
        said.push(format!("--head {}", head_flag(head)));
    }
    arch.head = head;
    arch.action_dim = action_dim;
    Ok(said)
}

/// The policy architecture from `--config` (TOML) or from the `--arch`/`--head`/... flags (the
/// defaults for those not given). Errors: an unreadable or invalid config, an unknown `--arch`
/// or `--head`.
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
    let head = parse_head(a.head.as_deref().unwrap_or(DEFAULT_HEAD))?;
    Ok(PolicyArch {
        encoder,
        cameras: a.cameras.clone(),
        shared_encoder: a.shared_encoder,
        state_dim: a.state_dim.unwrap_or(DEFAULT_DIM),
        action_dim: a.action_dim.unwrap_or(DEFAULT_DIM),
        hidden: a.hidden.clone().unwrap_or_else(|| DEFAULT_HIDDEN.to_vec()),
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
    let mut copies: Vec<FileCopy> = vec![];
    if a.dbc.is_some() && a.onnx.is_none() {
        bail!(
            "--dbc needs --onnx with --manifest: the template's [can] section (protocol = \"dbc\") \
             maps the actions onto the DBC's signals"
        );
    }
    let (mut manifest, bytes) = if let Some(onnx) = &a.onnx {
        let tpl = a.manifest.as_ref().context(
            "--onnx needs --manifest TEMPLATE.toml describing cameras, state and actions",
        )?;
        let text =
            std::fs::read_to_string(tpl).with_context(|| format!("reading {}", tpl.display()))?;
        let mut m = parse_manifest(&text, tpl)?;
        let bytes = std::fs::read(onnx).with_context(|| format!("reading {}", onnx.display()))?;
        let header = read_header(&bytes)
            .with_context(|| format!("{}: not an ONNX model", onnx.display()))?;
        let file = "policy.onnx";
        // External data is read where the model is (never from a copy) and copied beside the
        // bundle's model under the same relative name, which the ONNX file records.
        let folder = onnx.parent().unwrap_or(Path::new("."));
        for (loc, rel) in header
            .external_data
            .iter()
            .zip(data_file_paths(file, &header))
        {
            let source = folder.join(loc);
            if !source.is_file() {
                bail!(
                    "{}: its tensors are stored in the external data file `{loc}`, expected at \
                     {}, which does not exist; keep the data file beside the model, as \
                     torch.onnx.export wrote it",
                    onnx.display(),
                    source.display()
                );
            }
            copies.push(FileCopy { source, file: rel });
        }
        let precision = header.precision();
        m.models = vec![ModelFile {
            role: ModelRole::Policy,
            file: file.into(),
            sha256: "0".repeat(64),
            precision,
            backends: backends_for(precision),
            data_files: copies
                .iter()
                .map(|c| DataFile {
                    file: c.file.clone(),
                    sha256: "0".repeat(64),
                })
                .collect(),
        }];
        m.provenance.insert(
            "source_onnx".into(),
            toml::Value::String(onnx.display().to_string()),
        );
        if let Some(c) = dbc_copy(&mut m, a.dbc.as_deref(), tpl)? {
            copies.push(c);
        }
        (m, bytes)
    } else {
        let mut arch = parse_arch(&a)?;
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
            (Some(p), _) => {
                let ckpt = SafetensorsWeights::open(p)?;
                if a.config.is_none() {
                    // The head's sizes from the checkpoint, where its shapes determine them.
                    let said = fit_head_to_checkpoint(&mut arch, &a, &ckpt, &layout.head, p)?;
                    if !said.is_empty() {
                        eprintln!("from the checkpoint's head: {}", said.join(" "));
                    }
                }
                Box::new(ckpt.with_layout(layout))
            }
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
    // The graph as tract loads and types it: a file tract cannot run is refused here. A user's
    // ONNX file is read where it is (its external data resolved beside it, errors naming it);
    // a generated graph is written to the scratch folder first.
    let model_path = match &a.onnx {
        Some(onnx) => onnx.clone(),
        None => {
            let tmp = out.scratch()?.join("policy.onnx");
            std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
            tmp
        }
    };
    // The declared element types first: an unsupported type is named before tract's own error.
    let header_io = reflex_models::bundle::model_io(&bytes, &model_path)?;
    validate_manifest(&manifest, &a.out.join(MANIFEST_FILE))?;
    reflex_models::bundle::validate_io(&manifest, &header_io, &model_path)?;
    let io = reflex_runtime::infer::tract::graph_io(&model_path)?;
    reflex_models::bundle::validate_io(&manifest, &io, &model_path)?;
    // Loaded back from the staging folder before it is renamed into place.
    progress.set_message("hashing, writing and loading the bundle back");
    let staged = stage_bundle_with(&out, &mut manifest, &[&bytes], &copies).with_context(|| {
        format!(
            "{}: the bundle does not load back, so nothing was written",
            a.out.display()
        )
    })?;
    if matches!(manifest.can, CanSpec::Dbc(_)) {
        // The DBC file and the mapping onto it, as the robot will read them.
        reflex_runtime::can::codec::Codec::from_bundle(&staged).with_context(|| {
            format!(
                "{}: the bundle's DBC does not fit its [can] section, so nothing was written",
                a.out.display()
            )
        })?;
    }
    out.commit()?;
    progress.finish();
    let data: u64 = copies
        .iter()
        .filter_map(|c| std::fs::metadata(a.out.join(&c.file)).ok())
        .map(|m| m.len())
        .sum();
    let p = &manifest.models[0];
    println!(
        "wrote {} ({} bytes of model{}; {}, backends: {})",
        a.out.display(),
        bytes.len(),
        if copies.is_empty() {
            String::new()
        } else {
            format!(
                ", {data} bytes in {}",
                copies
                    .iter()
                    .map(|c| c.file.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        p.precision.as_str(),
        p.backends
            .iter()
            .map(|b| b.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The backends that run a model of this precision as imported: every one. tract runs fp16
/// weights and QDQ int8 graphs (QuantizeLinear/DequantizeLinear, dequantized on the CPU);
/// TensorRT builds fp16 and explicitly quantized (QDQ) int8 engines from them.
fn backends_for(_precision: Precision) -> Vec<BackendKind> {
    vec![BackendKind::Tract, BackendKind::Tensorrt]
}

/// For a template whose `[can]` section is a DBC protocol: the DBC file to copy into the bundle
/// (`--dbc`, else the section's `file` relative to the template), with `can.file` set to its
/// name in the bundle. `None` for other protocols. Errors: `--dbc` without a DBC section.
fn dbc_copy(m: &mut Manifest, dbc: Option<&Path>, template: &Path) -> Result<Option<FileCopy>> {
    let CanSpec::Dbc(d) = &mut m.can else {
        return match dbc {
            Some(p) => bail!(
                "--dbc {}: the --manifest template has no [can] section with protocol = \"dbc\" \
                 mapping the actions onto the DBC's signals (`[can] protocol = \"dbc\"`, \
                 `file`, `[can.actions]`)",
                p.display()
            ),
            None => Ok(None),
        };
    };
    let source = match dbc {
        Some(p) => p.to_path_buf(),
        None => template.parent().unwrap_or(Path::new(".")).join(&d.file),
    };
    if !source.is_file() {
        bail!(
            "{}: the DBC file {} does not exist (the [can] section's `file` is read relative to \
             the template; or give --dbc FILE)",
            template.display(),
            source.display()
        );
    }
    let name = source
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .context("--dbc: not a file name")?;
    d.file = name.clone();
    d.sha256 = "0".repeat(64);
    Ok(Some(FileCopy { source, file: name }))
}
