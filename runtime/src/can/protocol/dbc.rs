//! A robot described by a DBC file (`[can] protocol = "dbc"`).
//!
//! A DBC file in the bundle (parsed by [`crate::can::dbc`]) and a mapping from action and state
//! names to `Message.Signal` (the names cantools shows: a message or signal with a
//! `SystemMessageLongSymbol` / `SystemSignalLongSymbol` attribute is found by its long name, and
//! by the short one written in its `BO_`/`SG_` line). Every message carrying a mapped action, the
//! stop signal or a constant is sent with each command, its other signals raw 0. Messages longer
//! than 8 bytes are CAN FD frames (with bit-rate switching when `fd_brs` is set): the sink and
//! the state source then open CAN FD sockets and check that the interface is in CAN FD mode.
//! Everything a command could fail on is checked at start: the signals exist, their messages are
//! not multiplexed and fit one CAN frame (a J1939 parameter group of another length needs the
//! transport protocol, which reflex does not send), and the action limits, the constants and the
//! stop signal's 0/1 are representable in their signals. Feedback signals must sit in messages
//! that fit one frame; a multiplexed feedback signal updates the state only from frames whose
//! multiplexer selects it.

use super::{
    config, push, state_index, CodecError, Explained, Feedback, FeedbackOutcome, FeedbackParts,
    Joints, Protocol,
};
use crate::can::dbc::{Dbc, Message};
use crate::can::frame::{CanFrame, Frames, MAX_FRAMES};
use crate::control::safety::SafeCommand;
use reflex_models::manifest::{DbcSpec, Manifest};
use std::path::Path;
use std::sync::Arc;

/// Where a DBC signal's value comes from in each command.
#[derive(Debug, Clone, Copy)]
enum SignalSource {
    Action(usize),
    Constant(f64),
    /// 1 in stop commands, else 0.
    Stop,
}

/// One message sent with every command: its index in the DBC and its assigned signals.
#[derive(Debug, Clone)]
struct TxMessage {
    msg: usize,
    fields: Vec<(usize, SignalSource)>,
}

#[derive(Debug, Clone)]
pub struct DbcProtocol {
    file: String,
    /// CAN FD messages go out with bit-rate switching.
    brs: bool,
    dbc: Arc<Dbc>,
    tx: Vec<TxMessage>,
    /// State name -> (message index, signal index).
    feedback: Vec<(String, usize, usize)>,
    /// (message index, signal index) -> action name, for explanations.
    action_of: Vec<((usize, usize), String)>,
}

