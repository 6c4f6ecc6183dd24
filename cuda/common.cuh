// Shared helpers for every tokenpress .cu file: status/error reporting, argument checks, bf16 and
// warp/block helpers. Included by each translation unit; the error state lives in runtime.cu.
#pragma once

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <math.h>
#include <utility>
#include "include/tokenpress.h"

namespace tp {

// Sets the thread-local error message (printf-style) and returns `code`.
int fail(int code, const char* fmt, ...);
// Records a CUDA error (code + call) and returns TP_ERR_CUDA or TP_ERR_OUT_OF_MEMORY.
int cuda_fail(cudaError_t e, const char* what);
// Multiprocessor count of the current device (cached per device).
int sm_count();
// The current device's peak memory bandwidth in GB/s from its memory clock and bus width (0 when unknown).
double peak_memory_gbps();
// Opts `kernel` into `smem` bytes of dynamic shared memory on the current device and gives its resident blocks per
// SM at `threads` per block (at least 1), once per device: cache[64] belongs to the kernel (0 = not yet done).
cudaError_t prepare_dynamic_smem(const void* kernel, int threads, int smem, int* cache, int* blocks_per_sm);
// Whether kernels launched through tp::launch get Programmatic Dependent Launch (process-wide, tp_set_pdl).
bool pdl_enabled();

// Launches kernel<<<grid, block, smem, stream>>>(args...). With PDL on (tp_set_pdl(1), sm_90+) the launch goes
// through cudaLaunchKernelEx with programmaticStreamSerializationAllowed = 1: the kernel may start while its
// stream predecessor is still running (once every block of that predecessor has called pdl_launch_dependents()
// or exited), so it MUST call pdl_wait() before it reads anything an earlier kernel wrote or writes anything an
// earlier kernel may still read. Stream capture turns such a launch into a programmatic graph edge (CUDA 12.3+).
// Returns the launch error (the caller also clears cudaGetLastError: see TP_LAUNCH).
template <typename... KArgs, typename... Args>
inline cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
    if (!pdl_enabled()) {
        kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
        return cudaSuccess;
    }
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace tp

// Returns from the enclosing int function when a CUDA call fails.
#define TP_CUDA(call)                                              \
    do {                                                           \
        cudaError_t tp_e_ = (call);                                \
        if (tp_e_ != cudaSuccess) return tp::cuda_fail(tp_e_, #call); \
    } while (0)

// Checks the launch that was just issued.
#define TP_LAUNCHED(name)                                          \
    do {                                                           \
        cudaError_t tp_e_ = cudaGetLastError();                    \
        if (tp_e_ != cudaSuccess) return tp::cuda_fail(tp_e_, name); \
    } while (0)

// Launches through tp::launch(kernel, grid, block, smem, stream, args...) and checks it (as TP_LAUNCHED).
#define TP_LAUNCH(name, ...)                                       \
    do {                                                           \
        cudaError_t tp_e_ = tp::launch(__VA_ARGS__);               \
        cudaError_t tp_l_ = cudaGetLastError();                    \
        if (tp_e_ == cudaSuccess) tp_e_ = tp_l_;                   \
        if (tp_e_ != cudaSuccess) return tp::cuda_fail(tp_e_, name); \
    } while (0)

// Argument validation: names the bad argument in the error message.
#define TP_REQUIRE(cond, fn, arg)                                                              \
    do {                                                                                       \
        if (!(cond)) return tp::fail(TP_ERR_BAD_ARGUMENT, "%s: bad argument '%s' (%s)", fn, arg, #cond); \
    } while (0)

namespace tp {

// The checks of a device selection's outputs, scratch and step values (tp_tidal_select, tp_kvq_tidal_select,
// tp_decode_attention_select, tp_quest_select).
inline int check_selection_outputs(const char* fn, uint64_t out_slots, uint64_t out_counts, uint64_t cur_slot,
                                   uint64_t keys_ws, uint64_t params) {
    TP_REQUIRE(out_slots != 0, fn, "out_slots");
    TP_REQUIRE(out_counts != 0, fn, "out_counts");
    TP_REQUIRE(cur_slot != 0, fn, "cur_slot");
    TP_REQUIRE(keys_ws != 0 && keys_ws % 16 == 0, fn, "keys_ws");
    TP_REQUIRE(params != 0, fn, "params");
    return TP_OK;
}

// The checks of a policy op's query and bf16 cache arguments (tp_query_key_scores, tp_quest_page_scores and the device
// selections); key_align: the alignment the op's key loads need (1 = none).
inline int check_query_cache_args(const char* fn, uint64_t q, uint64_t key_cache, uint64_t key_align,
                                  uint64_t pos_cache, int layer, int num_heads, int kv_heads, int head_dim,
                                  int capacity) {
    TP_REQUIRE(q != 0, fn, "q");
    TP_REQUIRE(key_cache != 0 && key_cache % key_align == 0, fn, "key_cache");
    TP_REQUIRE(pos_cache != 0, fn, "pos_cache");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0 && kv_heads <= 65535, fn, "kv_heads");
    TP_REQUIRE(num_heads > 0 && num_heads % kv_heads == 0, fn, "num_heads");
    TP_REQUIRE(head_dim > 0, fn, "head_dim");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    return TP_OK;
}

// The limits of the kernels that score a key row with 16-byte loads against a KV head's group of q vectors held in
// shared memory: head_dim a multiple of 8, group * head_dim floats within 48 KiB.
inline int check_group_q_in_smem(const char* fn, int group, int head_dim) {
    if (head_dim % 8 != 0)
        return fail(TP_ERR_UNSUPPORTED_HEAD_DIM, "%s: head_dim %d is not a multiple of 8", fn, head_dim);
    if ((size_t)group * head_dim * sizeof(float) > 48 * 1024)
        return fail(TP_ERR_UNSUPPORTED, "%s: %d q-heads per KV head x head_dim %d exceed 48 KiB of shared memory", fn,
                    group, head_dim);
    return TP_OK;
}

// The checks of tp_rope_store_kv's cache-side arguments.
inline int check_rope_store_args(const char* fn, uint64_t positions, uint64_t inv_freq, float scale,
                                 uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache, uint64_t slots,
                                 uint64_t token_pos, int layer, int kv_heads, int head_dim, int capacity) {
    TP_REQUIRE(positions != 0, fn, "positions");
    TP_REQUIRE(inv_freq != 0, fn, "inv_freq");
    TP_REQUIRE(scale > 0.f, fn, "scale");
    TP_REQUIRE(key_cache != 0, fn, "key_cache");
    TP_REQUIRE(value_cache != 0, fn, "value_cache");
    TP_REQUIRE(pos_cache != 0, fn, "pos_cache");
    TP_REQUIRE(slots != 0, fn, "slots");
    TP_REQUIRE(token_pos != 0, fn, "token_pos");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0, fn, "kv_heads");
    TP_REQUIRE(head_dim > 0 && head_dim % 2 == 0, fn, "head_dim");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    return TP_OK;
}

}  // namespace tp

#define TP_STREAM(s) reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(s))
#define TP_PTR(T, a) reinterpret_cast<T*>(static_cast<uintptr_t>(a))

namespace tp {

constexpr float kNegInf = -INFINITY;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

// acc + q[0..7] · k[0..7]: eight fmaf in channel order, q as two float4 (e.g. two 16-byte shared-memory loads).
__device__ __forceinline__ float fma8(float acc, const float4& qa, const float4& qb, const float* k) {
    acc = fmaf(qa.x, k[0], acc);
    acc = fmaf(qa.y, k[1], acc);
    acc = fmaf(qa.z, k[2], acc);
    acc = fmaf(qa.w, k[3], acc);
    acc = fmaf(qb.x, k[4], acc);
    acc = fmaf(qb.y, k[5], acc);
    acc = fmaf(qb.z, k[6], acc);
    return fmaf(qb.w, k[7], acc);
}

// Eight bf16 packed in a uint4 -> eight floats.
__device__ __forceinline__ void bf16x8_to_f32(const uint4& u, float* f) {
    f[0] = bf16_lo(u.x); f[1] = bf16_hi(u.x);
    f[2] = bf16_lo(u.y); f[3] = bf16_hi(u.y);
    f[4] = bf16_lo(u.z); f[5] = bf16_hi(u.z);
    f[6] = bf16_lo(u.w); f[7] = bf16_hi(u.w);
}

// L2 prefetch hints (never a fault, never a change of results): a contiguous byte range, 16-byte aligned and a
// multiple of 16 bytes (one bulk prefetch by thread 0 on sm_90, else one prefetch per 128-byte line spread over the
// block's threads), and one line.
__device__ __forceinline__ void prefetch_range_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#else
    for (uint32_t off = threadIdx.x * 128u; off < bytes; off += blockDim.x * 128u)
        asm volatile("prefetch.global.L2 [%0];\n" ::"l"(reinterpret_cast<const char*>(p) + off));
#endif
}
__device__ __forceinline__ void prefetch_line_l2(const void* p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

// Order-preserving uint32 key of a score (TidalDecode selection): larger score -> larger key; +0 and -0 map to the
// same key (the CPU compares scores with ==); every finite score maps to a key >= 0x00800000, so 0 is free to mean
// "not a candidate".
__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t b = __float_as_uint(f);
    if ((b & 0x7fffffffu) == 0u) b = 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// f32 -> bf16 bits, round to nearest even, NaN kept NaN (same rule as io.Half.floatToBf16).
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
    uint32_t b = __float_as_uint(f);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float red[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float t = lane < nw ? red[lane] : 0.f;
    return warp_sum(t);
}

// Programmatic Dependent Launch, device side (sm_90+; no-ops when compiled for older targets, and no-ops at run
// time when the kernel was launched without the attribute).
// pdl_wait: blocks until every prerequisite grid has completed and its memory is visible. Every kernel launched
// through tp::launch calls it (in every thread, before any early return) before touching memory an earlier
// kernel writes or reads; only read-only data (weights) may be loaded before it.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// pdl_launch_dependents: this block no longer holds back the launch of the next PDL kernel in the stream (the
// next kernel starts once every block has called it or exited; it still waits for this grid in pdl_wait).
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace tp
