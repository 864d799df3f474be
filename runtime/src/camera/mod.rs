//! Where frames come from: V4L2 devices on Linux ([`v4l2`]) and recorded or synthetic episodes
//! ([`replay`], which also replays joint state). Both implement [`crate::io::Camera`].
//! [`viewpoint`] checks that a camera sees what training saw.

pub mod replay;
#[cfg(target_os = "linux")]
pub mod v4l2;
pub mod viewpoint;
