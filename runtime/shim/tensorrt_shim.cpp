// The TensorRT shim: the few calls reflex needs from TensorRT's C++ API (inline code over virtual
// tables), behind an `extern "C"` surface of opaque handles. Rust sees it as the table
// `reflex_runtime::infer::tensorrt::shim::ShimApi`; its contract is documented there: null
// handles and nonzero results mean failure, with the reason sent to the log callback first;
// nothing throws across the boundary.
//
// Nothing here links against TensorRT: the runtime is created through the function pointer the
// Rust side resolved with dlsym (`createInferRuntime_INTERNAL`), exactly what the inline
// `nvinfer1::createInferRuntime` calls (NvInferRuntime.h). Compiled against TensorRT 10.x headers.
#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>

namespace {

using LogFn = void (*)(void* user, int32_t severity, char const* msg);
using CreateFn = void* (*)(void* logger, int32_t version);

// ILogger forwarding to the Rust callback.
class Logger final : public nvinfer1::ILogger {
public:
    Logger(LogFn log, void* user) : mLog(log), mUser(user) {}
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (mLog != nullptr) {
            mLog(mUser, static_cast<int32_t>(severity), msg);
        }
    }
    void error(char const* msg) noexcept { log(Severity::kERROR, msg); }

private:
    LogFn mLog;
    void* mUser;
};

// What a runtime handle points at: the logger must outlive the runtime.
struct Runtime {
    Logger logger;
    nvinfer1::IRuntime* runtime = nullptr;
};

struct Engine {
    Logger* logger;
    nvinfer1::ICudaEngine* engine;
};

struct Context {
    Logger* logger;
    nvinfer1::IExecutionContext* context;
};

void report(Logger* logger, char const* where, std::exception const* e) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s: %s", where, e != nullptr ? e->what() : "unknown exception");
    logger->error(buf);
}

} // namespace

extern "C" {

void* reflex_trt_runtime_create(CreateFn create, LogFn log, void* user, int32_t dla_core) noexcept {
    Runtime* rt = nullptr;
    try {
        rt = new Runtime{Logger(log, user)};
        if (create == nullptr) {
            rt->logger.error("the library exports no createInferRuntime_INTERNAL");
            delete rt;
            return nullptr;
        }
        rt->runtime = static_cast<nvinfer1::IRuntime*>(create(&rt->logger, NV_TENSORRT_VERSION));
        if (rt->runtime == nullptr) {
            rt->logger.error("createInferRuntime returned null");
            delete rt;
            return nullptr;
        }
        if (dla_core >= 0) {
            rt->runtime->setDLACore(dla_core);
        }
        return rt;
    } catch (std::exception const& e) {
        if (rt != nullptr) {
            report(&rt->logger, "createInferRuntime", &e);
            delete rt;
        }
        return nullptr;
    } catch (...) {
        delete rt;
        return nullptr;
    }
}

void reflex_trt_runtime_destroy(void* handle) noexcept {
    auto* rt = static_cast<Runtime*>(handle);
    if (rt == nullptr) {
        return;
    }
    delete rt->runtime;
    delete rt;
}

void* reflex_trt_engine_deserialize(void* handle, void const* data, size_t size) noexcept {
    auto* rt = static_cast<Runtime*>(handle);
    try {
        nvinfer1::ICudaEngine* engine = rt->runtime->deserializeCudaEngine(data, size);
        if (engine == nullptr) {
            return nullptr; // TensorRT logged why.
        }
        return new Engine{&rt->logger, engine};
    } catch (std::exception const& e) {
        report(&rt->logger, "deserializeCudaEngine", &e);
        return nullptr;
    } catch (...) {
        report(&rt->logger, "deserializeCudaEngine", nullptr);
        return nullptr;
    }
}

void reflex_trt_engine_destroy(void* handle) noexcept {
    auto* e = static_cast<Engine*>(handle);
    if (e == nullptr) {
        return;
    }
    delete e->engine;
    delete e;
}

int32_t reflex_trt_io_count(void* handle) noexcept {
    return static_cast<Engine*>(handle)->engine->getNbIOTensors();
}

// Matches the Rust `IoDesc` (#[repr(C)]).
struct IoDesc {
    char const* name;
    int32_t mode;
    int32_t dtype;
    int32_t nb_dims;
    int64_t dims[8];
};
static_assert(nvinfer1::Dims::MAX_DIMS == 8, "IoDesc.dims holds nvinfer1::Dims::MAX_DIMS values");

int32_t reflex_trt_io_describe(void* handle, int32_t i, IoDesc* desc) noexcept {
    auto* e = static_cast<Engine*>(handle);
    if (i < 0 || i >= e->engine->getNbIOTensors()) {
        e->logger->error("io_describe: tensor index out of range");
        return 1;
    }
    char const* name = e->engine->getIOTensorName(i);
    nvinfer1::Dims dims = e->engine->getTensorShape(name);
    desc->name = name;
    desc->mode = static_cast<int32_t>(e->engine->getTensorIOMode(name));
    desc->dtype = static_cast<int32_t>(e->engine->getTensorDataType(name));
    desc->nb_dims = dims.nbDims;
    for (int32_t d = 0; d < 8; ++d) {
        desc->dims[d] = d < dims.nbDims ? dims.d[d] : 0;
    }
    return 0;
}

void* reflex_trt_context_create(void* handle) noexcept {
    auto* e = static_cast<Engine*>(handle);
    try {
        nvinfer1::IExecutionContext* c = e->engine->createExecutionContext();
        if (c == nullptr) {
            return nullptr;
        }
        return new Context{e->logger, c};
    } catch (std::exception const& ex) {
        report(e->logger, "createExecutionContext", &ex);
        return nullptr;
    } catch (...) {
        return nullptr;
    }
}

void reflex_trt_context_destroy(void* handle) noexcept {
    auto* c = static_cast<Context*>(handle);
    if (c == nullptr) {
        return;
    }
    delete c->context;
    delete c;
}

int32_t reflex_trt_set_input_shape(void* handle, char const* name, int32_t nb_dims, int64_t const* dims) noexcept {
    auto* c = static_cast<Context*>(handle);
    if (nb_dims < 0 || nb_dims > nvinfer1::Dims::MAX_DIMS) {
        c->logger->error("setInputShape: too many dimensions");
        return 1;
    }
    nvinfer1::Dims d{};
    d.nbDims = nb_dims;
    for (int32_t i = 0; i < nb_dims; ++i) {
        d.d[i] = dims[i];
    }
    return c->context->setInputShape(name, d) ? 0 : 1;
}

int32_t reflex_trt_set_tensor_address(void* handle, char const* name, void* ptr) noexcept {
    auto* c = static_cast<Context*>(handle);
    return c->context->setTensorAddress(name, ptr) ? 0 : 1;
}

int32_t reflex_trt_enqueue(void* handle, void* stream) noexcept {
    auto* c = static_cast<Context*>(handle);
    return c->context->enqueueV3(static_cast<cudaStream_t>(stream)) ? 0 : 1;
}

} // extern "C"
