//! From raw network output to one action per control tick.
//!
//! Inference is slower than control and its results arrive late: a chunk policy (ACT, Diffusion
//! Policy) predicts `horizon` future actions from an observation that was already some
//! milliseconds old when inference started. The planner keeps a *schedule* indexed by absolute
//! control tick, so that each prediction lands on the tick it was made for, whenever it arrives:
//!
//! - The caller says which tick a chunk's step 0 belongs to (`first_tick`). With latency
//!   compensation that is the tick of the observation's capture, so the steps for time already
//!   spent (observation age + inference) fall in the past and are skipped instead of replayed
//!   late; without it, it is the current tick.
//! - Without temporal ensembling the newest chunk wins: it replaces the schedule from its first
//!   (non-skipped) step on.
//! - With ACT's temporal ensembling (`temporal_ensemble_m = Some(m)`), each tick's action is the
//!   weighted mean of every prediction made for it, weight `exp(-m * i)` with `i = 0` for the
//!   oldest prediction. Weights are accumulated as predictions arrive (the n-th prediction for a
//!   tick gets `exp(-m * n)`), so nothing is re-weighted and no history is kept per tick beyond a
//!   running sum.
//!
//! The schedule is a ring of `horizon + steps_per_inference + slack` ticks (steps converted to
//! ticks at the loop rate) allocated once, each
//! slot tagged with its tick: old ticks are overwritten rather than removed, a slot whose tag is
//! not the asked tick is "not planned", and arbitrary gaps between chunks need no special case.
//! Pushing a chunk and reading an action never allocate.
//!
//! **Chunks are timed in seconds, not ticks.** Step `k` of a chunk is the action for `k` chunk
//! periods (`1 / control.chunk_rate_hz`, the training data's control period) after its step 0,
//! whatever rate the loop runs at. The planner resamples each chunk onto the loop's ticks as it
//! arrives: tick `n` reads the chunk at `s = (n - first_tick) * chunk_rate / loop_rate` steps,
//! linearly interpolated between steps `floor(s)` and `floor(s) + 1`; the last step is held for
//! its own period (`s` in `[horizon - 1, horizon)`), as the training robot held it. At the
//! training rate `s` is a whole number and every step is sent as it is, one per tick. So a chunk
//! lasts `horizon / chunk_rate` seconds at any loop rate and the robot moves at its trained speed
//! (a 20 Hz policy at `--rate 50` gets 2.5 ticks per step, not one).
//!
//! **Keeping the plan fed.** An inference takes some ticks; the loop (see `control_loop`) submits
//! the next one early enough that its chunk arrives before the current plan is used up, from the
//! measured latency, and [`feed_check`] tells beforehand (`reflex check`, `reflex bench`) whether
//! a bundle's settings can keep the plan fed at a given latency at all.
//!
//! Values are unnormalized here (with the manifest's per-dimension [`Affine`] map, the training
//! framework's formula), so everything downstream, the safety filter first, works in physical
//! units. Interpolation between chunk steps happens in physical units. A NaN from
//! the network is passed through as NaN: the safety filter rejects it as a whole.

use reflex_models::manifest::{ActionSpec, Affine, ControlSpec};

/// Ticks of margin in the ring beyond `horizon + steps_per_inference`, for chunks whose first
/// step is slightly ahead of the current tick.
const SLACK: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Slot {
    tick: u64,
    /// Predictions merged into this slot; 0 = empty.
    count: u32,
    /// Sum of the weights of those predictions.
    weight: f64,
}

const EMPTY: Slot = Slot {
    tick: 0,
    count: 0,
    weight: 0.0,
};

/// The per-tick action schedule of one policy. See the module documentation.
#[derive(Debug, Clone)]
pub struct ActionPlanner {
    dim: usize,
    horizon: usize,
    /// Chunk steps per loop tick: `chunk_rate / loop_rate` (1 at the training rate).
    steps_per_tick: f64,
    /// Loop ticks per chunk step.
    ticks_per_step: f64,
    /// `steps_per_inference` in loop ticks (at least 1).
    replan_ticks: u64,
    norm: Vec<Affine>,
    ensemble_m: Option<f64>,
    slots: Vec<Slot>,
    /// `slots.len() * dim` weighted sums, physical units, row per slot.
    sums: Vec<f64>,
    /// The action returned by `action_at`.
    out: Vec<f32>,
}

