//! CAN frames (classic and FD) and reflex's default per-joint command encoding.
//!
//! # Wire contract: the per-joint encoding (`[can] protocol = "per-joint"`)
//!
//! Each [`SafeCommand`] becomes one classic CAN frame per action dimension `i`, sent in dimension
//! order:
//!
//! | field    | value                                                                  |
//! |----------|------------------------------------------------------------------------|
//! | ID       | `base_id + i`; a standard (11-bit) ID if `<= 0x7FF`, else extended     |
//! | DLC      | 8                                                                      |
//! | data 0-3 | the value, IEEE-754 `f32` little-endian, in the action's unit           |
//! | data 4   | flags: bit 0 = stop (the robot must stop); bits 1-7 are 0 (reserved)   |
//! | data 5   | tick counter: the command's tick modulo 256 (lets a receiver see gaps)  |
//! | data 6-7 | 0 (reserved)                                                           |
//!
//! It is deliberately simple so that a motor controller, a bridge or a bench script can implement
//! it in a few lines; robots with their own protocol get their own encoder next to this one. The
//! decoder is strict (reserved bits must be 0) so that a future version of the contract is never
//! half-understood.
//!
//! [`CanFrame`] is a classic frame (at most 8 data bytes) or a CAN FD frame (0 to 8, 12, 16,
//! 20, 24, 32, 48 or 64 bytes). One type with room for 64 bytes rather than two: a command is at
//! most [`crate::can::codec::MAX_FRAMES`] frames in a fixed buffer (about 5 KiB), and every codec,
//! sink and log handles both kinds the same way.

use crate::control::safety::{SafeCommand, MAX_DIM};

/// The most frames one command, or one start sequence, produces.
pub const MAX_FRAMES: usize = 2 * MAX_DIM;

/// A fixed-capacity list of frames: encoding a tick allocates nothing.
pub type Frames = heapless::Vec<CanFrame, MAX_FRAMES>;

/// Highest standard (11-bit) CAN ID.
pub const MAX_STANDARD_ID: u32 = 0x7FF;
/// Highest extended (29-bit) CAN ID.
pub const MAX_EXTENDED_ID: u32 = 0x1FFF_FFFF;
/// Most data bytes in a classic CAN frame.
pub const MAX_CLASSIC_LEN: usize = 8;
/// Most data bytes in a CAN FD frame.
pub const MAX_FD_LEN: usize = 64;

/// Whether `len` data bytes is a length a CAN FD frame can have.
pub fn is_fd_len(len: usize) -> bool {
    len <= 8 || matches!(len, 12 | 16 | 20 | 24 | 32 | 48 | 64)
}

/// Why a frame cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("CAN ID {id:#X} is out of range for {} frame (max {max:#X})", if *.extended { "an extended" } else { "a standard" })]
    IdOutOfRange { id: u32, extended: bool, max: u32 },
    #[error("{len} data bytes exceed the classic CAN maximum of 8")]
    TooLong { len: usize },
    #[error("{len} data bytes is not a CAN FD length (0 to 8, 12, 16, 20, 24, 32, 48, 64)")]
    FdLength { len: usize },
}

/// A classic CAN frame (data or remote) or a CAN FD data frame, validated on construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanFrame {
    id: u32,
    extended: bool,
    remote: bool,
    fd: bool,
    /// CAN FD bit-rate switch.
    brs: bool,
    len: u8,
    data: [u8; MAX_FD_LEN],
}

impl CanFrame {
    /// A data frame. `id` must fit the ID format (`<= 0x7FF` standard, `<= 0x1FFF_FFFF`
    /// extended), `data` at most 8 bytes.
    pub fn new(id: u32, extended: bool, data: &[u8]) -> Result<Self, FrameError> {
        check_id(id, extended)?;
        if data.len() > MAX_CLASSIC_LEN {
            return Err(FrameError::TooLong { len: data.len() });
        }
        let mut buf = [0u8; MAX_FD_LEN];
        buf[..data.len()].copy_from_slice(data);
        Ok(Self {
            id,
            extended,
            remote: false,
            fd: false,
            brs: false,
            len: data.len() as u8,
            data: buf,
        })
    }

