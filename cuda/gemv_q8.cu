// Q8_0 weights (--weight-type q8_0 on CUDA): a matrix [O, I] is int8 codes [O, I] row-major plus one f32 scale per
// block of 32 codes along a row, scales [O, I/32]; weight = code * scale (llama.cpp's Q8_0 values, the CPU's
// CpuQ8Weight layout and codes).
//
// - tp_gemv_q8: decode GEMV for n <= 4 rows of x: out[r, o] = sum_b d[o, b] * (sum_j q[o, 32b + j] * x[r, 32b + j])
//   (+ bias[o]), or accumulated into out. A block of 256 threads covers 8 / WPR rows, each row owned by WPR warps;
//   a lane reads 16-byte chunks of codes (half a block) with streaming loads, several issued before any is used,
//   widens them to floats, and adds scale * (chunk dot x) to its partial sums (the scale read through L1). Warp
//   shuffles, then shared memory when WPR > 1. Bandwidth: 1.125 bytes per weight instead of bf16's 2.
//   Variants (tp_set_q8_gemv_variant): 1 reads a chunk's scale only when it uses the chunk (a dependent read from
//   memory per chunk, since the scales stream like the codes) and widens each byte with I2F (quarter rate): on an H100
//   a q8_0 decode step of llama-1b-shape (1.39 GB) took as long as a bf16 one (2.47 GB). 2 issues a round's scale loads
//   with its code loads, flips the sign bits of a word once, moves each byte into the mantissa of 2^23 with one byte
//   permute and subtracts 2^23 + 128 (exact, a full-rate FADD). The same arithmetic in the same order: variants 1 and 2
//   give the same bits. 3 interleaves the lanes at 4 codes so that every load of x is coalesced (see
//   q8_row_partial_interleaved). 4 (the default) is llama.cpp's integer path: every block first quantizes x into
//   shared memory (int8 per block of 32 with an f32 scale, round to nearest even), then a lane multiplies 16 codes by
//   16 int8 of x with four DP4A (exact int32 sums) and adds scale_w * scale_x * sum: no conversion per code, and x
//   read as 1 byte per code from shared memory instead of 4 from L1. Results differ from variants 1-3 by x's 8-bit
//   rounding (see quantize_x_shared); a call whose x does not fit the 48 KB of shared memory (n * I * 9/8 bytes) runs
//   variant 1. llama-1b-shape end to end, H100: v1 795, v2 831, v3 789, v4 999 tokens/s (bf16: 853); H200: v1 871,
//   v2 869, v3 811, v4 1,127 (bf16: 1,062).
// - tp_dequant_q8_bf16: rows [r0, r0 + rows) as bf16 (round to nearest even), the weight operand of the cuBLAS
//   GEMM of a prefill chunk (the caller walks the matrix in row slices through a scratch buffer).
// - tp_embedding_q8: rows of a Q8_0 embedding table as f32 (tokens on the device: staged ids or the feedback
//   register of pipelined greedy decoding).
#include <mutex>
#include <type_traits>

#include "common.cuh"

