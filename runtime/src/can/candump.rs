//! candump logs: the `candump -l` line format of can-utils.
//!
//! The [`crate::can::sink::CandumpSink`] writes what would go on the bus in the `candump -l`
//! format of can-utils, `(1700000000.123456) can0 123#DEADBEEF`, so a dry run can be inspected,
//! diffed and replayed on a real bus with `canplayer`. CAN FD frames are written as can-utils
//! does, `123##1<data>` (the digit after `##` holds the FD flags: 1 = bit-rate switch). Lines are
//! formatted into a stack buffer: logging a command does not allocate. The parser never panics,
//! whatever the input, and reports what it does not support (CAN XL, raw DLCs) rather than
//! misreading it. Error frames (an extended ID with `CAN_ERR_FLAG`, what `candump` logs from an
//! interface with error reporting on) are read by [`parse_candump_record`] and explained by
//! their classes in can-utils' words ([`ErrorFrame::describe`]).
//!
//! # Why not the `socketcan` crate's `dump` module
//!
//! `socketcan::dump::Reader` (4.0.0, already a dependency for the bus) covers CAN FD, remote and
//! error frames, and was tried on our test lines (test `socketcan_dump_falls_short`). It refuses
//! lines that can-utils writes or reads and that reflex accepts: data bytes separated by `.`
//! (`1AB#DE.AD`, accepted by can-utils' `parse_canframe`), fields separated by more than one
//! space (it splits on single spaces, where can-utils' readers use `sscanf`), and a lower-case
//! `r` for a remote frame (`123#r5`). Its errors carry no reason beyond `InvalidCanFrame` (no
//! "not a CAN FD length", no "CAN XL"), and each record allocates (a `String` and a `Vec`) where
//! this parser allocates nothing. It is also Linux-only, while candump logs are read by the host
//! tools on any system.

use super::frame::*;
use std::path::{Path, PathBuf};

/// Stack buffer per line: 56 bytes of timestamp, ID and data, the name, the newline.
/// Longest line: timestamp (28), interface (15), extended ID and `##F` (11), 64 data bytes (128).
pub(crate) const LINE_BUF: usize = 192;

/// Errors of the candump formatter, parser and log reader.
#[derive(Debug, thiserror::Error)]
pub enum CandumpError {
    #[error("malformed candump line: {0}")]
    Syntax(&'static str),
    #[error("{0} not supported yet")]
    Unsupported(&'static str),
    /// [`parse_candump_line`] reads frames that can be sent; error frames are read by
    /// [`parse_candump_record`].
    #[error(
        "a CAN error frame ({0}), not a data or remote frame: CAN error frames are read with \
         parse_candump_record"
    )]
    ErrorFrame(String),
    #[error("candump line: {0}")]
    Frame(#[from] FrameError),
    #[error("interface name must be non-empty printable ASCII without spaces")]
    Interface,
    #[error("candump line needs {needed} bytes, the buffer has {available}")]
    BufferTooSmall { needed: usize, available: usize },
    #[error("candump log `{}`: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("candump log `{}` line {line}: {source}", path.display())]
    AtLine {
        path: PathBuf,
        line: usize,
        source: Box<CandumpError>,
    },
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `CAN_ERR_FLAG` (linux/can.h): an ID with this bit is an error frame, not a bus frame.
pub const CAN_ERR_FLAG: u32 = 0x2000_0000;
/// `CAN_ERR_MASK` (linux/can.h): the error class bits of an error frame's ID.
pub const CAN_ERR_MASK: u32 = 0x1FFF_FFFF;

/// One line of a candump log: a frame that was on the bus, or an error frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogFrame {
    /// A data frame (classic or CAN FD) or a remote frame.
    Can(CanFrame),
    /// An error frame the kernel reported.
    Error(ErrorFrame),
}

/// A SocketCAN error frame: the error classes (the ID without `CAN_ERR_FLAG`) and the 8 data
/// bytes that detail them, laid out as linux/can/error.h says (data[0] the bit of a lost
/// arbitration, data[1] controller problems, data[2..3] protocol violation type and location,
/// data[4] transceiver status, data[6..7] the TX and RX error counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorFrame {
    /// `CAN_ERR_*` class bits (`CAN_ERR_TX_TIMEOUT` = 0x1 ... `CAN_ERR_CNT` = 0x200).
    pub class: u32,
    /// The data bytes, zero-padded to 8.
    pub data: [u8; 8],
    /// How many bytes the log line held.
    pub len: u8,
}

/// Error classes: (bit in the ID, name) as linux/can/error.h defines the bits (`CAN_ERR_TX_TIMEOUT`
/// ... `CAN_ERR_RESTARTED`) and can-utils names them (`candump -e`).
pub const ERROR_CLASSES: [(u32, &str); 9] = [
    (0x001, "tx-timeout"),
    (0x002, "lost-arbitration"),
    (0x004, "controller-problem"),
    (0x008, "protocol-violation"),
    (0x010, "transceiver-status"),
    (0x020, "no-acknowledgement-on-tx"),
    (0x040, "bus-off"),
    (0x080, "bus-error"),
    (0x100, "restarted-after-bus-off"),
];

/// Controller problems, data[1] (`CAN_ERR_CRTL_RX_OVERFLOW` = 0x01 ... `CAN_ERR_CRTL_ACTIVE` =
/// 0x40, "recovered to error active state", which can-utils 2020.11 leaves unnamed).
pub const CONTROLLER_PROBLEMS: [(u8, &str); 7] = [
    (0x01, "rx-overflow"),
    (0x02, "tx-overflow"),
    (0x04, "rx-error-warning"),
    (0x08, "tx-error-warning"),
    (0x10, "rx-error-passive"),
    (0x20, "tx-error-passive"),
    (0x40, "back-to-error-active"),
];

