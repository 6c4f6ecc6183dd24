// Host definitions of what cuda/mma_ops.cuh gives the tensor-core kernels (shared memory, cp.async, the bf16
// m16n8k16 MMA, bf16 / f16 conversions) and of the few tp:: device helpers they call, so that a kernel header such
// as cuda/kvq_mma.cuh compiles and runs on the host (with emulation.h's threads, barriers and shuffles).
//
// Shared memory is one byte buffer per block (g_smem_base; addresses are offsets into it). cp.async copies are
// queued per thread: in lazy mode (g_cp_lazy) they land only when cp.async.wait_group lets them (the latest moment
// the hardware may complete them) and their destination holds poison until then, so a read that the kernel did not
// order after its wait sees garbage; in eager mode they land at issue (the earliest moment), so a buffer refilled
// while a lane still reads it shows up. Copies check their size and alignment like the hardware.
#pragma once
#include <deque>

#define TP_HOST_EMULATION 1
#define __host__
#define __device__
#define __forceinline__ inline

struct float2 { float x, y; };
static float2 make_float2(float x, float y) { return {x, y}; }
struct alignas(16) float4 { float x, y, z, w; };
static float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

static bool __all_sync(unsigned m, int pred) { return __ballot_sync(m, !pred) == 0u; }
static bool __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0u; }

static float exp2_diff(float a, float b) { return a == kNegInf ? 0.f : std::exp2(a - b); }
static int candidate_count(const int* sel, int sel_stride, const int* sel_counts, const int* high_water, int g,
                           int capacity) {
    int len = sel ? std::min(sel_counts[g], sel_stride) : std::min(high_water[g], capacity);
    return std::max(len, 0);
}
static int candidate_slot(const int* sel, int sel_stride, int g, int idx, int capacity) {
    int s = sel ? sel[(int64_t)g * sel_stride + idx] : idx;
    return (s >= 0 && s < capacity) ? s : -1;
}

static unsigned char* g_smem_base = nullptr;
static size_t g_smem_bytes = 0;
static bool g_cp_lazy = true;
static int g_emu_faults = 0;  // misaligned or out-of-range shared accesses, cp.async size errors
static void emu_fault(const char* what, uint32_t a) {
    if (__atomic_fetch_add(&g_emu_faults, 1, __ATOMIC_SEQ_CST) < 10) std::printf("FAULT %s at %u\n", what, a);
}

