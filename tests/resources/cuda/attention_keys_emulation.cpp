// Host emulation of the selection keys decode attention v3 writes for TidalDecode (v3_sel_reduce and v3_sel_store in
// cuda/sel_keys.cuh), compiled with g++ by AttentionKeysEmulationTest: the test pastes the functions in place
// of the KEYS line below and runs it with one host thread per lane of a warp (shuffles emulated over the warp's
// threads, emulation.h). Each lane gets its scores where the MMA C fragment puts them (lane 4·gq + t4 holds head
// gq's score of key j·8 + 2·t4 + e in s[j][e]; the same mapping the kernel's softmax reads), with garbage in the rows
// of heads past the group; the keys written must be order_key of the group's max, or of its sum in the reduce-scatter's
// order ((h0 + h4) + (h2 + h6)) + ((h1 + h5) + (h3 + h7)), 0 for invisible keys, nothing at or past kend or outside
// the stage. Checked on random stages: groups 1..8, max and sum, invisible keys, stage offsets and kend cuts.
#include <random>

#include "emulation.h"

/*KEYS*/

// a stage's keys as the kernel writes them: reduced, then stored (after the stage's P·V MMAs there)
static void v3_stage_sel_keys(const float (&s)[2][2], uint32_t inv, int gq, int t4, int nh, int sum_group, int row0,
                              int kend, uint32_t* krow) {
    v3_sel_store(v3_sel_reduce(s, gq, nh, sum_group), inv, gq, t4, row0, kend, krow);
}

int main() {
    Pool pool(32);
    std::mt19937 rng(777);
    std::uniform_real_distribution<float> U(-4, 4);
    int fails = 0, cases = 0;
    for (int it = 0; it < 1000; it++) {
        const int nh = 1 + (int)(rng() % 8), sum = (int)(rng() % 2);
        const int row0 = 16 * (int)(rng() % 6), len = 128;
        const int kend = rng() % 3 == 0 ? row0 + (int)(rng() % 17) : len;
        uint32_t inv = 0;
        for (int r = 0; r < 16; r++) if (rng() % 4 == 0) inv |= 1u << r;
        float sc[8][16];
        for (int h = 0; h < 8; h++)
            for (int r = 0; r < 16; r++) sc[h][r] = ((inv >> r) & 1u) ? kNegInf : (h < nh ? U(rng) : 1e30f);
        if (it % 7 == 0) for (int h = 0; h < nh; h++) sc[h][3] = h == 0 ? -0.f : 0.f;  // +0 against -0
        std::vector<uint32_t> keys(len, 0xdeadbeefu);
        pool.run(1, 1, 32, true, [&] {  // one warp
            const int lane = (int)threadIdx.x, gq = lane >> 2, t4 = lane & 3;
            float s[2][2];
            for (int j = 0; j < 2; j++)
                for (int e = 0; e < 2; e++) s[j][e] = sc[gq][j * 8 + 2 * t4 + e];
            v3_stage_sel_keys(s, inv, gq, t4, nh, sum, row0, kend, keys.data());
        });
        for (int idx = 0; idx < len; idx++) {
            const int r = idx - row0;
            uint32_t want = 0xdeadbeefu;
            if (r >= 0 && r < 16 && idx < kend) {
                float v[8];
                for (int h = 0; h < 8; h++) v[h] = h < nh ? sc[h][r] : (sum ? 0.f : kNegInf);
                float g = sum ? ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]))
                              : std::fmax(std::fmax(std::fmax(v[0], v[1]), std::fmax(v[2], v[3])),
                                          std::fmax(std::fmax(v[4], v[5]), std::fmax(v[6], v[7])));
                want = ((inv >> r) & 1u) ? 0u : order_key(g);
            }
            if (keys[idx] != want) {
                if (fails++ < 10)
                    std::printf("MISMATCH it=%d nh=%d sum=%d row0=%d kend=%d key %d: %08x vs %08x\n", it, nh, sum, row0,
                                kend, idx, keys[idx], want);
            }
        }
        cases++;
    }
    std::printf("%d stages, %d mismatches\n", cases, fails);
    if (fails == 0) std::printf("ALL OK\n");
    return fails == 0 ? 0 : 1;
}
