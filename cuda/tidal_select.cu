// TidalDecode's token selection on the device (Backend.selectTopSlots): raw q·k of one query row against every
// slot, reduced over each KV head's group of q-heads (max or sum), then per KV head the slot holding the current
// token plus the best k - 1 other visible slots (ties: lower slot), written as an ascending slot list + count
// that decode attention reads directly (sel_slots / sel_counts). Nothing goes to the host and every step value
// (high-water marks, query position, current position) is read from device memory, so a decode step that
// selects can be captured into a CUDA graph. Three implementations, chosen at run time
// (tp_set_tidal_select_variant); v1 and v2 have identical output, v3 may differ at near-ties (see there):
//
// v1 (the first version, kept for A/B and as the fallback):
// Kernel 1 (grid (ceil(len / 128), Hkv)): one thread per slot, the group's q vectors in shared memory as in
//   query_key_scores_kernel; writes an order-preserving uint32 key of the group score per slot (0 = not a
//   candidate: free, invisible, at or above the KV head's high-water mark) and atomicMax-es the slot holding
//   keep_pos into cur[g].
// Kernel 2 (one block of 1024 threads per KV head): counts the candidates, radix-selects the threshold key T of
//   the best (min(k, visible) - forced) candidates other than the current slot (4 passes of 8 bits, warp-
//   aggregated shared-memory histograms), then compacts in slot order: every warp owns a contiguous run of
//   slots, so the output is ascending and the keys equal to T are taken lowest slot first. Resets cur[g] to -1
//   for the next call (allocated as -1).
//
// v2 (by default from len 16384 on): the same scores and keys, bit for bit (one thread per slot, the same fmaf
// order), but the whole GPU works on every step:
// Kernel 1 (grid (blocks, Hkv), 128 threads, each block a run of 128-slot tiles sized so the grid is one wave):
//   the tile's key rows are copied coalesced into shared memory with cp.async (double-buffered when it fits),
//   each thread then scores its own row from there; the block builds a histogram of the top 11 key bits in
//   shared memory and adds it to the KV head's global histogram. The last block of a KV head (threadfence +
//   ticket) counts the candidates from the histogram, finds the bin holding the threshold (the current slot's
//   key taken out), writes the step's plan, resets cur[g] to -1 and the histogram and ticket to 0.
// Kernel 2 (grid (chunks of 2048 slots, Hkv), 512 threads): per chunk counts the keys above the threshold bin and
//   appends the keys inside it (key, slot) to a candidate list, with a histogram of their next 12 bits. The last
//   block resolves the exact threshold T (second histogram, then the last 9 bits over the candidates in shared
//   memory), counts per chunk the candidates above / equal to T, and writes each chunk's output offset and number
//   of T-equal keys before it (prefix sums over chunks); resets its histogram, list length and ticket.
// Kernel 3 (same grid): each chunk writes its selected slots at its offset in slot order (as v1's compaction),
//   taking keys equal to T while their global rank among the T-equal keys is below the wanted count.
//
// v3 (only when asked for: tp_set_tidal_select_variant(3)): v2 with another score kernel (tidal_scores_v3_kernel):
//   hd/8 lanes per key row with 16-byte coalesced loads (decode attention's layout), several rows in flight per
//   warp, the group's q-heads in registers, lane partial dots reduced with shuffles; then v2's histogram, plan,
//   collect and compact kernels. The products of a q·k are summed in another order than v1/v2 (and the CPU), so
//   scores may differ in the last bits and slots within rounding of the threshold may be selected differently.
//   Head dims 64/128/256 and groups up to 8; anything else runs v2.
// Workspace (tp_tidal_select_workspace_bytes): per-KV-head state (histograms, tickets, plan) that must be zero
// before the first call and that every call leaves zero, then the keys (both variants), the candidate lists and
// the per-chunk arrays. The state of head g sits at a fixed offset, so a workspace serves any len for one Hkv.
#include "common.cuh"
#include "attention_common.cuh"

namespace {

using namespace tp;

// ---- v1 -----------------------------------------------------------------------------------------------------

constexpr int kScoreThreads = 128;
constexpr int kHeadChunk = 8;
constexpr int kSelThreads = 1024;
constexpr int kSelWarps = kSelThreads / 32;

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


// ---- v2 -----------------------------------------------------------------------------------------------------

constexpr int kTileRows = 128;                 // rows per tile = threads per score block
constexpr int kBits1 = 11, kBits2 = 12, kBits3 = 9;  // 11 + 12 + 9 = 32 key bits
constexpr int kBins1 = 1 << kBits1, kBins2 = 1 << kBits2, kBins3 = 1 << kBits3;
constexpr int kInfoWords = 64;
constexpr int kStateWords = kBins1 + kBins2 + kInfoWords;  // per KV head: hist1 | hist2 | info
constexpr int kChunkThreads = 512;
constexpr int kChunkBase = 2048;   // slots per chunk (x a power of two so that there are at most kMaxChunks)
constexpr int kInFlight = 8;       // candidate-list entries a thread of the collect pass's last block loads at once
constexpr int kMaxChunks = 1024;
constexpr size_t kSmemDefault = 48 * 1024;
// info words
enum : int { kTicket1, kTicket2, kCandCount, kHiT, kBin1, kWant1, kCurT, kTotal, kThresh, kWantEq };

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Exclusive scan of v over the block (blockDim.x a multiple of 32, <= 1024); *total = the sum. sh: 33 ints.
__device__ __forceinline__ int block_excl_scan(int v, int* total, int* sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    if (lane == 31) sh[w] = incl;
    __syncthreads();
    if (w == 0) {
        int x = lane < nw ? sh[lane] : 0, xi = x;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int t = __shfl_up_sync(0xffffffffu, xi, o);
            if (lane >= o) xi += t;
        }
        sh[lane] = xi - x;
        if (lane == 31) sh[32] = xi;
    }
    __syncthreads();
    int r = sh[w] + incl - v;
    *total = sh[32];
    __syncthreads();  // sh is reused by the next call
    return r;
}

