//! Control: from a network output to one safe command per tick.
//!
//! [`control_loop`] ticks at the bundle's rate (observation assembly, inference scheduling, one
//! command per tick); [`plan`] turns raw outputs into the action to send now (unnormalize, chunk
//! schedule, temporal ensembling, latency compensation); [`safety`] is the only place a
//! [`safety::SafeCommand`] is made; [`estop`] latches stop inputs.

pub mod control_loop;
pub mod estop;
pub mod plan;
pub mod safety;

pub use control_loop::*;
