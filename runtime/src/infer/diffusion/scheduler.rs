//! DDPM and DDIM as Hugging Face `diffusers` implements them (`DDPMScheduler` with
//! `variance_type="fixed_small"`, `DDIMScheduler` with `eta=0`, `set_alpha_to_one=True`; both with
//! `timestep_spacing="leading"`, `steps_offset=0`, no thresholding), which is what LeRobot
//! 0.6.1's `DiffusionModel.conditional_sample` runs.
//!
//! Everything is precomputed by [`Scheduler::new`]; [`Scheduler::step`] is allocation-free
//! arithmetic on caller-owned buffers. Scalar coefficients are computed in f32 in the order
//! diffusers computes them on its f32 tensors, so a run fed LeRobot's recorded noise lands on
//! LeRobot's sample (within 1e-4 after 100 steps, `reflex-tools`' `lerobot_diffusion` tests).

pub use reflex_models::manifest::{
    BetaSchedule, PredictionType, SchedulerKind, SchedulerSpec, Variance,
};

/// Settings a scheduler cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    #[error("num_inference_steps = {steps} must be in 1..=num_train_timesteps = {train}")]
    Steps { steps: usize, train: usize },
}

/// A scheduler ready to run: betas, cumulative alphas and the inference timesteps.
#[derive(Debug, Clone)]
pub struct Scheduler {
    spec: SchedulerSpec,
    alphas_cumprod: Vec<f32>,
    /// Inference timesteps, descending.
    timesteps: Vec<usize>,
}

impl Scheduler {
    /// Precomputes the schedule (allocates; call once, off the hot path).
    pub fn new(spec: SchedulerSpec) -> Result<Self, SchedulerError> {
        let (n, k) = (spec.num_train_timesteps, spec.num_inference_steps);
        if k == 0 || k > n {
            return Err(SchedulerError::Steps { steps: k, train: n });
        }
        let betas = betas(&spec, n);
        // torch.cumprod on CPU accumulates f32 in a double accumulator (at::acc_type), rounding
        // each partial product to f32 on output.
        let mut acc = 1.0f64;
        let alphas_cumprod = betas
            .iter()
            .map(|&b| {
                acc *= f64::from(1.0f32 - b);
                acc as f32
            })
            .collect();
        // "leading" spacing: (arange(k) * (n // k)).round()[::-1].
        let ratio = n / k;
        let timesteps = (0..k).rev().map(|i| i * ratio).collect();
        Ok(Scheduler {
            spec,
            alphas_cumprod,
            timesteps,
        })
    }

    pub fn spec(&self) -> &SchedulerSpec {
        &self.spec
    }

    /// The timesteps of one inference, descending (the denoiser's `timestep` input).
    pub fn timesteps(&self) -> &[usize] {
        &self.timesteps
    }

    /// `alphas_cumprod[t]`, the forward process's cumulative signal fraction.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// Whether step `index` (into [`Scheduler::timesteps`]) draws noise: DDPM at every step
    /// whose timestep is above 0; DDIM (eta 0) never.
    pub fn needs_noise(&self, index: usize) -> bool {
        self.spec.kind == SchedulerKind::Ddpm && self.timesteps[index] > 0
    }

    /// One reverse step from the timestep at `index`: replaces `sample` (x_t) with x_{t-1} given
    /// the denoiser's `model_output` for it. `noise` (standard normal, same length) is read only
    /// when [`Scheduler::needs_noise`] is true. All slices have the sample's length.
    ///
    /// Allocation-free.
    pub fn step(&self, index: usize, model_output: &[f32], sample: &mut [f32], noise: &[f32]) {
        let t = self.timesteps[index];
        let a_t = self.alphas_cumprod[t];
        let a_prev = match self.timesteps.get(index + 1) {
            Some(&p) => self.alphas_cumprod[p],
            None => 1.0,
        };
        let beta_t = 1.0 - a_t;
        let (sqrt_a_t, sqrt_beta_t) = (a_t.sqrt(), beta_t.sqrt());
        let clip = self.spec.clip_sample.then_some(self.spec.clip_sample_range);
        let epsilon = self.spec.prediction_type == PredictionType::Epsilon;
        match self.spec.kind {
            SchedulerKind::Ddpm => {
                let beta_prev = 1.0 - a_prev;
                let alpha = a_t / a_prev;
                let beta = 1.0 - alpha;
                let c_orig = a_prev.sqrt() * beta / beta_t;
                let c_sample = alpha.sqrt() * beta_prev / beta_t;
                let sigma = (t > 0).then(|| (beta_prev / beta_t * beta).max(1e-20).sqrt());
                for i in 0..sample.len() {
                    let x = sample[i];
                    let mut x0 = if epsilon {
                        (x - sqrt_beta_t * model_output[i]) / sqrt_a_t
                    } else {
                        model_output[i]
                    };
                    if let Some(r) = clip {
                        x0 = x0.clamp(-r, r);
                    }
                    let mut prev = c_orig * x0 + c_sample * x;
                    if let Some(s) = sigma {
                        prev += s * noise[i];
                    }
                    sample[i] = prev;
                }
            }
            SchedulerKind::Ddim => {
                let sqrt_a_prev = a_prev.sqrt();
                let dir = (1.0 - a_prev).sqrt();
                for i in 0..sample.len() {
                    let x = sample[i];
                    let (mut x0, eps) = if epsilon {
                        let m = model_output[i];
                        ((x - sqrt_beta_t * m) / sqrt_a_t, m)
                    } else {
                        let x0 = model_output[i];
                        (x0, (x - sqrt_a_t * x0) / sqrt_beta_t)
                    };
                    if let Some(r) = clip {
                        x0 = x0.clamp(-r, r);
                    }
                    sample[i] = sqrt_a_prev * x0 + dir * eps;
                }
            }
        }
    }
}