namespace {

using namespace tp;

constexpr int kQ8Threads = 256;
constexpr int kQ8Warps = kQ8Threads / 32;
constexpr int kQ8MaxRows = 4;
constexpr int kQ8Block = 32;

// Q8 GEMV variant (tp_set_q8_gemv_variant): 1 = 16 consecutive codes per lane, I2F per byte; 2 = the same
// with the scales loaded with the codes and a byte permute into a float's mantissa; 3 = lanes interleaved at 4 codes
// (coalesced x); 4 = x quantized to int8 in shared memory, DP4A (default: the fastest on an H200).
int g_q8_variant = 4;

__device__ __forceinline__ uint32_t ld_stream4_q8(const uint8_t* p) {
    uint32_t r;
    asm("ld.global.nc.L1::no_allocate.u32 %0, [%1];" : "=r"(r) : "l"(p));
    return r;
}

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

// The 4 signed bytes of a 32-bit word as floats (byte 0 first) without I2F: w ^ 0x80808080 holds each byte + 128
// (unsigned); a byte permute puts byte j in the low mantissa byte of 2^23 (0x4B0000uu = 2^23 + uu), and subtracting
// 2^23 + 128 leaves the signed value exactly.
__device__ __forceinline__ void s8x4_to_f32_magic(uint32_t w, float* f) {
    const uint32_t u = w ^ 0x80808080u;
    f[0] = __int_as_float((int)__byte_perm(u, 0x4B000000u, 0x7440)) - 8388736.f;
    f[1] = __int_as_float((int)__byte_perm(u, 0x4B000000u, 0x7441)) - 8388736.f;
    f[2] = __int_as_float((int)__byte_perm(u, 0x4B000000u, 0x7442)) - 8388736.f;
    f[3] = __int_as_float((int)__byte_perm(u, 0x4B000000u, 0x7443)) - 8388736.f;
}

template <int V>
__device__ __forceinline__ void widen16(const uint4& q, float* wf) {
    if constexpr (V == 2) {
        s8x4_to_f32_magic(q.x, wf);
        s8x4_to_f32_magic(q.y, wf + 4);
        s8x4_to_f32_magic(q.z, wf + 8);
        s8x4_to_f32_magic(q.w, wf + 12);
    } else {
        s8x4_to_f32(q.x, wf);
        s8x4_to_f32(q.y, wf + 4);
        s8x4_to_f32(q.z, wf + 8);
        s8x4_to_f32(q.w, wf + 12);
    }
}

// x chunk c (16 floats of row r of x) dot the 16 widened codes wf, in order.
template <int NX>
__device__ __forceinline__ void q8_chunk_dot(const float* wf, const float* __restrict__ x, int I, int c, float d,
                                             float (&acc)[NX]) {
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

// One round of a lane's chunks c0 + u*S (u < U) of 16 codes with their scales (chunk c uses scale c / 2), all loads
// issued before any is used; chunks past the row's nch give zero codes and scale 0.
template <int U, int S>
__device__ __forceinline__ void q8_load_round(const uint8_t* __restrict__ wr, const float* __restrict__ sr, int c0,
                                              int nch, uint4 (&q)[U], float (&d)[U]) {
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int c = c0 + u * S;
        if (c < nch) {
            q[u] = ld_stream16_q8(wr + (int64_t)c * 16);
            d[u] = __ldg(sr + (c >> 1));
        } else {
            q[u] = make_uint4(0, 0, 0, 0);
            d[u] = 0.f;
        }
    }
}

// Adds this warp's share of weight row `wr` (codes) / `sr` (scales) times the NX rows of x to acc (lane-local
// partial sums): chunks part*32 + lane + k*32*WPR of 16 codes, U chunk loads issued per round before any is used.
// Variant 1 reads a chunk's scale when it uses the chunk (a dependent DRAM read per chunk: the scales stream from
// memory like the codes); variant 2 issues the round's scale loads with its code loads and widens without I2F.
// Both do the same arithmetic in the same order (the same results).
template <int NX, int WPR, int V>
__device__ __forceinline__ void q8_row_partial_chunks(const uint8_t* __restrict__ wr, const float* __restrict__ sr,
                                                      const float* __restrict__ x, int I, int part, int lane,
                                                      float (&acc)[NX]) {
    constexpr int S = 32 * WPR;             // chunk stride between a lane's consecutive chunks
    constexpr int U = NX == 1 ? 8 : 4;      // chunks loaded per round (loads in flight), as the bf16 GEMV
    const int nch = I >> 4;                 // 16-byte chunks (16 codes) per row
    for (int c0 = part * 32 + lane; c0 < nch; c0 += S * U) {
        uint4 q[U];
        if constexpr (V == 1) {
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
                widen16<1>(q[u], wf);
                q8_chunk_dot<NX>(wf, x, I, c, __ldg(sr + (c >> 1)), acc);
            }
        } else {
            float d[U];
            q8_load_round<U, S>(wr, sr, c0, nch, q, d);
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int c = c0 + u * S;
                if (c < nch) {
                    float wf[16];
                    widen16<2>(q[u], wf);
                    q8_chunk_dot<NX>(wf, x, I, c, d[u], acc);
                }
            }
        }
    }
}

// Variant 3: the lanes of a warp interleave at 4 codes, so every load of x is coalesced. Variants 1 and 2 give a lane
// 16 consecutive codes, and its 64 bytes of x sit 64 bytes from the next lane's: a warp's 16-byte x load then touches
// 16 cache lines instead of 4, and the L1 handles about 70 lines per 512 bytes of codes (bf16: 20) — enough to bound
// the kernel below the memory's speed. Here a warp takes 512 codes at a time ("super-chunk" t): lane l owns codes
// t*512 + 128v + 4l .. +3 for v = 0..3 (one 4-byte load each, 128 coalesced bytes per warp), their scale (block
// (t*512 + 128v)/32 + l/8) and x's float4 at the same offset (512 coalesced bytes per warp): about 24 lines per 512
// bytes of codes. UQ super-chunks per round are loaded before any is used. Other sums than variants 1 and 2 (4 codes
// per partial dot instead of 16): results within rounding of them, not bit-identical.
template <int NX, int WPR>
__device__ __forceinline__ void q8_row_partial_interleaved(const uint8_t* __restrict__ wr, const float* __restrict__ sr,
                                                           const float* __restrict__ x, int I, int part, int lane,
                                                           float (&acc)[NX]) {
    constexpr int UQ = NX == 1 ? 4 : 2;     // super-chunks in flight per round
    const int nsc = (I + 511) >> 9;         // super-chunks per row (the last may be partial; I % 32 == 0)
    for (int t0 = part; t0 < nsc; t0 += WPR * UQ) {
        uint32_t q[UQ][4];
        float d[UQ][4];
#pragma unroll
        for (int u = 0; u < UQ; u++) {
            const int t = t0 + u * WPR;
#pragma unroll
            for (int v = 0; v < 4; v++) {
                const int g = t * 512 + v * 128 + lane * 4;  // this lane's first code of the group
                if (t < nsc && g < I) {
                    q[u][v] = ld_stream4_q8(wr + g);
                    d[u][v] = __ldg(sr + (g >> 5));
                } else {
                    q[u][v] = 0u;
                    d[u][v] = 0.f;
                }
            }
        }
#pragma unroll
        for (int u = 0; u < UQ; u++) {
            const int t = t0 + u * WPR;
#pragma unroll
            for (int v = 0; v < 4; v++) {
                const int g = t * 512 + v * 128 + lane * 4;
                if (t < nsc && g < I) {
                    float wf[4];
                    s8x4_to_f32(q[u][v], wf);
#pragma unroll
                    for (int r = 0; r < NX; r++) {
                        const float4 a = __ldg(reinterpret_cast<const float4*>(x + (int64_t)r * I + g));
                        float s = wf[0] * a.x;
                        s = fmaf(wf[1], a.y, s);
                        s = fmaf(wf[2], a.z, s);
                        s = fmaf(wf[3], a.w, s);
                        acc[r] = fmaf(d[u][v], s, acc[r]);
                    }
                }
            }
        }
    }
}

