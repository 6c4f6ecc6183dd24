// The selection keys of a tensor-core attention stage for TidalDecode (decode_attention.cu's KEYS instantiations,
// kvq_mma.cuh's scores mode): a stage's 16 keys reduced over the group's q-heads from the MMA C-fragment layout and
// stored as order keys. Free of CUDA headers' names beyond what tests/resources/cuda/emulation.h defines.
#pragma once

namespace tp {

// The selection keys of one v3 stage (KEYS), in two parts so that the kernel can store a stage's keys after its P·V
// MMAs (the shuffles' latency hidden behind them): lane 4·gq + t4 holds head gq's scores of the stage's keys
// j·8 + 2·t4 + e in s[j][e] (-inf where invisible); v3_sel_reduce reduces each key's scores over the group's 8
// fragment rows (lanes t4 + 4i; heads gq >= nh left out) by a reduce-scatter of three xor steps, four shuffles in all:
// over lanes 16 apart each lane keeps the keys of j = bit 2 of gq and receives its partner's scores of them, over
// lanes 8 apart it keeps e = bit 1 of gq, and over lanes 4 apart the two lanes of a pair combine their last value. Max,
// or (sum_group) the sum ((h0 + h4) + (h2 + h6)) + ((h1 + h5) + (h3 + h7)) (each addition has its two terms in either
// order: the same result). Every lane of the warp must call it (the shuffles).
__device__ __forceinline__ float v3_sel_reduce(const float (&s)[2][2], int gq, int nh, int sum_group) {
    const float neutral = sum_group ? 0.f : kNegInf;
    const bool hv = gq < nh;
    const bool bj = (gq >> 2) & 1, be = (gq >> 1) & 1;
    // (selects, not indexing by bj / be: the arrays stay in registers)
    float a[2];
#pragma unroll
    for (int e = 0; e < 2; e++) {  // lanes 16 apart: keep j = bj, send the other j
        const float sj = bj ? s[1][e] : s[0][e], so = bj ? s[0][e] : s[1][e];
        const float keep = hv ? sj : neutral, give = hv ? so : neutral;
        const float w = __shfl_xor_sync(0xffffffffu, give, 16);
        a[e] = sum_group ? keep + w : fmaxf(keep, w);
    }
    const float ak = be ? a[1] : a[0], ao = be ? a[0] : a[1];
    const float w8 = __shfl_xor_sync(0xffffffffu, ao, 8);  // lanes 8 apart: keep e = be
    float c = sum_group ? ak + w8 : fmaxf(ak, w8);
    const float w4 = __shfl_xor_sync(0xffffffffu, c, 4);  // lanes 4 apart: the last pair
    return sum_group ? c + w4 : fmaxf(c, w4);
}

// The lanes of even gq hold key j·8 + 2·t4 + e of v3_sel_reduce's result c, j = bit 2, e = bit 1 of gq: they write
// order_key(c) (0 for an invisible key: bit r of inv set for key r) to krow[row0 + key] below kend.
__device__ __forceinline__ void v3_sel_store(float c, uint32_t inv, int gq, int t4, int row0, int kend,
                                             uint32_t* __restrict__ krow) {
    if ((gq & 1) == 0) {
        const int row = ((gq >> 2) & 1) * 8 + 2 * t4 + ((gq >> 1) & 1), idx = row0 + row;
        if (idx < kend) krow[idx] = ((inv >> row) & 1u) ? 0u : order_key(c);
    }
}

}  // namespace tp
