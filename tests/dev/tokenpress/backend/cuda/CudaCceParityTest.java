package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.eval.CceLse;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.IntStream;

import static dev.tokenpress.backend.cuda.CudaParityTest.act;
import static dev.tokenpress.backend.cuda.CudaParityTest.bf16Exact;
import static dev.tokenpress.backend.cuda.CudaParityTest.bf16Weight;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * tp_cce_lse (CudaCce) against a naive double-precision computation over the full [N, V] logits and against the
 * CPU CceLse, on sizes that are not tile multiples: N in {1, 7, 33, 300}, D in {64, 200, 2048}, V in
 * {1, 257, 5000, 32003} (the 300 x 2048 x 32003 case is left out: its host reference alone takes too long).
 * The weights are bf16 on both sides and h is f32, so in precise mode (h = bf16 hi + bf16 lo) only the
 * accumulation order and the 2^-18 split residual differ: |got - want| <= 2e-5 * max(1, |want|) for lse and the
 * target logit. Fast mode (h rounded to bf16) is compared with the double reference over bf16-rounded h, same
 * tolerance. Ignored targets (negative) must come back NaN; without targets every target logit is NaN.
 * Every shape runs under every implementation (tp_cce_set_variant 1 to 4; variants 2-4 only change the bf16-h mode,
 * precise runs variant 1 under any setting; and CudaCce.GEMM, the chunked cuBLAS path, in both modes), plus shapes at the edges of variant 2's 128 x 256 x 32 tiles (and of
 * variants 3 and 4's D chunks of 64)
 * (N = 128 / 129, V = 256 / 513, D = 8 / 520). Skipped (not failed) where CUDA is unavailable.
 */
