// Ops for KV compression policies: raw q·k of one query row against every slot (TokenSelect, the per-row scores
// of A2SF / Keyformer, the RazorAttention head probe), Quest's per-page upper bound of q·k, and reading / writing
// one slot of one KV head (RazorAttention's compensation token). Their results go back to host-side policy
// logic, so they run eagerly (never inside a captured graph); the scalar query position is therefore passed by
// value, while high-water marks are read from device memory like every other op. The exception is Quest's page
// selection (tp_quest_select), whose result stays in device memory for the attention: it reads every step value
// from device memory and can be captured.
#include "common.cuh"
#include "attention_common.cuh"

namespace {

using namespace tp;

constexpr int kThreads = 128;
constexpr int kHeadChunk = 8;     // q-heads scored per pass over a key row
constexpr int kMaxDimsPerThread = 2;  // quest: hd <= kThreads * kMaxDimsPerThread

// out[(g*group + j) * out_stride + s] = q_(g*group+j) · key[layer][g][s] for s < max_hw: -inf when s >= hw[g] or
// the slot is free / not visible (0 <= position <= query_pos fails). One thread per slot, the group's q vectors
// in shared memory (every lane reads the same element: broadcast), key rows as 16-byte loads of 8 bf16.
__global__ void __launch_bounds__(kThreads) query_key_scores_kernel(
        float* __restrict__ out, int out_stride, const float* __restrict__ q, const uint16_t* __restrict__ kc,
        const int* __restrict__ pc, int layer, int kv_heads, int group, int hd, int capacity, int query_pos_arg,
        const int* __restrict__ high_water, int max_hw, const int* __restrict__ query_pos_ptr) {
    extern __shared__ float qs[];  // [group * hd]
    const int query_pos = query_pos_ptr ? query_pos_ptr[0] : query_pos_arg;
    int g = blockIdx.y;
    const float* qg = q + (int64_t)g * group * hd;
    for (int i = threadIdx.x; i < group * hd; i += blockDim.x) qs[i] = qg[i];
    __syncthreads();
    int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= max_hw) return;
    int64_t base = ((int64_t)layer * kv_heads + g) * capacity;
    int p = s < high_water[g] ? pc[base + s] : -1;
    float* o = out + (int64_t)g * group * out_stride + s;
    if (p < 0 || p > query_pos) {
        for (int j = 0; j < group; j++) o[(int64_t)j * out_stride] = kNegInf;
        return;
    }
    const uint4* krow = reinterpret_cast<const uint4*>(kc + (base + s) * hd);
    int chunks = hd >> 3;
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
#pragma unroll
        for (int j = 0; j < kHeadChunk; j++)
            if (h0 + j < group) o[(int64_t)(h0 + j) * out_stride] = acc[j];
    }
}

