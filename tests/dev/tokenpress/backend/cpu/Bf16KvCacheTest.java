package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.KvType;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.io.Half;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.kv.quant.KvQuantSpec;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * A KV cache stored in bf16 ({@code -ctk / -ctv bf16}) behaves exactly as an f32 cache holding the same keys and
 * values rounded to bf16 (nearest even): every op that reads the cache — attention with and without a slot list and
 * its statistics, query-key scores, TidalDecode's selection, Quest's page scores (fresh and kept), slot reads and
 * copies — gives the same bits, with the Vector API kernels and with the scalar ones, for keys and values stored
 * in either type; and it allocates half the bytes. A quantized cache ({@code --kv-quant}) is not affected.
 */
class Bf16KvCacheTest {
    static final int LAYERS = 2, CAP = 150, LEN = 131;

    private static CpuBackend backend(boolean scalar, KvType keys, KvType values) {
        CpuBackend b = scalar ? CpuOpsTest.scalarBackend() : new CpuBackend(2);
        b.setKvTypes(keys, values);
        return b;
    }

    /** x rounded to bf16 and widened again. */
    private static float bf16(float x) {
        return Half.bf16ToFloat(Half.floatToBf16(x));
    }

    /** Gaussian values with ties at the rounding point, ±0, tiny and large values mixed in. */
    private static float[] values(SplittableRandom r, int n) {
        float[] v = new float[n];
        for (int i = 0; i < n; i++) {
            v[i] = switch (r.nextInt(40)) {
                case 0 -> -0f;
                case 1 -> 0f;
                case 2 -> 1f + 1f / 256;        // halfway between two bf16 values: rounds to even (down)
                case 3 -> -(1f + 3f / 256);     // halfway: rounds to even (up in magnitude)
                case 4 -> (float) r.nextGaussian() * 1e-30f;
                case 5 -> (float) r.nextGaussian() * 1e4f;
                default -> (float) r.nextGaussian();
            };
        }
        return v;
    }

    private static float[] rounded(float[] x) {
        float[] y = new float[x.length];
        for (int i = 0; i < x.length; i++) y[i] = bf16(x[i]);
        return y;
    }

