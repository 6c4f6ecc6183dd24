// TidalDecode's token selection on the device (Backend.selectTopSlots): raw q·k of one query row against every
// slot, reduced over each KV head's group of q-heads (max or sum), then per KV head the slot holding the current
// token plus the best k - 1 other visible slots (ties: lower slot), written as an ascending slot list + count
// that decode attention reads directly (sel_slots / sel_counts). Nothing goes to the host and every step value
// (high-water marks, query position, current position) is read from device memory, so a decode step that
// selects can be captured into a CUDA graph.
//
// Kernel 1 (grid (ceil(len / 128), Hkv)): one thread per slot, the group's q vectors in shared memory as in
//   query_key_scores_kernel; writes an order-preserving uint32 key of the group score per slot (0 = not a
//   candidate: free, invisible, at or above the KV head's high-water mark) and atomicMax-es the slot holding
//   keep_pos into cur[g].
// Kernel 2 (one block of 1024 threads per KV head): counts the candidates, radix-selects the threshold key T of
//   the best (min(k, visible) - forced) candidates other than the current slot (4 passes of 8 bits, warp-
//   aggregated shared-memory histograms), then compacts in slot order: every warp owns a contiguous run of
//   slots, so the output is ascending and the keys equal to T are taken lowest slot first. Resets cur[g] to -1
//   for the next call (allocated as -1).
#include "common.cuh"

namespace {

using namespace tp;

constexpr int kScoreThreads = 128;
constexpr int kHeadChunk = 8;
constexpr int kSelThreads = 1024;
constexpr int kSelWarps = kSelThreads / 32;

// Larger score -> larger key; +0 and -0 map to the same key (the CPU compares scores with ==); every finite
// score maps to a key >= 0x00800000, so 0 is free to mean "not a candidate".
__device__ __forceinline__ uint32_t order_key(float f) {
    uint32_t b = __float_as_uint(f);
    if ((b & 0x7fffffffu) == 0u) b = 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// params int32: high_water[kv_heads] | query_pos | keep_pos
__global__ void __launch_bounds__(kScoreThreads) tidal_scores_kernel(
        uint32_t* __restrict__ keys, int len, int* __restrict__ cur, const float* __restrict__ q,
        const uint16_t* __restrict__ kc, const int* __restrict__ pc, int layer, int kv_heads, int group, int hd,
        int capacity, const int* __restrict__ params, int sum_group) {
    extern __shared__ float qs[];  // [group * hd]
    int g = blockIdx.y;
    const float* qg = q + (int64_t)g * group * hd;
    for (int i = threadIdx.x; i < group * hd; i += blockDim.x) qs[i] = qg[i];
    __syncthreads();
    int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= len) return;
    int query_pos = params[kv_heads], keep_pos = params[kv_heads + 1];
    int64_t base = ((int64_t)layer * kv_heads + g) * capacity;
    int p = s < params[g] ? pc[base + s] : -1;
    uint32_t* o = keys + (int64_t)g * len + s;
    if (p >= 0 && p == keep_pos) atomicMax(cur + g, s);  // the last slot holding it, as the CPU loop
    if (p < 0 || p > query_pos) {
        *o = 0u;
        return;
    }
    const uint4* krow = reinterpret_cast<const uint4*>(kc + (base + s) * hd);
    int chunks = hd >> 3;
    float v = sum_group ? 0.f : kNegInf;
    for (int h0 = 0; h0 < group; h0 += kHeadChunk) {
        float acc[kHeadChunk];
#pragma unroll
        for (int j = 0; j < kHeadChunk; j++) acc[j] = 0.f;
        for (int c = 0; c < chunks; c++) {
            uint4 u = __ldg(krow + c);
            float k[8];
            bf16x8_to_f32(u, k);
#pragma unroll
            for (int j = 0; j < kHeadChunk; j++) {
                if (h0 + j < group) {
                    const float* qq = qs + (h0 + j) * hd + c * 8;
#pragma unroll
                    for (int e = 0; e < 8; e++) acc[j] = fmaf(qq[e], k[e], acc[j]);
                }
            }
        }
        // in q-head order, as the CPU: v = v + r (sum) or max(v, r)
#pragma unroll
        for (int j = 0; j < kHeadChunk; j++)
            if (h0 + j < group) v = sum_group ? __fadd_rn(v, acc[j]) : fmaxf(v, acc[j]);
    }
    *o = order_key(v);
}

__device__ __forceinline__ int block_sum_int(int v, int* red) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) red[w] = v;
    __syncthreads();
    int t = lane < kSelWarps ? red[lane] : 0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    __syncthreads();
    return t;
}