// Variant 4's x in shared memory: int8 codes [NX][I] (16-byte aligned, I % 32 == 0), then f32 scales [NX][I / 32].
constexpr int kQ8SmemLimit = 48 * 1024 - 1024;  // dynamic shared memory a variant 4 launch may ask for (no opt-in)

__host__ __device__ __forceinline__ int q8_x_smem_bytes(int nx, int I) { return nx * I + nx * (I / kQ8Block) * 4; }

// Quantizes the NX rows of x (contiguous [NX, I]) into shared memory, llama.cpp's Q8 rule per block of 32: scale
// d = max|x| / 127, code = round-to-nearest-even(x * 127 / max|x|) (0 for an all-zero block). A block holding a NaN
// gets a NaN scale, so every output it touches is NaN; an infinite element gives an infinite scale and zero codes
// (NaN outputs as well, where the float variants give an infinity). The whole block calls it (it ends with a barrier).
// Each thread takes float4s f = tid + 256k of the flattened x; the 8 consecutive lanes holding a block of 32 find its
// maximum by three shuffles. Eight float4 loads per thread are issued before any is used.
template <int NX>
__device__ __forceinline__ void quantize_x_shared(const float* __restrict__ x, int I, int8_t* xq, float* xd) {
    const int nf4 = NX * I / 4;  // a multiple of 8: every block of 32 lies within one 8-lane group
    const float4* x4 = reinterpret_cast<const float4*>(x);
    for (int f0 = threadIdx.x; f0 - (int)threadIdx.x < nf4; f0 += kQ8Threads * 8) {
        float4 v[8];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int f = f0 + k * kQ8Threads;
            v[k] = f < nf4 ? __ldg(x4 + f) : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int k = 0; k < 8; k++) {
            const int f = f0 + k * kQ8Threads;
            // whole warps stay in the shuffles (lanes past the end hold zeros and store nothing)
            float a = fmaxf(fmaxf(fabsf(v[k].x), fabsf(v[k].y)), fmaxf(fabsf(v[k].z), fabsf(v[k].w)));
            int nan = (v[k].x != v[k].x) | (v[k].y != v[k].y) | (v[k].z != v[k].z) | (v[k].w != v[k].w);
#pragma unroll
            for (int o = 1; o < 8; o <<= 1) {
                a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
                nan |= __shfl_xor_sync(0xffffffffu, nan, o);
            }
            const float d = nan ? __int_as_float(0x7fc00000) : a / 127.f;
            const float id = a > 0.f ? 127.f / a : 0.f;
            if (f < nf4) {
                const int q0 = max(-127, min(127, __float2int_rn(v[k].x * id)));
                const int q1 = max(-127, min(127, __float2int_rn(v[k].y * id)));
                const int q2 = max(-127, min(127, __float2int_rn(v[k].z * id)));
                const int q3 = max(-127, min(127, __float2int_rn(v[k].w * id)));
                reinterpret_cast<uint32_t*>(xq)[f] = (uint32_t)(q0 & 0xFF) | ((uint32_t)(q1 & 0xFF) << 8)
                                                   | ((uint32_t)(q2 & 0xFF) << 16) | ((uint32_t)(q3 & 0xFF) << 24);
                if ((f & 7) == 0) xd[f >> 3] = d;
            }
        }
    }
    __syncthreads();
}

