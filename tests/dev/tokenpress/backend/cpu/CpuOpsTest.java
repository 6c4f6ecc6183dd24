package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.RopeTable;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.io.DType;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.junit.jupiter.params.provider.EnumSource;

import java.util.List;
import java.util.SplittableRandom;

import static dev.tokenpress.testutil.TestTensors.*;
import static org.junit.jupiter.api.Assertions.*;

/** Every CPU op against a naive double-precision reference. */
class CpuOpsTest {
    static final CpuBackend CPU = new CpuBackend(2);
    static final CpuBackend SCALAR = scalarBackend();

    /** A one-thread CPU backend on the scalar kernels (the fallback when the Vector API is missing). */
    static CpuBackend scalarBackend() {
        System.setProperty("tokenpress.scalar", "true");
        try {
            return new CpuBackend(1);
        } finally {
            System.clearProperty("tokenpress.scalar");
        }
    }

    @AfterAll
    static void close() {
        CPU.close();
        SCALAR.close();
    }

    @Test
    void backendsDescribeTheirKernels() {
        assertTrue(CPU.description().contains("Vector API"), CPU.description());
        assertTrue(SCALAR.description().contains("scalar"), SCALAR.description());
    }

    @ParameterizedTest
    @CsvSource({"BF16,1,64,48", "BF16,7,130,33", "F16,3,70,19", "F32,5,33,17", "BF16,2,1,5", "BF16,4,2048,9"})
    void matmulMatchesReference(DType dtype, int n, int in, int out) {
        SplittableRandom r = new SplittableRandom(in * 31L + out);
        float[] w = randn(r, out * in, 0.5), x = randn(r, n * in, 1.0), bias = randn(r, out, 0.1);
        float[] wr = rounded(dtype, w);
        double[] ref = new double[n * out];
        for (int i = 0; i < n; i++)
            for (int o = 0; o < out; o++) {
                double s = bias[o];
                for (int j = 0; j < in; j++) s += (double) wr[o * in + j] * x[i * in + j];
                ref[i * out + o] = s;
            }
        for (CpuBackend b : List.of(CPU, SCALAR)) {
            Tensor wt = b.weight(of("w", dtype, out, in, w));
            Tensor bt = b.weight(of("b", DType.F32, -1, out, bias));
            Tensor xt = b.allocate(n, in), ot = b.allocate(n, out);
            b.upload(xt, x);
            b.matmul(ot, xt, wt, bt, n);
            float[] got = b.download(ot, 0, n);
            assertTrue(worstRatio(got, ref, 1e-4, 1e-4) <= 1, b.description() + " " + dtype);
        }
    }

    @ParameterizedTest
    @CsvSource({"5,258,39", "2,2048,8", "3,33,4", "4,64,7"})
    void batchedMatmulRowsAreBitIdenticalToSingleRows(int n, int in, int out) {
        SplittableRandom r = new SplittableRandom(77L * in + out);
        float[] w = randn(r, out * in, 0.5), x = randn(r, n * in, 1.0);
        for (CpuBackend b : List.of(CPU, SCALAR)) {
            Tensor wt = b.weight(of("w", DType.BF16, out, in, w));
            Tensor xt = b.allocate(n, in), ot = b.allocate(n, out), x1 = b.allocate(1, in), o1 = b.allocate(1, out);
            b.upload(xt, x);
            b.matmul(ot, xt, wt, null, n); // four-row kernel over f32-converted rows
            float[] all = b.download(ot, 0, n);
            for (int i = 0; i < n; i++) {
                b.upload(x1, java.util.Arrays.copyOfRange(x, i * in, (i + 1) * in));
                b.matmul(o1, x1, wt, null, 1); // single-row kernel on the packed bf16 pairs
                assertArrayEquals(b.download(o1, 0, 1), java.util.Arrays.copyOfRange(all, i * out, (i + 1) * out),
                        b.description() + " row " + i);
            }
        }
    }

