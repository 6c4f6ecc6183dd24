// Quantized KV cache (KIVI int8 / int4 / int2) on the device: quantize-on-append of a completed block of G tokens
// and attention that reads the packed cache directly (dequantization inside the q·k dot products and the value
// accumulation; no dequantized copy). Only reached for a cache made with a KvQuantSpec (CudaQuantKvCache); the bf16
// cache and its kernels are untouched.
//
// Storage per (layer, KV head), all device memory (see tokenpress.h, "quantized KV cache"):
//   window keys / values f32 [L][Hkv][R_cap][hd]  the residual window (the most recent tokens, exact f32)
//   block pool  u8 [L][Hkv][max_blocks][block_bytes], one record per block of G tokens:
//     f16 key zero [hd] | f16 key scale [hd] | f16 value zero [G][ng] | f16 value scale [G][ng] |
//     key codes [hd][ceil(G*b/8)] (per channel, packed along tokens) | value codes [G][ceil(hd*b/8)] (per token,
//     packed along channels); padded to 16 bytes. ng = hd / gs, gs = min(G, hd).
//   positions int32 [L][Hkv][C] (-1 free), loc int32 [L][Hkv][C]: block*G + lane (>= 0) or -(window entry + 1).
// Packing: element e of a packed row at byte e*b/8, shift (e*b) mod 8 (first element in the low bits).
// The quantizer replicates dev.tokenpress.kv.quant.Quant bit for bit: zero = min rounded down to f16,
// scale = ((max - zero)/(2^b - 1)) rounded up to f16 (+1 ulp if zero + levels*scale < max), code =
// clamp(round-half-up((x - zero)/scale), 0, 2^b - 1); every float operation of that chain is an explicit
// round-to-nearest intrinsic (no FMA contraction), min/max are taken sequentially in lane order (as the CPU).
#include "common.cuh"
#include "attention_common.cuh"
#include "kvq_layout.cuh"
#include "kvq_mma.cuh"
#include <cuda_fp16.h>
#include <type_traits>

namespace {

using namespace tp;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxGt = 8;          // q-heads per attention block (larger GQA groups use several chunks)
// Splits of a decode attention call (n = 1): ceil(max_len / rows per split), at most the cap; both process-wide
// (tp_kvq_set_splits, for tuning sweeps; defaults 64 and 128 candidate slots, 32 per warp).
constexpr int kMaxSplitsCap = 1024;
int g_max_splits = 64;
int g_rows_per_split = 128;

// Attention kernel variant (tp_kvq_set_attention_variant): 1 = a warp per candidate, 2 = a lane per candidate,
// 3 = variant 2 with the key loads of a row in flight together and the tile's value rows staged in shared memory
// (variant 2 where the layout has more than kV3MaxNg value groups).
int g_attention_variant = 2;

// ---- f16 (bit-exact ports of dev.tokenpress.io.Half and dev.tokenpress.kv.quant.Quant) -------------------------

__device__ __forceinline__ float h2f(uint32_t h) {
    uint32_t sign = h & 0x8000u;
    uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
    float v;
    if (exp == 0) v = (float)mant * 5.9604644775390625e-8f;  // mant * 2^-24, exact
    else if (exp == 31) v = mant == 0 ? INFINITY : NAN;
    else return __uint_as_float((sign << 16) | ((exp + 112u) << 23) | (mant << 13));
    return sign ? -v : v;
}

// Half.fromFloat: round to nearest even, overflow to inf, NaN -> 0x7E00.
__device__ __forceinline__ uint32_t f2h(float f) {
    uint32_t bits = __float_as_uint(f);
    uint32_t sign = (bits >> 16) & 0x8000u;
    uint32_t val = bits & 0x7FFFFFFFu;
    if (val >= 0x7F800000u) return sign | (val > 0x7F800000u ? 0x7E00u : 0x7C00u);
    if (val >= 0x477FF000u) return sign | 0x7C00u;
    if (val < 0x38800000u) {
        if (val < 0x33000000u) return sign;
        uint32_t e = val >> 23;
        uint32_t m = (val & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126u - e;
        uint32_t rounded = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (rounded & 1u) == 1u)) rounded++;
        return sign | rounded;
    }
    uint32_t out = (((val >> 23) - 112u) << 10) | ((val >> 13) & 0x3FFu);
    uint32_t rem = val & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (out & 1u) == 1u)) out++;
    return sign | out;
}

__device__ __forceinline__ uint32_t f16_down(float v) {
    uint32_t h = f2h(v);
    if (h2f(h) > v) {
        if (h == 0) h = 0x8001u;
        else if ((h & 0x8000u) == 0) h = h - 1u;
        else h = h + 1u;
    }
    return h & 0xFFFFu;
}

__device__ __forceinline__ uint32_t f16_up(float v) {  // v >= 0
    uint32_t h = f2h(v);
    if (h2f(h) < v) h = h + 1u;
    return h & 0xFFFFu;
}

// Quant.params: f16 (zero, scale) of a group with range [mn, mx].
__device__ __forceinline__ void quant_params(float mn, float mx, int bits, uint32_t& z, uint32_t& s) {
    float lv = (float)((1 << bits) - 1);
    z = f16_down(mn);
    float zf = h2f(z);
    float r = __fdiv_rn(__fsub_rn(mx, zf), lv);
    s = f16_up(r > 0.f ? r : 0.f);
    if (__fadd_rn(zf, __fmul_rn(lv, h2f(s))) < mx) s = (s + 1u) & 0xFFFFu;
}

// Quant.code: clamp(Math.round((x - zero) / scale), 0, levels); Math.round = nearest, ties toward +inf.
__device__ __forceinline__ uint32_t quant_code(float x, float z, float s, int bits) {
    if (s == 0.f) return 0;
    int levels = (1 << bits) - 1;
    float d = __fdiv_rn(__fsub_rn(x, z), s);
    if (!(d >= 0.f)) return 0;  // negative (rounds to <= 0) or NaN (Math.round(NaN) = 0)
    if (d >= (float)levels) return (uint32_t)levels;
    float fl = floorf(d);
    return (uint32_t)fl + (__fsub_rn(d, fl) >= 0.5f ? 1u : 0u);
}

// ---- quantize-on-append ------------------------------------------------------------------------------------------

// Source row of lane t of a new block: src >= 0 = row of the step's k/v tensors, else window entry -src - 1
// (its contents before this call).
// (x_off: g * hd for rows of the step's k/v tensors [n, kv_stride], 0 for the rows of a compaction's [m, hd])
__device__ __forceinline__ const float* src_row(int src, const float* x, int x_stride, int64_t x_off, int hd,
                                                const float* win, int64_t wbase) {
    return src >= 0 ? x + (int64_t)src * x_stride + x_off : win + (wbase + (-src - 1)) * hd;
}

// One CUDA block per new quantized block. plan int32: g[nb] | block id[nb] | src[nb][G] (rows == 0: sources are
// rows of the step's k/v or window entries) or g[nb] | block id[nb] | lanes[nb] | src[nb][G] (rows == 1: the
// first lanes[b] sources are rows of k/v [m, hd], a compaction's decoded tokens; the block has that many lanes,
// the CPU's shorter block). Keys: one thread per channel (min/max over the block's lanes in lane order, then the
// packed code row); values: one thread per lane (per channel group min/max in channel order, then the packed code
// row).
__global__ void __launch_bounds__(kThreads) kvq_encode_kernel(
        uint8_t* __restrict__ pool, const float* __restrict__ wk, const float* __restrict__ wv,
        const float* __restrict__ k, const float* __restrict__ v, int kv_stride, const int* __restrict__ plan,
        int nb, int layer, int kv_heads, int res_cap, int max_blocks, Layout L, int rows) {
    int b = blockIdx.x;
    int g = plan[b], blk = plan[nb + b];
    const int* src = plan + (rows ? 3 : 2) * nb + (int64_t)b * L.G;
    int64_t hb = (int64_t)layer * kv_heads + g;
    uint8_t* rec = pool + (hb * max_blocks + blk) * (int64_t)L.bytes;
    int64_t wbase = hb * res_cap;
    int hd = L.hd, bits = L.bits;
    const int G = rows ? plan[2 * nb + b] : L.G;  // lanes of this block
    const int64_t x_off = rows ? 0 : (int64_t)g * hd;
    uint16_t* kz = reinterpret_cast<uint16_t*>(rec + L.off_kz);
    uint16_t* ks = reinterpret_cast<uint16_t*>(rec + L.off_ks);
    uint16_t* vz = reinterpret_cast<uint16_t*>(rec + L.off_vz);
    uint16_t* vs = reinterpret_cast<uint16_t*>(rec + L.off_vs);
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float mn = INFINITY, mx = -INFINITY;
        for (int t = 0; t < G; t++) {
            float x = src_row(src[t], k, kv_stride, x_off, hd, wk, wbase)[c];
            if (x < mn) mn = x;
            if (x > mx) mx = x;
        }
        if (mn > mx) mn = mx = 0.f;
        uint32_t z, s;
        quant_params(mn, mx, bits, z, s);
        kz[c] = (uint16_t)z;
        ks[c] = (uint16_t)s;
        float zf = h2f(z), sf = h2f(s);
        uint8_t* row = rec + L.off_kc + (int64_t)c * L.rbk;
        uint32_t acc = 0;
        int nbits = 0, byte = 0;
        for (int t = 0; t < G; t++) {
            float x = src_row(src[t], k, kv_stride, x_off, hd, wk, wbase)[c];
            acc |= quant_code(x, zf, sf, bits) << nbits;
            nbits += bits;
            if (nbits == 8) {
                row[byte++] = (uint8_t)acc;
                acc = 0;
                nbits = 0;
            }
        }
        if (nbits) row[byte] = (uint8_t)acc;
    }
    for (int t = threadIdx.x; t < G; t += blockDim.x) {
        const float* x = src_row(src[t], v, kv_stride, x_off, hd, wv, wbase);
        uint8_t* row = rec + L.off_vc + (int64_t)t * L.rbv;
        uint32_t acc = 0;
        int nbits = 0, byte = 0;
        for (int gi = 0; gi < L.ng; gi++) {
            float mn = INFINITY, mx = -INFINITY;
            for (int c = gi * L.gs; c < (gi + 1) * L.gs; c++) {
                float e = x[c];
                if (e < mn) mn = e;
                if (e > mx) mx = e;
            }
            if (mn > mx) mn = mx = 0.f;
            uint32_t z, s;
            quant_params(mn, mx, bits, z, s);
            vz[t * L.ng + gi] = (uint16_t)z;
            vs[t * L.ng + gi] = (uint16_t)s;
            float zf = h2f(z), sf = h2f(s);
            for (int c = gi * L.gs; c < (gi + 1) * L.gs; c++) {
                acc |= quant_code(x[c], zf, sf, bits) << nbits;
                nbits += bits;
                if (nbits == 8) {
                    row[byte++] = (uint8_t)acc;
                    acc = 0;
                    nbits = 0;
                }
            }
        }
        if (nbits) row[byte] = (uint8_t)acc;
    }
}