// Over bins [0, nbins) taken from the highest down (count(b) >= 0, nbins a multiple of blockDim.x), the bin b
// where the running count reaches want (1 <= want <= sum): res[0] = b, res[1] = want - count of the bins above b,
// res[2] = count(b). Every thread of the block calls it; res (shared) is valid after it returns.
template <class Count>
__device__ __forceinline__ void find_bin(Count count, int nbins, int want, int* sh, int* res) {
    int per = nbins / (int)blockDim.x, hi = nbins - 1 - (int)threadIdx.x * per;
    int own = 0;
    for (int j = 0; j < per; j++) own += count(hi - j);
    int total;
    int excl = block_excl_scan(own, &total, sh);
    if (excl < want && excl + own >= want) {
        int acc = excl;
        for (int j = 0; j < per; j++) {
            int c = count(hi - j);
            if (acc + c >= want) {
                res[0] = hi - j;
                res[1] = want - acc;
                res[2] = c;
                break;
            }
            acc += c;
        }
    }
    __syncthreads();
}

// The last score block of a KV head: counts the candidates from the complete histogram st[0, kBins1), finds the
// bin of the threshold (the current slot's key taken out) and writes the plan to the info words; resets *cur to
// -1 and the histogram and ticket to 0.
__device__ __forceinline__ void plan_selection(int* cur, const uint32_t* key_out, uint32_t* st, int n, int k) {
    __shared__ int sh_red[33], sh_res[3];
    uint32_t* info = st + kBins1 + kBins2;
    int tid = threadIdx.x;
    int cs = __ldcg(cur);
    uint32_t ck = (cs >= 0 && cs < n) ? __ldcg(key_out + cs) : 0u;
    int per = kBins1 / kTileRows, hi = kBins1 - 1 - tid * per, own = 0;
    for (int j = 0; j < per; j++) own += (int)__ldcg(st + hi - j);
    int visible;
    block_excl_scan(own, &visible, sh_red);
    int total = visible < k ? visible : k;
    if (total < 0) total = 0;
    bool take_cur = ck != 0u && total > 0;
    int rest = total - (take_cur ? 1 : 0), candidates = visible - (take_cur ? 1 : 0);
    uint32_t hiT;
    int bin1 = -1, want1 = 0;
    if (rest <= 0) {
        hiT = 0xffffffffu;  // nothing but the current slot
    } else if (rest >= candidates) {
        hiT = 0u;  // every candidate
    } else {
        int cur_bin = take_cur ? (int)(ck >> (32 - kBits1)) : -1;
        find_bin([=](int b) { return (int)__ldcg(st + b) - (b == cur_bin ? 1 : 0); }, kBins1, rest, sh_red, sh_res);
        if (sh_res[1] == sh_res[2]) {
            hiT = ((uint32_t)sh_res[0] << (32 - kBits1)) - 1u;  // the whole bin: everything from it up
        } else {
            hiT = ((uint32_t)(sh_res[0] + 1) << (32 - kBits1)) - 1u;  // wraps to 0xffffffff for the top bin
            bin1 = sh_res[0];
            want1 = sh_res[1];
        }
    }
    __syncthreads();
    for (int i = tid; i < kBins1; i += kTileRows) st[i] = 0u;
    if (tid == 0) {
        info[kHiT] = hiT;
        info[kBin1] = (uint32_t)bin1;
        info[kWant1] = (uint32_t)want1;
        info[kCurT] = (uint32_t)(take_cur ? cs : -1);
        info[kTotal] = (uint32_t)total;
        info[kTicket1] = 0u;
        *cur = -1;
    }
}

// The end of every score pass (v2, v3, tidal_hist_plan_kernel): the block's histogram (shared memory the whole
// block has written; nullptr for a block without rows) is added to the KV head's, then the last block of the KV head
// (fence + ticket, a grid barrier) plans the selection. Every thread of the block calls it.
__device__ __forceinline__ void finish_score_block(const uint32_t* hist, uint32_t* st, int* cur, const uint32_t* keys,
                                                   int n, int k) {
    __shared__ int sh_last;
    if (hist != nullptr)
        for (int i = threadIdx.x; i < kBins1; i += blockDim.x) {
            uint32_t c = hist[i];
            if (c) atomicAdd(st + i, c);
        }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) sh_last = atomicAdd(st + kBins1 + kBins2 + kTicket1, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!sh_last) return;
    __threadfence();
    plan_selection(cur, keys, st, n, k);  // the last block of this KV head
}

