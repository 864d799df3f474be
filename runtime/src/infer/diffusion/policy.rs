//! [`EncoderDenoiserPolicy`]: Diffusion Policy as a [`Policy`], on an encoder and a denoiser
//! session.

use super::scheduler::{Scheduler, SchedulerSpec};
pub use crate::infer::policy::DiffusionTimings;
use crate::infer::policy::{Policy, PolicyError};
use crate::infer::session::{Session, SessionError};
use crate::infer::tract::{TractOptions, TractSession};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use reflex_models::bundle::{validate_denoiser_io, validate_encoder_io};
use reflex_models::manifest::{BackendKind, ModelRole};
use reflex_models::{Bundle, GraphIo};
use std::time::{Duration, Instant};

/// Where the Gaussian noise of the reverse process comes from: the initial sample and DDPM's
/// per-step noise, drawn in that order.
pub trait NoiseSource: Send {
    /// Fills `out` with independent standard-normal values. Must not allocate.
    fn fill(&mut self, out: &mut [f32]);
}

/// Standard-normal noise from a seeded xoshiro256++ (`rand`'s portable generator, the same
/// stream on every platform and `rand` 0.10 release), through `rand_distr`'s ziggurat sampler.
#[derive(Debug, Clone)]
pub struct SeededNoise(rand::rngs::Xoshiro256PlusPlus);

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        SeededNoise(rand::rngs::Xoshiro256PlusPlus::seed_from_u64(seed))
    }
}

impl NoiseSource for SeededNoise {
    fn fill(&mut self, out: &mut [f32]) {
        for v in out {
            *v = StandardNormal.sample(&mut self.0);
        }
    }
}

/// Graph input and output names of the two sessions, and the history length.
#[derive(Debug, Clone)]
pub struct DiffusionIo<'a> {
    /// Encoder input of each camera, manifest camera order (`[1, 3, H, W]`).
    pub cameras: &'a [&'a str],
    /// Encoder input of the normalized state (`[1, state_dim]`), if any.
    pub state: Option<&'a str>,
    /// Encoder output: one observation's features (`[1, D]`).
    pub features: &'a str,
    /// Denoiser inputs: noisy sample (`[1, horizon, action_dim]`), timestep (`[1]`) and the
    /// conditioning (`[1, n_obs_steps * D]`).
    pub sample: &'a str,
    pub timestep: &'a str,
    pub global_cond: &'a str,
    /// Denoiser output: predicted noise or sample, like `sample`.
    pub prediction: &'a str,
    /// Observations of history the denoiser is conditioned on (LeRobot's `n_obs_steps`).
    pub n_obs_steps: usize,
    /// Action dimension (the last axis of `sample`).
    pub action_dim: usize,
}

/// Diffusion Policy (LeRobot's `DiffusionPolicy.select_action` minus its action queue, which
/// the control loop's planner replaces).
///
/// Per [`Policy::run`]: the encoder runs on each of the `n_obs_steps` observations, oldest
/// first (the current one through [`Policy::camera_input`], earlier control steps through
/// [`Policy::past_camera_input`]; a past step not written since the last run is a copy of the
/// current one, as LeRobot's queues hold at an episode's first step), and the features, in that
/// order, are the denoiser's conditioning (LeRobot's `_prepare_global_conditioning`: the steps'
/// features concatenated); the sample starts as Gaussian noise and the denoiser runs K times
/// under the [`Scheduler`]. The policy keeps nothing from one run to the next but the noise
/// stream. [`Policy::output`] is the denoised sample from
/// step `n_obs_steps - 1` (the current observation's) to the end of the horizon,
/// `[horizon - n_obs_steps + 1][action_dim]`, normalized: the planner executes its first
/// `steps_per_inference` (LeRobot's `n_action_steps`) rows.
///
/// Every buffer is allocated by [`EncoderDenoiserPolicy::new`]; `run` allocates nothing
/// beyond what the sessions do.
pub struct EncoderDenoiserPolicy<S: Session = Box<dyn Session>, N: NoiseSource = SeededNoise> {
    encoder: S,
    denoiser: S,
    camera_inputs: Vec<usize>,
    state_input: Option<usize>,
    features_output: usize,
    sample_input: usize,
    timestep_input: usize,
    cond_input: usize,
    prediction_output: usize,
    n_obs_steps: usize,
    action_dim: usize,
    /// Images of each observation step, `[step * cameras + cam]`, CHW (the last step is the
    /// current observation).
    obs_images: Vec<Vec<f32>>,
    /// Normalized state of each observation step (empty vectors without state).
    obs_state: Vec<Vec<f32>>,
    /// Past steps written since the last run.
    past_written: Vec<bool>,
    scheduler: Scheduler,
    noise_source: N,
    sample: Vec<f32>,
    noise: Vec<f32>,
    timings: DiffusionTimings,
    backend: &'static str,
}