// Compaction (the CPU cache's, tp_kvq_decode_lanes): rows i of k/v [m, hd] <- the reconstructed key and value of
// block lane loc[i] of KV head g[i] (plan int32: g[m] | loc[m], loc = block * G + lane), with the CPU's float
// formulas: key = zero + scale * code, value = code * scale + zero (explicit roundings, no FMA), so re-encoding them
// gives the CPU's codes. One CUDA block per lane, a thread per channel.
__global__ void __launch_bounds__(kThreads) kvq_decode_lanes_kernel(
        float* __restrict__ k, float* __restrict__ v, const uint8_t* __restrict__ pool, const int* __restrict__ plan,
        int m, int layer, int kv_heads, int max_blocks, Layout L) {
    const int i = blockIdx.x;
    const int g = plan[i], l = plan[m + i];
    const int blk = l / L.G, t = l - blk * L.G;
    const uint8_t* rec = pool + (((int64_t)layer * kv_heads + g) * max_blocks + blk) * (int64_t)L.bytes;
    const uint16_t* kz = reinterpret_cast<const uint16_t*>(rec + L.off_kz);
    const uint16_t* ks = reinterpret_cast<const uint16_t*>(rec + L.off_ks);
    const uint16_t* vz = reinterpret_cast<const uint16_t*>(rec + L.off_vz) + t * L.ng;
    const uint16_t* vs = reinterpret_cast<const uint16_t*>(rec + L.off_vs) + t * L.ng;
    const uint32_t mask = (1u << L.bits) - 1u;
    const int kbit = t * L.bits;
    for (int c = threadIdx.x; c < L.hd; c += blockDim.x) {
        const uint32_t kcode = (rec[L.off_kc + c * L.rbk + (kbit >> 3)] >> (kbit & 7)) & mask;
        const int vbit = c * L.bits, gi = c / L.gs;
        const uint32_t vcode = (rec[L.off_vc + t * L.rbv + (vbit >> 3)] >> (vbit & 7)) & mask;
        k[(int64_t)i * L.hd + c] = __fadd_rn(h2f(kz[c]), __fmul_rn(h2f(ks[c]), (float)kcode));
        v[(int64_t)i * L.hd + c] = __fadd_rn(__fmul_rn((float)vcode, h2f(vs[gi])), h2f(vz[gi]));
    }
}

// Window entries <- rows of the step's k/v tensors. plan int32: g[m] | entry[m] | row[m].
__global__ void kvq_window_write_kernel(float* __restrict__ wk, float* __restrict__ wv, const float* __restrict__ k,
                                        const float* __restrict__ v, int kv_stride, const int* __restrict__ plan,
                                        int m, int layer, int kv_heads, int hd, int res_cap) {
    int i = blockIdx.x;
    int g = plan[i], e = plan[m + i], r = plan[2 * m + i];
    int64_t dst = (((int64_t)layer * kv_heads + g) * res_cap + e) * hd;
    int64_t src = (int64_t)r * kv_stride + (int64_t)g * hd;
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        wk[dst + c] = k[src + c];
        wv[dst + c] = v[src + c];
    }
}

// ---- attention over the packed cache ------------------------------------------------------------------------------

// grid (splits, Hkv * chunks, n). Each warp takes every 4th candidate of the block's split range; a lane owns HD/32
// consecutive channels. Per visible slot: the key is rebuilt in registers (window: f32 row; block: s_c·code + z_c
// per channel) and dotted with each q-head of the chunk (warp sum), the value likewise (s_g·code + z_g per token
// group) and accumulated into the online-softmax state. The 4 warps merge in shared memory; splits == 1 writes
// out, otherwise the partial (m, d, o) go to the workspace for kvq_merge_kernel.
// The end of a quantized-attention block: merges its warps' partial states (shared memory, [kWarps][NH]...) of
// the gt q-heads from h0 of query row r and writes the output (one split) or this split's (m, d, o) into ws.
template <int HD, int NH>
__device__ __forceinline__ void write_block_result(const float (*sm_m)[NH], const float (*sm_d)[NH],
                                                   const float (*sm_o)[NH][HD], int gt, int r, int H, int h0,
                                                   int splits, int split, float* __restrict__ out,
                                                   float* __restrict__ ws, float* __restrict__ lse2) {
    for (int e = threadIdx.x; e < gt * HD; e += kThreads) {
        int j = e / HD, c = e - j * HD;
        float mm = kNegInf;
#pragma unroll
        for (int w = 0; w < kWarps; w++) mm = fmaxf(mm, sm_m[w][j]);
        float d = 0.f, oo = 0.f;
        if (mm != kNegInf) {
#pragma unroll
            for (int w = 0; w < kWarps; w++) {
                float a = exp2_diff(sm_m[w][j], mm);
                d += sm_d[w][j] * a;
                oo += sm_o[w][j][c] * a;
            }
        }
        int64_t rh = (int64_t)r * H + h0 + j;
        if (splits == 1) {
            out[rh * HD + c] = d > 0.f ? oo / d : 0.f;
            if (lse2 && c == 0) lse2[rh] = d > 0.f ? mm + log2f(d) : kNegInf;
        } else {
            int64_t part = rh * splits + split;
            ws[(int64_t)gridDim.z * H * splits * 2 + part * HD + c] = oo;
            if (c == 0) {
                ws[part * 2] = mm;
                ws[part * 2 + 1] = d;
            }
        }
    }
}

template <int HD, int BITS>
__global__ void __launch_bounds__(kThreads) kvq_attention_kernel(
        float* __restrict__ out, float* __restrict__ ws, const float* __restrict__ q, const uint8_t* __restrict__ pool,
        const float* __restrict__ wk, const float* __restrict__ wv, const int* __restrict__ pc,
        const int* __restrict__ lc, int layer, int H, int kv_heads, int C, int res_cap, int max_blocks, Layout L,
        const int* __restrict__ qpos, const int* __restrict__ sel, int sel_stride, const int* __restrict__ sel_counts,
        const int* __restrict__ hw, int splits, float scale_log2, float* __restrict__ lse2) {
    constexpr int CPL = HD / 32;
    constexpr uint32_t MASK = (1u << BITS) - 1u;
    __shared__ float sm_m[kWarps][kMaxGt], sm_d[kWarps][kMaxGt];
    __shared__ float sm_o[kWarps][kMaxGt][HD];
    int group = H / kv_heads, chunks = (group + kMaxGt - 1) / kMaxGt;
    int split = blockIdx.x, g = blockIdx.y / chunks, chunk = blockIdx.y % chunks, r = blockIdx.z;
    int h0 = g * group + chunk * kMaxGt;
    int gt = min(kMaxGt, group - chunk * kMaxGt);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int c0 = lane * CPL;

    float qr[kMaxGt][CPL];
#pragma unroll
    for (int j = 0; j < kMaxGt; j++)
#pragma unroll
        for (int i = 0; i < CPL; i++) qr[j][i] = j < gt ? q[((int64_t)r * H + h0 + j) * HD + c0 + i] : 0.f;
    SoftmaxState<CPL> st[kMaxGt];
#pragma unroll
    for (int j = 0; j < kMaxGt; j++) st[j].init();

    int p = qpos[r];
    int len = candidate_count(sel, sel_stride, sel_counts, hw, g, C);
    int per = (len + splits - 1) / splits;
    int i0 = split * per, i1 = min(len, i0 + per);
    int64_t hb = (int64_t)layer * kv_heads + g;
    const int* pcg = pc + hb * C;
    const int* lcg = lc + hb * C;
    const uint8_t* poolg = pool + hb * max_blocks * (int64_t)L.bytes;

    for (int idx = i0 + warp; idx < i1; idx += kWarps) {
        int s = candidate_slot(sel, sel_stride, g, idx, C);
        if (s < 0) continue;
        int ps = pcg[s];
        if (ps < 0 || ps > p) continue;
        int l = lcg[s];
        float kf[CPL], vf[CPL];
        if (l < 0) {
            int64_t off = (hb * res_cap + (-l - 1)) * HD + c0;
#pragma unroll
            for (int i = 0; i < CPL; i++) {
                kf[i] = wk[off + i];
                vf[i] = wv[off + i];
            }
        } else {
            int blk = l / L.G, t = l - blk * L.G;
            const uint8_t* rec = poolg + (int64_t)blk * L.bytes;
            const uint16_t* kz = reinterpret_cast<const uint16_t*>(rec + L.off_kz);
            const uint16_t* ks = reinterpret_cast<const uint16_t*>(rec + L.off_ks);
            const uint16_t* vz = reinterpret_cast<const uint16_t*>(rec + L.off_vz) + t * L.ng;
            const uint16_t* vs = reinterpret_cast<const uint16_t*>(rec + L.off_vs) + t * L.ng;
            const uint8_t* kcode = rec + L.off_kc + ((t * BITS) >> 3);
            int ksh = (t * BITS) & 7;
            const uint8_t* vcode = rec + L.off_vc + (int64_t)t * L.rbv;
#pragma unroll
            for (int i = 0; i < CPL; i++) {
                int c = c0 + i;
                uint32_t kc = (kcode[c * L.rbk] >> ksh) & MASK;
                kf[i] = h2f(ks[c]) * (float)kc + h2f(kz[c]);
                int gi = c / L.gs;
                uint32_t vc = (vcode[(c * BITS) >> 3] >> ((c * BITS) & 7)) & MASK;
                vf[i] = (float)vc * h2f(vs[gi]) + h2f(vz[gi]);
            }
        }
#pragma unroll
        for (int j = 0; j < kMaxGt; j++) {
            if (j < gt) {
                float dot = 0.f;
#pragma unroll
                for (int i = 0; i < CPL; i++) dot = fmaf(qr[j][i], kf[i], dot);
                float sc = warp_sum(dot) * scale_log2;
                if (sc > st[j].m) st[j].rescale_to(sc);
                float e = exp2f(sc - st[j].m);
                st[j].d += e;
#pragma unroll
                for (int i = 0; i < CPL; i++) st[j].o[i] = fmaf(e, vf[i], st[j].o[i]);
            }
        }
    }
#pragma unroll
    for (int j = 0; j < kMaxGt; j++) {
        if (j < gt) {
            if (lane == 0) {
                sm_m[warp][j] = st[j].m;
                sm_d[warp][j] = st[j].d;
            }
#pragma unroll
            for (int i = 0; i < CPL; i++) sm_o[warp][j][c0 + i] = st[j].o[i];
        }
    }
    __syncthreads();
    write_block_result<HD, kMaxGt>(sm_m, sm_d, sm_o, gt, r, H, h0, splits, split, out, ws, lse2);
}