// Variant 4: variant 2's chunks (16 consecutive codes per lane, a round's scales loaded with its codes) against x's
// int8 codes in shared memory: four DP4A per chunk and row of x give the exact integer sum of 16 products, then
// acc += (scale_w * scale_x) * sum.
template <int NX, int WPR>
__device__ __forceinline__ void q8_row_partial_dp4a(const uint8_t* __restrict__ wr, const float* __restrict__ sr,
                                                    const int8_t* xq, const float* xd, int I, int part, int lane,
                                                    float (&acc)[NX]) {
    constexpr int S = 32 * WPR;
    constexpr int U = NX == 1 ? 8 : 4;
    const int nch = I >> 4;
    const int nb = I / kQ8Block;
    for (int c0 = part * 32 + lane; c0 < nch; c0 += S * U) {
        uint4 q[U];
        float d[U];
        q8_load_round<U, S>(wr, sr, c0, nch, q, d);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = c0 + u * S;
            if (c < nch) {
#pragma unroll
                for (int r = 0; r < NX; r++) {
                    const int4 xv = *reinterpret_cast<const int4*>(xq + (int64_t)r * I + (int64_t)c * 16);
                    int sum = __dp4a((int)q[u].x, xv.x, 0);
                    sum = __dp4a((int)q[u].y, xv.y, sum);
                    sum = __dp4a((int)q[u].z, xv.z, sum);
                    sum = __dp4a((int)q[u].w, xv.w, sum);
                    acc[r] = fmaf(d[u] * xd[r * nb + (c >> 1)], (float)sum, acc[r]);
                }
            }
        }
    }
}

// Variant 4, before pdl_wait (weights and scales are read-only): an L2 prefetch of this lane's chunks of its first
// round and of their scales, so that the memory fetch of the weights overlaps the wait and x's quantization.
template <int NX, int WPR, int V>
__device__ __forceinline__ void q8_prefetch_first_round(const uint8_t* __restrict__ wr, const float* __restrict__ sr,
                                                        int I, int part, int lane) {
    if constexpr (V == 4) {
        constexpr int S = 32 * WPR;
        constexpr int U = NX == 1 ? 8 : 4;
        const int nch = I >> 4;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int c = part * 32 + lane + u * S;
            if (c < nch) {
                prefetch_line_l2(wr + (int64_t)c * 16);
                if ((c & 1) == 0) prefetch_line_l2(sr + (c >> 1));
            }
        }
    }
}

// Variant 4's shared x: quantized by the whole block (after pdl_wait); the other variants read x from global memory.
template <int NX, int V>
__device__ __forceinline__ void q8_stage_x(const float* __restrict__ x, int I, int8_t*& xq, float*& xd) {
    if constexpr (V == 4) {
        extern __shared__ __align__(16) unsigned char q8_dyn_smem[];
        xq = reinterpret_cast<int8_t*>(q8_dyn_smem);
        xd = reinterpret_cast<float*>(q8_dyn_smem + NX * I);
        quantize_x_shared<NX>(x, I, xq, xd);
    } else {
        xq = nullptr;
        xd = nullptr;
    }
}

// This warp's share of a row for variant V (1, 2: 16 consecutive codes per lane; 3: interleaved lanes; 4: DP4A
// against x's int8 codes xq / scales xd in shared memory, unused otherwise).
template <int NX, int WPR, int V>
__device__ __forceinline__ void q8_row_partial(const uint8_t* __restrict__ wr, const float* __restrict__ sr,
                                               const float* __restrict__ x, const int8_t* xq, const float* xd, int I,
                                               int part, int lane, float (&acc)[NX]) {
    if constexpr (V == 4) q8_row_partial_dp4a<NX, WPR>(wr, sr, xq, xd, I, part, lane, acc);
    else if constexpr (V == 3) q8_row_partial_interleaved<NX, WPR>(wr, sr, x, I, part, lane, acc);
    else q8_row_partial_chunks<NX, WPR, V>(wr, sr, x, I, part, lane, acc);
}

// Sums the lane partials of the WPR warps of a row; afterwards every lane of the row's first warp (part 0) holds
// the row's K sums in acc. red: [kQ8Warps][K] shared. Must be called by the whole block.
template <int K, int WPR>
__device__ __forceinline__ void q8_reduce(float (&acc)[K], float (*red)[K], int warp, int lane) {
#pragma unroll
    for (int r = 0; r < K; r++) acc[r] = warp_sum(acc[r]);
    if (WPR == 1) return;
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < K; r++) red[warp][r] = acc[r];
    }
    __syncthreads();
    if (warp % WPR == 0) {
#pragma unroll
        for (int r = 0; r < K; r++) {
            float t = 0.f;
#pragma unroll
            for (int p = 0; p < WPR; p++) t += red[warp + p][r];
            acc[r] = t;
        }
    }
}

// Runs f(row block) for this block's row blocks: blockIdx.x alone (variants 1-3: one block per row block), or
// (variant 4, a grid of resident blocks, see q8_grid) blockIdx.x, + gridDim.x, ... below nrb, with a barrier between
// them (f's reduction reuses its shared memory when WPR > 1). The whole block calls it.
template <int V, int WPR, typename F>
__device__ __forceinline__ void q8_row_blocks(int nrb, F& f) {
    if constexpr (V == 4) {
        for (int rb = blockIdx.x; rb < nrb; rb += gridDim.x) {
            f(rb);
            if constexpr (WPR > 1) __syncthreads();
        }
    } else {
        f(blockIdx.x);
    }
}