impl DbcProtocol {
    /// The protocol of a `[can] protocol = "dbc"` section: reads `spec.file` from the bundle
    /// directory `dir` (Windows-1252 or UTF-8, as [`Dbc::from_bytes`] reads it) and resolves
    /// and checks every mapping.
    pub fn from_spec(
        spec: &DbcSpec,
        m: &Manifest,
        dir: Option<&Path>,
    ) -> Result<DbcProtocol, CodecError> {
        let dir = dir.ok_or_else(|| {
            config(
                "file",
                "a DBC protocol is read from its bundle directory (Codec::from_bundle)",
            )
        })?;
        let path = dir.join(&spec.file);
        let bytes = std::fs::read(&path)
            .map_err(|e| config("file", format!("cannot read {}: {e}", path.display())))?;
        let dbc = Dbc::from_bytes(&bytes, &spec.file).map_err(|e| config("file", e.to_string()))?;
        let mut tx: Vec<TxMessage> = vec![];
        let mut assigned: Vec<((usize, usize), String)> = vec![];
        let mut action_of = vec![];
        let mut assign =
            |field: String, target: &str, src: SignalSource| -> Result<(), CodecError> {
                let (mi, si) = resolve(&dbc, &spec.file, &field, target)?;
                if let Some((_, other)) = assigned.iter().find(|(k, _)| *k == (mi, si)) {
                    return Err(config(
                        field,
                        format!("`{target}` is already assigned by {other}"),
                    ));
                }
                let msg = &dbc.messages()[mi];
                if msg.is_multiplexed() {
                    return Err(config(
                        field,
                        format!(
                            "message `{}` is multiplexed: reflex does not send multiplexed \
                             messages",
                            msg.name()
                        ),
                    ));
                }
                check_frame_len(msg, &spec.file, &field, "sent")?;
                let sig = &msg.signals()[si];
                // Every value this signal will carry must encode: checked once here, not per tick.
                let probes: Vec<f64> = match src {
                    SignalSource::Action(i) => match &m.action.limits {
                        Some(l) => vec![f64::from(l.min[i]), f64::from(l.max[i])],
                        None => vec![],
                    },
                    SignalSource::Constant(c) => vec![c],
                    SignalSource::Stop => vec![0.0, 1.0],
                };
                for v in probes {
                    sig.physical_to_raw(v).map_err(|e| {
                        config(
                            field.clone(),
                            format!("{e} (values sent there must be representable)"),
                        )
                    })?;
                }
                assigned.push(((mi, si), field));
                match tx.iter_mut().find(|t| t.msg == mi) {
                    Some(t) => t.fields.push((si, src)),
                    None => tx.push(TxMessage {
                        msg: mi,
                        fields: vec![(si, src)],
                    }),
                }
                Ok(())
            };
        for (i, name) in m.action.names.iter().enumerate() {
            let target = spec
                .actions
                .get(name)
                .ok_or_else(|| config("actions", format!("action `{name}` is not mapped")))?;
            assign(format!("actions.{name}"), target, SignalSource::Action(i))?;
            action_of.push((resolve(&dbc, &spec.file, "actions", target)?, name.clone()));
        }
        for (target, v) in &spec.constants {
            assign(
                format!("constants.\"{target}\""),
                target,
                SignalSource::Constant(*v),
            )?;
        }
        if let Some(target) = &spec.stop_signal {
            assign("stop_signal".into(), target, SignalSource::Stop)?;
        }
        let mut feedback = vec![];
        for (state, target) in &spec.feedback {
            let field = format!("feedback.{state}");
            let (mi, si) = resolve(&dbc, &spec.file, &field, target)?;
            check_frame_len(&dbc.messages()[mi], &spec.file, &field, "received")?;
            feedback.push((state.clone(), mi, si));
        }
        if tx.len() > MAX_FRAMES {
            return Err(config(
                "actions",
                format!("{} messages per command: at most {MAX_FRAMES}", tx.len()),
            ));
        }
        Ok(DbcProtocol {
            file: spec.file.clone(),
            brs: spec.fd_brs,
            dbc: Arc::new(dbc),
            tx,
            feedback,
            action_of,
        })
    }
}

/// A message that is not one CAN frame long (a J1939 parameter group of 9 to 1785 bytes, which
/// only the J1939 transport protocol carries) cannot be sent or received as a frame.
fn check_frame_len(msg: &Message, file: &str, field: &str, how: &str) -> Result<(), CodecError> {
    if msg.fits_one_frame() {
        return Ok(());
    }
    Err(config(
        field,
        format!(
            "message `{}` of {file} is {} bytes: not a CAN frame length (0 to 8, or 12, 16, 20, \
             24, 32, 48, 64 for CAN FD); it can only be {how} with the J1939 transport protocol, \
             which reflex does not speak",
            msg.name(),
            msg.size()
        ),
    ))
}

