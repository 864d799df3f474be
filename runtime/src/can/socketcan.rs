//! SocketCAN output: a [`CommandSink`] that puts the per-joint frames of each command on a Linux
//! CAN interface (`can0`, `vcan0`, a USB adapter's `slcan0`...).
//!
//! The socket is non-blocking: `send` never waits for the bus. What the kernel cannot take right
//! away is an error the loop can act on, classified by [`classify_send_errno`]:
//!
//! | errno                                   | kind        | meaning                                  |
//! |-----------------------------------------|-------------|------------------------------------------|
//! | `EAGAIN`, `ENOBUFS`, `EINTR`            | `Transient` | socket buffer or TX queue full: next tick |
//! | `ENETDOWN`, `ENODEV`, `ENXIO`, ...      | `Degraded`  | interface down or gone: hold, keep trying |
//! | `EPERM`, `EACCES`, `EINVAL`, `EMSGSIZE` | `Fatal`     | cannot work as configured                 |
//!
//! The first frame that fails ends the command: the next tick sends a whole new command anyway.
//!
//! The socket receives no data frames (empty filter) but every CAN error class, read without
//! blocking at each `send`: error frames are counted, and a bus-off report makes every `send`
//! fail as `Degraded` (nothing is sent) until the controller reports a restart, returns to
//! error-active, or the interface is taken down and up again.
//!
//! Opening checks the interface in sysfs first so that the error names the problem: missing,
//! not a CAN interface, or down (`ip link set IFACE up`).
//!
//! [`SocketCanStateSource`] is the way back: joint state reported by the motor controllers in
//! the same per-joint encoding (one frame per joint at `base_id + i`, value in data 0-3). It
//! keeps the newest value of each joint and reports a new state each time every joint has
//! reported since the last one.

use crate::can::codec::{Codec, CodecError, FeedbackDecoder, FeedbackOutcome, Frames};
use crate::can::CanFrame;
use crate::control::safety::{SafeCommand, MAX_DIM};
use crate::io::{CommandSink, FaultKind, SinkError, StateError, StateSource};
use ::socketcan::id::FdFlags;
use ::socketcan::{
    CanDataFrame, CanFdFrame, CanFdSocket, CanRawFrame, CanSocket, EmbeddedFrame, ExtendedId, Id,
    Socket, SocketOptions, StandardId,
};
use reflex_board::input::{InputError, SafetyInput};
use std::io;
use std::path::Path;

/// Where Linux lists network interfaces.
pub const SYS_CLASS_NET: &str = "/sys/class/net";
/// `ARPHRD_CAN`: the link type of every SocketCAN interface.
const ARPHRD_CAN: u32 = 280;
/// `IFF_UP` in `/sys/class/net/IFACE/flags`.
const IFF_UP: u32 = 0x1;
/// Longest interface name Linux accepts (`IFNAMSIZ` - 1).
const MAX_IFACE_LEN: usize = 15;
/// Error frames read per `send` at most, so that a babbling bus cannot stall a tick.
const MAX_ERROR_FRAMES_PER_SEND: usize = 16;

/// Counts since the sink was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SocketCanCounters {
    /// Commands whose frames were all queued.
    pub commands: u64,
    /// Frames queued to the kernel.
    pub frames: u64,
    /// Sends that failed with a transient error (queue full).
    pub transient_errors: u64,
    /// Sends that failed because the interface was down, gone, or bus-off.
    pub degraded_errors: u64,
    /// Commands cut short after some of their frames were queued.
    pub partial_commands: u64,
    /// CAN error frames received (any class).
    pub error_frames: u64,
    /// Bus-off reports.
    pub bus_off: u64,
}

/// What a CAN error frame tells the sink (from the error class bits of its ID and its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFrameEvent {
    /// The controller went bus-off: nothing it sends reaches the bus.
    BusOff,
    /// The controller is back on the bus (restarted, or back to error-active).
    Recovered,
    /// Any other error (protocol violation, no ACK, error counters...): counted only.
    Other,
}

/// Classifies a received error frame by `can_id` (with `CAN_ERR_FLAG`) and data bytes.
pub fn classify_error_frame(can_id: u32, data: &[u8]) -> ErrorFrameEvent {
    let class = can_id & libc::CAN_ERR_MASK;
    if class & libc::CAN_ERR_BUSOFF != 0 {
        ErrorFrameEvent::BusOff
    } else if class & libc::CAN_ERR_RESTARTED != 0
        || (class & libc::CAN_ERR_CRTL != 0
            && data
                .get(1)
                .is_some_and(|&d| d == libc::CAN_ERR_CRTL_ACTIVE as u8))
    {
        ErrorFrameEvent::Recovered
    } else {
        ErrorFrameEvent::Other
    }
}

/// What the control loop should do about a failed `write` to a CAN socket.
pub fn classify_send_errno(errno: i32) -> FaultKind {
    match errno {
        libc::EAGAIN | libc::ENOBUFS | libc::EINTR => FaultKind::Transient,
        libc::EPERM | libc::EACCES | libc::EINVAL | libc::EMSGSIZE | libc::EAFNOSUPPORT => {
            FaultKind::Fatal
        }
        // ENETDOWN, ENODEV, ENXIO, ENETUNREACH, EIO and anything unexpected: hold the robot and
        // keep trying; the interface may come back.
        _ => FaultKind::Degraded,
    }
}

