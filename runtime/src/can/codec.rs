//! A bundle's motor protocol: safe commands to CAN frames, feedback frames to joint state.
//!
//! The bundle's `[can]` section chooses the protocol, because a policy is trained for one robot and
//! that robot's motors speak one protocol; the CLI only chooses where frames go (a bus, a candump
//! log). Every sink and state source goes through a [`Codec`], so `reflex run`, `reflex can
//! encode/send/decode` and the tests put the same bytes on the wire.
//!
//! [`Codec`] and [`FeedbackDecoder`] are thin dispatchers: each protocol is one module of
//! [`crate::can::protocol`] ([`per_joint`](crate::can::protocol::per_joint),
//! [`mit`](crate::can::protocol::mit), [`dbc`](crate::can::protocol::dbc)), chosen once at start
//! by [`crate::can::protocol`]'s registration function. Encoding and feedback decoding go
//! through one dynamic call and allocate nothing.

use crate::can::frame::CanFrame;
use crate::can::protocol::{self, per_joint::PerJoint, Feedback, Joints, Protocol};
use crate::control::safety::{SafeCommand, MAX_DIM};
use reflex_models::manifest::Manifest;
use reflex_models::Bundle;
use std::path::Path;
use std::sync::Arc;

pub use crate::can::frame::{Frames, MAX_FRAMES};
pub use crate::can::protocol::mit::{
    float_to_uint, mit_pack, mit_unpack, uint_to_float, MitRanges, MitReply, DAMIAO_CONFIG_ID,
    DAMIAO_TIMEOUT_RID, DAMIAO_TIMEOUT_UNIT_US,
};
pub use crate::can::protocol::{CodecError, Explained, FeedbackOutcome};

/// A bundle's motor protocol: commands to frames, and the pieces feedback decoding needs.
#[derive(Debug, Clone)]
pub struct Codec {
    proto: Arc<dyn Protocol>,
    joints: Joints,
}

impl Codec {
    /// The codec of a loaded bundle (a DBC protocol reads its file from the bundle directory).
    pub fn from_bundle(b: &Bundle) -> Result<Codec, CodecError> {
        Self::build(&b.manifest, Some(&b.dir))
    }

    /// The codec of a (validated) manifest whose protocol needs no file (per-joint, MIT).
    pub fn from_manifest(m: &Manifest) -> Result<Codec, CodecError> {
        Self::build(m, None)
    }

    /// The codec of a manifest whose files (a DBC) are in `dir`.
    pub(crate) fn build(m: &Manifest, dir: Option<&Path>) -> Result<Codec, CodecError> {
        Ok(Codec {
            proto: protocol::build(m, dir)?,
            joints: Joints {
                names: m.action.names.clone(),
                units: m.action.units.clone(),
            },
        })
    }

    /// The per-joint encoding for `dims` joints from `base_id` (tests, tools).
    pub fn per_joint(base_id: u32, dims: usize) -> Result<Codec, CodecError> {
        Ok(Codec {
            proto: Arc::new(PerJoint::new(base_id, dims)?),
            joints: Joints {
                names: (0..dims).map(|i| format!("j{i}")).collect(),
                units: vec![String::new(); dims],
            },
        })
    }

    /// The protocol's manifest name (`per-joint`, `mit`, `dbc`).
    pub fn protocol(&self) -> &'static str {
        self.proto.name()
    }

    /// One line for logs: the protocol and its IDs.
    pub fn describe(&self) -> String {
        self.proto.describe()
    }

    pub fn action_names(&self) -> &[String] {
        &self.joints.names
    }

    pub fn action_units(&self) -> &[String] {
        &self.joints.units
    }

    /// Whether commands include CAN FD frames (DBC messages longer than 8 bytes): the sink then
    /// needs a CAN FD socket on an interface in CAN FD mode.
    pub fn uses_fd(&self) -> bool {
        self.proto.uses_fd()
    }

    /// Frames to send once, right before the first command: the command timeout and enable
    /// frames of MIT motors; nothing for the other protocols.
    pub fn start_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        self.proto.start_frames(out)
    }

    /// Frames that disable the motors (`reflex can send --disable`); nothing for protocols
    /// without such a command.
    pub fn disable_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        self.proto.disable_frames(out)
    }

    /// Frames that make the motors report their state without moving them (MIT only; see
    /// [`crate::can::protocol::mit`]).
    pub fn state_request_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        self.proto.state_request_frames(out)
    }

    /// Encodes one safe command into `out` (replacing its contents). Allocation-free.
    pub fn encode(&self, cmd: &SafeCommand, out: &mut Frames) -> Result<(), CodecError> {
        self.proto.encode(cmd, out)
    }

    /// A decoder for the feedback of this protocol into the state vector `state_names` (1 to
    /// [`MAX_DIM`] names). `per_joint_base` is the first feedback ID of the per-joint encoding
    /// (the bundle does not say where a per-joint robot reports its state).
    pub fn feedback(
        &self,
        state_names: &[String],
        per_joint_base: u32,
    ) -> Result<FeedbackDecoder, CodecError> {
        let dims = state_names.len();
        if dims == 0 || dims > MAX_DIM {
            return Err(protocol::config(
                "feedback",
                format!("{dims} state dimensions: expected 1 to {MAX_DIM}"),
            ));
        }
        let (inner, ids) = self
            .proto
            .feedback(&self.joints, state_names, per_joint_base)?;
        Ok(FeedbackDecoder { inner, dims, ids })
    }

    /// Explains a frame of this protocol (command, special frame or reply), `None` when the
    /// frame is not one of its own.
    pub fn explain(&self, frame: &CanFrame) -> Option<Explained> {
        self.proto.explain(&self.joints, frame)
    }
}

/// Decodes feedback frames into a state vector. Allocation-free.
#[derive(Debug, Clone)]
pub struct FeedbackDecoder {
    inner: Arc<dyn Feedback>,
    dims: usize,
    ids: Vec<(u32, bool)>,
}

impl FeedbackDecoder {
    /// Number of state dimensions.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Whether feedback arrives in CAN FD frames (DBC messages longer than 8 bytes).
    pub fn uses_fd(&self) -> bool {
        self.inner.uses_fd()
    }

    /// The (ID, extended) pairs feedback arrives on, for receive filters.
    pub fn ids(&self) -> &[(u32, bool)] {
        &self.ids
    }

    /// Bit mask of every state dimension: a state is complete when all were updated.
    pub fn all(&self) -> u64 {
        if self.dims >= 64 {
            u64::MAX
        } else {
            (1u64 << self.dims) - 1
        }
    }

    /// Applies one frame to `state` (physical units, state order).
    pub fn decode(&self, frame: &CanFrame, state: &mut [f32]) -> FeedbackOutcome {
        self.inner.decode(frame, state)
    }
}
