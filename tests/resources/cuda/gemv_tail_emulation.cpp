// Host emulation of the decode GEMV epilogues (cuda/gemv_tail.cuh), compiled with g++ by GemvTailEmulationTest:
// the test pastes the header's structs and epilogue functions in place of the EPILOGUES line below and runs them
// with one host thread per CUDA thread (the RoPE + store epilogue has no barrier inside, so its threads run one
// after another; the norm's block_sum is a barrier over real threads). The grid-last test and the L2 loads are
// mocked: what is checked is the epilogues' indexing, batching and arithmetic against a straightforward reference.
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

struct Dim { unsigned x; };
static thread_local Dim threadIdx;
static Dim blockDim;
static float __ldcg(const float* p) { return *p; }
static bool gemv_grid_last(int*) { return true; }
static uint16_t f32_to_bf16_bits(float f) {  // round to nearest even, as common.cuh
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static std::barrier<>* g_bar;
static std::vector<float> g_part;
static float block_sum(float v) {  // every thread gets the sum over the block (a fixed order)
    g_bar->arrive_and_wait();
    g_part[threadIdx.x] = v;
    g_bar->arrive_and_wait();
    double s = 0;
    for (float p : g_part) s += p;
    return (float)s;
}

/*EPILOGUES*/

static int rope_case(int n, int H, int Hkv, int hd, int bd, std::mt19937& rng) {
    std::uniform_real_distribution<float> U(-2, 2);
    const int half = hd / 2, cap = 50, layer = 1, L = 2;
    std::vector<float> q(n * H * hd), k(n * Hkv * hd), v(n * Hkv * hd);
    for (auto& x : q) x = U(rng);
    for (auto& x : k) x = U(rng);
    for (auto& x : v) x = U(rng);
    std::vector<float> qr = q, kr = k, inv(half);
    std::vector<int> pos(n), slots(Hkv * n), tpos(Hkv * n);
    for (int i = 0; i < n; i++) pos[i] = 1000 + 37 * i;
    for (int j = 0; j < half; j++) inv[j] = std::pow(10000.f, -2.f * j / hd);
    for (int g = 0; g < Hkv; g++)
        for (int i = 0; i < n; i++) {
            slots[g * n + i] = (g * 7 + i * 3) % cap;
            if (g == Hkv - 1 && i == 0) slots[g * n + i] = -1;  // not stored
            tpos[g * n + i] = pos[i] + g;
        }
    const size_t cs = (size_t)L * Hkv * cap * hd;
    std::vector<uint16_t> kc(cs, 0), vc(cs, 0), kcr(cs, 0), vcr(cs, 0);
    std::vector<int> pc(L * Hkv * cap, -7), pcr(L * Hkv * cap, -7);
    const float scale = 1.25f;
    // reference: rope_store_kv_kernel's arithmetic (cuda/norm_rope_act.cu), pair by pair
    for (int i = 0; i < n; i++)
        for (int head = 0; head < H + Hkv; head++)
            for (int j = 0; j < half; j++) {
                float angle = (float)pos[i] * inv[j], s, c;
                sincosf(angle, &s, &c);
                s *= scale;
                c *= scale;
                if (head < H) {
                    float* b = &qr[((size_t)i * H + head) * hd];
                    float a0 = b[j], b0 = b[j + half];
                    b[j] = a0 * c - b0 * s;
                    b[j + half] = b0 * c + a0 * s;
                    continue;
                }
                int g = head - H;
                float* kb = &kr[((size_t)i * Hkv + g) * hd];
                const float* vb = &v[((size_t)i * Hkv + g) * hd];
                float a0 = kb[j], b0 = kb[j + half], k0 = a0 * c - b0 * s, k1 = b0 * c + a0 * s;
                kb[j] = k0;
                kb[j + half] = k1;
                int slot = slots[g * n + i];
                if (slot < 0 || slot >= cap) continue;
                size_t row = ((size_t)layer * Hkv + g) * cap + slot, dst = row * hd;
                kcr[dst + j] = f32_to_bf16_bits(k0);
                kcr[dst + j + half] = f32_to_bf16_bits(k1);
                vcr[dst + j] = f32_to_bf16_bits(vb[j]);
                vcr[dst + j + half] = f32_to_bf16_bits(vb[j + half]);
                if (j == 0) pcr[row] = tpos[g * n + i];
            }
    int counter = 0;
    RopeStoreTail t{&counter, q.data(), k.data(), v.data(), pos.data(), inv.data(), scale, kc.data(), vc.data(),
                    pc.data(), slots.data(), tpos.data(), H, Hkv, hd, layer, cap};
    blockDim.x = bd;
    for (int tid = 0; tid < bd; tid++) {
        threadIdx.x = tid;
        gemv_rope_store_tail(t, n);
    }
    int d = 0;
    for (size_t e = 0; e < q.size(); e++) d += std::memcmp(&q[e], &qr[e], 4) != 0;
    for (size_t e = 0; e < k.size(); e++) d += std::memcmp(&k[e], &kr[e], 4) != 0;
    for (size_t e = 0; e < cs; e++) d += (kc[e] != kcr[e]) + (vc[e] != vcr[e]);
    for (size_t e = 0; e < pc.size(); e++) d += pc[e] != pcr[e];
    std::printf("rope+store n=%d heads=%d kv_heads=%d hd=%d threads=%d: %d mismatches\n", n, H, Hkv, hd, bd, d);
    return d;
}

static int norm_case(int n, int dim, int bd, std::mt19937& rng) {
    std::uniform_real_distribution<float> U(-2, 2);
    std::vector<float> y(n * dim), w(dim), out(n * dim, -1.f);
    for (auto& x : y) x = U(rng);
    for (auto& x : w) x = U(rng);
    const float eps = 1e-5f;
    blockDim.x = bd;
    g_part.assign(bd, 0.f);
    std::barrier<> bar(bd);
    g_bar = &bar;
    int counter = 0;
    NormTail t{&counter, out.data(), w.data(), eps};
    std::vector<std::thread> th;
    for (int tid = 0; tid < bd; tid++)
        th.emplace_back([&, tid] {
            threadIdx.x = tid;
            gemv_norm_tail(t, y.data(), n, dim);
        });
    for (auto& x : th) x.join();
    double worst = 0;
    for (int r = 0; r < n; r++) {
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)y[r * dim + j] * y[r * dim + j];
        double inv = 1 / std::sqrt(ss / dim + eps);
        for (int j = 0; j < dim; j++) {
            double want = y[r * dim + j] * inv * w[j];
            worst = std::max(worst, std::fabs(want - out[r * dim + j]) / (std::fabs(want) + 1e-6));
        }
    }
    std::printf("norm n=%d dim=%d threads=%d: worst relative error %.3g\n", n, dim, bd, worst);
    return worst <= 1e-5 ? 0 : 1;
}

int main() {
    std::mt19937 rng(1);
    int bad = 0;
    // n, heads, kv heads, head dim, threads: llama-1b and llama-3-8b rows, several rows, odd head counts, few threads
    const int rope[][5] = {{1, 32, 8, 64, 256}, {1, 32, 8, 128, 256}, {3, 6, 2, 64, 256}, {4, 4, 1, 128, 256},
                           {2, 5, 3, 64, 128}, {1, 2, 1, 16, 32}, {4, 32, 8, 128, 256}};
    for (auto& c : rope) bad += rope_case(c[0], c[1], c[2], c[3], c[4], rng) != 0;
    // n, dim, threads: a 2048-wide row held in registers, rows past 8 elements per thread, fewer than the threads
    const int norm[][3] = {{1, 2048, 256}, {4, 1000, 256}, {2, 3000, 256}, {3, 333, 64}, {1, 8, 32}};
    for (auto& c : norm) bad += norm_case(c[0], c[1], c[2], rng);
    std::printf("%s\n", bad == 0 ? "ALL OK" : "FAILED");
    return bad == 0 ? 0 : 1;
}
