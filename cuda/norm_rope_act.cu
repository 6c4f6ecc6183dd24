// Fused small ops: embedding gather, RMSNorm, RoPE, SwiGLU, residual add, bias add, conversions, KV store.
// All are memory-bound one-pass kernels; step-varying inputs (tokens, positions, slots) come from device memory.
// PDL (tp_set_pdl): every kernel starts with pdl_wait() (add_rmsnorm first loads its first norm weights, which
// are read-only) and then releases its successor with pdl_launch_dependents().
#include "common.cuh"
#include "rope.cuh"

namespace {

using namespace tp;

// out [n, D] f32 <- table [V, D] bf16 at tokens[i]; one block per row. Out-of-range ids give zeros.
__global__ void embedding_kernel(float* __restrict__ out, const uint16_t* __restrict__ table,
                                 const int* __restrict__ tokens, int dim, int vocab) {
    pdl_wait();
    pdl_launch_dependents();
    int row = blockIdx.x;
    int tok = tokens[row];
    float* o = out + (int64_t)row * dim;
    if (tok < 0 || tok >= vocab) {
        for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = 0.f;
        return;
    }
    const uint16_t* t = table + (int64_t)tok * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = __uint_as_float(((uint32_t)t[j]) << 16);
}

// One block per row: sum of squares in f32, then out = x * rsqrt(mean + eps) * w.
__global__ void rmsnorm_kernel(float* out, const float* x, const float* __restrict__ w, float eps, int dim) {
    pdl_wait();
    pdl_launch_dependents();
    const float* xr = x + (int64_t)blockIdx.x * dim;
    float* orow = out + (int64_t)blockIdx.x * dim;
    float ss = 0.f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss);
    float inv = 1.f / sqrtf(ss / (float)dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x) orow[j] = xr[j] * inv * w[j];
}

// Residual add + RMSNorm in one pass per row: x += y (written back), then out = x * rsqrt(mean(x^2) + eps) * w
// with the same f32 arithmetic as add_kernel followed by rmsnorm_kernel. out must not alias x or y.
__global__ void add_rmsnorm_kernel(float* __restrict__ out, float* __restrict__ x, const float* __restrict__ y,
                                   const float* __restrict__ w, float eps, int dim) {
    float* xr = x + (int64_t)blockIdx.x * dim;
    const float* yr = y + (int64_t)blockIdx.x * dim;
    float* orow = out + (int64_t)blockIdx.x * dim;
    // the norm weights are read-only: the first kPre per thread are loaded before the PDL wait
    constexpr int kPre = 4;
    float wpre[kPre];
#pragma unroll
    for (int k = 0; k < kPre; k++) {
        int j = threadIdx.x + k * blockDim.x;
        wpre[k] = j < dim ? w[j] : 0.f;
    }
    pdl_wait();
    pdl_launch_dependents();
    float ss = 0.f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        float v = xr[j] + yr[j];
        xr[j] = v;
        ss += v * v;
    }
    ss = block_sum(ss);
    float inv = 1.f / sqrtf(ss / (float)dim + eps);
    // each thread re-reads only the elements it wrote itself
    int k = 0;
    for (int j = threadIdx.x; j < dim; j += blockDim.x, k++) orow[j] = xr[j] * inv * (k < kPre ? wpre[k] : w[j]);
}

// x [n, heads*hd]; thread per (row, head, i < hd/2) pair.
__global__ void rope_kernel(float* x, int n, int heads, int hd, const int* __restrict__ positions,
                            const float* __restrict__ inv_freq, float scale) {
    pdl_wait();
    pdl_launch_dependents();
    int half = hd >> 1;
    int64_t total = (int64_t)n * heads * half;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < total; t += (int64_t)gridDim.x * blockDim.x) {
        int i = (int)(t % half);
        int64_t rh = t / half;  // row * heads + head
        int row = (int)(rh / heads);
        float c, s;
        rope_cos_sin(positions[row], inv_freq[i], scale, c, s);
        float* base = x + rh * hd;
        rope_rotate(base[i], base[i + half], c, s, base[i], base[i + half]);
    }
}