// f16 bits -> f32 by the hardware conversion (exact for every f16, like h2f).
__device__ __forceinline__ float hw_h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// Variant 2 of the quantized attention (same grid, workspace and merge as kvq_attention_kernel): each warp takes
// tiles of 32 consecutive candidates, one lane per candidate. A lane resolves its slot's position and location
// once and computes the q·k of every q-head of the chunk from its token's packed key codes (its block's per-channel
// f16 zero/scale are shared by the lanes of that block, so they come from L1); the warp then updates the online
// softmax with the tile's scores (one warp max per head) and accumulates p·v with lanes owning output channels
// (CPL = HD/32 each), the tile's probabilities broadcast by shuffles and each visible token's value codes read as
// one coalesced row. Loads of every lane's key data are independent, so a tile keeps many requests in flight,
// where variant 1 walks one candidate per warp through a chain of dependent loads.
template <int HD, int BITS>
__global__ void __launch_bounds__(kThreads) kvq_attention_v2_kernel(
        float* __restrict__ out, float* __restrict__ ws, const float* __restrict__ q, const uint8_t* __restrict__ pool,
        const float* __restrict__ wk, const float* __restrict__ wv, const int* __restrict__ pc,
        const int* __restrict__ lc, int layer, int H, int kv_heads, int C, int res_cap, int max_blocks, Layout L,
        const int* __restrict__ qpos, const int* __restrict__ sel, int sel_stride, const int* __restrict__ sel_counts,
        const int* __restrict__ hw, int splits, float scale_log2, float* __restrict__ lse2) {
    constexpr int CPL = HD / 32;
    constexpr uint32_t MASK = (1u << BITS) - 1u;
    __shared__ float sm_q[kMaxGt][HD];
    __shared__ float sm_m[kWarps][kMaxGt], sm_d[kWarps][kMaxGt];
    __shared__ float sm_o[kWarps][kMaxGt][HD];
    int group = H / kv_heads, chunks = (group + kMaxGt - 1) / kMaxGt;
    int split = blockIdx.x, g = blockIdx.y / chunks, chunk = blockIdx.y % chunks, r = blockIdx.z;
    int h0 = g * group + chunk * kMaxGt;
    int gt = min(kMaxGt, group - chunk * kMaxGt);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int c0 = lane * CPL;

    for (int e = threadIdx.x; e < kMaxGt * HD; e += kThreads) {
        int j = e / HD, c = e - j * HD;
        sm_q[j][c] = j < gt ? q[((int64_t)r * H + h0 + j) * HD + c] * scale_log2 : 0.f;
    }
    __syncthreads();

    float m[kMaxGt], dl[kMaxGt], o[kMaxGt][CPL];
#pragma unroll
    for (int j = 0; j < kMaxGt; j++) {
        m[j] = kNegInf;
        dl[j] = 0.f;
#pragma unroll
        for (int i = 0; i < CPL; i++) o[j][i] = 0.f;
    }

    const int p = qpos[r];
    const int len = candidate_count(sel, sel_stride, sel_counts, hw, g, C);
    const int per = (len + splits - 1) / splits;
    const int i0 = split * per, i1 = min(len, i0 + per);
    const int64_t hb = (int64_t)layer * kv_heads + g;
    const int* pcg = pc + hb * C;
    const int* lcg = lc + hb * C;
    const uint8_t* poolg = pool + hb * max_blocks * (int64_t)L.bytes;
    const float* wkg = wk + hb * res_cap * HD;
    const float* wvg = wv + hb * res_cap * HD;

    for (int base = i0 + warp * 32; base < i1; base += kWarps * 32) {
        const int idx = base + lane;
        int s = idx < i1 ? candidate_slot(sel, sel_stride, g, idx, C) : -1;
        int l = 0;
        bool vis = false;
        if (s >= 0) {
            int ps = pcg[s];
            l = lcg[s];
            vis = ps >= 0 && ps <= p;
        }
        // this lane's token: q·k for every head of the chunk (log2 domain, scaled)
        float sc[kMaxGt];
#pragma unroll
        for (int j = 0; j < kMaxGt; j++) sc[j] = 0.f;
        if (vis) {
            if (l < 0) {
                const float4* kr = reinterpret_cast<const float4*>(wkg + (int64_t)(-l - 1) * HD);
#pragma unroll 4
                for (int c4 = 0; c4 < HD / 4; c4++) {
                    float4 kv = kr[c4];
#pragma unroll
                    for (int j = 0; j < kMaxGt; j++) {
                        if (j < gt) {
                            const float* qq = &sm_q[j][c4 * 4];
                            sc[j] = fmaf(qq[0], kv.x, sc[j]);
                            sc[j] = fmaf(qq[1], kv.y, sc[j]);
                            sc[j] = fmaf(qq[2], kv.z, sc[j]);
                            sc[j] = fmaf(qq[3], kv.w, sc[j]);
                        }
                    }
                }
            } else {
                const int blk = l / L.G, t = l - blk * L.G;
                const uint8_t* rec = poolg + (int64_t)blk * L.bytes;
                const uint32_t* kz2 = reinterpret_cast<const uint32_t*>(rec + L.off_kz);
                const uint32_t* ks2 = reinterpret_cast<const uint32_t*>(rec + L.off_ks);
                const uint8_t* kcode = rec + L.off_kc + ((t * BITS) >> 3);
                const int ksh = (t * BITS) & 7;
#pragma unroll 8
                for (int c2 = 0; c2 < HD / 2; c2++) {
                    uint32_t zz = kz2[c2], ss = ks2[c2];
                    int c = 2 * c2;
                    uint32_t ka = (kcode[c * L.rbk] >> ksh) & MASK, kb = (kcode[(c + 1) * L.rbk] >> ksh) & MASK;
                    float k0 = hw_h2f((uint16_t)(ss & 0xFFFFu)) * (float)ka + hw_h2f((uint16_t)(zz & 0xFFFFu));
                    float k1 = hw_h2f((uint16_t)(ss >> 16)) * (float)kb + hw_h2f((uint16_t)(zz >> 16));
#pragma unroll
                    for (int j = 0; j < kMaxGt; j++) {
                        if (j < gt) {
                            sc[j] = fmaf(sm_q[j][c], k0, sc[j]);
                            sc[j] = fmaf(sm_q[j][c + 1], k1, sc[j]);
                        }
                    }
                }
            }
        }
        const unsigned vmask = __ballot_sync(0xffffffffu, vis);
        if (vmask == 0u) continue;
        // online softmax over the tile: one max per head, every lane's probability
        float pr[kMaxGt];
#pragma unroll
        for (int j = 0; j < kMaxGt; j++) {
            pr[j] = 0.f;
            if (j < gt) {
                float x = vis ? sc[j] : kNegInf;
                float mx = warp_max(x);
                float mn = fmaxf(m[j], mx);
                float a = exp2_diff(m[j], mn);
                dl[j] *= a;
#pragma unroll
                for (int i = 0; i < CPL; i++) o[j][i] *= a;
                m[j] = mn;
                pr[j] = vis ? exp2f(x - mn) : 0.f;
                dl[j] += pr[j];
            }
        }
        // p·v: lanes own channels c0..c0+CPL; visible tokens of the tile in lane order
#pragma unroll 4
        for (int u = 0; u < 32; u++) {
            if (!((vmask >> u) & 1u)) continue;  // warp-uniform
            const int lu = __shfl_sync(0xffffffffu, l, u);
            float vf[CPL];
            if (lu < 0) {
                const float* vr = wvg + (int64_t)(-lu - 1) * HD + c0;
#pragma unroll
                for (int i = 0; i < CPL; i++) vf[i] = vr[i];
            } else {
                const int blk = lu / L.G, t = lu - blk * L.G;
                const uint8_t* rec = poolg + (int64_t)blk * L.bytes;
                const uint16_t* vz = reinterpret_cast<const uint16_t*>(rec + L.off_vz) + t * L.ng;
                const uint16_t* vs = reinterpret_cast<const uint16_t*>(rec + L.off_vs) + t * L.ng;
                const uint8_t* vcode = rec + L.off_vc + (int64_t)t * L.rbv;
#pragma unroll
                for (int i = 0; i < CPL; i++) {
                    int c = c0 + i;
                    int gi = c / L.gs;
                    uint32_t vc = (vcode[(c * BITS) >> 3] >> ((c * BITS) & 7)) & MASK;
                    vf[i] = (float)vc * hw_h2f(vs[gi]) + hw_h2f(vz[gi]);
                }
            }
#pragma unroll
            for (int j = 0; j < kMaxGt; j++) {
                if (j < gt) {
                    float pu = __shfl_sync(0xffffffffu, pr[j], u);
#pragma unroll
                    for (int i = 0; i < CPL; i++) o[j][i] = fmaf(pu, vf[i], o[j][i]);
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < kMaxGt; j++) {
        if (j < gt) {
            float d = warp_sum(dl[j]);
            if (lane == 0) {
                sm_m[warp][j] = m[j];
                sm_d[warp][j] = d;
            }
#pragma unroll
            for (int i = 0; i < CPL; i++) sm_o[warp][j][c0 + i] = o[j][i];
        }
    }
    __syncthreads();
    write_block_result<HD, kMaxGt>(sm_m, sm_d, sm_o, gt, r, H, h0, splits, split, out, ws, lse2);
}

// Variant 3: variant 2's tiles (a lane per candidate, tile-wide online softmax) with the two latency chains of
// variant 2 removed. Keys: the lane reads its block's per-channel f16 zero/scale 8 channels per 16-byte load and
// its 8 code bytes, the loop over channels fully unrolled so every load of the row is in flight at once. Values:
// before the softmax, each lane copies its own token's packed value-code row and per-group (zero, scale) into the
// warp's shared-memory staging area (one round trip for the whole tile instead of one per token), so the p·v loop
// reads shared memory only; window tokens (f32 rows, at most R + G per KV head) are read from global memory there.
// GT q-heads per block (1, 2, 4 or 8: registers sized to the group). Needs hd / gs <= kV3MaxNg value groups.
constexpr int kV3MaxNg = 16;

template <int HD, int BITS, int GT>
__global__ void __launch_bounds__(kThreads) kvq_attention_v3_kernel(
        float* __restrict__ out, float* __restrict__ ws, const float* __restrict__ q, const uint8_t* __restrict__ pool,
        const float* __restrict__ wk, const float* __restrict__ wv, const int* __restrict__ pc,
        const int* __restrict__ lc, int layer, int H, int kv_heads, int C, int res_cap, int max_blocks, Layout L,
        const int* __restrict__ qpos, const int* __restrict__ sel, int sel_stride, const int* __restrict__ sel_counts,
        const int* __restrict__ hw, int splits, float scale_log2, float* __restrict__ lse2) {
    constexpr int CPL = HD / 32;
    constexpr int RBV = HD * BITS / 8;          // value-code bytes per token (16..128, a multiple of 16)
    constexpr uint32_t MASK = (1u << BITS) - 1u;
    __shared__ __align__(16) float sm_q[GT][HD];
    __shared__ __align__(16) uint8_t sm_vc[kWarps][32][RBV];
    __shared__ uint32_t sm_vzs[kWarps][32][kV3MaxNg];  // f16 zero | f16 scale << 16
    __shared__ float sm_m[kWarps][GT], sm_d[kWarps][GT];
    __shared__ float sm_o[kWarps][GT][HD];
    const int group = H / kv_heads, chunks = (group + GT - 1) / GT;
    const int split = blockIdx.x, g = blockIdx.y / chunks, chunk = blockIdx.y % chunks, r = blockIdx.z;
    const int h0 = g * group + chunk * GT;
    const int gt = min(GT, group - chunk * GT);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int c0 = lane * CPL;

    for (int e = threadIdx.x; e < GT * HD; e += kThreads) {
        int j = e / HD, c = e - j * HD;
        sm_q[j][c] = j < gt ? q[((int64_t)r * H + h0 + j) * HD + c] * scale_log2 : 0.f;
    }
    __syncthreads();

    float m[GT], dl[GT], o[GT][CPL];
#pragma unroll
    for (int j = 0; j < GT; j++) {
        m[j] = kNegInf;
        dl[j] = 0.f;
#pragma unroll
        for (int i = 0; i < CPL; i++) o[j][i] = 0.f;
    }

    const int p = qpos[r];
    const int len = candidate_count(sel, sel_stride, sel_counts, hw, g, C);
    const int per = (len + splits - 1) / splits;
    const int i0 = split * per, i1 = min(len, i0 + per);
    const int64_t hb = (int64_t)layer * kv_heads + g;
    const int* pcg = pc + hb * C;
    const int* lcg = lc + hb * C;
    const uint8_t* poolg = pool + hb * max_blocks * (int64_t)L.bytes;
    const float* wkg = wk + hb * res_cap * HD;
    const float* wvg = wv + hb * res_cap * HD;
    const bool vc16 = (L.off_vc & 15) == 0;  // value-code rows 16-byte aligned (RBV is a multiple of 16)

    for (int base = i0 + warp * 32; base < i1; base += kWarps * 32) {
        const int idx = base + lane;
        int s = idx < i1 ? candidate_slot(sel, sel_stride, g, idx, C) : -1;
        int l = 0;
        bool vis = false;
        if (s >= 0) {
            int ps = pcg[s];
            l = lcg[s];
            vis = ps >= 0 && ps <= p;
        }
        float sc[GT];
#pragma unroll
        for (int j = 0; j < GT; j++) sc[j] = 0.f;
        if (vis && l >= 0) {
            const int blk = l / L.G, t = l - blk * L.G;
            const uint8_t* rec = poolg + (int64_t)blk * L.bytes;
            // stage this token's value codes and per-group (zero, scale) for the p·v loop
            const uint8_t* vrow = rec + L.off_vc + (int64_t)t * L.rbv;
            if (vc16) {
#pragma unroll
                for (int b = 0; b < RBV / 16; b++)
                    reinterpret_cast<uint4*>(&sm_vc[warp][lane][0])[b] = __ldg(reinterpret_cast<const uint4*>(vrow) + b);
            } else {
                for (int b = 0; b < RBV; b++) sm_vc[warp][lane][b] = vrow[b];
            }
            const uint16_t* vz = reinterpret_cast<const uint16_t*>(rec + L.off_vz) + t * L.ng;
            const uint16_t* vs = reinterpret_cast<const uint16_t*>(rec + L.off_vs) + t * L.ng;
            for (int gi = 0; gi < L.ng; gi++) sm_vzs[warp][lane][gi] = (uint32_t)vz[gi] | ((uint32_t)vs[gi] << 16);
            // q·k from the packed key codes
            const uint4* kz8 = reinterpret_cast<const uint4*>(rec + L.off_kz);
            const uint4* ks8 = reinterpret_cast<const uint4*>(rec + L.off_ks);
            const uint8_t* kcode = rec + L.off_kc + ((t * BITS) >> 3);
            const int ksh = (t * BITS) & 7;
#pragma unroll
            for (int c8 = 0; c8 < HD / 8; c8++) {
                uint4 zz = __ldg(kz8 + c8), ss = __ldg(ks8 + c8);
                const uint32_t zw[4] = {zz.x, zz.y, zz.z, zz.w}, sw[4] = {ss.x, ss.y, ss.z, ss.w};
                float kf[8];
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    const int c = c8 * 8 + e;
                    uint32_t code = ((uint32_t)__ldg(kcode + c * L.rbk) >> ksh) & MASK;
                    uint16_t zb = (uint16_t)((e & 1) ? (zw[e >> 1] >> 16) : (zw[e >> 1] & 0xFFFFu));
                    uint16_t sb = (uint16_t)((e & 1) ? (sw[e >> 1] >> 16) : (sw[e >> 1] & 0xFFFFu));
                    kf[e] = hw_h2f(sb) * (float)code + hw_h2f(zb);
                }
                // q of the 8 channels as two 16-byte shared loads per head (the same products, in channel order)
#pragma unroll
                for (int j = 0; j < GT; j++) {
                    const float4 qa = *reinterpret_cast<const float4*>(&sm_q[j][c8 * 8]);
                    const float4 qb = *reinterpret_cast<const float4*>(&sm_q[j][c8 * 8 + 4]);
                    sc[j] = fma8(sc[j], qa, qb, kf);
                }
            }
        } else if (vis) {
            const float4* kr = reinterpret_cast<const float4*>(wkg + (int64_t)(-l - 1) * HD);
#pragma unroll 4
            for (int c4 = 0; c4 < HD / 4; c4++) {
                float4 kv = kr[c4];
#pragma unroll
                for (int j = 0; j < GT; j++) {
                    const float4 qq = *reinterpret_cast<const float4*>(&sm_q[j][c4 * 4]);
                    sc[j] = fmaf(qq.x, kv.x, sc[j]);
                    sc[j] = fmaf(qq.y, kv.y, sc[j]);
                    sc[j] = fmaf(qq.z, kv.z, sc[j]);
                    sc[j] = fmaf(qq.w, kv.w, sc[j]);
                }
            }
        }
        const unsigned vmask = __ballot_sync(0xffffffffu, vis);
        if (vmask == 0u) continue;
        __syncwarp();
        float pr[GT];
#pragma unroll
        for (int j = 0; j < GT; j++) {
            float x = vis ? sc[j] : kNegInf;
            float mx = warp_max(x);
            float mn = fmaxf(m[j], mx);
            float a = exp2_diff(m[j], mn);
            dl[j] *= a;
#pragma unroll
            for (int i = 0; i < CPL; i++) o[j][i] *= a;
            m[j] = mn;
            pr[j] = vis ? exp2f(x - mn) : 0.f;
            dl[j] += pr[j];
        }
        const int gi0 = c0 / L.gs;  // CPL <= 4 channels; gs >= HD / kV3MaxNg >= 4 keeps them in one group
#pragma unroll 4
        for (int u = 0; u < 32; u++) {
            if (!((vmask >> u) & 1u)) continue;  // warp-uniform
            const int lu = __shfl_sync(0xffffffffu, l, u);
            float vf[CPL];
            if (lu < 0) {
                const float* vr = wvg + (int64_t)(-lu - 1) * HD + c0;
#pragma unroll
                for (int i = 0; i < CPL; i++) vf[i] = vr[i];
            } else {
                const uint32_t zs = sm_vzs[warp][u][gi0];
                const float vsf = hw_h2f((uint16_t)(zs >> 16)), vzf = hw_h2f((uint16_t)(zs & 0xFFFFu));
#pragma unroll
                for (int i = 0; i < CPL; i++) {
                    const int c = c0 + i;
                    uint32_t vc = ((uint32_t)sm_vc[warp][u][(c * BITS) >> 3] >> ((c * BITS) & 7)) & MASK;
                    vf[i] = (float)vc * vsf + vzf;
                }
            }
#pragma unroll
            for (int j = 0; j < GT; j++) {
                float pu = __shfl_sync(0xffffffffu, pr[j], u);
#pragma unroll
                for (int i = 0; i < CPL; i++) o[j][i] = fmaf(pu, vf[i], o[j][i]);
            }
        }
        __syncwarp();  // the staging area is rewritten by the next tile
    }
#pragma unroll
    for (int j = 0; j < GT; j++) {
        float d = warp_sum(dl[j]);
        if (lane == 0) {
            sm_m[warp][j] = m[j];
            sm_d[warp][j] = d;
        }
#pragma unroll
        for (int i = 0; i < CPL; i++) sm_o[warp][j][c0 + i] = o[j][i];
    }
    __syncthreads();
    write_block_result<HD, GT>(sm_m, sm_d, sm_o, gt, r, H, h0, splits, split, out, ws, lse2);
}

// Variant 4 (kvq_mma.cuh): tensor cores over the packed cache; same grid, workspace and merge as variant 3.
template <int HD, int BITS, int NG>
__global__ void __launch_bounds__(kKvqMmaThreads) kvq_attention_mma_kernel(
        float* __restrict__ out, float* __restrict__ ws, const float* __restrict__ q, const uint8_t* __restrict__ pool,
        const float* __restrict__ wk, const float* __restrict__ wv, const int* __restrict__ pc,
        const int* __restrict__ lc, int layer, int H, int kv_heads, int C, int res_cap, int max_blocks, Layout L,
        const int* __restrict__ qpos, const int* __restrict__ sel, int sel_stride, const int* __restrict__ sel_counts,
        const int* __restrict__ hw, int splits, float scale_log2, float* __restrict__ lse2, int* __restrict__ counters) {
    extern __shared__ __align__(128) unsigned char kvq_mma_smem[];
    __shared__ float sm_m[kKvqMmaWarps * kKvqMmaHeads], sm_d[kKvqMmaWarps * kKvqMmaHeads];
    pdl_wait();  // q, the cache and the step values come from earlier kernels
    pdl_launch_dependents();
    kvq_mma_block<HD, BITS, NG>(kvq_mma_smem, sm_m, sm_d, out, ws, q, pool, wk, wv, pc, lc, layer, H, kv_heads, C,
                                res_cap, max_blocks, L, qpos, sel, sel_stride, sel_counts, hw, splits, scale_log2,
                                lse2, counters);
}

// Variant 4's scores mode: TidalDecode's selection keys over the packed cache (tp_kvq_tidal_select), grid
// (splits, Hkv), a group of at most 8 q-heads; params = high-water marks [Hkv] | query position | keep position.
template <int HD, int BITS, int NG>
__global__ void __launch_bounds__(kKvqMmaThreads) kvq_scores_mma_kernel(
        KvqMmaKeys sk, const float* __restrict__ q, const uint8_t* __restrict__ pool, const float* __restrict__ wk,
        const int* __restrict__ pc, const int* __restrict__ lc, int layer, int H, int kv_heads, int C, int res_cap,
        int max_blocks, Layout L, const int* __restrict__ params, int splits) {
    extern __shared__ __align__(128) unsigned char kvq_mma_smem[];
    pdl_wait();
    pdl_launch_dependents();
    kvq_mma_block<HD, BITS, NG, true>(kvq_mma_smem, nullptr, nullptr, nullptr, nullptr, q, pool, wk, wk, pc, lc, layer,
                                      H, kv_heads, C, res_cap, max_blocks, L, params + kv_heads, nullptr, 0, nullptr,
                                      params, splits, 1.f, nullptr, nullptr, sk);
}

// Opts variant 4's kernel HD/BITS/NG into its dynamic shared memory on the current device and gives its resident
// blocks per SM there (once per device).
template <int HD, int BITS, int NG, bool SCORES = false>
cudaError_t mma_prepare(int* blocks_per_sm = nullptr) {
    static int cache[64] = {0};
    int bps = 0;
    const void* kernel = SCORES ? reinterpret_cast<const void*>(kvq_scores_mma_kernel<HD, BITS, NG>)
                                : reinterpret_cast<const void*>(kvq_attention_mma_kernel<HD, BITS, NG>);
    cudaError_t e = prepare_dynamic_smem(kernel, kKvqMmaThreads, KvqMmaShape<HD, BITS, NG, SCORES>::kSmemBytes, cache,
                                         &bps);
    if (blocks_per_sm) *blocks_per_sm = bps;
    return e;
}

// Every instantiation of variant 4 (tp_kvq_set_attention_variant(4), outside any graph capture).
template <int HD, int BITS, bool SCORES>
cudaError_t mma_prepare_ng() {
    cudaError_t e = mma_prepare<HD, BITS, 1, SCORES>();
    if (e == cudaSuccess) e = mma_prepare<HD, BITS, 2, SCORES>();
    if (e == cudaSuccess) e = mma_prepare<HD, BITS, 4, SCORES>();
    if constexpr (HD == 128)
        if (e == cudaSuccess) e = mma_prepare<HD, BITS, 8, SCORES>();
    return e;
}
template <int HD, int BITS>
cudaError_t mma_prepare_bits() {
    cudaError_t e = mma_prepare_ng<HD, BITS, false>();
    return e == cudaSuccess ? mma_prepare_ng<HD, BITS, true>() : e;
}
cudaError_t mma_prepare_all() {
    cudaError_t e = mma_prepare_bits<64, 2>();
    if (e == cudaSuccess) e = mma_prepare_bits<64, 4>();
    if (e == cudaSuccess) e = mma_prepare_bits<64, 8>();
    if (e == cudaSuccess) e = mma_prepare_bits<128, 2>();
    if (e == cudaSuccess) e = mma_prepare_bits<128, 4>();
    if (e == cudaSuccess) e = mma_prepare_bits<128, 8>();
    return e;
}

template <int HD, int BITS, int NG>
void launch_attention_mma(dim3 grid, cudaStream_t st, float* out, float* ws, const float* q, const uint8_t* pool,
                          const float* wk, const float* wv, const int* pc, const int* lc, int layer, int H, int Hkv,
                          int C, int res_cap, int max_blocks, const Layout& L, const int* qpos, const int* sel,
                          int sel_stride, const int* sel_counts, const int* hw, int splits, float scale_log2,
                          float* lse2, int* counters) {
    // (its shared memory opted in by the caller's mma_blocks) with Programmatic Dependent Launch where on (tp_set_pdl): the kernel waits for its predecessor's writes
    tp::launch(kvq_attention_mma_kernel<HD, BITS, NG>, grid, dim3(kKvqMmaThreads), KvqMmaShape<HD, BITS, NG>::kSmemBytes,
               st, out, ws, q, pool, wk, wv, pc, lc, layer, H, Hkv, C, res_cap, max_blocks, L, qpos, sel, sel_stride,
               sel_counts, hw, splits, scale_log2, lse2, counters);
}

// Variant 4's scores mode for tp_kvq_tidal_select: grid (splits, Hkv).
template <int HD, int BITS>
void launch_scores_mma(const KvqMmaKeys& sk, int splits, cudaStream_t st, const float* q, const uint8_t* pool,
                       const float* wk, const int* pc, const int* lc, int layer, int H, int Hkv, int C, int res_cap,
                       int max_blocks, const Layout& L, const int* params) {
    auto go = [&](auto ng) {
        constexpr int NG = decltype(ng)::value;
        tp::launch(kvq_scores_mma_kernel<HD, BITS, NG>, dim3(splits, Hkv), dim3(kKvqMmaThreads),
                   KvqMmaShape<HD, BITS, NG, true>::kSmemBytes, st, sk, q, pool, wk, pc, lc, layer, H, Hkv, C, res_cap,
                   max_blocks, L, params, splits);
    };
    if (L.ng == 1) go(std::integral_constant<int, 1>{});
    else if (L.ng == 2) go(std::integral_constant<int, 2>{});
    else if (L.ng == 4) go(std::integral_constant<int, 4>{});
    else if constexpr (HD == 128) {
        if (L.ng == 8) go(std::integral_constant<int, 8>{});
    }
}

// Whether variant 4 takes a call: decode (n = 1) over every slot (no selection list: its stages are rarely aligned
// runs, and variant 3 reads a list's rows lane-parallel), blocks of a multiple of 16 tokens, value groups of >= 16
// channels.
bool mma_eligible(const Layout& L, int n, const int* sel) {
    return n == 1 && sel == nullptr && L.G % kKvqMmaRows == 0 && L.gs >= 16;
}

// Resident blocks per SM of variant 4's kernel for this layout on the current device, its shared memory opted in;
// 0 where the opt-in fails (a device with less per block than a large shape asks, e.g. hd 128 int8 on sm_89): the
// call then runs variant 3.
template <int HD, int BITS, bool SCORES>
int mma_blocks(const Layout& L) {
    int bps = 0;
    cudaError_t e = cudaErrorInvalidValue;
    if (L.ng == 1) e = mma_prepare<HD, BITS, 1, SCORES>(&bps);
    else if (L.ng == 2) e = mma_prepare<HD, BITS, 2, SCORES>(&bps);
    else if (L.ng == 4) e = mma_prepare<HD, BITS, 4, SCORES>(&bps);
    else if constexpr (HD == 128) {
        if (L.ng == 8) e = mma_prepare<HD, BITS, 8, SCORES>(&bps);
    }
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return bps;
}

// Splits of a variant-4 call at bps resident blocks per SM: one full wave (blocks per SM × SMs over the grid's rows),
// at most max_splits (the workspace's count), at least one; each warp keeps four stages.
int mma_splits(int bps, int rows, int max_splits, int max_len) {
    int s = bps * sm_count() / (rows > 0 ? rows : 1);
    const int min_rows = 4 * kKvqMmaWarps * kKvqMmaRows;
    s = s < max_len / min_rows ? s : max_len / min_rows;
    s = s < max_splits ? s : max_splits;
    return s < 1 ? 1 : s;
}

// out[r, h] = merge of the splits' partial states. grid n*H, block HD threads.
__global__ void kvq_merge_kernel(float* __restrict__ out, const float* __restrict__ ws, int rows_heads, int splits,
                                 int hd, float* __restrict__ lse2) {
    int rh = blockIdx.x;
    const float* ml = ws + (int64_t)rh * splits * 2;
    const float* po = ws + (int64_t)rows_heads * splits * 2 + (int64_t)rh * splits * hd;
    float m = kNegInf;
    for (int s = 0; s < splits; s++) m = fmaxf(m, ml[2 * s]);
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float d = 0.f, o = 0.f;
        if (m != kNegInf)
            for (int s = 0; s < splits; s++) {
                float a = exp2_diff(ml[2 * s], m);
                d += ml[2 * s + 1] * a;
                o += po[(int64_t)s * hd + c] * a;
            }
        out[(int64_t)rh * hd + c] = d > 0.f ? o / d : 0.f;
        if (lse2 && c == 0) lse2[rh] = d > 0.f ? m + log2f(d) : kNegInf;
    }
}

int kvq_splits(int n, int max_len) {
    if (n != 1) return 1;
    const int rows = __atomic_load_n(&g_rows_per_split, __ATOMIC_RELAXED);
    const int cap = __atomic_load_n(&g_max_splits, __ATOMIC_RELAXED);
    int s = (max_len + rows - 1) / rows;
    return s < 1 ? 1 : (s > cap ? cap : s);
}

template <int HD, int BITS>
void launch_attention(dim3 grid, cudaStream_t st, float* out, float* ws, const float* q, const uint8_t* pool,
                      const float* wk, const float* wv, const int* pc, const int* lc, int layer, int H, int Hkv, int C,
                      int res_cap, int max_blocks, const Layout& L, const int* qpos, const int* sel, int sel_stride,
                      const int* sel_counts, const int* hw, int splits, float scale_log2, float* lse2,
                      bool v4, int* counters) {
    if (v4) {  // variant 4, eligible and ready (tp_kvq_attention_ex2)
#define TP_KVQ_MMA(NG) launch_attention_mma<HD, BITS, NG>(grid, st, out, ws, q, pool, wk, wv, pc, lc, layer, H, Hkv, \
            C, res_cap, max_blocks, L, qpos, sel, sel_stride, sel_counts, hw, splits, scale_log2, lse2, counters)
        if (L.ng == 1) TP_KVQ_MMA(1);
        else if (L.ng == 2) TP_KVQ_MMA(2);
        else if (L.ng == 4) TP_KVQ_MMA(4);
        else if constexpr (HD == 128) TP_KVQ_MMA(8);
#undef TP_KVQ_MMA
        return;
    }
    if (g_attention_variant >= 3 && L.ng <= kV3MaxNg) {
        const int group = H / Hkv;
        const int gt = group <= 1 ? 1 : group <= 2 ? 2 : group <= 4 ? 4 : 8;
        dim3 g3(grid.x, Hkv * ((group + gt - 1) / gt), grid.z);
#define TP_KVQ_V3(GT) kvq_attention_v3_kernel<HD, BITS, GT><<<g3, kThreads, 0, st>>>(out, ws, q, pool, wk, wv, pc, lc, \
            layer, H, Hkv, C, res_cap, max_blocks, L, qpos, sel, sel_stride, sel_counts, hw, splits, scale_log2, lse2)
        if (gt == 1) TP_KVQ_V3(1);
        else if (gt == 2) TP_KVQ_V3(2);
        else if (gt == 4) TP_KVQ_V3(4);
        else TP_KVQ_V3(8);
#undef TP_KVQ_V3
    } else if (g_attention_variant >= 2) {
        kvq_attention_v2_kernel<HD, BITS><<<grid, kThreads, 0, st>>>(out, ws, q, pool, wk, wv, pc, lc, layer, H, Hkv,
                                                                     C, res_cap, max_blocks, L, qpos, sel, sel_stride,
                                                                     sel_counts, hw, splits, scale_log2, lse2);
    } else {
        kvq_attention_kernel<HD, BITS><<<grid, kThreads, 0, st>>>(out, ws, q, pool, wk, wv, pc, lc, layer, H, Hkv, C,
                                                                  res_cap, max_blocks, L, qpos, sel, sel_stride,
                                                                  sel_counts, hw, splits, scale_log2, lse2);
    }
}

