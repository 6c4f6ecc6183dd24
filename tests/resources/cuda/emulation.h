// What the host emulations of CUDA code in this folder share (HostEmulation compiles them with this folder on the
// include path): CUDA's built-in names and qualifiers for host code, the device helpers the kernels call, barriers and
// warp shuffles over a block's host threads, and a pool of host threads that runs a kernel's grid block after block
// with one host thread per CUDA thread.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

struct Dim3 { unsigned x = 0, y = 0, z = 0; };
static thread_local Dim3 threadIdx;
static Dim3 blockIdx, blockDim, gridDim;  // written while the pool's threads wait between blocks
struct double2 { double x, y; };
static double2 make_double2(double x, double y) { return {x, y}; }
#define __restrict__
#define __shared__ static  // one variable for all host threads of the block
static const float kNegInf = -INFINITY;
static float __fadd_rn(float a, float b) { return a + b; }  // compiled with -ffp-contract=off
static uint32_t order_key(float f) {  // as common.cuh
    uint32_t b;
    std::memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) == 0u) b = 0u;
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
using std::fmaxf;
using std::min;

// The block's barrier, and a barrier per warp for the warp's shuffles and votes: every thread of a warp calls them
// together (as the kernels do with full-warp masks; warps may differ in how often); values travel through a double,
// which holds an int, float or double exactly.
static std::barrier<>* g_bar;
static std::vector<std::unique_ptr<std::barrier<>>>* g_warp_bars;
static double g_lanes[1024];
static void __syncthreads() { g_bar->arrive_and_wait(); }
static void __syncwarp(unsigned = 0xffffffffu) { (*g_warp_bars)[threadIdx.x >> 5]->arrive_and_wait(); }
template <typename T>
static T shuffle_from(T v, int src) {
    std::barrier<>& b = *(*g_warp_bars)[threadIdx.x >> 5];
    b.arrive_and_wait();
    g_lanes[threadIdx.x] = (double)v;
    b.arrive_and_wait();
    T r = (T)g_lanes[src];
    b.arrive_and_wait();
    return r;
}
template <typename T>
static T __shfl_xor_sync(unsigned, T v, int o) { return shuffle_from(v, (int)(threadIdx.x ^ (unsigned)o)); }
template <typename T>
static T __shfl_up_sync(unsigned, T v, int o) {
    return shuffle_from(v, (int)(threadIdx.x & 31u) >= o ? (int)threadIdx.x - o : (int)threadIdx.x);
}
template <typename T>
static T __shfl_sync(unsigned, T v, int src) { return shuffle_from(v, (int)(threadIdx.x & ~31u) + (src & 31)); }
static unsigned __ballot_sync(unsigned, int pred) {
    std::barrier<>& b = *(*g_warp_bars)[threadIdx.x >> 5];
    b.arrive_and_wait();
    g_lanes[threadIdx.x] = pred ? 1.0 : 0.0;
    b.arrive_and_wait();
    unsigned m = 0, base = threadIdx.x & ~31u;
    for (unsigned i = 0; i < 32 && base + i < blockDim.x; i++)
        if (g_lanes[base + i] != 0.0) m |= 1u << i;
    b.arrive_and_wait();
    return m;
}
static int __popc(unsigned x) { return __builtin_popcount(x); }
static int __ffs(unsigned x) { return __builtin_ffs((int)x); }
// atomics over the block's host threads (blocks run one after another); fences are the atomics' own
template <typename T>
static T atomicAdd(T* p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static uint32_t atomicAdd(uint32_t* p, unsigned v) { return __atomic_fetch_add(p, (uint32_t)v, __ATOMIC_SEQ_CST); }
template <typename T>
static T atomicMax(T* p, T v) {
    T cur = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (cur < v && !__atomic_compare_exchange_n(p, &cur, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return cur;
}
static void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T>
static T __ldcg(const T* p) {
    T r;
    __atomic_load(const_cast<T*>(p), &r, __ATOMIC_SEQ_CST);
    return r;
}

// Host threads, one per CUDA thread of a block, kept for the whole program.
class Pool {
  public:
    explicit Pool(unsigned threads) : n_(threads), start_(threads + 1), end_(threads + 1), block_(threads) {
        for (unsigned w = 0; w * 32 < threads; w++)
            warps_.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, threads - 32 * w)));
        for (unsigned t = 0; t < threads; t++) ts_.emplace_back([this, t] { work(t); });
    }
    ~Pool() {
        job_ = nullptr;  // the threads leave
        start_.arrive_and_wait();
        for (auto& t : ts_) t.join();
    }
    // body over a grid of gx × gy blocks of `threads` threads, the blocks one after another: with sync (a kernel with
    // barriers or shuffles) every thread of a block at once on the pool (threads = the pool's size), else one host
    // thread after another
    template <typename F>
    void run(unsigned gx, unsigned gy, unsigned threads, bool sync, F body) {
        gridDim = {gx, gy, 1};
        blockDim = {threads, 1, 1};
        if (sync && threads != n_) std::abort();
        for (unsigned by = 0; by < gy; by++)
            for (unsigned bx = 0; bx < gx; bx++) {
                blockIdx = {bx, by, 0};
                if (!sync) {
                    for (unsigned t = 0; t < threads; t++) {
                        threadIdx = {t, 0, 0};
                        body();
                    }
                    continue;
                }
                g_bar = &block_;
                g_warp_bars = &warps_;
                job_ = [&] { body(); };
                start_.arrive_and_wait();
                end_.arrive_and_wait();
            }
    }

  private:
    void work(unsigned t) {
        threadIdx = {t, 0, 0};
        for (;;) {
            start_.arrive_and_wait();
            if (!job_) return;
            job_();
            end_.arrive_and_wait();
        }
    }
    unsigned n_;
    std::barrier<> start_, end_, block_;
    std::vector<std::unique_ptr<std::barrier<>>> warps_;
    std::function<void()> job_;
    std::vector<std::thread> ts_;
};
