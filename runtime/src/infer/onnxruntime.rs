//! The ONNX Runtime session: ONNX on the CPU through Microsoft's runtime, when its library is on
//! the board (cargo feature `onnxruntime`, on by default).
//!
//! Nothing of ONNX Runtime is linked or downloaded at build time: the `ort` crate runs in its
//! `load-dynamic` mode and the shared library is opened at run time, once per process
//! ([`library`]), from the first of
//! 1. the path in `REFLEX_ONNXRUNTIME_LIB` ([`LIB_ENV`]; when set, nothing else is tried);
//! 2. the library a Python `onnxruntime` package ships (`onnxruntime/capi/libonnxruntime.so.1.x.y`
//!    in PyPI's x86-64 and aarch64 wheels), the package found by asking `python3` where it is
//!    (`importlib.util.find_spec`, which does not import it);
//! 3. the loader's search path (`libonnxruntime.so.1`, then `libonnxruntime.so`).
//!
//! The library's version is read from its own `OrtGetApiBase()->GetVersionString()` before `ort`
//! uses it, and reflex asks for C API version [`API_VERSION`] (ONNX Runtime 1.17's, the oldest
//! `ort` 2.0.0-rc.15 supports): a library older than 1.17 is refused with that reason, a newer
//! one serves the older API (ONNX Runtime keeps every older `OrtApi` table).
//!
//! A session ([`OrtSession`]) is prepared with every graph optimization on (`ORT_ENABLE_ALL`, the
//! Python API's default) and reflex's thread count as ONNX Runtime's intra-op threads. Its inputs
//! and outputs are tensors allocated once by the session's CPU allocator and bound to an
//! `OrtIoBinding`: a run is one `RunWithBinding` call, which reads the bound input buffers and
//! writes into the bound output buffers, so nothing is allocated on reflex's side per run
//! (ONNX Runtime's own scratch memory comes from its arena, see
//! `tests/tests/it/alloc_onnxruntime.rs`).
//!
//! The optimized graph can be kept ([`OptimizedCache`]): ONNX Runtime's "offline" mode
//! (`SetOptimizedModelFilePath`) writes the graph it optimized, and a later start loads that file
//! with optimizations off. The file is keyed by the model's sha256, the library's version and
//! the CPU model, since `ORT_ENABLE_ALL`'s layout rewrites (NCHWc) are specific to the CPU they
//! ran on (ONNX Runtime's docs, "Graph Optimizations", online/offline mode).

// Two small `unsafe` blocks, each with its SAFETY note: reading the library's version string
// through its C entry point, and the run itself (`RunWithBinding`), called directly because
// `ort`'s `Session::run_binding` collects the bound outputs into new vectors on every run.
#![allow(unsafe_code)]

use crate::infer::session::{Session, SessionError, TensorSpec};
use crate::infer::tract::TractOptions;
use reflex_models::manifest::BackendKind;
use reflex_models::onnx::header::ElemType;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::IoBinding;
use ort::value::{Tensor, TensorElementType, ValueType};
use ort::AsPointer;

const NAME: &str = "onnxruntime";

/// The environment variable naming the ONNX Runtime shared library to load.
pub const LIB_ENV: &str = "REFLEX_ONNXRUNTIME_LIB";

/// The ONNX Runtime C API version reflex requests (`ORT_API_VERSION` of ONNX Runtime 1.17, the
/// oldest `ort` 2.0.0-rc.15 supports). A library answers for every API version up to its own
/// minor version.
pub const API_VERSION: u32 = ort::MINOR_VERSION;

/// Where the library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySource {
    /// The path in [`LIB_ENV`].
    Env,
    /// Shipped by the Python `onnxruntime` package in this directory.
    PythonPackage(PathBuf),
    /// Found by the dynamic loader by name.
    LoaderPath,
}

impl std::fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LibrarySource::Env => write!(f, "from {LIB_ENV}"),
            LibrarySource::PythonPackage(dir) => {
                write!(
                    f,
                    "from the Python onnxruntime package in {}",
                    dir.display()
                )
            }
            LibrarySource::LoaderPath => write!(f, "from the loader's search path"),
        }
    }
}

