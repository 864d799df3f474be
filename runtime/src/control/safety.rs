//! The safety filter, and the only way to make a [`SafeCommand`].
//!
//! A network can output anything: NaN after an fp16 overflow, a chunk that jumps across the
//! workspace after one bad frame, positions outside the joint range because the normalization
//! statistics were wrong. The robot's hard limits belong to the robot, not to the policy, so they
//! live in the bundle manifest (`action.limits`) and are enforced here, as the last stage before a
//! sink. The type system carries the guarantee: [`SafeCommand`] has private fields and no public
//! constructor, and [`crate::io::CommandSink::send`] takes nothing else, so a command that skipped
//! these checks cannot reach the bus.
//!
//! Rules, in order:
//! 1. Any NaN or infinity in a proposal rejects the *whole* vector (one bad dimension means the
//!    network output cannot be trusted); the robot holds its last safe command, or is stopped when
//!    nothing was ever safe. No NaN or infinity ever reaches a [`SafeCommand`].
//! 2. Each dimension is clamped into `[min, max]`.
//! 3. Each dimension moves at most `max_rate / rate_hz` from the previous safe command (or the
//!    seed). The step uses the *nominal* control period, not the measured time since the last
//!    command: the bound is then a pure function of the command sequence (replays and tests give
//!    the same output on any machine), and when ticks run late the robot moves *slower* than
//!    `max_rate` rather than catching up with a jump after a stall.
//!
//! With neither a previous command nor a seed there is no reference for rule 3, and only rules 1
//! and 2 apply to the first command. The control loop therefore seeds the filter from the measured
//! joint state whenever it has one; a robot without state feedback relies on its position limits
//! alone for that first command.
//!
//! A bundle without `action.limits` only runs with an explicit opt-out, and then only rule 1
//! applies.
//!
//! Everything here is fixed capacity ([`MAX_DIM`]): filtering a tick never allocates.

use reflex_models::manifest::ActionSpec;

/// The most action dimensions this build supports (fixed-capacity buffers on the hot path).
pub const MAX_DIM: usize = 32;

type Values = heapless::Vec<f32, MAX_DIM>;

/// A command that went through the [`SafetyFilter`]: finite, within the bundle's position limits
/// and within its rate limits of the previous command. Only the filter creates these:
///
/// ```compile_fail
/// // Private fields: no code outside this module can build one.
/// let cmd = reflex_runtime::control::safety::SafeCommand {
///     values: heapless::Vec::new(),
///     stop: false,
///     tick: 0,
/// };
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct SafeCommand {
    values: Values,
    stop: bool,
    tick: u64,
}

impl SafeCommand {
    /// One value per action dimension, physical units, manifest order.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// True for a stop command: the robot must stop; `values` are the last safe position, for
    /// drivers that need a setpoint with the stop.
    pub fn is_stop(&self) -> bool {
        self.stop
    }

    /// The control tick this command was made for.
    pub fn tick(&self) -> u64 {
        self.tick
    }
}

/// Why a bundle cannot be filtered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SafetyError {
    #[error(
        "the bundle's policy has no `action.limits`: refusing to command the robot without hard \
         position and rate limits (add `[action.limits]` with `min`, `max` and `max_rate` to \
         policy.toml, or opt out explicitly: `reflex run --allow-unlimited`)"
    )]
    MissingLimits,
    #[error("`action` has {dims} dimensions; this build supports at most {MAX_DIM}")]
    TooManyDims { dims: usize },
    #[error(
        "`action.limits.{field}` has {got} values, expected {expected} (one per action dimension)"
    )]
    LimitsLength {
        field: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("`action.limits.{field}[{index}]` (`{name}`) is {value}: {reason}")]
    InvalidLimit {
        field: &'static str,
        index: usize,
        name: String,
        value: f32,
        reason: &'static str,
    },
    #[error("`action.limits.min[{index}]` ({min}) is above `action.limits.max[{index}]` ({max}) for `{name}`")]
    MinAboveMax {
        index: usize,
        name: String,
        min: f32,
        max: f32,
    },
    #[error("`control.rate_hz` is {0}: the rate limit needs a finite rate above 0")]
    InvalidRate(f64),
}