fn socketcan_id(frame: &CanFrame) -> Option<Id> {
    Some(if frame.is_extended() {
        ExtendedId::new(frame.id())?.into()
    } else {
        StandardId::new(u16::try_from(frame.id()).ok()?)?.into()
    })
}

/// The socketcan crate's frame for one of our classic frames (same ID, ID format and data);
/// `None` for a CAN FD frame.
pub fn to_socketcan_frame(frame: &CanFrame) -> Option<CanDataFrame> {
    if frame.is_fd() {
        return None;
    }
    CanDataFrame::new(socketcan_id(frame)?, frame.data())
}

/// The socketcan crate's CAN FD frame for one of our FD frames.
pub fn to_socketcan_fd_frame(frame: &CanFrame) -> Option<CanFdFrame> {
    if !frame.is_fd() {
        return None;
    }
    let flags = if frame.brs() {
        FdFlags::BRS
    } else {
        FdFlags::empty()
    };
    CanFdFrame::with_flags(socketcan_id(frame)?, frame.data(), flags)
}

/// A raw CAN socket: classic frames only, or with CAN FD frames enabled (`CAN_RAW_FD_FRAMES`) for
/// protocols that send or receive them. Both are non-blocking once set up.
enum RawSocket {
    Classic(CanSocket),
    Fd(CanFdSocket),
}

/// A frame as the kernel handed it over.
enum RawRead {
    Classic(libc::can_frame),
    Fd(libc::canfd_frame),
}

impl RawSocket {
    fn open(iface: &str, fd: bool) -> io::Result<Self> {
        Ok(if fd {
            RawSocket::Fd(CanFdSocket::open(iface)?)
        } else {
            RawSocket::Classic(CanSocket::open(iface)?)
        })
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            RawSocket::Classic(s) => s.set_nonblocking(true),
            RawSocket::Fd(s) => s.set_nonblocking(true),
        }
    }

    fn set_filters(&self, filters: &[(u32, u32)]) -> io::Result<()> {
        match self {
            RawSocket::Classic(s) => s.set_filters(filters),
            RawSocket::Fd(s) => s.set_filters(filters),
        }
    }

    fn set_filter_drop_all(&self) -> io::Result<()> {
        match self {
            RawSocket::Classic(s) => s.set_filter_drop_all(),
            RawSocket::Fd(s) => s.set_filter_drop_all(),
        }
    }

    fn set_error_filter(&self, mask: u32) -> io::Result<()> {
        match self {
            RawSocket::Classic(s) => s.set_error_filter(mask),
            RawSocket::Fd(s) => s.set_error_filter(mask),
        }
    }

    /// Writes one frame; a CAN FD frame on a classic socket is `EINVAL` (the codec and the socket
    /// are chosen together, so this does not happen).
    fn write(&self, frame: &CanFrame) -> io::Result<()> {
        let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
        match (self, frame.is_fd()) {
            (RawSocket::Classic(s), false) => {
                s.write_frame(&to_socketcan_frame(frame).ok_or_else(invalid)?)
            }
            (RawSocket::Fd(s), false) => {
                s.write_frame(&to_socketcan_frame(frame).ok_or_else(invalid)?)
            }
            (RawSocket::Fd(s), true) => {
                s.write_frame(&to_socketcan_fd_frame(frame).ok_or_else(invalid)?)
            }
            (RawSocket::Classic(_), true) => Err(invalid()),
        }
    }

    fn read(&self) -> io::Result<RawRead> {
        match self {
            RawSocket::Classic(s) => s.read_raw_frame().map(RawRead::Classic),
            RawSocket::Fd(s) => s.read_raw_frame().map(|f| match f {
                CanRawFrame::Classic(c) => RawRead::Classic(c),
                CanRawFrame::Fd(f) => RawRead::Fd(f),
            }),
        }
    }
}

impl RawRead {
    /// Our frame: `None` for error and remote frames and what is not valid CAN.
    fn frame(&self) -> Option<CanFrame> {
        match self {
            RawRead::Classic(c) => from_raw_frame(c),
            RawRead::Fd(f) => from_raw_fd_frame(f),
        }
    }
}

/// Our frame for a received raw CAN FD one: `None` for error frames and invalid lengths.
pub fn from_raw_fd_frame(raw: &libc::canfd_frame) -> Option<CanFrame> {
    let (id, extended) = data_frame_id(raw.can_id)?;
    let len = usize::from(raw.len);
    let brs = raw.flags & libc::CANFD_BRS as u8 != 0;
    CanFrame::new_fd(id, extended, raw.data.get(..len)?, brs).ok()
}

/// Checks that `iface` can carry CAN FD frames (MTU 72), when sysfs says.
fn check_fd_mtu(sys_class_net: &Path, iface: &str) -> Result<(), String> {
    let Ok(text) = std::fs::read_to_string(sys_class_net.join(iface).join("mtu")) else {
        return Ok(());
    };
    match text.trim().parse::<u32>() {
        Ok(72) | Err(_) => Ok(()),
        Ok(mtu) => Err(format!(
            "the bundle's protocol sends CAN FD frames but `{iface}` is in classic CAN mode (MTU \
             {mtu}, CAN FD is 72): `ip link set {iface} type can bitrate B dbitrate DB fd on` \
             (a vcan: `ip link set {iface} mtu 72`)"
        )),
    }
}

