// Variant 4 of the quantized decode attention (tp_kvq_set_attention_variant(4)): tensor cores over the packed cache.
// The same grid, workspace, partial states and merge as the other kv_quant.cu kernels (n = 1 only, G a multiple of
// 16; kv_quant.cu runs variant 3 for anything else). Kept free of CUDA headers' names beyond those that
// tests/resources/cuda/mma_emulation.h defines, so the host emulation runs this very code.
//
// Each warp takes a contiguous run of its split's candidates in stages of 16 (a k16 step of P·V), through a
// pipeline of kKvqMmaStages cp.async stages per warp. A stage whose 16 candidates are 16 consecutive lanes of one
// block, the first a multiple of 16 (what a cache filled in order without eviction holds everywhere but in the
// residual window) is *aligned*: its key codes (16 tokens of every channel row), the block's f16 key zero / scale,
// its 16 value-code rows and their value zero / scale are copied to shared memory and the stage runs on tensor
// cores with the quantization folded into the other operand (mma.sync.m16n8k16, bf16 in, f32 accumulate):
//   q·k = sum_c (q_c s_c) n_c + sum_c q_c z_c (key scale s_c, zero z_c per channel of the block, codes n_c exact
//     in bf16): A = q ⊙ s in three bf16 terms (v3's hi | lo rows and a lo2 MMA, ~24 bits), B = the codes; the zero
//     term once per block (a quad reduction);
//   p·v = sum_t (p_t s_tg) n_tc + sum_t p_t z_tg (value scale / zero per token and channel group g): per group,
//     A = p ⊙ s_g in two bf16 terms (hi | lo rows), B = the codes; the zero term accumulates per group in f32 beside
//     the MMA accumulators, rescaled with them.
// No dequantized value exists anywhere; codes become bf16 in registers (B fragments read from the staged rows).
// Any other stage (window entries, lanes of different blocks, a list of selected slots) is rebuilt in f32 in the
// warp's shared memory first (each lane dequantizes half a row's keys and values, every load of the stage in flight
// together) and then computed in f32 on the same online-softmax state, each lane its own four (token, head) scores
// of the C-fragment layout and its own output channels.
// Rows that are invisible (free slot, future position, past the end) get p = 0 and never touch a stage's MMA
// operands with their (possibly never written) parameters.
#pragma once

#ifndef TP_HOST_EMULATION
#include "attention_common.cuh"
#include "mma_ops.cuh"
#endif
#include "sel_keys.cuh"
#include "kvq_layout.cuh"

