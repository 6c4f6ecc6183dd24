package dev.tokenpress.eval;

import jdk.incubator.vector.DoubleVector;
import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The perplexity statistics' row reductions: the exponential against {@link Math#exp}, its vector lanes against the
 * scalar function bit for bit, the vector and scalar loops against each other, and {@link KldStats} against the
 * textbook formulas in double precision.
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
        LogitRows.Impl v = new LogitRowsVector(), s = new LogitRows.Scalar();
        for (int n : new int[] {1, 7, 8, 9, 100, 4097, 128_256}) {
            float[] q = row(r, n, 3), b = row(r, n, 3);
            b[n / 2] = 30f;
            q[n - 1] = 31f;
            float mq = v.max(q, n), mb = v.max(b, n);
            assertEquals(s.max(q, n), mq);
            assertEquals(s.max(b, n), mb);
            assertEquals(n - 1, v.indexOf(q, n, mq));
            assertEquals(s.indexOf(b, n, mb), v.indexOf(b, n, mb));
            assertEquals(s.expSum(q, n, mq), v.expSum(q, n, mq), 1e-14 * s.expSum(q, n, mq));
            double[] a = new double[3], c = new double[3];
            v.klSums(q, b, n, mq, mb, a);
            s.klSums(q, b, n, mq, mb, c);
            for (int i = 0; i < 3; i++) assertEquals(c[i], a[i], 1e-13 * Math.abs(c[i]) + 1e-300, "sum " + i + ", n " + n);
        }
        float[] tie = {1, 5, 2, 5, 5};
        assertEquals(1, v.indexOf(tie, 5, 5f));
        assertEquals(1, s.indexOf(tie, 5, 5f));
    }

    @Test
    void kldStatsMatchTheTextbookFormulas() {
        SplittableRandom r = new SplittableRandom(4);
        int n = 50_000;
        for (double noise : new double[] {1e-4, 1e-2, 1.0}) {
            KldStats st = new KldStats();
            double nll = 0, base = 0, kl = 0;
            int agree = 0, positions = 6;
            for (int p = 0; p < positions; p++) {
                float[] b = row(r, n, 3), q = new float[n];
                for (int i = 0; i < n; i++) q[i] = (float) (b[i] + noise * r.nextGaussian());
                int target = r.nextInt(n);
                double got = st.add(q, b, target);
                // the reference: max-shifted Math.exp sums, probabilities, Σ p_b (log p_b − log p_q)
                double lq = lse(q), lb = lse(b), k = 0;
                for (int i = 0; i < n; i++) {
                    double pb = Math.exp(b[i] - lb);
                    k += pb * ((b[i] - lb) - (q[i] - lq));
                }
                assertEquals(k, got, 1e-12 + 1e-9 * k, "KL at noise " + noise);
                nll += lq - q[target];
                base += lb - b[target];
                kl += k;
                if (argmax(q) == argmax(b)) agree++;
            }
            assertEquals(nll / positions, st.meanNll(), 1e-12 * Math.abs(nll / positions));
            assertEquals(base / positions, st.meanBaselineNll(), 1e-12 * Math.abs(base / positions));
            assertEquals(kl / positions, st.meanKld(), 1e-12 + 1e-9 * kl / positions);
            assertEquals((double) agree / positions, st.top1Agreement(), 0);
        }
        KldStats same = new KldStats();
        float[] x = row(r, 1000, 2);
        assertEquals(0.0, same.add(x, x.clone(), 3), 0, "equal rows: exactly 0");
    }

    static double lse(float[] x) {
        double m = Double.NEGATIVE_INFINITY, s = 0;
        for (float v : x) m = Math.max(m, v);
        for (float v : x) s += Math.exp(v - m);
        return m + Math.log(s);
    }

    static int argmax(float[] x) {
        int a = 0;
        for (int i = 1; i < x.length; i++) if (x[i] > x[a]) a = i;
        return a;
    }
}
