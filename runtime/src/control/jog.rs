//! Jogging: moving the motors to a target by hand (`reflex can send`), through the same safety
//! filter as the control loop.
//!
//! A target is one physical value per action dimension ([`parse_target`]). Sent once, only the
//! filter's position limits apply to it. Ramped ([`Jog::ramp`]), the filter is first seeded from
//! the measured joint positions ([`Jog::seed_from_state`]) and the target is then sent at the
//! control rate for a while: the filter's rate limits turn the jump into a ramp from where the
//! joints are to the target, as they would for a policy's command.
//!
//! Time is the caller's ([`Clock`]): the ramp runs on a manual clock in tests.

use crate::clock::Clock;
use crate::control::safety::{Filtered, Outcome, SafeCommand, SafetyError, SafetyFilter};
use crate::io::{CommandSink, Fault, FaultKind, SinkError, StateError, StateSource};
use reflex_models::manifest::Manifest;
use std::num::ParseFloatError;
use std::sync::atomic::{AtomicBool, Ordering};

/// How long [`Jog::seed_from_state`] waits for the first joint state by default, ns.
pub const STATE_TIMEOUT_NS: u64 = 2_000_000_000;

/// How often [`Jog::seed_from_state`] polls the state source while it waits, ns.
const STATE_POLL_NS: u64 = 2_000_000;

/// Why a jog target could not be parsed or a jog could not run. Nothing is sent in the cases
/// that end with "nothing sent"; the others happen before or while sending.
#[derive(Debug, thiserror::Error)]
pub enum JogError {
    /// A target argument without `=`.
    #[error("`{arg}`: expected NAME=VALUE")]
    NotNameValue { arg: String },
    /// A target for a dimension the bundle does not have.
    #[error("`{name}` is not an action name ({names})")]
    UnknownName { name: String, names: String },
    /// A target value that is not a number.
    #[error("`{arg}`: `{value}` is not a number")]
    NotANumber {
        arg: String,
        value: String,
        #[source]
        source: ParseFloatError,
    },
    /// A target value that is NaN or infinite.
    #[error("`{arg}`: the value must be finite")]
    NotFinite { arg: String },
    /// Some action dimensions have no target.
    #[error(
        "every action dimension needs a value (a command moves all joints); missing: {}",
        .missing.join(", ")
    )]
    Missing { missing: Vec<String> },
    /// The bundle's action limits do not make a safety filter.
    #[error(transparent)]
    Safety(#[from] SafetyError),
    /// The state source gave nothing within the timeout.
    #[error("no joint state from {source_name} within {timeout_s} s: nothing sent")]
    NoState { source_name: String, timeout_s: f64 },
    /// The measured state does not cover every action dimension with a finite value.
    #[error(
        "the state from {source_name} does not give a finite position for every action \
         dimension (state names must match action names): nothing sent"
    )]
    BadSeed { source_name: String },
    /// The state source failed (while waiting for the first state, or fatally during a ramp).
    #[error(transparent)]
    State(#[from] StateError),
    /// The command sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl Fault for JogError {
    fn kind(&self) -> FaultKind {
        match self {
            JogError::State(e) => e.kind(),
            JogError::Sink(e) => e.kind(),
            _ => FaultKind::Fatal,
        }
    }
}

/// The action vector named by `NAME=VALUE` arguments (physical units), in the order of `names`
/// (the manifest's action names). Every dimension needs a value, given once or more (the last
/// wins), finite.
pub fn parse_target(names: &[String], args: &[impl AsRef<str>]) -> Result<Vec<f32>, JogError> {
    let mut values = vec![None; names.len()];
    for arg in args {
        let arg = arg.as_ref();
        let (name, v) = arg.split_once('=').ok_or_else(|| JogError::NotNameValue {
            arg: arg.to_owned(),
        })?;
        let i = names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| JogError::UnknownName {
                name: name.to_owned(),
                names: names.join(", "),
            })?;
        let v: f32 = v.parse().map_err(|source| JogError::NotANumber {
            arg: arg.to_owned(),
            value: v.to_owned(),
            source,
        })?;
        if !v.is_finite() {
            return Err(JogError::NotFinite {
                arg: arg.to_owned(),
            });
        }
        values[i] = Some(v);
    }
    let missing: Vec<String> = names
        .iter()
        .zip(&values)
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    if !missing.is_empty() {
        return Err(JogError::Missing { missing });
    }
    Ok(values.into_iter().flatten().collect())
}