/// The loaded ONNX Runtime library: what `reflex check` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrtLibrary {
    /// The path loaded (a bare file name when found by the loader).
    pub path: PathBuf,
    pub source: LibrarySource,
    /// The library's own version string (`1.32.0`).
    pub version: String,
    /// The C API version requested ([`API_VERSION`]).
    pub api_version: u32,
}

impl std::fmt::Display for OrtLibrary {
    /// `ONNX Runtime 1.32.0 (C API 17 requested), /x/libonnxruntime.so.1.32.0 from ...`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ONNX Runtime {} (C API {} requested), {} {}",
            self.version,
            self.api_version,
            self.path.display(),
            self.source
        )
    }
}

/// Why the ONNX Runtime library is not usable in this process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LibraryError {
    /// `REFLEX_ONNXRUNTIME_LIB` names a file that does not load as ONNX Runtime.
    #[error("{LIB_ENV}={}: {detail} (point it at libonnxruntime.so.1.x.y, or unset it to search)", path.display())]
    EnvPath { path: PathBuf, detail: String },
    /// No candidate loaded; each attempt with its reason.
    #[error(
        "libonnxruntime not found ({}); set {LIB_ENV} to its path or `pip install onnxruntime`",
        tried.join("; ")
    )]
    NotFound { tried: Vec<String> },
    /// The library is older than the C API reflex requests.
    #[error(
        "{}: ONNX Runtime {version} is older than 1.{API_VERSION} (C API {API_VERSION}, the oldest \
         reflex's `ort` supports); install a newer one",
        path.display()
    )]
    TooOld { path: PathBuf, version: String },
    /// The library loaded but ONNX Runtime's environment could not be created.
    #[error("{}: ONNX Runtime did not start: {detail}", path.display())]
    Environment { path: PathBuf, detail: String },
}

struct Runtime {
    library: OrtLibrary,
    env: ort::environment::Environment,
    /// Our own handle on the library, kept open for the process (never unloaded between our
    /// version check and `ort`'s load, nor after).
    _handle: libloading::Library,
}

static RUNTIME: OnceLock<Result<Runtime, LibraryError>> = OnceLock::new();

/// Loads ONNX Runtime once per process (the search in the module docs) and returns what was
/// loaded, or why nothing was. Later calls return the first answer.
pub fn library() -> Result<&'static OrtLibrary, LibraryError> {
    runtime().map(|r| &r.library)
}

fn runtime() -> Result<&'static Runtime, LibraryError> {
    RUNTIME
        .get_or_init(load)
        .as_ref()
        .map_err(LibraryError::clone)
}

/// The Python `onnxruntime` package directory, asked of `python3` without importing it.
fn python_package_dir() -> Result<PathBuf, String> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; s = u.find_spec('onnxruntime'); \
             print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || dir.is_empty() {
        return Err("python3 has no onnxruntime package".into());
    }
    Ok(PathBuf::from(dir))
}

/// The newest `libonnxruntime.so.1.x.y` in a Python package's `capi/` directory.
fn library_in_package(dir: &Path) -> Result<PathBuf, String> {
    let capi = dir.join("capi");
    let prefix = format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir(&capi)
        .map_err(|e| format!("{}: {e}", capi.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&prefix)?;
            let version = rest.strip_prefix('.').unwrap_or(rest);
            let key = version.split('.').filter_map(|p| p.parse().ok()).collect();
            Some((key, e.path()))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| format!("no {prefix}* in {}", capi.display()))
}

