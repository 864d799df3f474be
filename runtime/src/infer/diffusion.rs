//! Diffusion Policy at run time (LeRobot's `DiffusionPolicy`, imported by
//! `reflex_tools::lerobot::diffusion` as an `encoder` and a `denoiser` graph):
//!
//! - [`scheduler`]: the DDPM and DDIM noise schedulers in Rust (beta schedules `linear` and
//!   `squaredcos_cap_v2`, `epsilon` and `sample` prediction, clipping, DDPM's `fixed_small`
//!   variance), allocation-free steps;
//! - [`policy`]: [`EncoderDenoiserPolicy`], the observation history, K denoiser calls per
//!   inference under a scheduler with seeded noise, every buffer preallocated, as a
//!   [`crate::infer::policy::Policy`].

pub mod policy;
pub mod scheduler;

pub use policy::{DiffusionIo, DiffusionTimings, EncoderDenoiserPolicy, NoiseSource, SeededNoise};
pub use scheduler::{
    BetaSchedule, PredictionType, Scheduler, SchedulerError, SchedulerKind, SchedulerSpec, Variance,
};
