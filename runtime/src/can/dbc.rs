//! DBC files: a parser and an allocation-free signal codec for robots that describe their own
//! CAN protocol in a DBC file.
//!
//! # Why our own parser
//!
//! A bundle's DBC is read once at start, by the robot, from a file someone edited by hand, so its
//! errors must say where: every [`DbcError`] names the file, the 1-based line and what was
//! expected there. The codec runs in the 50 Hz control loop, so encoding and decoding neither
//! allocate nor format (errors hold shared names, not copies). The parser is fuzzed (random text,
//! mutated files) and never panics; the codec is checked bit for bit against Python `cantools`
//! (`runtime/tests/dbc_cantools.rs`).
//!
//! The `can-dbc` crate (10.0.0, a pest grammar) was tried on every file our tests and cantools
//! read, the field cases of `runtime/tests/data/dbc/` included: it reads them all. It is not
//! used because it also reads files that cantools refuses, losing data without a word: a `CM_`
//! statement without its `;` followed by a `BO_` line parses, where cantools reports a syntax
//! error and we report the missing `;` with both lines (test `errors_name_file_line_and_
//! expectation`); its errors are grammar positions (`positives: [maximum]`) rather than "expected
//! the maximum (a finite number), found `inf]`"; and everything this module checks after the
//! grammar (signals that fit their message, overlaps under multiplexing, duplicate names and IDs,
//! `SIG_VALTYPE_` lengths, multiplexer trees, long names) would still be ours on top of its
//! syntax tree. Re-evaluate when it refuses what cantools refuses.
//!
//! # What is understood
//!
//! `VERSION`, `NS_`, `BS_`, `BU_`, `BO_` with its `SG_` lines, `SIG_VALTYPE_` (IEEE float
//! signals), `SG_MUL_VAL_` (extended multiplexing: which multiplexer values select a signal) and,
//! among the `BA_` attributes, `SystemMessageLongSymbol` / `SystemSignalLongSymbol`: a message or
//! signal is then named by its long name, as cantools shows it, and found by either name
//! ([`Dbc::message_by_name`], [`Message::signal_index`]). The other statements (`CM_`,
//! `BA_DEF_`, other `BA_`, `VAL_`, `VAL_TABLE_`, `BO_TX_BU_`, `SIG_GROUP_`, `EV_`, ...) are
//! skipped up to their `;`, quoted strings over several lines included; a skipped statement
//! without its `;` is an error, not a silent loss of the messages after it. A `//` comment runs
//! to the end of its line, after a statement too (outside quoted strings). The pseudo-message
//! `VECTOR__INDEPENDENT_SIG_MSG` that Vector tools write is skipped.
//!
//! Files are bytes: [`Dbc::from_bytes`] reads UTF-8, and Windows-1252 (what Vector's tools write,
//! and cantools' default encoding for DBC) when the bytes are not UTF-8 ([`decode_text`]).
//!
//! Multiplexed messages (`M`, `m<k>`, `m<k>M` signals) are parsed and their multiplexer tree
//! resolved: a `m<k>` signal hangs off the message's `M` signal unless an `SG_MUL_VAL_` line
//! names its multiplexer and value ranges ([`Signal::selector`], [`Message::is_active`]). Signals
//! that no multiplexer value can select together may share bits (cantools' strict check); others
//! may not. [`Message::encode_into_fd`] and [`Message::encode_into`] refuse multiplexed messages;
//! [`Message::decode`] decodes them, writing NaN for the signals the payload's multiplexers do
//! not select (cantools leaves them out).
//!
//! # Message lengths
//!
//! A message is 0 to 8 bytes (classic CAN), one of the longer CAN FD lengths 12, 16, 20, 24, 32,
//! 48 and 64 ([`Message::is_fd`]), or, like cantools, any other length up to
//! [`MAX_MESSAGE_LEN`] (1785 bytes): a J1939 parameter group that only a transport protocol
//! carries. Such a message parses and decodes; [`Message::fits_one_frame`] is false and
//! [`Message::encode_into_fd`] refuses it ([`SignalError::NotOneFrame`]).
//!
//! # Classic CAN and CAN FD
//!
//! Signals may sit anywhere in the payload. [`Message::encode_into_fd`] encodes any message into
//! a [`MAX_FD_LEN`]-byte buffer; [`Message::encode_into`] keeps the classic 8-byte buffer and
//! refuses a CAN FD message ([`SignalError::TooLongForClassic`]). [`Message::decode`],
//! [`Signal::extract`] and [`Signal::insert`] take a slice of any length. A signal is read
//! through a 16-byte window from its first byte (a `u128`: a 64-bit signal that starts mid-byte
//! spans nine bytes), placed once at parse, so the codec neither loops over bits nor allocates.
//! Whether a frame is sent as CAN FD (the DBC's `VFrameFormat` attribute, bit rate switching) is
//! not read here: [`Message::is_fd`] is the size alone.
//!
//! # Wire conventions
//!
//! - ID: a DBC writes an extended (29-bit) ID with bit 31 set (`0x80000000 + id`); without it the
//!   ID is standard and must be `<= 0x7FF`.
//! - `@1` Intel (little-endian): the start bit is the signal's least significant bit, numbered
//!   `8 * byte + bit` (bit 0 = least significant bit of the byte); the signal's bits are those
//!   bits of the payload read as a little-endian integer.
//! - `@0` Motorola (big-endian): the start bit is the signal's *most* significant bit in the same
//!   "sawtooth" numbering; from there the signal runs towards the least significant bit of the
//!   byte, then on to the most significant bit of the next byte (the payload read as a big-endian
//!   integer).
//! - `physical = raw * scale + offset`; `raw = round((physical - offset) / scale)`, rounding
//!   half to even like Python's `round()` (what cantools does). A value outside the DBC's
//!   `[min|max]` (checked when `min < max`, with cantools' tolerance of `1e-6 * |scale|`) or
//!   whose raw value does not fit the signal's bits is an error, never wrapped.
//! - `SIG_VALTYPE_ ... : 1` / `: 2` make a 32- / 64-bit signal an IEEE `f32` / `f64`;
//!   `raw = (physical - offset) / scale` then is not rounded, and an `f32` overflow is an error.
//!
//! Where cantools (45.1.0, `encode_message(..., strict=True)`) differs: it checks `[min|max]`
//! unless both are written `0`, so a degenerate range (`min >= max`, other than `[0|0]`) refuses
//! nearly every value there and none here; it packs an `f32` overflow as infinity and NaN as
//! NaN where we refuse; it leaves unselected multiplexed signals out of a decoding where we
//! write NaN; it encodes J1939 groups of other lengths, which we refuse; and it reads a UTF-8
//! file with non-ASCII text as cp1252 (`Â°`) where we read UTF-8.

use crate::can::frame::{is_fd_len, MAX_CLASSIC_LEN, MAX_EXTENDED_ID, MAX_STANDARD_ID};
use std::sync::Arc;

/// Most data bytes in a message: a CAN FD frame's 64 (the same constant as
/// [`crate::can::MAX_FD_LEN`]).
pub use crate::can::MAX_FD_LEN;

/// Longest message a DBC may declare: 1785 bytes, the most the J1939 transport protocol
/// carries (J1939-21), and the limit of Vector's DBC editor. cantools accepts any length.
pub const MAX_MESSAGE_LEN: usize = 1785;

/// Bytes of the window a signal is read through: a 64-bit signal starting mid-byte spans 9.
const WINDOW: usize = 16;

/// The text of a DBC file: the bytes as UTF-8 when they are valid UTF-8, else decoded as
/// Windows-1252 (WHATWG's `windows-1252`, through `encoding_rs`). cantools (45.1.0) reads every
/// DBC file as cp1252 unless told otherwise; the one difference is a file that is valid UTF-8
/// with non-ASCII text (`°` as C2 B0), which cantools shows as `Â°` and we as `°`. Python's
/// cp1252 refuses the five bytes Windows-1252 leaves undefined (81, 8D, 8F, 90, 9D) where
/// WHATWG maps them to C1 control characters: such a file reads here and not in cantools.
/// Identifiers, numbers and keywords are ASCII in both encodings, so only units, comments and
/// other strings can differ.
pub fn decode_text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
        }
    }
}

/// A parse or validation error: the file, the 1-based line, what was wrong or expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DBC `{file}` line {line}: {message}")]
pub struct DbcError {
    /// The source name given to [`Dbc::parse`] (usually the file name).
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Why a value cannot be encoded or a payload decoded. Names are shared with the [`Dbc`], so
/// making one does not allocate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignalError {
    #[error("signal `{signal}`: value {value} is not a finite number")]
    NotFinite { signal: Arc<str>, value: f64 },
    #[error("signal `{signal}`: value {value} is outside the DBC range [{min}, {max}]")]
    OutOfRange {
        signal: Arc<str>,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error(
        "signal `{signal}`: value {value} does not fit its {bits} bits, which carry [{min}, {max}]"
    )]
    NotRepresentable {
        signal: Arc<str>,
        value: f64,
        bits: u8,
        min: f64,
        max: f64,
    },
    #[error("message `{message}` has no signal {index} (it has {count})")]
    NoSuchSignal {
        message: Arc<str>,
        index: usize,
        count: usize,
    },
    #[error("message `{message}` is multiplexed; encoding multiplexed messages is not supported")]
    Multiplexed { message: Arc<str> },
    #[error("message `{message}`: {len} data bytes, the DBC says {size}")]
    TooShort {
        message: Arc<str>,
        len: usize,
        size: usize,
    },
    #[error("message `{message}` has {count} signals, the output holds {len}")]
    OutputTooSmall {
        message: Arc<str>,
        count: usize,
        len: usize,
    },
    #[error(
        "message `{message}` is {size} bytes (CAN FD), longer than the 8-byte classic buffer of \
         `encode_into`; use `encode_into_fd`"
    )]
    TooLongForClassic { message: Arc<str>, size: usize },
    #[error(
        "message `{message}` is {size} bytes, not a CAN frame length (a J1939 parameter group \
         for the transport protocol)"
    )]
    NotOneFrame { message: Arc<str>, size: usize },
}

/// Bit numbering of a signal (`@1` / `@0` in the DBC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Intel, `@1`: start bit = least significant bit.
    LittleEndian,
    /// Motorola, `@0`: start bit = most significant bit (sawtooth numbering).
    BigEndian,
}

/// How the raw bits are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// `+`: unsigned integer.
    Unsigned,
    /// `-`: two's-complement integer.
    Signed,
    /// `SIG_VALTYPE_ ... : 1`: IEEE-754 single precision (32 bits).
    Float32,
    /// `SIG_VALTYPE_ ... : 2`: IEEE-754 double precision (64 bits).
    Float64,
}

/// The multiplexer indicator of a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multiplex {
    /// Always present.
    None,
    /// `M`: the multiplexer switch.
    Multiplexor,
    /// `m<k>`: present when the switch is `k`.
    Multiplexed(u64),
    /// `m<k>M`: extended multiplexing, present when its switch is `k` and itself a switch.
    MultiplexedMultiplexor(u64),
}

/// One signal of a message, validated at parse (it fits its message, 1 to 64 bits, scale != 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    name: Arc<str>,
    start_bit: u16,
    length: u8,
    /// Where the codec finds the bits, from [`Placement::new`].
    place: Placement,
    byte_order: ByteOrder,
    value_type: ValueType,
    scale: f64,
    offset: f64,
    min: f64,
    max: f64,
    unit: String,
    receivers: Vec<String>,
    multiplex: Multiplex,
    /// What selects a multiplexed signal, resolved once the whole file is read.
    selector: Option<Selector>,
    /// The `SG_` line's name when a long name replaced it.
    short_name: Option<Arc<str>>,
}

/// The multiplexer signal (index in the message) whose raw value selects a signal, and the
/// inclusive raw ranges that do.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    switch: usize,
    values: Vec<(u64, u64)>,
}

/// One `BO_` message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    name: Arc<str>,
    id: u32,
    extended: bool,
    size: u16,
    sender: String,
    signals: Vec<Signal>,
    /// The `BO_` line's name when a long name replaced it.
    short_name: Option<Arc<str>>,
}

/// A parsed DBC file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Dbc {
    version: String,
    nodes: Vec<String>,
    messages: Vec<Message>,
}

impl Dbc {
    /// Parses and validates DBC text; `source` names it in errors (usually the file name).
    pub fn parse(text: &str, source: &str) -> Result<Dbc, DbcError> {
        Parser::new(text, source).run()
    }