impl<S: Session, N: NoiseSource> std::fmt::Debug for EncoderDenoiserPolicy<S, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderDenoiserPolicy")
            .field("backend", &self.backend)
            .field("n_obs_steps", &self.n_obs_steps)
            .field("scheduler", self.scheduler.spec())
            .finish()
    }
}

impl<S: Session, N: NoiseSource> EncoderDenoiserPolicy<S, N> {
    /// Maps `io` onto the two prepared sessions and allocates every buffer.
    ///
    /// Errors ([`PolicyError::Session`] with [`SessionError::Graph`]): a name that is not an
    /// input/output of its session, or sizes that do not chain (features `D`, conditioning
    /// `n_obs_steps * D`, sample and prediction `horizon * action_dim`, a one-value timestep).
    pub fn new(
        encoder: S,
        denoiser: S,
        io: &DiffusionIo<'_>,
        scheduler: SchedulerSpec,
        noise_source: N,
    ) -> Result<Self, PolicyError> {
        let backend = encoder.backend().as_str();
        let problem = |what: String| SessionError::Graph {
            backend,
            path: "encoder + denoiser".into(),
            problem: what,
        };
        let input = |s: &S, role: &str, name: &str| {
            s.input_index(name)
                .ok_or_else(|| problem(format!("{role} has no input `{name}`")))
        };
        let output = |s: &S, role: &str, name: &str| {
            s.output_index(name)
                .ok_or_else(|| problem(format!("{role} has no output `{name}`")))
        };
        let camera_inputs = io
            .cameras
            .iter()
            .map(|c| input(&encoder, "the encoder", c))
            .collect::<Result<Vec<_>, _>>()?;
        let state_input = match io.state {
            Some(n) => Some(input(&encoder, "the encoder", n)?),
            None => None,
        };
        let features_output = output(&encoder, "the encoder", io.features)?;
        let sample_input = input(&denoiser, "the denoiser", io.sample)?;
        let timestep_input = input(&denoiser, "the denoiser", io.timestep)?;
        let cond_input = input(&denoiser, "the denoiser", io.global_cond)?;
        let prediction_output = output(&denoiser, "the denoiser", io.prediction)?;

        let d = encoder.output(features_output).len();
        let cond = denoiser.input(cond_input).len();
        if io.n_obs_steps == 0 || cond != io.n_obs_steps * d {
            return Err(problem(format!(
                "the denoiser's `{}` has {cond} values, {} observation steps of the encoder's {d} features need {}",
                io.global_cond,
                io.n_obs_steps,
                io.n_obs_steps * d
            ))
            .into());
        }
        let n = denoiser.input(sample_input).len();
        let predicted = denoiser.output(prediction_output).len();
        let a = io.action_dim;
        if n != predicted || a == 0 || !n.is_multiple_of(a) || n / a < io.n_obs_steps {
            return Err(problem(format!(
                "the denoiser's `{}` ({n} values) and `{}` ({predicted}) must be equal [horizon >= n_obs_steps, {a}]",
                io.sample, io.prediction
            ))
            .into());
        }
        if denoiser.input(timestep_input).len() != 1 {
            return Err(problem(format!(
                "the denoiser's `{}` must hold one value",
                io.timestep
            ))
            .into());
        }
        let scheduler = Scheduler::new(scheduler).map_err(|e| problem(e.to_string()))?;
        let steps = io.n_obs_steps;
        let obs_images = (0..steps)
            .flat_map(|_| {
                camera_inputs
                    .iter()
                    .map(|&i| vec![0.0; encoder.input(i).len()])
            })
            .collect();
        let state_len = state_input.map_or(0, |i| encoder.input(i).len());
        let obs_state = (0..steps).map(|_| vec![0.0; state_len]).collect();
        Ok(EncoderDenoiserPolicy {
            encoder,
            denoiser,
            camera_inputs,
            state_input,
            features_output,
            sample_input,
            timestep_input,
            cond_input,
            prediction_output,
            n_obs_steps: io.n_obs_steps,
            action_dim: a,
            obs_images,
            obs_state,
            past_written: vec![false; steps - 1],
            scheduler,
            noise_source,
            sample: vec![0.0; n],
            noise: vec![0.0; n],
            timings: DiffusionTimings::default(),
            backend,
        })
    }