bool valid_bits(int bits) { return bits == 2 || bits == 4 || bits == 8; }

// ---- ops for KV compression policies over the packed cache -------------------------------------------------------
// The counterparts of policy_ops.cu / the statistics pass of decode_attention.cu / TidalDecode's score kernel for
// the bf16 cache: the same outputs, the keys dequantized in registers exactly as the attention kernels do
// (s_c * code + z_c per channel; window entries are the f32 rows). A slot's location is read only when the slot is
// occupied (position >= 0).

// Channels c0 .. c0 + N - 1 of the key at location l (loc_cache: block * G + lane >= 0, or -(window entry + 1)) of
// the KV head whose block records start at poolg and whose window rows start at row wbase of wk.
template <int BITS, int N>
__device__ __forceinline__ void kvq_key_part(float* kf, const uint8_t* __restrict__ poolg,
                                             const float* __restrict__ wk, int64_t wbase, int hd, const Layout& L,
                                             int l, int c0) {
    constexpr uint32_t MASK = (1u << BITS) - 1u;
    if (l < 0) {
        const float* w = wk + (wbase + (-l - 1)) * hd + c0;
#pragma unroll
        for (int i = 0; i < N; i++) kf[i] = w[i];
        return;
    }
    const int blk = l / L.G, t = l - blk * L.G;
    const uint8_t* rec = poolg + (int64_t)blk * L.bytes;
    const uint16_t* kz = reinterpret_cast<const uint16_t*>(rec + L.off_kz);
    const uint16_t* ks = reinterpret_cast<const uint16_t*>(rec + L.off_ks);
    const uint8_t* kcode = rec + L.off_kc + ((t * BITS) >> 3);
    const int sh = (t * BITS) & 7;
#pragma unroll
    for (int i = 0; i < N; i++) {
        const int c = c0 + i;
        const uint32_t code = (kcode[c * L.rbk] >> sh) & MASK;
        kf[i] = h2f(ks[c]) * (float)code + h2f(kz[c]);
    }
}

