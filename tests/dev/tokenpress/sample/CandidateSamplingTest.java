package dev.tokenpress.sample;

import dev.tokenpress.api.GenerationResult;
import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Comparator;
import java.util.Map;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Sampling from a row's top candidates ({@link SamplerChain#candidateCount}, {@link SamplerChain#sampleCandidates})
 * chooses the token the chain chooses from the whole row, step after step (same random draws, same penalty history),
 * or declines (-1) without drawing where it cannot; and the chains that need the whole row say so.
 */
class CandidateSamplingTest {
    static final int V = 3000;

    /** The n best (value descending, then id ascending) of a row, as a backend's top-k returns them, shuffled. */
    static int[] top(float[] row, int n, float[] values, SplittableRandom r) {
        Integer[] idx = new Integer[row.length];
        for (int i = 0; i < row.length; i++) idx[i] = i;
        Arrays.sort(idx, Comparator.<Integer>comparingDouble(i -> -row[i]).thenComparingInt(i -> i));
        int[] ids = new int[n];
        for (int i = 0; i < n; i++) ids[i] = idx[i];
        for (int i = n - 1; i > 0; i--) { // any order: the chain puts them in id order itself
            int j = r.nextInt(i + 1), t = ids[i];
            ids[i] = ids[j];
            ids[j] = t;
        }
        for (int i = 0; i < n; i++) values[i] = row[ids[i]];
        return ids;
    }

    /** Rows with many exact ties (logits on a grid of 1/4), some bigger spread, no exact zeros. */
    static float[] row(SplittableRandom r) {
        float[] x = new float[V];
        double spread = r.nextBoolean() ? 1.5 : 4;
        for (int i = 0; i < V; i++) {
            float v = Math.round(r.nextGaussian() * spread * 4) / 4f;
            x[i] = v == 0f ? 0.125f : v;
        }
        return x;
    }

    static void sameTokens(SamplingOptions o, int steps, boolean feedTopTokens) {
        SamplerChain whole = SamplerChain.create(o.withSeed(11), V), cand = SamplerChain.create(o.withSeed(11), V);
        SplittableRandom r = new SplittableRandom(5);
        int declined = 0;
        for (int s = 0; s < steps; s++) {
            float[] x = row(r);
            int m = cand.candidateCount();
            assertTrue(m > 0, o + ": candidateCount 0 at step " + s);
            float[] values = new float[m];
            int[] ids = top(x, m, values, r);
            int t = cand.sampleCandidates(ids, values, m);
            if (t < 0) {
                declined++;
                t = cand.sample(x);
            }
            int w = whole.sample(x);
            assertEquals(w, t, o + " step " + s);
            // the penalties' history: the sampled token, or (to make them bite) one of the row's best
            int fed = feedTopTokens && s % 2 == 1 ? ids[r.nextInt(Math.min(8, m))] : w;
            whole.accept(fed);
            cand.accept(fed);
        }
        assertEquals(0, declined, o + ": declined");
    }

    @Test
    void theTopCandidatesChooseTheWholeRowsToken() {
        SamplingOptions d = SamplingOptions.defaults();
        sameTokens(d, 400, false);                                    // top-k 40, top-p 0.95, min-p 0.05, temp 0.8
        sameTokens(d.withTopK(1), 100, false);
        sameTokens(d.withTopK(300).withTopP(1.0).withMinP(0.0).withTemp(1.5), 200, false);
        sameTokens(d.withTypicalP(0.7), 200, false);
        sameTokens(d.withDynatemp(0.5, 1.0), 200, false);
        sameTokens(d.withXtc(0.5, 0.1), 200, false);
        sameTokens(d.withPenalties(64, 1.3, 0.4, 0.2), 400, true);   // penalties that push the best tokens down
        sameTokens(d.withPenalties(16, 1.0, 0.0, 0.5).withTopK(5), 300, true);
    }

