// Decode GEMV: out[r, o] = sum_i w[o, i] * x[r, i] (+ bias[o]) for r < n <= 4, bf16 weights [O, I] row-major
// read straight from device memory (no conversion of x, no cuBLAS). Memory-bound: every weight byte is read
// once, with 16-byte loads (8 bf16 per lane) that bypass L1 and several independent loads in flight per lane;
// x (f32, a few KiB) is read through L1 with float4 loads and stays resident there.
//
// Layout: a block of 256 threads = 8 warps covers 8 / WPR rows; each row is owned by WPR warps (1, 2, 4 or 8),
// each of which walks its share of the row's 16-byte chunks (the warp's 32 lanes read 512 consecutive bytes
// per step, so every load is coalesced). Partial sums: warp shuffle, then (WPR > 1) shared memory.
// Requires I % 8 == 0 and 16-byte aligned w and x (then every row and every x row is 16-byte aligned).
// PDL (tp_set_pdl): each lane issues its first round of weight loads before griddepcontrol.wait, so the
// weight stream starts while the previous kernel (e.g. add + RMSNorm writing x) finishes; x, bias and out are
// touched only after the wait. Weights must therefore not be written by the kernels just before.
// Optionally (tp_gemv_set_prefetch) each block also asks L2 for all of its rows before the wait, for launches that
// read at most a given number of bytes of weights: a block resident while the previous kernel runs then streams
// its whole share of the matrix during that kernel's latency-bound tail instead of after it.
#include "common.cuh"

namespace {

using namespace tp;

constexpr int kGemvThreads = 256;
constexpr int kGemvWarps = kGemvThreads / 32;
constexpr int kGemvMaxRows = 4;

// Largest weight bytes of a launch whose blocks prefetch their rows into L2 before the PDL wait
// (tp_gemv_set_prefetch; 0 = never, the default).
int64_t g_prefetch_bytes = 0;

bool want_prefetch(int64_t weight_bytes) {
    const int64_t lim = __atomic_load_n(&g_prefetch_bytes, __ATOMIC_RELAXED);
    return lim > 0 && weight_bytes <= lim;
}

// 16-byte streaming load: read-only path, no L1 allocation (weights are touched exactly once).
__device__ __forceinline__ uint4 ld_stream16(const uint16_t* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// The same load as a volatile asm: the compiler keeps it where it is written, i.e. before the PDL wait (a plain
// asm without memory operands could be sunk below the wait's memory clobber).
__device__ __forceinline__ uint4 ld_stream16_early(const uint16_t* p) {
    uint4 r;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

// One round of U 16-byte weight loads of a lane (chunks c0 + u*S), all issued unconditionally so they are in
// flight together: a lane past the row end re-reads the row's last chunk (the consumer drops it). Early: the
// round issued before the PDL wait.
template <int U, int S, bool Early = false>
__device__ __forceinline__ void gemv_load_round(uint4 (&wv)[U], const uint16_t* __restrict__ wr, int c0, int nch) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        const uint16_t* p = wr + (int64_t)min(c0 + u * S, nch - 1) * 8;
        wv[u] = Early ? ld_stream16_early(p) : ld_stream16(p);
    }
}


// L2 prefetch of rows [r0, r0 + nrows) of a row-major bf16 [O, I] matrix (clipped to O), before the PDL wait.
__device__ __forceinline__ void gemv_prefetch_rows(const uint16_t* w, int r0, int nrows, int O, int I) {
    const int r1 = min(r0 + nrows, O);
    if (r1 > r0) prefetch_range_l2(w + (int64_t)r0 * I, (uint32_t)((int64_t)(r1 - r0) * I * 2));
}

// RMSNorm fused into a GEMV's x operand (tp_gemv_bf16_multi_norm, tp_gemv_bf16_swiglu_norm): inv[r] =
// 1 / sqrt(mean(x[r]^2) + eps) of each of the NX rows, computed by the whole block after the PDL wait (every
// thread gets every inv[r]); then x[r, i] is used as x * inv[r] * nw[i], the formula of rmsnorm_kernel (only the
// sum of squares is added in another order). nw == nullptr: no norm (inv untouched).
template <int NX>
__device__ __forceinline__ void block_rms_inv(const float* __restrict__ x, int I, const float* nw, float eps,
                                              float (&inv)[NX]) {
    __shared__ float sred[kGemvWarps][NX];
    __shared__ float sinv[NX];
    if (nw == nullptr) return;  // block-uniform
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int r = 0; r < NX; r++) {
        const float4* xr = reinterpret_cast<const float4*>(x + (int64_t)r * I);
        float ss = 0.f;
        for (int i = threadIdx.x; i < (I >> 2); i += kGemvThreads) {
            float4 v = xr[i];
            ss = fmaf(v.x, v.x, ss); ss = fmaf(v.y, v.y, ss);
            ss = fmaf(v.z, v.z, ss); ss = fmaf(v.w, v.w, ss);
        }
        ss = warp_sum(ss);
        if (lane == 0) sred[warp][r] = ss;
    }
    __syncthreads();
    if (threadIdx.x < NX) {
        float t = 0.f;
#pragma unroll
        for (int w = 0; w < kGemvWarps; w++) t += sred[w][threadIdx.x];
        sinv[threadIdx.x] = 1.f / sqrtf(t / (float)I + eps);
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < NX; r++) inv[r] = sinv[r];
}

