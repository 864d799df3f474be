//! V4L2 cameras: a [`Camera`] over a Linux video capture device (`/dev/video0`,
//! `/dev/v4l/by-id/usb-...-video-index0`), with memory-mapped streaming.
//!
//! Raw ioctls rather than the `v4l` crate (the usual choice, and the one a design card would
//! name): `v4l`'s streams dequeue one buffer at a time with a blocking `next()`, and the loop needs
//! a non-blocking "take every ready buffer, keep the newest, count the rest as dropped" so a slow
//! tick never reads a stale frame; it also needs the driver's timestamps and sequence numbers,
//! and reopening after an unplug. The few structures involved are stable kernel ABI. The
//! structures are declared here for 64-bit Linux (x86_64, aarch64) and their sizes are checked
//! against the kernel's ioctl numbers at compile time.
//!
//! # Behaviour
//! - **Open** negotiates the bundle's [`CaptureSpec`]: pixel format (YUYV, NV12, GREY, RGB24, MJPEG),
//!   size and frame rate. A format the device does not offer is an error that lists what it
//!   does offer; a size it cannot do exactly is an error naming the size it proposed. A frame
//!   rate it cannot do is only a warning (the loop copes with any rate).
//! - **Buffers**: [`BUFFERS`] mmap buffers are queued at start; the hot path allocates nothing.
//! - **`latest`** dequeues every ready buffer without blocking, requeues all but the newest and
//!   counts the others as dropped (with the gaps in the driver's sequence numbers). If none is
//!   ready it waits in `poll` until the caller's deadline at most. The frame handed out stays
//!   dequeued until the next call.
//! - **Time**: the driver's monotonic timestamp is converted to the loop's clock by its age
//!   (`CLOCK_MONOTONIC` now minus the timestamp), so any loop clock that ticks at the monotonic
//!   rate works.
//! - **Faults**: the device disappearing (`ENODEV`, `EIO`...) is `Degraded`: the camera closes it
//!   and reopens the same path with exponential backoff ([`REOPEN_MIN_NS`] to [`REOPEN_MAX_NS`])
//!   from later calls, so a by-id path finds the camera again under any `/dev/videoN`.
#![allow(unsafe_code)]

use crate::io::{Camera, CameraError, FaultKind, Frame, FrameMeta};
use reflex_models::manifest::{CaptureSpec, PixelFormat};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Buffers requested from the driver: one being filled, one ready, one held by the caller.
pub const BUFFERS: u32 = 3;
/// First reopen attempt after a device was lost.
pub const REOPEN_MIN_NS: u64 = 100_000_000;
/// Longest wait between reopen attempts.
pub const REOPEN_MAX_NS: u64 = 2_000_000_000;

// ---- kernel ABI (include/uapi/linux/videodev2.h) ------------------------------------------