impl ActionPlanner {
    /// Allocates the schedule for `action` at `control`, for a loop running at `loop_rate_hz`
    /// (the bundle's `control.rate_hz` or a `--rate` override; the chunk's own step rate is
    /// [`ControlSpec::chunk_rate`]). Expects a validated manifest (as `Bundle::load` leaves it):
    /// normalization vectors of the action's dimension with finite, non-zero scales, and finite
    /// positive rates (a rate that is not falls back to one step per tick).
    pub fn new(action: &ActionSpec, control: &ControlSpec, loop_rate_hz: f64) -> Self {
        let dim = action.names.len();
        let horizon = action.output.horizon();
        let norm = (0..dim).map(|i| action.normalization.affine(i)).collect();
        let chunk_rate = control.chunk_rate();
        let steps_per_tick = chunk_rate / loop_rate_hz;
        let steps_per_tick = if steps_per_tick.is_finite() && steps_per_tick > 0.0 {
            steps_per_tick
        } else {
            1.0
        };
        let ticks_per_step = 1.0 / steps_per_tick;
        let ticks = |steps: usize| (steps as f64 * ticks_per_step - 1e-9).ceil().max(1.0) as usize;
        let cap = ticks(horizon) + ticks(control.steps_per_inference) + SLACK;
        let replan_ticks = (control.steps_per_inference as f64 * ticks_per_step)
            .round()
            .max(1.0) as u64;
        Self {
            dim,
            horizon,
            steps_per_tick,
            ticks_per_step,
            replan_ticks,
            norm,
            ensemble_m: control.temporal_ensemble_m,
            slots: vec![EMPTY; cap],
            sums: vec![0.0; cap * dim],
            out: vec![0.0; dim],
        }
    }

    /// Number of ticks the schedule can hold.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// `control.steps_per_inference` in loop ticks (rounded, at least 1): how often the loop
    /// re-plans when inference keeps up.
    pub fn replan_ticks(&self) -> u64 {
        self.replan_ticks
    }

    /// Loop ticks per chunk step: `loop_rate / chunk_rate` (1 at the training rate).
    pub fn ticks_per_step(&self) -> f64 {
        self.ticks_per_step
    }

    /// Chunk position of loop tick `first_tick + d`, in steps, snapped to a whole step when
    /// within rounding of one: `(whole step, fraction in [0, 1))`.
    fn position(&self, d: u64) -> (usize, f64) {
        let s = d as f64 * self.steps_per_tick;
        let k = (s + 1e-9).floor();
        let frac = s - k;
        (k as usize, if frac < 1e-9 { 0.0 } else { frac })
    }

