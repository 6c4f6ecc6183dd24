// Host emulation of decode attention v3's RoPE prologue (v3_rope_store, rope_cos_sin and rope_rotate in
// cuda/rope_store.cuh), compiled with g++ by RopeStoreEmulationTest: the test pastes the functions in place of the
// ROPE line below and runs v3_rope_store as one block of 128 host threads (the v3 kernel's block) for random
// shapes: head dims 64 and 128, GQA groups 1..8, every KV head of a layer as its block would, slots inside the
// capacity, outside it (nothing stored) and freed holes. Checked bit for bit against a plain loop with the same f32
// arithmetic (products and sums rounded on their own, as rope_rotate's _rn intrinsics): the block's q-heads and its
// KV head's key rotated in place, nothing else of q or k touched, the key (rotated) and value stored as bf16 (round to
// nearest even) in the slot of the layer's KV head row with the token's position, no other cache entry written.
#include <random>

#include "emulation.h"

static float __fmul_rn(float a, float b) { return a * b; }  // compiled with -ffp-contract=off
static float __fsub_rn(float a, float b) { return a - b; }
static uint16_t f32_to_bf16_bits(float f) {  // as common.cuh
    uint32_t b;
    std::memcpy(&b, &f, 4);
    if ((b & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}

/*ROPE*/

static int fails = 0;

static void check(bool ok, const char* what, int it, int i) {
    if (!ok && fails++ < 10) std::printf("MISMATCH case %d: %s at %d\n", it, what, i);
}

template <int HD>
static void one_case(std::mt19937& rng, Pool& pool, int it) {
    std::uniform_real_distribution<float> U(-3, 3);
    const int hkv = 1 + (int)(rng() % 4), G = 1 + (int)(rng() % 8), H = hkv * G, C = 8 + (int)(rng() % 40), layers = 2;
    const int layer = (int)(rng() % layers), pos = (int)(rng() % 200000);
    const float scale = rng() % 2 ? 1.f : 1.2f;
    std::vector<float> q(H * HD), k(hkv * HD), v(hkv * HD), inv(HD / 2);
    for (auto& x : q) x = U(rng);
    for (auto& x : k) x = U(rng);
    for (auto& x : v) x = U(rng);
    for (int j = 0; j < HD / 2; j++) inv[j] = std::pow(10000.f, -2.f * j / HD);
    std::vector<int> slots(hkv), token_pos(hkv);
    for (int g = 0; g < hkv; g++) {
        const int r = (int)(rng() % 10);
        slots[g] = r == 0 ? C + (int)(rng() % 3) : r == 1 ? -1 : (int)(rng() % C);  // outside, or a slot
        token_pos[g] = pos + g;  // the position the slot gets (per head, as staged)
    }
    const size_t cache = (size_t)layers * hkv * C * HD;
    std::vector<uint16_t> kc(cache, 0xAAAA), vc(cache, 0x5555);
    std::vector<int> pc((size_t)layers * hkv * C, -7);
    std::vector<float> q0 = q, k0 = k;
    for (int kh = 0; kh < hkv; kh++) {  // the blocks of the launch, one per KV head (its whole group)
        const int64_t base = ((int64_t)layer * hkv + kh) * C;
        pool.run(1, 1, 128, true, [&] {
            v3_rope_store<HD>(q.data(), k.data(), v.data(), pos, inv.data(), scale, kh * G, G, kh, slots.data(),
                              token_pos.data(), C, kc.data() + base * HD, vc.data() + base * HD, pc.data() + base);
        });
    }
    // the reference: every q-head and KV head rotated, the stores
    std::vector<float> qr = q0, kr = k0;
    const int half = HD / 2;
    auto rot = [&](float* x) {
        for (int j = 0; j < half; j++) {
            float angle = (float)pos * inv[j], s, c;
            sincosf(angle, &s, &c);
            s *= scale;
            c *= scale;
            const float a = x[j], b = x[j + half];
            x[j] = a * c - b * s;
            x[j + half] = b * c + a * s;
        }
    };
    for (int h = 0; h < H; h++) rot(qr.data() + h * HD);
    for (int g = 0; g < hkv; g++) rot(kr.data() + g * HD);
    for (size_t i = 0; i < q.size(); i++) check(std::memcmp(&q[i], &qr[i], 4) == 0, "q", it, (int)i);
    for (size_t i = 0; i < k.size(); i++) check(std::memcmp(&k[i], &kr[i], 4) == 0, "k", it, (int)i);
    for (int l = 0; l < layers; l++)
        for (int g = 0; g < hkv; g++)
            for (int s = 0; s < C; s++) {
                const size_t row = ((size_t)l * hkv + g) * C + s;
                const bool stored = l == layer && s == slots[g];
                check(pc[row] == (stored ? token_pos[g] : -7), "position", it, (int)row);
                for (int j = 0; j < HD; j++) {
                    const uint16_t wk = stored ? f32_to_bf16_bits(kr[g * HD + j]) : 0xAAAA;
                    const uint16_t wv = stored ? f32_to_bf16_bits(v[g * HD + j]) : 0x5555;
                    check(kc[row * HD + j] == wk, "stored key", it, (int)(row * HD + j));
                    check(vc[row * HD + j] == wv, "stored value", it, (int)(row * HD + j));
                }
            }
}

int main() {
    Pool pool(128);
    std::mt19937 rng(4242);
    int cases = 0;
    for (int it = 0; it < 200; it++, cases++) {
        if (it % 2) one_case<64>(rng, pool, it);
        else one_case<128>(rng, pool, it);
    }
    std::printf("%d cases, %d mismatches\n", cases, fails);
    if (fails == 0) std::printf("ALL OK\n");
    return fails == 0 ? 0 : 1;
}