    /** NaN logits rank last in the whole row as in a backend's top-k, so the candidates still decide the token. */
    @Test
    void nanLogitsRankLastInBothPaths() {
        SamplingOptions o = SamplingOptions.defaults().withTopK(2).withTemp(0.0);
        SamplerChain whole = SamplerChain.create(o, 8), cand = SamplerChain.create(o, 8);
        float[] row = {Float.NaN, 1, 2, 0.5f, -1, -2, -3, -4};
        float[] v = new float[2];
        int[] ids = top(row, 2, v, new SplittableRandom(1));
        assertEquals(whole.sample(row), cand.sampleCandidates(ids, v, 2));
        assertEquals(2, whole.sample(row));
    }

    @Test
    void chainsThatNeedTheWholeRowSaySo() {
        SamplingOptions d = SamplingOptions.defaults();
        assertTrue(SamplerChain.create(d, V).candidateCount() > 0);
        assertEquals(0, SamplerChain.create(d.withMirostat(2, 0.1, 5.0), V).candidateCount());
        assertEquals(0, SamplerChain.create(d.withMirostat(1, 0.1, 5.0), V).candidateCount());
        assertEquals(0, SamplerChain.create(d.withTopK(0), V).candidateCount());
        assertEquals(0, SamplerChain.create(d.withTopK(V), V).candidateCount());
        assertEquals(0, SamplerChain.create(d.withTopK(SamplerChain.MAX_CANDIDATES + 1), V).candidateCount());
        assertEquals(0, SamplerChain.create(d, V, Map.of(3, 2f), null).candidateCount(), "a logit bias can raise a token");
        SamplerChain neg = SamplerChain.create(d.withPenalties(64, 1.0, -0.5, 0.0), V);
        neg.accept(7);
        assertEquals(0, neg.candidateCount(), "a negative presence penalty raises logits");
        SamplerChain below = SamplerChain.create(d.withPenalties(64, 0.9, 0.0, 0.0), V);
        below.accept(7);
        assertEquals(0, below.candidateCount(), "a repeat penalty below 1 raises positive logits");
        SamplerChain pen = SamplerChain.create(d.withPenalties(64, 1.1, 0.0, 0.0), V);
        assertEquals(40, pen.candidateCount(), "nothing in the window yet");
        for (int t : new int[] {7, 9, 7, 11}) pen.accept(t);
        assertEquals(43, pen.candidateCount(), "k plus the distinct tokens penalised");
        SamplerChain huge = SamplerChain.create(d.withPenalties(64, 1e39, 0.0, 0.0), V);
        huge.accept(7);
        assertEquals(0, huge.candidateCount(), "a penalty beyond float range");
        SamplerChain traced = SamplerChain.create(d, V);
        traced.setTrace(true);
        assertEquals(0, traced.candidateCount(), "a trace reads the whole distribution");
        assertThrows(IllegalStateException.class, () -> traced.sampleCandidates(new int[40], new float[40], 40));
    }

    @Test
    void declinesWhatTheCandidatesCannotDecideWithoutDrawing() {
        SamplingOptions d = SamplingOptions.defaults().withSeed(3);
        SamplerChain c = SamplerChain.create(d, V), ref = SamplerChain.create(d, V);
        int[] ids = new int[40];
        float[] v = new float[40];
        for (int i = 0; i < 40; i++) {
            ids[i] = 100 + i;
            v[i] = 10 - i * 0.1f;
        }
        assertThrows(IllegalArgumentException.class, () -> c.sampleCandidates(ids, v, 39), "fewer than candidateCount");
        int[] dup = ids.clone();
        dup[1] = dup[0];
        assertThrows(IllegalArgumentException.class, () -> c.sampleCandidates(dup, v, 40));
        float[] nan = v.clone();
        nan[39] = Float.NaN;
        assertEquals(-1, c.sampleCandidates(ids, nan, 40));
        float[] zero = v.clone();
        zero[39] = -0f;
        assertEquals(-1, c.sampleCandidates(ids, zero, 40), "a zero at the boundary");
        int[] outside = ids.clone();
        outside[5] = V;
        assertEquals(-1, c.sampleCandidates(outside, v, 40));
        // a penalty that pushes the best candidate down onto the boundary: the ties there go to the lower ids, as in
        // the whole row (where token 150, left out, also has logit 4)
        SamplingOptions pen = d.withPenalties(64, 1.0, 1.0, 0.0).withTopK(2).withTemp(0.0);
        SamplerChain p = SamplerChain.create(pen, V), pw = SamplerChain.create(pen, V);
        p.accept(200);
        pw.accept(200);
        assertEquals(3, p.candidateCount());
        float[] tie = new float[V];
        Arrays.fill(tie, -1f);
        tie[200] = 5;
        tie[101] = 4;
        tie[102] = 4;
        tie[150] = 4;
        int want = pw.sample(tie);
        assertEquals(want, p.sampleCandidates(new int[] {200, 101, 102}, new float[] {5, 4, 4}, 3));
        assertEquals(101, want);
        // nothing was drawn by the declined calls: the next draw is the reference chain's first
        float[] row = new float[V];
        for (int i = 0; i < 40; i++) row[ids[i]] = v[i];
        for (int i = 0; i < V; i++) if (row[i] == 0f) row[i] = -5f - i * 1e-3f;
        assertEquals(ref.sample(row), c.sampleCandidates(ids, v, 40));
    }

