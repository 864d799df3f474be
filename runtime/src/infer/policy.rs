//! A policy: observation (preprocessed images per camera, normalized state) -> raw action or
//! chunk, built on one or more [`Session`]s.
//!
//! This is the one place where the manifest's cameras and state are mapped onto graph inputs and
//! the action onto a graph output: the control loop, `reflex bench`, and the host tools'
//! quantization all go through it.
//!
//! Kinds of policy ([`PolicyKind`], from the bundle's model roles):
//! - [`SinglePassPolicy`] (role `policy`): one forward pass of one session; images and state in,
//!   the action or chunk out. ResNet-18/ViT-S reference policies and ACT are this kind.
//! - encoder + denoiser (roles `encoder`, `denoiser`; Diffusion Policy):
//!   [`crate::infer::diffusion::EncoderDenoiserPolicy`], an encoder session run once per
//!   observation step (images + state -> one step's features; the last `n_obs_steps` control
//!   steps' observations, [`Policy::past_camera_input`]), then a DDPM/DDIM
//!   scheduler in Rust that runs the denoiser session K times on a noisy chunk, reusing its
//!   preallocated buffers each step. It implements the same [`Policy`] trait; the control loop
//!   keeps the observations of its last `n_obs_steps` ticks and each request carries them all.
//!   The manifest's `[diffusion]` section gives the history length, horizon, scheduler and seed
//!   (`crate::infer::select::prepare_policy` builds it).

use crate::infer::session::{Session, SessionError};
use crate::infer::tract::{TractOptions, TractSession};
use reflex_models::bundle::validate_io;
use reflex_models::manifest::{Manifest, ModelRole};
use reflex_models::{Bundle, BundleError, GraphIo};
use std::path::Path;

/// Why a policy could not be prepared or run.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The model a backend prepared does not fit the manifest (names, shapes).
    #[error(transparent)]
    Manifest(#[from] BundleError),
    /// The bundle's kind of policy is not implemented by this runtime.
    #[error("{what} is not supported by this runtime yet")]
    Unsupported { what: &'static str },
    /// A policy produced an output of another length than the request holds.
    #[error("{policy}: output has {got} values, expected {expected}")]
    OutputSize {
        policy: &'static str,
        got: usize,
        expected: usize,
    },
    /// The inference worker thread is gone (it panicked or was shut down).
    #[error("the inference thread exited")]
    WorkerGone,
}

/// A failed run loses one inference (transient); a policy that does not fit its bundle, is not
/// supported, or lost its worker thread cannot go on (fatal).
impl crate::io::Fault for PolicyError {
    fn kind(&self) -> crate::io::FaultKind {
        match self {
            PolicyError::Session(e) => e.kind(),
            PolicyError::OutputSize { .. } => crate::io::FaultKind::Transient,
            PolicyError::Manifest(_)
            | PolicyError::Unsupported { .. }
            | PolicyError::WorkerGone => crate::io::FaultKind::Fatal,
        }
    }
}

/// Images + state -> raw action or chunk, with buffers owned by the policy's sessions.
///
/// Per inference: write each camera's CHW image ([`Policy::camera_input`], manifest camera
/// order) and the normalized state ([`Policy::state_input`]), call [`Policy::run`], read
/// [`Policy::output`]: row-major `[horizon][action dim]`, normalized units. No method allocates.
///
/// **Observation history.** A policy conditioned on the last [`Policy::n_obs_steps`] control
/// steps (Diffusion Policy's `n_obs_steps`, LeRobot's observation queues) takes the earlier
/// steps through [`Policy::past_camera_input`] and [`Policy::past_state_input`], step 0 the
/// oldest; `camera_input`/`state_input` are always the current step's. A past step not written
/// since the last run is taken as a copy of the current one, which is what LeRobot's queues hold
/// at the first step of an episode, so callers with one observation (benchmarks, parity checks,
/// calibration) need not know about the history. The control loop keeps the history per tick
/// and passes every step.
pub trait Policy: Send {
    /// The backend running it (`tract`, ...), for logs and reports.
    fn name(&self) -> &'static str;
    /// Input buffer of camera `cam` (manifest order), current observation: CHW f32.
    fn camera_input(&mut self, cam: usize) -> &mut [f32];
    /// Normalized state input of the current observation, if the policy takes state.
    fn state_input(&mut self) -> Option<&mut [f32]>;
    /// Observations per run, the current one included (1: no history).
    fn n_obs_steps(&self) -> usize {
        1
    }
    /// Input buffer of camera `cam` at past observation `step` (`0..n_obs_steps() - 1`, oldest
    /// first); `None` for a policy without history or a step out of range.
    fn past_camera_input(&mut self, step: usize, cam: usize) -> Option<&mut [f32]> {
        let _ = (step, cam);
        None
    }
    /// Normalized state input at past observation `step`; `None` without history or state.
    fn past_state_input(&mut self, step: usize) -> Option<&mut [f32]> {
        let _ = step;
        None
    }
    /// Runs the network(s) on the current inputs.
    fn run(&mut self) -> Result<(), PolicyError>;
    /// Raw output of the last run, row-major `[horizon][dim]`, normalized units.
    fn output(&self) -> &[f32];
    /// The last run's time on the accelerator, ms ([`Session::device_time_ms`]); `None` on
    /// the CPU.
    fn device_time_ms(&self) -> Option<f32> {
        None
    }
    /// Where the last run's time went, for a policy of several networks (encoder + denoiser);
    /// `None` for one forward pass. For `reflex bench`; must not allocate.
    fn diffusion_timings(&self) -> Option<DiffusionTimings> {
        None
    }
}

/// Time spent in the last run of an encoder + denoiser policy, for `reflex bench` and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiffusionTimings {
    /// The encoder's runs, one per observation step (`n_obs_steps`), together.
    pub encoder: std::time::Duration,
    /// All denoiser calls together, and how many there were (K).
    pub denoiser: std::time::Duration,
    pub denoiser_calls: usize,
    /// Scheduler arithmetic and noise, everything but the two networks.
    pub scheduler: std::time::Duration,
}