__global__ void swiglu_kernel(float* out, const float* gate, const float* __restrict__ up, int64_t count) {
    pdl_wait();
    pdl_launch_dependents();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x) {
        float g = gate[i];
        out[i] = g / (1.f + expf(-g)) * up[i];
    }
}

__global__ void add_kernel(float* x, const float* __restrict__ y, int64_t count) {
    pdl_wait();
    pdl_launch_dependents();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

__global__ void add_bias_kernel(float* out, const float* __restrict__ bias, int64_t count, int cols) {
    pdl_wait();
    pdl_launch_dependents();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        out[i] += bias[i % cols];
}

__global__ void f32_to_bf16_kernel(uint16_t* __restrict__ dst, const float* __restrict__ src, int64_t count) {
    pdl_wait();
    pdl_launch_dependents();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = f32_to_bf16_bits(src[i]);
}

__global__ void bf16_to_f32_kernel(float* __restrict__ dst, const uint16_t* __restrict__ src, int64_t count) {
    pdl_wait();
    pdl_launch_dependents();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __uint_as_float(((uint32_t)src[i]) << 16);
}

__global__ void fill_kernel(float* dst, float v, int64_t count) {
    pdl_wait();
    pdl_launch_dependents();
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < count; i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = v;
}

__global__ void scatter_kernel(int* dst, const int* __restrict__ idx, const int* __restrict__ vals, int count) {
    pdl_wait();
    pdl_launch_dependents();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) dst[idx[i]] = vals[i];
}

// One block per (token i, KV head g); threads cover hd for both k and v.
__global__ void store_kv_kernel(uint16_t* __restrict__ kc, uint16_t* __restrict__ vc, int* __restrict__ pc,
                                const float* __restrict__ k, const float* __restrict__ v,
                                const int* __restrict__ slots, const int* __restrict__ token_pos, int layer,
                                int kv_heads, int hd, int capacity, int n) {
    pdl_wait();
    pdl_launch_dependents();
    int i = blockIdx.x, g = blockIdx.y;
    int slot = slots[g * n + i];
    if (slot < 0 || slot >= capacity) return;
    int64_t dst = (((int64_t)layer * kv_heads + g) * capacity + slot) * hd;
    const float* kr = k + (int64_t)i * kv_heads * hd + (int64_t)g * hd;
    const float* vr = v + (int64_t)i * kv_heads * hd + (int64_t)g * hd;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        kc[dst + j] = f32_to_bf16_bits(kr[j]);
        vc[dst + j] = f32_to_bf16_bits(vr[j]);
    }
    if (threadIdx.x == 0) pc[((int64_t)layer * kv_heads + g) * capacity + slot] = token_pos[g * n + i];
}

// RoPE of q and k + KV store (= rope_kernel on q, rope_kernel on k, store_kv_kernel) in one launch. Grid
// (ceil((heads + kv_heads) * hd/2 / blockDim), n); thread t of row i owns the pair (j, j + hd/2) of head t / (hd/2):
// q-heads are rotated in place; for KV head g the rotated key pair is written back to k and, with the value
// pair, stored as bf16 into slot slots[g][i] (skipped when outside [0, capacity)); thread j == 0 writes the
// slot's position. Same f32 arithmetic as rope_kernel (rope.cuh), so the stored bits equal those of the
// separate ops.
__global__ void rope_store_kv_kernel(float* __restrict__ q, int heads, float* __restrict__ k,
                                     const float* __restrict__ v, const int* __restrict__ positions,
                                     const float* __restrict__ inv_freq, float scale, uint16_t* __restrict__ kc,
                                     uint16_t* __restrict__ vc, int* __restrict__ pc, const int* __restrict__ slots,
                                     const int* __restrict__ token_pos, int layer, int kv_heads, int hd,
                                     int capacity, int n) {
    pdl_wait();
    pdl_launch_dependents();
    const int half = hd >> 1;
    const int i = blockIdx.y;
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int head = t / half, j = t % half;
    if (head >= heads + kv_heads) return;
    float c, s;
    rope_cos_sin(positions[i], inv_freq[j], scale, c, s);
    if (head < heads) {
        float* base = q + ((int64_t)i * heads + head) * hd;
        rope_rotate(base[j], base[j + half], c, s, base[j], base[j + half]);
        return;
    }
    const int g = head - heads;
    float* kb = k + ((int64_t)i * kv_heads + g) * hd;
    const float* vb = v + ((int64_t)i * kv_heads + g) * hd;
    float k0, k1;
    rope_rotate(kb[j], kb[j + half], c, s, k0, k1);
    kb[j] = k0;
    kb[j + half] = k1;
    int slot = slots[g * n + i];
    if (slot < 0 || slot >= capacity) return;
    int64_t row = ((int64_t)layer * kv_heads + g) * capacity + slot;
    int64_t dst = row * hd;
    kc[dst + j] = f32_to_bf16_bits(k0);
    kc[dst + j + half] = f32_to_bf16_bits(k1);
    vc[dst + j] = f32_to_bf16_bits(vb[j]);
    vc[dst + j + half] = f32_to_bf16_bits(vb[j + half]);
    if (j == 0) pc[row] = token_pos[g * n + i];
}

