//! The fixed-rate control loop: frames and state in, one safe command out per period.
//!
//! Each tick does the same bounded work: poll every camera and the state source (preprocessing a
//! new frame into its preallocated tensor), take a finished inference if one arrived and merge it
//! into the action plan, submit a new inference when one is due and the worker is free, then pick
//! the command for this tick and send it. Every command goes through the [`SafetyFilter`]; when
//! the policy has nothing fresh, the robot holds its last safe command; when that lasts for the
//! watchdog's number of periods, or a camera is lost, or on shutdown, it gets a stop command.
//!
//! Decisions, in priority order, for each tick:
//! 1. shutdown requested or a fatal fault -> stop; the e-stop ([`EStop`], when configured, polled
//!    first in every tick) tripped or not re-armed yet -> stop, no inference, and any inference
//!    that arrives is discarded;
//! 2. a camera reported its device gone (`Degraded`) -> stop (latched until frames return);
//! 3. a frame older than its camera's `max_age_ms`, or state older than `state.max_age_ms`
//!    -> hold (the stale observation is not used for inference either);
//! 4. the plan has an action for this tick -> filter and send it (a "fresh" command);
//! 5. otherwise hold; after the manifest's watchdog time (`watchdog_periods` periods of the
//!    bundle's rate, counted in this loop's ticks) without a fresh command -> stop.
//!
//! **When to infer.** A new inference is due when `steps_per_inference` chunk steps (converted to
//! ticks at the loop rate) have passed since the last one, or earlier, as soon as the plan left
//! is no longer than the measured inference latency, so that the next chunk arrives before the
//! current one is used up (the chunk threshold of LeRobot's asynchronous inference, here derived
//! from the latency rather than a fixed fraction). The latency estimate starts at the warm-up
//! inference's time and follows the ticks between each submission and its result, rising at once
//! and decaying by a quarter of the gap per result. With `steps_per_inference` = horizon (ACT's
//! `n_action_steps = chunk_size`) and a slow network, the plan thus never runs dry at a chunk
//! boundary as long as a chunk outlasts the latency (see [`crate::control::plan::feed_check`]).
//!
//! **The first chunk** is the warm-up inference's. It is taken at the first tick, like any chunk:
//! with latency compensation, anchored at its observation, so the steps for the time the
//! warm-up took are skipped (and counted in `skipped_steps`); without, it starts at that tick with
//! its step 0.
//!
//! When the e-stop is re-armed the loop starts over as after warm-up: the old plan is forgotten,
//! the safety filter is reseeded from the measured state (so the first command after the stop is
//! rate limited from where the robot is now, not from where it was commanded before the stop), a
//! new inference is due at once, results of inferences submitted before the re-arm are discarded,
//! and the robot holds until the new plan arrives (the watchdog counts from the re-arm).
//!
//! **Observation history.** A policy conditioned on several observations (Diffusion Policy's
//! `n_obs_steps`, [`Manifest::n_obs_steps`]) gets those of the last `n_obs_steps` ticks, as
//! LeRobot's `select_action` fills its observation queues once per control step: every tick with
//! a fresh, complete observation records it (the preprocessed images and the normalized state)
//! into a preallocated ring ([`ObservationHistory`]), and each request carries the ring's
//! contents, oldest first and this tick's last. At the start and after an e-stop re-arm the ring
//! is empty and fills again; until it holds `n_obs_steps` ticks the missing older steps repeat the
//! oldest recorded one (LeRobot's queues at an episode's first step hold copies of the first
//! observation). With `n_obs_steps = 1` nothing is recorded and requests carry the current
//! observation as before.
//!
//! The tick allocates nothing and formats no text (logs on fault transitions only), which the
//! counting-allocator test in `tests/` checks.

