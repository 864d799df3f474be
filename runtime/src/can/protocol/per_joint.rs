//! reflex's own per-joint encoding (`[can] protocol = "per-joint"`): one classic frame per
//! action dimension at `base_id + i`, the value as a little-endian `f32`. The wire contract and
//! its encoder/decoder are in [`crate::can::frame`] (tests and tools outside the runtime decode
//! it from there); this module is the protocol around them: start-time ID checks, feedback
//! (the same frames, from `per_joint_base` on) and explanations.

use super::{
    config, CodecError, Explained, Feedback, FeedbackOutcome, FeedbackParts, Joints, Protocol,
};
use crate::can::frame::{decode_per_joint, encode_per_joint, per_joint_id, CanFrame, Frames};
use crate::control::safety::SafeCommand;
use std::sync::Arc;

/// The per-joint protocol for a command of a known number of dimensions.
#[derive(Debug, Clone)]
pub struct PerJoint {
    base_id: u32,
}

impl PerJoint {
    /// Checks that the IDs of all `dims` joints from `base_id` are valid CAN IDs.
    pub fn new(base_id: u32, dims: usize) -> Result<PerJoint, CodecError> {
        per_joint_id(base_id, dims.saturating_sub(1))
            .map_err(|e| config("base_id", e.to_string()))?;
        Ok(PerJoint { base_id })
    }
}

impl Protocol for PerJoint {
    fn name(&self) -> &'static str {
        "per-joint"
    }

    fn describe(&self) -> String {
        format!("per-joint, base ID {:#X}", self.base_id)
    }

    fn encode(&self, cmd: &SafeCommand, out: &mut Frames) -> Result<(), CodecError> {
        Ok(encode_per_joint(cmd, self.base_id, out)?)
    }

    fn feedback(
        &self,
        _joints: &Joints,
        state_names: &[String],
        per_joint_base: u32,
    ) -> Result<FeedbackParts, CodecError> {
        let dims = state_names.len();
        let mut ids = Vec::with_capacity(dims);
        for i in 0..dims {
            ids.push(
                per_joint_id(per_joint_base, i)
                    .map_err(|e| config("feedback base ID", e.to_string()))?,
            );
        }
        let fb = PerJointFeedback {
            base_id: per_joint_base,
            dims,
        };
        Ok((Arc::new(fb), ids))
    }

    fn explain(&self, joints: &Joints, frame: &CanFrame) -> Option<Explained> {
        let (i, v, stop, tick) = decode_per_joint(frame, self.base_id, joints.names.len())?;
        Some(Explained {
            what: format!(
                "command {}{}",
                joints.names[i],
                if stop { " (stop)" } else { "" }
            ),
            values: vec![
                (joints.names[i].clone(), f64::from(v), joints.unit(i)),
                ("tick".into(), f64::from(tick), String::new()),
            ],
        })
    }
}

/// Per-joint state frames from `base_id`, one per state dimension.
#[derive(Debug, Clone)]
struct PerJointFeedback {
    base_id: u32,
    dims: usize,
}

impl Feedback for PerJointFeedback {
    fn decode(&self, frame: &CanFrame, state: &mut [f32]) -> FeedbackOutcome {
        // A joint's ID that does not decode is malformed; any other ID is not ours.
        let ours = frame
            .id()
            .checked_sub(self.base_id)
            .is_some_and(|i| (i as usize) < self.dims);
        if !ours {
            return FeedbackOutcome::Ignored;
        }
        match decode_per_joint(frame, self.base_id, self.dims) {
            Some((i, v, _, _)) if v.is_finite() && i < state.len() => {
                state[i] = v;
                FeedbackOutcome::Updated(1 << i)
            }
            _ => FeedbackOutcome::Malformed,
        }
    }
}
