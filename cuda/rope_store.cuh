// RoPE and the KV store of a decode step's new token, shared by rope_kernel / rope_store_kv_kernel
// (norm_rope_act.cu) and the RoPE prologue of decode attention v3 (decode_attention.cu,
// tp_decode_attention_rope): one arithmetic, so every path stores and attends with the same bits.
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

// The rotated pair (a, b) -> (a·c - b·s, b·c + a·s), each product and sum rounded on its own (no FMA contraction:
// the CPU backend's arithmetic, and the same bits in every kernel that rotates).
__device__ __forceinline__ void rope_rotate(float a, float b, float c, float s, float& x0, float& x1) {
    x0 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    x1 = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

// Decode attention's RoPE prologue for one block that owns KV head kh's whole group (q-heads h0 .. h0 + nh - 1) of
// a single-token step: rotates those q-heads in place in q [H][hd], rotates KV head kh's key in place in k
// [Hkv][hd] and stores it and the value v [Hkv][hd] as bf16 into slot slots[kh] of the layer's caches (skipped
// outside [0, capacity)), writing token_pos[kh] as the slot's position. kb / vb / pb: the (layer, kh) rows of the
// key, value and position caches. The threads of the block share the pairs; the caller syncs the block after it.
template <int HD>
__device__ __forceinline__ void v3_rope_store(float* q, float* k, const float* v, int pos, const float* inv_freq,
                                              float scale, int h0, int nh, int kh, const int* slots,
                                              const int* token_pos, int capacity, uint16_t* kb, uint16_t* vb,
                                              int* pb) {
    constexpr int half = HD / 2;
    const int slot = slots[kh];
    const bool store = slot >= 0 && slot < capacity;
    for (int e = threadIdx.x; e < (nh + 1) * half; e += blockDim.x) {
        const int hh = e / half, j = e % half;
        float c, s;
        rope_cos_sin(pos, inv_freq[j], scale, c, s);
        float* x = hh < nh ? q + (int64_t)(h0 + hh) * HD : k + (int64_t)kh * HD;
        float x0, x1;
        rope_rotate(x[j], x[j + half], c, s, x0, x1);
        x[j] = x0;
        x[j + half] = x1;
        if (hh < nh || !store) continue;
        const float* vr = v + (int64_t)kh * HD;
        const int64_t dst = (int64_t)slot * HD;
        kb[dst + j] = f32_to_bf16_bits(x0);
        kb[dst + j + half] = f32_to_bf16_bits(x1);
        vb[dst + j] = f32_to_bf16_bits(vr[j]);
        vb[dst + j + half] = f32_to_bf16_bits(vr[j + half]);
        if (j == 0) pb[slot] = token_pos[kh];
    }
}

}  // namespace tp
