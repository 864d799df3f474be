//! The CUDA device, through the driver API loaded at run time (`cudarc`, dynamic loading: no
//! CUDA at build time, and a binary that runs where no CUDA is installed).
//!
//! `cudarc`'s loader panics when `libcuda` is absent, so [`first_device`] asks
//! `is_culib_present()` first; then `cuInit`, `cuDeviceGetCount`, and the first device's name,
//! compute capability, SM count and whether it is integrated (Jetson: GPU and CPU share DRAM).
#![allow(unsafe_code)]

use cudarc::driver::{result, sys};

/// The GPU TensorRT would run on (device 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// CUDA device ordinal.
    pub ordinal: i32,
    /// `cuDeviceGetName`: `Orin`, `NVIDIA H200`.
    pub name: String,
    /// Compute capability (major, minor): (8, 7) on Orin.
    pub compute_capability: (u32, u32),
    /// Streaming multiprocessors.
    pub sm_count: u32,
    /// An integrated GPU sharing memory with the CPU (Jetson).
    pub integrated: bool,
}

/// Why no CUDA device can be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CudaError {
    /// `libcuda.so` (the driver) does not load.
    #[error(
        "the CUDA driver library (libcuda.so.1) is not installed (JetPack installs it; on a PC, \
         the NVIDIA driver)"
    )]
    DriverMissing,
    /// The driver loads but a call failed (`cuInit` with no GPU answers CUDA_ERROR_NO_DEVICE).
    #[error("CUDA {call} failed: {detail}")]
    Driver { call: &'static str, detail: String },
    /// The driver runs and sees no device.
    #[error("the CUDA driver sees no device")]
    NoDevice,
}

fn driver(call: &'static str) -> impl Fn(result::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        call,
        detail: format!("{e:?}"),
    }
}

/// Device 0, described; or why there is none.
pub fn first_device() -> Result<GpuInfo, CudaError> {
    // SAFETY: only tries to dlopen libcuda's candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err(CudaError::DriverMissing);
    }
    result::init().map_err(driver("cuInit"))?;
    let count = result::device::get_count().map_err(driver("cuDeviceGetCount"))?;
    if count < 1 {
        return Err(CudaError::NoDevice);
    }
    let dev = result::device::get(0).map_err(driver("cuDeviceGet"))?;
    let name = result::device::get_name(dev).map_err(driver("cuDeviceGetName"))?;
    let attr = |a: sys::CUdevice_attribute| {
        // SAFETY: `dev` came from cuDeviceGet above.
        unsafe { result::device::get_attribute(dev, a) }
            .map(|v| v.max(0) as u32)
            .map_err(driver("cuDeviceGetAttribute"))
    };
    use sys::CUdevice_attribute::*;
    Ok(GpuInfo {
        ordinal: 0,
        name,
        compute_capability: (
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
            attr(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        ),
        sm_count: attr(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        integrated: attr(CU_DEVICE_ATTRIBUTE_INTEGRATED)? != 0,
    })
}
