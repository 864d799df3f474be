//! The C surface of the TensorRT shim (`runtime/shim/tensorrt_shim.cpp`), as a table of
//! functions.
//!
//! TensorRT's C++ API is inline code over virtual tables; the shim wraps the few calls reflex
//! needs behind `extern "C"` functions taking opaque handles. Rust sees them only through
//! [`ShimApi`], so that a test-only stand-in (`reflex_testkit::fake_tensorrt`, serving the same
//! functions from a tract session) can replace the real shim and exercise everything on the Rust
//! side (binding by name, shapes, element types, synchronisation, errors) without a GPU.
//!
//! Contract of every function (the real shim and any stand-in):
//! - handles are opaque; null means failure, and the reason was sent to the log callback
//!   (severity as `nvinfer1::ILogger::Severity`: 0 internal error, 1 error, 2 warning, 3 info,
//!   4 verbose) before returning;
//! - `int32_t` results are 0 on success, nonzero on failure (reason logged likewise);
//! - nothing throws across the boundary (the shim catches and logs).
#![allow(unsafe_code)]

use crate::infer::tensorrt::library::CreateRuntimeFn;
use std::ffi::{c_char, c_void};

/// `void log(void* user, int32_t severity, const char* msg)`: the shim's `ILogger::log`.
pub type LogFn = unsafe extern "C" fn(*mut c_void, i32, *const c_char);

/// Most dimensions of a tensor (`nvinfer1::Dims::MAX_DIMS`).
pub const MAX_DIMS: usize = 8;

/// One I/O tensor of an engine, as `ICudaEngine` describes it.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IoDesc {
    /// `getIOTensorName(i)`: owned by the engine, valid while it lives.
    pub name: *const c_char,
    /// `getTensorIOMode`: 1 input, 2 output (`nvinfer1::TensorIOMode`).
    pub mode: i32,
    /// `getTensorDataType`: 0 float, 1 half, 2 int8, 3 int32, 4 bool, 5 uint8, 6 fp8, 7 bf16,
    /// 8 int64 (`nvinfer1::DataType`, TensorRT 10).
    pub dtype: i32,
    /// `getTensorShape`: number of dimensions, then the dimensions (-1 for a dynamic one).
    pub nb_dims: i32,
    pub dims: [i64; MAX_DIMS],
}

impl Default for IoDesc {
    fn default() -> Self {
        IoDesc {
            name: std::ptr::null(),
            mode: 0,
            dtype: 0,
            nb_dims: 0,
            dims: [0; MAX_DIMS],
        }
    }
}

/// `nvinfer1::TensorIOMode::kINPUT`.
pub const MODE_INPUT: i32 = 1;
/// `nvinfer1::TensorIOMode::kOUTPUT`.
pub const MODE_OUTPUT: i32 = 2;
/// `nvinfer1::DataType::kFLOAT`.
pub const DTYPE_FLOAT: i32 = 0;
/// `nvinfer1::DataType::kHALF`.
pub const DTYPE_HALF: i32 = 1;

/// The shim's functions. Field names are the C symbols without their `reflex_trt_` prefix.
#[derive(Debug, Clone, Copy)]
pub struct ShimApi {
    /// What implements the table (`tensorrt_shim.cpp against TensorRT 10.3.0 headers`).
    pub description: &'static str,
    /// `IRuntime* runtime_create(create, log, user, dla_core)`: calls `create(&logger,
    /// NV_TENSORRT_VERSION)` (null `create`: fails), then `setDLACore` when `dla_core >= 0`.
    pub runtime_create:
        unsafe extern "C" fn(Option<CreateRuntimeFn>, LogFn, *mut c_void, i32) -> *mut c_void,
    pub runtime_destroy: unsafe extern "C" fn(*mut c_void),
    /// `ICudaEngine* engine_deserialize(runtime, data, size)`: `deserializeCudaEngine`.
    pub engine_deserialize: unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> *mut c_void,
    pub engine_destroy: unsafe extern "C" fn(*mut c_void),
    /// `getNbIOTensors`.
    pub io_count: unsafe extern "C" fn(*mut c_void) -> i32,
    /// Fills `IoDesc` for I/O tensor `i`; nonzero when `i` is out of range.
    pub io_describe: unsafe extern "C" fn(*mut c_void, i32, *mut IoDesc) -> i32,
    /// `IExecutionContext* context_create(engine)`: `createExecutionContext`.
    pub context_create: unsafe extern "C" fn(*mut c_void) -> *mut c_void,
    pub context_destroy: unsafe extern "C" fn(*mut c_void),
    /// `setInputShape(name, dims)`.
    pub set_input_shape: unsafe extern "C" fn(*mut c_void, *const c_char, i32, *const i64) -> i32,
    /// `setTensorAddress(name, ptr)`: `ptr` is a device (or mapped host) address, 256-byte
    /// aligned.
    pub set_tensor_address: unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_void) -> i32,
    /// `enqueueV3(stream)`: queues the run on a CUDA stream (a `cudaStream_t`, never the
    /// default stream); the caller synchronises.
    pub enqueue: unsafe extern "C" fn(*mut c_void, *mut c_void) -> i32,
}

/// The real shim when this build has it (`--features tensorrt`).
pub fn compiled() -> Option<&'static ShimApi> {
    #[cfg(feature = "tensorrt")]
    {
        Some(&real::API)
    }
    #[cfg(not(feature = "tensorrt"))]
    {
        None
    }
}

#[cfg(feature = "tensorrt")]
mod real {
    use super::*;

    extern "C" {
        fn reflex_trt_runtime_create(
            create: Option<CreateRuntimeFn>,
            log: LogFn,
            user: *mut c_void,
            dla_core: i32,
        ) -> *mut c_void;
        fn reflex_trt_runtime_destroy(rt: *mut c_void);
        fn reflex_trt_engine_deserialize(
            rt: *mut c_void,
            data: *const c_void,
            size: usize,
        ) -> *mut c_void;
        fn reflex_trt_engine_destroy(engine: *mut c_void);
        fn reflex_trt_io_count(engine: *mut c_void) -> i32;
        fn reflex_trt_io_describe(engine: *mut c_void, i: i32, desc: *mut IoDesc) -> i32;
        fn reflex_trt_context_create(engine: *mut c_void) -> *mut c_void;
        fn reflex_trt_context_destroy(ctx: *mut c_void);
        fn reflex_trt_set_input_shape(
            ctx: *mut c_void,
            name: *const c_char,
            nb_dims: i32,
            dims: *const i64,
        ) -> i32;
        fn reflex_trt_set_tensor_address(
            ctx: *mut c_void,
            name: *const c_char,
            ptr: *mut c_void,
        ) -> i32;
        fn reflex_trt_enqueue(ctx: *mut c_void, stream: *mut c_void) -> i32;
    }

    pub static API: ShimApi = ShimApi {
        description: concat!(
            "tensorrt_shim.cpp against TensorRT ",
            env!("REFLEX_TRT_HEADER_VERSION"),
            " headers"
        ),
        runtime_create: reflex_trt_runtime_create,
        runtime_destroy: reflex_trt_runtime_destroy,
        engine_deserialize: reflex_trt_engine_deserialize,
        engine_destroy: reflex_trt_engine_destroy,
        io_count: reflex_trt_io_count,
        io_describe: reflex_trt_io_describe,
        context_create: reflex_trt_context_create,
        context_destroy: reflex_trt_context_destroy,
        set_input_shape: reflex_trt_set_input_shape,
        set_tensor_address: reflex_trt_set_tensor_address,
        enqueue: reflex_trt_enqueue,
    };
}