// One block per (page p, KV head g): M and m, the elementwise max and min of the keys of the page's visible
// slots (slots [p*page, min((p+1)*page, hw[g])) with 0 <= position <= query_pos), thread t owning dims t and
// t + 128; then for each q-head j of the group out[(g*group + j) * out_stride + p] = sum_i max(q_i M_i, q_i m_i)
// (block reduction). -inf for a page without a visible slot or at/after ceil(hw[g] / page).
__global__ void __launch_bounds__(kThreads) quest_page_scores_kernel(
        float* __restrict__ out, int out_stride, const float* __restrict__ q, const uint16_t* __restrict__ kc,
        const int* __restrict__ pc, int layer, int kv_heads, int group, int hd, int capacity, int query_pos_arg,
        const int* __restrict__ high_water, int page_size, const int* __restrict__ query_pos_ptr) {
    int p = blockIdx.x, g = blockIdx.y;
    const int query_pos = query_pos_ptr ? query_pos_ptr[0] : query_pos_arg;
    int64_t hw = high_water[g];
    int64_t s0 = (int64_t)p * page_size, s1 = s0 + page_size < hw ? s0 + page_size : hw;
    int64_t base = ((int64_t)layer * kv_heads + g) * capacity;
    float* o = out + (int64_t)g * group * out_stride + p;
    float mx[kMaxDimsPerThread], mn[kMaxDimsPerThread];
#pragma unroll
    for (int d = 0; d < kMaxDimsPerThread; d++) {
        mx[d] = kNegInf;
        mn[d] = INFINITY;
    }
    bool any = false;  // identical in every thread: all threads walk the same positions
#pragma unroll 4
    for (int64_t s = s0; s < s1; s++) {
        int ps = pc[base + s];
        if (ps < 0 || ps > query_pos) continue;
        any = true;
        const uint16_t* kr = kc + (base + s) * hd;
#pragma unroll
        for (int d = 0; d < kMaxDimsPerThread; d++) {
            int i = threadIdx.x + d * kThreads;
            if (i < hd) {
                float v = __uint_as_float(((uint32_t)kr[i]) << 16);
                mx[d] = fmaxf(mx[d], v);
                mn[d] = fminf(mn[d], v);
            }
        }
    }
    if (!any) {  // uniform over the block
        for (int j = threadIdx.x; j < group; j += blockDim.x) o[(int64_t)j * out_stride] = kNegInf;
        return;
    }
    for (int j = 0; j < group; j++) {
        const float* qh = q + (int64_t)(g * group + j) * hd;
        float part = 0.f;
#pragma unroll
        for (int d = 0; d < kMaxDimsPerThread; d++) {
            int i = threadIdx.x + d * kThreads;
            if (i < hd) {
                float qi = qh[i];
                part += fmaxf(qi * mx[d], qi * mn[d]);
            }
        }
        float total = block_sum(part);
        if (threadIdx.x == 0) o[(int64_t)j * out_stride] = total;
    }
}

// out f32 [2*hd] = key then value of one slot (bf16 -> f32, exact).
__global__ void kv_read_slot_kernel(float* __restrict__ out, const uint16_t* __restrict__ kc,
                                    const uint16_t* __restrict__ vc, int64_t off, int hd) {
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        out[i] = __uint_as_float(((uint32_t)kc[off + i]) << 16);
        out[hd + i] = __uint_as_float(((uint32_t)vc[off + i]) << 16);
    }
}

// key/value of one slot = bf16(src[0..hd)), bf16(src[hd..2hd)) (round to nearest even), its position = position.
__global__ void kv_write_slot_kernel(uint16_t* __restrict__ kc, uint16_t* __restrict__ vc, int* __restrict__ pc,
                                     const float* __restrict__ src, int64_t off, int64_t pos_off, int hd,
                                     int position) {
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        kc[off + i] = f32_to_bf16_bits(src[i]);
        vc[off + i] = f32_to_bf16_bits(src[hd + i]);
    }
    if (threadIdx.x == 0) pc[pos_off] = position;
}

// Quest's page selection on the device (tp_quest_select). params int32: pages[kv_heads] | query_pos | 0 |
// high_water[kv_heads] | cur_page[kv_heads] (pages[g] = ceil(high_water[g] / page_size), cur_page[g] < pages[g], or
// -1 when nothing is forced).
// Keys: one thread per page p < min(pages[g], len): the page's bounds (bounds f32 [H][len], tp_quest_page_scores'
// layout) reduced over the group's q-heads in q-head order, -inf bounds skipped (max, or sum with __fadd_rn),
// order_key of that, 0 when no q-head has a finite bound; the current page always a candidate (its key at least
// 0xffffffff when it has none: it is kept and adds no slot) and cur[g] = cur_page[g], so tp_tidal_select's
// selection from keys keeps it plus the best k - 1 other pages.
__global__ void __launch_bounds__(256) quest_page_keys_kernel(
        uint32_t* __restrict__ keys, int len, int* __restrict__ cur, const float* __restrict__ bounds, int group,
        int kv_heads, const int* __restrict__ params, int sum_group) {
    const int g = blockIdx.y, p = blockIdx.x * blockDim.x + threadIdx.x;
    const int pages = min(params[g], len), cur_page = params[2 * kv_heads + 2 + g];
    if (p >= pages) return;
    float v = sum_group ? 0.f : kNegInf;
    bool any = false;
    for (int j = 0; j < group; j++) {
        const float b = bounds[((int64_t)g * group + j) * len + p];
        if (b == kNegInf) continue;
        any = true;
        v = sum_group ? __fadd_rn(v, b) : fmaxf(v, b);
    }
    uint32_t key = any && v != kNegInf ? order_key(v) : 0u;  // a sum that overflows to -inf: no candidate, as the host
    if (p == cur_page) {
        if (key == 0u) key = 0xffffffffu;
        cur[g] = p;
    }
    keys[(int64_t)g * len + p] = key;
}