    /// Merges one network output into the schedule.
    ///
    /// `raw` is normalized, row-major `[step][dim]`, `horizon` steps (a shorter output is merged
    /// for the whole steps it has; steps beyond `horizon` are ignored). Step 0 is the action for
    /// control tick `first_tick`, step `k` for `k` chunk periods later (see the module
    /// documentation); each tick from `max(first_tick, now_tick)` on that the chunk covers gets
    /// its interpolated action. Steps whose time is before `now_tick` are the past: they are
    /// skipped, and so is whatever the schedule held for ticks before `now_tick`; ticks that lie a
    /// full ring or more after `now_tick` are dropped (they would overwrite ticks still planned).
    /// Returns the number of chunk steps skipped as past.
    pub fn push_chunk(&mut self, raw: &[f32], first_tick: u64, now_tick: u64) -> usize {
        if self.dim == 0 {
            return 0;
        }
        let cap = self.slots.len() as u64;
        let steps = (raw.len() / self.dim).min(self.horizon);
        // Step k lies at tick first_tick + k * ticks_per_step: it is past when that is before
        // now_tick, i.e. when k < (now_tick - first_tick) * steps_per_tick.
        let skipped = if now_tick > first_tick {
            let past = (now_tick - first_tick) as f64 * self.steps_per_tick;
            ((past - 1e-9).ceil().max(0.0) as usize).min(steps)
        } else {
            0
        };
        let mut written_end = None;
        let mut tick = first_tick.max(now_tick);
        loop {
            let (k, frac) = self.position(tick - first_tick);
            if k >= steps || tick - now_tick >= cap {
                break;
            }
            let idx = (tick % cap) as usize;
            let slot = &mut self.slots[idx];
            let sums = &mut self.sums[idx * self.dim..(idx + 1) * self.dim];
            let weight = match self.ensemble_m {
                Some(m) => {
                    if slot.count == 0 || slot.tick != tick {
                        *slot = Slot { tick, ..EMPTY };
                        sums.fill(0.0);
                    }
                    (-m * f64::from(slot.count)).exp()
                }
                None => {
                    *slot = Slot { tick, ..EMPTY };
                    sums.fill(0.0);
                    1.0
                }
            };
            let row = &raw[k * self.dim..(k + 1) * self.dim];
            // Between two steps: linear interpolation; on a step, or past the last one (held for
            // its period), the step itself.
            let next =
                (frac > 0.0 && k + 1 < steps).then(|| &raw[(k + 1) * self.dim..(k + 2) * self.dim]);
            for (j, (sum, &y)) in sums.iter_mut().zip(row).enumerate() {
                let x = f64::from(self.norm[j].unnormalize(y));
                let x = match next {
                    Some(next) => {
                        let x1 = f64::from(self.norm[j].unnormalize(next[j]));
                        x + frac * (x1 - x)
                    }
                    None => x,
                };
                *sum += weight * x;
            }
            slot.weight += weight;
            slot.count += 1;
            written_end = Some(tick + 1);
            let Some(t) = tick.checked_add(1) else {
                break;
            };
            tick = t;
        }
        // The past is forgotten. Without ensembling the newest chunk also replaces the schedule
        // from its first step on: what an older chunk planned beyond this one's end is dropped.
        let replaced_from = match self.ensemble_m {
            None => written_end.unwrap_or(u64::MAX),
            Some(_) => u64::MAX,
        };
        for slot in &mut self.slots {
            if slot.count > 0 && (slot.tick < now_tick || slot.tick >= replaced_from) {
                slot.count = 0;
            }
        }
        skipped
    }

    /// The planned action for `tick`, physical units, or `None` when no prediction covers it (the
    /// plan is exhausted, or `tick` is before the last push's `now_tick`): the caller then holds.
    pub fn action_at(&mut self, tick: u64) -> Option<&[f32]> {
        let idx = self.slot_index(tick)?;
        let weight = self.slots[idx].weight;
        let sums = &self.sums[idx * self.dim..(idx + 1) * self.dim];
        for (o, &s) in self.out.iter_mut().zip(sums) {
            *o = (s / weight) as f32;
        }
        Some(&self.out)
    }

    /// Number of consecutive ticks planned from `tick` on (0 if `tick` itself is not planned).
    pub fn remaining(&self, tick: u64) -> usize {
        (0..self.slots.len() as u64)
            .take_while(|&k| {
                tick.checked_add(k)
                    .and_then(|t| self.slot_index(t))
                    .is_some()
            })
            .count()
    }

    /// Forgets the whole schedule (e.g. after a stop, before resuming).
    pub fn reset(&mut self) {
        self.slots.fill(EMPTY);
    }

    fn slot_index(&self, tick: u64) -> Option<usize> {
        let idx = (tick % self.slots.len() as u64) as usize;
        let slot = self.slots[idx];
        (slot.count > 0 && slot.tick == tick).then_some(idx)
    }
}

/// Whether a bundle's control settings can keep the plan fed at a given inference latency: the
/// verdict [`feed_check`] gives, for `reflex check` and `reflex bench`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedVerdict {
    /// Loop ticks one chunk covers (`horizon` steps at the chunk rate, in loop periods).
    pub chunk_ticks: u64,
    /// The latency in loop ticks, rounded up: a result is taken at the first tick after it is
    /// ready.
    pub latency_ticks: u64,
    /// Ticks per chunk with no planned action even when the next inference is submitted as early
    /// as the loop can (the robot holds; 0 = always fed).
    pub dry_ticks: u64,
    /// The dry stretch reaches the watchdog time (`ControlSpec::watchdog_ticks` at the loop's
    /// rate): the watchdog stops the robot at every chunk boundary.
    pub watchdog_trips: bool,
    /// `steps_per_inference` is shorter than the latency: the plan is refreshed once per
    /// inference instead, less often than configured (the loop counts overruns).
    pub replans_late: bool,
    /// One or two sentences for the operator: the figures and, when not fed, what to change.
    pub message: String,
}

