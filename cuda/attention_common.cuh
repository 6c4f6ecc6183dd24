// Pieces shared by decode_attention.cu and prefill_attention.cu: candidate-slot lookup and the statistics
// pass (raw q·k and post-softmax probability sums) that both attention ops run after their main kernel.
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

// Launches the statistics pass. q f32 [n, H*hd]; lse2 f32 [n, H] (log2 domain, scaled scores); raw f32 [H][C]
// receives q·k of row n-1 at attended slots; prob f32 [Hkv][C] += probabilities summed over the group's
// q-heads and rows [from_row, n). Either output may be null.
int launch_attention_stats(const float* q, const uint16_t* kc, const int* pc, int layer, int H, int Hkv, int hd,
                           int C, int n, const int* qpos, int from_row, const float* lse2, const int* sel,
                           int sel_stride, const int* sel_counts, const int* hw, float scale_log2, float* raw,
                           float* prob, cudaStream_t stream);

// TidalDecode selection (tidal_select.cu), for other score producers (the quantized cache, kv_quant.cu): the keys
// array inside a tp_tidal_select workspace sized for (kv_heads, len), and its v1 selection kernel, which reads
// keys [kv_heads][len] (0 = not a candidate, else order_key of the group score) and the params / cur_slot of
// tp_tidal_select, writes the slot lists and counts and resets cur_slot to -1.
uint32_t* tidal_select_keys(uint64_t keys_ws, int kv_heads, int len);
void launch_tidal_select_v1(const uint32_t* keys, int len, int* cur_slot, const int* params, int k, int* out_slots,
                            int out_stride, int* out_counts, int kv_heads, cudaStream_t stream);
// The selection from keys already in a tp_tidal_select workspace (tidal_select_keys): v1's kernel, or from len 16384
// on (the automatic rule of tp_set_tidal_select_variant; 2 or 3 force it, 1 forbids it) v2's passes: a histogram
// and plan kernel over the keys, then the collect and compact kernels. Returns a TP_ status.
int launch_tidal_select_from_keys(uint64_t keys_ws, int len, int* cur_slot, const int* params, int k, int* out_slots,
                                  int out_stride, int* out_counts, int kv_heads, cudaStream_t stream);

}  // namespace tp
