//! The hardware seams of the control loop: cameras, state sources and command sinks.
//!
//! They are small on purpose (a camera yields frames, a sink takes commands) so that real drivers
//! (V4L2, SocketCAN), replays and fault injectors are interchangeable, and the loop can be tested
//! tick by tick against any of them. Every method is fallible, and errors carry a [`FaultKind`]
//! that tells the loop what to do: retry next tick, degrade (hold the robot), or stop.
//!
//! Time is always a `u64` of nanoseconds on the monotonic clock the loop's [`crate::clock::Clock`]
//! uses; drivers convert their own timestamps into it.

use crate::control::safety::SafeCommand;
use reflex_models::manifest::PixelFormat;

/// What the control loop should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Transient (a missed frame, a full queue): count it, try again next tick.
    Transient,
    /// The device is gone or unusable for now: hold the robot, keep trying to recover.
    Degraded,
    /// Cannot continue (misconfiguration): stop the robot and exit.
    Fatal,
}

/// An error that says what the control loop should do about it: the embedded-hal
/// `Error::kind()` idea (embedded-hal 1.0 `digital::Error`, `embedded-can::Error`), with the
/// loop's three answers instead of a bus's error classes.
///
/// Every hardware and backend error implements it (cameras, state sources, sinks, safety
/// inputs, preprocessing, inference, the CAN codec), so a caller can handle any of them by
/// kind without knowing the driver. The kinds are decided by the code that knows the cause;
/// callers never guess from the message.
pub trait Fault: std::error::Error {
    /// Retry, degrade or stop.
    fn kind(&self) -> FaultKind;
}

/// Metadata of a captured frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Driver sequence number (gaps = dropped frames).
    pub seq: u64,
    /// Capture time, ns on the loop's monotonic clock.
    pub capture_ns: u64,
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
}

/// A borrowed view of the newest frame; valid until the next call on the camera.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub meta: FrameMeta,
    pub data: &'a [u8],
}

#[derive(Debug, thiserror::Error)]
#[error("camera `{device}`: {message}")]
pub struct CameraError {
    pub device: String,
    pub kind: FaultKind,
    pub message: String,
}

impl Fault for CameraError {
    fn kind(&self) -> FaultKind {
        self.kind
    }
}

pub trait Camera {
    /// Device or replay name for logs and errors.
    fn name(&self) -> &str;
    /// The newest frame available at `now_ns`, or `None` if no frame arrived since the last call
    /// (the caller then reuses its previous frame if still fresh). Never blocks for long: drivers
    /// wait at most until `deadline_ns`.
    fn latest(&mut self, now_ns: u64, deadline_ns: u64) -> Result<Option<Frame<'_>>, CameraError>;
}

#[derive(Debug, thiserror::Error)]
#[error("state source `{source_name}`: {message}")]
pub struct StateError {
    pub source_name: String,
    pub kind: FaultKind,
    pub message: String,
}

impl Fault for StateError {
    fn kind(&self) -> FaultKind {
        self.kind
    }
}

pub trait StateSource {
    fn name(&self) -> &str;
    /// Writes the newest proprioceptive state (physical units, manifest order) into `out` and
    /// returns its timestamp, or `None` if nothing new arrived since the last call.
    fn latest(&mut self, now_ns: u64, out: &mut [f32]) -> Result<Option<u64>, StateError>;
}

#[derive(Debug, thiserror::Error)]
#[error("command sink `{sink}`: {message}")]
pub struct SinkError {
    pub sink: String,
    pub kind: FaultKind,
    pub message: String,
}

impl Fault for SinkError {
    fn kind(&self) -> FaultKind {
        self.kind
    }
}

/// Where commands go. Only [`SafeCommand`]s exist to be sent: they are produced by the safety
/// filter and nothing else, so a command that skipped the checks cannot reach a sink.
pub trait CommandSink {
    fn name(&self) -> &str;
    /// Sends one command. Must not block past the call's own short deadline.
    fn send(&mut self, cmd: &SafeCommand, now_ns: u64) -> Result<(), SinkError>;
    /// Makes sure everything sent so far is written out (end of run).
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A safety input that cannot be opened or read: the e-stop latch already treats a failed read
/// as pressed; for the loop the input is degraded until it reads again.
impl Fault for reflex_board::input::InputError {
    fn kind(&self) -> FaultKind {
        FaultKind::Degraded
    }
}

impl<C: Camera + ?Sized> Camera for Box<C> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn latest(&mut self, now_ns: u64, deadline_ns: u64) -> Result<Option<Frame<'_>>, CameraError> {
        (**self).latest(now_ns, deadline_ns)
    }
}

impl<S: StateSource + ?Sized> StateSource for Box<S> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn latest(&mut self, now_ns: u64, out: &mut [f32]) -> Result<Option<u64>, StateError> {
        (**self).latest(now_ns, out)
    }
}