/// The betas of `spec`'s schedule, f32 as diffusers stores them.
fn betas(spec: &SchedulerSpec, n: usize) -> Vec<f32> {
    match spec.beta_schedule {
        BetaSchedule::Linear => {
            // torch's CPU linspace: a float step, filled from both ends towards the middle.
            let (start, end) = (spec.beta_start as f32, spec.beta_end as f32);
            if n == 1 {
                return vec![start];
            }
            let step = (end - start) / (n - 1) as f32;
            let half = n / 2;
            (0..n)
                .map(|i| {
                    if i < half {
                        start + step * i as f32
                    } else {
                        end - step * (n - i - 1) as f32
                    }
                })
                .collect()
        }
        BetaSchedule::SquaredcosCapV2 => {
            let abar = |t: f64| {
                ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
                    .cos()
                    .powi(2)
            };
            (0..n)
                .map(|i| {
                    let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
                    (1.0 - abar(t2) / abar(t1)).min(0.999) as f32
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: SchedulerKind, k: usize) -> SchedulerSpec {
        SchedulerSpec {
            kind,
            num_train_timesteps: 100,
            num_inference_steps: k,
            beta_schedule: BetaSchedule::SquaredcosCapV2,
            beta_start: 1e-4,
            beta_end: 0.02,
            prediction_type: PredictionType::Epsilon,
            clip_sample: true,
            clip_sample_range: 1.0,
            variance: Variance::FixedSmall,
        }
    }

    #[test]
    fn leading_timesteps() {
        let s = Scheduler::new(spec(SchedulerKind::Ddim, 10)).unwrap();
        assert_eq!(s.timesteps(), &[90, 80, 70, 60, 50, 40, 30, 20, 10, 0]);
        let s = Scheduler::new(spec(SchedulerKind::Ddpm, 100)).unwrap();
        assert_eq!(s.timesteps().len(), 100);
        assert_eq!((s.timesteps()[0], s.timesteps()[99]), (99, 0));
        assert!(s.needs_noise(98) && !s.needs_noise(99));
    }

    #[test]
    fn zero_or_too_many_steps_are_refused() {
        assert_eq!(
            Scheduler::new(spec(SchedulerKind::Ddpm, 0)).unwrap_err(),
            SchedulerError::Steps {
                steps: 0,
                train: 100
            }
        );
        assert!(Scheduler::new(spec(SchedulerKind::Ddpm, 101)).is_err());
    }

    #[test]
    fn ddim_with_the_true_noise_recovers_a_clean_sample() {
        // x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; a perfect epsilon prediction must take one
        // DDIM step straight to x0 when the previous timestep is the end.
        let s = Scheduler::new(spec(SchedulerKind::Ddim, 1)).unwrap();
        let a = s.alphas_cumprod()[0];
        let (x0, eps) = ([0.3f32, -0.5], [1.2f32, -0.7]);
        let mut x: Vec<f32> = (0..2)
            .map(|i| a.sqrt() * x0[i] + (1.0 - a).sqrt() * eps[i])
            .collect();
        s.step(0, &eps, &mut x, &[0.0; 2]);
        for i in 0..2 {
            assert!((x[i] - x0[i]).abs() < 1e-5, "{x:?}");
        }
    }
}