class CudaCceParityTest {
    static final double RTOL = 2e-5;
    static final int[] VARIANTS = {1, 2, 3, 4, CudaCce.GEMM};
    static CudaBackend gpu;
    static int defaultVariant;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        gpu = CudaBackend.open();
        defaultVariant = CudaCce.variant();
        System.out.println("[cce parity] " + gpu.description() + ", default variant " + defaultVariant);
    }

    @AfterAll
    static void close() {
        if (gpu != null) {
            CudaCce.setVariant(defaultVariant);
            gpu.close();
        }
    }

    static float[] gaussian(SplittableRandom r, int n, double scale) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) {
            double u = r.nextDouble(), v = r.nextDouble();
            x[i] = (float) (Math.sqrt(-2 * Math.log(1 - u)) * Math.cos(2 * Math.PI * v) * scale);
        }
        return x;
    }

    /** Uniform values with standard deviation {@code scale} (cheaper than gaussian for the large weights). */
    static float[] uniform(SplittableRandom r, int n, double scale) {
        float[] x = new float[n];
        double a = scale * Math.sqrt(3);
        for (int i = 0; i < n; i++) x[i] = (float) ((r.nextDouble() * 2 - 1) * a);
        return x;
    }

    /** {lse, target logit} from the full logits in double (NaN target for t < 0). */
    static double[][] naive(float[] h, int n, int d, float[] w, int v, int[] t) {
        double[] lse = new double[n], tg = new double[n];
        IntStream.range(0, n).parallel().forEach(i -> {
            double[] logits = new double[v];
            double mx = Double.NEGATIVE_INFINITY;
            for (int j = 0; j < v; j++) {
                double s = 0;
                for (int k = 0; k < d; k++) s += (double) h[i * d + k] * w[j * d + k];
                logits[j] = s;
                mx = Math.max(mx, s);
            }
            double z = 0;
            for (double x : logits) z += Math.exp(x - mx);
            lse[i] = mx + Math.log(z);
            tg[i] = t[i] >= 0 ? logits[t[i]] : Double.NaN;
        });
        return new double[][] {lse, tg};
    }

    static void near(double want, float got, double rtol, String what, List<String> bad) {
        if (Double.isNaN(want)) {
            if (!Float.isNaN(got)) bad.add(what + ": want NaN got " + got);
            return;
        }
        if (!(Math.abs(want - got) <= rtol * Math.max(1, Math.abs(want))))
            bad.add(what + ": want " + want + " got " + got + " (diff " + Math.abs(want - got) + ")");
    }

    @Test
    void matchesNaiveAndCpuOnOddSizes() {
        List<int[]> shapes = new ArrayList<>();
        for (int n : new int[] {1, 7, 33, 300})
            for (int d : new int[] {64, 200, 2048})
                for (int v : new int[] {1, 257, 5000, 32003})
                    if (!(n == 300 && d == 2048 && v == 32003)) shapes.add(new int[] {n, d, v});
        // the edges of variant 2's tiles: whole and one-past row blocks, vocabulary tiles and D chunks
        shapes.add(new int[] {128, 8, 256});
        shapes.add(new int[] {129, 520, 513});
        shapes.add(new int[] {256, 32, 768});
        // D chunks of 64 (variants 3 and 4): one-past, a half chunk and two whole chunks
        shapes.add(new int[] {130, 72, 300});
        shapes.add(new int[] {64, 96, 520});
        shapes.add(new int[] {200, 128, 1024});
        List<String> bad = new ArrayList<>();
        long seed = 1;
        double worst = 0;
        for (int[] s : shapes) {
            int n = s[0], d = s[1], v = s[2];
            SplittableRandom r = new SplittableRandom(seed++);
            float[] h = gaussian(r, n * d, 1.0);
            float[] w = bf16Exact(uniform(r, v * d, 1.5 / Math.sqrt(d)));
            int[] t = new int[n];
            for (int i = 0; i < n; i++) t[i] = i % 5 == 3 ? CceLse.IGNORE_INDEX : (i == 0 ? v - 1 : r.nextInt(v));
            Tensor hg = act(gpu, n, d, h);
            Tensor wg = gpu.weight(bf16Weight("lm_head", v, d, w));
            String at = "n=" + n + " d=" + d + " v=" + v;

            double[][] ref = naive(h, n, d, w, v, t);
            CceLse.Result c = CceLse.compute(h, n, d, w, t);
            float[] hb = bf16Exact(h);
            double[][] refB = naive(hb, n, d, w, v, t);
            for (int variant : VARIANTS) {
                CudaCce.setVariant(variant);
                String atv = at + " v" + variant;
                CceLse.Result g = CudaCce.compute(gpu, hg, n, wg, t);
                for (int i = 0; i < n; i++) {
                    near(ref[0][i], g.lse()[i], RTOL, "precise lse " + atv + " row " + i, bad);
                    near(ref[1][i], g.targetLogit()[i], RTOL, "precise target " + atv + " row " + i, bad);
                    near(c.lse()[i], g.lse()[i], 2 * RTOL, "precise lse vs CceLse " + atv + " row " + i, bad);
                    near(c.targetLogit()[i], g.targetLogit()[i], 2 * RTOL, "precise target vs CceLse " + atv + " row " + i, bad);
                    worst = Math.max(worst, Math.abs(ref[0][i] - g.lse()[i]) / Math.max(1, Math.abs(ref[0][i])));
                }
                CceLse.Result f = CudaCce.compute(gpu, hg, n, wg, t, false);
                for (int i = 0; i < n; i++) {
                    near(refB[0][i], f.lse()[i], RTOL, "fast lse " + atv + " row " + i, bad);
                    near(refB[1][i], f.targetLogit()[i], RTOL, "fast target " + atv + " row " + i, bad);
                }
            }
            CudaCce.setVariant(defaultVariant);
            gpu.free(((CudaTensor) hg).ptr);
            gpu.free(((CudaTensor) wg).ptr);
        }
        System.out.printf("[parity] cce: %d shapes, worst precise lse relative error %.3g%n", shapes.size(), worst);
        assertTrue(bad.isEmpty(), bad.size() + " mismatches, first: " + bad.subList(0, Math.min(10, bad.size())));
    }

    @Test
    void noTargetsGivesNaNTargetLogits() {
        int n = 9, d = 72, v = 300;
        SplittableRandom r = new SplittableRandom(99);
        float[] h = gaussian(r, n * d, 1.0), w = bf16Exact(gaussian(r, v * d, 0.2));
        Tensor hg = act(gpu, n, d, h), wg = gpu.weight(bf16Weight("lm_head", v, d, w));
        double[][] ref = naive(h, n, d, w, v, new int[n]);
        double[][] refB = naive(bf16Exact(h), n, d, w, v, new int[n]);
        List<String> bad = new ArrayList<>();
        try {
            for (int variant : VARIANTS) {
                CudaCce.setVariant(variant);
                for (boolean precise : new boolean[] {true, false}) {
                    CceLse.Result g = CudaCce.compute(gpu, hg, n, wg, null, precise);
                    String at = "v" + variant + (precise ? " precise" : " fast");
                    for (int i = 0; i < n; i++) {
                        near((precise ? ref : refB)[0][i], g.lse()[i], RTOL, at + " lse row " + i, bad);
                        if (!Float.isNaN(g.targetLogit()[i])) bad.add(at + " target row " + i + " not NaN");
                    }
                }
            }
        } finally {
            CudaCce.setVariant(defaultVariant);
        }
        assertTrue(bad.isEmpty(), bad.toString());
        // n = 0 launches nothing; a target outside the vocabulary is refused like on the CPU
        assertTrue(CudaCce.compute(gpu, hg, 0, wg, new int[0]).size() == 0);
        assertThrows(IllegalArgumentException.class, () -> CudaCce.compute(gpu, hg, 1, wg, new int[] {v}));
    }

    @Test
    void variantTwoNeedsItsWorkspace() {
        int n = 5, d = 64, v = 40;
        SplittableRandom r = new SplittableRandom(3);
        CudaTensor hg = (CudaTensor) act(gpu, n, d, gaussian(r, n * d, 1.0));
        CudaTensor wg = (CudaTensor) gpu.weight(bf16Weight("lm_head", v, d, bf16Exact(gaussian(r, v * d, 0.1))));
        assertTrue(TpNative.tp_cce_set_variant(5) == TpNative.TP_ERR_BAD_ARGUMENT);
        assertTrue(TpNative.tp_cce_set_variant(0) == TpNative.TP_ERR_BAD_ARGUMENT);
        long small = CudaCce.workspaceBytes(n, d, 1), big = CudaCce.workspaceBytes(n, d, 2);
        assertTrue(big == small + 2L * n * d, "variant 2 adds a bf16 copy of h: " + small + " / " + big);
        long ws = gpu.malloc(big, "test cce workspace"), out = gpu.malloc(8L * n, "test cce out");
        try {
            CudaCce.setVariant(2);
            assertTrue(CudaCce.workspaceBytes(n, d) == big);
            assertThrows(IllegalArgumentException.class, () -> CudaCce.computeDevice(gpu, out, 0, hg.ptr, wg.ptr, 0, n,
                    v, d, false, ws, small));
            CudaCce.computeDevice(gpu, out, 0, hg.ptr, wg.ptr, 0, n, v, d, true, ws, small); // precise: variant 1
            CudaCce.computeDevice(gpu, out, 0, hg.ptr, wg.ptr, 0, n, v, d, false, ws, big);
            gpu.synchronize();
        } finally {
            CudaCce.setVariant(defaultVariant);
            gpu.free(ws);
            gpu.free(out);
        }
    }

    /**
     * The chunked cuBLAS variant with chunks far smaller than the shapes (several row and vocabulary chunks, a last
     * vocabulary chunk of 1 to 3 columns, one vocabulary entry in all), both modes, against the double reference; a
     * workspace one byte short is refused before anything runs. With the folds overlapped on a second stream
     * (two chunk buffers) every lse and target logit has the plain run's bits.
     */
    @Test
    void gemmVariantInSmallChunks() {
        List<String> bad = new ArrayList<>();
        long seed = 500;
        int[][] shapes = {{33, 64, 257}, {7, 200, 1}, {300, 72, 1001}, {129, 520, 513}};
        int[][] chunks = {{7, 250}, {1, 4}, {64, 1000}, {300, 2048}};
        for (int[] sh : shapes) {
            int n = sh[0], d = sh[1], v = sh[2];
            SplittableRandom r = new SplittableRandom(seed++);
            float[] h = gaussian(r, n * d, 1.0);
            float[] w = bf16Exact(uniform(r, v * d, 1.5 / Math.sqrt(d)));
            int[] t = new int[n];
            for (int i = 0; i < n; i++) t[i] = i % 4 == 1 ? CceLse.IGNORE_INDEX : (i == 0 ? v - 1 : r.nextInt(v));
            CudaTensor hg = (CudaTensor) act(gpu, n, d, h);
            CudaTensor wg = (CudaTensor) gpu.weight(bf16Weight("lm_head", v, d, w));
            double[][] ref = naive(h, n, d, w, v, t), refB = naive(bf16Exact(h), n, d, w, v, t);
            long tdev = gpu.malloc(4L * n, "test targets"), out = gpu.malloc(8L * n, "test out");
            check(TpNative.tp_memcpy_h2d(tdev, t, 4L * n, gpu.stream()));
            try {
                for (int[] c : chunks) {
                    for (boolean precise : new boolean[] {true, false}) {
                        long need = CudaCce.gemmWorkspaceBytes(n, d, precise, c[0], c[1]);
                        long ws = gpu.malloc(need, "test cce gemm workspace");
                        try {
                            assertThrows(IllegalArgumentException.class, () -> CudaCce.computeGemm(gpu, out,
                                    out + 4L * n, hg.ptr, wg.ptr, tdev, n, v, d, precise, ws, need - 1, c[0], c[1]));
                            check(TpNative.tp_memset_async(out, 0xff, 8L * n, gpu.stream()));
                            CudaCce.computeGemm(gpu, out, out + 4L * n, hg.ptr, wg.ptr, tdev, n, v, d, precise, ws,
                                    need, c[0], c[1]);
                            float[] lse = new float[n], tg = new float[n];
                            check(TpNative.tp_memcpy_d2h(lse, out, 4L * n, gpu.stream()));
                            check(TpNative.tp_memcpy_d2h(tg, out + 4L * n, 4L * n, gpu.stream()));
                            double[][] want = precise ? ref : refB;
                            String at = "n=" + n + " d=" + d + " v=" + v + " chunk " + c[0] + "x" + c[1]
                                    + (precise ? " precise" : " fast");
                            for (int i = 0; i < n; i++) {
                                near(want[0][i], lse[i], RTOL, "lse " + at + " row " + i, bad);
                                near(want[1][i], tg[i], RTOL, "target " + at + " row " + i, bad);
                            }
                            // the folds overlapped with the next chunk's GEMM on a second stream: the same bits
                            long needO = CudaCce.gemmWorkspaceBytes(n, d, precise, c[0], c[1], true);
                            long wsO = gpu.malloc(needO, "test cce gemm overlap workspace");
                            try {
                                assertThrows(IllegalArgumentException.class, () -> CudaCce.computeGemm(gpu, out,
                                        out + 4L * n, hg.ptr, wg.ptr, tdev, n, v, d, precise, wsO, needO - 1, c[0], c[1], true));
                                check(TpNative.tp_memset_async(out, 0xff, 8L * n, gpu.stream()));
                                CudaCce.computeGemm(gpu, out, out + 4L * n, hg.ptr, wg.ptr, tdev, n, v, d, precise, wsO,
                                        needO, c[0], c[1], true);
                                float[] lseO = new float[n], tgO = new float[n];
                                check(TpNative.tp_memcpy_d2h(lseO, out, 4L * n, gpu.stream()));
                                check(TpNative.tp_memcpy_d2h(tgO, out + 4L * n, 4L * n, gpu.stream()));
                                for (int i = 0; i < n; i++)
                                    if (Float.floatToIntBits(lseO[i]) != Float.floatToIntBits(lse[i])
                                            || Float.floatToIntBits(tgO[i]) != Float.floatToIntBits(tg[i]))
                                        bad.add("overlap " + at + " row " + i + ": " + lseO[i] + "/" + tgO[i] + " vs "
                                                + lse[i] + "/" + tg[i]);
                            } finally {
                                gpu.free(wsO);
                            }
                        } finally {
                            gpu.free(ws);
                        }
                    }
                }
            } finally {
                gpu.free(tdev);
                gpu.free(out);
                gpu.free(hg.ptr);
                gpu.free(wg.ptr);
            }
        }
        assertTrue(bad.isEmpty(), bad.size() + " mismatches, first: " + bad.subList(0, Math.min(10, bad.size())));
    }

    private static void check(int rc) {
        assertTrue(rc == TpNative.TP_OK, "native call failed: " + rc + " " + CudaBackend.lastError());
    }

    @Test
    void hiddenSizeNotDivisibleBy8IsUnsupported() {
        int n = 2, d = 100, v = 10;
        SplittableRandom r = new SplittableRandom(7);
        Tensor hg = act(gpu, n, d, gaussian(r, n * d, 1.0));
        Tensor wg = gpu.weight(bf16Weight("lm_head", v, d, bf16Exact(gaussian(r, v * d, 0.1))));
        assertThrows(UnsupportedOpException.class, () -> CudaCce.compute(gpu, hg, n, wg, new int[] {1, 2}));
    }
}