    /** Batched sampled decoding (Parallel, the server's -np) reads the rows' top candidates together: same tokens. */
    @Test
    void batchedGenerationIsTheSameWithAndWithoutCandidates() {
        Path model = Path.of("models/tokenpress-tiny");
        Assumptions.assumeTrue(Files.isRegularFile(model.resolve("model.safetensors")), "no embedded model");
        try (TokenPress tp = TokenPress.load(model, LoadOptions.defaults().withDevice("cpu").withThreads(2))) {
            java.util.List<dev.tokenpress.api.Parallel.Request> reqs = new java.util.ArrayList<>();
            String[] prompts = {"def fibonacci(n):\n", "import os\n", "class Stack:\n", "for i in range(10):\n"};
            for (int i = 0; i < prompts.length; i++) {
                SamplingOptions o = SamplingOptions.defaults().withSeed(40 + i);
                if (i == 1) o = o.withPenalties(64, 1.2, 0.3, 0.1);
                if (i == 2) o = o.withMirostat(2, 0.1, 5.0); // needs its whole row, in the same batch
                if (i == 3) o = SamplingOptions.greedy();
                reqs.add(new dev.tokenpress.api.Parallel.Request(tp.tokenizer().encode(prompts[i]), 24, o, null, null));
            }
            java.util.List<java.util.List<GenerationResult>> runs = new java.util.ArrayList<>();
            String was = System.getProperty("tokenpress.candidateSampling");
            try {
                for (String on : new String[] {"true", "false"}) {
                    System.setProperty("tokenpress.candidateSampling", on);
                    try (dev.tokenpress.api.Parallel p = new dev.tokenpress.api.Parallel(tp, 128, null, "full")) {
                        runs.add(p.generate(reqs, 4));
                    }
                }
            } finally {
                if (was == null) System.clearProperty("tokenpress.candidateSampling");
                else System.setProperty("tokenpress.candidateSampling", was);
            }
            for (int i = 0; i < prompts.length; i++)
                assertArrayEquals(runs.get(1).get(i).tokens(), runs.get(0).get(i).tokens(), "request " + i);
        }
    }

    @Test
    void generationIsTheSameWithAndWithoutCandidates() {
        Path model = Path.of("models/tokenpress-tiny");
        Assumptions.assumeTrue(Files.isRegularFile(model.resolve("model.safetensors")), "no embedded model");
        SamplingOptions o = SamplingOptions.defaults().withSeed(21).withPenalties(64, 1.1, 0.1, 0.05);
        try (TokenPress tp = TokenPress.load(model, LoadOptions.defaults().withDevice("cpu").withThreads(2));
             Session s = tp.newSession(256)) {
            String prompt = "def fibonacci(n):\n";
            GenerationResult on = s.generate(prompt, 48, o, null);
            s.reset();
            String was = System.getProperty("tokenpress.candidateSampling");
            System.setProperty("tokenpress.candidateSampling", "false");
            GenerationResult off;
            try {
                off = s.generate(prompt, 48, o, null);
            } finally {
                if (was == null) System.clearProperty("tokenpress.candidateSampling");
                else System.setProperty("tokenpress.candidateSampling", was);
            }
            assertArrayEquals(off.tokens(), on.tokens());
            assertEquals(off.text(), on.text());
        }
    }
}
