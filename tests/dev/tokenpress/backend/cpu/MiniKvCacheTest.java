package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.kv.quant.KvQuantSpec;
import org.junit.jupiter.api.Test;

import java.util.Locale;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * MiniCache ({@code --kv-quant minicache}): the SLERP merge and its norms, the retention rule, attention and the
 * policy ops over the merged rows, eviction of one layer of a merged pair, and the bytes. Model-level behaviour:
 * {@code KvQuantTest}.
 */
class MiniKvCacheTest {
    static final int H = 2, HD = 16;

    /** Keys and values [layer][token][H·HD]: layer 0 Gaussian, each next layer the previous plus noise of size `noise`. */
    static float[][][][] vectors(int layers, int n, double noise, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        float[][][][] kv = new float[2][layers][n][H * HD];
        for (int w = 0; w < 2; w++)
            for (int t = 0; t < n; t++)
                for (int l = 0; l < layers; l++)
                    for (int i = 0; i < H * HD; i++)
                        kv[w][l][t][i] = l == 0 ? (float) r.nextGaussian() : kv[w][l - 1][t][i] + (float) (noise * r.nextGaussian());
        return kv;
    }

    /** Appends tokens [from, to) to every layer, layer by layer as a prefill chunk does. */
    static void append(CpuBackend b, KvCache c, float[][][][] kv, int from, int to) {
        int n = to - from;
        int[] pos = new int[n];
        for (int i = 0; i < n; i++) pos[i] = from + i;
        for (int l = 0; l < c.layers(); l++) {
            int[][] slots = new int[H][];
            for (int g = 0; g < H; g++) slots[g] = c.allocate(l, g, pos, n);
            Tensor kt = b.allocate(n, H * HD), vt = b.allocate(n, H * HD);
            float[] k = new float[n * H * HD], v = new float[n * H * HD];
            for (int i = 0; i < n; i++) {
                System.arraycopy(kv[0][l][from + i], 0, k, i * H * HD, H * HD);
                System.arraycopy(kv[1][l][from + i], 0, v, i * H * HD, H * HD);
            }
            b.upload(kt, k);
            b.upload(vt, v);
            b.storeKv(c, l, kt, vt, slots, n);
        }
    }

    static double norm(float[] x, int off) {
        double s = 0;
        for (int i = 0; i < HD; i++) s += (double) x[off + i] * x[off + i];
        return Math.sqrt(s);
    }

    static double angle(float[] a, int aOff, float[] b, int bOff) {
        double d = 0;
        for (int i = 0; i < HD; i++) d += (double) a[aOff + i] * b[bOff + i];
        return Math.acos(Math.max(-1, Math.min(1, d / (norm(a, aOff) * norm(b, bOff)))));
    }

    @Test
    void specParsingAndHelp() {
        KvQuantSpec s = KvQuantSpec.parse("minicache");
        assertEquals(KvQuantSpec.Method.MINICACHE, s.method());
        assertEquals("minicache:t=0.6,start=0.5,retain=0.05,group=32,residual=32", s.spec());
        assertEquals(s, KvQuantSpec.parse(s.spec()));
        assertEquals(0.6, s.interp());
        assertEquals(0.05, s.ratio());
        assertEquals(8, s.firstMergedLayer(16));
        assertEquals(14, s.firstMergedLayer(28));
        assertEquals(3, KvQuantSpec.parse("minicache:start=3").firstMergedLayer(16));
        assertEquals(0, KvQuantSpec.parse("minicache:start=0").firstMergedLayer(16));
        assertEquals(4, KvQuantSpec.parse("minicache:start=9").firstMergedLayer(4));
        KvQuantSpec.parse("minicache:group=48").check(64); // the group does not divide anything
        for (String bad : new String[]{"minicache:t=1.5", "minicache:start=2.5", "minicache:retain=2", "minicache:bits=4", "minicache:group=0"})
            assertThrows(IllegalArgumentException.class, () -> KvQuantSpec.parse(bad), bad);
        String help = KvQuantSpec.help();
        for (String w : new String[]{"minicache", "retain", "start", "SLERP"}) assertTrue(help.contains(w), w);
    }

