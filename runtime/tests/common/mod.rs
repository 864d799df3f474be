//! Fakes shared by the runtime's integration tests: they wrap the traits, never the drivers.
#![allow(dead_code)]

use reflex_models::bundle::parse_manifest;
use reflex_models::manifest::{Manifest, PixelFormat};
use reflex_runtime::infer::policy::{Policy, PolicyError};
use reflex_runtime::infer::session::SessionError;
use reflex_runtime::io::{
    Camera, CameraError, FaultKind, Frame, FrameMeta, StateError, StateSource,
};
use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc::Receiver;

/// A small two-joint chunk policy at 10 Hz: horizon 4, re-plan every 2 steps, one 8x6 RGB camera
/// resized to 4x4, limits +-1 rad, max rate 2 rad/s (0.2 rad per tick), watchdog 3 periods.
pub const MANIFEST: &str = r#"
format_version = 1
name = "test-policy"

[control]
rate_hz = 10.0
steps_per_inference = 2
latency_compensation = true
watchdog_periods = 3

[[models]]
role = "policy"
file = "policy.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
precision = "fp32"
backends = ["tract"]

[[cameras]]
name = "front"
onnx_input = "image.front"
max_age_ms = 250
capture = { width = 8, height = 6, format = "rgb24" }
preprocess = { resize = { width = 4, height = 4 }, color = "rgb", mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }

[state]
onnx_input = "state"
names = ["a", "b"]
units = ["rad", "rad"]
normalization = { kind = "mean_std", mean = [0.0, 0.0], std = [1.0, 1.0] }

[action]
onnx_output = "action"
names = ["a", "b"]
units = ["rad", "rad"]
output = { kind = "chunk", horizon = 4 }
normalization = { kind = "mean_std", mean = [0.0, 0.0], std = [2.0, 2.0] }
limits = { min = [-1.0, -1.0], max = [1.0, 1.0], max_rate = [2.0, 2.0] }
"#;

pub fn manifest() -> Manifest {
    parse_manifest(MANIFEST, Path::new("test/policy.toml")).expect("test manifest parses")
}

pub const PERIOD: u64 = 100_000_000;

/// A camera whose behaviour the test scripts tick by tick through shared cells.
pub struct ScriptedCamera {
    pub frame: Vec<u8>,
    /// Deliver a new frame on each call while true.
    pub live: Rc<Cell<bool>>,
    /// Report the device as gone while true.
    pub gone: Rc<Cell<bool>>,
    pub seq: u64,
}

impl ScriptedCamera {
    pub fn new() -> (Self, Rc<Cell<bool>>, Rc<Cell<bool>>) {
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

/// State that is always fresh and constant.
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

/// A backend computing its output with a closure of the run index (no network).
pub struct FnBackend<F: FnMut(u64, &mut [f32]) + Send> {
    pub f: F,
    pub runs: u64,
    pub images: Vec<f32>,
    pub state: Vec<f32>,
    pub out: Vec<f32>,
    /// If set, each run waits for a message first (to simulate slow inference).
    pub gate: Option<Receiver<()>>,
}

impl<F: FnMut(u64, &mut [f32]) + Send> FnBackend<F> {
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

/// State the test changes between ticks (e.g. the robot pushed by hand while stopped); always
/// fresh.
pub struct SharedState(pub Rc<std::cell::RefCell<Vec<f32>>>);

impl SharedState {
    pub fn new(values: &[f32]) -> (Self, Rc<std::cell::RefCell<Vec<f32>>>) {
        let v = Rc::new(std::cell::RefCell::new(values.to_vec()));
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
