// Error state and thin wrappers over the CUDA runtime (linked statically into the JNI library), so Java never
// needs a second runtime for memory, streams, events and graphs. cuBLAS is called from Java (bytedeco).
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <atomic>
#include "common.cuh"

namespace {
thread_local char g_msg[512] = "";
thread_local int g_cuda_err = 0;
int g_sm_count[64] = {0};
std::atomic<int> g_pdl{0};  // tp_set_pdl: process-wide, off by default
}

namespace tp {

int fail(int code, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_msg, sizeof g_msg, fmt, ap);
    va_end(ap);
    return code;
}

int cuda_fail(cudaError_t e, const char* what) {
    g_cuda_err = (int)e;
    snprintf(g_msg, sizeof g_msg, "%s failed: %s (cudaError %d: %s)", what, cudaGetErrorName(e), (int)e,
             cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? TP_ERR_OUT_OF_MEMORY : TP_ERR_CUDA;
}

int sm_count() {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
    if (g_sm_count[dev] == 0) {
        int n = 0;
        if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) n = 132;
        g_sm_count[dev] = n;
    }
    return g_sm_count[dev];
}

double peak_memory_gbps() {
    static double cache[64] = {0};
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 0;
    if (cache[dev] == 0) {
        int khz = 0, bits = 0;
        if (cudaDeviceGetAttribute(&khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess || khz <= 0 || bits <= 0) {
            (void)cudaGetLastError();
            cache[dev] = -1;  // unknown
        } else {
            cache[dev] = 2.0 * khz * 1e3 * (bits / 8) / 1e9;  // double data rate
        }
    }
    return cache[dev] > 0 ? cache[dev] : 0;
}

cudaError_t prepare_dynamic_smem(const void* kernel, int threads, int smem, int* cache, int* blocks_per_sm) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    int bps = dev >= 0 && dev < 64 ? cache[dev] : 0;
    if (bps == 0) {
        e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
        if (e != cudaSuccess) return e;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&bps, kernel, threads, smem) != cudaSuccess || bps < 1) {
            (void)cudaGetLastError();
            bps = 1;
        }
        if (dev >= 0 && dev < 64) cache[dev] = bps;
    }
    *blocks_per_sm = bps;
    return cudaSuccess;
}

bool pdl_enabled() { return g_pdl.load(std::memory_order_relaxed) != 0; }

}  // namespace tp

extern "C" {

const char* tp_last_error_message(void) { return g_msg; }
int tp_last_cuda_error(void) { return g_cuda_err; }
int tp_version(void) { return 1; }

int tp_pdl_supported(void) {
    int dev = 0, major = 0, driver = 0, runtime = 0;
    bool ok = cudaGetDevice(&dev) == cudaSuccess &&
              cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
              cudaDriverGetVersion(&driver) == cudaSuccess && cudaRuntimeGetVersion(&runtime) == cudaSuccess;
    cudaGetLastError();
    // griddepcontrol needs sm_90; stream capture of programmatic launches (graph edges) needs CUDA 12.3
    return ok && major >= 9 && driver >= 12030 && runtime >= 12030 ? 1 : 0;
}

int tp_set_pdl(int enabled) {
    if (enabled && !tp_pdl_supported()) {
        int dev = 0, major = 0, minor = 0, driver = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
        cudaDriverGetVersion(&driver);
        cudaGetLastError();
        return tp::fail(TP_ERR_UNSUPPORTED, "tp_set_pdl: programmatic dependent launch needs sm_90+ and CUDA >= 12.3 "
                        "(device sm_%d%d, driver %d)", major, minor, driver);
    }
    g_pdl.store(enabled ? 1 : 0, std::memory_order_relaxed);
    return TP_OK;
}

int tp_pdl_enabled(void) { return g_pdl.load(std::memory_order_relaxed); }

int tp_device_count(int* count) {
    TP_REQUIRE(count != nullptr, "tp_device_count", "count");
    *count = 0;
    TP_CUDA(cudaGetDeviceCount(count));
    return TP_OK;
}

int tp_set_device(int device) {
    TP_CUDA(cudaSetDevice(device));
    TP_CUDA(cudaFree(nullptr));
    return TP_OK;
}

int tp_device_props(int device, int* props) {
    TP_REQUIRE(props != nullptr, "tp_device_props", "props");
    cudaDeviceProp p;
    TP_CUDA(cudaGetDeviceProperties(&p, device));
    int clock = 0, bus = 0;
    cudaDeviceGetAttribute(&clock, cudaDevAttrMemoryClockRate, device);
    cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, device);
    cudaGetLastError();
    props[0] = p.multiProcessorCount;
    props[1] = p.major;
    props[2] = p.minor;
    props[3] = (int)(p.totalGlobalMem >> 20);
    props[4] = p.l2CacheSize;
    props[5] = (int)p.sharedMemPerBlockOptin;
    props[6] = clock;
    props[7] = bus;
    return TP_OK;
}

int tp_device_name(int device, char* buf, int len) {
    TP_REQUIRE(buf != nullptr && len > 0, "tp_device_name", "buf");
    cudaDeviceProp p;
    TP_CUDA(cudaGetDeviceProperties(&p, device));
    snprintf(buf, (size_t)len, "%s", p.name);
    return TP_OK;
}