/// Protocol violation types, data[2] (`CAN_ERR_PROT_BIT` = 0x01 ... `CAN_ERR_PROT_TX` = 0x80).
/// 0x40 (`CAN_ERR_PROT_ACTIVE`, "active error announcement") is named as can-utils names it.
pub const PROTOCOL_VIOLATIONS: [(u8, &str); 8] = [
    (0x01, "single-bit-error"),
    (0x02, "frame-format-error"),
    (0x04, "bit-stuffing-error"),
    (0x08, "tx-dominant-bit-error"),
    (0x10, "tx-recessive-bit-error"),
    (0x20, "bus-overload"),
    (0x40, "back-to-error-active"),
    (0x80, "error-on-tx"),
];

/// Protocol violation locations, data[3]: the `CAN_ERR_PROT_LOC_*` values of linux/can/error.h,
/// then the five that only can-utils names (by their index in its table).
pub const PROTOCOL_LOCATIONS: [(u8, &str); 24] = [
    (0x03, "start-of-frame"),
    (0x02, "id.28-to-id.21"),
    (0x06, "id.20-to-id.18"),
    (0x04, "bit-srtr"),
    (0x05, "bit-ide"),
    (0x07, "id.17-to-id.13"),
    (0x0F, "id.12-to-id.5"),
    (0x0E, "id.4-to-id.0"),
    (0x0C, "bit-rtr"),
    (0x0D, "reserved-bit-1"),
    (0x09, "reserved-bit-0"),
    (0x0B, "data-length-code"),
    (0x0A, "data-field"),
    (0x08, "crc-sequence"),
    (0x18, "crc-delimiter"),
    (0x19, "acknowledge-slot"),
    (0x1B, "acknowledge-delimiter"),
    (0x1A, "end-of-frame"),
    (0x12, "intermission"),
    (0x11, "active-error-flag"),
    (0x16, "passive-error-flag"),
    (0x13, "tolerate-dominant-bits"),
    (0x17, "error-delimiter"),
    (0x1C, "overload-flag"),
];

/// Transceiver status, data[4] (`CAN_ERR_TRX_*`): the bus wire and its fault.
pub const TRANSCEIVER_STATUS: [(u8, &str); 9] = [
    (0x04, "CANH-no-wire"),
    (0x05, "CANH-short-to-bat"),
    (0x06, "CANH-short-to-vcc"),
    (0x07, "CANH-short-to-gnd"),
    (0x40, "CANL-no-wire"),
    (0x50, "CANL-short-to-bat"),
    (0x60, "CANL-short-to-vcc"),
    (0x70, "CANL-short-to-gnd"),
    (0x80, "CANL-short-to-CANH"),
];

/// `CAN_ERR_CNT` (linux/can/error.h): data[6] and data[7] hold the TX and RX error counters.
pub const CAN_ERR_CNT: u32 = 0x200;

impl ErrorFrame {
    /// The error explained with can-utils' words (the format of `candump -e`): each class,
    /// with its detail in braces, joined by `,`; then the error counters when they are set or
    /// `CAN_ERR_CNT` says they are valid. `controller-problem{tx-error-passive},
    /// error-counter-tx-rx{{128}{0}}` for the class 0x4 frame `0020000000008000`. Class bits no
    /// kernel defines are shown as `unknown-class-0x...`.
    pub fn describe(&self) -> String {
        let d = &self.data;
        let names = |bits: u8, table: &[(u8, &str)]| -> String {
            table
                .iter()
                .filter(|(b, _)| bits & b != 0)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut parts: Vec<String> = Vec::new();
        for &(bit, name) in &ERROR_CLASSES {
            if self.class & bit == 0 {
                continue;
            }
            parts.push(match bit {
                0x002 => format!("{name}{{at bit {}}}", d[0]),
                0x004 => format!("{name}{{{}}}", names(d[1], &CONTROLLER_PROBLEMS)),
                0x008 => {
                    let location = PROTOCOL_LOCATIONS
                        .iter()
                        .find(|(l, _)| *l == d[3])
                        .map_or("", |(_, n)| *n);
                    format!(
                        "{name}{{{{{}}}{{{location}}}}}",
                        names(d[2], &PROTOCOL_VIOLATIONS)
                    )
                }
                0x010 => {
                    let status = TRANSCEIVER_STATUS
                        .iter()
                        .filter(|(s, _)| {
                            // One CANH state in the low nibble, one CANL state in the high one.
                            (*s & 0x0F != 0 && d[4] & 0x0F == *s)
                                || (*s & 0x0F == 0 && d[4] & 0xF0 == *s)
                                || (*s == 0x80 && d[4] == 0x80)
                        })
                        .map(|(_, n)| *n)
                        .collect::<Vec<_>>()
                        .join(",");
                    format!("{name}{{{status}}}")
                }
                _ => name.to_string(),
            });
        }
        let known = ERROR_CLASSES.iter().fold(CAN_ERR_CNT, |m, (b, _)| m | b);
        if self.class & !known != 0 {
            parts.push(format!("unknown-class-{:#x}", self.class & !known));
        }
        if self.class & CAN_ERR_CNT != 0 || d[6] != 0 || d[7] != 0 {
            parts.push(format!("error-counter-tx-rx{{{{{}}}{{{}}}}}", d[6], d[7]));
        }
        if parts.is_empty() {
            "no error class set".to_string()
        } else {
            parts.join(",")
        }
    }
}

/// A frame in can-utils' compact notation (what `cansend` takes and `candump -l` writes after
/// the interface): `123#DEADBEEF`, `12345678#00`, `123##1<data>` for CAN FD (the digit holds
/// the FD flags, 1 = bit-rate switch), `123#R` / `123#R5` for a remote frame.
pub fn frame_notation(frame: &CanFrame) -> String {
    let mut buf = [0u8; LINE_BUF];
    // A one-character interface and a zero timestamp, cut off below: the formatter is the one
    // the logs are written with.
    match format_candump_line(0, "x", frame, &mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(2)
            .unwrap_or_default()
            .to_string(),
        Err(e) => format!("<{e}>"),
    }
}

/// An error frame in the same notation, as `candump -l` logs it: `20000004#0020000000008000`.
pub fn error_frame_notation(e: &ErrorFrame) -> String {
    let data: String = e.data[..usize::from(e.len.min(8))]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("{:08X}#{data}", e.class | CAN_ERR_FLAG)
}

/// Writes bytes into a caller's buffer, counting what would not fit.
struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Out<'_> {
    fn put(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
        }
        self.len += 1;
    }

    fn put_all(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.put(b);
        }
    }

    fn hex(&mut self, value: u32, digits: u32) {
        for k in (0..digits).rev() {
            self.put(HEX[((value >> (4 * k)) & 0xF) as usize]);
        }
    }

    /// Decimal, zero-padded to at least `width` digits.
    fn decimal(&mut self, mut value: u64, width: usize) {
        let mut digits = [b'0'; 20];
        let mut n = 0;
        while value > 0 || n == 0 {
            digits[n] = b'0' + (value % 10) as u8;
            value /= 10;
            n += 1;
        }
        for _ in n..width {
            self.put(b'0');
        }
        for &d in digits[..n].iter().rev() {
            self.put(d);
        }
    }
}

