//! Loading, validating and writing bundle directories.
//!
//! A bundle is refused as a whole if anything in it is inconsistent: the board must run exactly
//! what was trained or nothing at all. Validation happens once, at load, off the control loop; it
//! checks the manifest's own coherence (lengths, finite statistics, sane limits), the model files'
//! hashes, and the manifest against the input/output names and shapes each policy file declares
//! (a cheap header read, [`crate::onnx::header`]: no inference graph is built here). Building the
//! graph is the backend's job when it prepares the model; it checks the manifest again against
//! the I/O it actually runs (`reflex_runtime::infer`).

use crate::manifest::*;
use crate::onnx::header::{read_header, ElemType, HeaderError, OnnxHeader};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The cause is part of the message (not a `source`), so that error chains do not print it
    /// twice.
    #[error("{path}: cannot {op}: {error}")]
    Io {
        path: PathBuf,
        /// `read` or `write`.
        op: &'static str,
        error: std::io::Error,
    },
    #[error("{path}: not a valid manifest: {message}")]
    Parse { path: PathBuf, message: String },
    /// The path given as a bundle is neither a bundle directory nor its manifest (a model file, a
    /// folder without `policy.toml`).
    #[error("{path}: not a bundle: {problem}")]
    NotABundle { path: PathBuf, problem: String },
    #[error(
        "{path}: unsupported bundle version {found} (this reflex reads format_version = {FORMAT_VERSION}); \
         re-export the bundle with a matching reflex-tools"
    )]
    UnsupportedVersion { path: PathBuf, found: u32 },
    #[error("{path}: field `{field}`: {problem}")]
    Field {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error(
        "{path}: sha256 mismatch: manifest says {expected}, file has {actual} \
         (file modified or truncated after export)"
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    /// The cause is part of the message, as for `Io`.
    #[error("{path}: cannot load the model: {error}")]
    Model { path: PathBuf, error: HeaderError },
    #[error("{path}: {problem}")]
    Graph { path: PathBuf, problem: String },
    /// The output folder was refused or could not be written.
    #[error(transparent)]
    Output(#[from] crate::output::OutputError),
}

impl BundleError {
    pub(crate) fn field(path: &Path, field: impl Into<String>, problem: impl Into<String>) -> Self {
        BundleError::Field {
            path: path.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// A named tensor with its element type and static shape: one graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub elem: ElemType,
    /// Static shape, row-major (`[1, 3, 224, 224]` for an NCHW image).
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// The shape for messages: `[1, 6]`.
    pub fn shape_text(&self) -> String {
        format!("{:?}", self.shape)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Input/output names, element types and shapes of a model, as a backend runs it or as the file
/// declares it ([`GraphIo::from_header`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GraphIo {
    /// Graph inputs in graph order; every shape is static.
    pub inputs: Vec<TensorSpec>,
    /// Graph outputs with a static shape, in graph order.
    pub outputs: Vec<TensorSpec>,
    /// Outputs whose file declares no static shape (a runtime infers it from the inputs): their
    /// names are checked here, their shapes by the backend at prepare. Empty for a backend's I/O.
    pub unshaped_outputs: Vec<String>,
}

impl GraphIo {
    pub fn input(&self, name: &str) -> Option<&[usize]> {
        self.inputs
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.shape.as_slice())
    }
    pub fn output(&self, name: &str) -> Option<&[usize]> {
        self.outputs
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.shape.as_slice())
    }

    /// The I/O an ONNX file declares. Inputs must have static shapes: reflex feeds fixed-size
    /// buffers (a symbolic batch is refused, naming the input); outputs may leave theirs to the
    /// runtime. `path` names the file in errors.
    pub fn from_header(h: &OnnxHeader, path: &Path) -> Result<GraphIo, BundleError> {
        let mut io = GraphIo::default();
        for t in &h.inputs {
            let shape = t.concrete_shape().ok_or_else(|| BundleError::Graph {
                path: path.to_path_buf(),
                problem: format!(
                    "`{}` has a symbolic shape {}; reflex needs static shapes (export with fixed \
                     batch = 1)",
                    t.name,
                    t.shape_text()
                ),
            })?;
            io.inputs.push(TensorSpec {
                name: t.name.clone(),
                elem: t.elem,
                shape,
            });
        }
        for t in &h.outputs {
            match t.concrete_shape() {
                Some(shape) => io.outputs.push(TensorSpec {
                    name: t.name.clone(),
                    elem: t.elem,
                    shape,
                }),
                None => io.unshaped_outputs.push(t.name.clone()),
            }
        }
        Ok(io)
    }
}

/// A validated bundle: manifest, directory, and the declared I/O of its policy model.
///
/// No inference graph is built at load: a backend reads the file listed for it when it prepares
/// (`reflex_runtime::infer`), so loading costs a hash and a header read per model file.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The policy file tract runs: the one listed for tract, else the first policy file. For an
    /// encoder + denoiser bundle, the encoder's (see [`Bundle::model_path`] for the others).
    pub policy_path: PathBuf,
    /// The I/O that file declares (validated against the manifest).
    pub io: GraphIo,
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, BundleError> {
    let io = |error| BundleError::Io {
        path: path.to_path_buf(),
        op: "read",
        error,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Parse a manifest from text; `path` is only used to name the file in errors.
pub fn parse_manifest(text: &str, path: &Path) -> Result<Manifest, BundleError> {
    // Read the version first, so an old or future bundle gets a version error rather than a
    // confusing "unknown field" one.
    let raw: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| BundleError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    match raw.get("format_version") {
        None => {
            return Err(BundleError::field(
                path,
                "format_version",
                "missing (expected format_version = 1)",
            ))
        }
        Some(toml::Value::Integer(v)) if *v == FORMAT_VERSION as i64 => {}
        Some(toml::Value::Integer(v)) => {
            return Err(BundleError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: u32::try_from(*v).unwrap_or(u32::MAX),
            })
        }
        Some(other) => {
            return Err(BundleError::field(
                path,
                "format_version",
                format!("must be an integer, found {}", other.type_str()),
            ))
        }
    }
    toml::from_str(text).map_err(|e| BundleError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn check_len(path: &Path, field: &str, v: &[f32], dim: usize) -> Result<(), BundleError> {
    if v.len() != dim {
        return Err(BundleError::field(
            path,
            field,
            format!("has {} values, expected {dim} (one per dimension)", v.len()),
        ));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(BundleError::field(
            path,
            format!("{field}[{i}]"),
            format!("is {} (must be finite)", v[i]),
        ));
    }
    Ok(())
}

/// A normalization's vectors have one finite value per dimension, the convention exists for the
/// kind, and no dimension divides by zero or flips sign. A zero spread (a joint that never moved
/// in the dataset: std = 0, max = min) is refused under `plain` (it would divide by zero) and
/// accepted under `lerobot` / `openpi`, whose epsilon keeps it finite as in training.
fn check_normalization(
    path: &Path,
    field: &str,
    n: &Normalization,
    names: &[String],
) -> Result<(), BundleError> {
    let dim = names.len();
    for (name, v) in n.vectors() {
        check_len(path, &format!("{field}.{name}"), v, dim)?;
    }
    let conv = n.convention();
    if conv == Convention::Openpi
        && matches!(
            n,
            Normalization::MinMax { .. } | Normalization::Quantile10 { .. }
        )
    {
        return Err(BundleError::field(
            path,
            format!("{field}.convention"),
            format!(
                "openpi has no `{}` normalization (only mean_std and quantile); use convention \
                 \"lerobot\" or \"plain\"",
                n.kind_str()
            ),
        ));
    }
    let fix = if conv == Convention::Plain {
        "; if the policy was trained with LeRobot or openpi, set the normalization's convention \
         (\"lerobot\" / \"openpi\"): their epsilon makes a zero spread valid"
    } else {
        ""
    };
    let bad = |i: usize, what: String| {
        Err(BundleError::field(
            path,
            format!("{field}[{i}]"),
            format!(
                "{what} ({}): normalization would divide by zero or flip sign{fix}",
                names[i]
            ),
        ))
    };
    // With an epsilon a zero spread is allowed; a negative one never is.
    let zero_ok = conv != Convention::Plain;
    let spread_ok = |d: f32| d > 0.0 || (zero_ok && d == 0.0);
    match n {
        Normalization::MeanStd { std, .. } => {
            if let Some(i) = (0..dim).find(|&i| !spread_ok(std[i])) {
                let need = if zero_ok { ">= 0" } else { "> 0" };
                return bad(i, format!("std = {} is not {need}", std[i]));
            }
        }
        Normalization::MinMax {
            min: lo, max: hi, ..
        }
        | Normalization::Quantile {
            q01: lo, q99: hi, ..
        }
        | Normalization::Quantile10 {
            q10: lo, q90: hi, ..
        } => {
            let [lo_name, hi_name] = match n.vectors()[..] {
                [(a, _), (b, _)] => [a, b],
                _ => ["low", "high"],
            };
            if let Some(i) = (0..dim).find(|&i| !spread_ok(hi[i] - lo[i])) {
                let op = if hi[i] == lo[i] { "==" } else { "<" };
                return bad(i, format!("{hi_name} {} {op} {lo_name} {}", hi[i], lo[i]));
            }
        }
        Normalization::Identity => {}
    }
    // What the runtime divides and multiplies by must be finite (spreads near f32::MAX overflow).
    if let Some(i) = (0..dim).find(|&i| {
        let a = n.affine(i);
        !(a.denom.is_finite() && a.denom > 0.0 && a.gain.is_finite())
    }) {
        return bad(i, "the spread overflows f32".to_string());
    }
    Ok(())
}

fn check_names(path: &Path, field: &str, names: &[String]) -> Result<(), BundleError> {
    let mut seen = BTreeSet::new();
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() {
            return Err(BundleError::field(
                path,
                format!("{field}[{i}]"),
                "empty name",
            ));
        }
        if !seen.insert(n) {
            return Err(BundleError::field(
                path,
                format!("{field}[{i}]"),
                format!("duplicate name `{n}`"),
            ));
        }
    }
    Ok(())
}

/// Checks the manifest's own coherence, without touching model files.
pub fn validate_manifest(m: &Manifest, path: &Path) -> Result<(), BundleError> {
    if m.format_version != FORMAT_VERSION {
        return Err(BundleError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: m.format_version,
        });
    }
    let c = &m.control;
    if !(c.rate_hz.is_finite() && c.rate_hz > 0.0 && c.rate_hz <= 1000.0) {
        return Err(BundleError::field(
            path,
            "control.rate_hz",
            format!("{} is not in (0, 1000]", c.rate_hz),
        ));
    }
    if let Some(r) = c.chunk_rate_hz {
        if !(r.is_finite() && r > 0.0 && r <= 1000.0) {
            return Err(BundleError::field(
                path,
                "control.chunk_rate_hz",
                format!(
                    "{r} is not in (0, 1000]: give the control rate of the training data in Hz, \
                     or leave it out to use control.rate_hz"
                ),
            ));
        }
    }
    let horizon = m.action.output.horizon();
    if c.steps_per_inference == 0 || c.steps_per_inference > horizon {
        return Err(BundleError::field(
            path,
            "control.steps_per_inference",
            format!(
                "{} must be in 1..={horizon} (the action horizon)",
                c.steps_per_inference
            ),
        ));
    }
    if let Some(mm) = c.temporal_ensemble_m {
        if !(mm.is_finite() && mm >= 0.0) {
            return Err(BundleError::field(
                path,
                "control.temporal_ensemble_m",
                format!("{mm} must be finite and >= 0"),
            ));
        }
    }
    if c.watchdog_periods == 0 {
        return Err(BundleError::field(
            path,
            "control.watchdog_periods",
            "must be >= 1",
        ));
    }
    // The roles make one kind of policy: a single `policy` network, or an `encoder` run once per
    // observation plus a `denoiser` run by a scheduler (Diffusion Policy).
    let has = |r: ModelRole| m.models.iter().any(|f| f.role == r);
    let (policy, encoder, denoiser) = (
        has(ModelRole::Policy),
        has(ModelRole::Encoder),
        has(ModelRole::Denoiser),
    );
    if policy && (encoder || denoiser) {
        return Err(BundleError::field(
            path,
            "models",
            "a `policy` model and an encoder/denoiser pair: list either one policy network or \
             the encoder + denoiser of a diffusion policy, not both",
        ));
    }
    if !(policy || (encoder && denoiser)) {
        let problem = match (encoder, denoiser) {
            (true, false) => "an `encoder` model without its `denoiser`",
            (false, true) => "a `denoiser` model without its `encoder`",
            _ => "expected a model with role = \"policy\", found none",
        };
        return Err(BundleError::field(path, "models", problem));
    }
    match (&m.diffusion, policy) {
        (Some(_), true) => {
            return Err(BundleError::field(
                path,
                "diffusion",
                "a `[diffusion]` section in a bundle with a `policy` model: it belongs to \
                 encoder + denoiser bundles only; remove it",
            ))
        }
        (None, false) => {
            return Err(BundleError::field(
                path,
                "diffusion",
                "missing: an encoder + denoiser bundle needs its `[diffusion]` section (history \
                 length, horizon, scheduler); re-import the checkpoint with `reflex-tools import \
                 lerobot`",
            ))
        }
        (Some(d), false) => validate_diffusion(m, d, path)?,
        (None, true) => {}
    }
    // Several files per role (one form per backend) are fine; two for one backend are ambiguous.
    let mut seen: Vec<(ModelRole, BackendKind, usize)> = vec![];
    for (i, f) in m.models.iter().enumerate() {
        for &b in &f.backends {
            if let Some((_, _, j)) = seen.iter().find(|(r, s, _)| *r == f.role && *s == b) {
                let role = f.role.as_str();
                return Err(BundleError::field(
                    path,
                    format!("models[{i}].backends"),
                    format!(
                        "{role} `{}` lists backend {} already listed by {role} `{}` \
                         (models[{j}]): one {role} file per backend",
                        f.file,
                        b.as_str(),
                        m.models[*j].file
                    ),
                ));
            }
            seen.push((f.role, b, i));
        }
    }
    for (i, f) in m.models.iter().enumerate() {
        if f.file.is_empty() || Path::new(&f.file).is_absolute() || f.file.contains("..") {
            return Err(BundleError::field(
                path,
                format!("models[{i}].file"),
                format!("`{}` must be a relative path inside the bundle", f.file),
            ));
        }
        if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BundleError::field(
                path,
                format!("models[{i}].sha256"),
                "must be 64 hex digits",
            ));
        }
        if f.backends.is_empty() {
            return Err(BundleError::field(
                path,
                format!("models[{i}].backends"),
                "lists no backend allowed to run this file",
            ));
        }
        for (k, d) in f.data_files.iter().enumerate() {
            if !is_inside(&d.file) {
                return Err(BundleError::field(
                    path,
                    format!("models[{i}].data_files[{k}].file"),
                    format!("`{}` must be a relative path inside the bundle", d.file),
                ));
            }
            if !is_sha256_hex(&d.sha256) {
                return Err(BundleError::field(
                    path,
                    format!("models[{i}].data_files[{k}].sha256"),
                    "must be 64 hex digits",
                ));
            }
        }
    }
    if m.cameras.is_empty() {
        return Err(BundleError::field(
            path,
            "cameras",
            "no camera: a visuomotor policy needs at least one",
        ));
    }
    let cam_names: Vec<String> = m.cameras.iter().map(|c| c.name.clone()).collect();
    check_names(path, "cameras.name", &cam_names)?;
    for (i, cam) in m.cameras.iter().enumerate() {
        let f = |s: &str| format!("cameras[{i}] ({}).{s}", cam.name);
        let cap = cam.capture;
        if cap.width == 0 || cap.height == 0 || cap.width > 8192 || cap.height > 8192 {
            return Err(BundleError::field(
                path,
                f("capture"),
                format!("size {}x{} out of range", cap.width, cap.height),
            ));
        }
        if cap.format == PixelFormat::Nv12 && (cap.width % 2 != 0 || cap.height % 2 != 0) {
            return Err(BundleError::field(
                path,
                f("capture"),
                "NV12 needs an even width and height",
            ));
        }
        if cap.format == PixelFormat::Yuyv && cap.width % 2 != 0 {
            return Err(BundleError::field(
                path,
                f("capture.width"),
                "YUYV needs an even width",
            ));
        }
        let p = &cam.preprocess;
        if let Some(cr) = p.crop {
            if !cr.fits_in(cap.width, cap.height) {
                return Err(BundleError::field(
                    path,
                    f("preprocess.crop"),
                    format!(
                        "{}x{}+{}+{} does not fit in the {}x{} capture",
                        cr.width, cr.height, cr.x, cr.y, cap.width, cap.height
                    ),
                ));
            }
        }
        if p.resize.width == 0 || p.resize.height == 0 || p.resize.width > 4096 {
            return Err(BundleError::field(
                path,
                f("preprocess.resize"),
                "size out of range",
            ));
        }
        if let Some(problem) = p.resize.dtype_problem() {
            return Err(BundleError::field(
                path,
                f("preprocess.resize.dtype"),
                problem,
            ));
        }
        let ch = p.color.channels();
        check_len(path, &f("preprocess.mean"), &p.mean, ch)?;
        check_len(path, &f("preprocess.std"), &p.std, ch)?;
        if let Some(k) = p.std.iter().position(|s| *s <= 0.0) {
            return Err(BundleError::field(
                path,
                f(&format!("preprocess.std[{k}]")),
                "must be > 0",
            ));
        }
        if cam.max_age_ms == 0 {
            return Err(BundleError::field(path, f("max_age_ms"), "must be > 0"));
        }
    }
    let s = &m.state;
    let sd = s.names.len();
    check_names(path, "state.names", &s.names)?;
    if s.units.len() != sd {
        return Err(BundleError::field(
            path,
            "state.units",
            format!("has {} entries, state.names has {sd}", s.units.len()),
        ));
    }
    check_normalization(path, "state.normalization", &s.normalization, &s.names)?;
    if sd > 0 && s.onnx_input.is_none() {
        return Err(BundleError::field(
            path,
            "state.onnx_input",
            "missing while state.names is not empty",
        ));
    }
    let a = &m.action;
    let ad = a.names.len();
    if ad == 0 {
        return Err(BundleError::field(path, "action.names", "empty"));
    }
    check_names(path, "action.names", &a.names)?;
    if a.units.len() != ad {
        return Err(BundleError::field(
            path,
            "action.units",
            format!("has {} entries, action.names has {ad}", a.units.len()),
        ));
    }
    if let ActionOutput::Chunk { horizon } = a.output {
        if horizon == 0 || horizon > 1024 {
            return Err(BundleError::field(
                path,
                "action.output.horizon",
                format!("{horizon} not in 1..=1024"),
            ));
        }
    }
    check_normalization(path, "action.normalization", &a.normalization, &a.names)?;
    if let Some(l) = &a.limits {
        check_len(path, "action.limits.min", &l.min, ad)?;
        check_len(path, "action.limits.max", &l.max, ad)?;
        check_len(path, "action.limits.max_rate", &l.max_rate, ad)?;
        if let Some(i) = (0..ad).find(|&i| l.max[i] < l.min[i]) {
            return Err(BundleError::field(
                path,
                format!("action.limits.max[{i}]"),
                format!("{} < min {} ({})", l.max[i], l.min[i], a.names[i]),
            ));
        }
        if let Some(i) = (0..ad).find(|&i| l.max_rate[i] <= 0.0) {
            return Err(BundleError::field(
                path,
                format!("action.limits.max_rate[{i}]"),
                format!("{} must be > 0 ({})", l.max_rate[i], a.names[i]),
            ));
        }
    }
    if let Some(t) = &a.parity_tolerance {
        check_len(path, "action.parity_tolerance", t, ad)?;
        if let Some(i) = (0..ad).find(|&i| t[i] < 0.0) {
            return Err(BundleError::field(
                path,
                format!("action.parity_tolerance[{i}]"),
                format!("{} must be >= 0 ({})", t[i], a.names[i]),
            ));
        }
    }
    validate_can(m, path)?;
    Ok(())
}

/// The `[diffusion]` section: history and horizon against the action chunk, the scheduler's
/// settings, the tensor names.
fn validate_diffusion(m: &Manifest, d: &DiffusionSpec, path: &Path) -> Result<(), BundleError> {
    let field = |f: &str| format!("diffusion.{f}");
    if d.n_obs_steps == 0 || d.n_obs_steps > 64 {
        return Err(BundleError::field(
            path,
            field("n_obs_steps"),
            format!("{} is not in 1..=64", d.n_obs_steps),
        ));
    }
    if d.horizon < d.n_obs_steps || d.horizon > 1024 {
        return Err(BundleError::field(
            path,
            field("horizon"),
            format!(
                "{} is not in n_obs_steps..=1024 = {}..=1024",
                d.horizon, d.n_obs_steps
            ),
        ));
    }
    let want = d.output_horizon();
    match m.action.output {
        ActionOutput::Chunk { horizon } if horizon == want => {}
        other => {
            return Err(BundleError::field(
                path,
                "action.output",
                format!(
                    "{other:?}: a diffusion policy outputs the sample from step n_obs_steps - 1 \
                     to the end, a chunk of horizon - n_obs_steps + 1 = {} - {} + 1 steps: \
                     `output = {{ kind = \"chunk\", horizon = {want} }}`",
                    d.horizon, d.n_obs_steps
                ),
            ))
        }
    }
    let s = &d.scheduler;
    if s.num_train_timesteps == 0 || s.num_train_timesteps > 100_000 {
        return Err(BundleError::field(
            path,
            field("scheduler.num_train_timesteps"),
            format!("{} is not in 1..=100000", s.num_train_timesteps),
        ));
    }
    if s.num_inference_steps == 0 || s.num_inference_steps > s.num_train_timesteps {
        return Err(BundleError::field(
            path,
            field("scheduler.num_inference_steps"),
            format!(
                "{} is not in 1..=num_train_timesteps = {}",
                s.num_inference_steps, s.num_train_timesteps
            ),
        ));
    }
    for (f, b) in [("beta_start", s.beta_start), ("beta_end", s.beta_end)] {
        if !(b.is_finite() && b > 0.0 && b < 1.0) {
            return Err(BundleError::field(
                path,
                field(&format!("scheduler.{f}")),
                format!("{b} is not in (0, 1)"),
            ));
        }
    }
    if s.beta_schedule == BetaSchedule::Linear && s.beta_end < s.beta_start {
        return Err(BundleError::field(
            path,
            field("scheduler.beta_end"),
            format!(
                "{} is below beta_start = {}: a linear schedule increases",
                s.beta_end, s.beta_start
            ),
        ));
    }
    if !(s.clip_sample_range.is_finite() && s.clip_sample_range > 0.0) {
        return Err(BundleError::field(
            path,
            field("scheduler.clip_sample_range"),
            format!("{} must be finite and > 0", s.clip_sample_range),
        ));
    }
    let names = [
        ("features_output", &d.features_output),
        ("sample_input", &d.sample_input),
        ("timestep_input", &d.timestep_input),
        ("global_cond_input", &d.global_cond_input),
    ];
    for (f, n) in names {
        if n.is_empty() {
            return Err(BundleError::field(path, field(f), "empty tensor name"));
        }
    }
    let den = [&d.sample_input, &d.timestep_input, &d.global_cond_input];
    if den[0] == den[1] || den[0] == den[2] || den[1] == den[2] {
        return Err(BundleError::field(
            path,
            field("sample_input"),
            "sample_input, timestep_input and global_cond_input must be three different inputs",
        ));
    }
    Ok(())
}

/// The `[can]` section against the action and state it carries. What needs the DBC's contents
/// (signal ranges) is checked by the runtime's codec when it parses the file.
fn validate_can(m: &Manifest, path: &Path) -> Result<(), BundleError> {
    let a = &m.action;
    let ad = a.names.len();
    let state_index = |field: String, name: &str| -> Result<usize, BundleError> {
        m.state.names.iter().position(|s| s == name).ok_or_else(|| {
            BundleError::field(
                path,
                field,
                format!(
                    "`{name}` is not a state name (state.names: {})",
                    m.state.names.join(", ")
                ),
            )
        })
    };
    match &m.can {
        CanSpec::PerJoint { base_id } => {
            let last = u64::from(*base_id) + ad as u64 - 1;
            if last > 0x1FFF_FFFF {
                return Err(BundleError::field(
                    path,
                    "can.base_id",
                    format!("{base_id:#X} + {ad} joints leaves the 29-bit CAN ID range"),
                ));
            }
        }
        CanSpec::Mit(mit) => {
            if mit.motors.len() != ad {
                return Err(BundleError::field(
                    path,
                    "can.motors",
                    format!(
                        "{} motors for {ad} action dimensions ({}): one motor per dimension, in \
                         action order",
                        mit.motors.len(),
                        a.names.join(", ")
                    ),
                ));
            }
            match (mit.flavor, mit.command_timeout_ms) {
                (MitFlavor::Damiao, None | Some(0)) => {
                    return Err(BundleError::field(
                        path,
                        "can.command_timeout_ms",
                        "required (> 0) for Damiao motors: it is written to their TIMEOUT \
                         register at enable so that they stop by themselves when commands stop",
                    ))
                }
                (MitFlavor::Cubemars, Some(_)) => {
                    return Err(BundleError::field(
                        path,
                        "can.command_timeout_ms",
                        "CubeMars MIT firmware has no command timeout to set: remove the field \
                         (configure the driver's own timeout with the vendor tool)",
                    ))
                }
                _ => {}
            }
            let mut ids = BTreeSet::new();
            for (i, mo) in mit.motors.iter().enumerate() {
                let f = |s: &str| format!("can.motors[{i}] ({}).{s}", a.names[i]);
                if mo.id > 0x7FF || !ids.insert(mo.id) {
                    return Err(BundleError::field(
                        path,
                        f("id"),
                        format!(
                            "{:#X}: must be a standard 11-bit ID used by one motor only",
                            mo.id
                        ),
                    ));
                }
                if mo.feedback_id.is_some_and(|id| id > 0x7FF) {
                    return Err(BundleError::field(
                        path,
                        f("feedback_id"),
                        "must be a standard 11-bit ID",
                    ));
                }
                for (name, v) in [
                    ("p_max", mo.p_max),
                    ("v_max", mo.v_max),
                    ("t_max", mo.t_max),
                    ("kp_max", mo.kp_max),
                    ("kd_max", mo.kd_max),
                ] {
                    if !(v.is_finite() && v > 0.0) {
                        return Err(BundleError::field(
                            path,
                            f(name),
                            format!("{v} must be > 0"),
                        ));
                    }
                }
                for (name, v, max) in [
                    ("kp", mo.kp, mo.kp_max),
                    ("kd", mo.kd, mo.kd_max),
                    ("damp_kd", mo.damp_kd, mo.kd_max),
                ] {
                    if !(v.is_finite() && (0.0..=max).contains(&v)) {
                        return Err(BundleError::field(
                            path,
                            f(name),
                            format!("{v} is not in [0, {max}]"),
                        ));
                    }
                }
                if a.units[i] != "rad" {
                    return Err(BundleError::field(
                        path,
                        "action.units",
                        format!(
                            "MIT motors take positions in rad; `{}` is in `{}`",
                            a.names[i], a.units[i]
                        ),
                    ));
                }
                if let Some(l) = &a.limits {
                    if l.min[i] < -mo.p_max || l.max[i] > mo.p_max {
                        return Err(BundleError::field(
                            path,
                            f("p_max"),
                            format!(
                                "action.limits [{}, {}] of `{}` exceed the motor's packing range \
                                 ±{}: commands outside it cannot be encoded",
                                l.min[i], l.max[i], a.names[i], mo.p_max
                            ),
                        ));
                    }
                }
                for (name, v) in [
                    ("position_state", &mo.position_state),
                    ("velocity_state", &mo.velocity_state),
                    ("torque_state", &mo.torque_state),
                ] {
                    if let Some(n) = v {
                        state_index(f(name), n)?;
                    }
                }
            }
        }
        CanSpec::Dbc(d) => {
            if d.file.is_empty() || Path::new(&d.file).is_absolute() || d.file.contains("..") {
                return Err(BundleError::field(
                    path,
                    "can.file",
                    format!("`{}` must be a relative path inside the bundle", d.file),
                ));
            }
            if d.sha256.len() != 64 || !d.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BundleError::field(
                    path,
                    "can.sha256",
                    "must be 64 hex digits",
                ));
            }
            let signal = |field: String, s: &str| -> Result<(), BundleError> {
                match s.split_once('.') {
                    Some((msg, sig)) if !msg.is_empty() && !sig.is_empty() => Ok(()),
                    _ => Err(BundleError::field(
                        path,
                        field,
                        format!("`{s}`: expected `Message.Signal`"),
                    )),
                }
            };
            for name in &a.names {
                match d.actions.get(name) {
                    Some(s) => signal(format!("can.actions.{name}"), s)?,
                    None => {
                        return Err(BundleError::field(
                            path,
                            "can.actions",
                            format!("action `{name}` is not mapped to a DBC signal"),
                        ))
                    }
                }
            }
            if let Some(k) = d.actions.keys().find(|k| !a.names.contains(k)) {
                return Err(BundleError::field(
                    path,
                    format!("can.actions.{k}"),
                    format!("`{k}` is not an action name ({})", a.names.join(", ")),
                ));
            }
            for (k, v) in &d.constants {
                signal(format!("can.constants.\"{k}\""), k)?;
                if !v.is_finite() {
                    return Err(BundleError::field(
                        path,
                        format!("can.constants.\"{k}\""),
                        "must be finite",
                    ));
                }
            }
            if let Some(s) = &d.stop_signal {
                signal("can.stop_signal".into(), s)?;
            }
            for (k, v) in &d.feedback {
                state_index(format!("can.feedback.{k}"), k)?;
                signal(format!("can.feedback.{k}"), v)?;
            }
        }
    }
    Ok(())
}