/// A CAN interface that cannot be used: its kind (a missing or non-CAN interface is fatal, one
/// that is down is degraded) and a message that names the interface and says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InterfaceError {
    pub kind: FaultKind,
    pub message: String,
}

impl crate::io::Fault for InterfaceError {
    fn kind(&self) -> FaultKind {
        self.kind
    }
}

/// Checks that `iface` exists under `sys_class_net`, is a CAN interface and is up.
pub fn check_interface(sys_class_net: &Path, iface: &str) -> Result<(), InterfaceError> {
    let err = |kind, message| Err(InterfaceError { kind, message });
    if iface.is_empty()
        || iface.len() > MAX_IFACE_LEN
        || !iface
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
    {
        return err(
            FaultKind::Fatal,
            format!("`{iface}` is not a valid interface name (1 to {MAX_IFACE_LEN} characters, no spaces, `/` or `:`)"),
        );
    }
    if !sys_class_net.is_dir() {
        // No sysfs (some containers): the socket calls will report what is wrong.
        return Ok(());
    }
    let dir = sys_class_net.join(iface);
    if !dir.exists() {
        return err(
            FaultKind::Fatal,
            format!(
                "CAN interface `{iface}` not found (check the adapter and `ip link show`; a \
                 virtual bus for tests: `ip link add dev {iface} type vcan && ip link set {iface} up`)"
            ),
        );
    }
    let read_u32 = |file: &str| -> Option<u32> {
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        let text = text.trim();
        match text.strip_prefix("0x") {
            Some(hex) => u32::from_str_radix(hex, 16).ok(),
            None => text.parse().ok(),
        }
    };
    if let Some(ty) = read_u32("type") {
        if ty != ARPHRD_CAN {
            return err(
                FaultKind::Fatal,
                format!("`{iface}` is not a CAN interface (link type {ty}, CAN is {ARPHRD_CAN})"),
            );
        }
    }
    if let Some(flags) = read_u32("flags") {
        if flags & IFF_UP == 0 {
            return err(
                FaultKind::Degraded,
                format!(
                    "CAN interface `{iface}` is down (bring it up: `ip link set {iface} up type \
                     can bitrate BITRATE`, or `ip link set {iface} up` for a vcan)"
                ),
            );
        }
    }
    Ok(())
}

/// Sends each command on a SocketCAN interface in the bundle's protocol, without blocking.
///
/// The protocol's start frames (MIT enable and command timeout) go out right before the first
/// command, and again before the first command after the interface was down: motors that timed
/// out while the bus was gone are enabled again by the command that follows.
pub struct SocketCanSink {
    socket: RawSocket,
    iface: String,
    name: String,
    codec: Codec,
    started: bool,
    frames: Frames,
    counters: SocketCanCounters,
    /// A bus-off was reported and no recovery since.
    bus_off: bool,
    /// The last send failed as `Degraded` (for logging transitions once).
    degraded: bool,
}

impl SocketCanSink {
    /// Opens a raw CAN socket on `iface` for commands encoded by `codec`.
    pub fn open(iface: &str, codec: Codec) -> Result<Self, SinkError> {
        Self::open_with_sysfs(Path::new(SYS_CLASS_NET), iface, codec)
    }

    /// [`Self::open`] with another sysfs root for the interface checks (tests).
    pub fn open_with_sysfs(
        sys_class_net: &Path,
        iface: &str,
        codec: Codec,
    ) -> Result<Self, SinkError> {
        let name = format!("socketcan:{iface}");
        let fail = |kind, message| SinkError {
            sink: name.clone(),
            kind,
            message,
        };
        check_interface(sys_class_net, iface).map_err(|e| fail(e.kind, e.message))?;
        let fd = codec.uses_fd();
        if fd {
            check_fd_mtu(sys_class_net, iface).map_err(|m| fail(FaultKind::Fatal, m))?;
        }
        let socket = RawSocket::open(iface, fd).map_err(|e| {
            let (kind, msg) = match e.raw_os_error() {
                Some(libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT) => (
                    FaultKind::Fatal,
                    format!(
                        "opening a CAN socket on `{iface}`: the kernel has no SocketCAN support \
                         ({e}; load it with `modprobe can_raw`)"
                    ),
                ),
                Some(libc::ENODEV) => (
                    FaultKind::Fatal,
                    format!("CAN interface `{iface}` not found ({e})"),
                ),
                _ => (
                    FaultKind::Fatal,
                    format!("opening a CAN socket on `{iface}`: {e}"),
                ),
            };
            fail(kind, msg)
        })?;
        let setup = |what: &str, r: io::Result<()>| {
            r.map_err(|e| fail(FaultKind::Fatal, format!("{what} on `{iface}`: {e}")))
        };
        setup("set_nonblocking", socket.set_nonblocking())?;
        // A sink reads no data frames, only the bus's error reports.
        setup("CAN_RAW_FILTER", socket.set_filter_drop_all())?;
        setup(
            "CAN_RAW_ERR_FILTER",
            socket.set_error_filter(libc::CAN_ERR_MASK),
        )?;
        log::info!("CAN output on `{iface}` ({})", codec.describe());
        Ok(Self {
            socket,
            iface: iface.to_owned(),
            name,
            codec,
            started: false,
            frames: Frames::new(),
            counters: SocketCanCounters::default(),
            bus_off: false,
            degraded: false,
        })
    }