    @Test
    void slerpKeepsNormsAndSplitsTheAngle() {
        SplittableRandom r = new SplittableRandom(3);
        float[] a = new float[HD], b = new float[HD], dir = new float[HD], na = new float[1], nb = new float[1];
        for (double t : new double[]{0, 0.25, 0.6, 1}) {
            for (int i = 0; i < HD; i++) {
                a[i] = (float) r.nextGaussian();
                b[i] = a[i] + (float) (0.7 * r.nextGaussian());
            }
            double omega = MiniKvCache.slerp(a, 0, b, 0, HD, t, dir, 0, na, nb, 0);
            assertEquals(angle(a, 0, b, 0), omega, 1e-6);
            assertEquals(1.0, norm(dir, 0), 1e-6);
            assertEquals(norm(a, 0), na[0], 1e-5 * na[0]);
            assertEquals(norm(b, 0), nb[0], 1e-5 * nb[0]);
            assertEquals(t * omega, angle(a, 0, dir, 0), 2e-3, "t " + t);          // e lies at t·Ω from a
            assertEquals((1 - t) * omega, angle(b, 0, dir, 0), 2e-3, "t " + t);    // and at (1 − t)·Ω from b
        }
        // parallel rows: the shared direction is theirs; a zero row takes the other's; opposite rows do not merge
        for (int i = 0; i < HD; i++) b[i] = 3 * a[i];
        assertEquals(0, MiniKvCache.slerp(a, 0, b, 0, HD, 0.6, dir, 0, na, nb, 0), 1e-3);
        assertEquals(0, angle(a, 0, dir, 0), 1e-3);
        float[] zero = new float[HD];
        assertEquals(0, MiniKvCache.slerp(zero, 0, a, 0, HD, 0.6, dir, 0, na, nb, 0));
        assertEquals(0f, na[0]);
        assertEquals(0, angle(a, 0, dir, 0), 1e-3);
        for (int i = 0; i < HD; i++) b[i] = -a[i];
        assertTrue(Double.isNaN(MiniKvCache.slerp(a, 0, b, 0, HD, 0.6, dir, 0, na, nb, 0)));
    }

    @Test
    void mergesOldTokensKeepsTheMostDistinctAndTheWindowExact() {
        int n = 64, G = 8, R = 8;
        float[][][][] kv = vectors(2, n, 0.6, 11);
        try (CpuBackend b = new CpuBackend(2);
             KvCache kc = b.newKvCache(2, H, HD, 96, KvQuantSpec.parse("minicache:start=0,group=8,residual=8,retain=0.25,t=0.6"))) {
            MiniKvCache c = (MiniKvCache) kc;
            append(b, c, kv, 0, 40);
            append(b, c, kv, 40, n); // a second chunk: the window carries over
            assertTrue(c.paired(0) && c.paired(1));
            // 64 tokens, windows of R + G: 7 groups of 8 left the window; 2 of each 8 kept per head, keys and values
            int batches = (n - R) / G;
            assertEquals(2L * H * batches * 2, c.retainedRows());
            assertEquals(2L * H * batches * (G - 2), c.mergedRows());
            float[] key = new float[HD], val = new float[HD], key2 = new float[HD], val2 = new float[HD];
            for (int g = 0; g < H; g++)
                for (int w = 0; w < 2; w++) {
                    boolean keys = w == 0;
                    for (int batch = 0; batch < batches; batch++) {
                        double minKept = Double.POSITIVE_INFINITY, maxMerged = 0;
                        int kept = 0;
                        for (int s = batch * G; s < (batch + 1) * G; s++) {
                            double om = angle(kv[w][0][s], g * HD, kv[w][1][s], g * HD);
                            assertEquals(c.merged(0, g, s, keys), c.merged(1, g, s, keys));
                            if (c.merged(1, g, s, keys)) maxMerged = Math.max(maxMerged, om);
                            else {
                                kept++;
                                minKept = Math.min(minKept, om);
                            }
                        }
                        assertEquals(2, kept);
                        assertTrue(minKept >= maxMerged, "retained the most distinct pairs: " + minKept + " < " + maxMerged);
                    }
                    for (int s = 0; s < n; s++) {
                        b.readKv(c, 0, g, s, key, val);
                        b.readKv(c, 1, g, s, key2, val2);
                        float[] lo = keys ? key : val, up = keys ? key2 : val2;
                        float[] oLo = kv[w][0][s], oUp = kv[w][1][s];
                        if (!c.merged(1, g, s, keys)) { // window or retained: exact rows in both layers
                            for (int i = 0; i < HD; i++) {
                                assertEquals(oLo[g * HD + i], lo[i]);
                                assertEquals(oUp[g * HD + i], up[i]);
                            }
                            continue;
                        }
                        assertTrue(s < batches * G, "the window stays unmerged");
                        // norms kept; both layers share one direction, at t·Ω from the lower row
                        double om = angle(oLo, g * HD, oUp, g * HD);
                        assertEquals(norm(oLo, g * HD), norm(lo, 0), 1e-5 * norm(oLo, g * HD));
                        assertEquals(norm(oUp, g * HD), norm(up, 0), 1e-5 * norm(oUp, g * HD));
                        assertEquals(0, angle(lo, 0, up, 0), 1e-3);
                        assertEquals(0.6 * om, angle(oLo, g * HD, lo, 0), 2e-3);
                        assertEquals(0.4 * om, angle(oUp, g * HD, up, 0), 2e-3);
                    }
                }
        }
    }