impl DiffusionTimings {
    /// Mean time of one denoiser call.
    pub fn per_denoiser_step(&self) -> std::time::Duration {
        self.denoiser / self.denoiser_calls.max(1) as u32
    }
}

impl<P: Policy + ?Sized> Policy for Box<P> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn camera_input(&mut self, cam: usize) -> &mut [f32] {
        (**self).camera_input(cam)
    }
    fn state_input(&mut self) -> Option<&mut [f32]> {
        (**self).state_input()
    }
    fn n_obs_steps(&self) -> usize {
        (**self).n_obs_steps()
    }
    fn past_camera_input(&mut self, step: usize, cam: usize) -> Option<&mut [f32]> {
        (**self).past_camera_input(step, cam)
    }
    fn past_state_input(&mut self, step: usize) -> Option<&mut [f32]> {
        (**self).past_state_input(step)
    }
    fn run(&mut self) -> Result<(), PolicyError> {
        (**self).run()
    }
    fn output(&self) -> &[f32] {
        (**self).output()
    }
    fn device_time_ms(&self) -> Option<f32> {
        (**self).device_time_ms()
    }
    fn diffusion_timings(&self) -> Option<DiffusionTimings> {
        (**self).diffusion_timings()
    }
}

/// The kind of policy a bundle's model roles make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    /// One `policy` model, one forward pass: [`SinglePassPolicy`].
    SinglePass,
    /// An `encoder` + `denoiser` pair run by a scheduler (Diffusion Policy):
    /// [`crate::infer::diffusion::EncoderDenoiserPolicy`].
    EncoderDenoiser,
}

impl PolicyKind {
    /// From the manifest's model roles (validated by `validate_manifest`: a policy, or the pair).
    pub fn of(m: &Manifest) -> PolicyKind {
        if m.models.iter().any(|f| f.role == ModelRole::Policy) {
            PolicyKind::SinglePass
        } else {
            PolicyKind::EncoderDenoiser
        }
    }
}

/// One session, one forward pass: cameras and state feed graph inputs named by the manifest,
/// the action is the graph output it names.
pub struct SinglePassPolicy<S: Session = Box<dyn Session>> {
    session: S,
    /// Session input index of each camera (manifest order), and of the state.
    camera_inputs: Vec<usize>,
    state_input: Option<usize>,
    action_output: usize,
    backend: &'static str,
}

impl<S: Session> std::fmt::Debug for SinglePassPolicy<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinglePassPolicy")
            .field("backend", &self.backend)
            .field("inputs", &self.session.inputs())
            .field("camera_inputs", &self.camera_inputs)
            .field("state_input", &self.state_input)
            .field("action_output", &self.action_output)
            .finish()
    }
}

impl<S: Session> SinglePassPolicy<S> {
    /// Maps the manifest onto a prepared session of the file `model_path`, checking first that
    /// the session's inputs and outputs are exactly what the manifest feeds and reads (the same
    /// checks as `Bundle::load`'s header read, now on the graph the backend runs).
    pub fn new(session: S, manifest: &Manifest, model_path: &Path) -> Result<Self, PolicyError> {
        let io = GraphIo {
            inputs: session.inputs().to_vec(),
            outputs: session.outputs().to_vec(),
            unshaped_outputs: vec![],
        };
        validate_io(manifest, &io, model_path)?;
        let lost = |name: &str| BundleError::Graph {
            path: model_path.to_path_buf(),
            problem: format!("`{name}` is not an input or output of the prepared session"),
        };
        let camera_inputs = manifest
            .cameras
            .iter()
            .map(|c| {
                session
                    .input_index(&c.onnx_input)
                    .ok_or_else(|| lost(&c.onnx_input))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state_input = match &manifest.state.onnx_input {
            Some(n) => Some(session.input_index(n).ok_or_else(|| lost(n))?),
            None => None,
        };
        let out = &manifest.action.onnx_output;
        let action_output = session.output_index(out).ok_or_else(|| lost(out))?;
        let backend = session.backend().as_str();
        Ok(SinglePassPolicy {
            session,
            camera_inputs,
            state_input,
            action_output,
            backend,
        })
    }

    pub fn session(&self) -> &S {
        &self.session
    }
    pub fn session_mut(&mut self) -> &mut S {
        &mut self.session
    }
}

impl SinglePassPolicy<TractSession> {
    /// The bundle's policy on tract: the file listed for tract ([`Bundle::policy_path`]).
    pub fn tract(bundle: &Bundle, opts: TractOptions) -> Result<Self, PolicyError> {
        let session = TractSession::prepare(&bundle.policy_path, opts)?;
        SinglePassPolicy::new(session, &bundle.manifest, &bundle.policy_path)
    }
}

impl<S: Session> Policy for SinglePassPolicy<S> {
    fn name(&self) -> &'static str {
        self.backend
    }
    fn camera_input(&mut self, cam: usize) -> &mut [f32] {
        let i = self.camera_inputs[cam];
        self.session.input_mut(i)
    }
    fn state_input(&mut self) -> Option<&mut [f32]> {
        let i = self.state_input?;
        Some(self.session.input_mut(i))
    }
    fn run(&mut self) -> Result<(), PolicyError> {
        Ok(self.session.run()?)
    }
    fn output(&self) -> &[f32] {
        self.session.output(self.action_output)
    }
    fn device_time_ms(&self) -> Option<f32> {
        self.session.device_time_ms()
    }
}
