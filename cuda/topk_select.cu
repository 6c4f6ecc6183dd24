// Argmax and top-k over a vocabulary row without a full sort, so only k ids/values cross to the host.
// argmax: per-block (value, index) reduction, then one block reduces the partials.
// top-k:  each block bitonic-sorts a chunk of CH = 2048 (value, index) pairs in shared memory and keeps its
//         first k; merge passes repeat that over the candidates until one block remains (k <= 1024 keeps
//         every pass shrinking the candidate set by at least 2x). Order: value descending, then index ascending.
// PDL (tp_set_pdl): every kernel waits for its predecessor at its first line (nothing to prefetch).
#include "common.cuh"

namespace {

using namespace tp;

constexpr int kCH = 2048;
constexpr int kSortThreads = 512;
constexpr int kMaxK = 1024;
constexpr int kArgmaxThreads = 512;
constexpr int kArgmaxBlocks = 64;

// a precedes b: larger value first, then lower index; NaN never precedes a number.
__device__ __forceinline__ bool before(float va, int ia, float vb, int ib) {
    return va > vb || (va == vb && ia < ib) || (vb != vb && va == va);
}

__global__ void __launch_bounds__(kArgmaxThreads)
argmax_partial_kernel(const float* __restrict__ x, int count, float* __restrict__ pv, int* __restrict__ pi) {
    pdl_wait();
    pdl_launch_dependents();
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < count; i += gridDim.x * blockDim.x) {
        float v = x[i];
        if (before(v, i, bv, bi)) { bv = v; bi = i; }
    }
    __shared__ float sv[kArgmaxThreads];
    __shared__ int si[kArgmaxThreads];
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s && before(sv[threadIdx.x + s], si[threadIdx.x + s], sv[threadIdx.x], si[threadIdx.x])) {
            sv[threadIdx.x] = sv[threadIdx.x + s];
            si[threadIdx.x] = si[threadIdx.x + s];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        pv[blockIdx.x] = sv[0];
        pi[blockIdx.x] = si[0];
    }
}

__global__ void argmax_final_kernel(const float* __restrict__ pv, const int* __restrict__ pi, int parts,
                                    int* __restrict__ out_i, float* __restrict__ out_v) {
    pdl_wait();
    pdl_launch_dependents();
    if (threadIdx.x != 0) return;
    float bv = pv[0];
    int bi = pi[0];
    for (int p = 1; p < parts; p++)
        if (before(pv[p], pi[p], bv, bi)) { bv = pv[p]; bi = pi[p]; }
    if (bi == 0x7fffffff) bi = 0;  // all NaN or empty
    *out_i = bi;
    if (out_v) *out_v = bv;
}

