package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.RopeTable;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.TensorData;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.IntStream;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Every CUDA op against the CPU backend (the specification), in the spirit of ggml's test-backend-ops: normalized
 * MSE plus an {@code atol + rtol·|ref|} check, on lengths that are not tile multiples (1, 9, 81, 729, 4097, 33001),
 * GQA ratios 1/4/8 and head dims 64/128, with empty/single/full slot lists and the statistics outputs. Inputs the
 * GPU stores in bf16 (weights, keys, values) are generated bf16-exact so both sides see identical values.
 * Skipped (not failed) where CUDA is unavailable.
 */
class CudaParityTest {
    static Backend cpu;
    static Backend gpu;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        cpu = new CpuBackend();
        gpu = CudaBackend.open();
        System.out.println("[parity] " + gpu.description());
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
        if (cpu != null) cpu.close();
    }

    // ---- helpers ------------------------------------------------------------------------------------------------

    static float[] randn(SplittableRandom r, int n, double std) {
        float[] f = new float[n];
        for (int i = 0; i < n; i++) {
            double u1 = r.nextDouble(), u2 = r.nextDouble();
            f[i] = (float) (std * Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2));
        }
        return f;
    }

    static float[] bf16Exact(float[] f) {
        float[] o = new float[f.length];
        for (int i = 0; i < f.length; i++) o[i] = Half.bf16ToFloat(Half.floatToBf16(f[i]));
        return o;
    }

    static TensorData bf16Weight(String name, int rows, int cols, float[] values) {
        ByteBuffer b = ByteBuffer.allocateDirect(2 * rows * cols).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) b.putShort(Half.floatToBf16(v));
        b.flip();
        return new TensorData(name, DType.BF16, new long[] {rows, cols}, b, null);
    }

    static TensorData f32Vector(String name, float[] values) {
        ByteBuffer b = ByteBuffer.allocateDirect(4 * values.length).order(ByteOrder.LITTLE_ENDIAN);
        for (float v : values) b.putFloat(v);
        b.flip();
        return new TensorData(name, DType.F32, new long[] {values.length}, b, null);
    }

    static Tensor act(Backend b, int rows, int cols, float[] data) {
        Tensor t = b.allocate(rows, cols);
        if (data != null) b.upload(t, data);
        return t;
    }

    /** Normalized MSE Σ(ref-got)² / Σref² (0 when both are zero). */
    static double nmse(float[] ref, float[] got) {
        double num = 0, den = 0;
        for (int i = 0; i < ref.length; i++) {
            double d = (double) ref[i] - got[i];
            num += d * d;
            den += (double) ref[i] * ref[i];
        }
        return den == 0 ? num : num / den;
    }

    static void assertClose(String what, float[] ref, float[] got, double maxNmse, double atol, double rtol) {
        assertEquals(ref.length, got.length, what + ": length");
        for (int i = 0; i < ref.length; i++) {
            if (Float.isNaN(got[i]) && !Float.isNaN(ref[i])) fail(what + ": NaN at " + i);
            if (Float.isInfinite(ref[i]) || Float.isInfinite(got[i])) {
                assertEquals(ref[i], got[i], what + ": infinity mismatch at " + i);
                continue;
            }
            double tol = atol + rtol * Math.abs(ref[i]);
            if (Math.abs(ref[i] - got[i]) > tol)
                fail(String.format("%s: element %d: ref %.7g got %.7g (tol %.3g, nmse %.3g)", what, i, ref[i], got[i], tol, nmse(ref, got)));
        }
        double e = nmse(finite(ref), finite(got));
        assertTrue(e <= maxNmse, what + ": nmse " + e + " > " + maxNmse);
    }

    static float[] finite(float[] a) {
        float[] o = a.clone();
        for (int i = 0; i < o.length; i++) if (Float.isInfinite(o[i])) o[i] = 0;
        return o;
    }

    // ---- small ops ----------------------------------------------------------------------------------------------

    @Test
    void embedding() {
        SplittableRandom r = new SplittableRandom(1);
        int vocab = 1000, d = 333, n = 7;
        float[] table = randn(r, vocab * d, 1);
        TensorData td = bf16Weight("embed", vocab, d, table);
        Tensor tc = cpu.weight(td), tg = gpu.weight(td);
        int[] tokens = {0, 999, 5, 5, 123, 456, 789};
        Tensor oc = act(cpu, n, d, null), og = act(gpu, n, d, null);
        cpu.embedding(oc, tc, tokens, n);
        gpu.embedding(og, tg, tokens, n);
        assertArrayEquals(cpu.download(oc, 0, n), gpu.download(og, 0, n));
        assertThrows(IllegalArgumentException.class, () -> gpu.embedding(og, tg, new int[] {1000}, 1));
    }

    @Test
    void rmsnormSwigluAdd() {
        SplittableRandom r = new SplittableRandom(2);
        int n = 5, d = 2051;
        float[] x = randn(r, n * d, 1), w = randn(r, d, 1), y = randn(r, n * d, 1);
        Tensor wc = cpu.weight(f32Vector("norm", w)), wg = gpu.weight(f32Vector("norm", w));
        Tensor xc = act(cpu, n, d, x), xg = act(gpu, n, d, x);
        Tensor oc = act(cpu, n, d, null), og = act(gpu, n, d, null);
        cpu.rmsnorm(oc, xc, wc, 1e-5f, n);
        gpu.rmsnorm(og, xg, wg, 1e-5f, n);
        assertClose("rmsnorm", cpu.download(oc, 0, n), gpu.download(og, 0, n), 1e-11, 1e-5, 1e-5);
        cpu.rmsnorm(xc, xc, wc, 1e-5f, n); // in place
        gpu.rmsnorm(xg, xg, wg, 1e-5f, n);
        assertClose("rmsnorm in place", cpu.download(xc, 0, n), gpu.download(xg, 0, n), 1e-11, 1e-5, 1e-5);

        // Qwen3's per-head q/k norm: rows of 8 heads of 128, in place, fewer rows than allocated
        float[] qh = randn(r, n * 8 * 128, 1), wh = randn(r, 128, 1);
        Tensor hc = act(cpu, n, 8 * 128, qh), hg = act(gpu, n, 8 * 128, qh);
        Tensor whc = cpu.weight(f32Vector("q_norm", wh)), whg = gpu.weight(f32Vector("q_norm", wh));
        cpu.rmsnormHeads(hc, whc, 1e-6f, n - 1, 8);
        gpu.rmsnormHeads(hg, whg, 1e-6f, n - 1, 8);
        assertClose("rmsnormHeads", cpu.download(hc, 0, n), gpu.download(hg, 0, n), 1e-11, 1e-5, 1e-5);
        assertThrows(IllegalArgumentException.class, () -> gpu.rmsnormHeads(hg, whg, 1e-6f, 1, 4));

        Tensor yc = act(cpu, n, d, y), yg = act(gpu, n, d, y);
        cpu.swiglu(oc, xc, yc, n);
        gpu.swiglu(og, xg, yg, n);
        assertClose("swiglu", cpu.download(oc, 0, n), gpu.download(og, 0, n), 1e-11, 1e-6, 1e-5);
        cpu.add(oc, yc, n - 1);
        gpu.add(og, yg, n - 1);
        assertClose("add", cpu.download(oc, 0, n), gpu.download(og, 0, n), 1e-12, 1e-6, 1e-6);
        cpu.copyRows(oc, 0, yc, 3, 2);
        gpu.copyRows(og, 0, yg, 3, 2);
        assertArrayEquals(cpu.download(oc, 0, 2), gpu.download(og, 0, 2), "copied rows are bit-identical");
    }

    @ParameterizedTest(name = "rope hd={0}")
    @MethodSource("headDims")
    void rope(int hd) {
        SplittableRandom r = new SplittableRandom(3 + hd);
        int n = 9, heads = 5;
        float[] inv = new float[hd / 2];
        for (int i = 0; i < inv.length; i++) inv[i] = (float) (1.0 / Math.pow(500000, 2.0 * i / hd));
        RopeTable rt = new RopeTable(hd, inv);
        int[] pos = {0, 1, 2, 17, 511, 4096, 8191, 33000, 131071};
        float[] x = randn(r, n * heads * hd, 1);
        Tensor xc = act(cpu, n, heads * hd, x), xg = act(gpu, n, heads * hd, x);
        cpu.rope(xc, heads, rt, pos, n);
        gpu.rope(xg, heads, rt, pos, n);
        assertClose("rope", cpu.download(xc, 0, n), gpu.download(xg, 0, n), 1e-11, 2e-5, 2e-5);
        // YaRN: cos and sin times the attention factor
        RopeTable yarn = new RopeTable(hd, inv, 1.1386294f);
        cpu.rope(xc, heads, yarn, pos, n);
        gpu.rope(xg, heads, yarn, pos, n);
        assertClose("rope (yarn scale)", cpu.download(xc, 0, n), gpu.download(xg, 0, n), 1e-11, 3e-5, 3e-5);
    }

    @ParameterizedTest(name = "matmul n={0} bias={1}")
    @MethodSource("matmulCases")
    void matmul(int n, boolean bias) {
        SplittableRandom r = new SplittableRandom(4 + n);
        int out = 300, in = 520;
        float[] w = randn(r, out * in, 0.05), x = randn(r, n * in, 1), b = randn(r, out, 1);
        TensorData wd = bf16Weight("w", out, in, w);
        Tensor wc = cpu.weight(wd), wg = gpu.weight(wd);
        Tensor bc = bias ? cpu.weight(f32Vector("b", b)) : null, bg = bias ? gpu.weight(f32Vector("b", b)) : null;
        Tensor xc = act(cpu, n, in, x), xg = act(gpu, n, in, x);
        Tensor oc = act(cpu, n, out, null), og = act(gpu, n, out, null);
        cpu.matmul(oc, xc, wc, bc, n);
        gpu.matmul(og, xg, wg, bg, n);
        // the GPU rounds x to bf16 before the GEMM: ~2^-9 relative error per product
        assertClose("matmul", cpu.download(oc, 0, n), gpu.download(og, 0, n), 2e-5, 0.05, 0.02);
    }

    static Stream<Arguments> matmulCases() {
        return Stream.of(Arguments.of(1, false), Arguments.of(1, true), Arguments.of(7, true), Arguments.of(64, false));
    }

    static Stream<Integer> headDims() {
        return Stream.of(64, 128);
    }

    @Test
    void argmaxAndTopK() {
        SplittableRandom r = new SplittableRandom(5);
        int v = 128256;
        float[] x = randn(r, 2 * v, 3);
        x[v + 77] = 50f;
        x[v + 99_000] = 50f; // tie: lower index first
        for (int i = 0; i < 2000; i++) x[v + 1000 + i] = 20f; // a block of ties
        Tensor xc = act(cpu, 2, v, x), xg = act(gpu, 2, v, x);
        assertEquals(cpu.argmax(xc, 0), gpu.argmax(xg, 0));
        assertEquals(77, gpu.argmax(xg, 1));
        for (int k : new int[] {1, 5, 40, 1000, 1024, 1500}) {
            for (int row = 0; row < 2; row++) {
                float[] vc = new float[k], vg = new float[k];
                int[] ic = cpu.topK(xc, row, k, vc), ig = gpu.topK(xg, row, k, vg);
                assertArrayEquals(ic, ig, "topK k=" + k + " row " + row);
                assertArrayEquals(vc, vg, "topK values k=" + k);
            }
        }
        Tensor small = act(gpu, 1, 10, new float[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
        assertEquals(10, gpu.topK(small, 0, 50, null).length);
        // several rows read back together (groups of at most 1024 ids per copy; k = 0 rows skipped, k > 1024 alone)
        int[] rows = {1, 0, 1, 0, 1, 1, 0};
        int[] ks = {40, 0, 1000, 43, 1500, 7, 40};
        float[][] vals = new float[rows.length][];
        for (int i = 0; i < rows.length; i++) vals[i] = new float[Math.max(ks[i], 0)];
        int[][] got = gpu.topKRows(xg, rows, ks, vals);
        for (int i = 0; i < rows.length; i++) {
            if (ks[i] == 0) {
                assertEquals(null, got[i], "k = 0");
                continue;
            }
            float[] vc = new float[ks[i]];
            assertArrayEquals(cpu.topK(xc, rows[i], ks[i], vc), got[i], "topKRows entry " + i);
            assertArrayEquals(vc, vals[i], "topKRows values " + i);
        }
    }

    @Test
    void unsupportedHeadDim() {
        assertThrows(UnsupportedOpException.class, () -> gpu.newKvCache(1, 2, 96, 16));
    }

    // ---- attention ------------------------------------------------------------------------------------------------

    /** A CPU and a GPU cache holding the same bf16-exact keys/values at positions 0..len-1 (layer 1 of 2). */
    record Pair(KvCache c, KvCache g, int hkv, int hd, int len) {}

    static Pair filledCaches(int hkv, int hd, int len, int capacity, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        KvCache cc = cpu.newKvCache(2, hkv, hd, capacity), cg = gpu.newKvCache(2, hkv, hd, capacity);
        int chunk = 4096;
        Tensor kc = cpu.allocate(chunk, hkv * hd), vc = cpu.allocate(chunk, hkv * hd);
        Tensor kg = gpu.allocate(chunk, hkv * hd), vg = gpu.allocate(chunk, hkv * hd);
        for (int done = 0; done < len; done += chunk) {
            int m = Math.min(chunk, len - done);
            int[] pos = new int[m];
            for (int i = 0; i < m; i++) pos[i] = done + i;
            float[] k = bf16Exact(randn(r, m * hkv * hd, 1)), v = bf16Exact(randn(r, m * hkv * hd, 1));
            cpu.upload(kc, k);
            cpu.upload(vc, v);
            gpu.upload(kg, k);
            gpu.upload(vg, v);
            for (int layer = 0; layer < 2; layer++) {
                int[][] sc = new int[hkv][], sg = new int[hkv][];
                for (int g = 0; g < hkv; g++) {
                    sc[g] = cc.allocate(layer, g, pos, m);
                    sg[g] = cg.allocate(layer, g, pos, m);
                    assertArrayEquals(sc[g], sg[g]);
                }
                cpu.storeKv(cc, layer, kc, vc, sc, m);
                gpu.storeKv(cg, layer, kg, vg, sg, m);
            }
        }
        return new Pair(cc, cg, hkv, hd, len);
    }

    static Stream<Arguments> decodeCases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 4, 8})
                for (int len : new int[] {0, 1, 9, 81, 729, 4097, 33001}) a.add(Arguments.of(hd, group, len));
        return a.stream();
    }

    @ParameterizedTest(name = "decode hd={0} group={1} len={2}")
    @MethodSource("decodeCases")
    void decodeAttention(int hd, int group, int len) {
        int hkv = 2, heads = hkv * group, layer = 1;
        Pair p = filledCaches(hkv, hd, len, Math.max(len, 1) + 3, 100L * hd + 10L * group + len);
        try {
            SplittableRandom r = new SplittableRandom(len + 7L);
            float[] q = randn(r, heads * hd, 1);
            Tensor qc = act(cpu, 1, heads * hd, q), qg = act(gpu, 1, heads * hd, q);
            Tensor oc = act(cpu, 1, heads * hd, null), og = act(gpu, 1, heads * hd, null);
            int last = Math.max(len - 1, 0);
            // (1) everything visible, no selection
            check(p, qc, qg, oc, og, heads, layer, new int[] {last}, 1, null, false, "full");
            if (len == 0) {
                float[] z = gpu.download(og, 0, 1);
                for (float f : z) assertEquals(0f, f, "len 0 must give zeros");
                return;
            }
            // (2) causal cut in the middle, with statistics
            check(p, qc, qg, oc, og, heads, layer, new int[] {len / 2}, 1, null, true, "causal");
            // (3) selections: empty, single, full (shuffled)
            int[][] empty = new int[hkv][0];
            check(p, qc, qg, oc, og, heads, layer, new int[] {last}, 1, SlotSelection.of(empty), false, "empty sel");
            int[][] single = new int[hkv][];
            for (int g = 0; g < hkv; g++) single[g] = new int[] {(g * 7919) % len};
            check(p, qc, qg, oc, og, heads, layer, new int[] {last}, 1, SlotSelection.of(single), true, "single sel");
            int[][] full = new int[hkv][];
            for (int g = 0; g < hkv; g++) {
                full[g] = new int[len];
                for (int i = 0; i < len; i++) full[g][i] = i;
                for (int i = len - 1; i > 0; i--) {
                    int j = r.nextInt(i + 1), t = full[g][i];
                    full[g][i] = full[g][j];
                    full[g][j] = t;
                }
            }
            check(p, qc, qg, oc, og, heads, layer, new int[] {last}, 1, SlotSelection.of(full), true, "full sel");
            // (4) freed slots are skipped
            if (len >= 9) {
                for (int g = 0; g < hkv; g++)
                    for (int s = 1; s < len; s += 3) {
                        p.c.free(layer, g, s);
                        p.g.free(layer, g, s);
                    }
                check(p, qc, qg, oc, og, heads, layer, new int[] {last}, 1, null, true, "after free");
            }
        } finally {
            p.c.close();
            p.g.close();
        }
    }

    /** The decode attention kernel variants other than the backend's (1 = register loads, 2 = cp.async, 3 = tensor cores). */
    static int[] otherVariants() {
        int def = ((CudaBackend) gpu).attentionVariant();
        return IntStream.rangeClosed(1, 3).filter(v -> v != def).toArray();
    }

    /** Runs body with each of the other kernel variants (the failure names the variant); restores the backend's. */
    static void withOtherVariants(Runnable body) {
        withVariants(otherVariants(), body);
    }

    /** Runs body with each of the given kernel variants (the failure names the variant); restores the backend's. */
    static void withVariants(int[] variants, Runnable body) {
        CudaBackend g = (CudaBackend) gpu;
        int def = g.attentionVariant();
        try {
            for (int v : variants) {
                g.setAttentionVariant(v);
                try {
                    body.run();
                } catch (AssertionError e) {
                    throw new AssertionError("decode attention kernel v" + v + ": " + e.getMessage(), e);
                }
            }
        } finally {
            g.setAttentionVariant(def);
        }
    }

    /**
     * The decode cases with the attention kernel variants other than the backend's default (1 = register loads,
     * 2 = the cp.async pipeline, 3 = tensor cores), fused merge, and at 81 / 4097 also the
     * separate merge and the split path without the short-context shortcut, so one GPU run validates every kernel.
     */
    @ParameterizedTest(name = "decode other kernel variants hd={0} group={1} len={2}")
    @MethodSource("decodeCases")
    void decodeAttentionOtherVariant(int hd, int group, int len) {
        CudaBackend g = (CudaBackend) gpu;
        withOtherVariants(() -> {
            decodeAttention(hd, group, len);
            if (len == 81 || len == 4097) {
                g.setFusedAttnMerge(false);
                try {
                    decodeAttention(hd, group, len);
                } finally {
                    g.setFusedAttnMerge(true);
                }
                g.setShortAttn(false);
                try {
                    decodeAttention(hd, group, len);
                } finally {
                    g.setShortAttn(true);
                }
            }
        });
    }

    /**
     * The decode cases with decode attention v3's deep pipeline (tp_set_attention_deep_pipeline: twice the stages),
     * the split path (fused merge) and, at 4097, also the separate merge.
     */
    @ParameterizedTest(name = "decode v3 deep pipeline hd={0} group={1} len={2}")
    @MethodSource("decodeCases")
    void decodeAttentionV3DeepPipeline(int hd, int group, int len) {
        CudaBackend g = (CudaBackend) gpu;
        int def = g.attentionVariant();
        try {
            g.setAttentionVariant(3);
            assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_deep_pipeline(1));
            g.setShortAttn(false);
            decodeAttention(hd, group, len);
            if (len == 4097) {
                g.setFusedAttnMerge(false);
                try {
                    decodeAttention(hd, group, len);
                } finally {
                    g.setFusedAttnMerge(true);
                }
            }
        } catch (AssertionError e) {
            throw new AssertionError("decode attention v3, deep pipeline: " + e.getMessage(), e);
        } finally {
            g.setShortAttn(true);
            TpNative.tp_set_attention_deep_pipeline(0);
            g.setAttentionVariant(def);
        }
    }

    /**
     * Decode attention v3 with the L2 prefetch before pdl_wait (tp_set_attention_prefetch): the decode cases against
     * the CPU, and bit-identical outputs with and without it (over everything and over a shuffled slot list, split
     * and single-pass launches).
     */
    @ParameterizedTest(name = "decode v3 L2 prefetch hd={0} group={1} len={2}")
    @MethodSource("decodeCases")
    void decodeAttentionV3Prefetch(int hd, int group, int len) {
        CudaBackend g = (CudaBackend) gpu;
        int def = g.attentionVariant(), before = TpNative.tp_get_attention_prefetch();
        try {
            g.setAttentionVariant(3);
            assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_prefetch(64));
            decodeAttention(hd, group, len);
            if (len == 0) return;
            int hkv = 2, heads = hkv * group, layer = 1;
            Pair p = filledCaches(hkv, hd, len, len + 3, 31L * hd + group + len);
            try {
                SplittableRandom r = new SplittableRandom(len + 11L);
                Tensor qg = act(gpu, 1, heads * hd, randn(r, heads * hd, 1)), og = act(gpu, 1, heads * hd, null);
                int[][] sel = new int[hkv][];
                for (int kh = 0; kh < hkv; kh++) {
                    sel[kh] = IntStream.range(0, len).toArray();
                    for (int i = len - 1; i > 0; i--) {
                        int j = r.nextInt(i + 1), t = sel[kh][i];
                        sel[kh][i] = sel[kh][j];
                        sel[kh][j] = t;
                    }
                }
                for (SlotSelection s : new SlotSelection[] {null, SlotSelection.of(sel)})
                    for (boolean shortAttn : new boolean[] {true, false}) {
                        g.setShortAttn(shortAttn);
                        float[][] got = new float[3][];
                        int[] rows = {0, 64, 65536};
                        for (int i = 0; i < rows.length; i++) {
                            assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_prefetch(rows[i]));
                            gpu.attention(og, qg, p.g, layer, new int[] {len - 1}, 1, s, null);
                            got[i] = gpu.download(og, 0, 1);
                        }
                        String what = "prefetch, " + (s == null ? "no selection" : "shuffled selection") + ", short path " + shortAttn;
                        assertArrayEquals(got[0], got[1], what + ": 64 rows differ from none");
                        assertArrayEquals(got[0], got[2], what + ": 65536 rows differ from none");
                    }
            } finally {
                p.c.close();
                p.g.close();
            }
        } catch (AssertionError e) {
            throw new AssertionError("decode attention v3, L2 prefetch: " + e.getMessage(), e);
        } finally {
            g.setShortAttn(true);
            TpNative.tp_set_attention_prefetch(before);
            g.setAttentionVariant(def);
        }
    }

    /** Forced split counts (tp_set_attention_splits) give the same attention as the automatic choice. */
    @ParameterizedTest(name = "decode forced splits {0} hd=64 group=4 len=4097")
    @ValueSource(ints = {1, 3, 7, 64, 256})
    void decodeAttentionForcedSplits(int splits) {
        CudaBackend g = (CudaBackend) gpu;
        try {
            assertEquals(TpNative.TP_OK, TpNative.tp_set_attention_splits(splits));
            g.setShortAttn(false);
            withVariants(new int[] {1, 2, 3}, () -> decodeAttention(64, 4, 4097));
        } catch (AssertionError e) {
            throw new AssertionError("forced splits " + splits + ": " + e.getMessage(), e);
        } finally {
            g.setShortAttn(true);
            TpNative.tp_set_attention_splits(0);
        }
    }

    static Stream<Arguments> groupCases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {2, 3, 12, 16})
                for (int len : new int[] {81, 4097}) a.add(Arguments.of(hd, group, len));
        return a.stream();
    }

    /**
     * Group sizes outside decodeCases (2, 3: padded head tiles; 12, 16: two head chunks per KV head) with every
     * kernel variant, fused and separate merge.
     */
    @ParameterizedTest(name = "decode more group sizes hd={0} group={1} len={2}")
    @MethodSource("groupCases")
    void decodeAttentionGroupSizes(int hd, int group, int len) {
        CudaBackend g = (CudaBackend) gpu;
        decodeAttention(hd, group, len);
        withOtherVariants(() -> decodeAttention(hd, group, len));
        g.setFusedAttnMerge(false);
        try {
            decodeAttention(hd, group, len);
            withOtherVariants(() -> decodeAttention(hd, group, len));
        } finally {
            g.setFusedAttnMerge(true);
        }
    }

    static Stream<Arguments> separateMergeCases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 8})
                for (int len : new int[] {0, 81, 4097}) a.add(Arguments.of(hd, group, len));
        return a.stream();
    }

    /** The same cases through the separate merge kernel (the fused in-kernel merge is the default). */
    @ParameterizedTest(name = "decode separate merge hd={0} group={1} len={2}")
    @MethodSource("separateMergeCases")
    void decodeAttentionSeparateMerge(int hd, int group, int len) {
        CudaBackend g = (CudaBackend) gpu;
        assertTrue(g.fusedAttnMerge(), "fused merge is the default");
        g.setFusedAttnMerge(false);
        try {
            decodeAttention(hd, group, len);
        } finally {
            g.setFusedAttnMerge(true);
        }
    }

    static Stream<Arguments> shortAttnCases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 4, 8})
                for (int len : new int[] {50, 64, 65, 128, 129, 256, 257}) a.add(Arguments.of(hd, group, len));
        return a.stream();
    }

    /** Lengths around the single-split threshold of the short-context decode path (on by default). */
    @ParameterizedTest(name = "decode short-path boundary hd={0} group={1} len={2}")
    @MethodSource("shortAttnCases")
    void decodeAttentionShortBoundary(int hd, int group, int len) {
        assertTrue(((CudaBackend) gpu).shortAttn(), "the short-context path is the default");
        decodeAttention(hd, group, len);
    }

    /** Short contexts through the split path (short-context path off), fused and separate merge. */
    @ParameterizedTest(name = "decode short-path off hd={0} group={1} len={2}")
    @MethodSource("shortAttnCases")
    void decodeAttentionShortOff(int hd, int group, int len) {
        CudaBackend g = (CudaBackend) gpu;
        g.setShortAttn(false);
        try {
            decodeAttention(hd, group, len);
            if (len == 50) {
                g.setFusedAttnMerge(false);
                try {
                    decodeAttention(hd, group, len);
                } finally {
                    g.setFusedAttnMerge(true);
                }
            }
        } finally {
            g.setShortAttn(true);
        }
    }

    /** The short-context cases (short path on, then off) with the other kernel variants. */
    @ParameterizedTest(name = "decode short path, other kernel variants hd={0} group={1} len={2}")
    @MethodSource("shortAttnCases")
    void decodeAttentionShortOtherVariant(int hd, int group, int len) {
        CudaBackend g = (CudaBackend) gpu;
        withOtherVariants(() -> {
            decodeAttention(hd, group, len);
            g.setShortAttn(false);
            try {
                decodeAttention(hd, group, len);
            } finally {
                g.setShortAttn(true);
            }
        });
    }

    static Stream<Arguments> prefillCases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 4, 8})
                for (int len : new int[] {9, 81, 729, 4097}) a.add(Arguments.of(hd, group, len));
        return a.stream();
    }

    @ParameterizedTest(name = "prefill hd={0} group={1} len={2}")
    @MethodSource("prefillCases")
    void prefillAttention(int hd, int group, int len) {
        int hkv = 2, heads = hkv * group, layer = 1;
        Pair p = filledCaches(hkv, hd, len, len + 5, 7L * hd + group + 3L * len);
        try {
            int n = Math.min(len, 37);
            SplittableRandom r = new SplittableRandom(len);
            float[] q = randn(r, n * heads * hd, 1);
            Tensor qc = act(cpu, n, heads * hd, q), qg = act(gpu, n, heads * hd, q);
            Tensor oc = act(cpu, n, heads * hd, null), og = act(gpu, n, heads * hd, null);
            int[] qpos = new int[n];
            for (int i = 0; i < n; i++) qpos[i] = len - n + i;
            qpos[0] = -1; // a query that sees nothing
            check(p, qc, qg, oc, og, heads, layer, qpos, n, null, false, "prefill");
            check(p, qc, qg, oc, og, heads, layer, qpos, n, null, true, "prefill stats");
            int[][] sel = new int[hkv][];
            for (int g = 0; g < hkv; g++) {
                sel[g] = new int[Math.max(1, len / 3)];
                for (int i = 0; i < sel[g].length; i++) sel[g][i] = (i * 3 + g) % len;
            }
            check(p, qc, qg, oc, og, heads, layer, qpos, n, SlotSelection.of(sel), true, "prefill sel");
        } finally {
            p.c.close();
            p.g.close();
        }
    }

    static void check(Pair p, Tensor qc, Tensor qg, Tensor oc, Tensor og, int heads, int layer, int[] qpos, int n,
                      SlotSelection sel, boolean stats, String what) {
        int cap = p.c.capacity();
        AttentionStats sc = null, sg = null;
        if (stats) {
            sc = AttentionStats.allocate(heads, p.hkv, cap);
            sg = AttentionStats.allocate(heads, p.hkv, cap);
            sc.clear();
            sg.clear();
            sc.fromRow = Math.max(0, n - 5);
            sg.fromRow = sc.fromRow;
        }
        cpu.attention(oc, qc, p.c, layer, qpos, n, sel, sc);
        gpu.attention(og, qg, p.g, layer, qpos, n, sel, sg);
        String tag = what + " hd=" + p.hd + " len=" + p.len;
        assertClose(tag + " out", cpu.download(oc, 0, n), gpu.download(og, 0, n), 1e-9, 2e-5, 1e-4);
        if (stats) {
            for (int h = 0; h < heads; h++)
                assertClose(tag + " rawScores[" + h + "]", sc.rawScores[h], sg.rawScores[h], 1e-8, 1e-4, 1e-5);
            for (int g = 0; g < p.hkv; g++)
                assertClose(tag + " probSums[" + g + "]", sc.probSums[g], sg.probSums[g], 1e-9, 1e-6, 1e-4);
        }
    }

    @Test
    void kvCacheClearResetsPositions() {
        Pair p = filledCaches(2, 64, 81, 100, 9);
        try {
            p.c.clear();
            p.g.clear();
            SplittableRandom r = new SplittableRandom(1);
            float[] q = randn(r, 4 * 64, 1);
            Tensor qg = act(gpu, 1, 4 * 64, q), og = act(gpu, 1, 4 * 64, null);
            gpu.attention(og, qg, p.g, 1, new int[] {80}, 1, SlotSelection.of(new int[][] {{0, 1, 2}, {5, 6}}), null);
            float[] o = gpu.download(og, 0, 1);
            assertTrue(Arrays.stream(box(o)).allMatch(f -> f == 0f), "cleared cache must attend to nothing");
        } finally {
            p.c.close();
            p.g.close();
        }
    }

    static Float[] box(float[] a) {
        Float[] o = new Float[a.length];
        for (int i = 0; i < a.length; i++) o[i] = a[i];
        return o;
    }
}
