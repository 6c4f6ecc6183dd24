// The RoPE arithmetic of rope_kernel and rope_store_kv_kernel (norm_rope_act.cu): one definition, so the separate
// and the fused ops rotate to the same bits (the rotation rounded step by step, as the CPU backend rounds it).
#pragma once

#include "common.cuh"

namespace tp {

// cos and sin of pair j's angle at position pos, times YaRN's attention factor (1: unchanged).
__device__ __forceinline__ void rope_cos_sin(int pos, float inv_freq, float scale, float& c, float& s) {
    float angle = (float)pos * inv_freq;
    sincosf(angle, &s, &c);
    s *= scale;
    c *= scale;
}

// The rotated pair (a, b) -> (a·c - b·s, b·c + a·s), each product and sum rounded on its own (no FMA contraction, as
// in the CPU backend's rotation; the same bits in every kernel that rotates).
__device__ __forceinline__ void rope_rotate(float a, float b, float c, float s, float& x0, float& x1) {
    x0 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    x1 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

}  // namespace tp
