//! Fakes of the runtime's seams ([`Camera`], [`StateSource`], [`CommandSink`],
//! [`Policy`]): they implement the traits, never reach into a driver. Tests script them
//! tick by tick through shared cells.
//!
//! The shapes match [`crate::rig::MANIFEST`]: one 8x6 RGB camera resized to 4x4 (a 3x4x4 image
//! input), two joints, a chunk of 4 (8 outputs).

use reflex_models::manifest::PixelFormat;
use reflex_runtime::control::safety::SafeCommand;
use reflex_runtime::infer::policy::{Policy, PolicyError};
use reflex_runtime::infer::session::SessionError;
use reflex_runtime::io::{
    Camera, CameraError, CommandSink, FaultKind, Frame, FrameMeta, SinkError, StateError,
    StateSource,
};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc::Receiver;

/// A switch the test flips between ticks and a fake reads.
pub type Switch = Rc<Cell<bool>>;

/// An 8x6 RGB24 camera whose behaviour the test scripts tick by tick: a new frame (captured
/// "now", sequence numbers 1, 2, ...) on each call while `live`, nothing new while not, and a
/// `Degraded` error ("device disappeared") while `gone`.
#[derive(Debug)]
pub struct ScriptedCamera {
    /// The frame's bytes: 8 x 6 x 3, a fixed ramp.
    pub frame: Vec<u8>,
    /// Deliver a new frame on each call while true.
    pub live: Switch,
    /// Report the device as gone while true.
    pub gone: Switch,
    /// Sequence number of the last frame delivered.
    pub seq: u64,
}

impl ScriptedCamera {
    /// A live camera, and its `live` and `gone` switches.
    pub fn new() -> (Self, Switch, Switch) {
        let live = Rc::new(Cell::new(true));
        let gone = Rc::new(Cell::new(false));
        (
            ScriptedCamera {
                frame: (0..8 * 6 * 3).map(|i| (i * 5 % 256) as u8).collect(),
                live: live.clone(),
                gone: gone.clone(),
                seq: 0,
            },
            live,
            gone,
        )
    }
}

impl Camera for ScriptedCamera {
    fn name(&self) -> &str {
        "scripted"
    }
    fn latest(&mut self, now_ns: u64, _deadline: u64) -> Result<Option<Frame<'_>>, CameraError> {
        if self.gone.get() {
            return Err(CameraError {
                device: "scripted".into(),
                kind: FaultKind::Degraded,
                message: "device disappeared".into(),
            });
        }
        if !self.live.get() {
            return Ok(None);
        }
        self.seq += 1;
        Ok(Some(Frame {
            meta: FrameMeta {
                seq: self.seq,
                capture_ns: now_ns,
                width: 8,
                height: 6,
                format: PixelFormat::Rgb24,
            },
            data: &self.frame,
        }))
    }
}

/// State that is always fresh (stamped "now") and constant.
#[derive(Debug)]
pub struct FixedState(pub Vec<f32>);

impl StateSource for FixedState {
    fn name(&self) -> &str {
        "fixed"
    }
    fn latest(&mut self, now_ns: u64, out: &mut [f32]) -> Result<Option<u64>, StateError> {
        out.copy_from_slice(&self.0);
        Ok(Some(now_ns))
    }
}

/// State the test changes between ticks (the robot pushed by hand while stopped); always fresh.
#[derive(Debug)]
pub struct SharedState(pub Rc<RefCell<Vec<f32>>>);

impl SharedState {
    /// The source, and the values the test writes.
    pub fn new(values: &[f32]) -> (Self, Rc<RefCell<Vec<f32>>>) {
        let v = Rc::new(RefCell::new(values.to_vec()));
        (SharedState(v.clone()), v)
    }
}

impl StateSource for SharedState {
    fn name(&self) -> &str {
        "shared"
    }
    fn latest(&mut self, now_ns: u64, out: &mut [f32]) -> Result<Option<u64>, StateError> {
        out.copy_from_slice(&self.0.borrow());
        Ok(Some(now_ns))
    }
}

/// A backend computing its output with a closure of the run index (no network): 3x4x4 image
/// input, 2 state values, 8 outputs (normalized units, `[horizon 4][dim 2]`).
pub struct FnBackend<F: FnMut(u64, &mut [f32]) + Send> {
    /// `f(run, out)` writes run `run`'s output.
    pub f: F,
    /// Runs so far.
    pub runs: u64,
    /// The image input buffer.
    pub images: Vec<f32>,
    /// The state input buffer.
    pub state: Vec<f32>,
    /// The output buffer.
    pub out: Vec<f32>,
    /// If set, each run waits for a message first (slow inference, released by the test); a
    /// closed channel fails the run.
    pub gate: Option<Receiver<()>>,
}

impl<F: FnMut(u64, &mut [f32]) + Send> std::fmt::Debug for FnBackend<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnBackend")
            .field("runs", &self.runs)
            .field("gated", &self.gate.is_some())
            .finish()
    }
}

impl<F: FnMut(u64, &mut [f32]) + Send> FnBackend<F> {
    /// The backend around `f`, ungated.
    pub fn new(f: F) -> Self {
        FnBackend {
            f,
            runs: 0,
            images: vec![0.0; 3 * 4 * 4],
            state: vec![0.0; 2],
            out: vec![0.0; 8],
            gate: None,
        }
    }
}

impl<F: FnMut(u64, &mut [f32]) + Send> Policy for FnBackend<F> {
    fn name(&self) -> &'static str {
        "fn"
    }
    fn camera_input(&mut self, _cam: usize) -> &mut [f32] {
        &mut self.images
    }
    fn state_input(&mut self) -> Option<&mut [f32]> {
        Some(&mut self.state)
    }
    fn run(&mut self) -> Result<(), PolicyError> {
        if let Some(g) = &self.gate {
            g.recv().map_err(|_| SessionError::Run {
                backend: "fn",
                error: "gate closed".into(),
            })?;
        }
        (self.f)(self.runs, &mut self.out);
        self.runs += 1;
        Ok(())
    }
    fn output(&self) -> &[f32] {
        &self.out
    }
}

/// A sink that records every command (with its send time) and forwards it to `inner`: what a
/// real sink (a candump log) was given, to compare with what it wrote.
#[derive(Debug)]
pub struct Tee<K: CommandSink> {
    /// The sink that gets every command.
    pub inner: K,
    /// Every command sent, with its send time (ns).
    pub seen: Vec<(u64, SafeCommand)>,
}

impl<K: CommandSink> Tee<K> {
    /// A tee in front of `inner`, with room for `capacity` commands before it allocates.
    pub fn new(inner: K, capacity: usize) -> Self {
        Tee {
            inner,
            seen: Vec::with_capacity(capacity),
        }
    }
}

impl<K: CommandSink> CommandSink for Tee<K> {
    fn name(&self) -> &str {
        "tee"
    }
    fn send(&mut self, cmd: &SafeCommand, now: u64) -> Result<(), SinkError> {
        self.seen.push((now, cmd.clone()));
        self.inner.send(cmd, now)
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush()
    }
}
