//! Control: from a network output to one safe command per tick.
//!
//! [`control_loop`] ticks at the bundle's rate (observation assembly, inference scheduling, one
//! command per tick); [`plan`] turns raw outputs into the action to send now (unnormalize, chunk
//! schedule, temporal ensembling, latency compensation); [`safety`] is the only place a
//! [`safety::SafeCommand`] is made; [`estop`] latches stop inputs; [`jog`] moves the motors to a
//! target by hand (`reflex can send`) through the same filter; [`notify`] tells systemd the loop is
//! alive (sd_notify watchdog).

pub mod control_loop;
pub mod estop;
pub mod jog;
pub mod notify;
pub mod plan;
pub mod safety;

pub use control_loop::*;
