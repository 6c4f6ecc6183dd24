package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.kv.quant.Quant;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.util.Arrays;
import java.util.SplittableRandom;

import static dev.tokenpress.testutil.TestTensors.randn;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The per-block memo of a query's key terms gives bit-identical q·k to the direct dequantizing dot, and the
 * block-wise attention (key codes unpacked per block, scores across a block's tokens, value rows unpacked once per
 * KV head) gives bit-identical outputs, statistics and saliency to attention slot by slot over the same dots.
 */
class QuantKeyMemoTest {
    @ParameterizedTest
    @ValueSource(strings = {"int8:group=8,residual=8", "int4:group=8,residual=8", "int2:group=16,residual=8",
            "zipcache:group=8,residual=8", "mikv:group=8,residual=8,budget=8", "gear:group=8,residual=8"})
    void memoizedKeyDotIsBitIdentical(String spec) {
        int hd = 32, n = 100;
        SplittableRandom r = new SplittableRandom(spec.hashCode());
        try (CpuBackend b = new CpuBackend(1);
             QuantKvCache c = (QuantKvCache) b.newKvCache(1, 1, hd, n, KvQuantSpec.parse(spec))) {
            int[] pos = new int[n];
            for (int i = 0; i < n; i++) pos[i] = i;
            int[][] slots = {c.allocate(0, 0, pos, n)};
            Tensor k = b.allocate(n, hd), v = b.allocate(n, hd);
            b.upload(k, randn(r, n * hd, 1));
            b.upload(v, randn(r, n * hd, 1));
            b.storeKv(c, 0, k, v, slots, n);
            float[] q = randn(r, 3 * hd, 1);
            Kernels kern = Kernels.best();
            for (int row = 0; row < 3; row++) {
                QuantBlock.KeyQuery memo = new QuantBlock.KeyQuery();
                for (int s = 0; s < n; s++)
                    assertEquals(c.keyDot(0, 0, s, q, row * hd, kern), c.keyDot(0, 0, s, q, row * hd, kern, memo),
                            spec + " slot " + s);
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"int8:group=8,residual=8", "int4:group=8,residual=8", "int2:group=16,residual=8",
            "int4:group=32,residual=32", "zipcache:group=8,residual=8", "mikv:group=8,residual=8,budget=8",
            "gear:group=8,residual=8", "int8:group=32,residual=8", "mikv:group=32,residual=8,budget=40",
            "zipcache:group=32,residual=8"})
    void blockwiseAttentionIsBitIdenticalToPerSlotAttention(String spec) {
        // group=32 specs: hd 64 and 5 q-heads per KV head (the value runs' four-head path and its remainder)
        boolean wide = spec.contains("group=32");
        int hd = wide ? 64 : 32, kvHeads = 2, group = wide ? 5 : 3, heads = kvHeads * group, n = 150, rows = 3;
        for (boolean selected : new boolean[]{false, true}) {
            try (CpuBackend b = new CpuBackend(2);
                 QuantKvCache fast = (QuantKvCache) b.newKvCache(1, kvHeads, hd, n, KvQuantSpec.parse(spec));
                 QuantKvCache ref = (QuantKvCache) b.newKvCache(1, kvHeads, hd, n, KvQuantSpec.parse(spec))) {
                SplittableRandom r = new SplittableRandom(spec.hashCode() + (selected ? 1 : 0));
                float[] kd = randn(r, n * kvHeads * hd, 1), vd = randn(r, n * kvHeads * hd, 1);
                for (QuantKvCache c : new QuantKvCache[]{fast, ref}) {
                    int[] pos = new int[n];
                    for (int i = 0; i < n; i++) pos[i] = i;
                    int[][] slots = new int[kvHeads][];
                    for (int g = 0; g < kvHeads; g++) slots[g] = c.allocate(0, g, pos, n);
                    Tensor k = b.allocate(n, kvHeads * hd), v = b.allocate(n, kvHeads * hd);
                    b.upload(k, kd);
                    b.upload(v, vd);
                    b.storeKv(c, 0, k, v, slots, n);
                    // dead lanes inside blocks, a whole dead block and a freed residual entry
                    for (int g = 0; g < kvHeads; g++)
                        for (int s : new int[]{3, 9, 17, 40, 41, 42, 43, 44, 45, 46, 47, 120, n - 2}) c.free(0, g, s);
                }
                float[] q = randn(r, rows * heads * hd, 1);
                Tensor qt = b.allocate(rows, heads * hd), out = b.allocate(rows, heads * hd);
                b.upload(qt, q);
                int[] qpos = {100, 130, n - 1};
                SlotSelection sel = null;
                if (selected) {
                    int[][] sl = new int[kvHeads][];
                    for (int g = 0; g < kvHeads; g++) {
                        sl[g] = new int[n / 3];
                        for (int i = 0; i < sl[g].length; i++) sl[g][i] = (i * 7 + g) % n;
                    }
                    sel = SlotSelection.of(sl);
                }
                AttentionStats fs = AttentionStats.allocate(heads, kvHeads, n), rs = AttentionStats.allocate(heads, kvHeads, n);
                fs.clear();
                rs.clear();
                fs.fromRow = rs.fromRow = 1;
                b.attention(out, qt, fast, 0, qpos, rows, sel, fs);
                float[] got = b.download(out, 0, rows);
                float[] want = new float[rows * heads * hd];
                Kernels kern = Kernels.best();
                for (int row = 0; row < rows; row++)
                    for (int h = 0; h < heads; h++)
                        perSlot(ref, kern, want, q, row, h, h / group, hd, heads, qpos[row], sel, rs, rows);
                String what = spec + (selected ? " selected" : "");
                assertArrayEquals(want, got, what);
                for (int h = 0; h < heads; h++) assertArrayEquals(rs.rawScores[h], fs.rawScores[h], what + " raw " + h);
                for (int g = 0; g < kvHeads; g++) {
                    assertArrayEquals(rs.probSums[g], fs.probSums[g], what + " probs " + g);
                    if (fast.tracks())
                        for (int s = 0; s < n; s++) assertEquals(ref.saliency(0, g, s), fast.saliency(0, g, s), what + " saliency " + s);
                }
                float[][] ks = new float[heads][n];
                b.queryKeyScores(ks, qt, 2, qpos[2], fast, 0);
                for (int h = 0; h < heads; h++) {
                    float[] w = new float[n];
                    Arrays.fill(w, Float.NEGATIVE_INFINITY);
                    int[] pos = fast.positions(0, h / group);
                    for (int s = 0; s < fast.highWater(0, h / group); s++)
                        if (pos[s] >= 0 && pos[s] <= qpos[2]) w[s] = fast.keyDot(0, h / group, s, q, 2 * heads * hd + h * hd, kern);
                    assertArrayEquals(w, ks[h], what + " query-key scores " + h);
                }
            }
        }
    }

    /** Attention of one query head, one slot at a time through keyDot / valueAxpy (the reference order). */
    private static void perSlot(QuantKvCache c, Kernels k, float[] o, float[] q, int r, int h, int g, int hd, int heads,
                                int qpos, SlotSelection select, AttentionStats stats, int n) {
        int[] pos = c.positions(0, g);
        int m = select == null ? c.highWater(0, g) : select.count()[g];
        int[] list = select == null ? null : select.slots()[g];
        int qOff = (r * heads + h) * hd, oOff = qOff;
        float scale = (float) (1.0 / Math.sqrt(hd));
        float[] scores = new float[m];
        float max = Float.NEGATIVE_INFINITY;
        for (int j = 0; j < m; j++) {
            int slot = list == null ? j : list[j];
            if (pos[slot] < 0 || pos[slot] > qpos) {
                scores[j] = Float.NEGATIVE_INFINITY;
                continue;
            }
            float raw = c.keyDot(0, g, slot, q, qOff, k);
            if (r == n - 1) stats.rawScores[h][slot] = raw;
            scores[j] = raw * scale;
            if (scores[j] > max) max = scores[j];
        }
        Arrays.fill(o, oOff, oOff + hd, 0f);
        if (max == Float.NEGATIVE_INFINITY) return;
        double sum = k.expShifted(scores, 0, m, max); // the kernels' softmax numerators (shared with the f32 cache)
        float inv = (float) (1.0 / sum);
        for (int j = 0; j < m; j++) {
            int slot = list == null ? j : list[j];
            if (scores[j] == 0f) {
                if (c.tracks() && pos[slot] >= 0 && pos[slot] <= qpos) c.observe(0, g, slot, 0f);
                continue;
            }
            float p = scores[j] * inv;
            c.valueAxpy(0, g, slot, p, o, oOff, k);
            if (r >= stats.fromRow) stats.probSums[g][slot] += p;
            if (c.tracks()) c.observe(0, g, slot, p);
        }
    }

    @Test
    void unpackedCodesMatchQuantGet() {
        SplittableRandom r = new SplittableRandom(7);
        for (Kernels kern : new Kernels[]{Kernels.best(), new ScalarKernels()})
            for (int bits : new int[]{1, 2, 4, 8})
                for (int n : new int[]{1, 7, 8, 16, 31, 32, 33, 64, 100, 128}) {
                    int bytes = Quant.rowBytes(n, bits);
                    for (int base : new int[]{0, 3, 17})
                      for (int trail : new int[]{0, 5, 40}) { // 0: the row ends the array (no reads past it)
                        byte[] a = new byte[base + bytes + trail];
                        for (int i = 0; i < a.length; i++) a[i] = (byte) r.nextInt(256);
                        float[] out = new float[n + 2];
                        kern.unpackCodes(a, base, n, bits, out, 1);
                        for (int e = 0; e < n; e++)
                            assertEquals((float) Quant.get(a, base, e, bits), out[1 + e], kern.describe() + " bits " + bits + " n " + n + " e " + e);
                        assertEquals(0f, out[0]);
                        assertEquals(0f, out[n + 1]);
                      }
                }
    }
}
