//! The tract session: ONNX on the CPU, pure Rust, runs everywhere (the fallback of every board).
//!
//! Prepare reads the file with tract's ONNX front end, types it, optimizes it for this CPU and
//! plans it with tract's multithreaded matmul executor; every input tensor is allocated once.
//! A run hands tract references to the inputs (`Arc`, no copy) and copies each output into the
//! session's own buffer, so the caller's view never points into tract's per-run allocations.

use crate::infer::session::{Session, SessionError, TensorSpec};
use reflex_models::manifest::BackendKind;
use reflex_models::onnx::header::ElemType;
use reflex_models::GraphIo;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tract_onnx::prelude::*;

const NAME: &str = "tract";

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

/// What start-up cost, for the report (milliseconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct PrepareTimings {
    /// Reading the ONNX file and typing the graph.
    pub load_ms: f64,
    pub optimize_ms: f64,
    pub plan_ms: f64,
}

fn prepare_err(path: &Path) -> impl Fn(TractError) -> SessionError + '_ {
    move |e| SessionError::Prepare {
        backend: NAME,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

/// Reads an ONNX file into tract's typed (not yet optimized) form: for tools that inspect or
/// transform graphs (`reflex-tools inspect`, `infer`).
pub fn load_typed(path: &Path) -> Result<TypedModel, SessionError> {
    let err = prepare_err(path);
    tract_onnx::onnx()
        .model_for_path(path)
        .map_err(&err)?
        .into_typed()
        .map_err(&err)
}

fn elem_of(dt: DatumType) -> ElemType {
    match dt {
        DatumType::F32 => ElemType::F32,
        DatumType::F16 => ElemType::F16,
        DatumType::F64 => ElemType::F64,
        DatumType::I8 => ElemType::I8,
        DatumType::U8 => ElemType::U8,
        DatumType::I16 => ElemType::I16,
        DatumType::I32 => ElemType::I32,
        DatumType::I64 => ElemType::I64,
        DatumType::Bool => ElemType::Bool,
        _ => ElemType::Other(0),
    }
}

/// tract's datum type of a boundary-supported element type (f32 for the others, which
/// `from_typed` refuses first).
fn datum_of(e: ElemType) -> DatumType {
    match e {
        ElemType::F64 => DatumType::F64,
        ElemType::F16 => DatumType::F16,
        _ => DatumType::F32,
    }
}

/// Writes the caller's f32 values into a float64 or float16 input tensor (same length), with
/// no allocation.
fn convert_into(t: &mut Tensor, src: &[f32]) -> TractResult<()> {
    match t.datum_type() {
        DatumType::F64 => {
            let mut v = t.try_as_plain_ram_mut()?;
            let dst = v.as_slice_mut::<f64>()?;
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f64::from(*s);
            }
        }
        DatumType::F16 => {
            let mut v = t.try_as_plain_ram_mut()?;
            let dst = v.as_slice_mut::<f16>()?;
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f16::from_f32(*s);
            }
        }
        dt => {
            return Err(anyhow::anyhow!(
                "input of type {dt:?} has no f32 conversion"
            ))
        }
    }
    Ok(())
}

/// Reads an output tensor of float, double or float16 into the caller's f32 buffer (same
/// length), with no allocation. Values beyond f32's range become infinite, as a cast would.
fn convert_from(t: &Tensor, dst: &mut [f32]) -> TractResult<()> {
    let plain = t.try_as_plain_ram()?;
    match t.datum_type() {
        DatumType::F32 => dst.copy_from_slice(plain.as_slice::<f32>()?),
        DatumType::F64 => {
            for (d, s) in dst.iter_mut().zip(plain.as_slice::<f64>()?) {
                *d = *s as f32;
            }
        }
        DatumType::F16 => {
            for (d, s) in dst.iter_mut().zip(plain.as_slice::<f16>()?) {
                *d = s.to_f32();
            }
        }
        dt => {
            return Err(anyhow::anyhow!(
                "output of type {dt:?} has no f32 conversion"
            ))
        }
    }
    Ok(())
}

