//! [`TensorrtSession`]: a deserialized engine behind reflex's [`Session`] trait.
//!
//! Prepare: binds the engine's I/O tensors by name (the manifest's tensor names; the policy
//! maps them), checks every tensor has a static shape and an element type reflex converts (f32,
//! or f16 converted with `half`), sets the input shapes, allocates one device buffer per tensor
//! and gives TensorRT their addresses. Run: converts and uploads the inputs, enqueues on the
//! device's stream between two timing events, synchronises, downloads and converts the outputs.
//! Nothing allocates per run.
#![allow(unsafe_code)]

use crate::infer::session::{Session, SessionError, TensorSpec};
use crate::infer::tensorrt::device::{BufferId, Device};
use crate::infer::tensorrt::shim::{IoDesc, ShimApi, DTYPE_FLOAT, DTYPE_HALF, MODE_INPUT};
use crate::infer::tensorrt::{Loaded, Ready};
use half::f16;
use reflex_models::manifest::BackendKind;
use reflex_models::onnx::header::ElemType;
use std::ffi::{c_void, CStr};
use std::path::PathBuf;

const NAME: &str = "tensorrt";

/// One engine I/O tensor: f32 values on the caller's side, the device buffer, and the staging
/// bytes in the engine's element type.
struct Binding {
    values: Vec<f32>,
    half: bool,
    bytes: Vec<u8>,
    buffer: BufferId,
}

/// A TensorRT engine prepared to run (see the module documentation).
pub struct TensorrtSession {
    // Field order is drop order: the context before the engine and runtime (in `loaded`).
    context: Context,
    loaded: Loaded,
    device: Box<dyn Device>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    input_bindings: Vec<Binding>,
    output_bindings: Vec<Binding>,
    engine_path: PathBuf,
    gpu_ms: f32,
    /// The library stays loaded while its engine lives.
    _library: crate::infer::tensorrt::library::TensorrtLibrary,
}

