//! A stand-in for the TensorRT shim's C surface ([`reflex_runtime::infer::tensorrt::shim`]),
//! serving the same functions from a tract session, so that the Rust side of the TensorRT
//! backend (probe, deserialization errors, binding by name, shapes, element types) runs without
//! TensorRT or a GPU.
//!
//! A "fake engine" is a text file: the line [`MAGIC`], then an optional `fp16-io` line (the
//! engine then declares its inputs and outputs as half, like an engine built from an fp16-typed
//! ONNX with fp16 I/O), then the absolute path of the ONNX file tract runs. Anything else fails
//! to deserialize with an error logged at severity 1, as TensorRT does ("... magic tag does not
//! match"). "Device" addresses are host addresses.
//!
//! [`runtimes_created`] counts `runtime_create` calls, so a test can show that no runtime was
//! created when the probe stopped earlier (no CUDA device).
#![allow(unsafe_code)]

use half::f16;
use reflex_models::bundle::sha256_file;
use reflex_models::manifest::BackendKind;
use reflex_models::Bundle;
use reflex_runtime::infer::session::Session;
use reflex_runtime::infer::tensorrt::cuda::{CudaError, GpuInfo};
use reflex_runtime::infer::tensorrt::device::{BufferId, Device};
use reflex_runtime::infer::tensorrt::engine::{
    engine_path, sidecar_path, EngineSidecar, GpuIdentity, SIDECAR_FORMAT_VERSION,
};
use reflex_runtime::infer::tensorrt::library::CreateRuntimeFn;
use reflex_runtime::infer::tensorrt::library::{LibraryError, TensorrtLibrary, TrtVersion};
use reflex_runtime::infer::tensorrt::shim::{
    IoDesc, LogFn, ShimApi, DTYPE_FLOAT, DTYPE_HALF, MAX_DIMS, MODE_INPUT, MODE_OUTPUT,
};
use reflex_runtime::infer::tensorrt::Platform;
use reflex_runtime::infer::tract::{TractOptions, TractSession};
use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// First line of a fake engine file.
pub const MAGIC: &str = "reflex fake TensorRT engine v1";

static RUNTIMES: AtomicUsize = AtomicUsize::new(0);

/// How many runtimes the stand-in created in this process.
pub fn runtimes_created() -> usize {
    RUNTIMES.load(Ordering::SeqCst)
}

/// Engines deserialized, by the (canonical) ONNX path the fake engine names: per test, since
/// each test's bundle has its own directory.
static DESERIALIZED: std::sync::Mutex<Vec<(std::path::PathBuf, usize)>> =
    std::sync::Mutex::new(Vec::new());

/// How many times an engine built from `onnx` was deserialized in this process.
pub fn deserializations(onnx: &Path) -> usize {
    let onnx = std::fs::canonicalize(onnx).unwrap_or_else(|_| onnx.to_path_buf());
    let d = DESERIALIZED.lock().unwrap_or_else(|p| p.into_inner());
    d.iter().find(|(p, _)| *p == onnx).map_or(0, |(_, n)| *n)
}

/// Writes a fake engine for `onnx` at `engine` (fp16 I/O when `fp16_io`).
pub fn write_engine(engine: &Path, onnx: &Path, fp16_io: bool) -> std::io::Result<()> {
    let onnx = std::fs::canonicalize(onnx)?;
    let mut text = format!("{MAGIC}\n");
    if fp16_io {
        text.push_str("fp16-io\n");
    }
    text.push_str(&format!("{}\n", onnx.display()));
    if let Some(p) = engine.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(engine, text)
}

/// The stand-in table.
pub const API: ShimApi = ShimApi {
    description: "reflex-testkit's fake shim (tract behind TensorRT's C surface)",
    runtime_create,
    runtime_destroy,
    engine_deserialize,
    engine_destroy,
    io_count,
    io_describe,
    context_create,
    context_destroy,
    set_input_shape,
    set_tensor_address,
    enqueue,
};

struct Runtime {
    log: LogFn,
    user: *mut c_void,
}

impl Runtime {
    fn error(&self, msg: &str) {
        let c = CString::new(msg).unwrap_or_default();
        // SAFETY: the callback and its user pointer as given to runtime_create.
        unsafe { (self.log)(self.user, 1, c.as_ptr()) }
    }
}

struct Tensor {
    name: CString,
    input: bool,
    dims: Vec<i64>,
}

struct Engine {
    log: LogFn,
    user: *mut c_void,
    onnx: std::path::PathBuf,
    fp16: bool,
    tensors: Vec<Tensor>,
}

struct Context {
    engine: *const Engine,
    session: TractSession,
    addresses: Vec<*mut c_void>,
}