    /// A CAN FD data frame: `data` must have a CAN FD length (0 to 8, 12, 16, 20, 24, 32, 48 or
    /// 64 bytes; the kernel would otherwise pad it); `brs` switches to the data bit rate.
    pub fn new_fd(id: u32, extended: bool, data: &[u8], brs: bool) -> Result<Self, FrameError> {
        check_id(id, extended)?;
        if !is_fd_len(data.len()) || data.len() > MAX_FD_LEN {
            return Err(FrameError::FdLength { len: data.len() });
        }
        let mut buf = [0u8; MAX_FD_LEN];
        buf[..data.len()].copy_from_slice(data);
        Ok(Self {
            id,
            extended,
            remote: false,
            fd: true,
            brs,
            len: data.len() as u8,
            data: buf,
        })
    }

    /// A remote (RTR) frame requesting `dlc` bytes.
    pub fn new_remote(id: u32, extended: bool, dlc: u8) -> Result<Self, FrameError> {
        check_id(id, extended)?;
        if usize::from(dlc) > MAX_CLASSIC_LEN {
            return Err(FrameError::TooLong {
                len: usize::from(dlc),
            });
        }
        Ok(Self {
            id,
            extended,
            remote: true,
            fd: false,
            brs: false,
            len: dlc,
            data: [0; MAX_FD_LEN],
        })
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn is_extended(&self) -> bool {
        self.extended
    }

    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// A CAN FD frame.
    pub fn is_fd(&self) -> bool {
        self.fd
    }

    /// A CAN FD frame sent with bit-rate switching.
    pub fn brs(&self) -> bool {
        self.brs
    }

    /// The data length code: number of data bytes, or bytes requested for a remote frame.
    pub fn dlc(&self) -> u8 {
        self.len
    }

    /// The data bytes (empty for a remote frame).
    pub fn data(&self) -> &[u8] {
        if self.remote {
            &[]
        } else {
            &self.data[..usize::from(self.len)]
        }
    }
}

fn check_id(id: u32, extended: bool) -> Result<(), FrameError> {
    let max = if extended {
        MAX_EXTENDED_ID
    } else {
        MAX_STANDARD_ID
    };
    if id > max {
        return Err(FrameError::IdOutOfRange { id, extended, max });
    }
    Ok(())
}

/// Per-joint flags byte, bit 0: stop.
const FLAG_STOP: u8 = 0x01;

/// The ID and ID format of joint `index` in the per-joint encoding.
pub fn per_joint_id(base_id: u32, index: usize) -> Result<(u32, bool), FrameError> {
    let id = u32::try_from(index)
        .ok()
        .and_then(|i| base_id.checked_add(i))
        .ok_or(FrameError::IdOutOfRange {
            id: u32::MAX,
            extended: true,
            max: MAX_EXTENDED_ID,
        })?;
    let extended = id > MAX_STANDARD_ID;
    check_id(id, extended)?;
    Ok((id, extended))
}

/// Encodes `cmd` in the per-joint encoding (module documentation) into `out`, replacing its
/// contents. Fails only when `base_id + i` leaves the 29-bit ID range; callers check that once at
/// start with [`per_joint_id`] for the last joint.
pub fn encode_per_joint(
    cmd: &SafeCommand,
    base_id: u32,
    out: &mut Frames,
) -> Result<(), FrameError> {
    out.clear();
    let flags = if cmd.is_stop() { FLAG_STOP } else { 0 };
    let tick = cmd.tick() as u8;
    for (i, value) in cmd.values().iter().enumerate() {
        let (id, extended) = per_joint_id(base_id, i)?;
        let v = value.to_le_bytes();
        let data = [v[0], v[1], v[2], v[3], flags, tick, 0, 0];
        // A SafeCommand has at most MAX_DIM values, fewer than the capacity of `out`.
        let _ = out.push(CanFrame::new(id, extended, &data)?);
    }
    Ok(())
}

/// Decodes one per-joint frame for a command of `dims` dimensions starting at `base_id`:
/// `(joint index, value, stop, tick counter)`, or `None` when the frame is not one of them
/// (other ID, wrong ID format, remote, not 8 bytes, reserved bits set).
pub fn decode_per_joint(
    frame: &CanFrame,
    base_id: u32,
    dims: usize,
) -> Option<(usize, f32, bool, u8)> {
    let index = usize::try_from(frame.id().checked_sub(base_id)?).ok()?;
    if index >= dims
        || frame.is_remote()
        || frame.is_fd()
        || frame.is_extended() != (frame.id() > MAX_STANDARD_ID)
    {
        return None;
    }
    let d: &[u8; 8] = frame.data().try_into().ok()?;
    if d[4] & !FLAG_STOP != 0 || d[6] != 0 || d[7] != 0 {
        return None;
    }
    let value = f32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    Some((index, value, d[4] & FLAG_STOP != 0, d[5]))
}