    /// Reads a DBC file's bytes as the tools that write them do, then parses it: UTF-8 (a
    /// leading byte-order mark dropped) when the bytes are valid UTF-8, else Windows-1252, the
    /// encoding Vector's tools write and cantools' default for DBC files (`°` is the byte B0).
    /// See [`decode_text`].
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Dbc, DbcError> {
        Self::parse(&decode_text(bytes), source)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The `BU_` nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The messages in file order.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The message with this name: the name cantools shows (a `SystemMessageLongSymbol`
    /// long name) or the short name of its `BO_` line.
    pub fn message_by_name(&self, name: &str) -> Option<&Message> {
        self.message_index(name).map(|i| &self.messages[i])
    }

    /// The index in [`Dbc::messages`] of the message with this (long or short) name.
    pub fn message_index(&self, name: &str) -> Option<usize> {
        self.messages
            .iter()
            .position(|m| &*m.name == name || m.short_name.as_deref() == Some(name))
    }

    /// The message with this CAN ID and ID format (`id` without the DBC's bit 31).
    pub fn message_by_id(&self, id: u32, extended: bool) -> Option<&Message> {
        self.messages
            .iter()
            .find(|m| m.id == id && m.extended == extended)
    }
}

impl Message {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The CAN ID (without the DBC's bit 31 flag).
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn is_extended(&self) -> bool {
        self.extended
    }

    /// Payload length in bytes: 0 to 8, or a CAN FD length (12, 16, 20, 24, 32, 48, 64).
    pub fn size(&self) -> usize {
        usize::from(self.size)
    }

    /// Whether the message needs a CAN FD frame (it is longer than 8 bytes).
    pub fn is_fd(&self) -> bool {
        self.size() > MAX_CLASSIC_LEN
    }

    /// Whether one CAN frame holds the message: 0 to 8 bytes, or a CAN FD length (12, 16, 20,
    /// 24, 32, 48, 64). Other sizes (J1939 parameter groups of 9 to 1785 bytes) travel only with
    /// a transport protocol; [`Message::encode_into_fd`] refuses them.
    pub fn fits_one_frame(&self) -> bool {
        self.size() <= MAX_FD_LEN && is_fd_len(self.size())
    }

    /// The short name of the `BO_` line when a `SystemMessageLongSymbol` attribute gave the
    /// message a long [`Message::name`] (what cantools shows).
    pub fn short_name(&self) -> Option<&str> {
        self.short_name.as_deref()
    }

    /// Whether signal `index` is in a payload: always for a signal that is not multiplexed;
    /// for a multiplexed one, when its multiplexer's raw value is one of those that select it
    /// (`m<k>`, or the ranges of its `SG_MUL_VAL_` line) and that multiplexer is itself in the
    /// payload. `false` for an index past the signals or a payload too short. Does not
    /// allocate.
    pub fn is_active(&self, index: usize, data: &[u8]) -> bool {
        let mut at = index;
        // The parser refuses selector loops, so a chain is shorter than the signal count.
        for _ in 0..=self.signals.len() {
            let Some(signal) = self.signals.get(at) else {
                return false;
            };
            let Some(sel) = &signal.selector else {
                return true;
            };
            let Some(raw) = self.signals.get(sel.switch).and_then(|s| s.extract(data)) else {
                return false;
            };
            if !sel.values.iter().any(|&(lo, hi)| lo <= raw && raw <= hi) {
                return false;
            }
            at = sel.switch;
        }
        false
    }

    pub fn sender(&self) -> &str {
        &self.sender
    }

    /// The signals in file order; [`Message::encode_into_fd`] and [`Message::decode`] index
    /// them.
    pub fn signals(&self) -> &[Signal] {
        &self.signals
    }

    /// The signal with this (long or short) name.
    pub fn signal(&self, name: &str) -> Option<&Signal> {
        self.signal_index(name).map(|i| &self.signals[i])
    }

    /// The index in [`Message::signals`] of the signal with this name: the name cantools shows
    /// (a `SystemSignalLongSymbol` long name) or the short name of its `SG_` line.
    pub fn signal_index(&self, name: &str) -> Option<usize> {
        self.signals
            .iter()
            .position(|s| &*s.name == name || s.short_name.as_deref() == Some(name))
    }

    /// Whether any signal is a multiplexer or multiplexed.
    pub fn is_multiplexed(&self) -> bool {
        self.signals.iter().any(|s| s.multiplex != Multiplex::None)
    }

    /// [`Message::encode_into_fd`] into a classic 8-byte buffer: the same, but a CAN FD
    /// message (longer than 8 bytes) is refused with [`SignalError::TooLongForClassic`].
    /// On error `data` is left unchanged. Does not allocate.
    pub fn encode_into(
        &self,
        values: impl IntoIterator<Item = (usize, f64)>,
        data: &mut [u8; MAX_CLASSIC_LEN],
    ) -> Result<usize, SignalError> {
        if self.is_fd() {
            return Err(SignalError::TooLongForClassic {
                message: self.name.clone(),
                size: self.size(),
            });
        }
        let mut buf = [0u8; MAX_FD_LEN];
        let len = self.encode_into_fd(values, &mut buf)?;
        data.copy_from_slice(&buf[..MAX_CLASSIC_LEN]);
        Ok(len)
    }

    /// Encodes `(signal index, physical value)` pairs into `data`, classic or CAN FD: the
    /// payload is `data[..len]`, `len` (returned) being the message's size; signals not given
    /// are raw 0, bytes past the size are 0. On error `data` is left unchanged. Does not
    /// allocate.
    pub fn encode_into_fd(
        &self,
        values: impl IntoIterator<Item = (usize, f64)>,
        data: &mut [u8; MAX_FD_LEN],
    ) -> Result<usize, SignalError> {
        if self.is_multiplexed() {
            return Err(SignalError::Multiplexed {
                message: self.name.clone(),
            });
        }
        if !self.fits_one_frame() {
            return Err(SignalError::NotOneFrame {
                message: self.name.clone(),
                size: self.size(),
            });
        }
        let mut buf = [0u8; MAX_FD_LEN];
        for (index, value) in values {
            let signal = self
                .signals
                .get(index)
                .ok_or_else(|| SignalError::NoSuchSignal {
                    message: self.name.clone(),
                    index,
                    count: self.signals.len(),
                })?;
            signal.insert(signal.physical_to_raw(value)?, &mut buf);
        }
        *data = buf;
        Ok(self.size())
    }

    /// Decodes every signal of a payload into `out[i]` (physical units, `out` at least as long
    /// as [`Message::signals`]). Multiplexed signals not selected by the multiplexer value come
    /// out as NaN. `data` must hold at least the message's size; extra bytes are ignored.
    /// Does not allocate.
    pub fn decode(&self, data: &[u8], out: &mut [f64]) -> Result<(), SignalError> {
        if data.len() < self.size() {
            return Err(SignalError::TooShort {
                message: self.name.clone(),
                len: data.len(),
                size: self.size(),
            });
        }
        if out.len() < self.signals.len() {
            return Err(SignalError::OutputTooSmall {
                message: self.name.clone(),
                count: self.signals.len(),
                len: out.len(),
            });
        }
        for (i, (signal, slot)) in self.signals.iter().zip(out.iter_mut()).enumerate() {
            *slot = match signal.extract(data) {
                Some(raw) if self.is_active(i, data) => signal.raw_to_physical(raw),
                _ => f64::NAN,
            };
        }
        Ok(())
    }
}

impl Signal {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// As written in the DBC: the LSB (Intel) or the MSB (Motorola), sawtooth numbering.
    pub fn start_bit(&self) -> u16 {
        self.start_bit
    }

    /// Bits, 1 to 64.
    pub fn length(&self) -> u8 {
        self.length
    }

    pub fn byte_order(&self) -> ByteOrder {
        self.byte_order
    }

    pub fn value_type(&self) -> ValueType {
        self.value_type
    }

    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn offset(&self) -> f64 {
        self.offset
    }

    /// The DBC's minimum; checked on encode only when `min < max`.
    pub fn min(&self) -> f64 {
        self.min
    }

    pub fn max(&self) -> f64 {
        self.max
    }

    pub fn unit(&self) -> &str {
        &self.unit
    }

    pub fn receivers(&self) -> &[String] {
        &self.receivers
    }

    pub fn multiplex(&self) -> Multiplex {
        self.multiplex
    }

    /// The short name of the `SG_` line when a `SystemSignalLongSymbol` attribute gave the
    /// signal a long [`Signal::name`] (what cantools shows).
    pub fn short_name(&self) -> Option<&str> {
        self.short_name.as_deref()
    }

    /// The multiplexer that selects this signal and the raw values that do, `None` for a
    /// signal that is always present.
    pub fn selector(&self) -> Option<(usize, &[(u64, u64)])> {
        self.selector
            .as_ref()
            .map(|s| (s.switch, s.values.as_slice()))
    }

    fn mask(&self) -> u64 {
        u64::MAX >> (64 - u32::from(self.length))
    }

    /// How many payload bytes the signal reaches into.
    pub fn bytes_needed(&self) -> usize {
        usize::from(self.place.needed)
    }

    /// The raw bits for a physical value: `round_half_even((value - offset) / scale)` for integer
    /// signals, the IEEE bits of `(value - offset) / scale` for float ones. Errors (never
    /// wraps) on a non-finite value, a value outside `[min, max]` (when `min < max`, with
    /// cantools' tolerance of `1e-6 * |scale|`), or a raw value the bits cannot hold. A signed
    /// raw value comes back in two's complement, masked to the signal's length.
    pub fn physical_to_raw(&self, value: f64) -> Result<u64, SignalError> {
        if !value.is_finite() {
            return Err(SignalError::NotFinite {
                signal: self.name.clone(),
                value,
            });
        }
        if self.min < self.max {
            let tolerance = self.scale.abs() * 1e-6;
            if value < self.min - tolerance || value > self.max + tolerance {
                return Err(SignalError::OutOfRange {
                    signal: self.name.clone(),
                    value,
                    min: self.min,
                    max: self.max,
                });
            }
        }
        let scaled = (value - self.offset) / self.scale;
        let bits = u32::from(self.length);
        let raw = match self.value_type {
            ValueType::Float32 => {
                let f = scaled as f32;
                f.is_finite().then(|| u64::from(f.to_bits()))
            }
            ValueType::Float64 => scaled.is_finite().then(|| scaled.to_bits()),
            ValueType::Unsigned => {
                let r = scaled.round_ties_even();
                // 2^bits is exact; `r` is integral, so `r < 2^bits` means `r <= 2^bits - 1`.
                (r >= 0.0 && r < pow2(bits)).then_some(r as u64)
            }
            ValueType::Signed => {
                let r = scaled.round_ties_even();
                let half = pow2(bits - 1);
                (r >= -half && r < half).then(|| (r as i64) as u64 & self.mask())
            }
        };
        raw.ok_or_else(|| {
            let (lo, hi) = self.raw_range();
            let (a, b) = (lo * self.scale + self.offset, hi * self.scale + self.offset);
            SignalError::NotRepresentable {
                signal: self.name.clone(),
                value,
                bits: self.length,
                min: a.min(b),
                max: a.max(b),
            }
        })
    }

    /// The raw values the bits can hold, as floats (for error messages).
    fn raw_range(&self) -> (f64, f64) {
        let bits = u32::from(self.length);
        match self.value_type {
            ValueType::Unsigned => (0.0, pow2(bits) - 1.0),
            ValueType::Signed => (-pow2(bits - 1), pow2(bits - 1) - 1.0),
            ValueType::Float32 => (f64::from(f32::MIN), f64::from(f32::MAX)),
            ValueType::Float64 => (f64::MIN, f64::MAX),
        }
    }

    /// The physical value of raw bits: `raw * scale + offset`, the raw value sign-extended for a
    /// signed signal and reinterpreted as IEEE bits for a float one. Bits above the signal's
    /// length are ignored.
    pub fn raw_to_physical(&self, raw: u64) -> f64 {
        let raw = raw & self.mask();
        let value = match self.value_type {
            ValueType::Unsigned => raw as f64,
            ValueType::Signed => {
                let unused = 64 - u32::from(self.length);
                ((raw << unused) as i64 >> unused) as f64
            }
            ValueType::Float32 => f64::from(f32::from_bits(raw as u32)),
            ValueType::Float64 => f64::from_bits(raw),
        };
        value * self.scale + self.offset
    }

    /// Writes the raw bits into the payload, leaving the other bits as they are. `data` should
    /// hold at least [`Signal::bytes_needed`] bytes; bits past its end are dropped.
    pub fn insert(&self, raw: u64, data: &mut [u8]) {
        let first = usize::from(self.place.first);
        let Some(bytes) = data.get_mut(first..) else {
            return;
        };
        let n = bytes.len().min(WINDOW);
        let mut buf = [0u8; WINDOW];
        buf[..n].copy_from_slice(&bytes[..n]);
        let mask = u128::from(self.mask()) << self.place.shift;
        let bits = u128::from(raw) << self.place.shift;
        let put = |x: u128| (x & !mask) | (bits & mask);
        buf = match self.byte_order {
            ByteOrder::LittleEndian => put(u128::from_le_bytes(buf)).to_le_bytes(),
            ByteOrder::BigEndian => put(u128::from_be_bytes(buf)).to_be_bytes(),
        };
        bytes[..n].copy_from_slice(&buf[..n]);
    }

    /// Reads the raw bits (not sign-extended), or `None` if `data` is shorter than
    /// [`Signal::bytes_needed`].
    pub fn extract(&self, data: &[u8]) -> Option<u64> {
        if data.len() < self.bytes_needed() {
            return None;
        }
        let bytes = data.get(usize::from(self.place.first)..)?;
        let n = bytes.len().min(WINDOW);
        let mut buf = [0u8; WINDOW];
        buf[..n].copy_from_slice(&bytes[..n]);
        let x = match self.byte_order {
            ByteOrder::LittleEndian => u128::from_le_bytes(buf),
            ByteOrder::BigEndian => u128::from_be_bytes(buf),
        };
        // The mask keeps 64 bits at most, so the cast drops nothing.
        Some((x >> self.place.shift) as u64 & self.mask())
    }

    /// The payload bits the signal occupies in a `size`-byte message (for overlap checks).
    fn occupancy(&self, size: usize) -> Vec<u8> {
        let mut buf = vec![0u8; size];
        self.insert(u64::MAX, &mut buf);
        buf
    }

    fn overlaps(&self, other: &Signal, size: usize) -> bool {
        let (a, b) = (self.occupancy(size), other.occupancy(size));
        a.iter().zip(&b).any(|(x, y)| x & y != 0)
    }
}

/// Where a signal's bits are, worked out once at parse: the codec reads the payload from byte
/// `first` on as a little-endian (Intel) or big-endian (Motorola) `u128` of [`WINDOW`] bytes
/// (zero past the payload's end), and the signal is `length` bits from bit `shift` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Placement {
    first: u16,
    /// At most 7 + 64 = 71 bits from the window's least significant bit.
    shift: u8,
    /// Payload bytes the signal reaches into.
    needed: u16,
}

impl Placement {
    /// For a signal whose bits `start..start + length` (Intel, sawtooth numbering) or
    /// `network_bit(start)..+length` (Motorola, network order) lie inside the payload.
    fn new(start: u16, length: u8, byte_order: ByteOrder) -> Placement {
        let (start, length) = (u32::from(start), u32::from(length));
        let (first_bit, shift) = match byte_order {
            ByteOrder::LittleEndian => (start, start % 8),
            ByteOrder::BigEndian => {
                let msb = network_bit(start);
                // In the big-endian window, bit `msb % 8` from the top is the signal's MSB.
                (msb, 8 * WINDOW as u32 - (msb % 8 + length))
            }
        };
        Placement {
            first: (first_bit / 8) as u16,
            shift: shift as u8,
            needed: (first_bit + length).div_ceil(8) as u16,
        }
    }
}

/// Sawtooth bit number (`8 * byte + bit`, bit 0 = LSB) to network order (bit 0 = MSB of byte 0).
fn network_bit(sawtooth: u32) -> u32 {
    8 * (sawtooth / 8) + (7 - sawtooth % 8)
}

fn pow2(bits: u32) -> f64 {
    2f64.powi(bits as i32)
}

/// Statements skipped up to their `;`.
const SKIPPED: &[&str] = &[
    "BA_",
    "BA_DEF_",
    "BA_DEF_DEF_",
    "BA_DEF_DEF_REL_",
    "BA_DEF_REL_",
    "BA_DEF_SGTYPE_",
    "BA_REL_",
    "BA_SGTYPE_",
    "BO_TX_BU_",
    "BU_BO_REL_",
    "BU_EV_REL_",
    "BU_SG_REL_",
    "CAT_",
    "CAT_DEF_",
    "CM_",
    "ENVVAR_DATA_",
    "EV_",
    "EV_DATA_",
    "FILTER",
    "SG_MUL_VAL_",
    "SGTYPE_",
    "SGTYPE_VAL_",
    "SIG_GROUP_",
    "SIG_TYPE_REF_",
    "SIGTYPE_VALTYPE_",
    "VAL_",
    "VAL_TABLE_",
];

/// Statements the parser reads.
const READ: &[&str] = &["VERSION", "NS_", "BS_", "BU_", "BO_", "SG_", "SIG_VALTYPE_"];

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The identifier at the start of `s` (possibly empty).
fn leading_ident(s: &str) -> &str {
    let end = s.bytes().position(|b| !is_ident_byte(b)).unwrap_or(s.len());
    &s[..end]
}

fn is_keyword(word: &str) -> bool {
    READ.contains(&word) || SKIPPED.contains(&word)
}

/// A `SIG_VALTYPE_` statement, applied once all messages are read.
struct ValType {
    line: usize,
    raw_id: u64,
    signal: String,
    kind: u64,
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    line: usize,
    file: &'a str,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, file: &'a str) -> Self {
        let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        Self {
            text,
            pos: 0,
            line: 1,
            file,
        }
    }

    fn error(&self, line: usize, message: String) -> DbcError {
        DbcError {
            file: self.file.to_owned(),
            line,
            message,
        }
    }

    /// Skips whitespace and newlines.
    fn skip_space(&mut self) {
        let bytes = self.text.as_bytes();
        while let Some(&b) = bytes.get(self.pos) {
            if !b.is_ascii_whitespace() {
                break;
            }
            if b == b'\n' {
                self.line += 1;
            }
            self.pos += 1;
        }
    }

    /// The rest of the current line (without the newline), not consumed.
    fn peek_line(&self) -> &'a str {
        let rest = &self.text[self.pos..];
        let end = rest.find('\n').unwrap_or(rest.len());
        rest[..end].trim_end_matches('\r')
    }