    /// Time spent by the last run.
    pub fn timings(&self) -> DiffusionTimings {
        self.timings
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The encoder session (its inputs hold the current observation after a run).
    pub fn encoder(&self) -> &S {
        &self.encoder
    }

    /// The denoiser session (its conditioning input holds the last run's features, oldest
    /// step first).
    pub fn denoiser(&self) -> &S {
        &self.denoiser
    }

    /// The whole denoised sample of the last run, `[horizon][action_dim]`.
    pub fn sample(&self) -> &[f32] {
        &self.sample
    }
}

impl<S: Session, N: NoiseSource> Policy for EncoderDenoiserPolicy<S, N> {
    fn name(&self) -> &'static str {
        self.backend
    }

    fn camera_input(&mut self, cam: usize) -> &mut [f32] {
        let cams = self.camera_inputs.len();
        &mut self.obs_images[(self.n_obs_steps - 1) * cams + cam]
    }

    fn state_input(&mut self) -> Option<&mut [f32]> {
        self.state_input?;
        Some(&mut self.obs_state[self.n_obs_steps - 1])
    }

    fn n_obs_steps(&self) -> usize {
        self.n_obs_steps
    }

    fn past_camera_input(&mut self, step: usize, cam: usize) -> Option<&mut [f32]> {
        let cams = self.camera_inputs.len();
        if step + 1 >= self.n_obs_steps || cam >= cams {
            return None;
        }
        self.past_written[step] = true;
        Some(&mut self.obs_images[step * cams + cam])
    }

    fn past_state_input(&mut self, step: usize) -> Option<&mut [f32]> {
        if step + 1 >= self.n_obs_steps {
            return None;
        }
        self.state_input?;
        self.past_written[step] = true;
        Some(&mut self.obs_state[step])
    }