// The slots of the selected pages: per KV head (one block), for its count[g] pages in ascending order, the visible
// slots (0 <= position <= query_pos) of [page * page_size, min(high_water, (page + 1) * page_size)) in slot order,
// written to out_slots[g * out_stride ..] and their number to out_counts[g]. 256 threads, a page per thread per
// round, an exclusive scan of the rounds' counts.
__global__ void __launch_bounds__(256) quest_expand_kernel(
        int* __restrict__ out_slots, int* __restrict__ out_counts, int out_stride, const int* __restrict__ pages,
        const int* __restrict__ page_counts, int page_stride, const int* __restrict__ pc, int layer, int kv_heads,
        int capacity, const int* __restrict__ params, int page_size) {
    __shared__ int warp_tot[8];
    __shared__ int base_sh;
    const int g = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n = page_counts[g], qp = params[kv_heads], hw = params[kv_heads + 2 + g];
    const int* pb = pc + ((int64_t)layer * kv_heads + g) * capacity;
    int* out = out_slots + (int64_t)g * out_stride;
    if (tid == 0) base_sh = 0;
    __syncthreads();
    for (int r0 = 0; r0 < n; r0 += 256) {
        const int i = r0 + tid;
        int s0 = 0, s1 = 0, c = 0;
        if (i < n) {
            const int p = pages[(int64_t)g * page_stride + i];
            s0 = p * page_size;
            s1 = min(hw, s0 + page_size);
            for (int s = s0; s < s1; s++) {
                const int ps = pb[s];
                c += ps >= 0 && ps <= qp;
            }
        }
        int incl = c;  // inclusive scan over the block
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int t = __shfl_up_sync(0xffffffffu, incl, o);
            if (lane >= o) incl += t;
        }
        if (lane == 31) warp_tot[warp] = incl;
        __syncthreads();
        int before = base_sh;
        for (int w = 0; w < warp; w++) before += warp_tot[w];
        int at = before + incl - c;
        for (int s = s0; s < s1 && at < out_stride; s++) {
            const int ps = pb[s];
            if (ps >= 0 && ps <= qp) out[at++] = s;
        }
        __syncthreads();  // every thread has read base_sh and warp_tot
        if (tid == 255) base_sh = before + incl;
        __syncthreads();
    }
    if (tid == 0) out_counts[g] = min(base_sh, out_stride);
}