/// Inputs and outputs of a typed model as tract sees them (names, element types, concrete
/// shapes); `path` names the file in errors. Output names are the ONNX output names.
pub fn typed_io(model: &TypedModel, path: &Path) -> Result<GraphIo, SessionError> {
    let err = prepare_err(path);
    let spec = |outlet: OutletId, name: String| -> Result<TensorSpec, SessionError> {
        let fact = model.outlet_fact(outlet).map_err(&err)?;
        let shape = fact
            .shape
            .as_concrete()
            .ok_or_else(|| SessionError::Graph {
                backend: NAME,
                path: path.to_path_buf(),
                problem: format!(
                "`{name}` has a symbolic shape {:?}; reflex needs static shapes (export with fixed \
                 batch = 1)",
                fact.shape
            ),
            })?;
        Ok(TensorSpec {
            elem: elem_of(fact.datum_type),
            shape: shape.to_vec(),
            name,
        })
    };
    let mut io = GraphIo::default();
    for &o in model.input_outlets().map_err(&err)? {
        io.inputs.push(spec(o, model.node(o.node).name.clone())?);
    }
    for &o in model.output_outlets().map_err(&err)? {
        let label = model
            .outlet_label(o)
            .map(|s| s.to_string())
            .unwrap_or_else(|| model.node(o.node).name.clone());
        io.outputs.push(spec(o, label)?);
    }
    Ok(io)
}

/// The I/O of an ONNX file as tract loads it (the whole graph typed, shapes inferred): what
/// `reflex-tools export` checks a foreign ONNX file with before writing a bundle.
pub fn graph_io(path: &Path) -> Result<GraphIo, SessionError> {
    typed_io(&load_typed(path)?, path)
}

/// tract on the CPU.
pub struct TractSession {
    state: TypedSimpleState,
    /// Input tensors, in graph input order and element type. Kept as `Arc` so each run hands
    /// tract a reference (no copy, no allocation) and gets exclusive access back afterwards.
    inputs: Vec<Arc<Tensor>>,
    /// The caller's f32 buffer of each input the graph takes as float64 or float16 (`None` for
    /// f32 inputs, written in place): converted into the input tensor at each run.
    staging: Vec<Option<Vec<f32>>>,
    input_specs: Vec<TensorSpec>,
    output_specs: Vec<TensorSpec>,
    outputs: Vec<Vec<f32>>,
    path: PathBuf,
    pub timings: PrepareTimings,
}

impl std::fmt::Debug for TractSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TractSession")
            .field("path", &self.path)
            .field("inputs", &self.input_specs)
            .field("outputs", &self.output_specs)
            .finish()
    }
}

impl TractSession {
    /// Reads, optimizes and plans an ONNX file for this CPU and allocates every buffer.
    ///
    /// Inputs and outputs of type float64 or float16 are converted from and to the caller's f32
    /// buffers at each run, into buffers allocated here.
    ///
    /// Errors: the file cannot be read or typed by tract ([`SessionError::Prepare`], tract's
    /// error kept as the source); a symbolic shape or an input/output of another type
    /// ([`SessionError::Graph`]).
    pub fn prepare(path: &Path, opts: TractOptions) -> Result<Self, SessionError> {
        let t0 = Instant::now();
        let typed = load_typed(path)?;
        Self::from_typed(typed, path, opts, t0)
    }

    /// As [`TractSession::prepare`], from ONNX bytes in memory (a graph rewritten by a tool);
    /// `label` names them in errors.
    pub fn from_bytes(
        bytes: &[u8],
        label: &Path,
        opts: TractOptions,
    ) -> Result<Self, SessionError> {
        let t0 = Instant::now();
        let err = prepare_err(label);
        let typed = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .and_then(|m| m.into_typed())
            .map_err(err)?;
        Self::from_typed(typed, label, opts, t0)
    }