    /// The rest of the current line, consumed up to the newline, without a `//` comment.
    fn take_line(&mut self) -> Line<'a> {
        let s = strip_comment(self.peek_line());
        let rest = &self.text[self.pos..];
        self.pos += rest.find('\n').unwrap_or(rest.len());
        Line {
            s,
            pos: 0,
            line: self.line,
            file: self.file,
        }
    }

    /// Skips a statement up to its `;` outside quoted strings (which may span lines, with `\"`
    /// escapes). A line starting with a DBC keyword before the `;` means the `;` is missing.
    fn skip_statement(&mut self, keyword: &str, start: usize) -> Result<(), DbcError> {
        let bytes = self.text.as_bytes();
        let mut string_from = None;
        while let Some(&b) = bytes.get(self.pos) {
            self.pos += 1;
            match b {
                b'\n' => {
                    self.line += 1;
                    if string_from.is_none() {
                        let next = self.peek_line().trim_start();
                        let word = leading_ident(next);
                        if is_keyword(word) {
                            return Err(self.error(
                                start,
                                format!(
                                    "expected `;` to end this `{keyword}` statement before the \
                                     `{word}` on line {}",
                                    self.line
                                ),
                            ));
                        }
                    }
                }
                b'\\' if string_from.is_some() && bytes.get(self.pos) == Some(&b'"') => {
                    self.pos += 1;
                }
                // A `//` comment outside strings runs to the end of the line.
                b'/' if string_from.is_none() && bytes.get(self.pos) == Some(&b'/') => {
                    let rest = &self.text[self.pos..];
                    self.pos += rest.find('\n').unwrap_or(rest.len());
                }
                b'"' => {
                    string_from = match string_from {
                        None => Some(self.line),
                        Some(_) => None,
                    }
                }
                b';' if string_from.is_none() => return Ok(()),
                _ => {}
            }
        }
        Err(match string_from {
            Some(line) => self.error(line, "string opened here is never closed".to_owned()),
            None => self.error(
                start,
                format!("expected `;` to end this `{keyword}` statement, found end of file"),
            ),
        })
    }

    fn run(mut self) -> Result<Dbc, DbcError> {
        let mut dbc = Dbc::default();
        // The message that `SG_` lines attach to, and whether it is one we skip.
        let mut current: Option<usize> = None;
        let mut skipping = false;
        let mut message_lines = Vec::new();
        // Per message, the line of each signal.
        let mut signal_lines: Vec<Vec<usize>> = Vec::new();
        let mut valtypes = Vec::new();
        let mut mul_vals = Vec::new();
        let mut long_names = Vec::new();
        loop {
            self.skip_space();
            if self.pos >= self.text.len() {
                break;
            }
            let line = self.line;
            let head = self.peek_line();
            if head.starts_with("//") {
                self.take_line();
                continue;
            }
            let keyword = leading_ident(head);
            if keyword == "SG_" {
                let mut l = self.take_line();
                match current {
                    Some(i) => {
                        parse_signal(&mut l, &mut dbc.messages[i])?;
                        signal_lines[i].push(line);
                    }
                    None if skipping => {}
                    None => {
                        return Err(l.error(
                            "`SG_` outside a message: expected a `BO_` line before it".to_owned(),
                        ))
                    }
                }
                continue;
            }
            current = None;
            skipping = false;
            match keyword {
                "VERSION" => {
                    let mut l = self.take_line();
                    l.word("VERSION")?;
                    dbc.version = l.string("the version string")?.to_owned();
                    l.end()?;
                }
                "NS_" => {
                    self.take_line();
                    // Indented lines of one keyword each; the block ends at the first other line.
                    loop {
                        self.skip_space();
                        let next = strip_comment(self.peek_line()).trim();
                        if next.is_empty() || leading_ident(next) != next {
                            break;
                        }
                        self.take_line();
                    }
                }
                "BS_" => {
                    self.take_line();
                }
                "BU_" => {
                    let mut l = self.take_line();
                    l.word("BU_")?;
                    l.expect(b':', "`:` after `BU_`")?;
                    while !l.at_end() {
                        dbc.nodes.push(l.ident("a node name")?.to_owned());
                    }
                }
                "BO_" => {
                    let mut l = self.take_line();
                    match parse_message(&mut l)? {
                        None => skipping = true,
                        Some(m) => {
                            if let Some(k) = dbc.messages.iter().position(|o| o.name == m.name) {
                                return Err(l.error(format!(
                                    "duplicate message name `{}` (first on line {})",
                                    m.name, message_lines[k]
                                )));
                            }
                            if let Some(k) = dbc
                                .messages
                                .iter()
                                .position(|o| o.id == m.id && o.extended == m.extended)
                            {
                                return Err(l.error(format!(
                                    "duplicate {} ID {:#X} (message `{}` on line {})",
                                    if m.extended { "extended" } else { "standard" },
                                    m.id,
                                    dbc.messages[k].name,
                                    message_lines[k]
                                )));
                            }
                            dbc.messages.push(m);
                            message_lines.push(line);
                            signal_lines.push(Vec::new());
                            current = Some(dbc.messages.len() - 1);
                        }
                    }
                }
                "SIG_VALTYPE_" => {
                    let mut l = self.take_line();
                    l.word("SIG_VALTYPE_")?;
                    let raw_id = l.integer("a message ID")?;
                    let signal = l.ident("a signal name")?.to_owned();
                    l.expect(b':', "`:` after the signal name")?;
                    let kind = l.integer("the value type (0 integer, 1 float32, 2 float64)")?;
                    l.expect(b';', "`;`")?;
                    l.end()?;
                    valtypes.push(ValType {
                        line,
                        raw_id,
                        signal,
                        kind,
                    });
                }
                "SG_MUL_VAL_" => {
                    let from = self.pos;
                    self.skip_statement("SG_MUL_VAL_", line)?;
                    let mut l = self.statement(from, line);
                    mul_vals.push(parse_mul_val(&mut l)?);
                }
                "BA_" => {
                    let from = self.pos;
                    self.skip_statement("BA_", line)?;
                    let mut l = self.statement(from, line);
                    if let Some(n) = parse_long_name(&mut l)? {
                        long_names.push(n);
                    }
                }
                k if SKIPPED.contains(&k) => self.skip_statement(k, line)?,
                "" => {
                    let found: String = head.trim().chars().take(20).collect();
                    return Err(self.error(
                        line,
                        format!("expected a DBC keyword (`BO_`, `SG_`, `CM_`, ...), found `{found}`"),
                    ));
                }
                k => {
                    return Err(self.error(
                        line,
                        format!("unknown DBC keyword `{k}` (expected `BO_`, `SG_`, `CM_`, `BA_`, `VAL_`, ...)"),
                    ))
                }
            }
        }
        for v in &valtypes {
            self.apply_valtype(&mut dbc, v)?;
        }
        for (m, &line) in dbc.messages.iter_mut().zip(&message_lines) {
            let switches = m
                .signals
                .iter()
                .filter(|s| s.multiplex == Multiplex::Multiplexor)
                .count();
            let extended = m
                .signals
                .iter()
                .any(|s| matches!(s.multiplex, Multiplex::MultiplexedMultiplexor(_)));
            let multiplexed = m
                .signals
                .iter()
                .find(|s| matches!(s.multiplex, Multiplex::Multiplexed(_)));
            if let (Some(s), 0, false) = (multiplexed, switches, extended) {
                return Err(self.error(
                    line,
                    format!(
                        "signal `{}` of message `{}` is multiplexed but the message has no \
                         multiplexer signal (`M`)",
                        s.name, m.name
                    ),
                ));
            }
        }
        for (mi, m) in dbc.messages.iter_mut().enumerate() {
            self.resolve_multiplexing(m, &mul_vals)?;
            check_overlaps(m, &signal_lines[mi], self.file)?;
        }
        for n in &long_names {
            self.apply_long_name(&mut dbc, n)?;
        }
        Ok(dbc)
    }

    /// The line of a statement read from byte `from` to the current position (its `;`).
    fn statement(&self, from: usize, line: usize) -> Line<'a> {
        Line {
            s: &self.text[from..self.pos],
            pos: 0,
            line,
            file: self.file,
        }
    }

    /// Gives every multiplexed signal of `m` its [`Selector`]: the ranges of its `SG_MUL_VAL_`
    /// line when it has one (extended multiplexing), else the message's single `M` signal with
    /// its own `m<k>` value. Without either (several `M`, no `SG_MUL_VAL_`), the signal is never
    /// selected, as its multiplexer is unknown.
    fn resolve_multiplexing(&self, m: &mut Message, mul_vals: &[MulVal]) -> Result<(), DbcError> {
        let mut switches = m
            .signals
            .iter()
            .enumerate()
            .filter(|(_, s)| s.multiplex == Multiplex::Multiplexor);
        let single = match (switches.next(), switches.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        };
        for si in 0..m.signals.len() {
            let k = match m.signals[si].multiplex {
                Multiplex::Multiplexed(k) | Multiplex::MultiplexedMultiplexor(k) => k,
                _ => continue,
            };
            let explicit = mul_vals.iter().find(|v| {
                split_id(v.raw_id) == Some((m.id, m.extended)) && *v.signal == *m.signals[si].name
            });
            let selector = match (explicit, single) {
                (Some(v), _) => {
                    let switch = m
                        .signals
                        .iter()
                        .position(|s| *s.name == *v.switch)
                        .ok_or_else(|| {
                            self.error(
                                v.line,
                                format!(
                                    "`SG_MUL_VAL_`: message `{}` has no signal `{}`",
                                    m.name, v.switch
                                ),
                            )
                        })?;
                    let is_switch = matches!(
                        m.signals[switch].multiplex,
                        Multiplex::Multiplexor | Multiplex::MultiplexedMultiplexor(_)
                    );
                    if !is_switch || switch == si {
                        return Err(self.error(
                            v.line,
                            format!(
                                "`SG_MUL_VAL_`: `{}` of message `{}` is not a multiplexer of \
                                 `{}` (a multiplexer is marked `M` or `m<k>M`)",
                                v.switch, m.name, v.signal
                            ),
                        ));
                    }
                    Selector {
                        switch,
                        values: v.ranges.clone(),
                    }
                }
                (None, Some(switch)) => Selector {
                    switch,
                    values: vec![(k, k)],
                },
                (None, None) => Selector {
                    switch: usize::MAX,
                    values: vec![],
                },
            };
            m.signals[si].selector = Some(selector);
        }
        for si in 0..m.signals.len() {
            let links = chain(m, si);
            // Without a loop, a chain passes each other signal at most once.
            if links.iter().filter(|(s, _)| *s != usize::MAX).count() >= m.signals.len() {
                return Err(self.error(
                    mul_vals.first().map_or(1, |v| v.line),
                    format!(
                        "the multiplexers of message `{}` select each other in a loop \
                         (`SG_MUL_VAL_` lines)",
                        m.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Renames a message or signal after its `SystemMessageLongSymbol` /
    /// `SystemSignalLongSymbol` attribute, keeping the short name for look-ups.
    fn apply_long_name(&self, dbc: &mut Dbc, n: &LongName) -> Result<(), DbcError> {
        let (id, extended) = split_id(n.raw_id).ok_or_else(|| {
            self.error(n.line, format!("message ID {} is out of range", n.raw_id))
        })?;
        let Some(message) = dbc
            .messages
            .iter_mut()
            .find(|m| m.id == id && m.extended == extended)
        else {
            // cantools ignores attributes of messages the file does not define.
            return Ok(());
        };
        let long: Arc<str> = n.name.as_str().into();
        match &n.signal {
            None => {
                let short = std::mem::replace(&mut message.name, long);
                message.short_name = Some(short);
            }
            Some(sig) => {
                if let Some(s) = message.signals.iter_mut().find(|s| *s.name == **sig) {
                    let short = std::mem::replace(&mut s.name, long);
                    s.short_name = Some(short);
                }
            }
        }
        Ok(())
    }

    fn apply_valtype(&self, dbc: &mut Dbc, v: &ValType) -> Result<(), DbcError> {
        let (id, extended) = split_id(v.raw_id).ok_or_else(|| {
            self.error(v.line, format!("message ID {} is out of range", v.raw_id))
        })?;
        let message = dbc
            .messages
            .iter_mut()
            .find(|m| m.id == id && m.extended == extended)
            .ok_or_else(|| {
                self.error(
                    v.line,
                    format!(
                        "`SIG_VALTYPE_` names message ID {} that no `BO_` defines",
                        v.raw_id
                    ),
                )
            })?;
        let name = message.name.clone();
        let signal = message
            .signals
            .iter_mut()
            .find(|s| *s.name == *v.signal)
            .ok_or_else(|| {
                self.error(
                    v.line,
                    format!(
                        "`SIG_VALTYPE_`: message `{name}` has no signal `{}`",
                        v.signal
                    ),
                )
            })?;
        let (value_type, bits) = match v.kind {
            0 => return Ok(()),
            1 => (ValueType::Float32, 32),
            2 => (ValueType::Float64, 64),
            k => {
                return Err(self.error(
                    v.line,
                    format!("value type {k} is not 0 (integer), 1 (float32) or 2 (float64)"),
                ))
            }
        };
        if signal.length != bits {
            return Err(self.error(
                v.line,
                format!(
                    "signal `{}` is {} bits, a float{bits} signal must be {bits}",
                    signal.name, signal.length
                ),
            ));
        }
        signal.value_type = value_type;
        Ok(())
    }
}

/// The `(multiplexer, selecting ranges)` links from signal `si` up to an always-present
/// signal, at most `signals.len()` of them (more means a loop).
fn chain(m: &Message, si: usize) -> Vec<(usize, &[(u64, u64)])> {
    let mut out = Vec::new();
    let mut at = si;
    while let Some(sel) = m.signals.get(at).and_then(|s| s.selector.as_ref()) {
        out.push((sel.switch, sel.values.as_slice()));
        if out.len() >= m.signals.len() {
            break;
        }
        at = sel.switch;
    }
    out
}

/// Whether two signals can never be in the same payload: some multiplexer selects them with
/// disjoint values, or one hangs off a multiplexer the file leaves unknown.
fn exclusive(m: &Message, a: usize, b: usize) -> bool {
    let (ca, cb) = (chain(m, a), chain(m, b));
    let unknown = |c: &[(usize, &[(u64, u64)])]| c.iter().any(|(s, _)| *s == usize::MAX);
    if (unknown(&ca) && !cb.is_empty()) || (unknown(&cb) && !ca.is_empty()) {
        return true;
    }
    ca.iter().any(|(sa, va)| {
        cb.iter().any(|(sb, vb)| {
            sa == sb
                && !va
                    .iter()
                    .any(|&(lo, hi)| vb.iter().any(|&(l2, h2)| lo <= h2 && l2 <= hi))
        })
    })
}

/// Refuses two signals that share payload bits and can be in the same payload (cantools'
/// strict check); `lines` holds each signal's line.
fn check_overlaps(m: &Message, lines: &[usize], file: &str) -> Result<(), DbcError> {
    for b in 1..m.signals.len() {
        for a in 0..b {
            if !exclusive(m, a, b) && m.signals[a].overlaps(&m.signals[b], m.size()) {
                return Err(DbcError {
                    file: file.to_owned(),
                    line: lines.get(b).copied().unwrap_or(0),
                    message: format!(
                        "signal `{}` overlaps signal `{}` in message `{}`",
                        m.signals[b].name, m.signals[a].name, m.name
                    ),
                });
            }
        }
    }
    Ok(())
}

/// A `SG_MUL_VAL_` statement: which multiplexer values select a signal.
struct MulVal {
    line: usize,
    raw_id: u64,
    signal: String,
    switch: String,
    ranges: Vec<(u64, u64)>,
}

/// `SG_MUL_VAL_ <id> <signal> <multiplexer> <lo>-<hi>[, <lo>-<hi>...];`
fn parse_mul_val(l: &mut Line<'_>) -> Result<MulVal, DbcError> {
    l.word("SG_MUL_VAL_")?;
    let raw_id = l.integer("the message ID")?;
    let signal = l.ident("the multiplexed signal's name")?.to_owned();
    let switch = l.ident("the multiplexer signal's name")?.to_owned();
    let mut ranges = Vec::new();
    loop {
        let lo = l.integer("a multiplexer value range `<low>-<high>`")?;
        l.expect(b'-', "`-` between the low and high multiplexer values")?;
        let hi = l.integer("the high multiplexer value")?;
        if hi < lo {
            return Err(l.error(format!("multiplexer value range {lo}-{hi} is empty")));
        }
        ranges.push((lo, hi));
        l.skip_ws();
        match l.peek() {
            Some(b',') => l.pos += 1,
            Some(b';') => break,
            _ => return Err(l.error_found("`,` or `;` after a multiplexer value range")),
        }
    }
    Ok(MulVal {
        line: l.line,
        raw_id,
        signal,
        switch,
        ranges,
    })
}

/// A long name from a `SystemMessageLongSymbol` / `SystemSignalLongSymbol` attribute.
struct LongName {
    line: usize,
    raw_id: u64,
    /// The signal's short name, `None` for the message's own name.
    signal: Option<String>,
    name: String,
}

/// `BA_ "SystemMessageLongSymbol" BO_ <id> "<name>";` or `BA_ "SystemSignalLongSymbol" SG_
/// <id> <signal> "<name>";`; `None` for any other attribute (skipped).
fn parse_long_name(l: &mut Line<'_>) -> Result<Option<LongName>, DbcError> {
    l.word("BA_")?;
    let Ok(attribute) = l.string("the attribute name") else {
        return Ok(None);
    };
    let signal = match attribute {
        "SystemMessageLongSymbol" => {
            l.word("BO_")?;
            false
        }
        "SystemSignalLongSymbol" => {
            l.word("SG_")?;
            true
        }
        _ => return Ok(None),
    };
    let raw_id = l.integer("the message ID")?;
    let signal = if signal {
        Some(l.ident("the signal name")?.to_owned())
    } else {
        None
    };
    let name = l.string("the long name")?;
    if name.is_empty() || !name.bytes().all(is_ident_byte) {
        return Err(l.error(format!(
            "long name `{name}` must be a non-empty identifier (letters, digits, `_`)"
        )));
    }
    Ok(Some(LongName {
        line: l.line,
        raw_id,
        signal,
        name: name.to_owned(),
    }))
}

/// `s` without a `//` comment that starts outside a quoted string.
fn strip_comment(s: &str) -> &str {
    let b = s.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if in_string && b.get(i + 1) == Some(&b'"') => i += 1,
            b'"' => in_string = !in_string,
            b'/' if !in_string && b.get(i + 1) == Some(&b'/') => return &s[..i],
            _ => {}
        }
        i += 1;
    }
    s
}

/// `(id, extended)` of a DBC message ID (bit 31 = extended), if in range.
fn split_id(raw: u64) -> Option<(u32, bool)> {
    let raw = u32::try_from(raw).ok()?;
    let extended = raw & 0x8000_0000 != 0;
    let id = raw & 0x7FFF_FFFF;
    let max = if extended {
        MAX_EXTENDED_ID
    } else {
        MAX_STANDARD_ID
    };
    (id <= max).then_some((id, extended))
}

/// `BO_ <id> <name>: <size> <sender>`; `None` for Vector's independent-signals pseudo-message.
fn parse_message(l: &mut Line<'_>) -> Result<Option<Message>, DbcError> {
    l.word("BO_")?;
    let raw_id = l.integer("the message ID")?;
    let name = l.ident("the message name")?;
    l.expect(b':', "`:` after the message name")?;
    let size = l.integer("the message size in bytes")?;
    let sender = if l.at_end() {
        "Vector__XXX"
    } else {
        l.ident("the sending node")?
    };
    l.end()?;
    if name == "VECTOR__INDEPENDENT_SIG_MSG" {
        return Ok(None);
    }
    let (id, extended) = split_id(raw_id).ok_or_else(|| {
        let message = if raw_id > u64::from(u32::MAX) {
            format!("message ID {raw_id} is out of range")
        } else if raw_id & 0x8000_0000 != 0 {
            format!(
                "extended ID {:#X} of message `{name}` exceeds 29 bits (max {MAX_EXTENDED_ID:#X})",
                raw_id & 0x7FFF_FFFF
            )
        } else {
            format!(
                "standard ID {raw_id:#X} of message `{name}` exceeds 11 bits (max \
                 {MAX_STANDARD_ID:#X}); a DBC writes an extended ID with bit 31 set \
                 (0x80000000 + ID)"
            )
        };
        l.error(message)
    })?;
    if !usize::try_from(size).is_ok_and(|n| n <= MAX_MESSAGE_LEN) {
        return Err(l.error(format!(
            "message `{name}` is {size} bytes: a DBC message is at most {MAX_MESSAGE_LEN} bytes \
             (a J1939 parameter group sent with the transport protocol; one CAN frame holds 0 to \
             8 bytes, or 12, 16, 20, 24, 32, 48 or 64 with CAN FD)"
        )));
    }
    Ok(Some(Message {
        name: name.into(),
        id,
        extended,
        size: size as u16,
        sender: sender.to_owned(),
        signals: Vec::new(),
        short_name: None,
    }))
}

/// `SG_ <name> [M|m<k>] : <start>|<len>@<0|1><+|-> (<scale>,<offset>) [<min>|<max>] "<unit>"
/// <receivers>`, validated against the message and its earlier signals.
fn parse_signal(l: &mut Line<'_>, message: &mut Message) -> Result<(), DbcError> {
    l.word("SG_")?;
    let name = l.ident("the signal name")?;
    l.skip_ws();
    let multiplex = if l.peek() == Some(b':') {
        Multiplex::None
    } else {
        let what = "a multiplexer indicator (`M`, `m<value>`) or `:`";
        let word = l.ident(what)?;
        let parsed = if word == "M" {
            Some(Multiplex::Multiplexor)
        } else if let Some(rest) = word.strip_prefix('m') {
            match rest.strip_suffix('M') {
                Some(k) => k.parse().ok().map(Multiplex::MultiplexedMultiplexor),
                None => rest.parse().ok().map(Multiplex::Multiplexed),
            }
        } else {
            None
        };
        parsed.ok_or_else(|| l.error(format!("expected {what}, found `{word}`")))?
    };
    l.expect(b':', "`:` after the signal name")?;
    let start = l.integer("the start bit")?;
    l.expect(b'|', "`|` after the start bit")?;
    let length = l.integer("the length in bits")?;
    l.expect(b'@', "`@` after the length")?;
    let byte_order = match l.peek() {
        Some(b'1') => ByteOrder::LittleEndian,
        Some(b'0') => ByteOrder::BigEndian,
        _ => return Err(l.error_found("the byte order `0` (Motorola) or `1` (Intel) after `@`")),
    };
    l.pos += 1;
    let value_type = match l.peek() {
        Some(b'+') => ValueType::Unsigned,
        Some(b'-') => ValueType::Signed,
        _ => return Err(l.error_found("`+` (unsigned) or `-` (signed) after the byte order")),
    };
    l.pos += 1;
    l.expect(b'(', "`(` before the scale")?;
    let scale = l.float("the scale")?;
    l.expect(b',', "`,` after the scale")?;
    let offset = l.float("the offset")?;
    l.expect(b')', "`)` after the offset")?;
    l.expect(b'[', "`[` before the minimum")?;
    let min = l.float("the minimum")?;
    l.expect(b'|', "`|` after the minimum")?;
    let max = l.float("the maximum")?;
    l.expect(b']', "`]` after the maximum")?;
    let unit = l.string("the unit string")?.to_owned();
    let mut receivers = Vec::new();
    loop {
        l.skip_ws();
        match l.peek() {
            None => break,
            Some(b',') => l.pos += 1,
            Some(_) => receivers.push(l.ident("a receiving node")?.to_owned()),
        }
    }
    if scale == 0.0 {
        return Err(l.error(format!("signal `{name}` has scale 0")));
    }
    if !(1..=64).contains(&length) {
        return Err(l.error(format!(
            "signal `{name}` is {length} bits long, expected 1 to 64"
        )));
    }
    let bits = 8 * message.size();
    let end = match byte_order {
        ByteOrder::LittleEndian => start.saturating_add(length),
        ByteOrder::BigEndian if start < bits as u64 => {
            u64::from(network_bit(start as u32)) + length
        }
        ByteOrder::BigEndian => u64::MAX,
    };
    if end > bits as u64 {
        let layout = match byte_order {
            ByteOrder::LittleEndian => "Intel, LSB",
            ByteOrder::BigEndian => "Motorola, MSB",
        };
        return Err(l.error(format!(
            "signal `{name}` ({layout} at bit {start}, {length} bits) does not fit the {}-byte \
             message `{}`",
            message.size(),
            message.name
        )));
    }
    if message.signals.iter().any(|s| &*s.name == name) {
        return Err(l.error(format!(
            "duplicate signal `{name}` in message `{}`",
            message.name
        )));
    }
    let signal = Signal {
        name: name.into(),
        start_bit: start as u16,
        length: length as u8,
        place: Placement::new(start as u16, length as u8, byte_order),
        byte_order,
        value_type,
        scale,
        offset,
        min,
        max,
        unit,
        receivers,
        multiplex,
        selector: None,
        short_name: None,
    };
    message.signals.push(signal);
    Ok(())
}

/// A cursor over one line of the file.
struct Line<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
    file: &'a str,
}

impl<'a> Line<'a> {
    fn error(&self, message: String) -> DbcError {
        DbcError {
            file: self.file.to_owned(),
            line: self.line,
            message,
        }
    }

    /// "expected {what}, found {the next token or end of line}".
    fn error_found(&self, what: &str) -> DbcError {
        let rest = self.s.get(self.pos..).unwrap_or("").trim_start();
        let found = if rest.is_empty() {
            "end of line".to_owned()
        } else {
            let token: String = rest
                .split_whitespace()
                .next()
                .unwrap_or(rest)
                .chars()
                .take(20)
                .collect();
            format!("`{token}`")
        };
        self.error(format!("expected {what}, found {found}"))
    }

    fn skip_ws(&mut self) {
        let bytes = self.s.as_bytes();
        while bytes.get(self.pos).is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.s.len()
    }

    fn end(&mut self) -> Result<(), DbcError> {
        if self.at_end() {
            Ok(())
        } else {
            Err(self.error_found("end of line"))
        }
    }

    fn expect(&mut self, c: u8, what: &str) -> Result<(), DbcError> {
        self.skip_ws();
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error_found(what))
        }
    }

    /// A run of bytes matching `f` (ASCII only, so the slice is on char boundaries).
    fn token(&mut self, f: impl Fn(u8) -> bool) -> &'a str {
        self.skip_ws();
        let from = self.pos;
        let bytes = self.s.as_bytes();
        while bytes.get(self.pos).is_some_and(|&b| b.is_ascii() && f(b)) {
            self.pos += 1;
        }
        &self.s[from..self.pos]
    }

    fn ident(&mut self, what: &str) -> Result<&'a str, DbcError> {
        let word = self.token(is_ident_byte);
        if word.is_empty() {
            return Err(self.error_found(what));
        }
        Ok(word)
    }

    /// The keyword `word`, followed by a non-identifier byte.
    fn word(&mut self, word: &str) -> Result<(), DbcError> {
        let from = self.pos;
        if self.token(is_ident_byte) != word {
            self.pos = from;
            return Err(self.error_found(&format!("`{word}`")));
        }
        Ok(())
    }

    fn integer(&mut self, what: &str) -> Result<u64, DbcError> {
        let from = self.pos;
        let digits = self.token(|b| b.is_ascii_digit());
        digits.parse().map_err(|_| {
            self.pos = from;
            self.error_found(&format!("{what} (an unsigned integer)"))
        })
    }

    fn float(&mut self, what: &str) -> Result<f64, DbcError> {
        let from = self.pos;
        let text =
            self.token(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => {
                self.pos = from;
                Err(self.error_found(&format!("{what} (a finite number)")))
            }
        }
    }

    /// A `"..."` string on this line (`\"` is an escaped quote); returns its raw contents.
    fn string(&mut self, what: &str) -> Result<&'a str, DbcError> {
        self.skip_ws();
        if self.peek() != Some(b'"') {
            return Err(self.error_found(&format!("{what} in double quotes")));
        }
        let bytes = self.s.as_bytes();
        let from = self.pos + 1;
        let mut i = from;
        while let Some(&b) = bytes.get(i) {
            match b {
                b'\\' if bytes.get(i + 1) == Some(&b'"') => i += 2,
                b'"' => {
                    self.pos = i + 1;
                    return Ok(&self.s[from..i]);
                }
                _ => i += 1,
            }
        }
        Err(self.error(format!("{what} is not closed on this line")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = r#"VERSION "1.0"

NS_ :
    NS_DESC_
    CM_
    BA_DEF_
    BA_
    VAL_
    SIG_VALTYPE_

BS_:

BU_: Robot Motors

BO_ 256 Command: 8 Robot
 SG_ intel12 : 3|12@1+ (1,0) [0|0] "" Motors
 SG_ moto12 : 20|12@0+ (1,0) [0|0] "" Motors
 SG_ temp : 40|8@1+ (0.5,-40) [-40|87.5] "degC" Motors,Robot
 SG_ torque : 48|16@1- (0.1,0) [0|0] "Nm" Motors

BO_ 2566844672 Ext: 8 Motors
 SG_ speed : 0|32@1- (1,0) [0|0] "rad/s" Robot
 SG_ status : 39|4@0+ (1,0) [0|15] "" Robot

BO_ 3221225472 VECTOR__INDEPENDENT_SIG_MSG: 0 Vector__XXX
 SG_ orphan : 0|8@1+ (1,0) [0|0] "" Vector__XXX

BO_ 512 Mux: 8 Motors
 SG_ sel M : 0|8@1+ (1,0) [0|0] "" Robot
 SG_ a m0 : 8|16@1+ (1,0) [0|0] "" Robot
 SG_ b m1 : 8|16@1- (1,0) [0|0] "" Robot

CM_ BO_ 256 "Joint command;
a second line with a \"quote\" and ; in it";
CM_ SG_ 256 temp "Motor temperature";
BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_DEF_DEF_ "GenMsgCycleTime" 20;
BA_ "GenMsgCycleTime" BO_ 256 20;
VAL_ 512 sel 0 "A" 1 "B" ;
VAL_TABLE_ Modes 0 "Off" 1 "On" ;
BO_TX_BU_ 256 : Robot,Motors;
SIG_GROUP_ 256 grp 1 : temp torque;
EV_ Env: 0 [0|1] "" 0 1 DUMMY_NODE_VECTOR0 Vector__XXX;
SIG_VALTYPE_ 2566844672 speed : 1;
"#;

    fn example() -> Dbc {
        Dbc::parse(EXAMPLE, "example.dbc").unwrap()
    }

    #[test]
    fn parses_the_example() {
        let dbc = example();
        assert_eq!(dbc.version(), "1.0");
        assert_eq!(dbc.nodes(), ["Robot", "Motors"]);
        let names: Vec<&str> = dbc.messages().iter().map(|m| m.name()).collect();
        assert_eq!(names, ["Command", "Ext", "Mux"]);
        let cmd = dbc.message_by_name("Command").unwrap();
        assert_eq!((cmd.id(), cmd.is_extended(), cmd.size()), (256, false, 8));
        assert_eq!(cmd.sender(), "Robot");
        let temp = cmd.signal("temp").unwrap();
        assert_eq!(temp.unit(), "degC");
        assert_eq!(temp.receivers(), ["Motors", "Robot"]);
        assert_eq!((temp.scale(), temp.offset()), (0.5, -40.0));
        assert_eq!((temp.min(), temp.max()), (-40.0, 87.5));
        assert_eq!(cmd.signal_index("torque"), Some(3));
        let moto = cmd.signal("moto12").unwrap();
        assert_eq!(moto.byte_order(), ByteOrder::BigEndian);
        assert_eq!(moto.value_type(), ValueType::Unsigned);
        assert_eq!(
            cmd.signal("torque").unwrap().value_type(),
            ValueType::Signed
        );
        let mux = dbc.message_by_name("Mux").unwrap();
        assert!(mux.is_multiplexed() && !cmd.is_multiplexed());
        assert_eq!(
            mux.signal("b").unwrap().multiplex(),
            Multiplex::Multiplexed(1)
        );
        assert_eq!(
            mux.signal("sel").unwrap().multiplex(),
            Multiplex::Multiplexor
        );
    }

    #[test]
    fn extended_ids() {
        let dbc = example();
        // 2566844672 = 0x80000000 + 0x18FEF100: bit 31 marks the 29-bit ID 0x18FEF100.
        let ext = dbc.message_by_id(0x18FE_F100, true).unwrap();
        assert_eq!(ext.name(), "Ext");
        assert!(ext.is_extended());
        assert!(dbc.message_by_id(0x18FE_F100, false).is_none());
        assert_eq!(dbc.message_by_id(256, false).unwrap().name(), "Command");
        assert!(dbc.message_by_id(256, true).is_none());
        assert_eq!(
            ext.signal("speed").unwrap().value_type(),
            ValueType::Float32
        );
    }

    fn encode(m: &Message, values: &[(usize, f64)]) -> [u8; 8] {
        let mut data = [0xAA; 8];
        assert_eq!(
            m.encode_into(values.iter().copied(), &mut data).unwrap(),
            m.size()
        );
        data
    }

    #[test]
    fn intel_golden_bytes() {
        let dbc = example();
        let cmd = dbc.message_by_name("Command").unwrap();
        // intel12 = 0xABC at LSB bit 3: 0xABC << 3 = 0x55E0 in the little-endian payload,
        // so byte 0 = 0xE0 and byte 1 = 0x55.
        assert_eq!(encode(cmd, &[(0, 2748.0)]), [0xE0, 0x55, 0, 0, 0, 0, 0, 0]);
        // temp: raw = (25 - (-40)) / 0.5 = 130 = 0x82 in byte 5 (bits 40..47).
        assert_eq!(encode(cmd, &[(2, 25.0)]), [0, 0, 0, 0, 0, 0x82, 0, 0]);
        // torque: -12.3 Nm / 0.1 = raw -123 = 0xFF85 (16-bit two's complement), bytes 6-7
        // little-endian: 0x85, 0xFF.
        assert_eq!(encode(cmd, &[(3, -12.3)]), [0, 0, 0, 0, 0, 0, 0x85, 0xFF]);
        let mut out = [0.0; 4];
        cmd.decode(&[0xE0, 0x55, 0, 0, 0, 0x82, 0x85, 0xFF], &mut out)
            .unwrap();
        assert_eq!(out[0], 2748.0);
        assert_eq!(out[2], 25.0);
        assert!((out[3] + 12.3).abs() < 1e-9, "{}", out[3]);
    }

    #[test]
    fn motorola_golden_bytes() {
        let dbc = example();
        let cmd = dbc.message_by_name("Command").unwrap();
        // moto12 = 0xABC = 1010_1011_1100 with its MSB at sawtooth bit 20 = byte 2, bit 4.
        // The top 5 bits 10101 fill byte 2 bits 4..0 -> 0x15; the low 7 bits 0111100 fill
        // byte 3 bits 7..1 -> 0111_1000 = 0x78.
        assert_eq!(encode(cmd, &[(1, 2748.0)]), [0, 0, 0x15, 0x78, 0, 0, 0, 0]);
        let moto = cmd.signal("moto12").unwrap();
        assert_eq!(moto.extract(&[0, 0, 0x15, 0x78]), Some(0xABC));
        assert_eq!(moto.bytes_needed(), 4);
        assert_eq!(moto.extract(&[0, 0, 0x15]), None);
        // status: 4 bits, MSB at bit 39 = byte 4 bit 7: value 0b1011 -> byte 4 = 1011_0000.
        let ext = dbc.message_by_name("Ext").unwrap();
        assert_eq!(encode(ext, &[(1, 11.0)]), [0, 0, 0, 0, 0xB0, 0, 0, 0]);
        // All four signals together do not disturb each other.
        let all = encode(cmd, &[(0, 2748.0), (1, 2748.0), (2, 25.0), (3, -12.3)]);
        assert_eq!(all, [0xE0, 0x55, 0x15, 0x78, 0, 0x82, 0x85, 0xFF]);
    }

    /// CAN FD messages: 16 and 64 bytes, signals in the upper bytes, both byte orders.
    const FD: &str = r#"VERSION ""

BO_ 400 Fd16: 16 Robot
 SG_ cross : 60|12@1+ (1,0) [0|0] "" Motors
 SG_ moto : 83|20@0+ (1,0) [0|0] "" Motors
 SG_ tail : 112|16@1- (0.5,0) [0|0] "" Motors

BO_ 2147484049 Fd64: 64 Robot
 SG_ intel64 : 261|64@1+ (1,0) [0|0] "" Motors
 SG_ moto64 : 403|64@0+ (1,0) [0|0] "" Motors
 SG_ last : 511|8@0+ (1,0) [0|0] "" Motors
 SG_ f : 0|32@1- (1,0) [0|0] "" Motors

BO_ 402 Fd12: 12 Robot
 SG_ w : 71|32@0- (1,0) [0|0] "" Motors

BO_ 403 Classic: 3 Robot
 SG_ c : 0|24@1+ (1,0) [0|0] "" Motors

SIG_VALTYPE_ 2147484049 f : 1;
"#;

    fn fd() -> Dbc {
        Dbc::parse(FD, "fd.dbc").unwrap()
    }

    fn encode_fd(m: &Message, values: &[(usize, f64)]) -> Vec<u8> {
        let mut data = [0xAA; MAX_FD_LEN];
        let len = m.encode_into_fd(values.iter().copied(), &mut data).unwrap();
        assert_eq!(len, m.size());
        assert!(data[len..].iter().all(|&b| b == 0), "{data:?}");
        data[..len].to_vec()
    }

    #[test]
    fn fd_sizes() {
        let dbc = fd();
        let sizes: Vec<(usize, bool)> = dbc
            .messages()
            .iter()
            .map(|m| (m.size(), m.is_fd()))
            .collect();
        assert_eq!(sizes, [(16, true), (64, true), (12, true), (3, false)]);
        for size in [0, 1, 8, 12, 16, 20, 24, 32, 48, 64] {
            let text = format!("BO_ 1 M: {size} X\n");
            assert_eq!(Dbc::parse(&text, "x").unwrap().messages()[0].size(), size);
        }
        // J1939 parameter groups: any length up to 1785 bytes, read as cantools reads them, but
        // not one frame (the codec refuses to send them; encode_into_fd refuses them).
        for size in [
            9, 10, 11, 13, 15, 17, 25, 33, 47, 49, 63, 65, 128, 256, 1785,
        ] {
            let dbc = Dbc::parse(&format!("BO_ 1 M: {size} X\n"), "x").unwrap();
            let m = &dbc.messages()[0];
            assert_eq!(
                (m.size(), m.is_fd(), m.fits_one_frame()),
                (size, true, false)
            );
            let mut data = [0u8; MAX_FD_LEN];
            assert!(matches!(
                m.encode_into_fd([], &mut data),
                Err(SignalError::NotOneFrame { .. })
            ));
        }
        for size in [1786, 4096] {
            let e = parse_err(&format!("BO_ 1 M: {size} X\n"));
            assert!(
                e.contains(&format!("line 1: message `M` is {size} bytes"))
                    && e.contains("at most 1785 bytes"),
                "{e}"
            );
        }
    }

    #[test]
    fn fd16_golden_bytes() {
        let dbc = fd();
        let m = dbc.message_by_name("Fd16").unwrap();
        // cross = 0xABC, Intel, LSB at bit 60 = byte 7 bit 4: the low nibble 0xC fills byte 7
        // bits 4..7 (0xC0), the high byte 0xAB is byte 8.
        let mut want = [0u8; 16];
        want[7] = 0xC0;
        want[8] = 0xAB;
        assert_eq!(encode_fd(m, &[(0, 2748.0)]), want);
        // moto = 0xABCDE, Motorola, MSB at bit 83 = byte 10 bit 3: its top 4 bits 0xA fill
        // byte 10 bits 3..0, then 0xBC and 0xDE fill bytes 11 and 12.
        let mut want = [0u8; 16];
        want[10..13].copy_from_slice(&[0x0A, 0xBC, 0xDE]);
        assert_eq!(encode_fd(m, &[(1, 703710.0)]), want);
        // tail = -1.0 / 0.5 = raw -2 = 0xFFFE, little-endian in bytes 14 and 15.
        let all = encode_fd(m, &[(0, 2748.0), (1, 703710.0), (2, -1.0)]);
        assert_eq!(
            all,
            [0, 0, 0, 0, 0, 0, 0, 0xC0, 0xAB, 0, 0x0A, 0xBC, 0xDE, 0, 0xFE, 0xFF]
        );
        let mut out = [0.0; 3];
        m.decode(&all, &mut out).unwrap();
        assert_eq!(out, [2748.0, 703710.0, -1.0]);
        let (cross, moto) = (&m.signals()[0], &m.signals()[1]);
        assert_eq!((cross.bytes_needed(), moto.bytes_needed()), (9, 13));
        assert_eq!(cross.extract(&all[..9]), Some(0xABC));
        assert_eq!(cross.extract(&all[..8]), None);
        assert_eq!(moto.extract(&all[..13]), Some(0xABCDE));
        assert_eq!(moto.extract(&all[..12]), None);
        // The classic buffer refuses a CAN FD message and is left alone.
        let mut classic = [7u8; 8];
        let e = m.encode_into([(0, 1.0)], &mut classic).unwrap_err();
        assert_eq!(
            e,
            SignalError::TooLongForClassic {
                message: "Fd16".into(),
                size: 16
            }
        );
        assert!(e.to_string().contains("`Fd16` is 16 bytes"), "{e}");
        assert_eq!(classic, [7; 8]);
        assert!(matches!(
            m.decode(&all[..15], &mut out),
            Err(SignalError::TooShort {
                len: 15,
                size: 16,
                ..
            })
        ));
    }

    #[test]
    fn fd64_golden_bytes() {
        let dbc = fd();
        let m = dbc.message_by_id(401, true).unwrap();
        assert_eq!(m.name(), "Fd64");
        let v: u64 = 0xFEDC_BA98_7654_3210;
        // intel64, LSB at bit 261 = byte 32 bit 5: v << 5 = 0x1F_DB97_530E_CA86_4200, nine
        // bytes little-endian from byte 32.
        let s = &m.signals()[0];
        let mut data = [0u8; 64];
        s.insert(v, &mut data);
        let mut want = [0u8; 64];
        want[32..41].copy_from_slice(&[0x00, 0x42, 0x86, 0xCA, 0x0E, 0x53, 0x97, 0xDB, 0x1F]);
        assert_eq!(data, want);
        assert_eq!(s.extract(&data), Some(v));
        assert_eq!(s.bytes_needed(), 41);
        // moto64, MSB at bit 403 = byte 50 bit 3: the nine bytes 50..58 read big-endian hold v
        // from their 4th bit, i.e. v << 4 = 0x0F_EDCB_A987_6543_2100.
        let s = &m.signals()[1];
        let mut data = [0u8; 64];
        s.insert(v, &mut data);
        let mut want = [0u8; 64];
        want[50..59].copy_from_slice(&[0x0F, 0xED, 0xCB, 0xA9, 0x87, 0x65, 0x43, 0x21, 0x00]);
        assert_eq!(data, want);
        assert_eq!(s.extract(&data), Some(v));
        assert_eq!(s.bytes_needed(), 59);
        // Inserting into a payload that ends mid-signal drops the bits past its end.
        let mut short = [0u8; 54];
        s.insert(v, &mut short);
        assert_eq!(short[50..], [0x0F, 0xED, 0xCB, 0xA9]);
        assert_eq!(s.extract(&short), None);
        // last: Motorola, MSB at bit 511 = byte 63 bit 7, the whole last byte. f: float32.
        let bytes = encode_fd(m, &[(2, 165.0), (3, 1.5)]);
        let mut want = [0u8; 64];
        want[63] = 0xA5;
        want[2..4].copy_from_slice(&[0xC0, 0x3F]);
        assert_eq!(bytes, want);
        let mut out = [0.0; 4];
        m.decode(&bytes, &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0, 165.0, 1.5]);
        // Extra bytes after the payload are ignored.
        let mut long = bytes.clone();
        long.extend([0xFF; 8]);
        m.decode(&long, &mut out).unwrap();
        assert_eq!(out, [0.0, 0.0, 165.0, 1.5]);
        // Motorola signed, 32 bits from byte 8 bit 7: -2 = 0xFFFFFFFE in bytes 8..11.
        let w = dbc.message_by_name("Fd12").unwrap();
        assert_eq!(
            encode_fd(w, &[(0, -2.0)]),
            [0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFE]
        );
    }

    #[test]
    fn classic_messages_encode_into_both_buffers() {
        let dbc = fd();
        let c = dbc.message_by_name("Classic").unwrap();
        let mut classic = [0xAA; 8];
        assert_eq!(c.encode_into([(0, 0x123456 as f64)], &mut classic), Ok(3));
        assert_eq!(classic, [0x56, 0x34, 0x12, 0, 0, 0, 0, 0]);
        assert_eq!(encode_fd(c, &[(0, 0x123456 as f64)]), [0x56, 0x34, 0x12]);
        let example = example();
        for m in example.messages() {
            let values: Vec<(usize, f64)> = (0..m.signals().len()).map(|i| (i, 1.0)).collect();
            let mut classic = [0xAA; 8];
            let mut long = [0xAA; MAX_FD_LEN];
            let a = m.encode_into(values.iter().copied(), &mut classic);
            let b = m.encode_into_fd(values.iter().copied(), &mut long);
            assert_eq!(a, b);
            if a.is_ok() {
                assert_eq!(classic[..], long[..8]);
                assert_eq!(long[8..], [0; 56]);
            }
        }
    }

    #[test]
    fn float32_signal() {
        let dbc = example();
        let ext = dbc.message_by_name("Ext").unwrap();
        // 1.5f32 = 0x3FC00000, little-endian in bytes 0-3.
        assert_eq!(encode(ext, &[(0, 1.5)]), [0, 0, 0xC0, 0x3F, 0, 0, 0, 0]);
        let speed = ext.signal("speed").unwrap();
        assert_eq!(speed.raw_to_physical(0xBF80_0000), -1.0);
        // Not rounded to an integer; rounded to f32.
        assert_eq!(
            speed.physical_to_raw(0.1).unwrap(),
            u64::from(0.1f32.to_bits())
        );
        assert!(matches!(
            speed.physical_to_raw(1e39),
            Err(SignalError::NotRepresentable { .. })
        ));
    }

    #[test]
    fn rounding_is_half_to_even_like_python() {
        let dbc = example();
        let temp = dbc
            .message_by_name("Command")
            .unwrap()
            .signal("temp")
            .unwrap();
        // (v + 40) / 0.5: -39.75 -> 0.5 -> 0, -39.25 -> 1.5 -> 2, -38.75 -> 2.5 -> 2.
        assert_eq!(temp.physical_to_raw(-39.75).unwrap(), 0);
        assert_eq!(temp.physical_to_raw(-39.25).unwrap(), 2);
        assert_eq!(temp.physical_to_raw(-38.75).unwrap(), 2);
        assert_eq!(temp.physical_to_raw(-38.7).unwrap(), 3);
        // cantools' tolerance: 1e-6 * scale past the maximum is accepted.
        assert_eq!(temp.physical_to_raw(87.5 + 1e-7).unwrap(), 255);
    }

    #[test]
    fn encode_errors_name_signal_value_and_range() {
        let dbc = example();
        let cmd = dbc.message_by_name("Command").unwrap();
        let temp = cmd.signal("temp").unwrap();
        let err = temp.physical_to_raw(90.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signal `temp`: value 90 is outside the DBC range [-40, 87.5]"
        );
        let e = temp.physical_to_raw(f64::NAN).unwrap_err().to_string();
        assert!(e.contains("temp") && e.contains("NaN"), "{e}");
        let torque = cmd.signal("torque").unwrap();
        // 16-bit signed at 0.1: [-3276.8, 3276.7].
        assert_eq!(torque.physical_to_raw(3276.7).unwrap(), 0x7FFF);
        assert_eq!(torque.physical_to_raw(-3276.8).unwrap(), 0x8000);
        let e = torque.physical_to_raw(3276.8).unwrap_err().to_string();
        assert!(
            e.contains("`torque`") && e.contains("3276.8") && e.contains("16 bits"),
            "{e}"
        );
        assert!(cmd
            .signal("intel12")
            .unwrap()
            .physical_to_raw(-1.0)
            .is_err());
        assert!(cmd
            .signal("intel12")
            .unwrap()
            .physical_to_raw(4096.0)
            .is_err());
        assert_eq!(
            cmd.signal("intel12")
                .unwrap()
                .physical_to_raw(4095.0)
                .unwrap(),
            4095
        );
        // A failed encode leaves the buffer alone.
        let mut data = [7u8; 8];
        let e = cmd
            .encode_into([(0, 1.0), (9, 1.0)], &mut data)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "message `Command` has no signal 9 (it has 4)"
        );
        assert_eq!(data, [7; 8]);
        let mux = dbc.message_by_name("Mux").unwrap();
        assert!(matches!(
            mux.encode_into([(0, 1.0)], &mut data),
            Err(SignalError::Multiplexed { .. })
        ));
    }

    #[test]
    fn decode_checks_lengths_and_multiplexing() {
        let dbc = example();
        let cmd = dbc.message_by_name("Command").unwrap();
        let mut out = [0.0; 4];
        assert!(matches!(
            cmd.decode(&[0; 7], &mut out),
            Err(SignalError::TooShort {
                len: 7,
                size: 8,
                ..
            })
        ));
        assert!(cmd.decode(&[0; 8], &mut out[..3]).is_err());
        let mux = dbc.message_by_name("Mux").unwrap();
        let mut out = [0.0; 3];
        mux.decode(&[1, 0xFE, 0xFF, 0, 0, 0, 0, 0], &mut out)
            .unwrap();
        assert_eq!(out[0], 1.0);
        assert!(out[1].is_nan());
        assert_eq!(out[2], -2.0);
        mux.decode(&[0, 0xFE, 0xFF, 0, 0, 0, 0, 0], &mut out)
            .unwrap();
        assert_eq!(out[1], 65534.0);
        assert!(out[2].is_nan());
    }

    fn parse_err(text: &str) -> String {
        Dbc::parse(text, "robot.dbc").unwrap_err().to_string()
    }

    const HEAD: &str = "VERSION \"\"\n\nBO_ 256 M: 8 X\n";

    #[test]
    fn errors_name_file_line_and_expectation() {
        let cases: &[(&str, &str)] = &[
            (" SG_ a : 0 8@1+ (1,0) [0|0] \"\" X\n", "line 4: expected `|` after the start bit, found `8@1+`"),
            (" SG_ a : 0|8@2+ (1,0) [0|0] \"\" X\n", "line 4: expected the byte order"),
            (" SG_ a : 0|8@1+ (0,0) [0|0] \"\" X\n", "line 4: signal `a` has scale 0"),
            (" SG_ a : 0|65@1+ (1,0) [0|0] \"\" X\n", "line 4: signal `a` is 65 bits long"),
            (" SG_ a : 60|8@1+ (1,0) [0|0] \"\" X\n", "line 4: signal `a` (Intel, LSB at bit 60, 8 bits) does not fit the 8-byte message `M`"),
            (" SG_ a : 3|8@0+ (1,0) [0|0] \"\" X\n SG_ b : 60|8@0+ (1,0) [0|0] \"\" X\n", "line 5: signal `b` (Motorola, MSB at bit 60, 8 bits) does not fit"),
            (" SG_ a : 0|8@1+ (1,0) [0|0] \"\" X\n SG_ b : 7|2@1+ (1,0) [0|0] \"\" X\n", "line 5: signal `b` overlaps signal `a` in message `M`"),
            (" SG_ a : 0|8@1+ (1,0) [0|0] \"\" X\n SG_ a : 8|8@1+ (1,0) [0|0] \"\" X\n", "line 5: duplicate signal `a`"),
            (" SG_ a : 0|8@1+ (1,0) [0|0] \"unit X\n", "line 4: the unit string is not closed on this line"),
            (" SG_ a : 0|8@1+ (1,0) [0|inf] \"\" X\n", "line 4: expected the maximum (a finite number), found `inf]`"),
            ("BO_ 256 N: 8 X\n", "line 4: duplicate standard ID 0x100 (message `M` on line 3)"),
            ("BO_ 257 M: 8 X\n", "line 4: duplicate message name `M` (first on line 3)"),
            ("BO_ 2048 N: 8 X\n", "line 4: standard ID 0x800 of message `N` exceeds 11 bits"),
            ("BO_ 2684354560 N: 8 X\n", "line 4: extended ID 0x20000000 of message `N` exceeds 29 bits"),
            ("BO_ 300 N: 1786 X\n", "line 4: message `N` is 1786 bytes: a DBC message is at most 1785 bytes"),
            ("BO_ 300 N: 9 X\n SG_ a : 72|1@1+ (1,0) [0|0] \"\" X\n", "line 5: signal `a` (Intel, LSB at bit 72, 1 bits) does not fit the 9-byte message `N`"),
            ("BO_ 300 N: 99999999999999999999 X\n", "line 4: expected the message size in bytes"),
            ("BO_ 300 N: 18446744073709551615 X\n", "line 4: message `N` is 18446744073709551615 bytes"),
            ("BO_ 300 N: 16 X\n SG_ a : 121|8@1+ (1,0) [0|0] \"\" X\n", "line 5: signal `a` (Intel, LSB at bit 121, 8 bits) does not fit the 16-byte message `N`"),
            ("BO_ 300 N: 64 X\n SG_ a : 507|64@0+ (1,0) [0|0] \"\" X\n", "line 5: signal `a` (Motorola, MSB at bit 507, 64 bits) does not fit the 64-byte message `N`"),
            ("BO_ 300 N: 64 X\n SG_ a : 500|8@1+ (1,0) [0|0] \"\" X\n SG_ b : 503|1@0+ (1,0) [0|0] \"\" X\n", "line 6: signal `b` overlaps signal `a` in message `N`"),
            ("\nCM_ \"open\nstill open;\n", "line 5: string opened here is never closed"),
            ("\nCM_ BO_ 256 \"no semicolon\"\nBO_ 300 N: 8 X\n", "line 5: expected `;` to end this `CM_` statement before the `BO_` on line 6"),
            ("SIG_VALTYPE_ 256 zz : 1;\n", "line 4: `SIG_VALTYPE_`: message `M` has no signal `zz`"),
            (" SG_ a : 0|16@1+ (1,0) [0|0] \"\" X\nSIG_VALTYPE_ 256 a : 1;\n", "line 5: signal `a` is 16 bits, a float32 signal must be 32"),
            ("FOO_ bar;\n", "line 4: unknown DBC keyword `FOO_`"),
            (" SG_ b m1 : 0|8@1+ (1,0) [0|0] \"\" X\n", "line 3: signal `b` of message `M` is multiplexed but the message has no multiplexer"),
        ];
        for (tail, expected) in cases {
            let msg = parse_err(&format!("{HEAD}{tail}"));
            assert!(msg.starts_with("DBC `robot.dbc` line "), "{msg}");
            assert!(msg.contains(expected), "expected {expected:?} in {msg:?}");
        }
        assert!(parse_err(" SG_ a : 0|8@1+ (1,0) [0|0] \"\" X\n")
            .contains("line 1: `SG_` outside a message"));
    }

    #[test]
    fn multiplexed_signals_may_overlap_each_other_only() {
        let ok = format!("{HEAD} SG_ s M : 0|8@1+ (1,0) [0|0] \"\" X\n SG_ a m0 : 8|8@1+ (1,0) [0|0] \"\" X\n SG_ b m1 : 8|8@1+ (1,0) [0|0] \"\" X\n");
        assert!(Dbc::parse(&ok, "x").is_ok());
        let same = ok.replace("b m1", "b m0");
        assert!(parse_err(&same).contains("overlaps"));
        let on_switch = ok.replace("b m1 : 8|8", "b m1 : 4|8");
        assert!(parse_err(&on_switch).contains("overlaps signal `s`"));
    }

    #[test]
    fn skipped_statements_and_comments() {
        let text = "// a comment\nVERSION \"x\"\nNS_ :\n\tCM_\n\tBA_\nBS_:\nBU_:\nCM_ \"multi\nline\";\nBO_ 1 A: 1 X\n SG_ s : 0|8@1+ (1,0) [0|0] \"\" X\n";
        let dbc = Dbc::parse(text, "x").unwrap();
        assert_eq!(dbc.messages().len(), 1);
        assert_eq!(dbc.messages()[0].signals().len(), 1);
        // Windows line ends and a BOM.
        let crlf = format!("\u{FEFF}{}", text.replace('\n', "\r\n"));
        assert_eq!(Dbc::parse(&crlf, "x").unwrap(), dbc);
    }

    /// `//` comments after statements (issue 15, kind 4): on `VERSION`, `BU_`, `BO_`, `SG_`
    /// lines and after skipped statements; `//` inside a string is text.
    #[test]
    fn comments_after_statements() {
        let text = "VERSION \"v\" // version\nNS_ : // symbols\n\tCM_ // comment\nBS_: // rates\nBU_: A B // nodes\nBO_ 1 M: 8 A // message\n SG_ s : 0|8@1+ (1,0) [0|0] \"u//nit\" B // signal\n SG_ t : 8|8@1+ (1,0) [0|0] \"\" B//tight\nCM_ SG_ 1 s \"a // b ; c\"; // after\nVAL_ 1 s 0 \"zero\" // a comment with ; and \"quote\n 1 \"one\";\n";
        let dbc = Dbc::parse(text, "c.dbc").unwrap();
        assert_eq!(dbc.version(), "v");
        assert_eq!(dbc.nodes(), ["A", "B"]);
        let m = &dbc.messages()[0];
        assert_eq!((m.sender(), m.signals().len()), ("A", 2));
        assert_eq!(m.signals()[0].unit(), "u//nit");
        assert_eq!(m.signals()[1].receivers(), ["B"]);
    }

    /// Extended multiplexing: `SG_MUL_VAL_` says which multiplexer values select a signal, so
    /// signals under different values of different multiplexers may share bits. Without those
    /// lines the same file is refused, as cantools refuses it (both `m2`, one `M`).
    #[test]
    fn extended_multiplexing() {
        let text = include_str!("../../tests/data/dbc/extended_mux.dbc");
        let dbc = Dbc::parse(text, "x.dbc").unwrap();
        let m = dbc.message_by_name("ArmDiag").unwrap();
        let idx = |n: &str| m.signal_index(n).unwrap();
        assert_eq!(
            m.signals()[idx("TempA")].selector(),
            Some((idx("SubPage"), &[(2, 2)][..]))
        );
        assert_eq!(
            m.signals()[idx("Volts")].selector(),
            Some((idx("Page"), &[(0, 0)][..]))
        );
        // Page 1, SubPage 2: TempA; Page 2: Errors; Page 1 SubPage 3: TempB.
        let active = |data: [u8; 8]| -> Vec<&str> {
            (0..m.signals().len())
                .filter(|&i| m.is_active(i, &data))
                .map(|i| m.signals()[i].name())
                .collect()
        };
        assert_eq!(
            active([1, 2, 0, 0, 0, 0, 0, 0]),
            ["Page", "SubPage", "TempA"]
        );
        assert_eq!(
            active([1, 3, 0, 0, 0, 0, 0, 0]),
            ["Page", "SubPage", "TempB"]
        );
        assert_eq!(active([2, 3, 0, 0, 0, 0, 0, 0]), ["Page", "Errors"]);
        assert_eq!(active([0, 2, 0, 0, 0, 0, 0, 0]), ["Page", "Volts"]);
        let mut out = [0.0; 6];
        m.decode(&[2, 3, 7, 0, 0, 0, 0, 0], &mut out).unwrap();
        assert_eq!(out[idx("Errors")], 7.0);
        assert!(out[idx("TempA")].is_nan() && out[idx("Volts")].is_nan());
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("SG_MUL_VAL_"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            parse_err(&without).contains("overlaps"),
            "{}",
            parse_err(&without)
        );
        // Errors in SG_MUL_VAL_ lines name the line.
        let bad = text.replace(
            "SG_MUL_VAL_ 512 TempA SubPage 2-2;",
            "SG_MUL_VAL_ 512 TempA Nope 2-2;",
        );
        assert!(parse_err(&bad).contains("`SG_MUL_VAL_`: message `ArmDiag` has no signal `Nope`"));
        let bad = text.replace(
            "SG_MUL_VAL_ 512 TempA SubPage 2-2;",
            "SG_MUL_VAL_ 512 TempA Volts 2-2;",
        );
        assert!(parse_err(&bad).contains("`Volts` of message `ArmDiag` is not a multiplexer"));
        let bad = text.replace(
            "SG_MUL_VAL_ 512 TempA SubPage 2-2;",
            "SG_MUL_VAL_ 512 TempA SubPage 3-2;",
        );
        assert!(parse_err(&bad).contains("range 3-2 is empty"));
        let bad = text.replace(
            "SG_MUL_VAL_ 512 SubPage Page 1-1;",
            "SG_MUL_VAL_ 512 SubPage SubPage 1-1;",
        );
        assert!(parse_err(&bad).contains("is not a multiplexer"));
    }

    /// A lone extended-multiplexed signal whose multiplexer the file does not give parses (it is
    /// never selected); multiplexers that select each other are refused.
    #[test]
    fn multiplexer_edge_cases() {
        let dbc = Dbc::parse(
            &format!("{HEAD} SG_ a m0M : 0|8@1+ (1,0) [0|0] \"\" X\n"),
            "x",
        )
        .unwrap();
        let m = &dbc.messages()[0];
        assert!(!m.is_active(0, &[0; 8]));
        let looped = format!(
            "{HEAD} SG_ a m0M : 0|8@1+ (1,0) [0|0] \"\" X\n SG_ b m0M : 8|8@1+ (1,0) [0|0] \"\" X\n\
             SG_MUL_VAL_ 256 a b 0-0;\nSG_MUL_VAL_ 256 b a 0-0;\n"
        );
        assert!(
            parse_err(&looped).contains("select each other in a loop"),
            "{}",
            parse_err(&looped)
        );
    }

    /// `SystemMessageLongSymbol` / `SystemSignalLongSymbol`: the long name is the name, the
    /// short one still finds the message or signal.
    #[test]
    fn long_names() {
        let text = include_str!("../../tests/data/dbc/long_names.dbc");
        let dbc = Dbc::parse(text, "l.dbc").unwrap();
        let m = dbc
            .message_by_name("ArmCommandShoulderAndElbowJointTargets")
            .unwrap();
        assert_eq!(m.short_name(), Some("ArmCommandShoulderAndElbowJo"));
        assert_eq!(dbc.message_by_name("ArmCommandShoulderAndElbowJo"), Some(m));
        let s = &m.signals()[0];
        assert_eq!(s.name(), "ShoulderPanTargetPositionRadians");
        assert_eq!(m.signal_index("ShoulderPanTargetPositionRa"), Some(0));
        assert_eq!(m.signals()[1].short_name(), None);
        let bad = text.replace("\"ShoulderPanTargetPositionRadians\"", "\"has space\"");
        assert!(parse_err(&bad).contains("long name `has space`"));
    }

    /// A random signal that fits a message of `size` bytes: (start bit, length, Intel, signed).
    fn layout_in(size: usize) -> impl Strategy<Value = (u16, u8, bool, bool)> {
        let max_len = (8 * size).min(64) as u8;
        (
            1u8..=max_len,
            any::<bool>(),
            any::<bool>(),
            any::<prop::sample::Index>(),
        )
            .prop_map(move |(len, intel, signed, at)| {
                let len_u = u32::from(len);
                let bits = 8 * size as u32;
                let start = if intel {
                    at.index((bits - len_u + 1) as usize) as u32
                } else {
                    // MSB in network order 0..=bits-len, written in sawtooth numbering.
                    network_bit(at.index((bits - len_u + 1) as usize) as u32)
                };
                (start as u16, len, intel, signed)
            })
    }

    /// A random signal that fits an 8-byte message.
    fn layout() -> impl Strategy<Value = (u16, u8, bool, bool)> {
        layout_in(8)
    }

    /// A message size other than 0, classic or CAN FD.
    fn any_size() -> impl Strategy<Value = usize> {
        prop::sample::select(vec![1, 2, 3, 5, 8, 12, 16, 20, 24, 32, 48, 64])
    }

    /// A size and a signal that fits it.
    fn sized_layout() -> impl Strategy<Value = (usize, (u16, u8, bool, bool))> {
        any_size().prop_flat_map(|size| (Just(size), layout_in(size)))
    }

    fn signal_line(
        name: &str,
        (start, len, intel, signed): (u16, u8, bool, bool),
        scale: f64,
        offset: f64,
    ) -> String {
        format!(
            " SG_ {name} : {start}|{len}@{}{} ({scale:?},{offset:?}) [0|0] \"\" X\n",
            if intel { 1 } else { 0 },
            if signed { '-' } else { '+' }
        )
    }

    fn one_signal(layout: (u16, u8, bool, bool), scale: f64, offset: f64) -> Dbc {
        one_signal_in(8, layout, scale, offset)
    }

    fn one_signal_in(size: usize, layout: (u16, u8, bool, bool), scale: f64, offset: f64) -> Dbc {
        let text = format!(
            "BO_ 1 M: {size} X\n{}",
            signal_line("s", layout, scale, offset)
        );
        Dbc::parse(&text, "prop").unwrap()
    }

    fn ones(bytes: &[u8]) -> u32 {
        bytes.iter().map(|b| b.count_ones()).sum()
    }

    /// Mutations of a valid file.
    fn mutate(text: &str, ops: &[(u8, usize, u8)]) -> String {
        let mut bytes = text.as_bytes().to_vec();
        for &(op, at, byte) in ops {
            let i = at % (bytes.len() + 1);
            match op % 5 {
                0 if i < bytes.len() => bytes[i] ^= byte | 1,
                1 => bytes.truncate(i),
                2 => bytes.insert(i, byte),
                3 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ => {
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    let mut lines: Vec<&str> = text.lines().collect();
                    if lines.len() > 1 {
                        let j = usize::from(byte) % lines.len();
                        let n = lines.len();
                        lines.swap(i % n, j);
                    }
                    bytes = lines.join("\n").into_bytes();
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    proptest! {
        #[test]
        fn raw_bits_round_trip(
            (size, layout) in sized_layout(),
            raw in any::<u64>(),
            junk in proptest::collection::vec(any::<u8>(), 64),
        ) {
            let dbc = one_signal_in(size, layout, 1.0, 0.0);
            let s = &dbc.messages()[0].signals()[0];
            prop_assert!(s.bytes_needed() <= size);
            let mut data = junk[..size].to_vec();
            s.insert(raw, &mut data);
            prop_assert_eq!(s.extract(&data), Some(raw & s.mask()));
            // The other bits are untouched, the signal's are exactly `length` bits.
            let occupied = s.occupancy(MAX_FD_LEN);
            for ((d, j), o) in data.iter().zip(&junk).zip(&occupied) {
                prop_assert_eq!(d & !o, j & !o);
            }
            prop_assert_eq!(ones(&occupied), u32::from(layout.1));
            prop_assert!(occupied[size..].iter().all(|&b| b == 0));
            // The signal's last byte is its `bytes_needed`.
            prop_assert!(occupied[s.bytes_needed() - 1] != 0);
        }

        #[test]
        fn raw_bits_match_a_bit_by_bit_reference((size, layout) in sized_layout(), raw in any::<u64>()) {
            // The definition: Intel bit i of the signal is payload bit start + i (sawtooth);
            // Motorola bit i (from the MSB) is network bit network_bit(start) + i.
            let dbc = one_signal_in(size, layout, 1.0, 0.0);
            let s = &dbc.messages()[0].signals()[0];
            let (start, len, intel, _) = layout;
            let len = u32::from(len);
            let mut want = vec![0u8; size];
            for i in 0..len {
                let (bit_of_raw, net) = if intel {
                    (i, network_bit(u32::from(start) + i))
                } else {
                    (len - 1 - i, network_bit(u32::from(start)) + i)
                };
                if (raw >> bit_of_raw) & 1 == 1 {
                    want[(net / 8) as usize] |= 0x80 >> (net % 8);
                }
            }
            let mut data = vec![0u8; size];
            s.insert(raw, &mut data);
            prop_assert_eq!(data, want);
        }

        #[test]
        fn physical_round_trip(
            layout in layout(),
            scale in prop::sample::select(vec![1.0, 0.1, 0.01, 2.5, -0.5, 1.0 / 1024.0, 3.0]),
            offset in prop::sample::select(vec![0.0, -40.0, 1000.5, -0.25, 7.0]),
            raw in any::<u64>(),
        ) {
            // Up to 40 bits, where raw * scale + offset is exact enough to round back.
            let layout = (layout.0, layout.1.min(40), layout.2, layout.3);
            let dbc = one_signal(layout, scale, offset);
            let s = &dbc.messages()[0].signals()[0];
            let raw = raw & s.mask();
            let physical = s.raw_to_physical(raw);
            prop_assert_eq!(s.physical_to_raw(physical).unwrap(), raw);
        }

        #[test]
        fn message_round_trip(
            (size, layouts) in any_size().prop_flat_map(|size| (
                Just(size),
                proptest::collection::vec((layout_in(size), prop::sample::select(vec![1.0, 0.1, -0.25]), -50i32..50), 1..12),
            )),
            raws in proptest::collection::vec(any::<u64>(), 12),
        ) {
            // Keep the signals that do not overlap the ones before.
            let head = format!("BO_ 1 M: {size} X\n");
            let mut text = head.clone();
            let mut used = [0u8; MAX_FD_LEN];
            let mut n = 0;
            for (layout, scale, offset) in &layouts {
                let layout = (layout.0, layout.1.min(40), layout.2, layout.3);
                let line = signal_line(&format!("s{n}"), layout, *scale, f64::from(*offset));
                let probe = Dbc::parse(&format!("{head}{line}"), "p").unwrap();
                let bits = probe.messages()[0].signals()[0].occupancy(MAX_FD_LEN);
                if bits.iter().zip(&used).all(|(b, u)| b & u == 0) {
                    used.iter_mut().zip(&bits).for_each(|(u, b)| *u |= b);
                    text.push_str(&line);
                    n += 1;
                }
            }
            // The parser's overlap check agrees: everything kept parses together.
            let dbc = Dbc::parse(&text, "prop").unwrap();
            let m = &dbc.messages()[0];
            let physical: Vec<f64> = m.signals().iter().zip(&raws).map(|(s, r)| s.raw_to_physical(r & s.mask())).collect();
            let mut data = [0xAAu8; MAX_FD_LEN];
            prop_assert_eq!(m.encode_into_fd(physical.iter().copied().enumerate(), &mut data), Ok(size));
            prop_assert!(data[size..].iter().all(|&b| b == 0));
            for (s, r) in m.signals().iter().zip(&raws) {
                prop_assert_eq!(s.extract(&data[..size]), Some(r & s.mask()));
            }
            let mut out = vec![0.0; n];
            m.decode(&data[..size], &mut out).unwrap();
            prop_assert_eq!(&out, &physical);
            // The classic buffer gives the same bytes, or refuses a CAN FD message.
            let mut classic = [0u8; 8];
            let r = m.encode_into(physical.iter().copied().enumerate(), &mut classic);
            if size <= 8 {
                prop_assert_eq!(r, Ok(size));
                prop_assert_eq!(&classic[..], &data[..8]);
            } else {
                let fd_refused = matches!(r, Err(SignalError::TooLongForClassic { .. }));
                prop_assert!(fd_refused);
            }
        }

        #[test]
        fn overlap_check_matches_the_bits(
            (size, (a, b)) in any_size().prop_flat_map(|size| (Just(size), (layout_in(size), layout_in(size)))),
        ) {
            let text = format!(
                "BO_ 1 M: {size} X\n{}{}",
                signal_line("a", a, 1.0, 0.0),
                signal_line("b", b, 1.0, 0.0)
            );
            let (sa, sb) = (
                one_signal_in(size, a, 1.0, 0.0).messages()[0].signals()[0].occupancy(MAX_FD_LEN),
                one_signal_in(size, b, 1.0, 0.0).messages()[0].signals()[0].occupancy(MAX_FD_LEN),
            );
            let overlap = sa.iter().zip(&sb).any(|(x, y)| x & y != 0);
            match Dbc::parse(&text, "p") {
                Ok(_) => prop_assert!(!overlap),
                Err(e) => {
                    prop_assert!(overlap);
                    prop_assert!(e.message.contains("signal `b` overlaps signal `a`"), "{}", e);
                }
            }
        }

        #[test]
        fn parser_never_panics_on_random_text(s in "\\PC*") {
            let _ = Dbc::parse(&s, "fuzz");
        }

        #[test]
        fn parser_never_panics_on_dbc_like_text(s in "((BO_|SG_|CM_|VAL_|NS_|BU_|SIG_VALTYPE_| |[0-9]{1,11}|[|@:;()\\[\\],\"+-]|[a-zA-Z]{1,3}|m[0-9]M?|\n){0,40})") {
            let _ = Dbc::parse(&s, "fuzz");
        }

        #[test]
        fn parser_never_panics_on_mutated_files(
            base in prop::sample::select(vec![EXAMPLE, FD]),
            ops in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..8),
        ) {
            let text = mutate(base, &ops);
            if let Ok(dbc) = Dbc::parse(&text, "fuzz") {
                // Whatever parses can be used without panicking.
                for m in dbc.messages() {
                    let mut out = vec![0.0; m.signals().len()];
                    let _ = m.decode(&[0xFF; 8], &mut out);
                    let _ = m.decode(&[0xFF; MAX_FD_LEN], &mut out);
                    let mut data = [0u8; 8];
                    let _ = m.encode_into((0..m.signals().len()).map(|i| (i, 1.0)), &mut data);
                    let mut data = [0u8; MAX_FD_LEN];
                    let _ = m.encode_into_fd((0..m.signals().len()).map(|i| (i, 1.0)), &mut data);
                }
            }
        }

        #[test]
        fn codec_never_panics_on_random_payloads(data in proptest::collection::vec(any::<u8>(), 0..70), value in any::<f64>()) {
            let (classic, fd) = (example(), fd());
            for m in classic.messages().iter().chain(fd.messages()) {
                let mut out = vec![0.0; m.signals().len()];
                let r = m.decode(&data, &mut out);
                prop_assert_eq!(r.is_ok(), data.len() >= m.size());
                for s in m.signals() {
                    let raw = s.extract(&data);
                    prop_assert_eq!(raw.is_some(), data.len() >= s.bytes_needed());
                    let _ = s.raw_to_physical(raw.unwrap_or(u64::MAX));
                    let _ = s.physical_to_raw(value);
                    let mut copy = data.clone();
                    s.insert(u64::MAX, &mut copy);
                }
            }
        }
    }
}
