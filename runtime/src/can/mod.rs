//! CAN: frames, the candump log format, DBC files, motor protocols, and where frames go.
//!
//! Read in this order: [`frame`] (classic and FD frames, reflex's per-joint encoding) ->
//! [`dbc`] (DBC files and an allocation-free signal codec) -> [`protocol`] (one module per motor
//! protocol: per-joint, MIT, DBC) -> [`codec`] (the bundle's protocol behind one type: safe
//! commands to frames, feedback frames to joint state) -> [`sink`] (candump log, null and
//! recording sinks) and [`socketcan`] (the Linux bus: sink, joint-state source, CAN e-stop
//! input). [`candump`] reads and writes can-utils' `candump -l` lines and explains error frames.
//!
//! Dependencies point one way: frame <- candump, dbc <- protocol <- codec <- sink, socketcan.

pub mod candump;
pub mod codec;
pub mod dbc;
pub mod decode;
pub mod frame;
pub mod protocol;
pub mod sink;
#[cfg(target_os = "linux")]
pub mod socketcan;

pub use frame::{
    CanFrame, FrameError, MAX_CLASSIC_LEN, MAX_EXTENDED_ID, MAX_FD_LEN, MAX_STANDARD_ID,
};