int tp_versions(int* driver, int* runtime) {
    TP_REQUIRE(driver != nullptr && runtime != nullptr, "tp_versions", "driver/runtime");
    *driver = 0;
    *runtime = 0;
    TP_CUDA(cudaRuntimeGetVersion(runtime));
    TP_CUDA(cudaDriverGetVersion(driver));
    return TP_OK;
}

int tp_mem_get_info(uint64_t* free_bytes, uint64_t* total_bytes) {
    TP_REQUIRE(free_bytes != nullptr && total_bytes != nullptr, "tp_mem_get_info", "free/total");
    size_t f = 0, t = 0;
    TP_CUDA(cudaMemGetInfo(&f, &t));
    *free_bytes = f;
    *total_bytes = t;
    return TP_OK;
}

int tp_malloc(uint64_t* ptr, uint64_t bytes) {
    TP_REQUIRE(ptr != nullptr, "tp_malloc", "ptr");
    void* p = nullptr;
    *ptr = 0;
    TP_CUDA(cudaMalloc(&p, bytes == 0 ? 256 : bytes));
    *ptr = (uint64_t)(uintptr_t)p;
    return TP_OK;
}

int tp_free(uint64_t ptr) {
    if (ptr) TP_CUDA(cudaFree(TP_PTR(void, ptr)));
    return TP_OK;
}

int tp_malloc_host(uint64_t* ptr, uint64_t bytes) {
    TP_REQUIRE(ptr != nullptr, "tp_malloc_host", "ptr");
    void* p = nullptr;
    *ptr = 0;
    TP_CUDA(cudaMallocHost(&p, bytes == 0 ? 256 : bytes));
    *ptr = (uint64_t)(uintptr_t)p;
    return TP_OK;
}

int tp_free_host(uint64_t ptr) {
    if (ptr) TP_CUDA(cudaFreeHost(TP_PTR(void, ptr)));
    return TP_OK;
}

int tp_memset_async(uint64_t dst, int byte_value, uint64_t bytes, uint64_t stream) {
    TP_REQUIRE(dst != 0 || bytes == 0, "tp_memset_async", "dst");
    if (bytes) TP_CUDA(cudaMemsetAsync(TP_PTR(void, dst), byte_value, bytes, TP_STREAM(stream)));
    return TP_OK;
}

int tp_memcpy_async(uint64_t dst, uint64_t src, uint64_t bytes, uint64_t stream) {
    TP_REQUIRE(dst != 0 || bytes == 0, "tp_memcpy_async", "dst");
    TP_REQUIRE(src != 0 || bytes == 0, "tp_memcpy_async", "src");
    if (bytes)
        TP_CUDA(cudaMemcpyAsync(TP_PTR(void, dst), TP_PTR(const void, src), bytes, cudaMemcpyDefault,
                                TP_STREAM(stream)));
    return TP_OK;
}

int tp_memcpy_2d_async(uint64_t dst, uint64_t dst_pitch, uint64_t src, uint64_t src_pitch, uint64_t width,
                       uint64_t height, uint64_t stream) {
    if (!width || !height) return TP_OK;
    TP_REQUIRE(dst != 0, "tp_memcpy_2d_async", "dst");
    TP_REQUIRE(src != 0, "tp_memcpy_2d_async", "src");
    TP_REQUIRE(width <= dst_pitch, "tp_memcpy_2d_async", "dst_pitch");
    TP_REQUIRE(width <= src_pitch, "tp_memcpy_2d_async", "src_pitch");
    TP_CUDA(cudaMemcpy2DAsync(TP_PTR(void, dst), dst_pitch, TP_PTR(const void, src), src_pitch, width, height,
                              cudaMemcpyDefault, TP_STREAM(stream)));
    return TP_OK;
}

int tp_memcpy_h2d(uint64_t dst, const void* src, uint64_t bytes, uint64_t stream) {
    TP_REQUIRE(dst != 0 || bytes == 0, "tp_memcpy_h2d", "dst");
    TP_REQUIRE(src != nullptr || bytes == 0, "tp_memcpy_h2d", "src");
    if (!bytes) return TP_OK;
    TP_CUDA(cudaMemcpyAsync(TP_PTR(void, dst), src, bytes, cudaMemcpyHostToDevice, TP_STREAM(stream)));
    TP_CUDA(cudaStreamSynchronize(TP_STREAM(stream)));
    return TP_OK;
}

int tp_memcpy_d2h(void* dst, uint64_t src, uint64_t bytes, uint64_t stream) {
    TP_REQUIRE(dst != nullptr || bytes == 0, "tp_memcpy_d2h", "dst");
    TP_REQUIRE(src != 0 || bytes == 0, "tp_memcpy_d2h", "src");
    if (!bytes) return TP_OK;
    TP_CUDA(cudaMemcpyAsync(dst, TP_PTR(const void, src), bytes, cudaMemcpyDeviceToHost, TP_STREAM(stream)));
    TP_CUDA(cudaStreamSynchronize(TP_STREAM(stream)));
    return TP_OK;
}