    @Test
    void rmsnormMatchesReference() {
        SplittableRandom r = new SplittableRandom(3);
        int n = 3, d = 100;
        float[] x = randn(r, n * d, 2), w = randn(r, d, 1);
        double[] ref = new double[n * d];
        for (int i = 0; i < n; i++) {
            double ss = 0;
            for (int j = 0; j < d; j++) ss += (double) x[i * d + j] * x[i * d + j];
            double inv = 1 / Math.sqrt(ss / d + 1e-5);
            for (int j = 0; j < d; j++) ref[i * d + j] = w[j] * x[i * d + j] * inv;
        }
        Tensor xt = CPU.allocate(n, d);
        CPU.upload(xt, x);
        CPU.rmsnorm(xt, xt, CPU.weight(of("w", DType.F32, -1, d, w)), 1e-5f, n);
        assertTrue(worstRatio(CPU.download(xt, 0, n), ref, 1e-5, 1e-5) <= 1);
    }

    @Test
    void embeddingGathersRows() {
        float[] table = randn(new SplittableRandom(4), 10 * 6, 1);
        Tensor t = CPU.weight(of("e", DType.BF16, 10, 6, table));
        Tensor out = CPU.allocate(3, 6);
        CPU.embedding(out, t, new int[]{9, 0, 4}, 3);
        float[] got = CPU.download(out, 0, 3), tr = rounded(DType.BF16, table);
        int[] ids = {9, 0, 4};
        for (int i = 0; i < 3; i++) for (int j = 0; j < 6; j++) assertEquals(tr[ids[i] * 6 + j], got[i * 6 + j]);
        assertThrows(IllegalArgumentException.class, () -> CPU.embedding(out, t, new int[]{10}, 1));
    }

    @Test
    void ropeMatchesReferenceIncludingLlama3Scaling() {
        LlamaConfig c = new LlamaConfig("LlamaForCausalLM", "llama", 64, 128, 1, 4, 2, 16, 100, 1e-5f, 500000f,
                new LlamaConfig.RopeScaling("llama3", 8f, 1f, 4f, 32), 256, true, false, null, 1, List.of(2), "bfloat16");
        RopeTable rt = RopeTable.of(c);
        int heads = 4, hd = 16, n = 3;
        int[] pos = {0, 5, 200};
        float[] x = randn(new SplittableRandom(5), n * heads * hd, 1);
        double[] ref = new double[x.length];
        for (int i = 0; i < n; i++)
            for (int h = 0; h < heads; h++)
                for (int j = 0; j < hd / 2; j++) {
                    double base = 1.0 / Math.pow(500000, 2.0 * j / hd);
                    double wavelen = 2 * Math.PI / base, lowW = 32 / 1.0, highW = 32 / 4.0;
                    double f = wavelen < highW ? base : wavelen > lowW ? base / 8 : (1 - (32 / wavelen - 1) / 3) * base / 8 + (32 / wavelen - 1) / 3 * base;
                    double ang = pos[i] * f;
                    int o = i * heads * hd + h * hd;
                    double a = x[o + j], b = x[o + j + hd / 2];
                    ref[o + j] = a * Math.cos(ang) - b * Math.sin(ang);
                    ref[o + j + hd / 2] = b * Math.cos(ang) + a * Math.sin(ang);
                }
        Tensor t = CPU.allocate(n, heads * hd);
        CPU.upload(t, x);
        CPU.rope(t, heads, rt, pos, n);
        assertTrue(worstRatio(CPU.download(t, 0, n), ref, 2e-4, 1e-4) <= 1);
    }

