// Host emulation of the selection from keys (cuda/tidal_select.cu: tidal_hist_plan_kernel, tidal_collect_kernel,
// tidal_compact_kernel and the device functions they call, launched as tp::launch_tidal_select_from_keys launches
// them), compiled with g++ by SelectFromKeysEmulationTest: the test pastes the constants, the workspace layout and those
// functions in place of the SELECT line below; every kernel runs with one host thread per CUDA thread, the blocks one
// after another (the last block of a KV head is the last to take its ticket, as on a GPU where it finishes last).
// Each case fills the order keys of every KV head (0 = not a candidate; random keys with many ties, runs of equal
// keys and keys crowded into one top bin, so the threshold falls inside a bin and the collect pass has candidates)
// and the current slot, runs the three kernels, and compares with a straightforward selection: the current slot
// when its key is not 0 and k > 0, then the best min(k, visible) - that others, higher key first, lower slot first on
// ties, ascending; the count; the histograms, tickets and candidate count zero again and cur reset to -1. Three
// rows-per-block settings of the histogram pass (tp_tidal_select_set_hist_rows) in turn, and the collect pass with one
// and with kInFlight candidate-list entries in flight (tp_tidal_select_set_collect_batch) in turn.
#include <random>

#include "emulation.h"

static inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
using std::max;

/*SELECT*/

static int fails = 0;

