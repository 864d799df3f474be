//! The e-stop latch: a stop input, an optional arm input, and the rule for resuming.
//!
//! ```text
//!            stop active, or its poll fails              stop inactive
//!   Armed ───────────────────────────────────► Tripped ────────────────► Released
//!     ▲                                           ▲      stop active        │
//!     │                                           └─────────────────────────┤
//!     └─────────────────────────────────────────────────────────────────────┘
//!        rising edge of the arm input, at a poll after the one that saw the release
//! ```
//!
//! - Anything but `Armed` stops the robot ([`EStopStatus::Stopped`]); the control loop sends stop
//!   commands and runs no inference.
//! - Releasing the e-stop alone never resumes: the arm input must then go from inactive to active
//!   (a new press). An arm press while the e-stop is still pressed does nothing, and an arm button
//!   held down through the release does not count: it must be let go and pressed again.
//! - A stop input that cannot be read counts as pressed (fail-safe). An arm input that cannot be
//!   read counts as not pressed, and as held for edge detection: only a clean read of "released"
//!   followed by "pressed" arms.
//! - The e-stop pressed at the first poll starts the latch `Tripped` (counted as a trip).
//! - Without an arm input, a trip is final: only restarting reflex clears it.
//!
//! The transition back to `Armed` is reported once as [`EStopStatus::Rearmed`], so the loop can
//! forget its old plan and reseed its safety filter before resuming.
//!
//! Both inputs are polled on every tick, whatever the state (so that edges are seen and CAN
//! inputs drained). Polling formats no text and allocates nothing while the inputs read cleanly;
//! logs are written on transitions only (a failing input's error value itself may allocate).

use reflex_board::input::{InputError, SafetyInput, StatusOutput};

/// Where the latch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum EStopState {
    /// The robot may move.
    Armed,
    /// The e-stop is pressed (or unreadable).
    Tripped,
    /// The e-stop was released; waiting for a press of the arm input.
    Released,
}

/// What the latch tells the loop for one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EStopStatus {
    /// Armed: run normally.
    Run,
    /// Tripped or released-awaiting-arm: send stop commands, no inference.
    Stopped,
    /// Armed again at this poll (one tick only; `Run` afterwards): reset, then run.
    Rearmed,
}

/// E-stop events, reported at exit next to the loop's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EStopCounters {
    /// Transitions from armed to tripped (including the e-stop pressed at start).
    pub trips: u64,
    /// Transitions from released to armed.
    pub rearms: u64,
    /// Polls of either input that failed.
    pub input_errors: u64,
}

/// Half-periods of the status LED's blinking: slow while the e-stop is pressed, fast once it is
/// released and the arm button is awaited.
const BLINK_TRIPPED_NS: u64 = 500_000_000;
const BLINK_RELEASED_NS: u64 = 125_000_000;

struct Led {
    out: Box<dyn StatusOutput>,
    level: Option<bool>,
    failing: bool,
}

/// The e-stop latch. See the module documentation.
pub struct EStop {
    stop: Box<dyn SafetyInput>,
    arm: Option<Box<dyn SafetyInput>>,
    led: Option<Led>,
    state: EStopState,
    polled: bool,
    /// The arm input's level at the previous poll (true when unknown or unreadable).
    arm_prev: bool,
    stop_failing: bool,
    arm_failing: bool,
    counters: EStopCounters,
}

impl EStop {
    /// A latch on `stop` (active = pressed), re-armed by presses of `arm`. Without `arm`, a trip
    /// can only be cleared by restarting reflex.
    pub fn new(stop: Box<dyn SafetyInput>, arm: Option<Box<dyn SafetyInput>>) -> Self {
        Self {
            stop,
            arm,
            led: None,
            state: EStopState::Armed,
            polled: false,
            arm_prev: true,
            stop_failing: false,
            arm_failing: false,
            counters: EStopCounters::default(),
        }
    }