/// Opens `path` and reads the library's version string (`OrtGetApiBase()->GetVersionString()`);
/// returns the open library with it.
fn read_version(path: &Path) -> Result<(libloading::Library, String), String> {
    // SAFETY: loading runs the library's initializers; ONNX Runtime's are its static
    // registrations, with no requirement on the caller.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        // libloading's message is `dlopen failed`; the loader's own reason (which names the
        // file) is its source.
        match std::error::Error::source(&e) {
            Some(why) => format!("{e}: {why}"),
            None => format!("{}: {e}", path.display()),
        }
    })?;
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `OrtGetApiBase` has this signature in every ONNX Runtime release
    // (onnxruntime_c_api.h); it returns a pointer to a static table whose `GetVersionString`
    // returns a static NUL-terminated string.
    let version = unsafe {
        let get: libloading::Symbol<GetApiBase> = lib
            .get(b"OrtGetApiBase\0")
            .map_err(|_| "does not export OrtGetApiBase: not ONNX Runtime".to_string())?;
        let base = get();
        if base.is_null() {
            return Err("OrtGetApiBase returned null".into());
        }
        CStr::from_ptr(((*base).GetVersionString)())
            .to_string_lossy()
            .into_owned()
    };
    Ok((lib, version))
}

fn minor(version: &str) -> u32 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

fn load() -> Result<Runtime, LibraryError> {
    let (path, source, (handle, version)) = find()?;
    if minor(&version) < API_VERSION {
        return Err(LibraryError::TooOld { path, version });
    }
    let env = ort::init_from(&path)
        .map_err(|e| LibraryError::Environment {
            path: path.clone(),
            detail: e.to_string(),
        })?
        .with_name("reflex")
        .build()
        .map_err(|e| LibraryError::Environment {
            path: path.clone(),
            detail: e.to_string(),
        })?;
    log::info!("onnxruntime: loaded {version} from {}", path.display());
    Ok(Runtime {
        library: OrtLibrary {
            path,
            source,
            version,
            api_version: API_VERSION,
        },
        env,
        _handle: handle,
    })
}

type Found = (PathBuf, LibrarySource, (libloading::Library, String));

fn find() -> Result<Found, LibraryError> {
    if let Some(p) = std::env::var_os(LIB_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(p);
        return read_version(&path)
            .map(|v| (path.clone(), LibrarySource::Env, v))
            .map_err(|detail| LibraryError::EnvPath { path, detail });
    }
    let mut tried = vec![];
    match python_package_dir().and_then(|d| library_in_package(&d).map(|p| (d, p))) {
        Ok((dir, path)) => match read_version(&path) {
            Ok(v) => return Ok((path, LibrarySource::PythonPackage(dir), v)),
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        },
        Err(e) => tried.push(e),
    }
    for name in ["libonnxruntime.so.1", "libonnxruntime.so"] {
        let path = PathBuf::from(name);
        match read_version(&path) {
            Ok(v) => return Ok((path, LibrarySource::LoaderPath, v)),
            Err(e) => tried.push(e),
        }
    }
    Err(LibraryError::NotFound { tried })
}

/// How ONNX Runtime runs: intra-op threads (reflex's `--threads`, the same count tract uses) and
/// where the optimized graph is kept, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct OrtOptions {
    /// ONNX Runtime's intra-op thread pool size; 1 = the calling thread only (0 counts as 1).
    pub threads: usize,
    /// Keep the optimized graph here and load it on later starts (`None`: optimize every time).
    pub cache: Option<OptimizedCache>,
}

impl From<TractOptions> for OrtOptions {
    fn from(t: TractOptions) -> Self {
        OrtOptions {
            threads: t.threads,
            cache: None,
        }
    }
}

/// Where ONNX Runtime's optimized graph of one model is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptimizedCache {
    /// The directory of cached graphs (created when first written; a bundle's
    /// `engines/onnxruntime/`, next to TensorRT's engines).
    pub dir: PathBuf,
    /// Lower-case hex sha256 of the model file (the manifest's, which `Bundle::load` checked).
    pub model_sha256: String,
}

