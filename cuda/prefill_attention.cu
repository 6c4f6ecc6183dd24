// Causal attention for n queries (prefill), tiled with online softmax on CUDA cores. A block holds QN = 64
// query vectors: BR = 64/GT query rows times GT q-heads of one KV head's group, so each key/value tile loaded
// into shared memory serves the whole group. Per tile of BC = 32 candidate slots: S = Q·K^T (4x4 register
// micro-tiles), an online-softmax update per query vector, then O += P·V (4 x hd/8 micro-tiles). Tiles whose
// slots are all in the future of every query of the block are skipped.
#include "attention_common.cuh"

namespace {

using namespace tp;

constexpr int kThreads = 128;
constexpr int QN = 64;
constexpr int BC = 32;

template <int HD>
constexpr int smem_bytes() {
    return (QN * (HD + 1) + 2 * BC * (HD + 1) + QN * (BC + 1) + 3 * QN) * 4 + (QN + 2 * BC + 4) * 4;
}

template <int HD, int GT>
__global__ void __launch_bounds__(kThreads)
prefill_kernel(float* __restrict__ out, const float* __restrict__ q, const uint16_t* __restrict__ kc,
               const uint16_t* __restrict__ vc, const int* __restrict__ pc, int layer, int H, int Hkv, int C, int n,
               const int* __restrict__ qpos, const int* __restrict__ sel, int sel_stride,
               const int* __restrict__ sel_counts, const int* __restrict__ hw, float scale_log2,
               float* __restrict__ lse2_out) {
    constexpr int BR = QN / GT;
    constexpr int QS = HD + 1;   // row strides (floats), padded against bank conflicts
    constexpr int KS = HD + 1;
    constexpr int SS = BC + 1;
    constexpr int DV = HD / 8;   // output dims per thread in the P·V phase
    extern __shared__ float smem[];
    float* Qs = smem;                       // [QN][QS]
    float* Ks = Qs + QN * QS;               // [BC][KS]
    float* Vs = Ks + BC * KS;               // [BC][KS]
    float* S = Vs + BC * KS;                // [QN][SS]
    float* m_s = S + QN * SS;               // [QN]
    float* l_s = m_s + QN;                  // [QN]
    float* a_s = l_s + QN;                  // [QN]
    int* qp_s = reinterpret_cast<int*>(a_s + QN);  // [QN]
    int* kp_s = qp_s + QN;                  // [BC]
    int* ks_s = kp_s + BC;                  // [BC]
    int* maxqp_s = ks_s + BC;               // [1]

    const int G = H / Hkv;
    const int chunks = (G + GT - 1) / GT;
    const int kh = blockIdx.y / chunks, c = blockIdx.y % chunks;
    const int h0 = kh * G + c * GT;
    const int nh = min(GT, G - c * GT);
    const int r0 = blockIdx.x * BR;
    const int t = threadIdx.x;
    const int64_t qstride = (int64_t)H * HD;

    if (t == 0) *maxqp_s = -1;
    __syncthreads();
    for (int qi = t; qi < QN; qi += kThreads) {
        int r = qi / GT, g = qi % GT;
        bool ok = r0 + r < n && g < nh;
        int p = ok ? qpos[r0 + r] : -1;
        qp_s[qi] = p;
        m_s[qi] = kNegInf;
        l_s[qi] = 0.f;
        if (p >= 0) atomicMax(maxqp_s, p);
    }
    for (int e = t; e < QN * HD; e += kThreads) {
        int qi = e / HD, d = e % HD;
        int r = qi / GT, g = qi % GT;
        bool ok = r0 + r < n && g < nh;
        Qs[qi * QS + d] = ok ? q[(int64_t)(r0 + r) * qstride + (int64_t)(h0 + g) * HD + d] * scale_log2 : 0.f;
    }
    __syncthreads();
    const int maxqp = *maxqp_s;
    const int len = candidate_count(sel, sel_stride, sel_counts, hw, kh, C);
    const int64_t base = ((int64_t)layer * Hkv + kh) * C;

    const int ty = t / 8, tx = t % 8;  // micro-tile coordinates
    float o[4][DV];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int d = 0; d < DV; d++) o[i][d] = 0.f;