template <int NX, int WPR, int V>
__global__ void __launch_bounds__(kQ8Threads)
gemv_q8_kernel(float* __restrict__ out, const float* __restrict__ x, const uint8_t* __restrict__ w,
               const float* __restrict__ scales, const float* __restrict__ bias, int O, int I, int accumulate) {
    constexpr int RPB = kQ8Warps / WPR;
    __shared__ float red[kQ8Warps][NX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nrb = (int)ceil_div(O, RPB);  // row blocks: one per block, or (variant 4) a grid-stride loop over them
    {
        const int row = blockIdx.x * RPB + warp / WPR;
        if (row < O) q8_prefetch_first_round<NX, WPR, V>(w + (int64_t)row * I, scales + (int64_t)row * (I / kQ8Block), I, warp % WPR, lane);
    }
    pdl_wait();
    pdl_launch_dependents();
    int8_t* xq;
    float* xd;
    q8_stage_x<NX, V>(x, I, xq, xd);
    auto row_block = [&](int rb) {
        const int row = rb * RPB + warp / WPR;
        float acc[NX];
#pragma unroll
        for (int r = 0; r < NX; r++) acc[r] = 0.f;
        if (row < O)
            q8_row_partial<NX, WPR, V>(w + (int64_t)row * I, scales + (int64_t)row * (I / kQ8Block), x, xq, xd, I,
                                       warp % WPR, lane, acc);
        q8_reduce<NX, WPR>(acc, red, warp, lane);
        if (row >= O || warp % WPR != 0 || lane != 0) return;
        const float b = bias ? bias[row] : 0.f;
#pragma unroll
        for (int r = 0; r < NX; r++) {
            float* o = out + (int64_t)r * O + row;
            *o = accumulate ? *o + (acc[r] + b) : acc[r] + b;
        }
    };
    q8_row_blocks<V, WPR>(nrb, row_block);
}

// Up to three Q8_0 matrices with the same x in one launch (q, k, v): blocks [0, end0) cover matrix 0,
// [end0, end1) matrix 1, [end1, ...) matrix 2.
struct Q8Segs {
    float* out0; float* out1; float* out2;
    const uint8_t* w0; const uint8_t* w1; const uint8_t* w2;
    const float* s0; const float* s1; const float* s2;
    const float* b0; const float* b1; const float* b2;
    int rows0, rows1, rows2;
    int end0, end1;
};

// Row block b of a Q8Segs launch: its matrix and the first row of that matrix it covers.
struct Q8SegBlock {
    float* out;
    const uint8_t* w;
    const float* sc;
    const float* bias;
    int O;
    int row0;
};

__device__ __forceinline__ Q8SegBlock q8_seg_block(const Q8Segs& sg, int b, int rpb) {
    const int m = b < sg.end0 ? 0 : (b < sg.end1 ? 1 : 2);  // block-uniform
    Q8SegBlock r;
    r.out = m == 0 ? sg.out0 : (m == 1 ? sg.out1 : sg.out2);
    r.w = m == 0 ? sg.w0 : (m == 1 ? sg.w1 : sg.w2);
    r.sc = m == 0 ? sg.s0 : (m == 1 ? sg.s1 : sg.s2);
    r.bias = m == 0 ? sg.b0 : (m == 1 ? sg.b1 : sg.b2);
    r.O = m == 0 ? sg.rows0 : (m == 1 ? sg.rows1 : sg.rows2);
    r.row0 = (b - (m == 0 ? 0 : (m == 1 ? sg.end0 : sg.end1))) * rpb;
    return r;
}

template <int NX, int WPR, int V>
__global__ void __launch_bounds__(kQ8Threads)
gemv_q8_multi_kernel(Q8Segs sg, const float* __restrict__ x, int I) {
    constexpr int RPB = kQ8Warps / WPR;
    __shared__ float red[kQ8Warps][NX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nrb = sg.end1 + (sg.rows2 > 0 ? (int)ceil_div(sg.rows2, RPB) : 0);
    const Q8SegBlock first = q8_seg_block(sg, blockIdx.x, RPB);
    {
        const int row = first.row0 + warp / WPR;
        if (row < first.O) q8_prefetch_first_round<NX, WPR, V>(first.w + (int64_t)row * I, first.sc + (int64_t)row * (I / kQ8Block), I, warp % WPR, lane);
    }
    pdl_wait();
    pdl_launch_dependents();
    int8_t* xq;
    float* xd;
    q8_stage_x<NX, V>(x, I, xq, xd);
    auto row_block = [&](const Q8SegBlock& sb) {
        const int row = sb.row0 + warp / WPR;
        float acc[NX];
#pragma unroll
        for (int r = 0; r < NX; r++) acc[r] = 0.f;
        if (row < sb.O)
            q8_row_partial<NX, WPR, V>(sb.w + (int64_t)row * I, sb.sc + (int64_t)row * (I / kQ8Block), x, xq, xd, I,
                                       warp % WPR, lane, acc);
        q8_reduce<NX, WPR>(acc, red, warp, lane);
        if (row >= sb.O || warp % WPR != 0 || lane != 0) return;
        const float bb = sb.bias ? sb.bias[row] : 0.f;
#pragma unroll
        for (int r = 0; r < NX; r++) sb.out[(int64_t)r * sb.O + row] = acc[r] + bb;
    };
    if constexpr (V == 4) {  // q8_row_blocks' loop, the first row block's matrix already known
        for (int b = blockIdx.x; b < nrb; b += gridDim.x) {
            row_block(b == (int)blockIdx.x ? first : q8_seg_block(sg, b, RPB));
            if constexpr (WPR > 1) __syncthreads();
        }
    } else {
        row_block(first);
    }
}

// Gate/up Q8_0 GEMVs + SwiGLU: out[r, o] = silu(x·g_o) * (x·u_o), the formula of swiglu_kernel. No bias.
template <int NX, int WPR, int V>
__global__ void __launch_bounds__(kQ8Threads)
gemv_q8_swiglu_kernel(float* __restrict__ out, const float* __restrict__ x, const uint8_t* __restrict__ wg,
                      const float* __restrict__ sg, const uint8_t* __restrict__ wu, const float* __restrict__ su,
                      int O, int I) {
    constexpr int RPB = kQ8Warps / WPR;
    __shared__ float red[kQ8Warps][2 * NX];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nrb = (int)ceil_div(O, RPB);
    {
        const int row = blockIdx.x * RPB + warp / WPR;
        if (row < O) {
            const int64_t ro = (int64_t)row * I, so = (int64_t)row * (I / kQ8Block);
            q8_prefetch_first_round<NX, WPR, V>(wg + ro, sg + so, I, warp % WPR, lane);
            q8_prefetch_first_round<NX, WPR, V>(wu + ro, su + so, I, warp % WPR, lane);
        }
    }
    pdl_wait();
    pdl_launch_dependents();
    int8_t* xq;
    float* xd;
    q8_stage_x<NX, V>(x, I, xq, xd);
    auto row_block = [&](int rb) {
        const int row = rb * RPB + warp / WPR;
        float ag[NX], au[NX], acc[2 * NX];
#pragma unroll
        for (int r = 0; r < NX; r++) ag[r] = au[r] = 0.f;
        if (row < O) {
            const int64_t ro = (int64_t)row * I, so = (int64_t)row * (I / kQ8Block);
            q8_row_partial<NX, WPR, V>(wg + ro, sg + so, x, xq, xd, I, warp % WPR, lane, ag);
            q8_row_partial<NX, WPR, V>(wu + ro, su + so, x, xq, xd, I, warp % WPR, lane, au);
        }
#pragma unroll
        for (int r = 0; r < NX; r++) {
            acc[r] = ag[r];
            acc[NX + r] = au[r];
        }
        q8_reduce<2 * NX, WPR>(acc, red, warp, lane);
        if (row >= O || warp % WPR != 0 || lane != 0) return;
#pragma unroll
        for (int r = 0; r < NX; r++) {
            const float g = acc[r];
            out[(int64_t)r * O + row] = g / (1.f + expf(-g)) * acc[NX + r];
        }
    };
    q8_row_blocks<V, WPR>(nrb, row_block);
}

// Variant 4's grid: at most as many blocks as are resident on the device at once, each quantizing x once and then
// looping over row blocks (grid stride), so x's quantization is paid per resident block, not per row block; at most
// nrb. Other variants: one block per row block. The occupancy is cached per kernel, device and shared memory size
// (under a lock: host threads may launch at once); a failed query gives nrb.
template <int V, typename K>
unsigned q8_grid(K kernel, int nrb, size_t smem) {
    if (V != 4) return (unsigned)nrb;
    struct Entry { const void* fn; int dev; size_t smem; int blocks; };
    static std::mutex lock;
    static Entry cache[64];
    static int used = 0;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return (unsigned)nrb;
    const void* fn = reinterpret_cast<const void*>(kernel);
    int per_sm = 0;
    {
        std::lock_guard<std::mutex> g(lock);
        for (int i = 0; i < used && per_sm == 0; i++)
            if (cache[i].fn == fn && cache[i].dev == dev && cache[i].smem == smem) per_sm = cache[i].blocks;
    }
    if (per_sm == 0) {
        if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kQ8Threads, smem) != cudaSuccess || per_sm < 1) {
            (void)cudaGetLastError();
            return (unsigned)nrb;
        }
        std::lock_guard<std::mutex> g(lock);
        if (used < 64) cache[used++] = Entry{fn, dev, smem, per_sm};
    }
    const long resident = (long)per_sm * sm_count();
    return (unsigned)(nrb < resident ? nrb : resident);
}