// In place exclusive scan of a[0..kSelWarps) by warp 0 (kSelWarps == 32); the caller syncs before and after.
__device__ __forceinline__ void warp0_exclusive_scan(int* a) {
    if (threadIdx.x < 32) {
        int v = a[threadIdx.x], incl = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int t = __shfl_up_sync(0xffffffffu, incl, o);
            if (threadIdx.x >= o) incl += t;
        }
        a[threadIdx.x] = incl - v;
    }
}

__global__ void __launch_bounds__(kSelThreads) tidal_select_kernel(
        const uint32_t* __restrict__ keys, int len, int* __restrict__ cur_slot, const int* __restrict__ params,
        int k, int* __restrict__ out_slots, int out_stride, int* __restrict__ out_counts) {
    __shared__ int hist[256];
    __shared__ int red[kSelWarps];
    __shared__ int warp_eq[kSelWarps], warp_sel[kSelWarps];
    __shared__ int sh_digit, sh_want;
    int g = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t* key = keys + (int64_t)g * len;
    int hw = params[g];
    int n = hw < len ? hw : len;
    if (n < 0) n = 0;
    int cur = cur_slot[g];
    bool cur_ok = cur >= 0 && cur < n;
    bool forced = cur_ok && key[cur] != 0u;  // uniform over the block

    int local = 0;
    for (int s = tid; s < n; s += kSelThreads) local += key[s] != 0u;
    int visible = block_sum_int(local, red);
    int total = visible < k ? visible : k;
    if (total < 0) total = 0;
    int rest = total - (forced && total > 0 ? 1 : 0);
    bool take_cur = forced && total > 0;
    int candidates = visible - (take_cur ? 1 : 0);

    // threshold: the rest-th largest candidate key T; want = how many keys equal to T to take (lowest slots)
    uint32_t T;
    int want;
    if (rest <= 0) {
        T = 0xffffffffu;
        want = 0;
    } else if (rest >= candidates) {
        T = 0u;  // every candidate (key > 0)
        want = 0;
    } else {
        uint32_t prefix = 0u;
        want = rest;
        for (int shift = 24; shift >= 0; shift -= 8) {
            uint32_t hi_mask = shift == 24 ? 0u : (0xffffffffu << (shift + 8));
            for (int i = tid; i < 256; i += kSelThreads) hist[i] = 0;
            __syncthreads();
            for (int base = 0; base < n; base += kSelThreads) {
                int s = base + tid;
                uint32_t e = 0u;
                if (s < n) e = (take_cur && s == cur) ? 0u : key[s];
                bool ok = e != 0u && (e & hi_mask) == prefix;
                unsigned act = __ballot_sync(0xffffffffu, ok);
                if (ok) {
                    int digit = (int)((e >> shift) & 255u);
                    unsigned peers = __match_any_sync(act, digit);
                    if (lane == __ffs(peers) - 1) atomicAdd(&hist[digit], __popc(peers));
                }
            }
            __syncthreads();
            if (warp == 0) {
                // lane l owns bins 255 - 8l - j, j = 0..7 (descending)
                int own = 0;
#pragma unroll
                for (int j = 0; j < 8; j++) own += hist[255 - 8 * lane - j];
                int incl = own;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    int t = __shfl_up_sync(0xffffffffu, incl, o);
                    if (lane >= o) incl += t;
                }
                int excl = incl - own;
                if (excl < want && incl >= want) {
                    int acc = excl;
                    for (int j = 0; j < 8; j++) {
                        int b = 255 - 8 * lane - j, c = hist[b];
                        if (acc + c >= want) {
                            sh_digit = b;
                            sh_want = want - acc;
                            break;
                        }
                        acc += c;
                    }
                }
            }
            __syncthreads();
            prefix |= ((uint32_t)sh_digit) << shift;
            want = sh_want;
            __syncthreads();  // sh_digit / sh_want / hist are rewritten by the next pass
        }
        T = prefix;
    }

    // compaction in slot order: warp w owns slots [w*seg, min((w+1)*seg, n)), seg a multiple of 32
    int seg = (int)(ceil_div(ceil_div(n, kSelWarps), 32) * 32);
    int s0 = warp * seg, s1 = s0 + seg < n ? s0 + seg : n;
    bool eq_mode = T != 0u && want > 0;
    int eq_count = 0, gt_count = 0, cur_here = 0;
    for (int c = s0; c < s1; c += 32) {
        int s = c + lane;
        uint32_t e = 0u;
        bool is_cur = false;
        if (s < s1) {
            is_cur = take_cur && s == cur;
            e = is_cur ? 0u : key[s];
        }
        eq_count += __popc(__ballot_sync(0xffffffffu, eq_mode && e == T && e != 0u));
        gt_count += __popc(__ballot_sync(0xffffffffu, e > T));
        cur_here += __popc(__ballot_sync(0xffffffffu, is_cur));
    }
    if (lane == 0) warp_eq[warp] = eq_count;
    __syncthreads();
    warp0_exclusive_scan(warp_eq);
    __syncthreads();
    int eq_base = warp_eq[warp];
    int eq_taken = want - eq_base;
    if (eq_taken < 0) eq_taken = 0;
    if (eq_taken > eq_count) eq_taken = eq_count;
    if (lane == 0) warp_sel[warp] = gt_count + eq_taken + cur_here;
    __syncthreads();
    warp0_exclusive_scan(warp_sel);
    __syncthreads();
    int out_base = warp_sel[warp], eq_seen = eq_base;
    int* out = out_slots + (int64_t)g * out_stride;
    unsigned lt = (1u << lane) - 1u;
    for (int c = s0; c < s1; c += 32) {
        int s = c + lane;
        uint32_t e = 0u;
        bool is_cur = false;
        if (s < s1) {
            is_cur = take_cur && s == cur;
            e = is_cur ? 0u : key[s];
        }
        bool is_eq = eq_mode && e == T && e != 0u;
        unsigned eq_mask = __ballot_sync(0xffffffffu, is_eq);
        bool sel = is_cur || e > T || (is_eq && eq_seen + __popc(eq_mask & lt) < want);
        unsigned sel_mask = __ballot_sync(0xffffffffu, sel);
        if (sel) out[out_base + __popc(sel_mask & lt)] = s;
        out_base += __popc(sel_mask);
        eq_seen += __popc(eq_mask);
    }
    __syncthreads();
    if (tid == 0) {
        out_counts[g] = total;
        cur_slot[g] = -1;
    }
}

}  // namespace