use crate::clock::Clock;
use crate::control::estop::{EStop, EStopStatus};
use crate::control::plan::ActionPlanner;
use crate::control::safety::{SafeCommand, SafetyError, SafetyFilter};
use crate::infer::runner::InferenceRunner;
use crate::io::{Camera, CommandSink, Fault, FaultKind, StateSource};
use crate::preprocess::Preprocessor;
use crate::timing::{Stage, StageTimings};
use reflex_models::manifest::{Affine, Manifest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The preprocessing spec does not fit the camera (names the camera itself).
    #[error(transparent)]
    Preprocess(#[from] crate::preprocess::PreprocessError),
    #[error(transparent)]
    Safety(#[from] SafetyError),
    #[error("{0}")]
    Config(String),
    #[error("fatal fault, robot stopped: {0}")]
    Fatal(String),
    #[error("warm-up: {0}")]
    WarmUp(String),
}

/// Every loop error ends the run; a preprocessing error keeps its own kind for callers that
/// look at it.
impl Fault for LoopError {
    fn kind(&self) -> FaultKind {
        match self {
            LoopError::Preprocess(e) => e.kind(),
            LoopError::Safety(_)
            | LoopError::Config(_)
            | LoopError::Fatal(_)
            | LoopError::WarmUp(_) => FaultKind::Fatal,
        }
    }
}

/// Options that override or complement the bundle.
#[derive(Debug, Clone, Default)]
pub struct LoopOptions {
    /// Control rate; `None` = the bundle's.
    pub rate_hz: Option<f64>,
    /// Run a bundle that has no action limits (explicit opt-out).
    pub allow_unlimited: bool,
}

/// What the tick sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandKind {
    /// Derived from the policy's plan for this tick, after the safety filter.
    Fresh,
    /// Last safe command repeated.
    Hold,
    Stop,
    /// Nothing could be sent (no safe command existed yet and stop failed to send).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    None,
    StaleFrame,
    StaleState,
    PlanExhausted,
    Rejected,
    CameraLost,
    Watchdog,
    Shutdown,
    /// The e-stop is pressed, or was released and not re-armed yet.
    EStop,
}

#[derive(Debug, Clone, Copy)]
pub struct TickReport {
    pub tick: u64,
    pub kind: CommandKind,
    pub reason: HoldReason,
    pub inference_submitted: bool,
    pub chunk_received: bool,
}

/// The loop's hook for a supervisor. Every method is infallible to the loop: a supervisor that
/// cannot be told is counted, never a reason to stop the robot's loop.
pub trait LoopNotifier: Send {
    /// Warm-up done, the first tick is next.
    fn ready(&mut self, counters: &LoopCounters);
    /// A tick completed at `now_ns` (loop clock). Called on the hot path: must not allocate.
    fn tick(&mut self, now_ns: u64, counters: &LoopCounters);
    /// The loop is stopping (shutdown).
    fn stopping(&mut self);
}

/// Event counters, reported at exit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoopCounters {
    pub ticks: u64,
    pub fresh: u64,
    pub holds: u64,
    pub stops: u64,
    pub inferences: u64,
    pub inference_errors: u64,
    /// A new inference was due while the previous one was still running (skipped, counted once
    /// per late request).
    pub overruns: u64,
    /// Chunk steps never sent because their time had already passed when the chunk was taken
    /// (latency compensation), the warm-up chunk included.
    pub skipped_steps: u64,
    pub stale_frame_ticks: u64,
    pub stale_state_ticks: u64,
    pub frames: u64,
    pub camera_errors: u64,
    pub state_errors: u64,
    pub sink_errors: u64,
    pub watchdog_trips: u64,
    pub rejected_nonfinite: u64,
    /// Ticks that started later than one period after the previous one.
    pub missed_deadlines: u64,
    /// Ticks stopped by the e-stop (tripped, or released and not re-armed yet).
    pub estop_ticks: u64,
}

/// Control tick index of time `t_ns`, tick 0 being at `t0` (rounded to the nearest tick).
fn tick_index(t0: Option<u64>, period_ns: u64, t_ns: u64) -> u64 {
    let t0 = t0.unwrap_or(t_ns);
    (t_ns.saturating_sub(t0) + period_ns / 2) / period_ns
}

struct CameraSlot<C> {
    cam: C,
    pre: Preprocessor,
    tensor: Vec<f32>,
    capture_ns: Option<u64>,
    max_age_ns: u64,
    lost: bool,
}

/// `dst[i] = norm[i].normalize(raw[i])`: the raw state in the bundle's normalization.
fn normalize_state(dst: &mut [f32], raw: &[f32], norm: &[Affine]) {
    for ((d, r), a) in dst.iter_mut().zip(raw).zip(norm) {
        *d = a.normalize(*r);
    }
}

/// The observations of the last `steps` ticks (preprocessed images per camera, normalized
/// state), in preallocated ring buffers; see the module documentation.
#[derive(Debug)]
pub struct ObservationHistory {
    steps: usize,
    /// Per camera, `steps` images of `image_lens[cam]` values.
    images: Vec<Vec<f32>>,
    image_lens: Vec<usize>,
    /// `steps` normalized state vectors of `state_len` values.
    state: Vec<f32>,
    state_len: usize,
    /// Ring slot of the next record.
    head: usize,
    /// Recorded observations, at most `steps`.
    len: usize,
}

