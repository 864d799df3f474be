//! Motor protocols: safe commands to CAN frames, feedback frames to joint state.
//!
//! The bundle's `[can]` section chooses the protocol, because a policy is trained for one robot and
//! that robot's motors speak one protocol; the CLI only chooses where frames go (a bus, a candump
//! log). Every sink and state source goes through a [`Codec`], so `reflex run`, `reflex can
//! encode/send/decode` and the tests put the same bytes on the wire.
//!
//! # MIT mode
//!
//! The mini-cheetah motor firmware's protocol, kept by CubeMars (AK series), Damiao (DM-J),
//! MyActuator and others. One classic 8-byte frame per motor, ID = the motor's CAN ID:
//!
//! | bits | 63..48 | 47..36 | 35..24 | 23..12 | 11..0 |
//! |------|--------|--------|--------|--------|-------|
//! | field | position | velocity | kp | kd | torque |
//!
//! big-endian in that order (byte 0 = position high byte; byte 3 = velocity low nibble << 4 | kp
//! high nibble; ...). Each field is `uint = (x - min) * (2^bits - 1) / (max - min)` truncated,
//! with `x` clamped into the motor's range (`[-p_max, p_max]`, `[-v_max, v_max]`,
//! `[0, kp_max]`, `[0, kd_max]`, `[-t_max, t_max]`), exactly as the reference firmware's
//! `float_to_uint` packs it. reflex commands positions: velocity and feed-forward torque are 0,
//! gains are the bundle's. Special frames: `FF FF FF FF FF FF FF FC` enables the motor, `...FD`
//! disables it, `...FE` sets its zero.
//!
//! Replies carry position (16 bits), velocity (12) and torque (12) packed the same way in bytes
//! 1..6; byte 0 is the motor ID (CubeMars) or `error << 4 | ID & 0xF` (Damiao, whose error
//! nibble >= 8 is a motor fault: over-voltage, over-current, over-temperature, lost
//! communication; a faulted reply updates nothing, so the state goes stale and the robot holds).
//!
//! Damiao motors have a command timeout (register 9, `TIMEOUT`): reflex writes it at enable with
//! the register-write frame (ID 0x7FF, `[id_lo, id_hi, 0x55, 9, u32 little-endian]`), so the
//! motors stop by themselves if the board dies. The register counts 50 µs periods as we read
//! Damiao's register table; this has not been checked against a motor here (no hardware).
//!
//! Enable frames are sent by the sink right before the first command, never earlier: an enabled
//! MIT motor without a command is limp. A motor's reply only comes after a frame addressed to it,
//! so until commands flow the state source asks for state: Damiao's refresh request (ID 0x7FF,
//! `[id_lo, id_hi, 0xCC, 0]`) does not enable the motor; CubeMars firmware has no such request,
//! so its state is read with the enable frame itself (the motor is then limp until the first
//! command, one warm-up later).
//!
//! # Per-joint
//!
//! reflex's own default encoding, documented in [`crate::can`].
//!
//! # DBC
//!
//! A DBC file in the bundle (parsed by [`crate::can::dbc`]) and a mapping from action and state names
//! to `Message.Signal`. Every message carrying a mapped action, the stop signal or a constant is
//! sent with each command, its other signals raw 0. Messages longer than 8 bytes are CAN FD
//! frames (with bit-rate switching when `fd_brs` is set): the sink and the state source then open
//! CAN FD sockets and check that the interface is in CAN FD mode. Everything a command could fail
//! on is checked at start: the signals exist, their messages are not multiplexed, and the action
//! limits, the constants and the stop signal's 0/1 are representable in their signals.

use crate::can::dbc::{Dbc, SignalError};
use crate::can::frame::{decode_per_joint, encode_per_joint, per_joint_id, CanFrame, FrameError};
use crate::control::safety::{SafeCommand, MAX_DIM};
use reflex_models::manifest::{CanSpec, DbcSpec, Manifest, MitFlavor, MitSpec, MitStop};
use reflex_models::Bundle;
use std::path::Path;
use std::sync::Arc;

pub use crate::can::frame::{Frames, MAX_FRAMES};

/// ID of Damiao's register and refresh requests.
pub const DAMIAO_CONFIG_ID: u32 = 0x7FF;
/// Damiao register holding the command timeout.
pub const DAMIAO_TIMEOUT_RID: u8 = 9;
/// One count of Damiao's TIMEOUT register, in µs.
pub const DAMIAO_TIMEOUT_UNIT_US: u32 = 50;

const MIT_ENABLE: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFC];
const MIT_DISABLE: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFD];

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

fn config(field: impl Into<String>, message: impl Into<String>) -> CodecError {
    CodecError::Config {
        field: field.into(),
        message: message.into(),
    }
}

/// Packs `x` into `bits` bits over `[min, max]` like the reference firmware's `float_to_uint`
/// (clamped, then truncated toward zero).
pub fn float_to_uint(x: f32, min: f32, max: f32, bits: u32) -> u32 {
    let top = ((1u32 << bits) - 1) as f32;
    let x = if x.is_nan() { min } else { x.clamp(min, max) };
    let u = (x - min) * top / (max - min);
    (u as u32).min((1 << bits) - 1)
}

/// The inverse of [`float_to_uint`] (`uint_to_float` in the firmware).
pub fn uint_to_float(u: u32, min: f32, max: f32, bits: u32) -> f32 {
    let top = ((1u32 << bits) - 1) as f32;
    u as f32 * (max - min) / top + min
}

