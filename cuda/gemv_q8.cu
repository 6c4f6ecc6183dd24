// Q8_0 weights (--weight-type q8_0 on CUDA): a matrix [O, I] is int8 codes [O, I] row-major plus one f32 scale per
// block of 32 codes along a row, scales [O, I/32]; weight = code * scale (llama.cpp's Q8_0 values, the CPU's
// CpuQ8Weight layout and codes).
//
// - tp_gemv_q8: decode GEMV for n <= 4 rows of x: out[r, o] = sum_b d[o, b] * (sum_j q[o, 32b + j] * x[r, 32b + j])
//   (+ bias[o]), or accumulated into out. A block of 256 threads covers 8 / WPR rows, each row owned by WPR warps;
//   a lane reads 16-byte chunks of codes (half a block) with streaming loads, several issued before any is used,
//   widens them to floats, and adds scale * (chunk dot x) to its partial sums (the scale read through L1). Warp shuffles, then shared
//   memory when WPR > 1. Bandwidth: 1.125 bytes per weight instead of bf16's 2.
// - tp_dequant_q8_bf16: rows [r0, r0 + rows) as bf16 (round to nearest even), the weight operand of the cuBLAS
//   GEMM of a prefill chunk (the caller walks the matrix in row slices through a scratch buffer).
// - tp_embedding_q8: rows of a Q8_0 embedding table as f32 (tokens on the device: staged ids or the feedback
//   register of pipelined greedy decoding).
#include "common.cuh"