template <int NX, int V>
int launch_q8(int wpr, float* out, const float* x, const uint8_t* w, const float* scales, const float* bias, int O,
              int I, int accumulate, cudaStream_t s) {
    const int rpb = kQ8Warps / wpr;
    dim3 grid((unsigned)ceil_div(O, rpb));
    auto k = wpr == 1 ? gemv_q8_kernel<NX, 1, V> : wpr == 2 ? gemv_q8_kernel<NX, 2, V>
           : wpr == 4 ? gemv_q8_kernel<NX, 4, V> : gemv_q8_kernel<NX, 8, V>;
    const size_t smem = V == 4 ? (size_t)q8_x_smem_bytes(NX, I) : 0;
    grid.x = q8_grid<V>(k, (int)grid.x, smem);
    TP_LAUNCH("gemv_q8_kernel", k, grid, dim3(kQ8Threads), smem, s, out, x, w, scales, bias, O, I, accumulate);
    return TP_OK;
}

template <int NX, int V>
int launch_q8_multi(int wpr, dim3 grid, const Q8Segs& sg, const float* x, int I, cudaStream_t s) {
    auto k = wpr == 1 ? gemv_q8_multi_kernel<NX, 1, V> : wpr == 2 ? gemv_q8_multi_kernel<NX, 2, V>
           : wpr == 4 ? gemv_q8_multi_kernel<NX, 4, V> : gemv_q8_multi_kernel<NX, 8, V>;
    const size_t smem = V == 4 ? (size_t)q8_x_smem_bytes(NX, I) : 0;
    grid.x = q8_grid<V>(k, (int)grid.x, smem);
    TP_LAUNCH("gemv_q8_multi_kernel", k, grid, dim3(kQ8Threads), smem, s, sg, x, I);
    return TP_OK;
}