// bf16 / f16 bit conversions
static float emu_bits_f(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
static uint32_t emu_f_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }
static uint32_t emu_bf16_rn(float f) {
    uint32_t b = emu_f_bits(f);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
    return (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
}
static float emu_bf16_f(uint32_t h) { return emu_bits_f((h & 0xffffu) << 16); }
static float emu_f16_f(uint32_t h) {
    h &= 0xffffu;
    const uint32_t sign = h & 0x8000u, exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
    float v;
    if (exp == 0) v = (float)mant * 5.9604644775390625e-8f;
    else if (exp == 31) v = mant == 0 ? INFINITY : NAN;
    else v = emu_bits_f(((exp + 112u) << 23) | (mant << 13));
    return sign ? -v : v;
}

namespace tp {
namespace mma {

static uint32_t smem_addr(const void* p) { return (uint32_t)((const unsigned char*)p - g_smem_base); }
static unsigned char* emu_smem(uint32_t a, uint32_t n) {
    if (a % n != 0 || (size_t)a + n > g_smem_bytes) {
        emu_fault("shared access", a);
        static unsigned char junk[16];
        return junk;
    }
    return g_smem_base + a;
}
static uint32_t smem_ld32(uint32_t a) { uint32_t v; std::memcpy(&v, emu_smem(a, 4), 4); return v; }
static uint32_t smem_ld16(uint32_t a) { uint16_t v; std::memcpy(&v, emu_smem(a, 2), 2); return v; }
static void smem_st32(uint32_t a, uint32_t v) { std::memcpy(emu_smem(a, 4), &v, 4); }
template <int N>
static void smem_ldv(uint32_t a, uint32_t (&w)[N]) {
    static_assert(N == 1 || N == 2 || N == 4, "vector width");
    std::memcpy(w, emu_smem(a, 4 * N), 4 * N);
}

struct EmuCopy { uint32_t dst; const unsigned char* src; int n; };
static thread_local std::vector<EmuCopy> t_pending;
static thread_local std::deque<std::vector<EmuCopy>> t_groups;
template <int N>
static void cp_async(uint32_t smem, const void* gmem) {
    static_assert(N == 4 || N == 8 || N == 16, "cp.async size");
    if ((uintptr_t)gmem % N != 0) emu_fault("cp.async global alignment", smem);
    unsigned char* d = emu_smem(smem, N);
    if (!g_cp_lazy) {
        std::memcpy(d, gmem, N);
        return;
    }
    std::memset(d, 0xA5, N);  // poison until the wait
    t_pending.push_back({smem, (const unsigned char*)gmem, N});
}
static void cp_async_commit() {
    t_groups.push_back(std::move(t_pending));
    t_pending.clear();
}
template <int N>
static void cp_async_wait() {
    while (t_groups.size() > (size_t)N) {
        for (const EmuCopy& c : t_groups.front()) std::memcpy(emu_smem(c.dst, c.n), c.src, c.n);
        t_groups.pop_front();
    }
}

// The MMA over the warp's fragments (layouts as in mma_ops.cuh), summed in double.
static uint32_t g_mma_a[1024][4], g_mma_b[1024][2];
static void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    std::barrier<>& bar = *(*g_warp_bars)[threadIdx.x >> 5];
    bar.arrive_and_wait();
    for (int i = 0; i < 4; i++) g_mma_a[threadIdx.x][i] = a[i];
    g_mma_b[threadIdx.x][0] = b0;
    g_mma_b[threadIdx.x][1] = b1;
    bar.arrive_and_wait();
    const unsigned base = threadIdx.x & ~31u, lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
    auto A = [&](unsigned row, unsigned k) {
        const uint32_t w = g_mma_a[base + 4 * (row & 7u) + ((k & 7u) >> 1)][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
        return (double)emu_bf16_f((k & 1u) ? (w >> 16) : w);
    };
    auto B = [&](unsigned k, unsigned n) {
        const uint32_t w = g_mma_b[base + 4 * n + ((k & 7u) >> 1)][k >= 8 ? 1 : 0];
        return (double)emu_bf16_f((k & 1u) ? (w >> 16) : w);
    };
    float r[4];
    for (int i = 0; i < 4; i++) {
        const unsigned row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        double s = c[i];
        for (unsigned k = 0; k < 16; k++) s += A(row, k) * B(k, col);
        r[i] = (float)s;
    }
    bar.arrive_and_wait();
    for (int i = 0; i < 4; i++) c[i] = r[i];
}
static void split_bf16x2(float x0, float x1, uint32_t& hi, uint32_t& lo) {
    const uint32_t h0 = emu_bf16_rn(x0), h1 = emu_bf16_rn(x1);
    hi = h0 | (h1 << 16);
    lo = emu_bf16_rn(x0 - emu_bf16_f(h0)) | (emu_bf16_rn(x1 - emu_bf16_f(h1)) << 16);
}
static float bf16_low(uint32_t w) { return emu_bf16_f(w); }
static float bf16_high(uint32_t w) { return emu_bf16_f(w >> 16); }
template <int BITS>
static uint32_t codes_bf16x2(uint32_t n0, uint32_t n1) {
    if (BITS <= 4) {  // the device's arithmetic: bf16 bits 0x4300 | n = 128 + n, minus 128
        const uint32_t w = n0 | (n1 << 16) | 0x43004300u;
        return emu_bf16_rn(emu_bf16_f(w) - 128.f) | (emu_bf16_rn(emu_bf16_f(w >> 16) - 128.f) << 16);
    }
    return emu_bf16_rn((float)n0) | (emu_bf16_rn((float)n1) << 16);
}
static float2 f16x2_to_float2(uint32_t w) { return {emu_f16_f(w), emu_f16_f(w >> 16)}; }
static float f16_to_float(uint32_t h) { return emu_f16_f(h); }

}  // namespace mma
}  // namespace tp