namespace tp {

constexpr int kKvqMmaWarps = 4;
constexpr int kKvqMmaThreads = 32 * kKvqMmaWarps;
constexpr int kKvqMmaHeads = 8;   // q-heads per block (v3's chunks of a GQA group)
constexpr int kKvqMmaRows = 16;   // candidates per stage
constexpr int kKvqMmaStages = 4;  // cp.async stages per warp
constexpr int kKvqNoLoc = (int)0x80000000;  // location of a row without a candidate
constexpr int kKvqMmaTail = 64;  // candidates at the end spread one stage per warp (a residual window's rows)

// Shared-memory layout of a block (SCORES: the scores mode's, without any value storage).
template <int HD, int BITS, int NG, bool SCORES = false>
struct KvqMmaShape {
    static constexpr int R = kKvqMmaRows;
    static constexpr int KRB = R * BITS / 8;  // key-code bytes of one channel in a stage (16 tokens)
    static constexpr int RBV = HD * BITS / 8;  // value-code bytes of one token
    static constexpr int VRS = RBV >= 32 ? RBV + 16 : RBV;  // staged value-row stride (padded: no bank conflicts)
    static constexpr int kOffKp = HD * KRB;    // f16 key zero [HD] | f16 key scale [HD]
    static constexpr int kOffVc = kOffKp + 4 * HD;
    static constexpr int kOffVp = kOffVc + R * VRS;     // f16 value zero [16][NG] | f16 value scale [16][NG]
    static constexpr int kStageBytes = SCORES ? kOffVc : kOffVp + 4 * R * NG;
    // per-stage metadata, fetched S - 1 stages before the stage's data (whose addresses it gives): int32 location
    // [16] (kKvqNoLoc: no candidate) | int32 position [16] | aligned flag; a ring of 2·S entries
    static constexpr int kMetaBytes = 8 * R + 16;
    static constexpr int kMetaRing = 2 * kKvqMmaStages;
    // the f32 rows of a stage that is not aligned: keys [16][FRS] | values [16][FRS] (rows padded by 4 floats)
    static constexpr int FRS = HD + 4;
    static constexpr int kOffRows = kKvqMmaStages * kStageBytes + kMetaRing * kMetaBytes;
    // hd 128: one f32 row buffer for the keys and then the values of such a stage (two blocks per SM fit)
    static constexpr bool kOneRowBuf = HD == 128;
    static constexpr int kWarpBytes = kOffRows + (SCORES || kOneRowBuf ? 1 : 2) * R * FRS * 4;
    // the block's q (scaled, zero past the chunk) [8][HD] f32, then the warps' buffers
    static constexpr int kQBytes = kKvqMmaHeads * HD * 4;
    static constexpr int kSmemBytes = kQBytes + kKvqMmaWarps * kWarpBytes;
    static_assert(HD == 64 || HD == 128, "head dim");
    static_assert(BITS == 2 || BITS == 4 || BITS == 8, "bits");
    static_assert(NG >= 1 && HD / NG >= 16, "value groups of at least 16 channels");
    static_assert(kStageBytes % 16 == 0 && kOffKp % 16 == 0 && kOffVc % 16 == 0 && kOffVp % 16 == 0 &&
                  kMetaBytes % 16 == 0 && kOffRows % 16 == 0 && kWarpBytes % 16 == 0, "alignment");
    static_assert(SCORES || kWarpBytes >= kKvqMmaHeads * HD * 4, "a warp's stages hold its partial output");
    static_assert(SCORES || kSmemBytes >= 16 + kKvqMmaHeads * 1024 * 4, "the fused merge's factors of up to 1024 splits");
};

// Code of token 8·j + gq of a staged key row, from the row's KRB / 4 words (all 16 tokens).
template <int BITS>
__device__ __forceinline__ uint32_t kvq_key_pick(const uint32_t* w, int j, int gq) {
    if (BITS == 2) return (w[0] >> ((8 * j + gq) * 2)) & 3u;
    if (BITS == 4) return (w[j] >> (4 * gq)) & 15u;
    return ((gq & 4 ? w[2 * j + 1] : w[2 * j]) >> (8 * (gq & 3))) & 255u;
}
// Code of channel 8·i + gq of a load chunk of a staged value row that starts at a multiple of 8 channels.
template <int BITS>
__device__ __forceinline__ uint32_t kvq_value_pick(const uint32_t* w, int i, int gq) {
    if (BITS == 8) return ((gq & 4 ? w[2 * i + 1] : w[2 * i]) >> (8 * (gq & 3))) & 255u;
    const int bit = 8 * i * BITS;  // + gq · BITS < 32 inside the same word
    return (w[bit >> 5] >> ((bit & 31) + gq * BITS)) & ((1u << BITS) - 1u);
}

// What the scores mode writes for TidalDecode's selection (tp_kvq_tidal_select's keys): keys [Hkv][len] = order_key
// of each slot's group score of raw q·k (max, or sum when sum_group) below len, 0 where not visible or at or past the
// KV head's high-water mark; cur [Hkv] = atomicMax of the slots whose position is *keep_pos.
struct KvqMmaKeys {
    uint32_t* keys;
    int len;
    int* cur;
    const int* keep_pos;
    int sum_group;
};

// One block of variant 4: grid (splits, Hkv · ceil(group / 8), 1), kKvqMmaThreads threads, KvqMmaShape::kSmemBytes
// of dynamic shared memory at smem (sm_m, sm_d: [kKvqMmaWarps][kKvqMmaHeads] floats). Writes what
// kvq_attention_v3_kernel writes: out (and lse2) when splits == 1, else the split's partial state in ws, merged by
// kvq_merge_kernel or, with counters (int32 [gridDim.y], zero before the call and left zero), by the split that
// finishes last (the other splits' states read back from L2; no second kernel). SCORES: the
// selection keys of sk instead (a group of at most 8 q-heads, scale_log2 = 1 for raw q·k; no value is read, nothing
// else written).
template <int HD, int BITS, int NG, bool SCORES = false>
__device__ __forceinline__ void kvq_mma_block(unsigned char* smem, float* sm_m, float* sm_d, float* out, float* ws,
                                              const float* q, const uint8_t* pool, const float* wk, const float* wv,
                                              const int* pc, const int* lc, int layer, int H, int kv_heads, int C,
                                              int res_cap, int max_blocks, const Layout& L, const int* qpos,
                                              const int* sel, int sel_stride, const int* sel_counts, const int* hw,
                                              int splits, float scale_log2, float* lse2, int* counters = nullptr,
                                              KvqMmaKeys sk = {}) {
    using Sh = KvqMmaShape<HD, BITS, NG, SCORES>;
    constexpr int S = kKvqMmaStages, R = kKvqMmaRows, W = kKvqMmaWarps;
    constexpr int KS = HD / 16;   // k16 steps of q·k
    constexpr int NT = HD / 8;    // n8 tiles of the output
    constexpr int TPG = NT / NG;  // n8 tiles per value group
    constexpr int KRB = Sh::KRB, RBV = Sh::RBV;
    constexpr uint32_t MASK = (1u << BITS) - 1u;
    constexpr unsigned FULL = 0xffffffffu;
    const int group = H / kv_heads, chunks = (group + kKvqMmaHeads - 1) / kKvqMmaHeads;
    const int kh = (int)blockIdx.y / chunks, chunk = (int)blockIdx.y % chunks;
    const int h0 = kh * group + chunk * kKvqMmaHeads;
    const int nh = min(kKvqMmaHeads, group - chunk * kKvqMmaHeads);
    const int split = (int)blockIdx.x;
    const int lane = (int)threadIdx.x & 31, warp = (int)threadIdx.x >> 5;
    const int gq = lane >> 2, t4 = lane & 3;  // MMA fragment coordinates
    const int64_t hb = (int64_t)layer * kv_heads + kh;
    const int* pcg = pc + hb * C;
    const int* lcg = lc + hb * C;
    const uint8_t* poolg = pool + hb * max_blocks * (int64_t)L.bytes;
    const float* wkg = wk + hb * res_cap * HD;
    const float* wvg = wv + hb * res_cap * HD;
    const int qp = qpos[0];
    int len = candidate_count(sel, sel_stride, sel_counts, hw, kh, C);
    if constexpr (SCORES) len = min(len, sk.len);  // keys only below their length
    // The candidates [0, lmain) go to the splits and their warps in contiguous runs of stages; the last ones
    // [lmain, len) (at least kKvqMmaTail rows: where a cache filled in order keeps its residual window, whose stages
    // are not aligned and cost a round trip each) one stage per warp across the grid, before the warp's run.
    const int lmain = len > kKvqMmaTail ? (len - kKvqMmaTail) / R * R : 0;
    int per = (lmain + splits - 1) / splits;
    per = (per + W * R - 1) / (W * R) * (W * R);
    const int begin = split * per, end = min(lmain, begin + per);
    const int wbeg = begin + warp * (per / W), wend = min(end, wbeg + per / W);
    const int nmain = wend > wbeg ? (wend - wbeg + R - 1) / R : 0;
    const int nwarps = splits * W, gw = split * W + warp;       // warps of the grid row, this one
    const int ntail = (len - lmain + R - 1) / R;                 // tail stages (<= kKvqMmaTail / R + 1)
    const int ntw = ntail > gw ? (ntail - gw + nwarps - 1) / nwarps : 0;  // this warp's: gw, gw + nwarps, ...
    const int niter = ntw + nmain;                               // warp-uniform
    // candidate of stage k's row 0, and the end of its candidates
    auto stage_row0 = [&](int k) { return k < ntw ? lmain + R * (gw + k * nwarps) : wbeg + (k - ntw) * R; };
    auto stage_end = [&](int k) { return k < ntw ? len : wend; };
    uint32_t* krow = nullptr;  // SCORES: this KV head's keys
    int keep = -1;
    if constexpr (SCORES) {
        krow = sk.keys + (int64_t)kh * sk.len;
        keep = sk.keep_pos[0];
    }

    float* sm_q = reinterpret_cast<float*>(smem);  // [8][HD]: q · scale_log2 of the chunk's heads, zero past them
    for (int e = (int)threadIdx.x; e < kKvqMmaHeads * HD; e += kKvqMmaThreads) {
        const int g = e / HD;
        sm_q[e] = g < nh ? q[(int64_t)(h0 + g) * HD + (e - g * HD)] * scale_log2 : 0.f;
    }
    __syncthreads();
    const uint32_t woff = (uint32_t)(Sh::kQBytes + warp * Sh::kWarpBytes);  // this warp's buffers (byte offset)
    const uint32_t wbuf = mma::smem_addr(smem) + woff;
    const uint32_t mbuf = wbuf + (uint32_t)(S * Sh::kStageBytes);
    auto meta_of = [&](int k) { return mbuf + (uint32_t)((k % Sh::kMetaRing) * Sh::kMetaBytes); };
    // metadata of stage k: rows r < 16 copy their slot's location and position (a list's slot read first)
    auto fetch_meta = [&](int k) {
        const uint32_t mb = meta_of(k);
        const int idx = stage_row0(k) + lane;
        if (lane < R) {
            const int slot = idx < stage_end(k) ? candidate_slot(sel, sel_stride, kh, idx, C) : -1;
            if (slot >= 0) {
                mma::cp_async<4>(mb + 4 * lane, lcg + slot);
                mma::cp_async<4>(mb + 4 * R + 4 * lane, pcg + slot);
            } else {
                mma::smem_st32(mb + 4 * lane, (uint32_t)kKvqNoLoc);
                mma::smem_st32(mb + 4 * R + 4 * lane, 0xffffffffu);
            }
        }
    };
    // data of stage k (its metadata complete and visible to the warp): the block rows when aligned
    auto issue = [&](int k) {
        const uint32_t a = wbuf + (uint32_t)((k % S) * Sh::kStageBytes), mb = meta_of(k);
        const int loc0 = (int)mma::smem_ld32(mb);
        const int loc = lane < R ? (int)mma::smem_ld32(mb + 4 * lane) : kKvqNoLoc;
        const bool ok = loc == kKvqNoLoc || loc == loc0 + lane;
        const bool aligned = __all_sync(FULL, ok) && loc0 >= 0 && (loc0 & (R - 1)) == 0 &&
                             (int64_t)loc0 + R <= (int64_t)max_blocks * L.G;
        if (lane == 0) mma::smem_st32(mb + 8 * R, aligned ? 1u : 0u);
        if (!aligned) return;
        const int blk = loc0 / L.G, l0 = loc0 - blk * L.G;
        const uint8_t* rec = poolg + (int64_t)blk * L.bytes;
        const uint8_t* kc = rec + L.off_kc + l0 * BITS / 8;
        for (int c = lane; c < HD; c += 32) mma::cp_async<KRB>(a + (uint32_t)(c * KRB), kc + (int64_t)c * L.rbk);
        for (int i = lane; i < HD / 4; i += 32)  // key zero | key scale: 4·HD bytes at the record's start
            mma::cp_async<16>(a + Sh::kOffKp + 16 * i, rec + 16 * i);
        if constexpr (SCORES) return;  // keys only
        const uint8_t* vc = rec + L.off_vc + (int64_t)l0 * RBV;
        for (int i = lane; i < RBV; i += 32)  // 16 rows of RBV bytes, RBV / 16 chunks each, rows VRS apart
            mma::cp_async<16>(a + Sh::kOffVc + (uint32_t)((i / (RBV / 16)) * Sh::VRS + (i % (RBV / 16)) * 16),
                              vc + 16 * i);
        for (int i = lane; i < 4 * NG; i += 32) {
            const bool z = i < 2 * NG;
            const int j = z ? i : i - 2 * NG;
            mma::cp_async<16>(a + Sh::kOffVp + (z ? 0 : 32 * NG) + 16 * j,
                              rec + (z ? L.off_vz : L.off_vs) + l0 * NG * 2 + 16 * j);
        }
    };

    // Prologue: the metadata of the first S - 1 stages (waited for: the first copies need it), then S - 1 groups,
    // group g = the data of stage g and the metadata of stage g + S - 1.
    for (int k = 0; k < S - 1 && k < niter; k++) fetch_meta(k);
    mma::cp_async_commit();
    mma::cp_async_wait<0>();
    __syncwarp();
#pragma unroll
    for (int k = 0; k < S - 1; k++) {
        if (k < niter) issue(k);
        if (k + S - 1 < niter) fetch_meta(k + S - 1);
        mma::cp_async_commit();
    }

    uint32_t qa[KS][4], qb[KS][2];  // A fragments of q ⊙ (the cached block's key scale): hi | lo rows, lo2
    float zb = 0.f;                 // the cached block's zero term of head gq
    int cached = -1;
    float o[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float zv[NG];  // sum_t p_t z_tg of group g (this lane's tokens)
#pragma unroll
    for (int g = 0; g < NG; g++) zv[g] = 0.f;
    float m = kNegInf, d = 0.f;  // head gq's running max (equal over the quad) and this lane's share of the sum

    auto rescale = [&](float f) {
        d *= f;
#pragma unroll
        for (int j = 0; j < NT; j++) {
            o[j][0] *= f; o[j][1] *= f; o[j][2] *= f; o[j][3] *= f;
        }
#pragma unroll
        for (int g = 0; g < NG; g++) zv[g] *= f;
    };

    // a stage's scores s (head gq, tokens 8j + 2t4 + e; -inf where invisible) into the running state: p = exp2(s - m)
    auto softmax_stage = [&](const float (&s)[2][2], float (&p)[2][2]) {
        float mx = fmaxf(fmaxf(s[0][0], s[0][1]), fmaxf(s[1][0], s[1][1]));
        mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(FULL, mx, 2));
        const bool grow = mx > m;  // quad-uniform
        if (__any_sync(FULL, grow)) {
            rescale(grow ? exp2_diff(m, mx) : 1.f);
            m = grow ? mx : m;
        }
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                p[j][e] = exp2_diff(s[j][e], m);
                d += p[j][e];
            }
    };