impl std::fmt::Debug for TensorrtSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorrtSession")
            .field("engine", &self.engine_path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

struct Context {
    shim: &'static ShimApi,
    handle: *mut c_void,
}

impl Drop for Context {
    fn drop(&mut self) {
        if !self.handle.is_null() {
            // SAFETY: created by this shim's context_create, destroyed once.
            unsafe { (self.shim.context_destroy)(self.handle) }
        }
    }
}

// SAFETY: the session is used from one thread at a time (`Session: Send`, not `Sync`); TensorRT
// allows an execution context to be used from any thread, one call at a time.
unsafe impl Send for TensorrtSession {}

impl TensorrtSession {
    /// Prepares the engine `ready` found (the probe's), on `device`.
    pub fn prepare(ready: Ready, mut device: Box<dyn Device>) -> Result<Self, SessionError> {
        let path = ready.engine.clone();
        let graph = |problem: String| SessionError::Graph {
            backend: NAME,
            path: path.clone(),
            problem,
        };
        let loaded = ready.loaded;
        let shim = ready.shim;
        // SAFETY: `loaded.engine` is a live engine of this shim.
        let n = unsafe { (shim.io_count)(loaded.engine) };
        let mut described = vec![];
        for i in 0..n.max(0) {
            let mut d = IoDesc::default();
            // SAFETY: `i` is in range; `d` is writable.
            if unsafe { (shim.io_describe)(loaded.engine, i, &mut d) } != 0 || d.name.is_null() {
                return Err(graph(format!("cannot describe I/O tensor {i}")));
            }
            // SAFETY: the name is owned by the engine, valid while it lives; copied here.
            let name = unsafe { CStr::from_ptr(d.name) }.to_owned();
            described.push((name, d));
        }
        // SAFETY: a live engine.
        let handle = unsafe { (shim.context_create)(loaded.engine) };
        let context = Context { shim, handle };
        if handle.is_null() {
            let why = loaded.log.take_errors().unwrap_or_default();
            return Err(graph(format!("cannot create an execution context: {why}")));
        }
        let (mut inputs, mut outputs) = (vec![], vec![]);
        let (mut input_bindings, mut output_bindings) = (vec![], vec![]);
        for (name, d) in described {
            let text = name.to_string_lossy().to_string();
            let nb = d.nb_dims.clamp(0, 8) as usize;
            let dims = &d.dims[..nb];
            if dims.iter().any(|&v| v < 0) {
                return Err(graph(format!(
                    "`{text}` has a dynamic shape {dims:?}; reflex needs static shapes (build \
                     the engine from an ONNX file exported with fixed batch = 1)"
                )));
            }
            let (half, elem) = match d.dtype {
                DTYPE_FLOAT => (false, ElemType::F32),
                DTYPE_HALF => (true, ElemType::F16),
                other => {
                    return Err(graph(format!(
                        "`{text}` has TensorRT data type {other}; reflex converts float and half \
                         I/O only"
                    )))
                }
            };
            let shape: Vec<usize> = dims.iter().map(|&v| v as usize).collect();
            let len: usize = shape.iter().product();
            let bytes = len * if half { 2 } else { 4 };
            let buffer = device.alloc(bytes).map_err(|e| SessionError::Prepare {
                backend: NAME,
                path: path.clone(),
                source: e.into(),
            })?;
            let input = d.mode == MODE_INPUT;
            // SAFETY: a live context; `name` is NUL-terminated; `dims` holds `nb` values; the
            // address is the buffer's, which lives as long as the session.
            unsafe {
                if input
                    && (shim.set_input_shape)(
                        context.handle,
                        name.as_ptr(),
                        nb as i32,
                        dims.as_ptr(),
                    ) != 0
                {
                    let why = loaded.log.take_errors().unwrap_or_default();
                    return Err(graph(format!("cannot set the shape of `{text}`: {why}")));
                }
                if (shim.set_tensor_address)(context.handle, name.as_ptr(), device.address(buffer))
                    != 0
                {
                    let why = loaded.log.take_errors().unwrap_or_default();
                    return Err(graph(format!("cannot bind `{text}`: {why}")));
                }
            }
            let spec = TensorSpec {
                name: text,
                elem,
                shape,
            };
            let binding = Binding {
                values: vec![0.0; len],
                half,
                bytes: vec![0; bytes],
                buffer,
            };
            if input {
                inputs.push(spec);
                input_bindings.push(binding);
            } else {
                outputs.push(spec);
                output_bindings.push(binding);
            }
        }
        Ok(TensorrtSession {
            context,
            loaded,
            device,
            inputs,
            outputs,
            input_bindings,
            output_bindings,
            engine_path: path,
            gpu_ms: 0.0,
            _library: ready.library,
        })
    }

    /// GPU time of the last run in milliseconds (CUDA events around `enqueueV3`).
    pub fn gpu_ms(&self) -> f32 {
        self.gpu_ms
    }

    /// The engine file this session runs.
    pub fn engine_path(&self) -> &std::path::Path {
        &self.engine_path
    }

    fn run_err(&self, e: impl Into<crate::infer::session::BackendSource>) -> SessionError {
        SessionError::Run {
            backend: NAME,
            error: e.into(),
        }
    }
}

/// f32 values into the engine's element type (little-endian bytes).
fn encode(values: &[f32], half: bool, bytes: &mut [u8]) {
    if half {
        for (v, b) in values.iter().zip(bytes.chunks_exact_mut(2)) {
            b.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
        }
    } else {
        for (v, b) in values.iter().zip(bytes.chunks_exact_mut(4)) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// The engine's element type back into f32 values.
fn decode(bytes: &[u8], half: bool, values: &mut [f32]) {
    if half {
        for (v, b) in values.iter_mut().zip(bytes.chunks_exact(2)) {
            *v = f16::from_le_bytes([b[0], b[1]]).to_f32();
        }
    } else {
        for (v, b) in values.iter_mut().zip(bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

impl Session for TensorrtSession {
    fn backend(&self) -> BackendKind {
        BackendKind::Tensorrt
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn input_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.input_bindings[i].values
    }
    fn input(&self, i: usize) -> &[f32] {
        &self.input_bindings[i].values
    }
    fn run(&mut self) -> Result<(), SessionError> {
        for b in &mut self.input_bindings {
            encode(&b.values, b.half, &mut b.bytes);
            self.device
                .upload(b.buffer, &b.bytes)
                .map_err(|e| SessionError::Run {
                    backend: NAME,
                    error: e.into(),
                })?;
        }
        self.device.start().map_err(|e| self.run_err(e))?;
        // SAFETY: a live context whose every tensor has an address; the stream is the device's.
        let status =
            unsafe { (self.context.shim.enqueue)(self.context.handle, self.device.stream()) };
        // Always finish: the stream must be idle before the buffers are touched again.
        let finished = self.device.finish();
        if status != 0 {
            let why = self
                .loaded
                .log
                .take_errors()
                .unwrap_or_else(|| "enqueueV3 failed".into());
            return Err(self.run_err(why));
        }
        self.gpu_ms = finished.map_err(|e| self.run_err(e))?;
        for b in &mut self.output_bindings {
            self.device
                .download(b.buffer, &mut b.bytes)
                .map_err(|e| SessionError::Run {
                    backend: NAME,
                    error: e.into(),
                })?;
            decode(&b.bytes, b.half, &mut b.values);
        }
        Ok(())
    }
    fn output(&self, i: usize) -> &[f32] {
        &self.output_bindings[i].values
    }
    fn device_time_ms(&self) -> Option<f32> {
        Some(self.gpu_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_io_round_trips_through_the_engine_bytes() {
        let values = [0.0f32, 1.0, -2.5, 65504.0, 1e-3];
        let mut bytes = vec![0u8; values.len() * 2];
        encode(&values, true, &mut bytes);
        let mut back = [0f32; 5];
        decode(&bytes, true, &mut back);
        for (a, b) in values.iter().zip(back) {
            // fp16 keeps 11 significant bits: relative error <= 2^-11.
            assert!((a - b).abs() <= a.abs() * 4.9e-4, "{a} -> {b}");
        }
        let mut bytes = vec![0u8; values.len() * 4];
        encode(&values, false, &mut bytes);
        decode(&bytes, false, &mut back);
        assert_eq!(back, values);
    }
}