    pub fn counters(&self) -> SocketCanCounters {
        self.counters
    }

    /// Reads the pending error frames without blocking.
    fn poll_error_frames(&mut self) {
        for _ in 0..MAX_ERROR_FRAMES_PER_SEND {
            let Ok(RawRead::Classic(raw)) = self.socket.read() else {
                // WouldBlock (nothing pending) or the interface went away: `write` will say.
                // (Error frames are classic frames; the filter lets nothing else through.)
                return;
            };
            if raw.can_id & libc::CAN_ERR_FLAG == 0 {
                continue;
            }
            self.counters.error_frames += 1;
            let dlc = usize::from(raw.can_dlc).min(8);
            match classify_error_frame(raw.can_id, &raw.data[..dlc]) {
                ErrorFrameEvent::BusOff => {
                    self.counters.bus_off += 1;
                    if !self.bus_off {
                        log::error!(
                            "CAN interface `{}` is bus-off: commands are not reaching the robot",
                            self.iface
                        );
                    }
                    self.bus_off = true;
                    // Motors may time out while the bus is off: enable them again after it.
                    self.started = false;
                }
                ErrorFrameEvent::Recovered => {
                    if self.bus_off {
                        log::warn!("CAN interface `{}` recovered from bus-off", self.iface);
                    }
                    self.bus_off = false;
                }
                ErrorFrameEvent::Other => {
                    log::trace!("CAN error frame on `{}`: {:#X}", self.iface, raw.can_id)
                }
            }
        }
    }

    fn degraded_error(&mut self, message: String) -> SinkError {
        self.counters.degraded_errors += 1;
        if !self.degraded {
            log::warn!("{}: {message}; retrying every tick", self.name);
            self.degraded = true;
        }
        SinkError {
            sink: self.name.clone(),
            kind: FaultKind::Degraded,
            message,
        }
    }
}

impl SocketCanSink {
    fn codec_error(&self, e: CodecError) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            kind: FaultKind::Fatal,
            message: format!("{} encoding: {e}", self.codec.protocol()),
        }
    }

    /// Writes `self.frames` in order; stops at the first error.
    fn write_frames(&mut self) -> Result<(), SinkError> {
        for k in 0..self.frames.len() {
            let frame = self.frames[k];
            if let Err(e) = self.socket.write(&frame) {
                if k > 0 {
                    self.counters.partial_commands += 1;
                }
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                let message = format!("sending frame {:#X} on `{}`: {e}", frame.id(), self.iface);
                return Err(match classify_send_errno(errno) {
                    FaultKind::Transient => {
                        self.counters.transient_errors += 1;
                        SinkError {
                            sink: self.name.clone(),
                            kind: FaultKind::Transient,
                            message,
                        }
                    }
                    FaultKind::Degraded => {
                        // The link went down: whatever bus-off state it had is reset on `up`,
                        // and motors may have timed out: enable them again when it is back.
                        self.bus_off = false;
                        self.started = false;
                        self.degraded_error(message)
                    }
                    FaultKind::Fatal => SinkError {
                        sink: self.name.clone(),
                        kind: FaultKind::Fatal,
                        message,
                    },
                });
            }
            self.counters.frames += 1;
        }
        Ok(())
    }
}

impl CommandSink for SocketCanSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, cmd: &SafeCommand, _now_ns: u64) -> Result<(), SinkError> {
        self.poll_error_frames();
        if self.bus_off {
            return Err(self.degraded_error(format!("`{}` is bus-off", self.iface)));
        }
        if !self.started {
            self.codec
                .start_frames(&mut self.frames)
                .map_err(|e| self.codec_error(e))?;
            self.write_frames()?;
            self.started = true;
        }
        self.codec
            .encode(cmd, &mut self.frames)
            .map_err(|e| self.codec_error(e))?;
        self.write_frames()?;
        self.counters.commands += 1;
        if self.degraded {
            log::info!("{}: sending again", self.name);
            self.degraded = false;
        }
        Ok(())
    }

    /// Frames are handed to the kernel in `send`; this reports the run's counters.
    fn flush(&mut self) -> Result<(), SinkError> {
        self.poll_error_frames();
        let c = self.counters;
        log::info!(
            "{}: {} commands ({} frames) sent, {} transient and {} degraded send errors, {} \
             partial commands, {} error frames, {} bus-off",
            self.name,
            c.commands,
            c.frames,
            c.transient_errors,
            c.degraded_errors,
            c.partial_commands,
            c.error_frames,
            c.bus_off
        );
        Ok(())
    }
}