// Elements 8c .. 8c+7 of x row r (float4 a, b), normalized by inv[r] * nw when nw != nullptr.
template <int NX>
__device__ __forceinline__ void load_x8(const float* __restrict__ x, int I, int r, int c, const float* nw,
                                        const float (&inv)[NX], float4& a, float4& b) {
    const float4* xp = reinterpret_cast<const float4*>(x + (int64_t)r * I + (int64_t)c * 8);
    a = __ldg(xp);
    b = __ldg(xp + 1);
    if (nw != nullptr) {
        const float4* wp = reinterpret_cast<const float4*>(nw + (int64_t)c * 8);
        const float4 wa = __ldg(wp), wb = __ldg(wp + 1);
        const float v = inv[r];
        a.x = a.x * v * wa.x; a.y = a.y * v * wa.y; a.z = a.z * v * wa.z; a.w = a.w * v * wa.w;
        b.x = b.x * v * wb.x; b.y = b.y * v * wb.y; b.z = b.z * v * wb.z; b.w = b.w * v * wb.w;
    }
}

template <int NX, int WPR>
__global__ void __launch_bounds__(kGemvThreads)
gemv_bf16_kernel(float* __restrict__ out, const float* __restrict__ x, const uint16_t* __restrict__ w,
                 const float* __restrict__ bias, int O, int I, int accumulate, int prefetch) {
    constexpr int RPB = kGemvWarps / WPR;   // rows per block
    constexpr int U = NX == 1 ? 8 : 4;      // 16-byte weight loads in flight per lane
    __shared__ float red[kGemvWarps][NX];

    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * RPB + warp / WPR;
    const int part = warp % WPR;
    const int nch = I >> 3;                 // 16-byte chunks per row
    constexpr int S = 32 * WPR;             // chunk stride between a lane's consecutive loads

    float acc[NX];
#pragma unroll
    for (int r = 0; r < NX; r++) acc[r] = 0.f;

    // The first round of weight loads goes out before the PDL wait (weights are read-only), so it overlaps the
    // previous kernel's tail; x is read only after the wait.
    const uint16_t* wr = w + (int64_t)min(row, O - 1) * I;
    int c0 = part * 32 + lane;
    const bool active = row < O && c0 < nch;  // row < O is warp-uniform
    uint4 wv[U];
    if (active) gemv_load_round<U, S, true>(wv, wr, c0, nch);
    if (prefetch) gemv_prefetch_rows(w, blockIdx.x * RPB, RPB, O, I);
    pdl_wait();
    pdl_launch_dependents();
    if (active) {
        while (true) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                int c = c0 + u * S;
                if (c < nch) {
                    float wf[8];
                    bf16x8_to_f32(wv[u], wf);
#pragma unroll
                    for (int r = 0; r < NX; r++) {
                        const float4* xp = reinterpret_cast<const float4*>(x + (int64_t)r * I + (int64_t)c * 8);
                        float4 a = __ldg(xp), b = __ldg(xp + 1);
                        float s = acc[r];
                        s = fmaf(wf[0], a.x, s); s = fmaf(wf[1], a.y, s);
                        s = fmaf(wf[2], a.z, s); s = fmaf(wf[3], a.w, s);
                        s = fmaf(wf[4], b.x, s); s = fmaf(wf[5], b.y, s);
                        s = fmaf(wf[6], b.z, s); s = fmaf(wf[7], b.w, s);
                        acc[r] = s;
                    }
                }
            }
            c0 += S * U;
            if (c0 >= nch) break;
            gemv_load_round<U, S>(wv, wr, c0, nch);
        }
    }
