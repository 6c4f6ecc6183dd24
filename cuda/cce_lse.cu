// Cut-Cross-Entropy log-sum-exp (Wijmans et al., ICLR 2025; apple/ml-cross-entropy, forward only):
//   lse[i]          = log sum_v exp(h_i . W_v)
//   target_logit[i] = h_i . W_{t_i}            (NaN when t_i < 0 or t_i >= V)
// for f32 hidden states h [N, D] and a bf16 LM head W [V, D] (row-major, as CudaBackend.weight uploads it),
// without materialising the [N, V] logits: only O(N * splits) floats of workspace.
//
// Main kernel (tensor cores, mma.sync.m16n8k16 bf16 -> f32): a block of 256 threads (8 warps, 2 x 4) owns
// 128 rows of h and one vocabulary split (a contiguous range of 128-wide vocabulary tiles). Per tile it computes
// the 128 x 128 logits over D in chunks of 32 (global -> registers -> shared memory, the next chunk's loads in
// flight during the current chunk's MMAs; h is read as f32 and converted to bf16 on the way into shared memory),
// then folds them into per-thread online-softmax states (SoftmaxState, log2 domain): each thread keeps one
// (max, sum) per row it touches across all tiles of the split, so nothing is reduced per tile. At the end of the
// split the states are merged over the quad (shuffles) and over the 4 column warps (shared memory) and one
// (max, sum) per (split, row) goes to the workspace. The target logit is written by the one thread that computes
// that (row, vocab) element. A small merge kernel then combines the splits per row.
//
// Precision modes:
//   precise = 1: h = hi + lo with hi = bf16(h), lo = bf16(h - hi) (|h - hi - lo| <= 2^-18 |h|); logits =
//                hi.W + lo.W, two MMAs per product, f32 accumulation: about f32 accuracy (W is exact bf16).
//   precise = 0: h rounded to bf16 (round to nearest even), one MMA: exactly what the cuBLAS path of
//                CudaBackend.matmul computes (x converted by tp_f32_to_bf16), twice the MMA throughput.
// Requirements: D % 8 == 0, h and W 16-byte aligned (else TP_ERR_UNSUPPORTED). N, V and D need not be tile
// multiples (rows/vocab/D tails are zero-filled and masked).
//
// Variant 2 (tp_cce_set_variant(2); default stays 1; h rounded to bf16 only, precise = 1 always runs variant 1):
// h is first converted to a bf16 copy in the workspace (cce_h_to_bf16_kernel, the same rounding as variant 1), then
// cce_lse_v2_kernel: a block of 256 threads (8 warps, 2 x 4, warp tile 64 x 64) owns 128 rows of h and a split of
// 256-wide vocabulary tiles. Both operands stream through a 4-stage cp.async pipeline (chunks of 32 along D) into
// dynamic shared memory whose 16-byte chunks are XOR-swizzled by row (64-byte rows: chunk c of row r is stored at
// c ^ ((r >> 1) & 3)), so the ldmatrix.x4 fragment loads are bank-conflict free; fragments of the next k16 step are
// loaded while the current step's 32 mma.sync.m16n8k16 run. The 128 x 256 logits of a tile stay in registers and
// are folded into per-thread log2-domain (max, sum) states as in variant 1; at the end of the split the states are
// merged over the quad and the 4 column warps (shared memory) into the same workspace layout, and the same merge
// kernel finishes. Splits are chosen to fill whole waves of one block per SM (pick_splits_v2).
#include "online_softmax.cuh"

namespace {

using namespace tp;

constexpr int kBM = 128;       // rows of h per block
constexpr int kBN = 128;       // vocabulary rows per tile
constexpr int kBK = 32;        // D per chunk
constexpr int kPad = 8;        // bf16 padding per shared-memory row (conflict-free fragment reads)
constexpr int kLds = kBK + kPad;
constexpr int kThreads = 256;  // 8 warps: 2 (rows, 64 each) x 4 (vocab, 32 each)
constexpr int kMT = 4;         // m16 tiles per warp (64 rows)
constexpr int kNT = 4;         // n8 tiles per warp (32 vocab rows)
constexpr int kMaxSplits = 64;
constexpr float kLn2 = 0.6931471805599453f;

using State = SoftmaxState<1>;

__device__ __forceinline__ void mma_bf16(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); }

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }

// Folds one value (natural-log units) into a state, log2 domain. exp2_diff keeps -inf (masked) out.
__device__ __forceinline__ void absorb_max(State& s, float m2) {
    if (m2 > s.m) s.rescale_to(m2);
}

