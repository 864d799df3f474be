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
//! The schedule is a ring of `horizon + steps_per_inference + slack` ticks allocated once, each
//! slot tagged with its tick: old ticks are overwritten rather than removed, a slot whose tag is
//! not the asked tick is "not planned", and arbitrary gaps between chunks need no special case.
//! Pushing a chunk and reading an action never allocate.
//!
//! Values are unnormalized here (with the manifest's per-dimension [`Affine`] map, the training
//! framework's formula), so everything downstream, the safety filter first, works in physical units. A NaN from
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
    norm: Vec<Affine>,
    ensemble_m: Option<f64>,
    slots: Vec<Slot>,
    /// `slots.len() * dim` weighted sums, physical units, row per slot.
    sums: Vec<f64>,
    /// The action returned by `action_at`.
    out: Vec<f32>,
}

impl ActionPlanner {
    /// Allocates the schedule for `action` at `control`. Expects a validated manifest (as
    /// `Bundle::load` leaves it): normalization vectors of the action's dimension with finite,
    /// non-zero scales.
    pub fn new(action: &ActionSpec, control: &ControlSpec) -> Self {
        let dim = action.names.len();
        let horizon = action.output.horizon();
        let norm = (0..dim).map(|i| action.normalization.affine(i)).collect();
        let cap = horizon + control.steps_per_inference + SLACK;
        Self {
            dim,
            horizon,
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

    /// Merges one network output into the schedule.
    ///
    /// `raw` is normalized, row-major `[step][dim]`, `horizon` steps (a shorter output is merged
    /// for the whole steps it has; steps beyond `horizon` are ignored). Step 0 is the action for
    /// control tick `first_tick`. Steps before `now_tick` are the past and are skipped, and so is
    /// whatever the schedule held for ticks before `now_tick`; steps that lie a full ring or more
    /// after `now_tick` are dropped (they would overwrite ticks still planned). Returns the number
    /// of steps skipped as past.
    pub fn push_chunk(&mut self, raw: &[f32], first_tick: u64, now_tick: u64) -> usize {
        if self.dim == 0 {
            return 0;
        }
        let cap = self.slots.len() as u64;
        let steps = (raw.len() / self.dim).min(self.horizon);
        let mut skipped = 0;
        let mut written_end = None;
        for (step, row) in raw.chunks_exact(self.dim).take(steps).enumerate() {
            let Some(tick) = first_tick.checked_add(step as u64) else {
                break;
            };
            if tick < now_tick {
                skipped += 1;
                continue;
            }
            if tick - now_tick >= cap {
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
            for (j, (sum, &y)) in sums.iter_mut().zip(row).enumerate() {
                let x = self.norm[j].unnormalize(y);
                *sum += weight * f64::from(x);
            }
            slot.weight += weight;
            slot.count += 1;
            written_end = Some(tick + 1);
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
        }
    }

    fn control(steps_per_inference: usize, m: Option<f64>) -> ControlSpec {
        ControlSpec {
            rate_hz: 10.0,
            steps_per_inference,
            temporal_ensemble_m: m,
            latency_compensation: true,
            watchdog_periods: 3,
        }
    }

    fn planner(horizon: usize, m: Option<f64>) -> ActionPlanner {
        ActionPlanner::new(&action(1, horizon, Normalization::Identity), &control(1, m))
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
            let mut p = ActionPlanner::new(&action(2, 1, norm), &control(1, None));
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
        let mut p = ActionPlanner::new(&action(3, 1, Normalization::Identity), &control(1, None));
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
}