    /// Drives a status output from the state: steady on while armed, blinking slowly while the
    /// e-stop is pressed, fast once it is released and the arm button is awaited.
    pub fn with_status_led(mut self, led: Box<dyn StatusOutput>) -> Self {
        self.led = Some(Led {
            out: led,
            level: None,
            failing: false,
        });
        self
    }

    pub fn state(&self) -> EStopState {
        self.state
    }

    pub fn counters(&self) -> &EStopCounters {
        &self.counters
    }

    /// The stop input's name (for reports).
    pub fn stop_name(&self) -> &str {
        self.stop.name()
    }

    /// The arm input's name, if there is one.
    pub fn arm_name(&self) -> Option<&str> {
        self.arm.as_deref().map(|a| a.name())
    }

    /// Reads both inputs at `now_ns` (the loop's clock) and advances the latch.
    pub fn poll(&mut self, now_ns: u64) -> EStopStatus {
        let first = !self.polled;
        self.polled = true;
        let pressed = match self.stop.poll(now_ns) {
            Ok(p) => {
                if self.stop_failing {
                    self.stop_failing = false;
                    log::info!("e-stop input `{}` reads again", self.stop.name());
                }
                p
            }
            Err(e) => {
                self.counters.input_errors += 1;
                if !self.stop_failing {
                    self.stop_failing = true;
                    log::error!("e-stop input: {e}; treated as pressed");
                }
                true
            }
        };
        let arm_edge = self.poll_arm(now_ns);

        let mut status = EStopStatus::Stopped;
        match self.state {
            EStopState::Armed if pressed => {
                self.state = EStopState::Tripped;
                self.counters.trips += 1;
                self.log_trip(first);
            }
            EStopState::Armed => status = EStopStatus::Run,
            EStopState::Tripped if !pressed => {
                self.state = EStopState::Released;
                match self.arm.as_deref() {
                    Some(arm) => log::warn!(
                        "e-stop `{}` released: press arm `{}` to resume",
                        self.stop.name(),
                        arm.name()
                    ),
                    None => log::warn!(
                        "e-stop `{}` released; the robot stays stopped until reflex restarts (no \
                         arm input)",
                        self.stop.name()
                    ),
                }
            }
            EStopState::Tripped => {}
            EStopState::Released if pressed => {
                self.state = EStopState::Tripped;
                log::warn!("e-stop `{}` pressed again", self.stop.name());
            }
            EStopState::Released if arm_edge => {
                self.state = EStopState::Armed;
                self.counters.rearms += 1;
                status = EStopStatus::Rearmed;
                log::warn!(
                    "e-stop re-armed by `{}`: resuming",
                    self.arm_name().unwrap_or("?")
                );
            }
            EStopState::Released => {}
        }
        self.drive_led(now_ns);
        status
    }

    /// Polls the arm input; true on a rising edge (inactive at the previous poll, active now).
    fn poll_arm(&mut self, now_ns: u64) -> bool {
        let Some(arm) = self.arm.as_deref_mut() else {
            return false;
        };
        let (level, prev) = match arm.poll(now_ns) {
            Ok(level) => {
                if self.arm_failing {
                    self.arm_failing = false;
                    log::info!("arm input `{}` reads again", arm.name());
                }
                (level, std::mem::replace(&mut self.arm_prev, level))
            }
            Err(e) => {
                self.counters.input_errors += 1;
                if !self.arm_failing {
                    self.arm_failing = true;
                    log::warn!("arm input: {e}; cannot re-arm until it reads again");
                }
                self.arm_prev = true;
                (false, true)
            }
        };
        level && !prev
    }

    fn log_trip(&self, first: bool) {
        let at = if first { " at start" } else { "" };
        match self.arm.as_deref() {
            Some(arm) => log::error!(
                "e-stop `{}` active{at}: robot stopped; release it, then press arm `{}`",
                self.stop.name(),
                arm.name()
            ),
            None => log::error!(
                "e-stop `{}` active{at}: robot stopped; no arm input is configured, so only \
                 restarting reflex clears it",
                self.stop.name()
            ),
        }
    }