inline int grid_for(int64_t count, int threads) {
    int64_t b = ceil_div(count, threads);
    int64_t cap = (int64_t)sm_count() * 16;
    return (int)(b < 1 ? 1 : (b > cap ? cap : b));
}

}  // namespace

extern "C" {

int tp_embedding(uint64_t out, uint64_t table, uint64_t tokens, int n, int dim, int vocab, uint64_t stream) {
    const char* fn = "tp_embedding";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(table != 0, fn, "table");
    TP_REQUIRE(tokens != 0, fn, "tokens");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(dim > 0, fn, "dim");
    TP_REQUIRE(vocab > 0, fn, "vocab");
    if (n == 0) return TP_OK;
    TP_LAUNCH("embedding_kernel", embedding_kernel, dim3(n), dim3(256), 0, TP_STREAM(stream), TP_PTR(float, out),
              TP_PTR(const uint16_t, table), TP_PTR(const int, tokens), dim, vocab);
    return TP_OK;
}

int tp_rmsnorm(uint64_t out, uint64_t x, uint64_t w, float eps, int n, int dim, uint64_t stream) {
    const char* fn = "tp_rmsnorm";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(w != 0, fn, "w");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(dim > 0, fn, "dim");
    if (n == 0) return TP_OK;
    int threads = dim >= 1024 ? 1024 : (dim >= 512 ? 512 : 256);
    TP_LAUNCH("rmsnorm_kernel", rmsnorm_kernel, dim3(n), dim3(threads), 0, TP_STREAM(stream), TP_PTR(float, out),
              TP_PTR(const float, x), TP_PTR(const float, w), eps, dim);
    return TP_OK;
}

int tp_add_rmsnorm(uint64_t out, uint64_t x, uint64_t y, uint64_t w, float eps, int n, int dim, uint64_t stream) {
    const char* fn = "tp_add_rmsnorm";
    TP_REQUIRE(out != 0 && out != x && out != y, fn, "out");
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(y != 0 && y != x, fn, "y");
    TP_REQUIRE(w != 0, fn, "w");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(dim > 0, fn, "dim");
    if (n == 0) return TP_OK;
    int threads = dim >= 1024 ? 1024 : (dim >= 512 ? 512 : 256);
    TP_LAUNCH("add_rmsnorm_kernel", add_rmsnorm_kernel, dim3(n), dim3(threads), 0, TP_STREAM(stream),
              TP_PTR(float, out), TP_PTR(float, x), TP_PTR(const float, y), TP_PTR(const float, w), eps, dim);
    return TP_OK;
}

int tp_rope(uint64_t x, int n, int heads, int head_dim, uint64_t positions, uint64_t inv_freq, float scale,
            uint64_t stream) {
    const char* fn = "tp_rope";
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(heads > 0, fn, "heads");
    TP_REQUIRE(head_dim > 0 && head_dim % 2 == 0, fn, "head_dim");
    TP_REQUIRE(positions != 0, fn, "positions");
    TP_REQUIRE(inv_freq != 0, fn, "inv_freq");
    TP_REQUIRE(scale > 0.f, fn, "scale");
    if (n == 0) return TP_OK;
    int64_t total = (int64_t)n * heads * (head_dim / 2);
    TP_LAUNCH("rope_kernel", rope_kernel, dim3(grid_for(total, 256)), dim3(256), 0, TP_STREAM(stream), TP_PTR(float, x),
              n, heads, head_dim, TP_PTR(const int, positions), TP_PTR(const float, inv_freq), scale);
    return TP_OK;
}

int tp_swiglu(uint64_t out, uint64_t gate, uint64_t up, int64_t count, uint64_t stream) {
    const char* fn = "tp_swiglu";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(gate != 0, fn, "gate");
    TP_REQUIRE(up != 0, fn, "up");
    TP_REQUIRE(count >= 0, fn, "count");
    if (count == 0) return TP_OK;
    TP_LAUNCH("swiglu_kernel", swiglu_kernel, dim3(grid_for(count, 256)), dim3(256), 0, TP_STREAM(stream),
              TP_PTR(float, out), TP_PTR(const float, gate), TP_PTR(const float, up), count);
    return TP_OK;
}

int tp_add(uint64_t x, uint64_t y, int64_t count, uint64_t stream) {
    const char* fn = "tp_add";
    TP_REQUIRE(x != 0, fn, "x");
    TP_REQUIRE(y != 0, fn, "y");
    TP_REQUIRE(count >= 0, fn, "count");
    if (count == 0) return TP_OK;
    TP_LAUNCH("add_kernel", add_kernel, dim3(grid_for(count, 256)), dim3(256), 0, TP_STREAM(stream), TP_PTR(float, x),
              TP_PTR(const float, y), count);
    return TP_OK;
}

int tp_add_bias(uint64_t out, uint64_t bias, int n, int cols, uint64_t stream) {
    const char* fn = "tp_add_bias";
    TP_REQUIRE(out != 0, fn, "out");
    TP_REQUIRE(bias != 0, fn, "bias");
    TP_REQUIRE(n >= 0, fn, "n");
    TP_REQUIRE(cols > 0, fn, "cols");
    int64_t count = (int64_t)n * cols;
    if (count == 0) return TP_OK;
    TP_LAUNCH("add_bias_kernel", add_bias_kernel, dim3(grid_for(count, 256)), dim3(256), 0, TP_STREAM(stream),
              TP_PTR(float, out), TP_PTR(const float, bias), count, cols);
    return TP_OK;
}

int tp_f32_to_bf16(uint64_t dst, uint64_t src, int64_t count, uint64_t stream) {
    TP_REQUIRE(dst != 0, "tp_f32_to_bf16", "dst");
    TP_REQUIRE(src != 0, "tp_f32_to_bf16", "src");
    TP_REQUIRE(count >= 0, "tp_f32_to_bf16", "count");
    if (count == 0) return TP_OK;
    TP_LAUNCH("f32_to_bf16_kernel", f32_to_bf16_kernel, dim3(grid_for(count, 256)), dim3(256), 0, TP_STREAM(stream),
              TP_PTR(uint16_t, dst), TP_PTR(const float, src), count);
    return TP_OK;
}

int tp_bf16_to_f32(uint64_t dst, uint64_t src, int64_t count, uint64_t stream) {
    TP_REQUIRE(dst != 0, "tp_bf16_to_f32", "dst");
    TP_REQUIRE(src != 0, "tp_bf16_to_f32", "src");
    TP_REQUIRE(count >= 0, "tp_bf16_to_f32", "count");
    if (count == 0) return TP_OK;
    TP_LAUNCH("bf16_to_f32_kernel", bf16_to_f32_kernel, dim3(grid_for(count, 256)), dim3(256), 0, TP_STREAM(stream),
              TP_PTR(float, dst), TP_PTR(const uint16_t, src), count);
    return TP_OK;
}

int tp_fill_f32(uint64_t dst, float value, int64_t count, uint64_t stream) {
    TP_REQUIRE(dst != 0, "tp_fill_f32", "dst");
    TP_REQUIRE(count >= 0, "tp_fill_f32", "count");
    if (count == 0) return TP_OK;
    TP_LAUNCH("fill_kernel", fill_kernel, dim3(grid_for(count, 256)), dim3(256), 0, TP_STREAM(stream),
              TP_PTR(float, dst), value, count);
    return TP_OK;
}

int tp_scatter_i32(uint64_t dst, uint64_t idx, uint64_t vals, int count, uint64_t stream) {
    TP_REQUIRE(dst != 0, "tp_scatter_i32", "dst");
    TP_REQUIRE(idx != 0, "tp_scatter_i32", "idx");
    TP_REQUIRE(vals != 0, "tp_scatter_i32", "vals");
    TP_REQUIRE(count >= 0, "tp_scatter_i32", "count");
    if (count == 0) return TP_OK;
    TP_LAUNCH("scatter_kernel", scatter_kernel, dim3((int)ceil_div(count, 256)), dim3(256), 0, TP_STREAM(stream),
              TP_PTR(int, dst), TP_PTR(const int, idx), TP_PTR(const int, vals), count);
    return TP_OK;
}

int tp_store_kv(uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache, uint64_t k, uint64_t v,
                uint64_t slots, uint64_t token_pos, int layer, int kv_heads, int head_dim, int capacity, int n,
                uint64_t stream) {
    const char* fn = "tp_store_kv";
    TP_REQUIRE(key_cache != 0, fn, "key_cache");
    TP_REQUIRE(value_cache != 0, fn, "value_cache");
    TP_REQUIRE(pos_cache != 0, fn, "pos_cache");
    TP_REQUIRE(k != 0, fn, "k");
    TP_REQUIRE(v != 0, fn, "v");
    TP_REQUIRE(slots != 0, fn, "slots");
    TP_REQUIRE(token_pos != 0, fn, "token_pos");
    TP_REQUIRE(layer >= 0, fn, "layer");
    TP_REQUIRE(kv_heads > 0 && kv_heads <= 65535, fn, "kv_heads");
    TP_REQUIRE(head_dim > 0, fn, "head_dim");
    TP_REQUIRE(capacity > 0, fn, "capacity");
    TP_REQUIRE(n >= 0, fn, "n");
    if (n == 0) return TP_OK;
    dim3 grid(n, kv_heads);
    TP_LAUNCH("store_kv_kernel", store_kv_kernel, dim3(grid), dim3(head_dim >= 128 ? 128 : 64), 0, TP_STREAM(stream),
              TP_PTR(uint16_t, key_cache), TP_PTR(uint16_t, value_cache), TP_PTR(int, pos_cache),
              TP_PTR(const float, k), TP_PTR(const float, v), TP_PTR(const int, slots), TP_PTR(const int, token_pos),
              layer, kv_heads, head_dim, capacity, n);
    return TP_OK;
}

int tp_rope_store_kv(uint64_t q, int heads, uint64_t k, uint64_t v, uint64_t positions, uint64_t inv_freq,
                     float scale, uint64_t key_cache, uint64_t value_cache, uint64_t pos_cache, uint64_t slots,
                     uint64_t token_pos, int layer, int kv_heads, int head_dim, int capacity, int n,
                     uint64_t stream) {
    const char* fn = "tp_rope_store_kv";
    TP_REQUIRE(q != 0, fn, "q");
    TP_REQUIRE(heads > 0, fn, "heads");
    TP_REQUIRE(k != 0, fn, "k");
    TP_REQUIRE(v != 0, fn, "v");
    int rc = check_rope_store_args(fn, positions, inv_freq, scale, key_cache, value_cache, pos_cache, slots, token_pos,
                                   layer, kv_heads, head_dim, capacity);
    if (rc != TP_OK) return rc;
    TP_REQUIRE(n >= 0 && n <= 65535, fn, "n");
    if (n == 0) return TP_OK;
    int64_t pairs = (int64_t)(heads + kv_heads) * (head_dim / 2);
    dim3 grid((unsigned)ceil_div(pairs, 128), n);
    TP_LAUNCH("rope_store_kv_kernel", rope_store_kv_kernel, dim3(grid), dim3(128), 0, TP_STREAM(stream),
              TP_PTR(float, q), heads, TP_PTR(float, k), TP_PTR(const float, v), TP_PTR(const int, positions),
              TP_PTR(const float, inv_freq), scale, TP_PTR(uint16_t, key_cache), TP_PTR(uint16_t, value_cache),
              TP_PTR(int, pos_cache), TP_PTR(const int, slots), TP_PTR(const int, token_pos), layer, kv_heads, head_dim,
              capacity, n);
    return TP_OK;
}

}  // extern "C"