    /** Double-precision attention of one query row over the reconstructed cache (readKv), for the given slots. */
    static double[] reference(CpuBackend b, KvCache c, int layer, float[] q, int h, int group, int qpos, int[] slots, double[] probs) {
        int g = h / group;
        float[] key = new float[HD], val = new float[HD];
        double[] s = new double[slots.length];
        double max = Double.NEGATIVE_INFINITY, sum = 0;
        for (int j = 0; j < slots.length; j++) {
            int p = c.position(layer, g, slots[j]);
            s[j] = Double.NEGATIVE_INFINITY;
            if (p < 0 || p > qpos) continue;
            b.readKv(c, layer, g, slots[j], key, val);
            double d = 0;
            for (int i = 0; i < HD; i++) d += (double) q[h * HD + i] * key[i];
            s[j] = d / Math.sqrt(HD);
            max = Math.max(max, s[j]);
        }
        double[] o = new double[HD];
        for (int j = 0; j < slots.length; j++) {
            if (s[j] == Double.NEGATIVE_INFINITY) continue;
            double e = Math.exp(s[j] - max);
            sum += e;
            b.readKv(c, layer, g, slots[j], key, val);
            for (int i = 0; i < HD; i++) o[i] += e * val[i];
        }
        for (int j = 0; j < slots.length; j++)
            if (s[j] != Double.NEGATIVE_INFINITY) probs[slots[j]] += Math.exp(s[j] - max) / sum;
        for (int i = 0; i < HD; i++) o[i] /= sum;
        return o;
    }

