//! A session: one graph, prepared once, run many times on preallocated buffers.
//!
//! The shape follows tract's own runtime seam (`Runtime::prepare -> Runnable -> State::run`, in
//! sonos/tract `core/src/runtime.rs`): a backend *prepares* a model file once, off the control
//! loop (parsing, optimizing, building an engine, allocating every buffer), and yields a
//! [`Session`] whose `run` only computes. A session knows nothing of cameras, state or actions:
//! it has named inputs and outputs with element types and static shapes; the mapping of the
//! manifest onto them is the policy's ([`crate::infer::policy`]).
//!
//! Buffers are `f32` on the caller's side whatever the graph's element types: a backend whose
//! graph takes another type (a TensorRT engine with fp16 I/O) converts inside `run`. tract
//! refuses non-f32 I/O at prepare.

use reflex_models::manifest::BackendKind;
pub use reflex_models::TensorSpec;
use std::path::PathBuf;

/// A boxed error of a backend library, kept as the source of ours.
pub type BackendSource = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a session could not be prepared or run.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The backend could not read, optimize or plan the model.
    #[error("{backend}: cannot prepare {path}")]
    Prepare {
        backend: &'static str,
        path: PathBuf,
        #[source]
        source: BackendSource,
    },
    /// The model is readable but not runnable as reflex runs graphs (a symbolic shape, an element
    /// type the backend does not convert, an input lost by optimization).
    #[error("{backend}: {path}: {problem}")]
    Graph {
        backend: &'static str,
        path: PathBuf,
        problem: String,
    },
    /// Inference failed. The backend's error is rendered in the message (the loop logs it
    /// per failed inference with `{}`), not kept as a `source`, so chains do not print it twice.
    #[error("{backend}: inference failed: {error}")]
    Run {
        backend: &'static str,
        error: BackendSource,
    },
    /// The network produced an output of another size than prepared for.
    #[error("{backend}: output `{name}` has {got} values, expected {expected}")]
    OutputSize {
        backend: &'static str,
        name: String,
        got: usize,
        expected: usize,
    },
}

/// A failed run loses one inference (the loop counts it and holds); a model that cannot be
/// prepared is a misconfiguration.
impl crate::io::Fault for SessionError {
    fn kind(&self) -> crate::io::FaultKind {
        match self {
            SessionError::Run { .. } | SessionError::OutputSize { .. } => {
                crate::io::FaultKind::Transient
            }
            SessionError::Prepare { .. } | SessionError::Graph { .. } => {
                crate::io::FaultKind::Fatal
            }
        }
    }
}

/// One prepared graph with its buffers.
///
/// Per run, the caller writes each input buffer ([`Session::input_mut`], graph input order), calls
/// [`Session::run`], and reads outputs ([`Session::output`], graph output order). No method
/// allocates after prepare (tract's own per-run allocations aside: `tests/alloc_tract.rs`
/// measures them).
pub trait Session: Send {
    /// The backend running this session.
    fn backend(&self) -> BackendKind;
    /// Graph inputs, in order: name, element type in the graph, static shape.
    fn inputs(&self) -> &[TensorSpec];
    /// Graph outputs, in order.
    fn outputs(&self) -> &[TensorSpec];
    /// Buffer of input `i`, row-major, `inputs()[i].len()` values.
    fn input_mut(&mut self, i: usize) -> &mut [f32];
    /// The current values of input `i` (what the next run feeds).
    fn input(&self, i: usize) -> &[f32];
    /// Runs the graph on the current inputs.
    fn run(&mut self) -> Result<(), SessionError>;
    /// Output `i` of the last run, row-major, `outputs()[i].len()` values.
    fn output(&self, i: usize) -> &[f32];
    /// The last run's time on the accelerator, ms, as the device measured it (TensorRT: CUDA
    /// events around the enqueue); `None` for backends that run on the CPU.
    fn device_time_ms(&self) -> Option<f32> {
        None
    }

    /// Index of the input named `name`.
    fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs().iter().position(|t| t.name == name)
    }
    /// Index of the output named `name`.
    fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs().iter().position(|t| t.name == name)
    }
}

impl<S: Session + ?Sized> Session for Box<S> {
    fn backend(&self) -> BackendKind {
        (**self).backend()
    }
    fn inputs(&self) -> &[TensorSpec] {
        (**self).inputs()
    }
    fn outputs(&self) -> &[TensorSpec] {
        (**self).outputs()
    }
    fn input_mut(&mut self, i: usize) -> &mut [f32] {
        (**self).input_mut(i)
    }
    fn input(&self, i: usize) -> &[f32] {
        (**self).input(i)
    }
    fn run(&mut self) -> Result<(), SessionError> {
        (**self).run()
    }
    fn output(&self, i: usize) -> &[f32] {
        (**self).output(i)
    }
    fn device_time_ms(&self) -> Option<f32> {
        (**self).device_time_ms()
    }
}
