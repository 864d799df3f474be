//! Command sinks that are not a bus: a candump log, a null sink for benchmarks, and a recording
//! sink for tests. (The SocketCAN sink is in [`crate::can::socketcan`].)
//!
//! The recording sink is how tests see exactly what would have reached the robot; its capacity
//! is reserved up front so recording does not allocate inside the measured ticks.

use super::candump::{format_candump_line, LINE_BUF};
use super::codec::{Codec, CodecError, Frames};
use crate::control::safety::SafeCommand;
use crate::io::{CommandSink, FaultKind, SinkError};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Drops every command (benchmarks with no CAN output).
#[derive(Debug, Default)]
pub struct NullSink {
    pub sent: u64,
}

impl CommandSink for NullSink {
    fn name(&self) -> &str {
        "null"
    }
    fn send(&mut self, _cmd: &SafeCommand, _now_ns: u64) -> Result<(), SinkError> {
        self.sent += 1;
        Ok(())
    }
}

/// Keeps every command with its send time.
#[derive(Debug)]
pub struct RecordingSink {
    pub sent: Vec<(u64, SafeCommand)>,
}

impl RecordingSink {
    pub fn with_capacity(n: usize) -> Self {
        RecordingSink {
            sent: Vec::with_capacity(n),
        }
    }
}

impl CommandSink for RecordingSink {
    fn name(&self) -> &str {
        "recording"
    }
    fn send(&mut self, cmd: &SafeCommand, now_ns: u64) -> Result<(), SinkError> {
        self.sent.push((now_ns, cmd.clone()));
        Ok(())
    }
}

impl<K: CommandSink + ?Sized> CommandSink for Box<K> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn send(&mut self, cmd: &SafeCommand, now_ns: u64) -> Result<(), SinkError> {
        (**self).send(cmd, now_ns)
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        (**self).flush()
    }
}

/// Longest interface name a [`CandumpSink`] accepts (Linux allows 15; the rest is margin for
/// names of other tools).
const MAX_IFACE_LEN: usize = 64;

/// A [`CommandSink`] that writes the frames of each command (in the bundle's protocol, see
/// [`crate::can::codec`]) to a `candump -l` log instead of a bus: dry runs, replays with `canplayer`,
/// and golden tests. The protocol's start frames (MIT enable) come right before the first
/// command, as on a bus.
///
/// The log's timestamps are wall-clock time, as candump's are, but `send` gets the loop's
/// monotonic time; the sink adds `epoch_offset_ns`, the UNIX time of the monotonic clock's zero
/// (measured once at start by the caller, e.g. `SystemTime::now() - monotonic now`), and
/// truncates to microseconds. A fixed offset keeps the log's timing exactly the loop's timing,
/// immune to wall-clock steps during the run.
pub struct CandumpSink {
    writer: BufWriter<File>,
    path: PathBuf,
    name: String,
    iface: String,
    codec: Codec,
    started: bool,
    epoch_offset_ns: u64,
    frames: Frames,
}

impl CandumpSink {
    /// Creates (truncates) the log at `path`; frames are logged as sent on `iface`.
    pub fn new(
        path: &Path,
        iface: &str,
        codec: Codec,
        epoch_offset_ns: u64,
    ) -> Result<Self, SinkError> {
        let name = format!("candump:{}", path.display());
        if iface.is_empty()
            || iface.len() > MAX_IFACE_LEN
            || !iface.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(SinkError {
                sink: name,
                kind: FaultKind::Fatal,
                message: format!(
                    "interface name `{iface}` must be 1 to {MAX_IFACE_LEN} printable ASCII \
                     characters without spaces"
                ),
            });
        }
        let file = File::create(path).map_err(|e| SinkError {
            sink: name.clone(),
            kind: FaultKind::Fatal,
            message: format!("cannot create `{}`: {e}", path.display()),
        })?;
        Ok(Self {
            writer: BufWriter::new(file),
            path: path.to_owned(),
            name,
            iface: iface.to_owned(),
            codec,
            started: false,
            epoch_offset_ns,
            frames: Frames::new(),
        })
    }

    fn write_frames(&mut self, timestamp_us: u64) -> Result<(), SinkError> {
        let mut line = [0u8; LINE_BUF];
        for frame in &self.frames {
            // The interface name was checked in `new` and the buffer fits the longest line.
            let len =
                format_candump_line(timestamp_us, &self.iface, frame, &mut line[..LINE_BUF - 1])
                    .map_err(|e| SinkError {
                        sink: self.name.clone(),
                        kind: FaultKind::Fatal,
                        message: e.to_string(),
                    })?;
            line[len] = b'\n';
            if let Err(e) = self.writer.write_all(&line[..=len]) {
                return Err(self.io_error(&e));
            }
        }
        Ok(())
    }

    fn codec_error(&self, e: CodecError) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            kind: FaultKind::Fatal,
            message: format!("{} encoding: {e}", self.codec.protocol()),
        }
    }

    fn io_error(&self, e: &std::io::Error) -> SinkError {
        SinkError {
            sink: self.name.clone(),
            kind: FaultKind::Degraded,
            message: format!("cannot write `{}`: {e}", self.path.display()),
        }
    }
}

impl CommandSink for CandumpSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, cmd: &SafeCommand, now_ns: u64) -> Result<(), SinkError> {
        let timestamp_us = now_ns.saturating_add(self.epoch_offset_ns) / 1_000;
        if !self.started {
            if let Err(e) = self.codec.start_frames(&mut self.frames) {
                return Err(self.codec_error(e));
            }
            self.write_frames(timestamp_us)?;
            self.started = true;
        }
        if let Err(e) = self.codec.encode(cmd, &mut self.frames) {
            return Err(self.codec_error(e));
        }
        self.write_frames(timestamp_us)
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        match self.writer.flush() {
            Ok(()) => Ok(()),
            Err(e) => Err(self.io_error(&e)),
        }
    }
}
