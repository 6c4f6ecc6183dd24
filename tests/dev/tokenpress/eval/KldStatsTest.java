package dev.tokenpress.eval;

import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** {@link KldStats} against the textbook formulas (max-shifted {@link Math#exp} sums) in double precision. */
class KldStatsTest {
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
        x[5] = Float.NEGATIVE_INFINITY; // a banned token in both
        x[999] = Float.NEGATIVE_INFINITY;
        assertEquals(0.0, same.add(x, x.clone(), 3), 0, "equal rows with banned tokens: exactly 0");
    }

    static float[] row(SplittableRandom r, int n, double spread) {
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) (r.nextGaussian() * spread);
        return x;
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