// params int32: high_water[kv_heads] | query_pos | keep_pos. Dynamic shared memory: hist [kBins1] u32 |
// q [group * hd] f32 (16-byte padded) | stages x tile [kTileRows][hd * 2 + 16 bytes].
__global__ void __launch_bounds__(kTileRows) tidal_scores_v2_kernel(
        uint32_t* __restrict__ keys, int len, int* __restrict__ cur, const float* __restrict__ q,
        const uint16_t* __restrict__ kc, const int* __restrict__ pc, int layer, int kv_heads, int group, int hd,
        int capacity, const int* __restrict__ params, int sum_group, int tiles_per_block, int stages,
        uint32_t* __restrict__ state, int k) {
    extern __shared__ __align__(16) unsigned char smem[];
    uint32_t* hist = reinterpret_cast<uint32_t*>(smem);
    float* qs = reinterpret_cast<float*>(smem + kBins1 * 4);
    unsigned char* tiles = smem + kBins1 * 4 + ((group * hd * 4 + 15) & ~15);
    const int stride = hd * 2 + 16, tile_bytes = kTileRows * stride, cpr = hd >> 3;
    int g = blockIdx.y, tid = threadIdx.x;
    int hw = params[g];
    int n = hw < len ? hw : len;
    if (n < 0) n = 0;
    int query_pos = params[kv_heads], keep_pos = params[kv_heads + 1];
    int64_t base = ((int64_t)layer * kv_heads + g) * capacity;
    uint32_t* st = state + (int64_t)g * kStateWords;
    uint32_t* key_out = keys + (int64_t)g * len;
    int first = blockIdx.x * tiles_per_block * kTileRows;
    int ntiles = 0;
    if (first < n) {
        ntiles = (int)ceil_div(n - first, kTileRows);
        if (ntiles > tiles_per_block) ntiles = tiles_per_block;
    }
    if (ntiles > 0) {
        for (int i = tid; i < kBins1; i += kTileRows) hist[i] = 0u;
        const float* qg = q + (int64_t)g * group * hd;
        for (int i = tid; i < group * hd; i += kTileRows) qs[i] = qg[i];
        const uint16_t* kbase = kc + base * hd;
        // tile t's rows [first + t * kTileRows, min(+kTileRows, n)) into buffer buf, 16-byte cp.async, coalesced
#define TP_TIDAL_LOAD_TILE(t, buf)                                                                               \
    do {                                                                                                         \
        int s0_ = first + (t) * kTileRows, rows_ = n - s0_ < kTileRows ? n - s0_ : kTileRows;                    \
        unsigned char* dst_ = tiles + (buf) * tile_bytes;                                                        \
        const uint4* src_ = reinterpret_cast<const uint4*>(kbase + (int64_t)s0_ * hd);                           \
        for (int i_ = tid; i_ < rows_ * cpr; i_ += kTileRows) {                                                  \
            int r_ = i_ / cpr;                                                                                   \
            cp_async16(dst_ + r_ * stride + (i_ - r_ * cpr) * 16, src_ + i_);                                    \
        }                                                                                                        \
        cp_async_commit();                                                                                       \
    } while (0)
        TP_TIDAL_LOAD_TILE(0, 0);
        for (int t = 0; t < ntiles; t++) {
            int s = first + t * kTileRows + tid;
            int p = s < n ? pc[base + s] : -1;
            if (stages == 2 && t + 1 < ntiles) {
                TP_TIDAL_LOAD_TILE(t + 1, (t + 1) & 1);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            __syncthreads();
            if (s < n) {
                if (p >= 0 && p == keep_pos) atomicMax(cur + g, s);  // the last slot holding it, as the CPU loop
                uint32_t key = 0u;
                if (!(p < 0 || p > query_pos)) {
                    // exactly v1's arithmetic (tidal_scores_kernel), the key row read from shared memory
                    const uint4* krow = reinterpret_cast<const uint4*>(tiles + (stages == 2 ? (t & 1) : 0) * tile_bytes
                                                                       + tid * stride);
                    float v = sum_group ? 0.f : kNegInf;
                    for (int h0 = 0; h0 < group; h0 += kHeadChunk) {
                        float acc[kHeadChunk];
#pragma unroll
                        for (int j = 0; j < kHeadChunk; j++) acc[j] = 0.f;
                        for (int c = 0; c < cpr; c++) {
                            uint4 u = krow[c];
                            float kf[8];
                            bf16x8_to_f32(u, kf);
#pragma unroll
                            for (int j = 0; j < kHeadChunk; j++) {
                                if (h0 + j < group) {
                                    // 16-byte shared loads (hd % 8 == 0), the products in v1's order
                                    const float4* qq = reinterpret_cast<const float4*>(qs + (h0 + j) * hd + c * 8);
                                    acc[j] = fma8(acc[j], qq[0], qq[1], kf);
                                }
                            }
                        }
#pragma unroll
                        for (int j = 0; j < kHeadChunk; j++)
                            if (h0 + j < group) v = sum_group ? __fadd_rn(v, acc[j]) : fmaxf(v, acc[j]);
                    }
                    key = order_key(v);
                    atomicAdd(&hist[key >> (32 - kBits1)], 1u);
                }
                key_out[s] = key;
            }
            __syncthreads();  // the buffer is refilled next
            if (stages != 2 && t + 1 < ntiles) TP_TIDAL_LOAD_TILE(t + 1, 0);
        }
#undef TP_TIDAL_LOAD_TILE
    }
    finish_score_block(ntiles > 0 ? hist : nullptr, st, cur + g, key_out, n, k);
}

// ---- v3 score kernel (then v2's collect and compact kernels) --------------------------------------------------

constexpr int kV3Threads = kTileRows;  // plan_selection is written for blocks of kTileRows threads
constexpr int kV3Unroll = 4;           // warp steps of key loads in flight per lane

// v2's score kernel with decode attention's lane layout instead of one thread per row: LPR = hd/8 lanes own one
// key row (one 16-byte load each, 8 bf16), a warp covers SUB = 32/LPR rows per step and issues kV3Unroll steps of
// loads (key and position) together; each lane keeps its 8 channels of each of the group's q-heads (GT >= group,
// the extra heads zero and skipped) in registers. A q-head's dot is the lane's fmaf chain over its 8 channels,
// then a butterfly over the LPR lanes (every lane ends with the same bits); the group is reduced in q-head order
// (max, or sum with __fadd_rn) and keyed as in v1/v2. The keys of a warp step are gathered into lanes [0, R) for
// one coalesced store and the shared-memory histogram. Scores may differ from v1/v2 (and the CPU) in the last
// bits: the products are summed in another order. Each block owns rows_per_block consecutive slots (a multiple of
// the block step); the last block of a KV head plans the selection as in v2.
template <int HD, int GT>
__global__ void __launch_bounds__(kV3Threads, 4) tidal_scores_v3_kernel(
        uint32_t* __restrict__ keys, int len, int* __restrict__ cur, const float* __restrict__ q,
        const uint16_t* __restrict__ kc, const int* __restrict__ pc, int layer, int kv_heads, int group,
        int capacity, const int* __restrict__ params, int sum_group, int rows_per_block,
        uint32_t* __restrict__ state, int k) {
    constexpr int LPR = HD / 8, SUB = 32 / LPR, U = kV3Unroll;
    constexpr int R = SUB * U;                       // rows per warp step
    constexpr int RB = (kV3Threads / 32) * R;        // rows per block step
    static_assert(LPR >= 1 && LPR <= 32 && (LPR & (LPR - 1)) == 0, "hd/8 lanes per row: a power of two <= 32");
    __shared__ uint32_t hist[kBins1];
    int g = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int sub = lane / LPR, lr = lane % LPR;
    int hw = params[g];
    int n = hw < len ? hw : len;
    if (n < 0) n = 0;
    int query_pos = params[kv_heads], keep_pos = params[kv_heads + 1];
    int64_t base = ((int64_t)layer * kv_heads + g) * capacity;
    uint32_t* st = state + (int64_t)g * kStateWords;
    uint32_t* key_out = keys + (int64_t)g * len;
    int first = blockIdx.x * rows_per_block;
    int last = n - first < rows_per_block ? n : first + rows_per_block;
    if (first < last) {  // uniform over the block
        for (int i = tid; i < kBins1; i += kV3Threads) hist[i] = 0u;
        float qr[GT][8];
#pragma unroll
        for (int j = 0; j < GT; j++) {
            if (j < group) {
                const float4* src = reinterpret_cast<const float4*>(q + ((int64_t)g * group + j) * HD + lr * 8);
                float4 a = __ldg(src), b = __ldg(src + 1);
                qr[j][0] = a.x; qr[j][1] = a.y; qr[j][2] = a.z; qr[j][3] = a.w;
                qr[j][4] = b.x; qr[j][5] = b.y; qr[j][6] = b.z; qr[j][7] = b.w;
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) qr[j][e] = 0.f;
            }
        }
        __syncthreads();  // hist zeroed
        const uint4* kb = reinterpret_cast<const uint4*>(kc + base * HD) + lr;  // row s: kb + s * LPR
        const int* pb = pc + base;
        // r0 is warp-uniform: the shuffles below run with the whole warp converged
        for (int r0 = first + warp * R; r0 < last; r0 += RB) {
            uint4 kr[U];
            int p[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                int s = r0 + u * SUB + sub;
                p[u] = -1;
                kr[u] = make_uint4(0u, 0u, 0u, 0u);
                if (s < last) {
                    p[u] = __ldg(pb + s);
                    kr[u] = __ldg(kb + (int64_t)s * LPR);
                }
            }
            uint32_t key[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                int s = r0 + u * SUB + sub;
                if (lr == 0 && s < last && p[u] >= 0 && p[u] == keep_pos) atomicMax(cur + g, s);  // the last one
                float kf[8];
                bf16x8_to_f32(kr[u], kf);
                float v = sum_group ? 0.f : kNegInf;
#pragma unroll
                for (int j = 0; j < GT; j++) {
                    float a = 0.f;
#pragma unroll
                    for (int e = 0; e < 8; e++) a = fmaf(qr[j][e], kf[e], a);
#pragma unroll
                    for (int o = LPR / 2; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                    if (j < group) v = sum_group ? __fadd_rn(v, a) : fmaxf(v, a);  // in q-head order
                }
                key[u] = (p[u] < 0 || p[u] > query_pos) ? 0u : order_key(v);
            }
            // lane L < R takes the key of row r0 + L (step L / SUB, row group L % SUB)
            uint32_t mine = 0u;
            int src = (lane % SUB) * LPR;
#pragma unroll
            for (int u = 0; u < U; u++) {
                uint32_t t = __shfl_sync(0xffffffffu, key[u], src);
                if (lane / SUB == u) mine = t;
            }
            int s = r0 + lane;
            if (lane < R && s < last) {
                key_out[s] = mine;
                if (mine != 0u) atomicAdd(&hist[mine >> (32 - kBits1)], 1u);
            }
        }
        __syncthreads();
    }
    finish_score_block(first < last ? hist : nullptr, st, cur + g, key_out, n, k);
}

// Histogram + plan over keys another kernel wrote (the quantized cache's score kernel, kv_quant.cu): the epilogue
// of the v2 / v3 score kernels as a kernel of its own. grid (blocks, kv_heads), kTileRows threads, each block a run
// of rows_per_block keys; the last block of a KV head plans the selection (same state protocol as v2).
__global__ void __launch_bounds__(kTileRows) tidal_hist_plan_kernel(
        const uint32_t* __restrict__ keys, int len, int* __restrict__ cur, const int* __restrict__ params,
        int rows_per_block, uint32_t* __restrict__ state, int k) {
    __shared__ uint32_t hist[kBins1];
    int g = blockIdx.y, tid = threadIdx.x;
    int hw = params[g];
    int n = hw < len ? hw : len;
    if (n < 0) n = 0;
    uint32_t* st = state + (int64_t)g * kStateWords;
    const uint32_t* key_in = keys + (int64_t)g * len;
    int first = blockIdx.x * rows_per_block;
    int last = n - first < rows_per_block ? n : first + rows_per_block;
    if (first < last) {  // uniform over the block
        for (int i = tid; i < kBins1; i += kTileRows) hist[i] = 0u;
        __syncthreads();
        for (int s = first + tid; s < last; s += kTileRows) {
            uint32_t key = __ldcg(key_in + s);
            if (key != 0u) atomicAdd(&hist[key >> (32 - kBits1)], 1u);
        }
        __syncthreads();
    }
    finish_score_block(first < last ? hist : nullptr, st, cur + g, key_in, n, k);
}

template <int IN_FLIGHT>
__global__ void __launch_bounds__(kChunkThreads) tidal_collect_kernel(
        const uint32_t* __restrict__ keys, int len, const int* __restrict__ params, uint32_t* __restrict__ state,
        int chunk, uint32_t* __restrict__ cand_key, int* __restrict__ cand_slot, int* __restrict__ blk_gt,
        int* __restrict__ blk_off, int* __restrict__ blk_eqb, int* __restrict__ out_counts) {
    __shared__ int sh_red[33], sh_res[3], sh_last, sh_n, sh_base;
    __shared__ int cgt[kMaxChunks], ceq[kMaxChunks], h3[kBins3];
    __shared__ uint32_t sh_ckey[kChunkBase];  // the block's candidates of the last kChunkBase slots
    __shared__ int sh_cslot[kChunkBase];
    int g = blockIdx.y, b = blockIdx.x, nb = gridDim.x, tid = threadIdx.x, lane = tid & 31;
    uint32_t* st = state + (int64_t)g * kStateWords;
    uint32_t* hist2 = st + kBins1;
    uint32_t* info = st + kBins1 + kBins2;
    uint32_t hiT = info[kHiT];
    int bin1 = (int)info[kBin1], cur_t = (int)info[kCurT];
    bool collect = bin1 >= 0;
    int hw = params[g];
    int n = hw < len ? hw : len;
    if (n < 0) n = 0;
    const uint32_t* key = keys + (int64_t)g * len;
    uint32_t* ckey = cand_key + (int64_t)g * len;
    int* cslot = cand_slot + (int64_t)g * len;
    int s0 = b * chunk, s1 = s0 + chunk < n ? s0 + chunk : n;
    int gt = 0;
    unsigned lt = (1u << lane) - 1u;
    if (tid == 0) sh_n = 0;
    __syncthreads();
    // the candidates (keys in the threshold's bin) gather in shared memory and go to the KV head's list every
    // kChunkBase slots with one global atomicAdd per block (not one per warp: thousands on one word per KV head)
    constexpr int kFlushSteps = kChunkBase / kChunkThreads;
    int step = 0;
    for (int c = s0; c < s1; c += kChunkThreads, step++) {
        int s = c + tid;
        uint32_t e = (s < s1 && s != cur_t) ? key[s] : 0u;
        gt += e > hiT;
        if (collect) {  // uniform over the block, as the loop
            bool cand = e != 0u && (int)(e >> (32 - kBits1)) == bin1;
            unsigned m = __ballot_sync(0xffffffffu, cand);
            if (m) {
                int leader = __ffs(m) - 1, at = 0;
                if (lane == leader) at = atomicAdd(&sh_n, __popc(m));
                at = __shfl_sync(0xffffffffu, at, leader);
                if (cand) {
                    int i = at + __popc(m & lt);
                    sh_ckey[i] = e;
                    sh_cslot[i] = s;
                    atomicAdd(hist2 + ((e >> kBits3) & (kBins2 - 1)), 1u);
                }
            }
            if (step % kFlushSteps == kFlushSteps - 1 || c + kChunkThreads >= s1) {
                __syncthreads();
                const int nc = sh_n;
                if (nc > 0) {
                    if (tid == 0) sh_base = (int)atomicAdd(info + kCandCount, (uint32_t)nc);
                    __syncthreads();
                    const int base = sh_base;
                    for (int i = tid; i < nc; i += kChunkThreads) {
                        ckey[base + i] = sh_ckey[i];
                        cslot[base + i] = sh_cslot[i];
                    }
                }
                __syncthreads();
                if (tid == 0) sh_n = 0;
                __syncthreads();
            }
        }
    }
    int gt_total;
    block_excl_scan(gt, &gt_total, sh_red);
    if (tid == 0) blk_gt[(int64_t)g * nb + b] = gt_total;
    __threadfence();
    __syncthreads();
    if (tid == 0) sh_last = atomicAdd(info + kTicket2, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!sh_last) return;
    __threadfence();

    // the last block of this KV head: the exact threshold, then each chunk's output offset
    int total = (int)info[kTotal];
    uint32_t T = hiT;
    int want = 0;
    for (int i = tid; i < nb; i += kChunkThreads) cgt[i] = ceq[i] = 0;
    if (collect) {
        int m = (int)__ldcg(info + kCandCount);
        int want1 = (int)info[kWant1];
        find_bin([=](int bb) { return (int)__ldcg(hist2 + bb); }, kBins2, want1, sh_red, sh_res);
        uint32_t prefix = ((uint32_t)bin1 << kBits2) | (uint32_t)sh_res[0];  // key >> kBits3
        int want2 = sh_res[1];
        for (int i = tid; i < kBins3; i += kChunkThreads) h3[i] = 0;
        __syncthreads();
        // the candidate list (~18K entries at 128K with the benchmark's keys) is read IN_FLIGHT entries per thread
        // at a time, every load issued before the shared-memory atomics that use them: with kInFlight one L2 round
        // trip per batch, not per entry (the atomics keep the next entry's load behind them)
        for (int i0 = tid; i0 < m; i0 += IN_FLIGHT * kChunkThreads) {
            uint32_t e[IN_FLIGHT];
#pragma unroll
            for (int u = 0; u < IN_FLIGHT; u++) {
                const int i = i0 + u * kChunkThreads;
                e[u] = i < m ? __ldcg(ckey + i) : 0u;
            }
#pragma unroll
            for (int u = 0; u < IN_FLIGHT; u++)
                if (i0 + u * kChunkThreads < m && (e[u] >> kBits3) == prefix) atomicAdd(&h3[e[u] & (kBins3 - 1)], 1);
        }
        __syncthreads();
        find_bin([=](int bb) { return h3[bb]; }, kBins3, want2, sh_red, sh_res);
        T = (prefix << kBits3) | (uint32_t)sh_res[0];
        want = sh_res[1];
        for (int i0 = tid; i0 < m; i0 += IN_FLIGHT * kChunkThreads) {
            uint32_t e[IN_FLIGHT];
            int sl[IN_FLIGHT];
#pragma unroll
            for (int u = 0; u < IN_FLIGHT; u++) {
                const int i = i0 + u * kChunkThreads;
                e[u] = i < m ? __ldcg(ckey + i) : 0u;
                sl[u] = i < m ? __ldcg(cslot + i) : 0;
            }
#pragma unroll
            for (int u = 0; u < IN_FLIGHT; u++)
                if (i0 + u * kChunkThreads < m && e[u] >= T) {
                    const int c = sl[u] / chunk;
                    atomicAdd(e[u] > T ? &cgt[c] : &ceq[c], 1);
                }
        }
        for (int i = tid; i < kBins2; i += kChunkThreads) hist2[i] = 0u;
    }
    __syncthreads();
    // two chunks per thread (nb <= kMaxChunks = 2 * kChunkThreads)
    int i0 = 2 * tid, i1 = i0 + 1;
    int eq0 = i0 < nb ? ceq[i0] : 0, eq1 = i1 < nb ? ceq[i1] : 0, tmp;
    int eqb0 = block_excl_scan(eq0 + eq1, &tmp, sh_red), eqb1 = eqb0 + eq0;
    int take0 = min(max(want - eqb0, 0), eq0), take1 = min(max(want - eqb1, 0), eq1);
    int cur_chunk = cur_t >= 0 ? cur_t / chunk : -1;
    int sel0 = i0 < nb ? __ldcg(blk_gt + (int64_t)g * nb + i0) + cgt[i0] + take0 + (cur_chunk == i0) : 0;
    int sel1 = i1 < nb ? __ldcg(blk_gt + (int64_t)g * nb + i1) + cgt[i1] + take1 + (cur_chunk == i1) : 0;
    int off0 = block_excl_scan(sel0 + sel1, &tmp, sh_red);
    if (i0 < nb) {
        blk_off[(int64_t)g * nb + i0] = off0;
        blk_eqb[(int64_t)g * nb + i0] = eqb0;
    }
    if (i1 < nb) {
        blk_off[(int64_t)g * nb + i1] = off0 + sel0;
        blk_eqb[(int64_t)g * nb + i1] = eqb1;
    }
    if (tid == 0) {
        info[kThresh] = T;
        info[kWantEq] = (uint32_t)want;
        info[kCandCount] = 0u;
        info[kTicket2] = 0u;
        out_counts[g] = total;
    }
}

__global__ void __launch_bounds__(kChunkThreads) tidal_compact_kernel(
        const uint32_t* __restrict__ keys, int len, const int* __restrict__ params,
        const uint32_t* __restrict__ state, int chunk, const int* __restrict__ blk_off,
        const int* __restrict__ blk_eqb, int* __restrict__ out_slots, int out_stride) {
    constexpr int kWarps = kChunkThreads / 32;
    __shared__ int warp_eq[kWarps], warp_sel[kWarps];
    int g = blockIdx.y, b = blockIdx.x, nb = gridDim.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int hw = params[g];
    int n = hw < len ? hw : len;
    int s0 = b * chunk, s1 = s0 + chunk < n ? s0 + chunk : n;
    if (s0 >= s1) return;  // uniform over the block
    const uint32_t* info = state + (int64_t)g * kStateWords + kBins1 + kBins2;
    uint32_t T = info[kThresh];
    int want = (int)info[kWantEq], cur_t = (int)info[kCurT];
    const uint32_t* key = keys + (int64_t)g * len;
    int seg = chunk / kWarps;  // a multiple of 32
    int w0 = s0 + warp * seg, w1 = w0 + seg < s1 ? w0 + seg : s1;
    bool eq_mode = T != 0u && want > 0;
    int eq_count = 0, gt_count = 0, cur_here = 0;
    for (int c = w0; c < w1; c += 32) {
        int s = c + lane;
        uint32_t e = 0u;
        bool is_cur = false;
        if (s < w1) {
            is_cur = s == cur_t;
            e = is_cur ? 0u : key[s];
        }
        eq_count += __popc(__ballot_sync(0xffffffffu, eq_mode && e == T && e != 0u));
        gt_count += __popc(__ballot_sync(0xffffffffu, e > T));
        cur_here += __popc(__ballot_sync(0xffffffffu, is_cur));
    }
    if (lane == 0) warp_eq[warp] = eq_count;
    __syncthreads();
    if (warp == 0) {
        int v = lane < kWarps ? warp_eq[lane] : 0, incl = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int t = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += t;
        }
        if (lane < kWarps) warp_eq[lane] = incl - v;
    }
    __syncthreads();
    int eq_base = blk_eqb[(int64_t)g * nb + b] + warp_eq[warp];
    int eq_taken = min(max(want - eq_base, 0), eq_count);
    if (lane == 0) warp_sel[warp] = gt_count + eq_taken + cur_here;
    __syncthreads();
    if (warp == 0) {
        int v = lane < kWarps ? warp_sel[lane] : 0, incl = v;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int t = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += t;
        }
        if (lane < kWarps) warp_sel[lane] = incl - v;
    }
    __syncthreads();
    int out_base = blk_off[(int64_t)g * nb + b] + warp_sel[warp], eq_seen = eq_base;
    int* out = out_slots + (int64_t)g * out_stride;
    unsigned lt = (1u << lane) - 1u;
    for (int c = w0; c < w1; c += 32) {
        int s = c + lane;
        uint32_t e = 0u;
        bool is_cur = false;
        if (s < w1) {
            is_cur = s == cur_t;
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
}

// Workspace layout (bytes from keys_ws): state [Hkv][kStateWords] u32 | keys [Hkv][len] u32 |
// cand_key [Hkv][len] u32 | cand_slot [Hkv][len] i32 | blk_gt, blk_off, blk_eqb [Hkv][chunks] i32.
struct Layout {
    int chunk, chunks;
    size_t keys, cand_key, cand_slot, blk_gt, blk_off, blk_eqb, bytes;
};

Layout layout(int kv_heads, int len) {
    Layout l;
    int64_t mult = ceil_div(len, (int64_t)kChunkBase * kMaxChunks);
    int64_t p2 = 1;
    while (p2 < mult) p2 <<= 1;
    l.chunk = (int)(kChunkBase * p2);
    l.chunks = (int)ceil_div(len, l.chunk);
    size_t h = (size_t)kv_heads, L = (size_t)len, C = (size_t)l.chunks;
    l.keys = 4 * h * kStateWords;
    l.cand_key = l.keys + 4 * h * L;
    l.cand_slot = l.cand_key + 4 * h * L;
    l.blk_gt = l.cand_slot + 4 * h * L;
    l.blk_off = l.blk_gt + 4 * h * C;
    l.blk_eqb = l.blk_off + 4 * h * C;
    l.bytes = l.blk_eqb + 4 * h * C;
    return l;
}

// 0 = automatic: v1 below len 16384, from there v3 where its score kernel applies (else v2). Measured on the H100,
// 1B shape, k = 2048 (KernelBench policies): v1 29.4 / v2 36.1 / v3 33.7 µs at 8K, 83.4 / 54.3 / 46.7 µs at 32K,
// 336.2 / 113.3 / 95.0 µs at 128K. 1, 2 or 3 forces one.
int g_variant = 0;
constexpr int kAutoV2MinLen = 16384;
// Keys per block of the histogram pass over keys another kernel wrote (tidal_hist_plan_kernel;
// tp_tidal_select_set_hist_rows): a multiple of kTileRows.
constexpr int kHistRowsDefault = 16 * kTileRows;
int g_hist_rows = kHistRowsDefault;
// The collect pass's last block loads kInFlight candidate-list entries per thread at once, or one
// (tp_tidal_select_set_collect_batch; the same selection either way). Off until timed on a GPU.
int g_collect_batch = 0;
using CollectFn = void (*)(const uint32_t*, int, const int*, uint32_t*, int, uint32_t*, int*, int*, int*, int*, int*);
CollectFn collect_kernel() {
    return __atomic_load_n(&g_collect_batch, __ATOMIC_RELAXED) ? tidal_collect_kernel<kInFlight> : tidal_collect_kernel<1>;
}

// Resident score blocks per SM for a dynamic shared memory size (cached per device and size).
int score_blocks_per_sm(size_t smem) {
    static int cache_dev[8] = {-1, -1, -1, -1, -1, -1, -1, -1}, cache_val[8];
    static size_t cache_smem[8];
    int dev = 0;
    cudaGetDevice(&dev);
    for (int i = 0; i < 8; i++)
        if (cache_dev[i] == dev && cache_smem[i] == smem) return cache_val[i];
    int v = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, tidal_scores_v2_kernel, kTileRows, smem) != cudaSuccess ||
        v < 1)
        v = 1;
    static int next = 0;
    int i = next++ & 7;
    cache_dev[i] = dev;
    cache_smem[i] = smem;
    cache_val[i] = v;
    return v;
}