template <bool PRECISE>
__global__ void __launch_bounds__(kThreads, 1)
cce_lse_kernel(const float* __restrict__ h, const uint16_t* __restrict__ w, const int* __restrict__ targets,
               float* __restrict__ target_out, float* __restrict__ ws_m, float* __restrict__ ws_d, int N, int V,
               int D, int tiles_per_split, int num_tiles) {
    __shared__ __align__(16) uint16_t sA[kBM][kLds];
    __shared__ __align__(16) uint16_t sAlo[PRECISE ? kBM : 1][kLds];
    __shared__ __align__(16) uint16_t sB[kBN][kLds];
    __shared__ float red_m[4][kBM];
    __shared__ float red_d[4][kBM];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int warp_m = warp & 1, warp_n = warp >> 1;
    const int split = blockIdx.x;
    const int row0 = blockIdx.y * kBM;
    const int tile_begin = split * tiles_per_split;
    const int tile_end = min(num_tiles, tile_begin + tiles_per_split);
    const int KC = (D + kBK - 1) / kBK;

    // this thread's rows: m-tile i, half e -> local row warp_m*64 + i*16 + e*8 + g
    int tgt[kMT][2];
    State st[kMT][2];
#pragma unroll
    for (int i = 0; i < kMT; i++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            int r = row0 + warp_m * 64 + i * 16 + e * 8 + g;
            tgt[i][e] = (targets != nullptr && r < N) ? targets[r] : -1;
            st[i][e].init();
        }

    float acc[kMT][kNT][4];
#pragma unroll
    for (int i = 0; i < kMT; i++)
#pragma unroll
        for (int j = 0; j < kNT; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;

    // register staging of one chunk: h 128 x 32 f32 = 4 float4 per thread, W 128 x 32 bf16 = 2 uint4 per thread
    float4 ph[4];
    uint4 pw[2];
    auto load_chunk = [&](int tile, int kc) {
        const int k0 = kc * kBK;
#pragma unroll
        for (int q = 0; q < 4; q++) {
            int idx = tid + q * kThreads;
            int r = idx >> 3, c = k0 + (idx & 7) * 4;
            int gr = row0 + r;
            ph[q] = (gr < N && c < D) ? __ldg(reinterpret_cast<const float4*>(h + (int64_t)gr * D + c))
                                      : make_float4(0.f, 0.f, 0.f, 0.f);
        }
        const int v0 = tile * kBN;
#pragma unroll
        for (int q = 0; q < 2; q++) {
            int idx = tid + q * kThreads;
            int r = idx >> 2, c = k0 + (idx & 3) * 8;
            int gv = v0 + r;
            pw[q] = (gv < V && c < D) ? __ldg(reinterpret_cast<const uint4*>(w + (int64_t)gv * D + c))
                                      : make_uint4(0u, 0u, 0u, 0u);
        }
    };
    auto store_chunk = [&]() {
#pragma unroll
        for (int q = 0; q < 4; q++) {
            int idx = tid + q * kThreads;
            int r = idx >> 3, c = (idx & 7) * 4;
            float x[4] = {ph[q].x, ph[q].y, ph[q].z, ph[q].w};
            uint16_t hi[4], lo[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                hi[u] = f32_to_bf16_bits(x[u]);
                if (PRECISE) lo[u] = f32_to_bf16_bits(x[u] - bf16_bits_to_f32(hi[u]));
            }
            *reinterpret_cast<uint2*>(&sA[r][c]) = make_uint2(pack_bf16(hi[0], hi[1]), pack_bf16(hi[2], hi[3]));
            if (PRECISE)
                *reinterpret_cast<uint2*>(&sAlo[r][c]) = make_uint2(pack_bf16(lo[0], lo[1]), pack_bf16(lo[2], lo[3]));
        }
#pragma unroll
        for (int q = 0; q < 2; q++) {
            int idx = tid + q * kThreads;
            int r = idx >> 2, c = (idx & 3) * 8;
            *reinterpret_cast<uint4*>(&sB[r][c]) = pw[q];
        }
    };

    const int iters = (tile_end - tile_begin) * KC;
    if (iters > 0) load_chunk(tile_begin, 0);
    for (int it = 0; it < iters; it++) {
        const int tile = tile_begin + it / KC, kc = it % KC;
        __syncthreads();  // everyone is done reading the previous chunk
        store_chunk();
        __syncthreads();
        if (it + 1 < iters) load_chunk(tile_begin + (it + 1) / KC, (it + 1) % KC);

#pragma unroll
        for (int ks = 0; ks < kBK; ks += 16) {
            uint32_t b[kNT][2];
#pragma unroll
            for (int j = 0; j < kNT; j++) {
                int n = warp_n * 32 + j * 8 + g;
                b[j][0] = *reinterpret_cast<const uint32_t*>(&sB[n][ks + 2 * t4]);
                b[j][1] = *reinterpret_cast<const uint32_t*>(&sB[n][ks + 2 * t4 + 8]);
            }
#pragma unroll
            for (int i = 0; i < kMT; i++) {
                int m = warp_m * 64 + i * 16 + g;
                uint32_t a0 = *reinterpret_cast<const uint32_t*>(&sA[m][ks + 2 * t4]);
                uint32_t a1 = *reinterpret_cast<const uint32_t*>(&sA[m + 8][ks + 2 * t4]);
                uint32_t a2 = *reinterpret_cast<const uint32_t*>(&sA[m][ks + 2 * t4 + 8]);
                uint32_t a3 = *reinterpret_cast<const uint32_t*>(&sA[m + 8][ks + 2 * t4 + 8]);
#pragma unroll
                for (int j = 0; j < kNT; j++) mma_bf16(acc[i][j], a0, a1, a2, a3, b[j][0], b[j][1]);
                if (PRECISE) {
                    uint32_t l0 = *reinterpret_cast<const uint32_t*>(&sAlo[m][ks + 2 * t4]);
                    uint32_t l1 = *reinterpret_cast<const uint32_t*>(&sAlo[m + 8][ks + 2 * t4]);
                    uint32_t l2 = *reinterpret_cast<const uint32_t*>(&sAlo[m][ks + 2 * t4 + 8]);
                    uint32_t l3 = *reinterpret_cast<const uint32_t*>(&sAlo[m + 8][ks + 2 * t4 + 8]);
#pragma unroll
                    for (int j = 0; j < kNT; j++) mma_bf16(acc[i][j], l0, l1, l2, l3, b[j][0], b[j][1]);
                }
            }
        }

        if (kc == KC - 1) {
            // epilogue of a vocabulary tile: fold the 128 x 128 logits into the per-thread states
            const int vbase = tile * kBN + warp_n * 32 + 2 * t4;  // + j*8 + (q & 1)
#pragma unroll
            for (int i = 0; i < kMT; i++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float x2[kNT * 2];
                    float mx = kNegInf;
#pragma unroll
                    for (int j = 0; j < kNT; j++)
#pragma unroll
                        for (int u = 0; u < 2; u++) {
                            const int col = vbase + j * 8 + u;
                            const float logit = acc[i][j][e * 2 + u];
                            if (col == tgt[i][e]) {
                                int r = row0 + warp_m * 64 + i * 16 + e * 8 + g;
                                target_out[r] = logit;  // tgt >= 0 only for r < N
                            }
                            float v = col < V ? logit * kLog2e : kNegInf;
                            x2[j * 2 + u] = v;
                            mx = fmaxf(mx, v);
                        }
                    State& s = st[i][e];
                    absorb_max(s, mx);
                    float sum = 0.f;
#pragma unroll
                    for (int q = 0; q < kNT * 2; q++) sum += exp2_diff(x2[q], s.m);
                    s.d += sum;
                }
#pragma unroll
            for (int i = 0; i < kMT; i++)
#pragma unroll
                for (int j = 0; j < kNT; j++)
#pragma unroll
                    for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;
        }
    }

    // merge over the quad (the 4 lanes sharing a row), then over the 4 column warps
#pragma unroll
    for (int i = 0; i < kMT; i++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            st[i][e].merge_xor(1);
            st[i][e].merge_xor(2);
            if (t4 == 0) {
                int r = warp_m * 64 + i * 16 + e * 8 + g;
                red_m[warp_n][r] = st[i][e].m;
                red_d[warp_n][r] = st[i][e].d;
            }
        }
    __syncthreads();
    if (tid < kBM) {
        State s;
        s.init();
        float dummy[1] = {0.f};
#pragma unroll
        for (int p = 0; p < 4; p++) s.merge(red_m[p][tid], red_d[p][tid], dummy);
        int r = row0 + tid;
        if (r < N) {
            ws_m[(int64_t)split * N + r] = s.m;
            ws_d[(int64_t)split * N + r] = s.d;
        }
    }
}

// lse[i] from the per-split states; target_out[i] = NaN for ignored / out-of-range targets.
__global__ void cce_merge_kernel(float* __restrict__ lse, float* __restrict__ target_out,
                                 const int* __restrict__ targets, const float* __restrict__ ws_m,
                                 const float* __restrict__ ws_d, int N, int V, int splits) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N) return;
    State s;
    s.init();
    float dummy[1] = {0.f};
    for (int p = 0; p < splits; p++) s.merge(ws_m[(int64_t)p * N + i], ws_d[(int64_t)p * N + i], dummy);
    lse[i] = s.lse2() * kLn2;
    if (target_out != nullptr) {
        int t = targets != nullptr ? targets[i] : -1;
        if (t < 0 || t >= V) target_out[i] = __int_as_float(0x7fc00000);
    }
}

