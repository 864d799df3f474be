//! Command sinks that are not hardware: for benchmarks and tests.
//!
//! The recording sink is how tests see exactly what would have reached the robot; its capacity
//! is reserved up front so recording does not allocate inside the measured ticks.

use crate::io::{CommandSink, SinkError};
use crate::safety::SafeCommand;

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
