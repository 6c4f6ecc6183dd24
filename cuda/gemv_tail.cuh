// Epilogues of decode GEMV grids, run by the grid's last block once every block has written its outputs, so that
// the small op that follows a GEMV in the decode step costs no launch of its own and no grid-to-grid latency:
// - the RMSNorm of the residual stream (tp_gemv_bf16_acc_rmsnorm, tp_gemv_q8_acc_rmsnorm: y += W·x in place, then
//   out[r] = y[r] * (1 / sqrt(mean(y[r]^2) + eps)) * w, what tp_add_rmsnorm computed after the GEMV);
// - RoPE of q and k and the KV store after the q/k/v GEMV (tp_gemv_*_multi_rope_store_kv, what tp_rope_store_kv
//   computed after it).
//
// Ordering (the pattern of decode attention's fused split merge): every thread of a block reaches the barrier after
// its last write; thread 0 then fences (cumulative: the block's writes become visible device-wide before the count)
// and counts the block on a device counter (atomicInc, which wraps to 0 on the grid's last block, so the counter is
// 0 again for the next launch in stream order); that last block fences again and reads the other blocks' outputs
// through L2 (__ldcg).
#pragma once
#include "common.cuh"

namespace tp {

// RoPE + KV store epilogue of the q/k/v GEMV (tp_gemv_bf16_multi_rope_store_kv, tp_gemv_q8_multi_rope_store_kv):
// once q [n, heads*hd], k and v [n, kv_heads*hd] are written, the last block rotates q and k in place and stores k
// and v as bf16 into the cache slots, with the arithmetic of rope_store_kv_kernel (norm_rope_act.cu), which it
// replaces in the decode step.
struct RopeStoreTail {
    int* counter;     // nullptr: no epilogue; else a device int that is 0 before the launch (and is 0 again after)
    float* q;
    float* k;
    const float* v;
    const int* positions;  // [n]
    const float* inv_freq; // [hd/2]
    float scale;
    uint16_t* kc;
    uint16_t* vc;
    int* pc;
    const int* slots;      // [kv_heads][n]
    const int* token_pos;  // [kv_heads][n]
    int heads, kv_heads, hd, layer, capacity;
};

// Whether this block is the grid's last to finish (every thread of the block gets the answer); see the ordering
// note at the top. Called by every thread of every block, after the block's last write of the GEMV's outputs.
__device__ __forceinline__ bool gemv_grid_last(int* counter) {
    __shared__ int s_last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned blocks = gridDim.x * gridDim.y * gridDim.z;
        // counts 0, 1, ..., blocks - 1 and wraps to 0 on the last block: the counter is ready for the next launch
        // without a separate reset, and a counter left at another value comes back to 0 after one launch
        const bool last = atomicInc(reinterpret_cast<unsigned*>(counter), blocks - 1) == blocks - 1;
        if (last) __threadfence();
        s_last = last;
    }
    __syncthreads();
    return s_last;
}

__device__ __forceinline__ void gemv_rope_store_tail(const RopeStoreTail& t, int n) {
    if (t.counter == nullptr || !gemv_grid_last(t.counter)) return;
    const int half = t.hd >> 1;
    const int per_row = (t.heads + t.kv_heads) * half;
    for (int p = threadIdx.x; p < n * per_row; p += blockDim.x) {
        const int i = p / per_row, head = (p % per_row) / half, j = p % half;
        float angle = (float)t.positions[i] * t.inv_freq[j];
        float s, c;
        sincosf(angle, &s, &c);
        s *= t.scale;
        c *= t.scale;
        if (head < t.heads) {
            float* base = t.q + ((int64_t)i * t.heads + head) * t.hd;
            const float a = __ldcg(base + j), b = __ldcg(base + j + half);
            base[j] = a * c - b * s;
            base[j + half] = b * c + a * s;
            continue;
        }
        const int g = head - t.heads;
        float* kb = t.k + ((int64_t)i * t.kv_heads + g) * t.hd;
        const float* vb = t.v + ((int64_t)i * t.kv_heads + g) * t.hd;
        const float a = __ldcg(kb + j), b = __ldcg(kb + j + half);
        const float k0 = a * c - b * s, k1 = b * c + a * s;
        kb[j] = k0;
        kb[j + half] = k1;
        const int slot = t.slots[g * n + i];
        if (slot < 0 || slot >= t.capacity) continue;
        const int64_t row = ((int64_t)t.layer * t.kv_heads + g) * t.capacity + slot;
        const int64_t dst = row * t.hd;
        t.kc[dst + j] = f32_to_bf16_bits(k0);
        t.kc[dst + j + half] = f32_to_bf16_bits(k1);
        t.vc[dst + j] = f32_to_bf16_bits(__ldcg(vb + j));
        t.vc[dst + j + half] = f32_to_bf16_bits(__ldcg(vb + j + half));
        if (j == 0) t.pc[row] = t.token_pos[g * n + i];
    }
}

struct NormTail {
    int* counter;     // nullptr: no epilogue; else a device int that is 0 before the launch (and is 0 again after)
    float* out;       // f32 [n, dim], disjoint from y and from the GEMV's x
    const float* w;   // f32 [dim]
    float eps;
};