unsafe extern "C" fn runtime_create(
    _create: Option<CreateRuntimeFn>,
    log: LogFn,
    user: *mut c_void,
    _dla_core: i32,
) -> *mut c_void {
    RUNTIMES.fetch_add(1, Ordering::SeqCst);
    Box::into_raw(Box::new(Runtime { log, user })) as *mut c_void
}

unsafe extern "C" fn runtime_destroy(rt: *mut c_void) {
    // SAFETY: created by runtime_create.
    drop(unsafe { Box::from_raw(rt as *mut Runtime) });
}

unsafe extern "C" fn engine_deserialize(
    rt: *mut c_void,
    data: *const c_void,
    size: usize,
) -> *mut c_void {
    // SAFETY: a runtime of ours; `data` holds `size` bytes for the call.
    let (rt, bytes) = unsafe {
        (
            &*(rt as *const Runtime),
            std::slice::from_raw_parts(data as *const u8, size),
        )
    };
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        rt.error("IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)");
        return std::ptr::null_mut();
    }
    let mut fp16 = false;
    let mut onnx = None;
    for l in lines {
        match l {
            "fp16-io" => fp16 = true,
            path => onnx = Some(std::path::PathBuf::from(path)),
        }
    }
    let Some(onnx) = onnx else {
        rt.error("fake engine names no ONNX file");
        return std::ptr::null_mut();
    };
    {
        let mut d = DESERIALIZED.lock().unwrap_or_else(|p| p.into_inner());
        match d.iter_mut().find(|(p, _)| *p == onnx) {
            Some((_, n)) => *n += 1,
            None => d.push((onnx.clone(), 1)),
        }
    }
    let io = match reflex_runtime::infer::tract::graph_io(&onnx) {
        Ok(io) => io,
        Err(e) => {
            rt.error(&format!("fake engine: {e}"));
            return std::ptr::null_mut();
        }
    };
    let tensor = |t: &reflex_models::TensorSpec, input: bool| Tensor {
        name: CString::new(t.name.clone()).unwrap_or_default(),
        input,
        dims: t.shape.iter().map(|&d| d as i64).collect(),
    };
    let mut tensors: Vec<Tensor> = io.inputs.iter().map(|t| tensor(t, true)).collect();
    tensors.extend(io.outputs.iter().map(|t| tensor(t, false)));
    Box::into_raw(Box::new(Engine {
        log: rt.log,
        user: rt.user,
        onnx,
        fp16,
        tensors,
    })) as *mut c_void
}

unsafe extern "C" fn engine_destroy(e: *mut c_void) {
    // SAFETY: created by engine_deserialize.
    drop(unsafe { Box::from_raw(e as *mut Engine) });
}

unsafe extern "C" fn io_count(e: *mut c_void) -> i32 {
    // SAFETY: an engine of ours.
    unsafe { &*(e as *const Engine) }.tensors.len() as i32
}

unsafe extern "C" fn io_describe(e: *mut c_void, i: i32, desc: *mut IoDesc) -> i32 {
    // SAFETY: an engine of ours; `desc` is writable.
    let (e, desc) = unsafe { (&*(e as *const Engine), &mut *desc) };
    let Some(t) = usize::try_from(i).ok().and_then(|i| e.tensors.get(i)) else {
        return 1;
    };
    desc.name = t.name.as_ptr();
    desc.mode = if t.input { MODE_INPUT } else { MODE_OUTPUT };
    desc.dtype = if e.fp16 { DTYPE_HALF } else { DTYPE_FLOAT };
    desc.nb_dims = t.dims.len().min(MAX_DIMS) as i32;
    for (d, &v) in desc.dims.iter_mut().zip(&t.dims) {
        *d = v;
    }
    0
}

