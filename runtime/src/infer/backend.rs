//! Policy backends: prepare once, run many.
//!
//! Loading and optimizing a network is slow and allocates; it happens once at start and yields a
//! backend whose input and output buffers are sized from the bundle. Per tick, the caller writes
//! preprocessed images and normalized state into those buffers, calls `run`, and reads the raw
//! (still normalized) action or chunk. A backend owns its buffers (a TensorRT backend will own
//! device buffers), so the loop never knows which engine runs the network.
//!
//! Only tract (CPU) is implemented in this build. TensorRT needs the NVIDIA libraries of a Jetson
//! or a GPU workstation and is not available on the machines this is developed and tested on;
//! [`select_backend`] states that plainly when asked for it and falls back to tract under `auto`.

use reflex_models::manifest::BackendKind;
use reflex_models::Bundle;
use std::sync::Arc;
use std::time::Instant;
use tract_onnx::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("backend {backend}: cannot prepare {path}: {message}")]
    Prepare {
        backend: &'static str,
        path: String,
        message: String,
    },
    #[error("backend {backend}: inference failed: {message}")]
    Run {
        backend: &'static str,
        message: String,
    },
    #[error("backend {backend}: not available in this build: {why}")]
    Unavailable { backend: &'static str, why: String },
    #[error("backend {backend}: not allowed by the bundle (models[policy].backends = {allowed})")]
    NotAllowed {
        backend: &'static str,
        allowed: String,
    },
}

impl crate::io::Fault for BackendError {
    /// A failed run loses one inference (the loop counts it and holds); a backend that cannot be
    /// prepared, is missing or is not allowed is a misconfiguration.
    fn kind(&self) -> crate::io::FaultKind {
        match self {
            BackendError::Run { .. } => crate::io::FaultKind::Transient,
            BackendError::Prepare { .. }
            | BackendError::Unavailable { .. }
            | BackendError::NotAllowed { .. } => crate::io::FaultKind::Fatal,
        }
    }
}

/// Images + state -> raw action or chunk, with buffers owned by the backend.
pub trait PolicyBackend: Send {
    fn name(&self) -> &'static str;
    /// Input buffer of camera `cam` (manifest order): CHW f32.
    fn camera_input(&mut self, cam: usize) -> &mut [f32];
    /// Normalized state input, if the policy takes state.
    fn state_input(&mut self) -> Option<&mut [f32]>;
    /// Runs the network on the current inputs.
    fn run(&mut self) -> Result<(), BackendError>;
    /// Raw output of the last run, row-major `[horizon][dim]`, normalized units.
    fn output(&self) -> &[f32];
}

impl<B: PolicyBackend + ?Sized> PolicyBackend for Box<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn camera_input(&mut self, cam: usize) -> &mut [f32] {
        (**self).camera_input(cam)
    }
    fn state_input(&mut self) -> Option<&mut [f32]> {
        (**self).state_input()
    }
    fn run(&mut self) -> Result<(), BackendError> {
        (**self).run()
    }
    fn output(&self) -> &[f32] {
        (**self).output()
    }
}

/// How tract runs: thread count of its matrix-multiply executor.
#[derive(Debug, Clone, Copy)]
pub struct TractOptions {
    /// Threads for tract's multithreaded matmul executor; 1 = single-threaded.
    pub threads: usize,
}