    fn run(&mut self) -> Result<(), PolicyError> {
        let t0 = Instant::now();
        let cams = self.camera_inputs.len();
        let current = self.n_obs_steps - 1;
        for step in 0..self.n_obs_steps {
            // An unwritten past step repeats the current observation.
            let src = if step < current && !self.past_written[step] {
                current
            } else {
                step
            };
            for (c, &i) in self.camera_inputs.iter().enumerate() {
                self.encoder
                    .input_mut(i)
                    .copy_from_slice(&self.obs_images[src * cams + c]);
            }
            if let Some(i) = self.state_input {
                self.encoder
                    .input_mut(i)
                    .copy_from_slice(&self.obs_state[src]);
            }
            self.encoder.run()?;
            let features = self.encoder.output(self.features_output);
            let d = features.len();
            self.denoiser.input_mut(self.cond_input)[step * d..(step + 1) * d]
                .copy_from_slice(features);
        }
        self.past_written.fill(false);
        let t1 = Instant::now();

        let mut in_denoiser = Duration::ZERO;
        self.noise_source.fill(&mut self.sample);
        let steps = self.scheduler.timesteps().len();
        for i in 0..steps {
            let t = self.scheduler.timesteps()[i];
            self.denoiser
                .input_mut(self.sample_input)
                .copy_from_slice(&self.sample);
            self.denoiser.input_mut(self.timestep_input)[0] = t as f32;
            let s = Instant::now();
            self.denoiser.run()?;
            in_denoiser += s.elapsed();
            if self.scheduler.needs_noise(i) {
                self.noise_source.fill(&mut self.noise);
            }
            let prediction = self.denoiser.output(self.prediction_output);
            self.scheduler
                .step(i, prediction, &mut self.sample, &self.noise);
        }
        let total = t1.elapsed();
        self.timings = DiffusionTimings {
            encoder: t1 - t0,
            denoiser: in_denoiser,
            denoiser_calls: steps,
            scheduler: total.saturating_sub(in_denoiser),
        };
        Ok(())
    }

    fn output(&self) -> &[f32] {
        &self.sample[(self.n_obs_steps - 1) * self.action_dim..]
    }

    fn diffusion_timings(&self) -> Option<DiffusionTimings> {
        Some(self.timings)
    }
}

impl<N: NoiseSource> EncoderDenoiserPolicy<TractSession, N> {
    /// The bundle's encoder + denoiser on tract: the files listed for tract, the manifest's
    /// `[diffusion]` settings, noise from `noise` (the runtime passes
    /// `SeededNoise::new(diffusion.seed)`). The sessions' real I/O is checked against the
    /// manifest first, as `Bundle::load` checked the files' headers.
    ///
    /// Errors: a bundle without the section or without a tract file of either role
    /// ([`PolicyError::Unsupported`]), a graph tract cannot prepare, I/O that does not fit.
    pub fn tract(bundle: &Bundle, opts: TractOptions, noise: N) -> Result<Self, PolicyError> {
        let m = &bundle.manifest;
        let d = m.diffusion.as_ref().ok_or(PolicyError::Unsupported {
            what: "an encoder + denoiser bundle without a [diffusion] section",
        })?;
        let path = |role| {
            m.model_for(role, BackendKind::Tract)
                .map(|f| bundle.model_path(f))
                .ok_or(PolicyError::Unsupported {
                    what: "an encoder + denoiser bundle without both files listed for tract",
                })
        };
        let (enc_path, den_path) = (path(ModelRole::Encoder)?, path(ModelRole::Denoiser)?);
        let encoder = TractSession::prepare(&enc_path, opts)?;
        let denoiser = TractSession::prepare(&den_path, opts)?;
        let io_of = |s: &TractSession| GraphIo {
            inputs: s.inputs().to_vec(),
            outputs: s.outputs().to_vec(),
            unshaped_outputs: vec![],
        };
        let features = validate_encoder_io(m, d, &io_of(&encoder), &enc_path)?;
        validate_denoiser_io(m, d, &io_of(&denoiser), &den_path, features)?;
        let cameras: Vec<&str> = m.cameras.iter().map(|c| c.onnx_input.as_str()).collect();
        let io = DiffusionIo {
            cameras: &cameras,
            state: m.state.onnx_input.as_deref(),
            features: &d.features_output,
            sample: &d.sample_input,
            timestep: &d.timestep_input,
            global_cond: &d.global_cond_input,
            prediction: &m.action.onnx_output,
            n_obs_steps: d.n_obs_steps,
            action_dim: m.action.names.len(),
        };
        EncoderDenoiserPolicy::new(encoder, denoiser, &io, d.scheduler.clone(), noise)
    }
}