// Called by every thread of every block of the grid, after the block's last write of y (grid-uniform early exit
// when there is no epilogue). blockDim.x must be a multiple of 32.
__device__ __forceinline__ void gemv_norm_tail(const NormTail& t, const float* y, int n, int dim) {
    if (t.counter == nullptr || !gemv_grid_last(t.counter)) return;
    for (int r = 0; r < n; r++) {
        const float* yr = y + (int64_t)r * dim;
        float* o = t.out + (int64_t)r * dim;
        float ss = 0.f;
        for (int j = threadIdx.x; j < dim; j += blockDim.x) {
            const float v = __ldcg(yr + j);
            ss += v * v;
        }
        ss = block_sum(ss);
        const float inv = 1.f / sqrtf(ss / (float)dim + t.eps);
        for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = __ldcg(yr + j) * inv * t.w[j];
    }
}

// The epilogue's argument checks for tp_gemv_*_acc_rmsnorm (the GEMV's own are its launcher's): norm_out, norm_w and
// a 4-byte aligned counter given; norm_out's n rows overlap neither out's nor x's, and out's do not overlap x's (the
// GEMV reads x while other blocks add into out).
inline int check_norm_tail(const char* fn, uint64_t out, uint64_t x, int n, int out_dim, int in_dim,
                           uint64_t norm_out, uint64_t norm_w, uint64_t counter) {
    TP_REQUIRE(norm_out != 0, fn, "norm_out");
    TP_REQUIRE(norm_w != 0, fn, "norm_w");
    TP_REQUIRE(counter != 0 && (counter & 3) == 0, fn, "counter");
    if (n > 0 && out_dim > 0 && in_dim > 0) {
        const uint64_t ob = (uint64_t)n * (uint64_t)out_dim * 4, xb = (uint64_t)n * (uint64_t)in_dim * 4;
        TP_REQUIRE(norm_out + ob <= out || out + ob <= norm_out, fn, "norm_out");
        TP_REQUIRE(norm_out + ob <= x || x + xb <= norm_out, fn, "norm_out");
        TP_REQUIRE(out + ob <= x || x + xb <= out, fn, "out");
    }
    return TP_OK;
}

// The RoPE + KV store epilogue's arguments (the GEMV's own are its launcher's), checked as tp_rope_store_kv checks
// them, plus: q, k, v (out0..2) of heads*hd / kv_heads*hd columns overlap neither each other nor x; n <= 4.
inline int make_rope_store_tail(const char* fn, uint64_t q, uint64_t k, uint64_t v, uint64_t x, int n, int in_dim,
                                int heads, int kv_heads, int head_dim, uint64_t positions, uint64_t inv_freq,
                                float scale, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                                uint64_t slots, uint64_t token_pos, int layer, int capacity, uint64_t counter,
                                RopeStoreTail& t) {
    TP_REQUIRE(heads > 0, fn, "heads");
    TP_REQUIRE(q != 0 && k != 0 && v != 0, fn, "out0/out1/out2");
    int rc = check_rope_store_args(fn, positions, inv_freq, scale, key_cache, value_cache, pos_cache, slots, token_pos,
                                   layer, kv_heads, head_dim, capacity);
    if (rc != TP_OK) return rc;
    TP_REQUIRE(counter != 0 && (counter & 3) == 0, fn, "counter");
    TP_REQUIRE(n >= 0 && n <= 4, fn, "n");
    TP_REQUIRE(in_dim > 0, fn, "in_dim");
    const uint64_t qb = (uint64_t)n * heads * head_dim * 4, kb = (uint64_t)n * kv_heads * head_dim * 4,
                   xb = (uint64_t)n * in_dim * 4;
    auto apart = [](uint64_t a, uint64_t al, uint64_t b, uint64_t bl) { return a + al <= b || b + bl <= a; };
    TP_REQUIRE(apart(q, qb, k, kb) && apart(q, qb, v, kb) && apart(k, kb, v, kb), fn, "out0/out1/out2 (overlap)");
    TP_REQUIRE(apart(q, qb, x, xb) && apart(k, kb, x, xb) && apart(v, kb, x, xb), fn, "x (overlaps an output)");
    t.counter = TP_PTR(int, counter);
    t.q = TP_PTR(float, q);
    t.k = TP_PTR(float, k);
    t.v = TP_PTR(const float, v);
    t.positions = TP_PTR(const int, positions);
    t.inv_freq = TP_PTR(const float, inv_freq);
    t.scale = scale;
    t.kc = TP_PTR(uint16_t, key_cache);
    t.vc = TP_PTR(uint16_t, value_cache);
    t.pc = TP_PTR(int, pos_cache);
    t.slots = TP_PTR(const int, slots);
    t.token_pos = TP_PTR(const int, token_pos);
    t.heads = heads;
    t.kv_heads = kv_heads;
    t.hd = head_dim;
    t.layer = layer;
    t.capacity = capacity;
    return TP_OK;
}

}  // namespace tp