// Naive log-softmax statistics of materialised logits (the baseline of the benchmark): one block per row,
// row max, then sum of exp, then the target gathered.
__global__ void lse_rows_kernel(float* __restrict__ lse, float* __restrict__ target_out,
                                const float* __restrict__ logits, const int* __restrict__ targets, int V) {
    __shared__ float red[32];
    const int64_t row = blockIdx.x;
    const float* x = logits + row * V;
    float mx = kNegInf;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
    mx = warp_max(mx);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = warp_max(lane < nw ? red[lane] : kNegInf);
    float s = 0.f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) s += __expf(x[v] - mx);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        lse[row] = mx + logf(s);
        if (target_out != nullptr) {
            int t = targets != nullptr ? targets[row] : -1;
            target_out[row] = (t >= 0 && t < V) ? x[t] : __int_as_float(0x7fc00000);
        }
    }
}

int pick_splits(int N, int V) {
    int row_blocks = (int)ceil_div(N, kBM);
    int tiles = (int)ceil_div(V, kBN);
    // about 4 blocks per SM slot (1 block of 8 warps per SM) for even waves, within [1, kMaxSplits] and the tiles
    int want = (int)ceil_div(4 * sm_count(), row_blocks);
    return max(1, min(want, min(tiles, kMaxSplits)));
}


// ---- variant 2: cp.async pipeline, swizzled shared memory, ldmatrix, 128 x 256 block tile ----------------------

constexpr int kV2BM = 128;                            // rows of h per block
constexpr int kV2BN = 256;                            // vocabulary rows per tile
constexpr int kV2Threads = 256;                       // 8 warps: 2 (rows, 64 each) x 4 (vocab, 64 each)
constexpr int kV2MT = 4;                              // m16 tiles per warp
constexpr int kV2NT = 8;                              // n8 tiles per warp

// The pipeline shape of a variant-2-family kernel: D per stage (BK) and stages. Variant 2: 32 x 4 (96.5 KiB of
// shared memory, fits every sm_80+ opt-in limit); variants 3 and 4: 64 x 3 and 64 x 4 (144.5 / 192.5 KiB, half as
// many block barriers and cp.async groups per FLOP; devices with at least that much opt-in shared memory).
template <int BK, int STAGES>
struct V2Cfg {
    static constexpr int kBK = BK;
    static constexpr int kStages = STAGES;
    static constexpr int kKS = BK / 16;                       // k16 steps per stage
    static constexpr int kChunks = BK / 8;                    // 16-byte chunks per shared-memory row
    static constexpr int kRowBytes = BK * 2;
    static constexpr int kSwzShift = kChunks == 4 ? 1 : 0;   // rows sharing a 128-byte line get different XOR keys
    static constexpr int kABytes = kV2BM * kRowBytes;
    static constexpr int kBBytes = kV2BN * kRowBytes;
    static constexpr int kStageBytes = kABytes + kBBytes;
    static constexpr int kPipeBytes = STAGES * kStageBytes;
    static constexpr int kSmemBytes = kPipeBytes + kV2BM * 4;  // + the block's targets
    static_assert(kChunks == 4 || kChunks == 8, "swizzle for 64- or 128-byte rows");
    static_assert(kKS >= 2, "the last k16 step of a stage reads fragments loaded before the barrier");
    static_assert(kV2BM * kChunks % kV2Threads == 0 && kV2BN * kChunks % kV2Threads == 0, "whole chunks per thread");
    static_assert(kPipeBytes >= 2 * 4 * kV2BM * 4, "the pipeline buffers hold the final 4-way merge");
    static_assert(STAGES >= 2, "stages");
    static_assert(kSmemBytes <= 227 * 1024, "fits the sm_90 opt-in limit");

