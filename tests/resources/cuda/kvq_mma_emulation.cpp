// Host emulation of the tensor-core quantized attention (cuda/kvq_mma.cuh, kv_quant.cu's variant 4), compiled with
// g++ by KvqMmaEmulationTest: the test puts the header's include at the marker below; the kernel runs block after
// block with one host thread per CUDA thread (emulation.h) and the MMA, cp.async and shared memory of
// mma_emulation.h. Random packed caches (record layout of kvq_layout.cuh, random codes and f16 parameters, an f32
// residual window) with in-order blocks, permuted blocks, freed slots, future positions, lanes moved inside their
// block and lists of selected slots; NaN parameters on lanes no visible slot uses. Each case runs with cp.async
// landing at issue and at the wait, with one split (direct output) and with several (partial states + the merge of
// kvq_merge_kernel), and is compared with attention over the dequantized cache in double precision.
#include <random>

#include "emulation.h"
#include "mma_emulation.h"

/*KVQ_MMA*/

using tp::Layout;

struct Case {
    int hd, bits, G, group, kv_heads, layers, layer, C, len, res_cap, splits, mode;
    bool sel;
};

static uint16_t f16_bits(float v) {  // exact for the values used here (short mantissas)
    for (uint32_t h = 0; h < 0x7c00u; h++) {
        if (emu_f16_f(h) == v) return (uint16_t)h;
        if (emu_f16_f(h | 0x8000u) == v) return (uint16_t)(h | 0x8000u);
    }
    std::abort();
}

static tp::KvqMmaKeys g_keys{};  // the scores mode's outputs (keys != nullptr: run the scores mode)
static int* g_counters = nullptr;  // split counters: the last split merges (else kvq_merge_kernel's merge here)

template <int HD, int BITS, int NG>
static void launch(Pool& pool, const Case& cs, float* out, float* ws, const float* q, const uint8_t* pl,
                   const float* wk, const float* wv, const int* pc, const int* lc, const Layout& L, const int* qp,
                   const int* sel, int sel_stride, const int* sel_counts, const int* hw, float scale_log2,
                   float* lse2) {
    using Sh = tp::KvqMmaShape<HD, BITS, NG>;
    std::vector<unsigned char> smem(Sh::kSmemBytes, 0xFF);  // NaN bits where nothing was written
    std::vector<float> sm_m(tp::kKvqMmaWarps * tp::kKvqMmaHeads), sm_d(sm_m.size());
    g_smem_base = smem.data();
    g_smem_bytes = smem.size();
    const int H = cs.kv_heads * cs.group, chunks = (cs.group + 7) / 8;
    if (g_keys.keys) {
        std::vector<unsigned char> ssm(tp::KvqMmaShape<HD, BITS, NG, true>::kSmemBytes, 0xFF);  // the scores mode's size
        g_smem_base = ssm.data();
        g_smem_bytes = ssm.size();
        pool.run(cs.splits, cs.kv_heads, tp::kKvqMmaThreads, true, [&] {
            tp::kvq_mma_block<HD, BITS, NG, true>(ssm.data(), nullptr, nullptr, nullptr, nullptr, q, pl, wk, wv, pc,
                                                  lc, cs.layer, H, cs.kv_heads, cs.C, cs.res_cap, 1 + cs.C / cs.G + 2,
                                                  L, qp, nullptr, 0, nullptr, hw, cs.splits, 1.f, nullptr, nullptr,
                                                  g_keys);
        });
        return;
    }
    pool.run(cs.splits, cs.kv_heads * chunks, tp::kKvqMmaThreads, true, [&] {
        tp::kvq_mma_block<HD, BITS, NG>(smem.data(), sm_m.data(), sm_d.data(), out, ws, q, pl, wk, wv, pc, lc,
                                        cs.layer, H, cs.kv_heads, cs.C, cs.res_cap, 1 + cs.C / cs.G + 2, L, qp, sel,
                                        sel_stride, sel_counts, hw, cs.splits, scale_log2, lse2, g_counters);
    });
    if (cs.splits > 1 && g_counters == nullptr) {  // kvq_merge_kernel
        for (int rh = 0; rh < H; rh++) {
            const float* ml = ws + (int64_t)rh * cs.splits * 2;
            const float* po = ws + (int64_t)H * cs.splits * 2 + (int64_t)rh * cs.splits * HD;
            float mm = kNegInf;
            for (int s = 0; s < cs.splits; s++) mm = std::max(mm, ml[2 * s]);
            for (int c = 0; c < HD; c++) {
                float d = 0.f, o = 0.f;
                if (mm != kNegInf)
                    for (int s = 0; s < cs.splits; s++) {
                        float a = exp2_diff(ml[2 * s], mm);
                        d += ml[2 * s + 1] * a;
                        o += po[(int64_t)s * HD + c] * a;
                    }
                out[(int64_t)rh * HD + c] = d > 0.f ? o / d : 0.f;
                if (c == 0) lse2[rh] = d > 0.f ? mm + std::log2(d) : kNegInf;
            }
        }
    }
}

