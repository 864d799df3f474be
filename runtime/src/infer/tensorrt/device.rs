//! The memory TensorRT reads and writes, and the CUDA stream it runs on: a small fallible trait
//! ([`Device`]) with the real CUDA implementation ([`CudaDevice`], through `cudarc`) and, in
//! `reflex_testkit::fake_tensorrt`, host memory for the stand-in shim.
//!
//! Buffers ([`CudaDevice`]): on an integrated GPU (Jetson, CPU and GPU share DRAM) mapped pinned
//! host memory (`cuMemHostAlloc(CU_MEMHOSTALLOC_DEVICEMAP)` + `cuMemHostGetDevicePointer`), so
//! writing an input is the only copy; on a discrete GPU device memory (`cuMemAlloc`) with
//! asynchronous copies on the session's stream. One non-default stream per session; two events
//! around `enqueueV3` time the GPU part of each run (`cuEventElapsedTime`, what trtexec reports
//! as "GPU Compute Time"). Written against CUDA's documented driver API; not run on a GPU yet.
#![allow(unsafe_code)]

use crate::infer::tensorrt::cuda::{CudaError, GpuInfo};
use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice,
};
use std::ffi::c_void;
use std::sync::Arc;

/// A buffer handle: the index of an allocation of its device.
pub type BufferId = usize;

/// Memory and a stream for one session. Every method but `alloc` runs per inference and must
/// not allocate.
pub trait Device: Send {
    /// A buffer of `bytes` the engine can address, 256-byte aligned.
    fn alloc(&mut self, bytes: usize) -> Result<BufferId, CudaError>;
    /// The address TensorRT is given for the buffer (`setTensorAddress`).
    fn address(&self, id: BufferId) -> *mut c_void;
    /// Copies `bytes` into the buffer, ordered before what is queued next on the stream.
    fn upload(&mut self, id: BufferId, bytes: &[u8]) -> Result<(), CudaError>;
    /// The stream to enqueue on (a `cudaStream_t`).
    fn stream(&self) -> *mut c_void;
    /// Marks the start of the GPU work (an event recorded on the stream).
    fn start(&mut self) -> Result<(), CudaError>;
    /// Marks the end, waits for the stream, and returns the GPU time between the marks in ms.
    fn finish(&mut self) -> Result<f32, CudaError>;
    /// Copies the buffer out (after [`Device::finish`]).
    fn download(&mut self, id: BufferId, out: &mut [u8]) -> Result<(), CudaError>;
}

fn driver(call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        call,
        detail: format!("{e:?}"),
    }
}

enum Buffer {
    /// Mapped pinned host memory: the host pointer, its device address, the allocation.
    Mapped {
        host: *mut u8,
        device: sys::CUdeviceptr,
        _alloc: PinnedHostSlice<u8>,
    },
    /// Device memory.
    Device(CudaSlice<u8>),
}

/// The real device: a CUDA context, one stream, two timing events.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    start: CudaEvent,
    end: CudaEvent,
    integrated: bool,
    buffers: Vec<Buffer>,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("integrated", &self.integrated)
            .field("buffers", &self.buffers.len())
            .finish()
    }
}

// SAFETY: the raw host pointers point into allocations the device owns; the session using it
// is `Send` and used from one thread at a time.
unsafe impl Send for CudaDevice {}

impl CudaDevice {
    /// A context on `gpu`, a new stream and timing events.
    pub fn new(gpu: &GpuInfo) -> Result<CudaDevice, CudaError> {
        let ctx = CudaContext::new(gpu.ordinal.max(0) as usize).map_err(driver("cuCtxCreate"))?;
        let stream = ctx.new_stream().map_err(driver("cuStreamCreate"))?;
        let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
        let start = ctx.new_event(timing).map_err(driver("cuEventCreate"))?;
        let end = ctx.new_event(timing).map_err(driver("cuEventCreate"))?;
        Ok(CudaDevice {
            ctx,
            stream,
            start,
            end,
            integrated: gpu.integrated,
            buffers: vec![],
        })
    }
}

impl Device for CudaDevice {
    fn alloc(&mut self, bytes: usize) -> Result<BufferId, CudaError> {
        let b = if self.integrated {
            // SAFETY: the memory is written (upload) before any run reads it.
            let mut alloc = unsafe {
                self.ctx
                    .alloc_pinned_with_flags::<u8>(bytes.max(1), sys::CU_MEMHOSTALLOC_DEVICEMAP)
            }
            .map_err(driver("cuMemHostAlloc"))?;
            let host = alloc.as_mut_ptr().map_err(driver("cuEventSynchronize"))?;
            let mut device: sys::CUdeviceptr = 0;
            // SAFETY: `host` was allocated with CU_MEMHOSTALLOC_DEVICEMAP in this context.
            unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device, host as *mut c_void, 0) }
                .result()
                .map_err(driver("cuMemHostGetDevicePointer"))?;
            Buffer::Mapped {
                host,
                device,
                _alloc: alloc,
            }
        } else {
            Buffer::Device(
                self.stream
                    .alloc_zeros::<u8>(bytes.max(1))
                    .map_err(driver("cuMemAlloc"))?,
            )
        };
        self.buffers.push(b);
        Ok(self.buffers.len() - 1)
    }

    fn address(&self, id: BufferId) -> *mut c_void {
        match &self.buffers[id] {
            Buffer::Mapped { device, .. } => *device as *mut c_void,
            Buffer::Device(s) => {
                let (ptr, _sync) = s.device_ptr(&self.stream);
                ptr as *mut c_void
            }
        }
    }

    fn upload(&mut self, id: BufferId, bytes: &[u8]) -> Result<(), CudaError> {
        match &mut self.buffers[id] {
            Buffer::Mapped { host, .. } => {
                // SAFETY: the allocation holds at least `bytes.len()` bytes (allocated for this
                // tensor) and no GPU work is in flight (the previous run was finished).
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), *host, bytes.len()) };
                Ok(())
            }
            Buffer::Device(s) => self
                .stream
                .memcpy_htod(bytes, s)
                .map_err(driver("cuMemcpyHtoDAsync")),
        }
    }

    fn stream(&self) -> *mut c_void {
        self.stream.cu_stream() as *mut c_void
    }

    fn start(&mut self) -> Result<(), CudaError> {
        self.start
            .record(&self.stream)
            .map_err(driver("cuEventRecord"))
    }

    fn finish(&mut self) -> Result<f32, CudaError> {
        self.end
            .record(&self.stream)
            .map_err(driver("cuEventRecord"))?;
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))?;
        self.start
            .elapsed_ms(&self.end)
            .map_err(driver("cuEventElapsedTime"))
    }

    fn download(&mut self, id: BufferId, out: &mut [u8]) -> Result<(), CudaError> {
        match &self.buffers[id] {
            Buffer::Mapped { host, .. } => {
                // SAFETY: as in upload; the stream was synchronized by `finish`.
                unsafe { std::ptr::copy_nonoverlapping(*host, out.as_mut_ptr(), out.len()) };
                Ok(())
            }
            Buffer::Device(s) => self
                .stream
                .memcpy_dtoh(s, out)
                .map_err(driver("cuMemcpyDtoHAsync")),
        }
    }
}