/// The ID and ID format of a raw `can_id`; `None` for error and remote frames.
fn data_frame_id(can_id: u32) -> Option<(u32, bool)> {
    if can_id & (libc::CAN_ERR_FLAG | libc::CAN_RTR_FLAG) != 0 {
        return None;
    }
    let extended = can_id & libc::CAN_EFF_FLAG != 0;
    let mask = if extended {
        libc::CAN_EFF_MASK
    } else {
        libc::CAN_SFF_MASK
    };
    Some((can_id & mask, extended))
}

/// Our frame for a received raw one: `None` for error and remote frames, and for what is not
/// classic CAN.
pub fn from_raw_frame(raw: &libc::can_frame) -> Option<CanFrame> {
    let (id, extended) = data_frame_id(raw.can_id)?;
    let len = usize::from(raw.can_dlc);
    CanFrame::new(id, extended, raw.data.get(..len)?).ok()
}

/// Counts since the state source was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StateCounters {
    /// Feedback frames decoded.
    pub frames: u64,
    /// Complete states reported (every joint updated).
    pub states: u64,
    /// Frames with a feedback ID that did not decode (wrong length, reserved bits, non-finite).
    pub malformed: u64,
    /// Replies reporting a motor fault (their values are not used).
    pub faults: u64,
    /// State requests sent (MIT motors reply only when addressed).
    pub requests: u64,
    /// Read errors (interface down or gone).
    pub errors: u64,
}

/// Joint state from a SocketCAN interface, decoded by the bundle's protocol (see
/// [`crate::can::codec`]): per-joint feedback frames, MIT replies, DBC signals.
///
/// The state's timestamp is the loop time of the call that completed it: frames are read every
/// tick, so it is late by at most one control period. A state is complete when every state
/// dimension was updated since the previous one; a missing or garbled frame leaves it incomplete,
/// so the loop keeps the last state within its staleness bound, then holds.
///
/// Protocols whose motors only speak when spoken to (MIT) get their state requested while no
/// complete state arrived for `REQUEST_AFTER_NS`, at most every `REQUEST_AFTER_NS`: during
/// warm-up, and whenever the commands stop.
pub struct SocketCanStateSource {
    socket: RawSocket,
    iface: String,
    name: String,
    decoder: FeedbackDecoder,
    values: heapless::Vec<f32, MAX_DIM>,
    /// Bit `i`: dimension `i` updated since the last complete state.
    seen: u64,
    /// A complete state not yet handed out, and its time.
    fresh: Option<u64>,
    /// Frames that make the motors reply, and when they were last sent / the last complete state.
    requests: Frames,
    last_request_ns: Option<u64>,
    last_state_ns: Option<u64>,
    counters: StateCounters,
}

/// See [`SocketCanStateSource`].
pub const REQUEST_AFTER_NS: u64 = 20_000_000;

impl SocketCanStateSource {
    /// Receives the feedback `decoder` knows on `iface`; `requests` are sent while no state
    /// arrives (empty: never).
    pub fn open(
        iface: &str,
        decoder: FeedbackDecoder,
        requests: Frames,
    ) -> Result<Self, StateError> {
        let name = format!("socketcan:{iface}");
        let fail = |message: String| StateError {
            source_name: name.clone(),
            kind: FaultKind::Fatal,
            message,
        };
        let dims = decoder.dims();
        if dims == 0 || dims > MAX_DIM {
            return Err(fail(format!(
                "{dims} state dimensions: expected 1 to {MAX_DIM}"
            )));
        }
        check_interface(Path::new(SYS_CLASS_NET), iface).map_err(|e| fail(e.message))?;
        let filters: Vec<(u32, u32)> = decoder
            .ids()
            .iter()
            .map(|&(id, extended)| {
                let (flag, mask) = if extended {
                    (libc::CAN_EFF_FLAG, libc::CAN_EFF_MASK)
                } else {
                    (0, libc::CAN_SFF_MASK)
                };
                // Match the ID, its format, and data frames only.
                (id | flag, mask | libc::CAN_EFF_FLAG | libc::CAN_RTR_FLAG)
            })
            .collect();
        let fd = decoder.uses_fd() || requests.iter().any(CanFrame::is_fd);
        if fd {
            check_fd_mtu(Path::new(SYS_CLASS_NET), iface).map_err(fail)?;
        }
        let socket = RawSocket::open(iface, fd)
            .map_err(|e| fail(format!("opening a CAN socket on `{iface}`: {e}")))?;
        let setup = |what: &str, r: io::Result<()>| {
            r.map_err(|e| fail(format!("{what} on `{iface}`: {e}")))
        };
        setup("set_nonblocking", socket.set_nonblocking())?;
        setup("CAN_RAW_FILTER", socket.set_filters(&filters))?;
        let mut values = heapless::Vec::new();
        // Cannot fail: dims <= MAX_DIM, the capacity.
        let _ = values.resize(dims, 0.0);
        log::info!("joint state from `{iface}` ({dims} dimensions)");
        Ok(Self {
            socket,
            iface: iface.to_owned(),
            name,
            decoder,
            values,
            seen: 0,
            fresh: None,
            requests,
            last_request_ns: None,
            last_state_ns: None,
            counters: StateCounters::default(),
        })
    }

    pub fn counters(&self) -> StateCounters {
        self.counters
    }