/// A target dimension the safety filter changed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    /// Action dimension (manifest order).
    pub dim: usize,
    /// What was asked, physical units.
    pub target: f32,
    /// What the filter let through, physical units.
    pub sent: f32,
    /// Why, in words: `position limits`, `position limits, then the rate limit` or `rate limit:
    /// the command ramps there`.
    pub why: &'static str,
}

/// The dimensions of `target` that the filter changed in `filtered`.
pub fn clamps(target: &[f32], filtered: &Filtered) -> Vec<Clamp> {
    let why = clamp_reason(filtered.outcome);
    target
        .iter()
        .zip(filtered.command.values())
        .enumerate()
        .filter(|(_, (t, v))| t != v)
        .map(|(dim, (&target, &sent))| Clamp {
            dim,
            target,
            sent,
            why,
        })
        .collect()
}

fn clamp_reason(o: Outcome) -> &'static str {
    match (o.clamped_position, o.rate_limited) {
        (true, true) => "position limits, then the rate limit",
        (true, false) => "position limits",
        _ => "rate limit: the command ramps there",
    }
}

/// What a ramp did.
#[derive(Debug, Clone, PartialEq)]
pub struct JogReport {
    /// Commands sent.
    pub sent: u64,
    /// The last command sent.
    pub last: Option<SafeCommand>,
    /// Failed state reads during the ramp (the ramp goes on from its seed; only a fatal one
    /// stops it).
    pub state_errors: u64,
    /// The ramp stopped early on the interrupt flag.
    pub interrupted: bool,
}

/// A target and the safety filter that commands go through on their way to it.
pub struct Jog {
    filter: SafetyFilter,
    target: Vec<f32>,
    /// For each action dimension, the state dimension of the same name.
    action_state: Vec<Option<usize>>,
    /// The last measured state (manifest state order; zeros before the first).
    state: Vec<f32>,
    period_ns: u64,
}

impl Jog {
    /// A jog to `target` (one physical value per action dimension, e.g. from [`parse_target`])
    /// with the bundle's safety filter at its control rate. `allow_unlimited`: accept a bundle
    /// without action limits (bench setups only).
    pub fn new(m: &Manifest, target: Vec<f32>, allow_unlimited: bool) -> Result<Self, JogError> {
        let filter = SafetyFilter::new(&m.action, m.control.rate_hz, allow_unlimited)?;
        Ok(Jog {
            filter,
            target,
            action_state: m.action_state_indices(),
            state: vec![0.0; m.state.names.len()],
            period_ns: (1e9 / m.control.rate_hz).round() as u64,
        })
    }

    /// The target, physical units.
    pub fn target(&self) -> &[f32] {
        &self.target
    }

    /// The last measured joint state (physical units, manifest state order; zeros before
    /// [`Jog::seed_from_state`]).
    pub fn measured(&self) -> &[f32] {
        &self.state
    }

    /// The control period the ramp runs at, ns.
    pub fn period_ns(&self) -> u64 {
        self.period_ns
    }

    /// The filtered command toward the target for tick `tick`.
    pub fn step(&mut self, tick: u64) -> Filtered {
        self.filter.filter(&self.target, tick)
    }

    /// The filter's stop command for tick `tick` (at the last safe values).
    pub fn stop(&mut self, tick: u64) -> SafeCommand {
        self.filter.stop(tick)
    }