unsafe extern "C" fn context_create(e: *mut c_void) -> *mut c_void {
    // SAFETY: an engine of ours.
    let engine = unsafe { &*(e as *const Engine) };
    match TractSession::prepare(&engine.onnx, TractOptions { threads: 1 }) {
        Ok(session) => Box::into_raw(Box::new(Context {
            engine: engine as *const Engine,
            session,
            addresses: vec![std::ptr::null_mut(); engine.tensors.len()],
        })) as *mut c_void,
        Err(err) => {
            let rt = Runtime {
                log: engine.log,
                user: engine.user,
            };
            rt.error(&format!("fake context: {err}"));
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn context_destroy(c: *mut c_void) {
    // SAFETY: created by context_create.
    drop(unsafe { Box::from_raw(c as *mut Context) });
}

fn find(engine: &Engine, name: *const c_char) -> Option<usize> {
    // SAFETY: NUL-terminated per the contract.
    let name = unsafe { CStr::from_ptr(name) };
    engine
        .tensors
        .iter()
        .position(|t| t.name.as_c_str() == name)
}

unsafe extern "C" fn set_input_shape(
    c: *mut c_void,
    name: *const c_char,
    nb: i32,
    dims: *const i64,
) -> i32 {
    // SAFETY: a context of ours; `dims` holds `nb` values.
    let (ctx, dims) = unsafe {
        (
            &*(c as *const Context),
            std::slice::from_raw_parts(dims, nb.max(0) as usize),
        )
    };
    // SAFETY: the context's engine outlives it.
    let engine = unsafe { &*ctx.engine };
    let rt = Runtime {
        log: engine.log,
        user: engine.user,
    };
    match find(engine, name) {
        Some(i) if engine.tensors[i].input && engine.tensors[i].dims == dims => 0,
        Some(i) => {
            rt.error(&format!(
                "IExecutionContext::setInputShape: {:?} is not an input of shape {dims:?} (engine: {:?})",
                engine.tensors[i].name, engine.tensors[i].dims
            ));
            1
        }
        None => {
            rt.error("IExecutionContext::setInputShape: no tensor of that name");
            1
        }
    }
}

unsafe extern "C" fn set_tensor_address(
    c: *mut c_void,
    name: *const c_char,
    ptr: *mut c_void,
) -> i32 {
    // SAFETY: a context of ours.
    let ctx = unsafe { &mut *(c as *mut Context) };
    // SAFETY: the context's engine outlives it.
    let engine = unsafe { &*ctx.engine };
    match find(engine, name) {
        Some(i) if (ptr as usize).is_multiple_of(256) => {
            ctx.addresses[i] = ptr;
            0
        }
        _ => {
            Runtime {
                log: engine.log,
                user: engine.user,
            }
            .error("IExecutionContext::setTensorAddress: unknown tensor or address not 256-byte aligned");
            1
        }
    }
}

unsafe extern "C" fn enqueue(c: *mut c_void, _stream: *mut c_void) -> i32 {
    // SAFETY: a context of ours; its engine outlives it.
    let ctx = unsafe { &mut *(c as *mut Context) };
    let engine = unsafe { &*ctx.engine };
    let rt = Runtime {
        log: engine.log,
        user: engine.user,
    };
    if ctx.addresses.iter().any(|a| a.is_null()) {
        rt.error("IExecutionContext::enqueueV3: not every tensor has an address");
        return 1;
    }
    let n_in = engine.tensors.iter().filter(|t| t.input).count();
    for i in 0..n_in {
        let dst = ctx.session.input_mut(i);
        let p = ctx.addresses[i];
        // SAFETY: the caller bound `len` elements of the declared type at `p`.
        unsafe {
            if engine.fp16 {
                let src = std::slice::from_raw_parts(p as *const f16, dst.len());
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = s.to_f32();
                }
            } else {
                dst.copy_from_slice(std::slice::from_raw_parts(p as *const f32, dst.len()));
            }
        }
    }
    if let Err(e) = ctx.session.run() {
        rt.error(&format!("fake enqueue: {e}"));
        return 1;
    }
    for o in 0..engine.tensors.len() - n_in {
        let src = ctx.session.output(o);
        let p = ctx.addresses[n_in + o];
        // SAFETY: as above, for the output.
        unsafe {
            if engine.fp16 {
                let dst = std::slice::from_raw_parts_mut(p as *mut f16, src.len());
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f16::from_f32(*s);
                }
            } else {
                std::slice::from_raw_parts_mut(p as *mut f32, src.len()).copy_from_slice(src);
            }
        }
    }
    0
}

/// Host memory standing in for a GPU's ([`Device`]): 256-byte aligned buffers whose addresses
/// are host addresses (what the stand-in shim reads and writes), a null stream, and as the
/// "GPU time" of a run the host time from [`Device::start`] to [`Device::finish`] (where CUDA
/// would record its two events).
#[derive(Debug, Default)]
pub struct HostDevice {
    /// Each buffer over-allocated by 256 bytes; `offsets[i]` aligns it.
    buffers: Vec<Vec<u8>>,
    offsets: Vec<usize>,
    sizes: Vec<usize>,
    started: Option<std::time::Instant>,
}

impl Device for HostDevice {
    fn alloc(&mut self, bytes: usize) -> Result<BufferId, CudaError> {
        let buf = vec![0u8; bytes + 256];
        let offset = (256 - (buf.as_ptr() as usize) % 256) % 256;
        self.buffers.push(buf);
        self.offsets.push(offset);
        self.sizes.push(bytes);
        Ok(self.buffers.len() - 1)
    }
    fn address(&self, id: BufferId) -> *mut c_void {
        self.buffers[id][self.offsets[id]..].as_ptr() as *mut c_void
    }
    fn upload(&mut self, id: BufferId, bytes: &[u8]) -> Result<(), CudaError> {
        let o = self.offsets[id];
        self.buffers[id][o..o + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
    fn stream(&self) -> *mut c_void {
        std::ptr::null_mut()
    }
    fn start(&mut self) -> Result<(), CudaError> {
        self.started = Some(std::time::Instant::now());
        Ok(())
    }
    fn finish(&mut self) -> Result<f32, CudaError> {
        Ok(self
            .started
            .take()
            .map_or(0.0, |t| t.elapsed().as_secs_f32() * 1e3))
    }
    fn download(&mut self, id: BufferId, out: &mut [u8]) -> Result<(), CudaError> {
        let o = self.offsets[id];
        out.copy_from_slice(&self.buffers[id][o..o + out.len()]);
        Ok(())
    }
}

/// Loads (or stands in for) a TensorRT library, per call.
pub type LibraryFn = Box<dyn Fn() -> Result<TensorrtLibrary, LibraryError> + Sync>;

/// A [`Platform`] of stand-ins: a shim table, a library, a GPU, and [`HostDevice`] memory.
pub struct StandIn {
    pub shim: Option<&'static ShimApi>,
    pub library: LibraryFn,
    pub gpu: Result<GpuInfo, CudaError>,
}

/// The GPU of a Jetson AGX Orin as CUDA describes it (integrated, compute 8.7, 16 SMs).
pub fn orin() -> GpuInfo {
    GpuInfo {
        ordinal: 0,
        name: "Orin".into(),
        compute_capability: (8, 7),
        sm_count: 16,
        integrated: true,
    }
}

/// `getInferLibVersion()` of TensorRT 10.3.0 (JetPack 6.1/6.2).
pub const TRT_10_3: i32 = 100300;

impl StandIn {
    /// Everything present: this stand-in shim, TensorRT 10.3.0, an Orin.
    pub fn jetson() -> StandIn {
        StandIn {
            shim: Some(&API),
            library: Box::new(|| {
                Ok(TensorrtLibrary::stand_in(
                    "libnvinfer.so.10",
                    TrtVersion::from_int(TRT_10_3),
                ))
            }),
            gpu: Ok(orin()),
        }
    }
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("shim", &self.shim.map(|s| s.description))
            .field("gpu", &self.gpu)
            .finish()
    }
}

impl Platform for StandIn {
    fn shim(&self) -> Option<&'static ShimApi> {
        self.shim
    }
    fn library(&self) -> Result<TensorrtLibrary, LibraryError> {
        (self.library)()
    }
    fn gpu(&self) -> Result<GpuInfo, CudaError> {
        self.gpu.clone()
    }
    fn device(&self, _: &GpuInfo) -> Result<Box<dyn Device>, CudaError> {
        Ok(Box::<HostDevice>::default())
    }
}

/// Writes a fake engine for `bundle`'s TensorRT policy file and its sidecar as if built on
/// [`StandIn::jetson`] (TensorRT 10.3.0.26, Orin). Panics naming the file on I/O errors.
pub fn build_engine_here(bundle: &Bundle, fp16_io: bool) -> (PathBuf, EngineSidecar) {
    let file = bundle
        .manifest
        .policy_model_for(BackendKind::Tensorrt)
        .expect("the bundle lists a policy model for tensorrt");
    let onnx = bundle.model_path(file);
    let engine = engine_path(&bundle.dir, &file.file);
    write_engine(&engine, &onnx, fp16_io)
        .unwrap_or_else(|e| panic!("writing {}: {e}", engine.display()));
    let hash = |p: &Path| sha256_file(p).unwrap_or_else(|e| panic!("{e}"));
    let sidecar = EngineSidecar {
        format_version: SIDECAR_FORMAT_VERSION,
        engine: engine
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        engine_sha256: hash(&engine),
        source_model: file.file.clone(),
        source_sha256: hash(&onnx),
        precision: file.precision,
        tensorrt_version: "10.3.0.26".into(),
        dla_core: -1,
        l4t_release: String::new(),
        trtexec_command: "trtexec (stand-in)".into(),
        built_unix_s: 0,
        build_seconds: 0.0,
        gpu: GpuIdentity::from(&orin()),
    };
    write_sidecar(&engine, &sidecar);
    (engine, sidecar)
}

/// Writes `sidecar` next to `engine`.
pub fn write_sidecar(engine: &Path, sidecar: &EngineSidecar) {
    let p = sidecar_path(engine);
    std::fs::write(&p, sidecar.to_toml())
        .unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
}
