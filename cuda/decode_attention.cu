// Flash-decoding for one query token, GQA-native: a block handles one KV head and (up to GT of) the q-heads
// of its group, so each key/value row is read from memory once per group. The candidate list of a KV head is
// split across gridDim.x blocks; each block leaves a partial (max, sum, acc) state that a second kernel
// merges. Also home of the statistics pass shared with prefill attention.
//
// Thread layout of the split kernel: LPR = hd/8 lanes own one key row (16-byte loads, 8 bf16 per lane),
// so a warp covers 32/LPR rows per step and each lane keeps GT online-softmax states of 8 output dims.
#include "attention_common.cuh"
#include "mma_ops.cuh"
#include "sel_keys.cuh"

namespace {

using namespace tp;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxSplits = 256;

// Forced splits per (KV head, head chunk) of every split launch (tp_set_attention_splits; 0 = the kernel's own
// choice), for tuning sweeps. Direct (single-pass) launches are not affected.
int g_splits_override = 0;

int forced_splits(int splits) {
    const int f = __atomic_load_n(&g_splits_override, __ATOMIC_RELAXED);
    return f > 0 ? (f > kMaxSplits ? kMaxSplits : f) : splits;
}

// Rows of its candidate range each block of decode attention v3 prefetches into L2 before pdl_wait
// (tp_set_attention_prefetch; 0 = none, the default until measured).
int g_prefetch_rows = 0;

__device__ __forceinline__ uint4 ldg16(const uint16_t* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

// Resident blocks per SM the split kernel is compiled for (register cap through __launch_bounds__): 4 (<= 128
// registers per thread) up to GT = 4; GT = 8 needs ~230 registers without spilling, so 2. The launcher sizes the
// grid to one wave of exactly this many blocks per SM.
constexpr int split_blocks_per_sm(int gt) { return gt >= 8 ? 2 : 4; }

template <int HD, int GT>
__global__ void __launch_bounds__(kThreads, split_blocks_per_sm(GT))
decode_split_kernel(const float* __restrict__ q, const uint16_t* __restrict__ kc, const uint16_t* __restrict__ vc,
                    const int* __restrict__ pc, int layer, int H, int Hkv, int C, const int* __restrict__ qpos_ptr,
                    const int* __restrict__ sel, int sel_stride, const int* __restrict__ sel_counts,
                    const int* __restrict__ hw, float scale_log2, int splits, float* __restrict__ part_o,
                    float2* __restrict__ part_md, int* __restrict__ counters, float* __restrict__ out,
                    float* __restrict__ lse2, bool direct) {
    constexpr int LPR = HD / 8;          // lanes per key row
    constexpr int SUB = 32 / LPR;        // rows per warp step
    constexpr int NSG = kWarps * SUB;    // rows per block step
    constexpr int U = GT >= 8 ? 2 : 4;   // block steps in flight per iteration
    __shared__ float sm_o[kWarps][GT][HD];
    __shared__ float sm_m[kWarps][GT], sm_d[kWarps][GT];

    const int G = H / Hkv;
    const int chunks = (G + GT - 1) / GT;
    const int kh = blockIdx.y / chunks, c = blockIdx.y % chunks;
    const int h0 = kh * G + c * GT;
    const int nh = min(GT, G - c * GT);
    const int split = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / LPR, lr = lane % LPR;

    pdl_wait();  // q, the cache, the slot lists and the step values come from earlier kernels
    pdl_launch_dependents();
    const int len = candidate_count(sel, sel_stride, sel_counts, hw, kh, C);
    const int qp = qpos_ptr[0];
    int per = (int)ceil_div(len, splits);
    per = (int)ceil_div(per, NSG) * NSG;
    const int begin = split * per;
    const int end = min(len, begin + per);

    float qr[GT][8];
#pragma unroll
    for (int g = 0; g < GT; g++) {
        if (g < nh) {
            const float4* src = reinterpret_cast<const float4*>(q + (int64_t)(h0 + g) * HD + lr * 8);
            float4 a = src[0], b = src[1];
            qr[g][0] = a.x * scale_log2; qr[g][1] = a.y * scale_log2; qr[g][2] = a.z * scale_log2;
            qr[g][3] = a.w * scale_log2; qr[g][4] = b.x * scale_log2; qr[g][5] = b.y * scale_log2;
            qr[g][6] = b.z * scale_log2; qr[g][7] = b.w * scale_log2;
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) qr[g][j] = 0.f;
        }
    }
    SoftmaxState<8> st[GT];
#pragma unroll
    for (int g = 0; g < GT; g++) st[g].init();

    const int64_t base = ((int64_t)layer * Hkv + kh) * C;
    const uint16_t* kb = kc + base * HD + lr * 8;
    const uint16_t* vb = vc + base * HD + lr * 8;
    const int* pb = pc + base;

    // tb is warp-uniform, so the shuffles below run with the whole warp converged.
    for (int tb = begin + warp * SUB; tb < end; tb += NSG * U) {
        uint4 kr[U], vr[U];
        int pos[U];
        bool vis[U];
        // The position, key and value loads of every candidate slot in [0, C) are issued together (no
        // dependent round trip through the position); visibility is applied afterwards.
#pragma unroll
        for (int u = 0; u < U; u++) {
            int idx = tb + u * NSG + sub;
            int slot = idx < end ? candidate_slot(sel, sel_stride, kh, idx, C) : -1;
            pos[u] = -1;
            kr[u] = make_uint4(0, 0, 0, 0);
            vr[u] = make_uint4(0, 0, 0, 0);
            if (slot >= 0) {
                pos[u] = __ldg(pb + slot);
                kr[u] = ldg16(kb + (int64_t)slot * HD);
                vr[u] = ldg16(vb + (int64_t)slot * HD);
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            vis[u] = pos[u] >= 0 && pos[u] <= qp;
            // a free or future slot may hold any bits (NaN included): its value must not reach p * v
            if (!vis[u]) {
                kr[u] = make_uint4(0, 0, 0, 0);
                vr[u] = make_uint4(0, 0, 0, 0);
            }
        }
        float s[U][GT];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float kf[8];
            bf16x8_to_f32(kr[u], kf);
#pragma unroll
            for (int g = 0; g < GT; g++) {
                float a = 0.f;
#pragma unroll
                for (int j = 0; j < 8; j++) a = fmaf(qr[g][j], kf[j], a);
#pragma unroll
                for (int o = LPR / 2; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
                s[u][g] = vis[u] ? a : kNegInf;
            }
        }
#pragma unroll
        for (int g = 0; g < GT; g++) {
            float mx = s[0][g];
#pragma unroll
            for (int u = 1; u < U; u++) mx = fmaxf(mx, s[u][g]);
            if (mx == kNegInf) continue;
            st[g].rescale_to(fmaxf(st[g].m, mx));
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            float vf[8];
            bf16x8_to_f32(vr[u], vf);
#pragma unroll
            for (int g = 0; g < GT; g++) {
                float p = exp2_diff(s[u][g], st[g].m);
                st[g].d += p;
#pragma unroll
                for (int j = 0; j < 8; j++) st[g].o[j] = fmaf(p, vf[j], st[g].o[j]);
            }
        }
    }

    // Merge the row groups of the warp (lanes with equal lr), then the warps through shared memory.
#pragma unroll
    for (int g = 0; g < GT; g++) {
#pragma unroll
        for (int off = LPR; off < 32; off <<= 1) st[g].merge_xor(off);
    }
    if (sub == 0) {
#pragma unroll
        for (int g = 0; g < GT; g++) {
#pragma unroll
            for (int j = 0; j < 8; j++) sm_o[warp][g][lr * 8 + j] = st[g].o[j];
            if (lr == 0) {
                sm_m[warp][g] = st[g].m;
                sm_d[warp][g] = st[g].d;
            }
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nh * HD; e += kThreads) {
        int g = e / HD, j = e % HD;
        float M = kNegInf;
#pragma unroll
        for (int w = 0; w < kWarps; w++) M = fmaxf(M, sm_m[w][g]);
        float D = 0.f, O = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) {
            float f = exp2_diff(sm_m[w][g], M);
            D += sm_d[w][g] * f;
            O += sm_o[w][g][j] * f;
        }
        if (direct) {  // one split: this block saw every candidate, the result is final
            out[(int64_t)(h0 + g) * HD + j] = D > 0.f ? O / D : 0.f;
            if (j == 0 && lse2) lse2[h0 + g] = D > 0.f ? M + log2f(D) : kNegInf;
            continue;
        }
        int64_t ps = (int64_t)(h0 + g) * splits + split;
        part_o[ps * HD + j] = O;
        if (j == 0) part_md[ps] = make_float2(M, D);
    }
    if (direct || counters == nullptr) return;  // done, or a separate merge kernel follows

    // Fused merge: the last block of this (KV head, head chunk) to finish combines every split's partial state.
    __shared__ int sm_last;
    __shared__ float sm_M[GT], sm_D[GT];
    __shared__ float4 sm_acc[kThreads];
    __threadfence();  // this block's partials are visible device-wide before it is counted
    __syncthreads();
    if (threadIdx.x == 0) sm_last = atomicAdd(counters + blockIdx.y, 1) == splits - 1;
    __syncthreads();
    if (!sm_last) return;
    __threadfence();
    // sm_o is free now: it holds kWarps * GT * HD >= GT * kMaxSplits floats (HD >= 64), used as the per-split
    // rescale factors f[g][s].
    float* sm_f = &sm_o[0][0][0];
    for (int g = warp; g < nh; g += kWarps) {
        const float2* md = part_md + (int64_t)(h0 + g) * splits;
        float M = kNegInf;
        for (int s2 = lane; s2 < splits; s2 += 32) M = fmaxf(M, __ldcg(md + s2).x);
        M = warp_max(M);
        float D = 0.f;
        for (int s2 = lane; s2 < splits; s2 += 32) {
            float2 v = __ldcg(md + s2);
            float f = exp2_diff(v.x, M);
            sm_f[g * kMaxSplits + s2] = f;
            D += v.y * f;
        }
        D = warp_sum(D);
        if (lane == 0) {
            sm_M[g] = M;
            sm_D[g] = D;
        }
    }
    __syncthreads();
    constexpr int Q = HD / 4;
    const int items = nh * Q;
    const int ways = items >= kThreads ? 1 : kThreads / items;  // splits are shared by `ways` threads per item
    for (int e = threadIdx.x; e < items * ways; e += kThreads) {
        const int it = e % items, way = e / items;
        const int g = it / Q, j4 = it % Q;
        const float4* po = reinterpret_cast<const float4*>(part_o) + (int64_t)(h0 + g) * splits * Q + j4;
        const float* f = sm_f + g * kMaxSplits;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 4
        for (int s2 = way; s2 < splits; s2 += ways) {
            float4 v = __ldcg(po + (int64_t)s2 * Q);
            float c2 = f[s2];
            a.x = fmaf(v.x, c2, a.x);
            a.y = fmaf(v.y, c2, a.y);
            a.z = fmaf(v.z, c2, a.z);
            a.w = fmaf(v.w, c2, a.w);
        }
        if (ways == 1) {
            float D = sm_D[g];
            reinterpret_cast<float4*>(out + (int64_t)(h0 + g) * HD)[j4] = D > 0.f
                ? make_float4(a.x / D, a.y / D, a.z / D, a.w / D) : make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
            sm_acc[e] = a;  // items * ways <= kThreads: one e per thread
        }
    }
    if (ways > 1) {
        __syncthreads();
        for (int it = threadIdx.x; it < items; it += kThreads) {
            const int g = it / Q, j4 = it % Q;
            float4 a = sm_acc[it];
            for (int w2 = 1; w2 < ways; w2++) {
                float4 b = sm_acc[w2 * items + it];
                a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
            }
            float D = sm_D[g];
            reinterpret_cast<float4*>(out + (int64_t)(h0 + g) * HD)[j4] = D > 0.f
                ? make_float4(a.x / D, a.y / D, a.z / D, a.w / D) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    if (lse2 && threadIdx.x < nh) {
        float D = sm_D[threadIdx.x];
        lse2[h0 + threadIdx.x] = D > 0.f ? sm_M[threadIdx.x] + log2f(D) : kNegInf;
    }
    if (threadIdx.x == 0) counters[blockIdx.y] = 0;  // ready for the next call (stream order)
}

// ---- v2: per-warp cp.async pipeline --------------------------------------------------------------------------
// Same thread layout and arithmetic per row as decode_split_kernel, but the key, value and position bytes go
// global -> shared memory with cp.async (16-byte LDGSTS for the rows, 4 bytes for the position), kV2Stages deep,
// so the loads of the next stages are in flight while the current one is computed. Each lane copies exactly the
// bytes it later reads itself (its 16 bytes of the key and value row and its own copy of the row's position), so
// cp.async.wait_group alone orders copy and use: no __syncthreads in the loop, every warp runs its own pipeline.
// The slot indices of a selection list are loaded one stage ahead into registers (no dependent round trip in the
// loop). Candidate rows that do not exist (past the end, slot -1 / out of range) issue no copy; a validity bit per
// (stage, step) keeps their stale buffer contents out of the arithmetic.
#ifndef TP_V2_STAGES
#define TP_V2_STAGES 4
#endif
#ifndef TP_V2_STEPS
#define TP_V2_STEPS 2
#endif
constexpr int kV2Stages = TP_V2_STAGES;                       // cp.async groups per warp (S - 1 in flight)
constexpr int kV2Steps = TP_V2_STEPS;                         // warp steps (SUB rows each) per stage
constexpr int kV2StepBytes = 32 * (16 + 16 + 4);              // keys | values | positions of one warp step
constexpr int kV2WarpBytes = kV2Stages * kV2Steps * kV2StepBytes;
constexpr int kV2SmemBytes = kWarps * kV2WarpBytes;           // 36 KiB static: no opt-in needed
static_assert(kV2WarpBytes >= 8 * 128 * 4, "a warp's pipeline buffer holds its GT x HD partial accumulator");
static_assert(kV2SmemBytes >= 8 * kMaxSplits * 4 + kThreads * 16, "the pipeline buffer holds the merge factors and sums");
static_assert(kV2Stages * kV2Steps <= 32, "validity bits");

constexpr int v2_blocks_per_sm(int gt) { return gt >= 8 ? 2 : 4; }

__device__ __forceinline__ void cp_async16(uint32_t smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async4(uint32_t smem, const void* gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ uint4 lds16(uint32_t a) {
    uint4 v;
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "r"(a)
                 : "memory");
    return v;
}
__device__ __forceinline__ int lds32(uint32_t a) {
    int v;
    asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(a) : "memory");
    return v;
}

// Fused merge of the split partials (decode_split_v2_kernel, decode_split_v3_kernel): every block of a (KV head,
// head chunk) arrives through a barrier, then one thread's fence + atomic (the block's partial stores are ordered
// before the count by the barrier and the cumulative fence, as in a cooperative-groups grid barrier); the last one
// combines every split's (m, d) and partial output for its nh <= NH q-heads (from h0) into out (and lse2), using
// smem (>= NH * kMaxSplits floats + kThreads float4s, free by now) as scratch, and resets its counter.
template <int HD, int NH>
__device__ __forceinline__ void fused_split_merge(unsigned char* smem, int* __restrict__ counters, int splits,
                                                  const float* __restrict__ part_o,
                                                  const float2* __restrict__ part_md, float* __restrict__ out,
                                                  float* __restrict__ lse2, int h0, int nh, int warp, int lane) {
    __shared__ int sm_last;
    __shared__ float sm_M[NH], sm_D[NH];
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const int last = atomicAdd(counters + blockIdx.y, 1) == splits - 1;
        if (last) __threadfence();
        sm_last = last;
    }
    __syncthreads();
    if (!sm_last) return;
    float* sm_f = reinterpret_cast<float*>(smem);  // [NH][kMaxSplits] rescale factors (sm_o was read above)
    float4* sm_acc = reinterpret_cast<float4*>(smem + NH * kMaxSplits * 4);  // [kThreads] partial sums
    constexpr int PL = kMaxSplits / 32;
    for (int g = warp; g < nh; g += kWarps) {
        // every (m, d) of the head in one round of loads
        const float2* md = part_md + (int64_t)(h0 + g) * splits;
        float2 v[PL];
        float M = kNegInf;
#pragma unroll
        for (int i = 0; i < PL; i++) {
            const int s2 = lane + 32 * i;
            v[i] = s2 < splits ? __ldcg(md + s2) : make_float2(kNegInf, 0.f);
        }
#pragma unroll
        for (int i = 0; i < PL; i++) M = fmaxf(M, v[i].x);
        M = warp_max(M);
        float D = 0.f;
#pragma unroll
        for (int i = 0; i < PL; i++) {
            const int s2 = lane + 32 * i;
            if (s2 < splits) {
                float f = exp2_diff(v[i].x, M);
                sm_f[g * kMaxSplits + s2] = f;
                D += v[i].y * f;
            }
        }
        D = warp_sum(D);
        if (lane == 0) {
            sm_M[g] = M;
            sm_D[g] = D;
        }
    }
    __syncthreads();
    constexpr int Q = HD / 4;
    const int items = nh * Q;
    const int ways = items >= kThreads ? 1 : kThreads / items;
    for (int e = threadIdx.x; e < items * ways; e += kThreads) {
        const int it = e % items, way = e / items;
        const int g = it / Q, j4 = it % Q;
        const float4* po = reinterpret_cast<const float4*>(part_o) + (int64_t)(h0 + g) * splits * Q + j4;
        const float* f = sm_f + g * kMaxSplits;
        float4 a = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
        for (int s2 = way; s2 < splits; s2 += ways) {
            float4 v = __ldcg(po + (int64_t)s2 * Q);
            float c2 = f[s2];
            a.x = fmaf(v.x, c2, a.x);
            a.y = fmaf(v.y, c2, a.y);
            a.z = fmaf(v.z, c2, a.z);
            a.w = fmaf(v.w, c2, a.w);
        }
        if (ways == 1) {
            float D = sm_D[g];
            reinterpret_cast<float4*>(out + (int64_t)(h0 + g) * HD)[j4] = D > 0.f
                ? make_float4(a.x / D, a.y / D, a.z / D, a.w / D) : make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
            sm_acc[e] = a;
        }
    }
    if (ways > 1) {
        __syncthreads();
        for (int it = threadIdx.x; it < items; it += kThreads) {
            const int g = it / Q, j4 = it % Q;
            float4 a = sm_acc[it];
            for (int w2 = 1; w2 < ways; w2++) {
                float4 b = sm_acc[w2 * items + it];
                a.x += b.x; a.y += b.y; a.z += b.z; a.w += b.w;
            }
            float D = sm_D[g];
            reinterpret_cast<float4*>(out + (int64_t)(h0 + g) * HD)[j4] = D > 0.f
                ? make_float4(a.x / D, a.y / D, a.z / D, a.w / D) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    if (lse2 && threadIdx.x < nh) {
        float D = sm_D[threadIdx.x];
        lse2[h0 + threadIdx.x] = D > 0.f ? sm_M[threadIdx.x] + log2f(D) : kNegInf;
    }
    if (threadIdx.x == 0) counters[blockIdx.y] = 0;  // ready for the next call (stream order)
}

template <int HD, int GT>
__global__ void __launch_bounds__(kThreads, v2_blocks_per_sm(GT))
decode_split_v2_kernel(const float* __restrict__ q, const uint16_t* __restrict__ kc, const uint16_t* __restrict__ vc,
                       const int* __restrict__ pc, int layer, int H, int Hkv, int C, const int* __restrict__ qpos_ptr,
                       const int* __restrict__ sel, int sel_stride, const int* __restrict__ sel_counts,
                       const int* __restrict__ hw, float scale_log2, int splits, float* __restrict__ part_o,
                       float2* __restrict__ part_md, int* __restrict__ counters, float* __restrict__ out,
                       float* __restrict__ lse2, bool direct) {
    constexpr int LPR = HD / 8;
    constexpr int SUB = 32 / LPR;
    constexpr int NSG = kWarps * SUB;
    constexpr int S = kV2Stages, ST = kV2Steps;
    __shared__ __align__(16) unsigned char smem[kV2SmemBytes];
    __shared__ float sm_m[kWarps][GT], sm_d[kWarps][GT];

    const int G = H / Hkv;
    const int chunks = (G + GT - 1) / GT;
    const int kh = blockIdx.y / chunks, c = blockIdx.y % chunks;
    const int h0 = kh * G + c * GT;
    const int nh = min(GT, G - c * GT);
    const int split = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / LPR, lr = lane % LPR;

    pdl_wait();  // q, the cache, the slot lists and the step values come from earlier kernels
    pdl_launch_dependents();
    const int qp = qpos_ptr[0];
    const int len = candidate_count(sel, sel_stride, sel_counts, hw, kh, C);
    int per = (int)ceil_div(len, splits);
    per = (int)ceil_div(per, NSG) * NSG;
    const int begin = split * per;
    const int end = min(len, begin + per);
    // warp step k covers candidates begin + (k * kWarps + warp) * SUB + [0, SUB)
    const int first = begin + warp * SUB;
    const int nsteps = end > first ? (int)ceil_div(end - first, NSG) : 0;  // warp-uniform
    const int niter = (nsteps + ST - 1) / ST;

    const int64_t base = ((int64_t)layer * Hkv + kh) * C;
    const uint16_t* kb = kc + base * HD + lr * 8;
    const uint16_t* vb = vc + base * HD + lr * 8;
    const int* pb = pc + base;
    const uint32_t wbuf = (uint32_t)__cvta_generic_to_shared(smem + warp * kV2WarpBytes);
    auto slot_of = [&](int k) {  // candidate slot of this lane's row in warp step k, -1 when none
        int idx = first + k * NSG + sub;
        return idx < end ? candidate_slot(sel, sel_stride, kh, idx, C) : -1;
    };
    uint32_t valid = 0;  // bit (stage buffer * ST + step): a copy was issued for this lane's row
    auto issue = [&](int t, const int* slots) {
        const int b = t % S;
#pragma unroll
        for (int st = 0; st < ST; st++) {
            const uint32_t a = wbuf + (uint32_t)((b * ST + st) * kV2StepBytes);
            const int bit = b * ST + st;
            if (slots[st] >= 0) {
                cp_async16(a + lane * 16, kb + (int64_t)slots[st] * HD);
                cp_async16(a + 512 + lane * 16, vb + (int64_t)slots[st] * HD);
                cp_async4(a + 1024 + lane * 4, pb + slots[st]);
                valid |= 1u << bit;
            } else {
                valid &= ~(1u << bit);
            }
        }
    };

    // Prologue: the slots of the first S stages are loaded together, then S - 1 stages are issued.
    int pre[S][ST];
#pragma unroll
    for (int t = 0; t < S; t++) {
#pragma unroll
        for (int st = 0; st < ST; st++) pre[t][st] = t < niter ? slot_of(t * ST + st) : -1;
    }
#pragma unroll
    for (int t = 0; t < S - 1; t++) {
        if (t < niter) issue(t, pre[t]);
        cp_async_commit();
    }
    int nxt[ST];  // slots of stage t + S - 1, loaded one iteration ahead
#pragma unroll
    for (int st = 0; st < ST; st++) nxt[st] = pre[S - 1][st];

    float qr[GT][8];
#pragma unroll
    for (int g = 0; g < GT; g++) {
        if (g < nh) {
            const float4* src = reinterpret_cast<const float4*>(q + (int64_t)(h0 + g) * HD + lr * 8);
            float4 a = src[0], b = src[1];
            qr[g][0] = a.x * scale_log2; qr[g][1] = a.y * scale_log2; qr[g][2] = a.z * scale_log2;
            qr[g][3] = a.w * scale_log2; qr[g][4] = b.x * scale_log2; qr[g][5] = b.y * scale_log2;
            qr[g][6] = b.z * scale_log2; qr[g][7] = b.w * scale_log2;
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) qr[g][j] = 0.f;
        }
    }
    SoftmaxState<8> st8[GT];
#pragma unroll
    for (int g = 0; g < GT; g++) st8[g].init();

    for (int t = 0; t < niter; t++) {
        cp_async_wait<S - 2>();  // (S - 1 + t) groups committed: group t is complete
        {
            const int tn = t + S - 1;  // refills the buffer read in iteration t - 1
            if (tn < niter) {
                int cur[ST];
#pragma unroll
                for (int st = 0; st < ST; st++) {
                    cur[st] = nxt[st];
                    nxt[st] = tn + 1 < niter ? slot_of((tn + 1) * ST + st) : -1;
                }
                issue(tn, cur);
            }
            cp_async_commit();
        }
        const int b = t % S;
        float s[ST][GT];
        bool vis[ST];
#pragma unroll
        for (int st = 0; st < ST; st++) {
            const uint32_t a = wbuf + (uint32_t)((b * ST + st) * kV2StepBytes);
            const bool ok = (valid >> (b * ST + st)) & 1u;
            const int pos = ok ? lds32(a + 1024 + lane * 4) : -1;
            vis[st] = pos >= 0 && pos <= qp;
            uint4 kr = lds16(a + lane * 16);
            // a free, future or never-copied slot may hold any bits (NaN included): they must not reach the sums
            if (!vis[st]) kr = make_uint4(0, 0, 0, 0);
            float kf[8];
            bf16x8_to_f32(kr, kf);
#pragma unroll
            for (int g = 0; g < GT; g++) {
                float acc = 0.f;
#pragma unroll
                for (int j = 0; j < 8; j++) acc = fmaf(qr[g][j], kf[j], acc);
#pragma unroll
                for (int o = LPR / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
                s[st][g] = vis[st] ? acc : kNegInf;
            }
        }
#pragma unroll
        for (int g = 0; g < GT; g++) {
            float mx = s[0][g];
#pragma unroll
            for (int st = 1; st < ST; st++) mx = fmaxf(mx, s[st][g]);
            // rescale only when the running max grows (rare after the first rows): saves the exp2 and 9 multiplies
            if (mx > st8[g].m) st8[g].rescale_to(mx);
        }
#pragma unroll
        for (int st = 0; st < ST; st++) {
            const uint32_t a = wbuf + (uint32_t)((b * ST + st) * kV2StepBytes);
            uint4 vr = lds16(a + 512 + lane * 16);
            if (!vis[st]) vr = make_uint4(0, 0, 0, 0);
            float vf[8];
            bf16x8_to_f32(vr, vf);
#pragma unroll
            for (int g = 0; g < GT; g++) {
                float p = exp2_diff(s[st][g], st8[g].m);
                st8[g].d += p;
#pragma unroll
                for (int j = 0; j < 8; j++) st8[g].o[j] = fmaf(p, vf[j], st8[g].o[j]);
            }
        }
    }
    cp_async_wait<0>();  // only empty groups can be left; the buffer is reused below

#pragma unroll
    for (int g = 0; g < GT; g++) {
#pragma unroll
        for (int off = LPR; off < 32; off <<= 1) st8[g].merge_xor(off);
    }
    // each warp's partial accumulator goes into its own pipeline buffer
    float* sm_o = reinterpret_cast<float*>(smem + warp * kV2WarpBytes);
    if (sub == 0) {
#pragma unroll
        for (int g = 0; g < GT; g++) {
#pragma unroll
            for (int j = 0; j < 8; j++) sm_o[g * HD + lr * 8 + j] = st8[g].o[j];
            if (lr == 0) {
                sm_m[warp][g] = st8[g].m;
                sm_d[warp][g] = st8[g].d;
            }
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nh * HD; e += kThreads) {
        int g = e / HD, j = e % HD;
        float M = kNegInf;
#pragma unroll
        for (int w = 0; w < kWarps; w++) M = fmaxf(M, sm_m[w][g]);
        float D = 0.f, O = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) {
            float f = exp2_diff(sm_m[w][g], M);
            D += sm_d[w][g] * f;
            O += reinterpret_cast<const float*>(smem + w * kV2WarpBytes)[g * HD + j] * f;
        }
        if (direct) {
            out[(int64_t)(h0 + g) * HD + j] = D > 0.f ? O / D : 0.f;
            if (j == 0 && lse2) lse2[h0 + g] = D > 0.f ? M + log2f(D) : kNegInf;
            continue;
        }
        int64_t ps = (int64_t)(h0 + g) * splits + split;
        part_o[ps * HD + j] = O;
        if (j == 0) part_md[ps] = make_float2(M, D);
    }
    if (direct || counters == nullptr) return;

    fused_split_merge<HD, GT>(smem, counters, splits, part_o, part_md, out, lse2, h0, nh, warp, lane);
}

// ---- v3: tensor-core scores and p·v ---------------------------------------------------------------------------
// A block (4 warps) owns one KV head and up to 8 q-heads of its group. Each warp runs its own cp.async pipeline of
// kV3Rows (16) consecutive candidate rows per stage (warp step k covers candidates first + k * 4 * 16 + [0, 16)):
// the key rows, value rows (16-byte chunks XOR-swizzled by row so ldmatrix reads are bank-conflict free) and
// positions go to the warp's shared-memory stage; cp.async.wait_group + __syncwarp order copy and use (the lanes
// read rows other lanes copied). Per stage, with mma.sync.m16n8k16 bf16 -> f32:
//   S[16 x 16] = A · K^T with A rows 0..7 = bf16 hi part of x = q·scale·log2(e) (heads of the chunk, zero past
//     the group) and rows 8..15 = bf16 lo part (x - hi): the score of head g and key n is S[g][n] + S[g + 8][n],
//     both halves in the same thread (C fragment c0 + c2, c1 + c3); a second MMA per k step adds the third term
//     bf16(x - hi - lo) (rows 0..7), so q keeps ~24 bits (kV3QTerms = 2 drops it: ~16 bits, 2^-16 relative).
//   online softmax per head on the fragments (each head's 16 scores spread over the 4 lanes of a quad);
//   O[16 x hd] += P · V with P rows 0..7 = bf16 hi part of p and rows 8..15 = bf16 lo part (the C fragment of S
//     maps onto the A fragment of P in registers), so O[g] + O[g + 8] is the head's accumulator.
// Masking: a row without a candidate (past the end, slot -1 / out of range) is zero-filled by cp.async (src-size
// 0) and gets position -1; a row whose position is invisible (free -1, future) may hold any bits (NaN included):
// its score is set to -inf (p = 0) and its value row is zeroed in shared memory before P·V (0 · NaN never occurs).
// Same workspace, partial-state layout, fused / separate merge, direct path and lse2 as v1/v2.
#ifndef TP_V3_STAGES_64
#define TP_V3_STAGES_64 4
#endif
#ifndef TP_V3_STAGES_128
#define TP_V3_STAGES_128 3
#endif
constexpr int kV3Rows = 16;     // candidate rows per warp stage (one k16 step of P·V)
constexpr int kV3MaxHeads = 8;  // q-heads per block (the hi/lo halves fill the 16 MMA rows)
#ifndef TP_V3_Q_TERMS
#define TP_V3_Q_TERMS 3
#endif
constexpr int kV3QTerms = TP_V3_Q_TERMS;  // bf16 terms of q: 3 (~f32, one more MMA per k step) or 2 (~16 bits)
static_assert(kV3QTerms == 2 || kV3QTerms == 3, "q terms");

// Pipeline stages of the v3 kernel: the default, or twice as many (tp_set_attention_deep_pipeline).
template <int HD>
constexpr int v3_stages(bool deep) {
    return (HD == 64 ? TP_V3_STAGES_64 : TP_V3_STAGES_128) * (deep ? 2 : 1);
}

template <int HD, int STAGES>
struct V3Shape {
    static constexpr int kStages = STAGES;
    static constexpr int kRowBytes = HD * 2;
    static constexpr int kStageBytes = kV3Rows * kRowBytes * 2 + kV3Rows * 4;  // keys | values | positions
    static constexpr int kWarpBytes = kStages * kStageBytes;
    static constexpr int kSmemBytes = kWarps * kWarpBytes;                      // dynamic shared memory
    static constexpr int kMinBlocks = HD == 64 ? 3 : 2;                          // register cap
    static_assert(kSmemBytes >= kWarps * kV3MaxHeads * HD * 4, "the stages hold the warps' partial outputs");
    static_assert(kSmemBytes >= kV3MaxHeads * kMaxSplits * 4 + kThreads * 16, "the stages hold the merge factors");
    static_assert(kStages >= 2, "stages");
};

__device__ __forceinline__ void cp_async16_zfill(uint32_t smem, const void* gmem, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(ok ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void sts32(uint32_t a, int v) {
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(a), "r"(v) : "memory");
}
__device__ __forceinline__ void sts_zero16(uint32_t a) {
    asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(a), "r"(0) : "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t a, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a) : "memory");
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t a, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a) : "memory");
}
// the MMA and the bf16 hi / lo split: mma_ops.cuh (shared with the quantized tensor-core attention)
using mma::mma_bf16;
using mma::split_bf16x2;

// Before pdl_wait (tp_set_attention_prefetch): asks L2 for the first rows (at most rows_max) of this block's
// candidate range, keys and values, so their loads start while the previous kernel (RoPE + KV store) finishes. Only
// a hint and always safe: the old tokens' rows are not written by that kernel, and where the step values or the
// slot list read here are not yet final the wrong rows are prefetched (every address stays inside this KV head's
// cache); the kernel reads everything again after pdl_wait. Same split arithmetic as the kernel.
template <int HD>
__device__ __forceinline__ void prefetch_split_rows(const uint16_t* kb, const uint16_t* vb, int C, int kh,
                                                    const int* sel, int sel_stride, const int* sel_counts,
                                                    const int* hw, int splits, int split, int nb, int rows_max) {
    const int len = candidate_count(sel, sel_stride, sel_counts, hw, kh, C);
    int per = (int)ceil_div(len, splits);
    per = (int)ceil_div(per, nb) * nb;
    const int begin = split * per;
    const int rows = min(min(len, begin + per) - begin, rows_max);
    if (rows <= 0) return;
    if (sel == nullptr) {
        prefetch_range_l2(kb + (int64_t)begin * HD, (uint32_t)rows * HD * 2u);
        prefetch_range_l2(vb + (int64_t)begin * HD, (uint32_t)rows * HD * 2u);
        return;
    }
    // a slot list costs a dependent load per row before the wait: at most two rows per thread
    const int list_rows = min(rows, 2 * (int)blockDim.x);
    for (int i = threadIdx.x; i < list_rows; i += blockDim.x) {
        int s = sel[(int64_t)kh * sel_stride + begin + i];
        s = s < 0 ? 0 : (s >= C ? C - 1 : s);
#pragma unroll
        for (int off = 0; off < HD * 2; off += 128) {
            prefetch_line_l2(reinterpret_cast<const char*>(kb + (int64_t)s * HD) + off);
            prefetch_line_l2(reinterpret_cast<const char*>(vb + (int64_t)s * HD) + off);
        }
    }
}

// What a v3 launch with KEYS writes for TidalDecode's selection (tp_decode_attention_select): keys [Hkv][len] of a
// tp_tidal_select workspace (order_key of the group score of each candidate below len, 0 where it is not visible),
// cur [Hkv] (atomicMax of the slot holding *keep_pos), the group reduced by max or (sum_group) by sum.
struct V3SelKeys {
    uint32_t* keys;
    int len;
    int* cur;
    const int* keep_pos;
    int sum_group;
};

// v3_sel_reduce, v3_sel_store: sel_keys.cuh (shared with the quantized tensor-core attention's scores)

template <int HD, int STAGES, bool KEYS>
__global__ void __launch_bounds__(kThreads, V3Shape<HD, STAGES>::kMinBlocks)
decode_split_v3_kernel(const float* __restrict__ q, const uint16_t* __restrict__ kc, const uint16_t* __restrict__ vc,
                       const int* __restrict__ pc, int layer, int H, int Hkv, int C, const int* __restrict__ qpos_ptr,
                       const int* __restrict__ sel, int sel_stride, const int* __restrict__ sel_counts,
                       const int* __restrict__ hw, float scale_log2, int splits, float* __restrict__ part_o,
                       float2* __restrict__ part_md, int* __restrict__ counters, float* __restrict__ out,
                       float* __restrict__ lse2, bool direct, int prefetch_rows, V3SelKeys sk) {
    using Shape = V3Shape<HD, STAGES>;
    constexpr int S = Shape::kStages;
    constexpr int RB = Shape::kRowBytes;
    constexpr int CH = HD / 8;              // 16-byte chunks per row
    constexpr int NB = kWarps * kV3Rows;    // candidates per block step
    constexpr int KS = HD / 16;             // k16 steps of q·k
    constexpr int NT = HD / 8;              // n8 tiles of the output
    constexpr int CPL = kV3Rows * CH / 32;  // 16-byte copies per lane per stage (keys; values the same)
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ float sm_m[kWarps][kV3MaxHeads], sm_d[kWarps][kV3MaxHeads];

    const int G = H / Hkv;
    const int chunks = (G + kV3MaxHeads - 1) / kV3MaxHeads;  // = tp_decode_attention_counters' chunks
    const int kh = blockIdx.y / chunks, c = blockIdx.y % chunks;
    const int h0 = kh * G + c * kV3MaxHeads;
    const int nh = min(kV3MaxHeads, G - c * kV3MaxHeads);
    const int split = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int gq = lane >> 2, t4 = lane & 3;  // MMA fragment coordinates: groupID, thread in group
    const int64_t base = ((int64_t)layer * Hkv + kh) * C;
    const uint16_t* kb = kc + base * HD;
    const uint16_t* vb = vc + base * HD;
    const int* pb = pc + base;
    if (prefetch_rows > 0)
        prefetch_split_rows<HD>(kb, vb, C, kh, sel, sel_stride, sel_counts, hw, splits, split, NB, prefetch_rows);

    pdl_wait();  // q, the cache, the slot lists and the step values come from earlier kernels
    pdl_launch_dependents();
    const int qp = qpos_ptr[0];
    const int len = candidate_count(sel, sel_stride, sel_counts, hw, kh, C);
    int per = (int)ceil_div(len, splits);
    per = (int)ceil_div(per, NB) * NB;
    const int begin = split * per;
    const int end = min(len, begin + per);
    const int first = begin + warp * kV3Rows;
    const int niter = end > first ? (int)ceil_div(end - first, NB) : 0;  // warp-uniform
    // KEYS (one block per KV head's whole group, no slot list: candidate index = slot): this KV head's key row
    uint32_t* krow = nullptr;
    int kend = 0, keep = -1;
    if (KEYS) {
        krow = sk.keys + (int64_t)kh * sk.len;
        kend = min(end, sk.len);
        keep = sk.keep_pos[0];
    }

    const uint32_t wbuf = (uint32_t)__cvta_generic_to_shared(smem) + (uint32_t)(warp * Shape::kWarpBytes);
    // lane r < 16 holds the slot of row r of a stage (-1: no candidate)
    auto slot_of = [&](int k) {
        int idx = first + k * NB + lane;
        return (lane < kV3Rows && idx < end) ? candidate_slot(sel, sel_stride, kh, idx, C) : -1;
    };
    auto issue = [&](int t, int slot) {
        const uint32_t a = wbuf + (uint32_t)((t % S) * Shape::kStageBytes);
#pragma unroll
        for (int i = 0; i < CPL; i++) {
            const int e = i * 32 + lane, row = e / CH, ch = e % CH;
            const int s = __shfl_sync(0xffffffffu, slot, row);
            const uint32_t off = (uint32_t)(row * RB + ((ch ^ (row & 7)) << 4));
            const int64_t src = (int64_t)(s < 0 ? 0 : s) * HD + ch * 8;
            cp_async16_zfill(a + off, kb + src, s >= 0);
            cp_async16_zfill(a + kV3Rows * RB + off, vb + src, s >= 0);
        }
        if (lane < kV3Rows) {
            const uint32_t pa = a + 2 * kV3Rows * RB + lane * 4;
            if (slot >= 0)
                cp_async4(pa, pb + slot);
            else
                sts32(pa, -1);
        }
    };

    // Prologue: the slots of the first S stages are loaded together, then S - 1 stages are issued.
    int pre[S];
#pragma unroll
    for (int t = 0; t < S; t++) pre[t] = t < niter ? slot_of(t) : -1;
#pragma unroll
    for (int t = 0; t < S - 1; t++) {
        if (t < niter) issue(t, pre[t]);
        cp_async_commit();
    }
    int nxt = pre[S - 1];  // slot of stage t + S - 1, loaded one iteration ahead

    // q fragments (A, row-major 16 x 16 per k step) of x = q[h0 + gq] * scale_log2: rows gq = hi = bf16(x), rows
    // gq + 8 = lo = bf16(x - hi); with kV3QTerms = 3 a second A with rows gq = lo2 = bf16(x - hi - lo) (rows gq + 8
    // zero: a1 = a3 = 0, only a0/a2 kept)
    uint32_t qa[KS][4];
    uint32_t qb[kV3QTerms == 3 ? KS : 1][2];
    {
        const bool hv = gq < nh;
        const float* qh = q + (int64_t)(h0 + (hv ? gq : 0)) * HD;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
            float2 x0 = make_float2(0.f, 0.f), x1 = make_float2(0.f, 0.f);
            if (hv) {
                x0 = *reinterpret_cast<const float2*>(qh + ks * 16 + 2 * t4);
                x1 = *reinterpret_cast<const float2*>(qh + ks * 16 + 8 + 2 * t4);
            }
            x0.x *= scale_log2; x0.y *= scale_log2; x1.x *= scale_log2; x1.y *= scale_log2;
            split_bf16x2(x0.x, x0.y, qa[ks][0], qa[ks][1]);
            split_bf16x2(x1.x, x1.y, qa[ks][2], qa[ks][3]);
            if (kV3QTerms == 3) {
                uint32_t unused;
                split_bf16x2(x0.x - bf16_lo(qa[ks][0]) - bf16_lo(qa[ks][1]),
                             x0.y - bf16_hi(qa[ks][0]) - bf16_hi(qa[ks][1]), qb[kV3QTerms == 3 ? ks : 0][0], unused);
                split_bf16x2(x1.x - bf16_lo(qa[ks][2]) - bf16_lo(qa[ks][3]),
                             x1.y - bf16_hi(qa[ks][2]) - bf16_hi(qa[ks][3]), qb[kV3QTerms == 3 ? ks : 0][1], unused);
            }
        }
    }
    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m = kNegInf, d = 0.f;  // head gq's running max (equal over the quad) and this lane's share of the sum

    // ldmatrix lane addresses: matrix lane >> 3, its row lane & 7 (the swizzle key: every row index used is
    // 8-aligned + (lane & 7))
    const int lr = lane & 7, lm = lane >> 3;
    for (int t = 0; t < niter; t++) {
        cp_async_wait<S - 2>();  // (S - 1 + t) groups committed: this lane's group t is complete
        __syncwarp();            // ... and every lane's; the warp is done reading stage t - 1's buffer
        {
            const int tn = t + S - 1;  // refills the buffer read in iteration t - 1
            if (tn < niter) {
                const int cur = nxt;
                nxt = tn + 1 < niter ? slot_of(tn + 1) : -1;
                issue(tn, cur);
            }
            cp_async_commit();
        }
        const uint32_t ka = wbuf + (uint32_t)((t % S) * Shape::kStageBytes);
        const uint32_t va = ka + kV3Rows * RB;
        const uint32_t pa = va + kV3Rows * RB;
        // visibility of the stage's 16 rows (bit r = row r is invisible)
        const int pos = lane < kV3Rows ? lds32(pa + lane * 4) : 0;
        const uint32_t inv = __ballot_sync(0xffffffffu, lane < kV3Rows && !(pos >= 0 && pos <= qp));
        if (KEYS && lane < kV3Rows && pos >= 0 && pos == keep && first + t * NB + lane < kend)
            atomicMax(sk.cur + kh, first + t * NB + lane);  // the last slot holding it, as tp_tidal_select
        if (inv != 0) {  // zero the value rows of invisible candidates (free / future slots may hold NaN bits)
#pragma unroll
            for (int i = 0; i < CPL; i++) {
                const int e = i * 32 + lane, row = e / CH;
                if ((inv >> row) & 1u) sts_zero16(va + (uint32_t)(row * RB + ((e % CH) << 4)));
            }
            __syncwarp();
        }
        // S = Qhl · K^T for two n8 tiles (keys 0..7, 8..15)
        float s[2][2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            // two chains (even / odd k steps) for hi|lo, one for lo2
            float acc[3][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
            const uint32_t rowa = ka + (uint32_t)((j * 8 + lr) * RB);
#pragma unroll
            for (int ks = 0; ks < KS; ks += 2) {
                uint32_t b0, b1, b2, b3;  // (k step ks: dims +0..7, +8..15), (ks + 1: the same)
                ldsm_x4(rowa + (uint32_t)(((ks * 2 + lm) ^ lr) << 4), b0, b1, b2, b3);
                mma_bf16(acc[0], qa[ks], b0, b1);
                mma_bf16(acc[1], qa[ks + 1], b2, b3);
                if (kV3QTerms == 3) {
                    const uint32_t a2[4] = {qb[ks][0], 0u, qb[ks][1], 0u};
                    const uint32_t a3[4] = {qb[ks + 1][0], 0u, qb[ks + 1][1], 0u};
                    mma_bf16(acc[2], a2, b0, b1);
                    mma_bf16(acc[2], a3, b2, b3);
                }
            }
            // C fragment: c0/c1 = row gq (hi), keys 2t4, 2t4 + 1; c2/c3 = row gq + 8 (lo), the same keys
            s[j][0] = (acc[0][0] + acc[1][0]) + ((acc[0][2] + acc[1][2]) + acc[2][0]);
            s[j][1] = (acc[0][1] + acc[1][1]) + ((acc[0][3] + acc[1][3]) + acc[2][1]);
#pragma unroll
            for (int e = 0; e < 2; e++)
                if ((inv >> (j * 8 + 2 * t4 + e)) & 1u) s[j][e] = kNegInf;
        }
        // KEYS: the group's scores reduced now, stored after the P·V MMAs (the shuffles' latency behind them)
        const float sel_c = KEYS ? v3_sel_reduce(s, gq, nh, sk.sum_group) : 0.f;
        float mx = fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const bool grow = mx > m;  // quad-uniform
        if (__any_sync(0xffffffffu, grow)) {  // warp-uniform branch (the MMAs below need the whole warp); rare later
            const float f = grow ? exp2_diff(m, mx) : 1.f;
            d *= f;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                o[j][0] *= f; o[j][1] *= f; o[j][2] *= f; o[j][3] *= f;
            }
            m = grow ? mx : m;
        }
        float p[2][2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            p[j][0] = exp2_diff(s[j][0], m);
            p[j][1] = exp2_diff(s[j][1], m);
            d += p[j][0] + p[j][1];
        }
        // A fragment of P (16 rows x 16 keys): a0 = hi row gq keys 2t4.., a1 = lo row gq keys 2t4..,
        // a2 = hi keys 8 + 2t4.., a3 = lo keys 8 + 2t4..
        uint32_t pa4[4];
        split_bf16x2(p[0][0], p[0][1], pa4[0], pa4[1]);
        split_bf16x2(p[1][0], p[1][1], pa4[2], pa4[3]);
        // O += P · V: ldmatrix.trans of V rows (keys) gives the B fragments (k = key, n = dim)
        const uint32_t rowv = va + (uint32_t)(((lm & 1) * 8 + lr) * RB);
#pragma unroll
        for (int nt = 0; nt < NT; nt += 2) {
            uint32_t b0, b1, b2, b3;  // (dims nt: keys 0..7, 8..15), (dims nt + 1: the same)
            ldsm_x4_t(rowv + (uint32_t)(((nt + (lm >> 1)) ^ lr) << 4), b0, b1, b2, b3);
            mma_bf16(o[nt], pa4, b0, b1);
            mma_bf16(o[nt + 1], pa4, b2, b3);
        }
        if (KEYS) v3_sel_store(sel_c, inv, gq, t4, first + t * NB, kend, krow);
    }
    cp_async_wait<0>();  // only empty groups can be left

    d += __shfl_xor_sync(0xffffffffu, d, 1);
    d += __shfl_xor_sync(0xffffffffu, d, 2);
    __syncthreads();  // every warp is done with its stages: the buffer holds the partial outputs now
    float* sm_o = reinterpret_cast<float*>(smem);  // [kWarps][kV3MaxHeads][HD]
    if (gq < nh) {
        float* dst = sm_o + (warp * kV3MaxHeads + gq) * HD + 2 * t4;
#pragma unroll
        for (int j = 0; j < NT; j++)
            *reinterpret_cast<float2*>(dst + j * 8) = make_float2(o[j][0] + o[j][2], o[j][1] + o[j][3]);
        if (t4 == 0) {
            sm_m[warp][gq] = m;
            sm_d[warp][gq] = d;
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nh * HD; e += kThreads) {
        int g = e / HD, j = e % HD;
        float M = kNegInf;
#pragma unroll
        for (int w = 0; w < kWarps; w++) M = fmaxf(M, sm_m[w][g]);
        float D = 0.f, O = 0.f;
#pragma unroll
        for (int w = 0; w < kWarps; w++) {
            float f = exp2_diff(sm_m[w][g], M);
            D += sm_d[w][g] * f;
            O += sm_o[(w * kV3MaxHeads + g) * HD + j] * f;
        }
        if (direct) {
            out[(int64_t)(h0 + g) * HD + j] = D > 0.f ? O / D : 0.f;
            if (j == 0 && lse2) lse2[h0 + g] = D > 0.f ? M + log2f(D) : kNegInf;
            continue;
        }
        int64_t ps = (int64_t)(h0 + g) * splits + split;
        part_o[ps * HD + j] = O;
        if (j == 0) part_md[ps] = make_float2(M, D);
    }
    if (direct || counters == nullptr) return;

    fused_split_merge<HD, kV3MaxHeads>(smem, counters, splits, part_o, part_md, out, lse2, h0, nh, warp, lane);
}

// One block per q-head, one thread per output dim: merges the splits' partial states.
template <int HD>
__global__ void __launch_bounds__(HD)
decode_merge_kernel(float* __restrict__ out, const float* __restrict__ part_o, const float2* __restrict__ part_md,
                    int splits, float* __restrict__ lse2) {
    int h = blockIdx.x, j = threadIdx.x;
    const float2* md = part_md + (int64_t)h * splits;
    float M = kNegInf;
    for (int s = 0; s < splits; s++) M = fmaxf(M, md[s].x);
    float D = 0.f, O = 0.f;
    for (int s = 0; s < splits; s++) {
        float f = exp2_diff(md[s].x, M);
        D += md[s].y * f;
        O += part_o[((int64_t)h * splits + s) * HD + j] * f;
    }
    out[(int64_t)h * HD + j] = D > 0.f ? O / D : 0.f;
    if (j == 0 && lse2) lse2[h] = D > 0.f ? M + log2f(D) : kNegInf;
}

// Statistics pass over the bf16 cache (attention_stats_pass): a key row's 8 channels per lane, one 16-byte load.
template <int HD>
__global__ void __launch_bounds__(kThreads)
attention_stats_kernel(const float* __restrict__ q, const uint16_t* __restrict__ kc, const int* __restrict__ pc,
                       int layer, int H, int Hkv, int C, int n, const int* __restrict__ qpos, int from_row,
                       const float* __restrict__ lse2, const int* __restrict__ sel, int sel_stride,
                       const int* __restrict__ sel_counts, const int* __restrict__ hw, float scale_log2,
                       float* __restrict__ raw, float* __restrict__ prob) {
    const int64_t base = ((int64_t)layer * Hkv + blockIdx.y) * C;
    auto key8 = [&](int slot, int, int lr, float* kf) {
        uint4 kr = make_uint4(0, 0, 0, 0);
        if (slot >= 0) kr = ldg16(kc + (base + slot) * HD + lr * 8);
        bf16x8_to_f32(kr, kf);
    };
    attention_stats_pass<HD, kThreads>(q, pc, H, Hkv, C, n, qpos, from_row, lse2, sel, sel_stride, sel_counts, hw,
                                       scale_log2, raw, prob, base, key8);
}

template <int HD, int GT>
int launch_split(dim3 grid, const float* q, const uint16_t* kc, const uint16_t* vc, const int* pc, int layer, int H,
                 int Hkv, int C, const int* qpos, const int* sel, int sel_stride, const int* sel_counts,
                 const int* hw, float scale_log2, int splits, float* part_o, float2* part_md, int* counters,
                 float* out, float* lse2, bool direct, cudaStream_t stream) {
    TP_LAUNCH("decode_split_kernel", decode_split_kernel<HD, GT>, grid, dim3(kThreads), 0, stream, q, kc, vc, pc,
              layer, H, Hkv, C, qpos, sel, sel_stride, sel_counts, hw, scale_log2, splits, part_o, part_md, counters,
              out, lse2, direct);
    return TP_OK;
}

// Resident blocks per SM of a kernel on the current device (occupancy calculator, cached per device).
template <typename K>
int resident_blocks(K kernel, int fallback) {
    static int cache[64] = {0};
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return fallback;
    if (cache[dev] == 0) {
        int n = 0;
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kThreads, 0) != cudaSuccess || n < 1)
            n = fallback;
        cache[dev] = n;
    }
    return cache[dev];
}

template <int HD, int GT>
int launch_split_v2(int kv_blocks, int max_len, bool direct, dim3 grid, const float* q, const uint16_t* kc,
                    const uint16_t* vc, const int* pc, int layer, int H, int Hkv, int C, const int* qpos,
                    const int* sel, int sel_stride, const int* sel_counts, const int* hw, float scale_log2,
                    float* part_o, float2* part_md, int* counters, float* out, float* lse2, int* splits_out,
                    cudaStream_t stream) {
    auto kernel = decode_split_v2_kernel<HD, GT>;
    int splits = 1;
    if (!direct) {
        // One wave of resident blocks, but each split at least the rows of S stages of every warp (128 rows for
        // hd 64), so short candidate lists run few, full splits and the merge has little to combine.
        constexpr int min_rows = kWarps * kV2Stages * kV2Steps * (32 / (HD / 8));
        int target = resident_blocks(kernel, v2_blocks_per_sm(GT)) * sm_count() / kv_blocks;
        int by_len = (int)ceil_div(max_len < 1 ? 1 : max_len, min_rows);
        splits = target < by_len ? target : by_len;
        splits = splits < 1 ? 1 : (splits > kMaxSplits ? kMaxSplits : splits);
        splits = forced_splits(splits);
    }
    *splits_out = splits;
    grid.x = splits;
    TP_LAUNCH("decode_split_v2_kernel", kernel, grid, dim3(kThreads), 0, stream, q, kc, vc, pc, layer, H, Hkv, C,
              qpos, sel, sel_stride, sel_counts, hw, scale_log2, splits, part_o, part_md, counters, out, lse2, direct);
    return TP_OK;
}

template <int HD>
int launch_split_v2_hd(int gt, int kv_blocks, int max_len, bool direct, dim3 grid, const float* q,
                       const uint16_t* kc, const uint16_t* vc, const int* pc, int layer, int H, int Hkv, int C,
                       const int* qpos, const int* sel, int sel_stride, const int* sel_counts, const int* hw,
                       float scale_log2, float* part_o, float2* part_md, int* counters, float* out, float* lse2,
                       int* splits_out, cudaStream_t stream) {
#define TP_V2_ARGS kv_blocks, max_len, direct, grid, q, kc, vc, pc, layer, H, Hkv, C, qpos, sel, sel_stride, \
                   sel_counts, hw, scale_log2, part_o, part_md, counters, out, lse2, splits_out, stream
    switch (gt) {
        case 1: return launch_split_v2<HD, 1>(TP_V2_ARGS);
        case 2: return launch_split_v2<HD, 2>(TP_V2_ARGS);
        case 4: return launch_split_v2<HD, 4>(TP_V2_ARGS);
        default: return launch_split_v2<HD, 8>(TP_V2_ARGS);
    }
#undef TP_V2_ARGS
}

// Opts decode_split_v3_kernel<HD, STAGES> into its dynamic shared memory on the current device and returns its
// resident blocks per SM (both cached per device). tp_set_attention_variant(3) runs it already, outside any graph
// capture.
template <int HD, int STAGES, bool KEYS = false>
cudaError_t v3_prepare(int* blocks_per_sm_out) {
    static int cache[64] = {0};
    return prepare_dynamic_smem(reinterpret_cast<const void*>(decode_split_v3_kernel<HD, STAGES, KEYS>), kThreads,
                                V3Shape<HD, STAGES>::kSmemBytes, cache, blocks_per_sm_out);
}

// Both pipeline depths of the v3 kernel for head dim HD, with and without the selection keys.
template <int HD>
cudaError_t v3_prepare_all() {
    int bps;
    cudaError_t e = v3_prepare<HD, v3_stages<HD>(false)>(&bps);
    if (e == cudaSuccess) e = v3_prepare<HD, v3_stages<HD>(true)>(&bps);
    if (e == cudaSuccess) e = v3_prepare<HD, v3_stages<HD>(false), true>(&bps);
    return e != cudaSuccess ? e : v3_prepare<HD, v3_stages<HD>(true), true>(&bps);
}

// The v3 kernel's pipeline depth (tp_set_attention_deep_pipeline): false = default stages, true = twice as many.
bool g_v3_deep = false;

// Length hint from which v3 runs 1.5 blocks per SM on a device with high memory bandwidth per SM (launch_split_v3_s).
constexpr int kV3WideMinLen = 32768;

// v3 launch: dynamic shared memory (opted in once per device), one block per SM (measured on an H100 at 8K, 32K and
// 128K tokens: 16 splits x 8 KV heads beat two and three resident blocks per SM by 10-20%), at least two block
// steps of rows per split.
template <int HD, int STAGES>
int launch_split_v3_s(int kv_blocks, int max_len, bool direct, dim3 grid, const float* q, const uint16_t* kc,
                      const uint16_t* vc, const int* pc, int layer, int H, int Hkv, int C, const int* qpos,
                      const int* sel, int sel_stride, const int* sel_counts, const int* hw, float scale_log2,
                      float* part_o, float2* part_md, int* counters, float* out, float* lse2, int* splits_out,
                      const V3SelKeys* sk, cudaStream_t stream) {
    auto kernel = sk ? decode_split_v3_kernel<HD, STAGES, true> : decode_split_v3_kernel<HD, STAGES, false>;
    constexpr int smem = V3Shape<HD, STAGES>::kSmemBytes;
    int bps = 0;
    TP_CUDA((sk ? v3_prepare<HD, STAGES, true>(&bps) : v3_prepare<HD, STAGES, false>(&bps)));
    int splits = 1;
    if (!direct) {
        constexpr int min_rows = 2 * kWarps * kV3Rows;
        int target = sm_count() / kv_blocks;
        // Head dim 64, long contexts, a device with more memory bandwidth per SM than an H100's (about 25 GB/s): half a
        // block more per SM keeps more loads in flight (H200, 36 GB/s per SM, 24 splits x 8 KV heads: 28.4 against
        // 30.8 us at 32K, 81.4 against 98.2 us at 128K; at 8K 14.0 against 13.2, so not below 32K; head dim 128 was
        // slower with more splits, 49.7 against 41.4 us at 32K; on an H100 16 splits stay the fastest everywhere)
        if (HD == 64 && max_len >= kV3WideMinLen && peak_memory_gbps() > 30.0 * sm_count()) target = target * 3 / 2;
        int by_len = (int)ceil_div(max_len < 1 ? 1 : max_len, min_rows);
        splits = target < by_len ? target : by_len;
        splits = splits < 1 ? 1 : (splits > kMaxSplits ? kMaxSplits : splits);
        splits = forced_splits(splits);
    }
    *splits_out = splits;
    grid.x = splits;
    const int prefetch = __atomic_load_n(&g_prefetch_rows, __ATOMIC_RELAXED);
    const V3SelKeys no_keys = {nullptr, 0, nullptr, nullptr, 0};
    TP_LAUNCH("decode_split_v3_kernel", kernel, grid, dim3(kThreads), smem, stream, q, kc, vc, pc, layer, H, Hkv,
              C, qpos, sel, sel_stride, sel_counts, hw, scale_log2, splits, part_o, part_md, counters, out, lse2,
              direct, prefetch, sk ? *sk : no_keys);
    return TP_OK;
}

template <int HD>
int launch_split_v3(int kv_blocks, int max_len, bool direct, dim3 grid, const float* q, const uint16_t* kc,
                    const uint16_t* vc, const int* pc, int layer, int H, int Hkv, int C, const int* qpos,
                    const int* sel, int sel_stride, const int* sel_counts, const int* hw, float scale_log2,
                    float* part_o, float2* part_md, int* counters, float* out, float* lse2, int* splits_out,
                    const V3SelKeys* sk, cudaStream_t stream) {
    if (__atomic_load_n(&g_v3_deep, __ATOMIC_RELAXED))
        return launch_split_v3_s<HD, v3_stages<HD>(true)>(kv_blocks, max_len, direct, grid, q, kc, vc, pc, layer, H,
                                                           Hkv, C, qpos, sel, sel_stride, sel_counts, hw, scale_log2,
                                                           part_o, part_md, counters, out, lse2, splits_out, sk,
                                                           stream);
    return launch_split_v3_s<HD, v3_stages<HD>(false)>(kv_blocks, max_len, direct, grid, q, kc, vc, pc, layer, H,
                                                        Hkv, C, qpos, sel, sel_stride, sel_counts, hw, scale_log2,
                                                        part_o, part_md, counters, out, lse2, splits_out, sk, stream);
}

// Decode attention kernel variant (tp_set_attention_variant): 1 = decode_split_kernel, 2 = the cp.async pipeline,
// 3 = the tensor-core kernel.
int g_attention_variant = 2;

template <int HD>
int launch_split_hd(int gt, dim3 grid, const float* q, const uint16_t* kc, const uint16_t* vc, const int* pc,
                    int layer, int H, int Hkv, int C, const int* qpos, const int* sel, int sel_stride,
                    const int* sel_counts, const int* hw, float scale_log2, int splits, float* part_o,
                    float2* part_md, int* counters, float* out, float* lse2, bool direct, cudaStream_t stream) {
#define TP_SPLIT_ARGS grid, q, kc, vc, pc, layer, H, Hkv, C, qpos, sel, sel_stride, sel_counts, hw, scale_log2, \
                      splits, part_o, part_md, counters, out, lse2, direct, stream
    switch (gt) {
        case 1: return launch_split<HD, 1>(TP_SPLIT_ARGS);
        case 2: return launch_split<HD, 2>(TP_SPLIT_ARGS);
        case 4: return launch_split<HD, 4>(TP_SPLIT_ARGS);
        default: return launch_split<HD, 8>(TP_SPLIT_ARGS);
    }
#undef TP_SPLIT_ARGS
}

int group_tile(int G) { return G <= 1 ? 1 : G <= 2 ? 2 : G <= 4 ? 4 : 8; }

// Splits per (KV head, head chunk): one full wave of resident blocks (blocks_per_sm on every SM; rounded down so
// the grid never spills into a second wave), but at least 2 block steps of rows per split.
int pick_splits(int blocks_per_split, int max_len, int rows_per_step, int blocks_per_sm) {
    int target = (blocks_per_sm * sm_count()) / blocks_per_split;
    int by_len = (int)ceil_div(max_len < 1 ? 1 : max_len, 2 * rows_per_step);
    int s = target < by_len ? target : by_len;
    return s < 1 ? 1 : (s > kMaxSplits ? kMaxSplits : s);
}

}  // namespace

namespace tp {

int launch_attention_stats(const float* q, const uint16_t* kc, const int* pc, int layer, int H, int Hkv, int hd,
                           int C, int n, const int* qpos, int from_row, const float* lse2, const int* sel,
                           int sel_stride, const int* sel_counts, const int* hw, float scale_log2, float* raw,
                           float* prob, cudaStream_t stream) {
    if (!raw && !prob) return TP_OK;
    if (prob && !raw && from_row >= n) return TP_OK;
    dim3 grid(sm_count() * 2 / (Hkv < 1 ? 1 : Hkv) + 1, Hkv);
    if (hd == 64)
        attention_stats_kernel<64><<<grid, kThreads, 0, stream>>>(q, kc, pc, layer, H, Hkv, C, n, qpos, from_row, lse2,
                                                                  sel, sel_stride, sel_counts, hw, scale_log2, raw, prob);
    else
        attention_stats_kernel<128><<<grid, kThreads, 0, stream>>>(q, kc, pc, layer, H, Hkv, C, n, qpos, from_row, lse2,
                                                                   sel, sel_stride, sel_counts, hw, scale_log2, raw, prob);
    TP_LAUNCHED("attention_stats_kernel");
    return TP_OK;
}

}  // namespace tp

extern "C" {

uint64_t tp_decode_attention_workspace_bytes(int num_heads, int head_dim) {
    if (num_heads <= 0 || head_dim <= 0) return 0;
    uint64_t parts = (uint64_t)num_heads * kMaxSplits;
    return parts * head_dim * 4 + parts * 8 + (uint64_t)num_heads * 4 + 256;
}

int tp_set_attention_variant(int variant) {
    if (variant < 1 || variant > 3)
        return fail(TP_ERR_BAD_ARGUMENT, "tp_set_attention_variant: bad argument 'variant' (%d: 1, 2 or 3)", variant);
    if (variant == 3) {  // the shared-memory opt-in now, not inside a later graph capture (a failure here, e.g.
                         // no device, is retried at the first launch)
        if (v3_prepare_all<64>() != cudaSuccess || v3_prepare_all<128>() != cudaSuccess) (void)cudaGetLastError();
    }
    __atomic_store_n(&g_attention_variant, variant, __ATOMIC_RELAXED);
    return TP_OK;
}

int tp_get_attention_variant(void) { return __atomic_load_n(&g_attention_variant, __ATOMIC_RELAXED); }

int tp_set_attention_deep_pipeline(int enabled) {
    if (enabled != 0 && enabled != 1)
        return fail(TP_ERR_BAD_ARGUMENT, "tp_set_attention_deep_pipeline: bad argument 'enabled' (%d: 0 or 1)", enabled);
    __atomic_store_n(&g_v3_deep, enabled == 1, __ATOMIC_RELAXED);
    return TP_OK;
}

int tp_set_attention_prefetch(int rows) {
    if (rows < 0 || rows > 65536)
        return fail(TP_ERR_BAD_ARGUMENT, "tp_set_attention_prefetch: bad argument 'rows' (%d: 0 .. 65536)", rows);
    __atomic_store_n(&g_prefetch_rows, rows, __ATOMIC_RELAXED);
    return TP_OK;
}

int tp_get_attention_prefetch(void) { return __atomic_load_n(&g_prefetch_rows, __ATOMIC_RELAXED); }

int tp_set_attention_splits(int splits) {
    if (splits < 0 || splits > kMaxSplits)
        return fail(TP_ERR_BAD_ARGUMENT, "tp_set_attention_splits: bad argument 'splits' (%d: 0 .. %d)", splits,
                    kMaxSplits);
    __atomic_store_n(&g_splits_override, splits, __ATOMIC_RELAXED);
    return TP_OK;
}

int tp_decode_attention_counters(int num_heads, int kv_heads) {
    if (num_heads <= 0 || kv_heads <= 0 || num_heads % kv_heads != 0) return 0;
    const int G = num_heads / kv_heads;
    const int gt = group_tile(G);
    return kv_heads * ((G + gt - 1) / gt);
}

int tp_decode_attention(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                        int layer, int num_heads, int kv_heads, int head_dim, int capacity, uint64_t query_pos,
                        uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water,
                        int max_len, float scale, uint64_t raw_scores, uint64_t prob_sums,
                        uint64_t workspace, uint64_t workspace_bytes, uint64_t stream) {
    return tp_decode_attention_ex(out, q, key_cache, value_cache, pos_cache, layer, num_heads, kv_heads, head_dim,
                                  capacity, query_pos, sel_slots, sel_stride, sel_counts, high_water, max_len, scale,
                                  raw_scores, prob_sums, workspace, workspace_bytes, 0, stream);
}

int tp_decode_attention_ex(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                           int layer, int num_heads, int kv_heads, int head_dim, int capacity, uint64_t query_pos,
                           uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water,
                           int max_len, float scale, uint64_t raw_scores, uint64_t prob_sums,
                           uint64_t workspace, uint64_t workspace_bytes, uint64_t counters, uint64_t stream) {
    return tp_decode_attention_ex2(out, q, key_cache, value_cache, pos_cache, layer, num_heads, kv_heads, head_dim,
                                   capacity, query_pos, sel_slots, sel_stride, sel_counts, high_water, max_len, scale,
                                   raw_scores, prob_sums, workspace, workspace_bytes, counters, 0, stream);
}

}  // extern "C"

namespace {

// tp_decode_attention_ex2; with sk (only from tp_decode_attention_select: variant 3, no slot list, one head chunk per
// KV head) the v3 kernel also writes the selection keys.
int decode_attention_impl(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                          int layer, int num_heads, int kv_heads, int head_dim, int capacity, uint64_t query_pos,
                          uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water,
                          int max_len, float scale, uint64_t raw_scores, uint64_t prob_sums,
                          uint64_t workspace, uint64_t workspace_bytes, uint64_t counters,
                          int single_split_max_len, const V3SelKeys* sk, uint64_t stream) {
    const char* fn = "tp_decode_attention";
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
    TP_REQUIRE(query_pos != 0, fn, "query_pos");
    TP_REQUIRE(sel_slots == 0 || (sel_counts != 0 && sel_stride > 0), fn, "sel_counts/sel_stride");
    TP_REQUIRE(sel_slots != 0 || high_water != 0, fn, "high_water");
    TP_REQUIRE(max_len >= 0, fn, "max_len");
    TP_REQUIRE(workspace != 0 && workspace_bytes >= tp_decode_attention_workspace_bytes(num_heads, head_dim), fn,
               "workspace");
    TP_REQUIRE(counters == 0 || (counters & 3) == 0, fn, "counters");
    // the selection keys: one block per KV head's whole group, candidate index = slot
    TP_REQUIRE(sk == nullptr || (sel_slots == 0 && num_heads / kv_heads <= kV3MaxHeads), fn, "sel_slots");
    cudaStream_t s = TP_STREAM(stream);
    const int G = num_heads / kv_heads;
    const int gt = group_tile(G);
    const int chunks = (G + gt - 1) / gt;
    TP_REQUIRE((int64_t)kv_heads * chunks <= 65535, fn, "kv_heads");
    const int rows_per_step = kWarps * (32 / (head_dim / 8));
    // Short contexts: one block per (KV head, chunk) that writes out directly. A split's fixed cost (partial
    // state write, fence, counter atomic, the merging block's dependent reads) exceeds a few block iterations.
    const int rows_per_iter = rows_per_step * (gt >= 8 ? 2 : 4);
    const int single_max = single_split_max_len < 0 ? 4 * rows_per_iter : single_split_max_len;
    const bool direct = single_split_max_len != 0 && max_len <= single_max;
    const int variant = sk ? 3 : __atomic_load_n(&g_attention_variant, __ATOMIC_RELAXED);
    int splits = direct ? 1 : forced_splits(pick_splits(kv_heads * chunks, max_len, rows_per_step,
                                                        split_blocks_per_sm(gt)));
    float* part_o = TP_PTR(float, workspace);
    uint64_t parts = (uint64_t)num_heads * kMaxSplits;
    float2* part_md = reinterpret_cast<float2*>(part_o + parts * head_dim);
    float* lse2 = reinterpret_cast<float*>(part_md + parts);
    const float scale_log2 = scale * kLog2e;
    const int* sel = TP_PTR(const int, sel_slots);
    const int* cnt = TP_PTR(const int, sel_counts);
    const int* hw = TP_PTR(const int, high_water);
    const int* qpos = TP_PTR(const int, query_pos);
    const uint16_t* kc = TP_PTR(const uint16_t, key_cache);
    const int* pc = TP_PTR(const int, pos_cache);
    bool stats = raw_scores != 0 || prob_sums != 0;
    // the fused merge writes float4s of out and reads float4s of the workspace
    bool fused = counters != 0 && (workspace & 15) == 0 && (out & 15) == 0;
    int* ctr = fused ? TP_PTR(int, counters) : nullptr;
    float* o = TP_PTR(float, out);
    dim3 grid(splits, kv_heads * chunks);
    int rc;
    if (variant == 3)
        rc = head_dim == 64
            ? launch_split_v3<64>(kv_heads * chunks, max_len, direct, grid, TP_PTR(const float, q), kc,
                                  TP_PTR(const uint16_t, value_cache), pc, layer, num_heads, kv_heads, capacity, qpos,
                                  sel, sel_stride, cnt, hw, scale_log2, part_o, part_md, ctr, o,
                                  stats ? lse2 : nullptr, &splits, sk, s)
            : launch_split_v3<128>(kv_heads * chunks, max_len, direct, grid, TP_PTR(const float, q), kc,
                                   TP_PTR(const uint16_t, value_cache), pc, layer, num_heads, kv_heads, capacity, qpos,
                                   sel, sel_stride, cnt, hw, scale_log2, part_o, part_md, ctr, o,
                                   stats ? lse2 : nullptr, &splits, sk, s);
    else if (variant == 2)
        rc = head_dim == 64
            ? launch_split_v2_hd<64>(gt, kv_heads * chunks, max_len, direct, grid, TP_PTR(const float, q), kc,
                                     TP_PTR(const uint16_t, value_cache), pc, layer, num_heads, kv_heads, capacity,
                                     qpos, sel, sel_stride, cnt, hw, scale_log2, part_o, part_md, ctr, o,
                                     stats ? lse2 : nullptr, &splits, s)
            : launch_split_v2_hd<128>(gt, kv_heads * chunks, max_len, direct, grid, TP_PTR(const float, q), kc,
                                      TP_PTR(const uint16_t, value_cache), pc, layer, num_heads, kv_heads, capacity,
                                      qpos, sel, sel_stride, cnt, hw, scale_log2, part_o, part_md, ctr, o,
                                      stats ? lse2 : nullptr, &splits, s);
    else
        rc = head_dim == 64
            ? launch_split_hd<64>(gt, grid, TP_PTR(const float, q), kc, TP_PTR(const uint16_t, value_cache), pc, layer,
                                  num_heads, kv_heads, capacity, qpos, sel, sel_stride, cnt, hw, scale_log2, splits,
                                  part_o, part_md, ctr, o, stats ? lse2 : nullptr, direct, s)
            : launch_split_hd<128>(gt, grid, TP_PTR(const float, q), kc, TP_PTR(const uint16_t, value_cache), pc, layer,
                                   num_heads, kv_heads, capacity, qpos, sel, sel_stride, cnt, hw, scale_log2, splits,
                                   part_o, part_md, ctr, o, stats ? lse2 : nullptr, direct, s);
    if (rc != TP_OK) return rc;
    if (!fused && !direct) {
        if (head_dim == 64)
            decode_merge_kernel<64><<<num_heads, 64, 0, s>>>(o, part_o, part_md, splits, stats ? lse2 : nullptr);
        else
            decode_merge_kernel<128><<<num_heads, 128, 0, s>>>(o, part_o, part_md, splits, stats ? lse2 : nullptr);
        TP_LAUNCHED("decode_merge_kernel");
    }
    if (!stats) return TP_OK;
    return launch_attention_stats(TP_PTR(const float, q), kc, pc, layer, num_heads, kv_heads, head_dim, capacity, 1,
                                  qpos, 0, lse2, sel, sel_stride, cnt, hw, scale_log2, TP_PTR(float, raw_scores),
                                  TP_PTR(float, prob_sums), s);
}

}  // namespace

extern "C" {

int tp_decode_attention_ex2(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                            int layer, int num_heads, int kv_heads, int head_dim, int capacity, uint64_t query_pos,
                            uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water,
                            int max_len, float scale, uint64_t raw_scores, uint64_t prob_sums,
                            uint64_t workspace, uint64_t workspace_bytes, uint64_t counters,
                            int single_split_max_len, uint64_t stream) {
    return decode_attention_impl(out, q, key_cache, value_cache, pos_cache, layer, num_heads, kv_heads, head_dim,
                                 capacity, query_pos, sel_slots, sel_stride, sel_counts, high_water, max_len, scale,
                                 raw_scores, prob_sums, workspace, workspace_bytes, counters, single_split_max_len,
                                 nullptr, stream);
}

int tp_decode_attention_select(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache,
                               int layer, int num_heads, int kv_heads, int head_dim, int capacity, int max_len,
                               float scale, uint64_t workspace, uint64_t workspace_bytes, uint64_t counters,
                               int single_split_max_len, uint64_t out_slots, uint64_t out_counts, int out_stride,
                               uint64_t cur_slot, uint64_t keys_ws, int len, uint64_t params, int k, int sum_group,
                               uint64_t stream) {
    return tp_decode_attention_select_side(out, q, key_cache, value_cache, pos_cache, layer, num_heads, kv_heads,
                                           head_dim, capacity, max_len, scale, workspace, workspace_bytes, counters,
                                           single_split_max_len, out_slots, out_counts, out_stride, cur_slot, keys_ws,
                                           len, params, k, sum_group, stream, 0, 0, 0);
}

int tp_decode_attention_select_side(uint64_t out, uint64_t q, uint64_t key_cache, uint64_t value_cache,
                                    uint64_t pos_cache, int layer, int num_heads, int kv_heads, int head_dim,
                                    int capacity, int max_len, float scale, uint64_t workspace,
                                    uint64_t workspace_bytes, uint64_t counters, int single_split_max_len,
                                    uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot,
                                    uint64_t keys_ws, int len, uint64_t params, int k, int sum_group, uint64_t stream,
                                    uint64_t side_stream, uint64_t fork_event, uint64_t join_event) {
    const char* fn = side_stream != 0 ? "tp_decode_attention_select_side" : "tp_decode_attention_select";
    // the selection's arguments first (the attention's are checked by the attention): nothing runs on a bad one
    int crc = tp::check_selection_outputs(fn, out_slots, out_counts, cur_slot, keys_ws, params);
    if (crc != TP_OK) return crc;
    if (side_stream != 0) {
        TP_REQUIRE(side_stream != stream, fn, "side_stream");
        TP_REQUIRE(fork_event != 0, fn, "fork_event");
        TP_REQUIRE(join_event != 0 && join_event != fork_event, fn, "join_event");
    }
    TP_REQUIRE(kv_heads > 0 && kv_heads <= 65535, fn, "kv_heads");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    TP_REQUIRE(len >= 1 && len <= capacity, fn, "len");
    TP_REQUIRE(k >= 0, fn, "k");
    TP_REQUIRE(out_stride >= 1 && out_stride >= k, fn, "out_stride");
    TP_REQUIRE(sum_group == 0 || sum_group == 1, fn, "sum_group");
    const uint64_t hw = params, qpos = params + 4ull * (uint64_t)kv_heads;
    const int group = num_heads > 0 && num_heads % kv_heads == 0 ? num_heads / kv_heads : 0;
    const bool fused = __atomic_load_n(&g_attention_variant, __ATOMIC_RELAXED) == 3 && group >= 1 &&
                       group <= kV3MaxHeads && (head_dim == 64 || head_dim == 128);
    // the selection's stream: after the attention, forked onto side_stream (joined by join_event) when given
    auto fork = [&]() -> int {
        if (side_stream == 0) return TP_OK;
        int rc = tp_event_record(fork_event, stream);
        return rc != TP_OK ? rc : tp_stream_wait_event(side_stream, fork_event);
    };
    const uint64_t sel_stream = side_stream != 0 ? side_stream : stream;  // the selection from keys reads no q
    if (!fused) {
        int rc = decode_attention_impl(out, q, key_cache, value_cache, pos_cache, layer, num_heads, kv_heads,
                                       head_dim, capacity, qpos, 0, 1, 0, hw, max_len, scale, 0, 0, workspace,
                                       workspace_bytes, counters, single_split_max_len, nullptr, stream);
        // this selection reads q, which the caller may overwrite before the join: it stays on stream, and the join
        // event is recorded there (the caller's wait is then already satisfied)
        if (rc == TP_OK)
            rc = tp_tidal_select(out_slots, out_counts, out_stride, cur_slot, keys_ws, len, q, key_cache, pos_cache,
                                 layer, num_heads, kv_heads, head_dim, capacity, params, k, sum_group, stream);
        return rc == TP_OK && side_stream != 0 ? tp_event_record(join_event, stream) : rc;
    }
    const V3SelKeys sk = {tp::tidal_select_keys(keys_ws, kv_heads, len), len, TP_PTR(int, cur_slot),
                          TP_PTR(const int, params + 4ull * (uint64_t)kv_heads + 4ull), sum_group};
    int rc = decode_attention_impl(out, q, key_cache, value_cache, pos_cache, layer, num_heads, kv_heads, head_dim,
                                   capacity, qpos, 0, 1, 0, hw, max_len, scale, 0, 0, workspace, workspace_bytes,
                                   counters, single_split_max_len, &sk, stream);
    if (rc != TP_OK) return rc;
    rc = fork();
    if (rc != TP_OK) return rc;  // nothing forked: the caller's wait for join_event is already satisfied
    rc = tp::launch_tidal_select_from_keys(keys_ws, len, TP_PTR(int, cur_slot), TP_PTR(const int, params), k,
                                           TP_PTR(int, out_slots), out_stride, TP_PTR(int, out_counts), kv_heads,
                                           TP_STREAM(sel_stream));
    if (side_stream == 0) return rc;
    const int jrc = tp_event_record(join_event, side_stream);  // also after a failed launch: the fork is joined
    return rc != TP_OK ? rc : jrc;
}

}  // extern "C"