    /// Waits up to `timeout_ns` (on `clock`) for a joint state from `src` (kept as
    /// [`Jog::measured`]) and seeds the filter with the measured position of every
    /// action dimension, so that rate limits ramp from there.
    ///
    /// Errors: [`JogError::State`] on any read error while waiting, [`JogError::NoState`] when
    /// nothing came, [`JogError::BadSeed`] when an action dimension has no finite measured
    /// position (no state of the same name, or NaN).
    pub fn seed_from_state(
        &mut self,
        src: &mut dyn StateSource,
        clock: &impl Clock,
        timeout_ns: u64,
    ) -> Result<(), JogError> {
        let t0 = clock.now_ns();
        while src.latest(clock.now_ns(), &mut self.state)?.is_none() {
            if clock.now_ns().saturating_sub(t0) > timeout_ns {
                return Err(JogError::NoState {
                    source_name: src.name().to_owned(),
                    timeout_s: timeout_ns as f64 / 1e9,
                });
            }
            clock.sleep_until(clock.now_ns() + STATE_POLL_NS);
        }
        let seed: Vec<f32> = self
            .action_state
            .iter()
            .map(|j| {
                j.and_then(|j| self.state.get(j).copied())
                    .unwrap_or(f32::NAN)
            })
            .collect();
        if !self.filter.seed(&seed) {
            return Err(JogError::BadSeed {
                source_name: src.name().to_owned(),
            });
        }
        Ok(())
    }

