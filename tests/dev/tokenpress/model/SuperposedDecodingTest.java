package dev.tokenpress.model;

import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.sample.NGramModel;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Superposed Decoding: a step fed an embedding row equals the token's step bit for bit; one draft without n-grams is
 * greedy decoding; a step of three drafts equals a brute-force reference (every draft and candidate scored from the
 * definition, n-gram estimates counted straight from the corpus); the n-gram estimates; the drafts of a whole run.
 */
class SuperposedDecodingTest {
    @TempDir
    static Path dir;
    static GeneratedModel gen;
    static LlamaConfig config;
    static Llama model;
    static SafeTensors st;

    @BeforeAll
    static void setUp() {
        gen = GeneratedModel.write(dir, 2, true, 23);
        config = gen.config();
        model = gen.model();
        st = gen.st();
    }

    @AfterAll
    static void close() {
        gen.close();
    }

    static int[] prompt(int n) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) p[i] = (i * 37 + 11) % 290;
        return p;
    }

    @Test
    void aStepFedATokensEmbeddingRowIsThatTokensStep() {
        int[] p = prompt(9);
        float[] row = new float[config.hiddenSize()];
        try (KvCache a = model.newCache(32); KvCache b = model.newCache(32)) {
            model.prefill(a, p, 0, false, null);
            model.prefill(b, p, 0, false, null);
            for (int s = 0; s < 4; s++) {
                int t = 17 + 40 * s;
                model.decodeStep(a, t, p.length + s);
                float[] want = model.logits().clone();
                model.embeddingRow(t, row);
                model.decodeStepEmbedded(b, row, p.length + s);
                assertArrayEquals(want, model.logits(), "step " + s);
            }
        }
        assertThrows(IllegalArgumentException.class, () -> model.decodeStepEmbedded(null, new float[3], 0));
    }

    @Test
    void oneDraftWithoutNGramsIsGreedyDecoding() {
        int[] p = prompt(7);
        int steps = 12;
        int[] greedy = new int[steps];
        try (KvCache c = model.newCache(32)) {
            model.prefill(c, p, 0, false, null);
            for (int s = 0; s < steps; s++) {
                greedy[s] = model.argmax();
                if (s + 1 < steps) model.decodeStep(c, greedy[s], p.length + s);
            }
        }
        try (KvCache c = model.newCache(32)) {
            SuperposedDecoding.Result r = new SuperposedDecoding(SuperposedDecoding.Options.defaults(1), null)
                    .generate(model, c, p, 0, steps, Set.of());
            assertEquals(steps, r.steps());
            assertArrayEquals(greedy, r.alive().get(0).tokens(), "one draft follows the argmax");
            assertTrue(r.alive().get(0).logProb() <= 0);
        }
    }

    /** n-gram estimate counted straight from the corpus: occurrences of context + v over occurrences of context + anything. */
    static double countedProb(List<int[]> corpus, int[] seq, int len, int v) {
        int[] ctx = Arrays.copyOfRange(seq, seq.length - len, seq.length);
        int all = 0, hit = 0;
        for (int[] doc : corpus)
            for (int e = len; e < doc.length; e++)
                if (Arrays.equals(Arrays.copyOfRange(doc, e - len, e), ctx)) {
                    all++;
                    if (doc[e] == v) hit++;
                }
        return all == 0 ? -1 : hit / (double) all;
    }

    @Test
    void nGramEstimates() {
        NGramModel m = new NGramModel(2).add(new int[] {1, 2, 3, 1, 2, 4, 1, 2, 3});
        int[] seq = {9, 1, 2};
        assertEquals(2.0 / 3, m.prob(seq, 3, 2, 3), 1e-15);   // (1, 2) -> 3 twice of three
        assertEquals(1.0 / 3, m.prob(seq, 3, 2, 4), 1e-15);
        assertEquals(1.0, m.prob(new int[] {9, 1}, 2, 1, 2), 1e-15); // 2 follows 1 every time
        assertEquals(0.0, m.prob(new int[] {9, 1}, 2, 1, 7), 0);
        assertEquals(2.0 / 3, m.prob(seq, 3, 1, 3), 1e-15);   // after 2: 3, 4, 3
        assertEquals(-1, m.prob(new int[] {9, 9}, 2, 1, 1));  // context never seen
        assertEquals(-1, m.prob(seq, 3, 3, 1));               // longer than the model counts
        assertEquals(9, m.tokens());
    }

    @Test
    void aStepOfThreeDraftsMatchesABruteForceReference() {
        SplittableRandom r = new SplittableRandom(5);
        List<int[]> corpus = new ArrayList<>();
        for (int d = 0; d < 6; d++) {
            int[] doc = new int[200];
            for (int i = 0; i < doc.length; i++) doc[i] = r.nextInt(12); // a small alphabet: many repeated contexts
            corpus.add(doc);
        }
        NGramModel ng = new NGramModel(5);
        for (int[] doc : corpus) ng.add(doc);
        SuperposedDecoding.Options o = new SuperposedDecoding.Options(3, 8, 0.54, 0.7, SuperposedDecoding.DEFAULT_NGRAM_WEIGHTS, 200);
        SuperposedDecoding sd = new SuperposedDecoding(o, ng);
        int vocab = 40;
        Set<Integer> end = Set.of(5);
        for (int trial = 0; trial < 40; trial++) {
            SuperposedDecoding.State st = new SuperposedDecoding.State(new int[] {r.nextInt(12), r.nextInt(12)}, 3);
            for (int d = 0; d < 3; d++) {
                st.alive[d] = new int[] {r.nextInt(12), r.nextInt(trial % 2 == 0 ? 12 : 30)}; // odd trials: contexts the corpus lacks
                st.aliveLp[d] = -r.nextDouble() * 3;
            }
            float[] logits = new float[vocab];
            for (int v = 0; v < vocab; v++) logits[v] = (float) (r.nextGaussian() * 2 + (v < 12 ? 1 : 0));
            int[][] alive0 = st.alive.clone();
            double[] lp0 = st.aliveLp.clone();
            sd.step(st, logits, end, false);
            // reference: every (draft, candidate) scored from the definition
            Integer[] byLogit = new Integer[vocab];
            for (int v = 0; v < vocab; v++) byLogit[v] = v;
            Arrays.sort(byLogit, (a, b) -> logits[b] != logits[a] ? Float.compare(logits[b], logits[a]) : Integer.compare(a, b));
            double z = 0, zt = 0;
            for (int v = 0; v < vocab; v++) z += Math.exp(logits[v] / o.temperature());
            double[] p = new double[o.topTokens()];
            for (int j = 0; j < p.length; j++) zt += p[j] = Math.exp(logits[byLogit[j]] / o.temperature()) / z;
            List<double[]> cands = new ArrayList<>(); // {score, draft, candidate index}
            for (int d = 0; d < 3; d++) {
                int[] seq = new int[2 + alive0[d].length];
                seq[0] = st.prompt[0];
                seq[1] = st.prompt[1];
                System.arraycopy(alive0[d], 0, seq, 2, alive0[d].length);
                double[] lp = new double[p.length];
                boolean any = false;
                for (int j = 0; j < p.length; j++) {
                    double ngp = 0;
                    for (int i = 0; i < o.ngramWeights().length && i + 1 <= seq.length; i++) {
                        double q = countedProb(corpus, seq, i + 1, byLogit[j]);
                        if (q >= 0) ngp += o.ngramWeights()[i] * q;
                    }
                    lp[j] = (1 - o.alpha()) * Math.log(p[j] / zt) + o.alpha() * Math.log(ngp);
                    any |= lp[j] != Double.NEGATIVE_INFINITY;
                }
                for (int j = 0; j < p.length; j++) {
                    double v = any ? lp[j] : (1 - o.alpha()) * Math.log(p[j] / zt) - o.penalty();
                    cands.add(new double[] {lp0[d] + v, d, j});
                }
            }
            cands.sort((a, b) -> a[0] != b[0] ? Double.compare(b[0], a[0]) : Double.compare(a[1] * 100 + a[2], b[1] * 100 + b[2]));
            List<double[]> best = cands.subList(0, 6);
            List<double[]> cont = new ArrayList<>();
            for (double[] c : best) if (!end.contains(byLogit[(int) c[2]])) cont.add(c);
            for (double[] c : best) if (end.contains(byLogit[(int) c[2]])) cont.add(new double[] {c[0] - SuperposedDecoding.EXCLUDED, c[1], c[2]});
            for (int d = 0; d < 3; d++) {
                double[] c = cont.get(d);
                int[] want = Arrays.copyOf(alive0[(int) c[1]], 3);
                want[2] = byLogit[(int) c[2]];
                assertArrayEquals(want, st.alive[d], "trial " + trial + " draft " + d);
                assertEquals(c[0], st.aliveLp[d], 1e-9 * Math.max(1, Math.abs(c[0])), "trial " + trial + " draft " + d);
            }
            Set<Integer> finishedTokens = new HashSet<>();
            for (SuperposedDecoding.Draft f : st.fin) {
                assertTrue(f.finished());
                finishedTokens.add(f.tokens()[f.tokens().length - 1]);
            }
            assertTrue(finishedTokens.isEmpty() || finishedTokens.equals(end), "finished drafts end with an end token");
            long ended = best.stream().filter(c -> end.contains(byLogit[(int) c[2]])).count();
            assertEquals(Math.min(3, ended), st.fin.size(), "trial " + trial + ": finished drafts");
        }
    }

    /**
     * The input of a step after the first is the drafts' last embedding rows weighted by the softmax of their
     * log-probabilities: a run of three steps against the same steps made by hand (the weights computed here).
     */
    @Test
    void eachStepIsFedTheDraftsRowsWeightedByTheirProbabilities() {
        int[] p = prompt(8);
        NGramModel ng = new NGramModel(5).add(prompt(40));
        SuperposedDecoding.Options o = SuperposedDecoding.Options.defaults(3);
        SuperposedDecoding sd = new SuperposedDecoding(o, ng);
        float[] want;
        SuperposedDecoding.Result r;
        try (KvCache c = model.newCache(32)) {
            r = sd.generate(model, c, p, 0, 3, Set.of());
            want = model.logits().clone();
        }
        try (KvCache c = model.newCache(32)) {
            model.prefill(c, p, 0, false, null);
            SuperposedDecoding.State st = new SuperposedDecoding.State(p, 3);
            float[] row = new float[config.hiddenSize()];
            for (int s = 0; s < 3; s++) {
                sd.step(st, model.logits(), Set.of(), s == 0);
                if (s == 2) break;
                double max = Arrays.stream(st.aliveLp).max().getAsDouble(), sum = 0;
                double[] w = new double[3];
                for (int d = 0; d < 3; d++) sum += w[d] = Math.exp(st.aliveLp[d] - max);
                float[] emb = new float[config.hiddenSize()];
                for (int d = 0; d < 3; d++) {
                    model.embeddingRow(st.alive[d][st.alive[d].length - 1], row);
                    for (int i = 0; i < emb.length; i++) emb[i] += (float) (w[d] / sum * row[i]);
                }
                model.decodeStepEmbedded(c, emb, p.length + s);
            }
            assertArrayEquals(want, model.logits(), "the last step's logits");
            for (int d = 0; d < 3; d++) assertArrayEquals(st.alive[d], r.alive().get(d).tokens());
        }
    }

    @Test
    void aFullCacheEndsTheDrafts() {
        int[] p = prompt(6);
        try (KvCache c = model.newCache(p.length + 3)) {
            SuperposedDecoding.Result r = new SuperposedDecoding(SuperposedDecoding.Options.defaults(2), null)
                    .generate(model, c, p, 0, 20, Set.of());
            assertTrue(r.cacheFull());
            assertEquals(4, r.steps(), "three steps fed, the fourth's tokens drawn");
            for (SuperposedDecoding.Draft d : r.alive()) assertEquals(4, d.tokens().length);
            assertEquals(p.length + 3, c.occupied(0, 0));
        }
    }

    @Test
    void aVocabularySmallerThanTheTopTokensIsTakenWhole() {
        SuperposedDecoding sd = new SuperposedDecoding(SuperposedDecoding.Options.defaults(3), null);
        SuperposedDecoding.State st = new SuperposedDecoding.State(new int[] {1}, 3);
        sd.step(st, new float[] {0.5f, 2f, -1f, 1f, 0f}, Set.of(), true); // 5 tokens, 9 asked for: 5 candidates
        assertArrayEquals(new int[] {1}, st.alive[0]);
        assertArrayEquals(new int[] {3}, st.alive[1]);
        assertArrayEquals(new int[] {0}, st.alive[2]);
        sd.step(st, new float[] {0.5f, 2f, -1f, 1f, 0f}, Set.of(), false);
        for (int d = 0; d < 3; d++) assertEquals(2, st.alive[d].length);
    }

    @Test
    void threeDraftsOfAWholeRunAreDistinctAndRanked() {
        int[] p = prompt(11);
        NGramModel ng = new NGramModel(5).add(prompt(60));
        try (KvCache c = model.newCache(64)) {
            SuperposedDecoding.Result r = new SuperposedDecoding(SuperposedDecoding.Options.defaults(3), ng)
                    .generate(model, c, p, 0, 10, Set.of(299));
            assertEquals(3, r.alive().size());
            Set<String> seen = new HashSet<>();
            for (int d = 0; d < 3; d++) {
                SuperposedDecoding.Draft dr = r.alive().get(d);
                assertTrue(seen.add(Arrays.toString(dr.tokens())), "distinct drafts");
                if (d > 0) assertTrue(dr.logProb() <= r.alive().get(d - 1).logProb(), "ranked");
                assertTrue(dr.tokens().length <= 10 && dr.tokens().length >= 1);
                for (int t : dr.tokens()) assertTrue(t >= 0 && t < config.vocabSize());
            }
            // one KV stream: the prompt plus one slot per step after the first
            assertEquals(p.length + r.steps() - 1, c.occupied(0, 0));
        }
        assertThrows(IllegalArgumentException.class, () -> new SuperposedDecoding.Options(3, 5, 0.5, 1, new double[0], 0));
        assertThrows(IllegalArgumentException.class, () -> new SuperposedDecoding.Options(3, 9, 0.5, 0, new double[0], 0));
    }
}
