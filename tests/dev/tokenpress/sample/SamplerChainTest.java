package dev.tokenpress.sample;

import org.junit.jupiter.api.Test;

import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

class SamplerChainTest {

    static float[] logProbs(double... p) {
        float[] l = new float[p.length];
        for (int i = 0; i < p.length; i++) l[i] = (float) Math.log(p[i]);
        return l;
    }

    static int[] keptSet(SamplerChain c) {
        int[] t = c.lastCandidates().tokenIds();
        Arrays.sort(t);
        return t;
    }

    @Test
    void defaultsMatchLlamaCpp() {
        SamplingOptions d = SamplingOptions.defaults();
        assertEquals(0.8, d.temp());
        assertEquals(40, d.topK());
        assertEquals(0.95, d.topP());
        assertEquals(0.05, d.minP());
        assertEquals(1.0, d.typicalP());
        assertEquals(64, d.repeatLastN());
        assertEquals(1.0, d.repeatPenalty());
        assertEquals(0.0, d.presencePenalty());
        assertEquals(0.0, d.frequencyPenalty());
        assertEquals(0, d.mirostat());
        assertEquals(0.1, d.mirostatLr());
        assertEquals(5.0, d.mirostatEnt());
        assertEquals(-1, d.seed());
        assertTrue(SamplingOptions.greedy().isGreedy());
        assertNull(d.validationError());
        assertThrows(IllegalArgumentException.class, () -> d.withTopP(0).validate());
        assertThrows(IllegalArgumentException.class, () -> d.withMirostat(3, 0.1, 5).validate());
    }

    @Test
    void describeShowsLlamaCppOrder() {
        assertEquals("logits -> penalties -> top-k -> typical -> top-p -> min-p -> temp -> dist",
                SamplerChain.create(SamplingOptions.defaults(), 100).describe());
        assertEquals("logits -> temp -> mirostat",
                SamplerChain.create(SamplingOptions.defaults().withMirostat(1, 0.1, 5), 100).describe());
        assertEquals("logits -> temp -> mirostat-v2",
                SamplerChain.create(SamplingOptions.defaults().withMirostat(2, 0.1, 5), 100).describe());
    }

    @Test
    void greedyChainIsArgmaxAndLeavesLogitsAlone() {
        SamplerChain c = SamplerChain.create(SamplingOptions.greedy().withSeed(3), 3000);
        java.util.Random r = new java.util.Random(5);
        for (int step = 0; step < 50; step++) {
            float[] l = new float[3000];
            for (int i = 0; i < l.length; i++) l[i] = (float) r.nextGaussian();
            float[] copy = l.clone();
            int arg = 0;
            for (int i = 1; i < l.length; i++) if (l[i] > l[arg]) arg = i;
            int t = c.sample(l);
            assertEquals(arg, t);
            assertArrayEquals(copy, l);
            c.accept(t);
        }
    }

    @Test
    void topKBeforeTopPAsLlamaCpp() {
        // p = [0.3, 0.2, 0.2, 0.1, 0.1, 0.1], k = 3, p = 0.6
        // llama.cpp order (top-k then top-p): renormalised [0.43, 0.29, 0.29] -> cum 0.71 >= 0.6 after 2 -> {0, 1}
        // the other order (top-p then top-k): cum 0.3, 0.5, 0.7 -> {0, 1, 2}, then top-k 3 keeps {0, 1, 2}
        float[] l = logProbs(0.3, 0.2, 0.2, 0.1, 0.1, 0.1);
        SamplerChain kp = SamplerChain.of(6, 1, new TopKSampler(3), new TopPSampler(0.6), new DistSampler(1));
        SamplerChain pk = SamplerChain.of(6, 1, new TopPSampler(0.6), new TopKSampler(3), new DistSampler(1));
        kp.sample(l);
        pk.sample(l);
        assertArrayEquals(new int[]{0, 1}, keptSet(kp));
        assertArrayEquals(new int[]{0, 1, 2}, keptSet(pk));

        SamplerChain c = SamplerChain.create(SamplingOptions.defaults().withTopK(3).withTopP(0.6).withMinP(0)
                .withTemp(1.0).withSeed(42), 6);
        for (int i = 0; i < 20; i++) {
            int t = c.sample(l);
            assertArrayEquals(new int[]{0, 1}, keptSet(c));
            assertTrue(t == 0 || t == 1);
        }
    }