    /// Sends the filtered target `ticks` times at the control rate (tick `k` at `start + k *
    /// period` on `clock`), reading the state on every tick (into [`Jog::measured`]), then
    /// flushes the sink. `first` sees the first command before it
    /// is sent (to say what the filter changed).
    ///
    /// Stops early when `interrupt` is set. A state read that fails transiently or degraded is
    /// counted in [`JogReport::state_errors`] and the ramp goes on (it runs from its seed and
    /// does not use the state); a fatal one stops the ramp (the sink is still flushed) and is
    /// returned. A sink error is returned at once.
    pub fn ramp(
        &mut self,
        src: &mut dyn StateSource,
        sink: &mut dyn CommandSink,
        clock: &impl Clock,
        ticks: u64,
        interrupt: &AtomicBool,
        mut first: impl FnMut(&Filtered),
    ) -> Result<JogReport, JogError> {
        let mut report = JogReport {
            sent: 0,
            last: None,
            state_errors: 0,
            interrupted: false,
        };
        let mut fatal = None;
        let start = clock.now_ns();
        for tick in 0..ticks {
            if interrupt.load(Ordering::Relaxed) {
                report.interrupted = true;
                break;
            }
            if let Err(e) = src.latest(clock.now_ns(), &mut self.state) {
                report.state_errors += 1;
                if e.kind() == FaultKind::Fatal {
                    fatal = Some(e);
                    break;
                }
                if report.state_errors == 1 {
                    log::warn!("{e}; the ramp goes on from its start position");
                }
            }
            let f = self.step(tick);
            if tick == 0 {
                first(&f);
            }
            sink.send(&f.command, clock.now_ns())?;
            report.sent += 1;
            report.last = Some(f.command);
            clock.sleep_until(start + (tick + 1) * self.period_ns);
        }
        sink.flush()?;
        match fatal {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::can::sink::RecordingSink;
    use crate::clock::ManualClock;
    use reflex_models::onnx::{EncoderKind, HeadKind, PolicyArch};
    use reflex_models::reference::{default_capture, reference_manifest, ARM_JOINTS};
    use std::collections::VecDeque;

    fn manifest() -> Manifest {
        let arch = PolicyArch {
            encoder: EncoderKind::Resnet18,
            cameras: vec!["front".into()],
            shared_encoder: false,
            state_dim: 6,
            action_dim: 6,
            hidden: vec![],
            head: HeadKind::Single,
        };
        reference_manifest(&arch, "jog-test", default_capture())
    }

    fn names(m: &Manifest) -> Vec<String> {
        m.action.names.clone()
    }

    /// Replies from a script, one per read: `Some(values)`, `None` (nothing new) or an error of
    /// the given kind.
    struct Scripted {
        replies: VecDeque<Result<Option<Vec<f32>>, FaultKind>>,
        now: u64,
    }

    impl Scripted {
        fn new(replies: Vec<Result<Option<Vec<f32>>, FaultKind>>) -> Self {
            Scripted {
                replies: replies.into(),
                now: 0,
            }
        }
    }

    impl StateSource for Scripted {
        fn name(&self) -> &str {
            "scripted"
        }
        fn latest(&mut self, now_ns: u64, out: &mut [f32]) -> Result<Option<u64>, StateError> {
            self.now = now_ns;
            match self.replies.pop_front().unwrap_or(Ok(None)) {
                Ok(Some(v)) => {
                    out.copy_from_slice(&v);
                    Ok(Some(now_ns))
                }
                Ok(None) => Ok(None),
                Err(kind) => Err(StateError {
                    source_name: "scripted".into(),
                    kind,
                    message: "read failed".into(),
                }),
            }
        }
    }

    #[test]
    fn targets_are_named_and_complete() {
        let m = manifest();
        let n = names(&m);
        let all = [
            "shoulder_pan=0.1",
            "shoulder_lift=0",
            "elbow_flex=-0.2",
            "wrist_flex=0",
            "wrist_roll=0",
            "gripper=0.04",
        ];
        assert_eq!(
            parse_target(&n, &all).unwrap(),
            [0.1, 0.0, -0.2, 0.0, 0.0, 0.04]
        );
        let err = |args: &[&str]| parse_target(&n, args).unwrap_err().to_string();
        assert_eq!(
            err(&["shoulder_pan=0.1"]),
            "every action dimension needs a value (a command moves all joints); missing: \
             shoulder_lift, elbow_flex, wrist_flex, wrist_roll, gripper"
        );
        assert!(err(&["knee=1"]).starts_with("`knee` is not an action name (shoulder_pan, "));
        assert_eq!(
            err(&["shoulder_pan"]),
            "`shoulder_pan`: expected NAME=VALUE"
        );
        assert_eq!(
            err(&["shoulder_pan=abc"]),
            "`shoulder_pan=abc`: `abc` is not a number"
        );
        assert_eq!(
            err(&["shoulder_pan=inf"]),
            "`shoulder_pan=inf`: the value must be finite"
        );
    }

    #[test]
    fn a_single_step_is_clamped_to_the_position_limits_only() {
        let m = manifest();
        let hi = ARM_JOINTS[3].3;
        let mut jog = Jog::new(&m, vec![0.1, 0.0, 0.0, 3.0, 0.0, 0.04], false).unwrap();
        let f = jog.step(0);
        assert_eq!(f.command.values(), [0.1, 0.0, 0.0, hi, 0.0, 0.04]);
        assert_eq!(
            clamps(jog.target(), &f),
            [Clamp {
                dim: 3,
                target: 3.0,
                sent: hi,
                why: "position limits"
            }]
        );
        assert!(jog.stop(1).is_stop());
    }

    #[test]
    fn the_ramp_starts_at_the_measured_state_and_moves_at_the_rate_limit() {
        let m = manifest();
        let rate_hz = m.control.rate_hz;
        let target = vec![0.5, -0.5, 0.25, 0.0, 0.1, 0.04];
        let mut jog = Jog::new(&m, target.clone(), false).unwrap();
        let start = [0.0f32, 0.0, 0.0, 0.0, 0.0, 0.02];
        // Nothing on the first reads, then the state; then a transient error mid-ramp.
        let mut replies = vec![Ok(None), Ok(None), Ok(Some(start.to_vec()))];
        replies.push(Ok(None));
        replies.push(Err(FaultKind::Transient));
        let mut src = Scripted::new(replies);
        let clock = ManualClock::new(1_000);
        jog.seed_from_state(&mut src, &clock, STATE_TIMEOUT_NS)
            .unwrap();
        assert_eq!(jog.measured(), start);
        let ticks = (2.0 * rate_hz) as u64;
        let mut sink = RecordingSink::with_capacity(ticks as usize);
        let mut firsts = vec![];
        let t0 = clock.now_ns();
        let report = jog
            .ramp(
                &mut src,
                &mut sink,
                &clock,
                ticks,
                &AtomicBool::new(false),
                |f| firsts.push(clamps(&target, f)),
            )
            .unwrap();
        assert_eq!(report.sent, ticks);
        assert_eq!(report.state_errors, 1);
        assert!(!report.interrupted);
        assert_eq!(sink.sent.len() as u64, ticks);
        // Ticks on the control period of the caller's clock.
        for (k, (t, _)) in sink.sent.iter().enumerate() {
            assert_eq!(*t, t0 + k as u64 * jog.period_ns());
        }
        // The first command is one rate-limited step from the measured state, not the target.
        let first = sink.sent[0].1.values();
        let step = ARM_JOINTS[0].4 / rate_hz as f32;
        assert!((first[0] - step).abs() < 1e-6, "{first:?}");
        assert_eq!(firsts.len(), 1);
        assert!(firsts[0]
            .iter()
            .all(|c| c.why == "rate limit: the command ramps there"));
        // Every step within the rate limit; the ramp ends at the target.
        let mut prev = start.to_vec();
        for (_, cmd) in &sink.sent {
            for (i, (v, p)) in cmd.values().iter().zip(&prev).enumerate() {
                assert!((v - p).abs() <= ARM_JOINTS[i].4 / rate_hz as f32 + 1e-6);
            }
            prev = cmd.values().to_vec();
        }
        assert_eq!(report.last.unwrap().values(), target);
    }

    #[test]
    fn no_state_bad_state_and_fatal_reads_send_nothing_more() {
        let m = manifest();
        let target = vec![0.0; 6];
        let clock = ManualClock::new(0);
        // Silence: gives up after the timeout, on the caller's clock.
        let mut jog = Jog::new(&m, target.clone(), false).unwrap();
        let e = jog
            .seed_from_state(&mut Scripted::new(vec![]), &clock, 100_000_000)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no joint state from scripted within 0.1 s: nothing sent"
        );
        assert!(clock.now_ns() > 100_000_000 && clock.now_ns() < 110_000_000);
        // A NaN position cannot seed the filter.
        let mut nan = vec![0.0; 6];
        nan[2] = f32::NAN;
        let e = jog
            .seed_from_state(
                &mut Scripted::new(vec![Ok(Some(nan))]),
                &clock,
                STATE_TIMEOUT_NS,
            )
            .unwrap_err();
        assert!(matches!(e, JogError::BadSeed { .. }), "{e}");
        // A fatal read mid-ramp stops it and is returned.
        let mut src = Scripted::new(vec![
            Ok(Some(vec![0.0; 6])),
            Ok(None),
            Err(FaultKind::Fatal),
        ]);
        jog.seed_from_state(&mut src, &clock, STATE_TIMEOUT_NS)
            .unwrap();
        let mut sink = RecordingSink::with_capacity(8);
        let e = jog
            .ramp(
                &mut src,
                &mut sink,
                &clock,
                8,
                &AtomicBool::new(false),
                |_| {},
            )
            .unwrap_err();
        assert!(matches!(e, JogError::State(_)), "{e}");
        assert_eq!(e.kind(), FaultKind::Fatal);
        assert_eq!(sink.sent.len(), 1);
        // An interrupt before the first tick sends nothing.
        let report = jog
            .ramp(
                &mut Scripted::new(vec![]),
                &mut sink,
                &clock,
                8,
                &AtomicBool::new(true),
                |_| {},
            )
            .unwrap();
        assert!(report.interrupted && report.sent == 0 && report.last.is_none());
    }
}