/// What the filter did to one proposal. Several flags can be set at once (clamped and then rate
/// limited); a rejected proposal sets only its rejection flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// At least one dimension was clamped into `[min, max]`.
    pub clamped_position: bool,
    /// At least one dimension was limited to `max_rate / rate_hz` from the previous command.
    pub rate_limited: bool,
    /// A NaN or infinity: the whole proposal was dropped (hold or stop sent instead).
    pub rejected_nonfinite: bool,
    /// The proposal did not have one value per action dimension: dropped (hold or stop sent).
    pub rejected_shape: bool,
}

impl Outcome {
    /// The proposal went through unchanged.
    pub fn passed(self) -> bool {
        !(self.clamped_position || self.rate_limited || self.rejected())
    }

    /// The proposal was dropped and the command is a hold or a stop.
    pub fn rejected(self) -> bool {
        self.rejected_nonfinite || self.rejected_shape
    }
}

/// The command to send for one proposal, and what was done to get it.
#[derive(Debug, Clone, PartialEq)]
pub struct Filtered {
    pub command: SafeCommand,
    pub outcome: Outcome,
}

/// Counts since construction, one per proposal (not per dimension), for run reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SafetyCounters {
    /// Proposals sent unchanged.
    pub passed: u64,
    /// Proposals with at least one dimension clamped into `[min, max]`.
    pub clamped_position: u64,
    /// Proposals with at least one dimension rate limited.
    pub rate_limited: u64,
    /// Proposals rejected for a NaN or infinity.
    pub rejected_nonfinite: u64,
    /// Proposals rejected for having the wrong number of values.
    pub rejected_shape: u64,
    /// Hold commands made, by [`SafetyFilter::hold`] or in place of a rejected proposal.
    pub holds: u64,
    /// Stop commands made, by [`SafetyFilter::stop`] or in place of a rejected proposal.
    pub stops: u64,
}

#[derive(Debug, Clone)]
struct Limits {
    min: Values,
    max: Values,
    /// `max_rate / rate_hz`: the largest move per tick.
    step: Values,
}

/// Turns proposed actions into [`SafeCommand`]s. See the module documentation for the rules.
#[derive(Debug, Clone)]
pub struct SafetyFilter {
    dims: usize,
    limits: Option<Limits>,
    /// The last safe command's values, or the seed: the reference for rate limiting and holds.
    last: Option<Values>,
    counters: SafetyCounters,
}

impl SafetyFilter {
    /// Builds the filter for a bundle's action space at control rate `rate_hz`.
    ///
    /// Refuses a bundle without `action.limits` unless `allow_unlimited` (then only the NaN rule
    /// applies), more than [`MAX_DIM`] dimensions, and limits that are not one finite value per
    /// dimension with `min <= max` and `max_rate >= 0`.
    pub fn new(
        action: &ActionSpec,
        rate_hz: f64,
        allow_unlimited: bool,
    ) -> Result<Self, SafetyError> {
        let dims = action.names.len();
        if dims > MAX_DIM {
            return Err(SafetyError::TooManyDims { dims });
        }
        let limits = match &action.limits {
            None if allow_unlimited => None,
            None => return Err(SafetyError::MissingLimits),
            Some(l) => {
                if !(rate_hz.is_finite() && rate_hz > 0.0) {
                    return Err(SafetyError::InvalidRate(rate_hz));
                }
                let name = |i: usize| action.names.get(i).cloned().unwrap_or_default();
                let mut min = Values::new();
                let mut max = Values::new();
                let mut step = Values::new();
                for (field, v) in [("min", &l.min), ("max", &l.max), ("max_rate", &l.max_rate)] {
                    if v.len() != dims {
                        return Err(SafetyError::LimitsLength {
                            field,
                            got: v.len(),
                            expected: dims,
                        });
                    }
                    for (index, &value) in v.iter().enumerate() {
                        let reason = if !value.is_finite() {
                            Some("limits must be finite")
                        } else if field == "max_rate" && value < 0.0 {
                            Some("a rate limit cannot be negative")
                        } else {
                            None
                        };
                        if let Some(reason) = reason {
                            return Err(SafetyError::InvalidLimit {
                                field,
                                index,
                                name: name(index),
                                value,
                                reason,
                            });
                        }
                    }
                }
                for i in 0..dims {
                    if l.min[i] > l.max[i] {
                        return Err(SafetyError::MinAboveMax {
                            index: i,
                            name: name(i),
                            min: l.min[i],
                            max: l.max[i],
                        });
                    }
                    // Capacity is MAX_DIM and dims <= MAX_DIM: these pushes cannot fail.
                    let _ = min.push(l.min[i]);
                    let _ = max.push(l.max[i]);
                    let _ = step.push((f64::from(l.max_rate[i]) / rate_hz) as f32);
                }
                Some(Limits { min, max, step })
            }
        };
        Ok(Self {
            dims,
            limits,
            last: None,
            counters: SafetyCounters::default(),
        })
    }