    @Test
    void swigluAndAdd() {
        float[] g = randn(new SplittableRandom(6), 40, 3), u = randn(new SplittableRandom(7), 40, 1);
        Tensor gt = CPU.allocate(2, 20), ut = CPU.allocate(2, 20);
        CPU.upload(gt, g);
        CPU.upload(ut, u);
        CPU.swiglu(gt, gt, ut, 2);
        double[] ref = new double[40];
        for (int i = 0; i < 40; i++) ref[i] = g[i] / (1 + Math.exp(-g[i])) * u[i];
        assertTrue(worstRatio(CPU.download(gt, 0, 2), ref, 1e-6, 1e-5) <= 1);
        CPU.add(gt, ut, 2);
        for (int i = 0; i < 40; i++) ref[i] += u[i];
        assertTrue(worstRatio(CPU.download(gt, 0, 2), ref, 1e-6, 1e-5) <= 1);
    }

    /** Naive attention over explicit (slot, position) lists. */
    static double[] naiveAttention(float[] q, float[][] keys, float[][] vals, int[][] positions, int[][] cand,
                                   int[] qpos, int n, int heads, int kvHeads, int hd) {
        double[] out = new double[n * heads * hd];
        int group = heads / kvHeads;
        for (int i = 0; i < n; i++)
            for (int h = 0; h < heads; h++) {
                int g = h / group;
                double[] s = new double[cand[g].length];
                double max = Double.NEGATIVE_INFINITY;
                for (int j = 0; j < cand[g].length; j++) {
                    int slot = cand[g][j];
                    int p = positions[g][slot];
                    if (p < 0 || p > qpos[i]) { s[j] = Double.NEGATIVE_INFINITY; continue; }
                    double d = 0;
                    for (int e = 0; e < hd; e++) d += (double) q[i * heads * hd + h * hd + e] * keys[g][slot * hd + e];
                    s[j] = d / Math.sqrt(hd);
                    max = Math.max(max, s[j]);
                }
                if (max == Double.NEGATIVE_INFINITY) continue;
                double sum = 0;
                for (int j = 0; j < s.length; j++) { s[j] = Math.exp(s[j] - max); sum += s[j]; }
                for (int j = 0; j < s.length; j++)
                    for (int e = 0; e < hd; e++) out[i * heads * hd + h * hd + e] += s[j] / sum * vals[g][cand[g][j] * hd + e];
            }
        return out;
    }

