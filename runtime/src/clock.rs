//! Time is supplied by the caller.
//!
//! The loop never reads the system clock itself: it is handed a [`Clock`], so tests run tick by
//! tick on a [`ManualClock`] and get the same result every time, while the robot uses
//! [`MonotonicClock`] (CLOCK_MONOTONIC, immune to wall-clock jumps from NTP).

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock {
    /// Nanoseconds on a monotonic timeline.
    fn now_ns(&self) -> u64;
    /// Blocks until `t_ns` (or returns at once if it is past).
    fn sleep_until(&self, t_ns: u64);
    /// Offset to add to a `now_ns` value to get nanoseconds since the UNIX epoch (for logs).
    fn epoch_offset_ns(&self) -> u64;
}

/// The real clock: `Instant` (CLOCK_MONOTONIC on Linux) counted from construction.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    start: Instant,
    epoch_offset_ns: u64,
}

impl MonotonicClock {
    pub fn new() -> Self {
        let start = Instant::now();
        let epoch_offset_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        MonotonicClock {
            start,
            epoch_offset_ns,
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn sleep_until(&self, t_ns: u64) {
        // Sleep most of the way, then spin the last stretch: thread wake-up latency on a
        // non-RT kernel is 50-100 us, which would show up as control-period jitter.
        const SPIN_NS: u64 = 200_000;
        loop {
            let now = self.now_ns();
            if now >= t_ns {
                return;
            }
            let left = t_ns - now;
            if left > SPIN_NS {
                std::thread::sleep(Duration::from_nanos(left - SPIN_NS));
            } else {
                std::hint::spin_loop();
            }
        }
    }
    fn epoch_offset_ns(&self) -> u64 {
        self.epoch_offset_ns
    }
}

/// A clock that only moves when told to: for deterministic tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: Cell<u64>,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        ManualClock {
            now: Cell::new(start_ns),
        }
    }
    pub fn set(&self, t_ns: u64) {
        self.now.set(t_ns);
    }
    pub fn advance(&self, d_ns: u64) {
        self.now.set(self.now.get() + d_ns);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.get()
    }
    fn sleep_until(&self, t_ns: u64) {
        if t_ns > self.now.get() {
            self.now.set(t_ns);
        }
    }
    fn epoch_offset_ns(&self) -> u64 {
        1_700_000_000_000_000_000
    }
}
