//! The TensorRT backend: an engine built on the board (`reflex engine build`), checked against
//! this machine and this bundle before use, run through a small C++ shim over TensorRT's API.
//!
//! - [`library`]: finds and `dlopen`s `libnvinfer.so.10` (or the lean runtime) and reads its
//!   version; nothing links against TensorRT at build time;
//! - [`cuda`]: the CUDA device (driver loaded at run time through `cudarc`);
//! - [`shim`]: the shim's C surface as a table of functions (the real one with
//!   `--features tensorrt`, or a test stand-in);
//! - [`engine`]: engine files and their sidecars (TensorRT version, GPU, model sha256);
//! - [`trtexec`]: the engine build's command line;
//! - [`device`]: buffers, stream and timing events on the GPU;
//! - [`session`]: [`session::TensorrtSession`], the engine behind reflex's `Session` trait;
//! - this module: [`probe`], every condition TensorRT needs here, in order, with the first that
//!   fails as the reason to fall back.
//!
//! Conditions, in order (the first failing one is the reason): the shim is compiled in; the
//! library loads; a CUDA device is present (checked before TensorRT's runtime is ever created);
//! the bundle lists a policy model for TensorRT; its engine and sidecar exist; the sidecar's
//! TensorRT version, GPU and model sha256 match; the engine file's sha256 is the sidecar's; the
//! engine deserializes with no error logged. The engine deserialized here is the one the
//! session runs ([`Ready::loaded`]): it is read and deserialized once.
//!
//! What ran where: none of this has run on a Jetson or a GPU. On x86 CI the lean library from
//! PyPI is loaded and its version read (no CUDA device, so no runtime is created), the shim is
//! compiled against NVIDIA's 10.3 headers, and the Rust side runs against a stand-in shim.
#![allow(unsafe_code)]

pub mod builder;
pub mod cuda;
pub mod device;
pub mod engine;
pub mod library;
pub mod session;
pub mod shim;
pub mod trtexec;

use crate::infer::tensorrt::cuda::{CudaError, GpuInfo};
use crate::infer::tensorrt::device::{CudaDevice, Device};
use crate::infer::tensorrt::engine::{
    engine_path, sidecar_path, EngineMismatch, EngineSidecar, GpuIdentity, SidecarError,
};
use crate::infer::tensorrt::library::{LibraryError, TensorrtLibrary};
use crate::infer::tensorrt::shim::ShimApi;
use reflex_models::manifest::BackendKind;
use reflex_models::Bundle;
use std::ffi::{c_char, c_void, CStr};
use std::path::PathBuf;
use std::sync::Mutex;

/// Where the TensorRT backend gets its shim, library and device: the real machine
/// ([`ThisMachine`]) or a test's stand-ins.
pub trait Platform: Sync {
    /// The shim, or `None` when this build has none.
    fn shim(&self) -> Option<&'static ShimApi>;
    /// Loads the TensorRT library.
    fn library(&self) -> Result<TensorrtLibrary, LibraryError>;
    /// The CUDA device TensorRT would run on.
    fn gpu(&self) -> Result<GpuInfo, CudaError>;
    /// Memory and a stream on that device, for a session.
    fn device(&self, gpu: &GpuInfo) -> Result<Box<dyn Device>, CudaError>;
}

/// This machine: [`shim::compiled`], [`TensorrtLibrary::load`], [`cuda::first_device`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ThisMachine;

impl Platform for ThisMachine {
    fn shim(&self) -> Option<&'static ShimApi> {
        shim::compiled()
    }
    fn library(&self) -> Result<TensorrtLibrary, LibraryError> {
        TensorrtLibrary::load()
    }
    fn gpu(&self) -> Result<GpuInfo, CudaError> {
        cuda::first_device()
    }
    fn device(&self, gpu: &GpuInfo) -> Result<Box<dyn Device>, CudaError> {
        Ok(Box::new(CudaDevice::new(gpu)?))
    }
}

/// The first condition TensorRT fails here: the reason `auto` falls back to tract.
#[derive(Debug, thiserror::Error)]
pub enum Blocker {
    #[error(
        "support is not compiled into this build (rebuild with `--features \
         reflex-runtime/tensorrt` against TensorRT's headers)"
    )]
    NotCompiledIn,
    #[error(transparent)]
    Library(LibraryError),
    #[error("no CUDA device: {0}")]
    Cuda(CudaError),
    #[error("the bundle lists no policy model for tensorrt")]
    NotListed,
    #[error(
        "no engine at {path} (build one on this board: reflex engine build --bundle {bundle})"
    )]
    EngineMissing { path: PathBuf, bundle: PathBuf },
    #[error(transparent)]
    Sidecar(SidecarError),
    #[error(transparent)]
    Mismatch(EngineMismatch),
    /// TensorRT refused the engine (null, or an error logged); its log lines, verbatim.
    #[error("TensorRT cannot deserialize {path}: {log}")]
    Deserialize { path: PathBuf, log: String },
}

/// One condition checked, with what was found or why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub what: &'static str,
    pub verdict: Result<String, String>,
}