    @ParameterizedTest
    @CsvSource({"1,1,1,64", "9,4,1,64", "81,8,2,128", "33,2,2,16"})
    void attentionMatchesReference(int len, int group, int kvHeads, int hd) {
        int heads = group * kvHeads, n = 3;
        SplittableRandom r = new SplittableRandom(len * 7L + hd);
        KvCache cache = CPU.newKvCache(1, kvHeads, hd, len + n);
        float[][] keys = new float[kvHeads][(len + n) * hd], vals = new float[kvHeads][(len + n) * hd];
        int[] positions = new int[len];
        for (int i = 0; i < len; i++) positions[i] = i;
        int[][] slots = new int[kvHeads][];
        for (int g = 0; g < kvHeads; g++) slots[g] = cache.allocate(0, g, positions, len);
        float[] k = randn(r, len * kvHeads * hd, 1), v = randn(r, len * kvHeads * hd, 1);
        Tensor kt = CPU.allocate(len, kvHeads * hd), vt = CPU.allocate(len, kvHeads * hd);
        CPU.upload(kt, k);
        CPU.upload(vt, v);
        CPU.storeKv(cache, 0, kt, vt, slots, len);
        for (int g = 0; g < kvHeads; g++)
            for (int i = 0; i < len; i++)
                for (int e = 0; e < hd; e++) {
                    keys[g][slots[g][i] * hd + e] = k[i * kvHeads * hd + g * hd + e];
                    vals[g][slots[g][i] * hd + e] = v[i * kvHeads * hd + g * hd + e];
                }
        // queries at the last positions (one sees all, earlier ones see a causal prefix)
        int[] qpos = new int[n];
        for (int i = 0; i < n; i++) qpos[i] = Math.max(0, len - n + i);
        float[] q = randn(r, n * heads * hd, 1);
        Tensor qt = CPU.allocate(n, heads * hd), ot = CPU.allocate(n, heads * hd);
        CPU.upload(qt, q);
        int[][] pos = new int[kvHeads][];
        int[][] all = new int[kvHeads][];
        for (int g = 0; g < kvHeads; g++) {
            pos[g] = cache.positions(0, g);
            all[g] = new int[cache.highWater(0, g)];
            for (int j = 0; j < all[g].length; j++) all[g][j] = j;
        }
        double[] ref = naiveAttention(q, keys, vals, pos, all, qpos, n, heads, kvHeads, hd);
        AttentionStats stats = AttentionStats.allocate(heads, kvHeads, cache.capacity());
        stats.clear();
        CPU.attention(ot, qt, cache, 0, qpos, n, null, stats);
        assertTrue(worstRatio(CPU.download(ot, 0, n), ref, 1e-5, 1e-4) <= 1);
        // probability sums: over the group's q-heads and the n rows, each row sums to 1 per head
        for (int g = 0; g < kvHeads; g++) {
            double total = 0;
            for (float p : stats.probSums[g]) total += p;
            assertEquals(group * n, total, 1e-3);
        }
        // raw scores of the last row equal q·k
        int h = heads - 1, g = h / group, slot = cache.highWater(0, g) - 1;
        double d = 0;
        for (int e = 0; e < hd; e++) d += (double) q[(n - 1) * heads * hd + h * hd + e] * keys[g][slot * hd + e];
        assertEquals(d, stats.rawScores[h][slot], 1e-3);

        // a selection: the first and last slot only; and an empty list outputs zeros
        int[][] sel = new int[kvHeads][];
        for (int g2 = 0; g2 < kvHeads; g2++) sel[g2] = len == 1 ? new int[]{0} : new int[]{0, cache.highWater(0, g2) - 1};
        double[] refSel = naiveAttention(q, keys, vals, pos, sel, qpos, n, heads, kvHeads, hd);
        CPU.attention(ot, qt, cache, 0, qpos, n, SlotSelection.of(sel), null);
        assertTrue(worstRatio(CPU.download(ot, 0, n), refSel, 1e-5, 1e-4) <= 1);
        CPU.attention(ot, qt, cache, 0, qpos, n, new SlotSelection(new int[kvHeads][0], new int[kvHeads]), null);
        for (float f : CPU.download(ot, 0, n)) assertEquals(0f, f);
    }

    @Test
    void evictedSlotsAreMaskedAndReused() {
        KvCache cache = CPU.newKvCache(1, 1, 16, 4);
        int[] s = cache.allocate(0, 0, new int[]{0, 1, 2, 3}, 4);
        assertArrayEquals(new int[]{0, 1, 2, 3}, s);
        assertThrows(dev.tokenpress.kv.KvCacheFullException.class, () -> cache.allocate(0, 0, new int[]{4}, 1));
        cache.free(0, 0, 1);
        assertEquals(-1, cache.position(0, 0, 1));
        assertEquals(3, cache.occupied(0, 0));
        assertArrayEquals(new int[]{1}, cache.allocate(0, 0, new int[]{4}, 1));
        assertEquals(4, cache.position(0, 0, 1));
    }

    @ParameterizedTest
    @EnumSource(value = DType.class)
    void argmaxAndTopK(DType unused) {
        float[] x = {1, 5, 3, 5, -2, 4};
        Tensor t = CPU.allocate(1, x.length);
        CPU.upload(t, x);
        assertEquals(1, CPU.argmax(t, 0));
        float[] vals = new float[3];
        assertArrayEquals(new int[]{1, 3, 5}, CPU.topK(t, 0, 3, vals));
        assertArrayEquals(new float[]{5, 5, 4}, vals);
        assertArrayEquals(new int[]{1, 3, 5, 2, 0, 4}, CPU.topK(t, 0, 10, null));
    }
}