// TokenSelect's vote on the device (tp_tokenselect_select), for caches whose KV heads hold the same tokens in the same
// slots in position order (slot i = the i-th token): params int32: t (tokens) | query_pos | 0 | high_water[kv_heads].
// Per q-head h (one block): over the candidates i in [init, t - local), m = the max of raw[h][i] and
// sum = sum of exp(raw - m) in double (the host's arithmetic: float difference, double exp and sum); stats[h] =
// (m, sum), m = -inf when no candidate is visible.
__global__ void __launch_bounds__(512) tokenselect_softmax_kernel(
        double2* __restrict__ stats, const float* __restrict__ raw, int len, const int* __restrict__ params, int init,
        int local) {
    __shared__ float sm_m[16];
    __shared__ double sm_s[16];
    const int h = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t = params[0], from = init, to = min(t - local, len);
    const float* r = raw + (int64_t)h * len;
    float m = kNegInf;
    for (int i = from + tid; i < to; i += 512) m = fmaxf(m, r[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (lane == 0) sm_m[warp] = m;
    __syncthreads();
    m = sm_m[0];
    for (int w = 1; w < 16; w++) m = fmaxf(m, sm_m[w]);
    double sum = 0.0;
    if (m != kNegInf)
        for (int i = from + tid; i < to; i += 512) sum += exp((double)(r[i] - m));
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) sm_s[warp] = sum;
    __syncthreads();
    if (tid == 0) {
        double s = 0.0;
        for (int w = 0; w < 16; w++) s += sm_s[w];
        stats[h] = make_double2((double)m, s);
    }
}

// The vote of each candidate and its order key: vote(i) = sum over the q-heads in order of (float)(exp(raw - m) /
// sum) (the heads without a visible candidate add nothing), keys[i] = order_key(vote) for i in [init, t - local),
// 0 elsewhere in [0, len). One thread per slot.
__global__ void __launch_bounds__(256) tokenselect_vote_kernel(
        uint32_t* __restrict__ keys, const float* __restrict__ raw, const double2* __restrict__ stats, int heads,
        int len, const int* __restrict__ params, int init, int local) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    const int t = params[0];
    if (i < init || i >= t - local) {
        keys[i] = 0u;
        return;
    }
    float vote = 0.f;
    for (int h = 0; h < heads; h++) {
        const double2 st = stats[h];
        if (st.x == (double)kNegInf) continue;
        const double e = exp((double)(raw[(int64_t)h * len + i] - (float)st.x));
        vote = __fadd_rn(vote, (float)(e / st.y));
    }
    keys[i] = order_key(vote);
}

// Per KV head (one block): the slots [0, init), the selected candidates (ascending) and [t - local, t).
__global__ void __launch_bounds__(256) tokenselect_expand_kernel(
        int* __restrict__ out_slots, int* __restrict__ out_counts, int out_stride, const int* __restrict__ top,
        const int* __restrict__ top_count, const int* __restrict__ params, int init, int local) {
    const int g = blockIdx.x, t = params[0], n = top_count[0];
    int* out = out_slots + (int64_t)g * out_stride;
    for (int i = threadIdx.x; i < init; i += blockDim.x) out[i] = i;
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[init + i] = top[i];
    for (int i = threadIdx.x; i < local; i += blockDim.x) out[init + n + i] = t - local + i;
    if (threadIdx.x == 0) out_counts[g] = init + n + local;
}

}  // namespace