impl OptimizedCache {
    /// The cached graph's path for this library and CPU:
    /// `DIR/<sha256>.ort-<version>.<cpu>.onnx`, `<cpu>` the first 8 hex digits of the sha256
    /// of the CPU model name and architecture.
    pub fn file(&self, ort_version: &str, cpu_model: &str) -> PathBuf {
        use sha2::{Digest, Sha256};
        let cpu = Sha256::digest(format!("{cpu_model} {}", std::env::consts::ARCH).as_bytes());
        self.dir.join(format!(
            "{}.ort-{ort_version}.{}.onnx",
            self.model_sha256,
            hex::encode(&cpu[..4])
        ))
    }
}

/// What the optimized-graph cache did at prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUse {
    /// No cache asked for.
    Off,
    /// The optimized graph was loaded from this file (optimizations off).
    Loaded(PathBuf),
    /// The model was optimized and the result written to this file.
    Written(PathBuf),
    /// The model was optimized; the cache could not be used, for this reason (logged).
    Failed(String),
}

/// ONNX Runtime on the CPU, inputs and outputs bound once into its own buffers.
pub struct OrtSession {
    session: ort::session::Session,
    binding: IoBinding,
    /// Input and output tensors, graph order, allocated by the session's CPU allocator and bound.
    inputs: Vec<Tensor<f32>>,
    outputs: Vec<Tensor<f32>>,
    input_specs: Vec<TensorSpec>,
    output_specs: Vec<TensorSpec>,
    path: PathBuf,
    /// Reading, optimizing and initializing the session (milliseconds).
    pub prepare_ms: f64,
    /// What the optimized-graph cache did.
    pub cache: CacheUse,
}

// SAFETY: the session and binding are `Send` in `ort`; the tensors are plain CPU buffers owned by
// ONNX Runtime values that only this struct holds (the binding's references to them are inside
// it too) and that are used through `&mut self` / `&self` only, never from two threads at once.
unsafe impl Send for OrtSession {}

impl std::fmt::Debug for OrtSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtSession")
            .field("path", &self.path)
            .field("inputs", &self.input_specs)
            .field("outputs", &self.output_specs)
            .finish()
    }
}

fn elem_of(t: TensorElementType) -> ElemType {
    match t {
        TensorElementType::Float32 => ElemType::F32,
        TensorElementType::Float16 => ElemType::F16,
        TensorElementType::Float64 => ElemType::F64,
        TensorElementType::Int8 => ElemType::I8,
        TensorElementType::Uint8 => ElemType::U8,
        TensorElementType::Int16 => ElemType::I16,
        TensorElementType::Int32 => ElemType::I32,
        TensorElementType::Int64 => ElemType::I64,
        TensorElementType::Bool => ElemType::Bool,
        _ => ElemType::Other(0),
    }
}