// Raw q·k of one query row against slots [0, len) of every KV head g: LPR = HD/8 lanes per slot (8 channels each,
// partial dots reduced with shuffles), the group's q-heads in turn. params int32: high_water[kv_heads] (then, for
// TIDAL, query_pos | keep_pos).
// TIDAL false (Backend.queryKeyScores): out[(g*group + j) * out_stride + s] = q_j·k_s, -inf where s >= hw[g] or the
//   slot is free / not visible (position outside [0, query_pos]).
// TIDAL true (TidalDecode selection, the v1 keys of tp_tidal_select): keys[g * len + s] = order_key of the group
//   score (sum in q-head order, or max), 0 for a non-candidate; cur[g] = the last slot holding keep_pos.
template <int HD, int BITS, bool TIDAL>
__global__ void __launch_bounds__(kThreads) kvq_scores_kernel(
        float* __restrict__ out, int out_stride, uint32_t* __restrict__ keys, int* __restrict__ cur, int len,
        const float* __restrict__ q, const uint8_t* __restrict__ pool, const float* __restrict__ wk,
        const int* __restrict__ pc, const int* __restrict__ lc, int layer, int kv_heads, int group, int C,
        int res_cap, int max_blocks, Layout L, const int* __restrict__ params, int query_pos_arg, int sum_group) {
    constexpr int LPR = HD / 8, SUB = 32 / LPR;
    const int g = blockIdx.y;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane / LPR, lr = lane % LPR;
    const int s = (blockIdx.x * kWarps + warp) * SUB + sub;
    const int query_pos = TIDAL ? params[kv_heads] : query_pos_arg;
    const int64_t hb = (int64_t)layer * kv_heads + g;
    const int p = s < len && s < params[g] ? pc[hb * C + s] : -1;
    const bool vis = p >= 0 && p <= query_pos;
    if (TIDAL && lr == 0 && p >= 0 && p == params[kv_heads + 1]) atomicMax(cur + g, s);
    float kf[8];
    if (vis) {
        kvq_key_part<BITS, 8>(kf, pool + hb * max_blocks * (int64_t)L.bytes, wk, hb * res_cap, HD, L, lc[hb * C + s],
                              lr * 8);
    } else {
#pragma unroll
        for (int i = 0; i < 8; i++) kf[i] = 0.f;
    }
    float v = sum_group ? 0.f : kNegInf;
    for (int j = 0; j < group; j++) {  // uniform over the warp: every lane takes part in the shuffles
        const float* qv = q + ((int64_t)g * group + j) * HD + lr * 8;
        float a = 0.f;
#pragma unroll
        for (int i = 0; i < 8; i++) a = fmaf(qv[i], kf[i], a);
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1) a += __shfl_xor_sync(0xffffffffu, a, o);
        if (TIDAL)
            v = sum_group ? __fadd_rn(v, a) : fmaxf(v, a);
        else if (lr == 0 && s < len)
            out[((int64_t)g * group + j) * out_stride + s] = vis ? a : kNegInf;
    }
    if (TIDAL && lr == 0 && s < len) keys[(int64_t)g * len + s] = vis ? order_key(v) : 0u;
}