    fn drive_led(&mut self, now_ns: u64) {
        let Some(led) = &mut self.led else {
            return;
        };
        let on = match self.state {
            EStopState::Armed => true,
            EStopState::Tripped => (now_ns / BLINK_TRIPPED_NS).is_multiple_of(2),
            EStopState::Released => (now_ns / BLINK_RELEASED_NS).is_multiple_of(2),
        };
        if led.level == Some(on) {
            return;
        }
        match led.out.set(on) {
            Ok(()) => {
                led.level = Some(on);
                led.failing = false;
            }
            Err(e) => {
                if !led.failing {
                    led.failing = true;
                    log::warn!("status LED: {e}");
                }
            }
        }
    }
}

/// A [`SafetyInput`] whose level is set from outside (tests, or a software e-stop from another
/// thread): shares an atomic flag with its [`ManualInputHandle`].
pub struct ManualInput {
    name: String,
    state: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

/// Sets the level of a [`ManualInput`].
#[derive(Clone)]
pub struct ManualInputHandle(std::sync::Arc<std::sync::atomic::AtomicU8>);

const INACTIVE: u8 = 0;
const ACTIVE: u8 = 1;
const FAILING: u8 = 2;

impl ManualInput {
    /// An input named `name`, initially `active`.
    pub fn new(name: impl Into<String>, active: bool) -> (Self, ManualInputHandle) {
        let state = std::sync::Arc::new(std::sync::atomic::AtomicU8::new(if active {
            ACTIVE
        } else {
            INACTIVE
        }));
        (
            Self {
                name: name.into(),
                state: state.clone(),
            },
            ManualInputHandle(state),
        )
    }
}

impl ManualInputHandle {
    pub fn set(&self, active: bool) {
        self.0.store(
            if active { ACTIVE } else { INACTIVE },
            std::sync::atomic::Ordering::Relaxed,
        );
    }
    /// Makes every poll fail until the next [`ManualInputHandle::set`].
    pub fn fail(&self) {
        self.0.store(FAILING, std::sync::atomic::Ordering::Relaxed);
    }
}

impl SafetyInput for ManualInput {
    fn name(&self) -> &str {
        &self.name
    }
    fn poll(&mut self, _now_ns: u64) -> Result<bool, InputError> {
        match self.state.load(std::sync::atomic::Ordering::Relaxed) {
            INACTIVE => Ok(false),
            ACTIVE => Ok(true),
            _ => Err(InputError::new(self.name.as_str(), "read failed (manual)")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use EStopStatus::{Rearmed, Run, Stopped};

    fn latch(stop_active: bool, with_arm: bool) -> (EStop, ManualInputHandle, ManualInputHandle) {
        let (stop, s) = ManualInput::new("stop", stop_active);
        let (arm, a) = ManualInput::new("arm", false);
        let arm: Option<Box<dyn SafetyInput>> = with_arm.then(|| Box::new(arm) as _);
        (EStop::new(Box::new(stop), arm), s, a)
    }

    #[test]
    fn trip_release_arm() {
        let (mut e, s, a) = latch(false, true);
        assert_eq!(e.poll(0), Run);
        assert_eq!(e.state(), EStopState::Armed);
        s.set(true);
        assert_eq!(e.poll(1), Stopped);
        assert_eq!(e.state(), EStopState::Tripped);
        // Arm while pressed: nothing, and holding it through the release does not count.
        a.set(true);
        assert_eq!(e.poll(2), Stopped);
        s.set(false);
        assert_eq!(e.poll(3), Stopped);
        assert_eq!(e.state(), EStopState::Released);
        assert_eq!(e.poll(4), Stopped);
        // Released alone does not resume.
        a.set(false);
        assert_eq!(e.poll(5), Stopped);
        a.set(true);
        assert_eq!(e.poll(6), Rearmed);
        assert_eq!(e.poll(7), Run);
        assert_eq!(e.state(), EStopState::Armed);
        assert_eq!(
            e.counters(),
            &EStopCounters {
                trips: 1,
                rearms: 1,
                input_errors: 0
            }
        );
    }

    #[test]
    fn arm_at_the_release_poll_does_not_count() {
        let (mut e, s, a) = latch(true, true);
        assert_eq!(e.poll(0), Stopped);
        s.set(false);
        a.set(true);
        assert_eq!(e.poll(1), Stopped);
        assert_eq!(e.poll(2), Stopped, "still held: no new edge");
        a.set(false);
        assert_eq!(e.poll(3), Stopped);
        a.set(true);
        assert_eq!(e.poll(4), Rearmed);
    }

    #[test]
    fn pressed_at_start_starts_tripped() {
        let (mut e, s, a) = latch(true, true);
        assert_eq!(e.poll(0), Stopped);
        assert_eq!(e.counters().trips, 1);
        a.set(true);
        assert_eq!(e.poll(1), Stopped);
        s.set(false);
        a.set(false);
        assert_eq!(e.poll(2), Stopped);
        a.set(true);
        assert_eq!(e.poll(3), Rearmed);
    }

    #[test]
    fn pressed_again_while_released_goes_back_to_tripped() {
        let (mut e, s, a) = latch(true, true);
        e.poll(0);
        s.set(false);
        e.poll(1);
        s.set(true);
        a.set(true);
        assert_eq!(e.poll(2), Stopped);
        assert_eq!(e.state(), EStopState::Tripped);
        assert_eq!(e.counters().trips, 1);
    }

    #[test]
    fn input_errors_are_fail_safe() {
        let (mut e, s, a) = latch(false, true);
        assert_eq!(e.poll(0), Run);
        s.fail();
        assert_eq!(e.poll(1), Stopped);
        assert_eq!(e.poll(2), Stopped);
        assert_eq!(e.counters().input_errors, 2);
        assert_eq!(e.counters().trips, 1);
        s.set(false);
        assert_eq!(e.poll(3), Stopped);
        assert_eq!(e.state(), EStopState::Released);
        // An arm input that fails cannot arm, and counts as held afterwards.
        a.fail();
        assert_eq!(e.poll(4), Stopped);
        a.set(true);
        assert_eq!(e.poll(5), Stopped, "no clean release seen since the error");
        a.set(false);
        e.poll(6);
        a.set(true);
        assert_eq!(e.poll(7), Rearmed);
        assert_eq!(e.counters().input_errors, 3);
    }

    #[test]
    fn without_arm_a_trip_is_final() {
        let (mut e, s, _) = latch(false, false);
        assert_eq!(e.poll(0), Run);
        s.set(true);
        assert_eq!(e.poll(1), Stopped);
        s.set(false);
        for t in 2..100 {
            assert_eq!(e.poll(t), Stopped);
        }
        assert_eq!(e.arm_name(), None);
    }

    struct Recorder(std::rc::Rc<std::cell::RefCell<Vec<bool>>>);
    impl StatusOutput for Recorder {
        fn name(&self) -> &str {
            "led"
        }
        fn set(&mut self, on: bool) -> Result<(), InputError> {
            self.0.borrow_mut().push(on);
            Ok(())
        }
    }

    #[test]
    fn status_led_steady_when_armed_blinking_when_stopped() {
        let levels = std::rc::Rc::new(std::cell::RefCell::new(vec![]));
        let (e, s, _) = latch(false, true);
        let mut e = e.with_status_led(Box::new(Recorder(levels.clone())));
        let ms = 1_000_000;
        for t in 0..10 {
            e.poll(t * 100 * ms);
        }
        assert_eq!(*levels.borrow(), [true], "set once, only on changes");
        s.set(true);
        for t in 10..30 {
            e.poll(t * 100 * ms);
        }
        // Tripped at 1 s: 500 ms on, 500 ms off.
        assert_eq!(*levels.borrow(), [true, false, true, false]);
    }
}