    /** Query heads per KV head: 2, and 5 (four heads' dots at once, then one). */
    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(ints = {2, 5})
    void attentionAndScoresReadTheMergedRows(int group) {
        int heads = group * H;
        int n = 70, cap = 80;
        float[][][][] kv = vectors(3, n, 0.8, 5);
        try (CpuBackend b = new CpuBackend(2);
             KvCache c = b.newKvCache(3, H, HD, cap, KvQuantSpec.parse("minicache:start=1,group=8,residual=4,retain=0.125"))) {
            append(b, c, kv, 0, n);
            MiniKvCache mc = (MiniKvCache) c;
            assertFalse(mc.paired(0));
            assertTrue(mc.mergedRows() > 0);
            c.free(1, 0, 5); // a freed slot in the middle of the lower layer
            SplittableRandom r = new SplittableRandom(9);
            float[] q = new float[heads * HD];
            for (int i = 0; i < q.length; i++) q[i] = (float) r.nextGaussian();
            Tensor qt = b.allocate(1, heads * HD), out = b.allocate(1, heads * HD);
            b.upload(qt, q);
            int qpos = 60;
            int[][] lists = {{3, 0, 17, 5, 40, 41, 66, 12}, {1, 2, 3, 50, 69, 8, 9, 10}};
            for (int layer = 0; layer < 3; layer++)
                for (boolean selected : new boolean[]{false, true}) {
                    SlotSelection sel = selected ? new SlotSelection(lists, new int[]{lists[0].length, lists[1].length}) : null;
                    AttentionStats st = AttentionStats.allocate(heads, H, cap);
                    st.clear();
                    b.attention(out, qt, c, layer, new int[]{qpos}, 1, sel, st);
                    float[] got = b.download(out, 0, 1);
                    double[][] probs = new double[H][cap];
                    float[] key = new float[HD], val = new float[HD];
                    for (int h = 0; h < heads; h++) {
                        int g = h / group;
                        int[] slots = selected ? lists[g] : java.util.stream.IntStream.range(0, c.highWater(layer, g)).toArray();
                        double[] o = reference(b, c, layer, q, h, group, qpos, slots, probs[g]);
                        for (int i = 0; i < HD; i++)
                            assertEquals(o[i], got[h * HD + i], 2e-5, "layer " + layer + " sel " + selected + " head " + h);
                        for (int s : slots) {
                            int p = c.position(layer, g, s);
                            if (p < 0 || p > qpos) continue;
                            b.readKv(c, layer, g, s, key, val);
                            double d = 0;
                            for (int i = 0; i < HD; i++) d += (double) q[h * HD + i] * key[i];
                            assertEquals(d, st.rawScores[h][s], 1e-4 * (1 + Math.abs(d)));
                        }
                    }
                    for (int g = 0; g < H; g++)
                        for (int s = 0; s < cap; s++) assertEquals(probs[g][s], st.probSums[g][s], 2e-5, "probSums " + s);
                }
            // query-key scores (TidalDecode, TokenSelect) and Quest's page scores see the same keys
            float[][] scores = new float[heads][cap];
            float[] key = new float[HD], val = new float[HD];
            for (int layer = 0; layer < 3; layer++) {
                b.queryKeyScores(scores, qt, 0, qpos, c, layer);
                for (int h = 0; h < heads; h++)
                    for (int s = 0; s < cap; s++) {
                        int g = h / group, p = s < c.highWater(layer, g) ? c.position(layer, g, s) : -1;
                        if (p < 0 || p > qpos) {
                            assertEquals(Float.NEGATIVE_INFINITY, scores[h][s]);
                            continue;
                        }
                        b.readKv(c, layer, g, s, key, val);
                        double d = 0;
                        for (int i = 0; i < HD; i++) d += (double) q[h * HD + i] * key[i];
                        assertEquals(d, scores[h][s], 1e-4 * (1 + Math.abs(d)));
                    }
                int page = 8, pages = (c.highWater(layer, 0) + page - 1) / page;
                float[][] ps = new float[heads][pages + 2];
                b.questPageScores(ps, qt, 0, qpos, c, layer, page);
                for (int h = 0; h < heads; h++) {
                    int g = h / group;
                    for (int pg = 0; pg < pages; pg++) {
                        float[] max = new float[HD], min = new float[HD];
                        java.util.Arrays.fill(max, Float.NEGATIVE_INFINITY);
                        java.util.Arrays.fill(min, Float.POSITIVE_INFINITY);
                        boolean any = false;
                        for (int s = pg * page; s < Math.min(c.highWater(layer, g), (pg + 1) * page); s++) {
                            int p = c.position(layer, g, s);
                            if (p < 0 || p > qpos) continue;
                            any = true;
                            b.readKv(c, layer, g, s, key, val);
                            for (int i = 0; i < HD; i++) {
                                max[i] = Math.max(max[i], key[i]);
                                min[i] = Math.min(min[i], key[i]);
                            }
                        }
                        double want = 0;
                        for (int i = 0; i < HD; i++) want += Math.max(q[h * HD + i] * max[i], q[h * HD + i] * min[i]);
                        if (!any) assertEquals(Float.NEGATIVE_INFINITY, ps[h][pg]);
                        else assertEquals(want, ps[h][pg], 1e-4 * (1 + Math.abs(want)), "page " + pg);
                    }
                }
            }
        }
    }