template <int NX, int V>
int launch_q8_swiglu(int wpr, float* out, const float* x, const uint8_t* wg, const float* sg, const uint8_t* wu,
                     const float* su, int O, int I, cudaStream_t s) {
    dim3 grid((unsigned)ceil_div(O, kQ8Warps / wpr));
    auto k = wpr == 1 ? gemv_q8_swiglu_kernel<NX, 1, V> : wpr == 2 ? gemv_q8_swiglu_kernel<NX, 2, V>
           : wpr == 4 ? gemv_q8_swiglu_kernel<NX, 4, V> : gemv_q8_swiglu_kernel<NX, 8, V>;
    const size_t smem = V == 4 ? (size_t)q8_x_smem_bytes(NX, I) : 0;
    grid.x = q8_grid<V>(k, (int)grid.x, smem);
    TP_LAUNCH("gemv_q8_swiglu_kernel", k, grid, dim3(kQ8Threads), smem, s, out, x, wg, sg, wu, su, O, I);
    return TP_OK;
}

// The variant a call with n rows of x over I columns runs: g_q8_variant, except variant 4 when its shared x would not
// fit (n * I * 9/8 bytes past kQ8SmemLimit): then variant 1.
int q8_variant_for(int n, int I) {
    if (g_q8_variant == 4 && q8_x_smem_bytes(n, I) > kQ8SmemLimit) return 1;
    return g_q8_variant;
}

// Calls f(std::integral_constant<int, NX>{}, std::integral_constant<int, V>{}) for the row count n in 1..4 and the
// variant q8_variant_for(n, I) (the kernels are templated on both).
template <typename F>
int by_rows(int n, int I, F f) {
    const int variant = q8_variant_for(n, I);
    auto go = [&](auto nx) {
        return variant == 1 ? f(nx, std::integral_constant<int, 1>{})
             : variant == 2 ? f(nx, std::integral_constant<int, 2>{})
             : variant == 3 ? f(nx, std::integral_constant<int, 3>{}) : f(nx, std::integral_constant<int, 4>{});
    };
    switch (n) {
        case 1: return go(std::integral_constant<int, 1>{});
        case 2: return go(std::integral_constant<int, 2>{});
        case 3: return go(std::integral_constant<int, 3>{});
        default: return go(std::integral_constant<int, 4>{});
    }
}

// Warps per row: the fewest that still give about two blocks per SM, with at least two chunks per lane (variants 1,
// 2 and 4) or a full round of super-chunks per warp (variant 3: 4 of 512 codes).
int pick_wpr_q8(int O, int I) {
    const int want_blocks = 2 * sm_count();
    int wpr = 1;
    if (g_q8_variant == 3) {
        const int nsc = (I + 511) / 512;
        while (wpr < kQ8Warps && ceil_div(O, kQ8Warps / wpr) < want_blocks && nsc >= 4 * wpr * 2) wpr <<= 1;
        return wpr;
    }
    const int nch = I / 16;
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
    return by_rows(n, in_dim, [&](auto nx, auto v) {
        return launch_q8<decltype(nx)::value, decltype(v)::value>(wpr, o, xi, wi, si, bi, out_dim, in_dim, accumulate, s);
    });
}