const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
const MEMORY_MMAP: u32 = 1;
const FIELD_NONE: u32 = 1;
const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
const CAP_STREAMING: u32 = 0x0400_0000;
const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
const BUF_FLAG_TIMESTAMP_MASK: u32 = 0x0000_e000;
const BUF_FLAG_TIMESTAMP_MONOTONIC: u32 = 0x0000_2000;
const BUF_FLAG_ERROR: u32 = 0x0000_0040;

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct Capability {
    driver: [u8; 16],
    card: [u8; 32],
    bus_info: [u8; 32],
    version: u32,
    capabilities: u32,
    device_caps: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct FmtDesc {
    index: u32,
    type_: u32,
    flags: u32,
    description: [u8; 32],
    pixelformat: u32,
    mbus_code: u32,
    reserved: [u32; 3],
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct PixFormat {
    width: u32,
    height: u32,
    pixelformat: u32,
    field: u32,
    bytesperline: u32,
    sizeimage: u32,
    colorspace: u32,
    priv_: u32,
    flags: u32,
    ycbcr_enc: u32,
    quantization: u32,
    xfer_func: u32,
}

/// `fmt` is a union of 200 bytes whose largest members hold pointers: 8-byte aligned.
#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
union FormatUnion {
    pix: PixFormat,
    raw: [u8; 200],
    _align: [u64; 25],
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct Format {
    type_: u32,
    fmt: FormatUnion,
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct RequestBuffers {
    count: u32,
    type_: u32,
    memory: u32,
    capabilities: u32,
    flags: u8,
    reserved: [u8; 3],
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct Timecode {
    type_: u32,
    flags: u32,
    frames: u8,
    seconds: u8,
    minutes: u8,
    hours: u8,
    userbits: [u8; 4],
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
union BufferM {
    offset: u32,
    userptr: libc::c_ulong,
    fd: i32,
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct Buffer {
    index: u32,
    type_: u32,
    bytesused: u32,
    flags: u32,
    field: u32,
    timestamp: libc::timeval,
    timecode: Timecode,
    sequence: u32,
    memory: u32,
    m: BufferM,
    length: u32,
    reserved2: u32,
    request_fd: i32,
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct Fract {
    numerator: u32,
    denominator: u32,
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct CaptureParm {
    capability: u32,
    capturemode: u32,
    timeperframe: Fract,
    extendedmode: u32,
    readbuffers: u32,
    reserved: [u32; 4],
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
union StreamParmUnion {
    capture: CaptureParm,
    raw: [u8; 200],
}

#[repr(C)]
#[allow(dead_code)] // kernel ABI: fields mirror the C structure
#[derive(Clone, Copy)]
struct StreamParm {
    type_: u32,
    parm: StreamParmUnion,
}

/// `_IOC(dir, 'V', nr, size)`.
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((b'V' as u32) << 8) | nr
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;
const IOC_RW: u32 = IOC_READ | IOC_WRITE;

const VIDIOC_QUERYCAP: u32 = ioc(IOC_READ, 0, size_of::<Capability>());
const VIDIOC_ENUM_FMT: u32 = ioc(IOC_RW, 2, size_of::<FmtDesc>());
const VIDIOC_S_FMT: u32 = ioc(IOC_RW, 5, size_of::<Format>());
const VIDIOC_REQBUFS: u32 = ioc(IOC_RW, 8, size_of::<RequestBuffers>());
const VIDIOC_QUERYBUF: u32 = ioc(IOC_RW, 9, size_of::<Buffer>());
const VIDIOC_QBUF: u32 = ioc(IOC_RW, 15, size_of::<Buffer>());
const VIDIOC_DQBUF: u32 = ioc(IOC_RW, 17, size_of::<Buffer>());
const VIDIOC_STREAMON: u32 = ioc(IOC_WRITE, 18, size_of::<i32>());
const VIDIOC_STREAMOFF: u32 = ioc(IOC_WRITE, 19, size_of::<i32>());
const VIDIOC_S_PARM: u32 = ioc(IOC_RW, 22, size_of::<StreamParm>());

// The kernel's own numbers for 64-bit targets: a wrong structure layout fails the build.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(VIDIOC_QUERYCAP == 0x8068_5600);
    assert!(VIDIOC_ENUM_FMT == 0xC040_5602);
    assert!(VIDIOC_S_FMT == 0xC0D0_5605);
    assert!(VIDIOC_REQBUFS == 0xC014_5608);
    assert!(VIDIOC_QUERYBUF == 0xC058_5609);
    assert!(VIDIOC_QBUF == 0xC058_560F);
    assert!(VIDIOC_DQBUF == 0xC058_5611);
    assert!(VIDIOC_STREAMON == 0x4004_5612);
    assert!(VIDIOC_STREAMOFF == 0x4004_5613);
    assert!(VIDIOC_S_PARM == 0xC0CC_5616);
};

/// A V4L2 FourCC code from its four characters.
pub const fn fourcc(code: &[u8; 4]) -> u32 {
    (code[0] as u32) | (code[1] as u32) << 8 | (code[2] as u32) << 16 | (code[3] as u32) << 24
}

/// The V4L2 pixel format of a manifest pixel format.
pub fn pixel_fourcc(format: PixelFormat) -> u32 {
    match format {
        PixelFormat::Yuyv => fourcc(b"YUYV"),
        PixelFormat::Grey => fourcc(b"GREY"),
        PixelFormat::Rgb24 => fourcc(b"RGB3"),
        PixelFormat::Mjpeg => fourcc(b"MJPG"),
        PixelFormat::Nv12 => fourcc(b"NV12"),
    }
}

/// Bytes per pixel of the first plane of the uncompressed formats (`None`: compressed,
/// variable size).
fn bytes_per_pixel(format: PixelFormat) -> Option<u32> {
    match format {
        PixelFormat::Yuyv => Some(2),
        PixelFormat::Grey | PixelFormat::Nv12 => Some(1),
        PixelFormat::Rgb24 => Some(3),
        PixelFormat::Mjpeg => None,
    }
}

/// Bytes of one uncompressed frame (NV12: the Y plane and the half-height U, V plane).
fn frame_bytes(format: PixelFormat, width: u32, height: u32) -> Option<usize> {
    let (w, h) = (width as usize, height as usize);
    match format {
        PixelFormat::Nv12 => Some(w * h * 3 / 2),
        _ => bytes_per_pixel(format).map(|b| w * h * b as usize),
    }
}

/// A FourCC as text (`YUYV`), non-printable bytes as `?`.
pub fn fourcc_str(code: u32) -> String {
    code.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect::<String>()
        .trim_end()
        .to_string()
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// `ioctl` retried on `EINTR`; `Err(errno)` on failure.
///
/// # Safety
/// `arg` must be the structure `request` reads and writes.
unsafe fn xioctl<T>(fd: i32, request: u32, arg: *mut T) -> Result<(), i32> {
    loop {
        // SAFETY: guaranteed by the caller: `arg` points to the structure the request expects.
        let r = unsafe { libc::ioctl(fd, request as _, arg) };
        if r != -1 {
            return Ok(());
        }
        let e = errno();
        if e != libc::EINTR {
            return Err(e);
        }
    }
}

/// Whether `errno` from a capture ioctl means the device is gone (unplugged, driver unbound).
pub fn is_device_lost(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENODEV | libc::ENXIO | libc::EIO | libc::EPIPE | libc::EBADF
    )
}

/// Counts since the camera was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct V4l2Counters {
    /// Frames handed to the caller.
    pub frames: u64,
    /// Frames captured but not handed out: older ready buffers skipped for a newer one, and
    /// gaps in the driver's sequence numbers (frames it dropped itself).
    pub dropped: u64,
    /// Buffers the driver flagged as corrupted, or shorter than a full frame.
    pub bad_buffers: u64,
    /// Times the device was lost.
    pub lost: u64,
    /// Successful reopens after a loss.
    pub reopened: u64,
}

/// Frames lost between the previous frame handed out (sequence `last`) and the one handed out
/// now (`seq`), given that `skipped` older ready buffers were passed over in this call: the
/// sequence gap covers both those and the frames the driver dropped itself. Sequence numbers
/// wrap at 2^32.
pub fn frames_dropped(last: Option<u32>, seq: u32, skipped: u64) -> u64 {
    match last {
        Some(l) => u64::from(seq.wrapping_sub(l).saturating_sub(1)),
        None => skipped,
    }
}

/// The next reopen delay after `current` failed (doubling, within the bounds).
pub fn next_backoff(current: u64) -> u64 {
    (current.saturating_mul(2)).clamp(REOPEN_MIN_NS, REOPEN_MAX_NS)
}

struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are a mapping made by `mmap` in `Device::open` and unmapped only
        // here, once.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// An open, streaming device. Dropping it stops streaming, unmaps the buffers, closes the fd.
struct Device {
    // Field order matters for drop: buffers are unmapped before the fd closes.
    buffers: Vec<Mapping>,
    fd: OwnedFd,
    /// The buffer handed to the caller last, to requeue on the next call.
    held: Option<u32>,
    frame_len: Option<usize>,
}

// SAFETY: the mappings are owned by this device alone and only accessed through `&mut self`.
unsafe impl Send for Device {}

impl Drop for Device {
    fn drop(&mut self) {
        let mut ty = BUF_TYPE_VIDEO_CAPTURE as i32;
        // SAFETY: STREAMOFF takes a pointer to the buffer type. Failure (device gone) is fine.
        let _ = unsafe { xioctl(self.fd.as_raw_fd(), VIDIOC_STREAMOFF, &mut ty) };
    }
}

/// Why a capture call failed.
enum Grab {
    /// The device is gone (errno).
    Lost(i32),
    Transient(String),
}

/// Why opening failed: the kind and a message naming the device.
type OpenError = (FaultKind, String);

impl Device {
    fn open(path: &Path, spec: &CaptureSpec) -> Result<Self, OpenError> {
        let shown = path.display();
        let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            (
                FaultKind::Fatal,
                format!("`{shown}`: path contains a NUL byte"),
            )
        })?;
        // SAFETY: `cpath` is a valid C string; the returned fd is owned below.
        let raw = unsafe {
            libc::open(
                cpath.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            let e = std::io::Error::last_os_error();
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                FaultKind::Degraded
            } else {
                FaultKind::Fatal
            };
            return Err((kind, format!("cannot open: {e}")));
        }
        // SAFETY: `raw` is a freshly opened fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = fd.as_raw_fd();
        let lost_or = |e: i32, what: &str| {
            let kind = if is_device_lost(e) {
                FaultKind::Degraded
            } else {
                FaultKind::Fatal
            };
            (
                kind,
                format!("{what}: {}", std::io::Error::from_raw_os_error(e)),
            )
        };

        // SAFETY (all `zeroed` below): plain C structures for which all-zero is valid.
        let mut cap: Capability = unsafe { std::mem::zeroed() };
        // SAFETY: QUERYCAP fills a `v4l2_capability`.
        unsafe { xioctl(f, VIDIOC_QUERYCAP, &mut cap) }
            .map_err(|e| lost_or(e, "not a V4L2 device (VIDIOC_QUERYCAP)"))?;
        let caps = if cap.capabilities & CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        if caps & CAP_VIDEO_CAPTURE == 0 || caps & CAP_STREAMING == 0 {
            return Err((
                FaultKind::Fatal,
                format!(
                    "`{}` ({}) is not a streaming video capture device (capabilities {caps:#x})",
                    c_str(&cap.card),
                    c_str(&cap.driver)
                ),
            ));
        }

        // The formats the device offers, for the error message.
        let want = pixel_fourcc(spec.format);
        let mut offered = vec![];
        for index in 0..256 {
            let mut d: FmtDesc = unsafe { std::mem::zeroed() };
            d.index = index;
            d.type_ = BUF_TYPE_VIDEO_CAPTURE;
            // SAFETY: ENUM_FMT fills a `v4l2_fmtdesc`.
            if unsafe { xioctl(f, VIDIOC_ENUM_FMT, &mut d) }.is_err() {
                break;
            }
            offered.push(d.pixelformat);
        }
        if !offered.contains(&want) {
            let list: Vec<String> = offered.iter().map(|&c| fourcc_str(c)).collect();
            return Err((
                FaultKind::Fatal,
                format!(
                    "does not offer {} ({}); it offers: {}",
                    fourcc_str(want),
                    spec.format.as_str(),
                    if list.is_empty() {
                        "nothing".into()
                    } else {
                        list.join(", ")
                    }
                ),
            ));
        }

        let mut fmt: Format = unsafe { std::mem::zeroed() };
        fmt.type_ = BUF_TYPE_VIDEO_CAPTURE;
        fmt.fmt.pix = PixFormat {
            width: spec.width,
            height: spec.height,
            pixelformat: want,
            field: FIELD_NONE,
            ..unsafe { std::mem::zeroed() }
        };
        // SAFETY: S_FMT reads and writes a `v4l2_format`.
        unsafe { xioctl(f, VIDIOC_S_FMT, &mut fmt) }.map_err(|e| lost_or(e, "VIDIOC_S_FMT"))?;
        // SAFETY: the driver filled the `pix` member for a VIDEO_CAPTURE format.
        let pix = unsafe { fmt.fmt.pix };
        if (pix.width, pix.height, pix.pixelformat) != (spec.width, spec.height, want) {
            return Err((
                FaultKind::Fatal,
                format!(
                    "asked for {}x{} {}, the device proposes {}x{} {} (the bundle's \
                     cameras.capture must be a mode the camera has: v4l2-ctl --list-formats-ext)",
                    spec.width,
                    spec.height,
                    fourcc_str(want),
                    pix.width,
                    pix.height,
                    fourcc_str(pix.pixelformat)
                ),
            ));
        }
        let frame_len = frame_bytes(spec.format, spec.width, spec.height);
        if let Some(b) = bytes_per_pixel(spec.format) {
            if pix.bytesperline != 0 && pix.bytesperline != spec.width * b {
                return Err((
                    FaultKind::Fatal,
                    format!(
                        "rows are padded ({} bytes per line for {} pixels of {b} bytes): not \
                         supported yet",
                        pix.bytesperline, spec.width
                    ),
                ));
            }
        }

        let mut parm: StreamParm = unsafe { std::mem::zeroed() };
        parm.type_ = BUF_TYPE_VIDEO_CAPTURE;
        parm.parm.capture.timeperframe = Fract {
            numerator: 1,
            denominator: spec.fps.max(1),
        };
        // SAFETY: S_PARM reads and writes a `v4l2_streamparm`.
        match unsafe { xioctl(f, VIDIOC_S_PARM, &mut parm) } {
            Ok(()) => {
                // SAFETY: the driver filled the `capture` member.
                let t = unsafe { parm.parm.capture.timeperframe };
                if t.numerator != 0 && t.denominator != spec.fps * t.numerator {
                    log::warn!(
                        "camera `{shown}`: asked for {} fps, the device runs at {}/{} fps",
                        spec.fps,
                        t.denominator,
                        t.numerator
                    );
                }
            }
            Err(e) => log::warn!(
                "camera `{shown}`: cannot set {} fps: {}",
                spec.fps,
                std::io::Error::from_raw_os_error(e)
            ),
        }

        let mut req = RequestBuffers {
            count: BUFFERS,
            type_: BUF_TYPE_VIDEO_CAPTURE,
            memory: MEMORY_MMAP,
            capabilities: 0,
            flags: 0,
            reserved: [0; 3],
        };
        // SAFETY: REQBUFS reads and writes a `v4l2_requestbuffers`.
        unsafe { xioctl(f, VIDIOC_REQBUFS, &mut req) }
            .map_err(|e| lost_or(e, "VIDIOC_REQBUFS (mmap streaming)"))?;
        if req.count < 2 {
            return Err((
                FaultKind::Fatal,
                format!(
                    "the driver gave {} mmap buffer(s), at least 2 are needed",
                    req.count
                ),
            ));
        }
        let mut dev = Device {
            buffers: Vec::with_capacity(req.count as usize),
            fd,
            held: None,
            frame_len,
        };
        for index in 0..req.count {
            let mut b = new_buffer(index);
            // SAFETY: QUERYBUF reads and writes a `v4l2_buffer`.
            unsafe { xioctl(f, VIDIOC_QUERYBUF, &mut b) }
                .map_err(|e| lost_or(e, "VIDIOC_QUERYBUF"))?;
            let len = b.length as usize;
            // SAFETY: maps buffer `index` of this device at the offset the driver gave; the
            // mapping is owned by a `Mapping` that unmaps it once.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    f,
                    b.m.offset as libc::off_t,
                )
            };
            if ptr == libc::MAP_FAILED {
                return Err(lost_or(errno(), "mmap of a capture buffer"));
            }
            dev.buffers.push(Mapping {
                ptr: ptr.cast(),
                len,
            });
            // SAFETY: QBUF reads and writes a `v4l2_buffer`.
            unsafe { xioctl(f, VIDIOC_QBUF, &mut b) }.map_err(|e| lost_or(e, "VIDIOC_QBUF"))?;
        }
        let mut ty = BUF_TYPE_VIDEO_CAPTURE as i32;
        // SAFETY: STREAMON takes a pointer to the buffer type.
        unsafe { xioctl(f, VIDIOC_STREAMON, &mut ty) }
            .map_err(|e| lost_or(e, "VIDIOC_STREAMON"))?;
        log::info!(
            "camera `{shown}`: {} ({}), {}x{} {} at {} fps, {} mmap buffers",
            c_str(&cap.card),
            c_str(&cap.driver),
            spec.width,
            spec.height,
            fourcc_str(want),
            spec.fps,
            req.count
        );
        Ok(dev)
    }

    /// Requeues the buffer handed out last, then takes every ready buffer, oldest first,
    /// requeueing all but the newest; waits up to `wait_ns` when none is ready. Returns the
    /// newest and how many older ones were skipped.
    fn grab_newest(&mut self, wait_ns: u64) -> Result<Option<(Buffer, u64)>, Grab> {
        if let Some(index) = self.held.take() {
            self.requeue(index).map_err(Grab::Lost)?;
        }
        let mut newest: Option<Buffer> = None;
        let mut skipped = 0;
        let mut waited = false;
        loop {
            match self.dequeue() {
                Ok(Some(b)) => {
                    if let Some(old) = newest.replace(b) {
                        skipped += 1;
                        self.requeue(old.index).map_err(Grab::Lost)?;
                    }
                }
                Ok(None) if newest.is_none() && !waited && wait_ns > 0 => {
                    waited = true;
                    self.wait(wait_ns).map_err(Grab::Lost)?;
                }
                Ok(None) => return Ok(newest.map(|b| (b, skipped))),
                Err(e) if is_device_lost(e) => return Err(Grab::Lost(e)),
                Err(e) => {
                    return Err(Grab::Transient(format!(
                        "VIDIOC_DQBUF: {}",
                        std::io::Error::from_raw_os_error(e)
                    )))
                }
            }
        }
    }

    fn requeue(&mut self, index: u32) -> Result<(), i32> {
        let mut b = new_buffer(index);
        // SAFETY: QBUF reads and writes a `v4l2_buffer`.
        unsafe { xioctl(self.fd.as_raw_fd(), VIDIOC_QBUF, &mut b) }
    }

    /// One ready buffer, or `None` if there is none (`EAGAIN`).
    fn dequeue(&mut self) -> Result<Option<Buffer>, i32> {
        let mut b = new_buffer(0);
        // SAFETY: DQBUF reads and writes a `v4l2_buffer`.
        match unsafe { xioctl(self.fd.as_raw_fd(), VIDIOC_DQBUF, &mut b) } {
            Ok(()) => Ok(Some(b)),
            Err(libc::EAGAIN) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Waits until a buffer is ready or `timeout_ns` passed; `Err(errno)` if the device is gone.
    fn wait(&self, timeout_ns: u64) -> Result<(), i32> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        let r = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if r < 0 {
            let e = errno();
            return if e == libc::EINTR { Ok(()) } else { Err(e) };
        }
        if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0
            && pfd.revents & libc::POLLIN == 0
        {
            return Err(libc::ENODEV);
        }
        Ok(())
    }

    fn data(&self, index: u32, bytesused: u32) -> &[u8] {
        let m = &self.buffers[index as usize];
        let len = (bytesused as usize).min(m.len);
        // SAFETY: the mapping is `m.len` bytes, readable, and stays mapped while `self` lives;
        // the buffer is dequeued (the driver does not write it) until it is requeued, which
        // needs `&mut self`.
        unsafe { std::slice::from_raw_parts(m.ptr, len) }
    }
}

fn new_buffer(index: u32) -> Buffer {
    // SAFETY: plain C structure; all-zero is a valid value.
    let mut b: Buffer = unsafe { std::mem::zeroed() };
    b.index = index;
    b.type_ = BUF_TYPE_VIDEO_CAPTURE;
    b.memory = MEMORY_MMAP;
    b
}

fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// `CLOCK_MONOTONIC` now, ns.
fn monotonic_now_ns() -> u64 {
    // SAFETY: plain C structure, filled by clock_gettime.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A V4L2 capture device as a [`Camera`].
pub struct V4l2Camera {
    path: PathBuf,
    name: String,
    spec: CaptureSpec,
    dev: Option<Device>,
    last_seq: Option<u32>,
    backoff_ns: u64,
    next_reopen_ns: u64,
    counters: V4l2Counters,
}

impl V4l2Camera {
    /// Opens `path` (`/dev/videoN` or a `/dev/v4l/by-id/...` link) and starts streaming in the
    /// bundle's capture mode. Fails when the device cannot do it (the error says what it can).
    pub fn open(path: &Path, spec: &CaptureSpec) -> Result<Self, CameraError> {
        let name = path.display().to_string();
        let dev = Device::open(path, spec).map_err(|(kind, message)| CameraError {
            device: name.clone(),
            // At start, a missing device is a configuration error.
            kind: if kind == FaultKind::Degraded {
                FaultKind::Fatal
            } else {
                kind
            },
            message,
        })?;
        Ok(V4l2Camera {
            path: path.to_owned(),
            name,
            spec: *spec,
            dev: Some(dev),
            last_seq: None,
            backoff_ns: REOPEN_MIN_NS,
            next_reopen_ns: 0,
            counters: V4l2Counters::default(),
        })
    }

    pub fn counters(&self) -> V4l2Counters {
        self.counters
    }

    fn error(&self, kind: FaultKind, message: String) -> CameraError {
        CameraError {
            device: self.name.clone(),
            kind,
            message,
        }
    }

    /// Closes the device after it failed with `errno` and schedules a reopen.
    fn lose(&mut self, errno: i32, now_ns: u64) -> CameraError {
        self.dev = None;
        self.last_seq = None;
        self.counters.lost += 1;
        self.backoff_ns = REOPEN_MIN_NS;
        self.next_reopen_ns = now_ns + self.backoff_ns;
        self.error(
            FaultKind::Degraded,
            format!(
                "device lost ({}); reopening",
                std::io::Error::from_raw_os_error(errno)
            ),
        )
    }

    fn try_reopen(&mut self, now_ns: u64) -> Result<(), CameraError> {
        if now_ns < self.next_reopen_ns {
            return Err(self.error(FaultKind::Degraded, "device lost; waiting to reopen".into()));
        }
        match Device::open(&self.path, &self.spec) {
            Ok(dev) => {
                self.dev = Some(dev);
                self.counters.reopened += 1;
                self.backoff_ns = REOPEN_MIN_NS;
                Ok(())
            }
            Err((_, message)) => {
                self.backoff_ns = next_backoff(self.backoff_ns);
                self.next_reopen_ns = now_ns + self.backoff_ns;
                Err(self.error(
                    FaultKind::Degraded,
                    format!(
                        "device lost, reopen failed ({message}); next try in {} ms",
                        self.backoff_ns / 1_000_000
                    ),
                ))
            }
        }
    }
}

impl Camera for V4l2Camera {
    fn name(&self) -> &str {
        &self.name
    }

    fn latest(&mut self, now_ns: u64, deadline_ns: u64) -> Result<Option<Frame<'_>>, CameraError> {
        if self.dev.is_none() {
            self.try_reopen(now_ns)?;
        }
        let wait_ns = deadline_ns.saturating_sub(now_ns);
        let grabbed = match self.dev.as_mut() {
            Some(dev) => dev.grab_newest(wait_ns),
            None => return Ok(None),
        };
        let (b, skipped) = match grabbed {
            Ok(Some(grab)) => grab,
            Ok(None) => return Ok(None),
            Err(Grab::Lost(e)) => return Err(self.lose(e, now_ns)),
            Err(Grab::Transient(message)) => return Err(self.error(FaultKind::Transient, message)),
        };
        self.counters.dropped += frames_dropped(self.last_seq, b.sequence, skipped);
        self.last_seq = Some(b.sequence);
        let frame_len = self.dev.as_ref().and_then(|d| d.frame_len);
        let short = frame_len.is_some_and(|n| (b.bytesused as usize) < n);
        if b.flags & BUF_FLAG_ERROR != 0 || short || b.bytesused == 0 {
            self.counters.bad_buffers += 1;
            if let Some(Err(e)) = self.dev.as_mut().map(|d| d.requeue(b.index)) {
                return Err(self.lose(e, now_ns));
            }
            return Err(self.error(
                FaultKind::Transient,
                format!(
                    "corrupted or short buffer (sequence {}, {} bytes)",
                    b.sequence, b.bytesused
                ),
            ));
        }
        let capture_ns = if b.flags & BUF_FLAG_TIMESTAMP_MASK == BUF_FLAG_TIMESTAMP_MONOTONIC {
            let ts = b.timestamp.tv_sec as u64 * 1_000_000_000 + b.timestamp.tv_usec as u64 * 1_000;
            let age = monotonic_now_ns().saturating_sub(ts);
            now_ns.saturating_sub(age)
        } else {
            now_ns
        };
        self.counters.frames += 1;
        let meta = FrameMeta {
            seq: u64::from(b.sequence),
            capture_ns,
            width: self.spec.width,
            height: self.spec.height,
            format: self.spec.format,
        };
        let Some(dev) = self.dev.as_mut() else {
            return Ok(None);
        };
        dev.held = Some(b.index);
        let len = frame_len.map_or(b.bytesused, |n| n as u32);
        Ok(Some(Frame {
            meta,
            data: dev.data(b.index, len),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_sizes_match_the_kernel() {
        assert_eq!(size_of::<Capability>(), 104);
        assert_eq!(size_of::<FmtDesc>(), 64);
        assert_eq!(size_of::<PixFormat>(), 48);
        #[cfg(target_pointer_width = "64")]
        {
            assert_eq!(size_of::<Format>(), 208);
            assert_eq!(size_of::<Buffer>(), 88);
            assert_eq!(std::mem::offset_of!(Buffer, timestamp), 24);
            assert_eq!(std::mem::offset_of!(Buffer, sequence), 56);
            assert_eq!(std::mem::offset_of!(Buffer, m), 64);
        }
        assert_eq!(size_of::<RequestBuffers>(), 20);
        assert_eq!(size_of::<StreamParm>(), 204);
    }

    #[test]
    fn fourcc_golden_values() {
        assert_eq!(pixel_fourcc(PixelFormat::Yuyv), 0x5659_5559);
        assert_eq!(pixel_fourcc(PixelFormat::Grey), 0x5945_5247);
        assert_eq!(pixel_fourcc(PixelFormat::Rgb24), 0x3342_4752);
        assert_eq!(pixel_fourcc(PixelFormat::Mjpeg), 0x4750_4A4D);
        assert_eq!(fourcc_str(pixel_fourcc(PixelFormat::Nv12)), "NV12");
        assert_eq!(
            frame_bytes(PixelFormat::Nv12, 320, 180),
            Some(320 * 180 * 3 / 2)
        );
        assert_eq!(
            frame_bytes(PixelFormat::Yuyv, 320, 180),
            Some(320 * 180 * 2)
        );
        assert_eq!(frame_bytes(PixelFormat::Mjpeg, 320, 180), None);
        assert_eq!(fourcc_str(0x5659_5559), "YUYV");
        assert_eq!(fourcc_str(fourcc(b"Y10 ")), "Y10");
        assert_eq!(fourcc_str(0x0001_4142), "BA??");
    }

    #[test]
    fn dropped_frames_from_sequence_numbers() {
        assert_eq!(frames_dropped(None, 7, 0), 0);
        assert_eq!(frames_dropped(None, 9, 2), 2);
        assert_eq!(frames_dropped(Some(6), 7, 0), 0);
        // 8 skipped in this call (one ready before 9), 5..7 dropped by the driver.
        assert_eq!(frames_dropped(Some(4), 9, 1), 4);
        // Sequence numbers wrap at 2^32.
        assert_eq!(frames_dropped(Some(u32::MAX), 0, 0), 0);
        assert_eq!(frames_dropped(Some(u32::MAX - 1), 1, 0), 2);
        // The same frame again (should not happen) is not a drop.
        assert_eq!(frames_dropped(Some(5), 5, 0), 0);
    }

    #[test]
    fn backoff_doubles_within_bounds() {
        assert_eq!(next_backoff(0), REOPEN_MIN_NS);
        assert_eq!(next_backoff(REOPEN_MIN_NS), 2 * REOPEN_MIN_NS);
        let mut b = REOPEN_MIN_NS;
        for _ in 0..10 {
            b = next_backoff(b);
        }
        assert_eq!(b, REOPEN_MAX_NS);
    }

    #[test]
    fn lost_device_errnos() {
        assert!(is_device_lost(libc::ENODEV));
        assert!(is_device_lost(libc::EIO));
        assert!(!is_device_lost(libc::EAGAIN));
        assert!(!is_device_lost(libc::EINVAL));
    }

    #[test]
    fn open_errors_name_the_device() {
        let spec = CaptureSpec {
            width: 640,
            height: 480,
            format: PixelFormat::Yuyv,
            fps: 30,
        };
        let err = V4l2Camera::open(Path::new("/dev/reflex-no-such-video9"), &spec)
            .err()
            .unwrap();
        assert_eq!(err.kind, FaultKind::Fatal);
        let msg = err.to_string();
        assert!(
            msg.contains("/dev/reflex-no-such-video9") && msg.contains("cannot open"),
            "{msg}"
        );
        // Not a V4L2 device: the ioctl is refused.
        let err = V4l2Camera::open(Path::new("/dev/null"), &spec)
            .err()
            .unwrap();
        assert_eq!(err.kind, FaultKind::Fatal);
        assert!(err.to_string().contains("not a V4L2 device"), "{err}");
    }
}
