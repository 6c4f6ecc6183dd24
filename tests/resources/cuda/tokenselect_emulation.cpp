// Host emulation of TokenSelect's device vote (cuda/policy_ops.cu), compiled with g++ by TokenSelectEmulationTest: the
// test pastes tokenselect_softmax_kernel, tokenselect_vote_kernel and tokenselect_expand_kernel in place of the
// KERNELS line below and runs them with one host thread per CUDA thread (barriers and shuffles emulated over the
// block's threads). Between vote and expansion a straightforward selection from the keys stands in for
// tp_tidal_select's (passed on a GPU): the k largest keys, lower slot first on ties, ascending. Checked against
// TokenSelectPolicy's host vote written again here (float differences, double exp and sequential double sums, the
// heads' (float) probabilities added in head order): every vote within one float ulp per head of the host's (the
// kernel's double sum is a tree), the selected candidates the host's top k except such near-ties, and the first init
// / last local slots.
#include <random>

#include "emulation.h"

static float key_value(uint32_t k) {  // the inverse of order_key for a non-zero key
    uint32_t b = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

/*KERNELS*/

static Pool* g_pool;
template <typename F>
static void run_blocks(unsigned gx, unsigned threads, bool sync, F body) { g_pool->run(gx, 1, threads, sync, body); }

static int fails = 0;

static void one_case(std::mt19937& rng, int heads, int hkv, int t, int len, int k, int init, int local, int invisible) {
    std::normal_distribution<float> N(0.f, 3.f);
    std::vector<float> raw((size_t)heads * len, kNegInf);
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < t; i++)
            raw[(size_t)h * len + i] = (invisible > 0 && i >= t - invisible) || (h == 1 && invisible < 0) ? kNegInf : N(rng);
    std::vector<int> params(3 + hkv, 0);
    params[0] = t;
    std::vector<double2> stats(heads);
    run_blocks((unsigned)heads, 512, true, [&] { tokenselect_softmax_kernel(stats.data(), raw.data(), len, params.data(), init, local); });
    std::vector<uint32_t> keys(len, 0xdeadbeefu);
    run_blocks((unsigned)((len + 255) / 256), 256, false, [&] {
        tokenselect_vote_kernel(keys.data(), raw.data(), stats.data(), heads, len, params.data(), init, local);
    });
    // the host vote
    const int from = init, to = t - local;
    std::vector<float> vote(t, 0.f);
    std::vector<double> e(t);
    for (int h = 0; h < heads; h++) {
        float mx = kNegInf;
        for (int i = from; i < to; i++) mx = std::max(mx, raw[(size_t)h * len + i]);
        if (mx == kNegInf) continue;
        double sum = 0;
        for (int i = from; i < to; i++) sum += e[i] = std::exp((double)(raw[(size_t)h * len + i] - mx));
        for (int i = from; i < to; i++) vote[i] += (float)(e[i] / sum);
    }
    for (int i = 0; i < len; i++) {
        bool cand = i >= from && i < to;
        // the kernel's double sum is a tree, the host's sequential: at most one float ulp per head apart
        bool bad = cand ? (keys[i] == 0u || std::fabs(key_value(keys[i]) - vote[i]) > heads * std::nextafter(std::fabs(vote[i]), INFINITY) - heads * std::fabs(vote[i]))
                        : keys[i] != 0u;
        if (bad && fails++ < 10)
            std::printf("MISMATCH heads=%d t=%d init=%d local=%d slot %d: key %08x (%g) vs vote %g\n", heads, t, init, local,
                        i, keys[i], keys[i] ? key_value(keys[i]) : 0.f, cand ? vote[i] : 0.f);
    }
    // the k largest keys (ties lower slot), ascending, then the expansion
    std::vector<int> cand;
    for (int i = 0; i < std::min(params[0], len); i++) if (keys[i] != 0u) cand.push_back(i);
    std::stable_sort(cand.begin(), cand.end(), [&](int a, int b) { return keys[a] > keys[b]; });
    int n = std::min(k, (int)cand.size());
    std::vector<int> top(cand.begin(), cand.begin() + n);
    std::sort(top.begin(), top.end());
    std::vector<int> topv(std::max(1, k), -7);
    for (int i = 0; i < n; i++) topv[i] = top[i];
    int topCount = n;
    const int stride = init + k + local;
    std::vector<int> slots((size_t)hkv * stride, -9), counts(hkv, -9);
    run_blocks((unsigned)hkv, 256, false, [&] {
        tokenselect_expand_kernel(slots.data(), counts.data(), stride, topv.data(), &topCount, params.data(), init, local);
    });
    // the host's selection: first init, its top k (ties lower slot), last local
    std::vector<int> idx;
    for (int i = from; i < to; i++) idx.push_back(i);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return vote[a] > vote[b]; });
    float thr = vote[idx[k - 1]];
    std::vector<char> want(t, 0);
    for (int i = 0; i < k; i++) want[idx[i]] = 1;
    for (int g = 0; g < hkv; g++) {
        bool ok = counts[g] == init + k + local;
        const int* s = slots.data() + (size_t)g * stride;
        for (int i = 0; ok && i < init; i++) ok = s[i] == i;
        for (int i = 0; ok && i < local; i++) ok = s[init + k + i] == t - local + i;
        std::vector<char> in(t, 0);
        for (int i = 0; ok && i < k; i++) {
            ok = s[init + i] >= from && s[init + i] < to && (i == 0 || s[init + i] > s[init + i - 1]);
            if (ok) in[s[init + i]] = 1;
        }
        for (int i = from; ok && i < to; i++)
            if (in[i] != want[i]) ok = thr != 0.f && std::fabs(vote[i] - thr) <= 2.f * heads * (std::nextafter(std::fabs(thr), INFINITY) - std::fabs(thr));
        if (!ok && fails++ < 10) std::printf("MISMATCH heads=%d t=%d k=%d init=%d local=%d: KV head %d selection\n", heads, t, k, init, local, g);
    }
}

int main() {
    Pool pool(512);  // tokenselect_softmax_kernel's block
    g_pool = &pool;
    std::mt19937 rng(99);
    int cases = 0;
    for (int heads : {1, 4, 8})
        for (int t : {20, 300, 3000})
            for (int invisible : {0, 5, -1})  // none; the last 5 tokens invisible; q-head 1 sees no candidate
                for (int kil = 0; kil < 3; kil++) {
                    int init = kil == 0 ? 0 : 4, local = kil == 0 ? 0 : kil == 1 ? 8 : 1;
                    int k = kil == 2 ? t - init - local - 1 : std::max(1, (t - init - local) / 4);
                    int len = 1;
                    while (len < t) len <<= 1;
                    one_case(rng, heads, 2, t, len, k, init, local, invisible);
                    cases++;
                }
    std::printf("%d cases, %d mismatches\n", cases, fails);
    if (fails == 0) std::printf("ALL OK\n");
    return fails == 0 ? 0 : 1;
}