    // byte offset of 16-byte chunk c of row r within an operand tile
    __device__ static __forceinline__ uint32_t swz(int r, int c) {
        return (uint32_t)(r * kRowBytes + ((c ^ ((r >> kSwzShift) & (kChunks - 1))) << 4));
    }
};
using V2C2 = V2Cfg<32, 4>;
using V2C3 = V2Cfg<64, 3>;
using V2C4 = V2Cfg<64, 4>;
static_assert(V2C2::kSmemBytes <= 99 * 1024, "variant 2 fits the opt-in limit of sm_86/sm_89 (99 KiB)");

__device__ __forceinline__ void cp_async16_zfill(uint32_t smem, const void* gmem, bool ok) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem), "l"(gmem), "r"(ok ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ __forceinline__ void ldsm_x4(uint32_t a, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(a) : "memory");
}

// h f32 [count] -> bf16 bits (round to nearest even, as variant 1 stores it); count % 8 == 0, 16-byte aligned
__global__ void cce_h_to_bf16_kernel(uint16_t* __restrict__ out, const float* __restrict__ h, int64_t count8) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count8; i += (int64_t)gridDim.x * blockDim.x) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(h) + 2 * i);
        const float4 b = __ldg(reinterpret_cast<const float4*>(h) + 2 * i + 1);
        uint4 o;
        o.x = pack_bf16(f32_to_bf16_bits(a.x), f32_to_bf16_bits(a.y));
        o.y = pack_bf16(f32_to_bf16_bits(a.z), f32_to_bf16_bits(a.w));
        o.z = pack_bf16(f32_to_bf16_bits(b.x), f32_to_bf16_bits(b.y));
        o.w = pack_bf16(f32_to_bf16_bits(b.z), f32_to_bf16_bits(b.w));
        reinterpret_cast<uint4*>(out)[i] = o;
    }
}