/// A path relative to the bundle folder that stays inside it (no `..`, not absolute).
fn is_inside(file: &str) -> bool {
    !file.is_empty()
        && Path::new(file).components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        })
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Compares a file's sha256 with the manifest's.
fn check_hash(p: &Path, expected: &str) -> Result<(), BundleError> {
    let actual = sha256_file(p)?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(BundleError::HashMismatch {
            path: p.to_path_buf(),
            expected: expected.to_string(),
            actual,
        });
    }
    Ok(())
}

/// The bundle-relative paths of the external data files an ONNX model at `model_file`
/// (bundle-relative) references: its folder joined with each `location`.
pub fn data_file_paths(model_file: &str, header: &OnnxHeader) -> Vec<String> {
    let folder = Path::new(model_file).parent().unwrap_or(Path::new(""));
    header
        .external_data
        .iter()
        .map(|l| folder.join(l).to_string_lossy().replace('\\', "/"))
        .collect()
}

/// Checks one model file's hash, its data files' hashes, and that every external data file
/// the model references is listed (so hashed) in `models[i].data_files`. Returns the header.
fn check_model_files(
    dir: &Path,
    i: usize,
    f: &ModelFile,
    manifest_path: &Path,
) -> Result<OnnxHeader, BundleError> {
    let p = dir.join(&f.file);
    check_hash(&p, &f.sha256)?;
    for d in &f.data_files {
        check_hash(&dir.join(&d.file), &d.sha256)?;
    }
    let bytes = std::fs::read(&p).map_err(|error| BundleError::Io {
        path: p.clone(),
        op: "read",
        error,
    })?;
    let header = read_header(&bytes).map_err(|error| BundleError::Model {
        path: p.clone(),
        error,
    })?;
    let norm = |s: &str| Path::new(s).components().collect::<PathBuf>();
    for (loc, rel) in header
        .external_data
        .iter()
        .zip(data_file_paths(&f.file, &header))
    {
        if !f.data_files.iter().any(|d| norm(&d.file) == norm(&rel)) {
            return Err(BundleError::field(
                manifest_path,
                format!("models[{i}].data_files"),
                format!(
                    "`{}` keeps tensors in the external data file `{loc}`, which the manifest \
                     does not list with its sha256, so a changed or swapped data file would go \
                     unnoticed; re-export the bundle (`reflex-tools export --onnx {} --manifest \
                     {} --out NEW_DIR` copies and hashes it) or add `data_files = [{{ file = \
                     \"{rel}\", sha256 = \"...\" }}]` to this model's entry",
                    f.file,
                    p.display(),
                    manifest_path.display()
                ),
            ));
        }
    }
    Ok(header)
}