// Statistics of an attention call over the packed cache: decode_attention.cu's statistics pass (the same grid and
// outputs, attention_stats_pass) with the keys rebuilt from the blocks (a slot's location read only when it is
// occupied). lse2 comes from tp_kvq_attention_ex of the same call.
template <int HD, int BITS>
__global__ void __launch_bounds__(kThreads) kvq_attention_stats_kernel(
        const float* __restrict__ q, const uint8_t* __restrict__ pool, const float* __restrict__ wk,
        const int* __restrict__ pc, const int* __restrict__ lc, int layer, int H, int Hkv, int C, int res_cap,
        int max_blocks, Layout L, int n, const int* __restrict__ qpos, int from_row, const float* __restrict__ lse2,
        const int* __restrict__ sel, int sel_stride, const int* __restrict__ sel_counts, const int* __restrict__ hw,
        float scale_log2, float* __restrict__ raw, float* __restrict__ prob) {
    const int64_t hb = (int64_t)layer * Hkv + blockIdx.y;
    const uint8_t* poolg = pool + hb * max_blocks * (int64_t)L.bytes;
    auto key8 = [&](int slot, int pos, int lr, float* kf) {
        if (pos >= 0) {
            kvq_key_part<BITS, 8>(kf, poolg, wk, hb * res_cap, HD, L, lc[hb * C + slot], lr * 8);
        } else {
#pragma unroll
            for (int i = 0; i < 8; i++) kf[i] = 0.f;
        }
    };
    attention_stats_pass<HD, kThreads>(q, pc, H, Hkv, C, n, qpos, from_row, lse2, sel, sel_stride, sel_counts, hw,
                                       scale_log2, raw, prob, hb * C, key8);
}

// Quest's page bounds over the packed cache (policy_ops.cu's quest_page_scores_kernel): one block per (page p, KV
// head g), thread t owns channel t (HD <= kThreads); M and m = the elementwise max / min of the dequantized keys of
// the page's visible slots; out[(g*group + j) * out_stride + p] = sum_i max(q_i M_i, q_i m_i), -inf for a page
// without a visible slot.
template <int HD, int BITS>
__global__ void __launch_bounds__(kThreads) kvq_quest_page_scores_kernel(
        float* __restrict__ out, int out_stride, const float* __restrict__ q, const uint8_t* __restrict__ pool,
        const float* __restrict__ wk, const int* __restrict__ pc, const int* __restrict__ lc, int layer, int kv_heads,
        int group, int C, int res_cap, int max_blocks, Layout L, int query_pos, const int* __restrict__ high_water,
        int page_size) {
    static_assert(HD <= kThreads, "one channel per thread");
    const int p = blockIdx.x, g = blockIdx.y;
    const int64_t hwg = high_water[g];
    const int64_t s0 = (int64_t)p * page_size, s1 = s0 + page_size < hwg ? s0 + page_size : hwg;
    const int64_t hb = (int64_t)layer * kv_heads + g;
    const uint8_t* poolg = pool + hb * max_blocks * (int64_t)L.bytes;
    const int c = threadIdx.x;
    float* o = out + (int64_t)g * group * out_stride + p;
    float mx = kNegInf, mn = INFINITY;
    bool any = false;  // identical in every thread: all threads walk the same positions
    for (int64_t s = s0; s < s1; s++) {
        const int ps = pc[hb * C + s];
        if (ps < 0 || ps > query_pos) continue;
        any = true;
        if (c < HD) {
            float v;
            kvq_key_part<BITS, 1>(&v, poolg, wk, hb * res_cap, HD, L, lc[hb * C + s], c);
            mx = fmaxf(mx, v);
            mn = fminf(mn, v);
        }
    }
    if (!any) {  // uniform over the block
        for (int j = threadIdx.x; j < group; j += blockDim.x) o[(int64_t)j * out_stride] = kNegInf;
        return;
    }
    for (int j = 0; j < group; j++) {
        float part = 0.f;
        if (c < HD) {
            const float qi = q[((int64_t)g * group + j) * HD + c];
            part = fmaxf(qi * mx, qi * mn);
        }
        const float total = block_sum(part);
        if (threadIdx.x == 0) o[(int64_t)j * out_stride] = total;
    }
}

// The block-layout arguments of the compaction entry points.
int check_block_args(const char* fn, int layer, int kv_heads, int head_dim, int group, int bits, int max_blocks) {
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0, fn, "kv_heads");
    TP_REQUIRE(head_dim > 0, fn, "head_dim");
    TP_REQUIRE(group > 0 && group <= 4096, fn, "group");
    TP_REQUIRE(valid_bits(bits), fn, "bits");
    TP_REQUIRE(head_dim % (group < head_dim ? group : head_dim) == 0, fn, "group");
    TP_REQUIRE(max_blocks > 0, fn, "max_blocks");
    return TP_OK;
}

// The arguments every packed-cache op shares (tp_kvq_attention's checks).
int check_packed_cache(const char* fn, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t pos_cache,
                       uint64_t loc_cache, int layer, int num_heads, int kv_heads, int head_dim, int capacity,
                       int group, int bits, int res_cap, int max_blocks) {
    TP_REQUIRE(q != 0, fn, "q");
    TP_REQUIRE(pool != 0, fn, "pool");
    TP_REQUIRE(window_k != 0, fn, "window_k");
    TP_REQUIRE(pos_cache != 0, fn, "pos_cache");
    TP_REQUIRE(loc_cache != 0, fn, "loc_cache");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0 && kv_heads <= 65535, fn, "kv_heads");
    TP_REQUIRE(num_heads > 0 && num_heads % kv_heads == 0, fn, "num_heads");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    TP_REQUIRE(group > 0 && group <= 4096, fn, "group");
    TP_REQUIRE(valid_bits(bits), fn, "bits");
    TP_REQUIRE(res_cap > 0 && max_blocks > 0, fn, "res_cap/max_blocks");
    if (head_dim != 64 && head_dim != 128)
        return tp::fail(TP_ERR_UNSUPPORTED_HEAD_DIM, "%s: head_dim %d (supported: 64, 128)", fn, head_dim);
    TP_REQUIRE(head_dim % (group < head_dim ? group : head_dim) == 0, fn, "group");
    return TP_OK;
}

}  // namespace

// Instantiates CALL(HD, BITS) for the head dim and bit width of a packed-cache op.
#define TP_KVQ_DISPATCH(head_dim, bits, CALL)        \
    do {                                             \
        if (head_dim == 64) {                        \
            if (bits == 8) CALL(64, 8);              \
            else if (bits == 4) CALL(64, 4);         \
            else CALL(64, 2);                        \
        } else {                                     \
            if (bits == 8) CALL(128, 8);             \
            else if (bits == 4) CALL(128, 4);        \
            else CALL(128, 2);                       \
        }                                            \
    } while (0)

extern "C" {

int tp_kvq_set_attention_variant(int variant) {
    if (variant < 1 || variant > 4)
        return tp::fail(TP_ERR_BAD_ARGUMENT, "tp_kvq_set_attention_variant: bad argument 'variant' (%d: 1, 2, 3 or 4)",
                        variant);
    if (variant == 4 && mma_prepare_all() != cudaSuccess) (void)cudaGetLastError();  // no device: at launch instead
    g_attention_variant = variant;
    return TP_OK;
}

int tp_kvq_attention_variant(void) { return g_attention_variant; }

int tp_kvq_set_splits(int max_splits, int rows_per_split) {
    if (max_splits < 1 || max_splits > kMaxSplitsCap)
        return tp::fail(TP_ERR_BAD_ARGUMENT, "tp_kvq_set_splits: bad argument 'max_splits' (%d: 1 .. %d)", max_splits,
                        kMaxSplitsCap);
    if (rows_per_split < 32 || rows_per_split > 65536 || rows_per_split % 32 != 0)
        return tp::fail(TP_ERR_BAD_ARGUMENT,
                        "tp_kvq_set_splits: bad argument 'rows_per_split' (%d: a multiple of 32 in 32 .. 65536)",
                        rows_per_split);
    __atomic_store_n(&g_max_splits, max_splits, __ATOMIC_RELAXED);
    __atomic_store_n(&g_rows_per_split, rows_per_split, __ATOMIC_RELAXED);
    return TP_OK;
}

int tp_kvq_max_splits(void) { return __atomic_load_n(&g_max_splits, __ATOMIC_RELAXED); }

int tp_kvq_rows_per_split(void) { return __atomic_load_n(&g_rows_per_split, __ATOMIC_RELAXED); }

uint64_t tp_kvq_block_bytes(int head_dim, int group, int bits) {
    if (head_dim <= 0 || group <= 0 || group > 4096 || !valid_bits(bits)) return 0;
    return (uint64_t)make_layout(head_dim, group, bits).bytes;
}

int tp_kvq_encode(uint64_t pool, uint64_t window_k, uint64_t window_v, uint64_t k, uint64_t v, int kv_stride,
                  uint64_t plan, int num_blocks, int layer, int kv_heads, int head_dim, int group, int bits,
                  int res_cap, int max_blocks, uint64_t stream) {
    const char* fn = "tp_kvq_encode";
    TP_REQUIRE(pool != 0, fn, "pool");
    TP_REQUIRE(window_k != 0 && window_v != 0, fn, "window");
    TP_REQUIRE(k != 0 && v != 0, fn, "k/v");
    TP_REQUIRE(plan != 0, fn, "plan");
    TP_REQUIRE(num_blocks >= 0, fn, "num_blocks");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0, fn, "kv_heads");
    TP_REQUIRE(head_dim > 0 && kv_stride >= kv_heads * head_dim, fn, "kv_stride");
    TP_REQUIRE(group > 0 && group <= 4096, fn, "group");
    TP_REQUIRE(valid_bits(bits), fn, "bits");
    TP_REQUIRE(head_dim % (group < head_dim ? group : head_dim) == 0, fn, "group");
    TP_REQUIRE(res_cap > 0 && max_blocks > 0, fn, "res_cap/max_blocks");
    if (num_blocks == 0) return TP_OK;
    Layout L = make_layout(head_dim, group, bits);
    kvq_encode_kernel<<<num_blocks, kThreads, 0, TP_STREAM(stream)>>>(
        TP_PTR(uint8_t, pool), TP_PTR(const float, window_k), TP_PTR(const float, window_v), TP_PTR(const float, k),
        TP_PTR(const float, v), kv_stride, TP_PTR(const int, plan), num_blocks, layer, kv_heads, res_cap, max_blocks, L,
        0);
    TP_LAUNCHED("kvq_encode_kernel");
    return TP_OK;
}