int tp_stream_create(uint64_t* stream) {
    TP_REQUIRE(stream != nullptr, "tp_stream_create", "stream");
    cudaStream_t s = nullptr;
    TP_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *stream = (uint64_t)(uintptr_t)s;
    return TP_OK;
}

int tp_stream_destroy(uint64_t stream) {
    if (stream) TP_CUDA(cudaStreamDestroy(TP_STREAM(stream)));
    return TP_OK;
}

int tp_stream_synchronize(uint64_t stream) {
    TP_CUDA(cudaStreamSynchronize(TP_STREAM(stream)));
    return TP_OK;
}

int tp_device_synchronize(void) {
    TP_CUDA(cudaDeviceSynchronize());
    return TP_OK;
}

int tp_event_create(uint64_t* event) {
    TP_REQUIRE(event != nullptr, "tp_event_create", "event");
    cudaEvent_t e = nullptr;
    TP_CUDA(cudaEventCreate(&e));
    *event = (uint64_t)(uintptr_t)e;
    return TP_OK;
}

int tp_event_create_sync(uint64_t* event) {
    TP_REQUIRE(event != nullptr, "tp_event_create_sync", "event");
    cudaEvent_t e = nullptr;
    TP_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    *event = (uint64_t)(uintptr_t)e;
    return TP_OK;
}

int tp_event_destroy(uint64_t event) {
    if (event) TP_CUDA(cudaEventDestroy(reinterpret_cast<cudaEvent_t>((uintptr_t)event)));
    return TP_OK;
}

int tp_event_record(uint64_t event, uint64_t stream) {
    TP_REQUIRE(event != 0, "tp_event_record", "event");
    TP_CUDA(cudaEventRecord(reinterpret_cast<cudaEvent_t>((uintptr_t)event), TP_STREAM(stream)));
    return TP_OK;
}

int tp_stream_wait_event(uint64_t stream, uint64_t event) {
    TP_REQUIRE(event != 0, "tp_stream_wait_event", "event");
    TP_CUDA(cudaStreamWaitEvent(TP_STREAM(stream), reinterpret_cast<cudaEvent_t>((uintptr_t)event), 0));
    return TP_OK;
}

int tp_event_synchronize(uint64_t event) {
    TP_REQUIRE(event != 0, "tp_event_synchronize", "event");
    TP_CUDA(cudaEventSynchronize(reinterpret_cast<cudaEvent_t>((uintptr_t)event)));
    return TP_OK;
}

int tp_event_elapsed_ms(float* ms, uint64_t start, uint64_t end) {
    TP_REQUIRE(ms != nullptr, "tp_event_elapsed_ms", "ms");
    TP_REQUIRE(start != 0 && end != 0, "tp_event_elapsed_ms", "start/end");
    TP_CUDA(cudaEventElapsedTime(ms, reinterpret_cast<cudaEvent_t>((uintptr_t)start),
                                 reinterpret_cast<cudaEvent_t>((uintptr_t)end)));
    return TP_OK;
}

int tp_graph_begin_capture(uint64_t stream) {
    TP_REQUIRE(stream != 0, "tp_graph_begin_capture", "stream");
    TP_CUDA(cudaStreamBeginCapture(TP_STREAM(stream), cudaStreamCaptureModeThreadLocal));
    return TP_OK;
}

int tp_graph_end_capture(uint64_t stream, uint64_t* graph_exec) {
    TP_REQUIRE(graph_exec != nullptr, "tp_graph_end_capture", "graph_exec");
    *graph_exec = 0;
    cudaGraph_t g = nullptr;
    cudaError_t e = cudaStreamEndCapture(TP_STREAM(stream), &g);
    if (e != cudaSuccess) {
        if (g) cudaGraphDestroy(g);
        cudaGetLastError();
        return tp::cuda_fail(e, "cudaStreamEndCapture");
    }
    cudaGraphExec_t ge = nullptr;
    e = cudaGraphInstantiate(&ge, g, 0ULL);
    cudaGraphDestroy(g);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return tp::cuda_fail(e, "cudaGraphInstantiate");
    }
    e = cudaGraphUpload(ge, TP_STREAM(stream));
    if (e != cudaSuccess) {
        cudaGraphExecDestroy(ge);
        return tp::cuda_fail(e, "cudaGraphUpload");
    }
    *graph_exec = (uint64_t)(uintptr_t)ge;
    return TP_OK;
}

int tp_graph_launch(uint64_t graph_exec, uint64_t stream) {
    TP_REQUIRE(graph_exec != 0, "tp_graph_launch", "graph_exec");
    TP_CUDA(cudaGraphLaunch(reinterpret_cast<cudaGraphExec_t>((uintptr_t)graph_exec), TP_STREAM(stream)));
    return TP_OK;
}

int tp_graph_destroy(uint64_t graph_exec) {
    if (graph_exec) TP_CUDA(cudaGraphExecDestroy(reinterpret_cast<cudaGraphExec_t>((uintptr_t)graph_exec)));
    return TP_OK;
}

}  // extern "C"
