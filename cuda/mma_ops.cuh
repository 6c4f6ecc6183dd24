// Device helpers of the tensor-core kernels that kvq_mma.cuh is written against: shared-memory addresses, loads and
// stores, cp.async copies, the bf16 m16n8k16 MMA, bf16 / f16 pair conversions. The host emulation of those kernels
// (tests/resources/cuda/mma_emulation.h) defines the same names with the same meaning.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

namespace tp {
namespace mma {

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ uint32_t smem_ld32(uint32_t a) {
    uint32_t v;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(a) : "memory");
    return v;
}
__device__ __forceinline__ uint32_t smem_ld16(uint32_t a) {
    unsigned short v;
    asm volatile("ld.shared.u16 %0, [%1];\n" : "=h"(v) : "r"(a) : "memory");
    return v;
}
// N = 1, 2 or 4 consecutive 32-bit words (a aligned to 4·N bytes) in one shared load
template <int N>
__device__ __forceinline__ void smem_ldv(uint32_t a, uint32_t (&w)[N]) {
    static_assert(N == 1 || N == 2 || N == 4, "vector width");
    if (N == 1) {
        asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(w[0]) : "r"(a) : "memory");
    } else if (N == 2) {
        asm volatile("ld.shared.v2.b32 {%0, %1}, [%2];\n" : "=r"(w[0]), "=r"(w[N > 1 ? 1 : 0]) : "r"(a) : "memory");
    } else {
        asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(w[0]), "=r"(w[N > 1 ? 1 : 0]), "=r"(w[N > 2 ? 2 : 0]), "=r"(w[N > 3 ? 3 : 0])
                     : "r"(a) : "memory");
    }
}
__device__ __forceinline__ void smem_st32(uint32_t a, uint32_t v) {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(a), "r"(v) : "memory");
}
// cp.async of N = 4, 8 or 16 bytes (16: L2 only; 4 and 8: through L1)
template <int N>
__device__ __forceinline__ void cp_async(uint32_t smem, const void* gmem) {
    static_assert(N == 4 || N == 8 || N == 16, "cp.async size");
    if (N == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(smem), "l"(gmem), "n"(N) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// C += A · B, mma.sync.m16n8k16 bf16 -> f32. Lane 4·g + t holds a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 =
// A[g][2t+8..], a3 = A[g+8][2t+8..] (low half = lower column), b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g],
// c0 c1 = C[g][2t], C[g][2t+1], c2 c3 = C[g+8][2t], C[g+8][2t+1].
__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// (x0, x1) -> bf16x2 hi = rn(x), lo = rn(x - hi) (x0 in the low half): |x - hi - lo| <= 2^-16 |x|.
__device__ __forceinline__ void split_bf16x2(float x0, float x1, uint32_t& hi, uint32_t& lo) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
    float2 hf = __bfloat1622float2(h);
    __nv_bfloat162 l = __floats2bfloat162_rn(x0 - hf.x, x1 - hf.y);
    hi = *reinterpret_cast<uint32_t*>(&h);
    lo = *reinterpret_cast<uint32_t*>(&l);
}
__device__ __forceinline__ float bf16_low(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_high(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }
// two codes (< 2^bits, bits <= 8) as an exact bf16x2 (n0 in the low half): codes below 128 through the bf16 of
// 128 + n minus 128 (one or, one subtraction), 8-bit codes through f32.
template <int BITS>
__device__ __forceinline__ uint32_t codes_bf16x2(uint32_t n0, uint32_t n1) {
    if (BITS <= 4) {
        uint32_t w = n0 | (n1 << 16) | 0x43004300u;
        __nv_bfloat162 x = *reinterpret_cast<__nv_bfloat162*>(&w);
        __nv_bfloat162 r = __hsub2(x, __floats2bfloat162_rn(128.f, 128.f));
        return *reinterpret_cast<uint32_t*>(&r);
    } else {
        __nv_bfloat162 r = __floats2bfloat162_rn((float)n0, (float)n1);
        return *reinterpret_cast<uint32_t*>(&r);
    }
}
// f16 pair (low half first) -> two floats, exact
__device__ __forceinline__ float2 f16x2_to_float2(uint32_t w) {
    return __half22float2(*reinterpret_cast<const __half2*>(&w));
}
__device__ __forceinline__ float f16_to_float(uint32_t h) { return __half2float(__ushort_as_half((unsigned short)h)); }

}  // namespace mma
}  // namespace tp