int tp_kvq_decode_lanes(uint64_t k, uint64_t v, uint64_t pool, uint64_t plan, int m, int layer, int kv_heads,
                        int head_dim, int group, int bits, int max_blocks, uint64_t stream) {
    const char* fn = "tp_kvq_decode_lanes";
    TP_REQUIRE(k != 0 && v != 0, fn, "k/v");
    TP_REQUIRE(pool != 0, fn, "pool");
    TP_REQUIRE(plan != 0, fn, "plan");
    TP_REQUIRE(m >= 0, fn, "m");
    int rc = check_block_args(fn, layer, kv_heads, head_dim, group, bits, max_blocks);
    if (rc != TP_OK) return rc;
    if (m == 0) return TP_OK;
    Layout L = make_layout(head_dim, group, bits);
    kvq_decode_lanes_kernel<<<m, kThreads, 0, TP_STREAM(stream)>>>(TP_PTR(float, k), TP_PTR(float, v),
                                                                    TP_PTR(const uint8_t, pool), TP_PTR(const int, plan),
                                                                    m, layer, kv_heads, max_blocks, L);
    TP_LAUNCHED("kvq_decode_lanes_kernel");
    return TP_OK;
}

int tp_kvq_encode_rows(uint64_t pool, uint64_t k, uint64_t v, uint64_t plan, int num_blocks, int layer, int kv_heads,
                       int head_dim, int group, int bits, int max_blocks, uint64_t stream) {
    const char* fn = "tp_kvq_encode_rows";
    TP_REQUIRE(pool != 0, fn, "pool");
    TP_REQUIRE(k != 0 && v != 0, fn, "k/v");
    TP_REQUIRE(plan != 0, fn, "plan");
    TP_REQUIRE(num_blocks >= 0, fn, "num_blocks");
    int rc = check_block_args(fn, layer, kv_heads, head_dim, group, bits, max_blocks);
    if (rc != TP_OK) return rc;
    if (num_blocks == 0) return TP_OK;
    Layout L = make_layout(head_dim, group, bits);
    // the window is not read in this mode (every source is a row); its pointers are only passed along
    kvq_encode_kernel<<<num_blocks, kThreads, 0, TP_STREAM(stream)>>>(
        TP_PTR(uint8_t, pool), TP_PTR(const float, k), TP_PTR(const float, v), TP_PTR(const float, k),
        TP_PTR(const float, v), head_dim, TP_PTR(const int, plan), num_blocks, layer, kv_heads, 1, max_blocks, L, 1);
    TP_LAUNCHED("kvq_encode_kernel (compaction)");
    return TP_OK;
}

int tp_kvq_window_write(uint64_t window_k, uint64_t window_v, uint64_t k, uint64_t v, int kv_stride, uint64_t plan,
                        int count, int layer, int kv_heads, int head_dim, int res_cap, uint64_t stream) {
    const char* fn = "tp_kvq_window_write";
    TP_REQUIRE(window_k != 0 && window_v != 0, fn, "window");
    TP_REQUIRE(k != 0 && v != 0, fn, "k/v");
    TP_REQUIRE(plan != 0, fn, "plan");
    TP_REQUIRE(count >= 0, fn, "count");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0, fn, "kv_heads");
    TP_REQUIRE(head_dim > 0 && kv_stride >= kv_heads * head_dim, fn, "kv_stride");
    TP_REQUIRE(res_cap > 0, fn, "res_cap");
    if (count == 0) return TP_OK;
    kvq_window_write_kernel<<<count, kThreads, 0, TP_STREAM(stream)>>>(
        TP_PTR(float, window_k), TP_PTR(float, window_v), TP_PTR(const float, k), TP_PTR(const float, v), kv_stride,
        TP_PTR(const int, plan), count, layer, kv_heads, head_dim, res_cap);
    TP_LAUNCHED("kvq_window_write_kernel");
    return TP_OK;
}

uint64_t tp_kvq_attention_workspace_bytes(int n, int num_heads, int head_dim, int max_len) {
    int splits = kvq_splits(n, max_len);
    if (splits == 1 || n <= 0 || num_heads <= 0 || head_dim <= 0) return 0;
    return (uint64_t)n * num_heads * splits * (head_dim + 2) * sizeof(float);
}

int tp_kvq_attention(uint64_t out, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t window_v, uint64_t pos_cache,
                     uint64_t loc_cache, int layer, int num_heads, int kv_heads, int head_dim, int capacity, int group,
                     int bits, int res_cap, int max_blocks, int n, uint64_t query_pos, uint64_t sel_slots,
                     int sel_stride, uint64_t sel_counts, uint64_t high_water, int max_len, float scale,
                     uint64_t workspace, uint64_t workspace_bytes, uint64_t stream) {
    return tp_kvq_attention_ex(out, q, pool, window_k, window_v, pos_cache, loc_cache, layer, num_heads, kv_heads,
                               head_dim, capacity, group, bits, res_cap, max_blocks, n, query_pos, sel_slots,
                               sel_stride, sel_counts, high_water, max_len, scale, workspace, workspace_bytes, 0, stream);
}

int tp_kvq_attention_ex(uint64_t out, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t window_v,
                        uint64_t pos_cache, uint64_t loc_cache, int layer, int num_heads, int kv_heads, int head_dim,
                        int capacity, int group, int bits, int res_cap, int max_blocks, int n, uint64_t query_pos,
                        uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water, int max_len,
                        float scale, uint64_t workspace, uint64_t workspace_bytes, uint64_t lse2, uint64_t stream) {
    return tp_kvq_attention_ex2(out, q, pool, window_k, window_v, pos_cache, loc_cache, layer, num_heads, kv_heads,
                                head_dim, capacity, group, bits, res_cap, max_blocks, n, query_pos, sel_slots,
                                sel_stride, sel_counts, high_water, max_len, scale, workspace, workspace_bytes, lse2, 0,
                                stream);
}

int tp_kvq_attention_ex2(uint64_t out, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t window_v,
                         uint64_t pos_cache, uint64_t loc_cache, int layer, int num_heads, int kv_heads, int head_dim,
                         int capacity, int group, int bits, int res_cap, int max_blocks, int n, uint64_t query_pos,
                         uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water, int max_len,
                         float scale, uint64_t workspace, uint64_t workspace_bytes, uint64_t lse2, uint64_t counters,
                         uint64_t stream) {
    const char* fn = "tp_kvq_attention";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(q != 0, fn, "q");
    TP_REQUIRE(pool != 0, fn, "pool");
    TP_REQUIRE(window_k != 0 && window_v != 0, fn, "window");
    TP_REQUIRE(pos_cache != 0, fn, "pos_cache");
    TP_REQUIRE(loc_cache != 0, fn, "loc_cache");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0 && kv_heads <= 8192, fn, "kv_heads");
    TP_REQUIRE(num_heads > 0 && num_heads % kv_heads == 0, fn, "num_heads");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    TP_REQUIRE(group > 0 && group <= 4096, fn, "group");
    TP_REQUIRE(valid_bits(bits), fn, "bits");
    TP_REQUIRE(res_cap > 0 && max_blocks > 0, fn, "res_cap/max_blocks");
    TP_REQUIRE(n >= 0 && n <= 65535, fn, "n");
    TP_REQUIRE(query_pos != 0, fn, "query_pos");
    TP_REQUIRE(high_water != 0, fn, "high_water");
    TP_REQUIRE(sel_slots == 0 || (sel_counts != 0 && sel_stride > 0), fn, "sel_slots");
    if (head_dim != 64 && head_dim != 128)
        return tp::fail(TP_ERR_UNSUPPORTED_HEAD_DIM, "%s: head_dim %d (supported: 64, 128)", fn, head_dim);
    TP_REQUIRE(head_dim % (group < head_dim ? group : head_dim) == 0, fn, "group");
    if (n == 0) return TP_OK;
    int splits = kvq_splits(n, max_len);
    if (splits > 1) {
        TP_REQUIRE(workspace != 0 && workspace_bytes >= tp_kvq_attention_workspace_bytes(n, num_heads, head_dim, max_len),
                   fn, "workspace");
    }
    Layout L = make_layout(head_dim, group, bits);
    int group_h = num_heads / kv_heads, chunks = (group_h + kMaxGt - 1) / kMaxGt;
    // variant 4 where it takes the call and its kernel is ready on this device, else variant 3
    int bps4 = 0;
    if (g_attention_variant == 4 && mma_eligible(L, n, TP_PTR(const int, sel_slots))) {
#define TP_KVQ_BPS(HD, B) bps4 = mma_blocks<HD, B, false>(L)
        TP_KVQ_DISPATCH(head_dim, bits, TP_KVQ_BPS);
#undef TP_KVQ_BPS
    }
    const bool v4 = bps4 > 0;
    if (v4 && splits > 1) splits = mma_splits(bps4, kv_heads * chunks, splits, max_len);
    dim3 grid(splits, kv_heads * chunks, n);
    cudaStream_t st = TP_STREAM(stream);
    float scale_log2 = scale * kLog2e;
    float* o = TP_PTR(float, out);
    float* ws = splits > 1 ? TP_PTR(float, workspace) : nullptr;
    const float* qq = TP_PTR(const float, q);
    const uint8_t* pl = TP_PTR(const uint8_t, pool);
    const float* wk = TP_PTR(const float, window_k);
    const float* wv = TP_PTR(const float, window_v);
    const int* pc = TP_PTR(const int, pos_cache);
    const int* lc = TP_PTR(const int, loc_cache);
    const int* qp = TP_PTR(const int, query_pos);
    const int* sl = TP_PTR(const int, sel_slots);
    const int* sc = TP_PTR(const int, sel_counts);
    const int* hw = TP_PTR(const int, high_water);
    float* ls = TP_PTR(float, lse2);
    // the merge inside the split kernel (variant 4 with counters: one int per grid row, zero between calls)
    int* ctr = TP_PTR(int, counters);
    const bool fused = ctr != nullptr && splits > 1 && v4;
#define TP_KVQ_LAUNCH(HD, B)                                                                                        \
    launch_attention<HD, B>(grid, st, o, ws, qq, pl, wk, wv, pc, lc, layer, num_heads, kv_heads, capacity, res_cap, \
                            max_blocks, L, qp, sl, sel_stride, sc, hw, splits, scale_log2, ls, v4, fused ? ctr : nullptr)
    if (head_dim == 64) {
        if (bits == 8) TP_KVQ_LAUNCH(64, 8);
        else if (bits == 4) TP_KVQ_LAUNCH(64, 4);
        else TP_KVQ_LAUNCH(64, 2);
    } else {
        if (bits == 8) TP_KVQ_LAUNCH(128, 8);
        else if (bits == 4) TP_KVQ_LAUNCH(128, 4);
        else TP_KVQ_LAUNCH(128, 2);
    }