extern "C" {

int tp_query_key_scores(uint64_t out, int out_stride, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer,
                        int num_heads, int kv_heads, int head_dim, int capacity, int query_pos, uint64_t high_water,
                        int max_high_water, uint64_t stream) {
    const char* fn = "tp_query_key_scores";
    TP_REQUIRE(out != 0, fn, "out");
    int crc = tp::check_query_cache_args(fn, q, key_cache, 16, pos_cache, layer, num_heads, kv_heads,
                                        head_dim, capacity);
    if (crc != TP_OK) return crc;
    TP_REQUIRE(high_water != 0, fn, "high_water");
    TP_REQUIRE(max_high_water >= 0 && max_high_water <= capacity, fn, "max_high_water");
    TP_REQUIRE(out_stride >= max_high_water, fn, "out_stride");
    int group = num_heads / kv_heads;
    crc = tp::check_group_q_in_smem(fn, group, head_dim);
    if (crc != TP_OK) return crc;
    size_t smem = (size_t)group * head_dim * sizeof(float);
    if (max_high_water == 0) return TP_OK;
    dim3 grid((unsigned)ceil_div(max_high_water, kThreads), kv_heads);
    query_key_scores_kernel<<<grid, kThreads, smem, TP_STREAM(stream)>>>(
        TP_PTR(float, out), out_stride, TP_PTR(const float, q), TP_PTR(const uint16_t, key_cache),
        TP_PTR(const int, pos_cache), layer, kv_heads, group, head_dim, capacity, query_pos,
        TP_PTR(const int, high_water), max_high_water, nullptr);
    TP_LAUNCHED("query_key_scores_kernel");
    return TP_OK;
}

int tp_quest_page_scores(uint64_t out, int out_stride, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer,
                         int num_heads, int kv_heads, int head_dim, int capacity, int query_pos, uint64_t high_water,
                         int page_size, int max_pages, uint64_t stream) {
    const char* fn = "tp_quest_page_scores";
    TP_REQUIRE(out != 0, fn, "out");
    int crc = tp::check_query_cache_args(fn, q, key_cache, 1, pos_cache, layer, num_heads, kv_heads,
                                        head_dim, capacity);
    if (crc != TP_OK) return crc;
    TP_REQUIRE(high_water != 0, fn, "high_water");
    TP_REQUIRE(page_size >= 1, fn, "page_size");
    TP_REQUIRE(max_pages >= 0 && max_pages <= ceil_div(capacity, page_size), fn, "max_pages");
    TP_REQUIRE(out_stride >= max_pages, fn, "out_stride");
    if (head_dim > kThreads * kMaxDimsPerThread)
        return tp::fail(TP_ERR_UNSUPPORTED_HEAD_DIM, "%s: head_dim %d > %d", fn, head_dim, kThreads * kMaxDimsPerThread);
    if (max_pages == 0) return TP_OK;
    dim3 grid(max_pages, kv_heads);
    quest_page_scores_kernel<<<grid, kThreads, 0, TP_STREAM(stream)>>>(
        TP_PTR(float, out), out_stride, TP_PTR(const float, q), TP_PTR(const uint16_t, key_cache),
        TP_PTR(const int, pos_cache), layer, kv_heads, num_heads / kv_heads, head_dim, capacity, query_pos,
        TP_PTR(const int, high_water), page_size, nullptr);
    TP_LAUNCHED("quest_page_scores_kernel");
    return TP_OK;
}

int tp_kv_read_slot(uint64_t out, uint64_t key_cache, uint64_t value_cache, int layer, int head, int kv_heads,
                    int head_dim, int capacity, int slot, uint64_t stream) {
    const char* fn = "tp_kv_read_slot";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(key_cache != 0, fn, "key_cache");
    TP_REQUIRE(value_cache != 0, fn, "value_cache");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0, fn, "kv_heads");
    TP_REQUIRE(head >= 0 && head < kv_heads, fn, "head");
    TP_REQUIRE(head_dim > 0, fn, "head_dim");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    TP_REQUIRE(slot >= 0 && slot < capacity, fn, "slot");
    int64_t off = (((int64_t)layer * kv_heads + head) * capacity + slot) * head_dim;
    kv_read_slot_kernel<<<1, kThreads, 0, TP_STREAM(stream)>>>(TP_PTR(float, out), TP_PTR(const uint16_t, key_cache),
                                                                TP_PTR(const uint16_t, value_cache), off, head_dim);
    TP_LAUNCHED("kv_read_slot_kernel");
    return TP_OK;
}

int tp_kv_write_slot(uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache, uint64_t src, int layer, int head,
                     int kv_heads, int head_dim, int capacity, int slot, int position, uint64_t stream) {
    const char* fn = "tp_kv_write_slot";
    TP_REQUIRE(key_cache != 0, fn, "key_cache");
    TP_REQUIRE(value_cache != 0, fn, "value_cache");
    TP_REQUIRE(pos_cache != 0, fn, "pos_cache");
    TP_REQUIRE(src != 0, fn, "src");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0, fn, "kv_heads");
    TP_REQUIRE(head >= 0 && head < kv_heads, fn, "head");
    TP_REQUIRE(head_dim > 0, fn, "head_dim");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    TP_REQUIRE(slot >= 0 && slot < capacity, fn, "slot");
    int64_t pos_off = ((int64_t)layer * kv_heads + head) * capacity + slot;
    kv_write_slot_kernel<<<1, kThreads, 0, TP_STREAM(stream)>>>(
        TP_PTR(uint16_t, key_cache), TP_PTR(uint16_t, value_cache), TP_PTR(int, pos_cache), TP_PTR(const float, src),
        pos_off * head_dim, pos_off, head_dim, position);
    TP_LAUNCHED("kv_write_slot_kernel");
    return TP_OK;
}

// Workspace of tp_quest_select after the selection's keys_ws: bounds f32 [H][len] | page lists int32
// [Hkv][k_pages] | page counts int32 [Hkv], each 16-byte aligned.
static uint64_t align16(uint64_t b) { return (b + 15) & ~(uint64_t)15; }

