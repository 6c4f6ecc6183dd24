package dev.tokenpress.sample;

import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.Random;

import static org.junit.jupiter.api.Assertions.*;

class MirostatTest {

    /** Zipf logits -s ln(rank) over a shuffled vocabulary. */
    static float[] zipf(int v, double s, long seed) {
        int[] perm = new int[v];
        for (int i = 0; i < v; i++) perm[i] = i;
        Random r = new Random(seed);
        for (int i = v - 1; i > 0; i--) {
            int j = r.nextInt(i + 1);
            int t = perm[i];
            perm[i] = perm[j];
            perm[j] = t;
        }
        float[] l = new float[v];
        for (int rank = 0; rank < v; rank++) l[perm[rank]] = (float) (-s * Math.log(rank + 1));
        return l;
    }

    @ParameterizedTest(name = "mirostat v{0}, tau={1}")
    @CsvSource({"1, 3.0", "1, 4.0", "1, 5.0", "2, 3.0", "2, 4.0", "2, 5.0"})
    void averageSurpriseConvergesToTau(int version, double tau) {
        float[] l = zipf(10_000, 1.1, 17);
        SamplerChain c = SamplerChain.create(SamplingOptions.defaults().withTemp(1.0)
                .withMirostat(version, 0.1, tau).withSeed(1234 + version), l.length);
        c.setTrace(true);
        int burnIn = 200, steps = 3000;
        double sum = 0;
        for (int i = 0; i < burnIn + steps; i++) {
            int t = c.sample(l);
            c.accept(t);
            StepTrace tr = c.lastTrace();
            assertFalse(Double.isNaN(tr.mirostatMu()));
            assertTrue(Double.isFinite(tr.surprise()));
            if (i >= burnIn) sum += tr.surprise();
        }
        double avg = sum / steps;
        assertEquals(tau, avg, 0.3, "average surprise " + avg);
        // mu stays in a sane band around its start 2*tau
        double mu = c.lastTrace().mirostatMu();
        assertTrue(mu > 0 && mu < 4 * tau, "mu " + mu);
    }
}