/// Formats one `candump -l` line, without the newline, into `out`; returns its length.
///
/// Byte for byte what can-utils writes: `(%010u.%06u) iface ID#DATA`, ID as 3 upper-case hex
/// digits (standard) or 8 (extended), data as upper-case hex pairs without separators, a remote
/// frame as `ID#R` (`ID#R<dlc>` when its DLC is not 0). The interface name must be printable
/// ASCII without spaces, else the line would not parse back.
pub fn format_candump_line(
    timestamp_us: u64,
    iface: &str,
    frame: &CanFrame,
    out: &mut [u8],
) -> Result<usize, CandumpError> {
    if iface.is_empty() || !iface.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CandumpError::Interface);
    }
    let available = out.len();
    let mut w = Out { buf: out, len: 0 };
    w.put(b'(');
    w.decimal(timestamp_us / 1_000_000, 10);
    w.put(b'.');
    w.decimal(timestamp_us % 1_000_000, 6);
    w.put_all(b") ");
    w.put_all(iface.as_bytes());
    w.put(b' ');
    if frame.is_extended() {
        w.hex(frame.id(), 8);
    } else {
        w.hex(frame.id(), 3);
    }
    w.put(b'#');
    if frame.is_fd() {
        w.put(b'#');
        w.hex(u32::from(frame.brs()), 1);
        for &b in frame.data() {
            w.hex(u32::from(b), 2);
        }
    } else if frame.is_remote() {
        w.put(b'R');
        if frame.dlc() > 0 {
            w.put(b'0' + frame.dlc());
        }
    } else {
        for &b in frame.data() {
            w.hex(u32::from(b), 2);
        }
    }
    if w.len > available {
        return Err(CandumpError::BufferTooSmall {
            needed: w.len,
            available,
        });
    }
    Ok(w.len)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'F' => Some(c - b'A' + 10),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn parse_timestamp(field: &str) -> Result<u64, CandumpError> {
    let inner = field
        .strip_prefix('(')
        .and_then(|f| f.strip_suffix(')'))
        .ok_or(CandumpError::Syntax("timestamp must be `(seconds.micros)`"))?;
    let (secs, micros) = inner
        .split_once('.')
        .ok_or(CandumpError::Syntax("timestamp must be `(seconds.micros)`"))?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(secs) || secs.len() > 20 {
        return Err(CandumpError::Syntax(
            "timestamp seconds must be decimal digits",
        ));
    }
    if !digits(micros) || micros.len() != 6 {
        return Err(CandumpError::Syntax(
            "timestamp must have exactly 6 digits after the `.`",
        ));
    }
    let overflow = CandumpError::Syntax("timestamp out of range");
    let secs: u64 = secs
        .parse()
        .map_err(|_| CandumpError::Syntax("timestamp out of range"))?;
    let micros: u64 = micros
        .parse()
        .map_err(|_| CandumpError::Syntax("timestamp out of range"))?;
    secs.checked_mul(1_000_000)
        .and_then(|us| us.checked_add(micros))
        .ok_or(overflow)
}

fn parse_frame(field: &str) -> Result<LogFrame, CandumpError> {
    let b = field.as_bytes();
    let hash = b
        .iter()
        .position(|&c| c == b'#')
        .ok_or(CandumpError::Syntax("frame must be `ID#DATA`"))?;
    let rest = &b[hash + 1..];
    if rest.starts_with(b"##") {
        return Err(CandumpError::Unsupported("CAN XL"));
    }
    let fd_flags = match rest {
        [b'#', f, ..] => Some(nibble(*f).ok_or(CandumpError::Syntax(
            "CAN FD flags after `##` must be one hex digit",
        ))?),
        [b'#'] => {
            return Err(CandumpError::Syntax(
                "CAN FD frame without flags after `##`",
            ))
        }
        _ => None,
    };
    let rest = if fd_flags.is_some() { &rest[2..] } else { rest };
    let extended = match hash {
        3 => false,
        8 => true,
        _ => {
            return Err(CandumpError::Syntax(
                "CAN ID must be 3 hex digits (standard) or 8 (extended)",
            ))
        }
    };
    let mut id = 0u32;
    for &c in &b[..hash] {
        let n = nibble(c).ok_or(CandumpError::Syntax("CAN ID must be hexadecimal"))?;
        id = (id << 4) | u32::from(n);
    }
    if extended && id & CAN_ERR_FLAG != 0 {
        // linux/can/error.h: the class bits in the ID, 8 data bytes (the kernel always sends 8;
        // a shorter logged payload is zero-padded, as the kernel's frame would be).
        if fd_flags.is_some() || matches!(rest, [b'R' | b'r', ..]) {
            return Err(CandumpError::Syntax(
                "an error frame is a classic data frame (`ID#DATA`)",
            ));
        }
        let (bytes, len) = parse_data(rest, MAX_CLASSIC_LEN, false)?;
        let mut data = [0u8; MAX_CLASSIC_LEN];
        data.copy_from_slice(&bytes[..MAX_CLASSIC_LEN]);
        return Ok(LogFrame::Error(ErrorFrame {
            class: id & CAN_ERR_MASK,
            data,
            len: len as u8,
        }));
    }
    match rest {
        [b'R' | b'r', ..] if fd_flags.is_some() => {
            return Err(CandumpError::Syntax("CAN FD has no remote frames"))
        }
        [b'R' | b'r'] => return Ok(LogFrame::Can(CanFrame::new_remote(id, extended, 0)?)),
        [b'R' | b'r', d] => {
            return match nibble(*d) {
                Some(dlc) if dlc <= 8 => {
                    Ok(LogFrame::Can(CanFrame::new_remote(id, extended, dlc)?))
                }
                _ => Err(CandumpError::Syntax("remote frame DLC must be 0 to 8")),
            }
        }
        [b'R' | b'r', _, b'_', ..] => {
            return Err(CandumpError::Unsupported("raw DLC (`_` suffix)"))
        }
        [b'R' | b'r', ..] => return Err(CandumpError::Syntax("remote frame DLC must be 0 to 8")),
        _ => {}
    }
    let max = if fd_flags.is_some() {
        MAX_FD_LEN
    } else {
        MAX_CLASSIC_LEN
    };
    let (data, len) = parse_data(rest, max, fd_flags.is_some())?;
    Ok(LogFrame::Can(match fd_flags {
        // Bit 0: bit-rate switch; ESI (bit 1) and FDF (bit 2) are the sender's and the
        // kernel's business.
        Some(f) => CanFrame::new_fd(id, extended, &data[..len], f & 1 != 0)?,
        None => CanFrame::new(id, extended, &data[..len])?,
    }))
}