uint64_t tp_quest_select_workspace_bytes(int num_heads, int kv_heads, int len, int k_pages) {
    if (num_heads <= 0 || kv_heads <= 0 || len <= 0 || k_pages < 0) return 0;
    return align16(4ull * num_heads * len) + align16(4ull * kv_heads * (k_pages > 0 ? k_pages : 1)) +
           align16(4ull * kv_heads);
}

int tp_quest_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                    uint64_t quest_ws, int len, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer,
                    int num_heads, int kv_heads, int head_dim, int capacity, uint64_t params, int page_size,
                    int k_pages, int sum_group, uint64_t stream) {
    const char* fn = "tp_quest_select";
    int crc = tp::check_selection_outputs(fn, out_slots, out_counts, cur_slot, keys_ws, params);
    if (crc != TP_OK) return crc;
    TP_REQUIRE(quest_ws != 0 && quest_ws % 16 == 0, fn, "quest_ws");
    crc = tp::check_query_cache_args(fn, q, key_cache, 1, pos_cache, layer, num_heads, kv_heads,
                                    head_dim, capacity);
    if (crc != TP_OK) return crc;
    TP_REQUIRE(page_size >= 1, fn, "page_size");
    TP_REQUIRE(len >= 1 && len <= ceil_div(capacity, page_size), fn, "len");
    TP_REQUIRE(k_pages >= 1, fn, "k_pages");
    TP_REQUIRE(out_stride >= 1 && (int64_t)out_stride >= (int64_t)k_pages * page_size, fn, "out_stride");
    TP_REQUIRE(sum_group == 0 || sum_group == 1, fn, "sum_group");
    if (head_dim > kThreads * kMaxDimsPerThread)
        return tp::fail(TP_ERR_UNSUPPORTED_HEAD_DIM, "%s: head_dim %d > %d", fn, head_dim, kThreads * kMaxDimsPerThread);
    const int group = num_heads / kv_heads;
    cudaStream_t st = TP_STREAM(stream);
    float* bounds = TP_PTR(float, quest_ws);
    const uint64_t o_list = align16(4ull * num_heads * len);
    int* page_list = TP_PTR(int, quest_ws + o_list);
    int* page_count = TP_PTR(int, quest_ws + o_list + align16(4ull * kv_heads * k_pages));
    const int* prm = TP_PTR(const int, params);
    // 1. every page's bound per q-head (pages at or after ceil(high_water / page_size): -inf)
    quest_page_scores_kernel<<<dim3(len, kv_heads), kThreads, 0, st>>>(
        bounds, len, TP_PTR(const float, q), TP_PTR(const uint16_t, key_cache), TP_PTR(const int, pos_cache), layer,
        kv_heads, group, head_dim, capacity, 0, prm + kv_heads + 2, page_size, prm + kv_heads);
    TP_LAUNCHED("quest_page_scores_kernel (selection)");
    // 2. the group's page keys and the current page
    quest_page_keys_kernel<<<dim3((unsigned)ceil_div(len, 256), kv_heads), 256, 0, st>>>(
        tp::tidal_select_keys(keys_ws, kv_heads, len), len, TP_PTR(int, cur_slot), bounds, group, kv_heads, prm,
        sum_group);
    TP_LAUNCHED("quest_page_keys_kernel");
    // 3. the current page plus the best k_pages - 1 others, ascending
    int rc = tp::launch_tidal_select_from_keys(keys_ws, len, TP_PTR(int, cur_slot), prm, k_pages, page_list, k_pages,
                                               page_count, kv_heads, st);
    if (rc != TP_OK) return rc;
    // 4. their visible slots
    quest_expand_kernel<<<kv_heads, 256, 0, st>>>(TP_PTR(int, out_slots), TP_PTR(int, out_counts), out_stride,
                                                  page_list, page_count, k_pages, TP_PTR(const int, pos_cache), layer,
                                                  kv_heads, capacity, prm, page_size);
    TP_LAUNCHED("quest_expand_kernel");
    return TP_OK;
}