impl ObservationHistory {
    /// Rings for `steps` observations of the given image and state sizes.
    pub fn new(steps: usize, image_lens: &[usize], state_len: usize) -> Self {
        let steps = steps.max(1);
        ObservationHistory {
            steps,
            images: image_lens.iter().map(|&n| vec![0.0; n * steps]).collect(),
            image_lens: image_lens.to_vec(),
            state: vec![0.0; state_len * steps],
            state_len,
            head: 0,
            len: 0,
        }
    }

    /// Observations a request carries (the current one included).
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Observations recorded since the start or the last [`ObservationHistory::clear`], at most
    /// [`ObservationHistory::steps`].
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every recorded observation (a new episode).
    pub fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    /// Records one tick's observation: each camera's tensor (in the order and sizes given at
    /// construction) and the state, normalized. Overwrites the oldest when full.
    pub fn record<'a>(
        &mut self,
        images: impl Iterator<Item = &'a [f32]>,
        state_raw: &[f32],
        state_norm: &[Affine],
    ) {
        let h = self.head;
        for ((ring, &n), img) in self.images.iter_mut().zip(&self.image_lens).zip(images) {
            ring[h * n..(h + 1) * n].copy_from_slice(img);
        }
        let sd = self.state_len;
        normalize_state(&mut self.state[h * sd..(h + 1) * sd], state_raw, state_norm);
        self.head = (h + 1) % self.steps;
        self.len = (self.len + 1).min(self.steps);
    }

    /// Ring slot of request step `k` (`0..steps`, oldest first): the missing older steps of a
    /// history not yet full repeat the oldest recorded observation.
    fn slot(&self, k: usize) -> usize {
        let n = self.steps;
        let missing = n - self.len.max(1);
        let j = k.saturating_sub(missing);
        (self.head + n - self.len.max(1) + j) % n
    }

    /// Writes the history into `images` (per camera, `steps` images, oldest first) and `state`
    /// (`steps` vectors). Must follow at least one [`ObservationHistory::record`].
    pub fn write(&self, images: &mut [Vec<f32>], state: &mut [f32]) {
        for k in 0..self.steps {
            let s = self.slot(k);
            for ((dst, ring), &n) in images.iter_mut().zip(&self.images).zip(&self.image_lens) {
                dst[k * n..(k + 1) * n].copy_from_slice(&ring[s * n..(s + 1) * n]);
            }
            let sd = self.state_len;
            state[k * sd..(k + 1) * sd].copy_from_slice(&self.state[s * sd..(s + 1) * sd]);
        }
    }
}

pub struct ControlLoop<C: Camera, S: StateSource, K: CommandSink, R: InferenceRunner> {
    cameras: Vec<CameraSlot<C>>,
    state_src: S,
    state_raw: Vec<f32>,
    state_ns: Option<u64>,
    state_max_age_ns: u64,
    /// Normalization per state dimension.
    state_norm: Vec<Affine>,
    /// The last ticks' observations, for a policy with history (`None`: one observation).
    history: Option<ObservationHistory>,
    sink: K,
    runner: R,
    planner: ActionPlanner,
    filter: SafetyFilter,
    period_ns: u64,
    t0_ns: Option<u64>,
    last_tick: Option<u64>,
    last_tick_start: Option<u64>,
    last_submit_tick: Option<u64>,
    overrun_counted: bool,
    last_fresh_tick: Option<u64>,
    /// Estimated ticks from submitting an inference to taking its result (see the module doc).
    latency_ticks: u64,
    latency_compensation: bool,
    /// The manifest's watchdog time in ticks of this loop's rate.
    watchdog_ticks: u64,
    /// Capture time of the observation behind the current plan.
    plan_obs_ns: Option<u64>,
    stopped: bool,
    estop: Option<EStop>,
    /// The tick of the last e-stop re-arm: results of inferences submitted before it are stale.
    rearm_tick: Option<u64>,
    /// The supervisor told about warm-up, every completed tick and shutdown (systemd's watchdog).
    notifier: Option<Box<dyn LoopNotifier>>,
    /// For each action dimension, the state dimension of the same name (rate limiter seeding).
    seed_map: Vec<Option<usize>>,
    /// The seed's buffer, one value per action dimension.
    seed_buf: Vec<f32>,
    pub counters: LoopCounters,
    pub timings: StageTimings,
}