    for (int t = 0; t < niter; t++) {
        mma::cp_async_wait<S - 2>();  // this lane's copies of stage t are complete
        __syncwarp();                 // ... and every lane's; the warp is done with stage t - 1's buffer
        {
            const int tn = t + S - 1;  // refills the data buffer read in iteration t - 1
            if (tn < niter) issue(tn);
            if (tn + S - 1 < niter) fetch_meta(tn + S - 1);  // the ring entry of stage t - 2
            mma::cp_async_commit();
        }
        const uint32_t a = wbuf + (uint32_t)((t % S) * Sh::kStageBytes), mb = meta_of(t);
        const int pos = lane < R ? (int)mma::smem_ld32(mb + 4 * R + 4 * lane) : -1;
        const uint32_t vis = __ballot_sync(FULL, lane < R && pos >= 0 && pos <= qp);  // bit r: row r visible
        const int row0 = stage_row0(t);  // candidate (= slot) of the stage's row 0
        const int kend = SCORES ? min(stage_end(t), sk.len) : 0;  // SCORES: keys written below it
        if constexpr (SCORES) {
            if (lane < R && pos >= 0 && pos == keep && row0 + lane < kend) atomicMax(sk.cur + kh, row0 + lane);
            if (vis == 0u) {
                if (lane < R && row0 + lane < kend) krow[row0 + lane] = 0u;
                continue;
            }
        }
        if (vis == 0u) continue;
        if (mma::smem_ld32(mb + 8 * R) != 0u) {
            // ---- aligned stage: tensor cores ----
            const int blk = (int)mma::smem_ld32(mb) / L.G;
            if (blk != cached) {  // warp-uniform
                cached = blk;
                zb = 0.f;
#pragma unroll
                for (int ks = 0; ks < KS; ks++)
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        const int c = 16 * ks + 2 * t4 + 8 * h;
                        const float2 z2 = mma::f16x2_to_float2(mma::smem_ld32(a + Sh::kOffKp + 2 * c));
                        const float2 s2 = mma::f16x2_to_float2(mma::smem_ld32(a + Sh::kOffKp + 2 * HD + 2 * c));
                        const float x0 = sm_q[gq * HD + c], x1 = sm_q[gq * HD + c + 1];
                        zb = fmaf(x0, z2.x, zb);
                        zb = fmaf(x1, z2.y, zb);
                        const float y0 = x0 * s2.x, y1 = x1 * s2.y;
                        uint32_t unused;
                        mma::split_bf16x2(y0, y1, qa[ks][2 * h], qa[ks][2 * h + 1]);
                        mma::split_bf16x2(y0 - mma::bf16_low(qa[ks][2 * h]) - mma::bf16_low(qa[ks][2 * h + 1]),
                                          y1 - mma::bf16_high(qa[ks][2 * h]) - mma::bf16_high(qa[ks][2 * h + 1]),
                                          qb[ks][h], unused);
                    }
                zb += __shfl_xor_sync(FULL, zb, 1);
                zb += __shfl_xor_sync(FULL, zb, 2);
            }
            // S = (q ⊙ s) · codes^T + zero term, two n8 tiles (tokens 0..7, 8..15); each key row read once
            float s[2][2];
            {
                constexpr int KW = KRB / 4;  // words of a staged key row
                float acc[2][3][4];
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int x = 0; x < 3; x++) acc[j][x][0] = acc[j][x][1] = acc[j][x][2] = acc[j][x][3] = 0.f;
                // the rows of k step ks: c, c + 1, c + 8, c + 9 (c = 16·ks + 2·t4); step ks + 1's are loaded before
                // step ks's MMAs (the loads and the MMAs are volatile asm: the compiler keeps their order)
                auto load_rows = [&](int ks, uint32_t (&w)[4][KW]) {
                    const int c = 16 * ks + 2 * t4;
                    mma::smem_ldv<KW>(a + (uint32_t)(c * KRB), w[0]);
                    mma::smem_ldv<KW>(a + (uint32_t)((c + 1) * KRB), w[1]);
                    mma::smem_ldv<KW>(a + (uint32_t)((c + 8) * KRB), w[2]);
                    mma::smem_ldv<KW>(a + (uint32_t)((c + 9) * KRB), w[3]);
                };
                constexpr bool kAhead = KW <= 2;  // 8-bit codes (4 words a row): no registers to spare
                uint32_t wb[2][4][KW];
                load_rows(0, wb[0]);
#pragma unroll
                for (int ks = 0; ks < KS; ks++) {
                    if (kAhead && ks + 1 < KS) load_rows(ks + 1, wb[(ks + 1) & 1]);
                    if (!kAhead && ks > 0) load_rows(ks, wb[ks & 1]);
                    const uint32_t(&w)[4][KW] = wb[ks & 1];
                    const uint32_t a2[4] = {qb[ks][0], 0u, qb[ks][1], 0u};
#pragma unroll
                    for (int j = 0; j < 2; j++) {
                        const uint32_t b0 = mma::codes_bf16x2<BITS>(kvq_key_pick<BITS>(w[0], j, gq),
                                                                    kvq_key_pick<BITS>(w[1], j, gq));
                        const uint32_t b1 = mma::codes_bf16x2<BITS>(kvq_key_pick<BITS>(w[2], j, gq),
                                                                    kvq_key_pick<BITS>(w[3], j, gq));
                        mma::mma_bf16(acc[j][ks & 1], qa[ks], b0, b1);
                        mma::mma_bf16(acc[j][2], a2, b0, b1);
                    }
                }
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const float x = ((acc[j][0][e] + acc[j][1][e]) +
                                         ((acc[j][0][2 + e] + acc[j][1][2 + e]) + acc[j][2][e])) + zb;
                        s[j][e] = ((vis >> (8 * j + 2 * t4 + e)) & 1u) ? x : kNegInf;
                    }
            }
            if constexpr (SCORES) {
                v3_sel_store(v3_sel_reduce(s, gq, nh, sk.sum_group), ~vis & 0xFFFFu, gq, t4, row0, kend, krow);
                continue;
            }
            float p[2][2];
            softmax_stage(s, p);
            // O += (p ⊙ value scale of group g) · codes, per group; the zero term beside it
            const uint32_t va = a + Sh::kOffVc, vp = a + Sh::kOffVp;