    @Test
    void evictingOneLayerOfAMergedPairKeepsThePartnersRow() {
        int n = 48;
        float[][][][] kv = vectors(2, n, 0.5, 21);
        try (CpuBackend b = new CpuBackend(2);
             KvCache kc = b.newKvCache(2, H, HD, 64, KvQuantSpec.parse("minicache:start=0,group=8,residual=8,retain=0"))) {
            MiniKvCache c = (MiniKvCache) kc;
            append(b, c, kv, 0, n);
            assertTrue(c.merged(0, 1, 3, true) && c.merged(0, 1, 3, false) && c.merged(1, 1, 20, true));
            float[] k0 = new float[HD], v0 = new float[HD], k1 = new float[HD], v1 = new float[HD];
            // the lower layer evicts slot 3: the upper layer's row there is its reconstruction, bit for bit
            b.readKv(c, 1, 1, 3, k0, v0);
            long before = c.bytes();
            c.free(0, 1, 3);
            assertFalse(c.merged(1, 1, 3, true));
            b.readKv(c, 1, 1, 3, k1, v1);
            assertArrayEquals(k0, k1);
            assertArrayEquals(v0, v1);
            // the lower layer reuses the slot for another token; the upper one still reads its own
            float[] nk = new float[HD], nv = new float[HD];
            java.util.Arrays.fill(nk, 0.5f);
            java.util.Arrays.fill(nv, -2f);
            assertEquals(3, c.allocate(0, 1, new int[]{100}, 1)[0]);
            b.writeKv(c, 0, 1, 3, nk, nv);
            b.readKv(c, 0, 1, 3, k1, v1);
            assertArrayEquals(nk, k1);
            assertArrayEquals(nv, v1);
            b.readKv(c, 1, 1, 3, k1, v1);
            assertArrayEquals(k0, k1);
            assertArrayEquals(v0, v1);
            // the upper layer evicts slot 20: the lower layer's row is scaled in place, bit for bit
            b.readKv(c, 0, 1, 20, k0, v0);
            c.free(1, 1, 20);
            assertFalse(c.merged(0, 1, 20, true));
            b.readKv(c, 0, 1, 20, k1, v1);
            assertArrayEquals(k0, k1);
            assertArrayEquals(v0, v1);
            // every slot still occupied reads finite rows of its original norm
            for (int l = 0; l < 2; l++)
                for (int g = 0; g < H; g++)
                    for (int s = 0; s < c.highWater(l, g); s++) {
                        int p = c.position(l, g, s);
                        if (p < 0 || p >= n) continue;
                        b.readKv(c, l, g, s, k1, v1);
                        assertEquals(norm(kv[0][l][p], g * HD), norm(k1, 0), 1e-5 * norm(k1, 0));
                        assertEquals(norm(kv[1][l][p], g * HD), norm(v1, 0), 1e-5 * norm(v1, 0));
                    }
            assertTrue(c.bytes() >= before);
            c.clear();
            assertEquals(0, c.mergedRows());
            append(b, c, kv, 0, n); // reusable after clear, the same merges
            assertTrue(c.merged(0, 1, 3, true));
        }
    }

    @Test
    void bytesAreTheAllocatedArraysAndShrinkWithMerging() {
        // 5 layers, start 0.5: round(2.5) = 3, so one pair (3, 4); layers 0 .. 2 keep their own rows
        try (CpuBackend b = new CpuBackend(2);
             KvCache kc = b.newKvCache(5, H, HD, 100, KvQuantSpec.parse("minicache:group=8,residual=8"))) {
            MiniKvCache c = (MiniKvCache) kc;
            assertFalse(c.paired(2));
            assertTrue(c.paired(3) && c.paired(4));
            long perSlot = (5 * 4 + 4L * HD * 4 * 2 + 2 * 8 + 8) * H;
            long pools = 2L * H * ((16 * HD) * 4 + 8 * 4), windows = H * 16 * 4L;
            assertEquals(perSlot * 100 + pools + windows, c.bytes());
            assertEquals(perSlot * 40 + pools + windows, c.bytesWithCapacity(40));
        }
        // one merged pair at head dim 128: about half the f32 cache once full, the retained pairs included
        int hd = 128, cap = 8192;
        try (CpuBackend b = new CpuBackend(2);
             KvCache mini = b.newKvCache(2, 1, hd, cap, KvQuantSpec.parse("minicache:start=0"));
             KvCache f32 = b.newKvCache(2, 1, hd, cap)) {
            SplittableRandom r = new SplittableRandom(2);
            int chunk = 512;
            for (int from = 0; from < cap; from += chunk) {
                int[] pos = new int[chunk];
                for (int i = 0; i < chunk; i++) pos[i] = from + i;
                for (int l = 0; l < 2; l++) {
                    int[][] slots = {mini.allocate(l, 0, pos, chunk)};
                    float[] k = new float[chunk * hd], v = new float[chunk * hd];
                    for (int i = 0; i < k.length; i++) {
                        k[i] = (float) r.nextGaussian();
                        v[i] = (float) r.nextGaussian();
                    }
                    Tensor kt = b.allocate(chunk, hd), vt = b.allocate(chunk, hd);
                    b.upload(kt, k);
                    b.upload(vt, v);
                    b.storeKv(mini, l, kt, vt, slots, chunk);
                }
            }
            MiniKvCache c = (MiniKvCache) mini;
            double ratio = (double) f32.bytes() / mini.bytes();
            System.out.printf(Locale.ROOT, "minicache 2 layers hd 128, %d tokens: %d bytes vs f32 %d (%.2fx), %d rows merged, %d retained%n",
                    cap, mini.bytes(), f32.bytes(), ratio, c.mergedRows(), c.retainedRows());
            assertEquals(2L * Math.round(0.05 * 32) * ((cap - 32) / 32), c.retainedRows());
            assertTrue(ratio > 1.75, "ratio " + ratio);
        }
    }
}