    /// Number of action dimensions.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Sets the reference for rate limiting and holds (e.g. the measured joint positions), in
    /// place of the last safe command. Values outside the limits are clamped into them.
    ///
    /// Returns false, and changes nothing, when `reference` does not have one finite value per
    /// dimension: a bad measurement must not become the reference.
    pub fn seed(&mut self, reference: &[f32]) -> bool {
        if reference.len() != self.dims || reference.iter().any(|v| !v.is_finite()) {
            return false;
        }
        let Ok(mut values) = Values::from_slice(reference) else {
            return false;
        };
        if let Some(l) = &self.limits {
            for (i, v) in values.iter_mut().enumerate() {
                *v = v.clamp(l.min[i], l.max[i]);
            }
        }
        self.last = Some(values);
        true
    }

    /// Filters `proposed` (physical units, one value per dimension) for control tick `tick`.
    pub fn filter(&mut self, proposed: &[f32], tick: u64) -> Filtered {
        let mut outcome = Outcome::default();
        let values = match Values::from_slice(proposed) {
            Ok(v) if proposed.len() == self.dims => v,
            _ => {
                outcome.rejected_shape = true;
                self.counters.rejected_shape += 1;
                let command = self.fallback(tick);
                return Filtered { command, outcome };
            }
        };
        if values.iter().any(|v| !v.is_finite()) {
            outcome.rejected_nonfinite = true;
            self.counters.rejected_nonfinite += 1;
            let command = self.fallback(tick);
            return Filtered { command, outcome };
        }
        let mut values = values;
        if let Some(l) = &self.limits {
            for (i, v) in values.iter_mut().enumerate() {
                let clamped = v.clamp(l.min[i], l.max[i]);
                outcome.clamped_position |= clamped != *v;
                *v = clamped;
                if let Some(last) = &self.last {
                    // `last` is within [min, max] and so is `v`: the result lies between them,
                    // hence still within [min, max].
                    let limited = v.clamp(last[i] - l.step[i], last[i] + l.step[i]);
                    outcome.rate_limited |= limited != *v;
                    *v = limited;
                }
            }
        }
        if outcome.clamped_position {
            self.counters.clamped_position += 1;
        }
        if outcome.rate_limited {
            self.counters.rate_limited += 1;
        }
        if outcome.passed() {
            self.counters.passed += 1;
        }
        self.last = Some(values.clone());
        Filtered {
            command: SafeCommand {
                values,
                stop: false,
                tick,
            },
            outcome,
        }
    }

    /// The hold command: the last safe values (or the seed) again, not a stop. For ticks where the
    /// policy has nothing fresh but the robot should keep its position. `None` when nothing was
    /// ever safe and there is no seed (the caller then stops).
    pub fn hold(&mut self, tick: u64) -> Option<SafeCommand> {
        let values = self.last.clone()?;
        self.counters.holds += 1;
        Some(SafeCommand {
            values,
            stop: false,
            tick,
        })
    }