/// The 8 data bytes of an MIT command.
pub fn mit_pack(p: f32, v: f32, kp: f32, kd: f32, t: f32, m: &MitRanges) -> [u8; 8] {
    let p = float_to_uint(p, -m.p_max, m.p_max, 16);
    let v = float_to_uint(v, -m.v_max, m.v_max, 12);
    let kp = float_to_uint(kp, 0.0, m.kp_max, 12);
    let kd = float_to_uint(kd, 0.0, m.kd_max, 12);
    let t = float_to_uint(t, -m.t_max, m.t_max, 12);
    [
        (p >> 8) as u8,
        p as u8,
        (v >> 4) as u8,
        (((v & 0xF) << 4) | (kp >> 8)) as u8,
        kp as u8,
        (kd >> 4) as u8,
        (((kd & 0xF) << 4) | (t >> 8)) as u8,
        t as u8,
    ]
}

/// One decoded MIT reply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MitReply {
    /// Byte 0's motor ID (Damiao: its low nibble).
    pub id: u8,
    /// Damiao's error/state nibble (0 disabled, 1 enabled, >= 8 fault); 0 for CubeMars.
    pub status: u8,
    pub position: f32,
    pub velocity: f32,
    pub torque: f32,
    /// Temperatures in °C where the reply has them (Damiao: MOS and rotor; CubeMars 8-byte
    /// replies: driver).
    pub temperature: Option<f32>,
}

impl MitReply {
    /// A Damiao reply reporting a motor fault.
    pub fn is_fault(&self) -> bool {
        self.status >= 8
    }
}

/// Decodes the reply layout of `flavor`; `None` for a frame too short to be one.
pub fn mit_unpack(data: &[u8], flavor: MitFlavor, m: &MitRanges) -> Option<MitReply> {
    if data.len() < 6 {
        return None;
    }
    let p = (u32::from(data[1]) << 8) | u32::from(data[2]);
    let v = (u32::from(data[3]) << 4) | (u32::from(data[4]) >> 4);
    let t = ((u32::from(data[4]) & 0xF) << 8) | u32::from(data[5]);
    let (id, status) = match flavor {
        MitFlavor::Cubemars => (data[0], 0),
        MitFlavor::Damiao => (data[0] & 0xF, data[0] >> 4),
    };
    let temperature = match flavor {
        MitFlavor::Damiao if data.len() >= 7 => Some(f32::from(data[6])),
        MitFlavor::Cubemars if data.len() >= 7 => Some(f32::from(data[6]) - 40.0),
        _ => None,
    };
    Some(MitReply {
        id,
        status,
        position: uint_to_float(p, -m.p_max, m.p_max, 16),
        velocity: uint_to_float(v, -m.v_max, m.v_max, 12),
        torque: uint_to_float(t, -m.t_max, m.t_max, 12),
        temperature,
    })
}

/// A motor's packing ranges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MitRanges {
    pub p_max: f32,
    pub v_max: f32,
    pub t_max: f32,
    pub kp_max: f32,
    pub kd_max: f32,
}

#[derive(Debug, Clone)]
struct MitMotor {
    id: u32,
    feedback_id: u32,
    ranges: MitRanges,
    kp: f32,
    kd: f32,
    damp_kd: f32,
    /// State dimensions filled from its replies: position, velocity, torque.
    position_state: Option<String>,
    velocity_state: Option<String>,
    torque_state: Option<String>,
}

#[derive(Debug, Clone)]
struct Mit {
    flavor: MitFlavor,
    timeout_ms: Option<u32>,
    stop: MitStop,
    motors: Vec<MitMotor>,
}

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
struct DbcProto {
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

#[derive(Debug, Clone)]
enum Kind {
    PerJoint { base_id: u32 },
    Mit(Mit),
    Dbc(DbcProto),
}

/// A bundle's motor protocol: commands to frames, and the pieces feedback decoding needs.
#[derive(Debug, Clone)]
pub struct Codec {
    kind: Kind,
    action_names: Vec<String>,
    action_units: Vec<String>,
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

    fn build(m: &Manifest, dir: Option<&Path>) -> Result<Codec, CodecError> {
        let kind = match &m.can {
            CanSpec::PerJoint { base_id } => {
                per_joint_id(*base_id, m.action.names.len().saturating_sub(1))
                    .map_err(|e| config("base_id", e.to_string()))?;
                Kind::PerJoint { base_id: *base_id }
            }
            CanSpec::Mit(spec) => Kind::Mit(mit_from_spec(spec, m)?),
            CanSpec::Dbc(spec) => {
                let dir = dir.ok_or_else(|| {
                    config(
                        "file",
                        "a DBC protocol is read from its bundle directory (Codec::from_bundle)",
                    )
                })?;
                Kind::Dbc(dbc_from_spec(spec, m, dir)?)
            }
        };
        Ok(Codec {
            kind,
            action_names: m.action.names.clone(),
            action_units: m.action.units.clone(),
        })
    }

    /// The per-joint encoding for `dims` joints from `base_id` (tests, tools).
    pub fn per_joint(base_id: u32, dims: usize) -> Result<Codec, CodecError> {
        per_joint_id(base_id, dims.saturating_sub(1))
            .map_err(|e| config("base_id", e.to_string()))?;
        Ok(Codec {
            kind: Kind::PerJoint { base_id },
            action_names: (0..dims).map(|i| format!("j{i}")).collect(),
            action_units: vec![String::new(); dims],
        })
    }