// Sorts chunk blockIdx.x of the input (values with implicit indices when in_i is null) and writes its first
// keep entries to out_v/out_i at blockIdx.x * keep.
__global__ void __launch_bounds__(kSortThreads)
topk_chunk_kernel(const float* __restrict__ in_v, const int* __restrict__ in_i, int count, int keep,
                  float* __restrict__ out_v, int* __restrict__ out_i) {
    pdl_wait();
    pdl_launch_dependents();
    __shared__ float sv[kCH];
    __shared__ int si[kCH];
    const int64_t start = (int64_t)blockIdx.x * kCH;
    for (int e = threadIdx.x; e < kCH; e += kSortThreads) {
        int64_t g = start + e;
        if (g < count) {
            sv[e] = in_v[g];
            si[e] = in_i ? in_i[g] : (int)g;
        } else {
            sv[e] = -INFINITY;
            si[e] = 0x7fffffff;
        }
    }
    __syncthreads();
    for (int k = 2; k <= kCH; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            for (int e = threadIdx.x; e < kCH; e += kSortThreads) {
                int p = e ^ j;
                if (p > e) {
                    bool desc = (e & k) == 0;  // this run sorts "best first"
                    bool swap = desc ? before(sv[p], si[p], sv[e], si[e]) : before(sv[e], si[e], sv[p], si[p]);
                    if (swap) {
                        float tv = sv[e]; sv[e] = sv[p]; sv[p] = tv;
                        int ti = si[e]; si[e] = si[p]; si[p] = ti;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (int e = threadIdx.x; e < keep; e += kSortThreads) {
        out_v[(int64_t)blockIdx.x * keep + e] = sv[e];
        out_i[(int64_t)blockIdx.x * keep + e] = si[e];
    }
}

}  // namespace

extern "C" {

uint64_t tp_topk_workspace_bytes(int count, int k) {
    if (count <= 0) count = 1;
    if (k < 1) k = 1;
    uint64_t blocks = (uint64_t)ceil_div(count, kCH);
    uint64_t cand = blocks * (uint64_t)(k < kCH ? k : kCH);
    uint64_t argmax = kArgmaxBlocks * 8;
    uint64_t topk = 2 * cand * 8;
    return (argmax > topk ? argmax : topk) + 512;
}

int tp_argmax(uint64_t x, int count, uint64_t out_index, uint64_t out_value, uint64_t workspace,
              uint64_t workspace_bytes, uint64_t stream) {
    const char* fn = "tp_argmax";
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(count > 0, fn, "count");
    TP_REQUIRE(out_index != 0, fn, "out_index");
    TP_REQUIRE(workspace != 0 && workspace_bytes >= tp_topk_workspace_bytes(count, 1), fn, "workspace");
    cudaStream_t s = TP_STREAM(stream);
    int blocks = (int)ceil_div(count, kArgmaxThreads * 4);
    if (blocks > kArgmaxBlocks) blocks = kArgmaxBlocks;
    float* pv = TP_PTR(float, workspace);
    int* pi = reinterpret_cast<int*>(pv + kArgmaxBlocks);
    TP_LAUNCH("argmax_partial_kernel", argmax_partial_kernel, dim3(blocks), dim3(kArgmaxThreads), 0, s,
              TP_PTR(const float, x), count, pv, pi);
    TP_LAUNCH("argmax_final_kernel", argmax_final_kernel, dim3(1), dim3(32), 0, s, pv, pi, blocks,
              TP_PTR(int, out_index), TP_PTR(float, out_value));
    return TP_OK;
}

int tp_topk(uint64_t x, int count, int k, uint64_t out_index, uint64_t out_value, uint64_t workspace,
            uint64_t workspace_bytes, uint64_t stream) {
    const char* fn = "tp_topk";
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(count > 0, fn, "count");
    TP_REQUIRE(k >= 1 && k <= count, fn, "k");
    if (k > kMaxK) return fail(TP_ERR_UNSUPPORTED, "%s: k = %d exceeds the device top-k limit of %d", fn, k, kMaxK);
    TP_REQUIRE(out_index != 0, fn, "out_index");
    TP_REQUIRE(out_value != 0, fn, "out_value");
    TP_REQUIRE(workspace != 0 && workspace_bytes >= tp_topk_workspace_bytes(count, k), fn, "workspace");
    cudaStream_t s = TP_STREAM(stream);
    uint64_t blocks0 = (uint64_t)ceil_div(count, kCH);
    uint64_t cand = blocks0 * (uint64_t)k;
    float* v0 = TP_PTR(float, workspace);
    int* i0 = reinterpret_cast<int*>(v0 + cand);
    float* v1 = reinterpret_cast<float*>(i0 + cand);
    int* i1 = reinterpret_cast<int*>(v1 + cand);
    const float* in_v = TP_PTR(const float, x);
    const int* in_i = nullptr;
    int n = count;
    bool flip = false;
    while (true) {
        int blocks = (int)ceil_div(n, kCH);
        bool last = blocks == 1;
        float* ov = last ? TP_PTR(float, out_value) : (flip ? v1 : v0);
        int* oi = last ? TP_PTR(int, out_index) : (flip ? i1 : i0);
        TP_LAUNCH("topk_chunk_kernel", topk_chunk_kernel, dim3(blocks), dim3(kSortThreads), 0, s, in_v, in_i, n, k, ov,
                  oi);
        if (last) break;
        in_v = ov;
        in_i = oi;
        n = blocks * k;
        flip = !flip;
    }
    return TP_OK;
}

}  // extern "C"