template <class C>
__global__ void __launch_bounds__(kV2Threads, 1)
cce_lse_v2_kernel(const uint16_t* __restrict__ hb, const uint16_t* __restrict__ w, const int* __restrict__ targets,
                  float* __restrict__ target_out, float* __restrict__ ws_m, float* __restrict__ ws_d, int N, int V,
                  int D, int tiles_per_split, int num_tiles) {
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sbase = (uint32_t)__cvta_generic_to_shared(smem);
    int* s_tgt = reinterpret_cast<int*>(smem + C::kPipeBytes);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int warp_m = warp & 1, warp_n = warp >> 1;
    const int split = blockIdx.x;
    const int row0 = blockIdx.y * kV2BM;
    const int tile_begin = split * tiles_per_split;
    const int tile_end = min(num_tiles, tile_begin + tiles_per_split);
    const int KC = (D + C::kBK - 1) / C::kBK;
    const int iters = max(0, tile_end - tile_begin) * KC;

    if (tid < kV2BM) {
        const int r = row0 + tid;
        s_tgt[tid] = (targets != nullptr && r < N) ? targets[r] : -1;  // visible after the loop's first barrier
    }

    // ---- producer: chunk (tile, kc) of both operands into stage `stage` (zero-filled past N, V and D)
    int ld_tile = tile_begin, ld_kc = 0, ld_stage = 0, ld_count = 0;
    auto issue = [&]() {
        if (ld_count < iters) {
            const uint32_t sa = sbase + (uint32_t)(ld_stage * C::kStageBytes);
            const uint32_t sb = sa + C::kABytes;
            const int k0 = ld_kc * C::kBK;
#pragma unroll
            for (int q = 0; q < kV2BM * C::kChunks / kV2Threads; q++) {
                const int idx = tid + q * kV2Threads, r = idx / C::kChunks, c = idx % C::kChunks;
                const int gr = row0 + r, k = k0 + c * 8;
                const bool ok = gr < N && k < D;
                cp_async16_zfill(sa + C::swz(r, c), ok ? (const void*)(hb + (int64_t)gr * D + k) : (const void*)hb, ok);
            }
            const int v0 = ld_tile * kV2BN;
#pragma unroll
            for (int q = 0; q < kV2BN * C::kChunks / kV2Threads; q++) {
                const int idx = tid + q * kV2Threads, r = idx / C::kChunks, c = idx % C::kChunks;
                const int gv = v0 + r, k = k0 + c * 8;
                const bool ok = gv < V && k < D;
                cp_async16_zfill(sb + C::swz(r, c), ok ? (const void*)(w + (int64_t)gv * D + k) : (const void*)w, ok);
            }
            ld_count++;
            ld_stage = ld_stage + 1 == C::kStages ? 0 : ld_stage + 1;
            if (++ld_kc == KC) {
                ld_kc = 0;
                ld_tile++;
            }
        }
        cp_async_commit();  // possibly empty: keeps the group count uniform
    };

    // ---- ldmatrix lane offsets per k16 step. A (m16 tile i): matrices (rows 0-7 | 8-15) x (k 0-7 | 8-15) give
    // a0..a3; lane row (lane & 15), chunk 2 ks + (lane >> 4). B (n8 tiles 2 jp, 2 jp + 1): matrices (tile) x (k half)
    // give b[2jp][0], b[2jp][1], b[2jp+1][0], b[2jp+1][1]; lane row ((lane >> 4) << 3) + (lane & 7), chunk
    // 2 ks + ((lane >> 3) & 1). The swizzle key depends on row & 7 only, so the 16-row steps (i, jp) add a constant.
    uint32_t a_off[C::kKS], b_off[C::kKS];
    {
        const int a_row = warp_m * 64 + (lane & 15), a_ch = lane >> 4;
        const int b_row = warp_n * 64 + ((lane >> 4) << 3) + (lane & 7), b_ch = (lane >> 3) & 1;
#pragma unroll
        for (int ks = 0; ks < C::kKS; ks++) {
            a_off[ks] = C::swz(a_row, 2 * ks + a_ch);
            b_off[ks] = C::kABytes + C::swz(b_row, 2 * ks + b_ch);
        }
    }

    float acc[kV2MT][kV2NT][4];
#pragma unroll
    for (int i = 0; i < kV2MT; i++)
#pragma unroll
        for (int j = 0; j < kV2NT; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;
    State st[kV2MT][2];
#pragma unroll
    for (int i = 0; i < kV2MT; i++) st[i][0].init(), st[i][1].init();

    uint32_t af[2][kV2MT][4], bfr[2][kV2NT][2];
    auto load_frags = [&](int buf, uint32_t sa, int ks) {
#pragma unroll
        for (int i = 0; i < kV2MT; i++)
            ldsm_x4(sa + a_off[ks] + i * 16 * C::kRowBytes, af[buf][i][0], af[buf][i][1], af[buf][i][2], af[buf][i][3]);
#pragma unroll
        for (int jp = 0; jp < kV2NT / 2; jp++)
            ldsm_x4(sa + b_off[ks] + jp * 16 * C::kRowBytes, bfr[buf][2 * jp][0], bfr[buf][2 * jp][1],
                    bfr[buf][2 * jp + 1][0], bfr[buf][2 * jp + 1][1]);
    };

    // Pipeline: chunk c lives in stage c % S. Before the MMAs of chunk `it` run out, the last k16 step waits for
    // chunk it + 1 (cp.async group), passes the block barrier (everyone has also finished reading chunk it - 1's
    // stage, which the next iteration refills) and loads chunk it + 1's first fragments while chunk it's last MMAs
    // are issued; the MMAs issued before the barrier keep the tensor cores busy across it.
#pragma unroll
    for (int s = 0; s < C::kStages - 1; s++) issue();
    if (iters > 0) {
        cp_async_wait<C::kStages - 2>();  // S - 1 groups committed: chunk 0 is complete
        __syncthreads();
        load_frags(0, sbase, 0);
    }

    int tile = tile_begin, kc = 0, stage = 0;
    for (int it = 0; it < iters; it++) {
        const uint32_t sa = sbase + (uint32_t)(stage * C::kStageBytes);
        stage = stage + 1 == C::kStages ? 0 : stage + 1;
        issue();  // chunk it + S - 1 into the stage of chunk it - 1 (read before the last barrier)
#pragma unroll
        for (int ks = 0; ks < C::kKS; ks++) {
            if (ks + 1 < C::kKS) {
                load_frags((ks + 1) & 1, sa, ks + 1);
            } else if (it + 1 < iters) {
                cp_async_wait<C::kStages - 2>();  // S + it groups committed: chunk it + 1 is complete
                __syncthreads();                 // ... for every thread; chunk it's stage is no longer read after this
                load_frags((ks + 1) & 1, sbase + (uint32_t)(stage * C::kStageBytes), 0);
            }
#pragma unroll
            for (int i = 0; i < kV2MT; i++)
#pragma unroll
                for (int j = 0; j < kV2NT; j++)
                    mma_bf16(acc[i][j], af[ks & 1][i][0], af[ks & 1][i][1], af[ks & 1][i][2], af[ks & 1][i][3],
                             bfr[ks & 1][j][0], bfr[ks & 1][j][1]);
        }

        if (++kc == KC) {
            // epilogue of a vocabulary tile: fold the 128 x 256 logits into the per-thread states
            const int colbase = tile * kV2BN + warp_n * 64 + 2 * t4;  // column of acc[.][j][e*2+u] = colbase + j*8 + u
            const int lim = V - colbase;                              // columns j*8+u >= lim are past the vocabulary
#pragma unroll
            for (int i = 0; i < kV2MT; i++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int rl = warp_m * 64 + i * 16 + e * 8 + g;
                    const int trel = s_tgt[rl] - colbase;
                    if ((unsigned)trel < 64u) {
#pragma unroll
                        for (int j = 0; j < kV2NT; j++)
#pragma unroll
                            for (int u = 0; u < 2; u++)
                                if (trel == j * 8 + u) target_out[row0 + rl] = acc[i][j][e * 2 + u];  // rl < N
                    }
                    float x2[kV2NT * 2];
                    float mx = kNegInf;
#pragma unroll
                    for (int j = 0; j < kV2NT; j++)
#pragma unroll
                        for (int u = 0; u < 2; u++) {
                            const float v = j * 8 + u < lim ? acc[i][j][e * 2 + u] * kLog2e : kNegInf;
                            x2[j * 2 + u] = v;
                            mx = fmaxf(mx, v);
                        }
                    State& s = st[i][e];
                    absorb_max(s, mx);
                    float sum = 0.f;
#pragma unroll
                    for (int q = 0; q < kV2NT * 2; q++) sum += exp2_diff(x2[q], s.m);
                    s.d += sum;
                }
#pragma unroll
            for (int i = 0; i < kV2MT; i++)
#pragma unroll
                for (int j = 0; j < kV2NT; j++)
#pragma unroll
                    for (int q = 0; q < 4; q++) acc[i][j][q] = 0.f;
            kc = 0;
            tile++;
        }
    }
    cp_async_wait<0>();  // only empty groups can be left; the pipeline buffers are reused below
    __syncthreads();

    // merge over the quad (the 4 lanes sharing a row), then over the 4 column warps
    float* red_m = reinterpret_cast<float*>(smem);  // [4][kV2BM]
    float* red_d = red_m + 4 * kV2BM;
#pragma unroll
    for (int i = 0; i < kV2MT; i++)
#pragma unroll
        for (int e = 0; e < 2; e++) {
            st[i][e].merge_xor(1);
            st[i][e].merge_xor(2);
            if (t4 == 0) {
                const int r = warp_m * 64 + i * 16 + e * 8 + g;
                red_m[warp_n * kV2BM + r] = st[i][e].m;
                red_d[warp_n * kV2BM + r] = st[i][e].d;
            }
        }
    __syncthreads();
    if (tid < kV2BM) {
        State s;
        s.init();
        float dummy[1] = {0.f};
#pragma unroll
        for (int p = 0; p < 4; p++) s.merge(red_m[p * kV2BM + tid], red_d[p * kV2BM + tid], dummy);
        const int r = row0 + tid;
        if (r < N) {
            ws_m[(int64_t)split * N + r] = s.m;
            ws_d[(int64_t)split * N + r] = s.d;
        }
    }
}

// Splits for variant 2: one resident block per SM, so the time is about (waves) x (tiles per block); the smallest
// such estimate wins (fewer splits on ties: less workspace traffic, larger merge-free runs).
int pick_splits_v2(int N, int V) {
    const int64_t row_blocks = ceil_div(N, kV2BM);
    const int tiles = (int)ceil_div(V, kV2BN);
    const int64_t sms = sm_count();
    int best = 1;
    int64_t best_cost = INT64_MAX;
    for (int s = 1; s <= min(tiles, kMaxSplits); s++) {
        const int per = (int)ceil_div(tiles, s);
        const int used = (int)ceil_div(tiles, per);
        if (used != s) continue;  // the same partition as a smaller s
        const int64_t cost = ceil_div(row_blocks * used, sms) * per;
        if (cost < best_cost) best_cost = cost, best = s;
    }
    return best;
}

#define TP_CUDA_OK(call)                 \
    do {                                 \
        const int tp_rc_ = (call);       \
        if (tp_rc_ != TP_OK) return tp_rc_; \
    } while (0)

int g_cce_variant = 2;  // variant 2 since it passed CudaCceParityTest on an H100 (3.2x faster than 1)

uint64_t v1_workspace_bytes(int n) { return n <= 0 ? 0 : (uint64_t)n * kMaxSplits * 2 * sizeof(float); }

// *ok = 1 when the kernel of config C can launch on the current device (its dynamic shared memory opt-in done), 0
// when the device cannot give it enough shared memory. Returns TP_OK or the CUDA failure.
template <class C>
int v2_ready(int* ok) {
    static int state[64] = {0};  // per device: 0 unknown, 1 ready, 2 unsupported
    int dev = 0;
    TP_CUDA(cudaGetDevice(&dev));
    if (dev >= 0 && dev < 64 && state[dev] != 0) {
        *ok = state[dev] == 1;
        return TP_OK;
    }
    int optin = 0;
    TP_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    *ok = optin >= C::kSmemBytes;
    if (*ok)
        TP_CUDA(cudaFuncSetAttribute(cce_lse_v2_kernel<C>, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmemBytes));
    if (dev >= 0 && dev < 64) state[dev] = *ok ? 1 : 2;
    return TP_OK;
}

template <class C>
int cce_lse_v2(uint64_t lse, uint64_t target_logit, uint64_t hidden, uint64_t lm_head, uint64_t targets, int n,
               int vocab, int dim, uint64_t workspace, cudaStream_t s) {
    const char* fn = "tp_cce_lse";
    const int splits = pick_splits_v2(n, vocab);
    const int tiles = (int)ceil_div(vocab, kV2BN);
    const int per = (int)ceil_div(tiles, splits);
    const int used = (int)ceil_div(tiles, per);
    float* ws_m = TP_PTR(float, workspace);
    float* ws_d = ws_m + (int64_t)used * n;
    uint16_t* hb = reinterpret_cast<uint16_t*>(TP_PTR(unsigned char, workspace) + v1_workspace_bytes(n));
    const int* tg = TP_PTR(const int, targets);
    float* to = TP_PTR(float, target_logit);
    const int* kt = to != nullptr ? tg : nullptr;
    dim3 grid((unsigned)used, (unsigned)ceil_div(n, kV2BM));
    if (grid.y > 65535u) return fail(TP_ERR_UNSUPPORTED, "%s: n %d too large (at most %d rows)", fn, n, 65535 * kV2BM);
    const int64_t count8 = (int64_t)n * dim / 8;
    int64_t cblocks = ceil_div(count8, 256);
    if (cblocks > 8 * (int64_t)sm_count()) cblocks = 8 * (int64_t)sm_count();
    cce_h_to_bf16_kernel<<<(unsigned)cblocks, 256, 0, s>>>(hb, TP_PTR(const float, hidden), count8);
    TP_LAUNCHED("cce_h_to_bf16_kernel");
    cce_lse_v2_kernel<C><<<grid, kV2Threads, C::kSmemBytes, s>>>(hb, TP_PTR(const uint16_t, lm_head), kt, to, ws_m,
                                                                  ws_d, n, vocab, dim, per, tiles);
    TP_LAUNCHED("cce_lse_v2_kernel");
    cce_merge_kernel<<<(unsigned)ceil_div(n, 256), 256, 0, s>>>(TP_PTR(float, lse), to, tg, ws_m, ws_d, n, vocab,
                                                                used);
    TP_LAUNCHED("cce_merge_kernel");
    return TP_OK;
}

// Variant v of the tensor-core family (2, 3 or 4) if the device can run it, else the next smaller shape (4 -> 3 ->
// 2); *launched = 0 when none fits (variant 1 then runs).
int cce_lse_family(int v, int* launched, uint64_t lse, uint64_t target_logit, uint64_t hidden, uint64_t lm_head,
                   uint64_t targets, int n, int vocab, int dim, uint64_t workspace, cudaStream_t s) {
    int ok = 0;
    *launched = 1;
    if (v >= 4) {
        TP_CUDA_OK(v2_ready<V2C4>(&ok));
        if (ok) return cce_lse_v2<V2C4>(lse, target_logit, hidden, lm_head, targets, n, vocab, dim, workspace, s);
    }
    if (v >= 3) {
        TP_CUDA_OK(v2_ready<V2C3>(&ok));
        if (ok) return cce_lse_v2<V2C3>(lse, target_logit, hidden, lm_head, targets, n, vocab, dim, workspace, s);
    }
    TP_CUDA_OK(v2_ready<V2C2>(&ok));
    if (ok) return cce_lse_v2<V2C2>(lse, target_logit, hidden, lm_head, targets, n, vocab, dim, workspace, s);
    *launched = 0;
    return TP_OK;
}


// ---- chunked log-sum-exp over cuBLAS logits (CudaCce variant "gemm") -----------------------------------------
// The logits of a (rows x cols) chunk are made by cublasGemmEx into a buffer small enough to stay in L2; these
// kernels fold each chunk into a running (max, sum of exp) per row (natural base), so the [N, V] logits never
// exist at once and the tensor-core work is cuBLAS's.

// (m, s) <- the log-sum-exp merge of (m, s) and (m2, s2); empty states have m = -inf and s = 0
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
    const float nm = fmaxf(m, m2);
    if (nm == kNegInf) return;
    s = (m == kNegInf ? 0.f : s * __expf(m - nm)) + (m2 == kNegInf ? 0.f : s2 * __expf(m2 - nm));
    m = nm;
}