impl<C: Camera, S: StateSource, K: CommandSink, R: InferenceRunner> ControlLoop<C, S, K, R> {
    /// Builds the loop for a bundle's manifest. `cameras` are in the manifest's camera order.
    pub fn new(
        manifest: &Manifest,
        cameras: Vec<C>,
        state_src: S,
        sink: K,
        runner: R,
        opts: &LoopOptions,
    ) -> Result<Self, LoopError> {
        if cameras.len() != manifest.cameras.len() {
            return Err(LoopError::Config(format!(
                "the bundle has {} camera(s) ({}), {} given",
                manifest.cameras.len(),
                manifest
                    .cameras
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                cameras.len()
            )));
        }
        let rate = opts.rate_hz.unwrap_or(manifest.control.rate_hz);
        if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
            return Err(LoopError::Config(format!(
                "control rate {rate} Hz out of (0, 1000]"
            )));
        }
        let mut slots = Vec::with_capacity(cameras.len());
        for (cam, spec) in cameras.into_iter().zip(&manifest.cameras) {
            let pre = Preprocessor::new(spec)?;
            let n = pre.output_len();
            slots.push(CameraSlot {
                cam,
                pre,
                tensor: vec![0.0; n],
                capture_ns: None,
                max_age_ns: spec.max_age_ms as u64 * 1_000_000,
                lost: false,
            });
        }
        let sd = manifest.state.names.len();
        let state_norm = (0..sd)
            .map(|i| manifest.state.normalization.affine(i))
            .collect();
        let history = (manifest.n_obs_steps() > 1).then(|| {
            let lens: Vec<usize> = slots.iter().map(|s| s.tensor.len()).collect();
            ObservationHistory::new(manifest.n_obs_steps(), &lens, sd)
        });
        let filter = SafetyFilter::new(&manifest.action, rate, opts.allow_unlimited)?;
        let seed_map = manifest.action_state_indices();
        let planner = ActionPlanner::new(&manifest.action, &manifest.control, rate);
        let chunk_rate = manifest.control.chunk_rate();
        if manifest.action.output.horizon() > 1 && (chunk_rate - rate).abs() > 1e-9 * rate {
            log::info!(
                "chunk steps at {chunk_rate} Hz, loop at {rate} Hz: {:.2} tick(s) per step, \
                 interpolated (same speed as trained); re-planning every {} tick(s)",
                planner.ticks_per_step(),
                planner.replan_ticks()
            );
        }
        Ok(ControlLoop {
            cameras: slots,
            state_src,
            state_raw: vec![0.0; sd],
            state_ns: None,
            state_max_age_ns: manifest.state.max_age_ms as u64 * 1_000_000,
            state_norm,
            history,
            sink,
            runner,
            planner,
            filter,
            period_ns: (1e9 / rate).round() as u64,
            t0_ns: None,
            last_tick: None,
            last_tick_start: None,
            last_submit_tick: None,
            overrun_counted: false,
            last_fresh_tick: None,
            latency_ticks: 0,
            latency_compensation: manifest.control.latency_compensation,
            watchdog_ticks: manifest.control.watchdog_ticks(rate),
            plan_obs_ns: None,
            stopped: false,
            estop: None,
            rearm_tick: None,
            notifier: None,
            seed_buf: vec![0.0; seed_map.len()],
            seed_map,
            counters: LoopCounters::default(),
            timings: StageTimings::new(),
        })
    }

    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }
    pub fn sink(&self) -> &K {
        &self.sink
    }
    pub fn sink_mut(&mut self) -> &mut K {
        &mut self.sink
    }
    pub fn runner_mut(&mut self) -> &mut R {
        &mut self.runner
    }
    pub fn filter(&self) -> &SafetyFilter {
        &self.filter
    }

    /// Adds an e-stop: polled first in every tick; while it is not armed the loop sends stop
    /// commands and runs no inference (see the module documentation for the re-arm).
    pub fn with_estop(mut self, estop: EStop) -> Self {
        self.estop = Some(estop);
        self
    }

    /// Adds a supervisor hook ([`LoopNotifier`]): `ready` after warm-up, `tick` at the end of
    /// every tick that completed (so a stalled tick stops feeding systemd's watchdog),
    /// `stopping` at shutdown.
    pub fn with_notifier(mut self, notifier: Box<dyn LoopNotifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// The e-stop, if one was added (its state and counters, for reports).
    pub fn estop(&self) -> Option<&EStop> {
        self.estop.as_ref()
    }

    /// Seeds the safety filter's rate limiter with a reference command (e.g. measured joint
    /// positions), so the first command cannot jump.
    pub fn seed(&mut self, reference: &[f32]) {
        self.filter.seed(reference);
    }

    /// Control tick index for a time on the loop clock.
    fn tick_of(&self, t_ns: u64) -> u64 {
        tick_index(self.t0_ns, self.period_ns, t_ns)
    }

    fn poll_inputs(&mut self, now_ns: u64) -> Result<(), LoopError> {
        for slot in &mut self.cameras {
            let t = Instant::now();
            let r = slot.cam.latest(now_ns, now_ns + self.period_ns / 4);
            self.timings
                .record(Stage::CaptureWait, t.elapsed().as_nanos() as u64);
            match r {
                Ok(Some(frame)) => {
                    let t = Instant::now();
                    let m = frame.meta;
                    if let Err(e) =
                        slot.pre
                            .run(frame.data, m.width, m.height, m.format, &mut slot.tensor)
                    {
                        // A corrupt JPEG or a short frame loses this frame only; a frame of the
                        // wrong size or format means the camera is not the one the policy was
                        // trained with: never silently resized, the run stops.
                        self.counters.camera_errors += 1;
                        match e.kind() {
                            FaultKind::Fatal => return Err(e.into()),
                            _ => {
                                log::trace!("{e}");
                                continue;
                            }
                        }
                    }
                    self.timings
                        .record(Stage::Preprocess, t.elapsed().as_nanos() as u64);
                    slot.capture_ns = Some(m.capture_ns);
                    self.counters.frames += 1;
                    if slot.lost {
                        log::info!("camera `{}`: frames are back", slot.cam.name());
                        slot.lost = false;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    self.counters.camera_errors += 1;
                    match e.kind {
                        FaultKind::Transient => log::trace!("{e}"),
                        FaultKind::Degraded => {
                            if !slot.lost {
                                log::error!("{e}; stopping the robot until it returns");
                            }
                            slot.lost = true;
                            slot.capture_ns = None;
                        }
                        FaultKind::Fatal => return Err(LoopError::Fatal(e.to_string())),
                    }
                }
            }
        }
        match self.state_src.latest(now_ns, &mut self.state_raw) {
            Ok(Some(ts)) => self.state_ns = Some(ts),
            Ok(None) => {}
            Err(e) => {
                self.counters.state_errors += 1;
                match e.kind {
                    FaultKind::Fatal => return Err(LoopError::Fatal(e.to_string())),
                    _ => log::trace!("{e}"),
                }
            }
        }
        Ok(())
    }

    fn frames_fresh(&self, now_ns: u64) -> bool {
        self.cameras.iter().all(|s| {
            s.capture_ns
                .is_some_and(|c| now_ns.saturating_sub(c) <= s.max_age_ns)
        })
    }

    fn state_fresh(&self, now_ns: u64) -> bool {
        self.state_raw.is_empty()
            || self
                .state_ns
                .is_some_and(|c| now_ns.saturating_sub(c) <= self.state_max_age_ns)
    }

    /// Seeds the safety filter's rate limiter from the measured state, for the action dimensions
    /// that share a name with a state dimension (all of them must, else it is not seeded).
    /// Allocates nothing. Returns whether it seeded.
    fn seed_from_state(&mut self) -> bool {
        if self.state_ns.is_none() {
            return false;
        }
        let mut any = false;
        for (dst, src) in self.seed_buf.iter_mut().zip(&self.seed_map) {
            *dst = match src {
                Some(j) => {
                    any = true;
                    self.state_raw[*j]
                }
                None => f32::NAN,
            };
        }
        if any && self.seed_buf.iter().all(|v| v.is_finite()) {
            self.filter.seed(&self.seed_buf)
        } else {
            if any {
                log::warn!("only some action names match state names; rate limiter not seeded");
            }
            false
        }
    }

    /// Records this tick's observation into the history (a policy with history only).
    fn record_observation(&mut self) {
        if let Some(h) = &mut self.history {
            h.record(
                self.cameras.iter().map(|s| s.tensor.as_slice()),
                &self.state_raw,
                &self.state_norm,
            );
        }
    }

    /// The observation history, for a policy with history.
    pub fn history(&self) -> Option<&ObservationHistory> {
        self.history.as_ref()
    }

    /// The e-stop was re-armed at `tick`: start over as after warm-up (see the module doc).
    fn rearm(&mut self, tick: u64, now_ns: u64) {
        self.planner.reset();
        if let Some(h) = &mut self.history {
            h.clear();
        }
        self.plan_obs_ns = None;
        if self.state_fresh(now_ns) && !self.seed_from_state() {
            // The filter keeps its last command (the stop position) as the reference.
            log::debug!("e-stop re-armed without a state seed");
        }
        self.last_submit_tick = None;
        self.overrun_counted = false;
        self.last_fresh_tick = Some(tick);
        self.rearm_tick = Some(tick);
    }

    /// Takes a finished inference, if any, into the plan. With `discard`, or when it was
    /// submitted before the last e-stop re-arm, the result is dropped unread.
    fn take_result(&mut self, tick: u64, discard: bool) -> bool {
        let t = Instant::now();
        let (t0, period) = (self.t0_ns, self.period_ns);
        let rearm_tick = self.rearm_tick;
        let Some(req) = self.runner.poll() else {
            return false;
        };
        let mut received = false;
        if discard || rearm_tick.is_some_and(|r| req.submit_tick < r) {
            log::trace!("inference result discarded (e-stop)");
        } else if let Some(e) = &req.error {
            self.counters.inference_errors += 1;
            log::warn!("{e}");
        } else if req.output.iter().any(|v| !v.is_finite()) {
            // A network producing NaN is rejected as a whole chunk: nothing of it is executed.
            self.counters.rejected_nonfinite += 1;
            self.counters.inferences += 1;
        } else {
            let first = if self.latency_compensation {
                tick_index(t0, period, req.obs_ns).min(tick)
            } else {
                tick
            };
            let skipped = self.planner.push_chunk(&req.output, first, tick);
            self.counters.skipped_steps += skipped as u64;
            // Latency estimate: up at once, down by a quarter of the gap per result.
            let sample = tick.saturating_sub(req.submit_tick);
            self.latency_ticks = if sample >= self.latency_ticks {
                sample
            } else {
                self.latency_ticks - (self.latency_ticks - sample).div_ceil(4)
            };
            self.counters.inferences += 1;
            self.plan_obs_ns = Some(req.obs_ns);
            self.timings.record(Stage::Inference, req.infer_ns);
            if let Some(d) = req.diffusion {
                self.timings
                    .record(Stage::Encoder, d.encoder.as_nanos() as u64);
                self.timings
                    .record(Stage::DenoiserStep, d.per_denoiser_step().as_nanos() as u64);
            }
            received = true;
        }
        self.runner.release();
        self.timings
            .record(Stage::PostProcess, t.elapsed().as_nanos() as u64);
        received
    }

    fn submit(&mut self, tick: u64) -> Result<bool, LoopError> {
        let Some(req) = self.runner.slot() else {
            return Ok(false);
        };
        let mut obs = u64::MAX;
        for slot in &self.cameras {
            obs = obs.min(slot.capture_ns.unwrap_or(0));
        }
        if let Some(s) = self.state_ns {
            obs = obs.min(s);
        }
        match &self.history {
            Some(h) if req.obs_steps == h.steps() && !h.is_empty() => {
                h.write(&mut req.images, &mut req.state);
            }
            _ => {
                // One observation (a request without history gets the current one only).
                let n = req.obs_steps.max(1);
                for (dst, slot) in req.images.iter_mut().zip(&self.cameras) {
                    let len = slot.tensor.len();
                    for k in 0..n {
                        dst[k * len..(k + 1) * len].copy_from_slice(&slot.tensor);
                    }
                }
                let sd = self.state_raw.len();
                for k in 0..n {
                    normalize_state(
                        &mut req.state[k * sd..(k + 1) * sd],
                        &self.state_raw,
                        &self.state_norm,
                    );
                }
            }
        }
        req.obs_ns = obs;
        req.submit_tick = tick;
        self.runner
            .submit()
            .map_err(|e| LoopError::Fatal(e.to_string()))?;
        self.last_submit_tick = Some(tick);
        self.overrun_counted = false;
        Ok(true)
    }

    fn send(&mut self, cmd: &SafeCommand, now_ns: u64) -> Result<(), LoopError> {
        let t = Instant::now();
        let r = self.sink.send(cmd, now_ns);
        self.timings
            .record(Stage::Send, t.elapsed().as_nanos() as u64);
        if let Err(e) = r {
            self.counters.sink_errors += 1;
            match e.kind {
                FaultKind::Fatal => return Err(LoopError::Fatal(e.to_string())),
                _ => log::trace!("{e}"),
            }
        }
        Ok(())
    }

    /// One control period's work at time `now_ns`.
    pub fn tick(&mut self, now_ns: u64) -> Result<TickReport, LoopError> {
        let tick_start = Instant::now();
        if self.t0_ns.is_none() {
            self.t0_ns = Some(now_ns);
        }
        let mut tick = self.tick_of(now_ns);
        if let Some(last) = self.last_tick {
            if tick <= last {
                tick = last + 1;
            }
        }
        if let Some(prev) = self.last_tick_start {
            let d = now_ns.saturating_sub(prev);
            self.timings.record(Stage::Period, d);
            if d > self.period_ns + self.period_ns / 2 {
                self.counters.missed_deadlines += 1;
            }
        }
        self.last_tick_start = Some(now_ns);
        self.last_tick = Some(tick);
        self.counters.ticks += 1;

        let estop = match &mut self.estop {
            Some(e) => e.poll(now_ns),
            None => EStopStatus::Run,
        };
        let estopped = estop == EStopStatus::Stopped;

        self.poll_inputs(now_ns)?;
        let camera_lost = self.cameras.iter().any(|s| s.lost);
        let frames_fresh = self.frames_fresh(now_ns);
        let state_fresh = self.state_fresh(now_ns);
        if estop == EStopStatus::Rearmed {
            self.rearm(tick, now_ns);
        }
        if frames_fresh && state_fresh && !camera_lost {
            self.record_observation();
        }

        let mut chunk_received = self.take_result(tick, estopped);
        // Due by the configured interval, or because the plan runs out (the overrun rule), or
        // because what is left of the plan is no longer than an inference takes (the feed rule).
        let remaining = self.planner.remaining(tick) as u64;
        let (due, overdue) = match self.last_submit_tick {
            None => (true, true),
            Some(last) => {
                let overdue =
                    tick.saturating_sub(last) >= self.planner.replan_ticks() || remaining == 0;
                (overdue || remaining <= self.latency_ticks, overdue)
            }
        };
        let mut submitted = false;
        if due && frames_fresh && state_fresh && !camera_lost && !self.stopped && !estopped {
            if self.runner.in_flight() {
                // The feed rule alone is no overrun: the chunk in flight is what it waits for.
                if overdue && !self.overrun_counted {
                    self.counters.overruns += 1;
                    self.overrun_counted = true;
                }
            } else {
                submitted = self.submit(tick)?;
                // An inline runner finishes at submit: take its result in this same tick.
                chunk_received |= self.take_result(tick, false);
            }
        }

        let t = Instant::now();
        let (cmd, kind, reason) = if self.stopped {
            (
                self.filter.stop(tick),
                CommandKind::Stop,
                HoldReason::Shutdown,
            )
        } else if estopped {
            self.counters.estop_ticks += 1;
            (self.filter.stop(tick), CommandKind::Stop, HoldReason::EStop)
        } else if camera_lost {
            (
                self.filter.stop(tick),
                CommandKind::Stop,
                HoldReason::CameraLost,
            )
        } else {
            let stale = if !frames_fresh {
                self.counters.stale_frame_ticks += 1;
                Some(HoldReason::StaleFrame)
            } else if !state_fresh {
                self.counters.stale_state_ticks += 1;
                Some(HoldReason::StaleState)
            } else {
                None
            };
            let mut fresh = None;
            let mut reason = stale.unwrap_or(HoldReason::PlanExhausted);
            if stale.is_none() {
                if let Some(a) = self.planner.action_at(tick) {
                    let f = self.filter.filter(a, tick);
                    if f.outcome.rejected() {
                        self.counters.rejected_nonfinite += 1;
                        reason = HoldReason::Rejected;
                    } else {
                        fresh = Some(f.command);
                    }
                }
            }
            match fresh {
                Some(c) => {
                    self.last_fresh_tick = Some(tick);
                    (c, CommandKind::Fresh, HoldReason::None)
                }
                None => {
                    let since = self.last_fresh_tick.map_or(u64::MAX, |f| tick - f);
                    if since >= self.watchdog_ticks {
                        if since == self.watchdog_ticks {
                            self.counters.watchdog_trips += 1;
                            log::warn!("watchdog: no fresh command for {since} ticks, stopping");
                        }
                        (
                            self.filter.stop(tick),
                            CommandKind::Stop,
                            HoldReason::Watchdog,
                        )
                    } else {
                        match self.filter.hold(tick) {
                            Some(h) => (h, CommandKind::Hold, reason),
                            None => (self.filter.stop(tick), CommandKind::Stop, reason),
                        }
                    }
                }
            }
        };
        self.timings
            .record(Stage::PostProcess, t.elapsed().as_nanos() as u64);
        match kind {
            CommandKind::Fresh => self.counters.fresh += 1,
            CommandKind::Hold => self.counters.holds += 1,
            CommandKind::Stop => self.counters.stops += 1,
            CommandKind::None => {}
        }
        self.send(&cmd, now_ns)?;
        if kind == CommandKind::Fresh && chunk_received {
            if let Some(obs) = self.plan_obs_ns {
                // `now_ns` is the tick's start on the loop clock; add the real time spent since.
                let spent = tick_start.elapsed().as_nanos() as u64;
                self.timings
                    .record(Stage::EndToEnd, (now_ns + spent).saturating_sub(obs));
            }
        }
        self.timings
            .record(Stage::Tick, tick_start.elapsed().as_nanos() as u64);
        if let Some(n) = &mut self.notifier {
            n.tick(now_ns, &self.counters);
        }
        Ok(TickReport {
            tick,
            kind,
            reason,
            inference_submitted: submitted,
            chunk_received,
        })
    }

    /// Starts the statistics afresh: stage timings, counters and the tick the next period is
    /// measured from. A measurement (`reflex bench`) calls it after its warm-up ticks, so that
    /// only the ticks it times count, the first timed tick's period included. Allocates the new
    /// histograms: not for the tick.
    pub fn reset_statistics(&mut self) {
        self.timings = StageTimings::new();
        self.counters = LoopCounters::default();
        self.last_tick_start = None;
    }

    /// Waits (on `clock`) until every camera and the state source have delivered, runs the first
    /// inference to completion, and seeds the safety filter from the measured state for action
    /// dimensions that share a name with a state dimension. Returns the first inference's time.
    pub fn warm_up(&mut self, clock: &impl Clock, timeout_ns: u64) -> Result<u64, LoopError> {
        let start = clock.now_ns();
        loop {
            let now = clock.now_ns();
            self.poll_inputs(now)?;
            if self.frames_fresh(now) && self.state_fresh(now) {
                break;
            }
            if now - start > timeout_ns {
                let missing: Vec<&str> = self
                    .cameras
                    .iter()
                    .filter(|s| s.capture_ns.is_none())
                    .map(|s| s.cam.name())
                    .collect();
                return Err(LoopError::WarmUp(format!(
                    "no fresh observation within {} ms (cameras without frames: {:?}, state fresh: {})",
                    timeout_ns / 1_000_000,
                    missing,
                    self.state_fresh(now)
                )));
            }
            clock.sleep_until(now + 2_000_000);
        }
        // Seed the rate limiter from measured joint positions where names match.
        self.seed_from_state();
        let now = clock.now_ns();
        self.t0_ns = Some(now);
        self.record_observation();
        self.submit(0)?;
        let req = self
            .runner
            .wait()
            .ok_or_else(|| LoopError::WarmUp("inference worker exited".into()))?;
        if let Some(e) = &req.error {
            return Err(LoopError::WarmUp(e.to_string()));
        }
        let infer_ns = req.infer_ns;
        // The result stays in the runner: the first tick takes it as the first plan, anchored
        // like any later chunk (at its observation with latency compensation, at that tick
        // without), so no step is lost uncounted while the warm-up ran.
        self.latency_ticks = infer_ns.div_ceil(self.period_ns);
        self.last_submit_tick = Some(0);
        if let Some(n) = &mut self.notifier {
            n.ready(&self.counters);
        }
        Ok(infer_ns)
    }

    /// Runs at the control rate until `stop` is set or `max_ticks` ticks ran, then sends the stop
    /// command and flushes the sink.
    pub fn run(
        &mut self,
        clock: &impl Clock,
        stop: &AtomicBool,
        max_ticks: Option<u64>,
    ) -> Result<(), LoopError> {
        let start = clock.now_ns();
        let mut n = 0u64;
        let result = loop {
            if stop.load(Ordering::Relaxed) || max_ticks.is_some_and(|m| n >= m) {
                break Ok(());
            }
            let now = clock.now_ns();
            if let Err(e) = self.tick(now) {
                break Err(e);
            }
            n += 1;
            clock.sleep_until(start + n * self.period_ns);
        };
        let now = clock.now_ns();
        self.shutdown(now);
        result
    }

    /// Sends the stop command (also after a fatal error) and flushes the sink.
    pub fn shutdown(&mut self, now_ns: u64) {
        self.stopped = true;
        if let Some(n) = &mut self.notifier {
            n.stopping();
        }
        let tick = self.last_tick.map_or(0, |t| t + 1);
        let cmd = self.filter.stop(tick);
        self.counters.stops += 1;
        if let Err(e) = self.sink.send(&cmd, now_ns) {
            log::error!("could not send the stop command: {e}");
        }
        if let Err(e) = self.sink.flush() {
            log::error!("{e}");
        }
    }
}