/// Everything needed to prepare a session, once every condition held.
#[derive(Debug)]
pub struct Ready {
    pub shim: &'static ShimApi,
    pub library: TensorrtLibrary,
    pub gpu: GpuInfo,
    pub engine: PathBuf,
    pub sidecar: EngineSidecar,
    /// The runtime and the engine deserialized by the probe, handed to the session.
    pub loaded: Loaded,
}

/// The conditions checked and the outcome.
#[derive(Debug)]
pub struct Probe {
    /// Every condition checked, in order; checking goes on past a failure where it can (so that
    /// `reflex check` reports the library's version even in a build without the shim), but the
    /// engine is only deserialized when everything before held.
    pub conditions: Vec<Condition>,
    pub outcome: Result<Ready, Blocker>,
}

impl Probe {
    /// `how` for the selection: `TensorRT 10.3.0 on Orin (compute 8.7, 16 SMs), engine ...`.
    pub fn how(r: &Ready) -> String {
        let place = if r.sidecar.dla_core >= 0 {
            format!("DLA core {} (GPU fallback)", r.sidecar.dla_core)
        } else {
            "GPU".to_string()
        };
        format!(
            "TensorRT {} on {} {place}, engine {}",
            r.library.version,
            GpuIdentity::from(&r.gpu),
            r.engine.display()
        )
    }
}

/// Checks every condition for running `bundle` on TensorRT on `platform`.
pub fn probe(bundle: &Bundle, platform: &dyn Platform) -> Probe {
    let mut conditions = vec![];
    let mut first: Option<Blocker> = None;
    let mut note = |what: &'static str, v: Result<String, Blocker>, first: &mut Option<Blocker>| {
        conditions.push(Condition {
            what,
            verdict: v.as_ref().cloned().map_err(|b| b.to_string()),
        });
        if let Err(b) = v {
            first.get_or_insert(b);
        }
    };
    let shim = platform.shim();
    note(
        "shim compiled in",
        shim.map(|s| s.description.to_string())
            .ok_or(Blocker::NotCompiledIn),
        &mut first,
    );
    let library = platform.library();
    note(
        "library",
        library
            .as_ref()
            .map(|l| l.to_string())
            .map_err(|e| Blocker::Library(e.clone())),
        &mut first,
    );
    let gpu = platform.gpu();
    note(
        "CUDA device",
        gpu.as_ref()
            .map(|g| {
                let kind = if g.integrated {
                    "integrated"
                } else {
                    "discrete"
                };
                format!("{} ({kind})", GpuIdentity::from(g))
            })
            .map_err(|e| Blocker::Cuda(e.clone())),
        &mut first,
    );
    let Some(file) = bundle.manifest.policy_model_for(BackendKind::Tensorrt) else {
        note("model", Err(Blocker::NotListed), &mut first);
        return finish(conditions, first, None);
    };
    note(
        "model",
        Ok(format!("{} ({})", file.file, file.precision.as_str())),
        &mut first,
    );
    let engine = engine_path(&bundle.dir, &file.file);
    let sidecar_file = sidecar_path(&engine);
    if !engine.is_file() || !sidecar_file.is_file() {
        let path = if engine.is_file() {
            sidecar_file
        } else {
            engine.clone()
        };
        note(
            "engine",
            Err(Blocker::EngineMissing {
                path,
                bundle: bundle.dir.clone(),
            }),
            &mut first,
        );
        return finish(conditions, first, None);
    }
    let sidecar = match EngineSidecar::read(&sidecar_file) {
        Ok(s) => s,
        Err(e) => {
            note("engine", Err(Blocker::Sidecar(e)), &mut first);
            return finish(conditions, first, None);
        }
    };
    note(
        "engine",
        Ok(format!(
            "{} (TensorRT {}, built on {})",
            engine.display(),
            sidecar.tensorrt_version,
            sidecar.gpu
        )),
        &mut first,
    );
    let (Ok(library), Ok(gpu), Some(shim)) = (library, gpu, shim) else {
        return finish(conditions, first, None);
    };
    if let Err(m) = sidecar.check(&library.version, &GpuIdentity::from(&gpu), &file.sha256) {
        note("engine matches", Err(Blocker::Mismatch(m)), &mut first);
        return finish(conditions, first, None);
    }
    note(
        "engine matches",
        Ok("TensorRT version, GPU and model sha256".into()),
        &mut first,
    );
    let bytes = match std::fs::read(&engine) {
        Ok(b) => b,
        Err(e) => {
            let b = Blocker::Deserialize {
                path: engine.clone(),
                log: format!("cannot read it: {e}"),
            };
            note("engine file intact", Err(b), &mut first);
            return finish(conditions, first, None);
        }
    };
    let now = reflex_models::bundle::sha256_bytes(&bytes);
    if now != sidecar.engine_sha256 {
        let m = EngineMismatch::EngineBytes {
            engine: sidecar.engine.clone(),
            recorded: sidecar.engine_sha256.clone(),
            now,
        };
        note("engine file intact", Err(Blocker::Mismatch(m)), &mut first);
        return finish(conditions, first, None);
    }
    note(
        "engine file intact",
        Ok(format!("sha256 {}", &now[..12])),
        &mut first,
    );
    let loaded = match Loaded::deserialize(shim, &library, &engine, &bytes, sidecar.dla_core) {
        Ok(loaded) => loaded,
        Err(b) => {
            note("deserializes", Err(b), &mut first);
            return finish(conditions, first, None);
        }
    };
    drop(bytes);
    note("deserializes", Ok("no error logged".into()), &mut first);
    let ready = Ready {
        shim,
        library,
        gpu,
        engine,
        sidecar,
        loaded,
    };
    finish(conditions, first, Some(ready))
}

