// Host emulation of Quest's device page selection (cuda/policy_ops.cu), compiled with g++ by QuestSelectEmulationTest:
// the test pastes quest_page_keys_kernel and quest_expand_kernel in place of the KERNELS line below and runs them
// with one host thread per CUDA thread (the expand kernel's barriers and shuffles are emulated over the block's
// threads). Between the two runs a straightforward selection from the keys stands in for tp_tidal_select's (which
// has passed its own parity tests on a GPU): the slot with cur[g] kept when its key is not 0, then the best
// min(k, candidates) - 1 other keys, lower page first on ties, ascending. The result must equal QuestPolicy's host
// selection (QuestPolicy.selectFromBounds, written again here) on random caches: freed slots, pages without a
// visible slot, a causal cut, an absent current token, ties (+0 against -0 too), group sums that overflow to -inf,
// max and sum, budgets from 1 page to all of them.
#include <random>

#include "emulation.h"

/*KERNELS*/

static Pool* g_pool;

static int fails = 0;

// -1, -0, +0 or 1: many equal scores, and +0 against -0
static float tied(std::mt19937& rng) {
    switch (rng() % 4) {
        case 0: return -1.f;
        case 1: return -0.f;
        case 2: return 0.f;
        default: return 1.f;
    }
}

static int one_case(std::mt19937& rng, int hkv, int group, int page, int hwMax, int allowed, bool sum, int mode) {
    const int heads = hkv * group, layer = 1, L = 2, cap = hwMax + 3;
    std::uniform_real_distribution<float> U(-3, 3);
    std::vector<int> hw(hkv), pc((size_t)L * hkv * cap, -1);
    int qpos = hwMax - 1 - (mode == 1 ? hwMax / 3 : 0);  // mode 1: a causal cut
    int keep = mode == 2 ? hwMax + 50 : qpos;           // mode 2: no slot holds the current token
    for (int g = 0; g < hkv; g++) {
        hw[g] = g == hkv - 1 ? std::max(1, hwMax - 1 - (int)(rng() % (2 * page + 1))) : hwMax;
        int* p = pc.data() + ((size_t)layer * hkv + g) * cap;
        for (int s = 0; s < hw[g]; s++) p[s] = (rng() % 5 == 0) ? -1 : s;  // a fifth freed
        if (hw[g] > 2 * page)
            for (int s = page; s < 2 * page; s++) p[s] = -1;  // a whole page freed
    }
    int pagesMax = 0;
    std::vector<int> pages(hkv), curPage(hkv);
    for (int g = 0; g < hkv; g++) {
        pages[g] = (hw[g] + page - 1) / page;
        pagesMax = std::max(pagesMax, pages[g]);
        const int* p = pc.data() + ((size_t)layer * hkv + g) * cap;
        int cs = -1;
        for (int s = hw[g] - 1; s >= 0; s--)
            if (p[s] == keep) { cs = s; break; }
        curPage[g] = cs < 0 ? pages[g] - 1 : cs / page;
    }
    int len = 1;
    while (len < pagesMax) len <<= 1;
    // bounds [H][len]: -inf for a page without a visible slot (as tp_quest_page_scores), else random (ties in mode 3)
    std::vector<float> bounds((size_t)heads * len, kNegInf);
    for (int g = 0; g < hkv; g++) {
        const int* p = pc.data() + ((size_t)layer * hkv + g) * cap;
        for (int pg = 0; pg < pages[g]; pg++) {
            bool vis = false;
            for (int s = pg * page; s < std::min(hw[g], (pg + 1) * page); s++) vis |= p[s] >= 0 && p[s] <= qpos;
            if (!vis) continue;
            for (int j = 0; j < group; j++)
                bounds[((size_t)g * group + j) * len + pg] = mode == 3 ? tied(rng) : mode == 4 ? -1.5e38f + U(rng) * 1e37f
                                                                                                   : U(rng);
        }
    }
    // params: pages | query_pos | 0 | high_water | cur_page
    std::vector<int> params(3 * hkv + 2, 0);
    for (int g = 0; g < hkv; g++) {
        params[g] = pages[g];
        params[hkv + 2 + g] = hw[g];
        params[2 * hkv + 2 + g] = curPage[g];
    }
    params[hkv] = qpos;
    std::vector<uint32_t> keys((size_t)hkv * len, 0xdeadbeefu);
    std::vector<int> cur(hkv, -1);
    g_pool->run((unsigned)((len + 255) / 256), (unsigned)hkv, 256, false, [&] {
        quest_page_keys_kernel(keys.data(), len, cur.data(), bounds.data(), group, hkv, params.data(), sum ? 1 : 0);
    });
    // the selection from keys (tp_tidal_select's contract), then the expansion
    const int k = allowed;
    std::vector<int> plist((size_t)hkv * k, -7), pcount(hkv, 0);
    for (int g = 0; g < hkv; g++) {
        int n = std::min(params[g], len);
        const uint32_t* key = keys.data() + (size_t)g * len;
        int visible = 0;
        for (int s = 0; s < n; s++) visible += key[s] != 0u;
        int total = std::min(k, visible);
        bool forced = cur[g] >= 0 && cur[g] < n && key[cur[g]] != 0u && total > 0;
        std::vector<int> cand;
        for (int s = 0; s < n; s++)
            if (key[s] != 0u && !(forced && s == cur[g])) cand.push_back(s);
        std::stable_sort(cand.begin(), cand.end(), [&](int a, int b) { return key[a] > key[b]; });
        std::vector<int> sel;
        if (forced) sel.push_back(cur[g]);
        for (int i = 0; (int)sel.size() < total && i < (int)cand.size(); i++) sel.push_back(cand[i]);
        std::sort(sel.begin(), sel.end());
        for (size_t i = 0; i < sel.size(); i++) plist[(size_t)g * k + i] = sel[i];
        pcount[g] = (int)sel.size();
    }
    const int stride = k * page;
    std::vector<int> slots((size_t)hkv * stride, -9), counts(hkv, -9);
    g_pool->run((unsigned)hkv, 1, 256, true, [&] {
        quest_expand_kernel(slots.data(), counts.data(), stride, plist.data(), pcount.data(), k, pc.data(), layer, hkv,
                            cap, params.data(), page);
    });
    // QuestPolicy.selectFromBounds
    for (int g = 0; g < hkv; g++) {
        const int* p = pc.data() + ((size_t)layer * hkv + g) * cap;
        int np = pages[g], cp = curPage[g];
        std::vector<float> score(np);
        for (int pg = 0; pg < np; pg++) {
            float v = sum ? 0.f : kNegInf;
            bool any = false;
            for (int j = 0; j < group; j++) {
                float b = bounds[((size_t)g * group + j) * len + pg];
                if (b == kNegInf) continue;
                any = true;
                v = sum ? v + b : std::max(v, b);
            }
            score[pg] = any ? v : kNegInf;
        }
        std::vector<char> chosen(np, 0);
        if (cp >= 0) {
            score[cp] = kNegInf;
            chosen[cp] = 1;
        }
        std::vector<int> idx;
        for (int pg = 0; pg < np; pg++) if (score[pg] != kNegInf) idx.push_back(pg);
        std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return score[a] > score[b]; });
        for (int i = 0; i < std::min((int)idx.size(), allowed - 1); i++) chosen[idx[i]] = 1;
        std::vector<int> want;
        for (int pg = 0; pg < np; pg++)
            if (chosen[pg])
                for (int s = pg * page; s < std::min(hw[g], (pg + 1) * page); s++)
                    if (p[s] >= 0 && p[s] <= qpos) want.push_back(s);
        bool ok = counts[g] == (int)want.size();
        for (size_t i = 0; ok && i < want.size(); i++) ok = slots[(size_t)g * stride + i] == want[i];
        if (!ok) {
            if (fails++ < 10)
                std::printf("MISMATCH hkv=%d group=%d page=%d hw=%d allowed=%d sum=%d mode=%d head %d: count %d vs %zu\n", hkv,
                            group, page, hw[g], allowed, sum, mode, g, counts[g], want.size());
            return 1;
        }
    }
    return 0;
}

int main() {
    Pool pool(256);  // quest_expand_kernel's block
    g_pool = &pool;
    std::mt19937 rng(12345);
    int cases = 0;
    for (int page : {1, 4, 16})
        for (int group : {1, 3, 4})
            for (int hwMax : {5, 70, 700})
                for (int mode = 0; mode < 5; mode++)  // 4: bounds near -1.5e38, whose group sums overflow to -inf
                    for (bool sum : {false, true})
                        for (int allowed : {1, 2, 7, 1000}) {
                            one_case(rng, 2, group, page, hwMax, allowed, sum, mode);
                            cases++;
                        }
    std::printf("%d cases, %d mismatches\n", cases, fails);
    if (fails == 0) std::printf("ALL OK\n");
    return fails == 0 ? 0 : 1;
}