template <int HD, int BITS>
static void dispatch(int ng, Pool& pool, const Case& cs, float* out, float* ws, const float* q, const uint8_t* pl,
                     const float* wk, const float* wv, const int* pc, const int* lc, const Layout& L, const int* qp,
                     const int* sel, int sel_stride, const int* sel_counts, const int* hw, float sl, float* lse2) {
    if (ng == 1) launch<HD, BITS, 1>(pool, cs, out, ws, q, pl, wk, wv, pc, lc, L, qp, sel, sel_stride, sel_counts, hw, sl, lse2);
    else if (ng == 2) launch<HD, BITS, 2>(pool, cs, out, ws, q, pl, wk, wv, pc, lc, L, qp, sel, sel_stride, sel_counts, hw, sl, lse2);
    else if (ng == 4) launch<HD, BITS, 4>(pool, cs, out, ws, q, pl, wk, wv, pc, lc, L, qp, sel, sel_stride, sel_counts, hw, sl, lse2);
    else if constexpr (HD == 128) {
        if (ng == 8) launch<HD, BITS, 8>(pool, cs, out, ws, q, pl, wk, wv, pc, lc, L, qp, sel, sel_stride, sel_counts, hw, sl, lse2);
        else std::abort();
    } else std::abort();
}

// One case: returns the number of mismatches.
static int run_case(Pool& pool, const Case& cs, std::mt19937& rng) {
    const Layout L = tp::make_layout(cs.hd, cs.G, cs.bits);
    const int HD = cs.hd, H = cs.kv_heads * cs.group, max_blocks = 1 + cs.C / cs.G + 2;
    const int heads_total = cs.layers * cs.kv_heads;
    std::uniform_real_distribution<float> U(-1.f, 1.f);
    std::vector<uint8_t> pool_b((size_t)heads_total * max_blocks * L.bytes);
    for (auto& b : pool_b) b = (uint8_t)rng();
    // parameters: f16 with short mantissas (exact), keys per channel per block, values per token per group
    auto rnd_f16 = [&](float lo, float hi) {
        float v = lo + (hi - lo) * (float)(rng() % 1024) / 1024.f;
        return f16_bits(std::ldexp(std::round(std::ldexp(v, 8)), -8));
    };
    for (int hb = 0; hb < heads_total; hb++)
        for (int b = 0; b < max_blocks; b++) {
            uint8_t* rec = pool_b.data() + ((size_t)hb * max_blocks + b) * L.bytes;
            uint16_t* kz = (uint16_t*)(rec + L.off_kz);
            uint16_t* ks = (uint16_t*)(rec + L.off_ks);
            uint16_t* vz = (uint16_t*)(rec + L.off_vz);
            uint16_t* vs = (uint16_t*)(rec + L.off_vs);
            for (int c = 0; c < HD; c++) { kz[c] = rnd_f16(-2.f, 0.f); ks[c] = rnd_f16(0.02f, 0.3f); }
            for (int i = 0; i < cs.G * L.ng; i++) { vz[i] = rnd_f16(-1.f, 0.f); vs[i] = rnd_f16(0.02f, 0.2f); }
        }
    std::vector<float> wk((size_t)heads_total * cs.res_cap * HD), wv(wk.size());
    for (auto& x : wk) x = U(rng);
    for (auto& x : wv) x = U(rng);
    std::vector<int> pc((size_t)heads_total * cs.C, -1), lc((size_t)heads_total * cs.C, 0);
    std::vector<int> hw(cs.kv_heads, cs.len);
    const int qpos = cs.len + 3;
    // slots: the first blocks' worth of slots in blocks (in order or permuted), the rest window entries
    for (int kh = 0; kh < cs.kv_heads; kh++) {
        const int hb = cs.layer * cs.kv_heads + kh;
        int* p = pc.data() + (size_t)hb * cs.C;
        int* l = lc.data() + (size_t)hb * cs.C;
        const int in_blocks = std::max(0, std::min(cs.len - (int)(rng() % 40), cs.len)) / cs.G * cs.G;
        std::vector<int> perm(max_blocks);
        for (int b = 0; b < max_blocks; b++) perm[b] = b;
        if (cs.mode >= 1) std::shuffle(perm.begin(), perm.end(), rng);
        int entry = 0;
        for (int s = 0; s < cs.len; s++) {
            p[s] = s;
            if (s < in_blocks) l[s] = perm[s / cs.G] * cs.G + s % cs.G;
            else l[s] = -(1 + (entry++ % cs.res_cap));
        }
        if (cs.mode >= 2) {  // lanes swapped inside a block, then freed slots (stale locations) and future positions
            for (int k = 0; k < 3 && in_blocks >= 2; k++) {
                const int a = (int)(rng() % in_blocks), b = (a / cs.G) * cs.G + (int)(rng() % cs.G);
                std::swap(l[a], l[b]);
            }
            for (int s = 0; s < cs.len; s++) {
                const int r = (int)(rng() % 16);
                if (r == 0) {
                    p[s] = -1;
                    l[s] = (int)(rng() % (unsigned)(cs.res_cap + max_blocks * cs.G)) - cs.res_cap;
                } else if (r == 1) {
                    p[s] = qpos + 1 + (int)(rng() % 5);
                }
            }
            if (cs.len > 100) {  // a run of freed slots: whole stages without a visible row
                const int a = (int)(rng() % (unsigned)(cs.len - 60));
                for (int s = a; s < a + 40; s++) p[s] = -1;
            }
        }
        // NaN value parameters on block lanes no visible slot uses
        std::vector<char> used((size_t)max_blocks * cs.G, 0);
        for (int s = 0; s < cs.len; s++)
            if (p[s] >= 0 && p[s] <= qpos && l[s] >= 0) used[l[s]] = 1;
        for (int b = 0; b < max_blocks; b++) {
            uint8_t* rec = pool_b.data() + ((size_t)hb * max_blocks + b) * L.bytes;
            for (int t = 0; t < cs.G; t++)
                if (!used[(size_t)b * cs.G + t])
                    for (int g = 0; g < L.ng; g++) {
                        ((uint16_t*)(rec + L.off_vz))[t * L.ng + g] = 0x7e00u;
                        ((uint16_t*)(rec + L.off_vs))[t * L.ng + g] = 0x7e00u;
                    }
        }
    }
    // a selection list: a random subset of the slots, in random order
    int sel_stride = 0;
    std::vector<int> sel, sel_counts(cs.kv_heads, 0);
    if (cs.sel) {
        sel_stride = cs.len + 8;
        sel.assign((size_t)cs.kv_heads * sel_stride, -1);
        for (int kh = 0; kh < cs.kv_heads; kh++) {
            std::vector<int> ss;
            for (int s = 0; s < cs.len; s++) if (rng() % 3 != 0) ss.push_back(s);
            std::shuffle(ss.begin(), ss.end(), rng);
            if (rng() % 2) std::sort(ss.begin(), ss.end());
            for (size_t i = 0; i < ss.size(); i++) sel[(size_t)kh * sel_stride + i] = ss[i];
            sel_counts[kh] = (int)ss.size();
        }
    }
    std::vector<float> q((size_t)H * HD);
    for (auto& x : q) x = U(rng) * 2.f;
    const float scale_log2 = (float)(1.0 / std::sqrt((double)HD) * 1.4426950408889634);

    // reference: attention over the dequantized cache, double precision
    std::vector<double> ref((size_t)H * HD, 0.0), ref_lse(H, -INFINITY);
    double vmax = 0.0;
    for (int kh = 0; kh < cs.kv_heads; kh++) {
        const int hb = cs.layer * cs.kv_heads + kh;
        const int n = cs.sel ? sel_counts[kh] : cs.len;
        std::vector<std::vector<double>> K, V;
        for (int i = 0; i < n; i++) {
            const int s = cs.sel ? sel[(size_t)kh * sel_stride + i] : i;
            const int ps = pc[(size_t)hb * cs.C + s], l = lc[(size_t)hb * cs.C + s];
            if (!(ps >= 0 && ps <= qpos)) continue;
            std::vector<double> k(HD), v(HD);
            if (l < 0) {
                for (int c = 0; c < HD; c++) {
                    k[c] = wk[((size_t)hb * cs.res_cap + (-l - 1)) * HD + c];
                    v[c] = wv[((size_t)hb * cs.res_cap + (-l - 1)) * HD + c];
                }
            } else {
                const int blk = l / cs.G, t = l % cs.G;
                const uint8_t* rec = pool_b.data() + ((size_t)hb * max_blocks + blk) * L.bytes;
                for (int c = 0; c < HD; c++) {
                    const int kb = t * cs.bits, vb = c * cs.bits;
                    const uint32_t kn = (rec[L.off_kc + c * L.rbk + kb / 8] >> (kb % 8)) & ((1u << cs.bits) - 1u);
                    const uint32_t vn = (rec[L.off_vc + t * L.rbv + vb / 8] >> (vb % 8)) & ((1u << cs.bits) - 1u);
                    const int g = c / L.gs;
                    k[c] = (double)emu_f16_f(((uint16_t*)(rec + L.off_ks))[c]) * kn + emu_f16_f(((uint16_t*)(rec + L.off_kz))[c]);
                    v[c] = (double)emu_f16_f(((uint16_t*)(rec + L.off_vs))[t * L.ng + g]) * vn +
                           emu_f16_f(((uint16_t*)(rec + L.off_vz))[t * L.ng + g]);
                }
            }
            K.push_back(k);
            V.push_back(v);
        }
        for (int h = kh * cs.group; h < (kh + 1) * cs.group; h++) {
            if (K.empty()) continue;
            std::vector<double> sc(K.size());
            double mx = -INFINITY;
            for (size_t i = 0; i < K.size(); i++) {
                double x = 0;
                for (int c = 0; c < HD; c++) x += (double)(q[(size_t)h * HD + c] * scale_log2) * K[i][c];
                sc[i] = x;
                mx = std::max(mx, x);
            }
            double den = 0;
            for (size_t i = 0; i < K.size(); i++) den += std::exp2(sc[i] - mx);
            for (int c = 0; c < HD; c++) {
                double num = 0;
                for (size_t i = 0; i < K.size(); i++) num += std::exp2(sc[i] - mx) * V[i][c];
                ref[(size_t)h * HD + c] = num / den;
                vmax = std::max(vmax, std::fabs(num / den));
            }
            ref_lse[h] = mx + std::log2(den);
        }
    }

    int fails = 0;
    for (int lazy = 0; lazy < 2; lazy++) {
        g_cp_lazy = lazy == 1;
        std::vector<float> out((size_t)H * HD, 12345.f), lse2(H, 12345.f);
        std::vector<float> ws((size_t)H * cs.splits * (2 + HD), 777.f);
        // the first pass merges in the kernel (split counters, zero before and after), the second by the merge kernel
        std::vector<int> counters(cs.kv_heads * ((cs.group + 7) / 8), 0);
        g_counters = lazy == 0 && cs.splits > 1 ? counters.data() : nullptr;
        const int ng = L.ng;
        const float* wsel = nullptr;
        (void)wsel;
        const int* s_ptr = cs.sel ? sel.data() : nullptr;
        const int* sc_ptr = cs.sel ? sel_counts.data() : nullptr;
        if (HD == 64) {
            if (cs.bits == 2) dispatch<64, 2>(ng, pool, cs, out.data(), ws.data(), q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &qpos, s_ptr, sel_stride, sc_ptr, hw.data(), scale_log2, lse2.data());
            else if (cs.bits == 4) dispatch<64, 4>(ng, pool, cs, out.data(), ws.data(), q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &qpos, s_ptr, sel_stride, sc_ptr, hw.data(), scale_log2, lse2.data());
            else dispatch<64, 8>(ng, pool, cs, out.data(), ws.data(), q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &qpos, s_ptr, sel_stride, sc_ptr, hw.data(), scale_log2, lse2.data());
        } else {
            if (cs.bits == 2) dispatch<128, 2>(ng, pool, cs, out.data(), ws.data(), q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &qpos, s_ptr, sel_stride, sc_ptr, hw.data(), scale_log2, lse2.data());
            else if (cs.bits == 4) dispatch<128, 4>(ng, pool, cs, out.data(), ws.data(), q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &qpos, s_ptr, sel_stride, sc_ptr, hw.data(), scale_log2, lse2.data());
            else dispatch<128, 8>(ng, pool, cs, out.data(), ws.data(), q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &qpos, s_ptr, sel_stride, sc_ptr, hw.data(), scale_log2, lse2.data());
        }
        double err = 0, lerr = 0, lse_tol = 2e-5;
        for (int h = 0; h < H; h++)
            if (!std::isinf(ref_lse[h])) lse_tol = std::max(lse_tol, 2e-5 + 4e-7 * std::fabs(ref_lse[h]));
        for (size_t i = 0; i < out.size(); i++) {
            const double e = std::fabs((double)out[i] - ref[i]);
            if (!(e <= err)) err = std::isnan(e) ? INFINITY : std::max(err, e);
        }
        for (int h = 0; h < H; h++) {
            const bool none = std::isinf(ref_lse[h]);
            const double e = none ? (std::isinf(lse2[h]) && lse2[h] < 0 ? 0.0 : INFINITY) : std::fabs(lse2[h] - ref_lse[h]);
            if (!(e <= lerr)) lerr = std::isnan(e) ? INFINITY : std::max(lerr, e);
        }
        g_counters = nullptr;
        for (int c : counters)
            if (c != 0) g_emu_faults++;  // the counters must be left zero for the next call
        const double tol = 2e-5 * std::max(1.0, vmax);
        const bool ok = err <= tol && lerr <= lse_tol && g_emu_faults == 0;
        if (!ok) {
            fails++;
            std::printf("MISMATCH hd=%d bits=%d G=%d group=%d kv=%d len=%d splits=%d mode=%d sel=%d lazy=%d: max |out - ref| "
                        "%.3g (tol %.3g), lse %.3g, faults %d\n", cs.hd, cs.bits, cs.G, cs.group, cs.kv_heads, cs.len,
                        cs.splits, cs.mode, cs.sel ? 1 : 0, lazy, err, tol, lerr, g_emu_faults);
            g_emu_faults = 0;
        } else if (lazy == 1) {
            std::printf("ok hd=%d bits=%d G=%d group=%d len=%d splits=%d mode=%d sel=%d: max err %.2e, lse %.2e\n",
                        cs.hd, cs.bits, cs.G, cs.group, cs.len, cs.splits, cs.mode, cs.sel ? 1 : 0, err, lerr);
        }
    }
    // the scores mode (a group of at most 8 q-heads, no selection list): keys over a power-of-two length past the
    // high-water mark, order_key of the group's max or sum of raw q·k, 0 where invisible; cur = the last slot at
    // position keep
    if (!cs.sel && cs.group <= 8) {
        const int klen = [&] { int n = 1; while (n < cs.len + 5) n *= 2; return std::min(n, cs.C); }();
        for (int sum = 0; sum < 2; sum++) {
            const int keep = cs.len / 2;  // a position the cache holds (unless freed)
            std::vector<int> params(cs.kv_heads + 2);
            for (int g = 0; g < cs.kv_heads; g++) params[g] = std::max(0, cs.len - 7 * g);  // per KV head
            params[cs.kv_heads] = qpos;
            params[cs.kv_heads + 1] = keep;
            for (int lazy = 0; lazy < 2; lazy++) {
                g_cp_lazy = lazy == 1;
                std::vector<uint32_t> keys((size_t)cs.kv_heads * klen, 0xdeadbeefu);
                std::vector<int> cur(cs.kv_heads, -1);
                g_keys = {keys.data(), klen, cur.data(), &params[cs.kv_heads + 1], sum};
                std::vector<float> dummy(1);
                const int ng = L.ng;
                if (HD == 64) {
                    if (cs.bits == 2) dispatch<64, 2>(ng, pool, cs, nullptr, nullptr, q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &params[cs.kv_heads], nullptr, 0, nullptr, params.data(), 1.f, nullptr);
                    else if (cs.bits == 4) dispatch<64, 4>(ng, pool, cs, nullptr, nullptr, q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &params[cs.kv_heads], nullptr, 0, nullptr, params.data(), 1.f, nullptr);
                    else dispatch<64, 8>(ng, pool, cs, nullptr, nullptr, q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &params[cs.kv_heads], nullptr, 0, nullptr, params.data(), 1.f, nullptr);
                } else {
                    if (cs.bits == 2) dispatch<128, 2>(ng, pool, cs, nullptr, nullptr, q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &params[cs.kv_heads], nullptr, 0, nullptr, params.data(), 1.f, nullptr);
                    else if (cs.bits == 4) dispatch<128, 4>(ng, pool, cs, nullptr, nullptr, q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &params[cs.kv_heads], nullptr, 0, nullptr, params.data(), 1.f, nullptr);
                    else dispatch<128, 8>(ng, pool, cs, nullptr, nullptr, q.data(), pool_b.data(), wk.data(), wv.data(), pc.data(), lc.data(), L, &params[cs.kv_heads], nullptr, 0, nullptr, params.data(), 1.f, nullptr);
                }
                g_keys = {};
                int bad = 0;
                double kerr = 0;
                for (int kh = 0; kh < cs.kv_heads; kh++) {
                    const int hb = cs.layer * cs.kv_heads + kh;
                    int want_cur = -1;
                    for (int sl = 0; sl < klen; sl++) {
                        const int ps = sl < params[kh] ? pc[(size_t)hb * cs.C + sl] : -1;
                        if (ps >= 0 && ps == keep) want_cur = sl;
                        const uint32_t got = keys[(size_t)kh * klen + sl];
                        if (!(ps >= 0 && ps <= qpos)) {
                            if (got != 0u) bad++;
                            continue;
                        }
                        // the key's group score in double
                        const int l = lc[(size_t)hb * cs.C + sl];
                        std::vector<double> k(HD);
                        if (l < 0) {
                            for (int c = 0; c < HD; c++) k[c] = wk[((size_t)hb * cs.res_cap + (-l - 1)) * HD + c];
                        } else {
                            const int blk = l / cs.G, tt = l % cs.G;
                            const uint8_t* rec = pool_b.data() + ((size_t)hb * max_blocks + blk) * L.bytes;
                            for (int c = 0; c < HD; c++) {
                                const int kb = tt * cs.bits;
                                const uint32_t kn = (rec[L.off_kc + c * L.rbk + kb / 8] >> (kb % 8)) & ((1u << cs.bits) - 1u);
                                k[c] = (double)emu_f16_f(((uint16_t*)(rec + L.off_ks))[c]) * kn + emu_f16_f(((uint16_t*)(rec + L.off_kz))[c]);
                            }
                        }
                        double v = sum ? 0.0 : -INFINITY, mag = 0;
                        for (int h = kh * cs.group; h < (kh + 1) * cs.group; h++) {
                            double x = 0, xm = 0;
                            for (int c = 0; c < HD; c++) {
                                x += (double)q[(size_t)h * HD + c] * k[c];
                                xm += std::fabs((double)q[(size_t)h * HD + c] * k[c]);
                            }
                            v = sum ? v + x : std::max(v, x);
                            mag += xm;
                        }
                        uint32_t b = got & 0x80000000u ? got & 0x7fffffffu : ~got;
                        float gf;
                        std::memcpy(&gf, &b, 4);
                        const double e = std::fabs((double)gf - v) / std::max(1.0, mag);
                        if (!(e <= 1e-5)) bad++;
                        if (!(e <= kerr)) kerr = std::isnan(e) ? INFINITY : std::max(kerr, e);
                    }
                    if (cur[kh] != want_cur) bad++;
                }
                if (bad != 0 || g_emu_faults != 0) {
                    fails++;
                    std::printf("MISMATCH scores hd=%d bits=%d G=%d group=%d len=%d splits=%d mode=%d sum=%d lazy=%d: %d "
                                "bad keys / cur, max relative error %.3g, faults %d\n", cs.hd, cs.bits, cs.G, cs.group,
                                cs.len, cs.splits, cs.mode, sum, lazy, bad, kerr, g_emu_faults);
                    g_emu_faults = 0;
                } else if (lazy == 1) {
                    std::printf("ok scores hd=%d bits=%d G=%d group=%d len=%d keys=%d splits=%d mode=%d sum=%d: max "
                                "relative error %.2e\n", cs.hd, cs.bits, cs.G, cs.group, cs.len, klen, cs.splits,
                                cs.mode, sum, kerr);
                }
            }
        }
    }
    return fails;
}