    for (int t0 = 0; t0 < len; t0 += BC) {
        if (t < BC) {
            int idx = t0 + t;
            int slot = idx < len ? candidate_slot(sel, sel_stride, kh, idx, C) : -1;
            int p = slot >= 0 ? pc[base + slot] : -1;
            ks_s[t] = slot;
            kp_s[t] = p;
        }
        __syncthreads();
        int any = __syncthreads_or(t < BC && kp_s[t] >= 0 && kp_s[t] <= maxqp);
        if (!any) continue;
        for (int e = t; e < BC * (HD / 8); e += kThreads) {
            int j = e / (HD / 8), part = e % (HD / 8);
            int slot = ks_s[j];
            float kf[8], vf[8];
            uint4 ku = make_uint4(0, 0, 0, 0), vu = make_uint4(0, 0, 0, 0);
            if (slot >= 0 && kp_s[j] >= 0) {
                ku = __ldg(reinterpret_cast<const uint4*>(kc + (base + slot) * HD + part * 8));
                vu = __ldg(reinterpret_cast<const uint4*>(vc + (base + slot) * HD + part * 8));
            }
            bf16x8_to_f32(ku, kf);
            bf16x8_to_f32(vu, vf);
#pragma unroll
            for (int x = 0; x < 8; x++) {
                Ks[j * KS + part * 8 + x] = kf[x];
                Vs[j * KS + part * 8 + x] = vf[x];
            }
        }
        __syncthreads();
        // S = Q K^T: thread owns q-vectors ty*4+i and slots tx+8*jj.
        {
            float acc[4][4];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int jj = 0; jj < 4; jj++) acc[i][jj] = 0.f;
#pragma unroll 8
            for (int d = 0; d < HD; d++) {
                float a[4], b[4];
#pragma unroll
                for (int i = 0; i < 4; i++) a[i] = Qs[(ty * 4 + i) * QS + d];
#pragma unroll
                for (int jj = 0; jj < 4; jj++) b[jj] = Ks[(tx + 8 * jj) * KS + d];
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int jj = 0; jj < 4; jj++) acc[i][jj] = fmaf(a[i], b[jj], acc[i][jj]);
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int qi = ty * 4 + i;
                int qp = qp_s[qi];
#pragma unroll
                for (int jj = 0; jj < 4; jj++) {
                    int j = tx + 8 * jj;
                    int kp = kp_s[j];
                    bool vis = ks_s[j] >= 0 && kp >= 0 && kp <= qp;
                    S[qi * SS + j] = vis ? acc[i][jj] : kNegInf;
                }
            }
        }
        __syncthreads();
        // Online softmax: two threads per query vector, 16 slots each.
        {
            int qi = t >> 1, half = t & 1;
            float* row = S + qi * SS + half * 16;
            float mx = kNegInf;
#pragma unroll
            for (int j = 0; j < 16; j++) mx = fmaxf(mx, row[j]);
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            float m_old = m_s[qi];
            float m_new = fmaxf(m_old, mx);
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < 16; j++) {
                float p = exp2_diff(row[j], m_new);
                row[j] = p;
                sum += p;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 1);
            __syncwarp();
            if (half == 0) {
                float alpha = exp2_diff(m_old, m_new);
                a_s[qi] = alpha;
                l_s[qi] = l_s[qi] * alpha + sum;
                m_s[qi] = m_new;
            }
        }
        __syncthreads();
        // O = O * alpha + P V: thread owns q-vectors ty*4+i and dims tx+8*dd.
        {
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float alpha = a_s[ty * 4 + i];
#pragma unroll
                for (int dd = 0; dd < DV; dd++) o[i][dd] *= alpha;
            }
#pragma unroll 4
            for (int j = 0; j < BC; j++) {
                float p[4];
#pragma unroll
                for (int i = 0; i < 4; i++) p[i] = S[(ty * 4 + i) * SS + j];
#pragma unroll
                for (int dd = 0; dd < DV; dd++) {
                    float v = Vs[j * KS + tx + 8 * dd];
#pragma unroll
                    for (int i = 0; i < 4; i++) o[i][dd] = fmaf(p[i], v, o[i][dd]);
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; i++) {
        int qi = ty * 4 + i;
        int r = qi / GT, g = qi % GT;
        if (r0 + r >= n || g >= nh) continue;
        float l = l_s[qi];
        float inv = l > 0.f ? 1.f / l : 0.f;
        float* orow = out + (int64_t)(r0 + r) * qstride + (int64_t)(h0 + g) * HD;
#pragma unroll
        for (int dd = 0; dd < DV; dd++) orow[tx + 8 * dd] = o[i][dd] * inv;
        if (tx == 0 && lse2_out) lse2_out[(int64_t)(r0 + r) * H + h0 + g] = l > 0.f ? m_s[qi] + log2f(l) : kNegInf;
    }
}