    /** Fills both caches with the same slots: b gets raw, a gets {key,value}-rounded rows; some slots freed after. */
    private static void fill(CpuBackend a, KvCache ca, CpuBackend b, KvCache cb, int kvHeads, int hd, SplittableRandom r,
                             boolean roundKeys, boolean roundValues) {
        int[] pos = new int[LEN];
        for (int i = 0; i < LEN; i++) pos[i] = i;
        for (int l = 0; l < LAYERS; l++) {
            int[][] slots = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) {
                slots[g] = ca.allocate(l, g, pos, LEN);
                assertArrayEquals(slots[g], cb.allocate(l, g, pos, LEN));
            }
            float[] kv = values(r, LEN * kvHeads * hd), vv = values(r, LEN * kvHeads * hd);
            Tensor ka = a.allocate(LEN, kvHeads * hd), va = a.allocate(LEN, kvHeads * hd);
            Tensor kb = b.allocate(LEN, kvHeads * hd), vb = b.allocate(LEN, kvHeads * hd);
            a.upload(ka, roundKeys ? rounded(kv) : kv);
            a.upload(va, roundValues ? rounded(vv) : vv);
            b.upload(kb, kv);
            b.upload(vb, vv);
            a.storeKv(ca, l, ka, va, slots, LEN);
            b.storeKv(cb, l, kb, vb, slots, LEN);
            for (int g = 0; g < kvHeads; g++)
                for (int s = 3 + g; s < LEN; s += 17) { // freed slots: never read, masked in every op
                    ca.free(l, g, s);
                    cb.free(l, g, s);
                }
        }
    }

    private static void assertBits(float[] want, float[] got, String what) {
        assertEquals(want.length, got.length, what);
        for (int i = 0; i < want.length; i++)
            assertEquals(Float.floatToRawIntBits(want[i]), Float.floatToRawIntBits(got[i]), what + " [" + i + "] " + want[i] + " vs " + got[i]);
    }

    @ParameterizedTest(name = "hd {0}, group {1}, {2} KV heads, keys {3}, values {4}, scalar {5}")
    @CsvSource({"64,4,2,BF16,BF16,false", "64,4,2,BF16,BF16,true", "128,8,2,BF16,BF16,false", "64,2,3,BF16,F32,false",
            "64,3,2,F32,BF16,false", "40,5,2,BF16,BF16,false", "16,4,2,BF16,BF16,false", "72,1,4,BF16,BF16,true",
            "24,6,1,F32,BF16,true"})
    void everyOpSeesTheRoundedValues(int hd, int group, int kvHeads, KvType keys, KvType values, boolean scalar) {
        SplittableRandom r = new SplittableRandom(hd * 7919L + group * 31L + kvHeads + keys.ordinal() * 3L + values.ordinal());
        int heads = group * kvHeads, qpos = LEN - 20;
        try (CpuBackend a = backend(scalar, KvType.F32, KvType.F32); CpuBackend b = backend(scalar, keys, values);
             KvCache ca = a.newKvCache(LAYERS, kvHeads, hd, CAP); KvCache cb = b.newKvCache(LAYERS, kvHeads, hd, CAP)) {
            fill(a, ca, b, cb, kvHeads, hd, r, keys == KvType.BF16, values == KvType.BF16);
            int rows = 3;
            float[] qv = values(r, rows * heads * hd);
            Tensor qa = a.allocate(rows, heads * hd), qb = b.allocate(rows, heads * hd);
            a.upload(qa, qv);
            b.upload(qb, qv);
            int[] qp = {qpos - 2, qpos - 1, qpos};
            for (int layer = 0; layer < LAYERS; layer++) {
                String at = " (layer " + layer + ")";
                // attention over every slot, with raw scores and probability sums
                Tensor oa = a.allocate(rows, heads * hd), ob = b.allocate(rows, heads * hd);
                AttentionStats sa = AttentionStats.allocate(heads, kvHeads, CAP), sb = AttentionStats.allocate(heads, kvHeads, CAP);
                a.attention(oa, qa, ca, layer, qp, rows, null, sa);
                b.attention(ob, qb, cb, layer, qp, rows, null, sb);
                assertBits(a.download(oa, 0, rows), b.download(ob, 0, rows), "attention with statistics" + at);
                for (int h = 0; h < heads; h++) assertBits(sa.rawScores[h], sb.rawScores[h], "raw scores of head " + h + at);
                for (int g = 0; g < kvHeads; g++) assertBits(sa.probSums[g], sb.probSums[g], "probability sums of KV head " + g + at);
                // without statistics (the grouped path), and over a slot list
                a.attention(oa, qa, ca, layer, qp, rows, null, null);
                b.attention(ob, qb, cb, layer, qp, rows, null, null);
                assertBits(a.download(oa, 0, rows), b.download(ob, 0, rows), "attention" + at);
                SlotSelection sel = a.selectTopSlots(qa, rows - 1, qpos, ca, layer, 37, true, qpos, true);
                SlotSelection selB = b.selectTopSlots(qb, rows - 1, qpos, cb, layer, 37, true, qpos, true);
                assertArrayEquals(sel.count(), selB.count(), "selection counts" + at);
                for (int g = 0; g < kvHeads; g++) assertArrayEquals(sel.slots()[g], selB.slots()[g], "TidalDecode's selection, KV head " + g + at);
                SlotSelection max = b.selectTopSlots(qb, 0, qpos - 2, cb, layer, 11, false, -1, true);
                SlotSelection maxA = a.selectTopSlots(qa, 0, qpos - 2, ca, layer, 11, false, -1, true);
                for (int g = 0; g < kvHeads; g++) assertArrayEquals(maxA.slots()[g], max.slots()[g], "selection by group max" + at);
                a.attention(oa, qa, ca, layer, qp, rows, sel, null);
                b.attention(ob, qb, cb, layer, qp, rows, sel, null);
                assertBits(a.download(oa, 0, rows), b.download(ob, 0, rows), "attention over the selection" + at);
                // query-key scores
                float[][] qa2 = new float[heads][CAP], qb2 = new float[heads][CAP];
                a.queryKeyScores(qa2, qa, 1, qpos - 1, ca, layer);
                b.queryKeyScores(qb2, qb, 1, qpos - 1, cb, layer);
                for (int h = 0; h < heads; h++) assertBits(qa2[h], qb2[h], "query-key scores of head " + h + at);
                // Quest's page scores, computed and then served from the kept bounds
                for (int pass = 0; pass < 2; pass++)
                    for (int page : new int[] {4, 16}) {
                        float[][] pa = new float[heads][CAP], pb = new float[heads][CAP];
                        a.questPageScores(pa, qa, rows - 1, qpos, ca, layer, page);
                        b.questPageScores(pb, qb, rows - 1, qpos, cb, layer, page);
                        for (int h = 0; h < heads; h++) assertBits(pa[h], pb[h], "Quest page " + page + " scores of head " + h + ", pass " + pass + at);
                    }
                // reads of single slots and of a whole head
                float[] k1 = new float[hd], v1 = new float[hd], k2 = new float[hd], v2 = new float[hd];
                for (int g = 0; g < kvHeads; g++) {
                    a.readKv(ca, layer, g, 7, k1, v1);
                    b.readKv(cb, layer, g, 7, k2, v2);
                    assertBits(k1, k2, "key read" + at);
                    assertBits(v1, v2, "value read" + at);
                    float[] ka = new float[CAP * hd], va = new float[CAP * hd], kb = new float[CAP * hd], vb = new float[CAP * hd];
                    a.readKvHead(ca, layer, g, ka, va);
                    b.readKvHead(cb, layer, g, kb, vb);
                    assertBits(ka, kb, "keys of head " + g + at);
                    assertBits(va, vb, "values of head " + g + at);
                    // a range of slots reads what the whole head read there (occupied slots; freed ones are unspecified)
                    float[] ra = new float[35 * hd], rb = new float[35 * hd], rva = new float[35 * hd], rvb = new float[35 * hd];
                    a.readKvRange(ca, layer, g, 5, 40, ra, rva);
                    b.readKvRange(cb, layer, g, 5, 40, rb, rvb);
                    int[] occ = cb.positions(layer, g);
                    for (int sl = 5; sl < 40; sl++) {
                        if (occ[sl] < 0) continue;
                        float[] want = java.util.Arrays.copyOfRange(kb, sl * hd, (sl + 1) * hd);
                        float[] wantV = java.util.Arrays.copyOfRange(vb, sl * hd, (sl + 1) * hd);
                        assertBits(want, java.util.Arrays.copyOfRange(ra, (sl - 5) * hd, (sl - 4) * hd), "key range, slot " + sl + at);
                        assertBits(want, java.util.Arrays.copyOfRange(rb, (sl - 5) * hd, (sl - 4) * hd), "key range (stored type), slot " + sl + at);
                        assertBits(wantV, java.util.Arrays.copyOfRange(rva, (sl - 5) * hd, (sl - 4) * hd), "value range, slot " + sl + at);
                        assertBits(wantV, java.util.Arrays.copyOfRange(rvb, (sl - 5) * hd, (sl - 4) * hd), "value range (stored type), slot " + sl + at);
                    }
                }
            }
            // a written slot is rounded as a stored one; a copy keeps every bit
            float[] k = values(r, hd), v = values(r, hd);
            a.writeKv(ca, 1, 0, 9, keys == KvType.BF16 ? rounded(k) : k, values == KvType.BF16 ? rounded(v) : v);
            b.writeKv(cb, 1, 0, 9, k, v);
            try (KvCache copy = b.newKvCache(LAYERS, kvHeads, hd, CAP)) {
                b.copyKvCache(cb, copy);
                float[] k1 = new float[hd], v1 = new float[hd], k2 = new float[hd], v2 = new float[hd];
                a.readKv(ca, 1, 0, 9, k1, v1);
                b.readKv(copy, 1, 0, 9, k2, v2);
                assertBits(k1, k2, "written key, copied");
                assertBits(v1, v2, "written value, copied");
                Tensor oa = a.allocate(rows, heads * hd), ob = b.allocate(rows, heads * hd);
                a.attention(oa, qa, ca, 1, qp, rows, null, null);
                b.attention(ob, qb, copy, 1, qp, rows, null, null);
                assertBits(a.download(oa, 0, rows), b.download(ob, 0, rows), "attention over the copy");
            }
            try (CpuBackend f = backend(scalar, KvType.F32, KvType.F32); KvCache other = f.newKvCache(LAYERS, kvHeads, hd, CAP)) {
                if (keys != KvType.F32 || values != KvType.F32)
                    assertThrows(RuntimeException.class, () -> b.copyKvCache(cb, other), "a copy between storage types");
            }
        }
    }

    /** The rounding is to nearest even, NaN stays NaN and ±∞ stay: what the CUDA cache stores. */
    @Test
    void storedValuesAreRoundedToNearestEven() {
        try (CpuBackend b = backend(false, KvType.BF16, KvType.BF16); KvCache c = b.newKvCache(1, 1, 16, 4)) {
            float[] k = {1f + 1f / 256, 1f + 3f / 256, 1f + 1f / 256 + 1f / 65536, -2.0f - 1f / 128, Float.NaN,
                    Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, -0f, 3.4e38f, 1e-40f, 0.1f, -0.1f, 1f, 2f, 3f, 4f};
            float[] want = {1f, 1f + 4f / 256, 1f + 2f / 256, -2.0f, Float.NaN, Float.POSITIVE_INFINITY,
                    Float.NEGATIVE_INFINITY, -0f, Float.POSITIVE_INFINITY, bf16(1e-40f), 0.10009765625f, -0.10009765625f, 1f, 2f, 3f, 4f};
            int slot = c.allocate(0, 0, new int[] {0}, 1)[0];
            b.writeKv(c, 0, 0, slot, k, k);
            float[] kr = new float[16], vr = new float[16];
            b.readKv(c, 0, 0, slot, kr, vr);
            for (int i = 0; i < 16; i++) {
                if (Float.isNaN(want[i])) {
                    assertTrue(Float.isNaN(kr[i]) && Float.isNaN(vr[i]), "NaN stays NaN");
                    continue;
                }
                assertEquals(Float.floatToRawIntBits(want[i]), Float.floatToRawIntBits(kr[i]), "key " + k[i]);
                assertEquals(Float.floatToRawIntBits(want[i]), Float.floatToRawIntBits(vr[i]), "value " + k[i]);
            }
        }
    }

    @Test
    void bf16HalvesTheBytes() {
        int layers = 3, heads = 2, hd = 64, cap = 100;
        long positions = (long) layers * heads * cap * 4, elements = (long) layers * heads * cap * hd;
        for (KvType k : KvType.values())
            for (KvType v : KvType.values())
                try (CpuBackend b = backend(false, k, v); KvCache c = b.newKvCache(layers, heads, hd, cap)) {
                    assertEquals(elements * (k.bytes() + v.bytes()) + positions, c.bytes(), "keys " + k + ", values " + v);
                }
        assertEquals(2, KvType.BF16.bytes());
        assertEquals(4, KvType.F32.bytes());
    }

    /** A quantized cache stores codes and an f32 window whatever the storage types say (they are an unquantized cache's). */
    @Test
    void aQuantizedCacheIsNotAffected() {
        try (CpuBackend b = backend(false, KvType.BF16, KvType.BF16); CpuBackend f = backend(false, null, null);
             KvCache q = b.newKvCache(1, 1, 64, 64, KvQuantSpec.parse("int4")); KvCache r = f.newKvCache(1, 1, 64, 64, KvQuantSpec.parse("int4"))) {
            assertEquals(QuantKvCache.class, q.getClass());
            assertEquals(r.bytes(), q.bytes());
        }
    }

    @Test
    void typesParseAsLlamaCppNamesThem() {
        assertEquals(KvType.BF16, KvType.parse("BF16"));
        assertEquals(KvType.F32, KvType.parse(" f32"));
        for (String s : new String[] {"f16", "q8_0", "q4_0", "fp8"}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> KvType.parse(s));
            assertTrue(e.getMessage().contains(s) && e.getMessage().contains("use"), e.getMessage());
        }
    }
}