    /// The protocol's manifest name.
    pub fn protocol(&self) -> &'static str {
        match self.kind {
            Kind::PerJoint { .. } => "per-joint",
            Kind::Mit(_) => "mit",
            Kind::Dbc(_) => "dbc",
        }
    }

    /// One line for logs: the protocol and its IDs.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::PerJoint { base_id } => format!("per-joint, base ID {base_id:#X}"),
            Kind::Mit(m) => format!(
                "MIT mode ({}), motor IDs {}",
                match m.flavor {
                    MitFlavor::Cubemars => "CubeMars",
                    MitFlavor::Damiao => "Damiao",
                },
                m.motors
                    .iter()
                    .map(|mo| format!("{:#X}", mo.id))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Kind::Dbc(d) => format!(
                "DBC {}, messages {}",
                d.file,
                d.tx.iter()
                    .map(|t| {
                        let m = &d.dbc.messages()[t.msg];
                        format!("{} ({:#X})", m.name(), m.id())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    pub fn action_names(&self) -> &[String] {
        &self.action_names
    }

    /// Whether commands include CAN FD frames (DBC messages longer than 8 bytes): the sink then
    /// needs a CAN FD socket on an interface in CAN FD mode.
    pub fn uses_fd(&self) -> bool {
        match &self.kind {
            Kind::Dbc(d) => d.tx.iter().any(|t| d.dbc.messages()[t.msg].size() > 8),
            _ => false,
        }
    }

    pub fn action_units(&self) -> &[String] {
        &self.action_units
    }

    /// Frames to send once, right before the first command: the command timeout and enable
    /// frames of MIT motors; nothing for the other protocols.
    pub fn start_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        out.clear();
        if let Kind::Mit(m) = &self.kind {
            for mo in &m.motors {
                if let (MitFlavor::Damiao, Some(ms)) = (m.flavor, m.timeout_ms) {
                    let counts = ms.saturating_mul(1000 / DAMIAO_TIMEOUT_UNIT_US);
                    let c = counts.to_le_bytes();
                    let data = [
                        mo.id as u8,
                        (mo.id >> 8) as u8,
                        0x55,
                        DAMIAO_TIMEOUT_RID,
                        c[0],
                        c[1],
                        c[2],
                        c[3],
                    ];
                    push(out, CanFrame::new(DAMIAO_CONFIG_ID, false, &data)?);
                }
            }
            for mo in &m.motors {
                push(out, CanFrame::new(mo.id, false, &MIT_ENABLE)?);
            }
        }
        Ok(())
    }

    /// Frames that disable the motors (`reflex can send --disable`); nothing for protocols
    /// without such a command.
    pub fn disable_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        out.clear();
        if let Kind::Mit(m) = &self.kind {
            for mo in &m.motors {
                push(out, CanFrame::new(mo.id, false, &MIT_DISABLE)?);
            }
        }
        Ok(())
    }

    /// Frames that make the motors report their state without moving them (see the module
    /// documentation): MIT only.
    pub fn state_request_frames(&self, out: &mut Frames) -> Result<(), CodecError> {
        out.clear();
        if let Kind::Mit(m) = &self.kind {
            for mo in &m.motors {
                let f = match m.flavor {
                    MitFlavor::Damiao => CanFrame::new(
                        DAMIAO_CONFIG_ID,
                        false,
                        &[mo.id as u8, (mo.id >> 8) as u8, 0xCC, 0x00],
                    )?,
                    MitFlavor::Cubemars => CanFrame::new(mo.id, false, &MIT_ENABLE)?,
                };
                push(out, f);
            }
        }
        Ok(())
    }

    /// Encodes one safe command into `out` (replacing its contents). Allocation-free.
    pub fn encode(&self, cmd: &SafeCommand, out: &mut Frames) -> Result<(), CodecError> {
        match &self.kind {
            Kind::PerJoint { base_id } => Ok(encode_per_joint(cmd, *base_id, out)?),
            Kind::Mit(m) => {
                out.clear();
                for (mo, &p) in m.motors.iter().zip(cmd.values()) {
                    let (kp, kd) = match (cmd.is_stop(), m.stop) {
                        (true, MitStop::Damp) => (0.0, mo.damp_kd),
                        _ => (mo.kp, mo.kd),
                    };
                    let data = mit_pack(p, 0.0, kp, kd, 0.0, &mo.ranges);
                    push(out, CanFrame::new(mo.id, false, &data)?);
                }
                Ok(())
            }
            Kind::Dbc(d) => {
                out.clear();
                let values = cmd.values();
                for t in &d.tx {
                    let msg = &d.dbc.messages()[t.msg];
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
                        CanFrame::new_fd(msg.id(), msg.is_extended(), &data[..len], d.brs)?
                    } else {
                        CanFrame::new(msg.id(), msg.is_extended(), &data[..len])?
                    };
                    push(out, frame);
                }
                Ok(())
            }
        }
    }

    /// A decoder for the feedback of this protocol into the state vector `state_names`.
    /// `per_joint_base` is the first feedback ID of the per-joint encoding (the bundle does not
    /// say where a per-joint robot reports its state).
    pub fn feedback(
        &self,
        state_names: &[String],
        per_joint_base: u32,
    ) -> Result<FeedbackDecoder, CodecError> {
        let dims = state_names.len();
        if dims == 0 || dims > MAX_DIM {
            return Err(config(
                "feedback",
                format!("{dims} state dimensions: expected 1 to {MAX_DIM}"),
            ));
        }
        let index = |field: String, name: &str| {
            state_names
                .iter()
                .position(|s| s == name)
                .ok_or_else(|| config(field, format!("`{name}` is not a state name")))
        };
        match &self.kind {
            Kind::PerJoint { .. } => {
                let mut ids = Vec::with_capacity(dims);
                for i in 0..dims {
                    ids.push(
                        per_joint_id(per_joint_base, i)
                            .map_err(|e| config("feedback base ID", e.to_string()))?,
                    );
                }
                Ok(FeedbackDecoder {
                    kind: FeedbackKind::PerJoint {
                        base_id: per_joint_base,
                    },
                    dims,
                    ids,
                })
            }
            Kind::Mit(m) => {
                let mut motors = Vec::with_capacity(m.motors.len());
                let mut covered = 0u64;
                for (i, mo) in m.motors.iter().enumerate() {
                    let f = |s: &str| format!("motors[{i}].{s}");
                    let dim = |name: &Option<String>, s: &str| -> Result<Option<usize>, _> {
                        name.as_deref().map(|n| index(f(s), n)).transpose()
                    };
                    let pos = match &mo.position_state {
                        Some(n) => Some(index(f("position_state"), n)?),
                        None => state_names.iter().position(|s| *s == self.action_names[i]),
                    };
                    let fb = MitFeedback {
                        feedback_id: mo.feedback_id,
                        id_byte: match m.flavor {
                            MitFlavor::Cubemars => mo.id as u8,
                            MitFlavor::Damiao => (mo.id & 0xF) as u8,
                        },
                        ranges: mo.ranges,
                        dims: [
                            pos,
                            dim(&mo.velocity_state, "velocity_state")?,
                            dim(&mo.torque_state, "torque_state")?,
                        ],
                    };
                    for d in fb.dims.iter().flatten() {
                        covered |= 1 << d;
                    }
                    motors.push(fb);
                }
                if let Some(missing) = (0..dims).find(|d| covered & (1 << d) == 0) {
                    return Err(config(
                        "motors",
                        format!(
                            "state `{}` is not in any motor's replies: name a motor's \
                             position_state/velocity_state/torque_state after it, or take the \
                             state from elsewhere",
                            state_names[missing]
                        ),
                    ));
                }
                let mut ids: Vec<(u32, bool)> =
                    motors.iter().map(|f| (f.feedback_id, false)).collect();
                ids.sort_unstable();
                ids.dedup();
                Ok(FeedbackDecoder {
                    kind: FeedbackKind::Mit {
                        flavor: m.flavor,
                        motors,
                    },
                    dims,
                    ids,
                })
            }
            Kind::Dbc(d) => {
                let mut entries: Vec<(usize, Vec<(usize, usize)>)> = vec![];
                let mut covered = 0u64;
                for (state, msg, sig) in &d.feedback {
                    let dim = index(format!("feedback.{state}"), state)?;
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
                        let m = &d.dbc.messages()[*m];
                        (m.id(), m.is_extended())
                    })
                    .collect();
                Ok(FeedbackDecoder {
                    kind: FeedbackKind::Dbc {
                        dbc: d.dbc.clone(),
                        entries,
                    },
                    dims,
                    ids,
                })
            }
        }
    }
}