// Workspace of tp_tokenselect_select: raw scores f32 [H][len] | softmax stats double2 [H] | the selected candidates
// int32 [k] | their count int32, each 16-byte aligned.
uint64_t tp_tokenselect_workspace_bytes(int num_heads, int len, int k) {
    if (num_heads <= 0 || len <= 0 || k < 0) return 0;
    return align16(4ull * num_heads * len) + align16(16ull * num_heads) + align16(4ull * (k > 0 ? k : 1)) + 16;
}

int tp_tokenselect_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                          uint64_t ts_ws, int len, uint64_t q, uint64_t key_cache, uint64_t pos_cache, int layer,
                          int num_heads, int kv_heads, int head_dim, int capacity, uint64_t params, int k, int init,
                          int local, uint64_t stream) {
    const char* fn = "tp_tokenselect_select";
    int crc = tp::check_selection_outputs(fn, out_slots, out_counts, cur_slot, keys_ws, params);
    if (crc != TP_OK) return crc;
    TP_REQUIRE(ts_ws != 0 && ts_ws % 16 == 0, fn, "ts_ws");
    crc = tp::check_query_cache_args(fn, q, key_cache, 16, pos_cache, layer, num_heads, kv_heads,
                                    head_dim, capacity);
    if (crc != TP_OK) return crc;
    TP_REQUIRE(len >= 1 && len <= capacity, fn, "len");
    TP_REQUIRE(k >= 1, fn, "k");
    TP_REQUIRE(init >= 0 && local >= 0, fn, "init/local");
    TP_REQUIRE((int64_t)out_stride >= (int64_t)init + k + local, fn, "out_stride");
    const int group = num_heads / kv_heads;
    crc = tp::check_group_q_in_smem(fn, group, head_dim);
    if (crc != TP_OK) return crc;
    const size_t smem = (size_t)group * head_dim * sizeof(float);
    cudaStream_t st = TP_STREAM(stream);
    const uint64_t o_stats = align16(4ull * num_heads * len), o_top = o_stats + align16(16ull * num_heads);
    float* raw = TP_PTR(float, ts_ws);
    double2* stats = TP_PTR(double2, ts_ws + o_stats);
    int* top = TP_PTR(int, ts_ws + o_top);
    int* top_count = TP_PTR(int, ts_ws + o_top + align16(4ull * k));
    const int* prm = TP_PTR(const int, params);
    // 1. raw q·k of every slot below the high-water marks (-inf where not visible)
    query_key_scores_kernel<<<dim3((unsigned)ceil_div(len, kThreads), kv_heads), kThreads, smem, st>>>(
        raw, len, TP_PTR(const float, q), TP_PTR(const uint16_t, key_cache), TP_PTR(const int, pos_cache), layer,
        kv_heads, group, head_dim, capacity, 0, prm + 3, len, prm + 1);
    TP_LAUNCHED("query_key_scores_kernel (token selection)");
    // 2. each q-head's softmax over the candidates, 3. the votes as order keys
    tokenselect_softmax_kernel<<<num_heads, 512, 0, st>>>(stats, raw, len, prm, init, local);
    TP_LAUNCHED("tokenselect_softmax_kernel");
    tokenselect_vote_kernel<<<(unsigned)ceil_div(len, 256), 256, 0, st>>>(
        tp::tidal_select_keys(keys_ws, 1, len), raw, stats, num_heads, len, prm, init, local);
    TP_LAUNCHED("tokenselect_vote_kernel");
    // 4. the best k candidates (ties: lower slot), ascending, 5. with the first init and last local slots
    int rc = tp::launch_tidal_select_from_keys(keys_ws, len, TP_PTR(int, cur_slot), prm, k, top, k, top_count, 1, st);
    if (rc != TP_OK) return rc;
    tokenselect_expand_kernel<<<kv_heads, 256, 0, st>>>(TP_PTR(int, out_slots), TP_PTR(int, out_counts), out_stride,
                                                       top, top_count, prm, init, local);
    TP_LAUNCHED("tokenselect_expand_kernel");
    return TP_OK;
}

}  // extern "C"
