package dev.tokenpress.backend.cpu;

import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The softmax numerators' exponential ({@link Kernels#expf}, {@link Kernels#expShifted}): within 1 ulp of
 * {@link Math#exp}, its edge cases, and the same bits from the scalar code, the Vector API code and the Vector API code
 * once the JIT has compiled it (the reason it is built from exact operations only).
 */
class ExpKernelTest {
    static final VectorKernels V = new VectorKernels();
    static final Kernels S = new ScalarKernels();

    @Test
    void expfIsWithinOneUlpOfMathExp() {
        SplittableRandom r = new SplittableRandom(3);
        int worst = 0;
        for (int i = 0; i < 2_000_000; i++) {
            float d = i < 1_000_000 ? (float) (-87.4 * r.nextDouble()) : (float) (-10 * r.nextDouble() * r.nextDouble());
            worst = Math.max(worst, ulps(d));
        }
        for (float d = -87.4f; d <= 88f; d += 0.0137f) worst = Math.max(worst, ulps(d));
        assertTrue(worst <= 1, "largest error " + worst + " ulp");
    }

    private static int ulps(float d) {
        float ref = (float) Math.exp(d), got = Kernels.expf(d);
        return Math.abs(Float.floatToRawIntBits(ref) - Float.floatToRawIntBits(got));
    }

    @Test
    void edgeCases() {
        assertEquals(1f, Kernels.expf(0f));
        assertEquals(1f, Kernels.expf(-0f));
        assertEquals(0f, Kernels.expf(Float.NEGATIVE_INFINITY));
        assertEquals(0f, Kernels.expf(-87.6f));
        assertEquals(0f, Kernels.expf(-1e30f));
        assertTrue(Kernels.expf(-87.4f) > 0f);
        assertTrue(Float.isNaN(Kernels.expf(Float.NaN)));
        assertEquals((float) Math.E, Kernels.expf(1f), Math.ulp((float) Math.E));
    }

    /** Vector lanes, vector tails and the scalar loop give the same numerators and the same sum, before and after JIT. */
    @Test
    void vectorScalarAndCompiledCodeGiveTheSameBits() {
        SplittableRandom r = new SplittableRandom(5);
        for (int len : new int[] {0, 1, 3, 4, 5, 15, 16, 17, 31, 33, 64, 100, 8191, 8192}) {
            float[] x = new float[len + 3];
            for (int i = 0; i < x.length; i++) x[i] = (float) (r.nextGaussian() * 20);
            if (len > 10) {
                x[4] = Float.NEGATIVE_INFINITY;
                x[7] = -200f;
            }
            float max = Float.NEGATIVE_INFINITY;
            for (int i = 2; i < 2 + len; i++) max = Math.max(max, x[i]);
            float[] a = x.clone(), b = x.clone();
            double sa = S.expShifted(a, 2, len, max), sb = V.expShifted(b, 2, len, max);
            assertEquals(Double.doubleToRawLongBits(sa), Double.doubleToRawLongBits(sb), "sum, length " + len);
            for (int i = 0; i < x.length; i++)
                assertEquals(Float.floatToRawIntBits(a[i]), Float.floatToRawIntBits(b[i]), "length " + len + ", element " + i);
            float[] c = x.clone();
            V.expShifted(c, 2, len, Float.NaN); // NaN shifts give NaN numerators
            for (int i = 2; i < 2 + len; i++) assertTrue(Float.isNaN(c[i]), "NaN at " + i);
        }
        // the first calls above ran interpreted or early-compiled code; run until the JIT has compiled the loop
        float[] x = new float[1000];
        for (int i = 0; i < x.length; i++) x[i] = (float) (r.nextGaussian() * 8);
        x[10] = Float.NEGATIVE_INFINITY;
        float[] first = x.clone();
        double s0 = V.expShifted(first, 0, x.length, 30f);
        for (int it = 0; it < 20_000; it++) {
            float[] y = x.clone();
            double s = V.expShifted(y, 0, y.length, 30f);
            if (it % 1000 == 999 || it == 0) {
                assertEquals(Double.doubleToRawLongBits(s0), Double.doubleToRawLongBits(s), "sum at call " + it);
                for (int i = 0; i < y.length; i++)
                    assertEquals(Float.floatToRawIntBits(first[i]), Float.floatToRawIntBits(y[i]), "call " + it + ", element " + i);
            }
        }
    }
}