int main() {
    Pool pool(tp::kKvqMmaThreads);
    std::mt19937 rng(20261128);
    const Case cases[] = {
        // hd, bits, G, group, kv_heads, layers, layer, C, len, res_cap, splits, mode, sel
        {64, 4, 32, 4, 2, 2, 1, 640, 600, 64, 1, 0, false},
        {64, 4, 32, 4, 2, 2, 0, 640, 600, 64, 3, 1, false},
        {64, 4, 32, 8, 1, 1, 0, 400, 357, 64, 2, 2, false},
        {64, 4, 32, 12, 1, 1, 0, 300, 250, 64, 1, 1, false},
        {64, 4, 32, 4, 2, 1, 0, 400, 333, 64, 2, 2, true},
        {64, 4, 16, 1, 2, 1, 0, 300, 277, 32, 2, 0, false},
        {64, 2, 64, 4, 1, 1, 0, 500, 470, 96, 1, 1, false},
        {64, 8, 32, 2, 2, 1, 0, 300, 290, 64, 2, 2, false},
        {64, 4, 128, 4, 1, 1, 0, 700, 650, 160, 2, 1, false},
        {128, 4, 32, 4, 1, 2, 1, 400, 380, 64, 2, 1, false},
        {128, 8, 16, 8, 1, 1, 0, 300, 260, 32, 1, 2, false},
        {128, 2, 64, 4, 1, 1, 0, 300, 299, 96, 2, 0, true},
        {64, 4, 32, 4, 1, 1, 0, 64, 5, 64, 1, 0, false},
        {64, 4, 32, 4, 1, 1, 0, 64, 1, 64, 3, 2, false},
    };
    int fails = 0, n = 0;
    for (const Case& c : cases) {
        fails += run_case(pool, c, rng);
        n++;
    }
    std::printf("%d cases, %d mismatches\n", n, fails);
    if (fails == 0) std::printf("ALL OK\n");
    return fails == 0 ? 0 : 1;
}