    @Test
    void temperatureComesAfterTruncation() {
        // at T=1 top-p 0.7 keeps {0, 1}; at T=3 (if applied first) the flatter distribution would need 3+ tokens
        float[] l = logProbs(0.5, 0.25, 0.15, 0.1);
        SamplerChain c = SamplerChain.create(SamplingOptions.defaults().withTopK(0).withTopP(0.7).withMinP(0)
                .withTemp(3.0).withSeed(1), 4);
        c.sample(l);
        assertArrayEquals(new int[]{0, 1}, keptSet(c));
        // and the final probabilities are the T=3 softmax of the kept logits
        TokenDataArray a = c.lastCandidates();
        double e0 = Math.exp(Math.log(0.5) / 3), e1 = Math.exp(Math.log(0.25) / 3);
        int i0 = a.ids[0] == 0 ? 0 : 1;
        assertEquals(e0 / (e0 + e1), a.probs[i0], 1e-6);
    }

    @Test
    void distFrequenciesMatchSoftmax() {
        float[] l = {1.0f, 0.0f, -1.0f, 2.0f, 0.5f};
        SamplerChain c = SamplerChain.create(SamplingOptions.defaults().withTopK(0).withTopP(1).withMinP(0)
                .withTemp(1.0).withSeed(123), l.length);
        int n = 200_000;
        int[] cnt = new int[l.length];
        for (int i = 0; i < n; i++) cnt[c.sample(l)]++;
        double z = 0;
        for (float x : l) z += Math.exp(x);
        for (int i = 0; i < l.length; i++) {
            double p = Math.exp(l[i]) / z;
            double sd = Math.sqrt(p * (1 - p) / n);
            assertEquals(p, cnt[i] / (double) n, 5 * sd, "token " + i);
        }
    }

    @Test
    void penaltiesInChainChangeTheChoice() {
        float[] l = {2.0f, 1.9f, 0f};
        SamplerChain c = SamplerChain.create(SamplingOptions.greedy().withPenalties(64, 1.2, 0, 0), 3);
        assertEquals(0, c.sample(l));
        c.accept(0);
        assertEquals(1, c.sample(l)); // 2.0 / 1.2 = 1.67 < 1.9
        c.reset();
        assertEquals(0, c.sample(l));
    }

    @Test
    void sameSeedSameSequence() {
        SamplingOptions o = SamplingOptions.defaults().withTopK(0).withMinP(0).withTemp(1.5)
                .withPenalties(16, 1.1, 0.1, 0.05).withSeed(2024);
        int[] a = run(SamplerChain.create(o, 500), 300);
        int[] b = run(SamplerChain.create(o, 500), 300);
        assertArrayEquals(a, b);
        int[] c = run(SamplerChain.create(o.withSeed(2025), 500), 300);
        assertFalse(Arrays.equals(a, c));

        // reset restarts the RNG and history: same sequence again
        SamplerChain ch = SamplerChain.create(o, 500);
        run(ch, 300);
        ch.reset();
        assertArrayEquals(a, run(ch, 300));

        // a random seed is reported and reproduces the run
        SamplerChain r1 = SamplerChain.create(o.withSeed(-1), 500);
        assertTrue(r1.seed() >= 0 && r1.seed() <= 0xFFFF_FFFFL);
        int[] x = run(r1, 300);
        assertArrayEquals(x, run(SamplerChain.create(o.withSeed(r1.seed()), 500), 300));

        for (int m = 1; m <= 2; m++) {
            SamplingOptions mo = o.withMirostat(m, 0.1, 5.0);
            assertArrayEquals(run(SamplerChain.create(mo, 500), 300), run(SamplerChain.create(mo, 500), 300));
        }
    }

