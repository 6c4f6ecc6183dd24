// Pieces shared by the attention sources (decode_attention.cu, prefill_attention.cu, kv_quant.cu): candidate-slot
// lookup, the statistics pass (raw q·k and post-softmax probability sums) and the TidalDecode selection from keys.
#pragma once

#include "online_softmax.cuh"

namespace tp {

// Number of candidate slots of KV head g: the selection count (clamped to the stride) or the high-water mark.
__device__ __forceinline__ int candidate_count(const int* sel, int sel_stride, const int* sel_counts,
                                               const int* high_water, int g, int capacity) {
    int len = sel ? min(sel_counts[g], sel_stride) : min(high_water[g], capacity);
    return max(len, 0);
}

// Slot of candidate idx (< candidate_count) of KV head g, or -1 when the listed slot is out of range.
__device__ __forceinline__ int candidate_slot(const int* sel, int sel_stride, int g, int idx, int capacity) {
    int s = sel ? sel[(int64_t)g * sel_stride + idx] : idx;
    return (s >= 0 && s < capacity) ? s : -1;
}

// The statistics pass over one layer and KV head kh (blockIdx.y) of an attention call, grid-strided over its
// candidates with HD/8 lanes per slot: key8(slot, pos, lr, kf) gives the 8 key channels of lane lr (the cache
// layout's part: bf16 rows, or the quantized cache's packed blocks; slot -1 or pos -1 may leave zeros); then for
// each row of interest and q-head of the group the dot (shuffle-reduced over the slot's lanes): raw[h][slot] = q·k of
// row n-1 at visible slots, prob[kh][slot] += exp2(q·k · scale_log2 - lse2[r][h]) summed over rows [from_row, n)
// and the group's q-heads (lse2 from the call's attention).
template <int HD, int THREADS, typename Key8>
__device__ __forceinline__ void attention_stats_pass(const float* __restrict__ q, const int* __restrict__ pc, int H,
                                                     int Hkv, int C, int n, const int* __restrict__ qpos,
                                                     int from_row, const float* __restrict__ lse2,
                                                     const int* __restrict__ sel, int sel_stride,
                                                     const int* __restrict__ sel_counts, const int* __restrict__ hw,
                                                     float scale_log2, float* __restrict__ raw,
                                                     float* __restrict__ prob, int64_t base, Key8 key8) {
    constexpr int LPR = HD / 8;
    constexpr int SUB = 32 / LPR;
    constexpr int NSG = (THREADS / 32) * SUB;
    const int kh = blockIdx.y;
    const int G = H / Hkv;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / LPR, lr = lane % LPR;
    const int len = candidate_count(sel, sel_stride, sel_counts, hw, kh, C);
    const int r_first = prob ? min(max(from_row, 0), n - 1) : n - 1;

    for (int tb = blockIdx.x * NSG + warp * SUB; tb < len; tb += gridDim.x * NSG) {  // uniform over the warp
        int idx = tb + sub;
        int slot = idx < len ? candidate_slot(sel, sel_stride, kh, idx, C) : -1;
        int pos = slot >= 0 ? pc[base + slot] : -1;
        float kf[8];
        key8(slot, pos, lr, kf);
        float acc = 0.f;
        for (int r = r_first; r < n; r++) {
            int qp = qpos[r];
            bool vis = pos >= 0 && pos <= qp;
            for (int g = 0; g < G; g++) {
                int h = kh * G + g;
                const float* qv = q + ((int64_t)r * H + h) * HD + lr * 8;
                float a = 0.f;
#pragma unroll
                for (int j = 0; j < 8; j++) a = fmaf(qv[j], kf[j], a);
#pragma unroll
                for (int o = LPR / 2; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                if (vis && lr == 0) {
                    if (raw && r == n - 1) raw[(int64_t)h * C + slot] = a;
                    if (prob && r >= from_row) {
                        float l = lse2[(int64_t)r * H + h];
                        if (l != kNegInf) acc += exp2f(a * scale_log2 - l);
                    }
                }
            }
        }
        if (prob && slot >= 0 && lr == 0) prob[(int64_t)kh * C + slot] += acc;
    }
}

// Launches the statistics pass. q f32 [n, H*hd]; lse2 f32 [n, H] (log2 domain, scaled scores); raw f32 [H][C]
// receives q·k of row n-1 at attended slots; prob f32 [Hkv][C] += probabilities summed over the group's
// q-heads and rows [from_row, n). Either output may be null.
int launch_attention_stats(const float* q, const uint16_t* kc, const int* pc, int layer, int H, int Hkv, int hd,
                           int C, int n, const int* qpos, int from_row, const float* lse2, const int* sel,
                           int sel_stride, const int* sel_counts, const int* hw, float scale_log2, float* raw,
                           float* prob, cudaStream_t stream);

// TidalDecode selection (tidal_select.cu) for other score producers (the quantized cache, kv_quant.cu): the keys
// array [kv_heads][len] inside a tp_tidal_select workspace sized for (kv_heads, len) (0 = not a candidate, else
// order_key of the group score), and the selection from those keys with tp_tidal_select's params and cur_slot (the
// slot lists and counts written, cur_slot reset to -1): v1's kernel, or from len 16384 on (the automatic rule of
// tp_set_tidal_select_variant; 2 or 3 force it, 1 forbids it) v2's passes: a histogram and plan kernel over the
// keys, then the collect and compact kernels. Returns a TP_ status.
uint32_t* tidal_select_keys(uint64_t keys_ws, int kv_heads, int len);
int launch_tidal_select_from_keys(uint64_t keys_ws, int len, int* cur_slot, const int* params, int k, int* out_slots,
                                  int out_stride, int* out_counts, int kv_heads, cudaStream_t stream);

}  // namespace tp
