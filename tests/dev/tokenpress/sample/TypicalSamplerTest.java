package dev.tokenpress.sample;

import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The typical sampler against the straightforward algorithm (softmax of the list as it stands, entropy, scores, a
 * full sort by score with ties in the logit order, the prefix): the same kept candidates in the same order, with the
 * same logits and probabilities bit for bit, the same size and sorted flag, on random lists of every kind and size,
 * whether the sampler sorted a prefix or the whole list; on a list sorted by logit (after top-k), the same result as
 * the algorithm first written here (softmax over the sorted list, a stable sort by score).
 */
class TypicalSamplerTest {
    private static final double[] PS = {0.0001, 0.2, 0.5, 0.9, 0.95, 0.999};

    /** The definition, straightforwardly. */
    static void reference(TokenDataArray cur, float p, int minKeep) {
        if (p >= 1.0f) return;
        cur.softmax(false);
        int n = cur.size;
        float[] score = scores(cur);
        // the logit order: descending logit, ties by position (as a full sort by logit gives)
        int[] byLogit = new int[n];
        for (int i = 0; i < n; i++) byLogit[i] = i;
        cur.sortPositionsByLogit(byLogit, n);
        int[] rank = new int[n];
        for (int i = 0; i < n; i++) rank[byLogit[i]] = i;
        Integer[] order = new Integer[n];
        for (int i = 0; i < n; i++) order[i] = i;
        Arrays.sort(order, (a, b) -> {
            int c = Integer.compare(key(score[a]), key(score[b]));
            return c != 0 ? c : Integer.compare(rank[a], rank[b]);
        });
        float cum = 0f;
        int last = n;
        for (int i = 0; i < n; i++) {
            cum += cur.probs[order[i]];
            if (cum > p && i >= Math.max(minKeep, 1) - 1) {
                last = i + 1;
                break;
            }
        }
        int[] keep = new int[last];
        for (int i = 0; i < last; i++) keep[i] = order[i];
        cur.keep(keep, last);
    }

    /** Each candidate's |-ln p - H|, H summed in list order, both with Math.log. */
    private static float[] scores(TokenDataArray cur) {
        int n = cur.size;
        double entropy = 0;
        for (int i = 0; i < n; i++) {
            float pi = cur.probs[i];
            if (pi > 0f) entropy -= pi * Math.log(pi);
        }
        float[] score = new float[n];
        for (int i = 0; i < n; i++) score[i] = (float) Math.abs(-Math.log(cur.probs[i]) - entropy);
        return score;
    }

    /** The float's order as TokenDataArray.orderByAscending keys it. */
    private static int key(float s) {
        int bits = Float.floatToRawIntBits(s);
        return bits ^ ((bits >> 31) & 0x7FFFFFFF);
    }

    /** The algorithm as first written (softmax over the list sorted by logit, a stable sort by score). */
    static void sortedFirst(TokenDataArray cur, float p, int minKeep) {
        cur.softmax(true);
        int n = cur.size;
        float[] score = scores(cur);
        int[] order = cur.orderByAscending(score);
        float cum = 0f;
        int last = n;
        for (int i = 0; i < n; i++) {
            cum += cur.probs[order[i]];
            if (cum > p && i >= minKeep - 1) {
                last = i + 1;
                break;
            }
        }
        cur.keep(order, last);
    }

    /** The reference as a chain stage. */
    static final class ReferenceTypical implements Sampler {
        private final float p;

        ReferenceTypical(double p) {
            this.p = (float) p;
        }

        @Override
        public String name() {
            return "typical";
        }

        @Override
        public void apply(TokenDataArray cur) {
            reference(cur, p, 1);
        }
    }

    enum Kind { GAUSS3, GAUSS1, GAUSS8, FEW_VALUES, QUANTIZED, NEG_INF, DOMINANT, SORTED, SORTED_TIES, NAN }