    static int[] run(SamplerChain c, int steps) {
        java.util.Random r = new java.util.Random(99);
        float[] l = new float[c.vocabSize()];
        int[] out = new int[steps];
        for (int s = 0; s < steps; s++) {
            for (int i = 0; i < l.length; i++) l[i] = (float) (r.nextGaussian() * 2);
            out[s] = c.sample(l);
            c.accept(out[s]);
        }
        return out;
    }

    @Test
    void traceReportsEntropyTopKAndSurprise() {
        double[] p = {0.5, 0.25, 0.15, 0.1};
        float[] l = logProbs(p);
        SamplerChain c = SamplerChain.create(SamplingOptions.defaults().withTopK(2).withTopP(1).withMinP(0)
                .withTemp(1.0).withSeed(7), 4);
        assertNull(c.lastTrace());
        c.setTrace(true);
        double h = 0;
        for (double x : p) h -= x * Math.log(x);
        double pk0 = 0.5 / 0.75, pk1 = 0.25 / 0.75;
        double hk = -(pk0 * Math.log(pk0) + pk1 * Math.log(pk1));
        boolean saw0 = false, saw1 = false;
        for (int i = 0; i < 50; i++) {
            int t = c.sample(l);
            StepTrace tr = c.lastTrace();
            assertEquals(t, tr.token());
            assertEquals(h, tr.entropy(), 1e-6);
            assertEquals(0.75, tr.topKMass(), 1e-6);
            assertEquals(hk, tr.topKEntropy(), 1e-6);
            assertEquals(t == 0 ? -Math.log(pk0) / Math.log(2) : -Math.log(pk1) / Math.log(2), tr.surprise(), 1e-5);
            assertTrue(Double.isNaN(tr.mirostatMu()));
            assertEquals(Math.log(p[t]), tr.logprob(), 1e-6, "log p under the model distribution, not the truncated one");
            assertArrayEquals(new int[] {0, 1, 2, 3}, tr.topTokens());
            for (int j = 0; j < 4; j++) assertEquals(Math.log(p[j]), tr.topLogprobs()[j], 1e-6);
            saw0 |= t == 0;
            saw1 |= t == 1;
        }
        assertTrue(saw0 && saw1);

        // greedy: surprise 0; the entropy is taken after the penalties
        SamplerChain g = SamplerChain.create(SamplingOptions.greedy().withPenalties(8, 1.0, 100.0, 0), 4);
        g.setTrace(true);
        g.accept(0);
        g.sample(l);
        StepTrace tr = g.lastTrace();
        assertEquals(1, tr.token());
        assertEquals(0.0, tr.surprise(), 1e-12);
        double z = 0.25 + 0.15 + 0.1;
        double hp = 0;
        for (double x : new double[]{0.25 / z, 0.15 / z, 0.1 / z}) hp -= x * Math.log(x);
        assertEquals(hp, tr.entropy(), 1e-6);
        assertEquals(Math.log(0.25 / z), tr.logprob(), 1e-6, "after the penalties: token 0 is all but out");
        assertArrayEquals(new int[] {1, 2, 3, 0}, tr.topTokens());
        assertTrue(tr.topLogprobs()[3] < -90, "the presence penalty of 100 sinks token 0: " + tr.topLogprobs()[3]);
    }

    @Test
    void largeVocabDefaultChainIsFast() {
        int v = 128_256;
        SamplerChain c = SamplerChain.create(SamplingOptions.defaults().withSeed(1), v);
        java.util.Random r = new java.util.Random(3);
        float[] l = new float[v];
        for (int i = 0; i < v; i++) l[i] = (float) (r.nextGaussian() * 2);
        for (int i = 0; i < 200; i++) c.accept(c.sample(l)); // warm-up
        long t0 = System.nanoTime();
        int steps = 300;
        for (int i = 0; i < steps; i++) c.accept(c.sample(l));
        double msPerStep = (System.nanoTime() - t0) / 1e6 / steps;
        assertTrue(msPerStep < 20, "default chain took " + msPerStep + " ms/step at vocab 128K");
    }
}