/// Resolves `Message.Signal` in `dbc` (`field` and `file` name it in errors).
fn resolve(dbc: &Dbc, file: &str, field: &str, path: &str) -> Result<(usize, usize), CodecError> {
    let (msg, sig) = path
        .split_once('.')
        .ok_or_else(|| config(field, format!("`{path}`: expected `Message.Signal`")))?;
    let mi = dbc
        .messages()
        .iter()
        .position(|m| m.name() == msg)
        .ok_or_else(|| {
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
    let si = m.signal_index(sig).ok_or_else(|| {
        config(
            field,
            format!(
                "`{path}`: message `{msg}` of {file} has no signal `{sig}` (it has: {})",
                m.signals()
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    Ok((mi, si))
}

fn dbc_from_spec(spec: &DbcSpec, m: &Manifest, dir: &Path) -> Result<DbcProto, CodecError> {
    let path = dir.join(&spec.file);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| config("file", format!("cannot read {}: {e}", path.display())))?;
    let dbc = Dbc::parse(&text, &spec.file).map_err(|e| config("file", e.to_string()))?;
    let mut tx: Vec<TxMessage> = vec![];
    let mut assigned: Vec<((usize, usize), String)> = vec![];
    let mut action_of = vec![];
    let mut assign = |field: String, target: &str, src: SignalSource| -> Result<(), CodecError> {
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
                    "message `{}` is multiplexed: reflex does not send multiplexed messages",
                    msg.name()
                ),
            ));
        }
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
        let (mi, si) = resolve(&dbc, &spec.file, &format!("feedback.{state}"), target)?;
        feedback.push((state.clone(), mi, si));
    }
    if tx.len() > MAX_FRAMES {
        return Err(config(
            "actions",
            format!("{} messages per command: at most {MAX_FRAMES}", tx.len()),
        ));
    }
    Ok(DbcProto {
        file: spec.file.clone(),
        brs: spec.fd_brs,
        dbc: Arc::new(dbc),
        tx,
        feedback,
        action_of,
    })
}

fn push(out: &mut Frames, f: CanFrame) {
    // Callers never produce more than MAX_FRAMES (2 per action dimension at most).
    let _ = out.push(f);
}

fn mit_from_spec(spec: &MitSpec, m: &Manifest) -> Result<Mit, CodecError> {
    if spec.motors.len() != m.action.names.len() {
        return Err(config(
            "motors",
            format!(
                "{} motors for {} action dimensions",
                spec.motors.len(),
                m.action.names.len()
            ),
        ));
    }
    let motors = spec
        .motors
        .iter()
        .map(|mo| MitMotor {
            id: mo.id,
            // CubeMars replies on the host ID 0 unless configured otherwise.
            feedback_id: mo.feedback_id.unwrap_or(0),
            ranges: MitRanges {
                p_max: mo.p_max,
                v_max: mo.v_max,
                t_max: mo.t_max,
                kp_max: mo.kp_max,
                kd_max: mo.kd_max,
            },
            kp: mo.kp,
            kd: mo.kd,
            damp_kd: mo.damp_kd,
            position_state: mo.position_state.clone(),
            velocity_state: mo.velocity_state.clone(),
            torque_state: mo.torque_state.clone(),
        })
        .collect();
    Ok(Mit {
        flavor: spec.flavor,
        timeout_ms: spec.command_timeout_ms,
        stop: spec.stop,
        motors,
    })
}

#[derive(Debug, Clone)]
struct MitFeedback {
    feedback_id: u32,
    id_byte: u8,
    ranges: MitRanges,
    /// State dimensions of position, velocity and torque.
    dims: [Option<usize>; 3],
}

#[derive(Debug, Clone)]
enum FeedbackKind {
    PerJoint {
        base_id: u32,
    },
    Mit {
        flavor: MitFlavor,
        motors: Vec<MitFeedback>,
    },
    Dbc {
        dbc: Arc<Dbc>,
        /// Per feedback message: (message index, [(signal index, state dimension)]).
        entries: Vec<(usize, Vec<(usize, usize)>)>,
    },
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

/// Decodes feedback frames into a state vector. Allocation-free.
#[derive(Debug, Clone)]
pub struct FeedbackDecoder {
    kind: FeedbackKind,
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
        match &self.kind {
            FeedbackKind::Dbc { dbc, entries } => {
                entries.iter().any(|(m, _)| dbc.messages()[*m].size() > 8)
            }
            _ => false,
        }
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
        match &self.kind {
            FeedbackKind::PerJoint { base_id } => {
                // A joint's ID that does not decode is malformed; any other ID is not ours.
                let ours = frame
                    .id()
                    .checked_sub(*base_id)
                    .is_some_and(|i| (i as usize) < self.dims);
                if !ours {
                    return FeedbackOutcome::Ignored;
                }
                match decode_per_joint(frame, *base_id, self.dims) {
                    Some((i, v, _, _)) if v.is_finite() && i < state.len() => {
                        state[i] = v;
                        FeedbackOutcome::Updated(1 << i)
                    }
                    _ => FeedbackOutcome::Malformed,
                }
            }
            FeedbackKind::Mit { flavor, motors } => {
                if frame.is_extended() || frame.is_remote() || frame.is_fd() {
                    return FeedbackOutcome::Ignored;
                }
                let data = frame.data();
                let Some(&b0) = data.first() else {
                    return FeedbackOutcome::Ignored;
                };
                let id_byte = match flavor {
                    MitFlavor::Cubemars => b0,
                    MitFlavor::Damiao => b0 & 0xF,
                };
                let Some(mo) = motors
                    .iter()
                    .find(|m| m.feedback_id == frame.id() && m.id_byte == id_byte)
                else {
                    return FeedbackOutcome::Ignored;
                };
                let Some(r) = mit_unpack(data, *flavor, &mo.ranges) else {
                    return FeedbackOutcome::Malformed;
                };
                if r.is_fault() {
                    return FeedbackOutcome::Fault;
                }
                let mut mask = 0;
                for (d, v) in mo.dims.iter().zip([r.position, r.velocity, r.torque]) {
                    if let Some(d) = *d {
                        if d < state.len() {
                            state[d] = v;
                            mask |= 1 << d;
                        }
                    }
                }
                FeedbackOutcome::Updated(mask)
            }
            FeedbackKind::Dbc { dbc, entries } => {
                let Some((msg, fields)) = entries.iter().find_map(|(mi, f)| {
                    let m = &dbc.messages()[*mi];
                    (m.id() == frame.id()
                        && m.is_extended() == frame.is_extended()
                        && !frame.is_remote())
                    .then_some((m, f))
                }) else {
                    return FeedbackOutcome::Ignored;
                };
                if frame.data().len() < msg.size() {
                    return FeedbackOutcome::Malformed;
                }
                let mut mask = 0;
                for &(si, dim) in fields {
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
    }
}

/// A frame explained for people (`reflex can decode`).
#[derive(Debug, Clone, PartialEq)]
pub struct Explained {
    /// What the frame is: `command shoulder_pan`, `reply shoulder_pan`, `enable shoulder_pan`...
    pub what: String,
    /// Named values with their units.
    pub values: Vec<(String, f64, String)>,
}

impl Codec {
    /// Explains a frame of this protocol (command, special frame or reply), `None` when the
    /// frame is not one of its own.
    pub fn explain(&self, frame: &CanFrame) -> Option<Explained> {
        let unit = |i: usize| self.action_units.get(i).cloned().unwrap_or_default();
        match &self.kind {
            Kind::PerJoint { base_id } => {
                let (i, v, stop, tick) =
                    decode_per_joint(frame, *base_id, self.action_names.len())?;
                Some(Explained {
                    what: format!(
                        "command {}{}",
                        self.action_names[i],
                        if stop { " (stop)" } else { "" }
                    ),
                    values: vec![
                        (self.action_names[i].clone(), f64::from(v), unit(i)),
                        ("tick".into(), f64::from(tick), String::new()),
                    ],
                })
            }
            Kind::Mit(m) => {
                let data = frame.data();
                if frame.is_extended() || frame.is_remote() {
                    return None;
                }
                if frame.id() == DAMIAO_CONFIG_ID && m.flavor == MitFlavor::Damiao {
                    let target = u32::from(*data.first()?) | (u32::from(*data.get(1)?) << 8);
                    let i = m.motors.iter().position(|mo| mo.id == target)?;
                    let name = &self.action_names[i];
                    return match (data.get(2), data.get(3)) {
                        (Some(0x55), Some(&DAMIAO_TIMEOUT_RID)) if data.len() == 8 => {
                            let counts = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
                            Some(Explained {
                                what: format!("set command timeout {name}"),
                                values: vec![(
                                    "timeout".into(),
                                    f64::from(counts) * f64::from(DAMIAO_TIMEOUT_UNIT_US) / 1e3,
                                    "ms".into(),
                                )],
                            })
                        }
                        (Some(0xCC), _) => Some(Explained {
                            what: format!("state request {name}"),
                            values: vec![],
                        }),
                        _ => None,
                    };
                }
                if let Some(i) = m.motors.iter().position(|mo| mo.id == frame.id()) {
                    let name = &self.action_names[i];
                    let special = match data {
                        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFC] => Some("enable"),
                        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFD] => Some("disable"),
                        [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFE] => Some("set zero"),
                        _ => None,
                    };
                    if let Some(s) = special {
                        return Some(Explained {
                            what: format!("{s} {name}"),
                            values: vec![],
                        });
                    }
                    if data.len() == 8 {
                        let r = &m.motors[i].ranges;
                        let w = |hi: usize, shift: u32| u32::from(data[hi]) << shift;
                        let p = w(0, 8) | w(1, 0);
                        let v = w(2, 4) | (u32::from(data[3]) >> 4);
                        let kp = ((u32::from(data[3]) & 0xF) << 8) | w(4, 0);
                        let kd = w(5, 4) | (u32::from(data[6]) >> 4);
                        let t = ((u32::from(data[6]) & 0xF) << 8) | w(7, 0);
                        let f = |x: f32| f64::from(x);
                        return Some(Explained {
                            what: format!("command {name}"),
                            values: vec![
                                (
                                    "position".into(),
                                    f(uint_to_float(p, -r.p_max, r.p_max, 16)),
                                    "rad".into(),
                                ),
                                (
                                    "velocity".into(),
                                    f(uint_to_float(v, -r.v_max, r.v_max, 12)),
                                    "rad/s".into(),
                                ),
                                (
                                    "kp".into(),
                                    f(uint_to_float(kp, 0.0, r.kp_max, 12)),
                                    "N·m/rad".into(),
                                ),
                                (
                                    "kd".into(),
                                    f(uint_to_float(kd, 0.0, r.kd_max, 12)),
                                    "N·m·s/rad".into(),
                                ),
                                (
                                    "torque".into(),
                                    f(uint_to_float(t, -r.t_max, r.t_max, 12)),
                                    "N·m".into(),
                                ),
                            ],
                        });
                    }
                }
                // A reply.
                let b0 = *data.first()?;
                let (i, mo) = m.motors.iter().enumerate().find(|(_, mo)| {
                    mo.feedback_id == frame.id()
                        && match m.flavor {
                            MitFlavor::Cubemars => b0 == mo.id as u8,
                            MitFlavor::Damiao => b0 & 0xF == (mo.id & 0xF) as u8,
                        }
                })?;
                let r = mit_unpack(data, m.flavor, &mo.ranges)?;
                let mut values: Vec<(String, f64, String)> = vec![
                    ("position".into(), f64::from(r.position), "rad".into()),
                    ("velocity".into(), f64::from(r.velocity), "rad/s".into()),
                    ("torque".into(), f64::from(r.torque), "N·m".into()),
                ];
                if let Some(t) = r.temperature {
                    values.push(("temperature".into(), f64::from(t), "°C".into()));
                }
                if m.flavor == MitFlavor::Damiao {
                    values.push(("status".into(), f64::from(r.status), String::new()));
                }
                Some(Explained {
                    what: format!(
                        "reply {}{}",
                        self.action_names[i],
                        if r.is_fault() { " (FAULT)" } else { "" }
                    ),
                    values,
                })
            }
            Kind::Dbc(d) => {
                let mi =
                    d.dbc.messages().iter().position(|m| {
                        m.id() == frame.id() && m.is_extended() == frame.is_extended()
                    })?;
                let msg = &d.dbc.messages()[mi];
                if frame.data().len() < msg.size() {
                    return None;
                }
                let role = if d.tx.iter().any(|t| t.msg == mi) {
                    "command"
                } else if d.feedback.iter().any(|(_, m, _)| *m == mi) {
                    "feedback"
                } else {
                    "message"
                };
                let values = msg
                    .signals()
                    .iter()
                    .enumerate()
                    .filter_map(|(si, s)| {
                        let v = s.raw_to_physical(s.extract(frame.data())?);
                        let name = match d.action_of.iter().find(|(k, _)| *k == (mi, si)) {
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
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const AK: MitRanges = MitRanges {
        p_max: 12.5,
        v_max: 50.0,
        t_max: 18.0,
        kp_max: 500.0,
        kd_max: 5.0,
    };

    /// Bytes derived by hand from the firmware's packing formula.
    ///
    /// p = 0: (0 + 12.5) * 65535 / 25 = 32767.5 -> 32767 = 0x7FFF
    /// v = 0: (0 + 50) * 4095 / 100 = 2047.5 -> 2047 = 0x7FF
    /// kp = 20: 20 * 4095 / 500 = 163.8 -> 163 = 0x0A3
    /// kd = 1: 1 * 4095 / 5 = 819 = 0x333
    /// t = 0: 2047 = 0x7FF
    /// bytes: 7F FF | 7F | F0 (v low nibble F, kp high nibble 0) | A3 | 33 | 37 (kd low 3, t high
    /// 7) | FF
    #[test]
    fn mit_pack_matches_hand_derived_bytes() {
        assert_eq!(
            mit_pack(0.0, 0.0, 20.0, 1.0, 0.0, &AK),
            [0x7F, 0xFF, 0x7F, 0xF0, 0xA3, 0x33, 0x37, 0xFF]
        );
        // p = 1 rad: 13.5 * 65535 / 25 = 35388.9 -> 35388 = 0x8A3C; kp = 500 -> 0xFFF;
        // kd = 0 -> 0; t = -18 -> 0; v = 50 -> 0xFFF.
        assert_eq!(
            mit_pack(1.0, 50.0, 500.0, 0.0, -18.0, &AK),
            [0x8A, 0x3C, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00]
        );
        // Out of range and NaN clamp to the range's ends, never wrap.
        assert_eq!(mit_pack(99.0, 0.0, 0.0, 0.0, 0.0, &AK)[..2], [0xFF, 0xFF]);
        assert_eq!(
            mit_pack(f32::NAN, 0.0, 0.0, 0.0, 0.0, &AK)[..2],
            [0x00, 0x00]
        );
    }

    /// A Damiao reply by hand: ID 1 enabled (status 1), p = 0x8A3D, v = 0x800, t = 0x7FF, MOS
    /// 35 °C, rotor 30 °C.
    #[test]
    fn mit_unpack_matches_hand_derived_values() {
        let d = [0x11, 0x8A, 0x3D, 0x80, 0x07, 0xFF, 35, 30];
        let r = mit_unpack(&d, MitFlavor::Damiao, &AK).unwrap();
        assert_eq!((r.id, r.status), (1, 1));
        assert!((r.position - 1.0).abs() < 25.0 / 65535.0, "{}", r.position);
        // 0x800 = 2048: 2048 * 100 / 4095 - 50 = 0.0122 rad/s
        assert!((r.velocity - 0.01221).abs() < 1e-4, "{}", r.velocity);
        assert!((r.torque - (2047.0 * 36.0 / 4095.0 - 18.0)).abs() < 1e-5);
        assert_eq!(r.temperature, Some(35.0));
        assert!(!r.is_fault());
        let fault = [0xD1, 0, 0, 0, 0, 0, 0, 0];
        assert!(mit_unpack(&fault, MitFlavor::Damiao, &AK)
            .unwrap()
            .is_fault());
        // CubeMars: byte 0 is the whole ID; no fault nibble.
        let r = mit_unpack(&d, MitFlavor::Cubemars, &AK).unwrap();
        assert_eq!((r.id, r.status), (0x11, 0));
        assert!(mit_unpack(&d[..5], MitFlavor::Cubemars, &AK).is_none());
    }

    /// A 3-joint Damiao arm: IDs 1..3, replies on 0x11..0x13, joint names as state names.
    fn damiao_manifest(stop: MitStop) -> Manifest {
        let mut arch = reflex_models::reference::demo_arch();
        arch.action_dim = 3;
        arch.state_dim = 3;
        let mut m = reflex_models::reference::reference_manifest(
            &arch,
            "t",
            reflex_models::reference::default_capture(),
        );
        m.action.units = vec!["rad".into(); 3];
        let mut can = reflex_models::reference::example_mit_can(3, MitFlavor::Damiao, stop);
        if let CanSpec::Mit(spec) = &mut can {
            // A damping gain whose packing is easy to derive by hand (see mit_commands_and_stops).
            for mo in &mut spec.motors {
                mo.damp_kd = 2.0;
            }
        }
        m.can = can;
        m
    }

    fn hex(f: &CanFrame) -> String {
        let d: String = f.data().iter().map(|b| format!("{b:02X}")).collect();
        format!("{:03X}#{d}", f.id())
    }

    #[test]
    fn damiao_start_sequence_sets_the_timeout_then_enables() {
        let c = Codec::from_manifest(&damiao_manifest(MitStop::Hold)).unwrap();
        let mut out = Frames::new();
        c.start_frames(&mut out).unwrap();
        let got: Vec<String> = out.iter().map(hex).collect();
        // 100 ms = 2000 periods of 50 µs = 0x000007D0, little-endian D0 07 00 00.
        assert_eq!(
            got,
            [
                "7FF#01005509D0070000",
                "7FF#02005509D0070000",
                "7FF#03005509D0070000",
                "001#FFFFFFFFFFFFFFFC",
                "002#FFFFFFFFFFFFFFFC",
                "003#FFFFFFFFFFFFFFFC",
            ]
        );
        c.state_request_frames(&mut out).unwrap();
        assert_eq!(out.iter().map(hex).collect::<Vec<_>>()[0], "7FF#0100CC00");
        c.disable_frames(&mut out).unwrap();
        assert_eq!(hex(&out[2]), "003#FFFFFFFFFFFFFFFD");
        let e = c.explain(&CanFrame::new(0x7FF, false, &[1, 0, 0x55, 9, 0xD0, 7, 0, 0]).unwrap());
        assert_eq!(e.unwrap().values[0].1, 100.0);
    }

    #[test]
    fn mit_commands_and_stops() {
        let m = damiao_manifest(MitStop::Damp);
        let c = Codec::from_manifest(&m).unwrap();
        let mut f = crate::control::safety::SafetyFilter::new(&m.action, 50.0, true).unwrap();
        let mut out = Frames::new();
        c.encode(&f.filter(&[0.0, 0.0, 0.0], 0).command, &mut out)
            .unwrap();
        // p = 0, v = 0, kp = 20 (0x0A3), kd = 1 (0x333), t = 0: see the hand derivation above.
        assert_eq!(hex(&out[0]), "001#7FFF7FF0A33337FF");
        assert_eq!(out.len(), 3);
        // A damped stop: kp = 0, kd = 2 -> 2 * 4095 / 5 = 1638 = 0x666.
        c.encode(&f.stop(1), &mut out).unwrap();
        assert_eq!(hex(&out[1]), "002#7FFF7FF000666 7FF".replace(' ', ""));
        let e = c.explain(&out[1]).unwrap();
        assert_eq!(e.what, "command joint_1");
        assert!((e.values[3].1 - 2.0).abs() < 2e-3, "{:?}", e.values);
        // A hold stop keeps the gains.
        let c = Codec::from_manifest(&damiao_manifest(MitStop::Hold)).unwrap();
        c.encode(&f.stop(2), &mut out).unwrap();
        assert_eq!(hex(&out[0]), "001#7FFF7FF0A33337FF");
    }

    #[test]
    fn mit_feedback_fills_the_state_and_skips_faults() {
        let m = damiao_manifest(MitStop::Hold);
        let c = Codec::from_manifest(&m).unwrap();
        let d = c.feedback(&m.state.names, 0).unwrap();
        assert_eq!(d.ids(), &[(0x11, false), (0x12, false), (0x13, false)]);
        let mut state = [0f32; 3];
        let reply = |fid: u32, b0: u8| {
            CanFrame::new(fid, false, &[b0, 0x8A, 0x3D, 0x80, 0x07, 0xFF, 35, 30]).unwrap()
        };
        assert_eq!(
            d.decode(&reply(0x12, 0x12), &mut state),
            FeedbackOutcome::Updated(0b010)
        );
        assert!((state[1] - 1.0).abs() < 1e-3, "{state:?}");
        // Another motor's byte 0 on this ID, an unknown ID: not ours.
        assert_eq!(
            d.decode(&reply(0x12, 0x13), &mut state),
            FeedbackOutcome::Ignored
        );
        assert_eq!(
            d.decode(&reply(0x40, 0x12), &mut state),
            FeedbackOutcome::Ignored
        );
        // A fault (status 0xD: lost communication) updates nothing.
        state[2] = 7.0;
        assert_eq!(
            d.decode(&reply(0x13, 0xD3), &mut state),
            FeedbackOutcome::Fault
        );
        assert_eq!(state[2], 7.0);
        let short = CanFrame::new(0x13, false, &[0x13, 1, 2]).unwrap();
        assert_eq!(d.decode(&short, &mut state), FeedbackOutcome::Malformed);
        let e = c.explain(&reply(0x13, 0xD3)).unwrap();
        assert_eq!(e.what, "reply joint_2 (FAULT)");
        // State dimensions no motor reports are refused up front.
        let mut names = m.state.names.clone();
        names.push("gripper_force".into());
        let err = c.feedback(&names, 0).unwrap_err().to_string();
        assert!(
            err.contains("`gripper_force` is not in any motor's replies"),
            "{err}"
        );
    }

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

    proptest::proptest! {
        /// Packing then unpacking returns the value within one quantization step.
        #[test]
        fn mit_round_trip(p in -12.5f32..12.5, v in -50f32..50.0, t in -18f32..18.0) {
            let d = mit_pack(p, v, 0.0, 0.0, t, &AK);
            // A reply carries p, v, t at the same bit positions as bytes 0..5 of a command,
            // shifted by one byte.
            let reply = [1, d[0], d[1], d[2], d[3] & 0xF0 | (d[6] & 0x0F), d[7], 0, 0];
            let r = mit_unpack(&reply, MitFlavor::Cubemars, &AK).unwrap();
            proptest::prop_assert!((r.position - p).abs() <= 25.0 / 65535.0 * 1.01);
            proptest::prop_assert!((r.velocity - v).abs() <= 100.0 / 4095.0 * 1.01);
            proptest::prop_assert!((r.torque - t).abs() <= 36.0 / 4095.0 * 1.01);
        }

        /// Garbage frames never panic the decoders.
        #[test]
        fn unpack_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..9)) {
            let _ = mit_unpack(&data, MitFlavor::Damiao, &AK);
            let _ = mit_unpack(&data, MitFlavor::Cubemars, &AK);
        }
    }
}
