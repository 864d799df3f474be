//! Progress on stderr for long work off the control loop: quantize's calibration and accuracy
//! runs, exports, bench warm-up and run.
//!
//! A thin wrapper over `indicatif` so every command draws the same bar. Drawn only when stderr is
//! a terminal: in CI, under a pipe or with stderr redirected to a file nothing is written, so logs
//! and captured output stay as they were. Never use it on the control loop's tick (it formats
//! and takes a lock); call [`Progress::inc`] between ticks or from the thread doing the long work.
//!
//! ```no_run
//! use reflex_runtime::progress::Progress;
//! let p = Progress::new(200, "calibrating");
//! for _ in 0..200 {
//!     // ... one frame ...
//!     p.inc(1);
//! }
//! p.finish();
//! let s = Progress::spinner("building the engine");
//! // ... work of unknown length; `s.set_message("...")` to say which step ...
//! s.finish();
//! ```

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::borrow::Cow;
use std::io::IsTerminal;
use std::time::Duration;

/// Bar for a known number of steps: `what [=====>    ] 37/200 1.2s left (message)`.
const BAR: &str = "{prefix} [{bar:32}] {pos}/{len} {elapsed} ({eta} left) {msg}";
/// Bar for a known number of bytes.
const BYTES: &str = "{prefix} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} {msg}";
/// Unknown length: a spinner, the time so far and the current step.
const SPINNER: &str = "{spinner} {prefix} {elapsed} {msg}";
/// How often a spinner turns on its own, so it moves while one long step runs.
const SPIN_EVERY: Duration = Duration::from_millis(120);

/// A progress bar or spinner on stderr, hidden when stderr is not a terminal.
#[derive(Debug, Clone)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for `len` steps of `what` ("calibrating", "warm-up").
    pub fn new(len: u64, what: &str) -> Self {
        Self::styled(Some(len), what, BAR)
    }

    /// A bar for `len` bytes of `what` ("writing policy.onnx"), with the transfer rate.
    pub fn bytes(len: u64, what: &str) -> Self {
        Self::styled(Some(len), what, BYTES)
    }

    /// A spinner for work of unknown length; it turns on its own until [`Progress::finish`].
    pub fn spinner(what: &str) -> Self {
        let p = Self::styled(None, what, SPINNER);
        p.bar.enable_steady_tick(SPIN_EVERY);
        p
    }

    /// Never drawn (for callers that must stay quiet whatever stderr is).
    pub fn hidden() -> Self {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    fn styled(len: Option<u64>, what: &str, template: &str) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(len, target);
        // The templates are constants: a failure is a bug caught by the tests, not a user error;
        // fall back to indicatif's default look rather than failing the work.
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(what.to_string());
        Progress { bar }
    }

    /// `n` more steps (or bytes) done.
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }

    /// The current step, shown after the bar ("frame 12", "hashing").
    pub fn set_message(&self, msg: impl Into<Cow<'static, str>>) {
        self.bar.set_message(msg);
    }

    /// Steps (or bytes) done so far.
    pub fn position(&self) -> u64 {
        self.bar.position()
    }

    /// Whether nothing is drawn (stderr is not a terminal, or [`Progress::hidden`]).
    pub fn is_hidden(&self) -> bool {
        self.bar.is_hidden()
    }

    /// Done: the bar is removed from the terminal (the command prints its own summary).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Runs `f` (which prints to the terminal) with the bar hidden, then redraws it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse() {
        for t in [BAR, BYTES, SPINNER] {
            assert!(ProgressStyle::with_template(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn counts_steps_and_stays_quiet_off_a_terminal() {
        let p = Progress::new(10, "test");
        for _ in 0..4 {
            p.inc(1);
        }
        p.set_message("step");
        assert_eq!(p.position(), 4);
        // Under `cargo test` stderr is captured, not a terminal.
        if !std::io::stderr().is_terminal() {
            assert!(p.is_hidden());
        }
        p.finish();
        let s = Progress::spinner("spin");
        s.inc(3);
        assert_eq!(s.position(), 3);
        s.finish();
        assert!(Progress::hidden().is_hidden());
    }
}
