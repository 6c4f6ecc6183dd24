package dev.tokenpress.eval;

import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.TensorData;
import org.junit.jupiter.api.Test;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.Random;

import static org.junit.jupiter.api.Assertions.*;

class CceLseTest {

    static float[] gaussian(int n, double scale, long seed) {
        Random r = new Random(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) (r.nextGaussian() * scale);
        return x;
    }

    static int[] targets(int n, int v, long seed) {
        Random r = new Random(seed);
        int[] t = new int[n];
        for (int i = 0; i < n; i++) t[i] = r.nextInt(v);
        return t;
    }

    /** Full [N, V] logits in double precision (the weights as given, already rounded to their dtype). */
    static double[][] naive(float[] h, int n, int d, float[] w, int v, int[] t) {
        double[] lse = new double[n], tg = new double[n];
        for (int i = 0; i < n; i++) {
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
            tg[i] = logits[t[i]];
        }
        return new double[][]{lse, tg};
    }

    static void assertClose(double want, float got, double rel, String what) {
        double tol = rel * Math.max(1.0, Math.abs(want));
        assertTrue(Math.abs(want - got) <= tol, what + ": want " + want + " got " + got);
    }

    static TensorData tensor(float[] w, int v, int d, DType dt, boolean direct) {
        int bytes = v * d * dt.bytes;
        ByteBuffer b = (direct ? ByteBuffer.allocateDirect(bytes) : ByteBuffer.allocate(bytes)).order(ByteOrder.LITTLE_ENDIAN);
        for (float x : w) {
            switch (dt) {
                case F32 -> b.putFloat(x);
                case BF16 -> b.putShort(Half.floatToBf16(x));
                case F16 -> b.putShort(Half.fromFloat(x));
            }
        }
        b.flip();
        return new TensorData("lm_head.weight", dt, new long[]{v, d}, b, Path.of("test"));
    }

    @Test
    void f32MatchesNaiveOnOddSizes() {
        long seed = 1;
        for (int n : new int[]{1, 7, 33}) {
            for (int d : new int[]{16, 64, 100}) {
                for (int v : new int[]{1, 257, 5000}) {
                    float[] h = gaussian(n * d, 1.0, seed++);
                    float[] w = gaussian(v * d, 1.5 / Math.sqrt(d), seed++);
                    int[] t = targets(n, v, seed++);
                    double[][] ref = naive(h, n, d, w, v, t);
                    String at = "n=" + n + " d=" + d + " v=" + v;
                    CceLse.Result a = CceLse.compute(h, n, d, w, t);
                    CceLse.Result b = CceLse.compute(h, n, d, tensor(w, v, d, DType.F32, (n & 1) == 0), t);
                    for (int i = 0; i < n; i++) {
                        assertClose(ref[0][i], a.lse()[i], 1e-5, "lse " + at + " row " + i);
                        assertClose(ref[1][i], a.targetLogit()[i], 1e-5, "target " + at + " row " + i);
                        assertClose(ref[0][i] - ref[1][i], (float) a.nll(i), 1e-5, "nll " + at + " row " + i);
                        assertTrue(a.nll(i) >= -1e-6, "nll must be non-negative");
                    }
                    assertArrayEquals(a.lse(), b.lse(), at);
                    assertArrayEquals(a.targetLogit(), b.targetLogit(), at);
                }
            }
        }
    }

    @Test
    void halfPrecisionWeightsMatchNaiveOfDequantised() {
        long seed = 100;
        for (DType dt : new DType[]{DType.BF16, DType.F16}) {
            for (int[] shape : new int[][]{{7, 100, 5000}, {33, 64, 257}, {1, 16, 1}, {5, 2048, 300}}) {
                int n = shape[0], d = shape[1], v = shape[2];
                float[] h = gaussian(n * d, 1.0, seed++);
                float[] w = gaussian(v * d, 2.0 / Math.sqrt(d), seed++);
                int[] t = targets(n, v, seed++);
                TensorData td = tensor(w, v, d, dt, dt == DType.F16);
                float[] deq = td.toFloats();
                double[][] ref = naive(h, n, d, deq, v, t);
                CceLse.Result r = CceLse.compute(h, n, d, td, t);
                for (int i = 0; i < n; i++) {
                    String at = dt + " n=" + n + " d=" + d + " v=" + v + " row " + i;
                    assertClose(ref[0][i], r.lse()[i], 1e-5, "lse " + at);
                    assertClose(ref[1][i], r.targetLogit()[i], 1e-5, "target " + at);
                }
                // identical to the f32 path over the dequantised weights
                CceLse.Result f = CceLse.compute(h, n, d, deq, t);
                assertArrayEquals(f.lse(), r.lse());
                assertArrayEquals(f.targetLogit(), r.targetLogit());
            }
        }
    }

    @Test
    void deterministicForAnyThreadCount() {
        int n = 300, d = 48, v = 40_000; // several row groups and all vocabulary chunks
        float[] h = gaussian(n * d, 1.0, 5);
        float[] w = gaussian(v * d, 0.3, 6);
        int[] t = targets(n, v, 7);
        TensorData td = tensor(w, v, d, DType.BF16, true);
        CceLse.Result one = CceLse.compute(h, n, d, td, t, 1);
        for (int threads : new int[]{2, 3, 8}) {
            CceLse.Result r = CceLse.compute(h, n, d, td, t, threads);
            assertArrayEquals(one.lse(), r.lse(), "threads=" + threads);
            assertArrayEquals(one.targetLogit(), r.targetLogit(), "threads=" + threads);
        }
        double[][] ref = naive(h, 4, d, td.toFloats(), v, t);
        for (int i = 0; i < 4; i++) assertClose(ref[0][i], one.lse()[i], 1e-5, "lse row " + i);
    }

    @Test
    void ignoredTargetsAndSummaries() {
        int n = 4, d = 16, v = 50;
        float[] h = gaussian(n * d, 1.0, 11);
        float[] w = gaussian(v * d, 0.5, 12);
        int[] t = {3, CceLse.IGNORE_INDEX, 49, 0};
        CceLse.Result r = CceLse.compute(h, n, d, w, t);
        assertTrue(Float.isNaN(r.targetLogit()[1]));
        assertFalse(Float.isNaN(r.lse()[1]));
        double mean = (r.nll(0) + r.nll(2) + r.nll(3)) / 3;
        assertEquals(mean, r.meanNll(), 1e-12);
        assertEquals(Math.exp(mean), r.perplexity(), 1e-9);
        CceLse.Result noTargets = CceLse.compute(h, n, d, w, null);
        assertArrayEquals(r.lse(), noTargets.lse());
        assertThrows(IllegalArgumentException.class, () -> CceLse.compute(h, n, d, w, new int[]{0, 0, 50, 0}));
        assertThrows(IllegalArgumentException.class, () -> CceLse.compute(h, n, 15, tensor(w, v, d, DType.F32, false), t));
        assertEquals(0, CceLse.compute(new float[0], 0, d, w, new int[0]).size());
    }

    @Test
    void largeLogitsDoNotOverflow() {
        int n = 3, d = 16, v = 600;
        float[] h = gaussian(n * d, 30.0, 21);
        float[] w = gaussian(v * d, 30.0, 22);
        int[] t = targets(n, v, 23);
        double[][] ref = naive(h, n, d, w, v, t);
        CceLse.Result r = CceLse.compute(h, n, d, w, t);
        for (int i = 0; i < n; i++) {
            assertTrue(Float.isFinite(r.lse()[i]));
            assertClose(ref[0][i], r.lse()[i], 1e-5, "lse row " + i);
        }
    }
}