    static float[] logits(Kind kind, int n, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] l = new float[n];
        switch (kind) {
            case GAUSS1 -> { for (int i = 0; i < n; i++) l[i] = (float) (gauss(r) * 1); }
            case GAUSS8 -> { for (int i = 0; i < n; i++) l[i] = (float) (gauss(r) * 8); }
            case FEW_VALUES, SORTED_TIES -> {
                float[] v = new float[1 + r.nextInt(6)];
                for (int j = 0; j < v.length; j++) v[j] = (float) (gauss(r) * 3);
                for (int i = 0; i < n; i++) l[i] = v[r.nextInt(v.length)];
            }
            case QUANTIZED -> { for (int i = 0; i < n; i++) l[i] = Math.round(gauss(r) * 3 * 16) / 16f; }
            case NEG_INF -> {
                for (int i = 0; i < n; i++) l[i] = r.nextInt(5) == 0 ? Float.NEGATIVE_INFINITY : (float) (gauss(r) * 2);
                l[r.nextInt(n)] = 1f; // at least one finite logit
            }
            case DOMINANT -> {
                for (int i = 0; i < n; i++) l[i] = (float) (gauss(r) * 2);
                l[r.nextInt(n)] = 25f;
            }
            case NAN -> {
                for (int i = 0; i < n; i++) l[i] = (float) (gauss(r) * 3);
                l[r.nextInt(n)] = Float.NaN;
            }
            default -> { for (int i = 0; i < n; i++) l[i] = (float) (gauss(r) * 3); }
        }
        return l;
    }

    private static double gauss(SplittableRandom r) {
        double u = r.nextDouble(), v = r.nextDouble();
        return Math.sqrt(-2 * Math.log(1 - u)) * Math.cos(2 * Math.PI * v);
    }

    static TokenDataArray load(Kind kind, float[] l) {
        TokenDataArray a = new TokenDataArray(l.length);
        if (kind == Kind.SORTED_TIES || kind == Kind.QUANTIZED) {
            // explicit ids in a scrambled order, so ties are broken by position and not by id
            int[] ids = new int[l.length];
            for (int i = 0; i < ids.length; i++) ids[i] = (int) ((i * 2654435761L) % ids.length);
            a.set(ids, l, l.length);
        } else {
            a.load(l, 0, l.length);
        }
        if (kind == Kind.SORTED || kind == Kind.SORTED_TIES) a.sortDescending();
        return a;
    }

    static void assertSameResult(TokenDataArray want, TokenDataArray got, String what) {
        assertEquals(want.size, got.size, what + ": size");
        assertEquals(want.sorted, got.sorted, what + ": sorted");
        assertEquals(want.selected, got.selected, what + ": selected");
        for (int i = 0; i < want.size; i++) {
            if (want.ids[i] != got.ids[i]) fail(what + ": id at " + i + ": " + want.ids[i] + " vs " + got.ids[i]);
            if (Float.floatToRawIntBits(want.logits[i]) != Float.floatToRawIntBits(got.logits[i]))
                fail(what + ": logit at " + i);
            if (Float.floatToRawIntBits(want.probs[i]) != Float.floatToRawIntBits(got.probs[i]))
                fail(what + ": prob at " + i + ": " + want.probs[i] + " vs " + got.probs[i]);
        }
    }

    static void check(Kind kind, float[] l, double p, int minKeep, TypicalSampler s) {
        TokenDataArray want = load(kind, l);
        reference(want, (float) p, minKeep);
        TokenDataArray got = load(kind, l);
        s.apply(got);
        assertSameResult(want, got, kind + " n=" + l.length + " p=" + p + " minKeep=" + minKeep);
    }

    @Test
    void matchesTheReferenceOnSmallLists() {
        SplittableRandom r = new SplittableRandom(11);
        for (int n : new int[] {1, 2, 3, 4, 7, 16, 100, 1000, 1024, 1025}) {
            for (Kind kind : Kind.values()) {
                for (double p : PS) {
                    for (int minKeep : new int[] {1, 5}) {
                        check(kind, logits(kind, n, r.nextLong()), p, minKeep, new TypicalSampler(p, minKeep));
                    }
                }
            }
        }
    }

    @Test
    void matchesTheReferenceOnLargeLists() {
        SplittableRandom r = new SplittableRandom(12);
        long prefix = 0, calls = 0;
        for (int n : new int[] {1100, 3000, 20_000, 128_256, 200_000}) {
            boolean big = n > 100_000;
            for (Kind kind : Kind.values()) {
                for (int pi = 0; pi < PS.length; pi++) {
                    if (big && (pi + kind.ordinal()) % 2 == 1) continue; // half the pairs at the largest sizes
                    double p = PS[pi];
                    int minKeep = (pi + n) % 3 == 0 ? 5 : 1;
                    TypicalSampler s = new TypicalSampler(p, minKeep);
                    check(kind, logits(kind, n, r.nextLong()), p, minKeep, s);
                    if (kind == Kind.GAUSS3 || kind == Kind.GAUSS8 || kind == Kind.DOMINANT) {
                        prefix += s.prefixSorts;
                        calls++;
                    }
                }
            }
        }
        // on peaked distributions a prefix is what these cases test
        assertTrue(prefix > calls * 0.6, "prefix sorted in " + prefix + " of " + calls);
        // minKeep beyond the list (everything kept, in score order) and p a hair below 1
        for (int n : new int[] {1100, 5000}) {
            for (Kind kind : new Kind[] {Kind.GAUSS3, Kind.GAUSS8, Kind.FEW_VALUES, Kind.SORTED}) {
                float[] l = logits(kind, n, r.nextLong());
                check(kind, l, 0.5, n + 7, new TypicalSampler(0.5, n + 7));
                check(kind, l, 0.99999, 1, new TypicalSampler(0.99999));
            }
        }
    }

    @Test
    void matchesTheReferenceOnTheVocabularyOverManyRows() {
        int n = 128_256;
        SplittableRandom r = new SplittableRandom(13);
        TypicalSampler[] s = new TypicalSampler[PS.length];
        for (int i = 0; i < PS.length; i++) s[i] = new TypicalSampler(PS[i]);
        for (int row = 0; row < 24; row++) {
            float[] l = new float[n];
            double scale = 0.5 + 6 * r.nextDouble();
            for (int i = 0; i < n; i++) l[i] = (float) (gauss(r) * scale);
            if (row % 4 == 0) for (int i = 0; i < n; i += 2) l[i] = Math.round(l[i] * 4) / 4f; // equal scores
            int k = row % PS.length;
            check(Kind.GAUSS3, l, PS[k], 1, s[k]);
        }
        long prefix = 0;
        for (TypicalSampler t : s) prefix += t.prefixSorts;
        assertTrue(prefix >= 12, "prefix sorted in " + prefix + " of 24");
    }

    /** After top-k (a list sorted by logit) nothing changed: the probabilities are the sorted softmax's. */
    @Test
    void aSortedListGivesWhatTheSortedSoftmaxGave() {
        SplittableRandom r = new SplittableRandom(18);
        for (int c = 0; c < 60; c++) {
            int n = c < 40 ? 1 + r.nextInt(200) : 1025 + r.nextInt(40_000);
            Kind kind = Kind.values()[c % Kind.values().length];
            float[] l = logits(kind, n, r.nextLong());
            double p = PS[c % PS.length];
            int minKeep = c % 3 == 0 ? 3 : 1;
            TokenDataArray want = load(kind, l), got = load(kind, l);
            int k = 1 + r.nextInt(n);
            want.truncateTopK(k);
            got.truncateTopK(k);
            sortedFirst(want, (float) p, minKeep);
            new TypicalSampler(p, minKeep).apply(got);
            assertSameResult(want, got, kind + " n=" + n + " k=" + k + " p=" + p);
        }
    }

    @Test
    void reusesItsBuffersAcrossSizes() {
        // one sampler, one array, lists of changing size: no state from a previous call may leak into the next
        SplittableRandom r = new SplittableRandom(14);
        TypicalSampler s = new TypicalSampler(0.9, 2);
        TokenDataArray a = new TokenDataArray(60_000), want = new TokenDataArray(60_000);
        for (int step = 0; step < 40; step++) {
            int n = 1 + r.nextInt(60_000);
            float[] l = logits(Kind.values()[step % 5], n, r.nextLong());
            a.load(l, 0, n);
            want.load(l, 0, n);
            s.apply(a);
            reference(want, 0.9f, 2);
            assertSameResult(want, a, "step " + step + " n=" + n);
        }
    }

    @Test
    void disabledLeavesTheListAlone() {
        float[] l = logits(Kind.GAUSS3, 5000, 1);
        TokenDataArray a = new TokenDataArray(5000);
        a.load(l, 0, 5000);
        new TypicalSampler(1.0).apply(a);
        assertEquals(5000, a.size);
        assertFalse(a.sorted);
        assertArrayEquals(l, Arrays.copyOf(a.logits, 5000));
    }

    @Test
    void theChainDrawsTheSameTokensAsWithTheReference() {
        int vocab = 32_000;
        for (SamplingOptions o : List.of(
                SamplingOptions.defaults().withTopK(0).withTypicalP(0.9).withSeed(7),
                SamplingOptions.defaults().withTopK(0).withTypicalP(0.5).withTopP(1.0).withMinP(0.0).withSeed(8),
                SamplingOptions.defaults().withTopK(0).withTypicalP(0.95).withPenalties(64, 1.3, 0.2, 0.1).withSeed(9))) {
            SamplerChain chain = SamplerChain.create(o, vocab);
            List<Sampler> ref = new ArrayList<>();
            for (Sampler s : chain.samplers()) {
                if (s instanceof TypicalSampler) ref.add(new ReferenceTypical(o.typicalP()));
                else if (s instanceof PenaltiesSampler)
                    ref.add(new PenaltiesSampler(vocab, o.repeatLastN(), o.repeatPenalty(), o.presencePenalty(), o.frequencyPenalty()));
                else if (s instanceof TopKSampler) ref.add(new TopKSampler(o.topK()));
                else if (s instanceof TopPSampler) ref.add(new TopPSampler(o.topP()));
                else if (s instanceof MinPSampler) ref.add(new MinPSampler(o.minP()));
                else if (s instanceof TemperatureSampler) ref.add(new TemperatureSampler(o.temp(), o.dynatempRange(), o.dynatempExp()));
                else if (s instanceof DistSampler) ref.add(new DistSampler(o.seed()));
                else fail("unexpected stage " + s.name());
            }
            SamplerChain reference = SamplerChain.of(vocab, o.seed(), ref.toArray(new Sampler[0]));
            SplittableRandom r = new SplittableRandom(o.seed());
            float[] l = new float[vocab];
            for (int step = 0; step < 300; step++) {
                double scale = 1 + 4 * r.nextDouble();
                for (int i = 0; i < vocab; i++) l[i] = (float) (gauss(r) * scale);
                if (step % 7 == 0) for (int i = 0; i < vocab; i += 3) l[i] = Math.round(l[i]); // ties
                int t = chain.sample(l), w = reference.sample(l);
                assertEquals(w, t, o + " step " + step);
                chain.accept(t);
                reference.accept(w);
            }
            TypicalSampler typical = (TypicalSampler) chain.samplers().stream()
                    .filter(s -> s instanceof TypicalSampler).findFirst().orElseThrow();
            assertTrue(typical.prefixSorts >= 200, "prefix sorted in " + typical.prefixSorts + " of 300");
        }
    }
}