/// Reads the I/O an ONNX model file declares (a header read: no graph is built).
pub fn read_model_io(path: &Path) -> Result<GraphIo, BundleError> {
    let bytes = std::fs::read(path).map_err(|error| BundleError::Io {
        path: path.to_path_buf(),
        op: "read",
        error,
    })?;
    model_io(&bytes, path)
}

/// [`read_model_io`] on bytes already in memory; `path` names them in errors.
pub fn model_io(bytes: &[u8], path: &Path) -> Result<GraphIo, BundleError> {
    let header = read_header(bytes).map_err(|error| BundleError::Model {
        path: path.to_path_buf(),
        error,
    })?;
    GraphIo::from_header(&header, path)
}

/// `[name [shape], ...]` of tensors, for messages.
fn tensor_list(v: &[TensorSpec]) -> String {
    v.iter()
        .map(|t| format!("{} {:?}", t.name, t.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Element types: f32 is native, float64/float16 are converted at the boundary, the rest is
/// refused here (at export and load) rather than at the first inference. Every input is fed;
/// of the outputs only `read` is.
fn check_elem_types(io: &GraphIo, read: &str, model_path: &Path) -> Result<(), BundleError> {
    for (which, t) in io
        .inputs
        .iter()
        .map(|t| ("input", t))
        .chain(io.outputs.iter().map(|t| ("output", t)))
    {
        let used_by_manifest = which == "input" || t.name == read;
        if used_by_manifest && !t.elem.is_boundary_supported() {
            return Err(BundleError::Graph {
                path: model_path.to_path_buf(),
                problem: format!(
                    "{which} `{}` is {} ({}); reflex feeds and reads float (f32), double (f64) \
                     or float16 tensors: re-export the model with `{}` as float32 (e.g. a \
                     `.float()` on the tensor before `torch.onnx.export`)",
                    t.name,
                    t.elem,
                    t.shape_text(),
                    t.name
                ),
            });
        }
    }
    Ok(())
}

/// The graph's inputs are exactly what the manifest's cameras and state feed, of the shapes
/// their preprocessing makes.
fn check_observation_inputs(
    m: &Manifest,
    io: &GraphIo,
    model_path: &Path,
) -> Result<(), BundleError> {
    let gerr = |problem: String| BundleError::Graph {
        path: model_path.to_path_buf(),
        problem,
    };
    let mut used = BTreeSet::new();
    for cam in &m.cameras {
        let want = [
            1,
            cam.preprocess.color.channels(),
            cam.preprocess.resize.height as usize,
            cam.preprocess.resize.width as usize,
        ];
        match io.input(&cam.onnx_input) {
            None => {
                return Err(gerr(format!(
                    "camera `{}`: onnx_input `{}` is not an input of the graph (inputs: {})",
                    cam.name,
                    cam.onnx_input,
                    tensor_list(&io.inputs)
                )))
            }
            Some(s) if s != want => {
                return Err(gerr(format!(
                    "camera `{}`: input `{}` has shape {s:?}, the manifest's preprocessing produces {want:?}",
                    cam.name, cam.onnx_input
                )))
            }
            Some(_) => {}
        }
        used.insert(cam.onnx_input.clone());
    }
    if let Some(si) = &m.state.onnx_input {
        let want = [1, m.state.names.len()];
        match io.input(si) {
            None => {
                return Err(gerr(format!(
                    "state.onnx_input `{si}` is not an input of the graph (inputs: {})",
                    tensor_list(&io.inputs)
                )))
            }
            Some(s) if s != want => {
                return Err(gerr(format!(
                "state input `{si}` has shape {s:?}, the manifest's {} state names need {want:?}",
                m.state.names.len()
            )))
            }
            Some(_) => {}
        }
        used.insert(si.clone());
    }
    if let Some(t) = io.inputs.iter().find(|t| !used.contains(&t.name)) {
        return Err(gerr(format!(
            "graph input `{}` is fed by nothing in the manifest (no camera or state names it)",
            t.name
        )));
    }
    Ok(())
}

/// Checks the manifest against the model's real I/O (a `policy` model: cameras and state in,
/// the action out).
pub fn validate_io(m: &Manifest, io: &GraphIo, model_path: &Path) -> Result<(), BundleError> {
    let gerr = |problem: String| BundleError::Graph {
        path: model_path.to_path_buf(),
        problem,
    };
    check_elem_types(io, &m.action.onnx_output, model_path)?;
    check_observation_inputs(m, io, model_path)?;
    let ad = m.action.names.len();
    let want: Vec<usize> = match m.action.output {
        ActionOutput::Single => vec![1, ad],
        ActionOutput::Chunk { horizon } => vec![1, horizon, ad],
    };
    match io.output(&m.action.onnx_output) {
        // Declared without a static shape: the backend checks it at prepare.
        None if io.unshaped_outputs.contains(&m.action.onnx_output) => Ok(()),
        None => Err(gerr(format!(
            "action.onnx_output `{}` is not an output of the graph (outputs: {})",
            m.action.onnx_output,
            tensor_list(&io.outputs)
        ))),
        Some(s) if s != want.as_slice() => Err(gerr(format!(
            "action output `{}` has shape {s:?}, the manifest ({} action names, output {:?}) needs {want:?}",
            m.action.onnx_output, ad, m.action.output
        ))),
        Some(_) => Ok(()),
    }
}

/// Checks a diffusion policy's `encoder` model against the manifest: its inputs are exactly the
/// cameras and the state (as [`validate_io`]), its output `diffusion.features_output` is
/// `[1, D]`. Returns `D`, or `None` when the file declares no static shape for it (the backend
/// checks it at prepare).
pub fn validate_encoder_io(
    m: &Manifest,
    d: &DiffusionSpec,
    io: &GraphIo,
    model_path: &Path,
) -> Result<Option<usize>, BundleError> {
    check_elem_types(io, &d.features_output, model_path)?;
    check_observation_inputs(m, io, model_path)?;
    match io.output(&d.features_output) {
        None if io.unshaped_outputs.contains(&d.features_output) => Ok(None),
        Some(&[1, n]) if n > 0 => Ok(Some(n)),
        found => Err(BundleError::Graph {
            path: model_path.to_path_buf(),
            problem: match found {
                None => format!(
                    "diffusion.features_output `{}` is not an output of the encoder (outputs: {})",
                    d.features_output,
                    tensor_list(&io.outputs)
                ),
                Some(s) => format!(
                    "the encoder's output `{}` has shape {s:?}, expected [1, D] (one observation's features)",
                    d.features_output
                ),
            },
        }),
    }
}

/// Checks a diffusion policy's `denoiser` model against the manifest: exactly the inputs
/// `diffusion.sample_input` `[1, horizon, action_dim]`, `timestep_input` `[1]` and
/// `global_cond_input` `[1, n_obs_steps * D]` (`features`: the encoder's `D`, when known), and
/// the output `action.onnx_output` like the sample.
pub fn validate_denoiser_io(
    m: &Manifest,
    d: &DiffusionSpec,
    io: &GraphIo,
    model_path: &Path,
    features: Option<usize>,
) -> Result<(), BundleError> {
    let gerr = |problem: String| BundleError::Graph {
        path: model_path.to_path_buf(),
        problem,
    };
    check_elem_types(io, &m.action.onnx_output, model_path)?;
    let ad = m.action.names.len();
    let sample = vec![1, d.horizon, ad];
    for (field, name) in [
        ("sample_input", &d.sample_input),
        ("timestep_input", &d.timestep_input),
        ("global_cond_input", &d.global_cond_input),
    ] {
        let Some(s) = io.input(name) else {
            return Err(gerr(format!(
                "diffusion.{field} `{name}` is not an input of the denoiser (inputs: {})",
                tensor_list(&io.inputs)
            )));
        };
        let ok = match field {
            "sample_input" => s == sample.as_slice(),
            "timestep_input" => s == [1],
            _ => match (s, features) {
                (&[1, n], Some(f)) => n == d.n_obs_steps * f,
                (&[1, n], None) => n > 0 && n % d.n_obs_steps == 0,
                _ => false,
            },
        };
        if !ok {
            let want = match field {
                "sample_input" => format!("{sample:?} ([1, horizon, action dim])"),
                "timestep_input" => "[1]".into(),
                _ => match features {
                    Some(f) => format!(
                        "[1, {}] (n_obs_steps {} x the encoder's {f} features)",
                        d.n_obs_steps * f,
                        d.n_obs_steps
                    ),
                    None => format!("[1, n_obs_steps x D] with n_obs_steps = {}", d.n_obs_steps),
                },
            };
            return Err(gerr(format!(
                "the denoiser's input `{name}` has shape {s:?}, expected {want}"
            )));
        }
    }
    if let Some(t) = io
        .inputs
        .iter()
        .find(|t| ![&d.sample_input, &d.timestep_input, &d.global_cond_input].contains(&&t.name))
    {
        return Err(gerr(format!(
            "the denoiser's input `{}` is fed by nothing (its inputs are diffusion.sample_input, \
             timestep_input and global_cond_input)",
            t.name
        )));
    }
    match io.output(&m.action.onnx_output) {
        None if io.unshaped_outputs.contains(&m.action.onnx_output) => Ok(()),
        None => Err(gerr(format!(
            "action.onnx_output `{}` is not an output of the denoiser (outputs: {})",
            m.action.onnx_output,
            tensor_list(&io.outputs)
        ))),
        Some(s) if s != sample.as_slice() => Err(gerr(format!(
            "the denoiser's output `{}` has shape {s:?}, the sample's {sample:?}",
            m.action.onnx_output
        ))),
        Some(_) => Ok(()),
    }
}

/// Refuses, before reading anything, a path that cannot be a bundle: a file other than a
/// `.toml` manifest (an ONNX graph given where its bundle was expected, the commonest mix-up), or
/// a directory without [`MANIFEST_FILE`]. A missing path is left to the read's own error.
fn check_bundle_path(path: &Path, manifest_path: &Path) -> Result<(), BundleError> {
    const WHAT: &str = "a bundle is a directory holding policy.toml and the model files it lists";
    let not_a_bundle = |problem: String| BundleError::NotABundle {
        path: path.to_path_buf(),
        problem,
    };
    if path.is_dir() {
        if !manifest_path.exists() {
            return Err(not_a_bundle(format!(
                "no {MANIFEST_FILE} in this directory; {WHAT} (write one with `reflex-tools \
                 export` or `reflex-tools import`)"
            )));
        }
    } else if path.is_file() && path.extension().and_then(|e| e.to_str()) != Some("toml") {
        let what = match path.extension().and_then(|e| e.to_str()) {
            Some("onnx") => "this is an ONNX graph, not a bundle; ".to_string(),
            _ => String::new(),
        };
        let parent = match path.parent() {
            Some(p) if p.join(MANIFEST_FILE).is_file() => {
                format!("pass {} (it holds a {MANIFEST_FILE})", p.display())
            }
            _ => format!("pass that directory (or its {MANIFEST_FILE})"),
        };
        return Err(not_a_bundle(format!(
            "{what}{WHAT}: {parent}; a bundle is made from a checkpoint with `reflex-tools \
             export` or `reflex-tools import`"
        )));
    }
    Ok(())
}

impl Bundle {
    /// Loads and fully validates a bundle directory (or a path to its `policy.toml`).
    ///
    /// # Errors
    /// [`BundleError::NotABundle`] for a path that is neither (an `.onnx` file, a folder without
    /// `policy.toml`), then the first problem found in the manifest or a model file, naming the
    /// file and the field or tensor.
    pub fn load(path: impl AsRef<Path>) -> Result<Bundle, BundleError> {
        let path = path.as_ref();
        let (dir, manifest_path) = if path.is_dir() {
            (path.to_path_buf(), path.join(MANIFEST_FILE))
        } else {
            (
                path.parent().unwrap_or(Path::new(".")).to_path_buf(),
                path.to_path_buf(),
            )
        };
        check_bundle_path(path, &manifest_path)?;
        let text = std::fs::read_to_string(&manifest_path).map_err(|error| BundleError::Io {
            path: manifest_path.clone(),
            op: "read",
            error,
        })?;
        let manifest = parse_manifest(&text, &manifest_path)?;
        validate_manifest(&manifest, &manifest_path)?;
        let mut headers = Vec::with_capacity(manifest.models.len());
        for (i, f) in manifest.models.iter().enumerate() {
            headers.push(check_model_files(&dir, i, f, &manifest_path)?);
        }
        if let CanSpec::Dbc(d) = &manifest.can {
            check_hash(&dir.join(&d.file), &d.sha256)?;
        }
        if let Some(d) = &manifest.diffusion {
            // Encoder + denoiser: `policy_path` and `io` are the encoder's (the file listed for
            // tract, else the first); every encoder and denoiser file must fit the manifest.
            let primary = manifest
                .model_for(ModelRole::Encoder, BackendKind::Tract)
                .or_else(|| manifest.models_with_role(ModelRole::Encoder).next())
                .ok_or_else(|| BundleError::field(&manifest_path, "models", "no encoder model"))?;
            let policy_path = dir.join(&primary.file);
            let mut io = GraphIo::default();
            let mut features = None;
            for (f, h) in manifest.models.iter().zip(&headers) {
                if f.role != ModelRole::Encoder {
                    continue;
                }
                let p = dir.join(&f.file);
                let file_io = GraphIo::from_header(h, &p)?;
                let n = validate_encoder_io(&manifest, d, &file_io, &p)?;
                if p == policy_path {
                    io = file_io;
                    features = n;
                }
            }
            for (f, h) in manifest.models.iter().zip(&headers) {
                if f.role == ModelRole::Denoiser {
                    let p = dir.join(&f.file);
                    let file_io = GraphIo::from_header(h, &p)?;
                    validate_denoiser_io(&manifest, d, &file_io, &p, features)?;
                }
            }
            return Ok(Bundle {
                dir,
                manifest,
                policy_path,
                io,
            });
        }
        // Every policy file (one per backend) must fit the manifest; `io` is the one tract runs:
        // the file listed for tract, else the first.
        let primary = manifest
            .policy_model_for(BackendKind::Tract)
            .or_else(|| manifest.policy_model())
            .ok_or_else(|| BundleError::field(&manifest_path, "models", "no policy model"))?;
        let policy_path = dir.join(&primary.file);
        let mut io = GraphIo::default();
        for (f, h) in manifest.models.iter().zip(&headers) {
            if f.role != ModelRole::Policy {
                continue;
            }
            let p = dir.join(&f.file);
            let file_io = GraphIo::from_header(h, &p)?;
            validate_io(&manifest, &file_io, &p)?;
            if p == policy_path {
                io = file_io;
            }
        }
        Ok(Bundle {
            dir,
            manifest,
            policy_path,
            io,
        })
    }

    /// Path of a model file of this bundle.
    pub fn model_path(&self, f: &ModelFile) -> PathBuf {
        self.dir.join(&f.file)
    }

    /// Period of the control loop in nanoseconds.
    pub fn period_ns(&self) -> u64 {
        (1e9 / self.manifest.control.rate_hz).round() as u64
    }
}

/// Files a bundle may hold besides its manifest and the files the manifest lists: what reflex
/// writes into it (`reflex-tools quantize`'s report, the CPU backend measured fastest by
/// `reflex bench --backend all --record`).
pub const BUNDLE_ARTEFACTS: &[&str] = &[QUANTIZATION_REPORT_FILE, BACKEND_PREFERENCE_FILE];

/// Folders of a bundle whose whole content reflex writes on the board: `engines/` (TensorRT
/// engines, their sidecars, timing caches and build logs; ONNX Runtime's optimized graphs in
/// `engines/onnxruntime/`).
pub const BUNDLE_ARTEFACT_DIRS: &[&str] = &["engines"];

/// The measured CPU-backend record (`reflex_runtime::infer::preference`).
pub const BACKEND_PREFERENCE_FILE: &str = "backend-preference.json";

/// The accuracy report `reflex-tools quantize` writes into the bundles it makes.
pub const QUANTIZATION_REPORT_FILE: &str = "quantization-report.json";

/// Recognizes a folder reflex wrote as a bundle: a `policy.toml` that is TOML with an integer
/// `format_version` (any version: an old bundle is still reflex's), and nothing but that
/// manifest, the files it lists (`models[].file`, `can.file`), [`BUNDLE_ARTEFACTS`] and
/// [`BUNDLE_ARTEFACT_DIRS`]. A
/// folder with anything else in it (a user's notes, another project) is not a bundle, so no
/// command replaces it. Returns why not, for messages.
pub fn is_bundle_dir(dir: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(dir.join(MANIFEST_FILE))
        .map_err(|_| format!("no readable {MANIFEST_FILE}"))?;
    let raw: toml::Table = text
        .parse()
        .map_err(|_| format!("its {MANIFEST_FILE} is not TOML"))?;
    if !matches!(raw.get("format_version"), Some(toml::Value::Integer(_))) {
        return Err(format!("its {MANIFEST_FILE} has no format_version"));
    }
    let mut listed: BTreeSet<PathBuf> = [MANIFEST_FILE]
        .iter()
        .chain(BUNDLE_ARTEFACTS)
        .map(PathBuf::from)
        .collect();
    let file_of = |v: &toml::Value| v.get("file").and_then(|f| f.as_str()).map(PathBuf::from);
    if let Some(models) = raw.get("models").and_then(|m| m.as_array()) {
        listed.extend(models.iter().filter_map(file_of));
        let data = models
            .iter()
            .filter_map(|m| m.get("data_files").and_then(|d| d.as_array()))
            .flatten();
        listed.extend(data.filter_map(file_of));
    }
    listed.extend(raw.get("can").and_then(file_of));
    // Folders allowed: those on the way to a listed file.
    let folders: BTreeSet<&Path> = listed
        .iter()
        .flat_map(|f| f.ancestors().skip(1))
        .filter(|a| !a.as_os_str().is_empty())
        .collect();
    let mut unknown = vec![];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let entries = std::fs::read_dir(dir.join(&rel)).map_err(|e| e.to_string())?;
        for e in entries.flatten() {
            let r = rel.join(e.file_name());
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && BUNDLE_ARTEFACT_DIRS.iter().any(|d| r == Path::new(d)) {
                continue;
            }
            if is_dir && folders.contains(r.as_path()) {
                stack.push(r);
            } else if is_dir || !listed.contains(&r) {
                unknown.push(r.display().to_string());
            }
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort();
    let more = unknown.len().saturating_sub(3);
    unknown.truncate(3);
    Err(format!(
        "it holds {}{} that its {MANIFEST_FILE} does not list",
        unknown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
}

/// The output kind of a bundle folder, for [`crate::output`].
pub const BUNDLE_KIND: crate::output::Kind = crate::output::Kind {
    what: "a reflex bundle",
    recognize: is_bundle_dir,
};

impl BundleError {
    /// The same error with paths under `from` (a staging folder) named under `to` (the target
    /// the user gave).
    fn relocated(self, from: &Path, to: &Path) -> Self {
        let m = |p: PathBuf| match p.strip_prefix(from) {
            Ok(rest) => to.join(rest),
            Err(_) => p,
        };
        match self {
            BundleError::Io { path, op, error } => BundleError::Io {
                path: m(path),
                op,
                error,
            },
            BundleError::Parse { path, message } => BundleError::Parse {
                path: m(path),
                message,
            },
            BundleError::UnsupportedVersion { path, found } => BundleError::UnsupportedVersion {
                path: m(path),
                found,
            },
            BundleError::Field {
                path,
                field,
                problem,
            } => BundleError::Field {
                path: m(path),
                field,
                problem,
            },
            BundleError::HashMismatch {
                path,
                expected,
                actual,
            } => BundleError::HashMismatch {
                path: m(path),
                expected,
                actual,
            },
            BundleError::Model { path, error } => BundleError::Model {
                path: m(path),
                error,
            },
            BundleError::Graph { path, problem } => BundleError::Graph {
                path: m(path),
                problem,
            },
            BundleError::NotABundle { path, problem } => BundleError::NotABundle {
                path: m(path),
                problem,
            },
            e @ BundleError::Output(_) => e,
        }
    }
}

/// Writes a bundle's files into `out`'s staging folder: the model files (hashes filled in,
/// `files` paired in order with `manifest.models`), then the manifest. Then loads the staged
/// bundle as the robot would ([`Bundle::load`]: hashes, manifest against the graph, a DBC
/// bundle's protocol file), so a bundle that would not load never reaches the target; errors
/// name the target's paths, not the staging folder. Nothing is in place until
/// [`OutDir::commit`](crate::output::OutDir::commit); the returned bundle's paths point into the
/// staging folder until then.
pub fn stage_bundle(
    out: &crate::output::OutDir,
    manifest: &mut Manifest,
    files: &[&[u8]],
) -> Result<Bundle, BundleError> {
    stage_bundle_with(out, manifest, files, &[])
}

/// A file copied into a bundle as it is (an ONNX external data file, a DBC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCopy {
    /// Where the file is now (the user's file; errors name it).
    pub source: PathBuf,
    /// Path relative to the bundle folder: a `models[].data_files[].file` or the `can.file` of
    /// the manifest, whose `sha256` is filled in from the copy.
    pub file: String,
}

/// [`stage_bundle`] that also copies `copies` into the bundle (streamed, never read whole into
/// memory) and records each copy's sha256 in the manifest entry naming it
/// (`models[].data_files[]` or `can`). Errors: a source that cannot be read (named), a copy
/// that no manifest entry names.
pub fn stage_bundle_with(
    out: &crate::output::OutDir,
    manifest: &mut Manifest,
    files: &[&[u8]],
    copies: &[FileCopy],
) -> Result<Bundle, BundleError> {
    let dir = out.path();
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| BundleError::Io {
            path,
            op: "write",
            error,
        }
    };
    if files.len() != manifest.models.len() {
        return Err(BundleError::field(
            out.target(),
            "models",
            format!(
                "{} model entries but {} files given",
                manifest.models.len(),
                files.len()
            ),
        ));
    }
    for (m, bytes) in manifest.models.iter_mut().zip(files) {
        m.sha256 = sha256_bytes(bytes);
    }
    for c in copies {
        let named = manifest
            .models
            .iter()
            .flat_map(|m| &m.data_files)
            .any(|d| d.file == c.file)
            || matches!(&manifest.can, CanSpec::Dbc(d) if d.file == c.file);
        if !named || !is_inside(&c.file) {
            return Err(BundleError::field(
                out.target(),
                "models",
                format!(
                    "{} is copied to `{}`, which no manifest entry names",
                    c.source.display(),
                    c.file
                ),
            ));
        }
        // Placeholders until the copies are hashed, so the manifest validates first.
        set_copy_hash(manifest, &c.file, &"0".repeat(64));
    }
    validate_manifest(manifest, &out.target().join(MANIFEST_FILE))?;
    let result = (|| {
        for (m, bytes) in manifest.models.iter().zip(files) {
            let p = dir.join(&m.file);
            if let Some(par) = p.parent() {
                std::fs::create_dir_all(par).map_err(io(par))?;
            }
            std::fs::write(&p, bytes).map_err(io(&p))?;
        }
        for c in copies {
            let p = dir.join(&c.file);
            if let Some(par) = p.parent() {
                std::fs::create_dir_all(par).map_err(io(par))?;
            }
            if !c.source.is_file() {
                return Err(BundleError::Io {
                    path: c.source.clone(),
                    op: "read",
                    error: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            std::fs::copy(&c.source, &p).map_err(|error| BundleError::Io {
                path: c.source.clone(),
                op: "read",
                error,
            })?;
            set_copy_hash(manifest, &c.file, &sha256_file(&p)?);
        }
        let mp = dir.join(MANIFEST_FILE);
        let text = manifest.to_toml().map_err(|e| BundleError::Parse {
            path: mp.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&mp, text).map_err(io(&mp))?;
        Bundle::load(&dir)
    })();
    result.map_err(|e| e.relocated(&dir, out.target()))
}

/// The files of a loaded bundle that are copied as they are when a tool writes a new bundle
/// from it (`reflex-tools quantize`): the DBC, and the data files of the models other than
/// those in `except` (models whose file the tool rewrites).
pub fn carried_files(b: &Bundle, except: &[&str]) -> Vec<FileCopy> {
    let mut v: Vec<FileCopy> = b
        .manifest
        .models
        .iter()
        .filter(|f| !except.contains(&f.file.as_str()))
        .flat_map(|f| &f.data_files)
        .map(|d| FileCopy {
            source: b.dir.join(&d.file),
            file: d.file.clone(),
        })
        .collect();
    if let CanSpec::Dbc(d) = &b.manifest.can {
        v.push(FileCopy {
            source: b.dir.join(&d.file),
            file: d.file.clone(),
        });
    }
    v
}

/// Sets the sha256 of the manifest entry (a model's data file, the DBC) whose file is `file`.
fn set_copy_hash(manifest: &mut Manifest, file: &str, sha: &str) {
    for d in manifest.models.iter_mut().flat_map(|m| &mut m.data_files) {
        if d.file == file {
            d.sha256 = sha.to_string();
        }
    }
    if let CanSpec::Dbc(d) = &mut manifest.can {
        if d.file == file {
            d.sha256 = sha.to_string();
        }
    }
}

/// Writes a bundle to `dir` (see [`stage_bundle`]) and puts it in place atomically: a new or
/// empty folder, or, as `replace` allows, an existing bundle (never a folder holding anything
/// else; see [`crate::output`]). A failed write leaves `dir` as it was. Returns the bundle as
/// loaded back.
pub fn write_bundle_to(
    dir: &Path,
    manifest: &mut Manifest,
    files: &[&[u8]],
    replace: crate::output::Replace,
) -> Result<Bundle, BundleError> {
    write_bundle_with(dir, manifest, files, &[], replace)
}

/// [`write_bundle_to`] that also copies `copies` into the bundle, hashed (see
/// [`stage_bundle_with`]).
pub fn write_bundle_with(
    dir: &Path,
    manifest: &mut Manifest,
    files: &[&[u8]],
    copies: &[FileCopy],
    replace: crate::output::Replace,
) -> Result<Bundle, BundleError> {
    let out = crate::output::OutDir::prepare(dir, replace, &BUNDLE_KIND)?;
    let mut b = stage_bundle_with(&out, manifest, files, copies)?;
    let staged = out.path();
    out.commit()?;
    b.policy_path = dir.join(
        b.policy_path
            .strip_prefix(&staged)
            .unwrap_or(&b.policy_path),
    );
    b.dir = dir.to_path_buf();
    Ok(b)
}

/// [`write_bundle_to`] replacing an existing bundle at `dir` (for programs and tests that own
/// `dir`; the commands ask for `--force` first).
pub fn write_bundle(
    dir: &Path,
    manifest: &mut Manifest,
    files: &[&[u8]],
) -> Result<(), BundleError> {
    write_bundle_to(dir, manifest, files, crate::output::Replace::Ours).map(|_| ())
}