/// Data bytes as hex pairs (`.` between bytes allowed, as can-utils' `parse_canframe`
/// accepts), at most `max` of them.
fn parse_data(
    rest: &[u8],
    max: usize,
    fd: bool,
) -> Result<([u8; MAX_FD_LEN], usize), CandumpError> {
    let mut data = [0u8; MAX_FD_LEN];
    let mut len = 0;
    let mut i = 0;
    while i < rest.len() {
        match rest[i] {
            b'.' => {
                i += 1;
                continue;
            }
            b'_' => return Err(CandumpError::Unsupported("raw DLC (`_` suffix)")),
            _ => {}
        }
        let (Some(hi), Some(lo)) = (nibble(rest[i]), rest.get(i + 1).copied().and_then(nibble))
        else {
            return Err(CandumpError::Syntax("data must be pairs of hex digits"));
        };
        if len == max {
            return Err(CandumpError::Frame(if fd {
                FrameError::FdLength { len: len + 1 }
            } else {
                FrameError::TooLong { len: len + 1 }
            }));
        }
        data[len] = (hi << 4) | lo;
        len += 1;
        i += 2;
    }
    Ok((data, len))
}

/// Parses one `candump -l` line holding a data or remote frame: `(timestamp in µs, interface,
/// frame)`. Accepts what can-utils writes and reads: padded interface names, lower-case hex, `.`
/// between data bytes, a trailing `T`/`R` direction mark (`candump -x`), a trailing newline. An
/// error frame is [`CandumpError::ErrorFrame`] (see [`parse_candump_record`]). Never panics.
pub fn parse_candump_line(line: &str) -> Result<(u64, &str, CanFrame), CandumpError> {
    match parse_candump_record(line)? {
        (ts, iface, LogFrame::Can(frame)) => Ok((ts, iface, frame)),
        (_, _, LogFrame::Error(e)) => Err(CandumpError::ErrorFrame(e.describe())),
    }
}

/// Parses any `candump -l` line: a data or remote frame, or an error frame (an extended ID with
/// `CAN_ERR_FLAG` set, as `candump` logs what the kernel reports on an interface with error
/// frames enabled). Never panics.
pub fn parse_candump_record(line: &str) -> Result<(u64, &str, LogFrame), CandumpError> {
    let mut fields = line.split_ascii_whitespace();
    let ts = fields.next().ok_or(CandumpError::Syntax("empty line"))?;
    let iface = fields
        .next()
        .ok_or(CandumpError::Syntax("missing interface name"))?;
    if !iface.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CandumpError::Interface);
    }
    let frame = fields.next().ok_or(CandumpError::Syntax("missing frame"))?;
    match (fields.next(), fields.next()) {
        (None, _) | (Some("T" | "R"), None) => {}
        _ => return Err(CandumpError::Syntax("unexpected text after the frame")),
    }
    let ts = parse_timestamp(ts)?;
    let frame = parse_frame(frame)?;
    Ok((ts, iface, frame))
}