extern "C" {

int tp_tidal_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                    int len, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer, int num_heads,
                    int kv_heads, int head_dim, int capacity, uint64_t params, int k, int sum_group,
                    uint64_t stream) {
    const char* fn = "tp_tidal_select";
    TP_REQUIRE(out_slots != 0, fn, "out_slots");
    TP_REQUIRE(out_counts != 0, fn, "out_counts");
    TP_REQUIRE(cur_slot != 0, fn, "cur_slot");
    TP_REQUIRE(keys_ws != 0, fn, "keys_ws");
    TP_REQUIRE(q != 0, fn, "q");
    TP_REQUIRE(key_cache != 0 && key_cache % 16 == 0, fn, "key_cache");
    TP_REQUIRE(pos_cache != 0, fn, "pos_cache");
    TP_REQUIRE(params != 0, fn, "params");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0 && kv_heads <= 65535, fn, "kv_heads");
    TP_REQUIRE(num_heads > 0 && num_heads % kv_heads == 0, fn, "num_heads");
    TP_REQUIRE(head_dim > 0, fn, "head_dim");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    TP_REQUIRE(len >= 1 && len <= capacity, fn, "len");
    TP_REQUIRE(k >= 0, fn, "k");
    TP_REQUIRE(out_stride >= 1 && out_stride >= k, fn, "out_stride");
    int group = num_heads / kv_heads;
    if (head_dim % 8 != 0)
        return tp::fail(TP_ERR_UNSUPPORTED_HEAD_DIM, "%s: head_dim %d is not a multiple of 8", fn, head_dim);
    size_t smem = (size_t)group * head_dim * sizeof(float);
    if (smem > 48 * 1024)
        return tp::fail(TP_ERR_UNSUPPORTED, "%s: %d q-heads per KV head x head_dim %d exceed 48 KiB of shared memory",
                        fn, group, head_dim);
    dim3 grid((unsigned)ceil_div(len, kScoreThreads), kv_heads);
    tidal_scores_kernel<<<grid, kScoreThreads, smem, TP_STREAM(stream)>>>(
        TP_PTR(uint32_t, keys_ws), len, TP_PTR(int, cur_slot), TP_PTR(const float, q),
        TP_PTR(const uint16_t, key_cache), TP_PTR(const int, pos_cache), layer, kv_heads, group, head_dim, capacity,
        TP_PTR(const int, params), sum_group);
    TP_LAUNCHED("tidal_scores_kernel");
    tidal_select_kernel<<<kv_heads, kSelThreads, 0, TP_STREAM(stream)>>>(
        TP_PTR(const uint32_t, keys_ws), len, TP_PTR(int, cur_slot), TP_PTR(const int, params), k,
        TP_PTR(int, out_slots), out_stride, TP_PTR(int, out_counts));
    TP_LAUNCHED("tidal_select_kernel");
    return TP_OK;
}

}  // extern "C"