    fn from_typed(
        typed: TypedModel,
        path: &Path,
        opts: TractOptions,
        t0: Instant,
    ) -> Result<Self, SessionError> {
        let err = prepare_err(path);
        let t1 = Instant::now();
        let optimized = typed.into_optimized().map_err(&err)?;
        let t2 = Instant::now();
        let mut run_opts = RunOptions::default();
        if opts.threads > 1 {
            run_opts.executor = Some(tract_linalg::multithread::Executor::multithread_with_name(
                opts.threads,
                "reflex-tract",
            ));
        }
        let plan = TypedSimplePlan::new_with_options(optimized, &run_opts).map_err(&err)?;
        let io = typed_io(plan.model(), path)?;
        let state = plan.spawn().map_err(&err)?;
        let t3 = Instant::now();
        for t in io.inputs.iter().chain(&io.outputs) {
            if !t.elem.is_boundary_supported() {
                return Err(SessionError::Graph {
                    backend: NAME,
                    path: path.to_path_buf(),
                    problem: format!(
                        "`{}` is {}; the tract session feeds and reads float, double and \
                         float16 tensors only",
                        t.name, t.elem
                    ),
                });
            }
        }
        let inputs = io
            .inputs
            .iter()
            .map(|t| Tensor::zero_dt(datum_of(t.elem), &t.shape).map(Arc::new))
            .collect::<TractResult<Vec<_>>>()
            .map_err(&err)?;
        let staging = io
            .inputs
            .iter()
            .map(|t| (t.elem != ElemType::F32).then(|| vec![0.0; t.len()]))
            .collect();
        let outputs = io.outputs.iter().map(|t| vec![0.0; t.len()]).collect();
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        Ok(TractSession {
            state,
            inputs,
            staging,
            input_specs: io.inputs,
            output_specs: io.outputs,
            outputs,
            path: path.to_path_buf(),
            timings: PrepareTimings {
                load_ms: ms(t0, t1),
                optimize_ms: ms(t1, t2),
                plan_ms: ms(t2, t3),
            },
        })
    }
}

impl Session for TractSession {
    fn backend(&self) -> BackendKind {
        BackendKind::Tract
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.input_specs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.output_specs
    }
    fn input_mut(&mut self, i: usize) -> &mut [f32] {
        if let Some(buf) = &mut self.staging[i] {
            return buf;
        }
        // After a run tract has dropped its references, so the Arc is unique again. If it were
        // not (a tract change keeping inputs alive), make_mut copies once rather than failing.
        let t = Arc::make_mut(&mut self.inputs[i]);
        match t.to_plain_array_view_mut::<f32>() {
            Ok(v) => v.into_slice().unwrap_or(&mut []),
            Err(_) => &mut [],
        }
    }
    fn input(&self, i: usize) -> &[f32] {
        if let Some(buf) = &self.staging[i] {
            return buf;
        }
        self.inputs[i]
            .try_as_plain_ram()
            .and_then(|v| v.as_slice::<f32>())
            .unwrap_or(&[])
    }
    fn run(&mut self) -> Result<(), SessionError> {
        let rerr = |e: TractError| SessionError::Run {
            backend: NAME,
            error: format!("{e:#}").into(),
        };
        // Inputs of another float type: converted from the caller's f32 buffer, in place.
        for (t, staged) in self.inputs.iter_mut().zip(&self.staging) {
            if let Some(src) = staged {
                convert_into(Arc::make_mut(t), src).map_err(rerr)?;
            }
        }
        let inputs: TVec<TValue> = self
            .inputs
            .iter()
            .map(|t| t.clone().into_tvalue())
            .collect();
        let outs = self.state.run(inputs).map_err(rerr)?;
        for ((spec, buf), out) in self.output_specs.iter().zip(&mut self.outputs).zip(&outs) {
            if out.len() != buf.len() {
                return Err(SessionError::OutputSize {
                    backend: NAME,
                    name: spec.name.clone(),
                    got: out.len(),
                    expected: buf.len(),
                });
            }
            convert_from(out, buf).map_err(rerr)?;
        }
        Ok(())
    }
    fn output(&self, i: usize) -> &[f32] {
        &self.outputs[i]
    }
}