template <int HD, int GT>
int launch(int n, int Hkv, int chunks, float* out, const float* q, const uint16_t* kc, const uint16_t* vc,
           const int* pc, int layer, int H, int C, const int* qpos, const int* sel, int sel_stride, const int* cnt,
           const int* hw, float scale_log2, float* lse2, cudaStream_t s) {
    constexpr int BR = QN / GT;
    constexpr int bytes = smem_bytes<HD>();
    static bool attr_set = false;
    if (!attr_set) {
        TP_CUDA(cudaFuncSetAttribute(prefill_kernel<HD, GT>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
        attr_set = true;
    }
    dim3 grid((unsigned)ceil_div(n, BR), Hkv * chunks);
    prefill_kernel<HD, GT><<<grid, kThreads, bytes, s>>>(out, q, kc, vc, pc, layer, H, Hkv, C, n, qpos, sel,
                                                         sel_stride, cnt, hw, scale_log2, lse2);
    TP_LAUNCHED("prefill_kernel");
    return TP_OK;
}

template <int HD>
int launch_hd(int gt, int n, int Hkv, int chunks, float* out, const float* q, const uint16_t* kc, const uint16_t* vc,
              const int* pc, int layer, int H, int C, const int* qpos, const int* sel, int sel_stride, const int* cnt,
              const int* hw, float scale_log2, float* lse2, cudaStream_t s) {
    switch (gt) {
        case 1: return launch<HD, 1>(n, Hkv, chunks, out, q, kc, vc, pc, layer, H, C, qpos, sel, sel_stride, cnt, hw, scale_log2, lse2, s);
        case 2: return launch<HD, 2>(n, Hkv, chunks, out, q, kc, vc, pc, layer, H, C, qpos, sel, sel_stride, cnt, hw, scale_log2, lse2, s);
        case 4: return launch<HD, 4>(n, Hkv, chunks, out, q, kc, vc, pc, layer, H, C, qpos, sel, sel_stride, cnt, hw, scale_log2, lse2, s);
        default: return launch<HD, 8>(n, Hkv, chunks, out, q, kc, vc, pc, layer, H, C, qpos, sel, sel_stride, cnt, hw, scale_log2, lse2, s);
    }
}

}  // namespace

extern "C" {

uint64_t tp_prefill_attention_workspace_bytes(int n, int num_heads) {
    if (n <= 0 || num_heads <= 0) return 256;
    return (uint64_t)n * num_heads * 4 + 256;
}

int tp_prefill_attention(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                         int layer, int num_heads, int kv_heads, int head_dim, int capacity, int n,
                         uint64_t query_pos, uint64_t sel_slots, int sel_stride, uint64_t sel_counts,
                         uint64_t high_water, int max_len, float scale, int from_row, uint64_t raw_scores,
                         uint64_t prob_sums, uint64_t workspace, uint64_t workspace_bytes, uint64_t stream) {
    const char* fn = "tp_prefill_attention";
    if (head_dim != 64 && head_dim != 128)
        return fail(TP_ERR_UNSUPPORTED_HEAD_DIM, "%s: head_dim %d is not supported (CUDA attention supports 64 and 128)",
                    fn, head_dim);
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(q != 0, fn, "q");
    TP_REQUIRE(key_cache != 0, fn, "key_cache");
    TP_REQUIRE(value_cache != 0, fn, "value_cache");
    TP_REQUIRE(pos_cache != 0, fn, "pos_cache");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0, fn, "kv_heads");
    TP_REQUIRE(num_heads > 0 && num_heads % kv_heads == 0, fn, "num_heads");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(query_pos != 0 || n == 0, fn, "query_pos");
    TP_REQUIRE(sel_slots == 0 || (sel_counts != 0 && sel_stride > 0), fn, "sel_counts/sel_stride");
    TP_REQUIRE(sel_slots != 0 || high_water != 0, fn, "high_water");
    TP_REQUIRE(max_len >= 0, fn, "max_len");
    bool stats = raw_scores != 0 || prob_sums != 0;
    TP_REQUIRE(!stats || (workspace != 0 && workspace_bytes >= tp_prefill_attention_workspace_bytes(n, num_heads)),
               fn, "workspace");
    if (n == 0) return TP_OK;
    cudaStream_t s = TP_STREAM(stream);
    const int G = num_heads / kv_heads;
    const int gt = G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8;
    const int chunks = (G + gt - 1) / gt;
    TP_REQUIRE((int64_t)kv_heads * chunks <= 65535, fn, "kv_heads");
    const float scale_log2 = scale * kLog2e;
    float* lse2 = stats ? TP_PTR(float, workspace) : nullptr;
    const int* sel = TP_PTR(const int, sel_slots);
    const int* cnt = TP_PTR(const int, sel_counts);
    const int* hw = TP_PTR(const int, high_water);
    const int* qpos = TP_PTR(const int, query_pos);
    const uint16_t* kc = TP_PTR(const uint16_t, key_cache);
    const uint16_t* vc = TP_PTR(const uint16_t, value_cache);
    const int* pc = TP_PTR(const int, pos_cache);
    int rc = head_dim == 64
        ? launch_hd<64>(gt, n, kv_heads, chunks, TP_PTR(float, out), TP_PTR(const float, q), kc, vc, pc, layer,
                        num_heads, capacity, qpos, sel, sel_stride, cnt, hw, scale_log2, lse2, s)
        : launch_hd<128>(gt, n, kv_heads, chunks, TP_PTR(float, out), TP_PTR(const float, q), kc, vc, pc, layer,
                         num_heads, capacity, qpos, sel, sel_stride, cnt, hw, scale_log2, lse2, s);
    if (rc != TP_OK || !stats) return rc;
    return tp::launch_attention_stats(TP_PTR(const float, q), kc, pc, layer, num_heads, kv_heads, head_dim, capacity, n,
                                      qpos, from_row, lse2, sel, sel_stride, cnt, hw, scale_log2,
                                      TP_PTR(float, raw_scores), TP_PTR(float, prob_sums), s);
}

}  // extern "C"