#undef TP_KVQ_LAUNCH
    TP_LAUNCHED("kvq_attention_kernel");
    if (splits > 1 && !fused) {
        kvq_merge_kernel<<<n * num_heads, head_dim, 0, st>>>(o, ws, n * num_heads, splits, head_dim, ls);
        TP_LAUNCHED("kvq_merge_kernel");
    }
    return TP_OK;
}

int tp_kvq_query_key_scores(uint64_t out, int out_stride, uint64_t q, uint64_t pool, uint64_t window_k,
                            uint64_t pos_cache, uint64_t loc_cache, int layer, int num_heads, int kv_heads,
                            int head_dim, int capacity, int group, int bits, int res_cap, int max_blocks,
                            int query_pos, uint64_t high_water, int max_high_water, uint64_t stream) {
    const char* fn = "tp_kvq_query_key_scores";
    int rc = check_packed_cache(fn, q, pool, window_k, pos_cache, loc_cache, layer, num_heads, kv_heads, head_dim,
                                capacity, group, bits, res_cap, max_blocks);
    if (rc != TP_OK) return rc;
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(high_water != 0, fn, "high_water");
    TP_REQUIRE(max_high_water >= 0 && max_high_water <= capacity, fn, "max_high_water");
    TP_REQUIRE(out_stride >= max_high_water, fn, "out_stride");
    if (max_high_water == 0) return TP_OK;
    Layout L = make_layout(head_dim, group, bits);
    const int per_block = kWarps * (32 / (head_dim / 8));
    dim3 grid((unsigned)ceil_div(max_high_water, per_block), kv_heads);
#define TP_KVQ_SCORES(HD, B)                                                                                      \
    kvq_scores_kernel<HD, B, false><<<grid, kThreads, 0, TP_STREAM(stream)>>>(                                   \
        TP_PTR(float, out), out_stride, nullptr, nullptr, max_high_water, TP_PTR(const float, q),                 \
        TP_PTR(const uint8_t, pool), TP_PTR(const float, window_k), TP_PTR(const int, pos_cache),                 \
        TP_PTR(const int, loc_cache), layer, kv_heads, num_heads / kv_heads, capacity, res_cap, max_blocks, L,    \
        TP_PTR(const int, high_water), query_pos, 0)
    TP_KVQ_DISPATCH(head_dim, bits, TP_KVQ_SCORES);
#undef TP_KVQ_SCORES
    TP_LAUNCHED("kvq_scores_kernel");
    return TP_OK;
}

int tp_kvq_tidal_select(uint64_t out_slots, uint64_t out_counts, int out_stride, uint64_t cur_slot, uint64_t keys_ws,
                        int len, uint64_t q, uint64_t pool, uint64_t window_k, uint64_t pos_cache, uint64_t loc_cache,
                        int layer, int num_heads, int kv_heads, int head_dim, int capacity, int group, int bits,
                        int res_cap, int max_blocks, uint64_t params, int k, int sum_group, uint64_t stream) {
    const char* fn = "tp_kvq_tidal_select";
    int rc = check_packed_cache(fn, q, pool, window_k, pos_cache, loc_cache, layer, num_heads, kv_heads, head_dim,
                                capacity, group, bits, res_cap, max_blocks);
    if (rc != TP_OK) return rc;
    int crc = tp::check_selection_outputs(fn, out_slots, out_counts, cur_slot, keys_ws, params);
    if (crc != TP_OK) return crc;
    TP_REQUIRE(len >= 1 && len <= capacity, fn, "len");
    TP_REQUIRE(k >= 0, fn, "k");
    TP_REQUIRE(out_stride >= 1 && out_stride >= k, fn, "out_stride");
    Layout L = make_layout(head_dim, group, bits);
    uint32_t* keys = tp::tidal_select_keys(keys_ws, kv_heads, len);
    cudaStream_t st = TP_STREAM(stream);
    int bps4 = 0;
    if (g_attention_variant == 4 && num_heads / kv_heads <= kKvqMmaHeads && mma_eligible(L, 1, nullptr)) {
#define TP_KVQ_BPS(HD, B) bps4 = mma_blocks<HD, B, true>(L)
        TP_KVQ_DISPATCH(head_dim, bits, TP_KVQ_BPS);
#undef TP_KVQ_BPS
    }
    if (bps4 > 0) {
        // variant 4's scores mode: the keys on tensor cores (aligned runs of block lanes), one wave of blocks
        KvqMmaKeys sk{keys, len, TP_PTR(int, cur_slot), TP_PTR(const int, params) + kv_heads + 1, sum_group};
        // one wave of blocks, at most one split per 256 keys
        const int cap = len / 256 > 1 ? (len / 256 < 1024 ? len / 256 : 1024) : 1;
        const int splits = mma_splits(bps4, kv_heads, cap, len);
        const int* pr = TP_PTR(const int, params);
        const float* qq = TP_PTR(const float, q);
        const uint8_t* pl = TP_PTR(const uint8_t, pool);
        const float* wk = TP_PTR(const float, window_k);
        const int* pc = TP_PTR(const int, pos_cache);
        const int* lc = TP_PTR(const int, loc_cache);
#define TP_KVQ_SCORES4(HD, B) launch_scores_mma<HD, B>(sk, splits, st, qq, pl, wk, pc, lc, layer, num_heads, kv_heads, \
                                                      capacity, res_cap, max_blocks, L, pr)
        TP_KVQ_DISPATCH(head_dim, bits, TP_KVQ_SCORES4);
#undef TP_KVQ_SCORES4
        TP_LAUNCHED("kvq_scores_mma_kernel (selection)");
        return tp::launch_tidal_select_from_keys(keys_ws, len, TP_PTR(int, cur_slot), TP_PTR(const int, params), k,
                                                 TP_PTR(int, out_slots), out_stride, TP_PTR(int, out_counts), kv_heads, st);
    }
    const int per_block = kWarps * (32 / (head_dim / 8));
    dim3 grid((unsigned)ceil_div(len, per_block), kv_heads);
#define TP_KVQ_TIDAL(HD, B)                                                                                       \
    kvq_scores_kernel<HD, B, true><<<grid, kThreads, 0, st>>>(                                                   \
        nullptr, 0, keys, TP_PTR(int, cur_slot), len, TP_PTR(const float, q), TP_PTR(const uint8_t, pool),        \
        TP_PTR(const float, window_k), TP_PTR(const int, pos_cache), TP_PTR(const int, loc_cache), layer,         \
        kv_heads, num_heads / kv_heads, capacity, res_cap, max_blocks, L, TP_PTR(const int, params), 0, sum_group)
    TP_KVQ_DISPATCH(head_dim, bits, TP_KVQ_TIDAL);
#undef TP_KVQ_TIDAL
    TP_LAUNCHED("kvq_scores_kernel (selection)");
    return tp::launch_tidal_select_from_keys(keys_ws, len, TP_PTR(int, cur_slot), TP_PTR(const int, params), k,
                                             TP_PTR(int, out_slots), out_stride, TP_PTR(int, out_counts), kv_heads, st);
}

int tp_kvq_attention_stats(uint64_t q, uint64_t pool, uint64_t window_k, uint64_t pos_cache, uint64_t loc_cache,
                           int layer, int num_heads, int kv_heads, int head_dim, int capacity, int group, int bits,
                           int res_cap, int max_blocks, int n, uint64_t query_pos, int from_row, uint64_t lse2,
                           uint64_t sel_slots, int sel_stride, uint64_t sel_counts, uint64_t high_water, float scale,
                           uint64_t raw_scores, uint64_t prob_sums, uint64_t stream) {
    const char* fn = "tp_kvq_attention_stats";
    int rc = check_packed_cache(fn, q, pool, window_k, pos_cache, loc_cache, layer, num_heads, kv_heads, head_dim,
                                capacity, group, bits, res_cap, max_blocks);
    if (rc != TP_OK) return rc;
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(query_pos != 0, fn, "query_pos");
    TP_REQUIRE(high_water != 0, fn, "high_water");
    TP_REQUIRE(sel_slots == 0 || (sel_counts != 0 && sel_stride > 0), fn, "sel_slots");
    TP_REQUIRE(prob_sums == 0 || lse2 != 0, fn, "lse2");
    if (n == 0 || (raw_scores == 0 && prob_sums == 0)) return TP_OK;
    if (prob_sums != 0 && raw_scores == 0 && from_row >= n) return TP_OK;
    Layout L = make_layout(head_dim, group, bits);
    dim3 grid(sm_count() * 2 / kv_heads + 1, kv_heads);
    const float scale_log2 = scale * kLog2e;
#define TP_KVQ_STATS(HD, B)                                                                                       \
    kvq_attention_stats_kernel<HD, B><<<grid, kThreads, 0, TP_STREAM(stream)>>>(                                 \
        TP_PTR(const float, q), TP_PTR(const uint8_t, pool), TP_PTR(const float, window_k),                       \
        TP_PTR(const int, pos_cache), TP_PTR(const int, loc_cache), layer, num_heads, kv_heads, capacity, res_cap, \
        max_blocks, L, n, TP_PTR(const int, query_pos), from_row, TP_PTR(const float, lse2),                      \
        TP_PTR(const int, sel_slots), sel_stride, TP_PTR(const int, sel_counts), TP_PTR(const int, high_water),   \
        scale_log2, TP_PTR(float, raw_scores), TP_PTR(float, prob_sums))
    TP_KVQ_DISPATCH(head_dim, bits, TP_KVQ_STATS);
#undef TP_KVQ_STATS
    TP_LAUNCHED("kvq_attention_stats_kernel");
    return TP_OK;
}

int tp_kvq_quest_page_scores(uint64_t out, int out_stride, uint64_t q, uint64_t pool, uint64_t window_k,
                             uint64_t pos_cache, uint64_t loc_cache, int layer, int num_heads, int kv_heads,
                             int head_dim, int capacity, int group, int bits, int res_cap, int max_blocks,
                             int query_pos, uint64_t high_water, int page_size, int max_pages, uint64_t stream) {
    const char* fn = "tp_kvq_quest_page_scores";
    int rc = check_packed_cache(fn, q, pool, window_k, pos_cache, loc_cache, layer, num_heads, kv_heads, head_dim,
                                capacity, group, bits, res_cap, max_blocks);
    if (rc != TP_OK) return rc;
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(high_water != 0, fn, "high_water");
    TP_REQUIRE(page_size >= 1, fn, "page_size");
    TP_REQUIRE(max_pages >= 0 && max_pages <= ceil_div(capacity, page_size), fn, "max_pages");
    TP_REQUIRE(out_stride >= max_pages, fn, "out_stride");
    if (max_pages == 0) return TP_OK;
    Layout L = make_layout(head_dim, group, bits);
    dim3 grid(max_pages, kv_heads);
#define TP_KVQ_QUEST(HD, B)                                                                                       \
    kvq_quest_page_scores_kernel<HD, B><<<grid, kThreads, 0, TP_STREAM(stream)>>>(                               \
        TP_PTR(float, out), out_stride, TP_PTR(const float, q), TP_PTR(const uint8_t, pool),                      \
        TP_PTR(const float, window_k), TP_PTR(const int, pos_cache), TP_PTR(const int, loc_cache), layer,         \
        kv_heads, num_heads / kv_heads, capacity, res_cap, max_blocks, L, query_pos,                              \
        TP_PTR(const int, high_water), page_size)
    TP_KVQ_DISPATCH(head_dim, bits, TP_KVQ_QUEST);
#undef TP_KVQ_QUEST
    TP_LAUNCHED("kvq_quest_page_scores_kernel");
    return TP_OK;
}

}  // extern "C"