    /// Sends the state requests when the state is overdue (best effort: a full queue or a down
    /// link shows up in the reads and the sink's counters).
    fn request_if_overdue(&mut self, now_ns: u64) {
        if self.requests.is_empty() {
            return;
        }
        let overdue =
            |t: Option<u64>| t.is_none_or(|t| now_ns.saturating_sub(t) >= REQUEST_AFTER_NS);
        if overdue(self.last_state_ns) && overdue(self.last_request_ns) {
            for f in &self.requests {
                let _ = self.socket.write(f);
            }
            self.counters.requests += 1;
            self.last_request_ns = Some(now_ns);
        }
    }
}

impl StateSource for SocketCanStateSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn latest(&mut self, now_ns: u64, out: &mut [f32]) -> Result<Option<u64>, StateError> {
        // Bounded: a flooded bus cannot hold the tick here.
        for _ in 0..8 * self.values.len() {
            let raw = match self.socket.read() {
                Ok(raw) => raw,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.counters.errors += 1;
                    let kind = match classify_send_errno(e.raw_os_error().unwrap_or(libc::EIO)) {
                        FaultKind::Fatal => FaultKind::Fatal,
                        _ => FaultKind::Degraded,
                    };
                    return Err(StateError {
                        source_name: self.name.clone(),
                        kind,
                        message: format!("reading `{}`: {e}", self.iface),
                    });
                }
            };
            let Some(frame) = raw.frame() else {
                self.counters.malformed += 1;
                continue;
            };
            match self.decoder.decode(&frame, &mut self.values) {
                FeedbackOutcome::Updated(mask) => {
                    self.counters.frames += 1;
                    self.seen |= mask;
                    if self.seen & self.decoder.all() == self.decoder.all() {
                        self.seen = 0;
                        self.fresh = Some(now_ns);
                        self.last_state_ns = Some(now_ns);
                        self.counters.states += 1;
                    }
                }
                FeedbackOutcome::Ignored => {}
                FeedbackOutcome::Malformed => self.counters.malformed += 1,
                FeedbackOutcome::Fault => self.counters.faults += 1,
            }
        }
        self.request_if_overdue(now_ns);
        let Some(ts) = self.fresh.take() else {
            return Ok(None);
        };
        let n = out.len().min(self.values.len());
        out[..n].copy_from_slice(&self.values[..n]);
        Ok(Some(ts))
    }
}

/// How a CAN safety input reads its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanInputKind {
    /// A status frame: data byte 0 non-zero = active (e-stop pressed), zero = released. With a
    /// timeout, silence for that long (or no frame yet) also reads as active: for robots that
    /// broadcast their e-stop state periodically, a dead e-stop controller stops the robot.
    Level { timeout_ns: Option<u64> },
    /// An event frame (any data): active for the one poll that sees it (an arm button).
    Event,
}

/// A safety input (e-stop or arm button) carried on the CAN bus: frames with one ID on one
/// interface, read without blocking on every tick.
pub struct CanSafetyInput {
    socket: CanSocket,
    name: String,
    id: u32,
    kind: CanInputKind,
    active: bool,
    last_frame_ns: Option<u64>,
}

impl CanSafetyInput {
    /// Listens for frames with `id` (standard if <= 0x7FF, else extended) on `iface`.
    pub fn open(iface: &str, id: u32, kind: CanInputKind) -> Result<Self, InputError> {
        let name = format!("can:{iface}:{id:03X}");
        let fail = |m: String| InputError::new(name.clone(), m);
        check_interface(Path::new(SYS_CLASS_NET), iface).map_err(|e| fail(e.message))?;
        let extended = id > crate::can::MAX_STANDARD_ID;
        if id > crate::can::MAX_EXTENDED_ID {
            return Err(fail(format!("{id:#X} is not a CAN ID")));
        }
        let (flag, mask) = if extended {
            (libc::CAN_EFF_FLAG, libc::CAN_EFF_MASK)
        } else {
            (0, libc::CAN_SFF_MASK)
        };
        let socket = CanSocket::open(iface)
            .map_err(|e| fail(format!("opening a CAN socket on `{iface}`: {e}")))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| fail(format!("set_nonblocking: {e}")))?;
        socket
            .set_filters(&[(id | flag, mask | libc::CAN_EFF_FLAG | libc::CAN_RTR_FLAG)])
            .map_err(|e| fail(format!("CAN_RAW_FILTER: {e}")))?;
        Ok(Self {
            socket,
            name,
            id,
            kind,
            active: false,
            last_frame_ns: None,
        })
    }
}

impl SafetyInput for CanSafetyInput {
    fn name(&self) -> &str {
        &self.name
    }

