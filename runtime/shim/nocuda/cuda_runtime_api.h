// Stand-in for CUDA's <cuda_runtime_api.h>, used only when no CUDA headers are found
// (CUDA_INCLUDE_DIR unset and /usr/local/cuda/include absent), so that the TensorRT shim compiles
// on machines without CUDA. TensorRT's runtime API (NvInferRuntimeBase.h) uses only these two
// opaque handle types from it; they are declared here exactly as CUDA's driver_types.h declares
// them. The shim itself calls no CUDA function: streams and memory are the Rust side's (cudarc).
#ifndef REFLEX_NOCUDA_CUDA_RUNTIME_API_H
#define REFLEX_NOCUDA_CUDA_RUNTIME_API_H
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
#endif