#pragma unroll
    for (int r = 0; r < NX; r++) acc[r] = warp_sum(acc[r]);

    if (WPR == 1) {
        if (row < O && lane == 0) {
            float b = bias ? bias[row] : 0.f;
#pragma unroll
            for (int r = 0; r < NX; r++) {
                float v = acc[r] + b;
                float* o = out + (int64_t)r * O + row;
                *o = accumulate ? *o + v : v;  // accumulate: the residual add x += y of the unfused path
            }
        }
        return;
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < NX; r++) red[warp][r] = acc[r];
    }
    __syncthreads();
    if (row < O && part == 0 && lane < NX) {
        float s = 0.f;
#pragma unroll
        for (int p = 0; p < WPR; p++) s += red[warp + p][lane];
        if (bias) s += bias[row];
        float* o = out + (int64_t)lane * O + row;
        *o = accumulate ? *o + s : s;
    }
}

template <int NX>
int launch_gemv_nx(int wpr, float* out, const float* x, const uint16_t* w, const float* bias, int O, int I,
                   cudaStream_t s, int accumulate = 0) {
    int rpb = kGemvWarps / wpr;
    dim3 grid((unsigned)ceil_div(O, rpb));
    auto k = wpr == 1 ? gemv_bf16_kernel<NX, 1>
           : wpr == 2 ? gemv_bf16_kernel<NX, 2>
           : wpr == 4 ? gemv_bf16_kernel<NX, 4> : gemv_bf16_kernel<NX, 8>;
    const int pf = want_prefetch((int64_t)O * I * 2) ? 1 : 0;
    TP_LAUNCH("gemv_bf16_kernel", k, grid, dim3(kGemvThreads), 0, s, out, x, w, bias, O, I, accumulate, pf);
    return TP_OK;
}

// Warps per row: the fewest (longest runs of loads per warp) that still give about two blocks per SM, but never
// so many that a warp has less than one 16-byte load per lane.
// Forced warps per row for every decode GEMV (tp_gemv_set_wpr; 0 = pick_wpr's choice), for tuning sweeps.
int g_wpr_override = 0;

int pick_wpr(int O, int I) {
    int nch = I / 8;
    if (g_wpr_override > 0) return g_wpr_override;
    int want_blocks = 2 * sm_count();
    int wpr = 1;
    while (wpr < kGemvWarps && ceil_div(O, kGemvWarps / wpr) < want_blocks && nch >= 32 * wpr * 2) wpr <<= 1;
    return wpr;
}


// ---- fused decode GEMVs (tp_gemv_bf16_multi, tp_gemv_bf16_swiglu) ---------------------------------------------

// Dot products of one weight row with NX rows of x over this warp's share of the row (chunks part*32+lane,
// stride 32*WPR): U 16-byte weight loads in flight per lane, as in gemv_bf16_kernel. The lane-local sums are
// added to acc (the caller reduces across the warp). Contains the kernel's PDL wait: every thread of the block
// must call it (row_ok false: no loads, just the wait); wr must point into the weights even then.
template <int NX, int WPR, int U>
__device__ __forceinline__ void gemv_row_partial(const uint16_t* __restrict__ wr, const float* __restrict__ x,
                                                 int I, int part, int lane, bool row_ok, float (&acc)[NX],
                                                 const float* nw, float eps, const uint16_t* pf_w, int pf_r0,
                                                 int pf_rows, int pf_O) {
    constexpr int S = 32 * WPR;
    const int nch = I >> 3;
    int c0 = part * 32 + lane;
    const bool active = row_ok && c0 < nch;
    uint4 wv[U];
    // first round of weight loads before the PDL wait (weights are read-only), x only after it
    if (active) gemv_load_round<U, S, true>(wv, wr, c0, nch);
    if (pf_w != nullptr) gemv_prefetch_rows(pf_w, pf_r0, pf_rows, pf_O, I);
    pdl_wait();
    pdl_launch_dependents();
    float inv[NX];
    block_rms_inv<NX>(x, I, nw, eps, inv);  // every thread (block-wide barriers)
    if (!active) return;
    while (true) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int c = c0 + u * S;
            if (c < nch) {
                float wf[8];
                bf16x8_to_f32(wv[u], wf);
#pragma unroll
                for (int r = 0; r < NX; r++) {
                    float4 a, b;
                    load_x8<NX>(x, I, r, c, nw, inv, a, b);
                    float s = acc[r];
                    s = fmaf(wf[0], a.x, s); s = fmaf(wf[1], a.y, s);
                    s = fmaf(wf[2], a.z, s); s = fmaf(wf[3], a.w, s);
                    s = fmaf(wf[4], b.x, s); s = fmaf(wf[5], b.y, s);
                    s = fmaf(wf[6], b.z, s); s = fmaf(wf[7], b.w, s);
                    acc[r] = s;
                }
            }
        }
        c0 += S * U;
        if (c0 >= nch) break;
        gemv_load_round<U, S>(wv, wr, c0, nch);
    }
}

