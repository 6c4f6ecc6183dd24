// The (max, sum, acc) state of online softmax, shared by decode attention, prefill attention and the
// attention-statistics pass. Scores are kept in the log2 domain (already multiplied by scale * log2(e)),
// so every exponential is one exp2f. A state with m = -inf is empty (no visible key yet).
#pragma once

#include "common.cuh"

namespace tp {

// exp2(a - b) that is 0 when a is -inf (including -inf - -inf).
__device__ __forceinline__ float exp2_diff(float a, float b) { return a == kNegInf ? 0.f : exp2f(a - b); }

template <int N>
struct SoftmaxState {
    float m;       // running max of log2-domain scores
    float d;       // running sum of exp2(score - m)
    float o[N];    // running sum of exp2(score - m) * value (this thread's N output dims)

    __device__ __forceinline__ void init() {
        m = kNegInf;
        d = 0.f;
#pragma unroll
        for (int i = 0; i < N; i++) o[i] = 0.f;
    }

    // Rescales to a new max m2 >= m; returns the factor applied.
    __device__ __forceinline__ float rescale_to(float m2) {
        float a = exp2_diff(m, m2);
        d *= a;
#pragma unroll
        for (int i = 0; i < N; i++) o[i] *= a;
        m = m2;
        return a;
    }

    // Merges another partial state (other.m may be -inf = empty).
    __device__ __forceinline__ void merge(float m2, float d2, const float* o2) {
        float mn = fmaxf(m, m2);
        if (mn == kNegInf) return;
        float a = exp2_diff(m, mn), b = exp2_diff(m2, mn);
        d = d * a + d2 * b;
#pragma unroll
        for (int i = 0; i < N; i++) o[i] = o[i] * a + o2[i] * b;
        m = mn;
    }

    __device__ __forceinline__ void merge(const SoftmaxState& s) { merge(s.m, s.d, s.o); }

    // Merges the state held by lane (lane ^ offset) of the same warp.
    __device__ __forceinline__ void merge_xor(int offset) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
        float d2 = __shfl_xor_sync(0xffffffffu, d, offset);
        float o2[N];
#pragma unroll
        for (int i = 0; i < N; i++) o2[i] = __shfl_xor_sync(0xffffffffu, o[i], offset);
        merge(m2, d2, o2);
    }

    // log2-domain log-sum-exp of everything merged so far (-inf when empty).
    __device__ __forceinline__ float lse2() const { return d > 0.f ? m + log2f(d) : kNegInf; }
    __device__ __forceinline__ float inv_sum() const { return d > 0.f ? 1.f / d : 0.f; }
};

}  // namespace tp
