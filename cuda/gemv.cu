// Decode GEMV: out[r, o] = sum_i w[o, i] * x[r, i] (+ bias[o]) for r < n <= 4, bf16 weights [O, I] row-major
// read straight from device memory (no conversion of x, no cuBLAS). Memory-bound: every weight byte is read
// once, with 16-byte loads (8 bf16 per lane) that bypass L1 and several independent loads in flight per lane;
// x (f32, a few KiB) is read through L1 with float4 loads and stays resident there.
//
// Layout: a block of 256 threads = 8 warps covers 8 / WPR rows; each row is owned by WPR warps (1, 2, 4 or 8),
// each of which walks its share of the row's 16-byte chunks (the warp's 32 lanes read 512 consecutive bytes
// per step, so every load is coalesced). Partial sums: warp shuffle, then (WPR > 1) shared memory.
// Requires I % 8 == 0 and 16-byte aligned w and x (then every row and every x row is 16-byte aligned).
#include "common.cuh"

namespace {

using namespace tp;

constexpr int kGemvThreads = 256;
constexpr int kGemvWarps = kGemvThreads / 32;
constexpr int kGemvMaxRows = 4;

// 16-byte streaming load: read-only path, no L1 allocation (weights are touched exactly once).
__device__ __forceinline__ uint4 ld_stream16(const uint16_t* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p));
    return r;
}

template <int NX, int WPR>
__global__ void __launch_bounds__(kGemvThreads)
gemv_bf16_kernel(float* __restrict__ out, const float* __restrict__ x, const uint16_t* __restrict__ w,
                 const float* __restrict__ bias, int O, int I) {
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

    if (row < O) {  // warp-uniform
        const uint16_t* wr = w + (int64_t)row * I;
        for (int c0 = part * 32 + lane; c0 < nch; c0 += S * U) {
            // All U loads are issued unconditionally (a lane past the row end re-reads the row's last chunk and
            // drops it below), so they are in flight together.
            uint4 wv[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                int c = min(c0 + u * S, nch - 1);
                wv[u] = ld_stream16(wr + (int64_t)c * 8);
            }
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
        }
    }
#pragma unroll
    for (int r = 0; r < NX; r++) acc[r] = warp_sum(acc[r]);

    if (WPR == 1) {
        if (row < O && lane == 0) {
            float b = bias ? bias[row] : 0.f;
#pragma unroll
            for (int r = 0; r < NX; r++) out[(int64_t)r * O + row] = acc[r] + b;
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
        out[(int64_t)lane * O + row] = s;
    }
}

template <int NX>
int launch_gemv_nx(int wpr, float* out, const float* x, const uint16_t* w, const float* bias, int O, int I,
                   cudaStream_t s) {
    int rpb = kGemvWarps / wpr;
    dim3 grid((unsigned)ceil_div(O, rpb));
    switch (wpr) {
        case 1: gemv_bf16_kernel<NX, 1><<<grid, kGemvThreads, 0, s>>>(out, x, w, bias, O, I); break;
        case 2: gemv_bf16_kernel<NX, 2><<<grid, kGemvThreads, 0, s>>>(out, x, w, bias, O, I); break;
        case 4: gemv_bf16_kernel<NX, 4><<<grid, kGemvThreads, 0, s>>>(out, x, w, bias, O, I); break;
        default: gemv_bf16_kernel<NX, 8><<<grid, kGemvThreads, 0, s>>>(out, x, w, bias, O, I); break;
    }
    TP_LAUNCHED("gemv_bf16_kernel");
    return TP_OK;
}

// Warps per row: the fewest (longest runs of loads per warp) that still give about two blocks per SM, but never
// so many that a warp has less than one 16-byte load per lane.
int pick_wpr(int O, int I) {
    int nch = I / 8;
    int want_blocks = 2 * sm_count();
    int wpr = 1;
    while (wpr < kGemvWarps && ceil_div(O, kGemvWarps / wpr) < want_blocks && nch >= 32 * wpr * 2) wpr <<= 1;
    return wpr;
}

}  // namespace

extern "C" {

int tp_gemv_bf16(uint64_t out, uint64_t x, uint64_t w, uint64_t bias, int n, int out_dim, int in_dim,
                 uint64_t stream) {
    const char* fn = "tp_gemv_bf16";
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
        case 1: return launch_gemv_nx<1>(wpr, op, xp, wp, bp, out_dim, in_dim, s);
        case 2: return launch_gemv_nx<2>(wpr, op, xp, wp, bp, out_dim, in_dim, s);
        case 3: return launch_gemv_nx<3>(wpr, op, xp, wp, bp, out_dim, in_dim, s);
        default: return launch_gemv_nx<4>(wpr, op, xp, wp, bp, out_dim, in_dim, s);
    }
}

}  // extern "C"