// Sums the per-lane partials of the WPR warps of each row; returns true on the thread that owns the result
// of x row `r` (then *sum holds it): lane 0 of the row's only warp (WPR == 1, every r), or lane r of the
// row's first warp (WPR > 1). red: [kGemvWarps][NX] shared scratch. Must be called by the whole block.
template <int NX, int WPR>
__device__ __forceinline__ void gemv_reduce(float (&acc)[NX], float (*red)[NX], int warp, int lane) {
#pragma unroll
    for (int r = 0; r < NX; r++) acc[r] = warp_sum(acc[r]);
    if (WPR == 1) return;
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < NX; r++) red[warp][r] = acc[r];
    }
    __syncthreads();
    if (warp % WPR == 0) {
#pragma unroll
        for (int r = 0; r < NX; r++) {
            float s = 0.f;
#pragma unroll
            for (int p = 0; p < WPR; p++) s += red[warp + p][r];
            acc[r] = s;
        }
    }
}

// Up to three matrices with the same input x [n, I], concatenated row-wise over one grid: blocks
// [block_end[m-1], block_end[m]) cover the rows of matrix m (every block belongs to one matrix), so q, k and v
// of a layer are one launch instead of three (the small k/v launches were latency-bound).
struct GemvSegs {
    float* out0; float* out1; float* out2;
    const uint16_t* w0; const uint16_t* w1; const uint16_t* w2;
    const float* b0; const float* b1; const float* b2;
    int rows0, rows1, rows2;
    int end0, end1;  // first block of matrix 1 and of matrix 2
};