    /// Reads the pending frames; `Err` when the interface is down or gone (an e-stop treats that
    /// as pressed).
    fn poll(&mut self, now_ns: u64) -> Result<bool, InputError> {
        let mut event = false;
        for _ in 0..64 {
            let raw = match self.socket.read_raw_frame() {
                Ok(raw) => raw,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(InputError::new(self.name.clone(), format!("reading: {e}"))),
            };
            let Some(frame) = from_raw_frame(&raw) else {
                continue;
            };
            if frame.id() != self.id {
                continue;
            }
            self.last_frame_ns = Some(now_ns);
            match self.kind {
                CanInputKind::Level { .. } => {
                    self.active = frame.data().first().is_some_and(|b| *b != 0);
                }
                CanInputKind::Event => event = true,
            }
        }
        Ok(match self.kind {
            CanInputKind::Event => event,
            CanInputKind::Level { timeout_ns: None } => self.active,
            CanInputKind::Level {
                timeout_ns: Some(t),
            } => {
                self.active
                    || self
                        .last_frame_ns
                        .is_none_or(|last| now_ns.saturating_sub(last) > t)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::socketcan::Frame as _;

    #[test]
    fn can_input_open_names_the_interface() {
        // The spec parser and its cases live in crate::spec (SafetyInputSpec).
        let e = CanSafetyInput::open("reflexnocan9", 0xE0, CanInputKind::Event)
            .err()
            .unwrap();
        assert!(e.to_string().contains("reflexnocan9"), "{e}");
    }

    #[test]
    fn send_errors_are_classified() {
        assert_eq!(classify_send_errno(libc::EAGAIN), FaultKind::Transient);
        assert_eq!(classify_send_errno(libc::EWOULDBLOCK), FaultKind::Transient);
        assert_eq!(classify_send_errno(libc::ENOBUFS), FaultKind::Transient);
        assert_eq!(classify_send_errno(libc::ENETDOWN), FaultKind::Degraded);
        assert_eq!(classify_send_errno(libc::ENODEV), FaultKind::Degraded);
        assert_eq!(classify_send_errno(libc::ENXIO), FaultKind::Degraded);
        assert_eq!(classify_send_errno(libc::EIO), FaultKind::Degraded);
        assert_eq!(classify_send_errno(libc::EPERM), FaultKind::Fatal);
        assert_eq!(classify_send_errno(libc::EINVAL), FaultKind::Fatal);
    }

    #[test]
    fn error_frames_are_classified() {
        // Golden IDs: CAN_ERR_FLAG | class, as `candump` shows them (`20000040#...`).
        let busoff = 0x2000_0040;
        assert_eq!(
            classify_error_frame(busoff, &[0; 8]),
            ErrorFrameEvent::BusOff
        );
        let restarted = 0x2000_0100;
        assert_eq!(
            classify_error_frame(restarted, &[0; 8]),
            ErrorFrameEvent::Recovered
        );
        // CAN_ERR_CRTL with data[1] = CAN_ERR_CRTL_ACTIVE (0x40): back to error-active.
        let crtl = 0x2000_0004;
        assert_eq!(
            classify_error_frame(crtl, &[0, 0x40, 0, 0, 0, 0, 0, 0]),
            ErrorFrameEvent::Recovered
        );
        // CAN_ERR_CRTL with TX error-passive (0x20): counted only.
        assert_eq!(
            classify_error_frame(crtl, &[0, 0x20, 0, 0, 0, 0, 0, 0]),
            ErrorFrameEvent::Other
        );
        // No ACK (0x20), and a short frame.
        assert_eq!(
            classify_error_frame(0x2000_0020, &[]),
            ErrorFrameEvent::Other
        );
        assert_eq!(classify_error_frame(crtl, &[0]), ErrorFrameEvent::Other);
        assert_eq!(libc::CAN_ERR_BUSOFF, 0x40);
        assert_eq!(libc::CAN_ERR_RESTARTED, 0x100);
    }

    #[test]
    fn frames_convert_to_socketcan() {
        let std = CanFrame::new(0x123, false, &[1, 2, 3]).unwrap();
        let out = to_socketcan_frame(&std).unwrap();
        assert_eq!(out.raw_id(), 0x123);
        assert!(!out.is_extended());
        assert_eq!(out.data(), &[1, 2, 3]);
        let ext = CanFrame::new(0x123, true, &[0xFF; 8]).unwrap();
        let out = to_socketcan_frame(&ext).unwrap();
        assert_eq!(out.raw_id(), 0x123);
        assert!(out.is_extended());
        assert_eq!(out.data(), &[0xFF; 8]);
        let top = CanFrame::new(0x1FFF_FFFF, true, &[]).unwrap();
        assert_eq!(to_socketcan_frame(&top).unwrap().raw_id(), 0x1FFF_FFFF);
    }

    #[test]
    fn raw_frames_convert_back() {
        let mut raw: libc::can_frame = zeroed_frame();
        raw.can_id = 0x123;
        raw.can_dlc = 3;
        raw.data[..3].copy_from_slice(&[1, 2, 3]);
        assert_eq!(
            from_raw_frame(&raw),
            Some(CanFrame::new(0x123, false, &[1, 2, 3]).unwrap())
        );
        raw.can_id = 0x1234_5678 | libc::CAN_EFF_FLAG;
        assert_eq!(
            from_raw_frame(&raw),
            Some(CanFrame::new(0x1234_5678, true, &[1, 2, 3]).unwrap())
        );
        raw.can_id = 0x40 | libc::CAN_ERR_FLAG;
        assert_eq!(from_raw_frame(&raw), None);
        raw.can_id = 0x123 | libc::CAN_RTR_FLAG;
        assert_eq!(from_raw_frame(&raw), None);
        raw.can_id = 0x123;
        raw.can_dlc = 9;
        assert_eq!(from_raw_frame(&raw), None);
    }

    #[test]
    fn fd_frames_convert_both_ways() {
        let data: Vec<u8> = (0..16).collect();
        let ours = CanFrame::new_fd(0x123, false, &data, true).unwrap();
        assert!(
            to_socketcan_frame(&ours).is_none(),
            "an FD frame is not a classic one"
        );
        let out = to_socketcan_fd_frame(&ours).unwrap();
        assert!(out.is_brs());
        assert_eq!(out.data(), &data[..]);
        let raw: &libc::canfd_frame = out.as_ref();
        assert_eq!(from_raw_fd_frame(raw), Some(ours));
        let ext = CanFrame::new_fd(0x1234_5678, true, &[9; 64], false).unwrap();
        let raw_ext = to_socketcan_fd_frame(&ext).unwrap();
        let raw: &libc::canfd_frame = raw_ext.as_ref();
        assert_eq!(from_raw_fd_frame(raw), Some(ext));
        let classic = CanFrame::new(0x123, false, &[1]).unwrap();
        assert!(to_socketcan_fd_frame(&classic).is_none());
    }

    #[test]
    fn fd_needs_an_fd_mtu() {
        let root = fake_sysfs(
            "fd",
            &[("can0", "280", "0x40c1"), ("can1", "280", "0x40c1")],
        );
        std::fs::write(root.join("can0/mtu"), "72\n").unwrap();
        std::fs::write(root.join("can1/mtu"), "16\n").unwrap();
        assert_eq!(check_fd_mtu(&root, "can0"), Ok(()));
        let e = check_fd_mtu(&root, "can1").unwrap_err();
        assert!(
            e.contains("classic CAN mode (MTU 16") && e.contains("fd on"),
            "{e}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A zeroed `can_frame` without `unsafe` (its padding fields are private in libc).
    fn zeroed_frame() -> libc::can_frame {
        let data = CanFrame::new(0, false, &[]).unwrap();
        let out = to_socketcan_frame(&data).unwrap();
        *AsRef::<libc::can_frame>::as_ref(&out)
    }

    fn fake_sysfs(name: &str, ifaces: &[(&str, &str, &str)]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("reflex-sysfs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (iface, ty, flags) in ifaces {
            let d = root.join(iface);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("type"), format!("{ty}\n")).unwrap();
            std::fs::write(d.join("flags"), format!("{flags}\n")).unwrap();
        }
        root
    }

    #[test]
    fn interface_checks_name_the_problem() {
        let root = fake_sysfs(
            "checks",
            &[
                ("can0", "280", "0x40c1"),
                ("can1", "280", "0x80"),
                ("eth0", "1", "0x1003"),
            ],
        );
        assert_eq!(check_interface(&root, "can0"), Ok(()));
        let InterfaceError { kind, message: msg } = check_interface(&root, "can1").unwrap_err();
        assert_eq!(kind, FaultKind::Degraded);
        assert!(
            msg.contains("`can1` is down") && msg.contains("ip link set can1 up"),
            "{msg}"
        );
        let InterfaceError { kind, message: msg } = check_interface(&root, "eth0").unwrap_err();
        assert_eq!(kind, FaultKind::Fatal);
        assert!(msg.contains("`eth0` is not a CAN interface"), "{msg}");
        let InterfaceError { kind, message: msg } = check_interface(&root, "vcan7").unwrap_err();
        assert_eq!(kind, FaultKind::Fatal);
        assert!(
            msg.contains("`vcan7` not found") && msg.contains("type vcan"),
            "{msg}"
        );
        for bad in ["", "a/b", "can 0", "x:1", "averyveryverylongname"] {
            assert_eq!(
                check_interface(&root, bad).unwrap_err().kind,
                FaultKind::Fatal,
                "{bad:?}"
            );
        }
        // Without sysfs the socket calls have the last word.
        assert_eq!(check_interface(&root.join("absent"), "can0"), Ok(()));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// On the real system: a missing interface is named; `lo` is refused as not CAN (this
    /// machine's kernel may have no CAN support at all, which the QEMU tests provide).
    #[test]
    fn open_errors_on_this_machine() {
        let err = SocketCanSink::open("reflexnocan9", Codec::per_joint(0x100, 2).unwrap())
            .err()
            .unwrap();
        assert_eq!(err.kind, FaultKind::Fatal);
        assert!(
            err.to_string().contains("`reflexnocan9` not found"),
            "{err}"
        );
        assert_eq!(err.sink, "socketcan:reflexnocan9");
        if Path::new(SYS_CLASS_NET).join("lo").exists() {
            let err = SocketCanSink::open("lo", Codec::per_joint(0x100, 2).unwrap())
                .err()
                .unwrap();
            assert!(err.to_string().contains("not a CAN interface"), "{err}");
        }
        // Without the sysfs checks, the socket layer's own error still names the interface.
        let none = Path::new("/nonexistent-sysfs");
        let err = SocketCanSink::open_with_sysfs(
            none,
            "reflexnocan9",
            Codec::per_joint(0x100, 2).unwrap(),
        )
        .err()
        .unwrap();
        assert!(err.message.contains("reflexnocan9"), "{err}");
    }
}
