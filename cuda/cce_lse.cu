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

}  // namespace

extern "C" {

uint64_t tp_cce_lse_workspace_bytes(int n) { return n <= 0 ? 0 : (uint64_t)n * kMaxSplits * 2 * sizeof(float); }

int tp_cce_lse_splits(int n, int vocab) {
    if (n <= 0 || vocab <= 0) return 0;
    return pick_splits(n, vocab);
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

}  // extern "C"