#pragma unroll
            for (int g = 0; g < NG; g++) {
                float pp[2][2];
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const int tk = 8 * j + 2 * t4 + e;
                        pp[j][e] = 0.f;
                        if ((vis >> tk) & 1u) {  // an invisible row's parameters may never have been written
                            const float vz = mma::f16_to_float(mma::smem_ld16(vp + 2 * (tk * NG + g)));
                            const float vs = mma::f16_to_float(mma::smem_ld16(vp + 32 * NG + 2 * (tk * NG + g)));
                            pp[j][e] = p[j][e] * vs;
                            zv[g] = fmaf(p[j][e], vz, zv[g]);
                        }
                    }
                uint32_t pa[4];
                mma::split_bf16x2(pp[0][0], pp[0][1], pa[0], pa[1]);
                mma::split_bf16x2(pp[1][0], pp[1][1], pa[2], pa[3]);
                // value rows of the lane's tokens 2t4, 2t4 + 1, 2t4 + 8, 2t4 + 9: the group's words in loads of CW
                constexpr int WG = TPG * BITS / 4;       // words of a value row per group
                constexpr int CW = WG < 4 ? WG : 4;      // words per load
                constexpr int TPC = CW * 32 / (8 * BITS);  // n8 tiles per load
#pragma unroll
                for (int qc = 0; qc < WG / CW; qc++) {
                    uint32_t vw[4][CW];
#pragma unroll
                    for (int u = 0; u < 4; u++)
                        mma::smem_ldv<CW>(va + (uint32_t)((2 * t4 + (u & 1) + 8 * (u >> 1)) * Sh::VRS +
                                                          4 * (g * WG + qc * CW)), vw[u]);
#pragma unroll
                    for (int i = 0; i < TPC; i++) {
                        const int nt = g * TPG + qc * TPC + i;
                        const uint32_t b0 = mma::codes_bf16x2<BITS>(kvq_value_pick<BITS>(vw[0], i, gq),
                                                                    kvq_value_pick<BITS>(vw[1], i, gq));
                        const uint32_t b1 = mma::codes_bf16x2<BITS>(kvq_value_pick<BITS>(vw[2], i, gq),
                                                                    kvq_value_pick<BITS>(vw[3], i, gq));
                        mma::mma_bf16(o[nt], pa, b0, b1);
                    }
                }
            }
        } else {
            // ---- any other stage: its rows rebuilt in f32 in shared memory, then f32 arithmetic ----
            float* fk = reinterpret_cast<float*>(smem + woff + Sh::kOffRows);  // keys [16][FRS]
            // values [16][FRS]: beside the keys, or (Sh::kOneRowBuf: hd 128) in their place after the scores
            float* fv = Sh::kOneRowBuf ? fk : fk + R * Sh::FRS;
            // rebuilds this lane's half row (row lane / 2) of the keys (K) and / or the values (V)
            auto rebuild = [&](bool K, bool V) {
                constexpr int HALF = HD / 2;
                const int r = lane >> 1, c0 = (lane & 1) * HALF;  // half a row per lane
                float* kd = fk + r * Sh::FRS + c0;
                float* vd = fv + r * Sh::FRS + c0;
                const int l = (int)mma::smem_ld32(mb + 4 * r);
                if (!((vis >> r) & 1u)) {  // p = 0: its value row must be finite (its score is masked)
                    if (V) {
#pragma unroll
                        for (int c = 0; c < HALF; c += 4)
                            *reinterpret_cast<float4*>(vd + c) = make_float4(0.f, 0.f, 0.f, 0.f);
                    }
                } else if (l < 0) {
                    const float* kr = wkg + (int64_t)(-l - 1) * HD + c0;
                    const float* vr = wvg + (int64_t)(-l - 1) * HD + c0;
#pragma unroll
                    for (int c = 0; c < HALF; c += 4) {
                        if (K) *reinterpret_cast<float4*>(kd + c) = *reinterpret_cast<const float4*>(kr + c);
                        if (V) *reinterpret_cast<float4*>(vd + c) = *reinterpret_cast<const float4*>(vr + c);
                    }
                } else {
                    const int blk = l / L.G, tl = l - blk * L.G, bit = tl * BITS;
                    const uint8_t* rec = poolg + (int64_t)blk * L.bytes;
                    const uint8_t* kcode = rec + L.off_kc + (bit >> 3);
                    const uint8_t* vrow = rec + L.off_vc + (int64_t)tl * L.rbv;
                    const uint16_t* kz = reinterpret_cast<const uint16_t*>(rec + L.off_kz);
                    const uint16_t* ksc = reinterpret_cast<const uint16_t*>(rec + L.off_ks);
                    const uint16_t* vz = reinterpret_cast<const uint16_t*>(rec + L.off_vz) + tl * NG;
                    const uint16_t* vs = reinterpret_cast<const uint16_t*>(rec + L.off_vs) + tl * NG;
#pragma unroll 8
                    for (int c = 0; c < HALF; c++) {
                        const int ch = c0 + c, g = ch / (HD / NG);
                        if (K) {
                            const uint32_t kn = ((uint32_t)kcode[(int64_t)ch * L.rbk] >> (bit & 7)) & MASK;
                            kd[c] = mma::f16_to_float(ksc[ch]) * (float)kn + mma::f16_to_float(kz[ch]);
                        }
                        if (V) {
                            const uint32_t vn = ((uint32_t)vrow[(ch * BITS) >> 3] >> ((ch * BITS) & 7)) & MASK;
                            vd[c] = mma::f16_to_float(vs[g]) * (float)vn + mma::f16_to_float(vz[g]);
                        }
                    }
                }
            };
            rebuild(true, !SCORES && !Sh::kOneRowBuf);
            __syncwarp();
            // scores of head gq, tokens 8j + 2t4 + e (the C-fragment places), f32 dot products
            const float* qh = sm_q + gq * HD;
            float s[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll 4
            for (int c = 0; c < HD; c += 4) {
                const float4 q4 = *reinterpret_cast<const float4*>(qh + c);
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const float4 k4 = *reinterpret_cast<const float4*>(fk + (8 * j + 2 * t4 + e) * Sh::FRS + c);
                        s[j][e] = fmaf(q4.x, k4.x, s[j][e]);
                        s[j][e] = fmaf(q4.y, k4.y, s[j][e]);
                        s[j][e] = fmaf(q4.z, k4.z, s[j][e]);
                        s[j][e] = fmaf(q4.w, k4.w, s[j][e]);
                    }
            }
#pragma unroll
            for (int j = 0; j < 2; j++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                    if (!((vis >> (8 * j + 2 * t4 + e)) & 1u)) s[j][e] = kNegInf;
            if constexpr (SCORES) {
                v3_sel_store(v3_sel_reduce(s, gq, nh, sk.sum_group), ~vis & 0xFFFFu, gq, t4, row0, kend, krow);
                __syncwarp();  // the rows are rewritten by the next such stage
                continue;
            }
            float p[2][2];
            softmax_stage(s, p);
            if constexpr (Sh::kOneRowBuf) {  // the values into the keys' place, once every lane has read the keys
                __syncwarp();
                rebuild(false, true);
                __syncwarp();
            }
            // O[gq][8nt + 2t4 + {0, 1}] += sum over the 16 rows (the quad's probabilities by shuffles)
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        const float pr = __shfl_sync(FULL, p[j][e], (lane & ~3) | u);
                        const float* vr = fv + (8 * j + 2 * u + e) * Sh::FRS + 2 * t4;
#pragma unroll
                        for (int nt = 0; nt < NT; nt++) {
                            const float2 v2 = *reinterpret_cast<const float2*>(vr + 8 * nt);
                            o[nt][0] = fmaf(pr, v2.x, o[nt][0]);
                            o[nt][1] = fmaf(pr, v2.y, o[nt][1]);
                        }
                    }
            }
            __syncwarp();  // the rows are rewritten by the next such stage
        }
    }
    mma::cp_async_wait<0>();  // only empty groups can be left
    if constexpr (SCORES) {  // keys at and past the high-water mark: 0 (the block's share of them)
        for (int i = len + split * kKvqMmaThreads + (int)threadIdx.x; i < sk.len; i += splits * kKvqMmaThreads)
            krow[i] = 0u;
        return;
    }

    d += __shfl_xor_sync(FULL, d, 1);
    d += __shfl_xor_sync(FULL, d, 2);