using ScoresV3Fn = void (*)(uint32_t*, int, int*, const float*, const uint16_t*, const int*, int, int, int, int,
                             const int*, int, int, uint32_t*, int);

// The v3 score kernel for (head_dim, group), or null where it has none (v2 then runs instead).
template <int HD>
ScoresV3Fn scores_v3_for_group(int group) {
    if (group <= 1) return tidal_scores_v3_kernel<HD, 1>;
    if (group <= 2) return tidal_scores_v3_kernel<HD, 2>;
    if (group <= 4) return tidal_scores_v3_kernel<HD, 4>;
    if (group <= 8) return tidal_scores_v3_kernel<HD, 8>;
    return nullptr;
}

ScoresV3Fn scores_v3(int head_dim, int group) {
    switch (head_dim) {
        case 64: return scores_v3_for_group<64>(group);
        case 128: return scores_v3_for_group<128>(group);
        case 256: return scores_v3_for_group<256>(group);
        default: return nullptr;
    }
}

// Resident blocks per SM of a v3 score kernel (cached per device and kernel).
int scores_v3_blocks_per_sm(ScoresV3Fn fn) {
    static int cache_dev[16], cache_val[16], used = 0, next = 0;
    static ScoresV3Fn cache_fn[16];
    int dev = 0;
    cudaGetDevice(&dev);
    for (int i = 0; i < used; i++)
        if (cache_dev[i] == dev && cache_fn[i] == fn) return cache_val[i];
    int v = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&v, fn, kV3Threads, 0) != cudaSuccess || v < 1) v = 1;
    int i = used < 16 ? used++ : next++ & 15;
    cache_dev[i] = dev;
    cache_fn[i] = fn;
    cache_val[i] = v;
    return v;
}