template <int NX, int WPR>
__global__ void __launch_bounds__(kGemvThreads)
gemv_multi_kernel(GemvSegs sg, const float* __restrict__ x, int I, const float* __restrict__ nw, float eps,
                  int prefetch) {
    constexpr int RPB = kGemvWarps / WPR;
    constexpr int U = NX == 1 ? 8 : 4;
    __shared__ float red[kGemvWarps][NX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int b = blockIdx.x;
    const int m = b < sg.end0 ? 0 : (b < sg.end1 ? 1 : 2);  // block-uniform
    float* out = m == 0 ? sg.out0 : (m == 1 ? sg.out1 : sg.out2);
    const uint16_t* w = m == 0 ? sg.w0 : (m == 1 ? sg.w1 : sg.w2);
    const float* bias = m == 0 ? sg.b0 : (m == 1 ? sg.b1 : sg.b2);
    const int O = m == 0 ? sg.rows0 : (m == 1 ? sg.rows1 : sg.rows2);
    const int first = m == 0 ? 0 : (m == 1 ? sg.end0 : sg.end1);
    const int row = (b - first) * RPB + warp / WPR;

    float acc[NX];
#pragma unroll
    for (int r = 0; r < NX; r++) acc[r] = 0.f;
    gemv_row_partial<NX, WPR, U>(w + (int64_t)min(row, O - 1) * I, x, I, warp % WPR, lane, row < O, acc, nw, eps,
                                 prefetch ? w : nullptr, (b - first) * RPB, RPB, O);
    gemv_reduce<NX, WPR>(acc, red, warp, lane);
    if (row >= O || warp % WPR != 0) return;
    const float bb = bias ? bias[row] : 0.f;
#pragma unroll
    for (int r = 0; r < NX; r++)
        if (lane == r) out[(int64_t)r * O + row] = acc[r] + bb;
}

// Gate/up GEMV + SwiGLU: the WPR warps of row o read gate row o and up row o together (one x load serves
// both) and write out[r, o] = silu(g) * u with the f32 formula of swiglu_kernel. No bias (Llama's MLP has none).
template <int NX, int WPR>
__global__ void __launch_bounds__(kGemvThreads)
gemv_swiglu_kernel(float* __restrict__ out, const float* __restrict__ x, const uint16_t* __restrict__ wg,
                   const uint16_t* __restrict__ wu, int O, int I, const float* __restrict__ nw, float eps,
                   int prefetch) {
    constexpr int RPB = kGemvWarps / WPR;
    constexpr int U = NX == 1 ? 4 : 2;   // per matrix: 2U loads in flight per lane (8 for n = 1, as gemv_bf16)
    constexpr int S = 32 * WPR;
    __shared__ float red[kGemvWarps][2 * NX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * RPB + warp / WPR;
    const int part = warp % WPR;
    const int nch = I >> 3;

    float acc[2 * NX];  // [0, NX): gate, [NX, 2NX): up
#pragma unroll
    for (int r = 0; r < 2 * NX; r++) acc[r] = 0.f;
    const int64_t roff = (int64_t)min(row, O - 1) * I;
    const uint16_t* gr = wg + roff;
    const uint16_t* ur = wu + roff;
    int c0 = part * 32 + lane;
    const bool active = row < O && c0 < nch;
    uint4 gv[U], uv[U];
    // first round of gate/up weight loads before the PDL wait (weights are read-only), x only after it
    if (active) {
        gemv_load_round<U, S, true>(gv, gr, c0, nch);
        gemv_load_round<U, S, true>(uv, ur, c0, nch);
    }
    if (prefetch) {
        gemv_prefetch_rows(wg, blockIdx.x * RPB, RPB, O, I);
        gemv_prefetch_rows(wu, blockIdx.x * RPB, RPB, O, I);
    }
    pdl_wait();
    pdl_launch_dependents();
    float inv[NX];
    block_rms_inv<NX>(x, I, nw, eps, inv);  // every thread (block-wide barriers)
    if (active) {
        while (true) {
#pragma unroll
            for (int u = 0; u < U; u++) {
                int c = c0 + u * S;
                if (c < nch) {
                    float gf[8], uf[8];
                    bf16x8_to_f32(gv[u], gf);
                    bf16x8_to_f32(uv[u], uf);
#pragma unroll
                    for (int r = 0; r < NX; r++) {
                        float4 a, b;
                        load_x8<NX>(x, I, r, c, nw, inv, a, b);
                        float s = acc[r], t = acc[NX + r];
                        s = fmaf(gf[0], a.x, s); t = fmaf(uf[0], a.x, t);
                        s = fmaf(gf[1], a.y, s); t = fmaf(uf[1], a.y, t);
                        s = fmaf(gf[2], a.z, s); t = fmaf(uf[2], a.z, t);
                        s = fmaf(gf[3], a.w, s); t = fmaf(uf[3], a.w, t);
                        s = fmaf(gf[4], b.x, s); t = fmaf(uf[4], b.x, t);
                        s = fmaf(gf[5], b.y, s); t = fmaf(uf[5], b.y, t);
                        s = fmaf(gf[6], b.z, s); t = fmaf(uf[6], b.z, t);
                        s = fmaf(gf[7], b.w, s); t = fmaf(uf[7], b.w, t);
                        acc[r] = s;
                        acc[NX + r] = t;
                    }
                }
            }
            c0 += S * U;
            if (c0 >= nch) break;
            gemv_load_round<U, S>(gv, gr, c0, nch);
            gemv_load_round<U, S>(uv, ur, c0, nch);
        }
    }
    gemv_reduce<2 * NX, WPR>(acc, red, warp, lane);
    if (row >= O || part != 0) return;
#pragma unroll
    for (int r = 0; r < NX; r++) {
        if (lane == r) {
            float g = acc[r];
            out[(int64_t)r * O + row] = g / (1.f + expf(-g)) * acc[NX + r];
        }
    }
}

template <int NX>
int launch_gemv_multi_nx(int wpr, dim3 grid, const GemvSegs& sg, const float* x, int I, cudaStream_t s,
                         const float* nw = nullptr, float eps = 0.f) {
    auto k = wpr == 1 ? gemv_multi_kernel<NX, 1>
           : wpr == 2 ? gemv_multi_kernel<NX, 2>
           : wpr == 4 ? gemv_multi_kernel<NX, 4> : gemv_multi_kernel<NX, 8>;
    const int pf = want_prefetch(((int64_t)sg.rows0 + sg.rows1 + sg.rows2) * I * 2) ? 1 : 0;
    TP_LAUNCH("gemv_multi_kernel", k, grid, dim3(kGemvThreads), 0, s, sg, x, I, nw, eps, pf);
    return TP_OK;
}

template <int NX>
int launch_gemv_swiglu_nx(int wpr, float* out, const float* x, const uint16_t* wg, const uint16_t* wu, int O, int I,
                          cudaStream_t s, const float* nw = nullptr, float eps = 0.f) {
    dim3 grid((unsigned)ceil_div(O, kGemvWarps / wpr));
    auto k = wpr == 1 ? gemv_swiglu_kernel<NX, 1>
           : wpr == 2 ? gemv_swiglu_kernel<NX, 2>
           : wpr == 4 ? gemv_swiglu_kernel<NX, 4> : gemv_swiglu_kernel<NX, 8>;
    const int pf = want_prefetch((int64_t)O * I * 4) ? 1 : 0;
    TP_LAUNCH("gemv_swiglu_kernel", k, grid, dim3(kGemvThreads), 0, s, out, x, wg, wu, O, I, nw, eps, pf);
    return TP_OK;
}

}  // namespace

extern "C" {

static int gemv_impl(const char* fn, uint64_t out, uint64_t x, uint64_t w, uint64_t bias, int n, int out_dim,
                     int in_dim, int accumulate, uint64_t stream) {
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(w != 0, fn, "w");
    TP_REQUIRE(out_dim > 0, fn, "out_dim");
    TP_REQUIRE(in_dim > 0, fn, "in_dim");
    TP_REQUIRE(n >= 0, fn, "n");
    if (n == 0) return TP_OK;
    if (n > kGemvMaxRows || in_dim % 8 != 0 || (x & 15) != 0 || (w & 15) != 0)
        return fail(TP_ERR_UNSUPPORTED, "%s: needs n <= %d, in_dim %% 8 == 0 and 16-byte aligned x and w "
                    "(n %d, in_dim %d)", fn, kGemvMaxRows, n, in_dim);
    cudaStream_t s = TP_STREAM(stream);
    const float* xp = TP_PTR(const float, x);
    const uint16_t* wp = TP_PTR(const uint16_t, w);
    const float* bp = TP_PTR(const float, bias);
    float* op = TP_PTR(float, out);
    int wpr = pick_wpr(out_dim, in_dim);
    switch (n) {
        case 1: return launch_gemv_nx<1>(wpr, op, xp, wp, bp, out_dim, in_dim, s, accumulate);
        case 2: return launch_gemv_nx<2>(wpr, op, xp, wp, bp, out_dim, in_dim, s, accumulate);
        case 3: return launch_gemv_nx<3>(wpr, op, xp, wp, bp, out_dim, in_dim, s, accumulate);
        default: return launch_gemv_nx<4>(wpr, op, xp, wp, bp, out_dim, in_dim, s, accumulate);
    }
}

int tp_gemv_set_prefetch(int max_mib) {
    if (max_mib < 0 || max_mib > 65536)
        return fail(TP_ERR_BAD_ARGUMENT, "tp_gemv_set_prefetch: bad argument 'max_mib' (%d: 0 .. 65536)", max_mib);
    __atomic_store_n(&g_prefetch_bytes, (int64_t)max_mib << 20, __ATOMIC_RELAXED);
    return TP_OK;
}

int tp_gemv_get_prefetch(void) { return (int)(__atomic_load_n(&g_prefetch_bytes, __ATOMIC_RELAXED) >> 20); }

int tp_gemv_set_wpr(int warps_per_row) {
    if (warps_per_row != 0 && warps_per_row != 1 && warps_per_row != 2 && warps_per_row != 4 && warps_per_row != 8)
        return fail(TP_ERR_BAD_ARGUMENT, "tp_gemv_set_wpr: warps_per_row %d (0 = automatic, 1, 2, 4 or 8)", warps_per_row);
    g_wpr_override = warps_per_row;
    return TP_OK;
}

int tp_gemv_bf16(uint64_t out, uint64_t x, uint64_t w, uint64_t bias, int n, int out_dim, int in_dim,
                 uint64_t stream) {
    return gemv_impl("tp_gemv_bf16", out, x, w, bias, n, out_dim, in_dim, 0, stream);
}

int tp_gemv_bf16_acc(uint64_t out, uint64_t x, uint64_t w, uint64_t bias, int n, int out_dim, int in_dim,
                     uint64_t stream) {
    return gemv_impl("tp_gemv_bf16_acc", out, x, w, bias, n, out_dim, in_dim, 1, stream);
}

static int gemv_multi_impl(const char* fn, uint64_t out0, uint64_t w0, uint64_t bias0, int rows0, uint64_t out1,
                           uint64_t w1, uint64_t bias1, int rows1, uint64_t out2, uint64_t w2, uint64_t bias2,
                           int rows2, uint64_t x, uint64_t norm_w, float eps, int n, int in_dim, uint64_t stream) {
    TP_REQUIRE(out0 != 0, fn, "out0");
    TP_REQUIRE(w0 != 0, fn, "w0");
    TP_REQUIRE(rows0 > 0, fn, "rows0");
    TP_REQUIRE(rows1 >= 0 && (rows1 == 0 || (out1 != 0 && w1 != 0)), fn, "rows1");
    TP_REQUIRE(rows2 >= 0 && (rows2 == 0 || (out2 != 0 && w2 != 0 && rows1 > 0)), fn, "rows2");
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(in_dim > 0, fn, "in_dim");
    TP_REQUIRE(n >= 0, fn, "n");
    if (n == 0) return TP_OK;
    if (n > kGemvMaxRows || in_dim % 8 != 0 || (x & 15) != 0 || (w0 & 15) != 0 || (rows1 > 0 && (w1 & 15) != 0) ||
        (rows2 > 0 && (w2 & 15) != 0))
        return fail(TP_ERR_UNSUPPORTED, "%s: needs n <= %d, in_dim %% 8 == 0 and 16-byte aligned x and weights "
                    "(n %d, in_dim %d)", fn, kGemvMaxRows, n, in_dim);
    int wpr = pick_wpr(rows0 + rows1 + rows2, in_dim);
    int rpb = kGemvWarps / wpr;
    GemvSegs sg;
    sg.out0 = TP_PTR(float, out0); sg.out1 = TP_PTR(float, out1); sg.out2 = TP_PTR(float, out2);
    sg.w0 = TP_PTR(const uint16_t, w0); sg.w1 = TP_PTR(const uint16_t, w1); sg.w2 = TP_PTR(const uint16_t, w2);
    sg.b0 = TP_PTR(const float, bias0); sg.b1 = TP_PTR(const float, bias1); sg.b2 = TP_PTR(const float, bias2);
    sg.rows0 = rows0; sg.rows1 = rows1; sg.rows2 = rows2;
    sg.end0 = (int)ceil_div(rows0, rpb);
    sg.end1 = sg.end0 + (int)ceil_div(rows1, rpb);
    dim3 grid((unsigned)(sg.end1 + ceil_div(rows2, rpb)));
    cudaStream_t s = TP_STREAM(stream);
    const float* xp = TP_PTR(const float, x);
    const float* nw = TP_PTR(const float, norm_w);
    switch (n) {
        case 1: return launch_gemv_multi_nx<1>(wpr, grid, sg, xp, in_dim, s, nw, eps);
        case 2: return launch_gemv_multi_nx<2>(wpr, grid, sg, xp, in_dim, s, nw, eps);
        case 3: return launch_gemv_multi_nx<3>(wpr, grid, sg, xp, in_dim, s, nw, eps);
        default: return launch_gemv_multi_nx<4>(wpr, grid, sg, xp, in_dim, s, nw, eps);
    }
}

int tp_gemv_bf16_multi(uint64_t out0, uint64_t w0, uint64_t bias0, int rows0, uint64_t out1, uint64_t w1,
                       uint64_t bias1, int rows1, uint64_t out2, uint64_t w2, uint64_t bias2, int rows2, uint64_t x,
                       int n, int in_dim, uint64_t stream) {
    return gemv_multi_impl("tp_gemv_bf16_multi", out0, w0, bias0, rows0, out1, w1, bias1, rows1, out2, w2, bias2,
                           rows2, x, 0, 0.f, n, in_dim, stream);
}

int tp_gemv_bf16_multi_norm(uint64_t out0, uint64_t w0, uint64_t bias0, int rows0, uint64_t out1, uint64_t w1,
                            uint64_t bias1, int rows1, uint64_t out2, uint64_t w2, uint64_t bias2, int rows2,
                            uint64_t x, uint64_t norm_w, float eps, int n, int in_dim, uint64_t stream) {
    TP_REQUIRE(norm_w != 0 && (norm_w & 15) == 0, "tp_gemv_bf16_multi_norm", "norm_w");
    return gemv_multi_impl("tp_gemv_bf16_multi_norm", out0, w0, bias0, rows0, out1, w1, bias1, rows1, out2, w2,
                           bias2, rows2, x, norm_w, eps, n, in_dim, stream);
}

static int gemv_swiglu_impl(const char* fn, uint64_t out, uint64_t x, uint64_t norm_w, float eps, uint64_t w_gate,
                            uint64_t w_up, int n, int out_dim, int in_dim, uint64_t stream) {
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(w_gate != 0, fn, "w_gate");
    TP_REQUIRE(w_up != 0, fn, "w_up");
    TP_REQUIRE(out_dim > 0, fn, "out_dim");
    TP_REQUIRE(in_dim > 0, fn, "in_dim");
    TP_REQUIRE(n >= 0, fn, "n");
    if (n == 0) return TP_OK;
    if (n > kGemvMaxRows || in_dim % 8 != 0 || (x & 15) != 0 || (w_gate & 15) != 0 || (w_up & 15) != 0)
        return fail(TP_ERR_UNSUPPORTED, "%s: needs n <= %d, in_dim %% 8 == 0 and 16-byte aligned x and weights "
                    "(n %d, in_dim %d)", fn, kGemvMaxRows, n, in_dim);
    cudaStream_t s = TP_STREAM(stream);
    const float* xp = TP_PTR(const float, x);
    const uint16_t* gp = TP_PTR(const uint16_t, w_gate);
    const uint16_t* up = TP_PTR(const uint16_t, w_up);
    float* op = TP_PTR(float, out);
    const float* nw = TP_PTR(const float, norm_w);
    int wpr = pick_wpr(out_dim, in_dim);
    switch (n) {
        case 1: return launch_gemv_swiglu_nx<1>(wpr, op, xp, gp, up, out_dim, in_dim, s, nw, eps);
        case 2: return launch_gemv_swiglu_nx<2>(wpr, op, xp, gp, up, out_dim, in_dim, s, nw, eps);
        case 3: return launch_gemv_swiglu_nx<3>(wpr, op, xp, gp, up, out_dim, in_dim, s, nw, eps);
        default: return launch_gemv_swiglu_nx<4>(wpr, op, xp, gp, up, out_dim, in_dim, s, nw, eps);
    }
}

int tp_gemv_bf16_swiglu(uint64_t out, uint64_t x, uint64_t w_gate, uint64_t w_up, int n, int out_dim, int in_dim,
                        uint64_t stream) {
    return gemv_swiglu_impl("tp_gemv_bf16_swiglu", out, x, 0, 0.f, w_gate, w_up, n, out_dim, in_dim, stream);
}

int tp_gemv_bf16_swiglu_norm(uint64_t out, uint64_t x, uint64_t norm_w, float eps, uint64_t w_gate, uint64_t w_up,
                             int n, int out_dim, int in_dim, uint64_t stream) {
    TP_REQUIRE(norm_w != 0 && (norm_w & 15) == 0, "tp_gemv_bf16_swiglu_norm", "norm_w");
    return gemv_swiglu_impl("tp_gemv_bf16_swiglu_norm", out, x, norm_w, eps, w_gate, w_up, n, out_dim, in_dim,
                            stream);
}

}  // extern "C"