namespace {

using namespace tp;

constexpr int kQ8Threads = 256;
constexpr int kQ8Warps = kQ8Threads / 32;
constexpr int kQ8MaxRows = 4;
constexpr int kQ8Block = 32;

__device__ __forceinline__ uint4 ld_stream16_q8(const uint8_t* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

// The 4 signed bytes of a 32-bit word as floats (byte 0 first).
__device__ __forceinline__ void s8x4_to_f32(uint32_t w, float* f) {
    f[0] = (float)(int8_t)(w & 0xFF);
    f[1] = (float)(int8_t)((w >> 8) & 0xFF);
    f[2] = (float)(int8_t)((w >> 16) & 0xFF);
    f[3] = (float)(int8_t)(w >> 24);
}

template <int NX, int WPR>
__global__ void __launch_bounds__(kQ8Threads)
gemv_q8_kernel(float* __restrict__ out, const float* __restrict__ x, const uint8_t* __restrict__ w,
               const float* __restrict__ scales, const float* __restrict__ bias, int O, int I, int accumulate) {
    constexpr int RPB = kQ8Warps / WPR;
    constexpr int S = 32 * WPR;             // chunk stride between a lane's consecutive chunks
    constexpr int U = NX == 1 ? 8 : 4;      // chunks loaded per round (loads in flight), as the bf16 GEMV
    __shared__ float red[kQ8Warps][NX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = blockIdx.x * RPB + warp / WPR;
    const int part = warp % WPR;
    const int nch = I >> 4;                 // 16-byte chunks (16 codes) per row
    const int nb = I / kQ8Block;

    pdl_wait();
    pdl_launch_dependents();
    float acc[NX];
#pragma unroll
    for (int r = 0; r < NX; r++) acc[r] = 0.f;
    if (row < O) {
        const uint8_t* wr = w + (int64_t)row * I;
        const float* sr = scales + (int64_t)row * nb;
        // U chunks per lane per round, all loads issued before any is used (several 16-byte loads in flight)
        for (int c0 = part * 32 + lane; c0 < nch; c0 += S * U) {
            uint4 q[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int c = c0 + u * S;
                q[u] = c < nch ? ld_stream16_q8(wr + (int64_t)c * 16) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int c = c0 + u * S;
                if (c >= nch) break;
                float wf[16];
                s8x4_to_f32(q[u].x, wf);
                s8x4_to_f32(q[u].y, wf + 4);
                s8x4_to_f32(q[u].z, wf + 8);
                s8x4_to_f32(q[u].w, wf + 12);
                const float d = __ldg(sr + (c >> 1));
#pragma unroll
                for (int r = 0; r < NX; r++) {
                    const float4* xp = reinterpret_cast<const float4*>(x + (int64_t)r * I + (int64_t)c * 16);
                    float s = 0.f;
#pragma unroll
                    for (int v = 0; v < 4; v++) {
                        float4 a = __ldg(xp + v);
                        s = fmaf(wf[4 * v], a.x, s);
                        s = fmaf(wf[4 * v + 1], a.y, s);
                        s = fmaf(wf[4 * v + 2], a.z, s);
                        s = fmaf(wf[4 * v + 3], a.w, s);
                    }
                    acc[r] = fmaf(d, s, acc[r]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < NX; r++) acc[r] = warp_sum(acc[r]);
    if (WPR == 1) {
        if (row < O && lane == 0) {
            const float b = bias ? bias[row] : 0.f;
#pragma unroll
            for (int r = 0; r < NX; r++) {
                float* o = out + (int64_t)r * O + row;
                *o = accumulate ? *o + (acc[r] + b) : acc[r] + b;
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
int launch_q8(int wpr, float* out, const float* x, const uint8_t* w, const float* scales, const float* bias, int O,
              int I, int accumulate, cudaStream_t s) {
    const int rpb = kQ8Warps / wpr;
    dim3 grid((unsigned)ceil_div(O, rpb));
    auto k = wpr == 1 ? gemv_q8_kernel<NX, 1> : wpr == 2 ? gemv_q8_kernel<NX, 2>
           : wpr == 4 ? gemv_q8_kernel<NX, 4> : gemv_q8_kernel<NX, 8>;
    TP_LAUNCH("gemv_q8_kernel", k, grid, dim3(kQ8Threads), 0, s, out, x, w, scales, bias, O, I, accumulate);
    return TP_OK;
}

// Warps per row: the fewest that still give about two blocks per SM, with at least two chunks per lane.
int pick_wpr_q8(int O, int I) {
    const int nch = I / 16;
    const int want_blocks = 2 * sm_count();
    int wpr = 1;
    while (wpr < kQ8Warps && ceil_div(O, kQ8Warps / wpr) < want_blocks && nch >= 32 * wpr * 2) wpr <<= 1;
    return wpr;
}

__global__ void dequant_q8_bf16_kernel(uint16_t* __restrict__ dst, const uint8_t* __restrict__ w,
                                       const float* __restrict__ scales, int64_t n, int I) {
    pdl_wait();
    pdl_launch_dependents();
    const int nb = I / kQ8Block;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n; e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = e / I;
        const int col = (int)(e - row * I);
        const float v = (float)(int8_t)w[e] * scales[row * nb + col / kQ8Block];
        dst[e] = f32_to_bf16_bits(v);
    }
}

__global__ void embedding_q8_kernel(float* __restrict__ out, const uint8_t* __restrict__ table,
                                    const float* __restrict__ scales, const int* __restrict__ tokens, int dim,
                                    int vocab) {
    pdl_wait();
    pdl_launch_dependents();
    const int row = blockIdx.x;
    const int tok = tokens[row];
    float* o = out + (int64_t)row * dim;
    if (tok < 0 || tok >= vocab) {
        for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = 0.f;
        return;
    }
    const uint8_t* t = table + (int64_t)tok * dim;
    const float* sc = scales + (int64_t)tok * (dim / kQ8Block);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = (float)(int8_t)t[j] * sc[j / kQ8Block];
}

}  // namespace

extern "C" {

int tp_gemv_q8(uint64_t out, uint64_t x, uint64_t w, uint64_t scales, uint64_t bias, int n, int out_dim, int in_dim,
               int accumulate, uint64_t stream) {
    const char* fn = "tp_gemv_q8";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(w != 0, fn, "w");
    TP_REQUIRE(scales != 0, fn, "scales");
    TP_REQUIRE(n >= 0 && n <= kQ8MaxRows, fn, "n");
    TP_REQUIRE(out_dim > 0, fn, "out_dim");
    TP_REQUIRE(in_dim > 0 && in_dim % kQ8Block == 0, fn, "in_dim");
    TP_REQUIRE((x & 15) == 0, fn, "x (16-byte aligned)");
    TP_REQUIRE((w & 15) == 0, fn, "w (16-byte aligned)");
    TP_REQUIRE((scales & 3) == 0, fn, "scales");
    if (n == 0) return TP_OK;
    const int wpr = pick_wpr_q8(out_dim, in_dim);
    float* o = TP_PTR(float, out);
    const float* xi = TP_PTR(const float, x);
    const uint8_t* wi = TP_PTR(const uint8_t, w);
    const float* si = TP_PTR(const float, scales);
    const float* bi = TP_PTR(const float, bias);
    cudaStream_t s = TP_STREAM(stream);
    switch (n) {
        case 1: return launch_q8<1>(wpr, o, xi, wi, si, bi, out_dim, in_dim, accumulate, s);
        case 2: return launch_q8<2>(wpr, o, xi, wi, si, bi, out_dim, in_dim, accumulate, s);
        case 3: return launch_q8<3>(wpr, o, xi, wi, si, bi, out_dim, in_dim, accumulate, s);
        default: return launch_q8<4>(wpr, o, xi, wi, si, bi, out_dim, in_dim, accumulate, s);
    }
}

int tp_dequant_q8_bf16(uint64_t dst, uint64_t w, uint64_t scales, int rows, int in_dim, uint64_t stream) {
    const char* fn = "tp_dequant_q8_bf16";
    TP_REQUIRE(dst != 0, fn, "dst");
    TP_REQUIRE(w != 0, fn, "w");
    TP_REQUIRE(scales != 0, fn, "scales");
    TP_REQUIRE(rows >= 0, fn, "rows");
    TP_REQUIRE(in_dim > 0 && in_dim % kQ8Block == 0, fn, "in_dim");
    if (rows == 0) return TP_OK;
    const int64_t n = (int64_t)rows * in_dim;
    const int blocks = (int)((n + 255) / 256 < 65535 * 8 ? (n + 255) / 256 : 65535 * 8);
    TP_LAUNCH("dequant_q8_bf16_kernel", dequant_q8_bf16_kernel, dim3(blocks), dim3(256), 0, TP_STREAM(stream),
              TP_PTR(uint16_t, dst), TP_PTR(const uint8_t, w), TP_PTR(const float, scales), n, in_dim);
    return TP_OK;
}

int tp_embedding_q8(uint64_t out, uint64_t table, uint64_t scales, uint64_t tokens, int n, int dim, int vocab,
                    uint64_t stream) {
    const char* fn = "tp_embedding_q8";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(table != 0, fn, "table");
    TP_REQUIRE(scales != 0, fn, "scales");
    TP_REQUIRE(tokens != 0, fn, "tokens");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(dim > 0 && dim % kQ8Block == 0, fn, "dim");
    TP_REQUIRE(vocab > 0, fn, "vocab");
    if (n == 0) return TP_OK;
    TP_LAUNCH("embedding_q8_kernel", embedding_q8_kernel, dim3(n), dim3(256), 0, TP_STREAM(stream),
              TP_PTR(float, out), TP_PTR(const uint8_t, table), TP_PTR(const float, scales), TP_PTR(const int, tokens),
              dim, vocab);
    return TP_OK;
}

}  // extern "C"