// Rows per warp step of a v3 score kernel x warps per block.
int scores_v3_block_rows(int head_dim) { return (kV3Threads / 32) * (32 / (head_dim / 8)) * kV3Unroll; }

}  // namespace

namespace tp {

uint32_t* tidal_select_keys(uint64_t keys_ws, int kv_heads, int len) {
    return TP_PTR(uint32_t, keys_ws + layout(kv_heads, len).keys);
}

int launch_tidal_select_from_keys(uint64_t keys_ws, int len, int* cur_slot, const int* params, int k, int* out_slots,
                                  int out_stride, int* out_counts, int kv_heads, cudaStream_t stream) {
    Layout lay = layout(kv_heads, len);
    const uint32_t* keys = TP_PTR(const uint32_t, keys_ws + lay.keys);
    if (!(g_variant == 2 || g_variant == 3 || (g_variant == 0 && len >= kAutoV2MinLen))) {
        tidal_select_kernel<<<kv_heads, kSelThreads, 0, stream>>>(keys, len, cur_slot, params, k, out_slots,
                                                                  out_stride, out_counts);
        TP_LAUNCHED("tidal_select_kernel");
        return TP_OK;
    }
    uint32_t* ws = TP_PTR(uint32_t, keys_ws);
    const int rows_per_block = __atomic_load_n(&g_hist_rows, __ATOMIC_RELAXED);
    dim3 grid1((unsigned)ceil_div(len, rows_per_block), kv_heads);
    tidal_hist_plan_kernel<<<grid1, kTileRows, 0, stream>>>(keys, len, cur_slot, params, rows_per_block, ws, k);
    TP_LAUNCHED("tidal_hist_plan_kernel");
    dim3 grid2((unsigned)lay.chunks, kv_heads);
    collect_kernel()<<<grid2, kChunkThreads, 0, stream>>>(
        keys, len, params, ws, lay.chunk, TP_PTR(uint32_t, keys_ws + lay.cand_key), TP_PTR(int, keys_ws + lay.cand_slot),
        TP_PTR(int, keys_ws + lay.blk_gt), TP_PTR(int, keys_ws + lay.blk_off), TP_PTR(int, keys_ws + lay.blk_eqb),
        out_counts);
    TP_LAUNCHED("tidal_collect_kernel");
    tidal_compact_kernel<<<grid2, kChunkThreads, 0, stream>>>(
        keys, len, params, ws, lay.chunk, TP_PTR(const int, keys_ws + lay.blk_off), TP_PTR(const int, keys_ws + lay.blk_eqb),
        out_slots, out_stride);
    TP_LAUNCHED("tidal_compact_kernel");
    return TP_OK;
}

}  // namespace tp

