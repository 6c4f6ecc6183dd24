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
#include <type_traits>

#include "common.cuh"

namespace tp {

// Calls f(std::integral_constant<int, WPR>{}, std::integral_constant<bool, Tail>{}) for the warps per row wpr (1, 2,
// 4, else 8) and whether the launch has an epilogue: the GEMV kernels are templated on both, and the plain (Tail =
// false) instantiations keep the code they had without epilogues.
template <typename F>
int by_wpr_tail(int wpr, bool tail, F f) {
    auto go = [&](auto w) { return tail ? f(w, std::true_type{}) : f(w, std::false_type{}); };
    switch (wpr) {
        case 1: return go(std::integral_constant<int, 1>{});
        case 2: return go(std::integral_constant<int, 2>{});
        case 4: return go(std::integral_constant<int, 4>{});
        default: return go(std::integral_constant<int, 8>{});
    }
}

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
    // Each thread takes its pairs kRopeBatch at a time: first every load of the batch (positions, frequencies, the q
    // or k pair, the v pair, the slot), then the rotations and stores, so the block waits for about one round trip
    // per batch instead of one per pair (1,280 pairs of a llama-1b row: 5 per thread).
    constexpr int kRopeBatch = 4;
    const int half = t.hd >> 1, per_row = (t.heads + t.kv_heads) * half, total = n * per_row;
    const int bd = (int)blockDim.x;
    for (int p0 = 0; p0 < total; p0 += kRopeBatch * bd) {
        float a[kRopeBatch], b[kRopeBatch], va[kRopeBatch], vb[kRopeBatch], angle[kRopeBatch];
        int slot[kRopeBatch];
#pragma unroll
        for (int u = 0; u < kRopeBatch; u++) {
            const int p = p0 + u * bd + (int)threadIdx.x;
            a[u] = b[u] = va[u] = vb[u] = angle[u] = 0.f;
            slot[u] = -1;
            if (p >= total) continue;
            const int i = p / per_row, head = (p % per_row) / half, j = p % half;
            angle[u] = (float)t.positions[i] * t.inv_freq[j];
            if (head < t.heads) {
                const float* base = t.q + ((int64_t)i * t.heads + head) * t.hd;
                a[u] = __ldcg(base + j);
                b[u] = __ldcg(base + j + half);
            } else {
                const int g = head - t.heads;
                const float* kb = t.k + ((int64_t)i * t.kv_heads + g) * t.hd;
                const float* vr = t.v + ((int64_t)i * t.kv_heads + g) * t.hd;
                a[u] = __ldcg(kb + j);
                b[u] = __ldcg(kb + j + half);
                va[u] = __ldcg(vr + j);
                vb[u] = __ldcg(vr + j + half);
                slot[u] = t.slots[g * n + i];
            }
        }
#pragma unroll
        for (int u = 0; u < kRopeBatch; u++) {
            const int p = p0 + u * bd + (int)threadIdx.x;
            if (p >= total) continue;
            const int i = p / per_row, head = (p % per_row) / half, j = p % half;
            float s, c;
            sincosf(angle[u], &s, &c);
            s *= t.scale;  // YaRN's attention factor (1: unchanged)
            c *= t.scale;
            const float x0 = a[u] * c - b[u] * s, x1 = b[u] * c + a[u] * s;
            if (head < t.heads) {
                float* base = t.q + ((int64_t)i * t.heads + head) * t.hd;
                base[j] = x0;
                base[j + half] = x1;
                continue;
            }
            const int g = head - t.heads;
            float* kb = t.k + ((int64_t)i * t.kv_heads + g) * t.hd;
            kb[j] = x0;
            kb[j + half] = x1;
            if (slot[u] < 0 || slot[u] >= t.capacity) continue;
            const int64_t row = ((int64_t)t.layer * t.kv_heads + g) * t.capacity + slot[u];
            const int64_t dst = row * t.hd;
            t.kc[dst + j] = f32_to_bf16_bits(x0);
            t.kc[dst + j + half] = f32_to_bf16_bits(x1);
            t.vc[dst + j] = f32_to_bf16_bits(va[u]);
            t.vc[dst + j + half] = f32_to_bf16_bits(vb[u]);
            if (j == 0) t.pc[row] = t.token_pos[g * n + i];
        }
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
    // the first kNormKeep elements of each thread (all of a 2048-wide row with 256 threads) are loaded together with
    // their weights and kept in registers for the second pass; the sum of squares runs in the same order as a loop
    constexpr int kNormKeep = 8;
    const int bd = (int)blockDim.x;
    for (int r = 0; r < n; r++) {
        const float* yr = y + (int64_t)r * dim;
        float* o = t.out + (int64_t)r * dim;
        float yv[kNormKeep], wv[kNormKeep];
#pragma unroll
        for (int k = 0; k < kNormKeep; k++) {
            const int j = (int)threadIdx.x + k * bd;
            yv[k] = j < dim ? __ldcg(yr + j) : 0.f;
            wv[k] = j < dim ? t.w[j] : 0.f;
        }
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < kNormKeep; k++) ss += yv[k] * yv[k];  // + 0 past dim: unchanged
        for (int j = (int)threadIdx.x + kNormKeep * bd; j < dim; j += bd) {
            const float v = __ldcg(yr + j);
            ss += v * v;
        }
        ss = block_sum(ss);
        const float inv = 1.f / sqrtf(ss / (float)dim + t.eps);
#pragma unroll
        for (int k = 0; k < kNormKeep; k++) {
            const int j = (int)threadIdx.x + k * bd;
            if (j < dim) o[j] = yv[k] * inv * wv[k];
        }
        for (int j = (int)threadIdx.x + kNormKeep * bd; j < dim; j += bd) o[j] = __ldcg(yr + j) * inv * t.w[j];
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