static bool one_case(std::mt19937& rng, Pool& p128, Pool& p512, int hkv, int len, int k, int rows_per_block, int mode,
                     bool batched) {
    Layout lay = layout(hkv, len);
    std::vector<uint8_t> ws(lay.bytes, 0);
    uint32_t* state = reinterpret_cast<uint32_t*>(ws.data());
    uint32_t* keys = reinterpret_cast<uint32_t*>(ws.data() + lay.keys);
    std::vector<int> params(hkv + 2), cur(hkv, -1), hw(hkv);
    std::vector<int> out((size_t)hkv * std::max(k, 1), -7), counts(hkv, -7);
    const int stride = std::max(k, 1);
    for (int g = 0; g < hkv; g++) {
        hw[g] = g == 1 ? std::max(1, len - (int)(rng() % 300)) : len;  // a shorter head
        params[g] = hw[g];
        const uint32_t crowd = 0xC1200000u + (uint32_t)(rng() % 64) * 0x1000u;  // one top bin, many keys
        for (int s = 0; s < len; s++) {
            uint32_t e;
            switch (mode) {
                case 0: e = 0x80000000u + (uint32_t)(rng() % 0x7fffffffu); break;         // spread
                case 1: e = 0xC0000000u + (uint32_t)(rng() % 6) * 0x100u; break;          // heavy ties
                default: e = rng() % 3 == 0 ? crowd + (uint32_t)(rng() % 0x800u)           // crowded in one bin
                                            : 0x80000000u + (uint32_t)(rng() % 0x40000000u);
            }
            if (rng() % 7 == 0) e = 0u;  // not a candidate
            keys[(size_t)g * len + s] = s < hw[g] ? e : (uint32_t)(rng() % 2 ? 0u : e);  // past hw: anything
        }
        int cs = (int)(rng() % (hw[g] + 2)) - 1;  // -1 .. hw: absent, a slot, or past the high-water mark
        if (rng() % 4 == 0 && cs >= 0 && cs < len) keys[(size_t)g * len + cs] = 0u;  // the current slot invisible
        cur[g] = cs;
    }
    params[hkv] = len - 1;
    params[hkv + 1] = 0;
    std::vector<uint32_t> keys0(keys, keys + (size_t)hkv * len);
    std::vector<int> cur0 = cur;

    // tp::launch_tidal_select_from_keys' three launches
    p128.run((unsigned)ceil_div(len, rows_per_block), (unsigned)hkv, kTileRows, true, [&] {
        tidal_hist_plan_kernel(keys, len, cur.data(), params.data(), rows_per_block, state, k);
    });
    auto collect = batched ? tidal_collect_kernel<kInFlight> : tidal_collect_kernel<1>;
    p512.run((unsigned)lay.chunks, (unsigned)hkv, kChunkThreads, true, [&] {
        collect(keys, len, params.data(), state, lay.chunk,
                             reinterpret_cast<uint32_t*>(ws.data() + lay.cand_key),
                             reinterpret_cast<int*>(ws.data() + lay.cand_slot), reinterpret_cast<int*>(ws.data() + lay.blk_gt),
                             reinterpret_cast<int*>(ws.data() + lay.blk_off), reinterpret_cast<int*>(ws.data() + lay.blk_eqb),
                             counts.data());
    });
    p512.run((unsigned)lay.chunks, (unsigned)hkv, kChunkThreads, true, [&] {
        tidal_compact_kernel(keys, len, params.data(), state, lay.chunk,
                             reinterpret_cast<const int*>(ws.data() + lay.blk_off),
                             reinterpret_cast<const int*>(ws.data() + lay.blk_eqb), out.data(), stride);
    });

    bool ok = true;
    auto fail = [&](const char* what, int g, long a, long b) {
        if (fails++ < 12)
            std::printf("MISMATCH hkv=%d len=%d k=%d rows=%d mode=%d batched=%d head %d: %s %ld vs %ld\n", hkv, len, k,
                        rows_per_block, mode, (int)batched, g, what, a, b);
        ok = false;
    };
    for (int g = 0; g < hkv; g++) {
        const int n = std::min(hw[g], len);
        const uint32_t* kg = keys0.data() + (size_t)g * len;
        int visible = 0;
        for (int s = 0; s < n; s++) visible += kg[s] != 0u;
        const int total = std::min(visible, k);
        const int cs = cur0[g];
        const bool take_cur = cs >= 0 && cs < n && kg[cs] != 0u && total > 0;
        std::vector<std::pair<uint32_t, int>> others;
        for (int s = 0; s < n; s++)
            if (kg[s] != 0u && !(take_cur && s == cs)) others.push_back({kg[s], s});
        std::sort(others.begin(), others.end(), [](auto& a, auto& b) { return a.first != b.first ? a.first > b.first : a.second < b.second; });
        std::vector<int> want;
        for (int i = 0; i < total - (take_cur ? 1 : 0); i++) want.push_back(others[i].second);
        if (take_cur) want.push_back(cs);
        std::sort(want.begin(), want.end());
        if (counts[g] != total) fail("count", g, counts[g], total);
        for (int i = 0; i < total && ok; i++)
            if (out[(size_t)g * stride + i] != want[i]) fail("slot", g, out[(size_t)g * stride + i], want[i]);
        if (cur[g] != -1) fail("cur reset", g, cur[g], -1);
    }
    // what must be zero before the next call: both histograms, the tickets and the candidate count (the plan words
    // are written by every call)
    for (int g = 0; g < hkv; g++) {
        const uint32_t* st = state + (size_t)g * kStateWords;
        for (int w = 0; w < kBins1 + kBins2; w++)
            if (st[w] != 0u) {
                fail("histogram word not zero again", g, w, st[w]);
                break;
            }
        for (int w : {(int)kTicket1, (int)kTicket2, (int)kCandCount})
            if (st[kBins1 + kBins2 + w] != 0u) fail("info word not zero again", g, w, st[kBins1 + kBins2 + w]);
    }
    return ok;
}

int main() {
    Pool p128(kTileRows), p512(kChunkThreads);
    std::mt19937 rng(2024);
    int cases = 0;
    const int lens[] = {1, 130, 2049, 9000};
    const int ks[] = {0, 1, 64, 700, 30000};
    const int rows[] = {16 * kTileRows, kTileRows, 64 * kTileRows};
    for (int len : lens)
        for (int k : ks)
            for (int mode = 0; mode < 3; mode++) {
                const int hkv = 1 + (int)(rng() % 3);
                one_case(rng, p128, p512, hkv, len, k, rows[cases % 3], mode, cases % 2 == 1);
                cases++;
            }
    std::printf("%d cases, %d mismatches\n", cases, fails);
    if (fails == 0) std::printf("ALL OK\n");
    return fails == 0 ? 0 : 1;
}