extern "C" {

uint64_t tp_tidal_select_workspace_bytes(int kv_heads, int len) {
    if (kv_heads <= 0 || len <= 0) return 0;
    return (uint64_t)layout(kv_heads, len).bytes;
}

int tp_set_tidal_select_variant(int variant) {
    if (variant < 0 || variant > 3)
        return tp::fail(TP_ERR_BAD_ARGUMENT,
                        "tp_set_tidal_select_variant: bad argument 'variant' (%d: 0, 1, 2 or 3)", variant);
    g_variant = variant;
    return TP_OK;
}

int tp_get_tidal_select_variant(void) { return g_variant; }

int tp_tidal_select_set_collect_batch(int on) {
    if (on != 0 && on != 1)
        return tp::fail(TP_ERR_BAD_ARGUMENT, "tp_tidal_select_set_collect_batch: bad argument 'on' (%d: 0 or 1)", on);
    __atomic_store_n(&g_collect_batch, on, __ATOMIC_RELAXED);
    return TP_OK;
}

int tp_tidal_select_set_hist_rows(int rows_per_block) {
    if (rows_per_block == 0) rows_per_block = kHistRowsDefault;
    if (rows_per_block < kTileRows || rows_per_block > 65536 || rows_per_block % kTileRows != 0)
        return tp::fail(TP_ERR_BAD_ARGUMENT,
                        "tp_tidal_select_set_hist_rows: bad argument 'rows_per_block' (%d: 0 or a multiple of %d in %d .. 65536)",
                        rows_per_block, kTileRows, kTileRows);
    __atomic_store_n(&g_hist_rows, rows_per_block, __ATOMIC_RELAXED);
    return TP_OK;
}


int tp_tidal_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                    int len, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer, int num_heads,
                    int kv_heads, int head_dim, int capacity, uint64_t params, int k, int sum_group,
                    uint64_t stream) {
    const char* fn = "tp_tidal_select";
    int crc = tp::check_selection_outputs(fn, out_slots, out_counts, cur_slot, keys_ws, params);
    if (crc != TP_OK) return crc;
    crc = tp::check_query_cache_args(fn, q, key_cache, 16, pos_cache, layer, num_heads, kv_heads,
                                    head_dim, capacity);
    if (crc != TP_OK) return crc;
    TP_REQUIRE(len >= 1 && len <= capacity, fn, "len");
    TP_REQUIRE(k >= 0, fn, "k");
    TP_REQUIRE(out_stride >= 1 && out_stride >= k, fn, "out_stride");
    int group = num_heads / kv_heads;
    crc = tp::check_group_q_in_smem(fn, group, head_dim);
    if (crc != TP_OK) return crc;
    size_t qbytes = (size_t)group * head_dim * sizeof(float);
    Layout lay = layout(kv_heads, len);
    uint32_t* ws = TP_PTR(uint32_t, keys_ws);
    uint32_t* keys = TP_PTR(uint32_t, keys_ws + lay.keys);
    if (g_variant == 3 || g_variant == 2 || (g_variant == 0 && len >= kAutoV2MinLen)) {
        // v3: hd 64/128/256, groups up to 8, q 16-byte aligned (float4 loads); else v2
        ScoresV3Fn v3 = (g_variant == 3 || g_variant == 0) && q % 16 == 0 ? scores_v3(head_dim, group) : nullptr;
        // v2's score kernel shared memory: histogram | q | one or two key tiles
        size_t tile = (size_t)kTileRows * (head_dim * 2 + 16);
        size_t fixed = kBins1 * 4 + ((qbytes + 15) & ~(size_t)15);
        int stages = 2;
        size_t smem = fixed + 2 * tile;
        if (smem > kSmemDefault) {
            stages = 1;
            smem = fixed + tile;
        }
        bool ok = true;
        // the kernel's own static shared memory (160 bytes) counts against the 48 KiB too: opt in with a margin
        if (v3 == nullptr && smem > kSmemDefault - 1024) {
            int dev = 0, optin = 0;
            TP_CUDA(cudaGetDevice(&dev));
            TP_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
            ok = smem <= (size_t)optin;
            static size_t allowed[64];  // per device: what the attribute was last raised to (set outside captures)
            if (ok && (dev >= 64 || allowed[dev] < smem)) {
                TP_CUDA(cudaFuncSetAttribute(tidal_scores_v2_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             (int)smem));
                if (dev < 64) allowed[dev] = smem;
            }
        }
        if (v3 != nullptr) {
            // one wave of resident blocks over all KV heads, each a whole number of block steps
            int rb = scores_v3_block_rows(head_dim);
            int64_t steps = ceil_div(len, rb);
            int64_t resident = (int64_t)scores_v3_blocks_per_sm(v3) * sm_count();
            int64_t spb = ceil_div(steps * kv_heads, resident);
            if (spb < 1) spb = 1;
            if (spb > steps) spb = steps;
            int rows = (int)(spb * rb);
            dim3 grid1((unsigned)ceil_div(len, rows), kv_heads);
            v3<<<grid1, kV3Threads, 0, TP_STREAM(stream)>>>(
                keys, len, TP_PTR(int, cur_slot), TP_PTR(const float, q), TP_PTR(const uint16_t, key_cache),
                TP_PTR(const int, pos_cache), layer, kv_heads, group, capacity, TP_PTR(const int, params), sum_group,
                rows, ws, k);
            TP_LAUNCHED("tidal_scores_v3_kernel");
        } else if (ok) {  // else (a very large head_dim on a small-shared-memory GPU) v1 below
            int64_t tiles = ceil_div(len, kTileRows);
            int64_t resident = (int64_t)score_blocks_per_sm(smem) * sm_count();
            int64_t tpb = ceil_div(tiles * kv_heads, resident);
            if (tpb < 1) tpb = 1;
            if (tpb > tiles) tpb = tiles;
            dim3 grid1((unsigned)ceil_div(tiles, tpb), kv_heads);
            tidal_scores_v2_kernel<<<grid1, kTileRows, smem, TP_STREAM(stream)>>>(
                keys, len, TP_PTR(int, cur_slot), TP_PTR(const float, q), TP_PTR(const uint16_t, key_cache),
                TP_PTR(const int, pos_cache), layer, kv_heads, group, head_dim, capacity, TP_PTR(const int, params),
                sum_group, (int)tpb, stages, ws, k);
            TP_LAUNCHED("tidal_scores_v2_kernel");
        }
        if (v3 != nullptr || ok) {  // v2's (or v3's) score kernel ran: v2's collect and compact kernels
            dim3 grid2((unsigned)lay.chunks, kv_heads);
            collect_kernel()<<<grid2, kChunkThreads, 0, TP_STREAM(stream)>>>(
                keys, len, TP_PTR(const int, params), ws, lay.chunk, TP_PTR(uint32_t, keys_ws + lay.cand_key),
                TP_PTR(int, keys_ws + lay.cand_slot), TP_PTR(int, keys_ws + lay.blk_gt),
                TP_PTR(int, keys_ws + lay.blk_off), TP_PTR(int, keys_ws + lay.blk_eqb), TP_PTR(int, out_counts));
            TP_LAUNCHED("tidal_collect_kernel");
            tidal_compact_kernel<<<grid2, kChunkThreads, 0, TP_STREAM(stream)>>>(
                keys, len, TP_PTR(const int, params), ws, lay.chunk, TP_PTR(const int, keys_ws + lay.blk_off),
                TP_PTR(const int, keys_ws + lay.blk_eqb), TP_PTR(int, out_slots), out_stride);
            TP_LAUNCHED("tidal_compact_kernel");
            return TP_OK;
        }
    }
    dim3 grid((unsigned)ceil_div(len, kScoreThreads), kv_heads);
    tidal_scores_kernel<<<grid, kScoreThreads, qbytes, TP_STREAM(stream)>>>(
        keys, len, TP_PTR(int, cur_slot), TP_PTR(const float, q), TP_PTR(const uint16_t, key_cache),
        TP_PTR(const int, pos_cache), layer, kv_heads, group, head_dim, capacity, TP_PTR(const int, params), sum_group);
    TP_LAUNCHED("tidal_scores_kernel");
    tidal_select_kernel<<<kv_heads, kSelThreads, 0, TP_STREAM(stream)>>>(
        keys, len, TP_PTR(int, cur_slot), TP_PTR(const int, params), k, TP_PTR(int, out_slots), out_stride,
        TP_PTR(int, out_counts));
    TP_LAUNCHED("tidal_select_kernel");
    return TP_OK;
}

}  // extern "C"
