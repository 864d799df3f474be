//! Where frames come from: V4L2 devices on Linux ([`v4l2`]) and recorded or synthetic episodes
//! ([`replay`], which also replays joint state). Both implement [`crate::io::Camera`].
//! [`record`] writes episodes from any camera and state source.
//! [`viewpoint`] checks that a camera sees what training saw.

pub mod record;
pub mod replay;
#[cfg(target_os = "linux")]
pub mod v4l2;
pub mod viewpoint;