    /// The stop command, always available: `values` are the last safe values, else the seed, else
    /// zeros clamped into the limits (so that every command stays within them).
    pub fn stop(&mut self, tick: u64) -> SafeCommand {
        self.counters.stops += 1;
        let values = match &self.last {
            Some(v) => v.clone(),
            None => {
                let mut v = Values::new();
                for i in 0..self.dims {
                    let zero = match &self.limits {
                        Some(l) => 0.0f32.clamp(l.min[i], l.max[i]),
                        None => 0.0,
                    };
                    let _ = v.push(zero);
                }
                v
            }
        };
        SafeCommand {
            values,
            stop: true,
            tick,
        }
    }

    pub fn counters(&self) -> &SafetyCounters {
        &self.counters
    }

    /// In place of a rejected proposal: hold if anything is safe, stop otherwise.
    fn fallback(&mut self, tick: u64) -> SafeCommand {
        match self.hold(tick) {
            Some(c) => c,
            None => self.stop(tick),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use reflex_models::manifest::{ActionLimits, ActionOutput, Normalization};

    fn spec(limits: Option<ActionLimits>, dims: usize) -> ActionSpec {
        ActionSpec {
            onnx_output: "action".into(),
            names: (0..dims).map(|i| format!("j{i}")).collect(),
            units: vec!["rad".into(); dims],
            output: ActionOutput::Single,
            normalization: Normalization::Identity,
            limits,
            parity_tolerance: None,
        }
    }

    fn limits(min: &[f32], max: &[f32], max_rate: &[f32]) -> Option<ActionLimits> {
        Some(ActionLimits {
            min: min.to_vec(),
            max: max.to_vec(),
            max_rate: max_rate.to_vec(),
        })
    }

    /// Two joints in [-1, 1] and [0, 2], 1 unit/s, at 10 Hz: 0.1 per tick.
    fn filter2() -> SafetyFilter {
        let s = spec(limits(&[-1.0, 0.0], &[1.0, 2.0], &[1.0, 1.0]), 2);
        SafetyFilter::new(&s, 10.0, false).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn missing_limits_refused_unless_allowed() {
        let err = SafetyFilter::new(&spec(None, 2), 10.0, false).unwrap_err();
        assert_eq!(err, SafetyError::MissingLimits);
        let msg = err.to_string();
        assert!(
            msg.contains("`action.limits`") && msg.contains("policy"),
            "{msg}"
        );

        let mut f = SafetyFilter::new(&spec(None, 2), 10.0, true).unwrap();
        // Unlimited: anything finite goes through untouched, NaN is still rejected.
        let out = f.filter(&[1e6, -1e6], 0);
        assert!(out.outcome.passed());
        assert_eq!(out.command.values(), &[1e6, -1e6]);
        let out = f.filter(&[f32::NAN, 0.0], 1);
        assert!(out.outcome.rejected_nonfinite);
        assert_eq!(out.command.values(), &[1e6, -1e6]);
    }

    #[test]
    fn invalid_limits_refused() {
        let too_many = spec(None, MAX_DIM + 1);
        assert_eq!(
            SafetyFilter::new(&too_many, 10.0, true).unwrap_err(),
            SafetyError::TooManyDims { dims: MAX_DIM + 1 }
        );
        let short = spec(limits(&[0.0], &[1.0, 1.0], &[1.0, 1.0]), 2);
        assert!(matches!(
            SafetyFilter::new(&short, 10.0, false).unwrap_err(),
            SafetyError::LimitsLength {
                field: "min",
                got: 1,
                expected: 2
            }
        ));
        let inverted = spec(limits(&[0.0, 2.0], &[1.0, 1.0], &[1.0, 1.0]), 2);
        let err = SafetyFilter::new(&inverted, 10.0, false).unwrap_err();
        assert!(matches!(err, SafetyError::MinAboveMax { index: 1, .. }));
        assert!(err.to_string().contains("`j1`"), "{err}");
        let nan = spec(limits(&[0.0, 0.0], &[1.0, f32::NAN], &[1.0, 1.0]), 2);
        assert!(matches!(
            SafetyFilter::new(&nan, 10.0, false).unwrap_err(),
            SafetyError::InvalidLimit {
                field: "max",
                index: 1,
                ..
            }
        ));
        let negative = spec(limits(&[0.0, 0.0], &[1.0, 1.0], &[-1.0, 1.0]), 2);
        assert!(matches!(
            SafetyFilter::new(&negative, 10.0, false).unwrap_err(),
            SafetyError::InvalidLimit {
                field: "max_rate",
                index: 0,
                ..
            }
        ));
        let ok = spec(limits(&[0.0], &[1.0], &[1.0]), 1);
        assert_eq!(
            SafetyFilter::new(&ok, 0.0, false).unwrap_err(),
            SafetyError::InvalidRate(0.0)
        );
    }

    #[test]
    fn nonfinite_rejects_whole_vector() {
        let mut f = filter2();
        // Nothing safe yet: a rejected proposal becomes a stop.
        let out = f.filter(&[f32::NAN, 0.5], 0);
        assert!(out.outcome.rejected_nonfinite && out.outcome.rejected());
        assert!(out.command.is_stop());
        assert!(out.command.values().iter().all(|v| v.is_finite()));

        let first = f.filter(&[0.5, 0.5], 1);
        assert!(first.outcome.passed());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let out = f.filter(&[0.55, bad], 2);
            assert!(out.outcome.rejected_nonfinite);
            assert!(!out.command.is_stop());
            // The finite dimension was not taken either: the whole vector is dropped.
            assert_eq!(out.command.values(), &[0.5, 0.5]);
            assert_eq!(out.command.tick(), 2);
        }
        let c = f.counters();
        assert_eq!((c.rejected_nonfinite, c.holds, c.stops), (4, 3, 1));
    }

    #[test]
    fn wrong_shape_rejected() {
        let mut f = filter2();
        let out = f.filter(&[0.0], 0);
        assert!(out.outcome.rejected_shape);
        assert!(out.command.is_stop());
        let too_long = [0.0; MAX_DIM + 1];
        assert!(f.filter(&too_long, 1).outcome.rejected_shape);
        assert_eq!(f.counters().rejected_shape, 2);
    }

    #[test]
    fn clamps_both_ends() {
        let mut f = filter2();
        // First command: no reference yet, so only clamping applies.
        let out = f.filter(&[-5.0, 7.0], 0);
        assert!(out.outcome.clamped_position && !out.outcome.rate_limited);
        assert_eq!(out.command.values(), &[-1.0, 2.0]);
        let mut f = filter2();
        let out = f.filter(&[5.0, -7.0], 0);
        assert_eq!(out.command.values(), &[1.0, 0.0]);
        assert_eq!(f.counters().clamped_position, 1);
    }

    #[test]
    fn big_jump_is_rate_limited_per_tick() {
        // +10 rad with max_rate 1 rad/s at 10 Hz: 0.1 rad per tick.
        let s = spec(limits(&[-20.0], &[20.0], &[1.0]), 1);
        let mut f = SafetyFilter::new(&s, 10.0, false).unwrap();
        assert!(f.seed(&[0.0]));
        for tick in 1..=5u64 {
            let out = f.filter(&[10.0], tick);
            assert!(out.outcome.rate_limited);
            assert!(
                (out.command.values()[0] - 0.1 * tick as f32).abs() < 1e-5,
                "{:?}",
                out.command.values()
            );
        }
        assert_eq!(f.counters().rate_limited, 5);
        // Downwards too.
        let out = f.filter(&[-10.0], 6);
        assert!((out.command.values()[0] - 0.4).abs() < 1e-5);
    }

    #[test]
    fn clamp_then_rate_limit() {
        let mut f = filter2();
        assert!(f.seed(&[0.0, 0.0]));
        let out = f.filter(&[9.0, 9.0], 0);
        assert!(out.outcome.clamped_position && out.outcome.rate_limited);
        assert!(close(out.command.values(), &[0.1, 0.1]));
        assert_eq!(f.counters().passed, 0);
    }

    #[test]
    fn seed_is_clamped_and_validated() {
        let mut f = filter2();
        assert!(f.hold(0).is_none());
        assert!(!f.seed(&[0.0]));
        assert!(!f.seed(&[0.0, f32::NAN]));
        assert!(f.hold(0).is_none());
        assert!(f.seed(&[3.0, -3.0]));
        let hold = f.hold(1).unwrap();
        assert_eq!(hold.values(), &[1.0, 0.0]);
        assert!(!hold.is_stop());
        assert_eq!(hold.tick(), 1);
        // Rate limiting starts from the seed.
        let out = f.filter(&[0.0, 1.0], 2);
        assert!(close(out.command.values(), &[0.9, 0.1]));
    }

    #[test]
    fn hold_and_stop_use_last_safe() {
        let mut f = filter2();
        let stop = f.stop(0);
        assert!(stop.is_stop());
        // Zeros, clamped into the limits.
        assert_eq!(stop.values(), &[0.0, 0.0]);
        let s = spec(limits(&[0.5], &[1.0], &[1.0]), 1);
        let mut g = SafetyFilter::new(&s, 10.0, false).unwrap();
        assert_eq!(g.stop(0).values(), &[0.5]);

        f.filter(&[0.3, 0.7], 1);
        let hold = f.hold(2).unwrap();
        assert_eq!((hold.values(), hold.is_stop()), (&[0.3f32, 0.7][..], false));
        let stop = f.stop(3);
        assert_eq!(
            (stop.values(), stop.is_stop(), stop.tick()),
            (&[0.3f32, 0.7][..], true, 3)
        );
        assert_eq!((f.counters().holds, f.counters().stops), (1, 2));
    }

    proptest! {
        /// Whatever the proposals, every command is finite, within [min, max], and within one
        /// step of the previous command.
        #[test]
        fn commands_stay_within_limits_and_rate(
            seed in proptest::option::of(proptest::collection::vec(-5.0f32..5.0, 3)),
            proposals in proptest::collection::vec(
                proptest::collection::vec(
                    prop_oneof![
                        8 => -10.0f32..10.0,
                        1 => Just(f32::NAN),
                        1 => Just(f32::INFINITY),
                        1 => proptest::num::f32::ANY,
                    ],
                    3,
                ),
                1..60,
            ),
        ) {
            let min = [-1.0f32, 0.0, -3.0];
            let max = [1.0f32, 2.5, 3.0];
            let rate = [1.0f32, 0.5, 20.0];
            let s = spec(limits(&min, &max, &rate), 3);
            let mut f = SafetyFilter::new(&s, 30.0, false).unwrap();
            let mut prev: Option<Vec<f32>> = None;
            if let Some(seed) = &seed {
                prop_assert!(f.seed(seed));
                prev = Some(f.hold(0).unwrap().values().to_vec());
            }
            for (tick, p) in proposals.iter().enumerate() {
                let cmd = f.filter(p, tick as u64).command;
                let v = cmd.values();
                prop_assert_eq!(v.len(), 3);
                for i in 0..3 {
                    prop_assert!(v[i].is_finite());
                    prop_assert!(min[i] <= v[i] && v[i] <= max[i], "{:?}", v);
                    if let Some(prev) = &prev {
                        let step = rate[i] / 30.0;
                        prop_assert!((v[i] - prev[i]).abs() <= step * (1.0 + 1e-5) + 1e-6,
                            "dim {} moved {} -> {}", i, prev[i], v[i]);
                    }
                }
                if !cmd.is_stop() {
                    prev = Some(v.to_vec());
                }
            }
        }
    }
}
