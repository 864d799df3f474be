//! Motor protocols, one module each: [`per_joint`] (reflex's own encoding), [`mit`] (MIT mode:
//! CubeMars, Damiao...) and [`dbc`] (a robot described by a DBC file).
//!
//! Each module owns everything about its protocol: building it from the manifest's `[can]`
//! section (checked once, at start), encoding a safe command into frames, the frames sent before
//! the first command (start), to read state without moving (state request) and to disable the
//! motors, decoding its feedback frames into the state vector, and explaining any of its frames
//! for people (`reflex can decode`). They implement [`Protocol`] and [`Feedback`];
//! [`crate::can::codec::Codec`] and [`crate::can::codec::FeedbackDecoder`] are thin dispatchers
//! over them.
//!
//! # Adding a protocol
//!
//! One new module here implementing [`Protocol`] (and [`Feedback`] if its motors report state),
//! plus one line in [`build`], the only place that maps a `[can]` section onto a protocol. The
//! manifest side (a new `CanSpec` variant and its TOML fields) lives in `reflex-models`.
//!
//! # Allocation
//!
//! [`Protocol::encode`] and [`Feedback::decode`] run in the control loop: they write into the
//! caller's fixed-capacity [`Frames`] / state slice and never allocate (checked by
//! `runtime/tests/alloc.rs`). Building, describing and explaining may allocate.

pub mod dbc;
pub mod mit;
pub mod per_joint;

use crate::can::dbc::SignalError;
use crate::can::frame::{CanFrame, FrameError, Frames};
use crate::control::safety::SafeCommand;
use reflex_models::manifest::{CanSpec, Manifest};
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

/// Why a codec cannot be built or a command encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The `[can]` section cannot work with this bundle or state source.
    #[error("[can] {field}: {message}")]
    Config { field: String, message: String },
    #[error("encoding a command: {0}")]
    Frame(#[from] FrameError),
    #[error("encoding a command: {0}")]
    Signal(#[from] SignalError),
}

/// A bundle whose commands cannot be encoded cannot drive its robot: always fatal.
impl crate::io::Fault for CodecError {
    fn kind(&self) -> crate::io::FaultKind {
        crate::io::FaultKind::Fatal
    }
}

/// What one feedback frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedbackOutcome {
    /// Not a feedback frame of this protocol (another device on the bus).
    Ignored,
    /// Updated the state dimensions whose bits are set.
    Updated(u64),
    /// A frame with a feedback ID that does not decode (wrong length, reserved bits,
    /// non-finite value).
    Malformed,
    /// A motor reported a fault: nothing updated.
    Fault,
}

/// A frame explained for people (`reflex can decode`).
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    /// What the frame is: `command shoulder_pan`, `reply shoulder_pan`, `enable shoulder_pan`...
    pub what: String,
    /// Named values with their units.
    pub values: Vec<(String, f64, String)>,
}

/// The joints a protocol commands, in action order: names (for explanations and default state
/// names) and units.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Joints {
    pub names: Vec<String>,
    pub units: Vec<String>,
}

impl Joints {
    /// The unit of action dimension `i` (empty when unknown).
    pub fn unit(&self, i: usize) -> String {
        self.units.get(i).cloned().unwrap_or_default()
    }
}

/// A motor protocol: safe commands to frames, and the pieces feedback decoding needs.
///
/// Implementations are built once at start from the bundle; every method takes `&self`.
pub trait Protocol: Debug + Send + Sync {
    /// The protocol's manifest name (`per-joint`, `mit`, `dbc`).
    fn name(&self) -> &'static str;

    /// One line for logs: the protocol and its IDs.
    fn describe(&self) -> String;

    /// Whether commands include CAN FD frames: the sink then needs a CAN FD socket on an
    /// interface in CAN FD mode.
    fn uses_fd(&self) -> bool {
        false
    }

    /// Frames to send once, right before the first command, into `out` (replacing its
    /// contents). None by default.
    fn start_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        out.clear();
        Ok(())
    }

    /// Frames that make the motors report their state without moving them. None by default.
    fn state_request_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        out.clear();
        Ok(())
    }

    /// Frames that disable the motors (`reflex can send --disable`). None by default.
    fn disable_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        out.clear();
        Ok(())
    }

    /// Encodes one safe command into `out`, replacing its contents. Must not allocate.
    fn encode(&self, cmd: &SafeCommand, out: &mut Frames) -> Result<(), CodecError>;

    /// A decoder of this protocol's feedback into the state vector `state_names`, and the
    /// `(ID, extended)` pairs its frames arrive on. `per_joint_base` is the first feedback ID of
    /// protocols whose bundle does not say where state is reported (per-joint).
    fn feedback(
        &self,
        joints: &Joints,
        state_names: &[String],
        per_joint_base: u32,
    ) -> Result<FeedbackParts, CodecError>;

    /// Explains a frame of this protocol (command, special frame or reply), `None` when the
    /// frame is not one of its own.
    fn explain(&self, joints: &Joints, frame: &CanFrame) -> Option<Explained>;
}

/// A protocol's feedback decoder and the `(ID, extended)` pairs its frames arrive on.
pub type FeedbackParts = (Arc<dyn Feedback>, Vec<(u32, bool)>);

/// Decodes one protocol's feedback frames into a state vector.
pub trait Feedback: Debug + Send + Sync {
    /// Applies one frame to `state` (physical units, state order). Must not allocate.
    fn decode(&self, frame: &CanFrame, state: &mut [f32]) -> FeedbackOutcome;

    /// Whether feedback arrives in CAN FD frames.
    fn uses_fd(&self) -> bool {
        false
    }
}

/// The registration point: the protocol of a manifest's `[can]` section. `dir` is the bundle
/// directory, for protocols that read a file from it (DBC); `None` when building from a bare
/// manifest.
pub(crate) fn build(m: &Manifest, dir: Option<&Path>) -> Result<Arc<dyn Protocol>, CodecError> {
    Ok(match &m.can {
        CanSpec::PerJoint { base_id } => {
            Arc::new(per_joint::PerJoint::new(*base_id, m.action.names.len())?)
        }
        CanSpec::Mit(spec) => Arc::new(mit::Mit::from_spec(spec, m)?),
        CanSpec::Dbc(spec) => Arc::new(dbc::DbcProtocol::from_spec(spec, m, dir)?),
    })
}

/// A `[can]` configuration error naming the field.
pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> CodecError {
    CodecError::Config {
        field: field.into(),
        message: message.into(),
    }
}

/// Appends a frame to a command's frames. Callers never produce more than
/// [`crate::can::frame::MAX_FRAMES`] (2 per action dimension at most; checked at build).
pub(crate) fn push(out: &mut Frames, f: CanFrame) {
    let _ = out.push(f);
}

/// The index of state name `name`, or a `[can]` error naming `field`.
pub(crate) fn state_index(
    state_names: &[String],
    field: String,
    name: &str,
) -> Result<usize, CodecError> {
    state_names
        .iter()
        .position(|s| s == name)
        .ok_or_else(|| config(field, format!("`{name}` is not a state name")))
}