#pragma unroll
    for (int g = 0; g < NG; g++) {
        zv[g] += __shfl_xor_sync(FULL, zv[g], 1);
        zv[g] += __shfl_xor_sync(FULL, zv[g], 2);
    }
    __syncthreads();  // every warp is done with its stages: the buffer holds the partial outputs now
    float* sm_o = reinterpret_cast<float*>(smem + Sh::kQBytes);  // [W][kKvqMmaHeads][HD] over the warps' buffers
    if (gq < nh) {
        float* dst = sm_o + (warp * kKvqMmaHeads + gq) * HD + 2 * t4;
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            dst[nt * 8] = (o[nt][0] + o[nt][2]) + zv[nt / TPG];
            dst[nt * 8 + 1] = (o[nt][1] + o[nt][3]) + zv[nt / TPG];
        }
        if (t4 == 0) {
            sm_m[warp * kKvqMmaHeads + gq] = m;
            sm_d[warp * kKvqMmaHeads + gq] = d;
        }
    }
    __syncthreads();
    for (int e = (int)threadIdx.x; e < nh * HD; e += kKvqMmaThreads) {
        const int g = e / HD, c = e - g * HD;
        float M = kNegInf;
#pragma unroll
        for (int w = 0; w < W; w++) M = fmaxf(M, sm_m[w * kKvqMmaHeads + g]);
        float D = 0.f, O = 0.f;
        if (M != kNegInf) {
#pragma unroll
            for (int w = 0; w < W; w++) {
                const float f = exp2_diff(sm_m[w * kKvqMmaHeads + g], M);
                D += sm_d[w * kKvqMmaHeads + g] * f;
                O += sm_o[(w * kKvqMmaHeads + g) * HD + c] * f;
            }
        }
        const int64_t rh = h0 + g;
        if (splits == 1) {
            out[rh * HD + c] = D > 0.f ? O / D : 0.f;
            if (lse2 && c == 0) lse2[rh] = D > 0.f ? M + log2f(D) : kNegInf;
        } else {
            const int64_t part = rh * splits + split;
            ws[(int64_t)H * splits * 2 + part * HD + c] = O;
            if (c == 0) {
                ws[part * 2] = M;
                ws[part * 2 + 1] = D;
            }
        }
    }
    if (splits == 1 || counters == nullptr) return;
    // Fused merge: every split arrives through the barrier, then one thread's fence + count (the block's partial
    // stores ordered before it); the last split merges every split's state of its nh heads.
    int* sm_flag = reinterpret_cast<int*>(smem);  // sm_q is no longer read
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const int last = atomicAdd(counters + blockIdx.y, 1) == splits - 1;
        if (last) {
            __threadfence();
            counters[blockIdx.y] = 0;  // every split of this call has counted: zero for the next call
        }
        sm_flag[0] = last;
    }
    __syncthreads();
    if (sm_flag[0] == 0) return;
    // per head: the rescale factor of each split (warp per head), then the outputs (thread per channel)
    float* sm_f = reinterpret_cast<float*>(smem + 16);  // [nh][splits]
    for (int g = warp; g < nh; g += W) {
        const int64_t rh = h0 + g;
        float M = kNegInf;
        for (int s2 = lane; s2 < splits; s2 += 32) M = fmaxf(M, __ldcg(ws + (rh * splits + s2) * 2));
#pragma unroll
        for (int o2 = 16; o2 > 0; o2 >>= 1) M = fmaxf(M, __shfl_xor_sync(FULL, M, o2));
        float D = 0.f;
        for (int s2 = lane; s2 < splits; s2 += 32) {
            const float f = exp2_diff(__ldcg(ws + (rh * splits + s2) * 2), M);
            sm_f[g * splits + s2] = f;
            D += __ldcg(ws + (rh * splits + s2) * 2 + 1) * f;
        }
#pragma unroll
        for (int o2 = 16; o2 > 0; o2 >>= 1) D += __shfl_xor_sync(FULL, D, o2);
        if (lane == 0) {
            sm_m[g] = M;
            sm_d[g] = D;
        }
    }
    __syncthreads();
    for (int e = (int)threadIdx.x; e < nh * HD; e += kKvqMmaThreads) {
        const int g = e / HD, c = e - g * HD;
        const int64_t rh = h0 + g;
        const float* po = ws + (int64_t)H * splits * 2 + rh * splits * HD + c;
        float O = 0.f;
        for (int s2 = 0; s2 < splits; s2++) O += __ldcg(po + (int64_t)s2 * HD) * sm_f[g * splits + s2];
        const float D = sm_d[g];
        out[rh * HD + c] = D > 0.f ? O / D : 0.f;
        if (lse2 && c == 0) lse2[rh] = D > 0.f ? sm_m[g] + log2f(D) : kNegInf;
    }
}

}  // namespace tp
