// Shared helpers for every tokenpress .cu file: status/error reporting, argument checks, bf16 and
// warp/block helpers. Included by each translation unit; the error state lives in runtime.cu.
#pragma once

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <math.h>
#include "include/tokenpress.h"

namespace tp {

// Sets the thread-local error message (printf-style) and returns `code`.
int fail(int code, const char* fmt, ...);
// Records a CUDA error (code + call) and returns TP_ERR_CUDA or TP_ERR_OUT_OF_MEMORY.
int cuda_fail(cudaError_t e, const char* what);
// Multiprocessor count of the current device (cached per device).
int sm_count();

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

// Argument validation: names the bad argument in the error message.
#define TP_REQUIRE(cond, fn, arg)                                                              \
    do {                                                                                       \
        if (!(cond)) return tp::fail(TP_ERR_BAD_ARGUMENT, "%s: bad argument '%s' (%s)", fn, arg, #cond); \
    } while (0)

#define TP_STREAM(s) reinterpret_cast<cudaStream_t>(static_cast<uintptr_t>(s))
#define TP_PTR(T, a) reinterpret_cast<T*>(static_cast<uintptr_t>(a))

namespace tp {

constexpr float kNegInf = -INFINITY;
constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

// Eight bf16 packed in a uint4 -> eight floats.
__device__ __forceinline__ void bf16x8_to_f32(const uint4& u, float* f) {
    f[0] = bf16_lo(u.x); f[1] = bf16_hi(u.x);
    f[2] = bf16_lo(u.y); f[3] = bf16_hi(u.y);
    f[4] = bf16_lo(u.z); f[5] = bf16_hi(u.z);
    f[6] = bf16_lo(u.w); f[7] = bf16_hi(u.w);
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

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace tp