impl Default for TractOptions {
    fn default() -> Self {
        TractOptions {
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// What start-up cost, for the report.
#[derive(Debug, Clone, Copy, Default)]
pub struct PrepareTimings {
    pub optimize_ms: f64,
    pub plan_ms: f64,
}

/// tract on the CPU.
pub struct TractBackend {
    state: TypedSimpleState,
    /// Input tensors, in graph input order. Kept as `Arc` so each run hands tract a reference
    /// (no copy, no allocation) and gets exclusive access back afterwards.
    inputs: Vec<Arc<Tensor>>,
    /// Graph input index of each camera, and of the state.
    camera_slots: Vec<usize>,
    state_slot: Option<usize>,
    output_slot: usize,
    output: Vec<f32>,
    pub timings: PrepareTimings,
}

impl std::fmt::Debug for TractBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractBackend")
            .field("inputs", &self.inputs.len())
            .field("output_len", &self.output.len())
            .finish()
    }
}

impl TractBackend {
    /// Optimizes the bundle's policy model for this CPU and allocates every buffer.
    pub fn prepare(bundle: &Bundle, opts: TractOptions) -> Result<Self, BackendError> {
        let path = bundle.policy_path.display().to_string();
        let err = |e: TractError| BackendError::Prepare {
            backend: "tract",
            path: path.clone(),
            message: format!("{e:#}"),
        };
        let t0 = Instant::now();
        let optimized = bundle.policy_model.clone().into_optimized().map_err(err)?;
        let t1 = Instant::now();
        let mut run_opts = RunOptions::default();
        if opts.threads > 1 {
            run_opts.executor = Some(tract_linalg_executor(opts.threads));
        }
        let plan = TypedSimplePlan::new_with_options(optimized, &run_opts).map_err(err)?;
        let state = plan.spawn().map_err(err)?;
        let t2 = Instant::now();

        let m = &bundle.manifest;
        let model = plan.model();
        let input_names: Vec<String> = model
            .input_outlets()
            .map_err(err)?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let slot_of = |name: &str| -> Result<usize, BackendError> {
            input_names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| BackendError::Prepare {
                    backend: "tract",
                    path: path.clone(),
                    message: format!(
                        "optimized graph lost input `{name}` (inputs: {input_names:?})"
                    ),
                })
        };
        let camera_slots = m
            .cameras
            .iter()
            .map(|c| slot_of(&c.onnx_input))
            .collect::<Result<Vec<_>, _>>()?;
        let state_slot = m.state.onnx_input.as_deref().map(slot_of).transpose()?;
        let mut inputs = Vec::with_capacity(input_names.len());
        for (ix, _) in input_names.iter().enumerate() {
            let fact = model.input_fact(ix).map_err(err)?;
            let shape: Vec<usize> = fact
                .shape
                .as_concrete()
                .ok_or_else(|| BackendError::Prepare {
                    backend: "tract",
                    path: path.clone(),
                    message: format!("input {ix} has a symbolic shape"),
                })?
                .to_vec();
            inputs.push(Arc::new(Tensor::zero::<f32>(&shape).map_err(err)?));
        }
        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(err)?
            .iter()
            .map(|o| {
                model
                    .outlet_label(*o)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        let output_slot = output_names
            .iter()
            .position(|n| *n == m.action.onnx_output)
            .ok_or_else(|| BackendError::Prepare {
                backend: "tract",
                path: path.clone(),
                message: format!(
                    "optimized graph lost output `{}` (outputs: {output_names:?})",
                    m.action.onnx_output
                ),
            })?;
        let out_len = m.action.output.horizon() * m.action.names.len();
        Ok(TractBackend {
            state,
            inputs,
            camera_slots,
            state_slot,
            output_slot,
            output: vec![0.0; out_len],
            timings: PrepareTimings {
                optimize_ms: (t1 - t0).as_secs_f64() * 1e3,
                plan_ms: (t2 - t1).as_secs_f64() * 1e3,
            },
        })
    }

    fn input_mut(&mut self, slot: usize) -> &mut [f32] {
        // After a run tract has dropped its references, so the Arc is unique again. If it were
        // not (a tract change keeping inputs alive), make_mut copies once rather than failing.
        let t = Arc::make_mut(&mut self.inputs[slot]);
        match t.to_plain_array_view_mut::<f32>() {
            Ok(v) => v.into_slice().unwrap_or(&mut []),
            Err(_) => &mut [],
        }
    }
}

fn tract_linalg_executor(threads: usize) -> tract_linalg::multithread::Executor {
    tract_linalg::multithread::Executor::multithread_with_name(threads, "reflex-tract")
}

impl PolicyBackend for TractBackend {
    fn name(&self) -> &'static str {
        "tract"
    }
    fn camera_input(&mut self, cam: usize) -> &mut [f32] {
        let slot = self.camera_slots[cam];
        self.input_mut(slot)
    }
    fn state_input(&mut self) -> Option<&mut [f32]> {
        let slot = self.state_slot?;
        Some(self.input_mut(slot))
    }
    fn run(&mut self) -> Result<(), BackendError> {
        let rerr = |e: TractError| BackendError::Run {
            backend: "tract",
            message: format!("{e:#}"),
        };
        let inputs: TVec<TValue> = self
            .inputs
            .iter()
            .map(|t| t.clone().into_tvalue())
            .collect();
        let outputs = self.state.run(inputs).map_err(rerr)?;
        let out = outputs
            .get(self.output_slot)
            .ok_or_else(|| BackendError::Run {
                backend: "tract",
                message: "missing output".into(),
            })?
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .map_err(rerr)?;
        if out.len() != self.output.len() {
            return Err(BackendError::Run {
                backend: "tract",
                message: format!(
                    "output has {} values, expected {}",
                    out.len(),
                    self.output.len()
                ),
            });
        }
        self.output.copy_from_slice(out);
        Ok(())
    }
    fn output(&self) -> &[f32] {
        &self.output
    }
}

/// Which backend the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Tract,
    Tensorrt,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "tract" => Ok(BackendChoice::Tract),
            "tensorrt" | "trt" => Ok(BackendChoice::Tensorrt),
            other => Err(format!("unknown backend `{other}` (auto, tract, tensorrt)")),
        }
    }
}

/// Picks and prepares a backend, with the reason for the choice (logged at start).
///
/// `auto` prefers TensorRT where the bundle allows it and the engine is available, and falls back
/// to tract otherwise. This build has no TensorRT support, so `auto` always lands on tract (when
/// the bundle allows it) and an explicit `tensorrt` is an error saying so.
pub fn select_backend(
    bundle: &Bundle,
    choice: BackendChoice,
    tract: TractOptions,
) -> Result<(Box<dyn PolicyBackend>, String), BackendError> {
    // Every backend some policy file is listed for (an int8 bundle lists the operator form for
    // tract and the QDQ form for TensorRT); `Bundle::load` read the tract one.
    let allowed: Vec<BackendKind> = [BackendKind::Tract, BackendKind::Tensorrt]
        .into_iter()
        .filter(|&b| bundle.manifest.policy_model_for(b).is_some())
        .collect();
    let allowed_str = allowed
        .iter()
        .map(|b| b.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let trt_why = "TensorRT support is not compiled into this build (no TensorRT libraries on the build machine)";
    match choice {
        BackendChoice::Tensorrt => Err(BackendError::Unavailable {
            backend: "tensorrt",
            why: trt_why.into(),
        }),
        BackendChoice::Tract | BackendChoice::Auto => {
            if !allowed.contains(&BackendKind::Tract) {
                return Err(BackendError::NotAllowed {
                    backend: "tract",
                    allowed: allowed_str,
                });
            }
            let reason = if choice == BackendChoice::Auto {
                format!("auto: tract on {} thread(s) ({trt_why})", tract.threads)
            } else {
                format!("tract on {} thread(s), as asked", tract.threads)
            };
            let b = TractBackend::prepare(bundle, tract)?;
            Ok((Box::new(b), reason))
        }
    }
}