/// Resolves `Message.Signal` in `dbc` (`field` and `file` name it in errors). Names are the ones
/// cantools shows (long names from `SystemMessageLongSymbol`/`SystemSignalLongSymbol`); the
/// short names of the `BO_`/`SG_` lines are accepted too.
fn resolve(dbc: &Dbc, file: &str, field: &str, path: &str) -> Result<(usize, usize), CodecError> {
    // A long name may itself hold a `.`: try every split.
    for (i, _) in path.match_indices('.') {
        if let Some(mi) = dbc.message_index(&path[..i]) {
            if let Some(si) = dbc.messages()[mi].signal_index(&path[i + 1..]) {
                return Ok((mi, si));
            }
        }
    }
    let (msg, sig) = path
        .split_once('.')
        .ok_or_else(|| config(field, format!("`{path}`: expected `Message.Signal`")))?;
    let mi = dbc.message_index(msg).ok_or_else(|| {
        config(
            field,
            format!(
                "`{path}`: {file} has no message `{msg}` (it has: {})",
                dbc.messages()
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let m = &dbc.messages()[mi];
    Err(config(
        field,
        format!(
            "`{path}`: message `{}` of {file} has no signal `{sig}` (it has: {})",
            m.name(),
            m.signals()
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

impl Protocol for DbcProtocol {
    fn name(&self) -> &'static str {
        "dbc"
    }

    fn describe(&self) -> String {
        format!(
            "DBC {}, messages {}",
            self.file,
            self.tx
                .iter()
                .map(|t| {
                    let m = &self.dbc.messages()[t.msg];
                    format!("{} ({:#X})", m.name(), m.id())
                })
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    fn uses_fd(&self) -> bool {
        self.tx.iter().any(|t| self.dbc.messages()[t.msg].is_fd())
    }

    fn encode(&self, cmd: &SafeCommand, out: &mut Frames) -> Result<(), CodecError> {
        out.clear();
        let values = cmd.values();
        for t in &self.tx {
            let msg = &self.dbc.messages()[t.msg];
            let mut data = [0u8; crate::can::MAX_FD_LEN];
            let fields = t.fields.iter().map(|&(sig, src)| {
                let v = match src {
                    SignalSource::Action(i) => {
                        f64::from(values.get(i).copied().unwrap_or(f32::NAN))
                    }
                    SignalSource::Constant(c) => c,
                    SignalSource::Stop => f64::from(u8::from(cmd.is_stop())),
                };
                (sig, v)
            });
            let len = msg.encode_into_fd(fields, &mut data)?;
            let frame = if msg.is_fd() {
                CanFrame::new_fd(msg.id(), msg.is_extended(), &data[..len], self.brs)?
            } else {
                CanFrame::new(msg.id(), msg.is_extended(), &data[..len])?
            };
            push(out, frame);
        }
        Ok(())
    }

    fn feedback(
        &self,
        _joints: &Joints,
        state_names: &[String],
        _per_joint_base: u32,
    ) -> Result<FeedbackParts, CodecError> {
        let dims = state_names.len();
        let mut entries: Vec<(usize, Vec<(usize, usize)>)> = vec![];
        let mut covered = 0u64;
        for (state, msg, sig) in &self.feedback {
            let dim = state_index(state_names, format!("feedback.{state}"), state)?;
            covered |= 1 << dim;
            match entries.iter_mut().find(|e| e.0 == *msg) {
                Some(e) => e.1.push((*sig, dim)),
                None => entries.push((*msg, vec![(*sig, dim)])),
            }
        }
        if let Some(missing) = (0..dims).find(|d| covered & (1 << d) == 0) {
            return Err(config(
                "feedback",
                format!(
                    "state `{}` is not mapped to a DBC signal",
                    state_names[missing]
                ),
            ));
        }
        let ids = entries
            .iter()
            .map(|(m, _)| {
                let m = &self.dbc.messages()[*m];
                (m.id(), m.is_extended())
            })
            .collect();
        let fb = DbcFeedback {
            dbc: self.dbc.clone(),
            entries,
        };
        Ok((Arc::new(fb), ids))
    }

    fn explain(&self, _joints: &Joints, frame: &CanFrame) -> Option<Explained> {
        if frame.is_remote() {
            return None;
        }
        let mi = self
            .dbc
            .messages()
            .iter()
            .position(|m| m.id() == frame.id() && m.is_extended() == frame.is_extended())?;
        let msg = &self.dbc.messages()[mi];
        if frame.data().len() < msg.size() {
            return None;
        }
        let role = if self.tx.iter().any(|t| t.msg == mi) {
            "command"
        } else if self.feedback.iter().any(|(_, m, _)| *m == mi) {
            "feedback"
        } else {
            "message"
        };
        let values = msg
            .signals()
            .iter()
            .enumerate()
            .filter(|(si, _)| msg.is_active(*si, frame.data()))
            .filter_map(|(si, s)| {
                let v = s.raw_to_physical(s.extract(frame.data())?);
                let name = match self.action_of.iter().find(|(k, _)| *k == (mi, si)) {
                    Some((_, a)) => format!("{}({a})", s.name()),
                    None => s.name().to_string(),
                };
                Some((name, v, s.unit().to_string()))
            })
            .collect();
        Some(Explained {
            what: format!("{role} {}", msg.name()),
            values,
        })
    }
}

/// DBC feedback messages into the state vector.
#[derive(Debug, Clone)]
struct DbcFeedback {
    dbc: Arc<Dbc>,
    /// Per feedback message: (message index, [(signal index, state dimension)]).
    entries: Vec<(usize, Vec<(usize, usize)>)>,
}

impl Feedback for DbcFeedback {
    fn uses_fd(&self) -> bool {
        self.entries
            .iter()
            .any(|(m, _)| self.dbc.messages()[*m].is_fd())
    }

    fn decode(&self, frame: &CanFrame, state: &mut [f32]) -> FeedbackOutcome {
        let Some((msg, fields)) = self.entries.iter().find_map(|(mi, f)| {
            let m = &self.dbc.messages()[*mi];
            (m.id() == frame.id() && m.is_extended() == frame.is_extended() && !frame.is_remote())
                .then_some((m, f))
        }) else {
            return FeedbackOutcome::Ignored;
        };
        if frame.data().len() < msg.size() {
            return FeedbackOutcome::Malformed;
        }
        let mut mask = 0;
        for &(si, dim) in fields {
            // A multiplexed signal this frame's multiplexer does not select is not in it.
            if !msg.is_active(si, frame.data()) {
                continue;
            }
            let sig = &msg.signals()[si];
            let Some(raw) = sig.extract(frame.data()) else {
                return FeedbackOutcome::Malformed;
            };
            let v = sig.raw_to_physical(raw) as f32;
            if !v.is_finite() {
                return FeedbackOutcome::Malformed;
            }
            if dim < state.len() {
                state[dim] = v;
                mask |= 1 << dim;
            }
        }
        FeedbackOutcome::Updated(mask)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::can::codec::Codec;
    use reflex_models::manifest::CanSpec;

    #[test]
    fn dbc_feedback_fills_the_state() {
        use reflex_models::manifest::DbcSpec;
        let dbc = "VERSION \"\"\nBU_: A B\nBO_ 16 Cmd: 4 A\n SG_ J0 : 0|16@1- (0.001,0) [-30|30] \"rad\" B\n SG_ J1 : 16|16@1- (0.001,0) [-30|30] \"rad\" B\n\nBO_ 17 State: 4 B\n SG_ P0 : 0|16@1- (0.001,0) [-30|30] \"rad\" A\n SG_ P1 : 23|16@0- (0.001,0) [-30|30] \"rad\" A\n";
        let dir = std::env::temp_dir().join(format!("reflex-codec-dbc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("r.dbc"), dbc).unwrap();
        let mut arch = reflex_models::reference::demo_arch();
        arch.action_dim = 2;
        arch.state_dim = 2;
        let mut m = reflex_models::reference::reference_manifest(
            &arch,
            "t",
            reflex_models::reference::default_capture(),
        );
        let names = m.action.names.clone();
        m.can = CanSpec::Dbc(DbcSpec {
            file: "r.dbc".into(),
            sha256: String::new(),
            actions: [
                (names[0].clone(), "Cmd.J0".into()),
                (names[1].clone(), "Cmd.J1".into()),
            ]
            .into(),
            constants: Default::default(),
            stop_signal: None,
            fd_brs: false,
            feedback: [
                (names[0].clone(), "State.P0".into()),
                (names[1].clone(), "State.P1".into()),
            ]
            .into(),
        });
        assert!(
            Codec::from_manifest(&m).is_err(),
            "needs the bundle directory"
        );
        let c = Codec::build(&m, Some(&dir)).unwrap();
        let d = c.feedback(&m.state.names, 0).unwrap();
        assert_eq!(d.ids(), &[(17, false)]);
        let mut state = [0f32; 2];
        // P0 = 1.5 rad = raw 1500 = 0x05DC (Intel: DC 05); P1 = -0.25 rad = raw -250 = 0xFF06
        // (Motorola, MSB at bit 23: bytes 2..3 = FF 06).
        let f = CanFrame::new(17, false, &[0xDC, 0x05, 0xFF, 0x06]).unwrap();
        assert_eq!(d.decode(&f, &mut state), FeedbackOutcome::Updated(0b11));
        assert_eq!(state, [1.5, -0.25]);
        let short = CanFrame::new(17, false, &[0xDC]).unwrap();
        assert_eq!(d.decode(&short, &mut state), FeedbackOutcome::Malformed);
        let other = CanFrame::new(16, false, &[0; 4]).unwrap();
        assert_eq!(d.decode(&other, &mut state), FeedbackOutcome::Ignored);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A 2-joint manifest mapped onto `dbc` (written to a temp dir): actions on `Cmd.J0/J1`,
    /// state from `feedback`.
    fn two_joint_codec(tag: &str, dbc: &str, feedback: [&str; 2]) -> (Codec, Manifest) {
        use reflex_models::manifest::DbcSpec;
        let dir = std::env::temp_dir().join(format!("reflex-dbc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("r.dbc"), dbc).unwrap();
        let mut arch = reflex_models::reference::demo_arch();
        arch.action_dim = 2;
        arch.state_dim = 2;
        let mut m = reflex_models::reference::reference_manifest(
            &arch,
            "t",
            reflex_models::reference::default_capture(),
        );
        let names = m.action.names.clone();
        m.can = CanSpec::Dbc(DbcSpec {
            file: "r.dbc".into(),
            sha256: String::new(),
            actions: [
                (names[0].clone(), "Cmd.J0".into()),
                (names[1].clone(), "Cmd.J1".into()),
            ]
            .into(),
            constants: Default::default(),
            stop_signal: None,
            fd_brs: false,
            feedback: [
                (names[0].clone(), feedback[0].into()),
                (names[1].clone(), feedback[1].into()),
            ]
            .into(),
        });
        let c = Codec::build(&m, Some(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        (c.unwrap(), m)
    }

    const CMD: &str = "VERSION \"\"\nBU_: A B\nBO_ 16 Cmd: 4 A\n SG_ J0 : 0|16@1- (0.001,0) [-30|30] \"rad\" B\n SG_ J1 : 16|16@1- (0.001,0) [-30|30] \"rad\" B\n";

    /// A multiplexed feedback message: a joint's signal updates the state only from frames
    /// whose multiplexer selects it (before, any frame of the message wrote it), and `reflex can
    /// decode` shows only the selected signals.
    #[test]
    fn multiplexed_feedback_follows_the_multiplexer() {
        let dbc = format!("{CMD}\nBO_ 17 State: 3 B\n SG_ Joint M : 0|8@1+ (1,0) [0|1] \"\" A\n SG_ P0 m0 : 8|16@1- (0.001,0) [-30|30] \"rad\" A\n SG_ P1 m1 : 8|16@1- (0.001,0) [-30|30] \"rad\" A\n");
        let (c, m) = two_joint_codec("mux", &dbc, ["State.P0", "State.P1"]);
        let d = c.feedback(&m.state.names, 0).unwrap();
        let mut state = [0f32; 2];
        // Joint 1, raw 1500: only P1.
        let f = CanFrame::new(17, false, &[1, 0xDC, 0x05]).unwrap();
        assert_eq!(d.decode(&f, &mut state), FeedbackOutcome::Updated(0b10));
        assert_eq!(state, [0.0, 1.5]);
        let e = c.explain(&f).unwrap();
        let names: Vec<&str> = e.values.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["Joint", "P1"]);
    }

    /// A J1939 parameter group that is not one frame long cannot be sent or received here:
    /// refused at start, naming the message and the transport protocol.
    #[test]
    fn j1939_groups_of_other_lengths_are_refused_at_start() {
        let dbc = CMD.replace("BO_ 16 Cmd: 4 A", "BO_ 16 Cmd: 9 A");
        let dir = std::env::temp_dir().join(format!("reflex-dbc-j1939b-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("r.dbc"), &dbc).unwrap();
        let (_, mut m) = two_joint_codec("j1939ok", CMD, ["Cmd.J0", "Cmd.J1"]);
        if let CanSpec::Dbc(spec) = &mut m.can {
            spec.feedback.clear();
        }
        let err = Codec::build(&m, Some(&dir)).unwrap_err().to_string();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            err.contains("message `Cmd` of r.dbc is 9 bytes: not a CAN frame length")
                && err.contains("J1939 transport protocol"),
            "{err}"
        );
    }
}