constexpr int kChunkWarps = 8;  // rows per block (one warp per row)

__global__ void __launch_bounds__(32 * kChunkWarps)
lse_chunk_kernel(float2* __restrict__ state, float* __restrict__ target_out, const float* __restrict__ logits,
                 const int* __restrict__ targets, int rows, int cols, int ld, int v0, int first) {
    const int lane = threadIdx.x & 31;
    const int row = blockIdx.x * kChunkWarps + (threadIdx.x >> 5);
    if (row >= rows) return;
    const float* x = logits + (int64_t)row * ld;
    float m = kNegInf, s = 0.f;
    const int c4 = cols >> 2;
    for (int c = lane; c < c4; c += 32) {
        const float4 q = reinterpret_cast<const float4*>(x)[c];
        const float nm = fmaxf(m, fmaxf(fmaxf(q.x, q.y), fmaxf(q.z, q.w)));
        if (nm == kNegInf) continue;
        s = (m == kNegInf ? 0.f : s * __expf(m - nm)) + __expf(q.x - nm) + __expf(q.y - nm) + __expf(q.z - nm) +
            __expf(q.w - nm);
        m = nm;
    }
    for (int c = 4 * c4 + lane; c < cols; c += 32) lse_merge(m, s, x[c], 1.f);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m, s, m2, s2);
    }
    if (lane != 0) return;
    if (first) {
        state[row] = make_float2(m, s);
    } else {
        float2 st = state[row];
        lse_merge(st.x, st.y, m, s);
        state[row] = st;
    }
    if (targets != nullptr && target_out != nullptr) {
        const int t = targets[row];
        if (t >= v0 && t - v0 < cols) target_out[row] = x[t - v0];
    }
}