/// Reads a whole candump log (for tests and tools; allocates). Blank lines are skipped; errors
/// name the file and the 1-based line.
pub fn read_candump_log(path: &Path) -> Result<Vec<(u64, String, CanFrame)>, CandumpError> {
    let text = std::fs::read_to_string(path).map_err(|source| CandumpError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut frames = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (ts, iface, frame) = parse_candump_line(line).map_err(|e| CandumpError::AtLine {
            path: path.to_owned(),
            line: n + 1,
            source: Box::new(e),
        })?;
        frames.push((ts, iface.to_owned(), frame));
    }
    Ok(frames)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::can::codec::Codec;
    use crate::can::sink::CandumpSink;
    use crate::control::safety::SafetyFilter;
    use crate::io::{CommandSink, FaultKind};
    use proptest::prelude::*;
    use reflex_models::manifest::{ActionOutput, ActionSpec, Normalization};

    fn unlimited(dims: usize) -> SafetyFilter {
        let spec = ActionSpec {
            onnx_output: "action".into(),
            names: (0..dims).map(|i| format!("j{i}")).collect(),
            units: vec!["rad".into(); dims],
            output: ActionOutput::Single,
            normalization: Normalization::Identity,
            limits: None,
            parity_tolerance: None,
        };
        SafetyFilter::new(&spec, 10.0, true).unwrap()
    }

    fn line(ts: u64, iface: &str, frame: &CanFrame) -> String {
        let mut buf = [0u8; LINE_BUF];
        let n = format_candump_line(ts, iface, frame, &mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn frame_constructor_checks_ranges() {
        assert!(CanFrame::new(0x7FF, false, &[]).is_ok());
        assert_eq!(
            CanFrame::new(0x800, false, &[]).unwrap_err(),
            FrameError::IdOutOfRange {
                id: 0x800,
                extended: false,
                max: 0x7FF
            }
        );
        assert!(CanFrame::new(0x1FFF_FFFF, true, &[0; 8]).is_ok());
        assert!(CanFrame::new(0x2000_0000, true, &[]).is_err());
        assert_eq!(
            CanFrame::new(1, false, &[0; 9]).unwrap_err(),
            FrameError::TooLong { len: 9 }
        );
        assert!(CanFrame::new_remote(1, false, 9).is_err());
        let f = CanFrame::new(0x123, false, &[1, 2, 3]).unwrap();
        assert_eq!((f.id(), f.dlc(), f.data()), (0x123, 3, &[1u8, 2, 3][..]));
        let r = CanFrame::new_remote(0x123, false, 4).unwrap();
        assert_eq!((r.is_remote(), r.dlc(), r.data()), (true, 4, &[][..]));
        // CAN FD: only the lengths a DLC can express.
        for len in [0, 5, 8, 12, 16, 20, 24, 32, 48, 64] {
            let f = CanFrame::new_fd(0x123, false, &vec![7; len], true).unwrap();
            assert!(f.is_fd() && f.brs() && f.data().len() == len);
        }
        for len in [9, 13, 63, 65] {
            assert_eq!(
                CanFrame::new_fd(1, false, &vec![0; len], false).unwrap_err(),
                FrameError::FdLength { len }
            );
        }
        assert!(!CanFrame::new(1, false, &[]).unwrap().is_fd());
    }

    /// CAN FD lines as can-utils writes them: `ID##<flags><data>`.
    #[test]
    fn candump_fd_lines() {
        let data: Vec<u8> = (0..12).collect();
        let f = CanFrame::new_fd(0x123, false, &data, true).unwrap();
        let text = line(1_700_000_000_123_456, "can0", &f);
        assert_eq!(
            text,
            "(1700000000.123456) can0 123##1000102030405060708090A0B"
        );
        let (_, _, back) = parse_candump_line(&text).unwrap();
        assert_eq!(back, f);
        let f = CanFrame::new_fd(0x1234_5678, true, &[0xAB; 64], false).unwrap();
        let text = line(0, "vcan0", &f);
        assert!(
            text.ends_with(&format!("12345678##0{}", "AB".repeat(64))),
            "{text}"
        );
        assert_eq!(parse_candump_line(&text).unwrap().2, f);
        // Flags other than BRS (ESI, FDF as newer kernels report it) are accepted and dropped.
        let (_, _, g) = parse_candump_line("(1.000000) can0 123##5AA").unwrap();
        assert_eq!(g, CanFrame::new_fd(0x123, false, &[0xAA], true).unwrap());
        for (bad, want) in [
            ("(1.000000) can0 123##", "without flags"),
            ("(1.000000) can0 123##X00", "one hex digit"),
            ("(1.000000) can0 123##0R", "no remote frames"),
            (
                "(1.000000) can0 123##0000000000000000000",
                "not a CAN FD length",
            ),
            ("(1.000000) can0 123###00", "CAN XL"),
        ] {
            let e = parse_candump_line(bad).unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn per_joint_golden_bytes() {
        let mut f = unlimited(2);
        let cmd = f.filter(&[1.0, -2.5], 0x1234).command;
        let mut frames = heapless::Vec::new();
        encode_per_joint(&cmd, 0x100, &mut frames).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!((frames[0].id(), frames[0].is_extended()), (0x100, false));
        // 1.0f32 = 0x3F800000, tick 0x1234 -> 0x34.
        assert_eq!(
            frames[0].data(),
            &[0x00, 0x00, 0x80, 0x3F, 0x00, 0x34, 0x00, 0x00]
        );
        // -2.5f32 = 0xC0200000.
        assert_eq!(frames[1].id(), 0x101);
        assert_eq!(
            frames[1].data(),
            &[0x00, 0x00, 0x20, 0xC0, 0x00, 0x34, 0x00, 0x00]
        );
        assert_eq!(
            line(0, "can0", &frames[1]),
            "(0000000000.000000) can0 101#000020C000340000"
        );

        let stop = f.stop(0x1FF);
        encode_per_joint(&stop, 0x100, &mut frames).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(
            frames[0].data(),
            &[0x00, 0x00, 0x80, 0x3F, 0x01, 0xFF, 0x00, 0x00]
        );
        assert_eq!(
            decode_per_joint(&frames[1], 0x100, 2),
            Some((1, -2.5, true, 0xFF))
        );
    }

    #[test]
    fn per_joint_crosses_into_extended_ids() {
        let mut f = unlimited(3);
        let cmd = f.filter(&[0.5, 1.5, 2.5], 7).command;
        let mut frames = heapless::Vec::new();
        encode_per_joint(&cmd, 0x7FE, &mut frames).unwrap();
        let ids: Vec<_> = frames.iter().map(|f| (f.id(), f.is_extended())).collect();
        assert_eq!(ids, [(0x7FE, false), (0x7FF, false), (0x800, true)]);
        for (i, frame) in frames.iter().enumerate() {
            let (idx, v, stop, tick) = decode_per_joint(frame, 0x7FE, 3).unwrap();
            assert_eq!((idx, v, stop, tick), (i, cmd.values()[i], false, 7));
        }
        assert!(encode_per_joint(&cmd, MAX_EXTENDED_ID - 1, &mut frames).is_err());
        assert!(encode_per_joint(&cmd, u32::MAX, &mut frames).is_err());
        assert_eq!(per_joint_id(0x100, 31).unwrap(), (0x11F, false));
    }

    #[test]
    fn decode_rejects_foreign_frames() {
        let ok = [0, 0, 0x80, 0x3F, 0, 5, 0, 0];
        let f = |id, ext, data: &[u8]| CanFrame::new(id, ext, data).unwrap();
        assert!(decode_per_joint(&f(0x101, false, &ok), 0x100, 2).is_some());
        assert_eq!(decode_per_joint(&f(0x0FF, false, &ok), 0x100, 2), None);
        assert_eq!(decode_per_joint(&f(0x102, false, &ok), 0x100, 2), None);
        assert_eq!(decode_per_joint(&f(0x101, true, &ok), 0x100, 2), None);
        assert_eq!(decode_per_joint(&f(0x101, false, &ok[..7]), 0x100, 2), None);
        let mut reserved = ok;
        reserved[4] = 0x02;
        assert_eq!(
            decode_per_joint(&f(0x101, false, &reserved), 0x100, 2),
            None
        );
        reserved = ok;
        reserved[7] = 1;
        assert_eq!(
            decode_per_joint(&f(0x101, false, &reserved), 0x100, 2),
            None
        );
        let remote = CanFrame::new_remote(0x101, false, 8).unwrap();
        assert_eq!(decode_per_joint(&remote, 0x100, 2), None);
    }

    #[test]
    fn candump_golden_lines() {
        let ts = 1_700_000_000_123_456;
        let std = CanFrame::new(0x123, false, &[0xDE, 0xAD, 0xBE, 0xEF]).unwrap();
        assert_eq!(
            line(ts, "can0", &std),
            "(1700000000.123456) can0 123#DEADBEEF"
        );
        let ext = CanFrame::new(0x1ABC_DE01, true, &[0x01, 0x0a]).unwrap();
        assert_eq!(
            line(ts, "vcan1", &ext),
            "(1700000000.123456) vcan1 1ABCDE01#010A"
        );
        let small_ext = CanFrame::new(0x5, true, &[]).unwrap();
        assert_eq!(
            line(ts, "can0", &small_ext),
            "(1700000000.123456) can0 00000005#"
        );
        let empty = CanFrame::new(0x7, false, &[]).unwrap();
        assert_eq!(
            line(1_000_001, "can0", &empty),
            "(0000000001.000001) can0 007#"
        );
        let rtr = CanFrame::new_remote(0x123, false, 0).unwrap();
        assert_eq!(line(ts, "can0", &rtr), "(1700000000.123456) can0 123#R");
        let rtr3 = CanFrame::new_remote(0x123, false, 3).unwrap();
        assert_eq!(line(ts, "can0", &rtr3), "(1700000000.123456) can0 123#R3");
        let full = CanFrame::new(0x7FF, false, &[0, 1, 2, 3, 4, 5, 0xFE, 0xFF]).unwrap();
        assert_eq!(
            line(u64::MAX, "can0", &full),
            "(18446744073709.551615) can0 7FF#000102030405FEFF"
        );
    }

    #[test]
    fn candump_round_trips() {
        let frames = [
            CanFrame::new(0x123, false, &[0xDE, 0xAD, 0xBE, 0xEF]).unwrap(),
            CanFrame::new(0x1FFF_FFFF, true, &[0xFF; 8]).unwrap(),
            CanFrame::new(0, false, &[]).unwrap(),
            CanFrame::new_remote(0x10, true, 8).unwrap(),
        ];
        for (k, frame) in frames.iter().enumerate() {
            let ts = 1_700_000_000_000_000 + k as u64 * 1_234_567;
            let text = line(ts, "can0", frame);
            assert_eq!(parse_candump_line(&text).unwrap(), (ts, "can0", *frame));
        }
    }

    #[test]
    fn parser_accepts_can_utils_variants() {
        let expect = CanFrame::new(0x1AB, false, &[0xDE, 0xAD]).unwrap();
        for text in [
            "(1700000000.000001) can0 1AB#DEAD",
            "(1700000000.000001) can0 1ab#dead\n",
            "(1700000000.000001) can0 1AB#DE.AD\r\n",
            "(1700000000.000001)   can0 1AB#DEAD",
            "(1700000000.000001) can0 1AB#DEAD T",
            "(1700000000.000001) can0 1AB#DEAD R",
        ] {
            assert_eq!(
                parse_candump_line(text).unwrap(),
                (1_700_000_000_000_001, "can0", expect),
                "{text:?}"
            );
        }
        let (_, _, r) = parse_candump_line("(1.000000) can0 123#r5").unwrap();
        assert_eq!(r, CanFrame::new_remote(0x123, false, 5).unwrap());
    }

    #[test]
    fn parser_errors() {
        let err = |s: &str| parse_candump_line(s).unwrap_err().to_string();
        assert!(err(&format!(
            "(1700000000.000001) can0 123##1{}",
            "DE".repeat(9)
        ))
        .contains("not a CAN FD length"));
        assert!(err("(1700000000.000001) can0 123###00").contains("CAN XL"));
        assert!(err("(1700000000.000001) can0 20000080#0000000000000000").contains("error frames"));
        assert!(err("(1700000000.001) can0 123#00").contains("6 digits"));
        assert!(err("1700000000.000001 can0 123#00").contains("timestamp"));
        assert!(err("(1700000000.000001) can0 1234#00").contains("3 hex digits"));
        assert!(err("(1700000000.000001) can0 800#00").contains("out of range"));
        assert!(err("(1700000000.000001) can0 123#0").contains("pairs"));
        assert!(err("(1700000000.000001) can0 123#G0").contains("pairs"));
        assert!(err("(1700000000.000001) can0 123#000000000000000000").contains("exceed"));
        assert!(err("(1700000000.000001) can0 123#0011223344556677_9").contains("raw DLC"));
        assert!(err("(1700000000.000001) can0 123#R9").contains("DLC"));
        assert!(err("(1700000000.000001) can0 123#00 extra").contains("after the frame"));
        assert!(err("(99999999999999999999.000000) can0 123#00").contains("out of range"));
        assert!(err("").contains("empty"));
        assert!(err("(1.000000) can0").contains("missing frame"));
    }

    #[test]
    fn formatter_checks_buffer_and_iface() {
        let frame = CanFrame::new(0x123, false, &[1, 2]).unwrap();
        let mut small = [0u8; 10];
        assert!(matches!(
            format_candump_line(0, "can0", &frame, &mut small),
            Err(CandumpError::BufferTooSmall {
                needed: 33,
                available: 10
            })
        ));
        let mut buf = [0u8; 64];
        assert!(matches!(
            format_candump_line(0, "can 0", &frame, &mut buf),
            Err(CandumpError::Interface)
        ));
        assert!(format_candump_line(0, "", &frame, &mut buf).is_err());
    }

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("reflex-can-{}-{name}", std::process::id()))
    }

    #[test]
    fn sink_writes_candump_log() {
        let path = temp_path("sink.log");
        let mut sink = CandumpSink::new(
            &path,
            "can0",
            Codec::per_joint(0x100, 2).unwrap(),
            1_700_000_000_000_000_000,
        )
        .unwrap();
        assert!(sink.name().contains("sink.log"));
        let mut f = unlimited(2);
        let cmd = f.filter(&[1.0, -2.5], 3).command;
        sink.send(&cmd, 123_456_789).unwrap();
        sink.send(&f.stop(4), 223_456_789).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "(1700000000.123456) can0 100#0000803F00030000\n\
             (1700000000.123456) can0 101#000020C000030000\n\
             (1700000000.223456) can0 100#0000803F01040000\n\
             (1700000000.223456) can0 101#000020C001040000\n"
        );
        let log = read_candump_log(&path).unwrap();
        assert_eq!(log.len(), 4);
        assert_eq!(log[3].0, 1_700_000_000_223_456);
        assert_eq!(log[3].1, "can0");
        assert_eq!(
            decode_per_joint(&log[3].2, 0x100, 2),
            Some((1, -2.5, true, 4))
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn sink_rejects_bad_config() {
        let path = temp_path("bad.log");
        assert_eq!(
            CandumpSink::new(&path, "can 0", Codec::per_joint(0x100, 2).unwrap(), 0)
                .err()
                .unwrap()
                .kind,
            FaultKind::Fatal
        );
        let missing = temp_path("no-such-dir").join("x.log");
        let err = CandumpSink::new(&missing, "can0", Codec::per_joint(0x100, 2).unwrap(), 0)
            .err()
            .unwrap();
        assert!(err.message.contains("no-such-dir"), "{}", err.message);
        // IDs past the 29-bit range are refused when the codec is made.
        assert!(Codec::per_joint(MAX_EXTENDED_ID, 2).is_err());
    }

    #[test]
    fn log_errors_name_the_line() {
        let path = temp_path("broken.log");
        std::fs::write(
            &path,
            "(1700000000.000001) can0 123#00\n\n(1700000000.000002) can0 123##1000000000000000000\n",
        )
        .unwrap();
        let err = read_candump_log(&path).unwrap_err();
        assert!(matches!(err, CandumpError::AtLine { line: 3, .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("broken.log") && msg.contains("line 3") && msg.contains("CAN FD length"),
            "{msg}"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            read_candump_log(&path),
            Err(CandumpError::Io { .. })
        ));
    }

    fn valid_line() -> impl Strategy<Value = String> {
        (
            any::<u64>(),
            prop_oneof![Just("can0"), Just("vcan12"), Just("x")],
            any::<bool>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..=8),
            prop_oneof![Just(None), (0usize..16, any::<bool>()).prop_map(Some)],
        )
            .prop_map(|(ts, iface, extended, id, data, fd)| {
                let id = if extended {
                    id & MAX_EXTENDED_ID
                } else {
                    id & MAX_STANDARD_ID
                };
                let frame = match fd {
                    None => CanFrame::new(id, extended, &data).unwrap(),
                    Some((k, brs)) => {
                        let len = [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64][k];
                        let bytes: Vec<u8> = (0..len)
                            .map(|i| data.get(i % 8).copied().unwrap_or(i as u8))
                            .collect();
                        CanFrame::new_fd(id, extended, &bytes, brs).unwrap()
                    }
                };
                line(ts, iface, &frame)
            })
    }

    proptest! {
        #[test]
        fn parser_never_panics_on_random_text(s in "\\PC*") {
            let _ = parse_candump_line(&s);
        }

        #[test]
        fn parser_never_panics_on_candump_like_text(s in "[(][0-9.]{0,25}[)]? [a-z0-9]{0,5} [0-9A-Fa-f#R._r]{0,30}( [TRX])?") {
            let _ = parse_candump_line(&s);
        }

        #[test]
        fn valid_lines_round_trip(text in valid_line()) {
            let (ts, iface, frame) = parse_candump_line(&text).unwrap();
            prop_assert_eq!(line(ts, iface, &frame), text);
        }

        #[test]
        fn parser_never_panics_on_mutated_lines(
            text in valid_line(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<char>(), 0u8..3), 1..6),
        ) {
            let mut chars: Vec<char> = text.chars().collect();
            for (at, c, op) in edits {
                let i = at.index(chars.len() + 1);
                match op {
                    0 => chars.insert(i, c),
                    1 if i < chars.len() => { chars.remove(i); }
                    _ if i < chars.len() => chars[i] = c,
                    _ => {}
                }
            }
            let mutated: String = chars.into_iter().collect();
            if let Ok((ts, iface, frame)) = parse_candump_line(&mutated) {
                // Whatever parses must format to a line that parses to the same thing.
                let again = line(ts, iface, &frame);
                let (ts2, iface2, frame2) = parse_candump_line(&again).unwrap();
                prop_assert_eq!((ts, iface, frame), (ts2, iface2, frame2));
            }
        }
    }

    /// The `socketcan` crate's candump reader on lines can-utils writes or reads and we accept
    /// (see the module documentation): it covers error and FD frames but refuses these.
    #[cfg(target_os = "linux")]
    #[test]
    fn socketcan_dump_falls_short() {
        let read = |line: &str| {
            socketcan::dump::Reader::from_reader(line.as_bytes())
                .next_record()
                .map(|r| r.is_some())
        };
        // What it does read: classic, FD, remote and error frames.
        for ok in [
            "(1700000000.000001) can0 1AB#DEAD",
            "(1700000000.000001) can0 123##1DEADBEEF",
            "(1700000000.000001) can0 123#R",
            "(1764500000.000070) can0 20000004#0020000000008000",
        ] {
            assert!(matches!(read(ok), Ok(true)), "{ok}");
        }
        for refused in [
            "(1700000000.000001) can0 1AB#DE.AD",
            "(1700000000.000001)   can0 1AB#DEAD",
            "(1.000000) can0 123#r5",
        ] {
            assert!(
                read(refused).is_err(),
                "socketcan::dump now reads `{refused}`: re-evaluate replacing our parser"
            );
            assert!(parse_candump_line(refused).is_ok(), "{refused}");
        }
    }

    /// The error-frame tables against the kernel's header, where it is installed: every bit and
    /// value we name is the one linux/can/error.h defines.
    #[test]
    fn error_frame_tables_match_linux_can_error_h() {
        let Ok(h) = std::fs::read_to_string("/usr/include/linux/can/error.h") else {
            eprintln!("skipped: /usr/include/linux/can/error.h not installed (linux-libc-dev)");
            return;
        };
        let define = |name: &str| -> u32 {
            let line = h
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("{name} not in error.h"));
            let v = line
                .split_whitespace()
                .nth(2)
                .unwrap()
                .trim_end_matches('U');
            u32::from_str_radix(v.trim_start_matches("0x"), 16).unwrap()
        };
        let classes = [
            "TX_TIMEOUT",
            "LOSTARB",
            "CRTL",
            "PROT",
            "TRX",
            "ACK",
            "BUSOFF",
            "BUSERROR",
            "RESTARTED",
        ];
        for ((bit, _), c) in ERROR_CLASSES.iter().zip(classes) {
            assert_eq!(*bit, define(&format!("CAN_ERR_{c}")), "{c}");
        }
        assert_eq!(CAN_ERR_CNT, define("CAN_ERR_CNT"));
        let crtl = [
            "RX_OVERFLOW",
            "TX_OVERFLOW",
            "RX_WARNING",
            "TX_WARNING",
            "RX_PASSIVE",
            "TX_PASSIVE",
            "ACTIVE",
        ];
        for ((bit, _), c) in CONTROLLER_PROBLEMS.iter().zip(crtl) {
            assert_eq!(u32::from(*bit), define(&format!("CAN_ERR_CRTL_{c}")), "{c}");
        }
        let prot = [
            "BIT", "FORM", "STUFF", "BIT0", "BIT1", "OVERLOAD", "ACTIVE", "TX",
        ];
        for ((bit, _), c) in PROTOCOL_VIOLATIONS.iter().zip(prot) {
            assert_eq!(u32::from(*bit), define(&format!("CAN_ERR_PROT_{c}")), "{c}");
        }
        // The last five have no macro in the header: their values are can-utils' table indices.
        let loc = [
            "SOF", "ID28_21", "ID20_18", "SRTR", "IDE", "ID17_13", "ID12_05", "ID04_00", "RTR",
            "RES1", "RES0", "DLC", "DATA", "CRC_SEQ", "CRC_DEL", "ACK", "ACK_DEL", "EOF", "INTERM",
        ];
        for ((v, _), c) in PROTOCOL_LOCATIONS.iter().zip(loc) {
            assert_eq!(
                u32::from(*v),
                define(&format!("CAN_ERR_PROT_LOC_{c}")),
                "{c}"
            );
        }
        let trx = [
            "CANH_NO_WIRE",
            "CANH_SHORT_TO_BAT",
            "CANH_SHORT_TO_VCC",
            "CANH_SHORT_TO_GND",
            "CANL_NO_WIRE",
            "CANL_SHORT_TO_BAT",
            "CANL_SHORT_TO_VCC",
            "CANL_SHORT_TO_GND",
            "CANL_SHORT_TO_CANH",
        ];
        for ((v, _), c) in TRANSCEIVER_STATUS.iter().zip(trx) {
            assert_eq!(u32::from(*v), define(&format!("CAN_ERR_TRX_{c}")), "{c}");
        }
    }

    /// The field case's error frame, and the other classes, in `candump -e`'s words.
    #[test]
    fn error_frames_are_read_and_explained() {
        let (ts, iface, f) =
            parse_candump_record("(1764500000.000070) can0 20000004#0020000000008000").unwrap();
        assert_eq!((ts, iface), (1_764_500_000_000_070, "can0"));
        let LogFrame::Error(e) = f else {
            panic!("{f:?}")
        };
        assert_eq!(e.class, 0x4);
        assert_eq!(
            e.describe(),
            "controller-problem{tx-error-passive},error-counter-tx-rx{{128}{0}}"
        );
        assert_eq!(error_frame_notation(&e), "20000004#0020000000008000");
        let describe = |line: &str| match parse_candump_record(line).unwrap().2 {
            LogFrame::Error(e) => e.describe(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            describe("(1.000000) can0 2000000A#0C00880800000000"),
            "lost-arbitration{at bit 12},protocol-violation{{tx-dominant-bit-error,error-on-tx}{crc-sequence}}"
        );
        assert_eq!(
            describe("(1.000000) can0 20000260#0000000000000000"),
            "no-acknowledgement-on-tx,bus-off,error-counter-tx-rx{{0}{0}}"
        );
        assert_eq!(
            describe("(1.000000) can0 20000010#0000000004000000"),
            "transceiver-status{CANH-no-wire}"
        );
        // Not a command: the frame parser says so and names the class.
        let err = parse_candump_line("(1.000000) can0 20000040#0000000000000000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bus-off"), "{err}");
        assert!(parse_candump_record("(1.000000) can0 20000004##1").is_err());
        assert!(parse_candump_record("(1.000000) can0 20000004#R").is_err());
    }
}