fn finish(conditions: Vec<Condition>, first: Option<Blocker>, ready: Option<Ready>) -> Probe {
    let outcome = match (first, ready) {
        (Some(b), _) => Err(b),
        (None, Some(r)) => Ok(r),
        // Unreachable by construction (every early return noted a failure); said plainly.
        (None, None) => Err(Blocker::NotListed),
    };
    Probe {
        conditions,
        outcome,
    }
}

/// TensorRT's log, forwarded to `log` and kept for errors (severity <= 1) so that a failure
/// can be reported verbatim. Only written when TensorRT logs, never per run otherwise.
#[derive(Debug, Default)]
pub struct LogSink {
    errors: Mutex<Vec<String>>,
}

impl LogSink {
    /// Error lines logged so far, joined by `; `, and cleared.
    pub fn take_errors(&self) -> Option<String> {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_empty() {
            return None;
        }
        let s = e.join("; ");
        e.clear();
        Some(s)
    }
}

/// The shim's log callback: `user` is a `&LogSink`.
unsafe extern "C" fn forward_log(user: *mut c_void, severity: i32, msg: *const c_char) {
    if user.is_null() || msg.is_null() {
        return;
    }
    // SAFETY: `user` is the `LogSink` the runtime was created with, alive as long as the
    // runtime (both owned by `Loaded`); `msg` is a NUL-terminated string valid for this call.
    let (sink, text) = unsafe {
        (
            &*(user as *const LogSink),
            CStr::from_ptr(msg).to_string_lossy(),
        )
    };
    match severity {
        0 | 1 => {
            log::error!(target: "tensorrt", "{text}");
            sink.errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(text.into_owned());
        }
        2 => log::warn!(target: "tensorrt", "{text}"),
        3 => log::info!(target: "tensorrt", "{text}"),
        _ => log::debug!(target: "tensorrt", "{text}"),
    }
}

/// A runtime and a deserialized engine, destroyed in reverse order on drop.
#[derive(Debug)]
pub struct Loaded {
    pub shim: &'static ShimApi,
    pub runtime: *mut c_void,
    pub engine: *mut c_void,
    /// Boxed so that its address, given to the shim, stays put.
    pub log: Box<LogSink>,
}

// SAFETY: the handles are used from one thread at a time (the session is `Send`, not `Sync`);
// TensorRT documents IRuntime / ICudaEngine as usable from any thread, one call at a time.
unsafe impl Send for Loaded {}

impl Loaded {
    /// Creates a runtime (the library's `createInferRuntime_INTERNAL`, through the shim) and
    /// deserializes `bytes`, the contents of the engine file `engine` (named in errors); any
    /// error TensorRT logs meanwhile fails it, verbatim.
    pub fn deserialize(
        shim: &'static ShimApi,
        library: &TensorrtLibrary,
        engine: &std::path::Path,
        bytes: &[u8],
        dla_core: i32,
    ) -> Result<Loaded, Blocker> {
        let fail = |log: String| Blocker::Deserialize {
            path: engine.to_path_buf(),
            log,
        };
        let create = library.create_runtime_fn().ok();
        let log = Box::<LogSink>::default();
        let user = &*log as *const LogSink as *mut c_void;
        // SAFETY: the shim's contract (module `shim`): `create` is the library's entry point or
        // None, `forward_log` matches `LogFn`, `user` outlives the runtime (owned alongside).
        let runtime = unsafe { (shim.runtime_create)(create, forward_log, user, dla_core) };
        let mut loaded = Loaded {
            shim,
            runtime,
            engine: std::ptr::null_mut(),
            log,
        };
        if runtime.is_null() {
            let why = loaded.log.take_errors();
            return Err(fail(why.unwrap_or_else(|| "no runtime was created".into())));
        }
        // SAFETY: `runtime` is live; `bytes` is valid for the call (TensorRT copies what it keeps).
        loaded.engine = unsafe {
            (shim.engine_deserialize)(runtime, bytes.as_ptr() as *const c_void, bytes.len())
        };
        match (loaded.engine.is_null(), loaded.log.take_errors()) {
            (false, None) => Ok(loaded),
            (_, Some(errors)) => Err(fail(errors)),
            (true, None) => Err(fail("deserializeCudaEngine returned null".into())),
        }
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this shim and is destroyed once, engine first.
        unsafe {
            if !self.engine.is_null() {
                (self.shim.engine_destroy)(self.engine);
            }
            if !self.runtime.is_null() {
                (self.shim.runtime_destroy)(self.runtime);
            }
        }
    }
}