impl FeedVerdict {
    /// True when the plan never runs dry at this latency.
    pub fn fed(&self) -> bool {
        self.dry_ticks == 0
    }
}

/// Can the loop keep a plan fed at `latency_s` seconds per inference?
///
/// With one inference in flight at a time, the loop submits the next one as soon as the plan
/// left is no longer than the latency (see `control_loop`), so with `C` = ticks a chunk covers and
/// `L` = latency in ticks (rounded up):
/// - without latency compensation a chunk applies from the tick it arrives: fed when `C >= L`,
///   else `L - C` ticks per chunk without a planned action;
/// - with latency compensation a chunk's first `L` ticks (the time its inference took) are already
///   past when it arrives, so it supplies `C - L` ticks while the next inference needs `L`: fed
///   when `C >= 2 L`, else `2 L - C` dry ticks.
///
/// `loop_rate_hz` is the loop's rate (the bundle's, or a `--rate` override); `horizon` the action
/// output's; `latency_s` from observation to the result being ready (e.g. a measured p99
/// inference time). Rates that are not finite and positive give a verdict with 0 chunk ticks.
/// Also flags `steps_per_inference` shorter than the latency (`replans_late`), which is not a
/// dry plan but re-plans less often than configured.
pub fn feed_check(
    control: &ControlSpec,
    horizon: usize,
    loop_rate_hz: f64,
    latency_s: f64,
) -> FeedVerdict {
    let chunk_rate = control.chunk_rate();
    let ticks_per_step = loop_rate_hz / chunk_rate;
    let ticks_per_step = if ticks_per_step.is_finite() && ticks_per_step > 0.0 {
        ticks_per_step
    } else {
        0.0
    };
    let period_s = 1.0 / loop_rate_hz;
    let chunk_ticks = (horizon as f64 * ticks_per_step - 1e-9).ceil().max(0.0) as u64;
    let latency_ticks = (latency_s.max(0.0) / period_s - 1e-9).ceil().max(0.0) as u64;
    let need = if control.latency_compensation {
        2 * latency_ticks
    } else {
        latency_ticks
    };
    let dry_ticks = need.saturating_sub(chunk_ticks);
    let watchdog_ticks = control.watchdog_ticks(loop_rate_hz);
    let watchdog_trips = dry_ticks >= watchdog_ticks;
    let replan_ticks = (control.steps_per_inference as f64 * ticks_per_step)
        .round()
        .max(1.0);
    let replans_late = (replan_ticks as u64) < latency_ticks;
    let ms = |ticks: u64| ticks as f64 * period_s * 1e3;
    let mut message = if dry_ticks == 0 {
        format!(
            "plan fed: a chunk covers {chunk_ticks} tick(s) ({:.0} ms) at {loop_rate_hz} Hz, \
             inference takes {:.1} ms ({latency_ticks} tick(s)){}",
            ms(chunk_ticks),
            latency_s * 1e3,
            if control.latency_compensation {
                ", twice that with latency compensation"
            } else {
                ""
            }
        )
    } else {
        format!(
            "the plan runs dry for {dry_ticks} tick(s) ({:.0} ms) at every chunk: a chunk covers \
             {chunk_ticks} tick(s) ({:.0} ms) at {loop_rate_hz} Hz but inference takes {:.1} ms \
             ({latency_ticks} tick(s)){}, so the robot {}; use a faster backend or smaller \
             model, a longer horizon, a lower control rate{}",
            ms(dry_ticks),
            ms(chunk_ticks),
            latency_s * 1e3,
            if control.latency_compensation {
                " and latency compensation skips that much of each chunk"
            } else {
                ""
            },
            if watchdog_trips {
                format!(
                    "is stopped by the watchdog ({:.0} ms) at every chunk boundary",
                    control.watchdog_s() * 1e3
                )
            } else {
                "holds still for that long".to_string()
            },
            if control.latency_compensation {
                ", or turn latency compensation off"
            } else {
                ""
            }
        )
    };
    if replans_late {
        message.push_str(&format!(
            "; steps_per_inference = {} re-plans every {:.0} ms, faster than inference: the plan \
             is refreshed once per inference instead (counted as overruns)",
            control.steps_per_inference,
            replan_ticks * period_s * 1e3
        ));
    }
    FeedVerdict {
        chunk_ticks,
        latency_ticks,
        dry_ticks,
        watchdog_trips,
        replans_late,
        message,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use reflex_models::manifest::{ActionOutput, Normalization};

    fn action(dim: usize, horizon: usize, normalization: Normalization) -> ActionSpec {
        ActionSpec {
            onnx_output: "action".into(),
            names: (0..dim).map(|i| format!("j{i}")).collect(),
            units: vec!["rad".into(); dim],
            output: if horizon == 1 {
                ActionOutput::Single
            } else {
                ActionOutput::Chunk { horizon }
            },
            normalization,
            limits: None,
            parity_tolerance: None,
        }
    }

    fn control(steps_per_inference: usize, m: Option<f64>) -> ControlSpec {
        ControlSpec {
            rate_hz: 10.0,
            chunk_rate_hz: None,
            steps_per_inference,
            temporal_ensemble_m: m,
            latency_compensation: true,
            watchdog_periods: 3,
        }
    }

    fn planner(horizon: usize, m: Option<f64>) -> ActionPlanner {
        ActionPlanner::new(
            &action(1, horizon, Normalization::Identity),
            &control(1, m),
            10.0,
        )
    }

    fn at(p: &mut ActionPlanner, tick: u64) -> Option<f32> {
        p.action_at(tick).map(|a| a[0])
    }

    fn assert_close(a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} != {b:?}");
        }
    }

    #[test]
    fn unnormalizes_each_kind() {
        let cases = [
            (
                Normalization::MeanStd {
                    mean: vec![1.0, -2.0],
                    std: vec![0.5, 4.0],
                    convention: Default::default(),
                },
                [2.0, -1.0],
                [2.0, -6.0],
            ),
            (
                Normalization::MinMax {
                    min: vec![0.0, -1.0],
                    max: vec![10.0, 1.0],
                    convention: Default::default(),
                },
                [-1.0, 0.5],
                [0.0, 0.5],
            ),
            (
                Normalization::Quantile {
                    q01: vec![-2.0, 100.0],
                    q99: vec![2.0, 300.0],
                    convention: Default::default(),
                },
                [0.5, 1.0],
                [1.0, 300.0],
            ),
            (Normalization::Identity, [0.25, -7.0], [0.25, -7.0]),
        ];
        for (norm, y, x) in cases {
            let kind = norm.kind_str();
            let mut p = ActionPlanner::new(&action(2, 1, norm), &control(1, None), 10.0);
            assert_eq!(p.push_chunk(&y, 4, 4), 0);
            let got = p.action_at(4).unwrap();
            assert!(
                got.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5),
                "{kind}: {got:?} != {x:?}"
            );
        }
    }

    #[test]
    fn chunk_without_ensembling_newest_wins() {
        let mut p = planner(4, None);
        assert_eq!(p.push_chunk(&[0.0, 1.0, 2.0, 3.0], 0, 0), 0);
        assert_eq!(p.remaining(0), 4);
        assert_eq!((at(&mut p, 0), at(&mut p, 3)), (Some(0.0), Some(3.0)));
        assert_eq!(at(&mut p, 4), None);
        // A new chunk from tick 2 replaces ticks 2.. .
        assert_eq!(p.push_chunk(&[10.0, 11.0, 12.0, 13.0], 2, 2), 0);
        // Ticks before `now_tick` are forgotten.
        assert_eq!(at(&mut p, 1), None);
        assert_eq!(at(&mut p, 2), Some(10.0));
        assert_eq!(at(&mut p, 5), Some(13.0));
        assert_eq!(p.remaining(2), 4);
        // A shorter (one-step) output from tick 3 drops what older chunks planned after it.
        assert_eq!(p.push_chunk(&[20.0], 3, 3), 0);
        assert_eq!(at(&mut p, 3), Some(20.0));
        assert_eq!(at(&mut p, 4), None);
        assert_eq!(p.remaining(3), 1);
    }

    #[test]
    fn ensembling_matches_hand_computation() {
        let m = 0.5f64;
        let mut p = planner(4, Some(m));
        // Three chunks, one per tick, overlapping.
        let (w0, w1, w2) = (1.0, (-m).exp(), (-2.0 * m).exp());
        p.push_chunk(&[1.0, 2.0, 3.0, 4.0], 0, 0);
        p.push_chunk(&[10.0, 20.0, 30.0, 40.0], 1, 1);
        // Tick 1: A step 1 (oldest) and B step 0.
        assert_close(
            p.action_at(1).unwrap(),
            &[((2.0 * w0 + 10.0 * w1) / (w0 + w1)) as f32],
        );
        p.push_chunk(&[100.0, 200.0, 300.0, 400.0], 2, 2);
        // Tick 2: chunk A step 2 (oldest, weight 1), B step 1, C step 0.
        let t2 = (3.0 * w0 + 20.0 * w1 + 100.0 * w2) / (w0 + w1 + w2);
        // Tick 3: A step 3, B step 2, C step 1.
        let t3 = (4.0 * w0 + 30.0 * w1 + 200.0 * w2) / (w0 + w1 + w2);
        // Tick 4: B step 3 is now the oldest prediction, C step 2.
        let t4 = (40.0 * w0 + 300.0 * w1) / (w0 + w1);
        assert_close(p.action_at(2).unwrap(), &[t2 as f32]);
        assert_close(p.action_at(3).unwrap(), &[t3 as f32]);
        assert_close(p.action_at(4).unwrap(), &[t4 as f32]);
        assert_close(p.action_at(5).unwrap(), &[400.0]);
        // Tick 1 is the past once C arrived at tick 2.
        assert_eq!(at(&mut p, 1), None);
        assert_eq!(p.remaining(2), 4);
    }

    #[test]
    fn ensembling_ignores_stale_slots() {
        let mut p = planner(2, Some(0.1));
        p.push_chunk(&[1.0, 2.0], 0, 0);
        let far = p.capacity() as u64; // same slot as tick 0
        p.push_chunk(&[5.0, 6.0], far, far);
        assert_close(p.action_at(far).unwrap(), &[5.0]);
        assert_eq!(at(&mut p, 0), None);
    }

    #[test]
    fn latency_skip() {
        // A chunk for the observation of tick 10 arrives at tick 13: it starts at its step 3.
        let mut p = planner(8, None);
        let chunk: Vec<f32> = (0..8).map(|s| s as f32).collect();
        assert_eq!(p.push_chunk(&chunk, 10, 13), 3);
        assert_eq!(at(&mut p, 12), None);
        assert_eq!(at(&mut p, 13), Some(3.0));
        assert_eq!(at(&mut p, 17), Some(7.0));
        assert_eq!(p.remaining(13), 5);
        // Entirely in the past: all skipped, nothing planned.
        let mut p = planner(8, None);
        assert_eq!(p.push_chunk(&chunk, 0, 100), 8);
        assert_eq!(p.remaining(100), 0);
    }

    #[test]
    fn exhausted_plan_is_none() {
        let mut p = planner(2, None);
        assert_eq!(at(&mut p, 0), None);
        assert_eq!(p.remaining(0), 0);
        p.push_chunk(&[1.0, 2.0], 0, 0);
        assert_eq!(at(&mut p, 1), Some(2.0));
        assert_eq!(at(&mut p, 2), None);
        assert_eq!(p.remaining(2), 0);
        p.reset();
        assert_eq!(at(&mut p, 0), None);
    }

    #[test]
    fn single_action_policy() {
        let mut p = ActionPlanner::new(
            &action(3, 1, Normalization::Identity),
            &control(1, None),
            10.0,
        );
        p.push_chunk(&[1.0, 2.0, 3.0], 7, 7);
        assert_eq!(p.action_at(7).unwrap(), &[1.0, 2.0, 3.0]);
        assert_eq!(p.remaining(7), 1);
        assert_eq!(p.action_at(8), None);
    }

    #[test]
    fn old_ticks_forgotten_ring_does_not_grow() {
        let mut p = planner(4, Some(0.01));
        let cap = p.capacity();
        assert_eq!(cap, 4 + 1 + SLACK);
        for now in 0..10_000u64 {
            p.push_chunk(&[now as f32; 4], now, now);
            assert!(p.action_at(now).is_some());
        }
        assert_eq!(p.capacity(), cap);
        assert_eq!(p.slots.len(), cap);
        assert_eq!(p.sums.len(), cap);
        assert_eq!(at(&mut p, 0), None);
        assert_eq!(at(&mut p, 9_999 - cap as u64), None);
        assert_eq!(p.remaining(9_999), 4);
    }

    #[test]
    fn gap_larger_than_ring() {
        let mut p = planner(4, None);
        p.push_chunk(&[1.0, 2.0, 3.0, 4.0], 5, 5);
        let cap = p.capacity() as u64;
        let later = 5 + 1_000 * cap + 3;
        // Nothing planned that far: tags don't match even where slots alias.
        assert_eq!(at(&mut p, later), None);
        assert_eq!(at(&mut p, 5 + cap), None);
        p.push_chunk(&[9.0, 8.0, 7.0, 6.0], later, later);
        assert_eq!(at(&mut p, later), Some(9.0));
        assert_eq!(at(&mut p, later + 3), Some(6.0));
        assert_eq!(at(&mut p, 5), None);
        assert_eq!(p.remaining(later), 4);
    }

    #[test]
    fn steps_beyond_the_ring_are_dropped() {
        let mut p = planner(4, None);
        let cap = p.capacity() as u64;
        // first_tick ahead of now by cap - 2: only the first two steps fit.
        assert_eq!(p.push_chunk(&[1.0, 2.0, 3.0, 4.0], cap - 2, 0), 0);
        assert_eq!(p.remaining(cap - 2), 2);
        assert_eq!(at(&mut p, cap), None);
    }

    #[test]
    fn nan_passes_through_for_the_safety_filter() {
        let mut p = planner(1, None);
        p.push_chunk(&[f32::NAN], 0, 0);
        assert!(p.action_at(0).unwrap()[0].is_nan());
    }

    /// A ramp chunk trained at `chunk_hz`: step k = 0.1 + 0.02 k.
    fn ramp_planner(horizon: usize, spi: usize, chunk_hz: f64, loop_hz: f64) -> ActionPlanner {
        let mut c = control(spi, None);
        c.rate_hz = chunk_hz;
        ActionPlanner::new(&action(1, horizon, Normalization::Identity), &c, loop_hz)
    }

    fn ramp(horizon: usize) -> Vec<f32> {
        (0..horizon).map(|k| 0.1 + 0.02 * k as f32).collect()
    }

    #[test]
    fn chunk_is_timed_in_seconds_at_any_loop_rate() {
        // 20 Hz chunk, horizon 4: 200 ms. At 20 Hz one step per tick, exactly as sent before.
        let mut p = ramp_planner(4, 4, 20.0, 20.0);
        assert_eq!(p.push_chunk(&ramp(4), 0, 0), 0);
        let got: Vec<f32> = (0..5).filter_map(|t| at(&mut p, t)).collect();
        assert_eq!(got, ramp(4));
        assert_eq!(p.replan_ticks(), 4);
        // At 50 Hz: 2.5 ticks per step, interpolated; the last step (t = 150 ms) is held for its
        // period, so the chunk still lasts 200 ms = 10 ticks.
        let mut p = ramp_planner(4, 4, 20.0, 50.0);
        assert_eq!(p.push_chunk(&ramp(4), 0, 0), 0);
        assert_eq!(p.remaining(0), 10);
        assert_eq!(p.replan_ticks(), 10);
        for t in 0..10u64 {
            let secs = t as f64 * 0.02;
            let want = 0.1 + 0.4 * secs.min(0.15); // 0.02 rad per 50 ms = 0.4 rad/s
            let got = at(&mut p, t).unwrap();
            assert!(
                (f64::from(got) - want).abs() < 1e-6,
                "tick {t}: {got} != {want}"
            );
        }
        assert_eq!(at(&mut p, 10), None);
        // At 10 Hz (slower than trained): every other step, still 0.4 rad/s.
        let mut p = ramp_planner(4, 4, 20.0, 10.0);
        p.push_chunk(&ramp(4), 0, 0);
        assert_eq!(p.remaining(0), 2);
        assert_close(p.action_at(1).unwrap(), &[0.14]);
        assert_eq!(p.replan_ticks(), 2);
    }

    #[test]
    fn skipped_steps_are_counted_in_chunk_steps() {
        // 50 Hz loop, 20 Hz chunk: 5 ticks late = 2 steps (at ticks 0 and 2.5) in the past; the
        // step at tick 5 is sent.
        let mut p = ramp_planner(4, 4, 20.0, 50.0);
        assert_eq!(p.push_chunk(&ramp(4), 0, 5), 2);
        assert_close(p.action_at(5).unwrap(), &[0.14]);
        // 6 ticks late: 3 steps past (ticks 0, 2.5, 5); tick 6 lies between steps 2 and 3.
        let mut p = ramp_planner(4, 4, 20.0, 50.0);
        assert_eq!(p.push_chunk(&ramp(4), 0, 6), 3);
        assert_close(p.action_at(6).unwrap(), &[0.148]);
        assert_eq!(p.remaining(6), 4);
        // All in the past.
        assert_eq!(p.push_chunk(&ramp(4), 0, 100), 4);
        assert_eq!(p.remaining(100), 0);
    }

    #[test]
    fn ensembling_at_another_rate_merges_per_tick() {
        // Two ramps 5 ticks apart at 50 Hz (2 steps of a 20 Hz chunk): tick 5 is step 2 of the
        // first (0.14) and step 0 of the second (0.1).
        let mut c = control(1, Some(0.0));
        c.rate_hz = 20.0;
        let mut p = ActionPlanner::new(&action(1, 4, Normalization::Identity), &c, 50.0);
        p.push_chunk(&ramp(4), 0, 0);
        p.push_chunk(&ramp(4), 5, 5);
        assert_close(p.action_at(5).unwrap(), &[0.12]);
        // Tick 6: 0.148 and 0.108, equal weights with m = 0.
        assert_close(p.action_at(6).unwrap(), &[0.128]);
    }

    #[test]
    fn feed_check_figures() {
        // LeRobot ACT: horizon = steps_per_inference = 100 at 50 Hz, 280 ms inference.
        let mut c = control(100, None);
        c.rate_hz = 50.0;
        c.latency_compensation = false;
        let v = feed_check(&c, 100, 50.0, 0.280);
        assert_eq!((v.chunk_ticks, v.latency_ticks, v.dry_ticks), (100, 14, 0));
        assert!(v.fed() && !v.replans_late, "{v:?}");
        // With compensation a chunk must cover twice the latency.
        c.latency_compensation = true;
        let v = feed_check(&c, 100, 50.0, 1.2);
        assert_eq!((v.latency_ticks, v.dry_ticks), (60, 20));
        assert!(!v.fed() && v.watchdog_trips, "{v:?}");
        assert!(
            v.message.contains("runs dry for 20 tick(s) (400 ms)"),
            "{}",
            v.message
        );
        // A short chunk that cannot outlast one inference, compensation off.
        let mut c = control(2, None);
        c.rate_hz = 20.0;
        c.latency_compensation = false;
        c.watchdog_periods = 5;
        let v = feed_check(&c, 4, 20.0, 0.280);
        assert_eq!((v.chunk_ticks, v.latency_ticks, v.dry_ticks), (4, 6, 2));
        assert!(!v.fed() && !v.watchdog_trips && v.replans_late, "{v:?}");
        // The same chunk at a 50 Hz loop still lasts 200 ms: 10 ticks against 14.
        let v = feed_check(&c, 4, 50.0, 0.280);
        assert_eq!((v.chunk_ticks, v.latency_ticks, v.dry_ticks), (10, 14, 4));
        // Exactly one period of latency is one tick, not two.
        let v = feed_check(&c, 4, 20.0, 0.05);
        assert_eq!(v.latency_ticks, 1);
    }
}