int tp_gemv_q8_multi(uint64_t out0, uint64_t w0, uint64_t s0, uint64_t bias0, int rows0, uint64_t out1, uint64_t w1,
                     uint64_t s1, uint64_t bias1, int rows1, uint64_t out2, uint64_t w2, uint64_t s2, uint64_t bias2,
                     int rows2, uint64_t x, int n, int in_dim, uint64_t stream) {
    const char* fn = "tp_gemv_q8_multi";
    TP_REQUIRE(out0 != 0 && w0 != 0 && s0 != 0, fn, "out0/w0/s0");
    TP_REQUIRE(rows0 > 0, fn, "rows0");
    TP_REQUIRE(rows1 >= 0 && (rows1 == 0 || (out1 != 0 && w1 != 0 && s1 != 0)), fn, "rows1");
    TP_REQUIRE(rows2 >= 0 && (rows2 == 0 || (out2 != 0 && w2 != 0 && s2 != 0 && rows1 > 0)), fn, "rows2");
    TP_REQUIRE(x != 0 && (x & 15) == 0, fn, "x (16-byte aligned)");
    TP_REQUIRE(n >= 0 && n <= kQ8MaxRows, fn, "n");
    TP_REQUIRE(in_dim > 0 && in_dim % kQ8Block == 0, fn, "in_dim");
    TP_REQUIRE((w0 & 15) == 0 && (w1 & 15) == 0 && (w2 & 15) == 0, fn, "w (16-byte aligned)");
    if (n == 0) return TP_OK;
    const int wpr = pick_wpr_q8(rows0 + rows1 + rows2, in_dim);
    const int rpb = kQ8Warps / wpr;
    Q8Segs sg;
    sg.out0 = TP_PTR(float, out0); sg.out1 = TP_PTR(float, out1); sg.out2 = TP_PTR(float, out2);
    sg.w0 = TP_PTR(const uint8_t, w0); sg.w1 = TP_PTR(const uint8_t, w1); sg.w2 = TP_PTR(const uint8_t, w2);
    sg.s0 = TP_PTR(const float, s0); sg.s1 = TP_PTR(const float, s1); sg.s2 = TP_PTR(const float, s2);
    sg.b0 = TP_PTR(const float, bias0); sg.b1 = TP_PTR(const float, bias1); sg.b2 = TP_PTR(const float, bias2);
    sg.rows0 = rows0; sg.rows1 = rows1; sg.rows2 = rows2;
    sg.end0 = ceil_div(rows0, rpb);
    sg.end1 = sg.end0 + (rows1 > 0 ? ceil_div(rows1, rpb) : 0);
    const int blocks = sg.end1 + (rows2 > 0 ? ceil_div(rows2, rpb) : 0);
    const float* xi = TP_PTR(const float, x);
    cudaStream_t s = TP_STREAM(stream);
    return by_rows(n, in_dim, [&](auto nx, auto v) {
        return launch_q8_multi<decltype(nx)::value, decltype(v)::value>(wpr, dim3(blocks), sg, xi, in_dim, s);
    });
}

int tp_gemv_q8_swiglu(uint64_t out, uint64_t x, uint64_t w_gate, uint64_t s_gate, uint64_t w_up, uint64_t s_up, int n,
                      int out_dim, int in_dim, uint64_t stream) {
    const char* fn = "tp_gemv_q8_swiglu";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(x != 0 && (x & 15) == 0, fn, "x (16-byte aligned)");
    TP_REQUIRE(w_gate != 0 && s_gate != 0 && (w_gate & 15) == 0, fn, "w_gate/s_gate");
    TP_REQUIRE(w_up != 0 && s_up != 0 && (w_up & 15) == 0, fn, "w_up/s_up");
    TP_REQUIRE(n >= 0 && n <= kQ8MaxRows, fn, "n");
    TP_REQUIRE(out_dim > 0, fn, "out_dim");
    TP_REQUIRE(in_dim > 0 && in_dim % kQ8Block == 0, fn, "in_dim");
    if (n == 0) return TP_OK;
    const int wpr = pick_wpr_q8(out_dim, in_dim);
    float* o = TP_PTR(float, out);
    const float* xi = TP_PTR(const float, x);
    const uint8_t* wg = TP_PTR(const uint8_t, w_gate);
    const uint8_t* wu = TP_PTR(const uint8_t, w_up);
    const float* sg = TP_PTR(const float, s_gate);
    const float* su = TP_PTR(const float, s_up);
    cudaStream_t s = TP_STREAM(stream);
    return by_rows(n, in_dim, [&](auto nx, auto v) {
        return launch_q8_swiglu<decltype(nx)::value, decltype(v)::value>(wpr, o, xi, wg, sg, wu, su, out_dim, in_dim, s);
    });
}

int tp_set_q8_gemv_variant(int variant) {
    if (variant < 1 || variant > 4)
        return tp::fail(TP_ERR_BAD_ARGUMENT, "tp_set_q8_gemv_variant: variant %d (1, 2, 3 or 4)", variant);
    g_q8_variant = variant;
    return TP_OK;
}

int tp_q8_gemv_variant(void) { return g_q8_variant; }

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