__global__ void lse_chunk_finish_kernel(float* __restrict__ lse, float* __restrict__ target_out,
                                        const float2* __restrict__ state, const int* __restrict__ targets, int rows,
                                        int vocab) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= rows) return;
    const float2 st = state[r];
    lse[r] = st.x + logf(st.y);
    if (target_out != nullptr) {
        const int t = targets != nullptr ? targets[r] : -1;
        if (t < 0 || t >= vocab) target_out[r] = __int_as_float(0x7fc00000);
    }
}

// hi = bf16(x), lo = bf16(x - hi) (round to nearest even): the precise mode's two GEMM operands
__global__ void f32_split_bf16_kernel(uint16_t* __restrict__ hi, uint16_t* __restrict__ lo,
                                      const float* __restrict__ x, int64_t count) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        const float v = x[i];
        const uint16_t h = f32_to_bf16_bits(v);
        hi[i] = h;
        lo[i] = f32_to_bf16_bits(v - bf16_bits_to_f32(h));
    }
}

}  // namespace

extern "C" {

uint64_t tp_cce_lse_workspace_bytes(int n) { return v1_workspace_bytes(n); }

uint64_t tp_cce_lse_workspace_bytes_for(int n, int dim, int variant) {
    if (variant == 0) variant = g_cce_variant;
    if (n <= 0) return 0;
    uint64_t b = v1_workspace_bytes(n);
    if (variant >= 2 && dim > 0) b += (uint64_t)n * (uint64_t)dim * sizeof(uint16_t);  // bf16 copy of h
    return b;
}

int tp_cce_set_variant(int variant) {
    if (variant < 1 || variant > 4)
        return fail(TP_ERR_BAD_ARGUMENT, "tp_cce_set_variant: bad argument 'variant' (%d: 1, 2, 3 or 4)", variant);
    g_cce_variant = variant;
    return TP_OK;
}

int tp_cce_get_variant(void) { return g_cce_variant; }

int tp_cce_lse_splits(int n, int vocab) {
    if (n <= 0 || vocab <= 0) return 0;
    return g_cce_variant >= 2 ? pick_splits_v2(n, vocab) : pick_splits(n, vocab);
}

int tp_cce_lse(uint64_t lse, uint64_t target_logit, uint64_t hidden, uint64_t lm_head, uint64_t targets, int n,
               int vocab, int dim, int precise, uint64_t workspace, uint64_t workspace_bytes, uint64_t stream) {
    const char* fn = "tp_cce_lse";
    TP_REQUIRE(lse != 0, fn, "lse");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(vocab > 0, fn, "vocab");
    TP_REQUIRE(dim > 0, fn, "dim");
    if (n == 0) return TP_OK;
    TP_REQUIRE(hidden != 0, fn, "hidden");
    TP_REQUIRE(lm_head != 0, fn, "lm_head");
    TP_REQUIRE(workspace != 0, fn, "workspace");
    TP_REQUIRE(workspace_bytes >= tp_cce_lse_workspace_bytes(n), fn, "workspace_bytes");
    if (dim % 8 != 0 || (hidden & 15) != 0 || (lm_head & 15) != 0)
        return fail(TP_ERR_UNSUPPORTED, "%s: needs dim %% 8 == 0 and 16-byte aligned hidden and lm_head (dim %d)",
                    fn, dim);
    cudaStream_t s = TP_STREAM(stream);
    const int variant = g_cce_variant;
    if (variant >= 2 && !precise) {
        const uint64_t need = tp_cce_lse_workspace_bytes_for(n, dim, variant);
        if (workspace_bytes < need)
            return fail(TP_ERR_BAD_ARGUMENT,
                        "%s: variant %d needs tp_cce_lse_workspace_bytes_for(n, dim, %d) = %llu workspace bytes, got %llu",
                        fn, variant, variant, (unsigned long long)need, (unsigned long long)workspace_bytes);
        int launched = 0;
        const int rc = cce_lse_family(variant, &launched, lse, target_logit, hidden, lm_head, targets, n, vocab, dim,
                                      workspace, s);
        if (rc != TP_OK || launched) return rc;
        // else: the device cannot give the kernel its shared memory: variant 1 below
    }
    const int splits = pick_splits(n, vocab);
    const int tiles = (int)ceil_div(vocab, kBN);
    const int per = (int)ceil_div(tiles, splits);
    const int used = (int)ceil_div(tiles, per);  // splits that own at least one tile
    float* ws_m = TP_PTR(float, workspace);
    float* ws_d = ws_m + (int64_t)used * n;
    const float* hp = TP_PTR(const float, hidden);
    const uint16_t* wp = TP_PTR(const uint16_t, lm_head);
    const int* tg = TP_PTR(const int, targets);
    float* to = TP_PTR(float, target_logit);
    // without a target_logit output the kernel must never write one: pass no targets to it
    const int* kt = to != nullptr ? tg : nullptr;
    dim3 grid((unsigned)used, (unsigned)ceil_div(n, kBM));
    if (grid.y > 65535u) return fail(TP_ERR_UNSUPPORTED, "%s: n %d too large (at most %d rows)", fn, n, 65535 * kBM);
    if (precise)
        cce_lse_kernel<true><<<grid, kThreads, 0, s>>>(hp, wp, kt, to, ws_m, ws_d, n, vocab, dim, per, tiles);
    else
        cce_lse_kernel<false><<<grid, kThreads, 0, s>>>(hp, wp, kt, to, ws_m, ws_d, n, vocab, dim, per, tiles);
    TP_LAUNCHED("cce_lse_kernel");
    cce_merge_kernel<<<(unsigned)ceil_div(n, 256), 256, 0, s>>>(TP_PTR(float, lse), to, tg, ws_m, ws_d, n, vocab,
                                                                used);
    TP_LAUNCHED("cce_merge_kernel");
    return TP_OK;
}

int tp_lse_rows(uint64_t lse, uint64_t target_logit, uint64_t logits, uint64_t targets, int n, int vocab,
                uint64_t stream) {
    const char* fn = "tp_lse_rows";
    TP_REQUIRE(lse != 0, fn, "lse");
    TP_REQUIRE(logits != 0, fn, "logits");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(vocab > 0, fn, "vocab");
    if (n == 0) return TP_OK;
    lse_rows_kernel<<<(unsigned)n, 512, 0, TP_STREAM(stream)>>>(TP_PTR(float, lse), TP_PTR(float, target_logit),
                                                              TP_PTR(const float, logits),
                                                              TP_PTR(const int, targets), vocab);
    TP_LAUNCHED("lse_rows_kernel");
    return TP_OK;
}

int tp_lse_chunk(uint64_t state, uint64_t target_logit, uint64_t logits, uint64_t targets, int rows, int cols,
                 int ld, int v0, int first, uint64_t stream) {
    const char* fn = "tp_lse_chunk";
    TP_REQUIRE(state != 0, fn, "state");
    TP_REQUIRE(logits != 0 && logits % 16 == 0, fn, "logits");
    TP_REQUIRE(rows >= 0, fn, "rows");
    TP_REQUIRE(cols > 0, fn, "cols");
    TP_REQUIRE(ld >= cols && ld % 4 == 0, fn, "ld");
    TP_REQUIRE(v0 >= 0, fn, "v0");
    TP_REQUIRE(first == 0 || first == 1, fn, "first");
    if (rows == 0) return TP_OK;
    lse_chunk_kernel<<<(unsigned)ceil_div(rows, kChunkWarps), 32 * kChunkWarps, 0, TP_STREAM(stream)>>>(
        TP_PTR(float2, state), TP_PTR(float, target_logit), TP_PTR(const float, logits), TP_PTR(const int, targets),
        rows, cols, ld, v0, first);
    TP_LAUNCHED("lse_chunk_kernel");
    return TP_OK;
}

int tp_lse_chunk_finish(uint64_t lse, uint64_t target_logit, uint64_t state, uint64_t targets, int rows, int vocab,
                        uint64_t stream) {
    const char* fn = "tp_lse_chunk_finish";
    TP_REQUIRE(lse != 0, fn, "lse");
    TP_REQUIRE(state != 0, fn, "state");
    TP_REQUIRE(rows >= 0, fn, "rows");
    TP_REQUIRE(vocab > 0, fn, "vocab");
    if (rows == 0) return TP_OK;
    lse_chunk_finish_kernel<<<(unsigned)ceil_div(rows, 256), 256, 0, TP_STREAM(stream)>>>(
        TP_PTR(float, lse), TP_PTR(float, target_logit), TP_PTR(const float2, state), TP_PTR(const int, targets),
        rows, vocab);
    TP_LAUNCHED("lse_chunk_finish_kernel");
    return TP_OK;
}

int tp_f32_split_bf16(uint64_t hi, uint64_t lo, uint64_t src, int64_t count, uint64_t stream) {
    const char* fn = "tp_f32_split_bf16";
    TP_REQUIRE(hi != 0, fn, "hi");
    TP_REQUIRE(lo != 0, fn, "lo");
    TP_REQUIRE(src != 0, fn, "src");
    TP_REQUIRE(count >= 0, fn, "count");
    if (count == 0) return TP_OK;
    const int64_t blocks = std::min<int64_t>(ceil_div(count, (int64_t)256), 4096);
    f32_split_bf16_kernel<<<(unsigned)blocks, 256, 0, TP_STREAM(stream)>>>(TP_PTR(uint16_t, hi), TP_PTR(uint16_t, lo),
                                                                         TP_PTR(const float, src), count);
    TP_LAUNCHED("f32_split_bf16_kernel");
    return TP_OK;
}

}  // extern "C"
