package dev.tokenpress.sample;

import jdk.incubator.vector.DoubleVector;
import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The row reductions of the statistics over logits: the exponential against {@link Math#exp}, its vector lanes
 * against the scalar function bit for bit, the vector and scalar loops against each other (the same bits: the same
 * 8 accumulators), entropy and log-sum-exp
 * against the textbook formulas in double precision.
 */
class LogitRowsTest {
    @Test
    void expIsWithinTwoUlpsOfMathExp() {
        SplittableRandom r = new SplittableRandom(1);
        for (int i = 0; i < 200_000; i++) {
            double x = i < 1000 ? -i * 1e-3 : -r.nextDouble() * (i % 2 == 0 ? 40 : 708);
            double want = Math.exp(x), got = LogitRows.exp(x);
            assertTrue(Math.abs(got - want) <= 2 * Math.ulp(want), "exp(" + x + ") = " + got + ", Math.exp " + want);
        }
        assertEquals(1.0, LogitRows.exp(0.0));
        assertEquals(1.0, LogitRows.exp(-0.0));
        assertEquals(0.0, LogitRows.exp(-708.5));
        assertEquals(0.0, LogitRows.exp(Double.NEGATIVE_INFINITY));
        assertTrue(Double.isNaN(LogitRows.exp(Double.NaN)));
    }

    @Test
    void vectorLanesGiveTheScalarBits() {
        SplittableRandom r = new SplittableRandom(2);
        int l = DoubleVector.SPECIES_PREFERRED.length();
        double[] x = new double[l];
        for (int rep = 0; rep < 20_000; rep++) {
            for (int i = 0; i < l; i++) x[i] = rep % 7 == 0 && i == 0 ? -800 : -r.nextDouble() * 100;
            double[] got = LogitRowsVector.exp(DoubleVector.fromArray(DoubleVector.SPECIES_PREFERRED, x, 0)).toArray();
            for (int i = 0; i < l; i++)
                assertEquals(Double.doubleToRawLongBits(LogitRows.exp(x[i])), Double.doubleToRawLongBits(got[i]), "lane " + i + ", x = " + x[i]);
        }
    }

    static float[] row(SplittableRandom r, int n, double spread) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) (r.nextGaussian() * spread);
        return x;
    }

    @Test
    void vectorAndScalarLoopsAgree() {
        SplittableRandom r = new SplittableRandom(3);
        LogitRows.Impl v = vectorLoops(), s = new LogitRows.Scalar();
        for (int n : new int[] {1, 7, 8, 9, 24, 31, 100, 4097, 4103, 128_256}) { // groups of 8 after whole vectors too
            float[] q = row(r, n, 3), b = row(r, n, 3);
            b[n / 2] = 30f;
            q[n - 1] = 31f;
            float mq = v.max(q, 0, n), mb = v.max(b, 0, n);
            assertEquals(s.max(q, 0, n), mq);
            assertEquals(s.max(b, 0, n), mb);
            assertEquals(n - 1, v.indexOf(q, 0, n, mq));
            assertEquals(s.indexOf(b, 0, n, mb), v.indexOf(b, 0, n, mb));
            assertEquals(s.indexOf(b, 1, n - 1, mb), v.indexOf(b, 1, n - 1, mb));
            assertEquals(s.expSum(q, 0, n, mq), v.expSum(q, 0, n, mq), 0, "the same bits, n " + n);
            assertEquals(s.expSum(q, 3 % n, n - 3 % n, mq), v.expSum(q, 3 % n, n - 3 % n, mq), 0);
            double[] es = new double[2], ev = new double[2];
            s.entropySums(q, 0, n, mq, es);
            v.entropySums(q, 0, n, mq, ev);
            assertEquals(es[0], ev[0], 0);
            assertEquals(es[1], ev[1], 0);
            double[] a = new double[3], c = new double[3];
            v.klSums(q, b, n, mq, mb, a);
            s.klSums(q, b, n, mq, mb, c);
            for (int i = 0; i < 3; i++) assertEquals(c[i], a[i], 0, "sum " + i + ", n " + n);
        }
        float[] tie = {1, 5, 2, 5, 5};
        assertEquals(1, v.indexOf(tie, 0, 5, 5f));
        assertEquals(1, s.indexOf(tie, 0, 5, 5f));
        assertEquals(0, v.indexOf(tie, 1, 4, 5f));
    }

    @Test
    void softmaxNumeratorsAreTheFloatExponentials() {
        SplittableRandom r = new SplittableRandom(7);
        LogitRows.Impl v = vectorLoops(), sc = new LogitRows.Scalar();
        for (int n : new int[] {1, 8, 9, 24, 31, 40, 4097, 4103, 128_256}) {
            float[] x = row(r, n, 5), a = new float[n], b = new float[n];
            if (n > 1) x[0] = Float.NEGATIVE_INFINITY; // a banned token
            float m = sc.max(x, 0, n);
            double sa = v.expInto(x, n, m, a), sb = sc.expInto(x, n, m, b);
            double ref = 0;
            for (int i = 0; i < n; i++) {
                float want = (float) Math.exp(x[i] - m);
                assertEquals(want, a[i], Math.ulp(want), "vector, entry " + i);
                assertEquals(Float.floatToRawIntBits(a[i]), Float.floatToRawIntBits(b[i]), "vector and scalar lanes, entry " + i);
                ref += want;
            }
            assertEquals(ref, sa, 1e-12 * ref);
            assertEquals(sb, sa, 0, "the same bits");
        }
        dev.tokenpress.sample.TokenDataArray t = new dev.tokenpress.sample.TokenDataArray(5);
        t.load(new float[] {1, 2, 3, Float.NEGATIVE_INFINITY, 0}, 0, 5);
        t.softmax(false);
        double z = Math.exp(1) + Math.exp(2) + Math.exp(3) + Math.exp(0);
        assertEquals(Math.exp(3) / z, t.probs[2], 1e-7);
        assertEquals(0f, t.probs[3]);
    }

    @Test
    void entropyAndLogSumExpMatchTheTextbookFormulas() {
        SplittableRandom r = new SplittableRandom(6);
        for (int n : new int[] {1, 9, 5000, 128_256}) {
            float[] x = row(r, n + 3, 4);
            x[1] = Float.NEGATIVE_INFINITY; // a banned token adds nothing
            double m = Double.NEGATIVE_INFINITY, z = 0, zd = 0;
            for (int i = 3; i < n + 3; i++) m = Math.max(m, x[i]);
            for (int i = 3; i < n + 3; i++) {
                if (x[i] == Float.NEGATIVE_INFINITY) continue;
                double e = Math.exp(x[i] - m);
                z += e;
                zd += e * (x[i] - m);
            }
            assertEquals(m + Math.log(z), LogitRows.logSumExp(x, 3, n), 1e-13 * Math.abs(m + Math.log(z)) + 1e-13);
            double h = Math.log(z) - zd / z;
            assertEquals(h, LogitRows.entropy(x, 3, n), 1e-12 * h + 1e-13, "n " + n);
        }
        float[] inf = {Float.NEGATIVE_INFINITY, 2f, Float.NEGATIVE_INFINITY};
        assertEquals(0.0, LogitRows.entropy(inf, 0, 3), 0, "one finite entry");
    }

    /** The Vector API loops; the test is skipped where they do not run (128-bit vectors, no module). */
    private static LogitRows.Impl vectorLoops() {
        try {
            return new LogitRowsVector();
        } catch (IllegalStateException | LinkageError e) {
            org.junit.jupiter.api.Assumptions.abort("no vector loops here: " + e.getMessage());
            return null;
        }
    }
}