impl OrtSession {
    /// Loads the library if needed ([`library`]), reads and optimizes `path`, and allocates and
    /// binds every input and output.
    ///
    /// Errors: the library is not usable, or ONNX Runtime cannot read the model
    /// ([`SessionError::Prepare`]); an input or output that is not a tensor with a static shape
    /// and f32 elements ([`SessionError::Graph`]).
    pub fn prepare(path: &Path, opts: OrtOptions) -> Result<Self, SessionError> {
        let t0 = Instant::now();
        let prep = |source: String| SessionError::Prepare {
            backend: NAME,
            path: path.to_path_buf(),
            source: source.into(),
        };
        let rt = runtime().map_err(|e| SessionError::Prepare {
            backend: NAME,
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let builder = |level: GraphOptimizationLevel| {
            ort::session::Session::builder(&rt.env)
                .map_err(|e| prep(e.to_string()))?
                .with_optimization_level(level)
                .map_err(|e| prep(e.to_string()))?
                .with_intra_threads(opts.threads.max(1))
                .map_err(|e| prep(e.to_string()))
        };
        let optimize = || {
            builder(GraphOptimizationLevel::All)?
                .commit_from_file(path)
                .map_err(|e| prep(e.to_string()))
        };
        let (session, cache) = match &opts.cache {
            None => (optimize()?, CacheUse::Off),
            Some(c) => {
                let file = c.file(
                    &rt.library.version,
                    &reflex_board::BoardIdentity::detect().cpu_model,
                );
                match cached(&builder, &file) {
                    Some(s) => (s, CacheUse::Loaded(file)),
                    None => match optimize_into(&builder, path, &file) {
                        Ok(s) => (s, CacheUse::Written(file)),
                        Err(why) => {
                            log::warn!("onnxruntime: optimized graph not cached: {why}");
                            (optimize()?, CacheUse::Failed(why))
                        }
                    },
                }
            }
        };
        let graph = |problem: String| SessionError::Graph {
            backend: NAME,
            path: path.to_path_buf(),
            problem,
        };
        let spec = |o: &ort::value::Outlet| -> Result<TensorSpec, SessionError> {
            let ValueType::Tensor { ty, shape, .. } = o.dtype() else {
                return Err(graph(format!("`{}` is not a tensor", o.name())));
            };
            let dims: Vec<usize> = shape
                .iter()
                .map(|&d| usize::try_from(d))
                .collect::<Result<_, _>>()
                .map_err(|_| {
                    graph(format!(
                        "`{}` has a symbolic shape {:?}; reflex needs static shapes (export with \
                         fixed batch = 1)",
                        o.name(),
                        &shape[..]
                    ))
                })?;
            let elem = elem_of(*ty);
            if elem != ElemType::F32 {
                return Err(graph(format!(
                    "`{}` is {elem}; the ONNX Runtime session feeds and reads float (f32) tensors \
                     only",
                    o.name()
                )));
            }
            Ok(TensorSpec {
                name: o.name().to_string(),
                elem,
                shape: dims,
            })
        };
        let input_specs = session
            .inputs()
            .iter()
            .map(spec)
            .collect::<Result<Vec<_>, _>>()?;
        let output_specs = session
            .outputs()
            .iter()
            .map(spec)
            .collect::<Result<Vec<_>, _>>()?;
        let alloc = |t: &TensorSpec| {
            Tensor::<f32>::new(session.allocator(), t.shape.clone())
                .map_err(|e| prep(format!("allocating `{}` {:?}: {e}", t.name, t.shape)))
        };
        let mut inputs = input_specs
            .iter()
            .map(alloc)
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs = output_specs
            .iter()
            .map(alloc)
            .collect::<Result<Vec<_>, _>>()?;
        for t in inputs.iter_mut().chain(outputs.iter_mut()) {
            t.extract_tensor_mut().1.fill(0.0);
        }
        let mut binding = session.create_binding().map_err(|e| prep(e.to_string()))?;
        for (t, s) in inputs.iter().zip(&input_specs) {
            binding
                .bind_input(s.name.as_str(), t)
                .map_err(|e| prep(format!("binding input `{}`: {e}", s.name)))?;
        }
        for (t, s) in outputs.iter_mut().zip(&output_specs) {
            binding
                .bind_output(s.name.as_str(), &mut *t)
                .map_err(|e| prep(format!("binding output `{}`: {e}", s.name)))?;
        }
        Ok(OrtSession {
            session,
            binding,
            inputs,
            outputs,
            input_specs,
            output_specs,
            path: path.to_path_buf(),
            prepare_ms: t0.elapsed().as_secs_f64() * 1e3,
            cache,
        })
    }

    /// The library this session runs on.
    pub fn library(&self) -> Option<&'static OrtLibrary> {
        library().ok()
    }
}

type Builder<'a> = dyn Fn(GraphOptimizationLevel) -> Result<ort::session::builder::SessionBuilder, SessionError>
    + 'a;

/// The cached optimized graph at `file` as a session (optimizations off), or `None` when there
/// is none or it does not load (logged; it is then written again).
fn cached(builder: &Builder<'_>, file: &Path) -> Option<ort::session::Session> {
    if !file.is_file() {
        return None;
    }
    let loaded = builder(GraphOptimizationLevel::Disable).and_then(|mut b| {
        b.commit_from_file(file).map_err(|e| SessionError::Prepare {
            backend: NAME,
            path: file.to_path_buf(),
            source: e.to_string().into(),
        })
    });
    match loaded {
        Ok(s) => Some(s),
        Err(e) => {
            log::warn!("onnxruntime: cached optimized graph not used, optimizing again: {e}");
            None
        }
    }
}

/// Optimizes `model` with ONNX Runtime writing the optimized graph to a staging file, renamed to
/// `file` once the session is built (so no half-written graph is ever loaded).
fn optimize_into(
    builder: &Builder<'_>,
    model: &Path,
    file: &Path,
) -> Result<ort::session::Session, String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let staging = file.with_extension(format!("onnx.{}.tmp", std::process::id()));
    let session = builder(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?
        .with_optimized_model_path(&staging)
        .map_err(|e| e.to_string())?
        .commit_from_file(model)
        .map_err(|e| format!("{}: {e}", model.display()))?;
    std::fs::rename(&staging, file).map_err(|e| {
        let _ = std::fs::remove_file(&staging);
        format!("{} -> {}: {e}", staging.display(), file.display())
    })?;
    Ok(session)
}

impl Session for OrtSession {
    fn backend(&self) -> BackendKind {
        BackendKind::Onnxruntime
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.input_specs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.output_specs
    }
    fn input_mut(&mut self, i: usize) -> &mut [f32] {
        self.inputs[i].extract_tensor_mut().1
    }
    fn input(&self, i: usize) -> &[f32] {
        self.inputs[i].extract_tensor().1
    }
    fn run(&mut self) -> Result<(), SessionError> {
        let api = ort::api();
        // SAFETY: the session and binding pointers are live for `self`'s lifetime; the binding
        // holds this session's inputs and outputs, all CPU tensors of the shapes the session
        // reported, owned by `self` and not otherwise borrowed during `&mut self`. A null run
        // options pointer means the defaults (onnxruntime_c_api.h, `RunWithBinding`).
        let status = unsafe {
            (api.RunWithBinding)(
                self.session.ptr().cast_mut(),
                std::ptr::null(),
                self.binding.ptr(),
            )
        };
        if status.0.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null status is an `OrtStatus` owned by us: its message is a
        // NUL-terminated string valid until the status is released, which we do once here.
        let message = unsafe {
            let m = CStr::from_ptr((api.GetErrorMessage)(status.0))
                .to_string_lossy()
                .into_owned();
            (api.ReleaseStatus)(status.0);
            m
        };
        Err(SessionError::Run {
            backend: NAME,
            error: message.into(),
        })
    }
    fn output(&self, i: usize) -> &[f32] {
        self.outputs[i].extract_tensor().1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_library_of_a_python_package_is_found() {
        let dir = std::env::temp_dir().join(format!("reflex-ort-pkg-{}", std::process::id()));
        let capi = dir.join("capi");
        std::fs::create_dir_all(&capi).expect("dir");
        for f in [
            "libonnxruntime.so.1.9.0",
            "libonnxruntime.so.1.32.0",
            "libonnxruntime_providers_shared.so",
            "__init__.py",
        ] {
            std::fs::write(capi.join(f), b"").expect("file");
        }
        assert_eq!(
            library_in_package(&dir).expect("found"),
            capi.join("libonnxruntime.so.1.32.0")
        );
        std::fs::remove_file(capi.join("libonnxruntime.so.1.32.0")).expect("rm");
        std::fs::remove_file(capi.join("libonnxruntime.so.1.9.0")).expect("rm");
        let e = library_in_package(&dir).expect_err("none left");
        assert!(e.starts_with("no libonnxruntime.so* in "), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_is_not_onnx_runtime_is_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("reflex-ort-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("libonnxruntime.so.1.32.0");
        std::fs::write(&f, b"not an ELF file").expect("file");
        let e = read_version(&f).expect_err("not a library");
        assert!(e.contains("libonnxruntime.so.1.32.0"), "{e}");
        assert_eq!(minor("1.32.0"), 32);
        assert_eq!(minor("garbage"), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
