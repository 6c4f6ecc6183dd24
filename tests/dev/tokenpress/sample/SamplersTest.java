package dev.tokenpress.sample;

import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.Comparator;
import java.util.Random;
import java.util.stream.IntStream;

import static org.junit.jupiter.api.Assertions.*;

class SamplersTest {

    /** Candidates with the given ids and logits ln(p). */
    static TokenDataArray fromProbs(int[] ids, double... probs) {
        TokenDataArray a = new TokenDataArray(Math.max(ids.length, 1));
        float[] lg = new float[probs.length];
        for (int i = 0; i < probs.length; i++) lg[i] = (float) Math.log(probs[i]);
        a.set(ids, lg, probs.length);
        return a;
    }

    static int[] sortedIds(TokenDataArray a) {
        int[] t = a.tokenIds();
        Arrays.sort(t);
        return t;
    }

    static float[] randomLogits(int n, long seed) {
        Random r = new Random(seed);
        float[] l = new float[n];
        for (int i = 0; i < n; i++) l[i] = (float) (r.nextGaussian() * 3);
        return l;
    }

    /** Positions sorted by descending logit, ties by position (the reference order). */
    static Integer[] refOrder(float[] l) {
        Integer[] idx = IntStream.range(0, l.length).boxed().toArray(Integer[]::new);
        Arrays.sort(idx, Comparator.<Integer>comparingDouble(i -> -l[i]).thenComparingInt(i -> i));
        return idx;
    }

    @Test
    void greedyIsArgmax() {
        for (long seed = 1; seed <= 20; seed++) {
            float[] l = randomLogits(5000, seed);
            int arg = 0;
            for (int i = 1; i < l.length; i++) if (l[i] > l[arg]) arg = i;
            TokenDataArray a = new TokenDataArray(l.length);
            a.load(l, 0, l.length);
            new GreedySampler().apply(a);
            assertEquals(arg, a.selectedToken());
            a.load(l, 0, l.length);
            new TemperatureSampler(0).apply(a);
            assertEquals(1, a.size);
            assertEquals(arg, a.ids[0]);
        }
    }

    @Test
    void topKKeepsExactlyTheKLargestInOrder() {
        float[] l = randomLogits(20000, 7);
        Integer[] ref = refOrder(l);
        TokenDataArray a = new TokenDataArray(l.length);
        for (int k : new int[]{1, 2, 5, 40, 100, 2047, 2049, 3000, 19999, 20000, 50000}) {
            a.load(l, 0, l.length);
            new TopKSampler(k).apply(a);
            int want = Math.min(k, l.length);
            assertEquals(want, a.size, "k=" + k);
            assertTrue(a.sorted);
            for (int i = 0; i < want; i++) {
                assertEquals(ref[i].intValue(), a.ids[i], "k=" + k + " rank " + i);
                assertEquals(l[ref[i]], a.logits[i]);
            }
        }
        // k <= 0 disables
        a.load(l, 0, l.length);
        new TopKSampler(0).apply(a);
        assertEquals(l.length, a.size);
        assertFalse(a.sorted);
        // the caller's logits are untouched
        assertArrayEquals(randomLogits(20000, 7), l);
    }

    @Test
    void topPKeepsSmallestPrefixReachingP() {
        int[] ids = {7, 3, 9, 1};
        double[] p = {0.15, 0.5, 0.1, 0.25}; // sorted: 3 (0.5), 1 (0.25), 7 (0.15), 9 (0.1)
        TokenDataArray a = fromProbs(ids, p);
        new TopPSampler(0.7).apply(a);
        assertArrayEquals(new int[]{3, 1}, a.tokenIds());
        a = fromProbs(ids, p);
        new TopPSampler(0.8).apply(a);
        assertArrayEquals(new int[]{3, 1, 7}, a.tokenIds());
        a = fromProbs(ids, p);
        new TopPSampler(0.05).apply(a); // min_keep 1: the most likely token always survives
        assertArrayEquals(new int[]{3}, a.tokenIds());
        a = fromProbs(ids, p);
        new TopPSampler(1.0).apply(a); // disabled
        assertEquals(4, a.size);
    }

    @Test
    void topPOnLargeUnsortedListMatchesDefinition() {
        for (double p : new double[]{0.1, 0.5, 0.9, 0.999}) {
            float[] l = randomLogits(5000, 11);
            Integer[] ref = refOrder(l);
            double max = l[ref[0]], z = 0;
            for (float x : l) z += Math.exp(x - max);
            double cum = 0;
            int want = 0;
            while (want < l.length) {
                cum += Math.exp(l[ref[want]] - max) / z;
                want++;
                if (cum >= p) break;
            }
            TokenDataArray a = new TokenDataArray(l.length);
            a.load(l, 0, l.length);
            new TopPSampler(p).apply(a);
            // float vs double cumulative sums may differ at the boundary by one token
            assertTrue(Math.abs(a.size - want) <= 1, "p=" + p + " size " + a.size + " want " + want);
            for (int i = 0; i < a.size; i++) assertEquals(ref[i].intValue(), a.ids[i]);
        }
    }

    @Test
    void topPFastPathsGiveTheSameSetAsTheSortedPath() {
        // unsorted large lists go through a top-256 guess or a logit-bucket histogram; an already sorted list
        // takes the plain prefix scan: all must agree exactly
        for (long seed = 1; seed <= 6; seed++) {
            for (double p : new double[]{0.3, 0.9, 0.95, 0.999}) {
                float[] l = randomLogits(30_000, seed);
                if (seed % 2 == 0) for (int i = 0; i < l.length; i += 7) l[i] = l[i / 2]; // ties
                TokenDataArray fast = new TokenDataArray(l.length);
                fast.load(l, 0, l.length);
                new TopPSampler(p).apply(fast);
                TokenDataArray slow = new TokenDataArray(l.length);
                slow.load(l, 0, l.length);
                slow.sortDescending();
                new TopPSampler(p).apply(slow);
                assertTrue(fast.sorted);
                assertArrayEquals(slow.tokenIds(), fast.tokenIds(), "seed " + seed + " p " + p);
            }
        }
    }

    @Test
    void minPKeepsTokensAboveFractionOfMax() {
        int[] ids = {0, 1, 2, 3, 4};
        double[] p = {0.05, 0.5, 0.15, 0.1, 0.2};
        TokenDataArray a = fromProbs(ids, p);
        new MinPSampler(0.25).apply(a); // threshold 0.125
        assertArrayEquals(new int[]{1, 2, 4}, sortedIds(a));
        a = fromProbs(ids, p);
        new MinPSampler(0.5).apply(a); // threshold 0.25
        assertArrayEquals(new int[]{1}, sortedIds(a));
        a = fromProbs(ids, p);
        new MinPSampler(0.0).apply(a);
        assertEquals(5, a.size);
        // sorted input takes the sorted path and gives the same set
        a = fromProbs(ids, p);
        a.sortDescending();
        new MinPSampler(0.25).apply(a);
        assertArrayEquals(new int[]{1, 4, 2}, a.tokenIds());
    }

    @Test
    void typicalKeepsHandComputedSet() {
        // p = [0.4, 0.3, 0.2, 0.1]: H = 1.27985 nats; |-ln p - H| = [0.3636, 0.0759, 0.3296, 1.0227]
        // order by score: token 1 (0.3), token 2 (0.2), token 0 (0.4), token 3 (0.1)
        int[] ids = {0, 1, 2, 3};
        double[] p = {0.4, 0.3, 0.2, 0.1};
        double h = 0;
        for (double x : p) h -= x * Math.log(x);
        assertEquals(1.27985, h, 1e-5);

        TokenDataArray a = fromProbs(ids, p);
        new TypicalSampler(0.45).apply(a); // cum 0.3, 0.5 > 0.45 -> {1, 2}: the most likely token is not typical
        assertArrayEquals(new int[]{1, 2}, a.tokenIds());
        assertFalse(a.sorted);

        a = fromProbs(ids, p);
        new TypicalSampler(0.6).apply(a); // cum 0.3, 0.5, 0.9 > 0.6 -> {1, 2, 0}
        assertArrayEquals(new int[]{1, 2, 0}, a.tokenIds());

        a = fromProbs(ids, p);
        new TypicalSampler(0.2).apply(a); // 0.3 > 0.2 -> {1}
        assertArrayEquals(new int[]{1}, a.tokenIds());

        a = fromProbs(ids, p);
        new TypicalSampler(1.0).apply(a); // disabled
        assertEquals(4, a.size);
    }

    @Test
    void temperatureScalesLogits() {
        float[] l = {1f, -2f, 0.5f, 3f};
        TokenDataArray a = new TokenDataArray(4);
        a.load(l, 0, 4);
        new TemperatureSampler(0.5).apply(a);
        assertArrayEquals(new float[]{2f, -4f, 1f, 6f}, Arrays.copyOf(a.logits, 4));
        a.load(l, 0, 4);
        new TemperatureSampler(2.0).apply(a);
        assertArrayEquals(new float[]{0.5f, -1f, 0.25f, 1.5f}, Arrays.copyOf(a.logits, 4));
        assertArrayEquals(new float[]{1f, -2f, 0.5f, 3f}, l);
    }

    @Test
    void penaltiesFollowLlamaCpp() {
        float[] l = {0.5f, 1f, 2f, 2f, -0.5f, -1f};
        PenaltiesSampler pen = new PenaltiesSampler(6, 64, 1.5, 0.5, 0.25);
        for (int t : new int[]{3, 3, 5}) pen.accept(t);
        TokenDataArray a = new TokenDataArray(6);
        a.load(l, 0, 6);
        pen.apply(a);
        // token 3: count 2, positive: 2/1.5 - (2*0.25 + 0.5); token 5: count 1, negative: -1*1.5 - (0.25 + 0.5)
        assertEquals(2f / 1.5f - 1.0f, a.logits[3], 1e-6);
        assertEquals(-1.5f - 0.75f, a.logits[5], 1e-6);
        for (int i : new int[]{0, 1, 2, 4}) assertEquals(l[i], a.logits[i]);

        // the same through the slow path (candidate list no longer indexed by id)
        TokenDataArray b = new TokenDataArray(6);
        b.set(new int[]{5, 4, 3, 2, 1, 0}, new float[]{-1f, -0.5f, 2f, 2f, 1f, 0.5f}, 6);
        pen.apply(b);
        assertEquals(-2.25f, b.logits[0], 1e-6);
        assertEquals(2f / 1.5f - 1.0f, b.logits[2], 1e-6);
        assertEquals(2f, b.logits[3]);

        // window of 2: only the last two accepted tokens (3, 5) count
        PenaltiesSampler w2 = new PenaltiesSampler(6, 2, 1.0, 0.0, 1.0);
        for (int t : new int[]{3, 3, 5}) w2.accept(t);
        assertArrayEquals(new int[]{3, 5}, w2.window());
        a.load(l, 0, 6);
        w2.apply(a);
        assertEquals(1f, a.logits[3], 1e-6);
        assertEquals(-2f, a.logits[5], 1e-6);

        // -1: every accepted token, 0: disabled
        PenaltiesSampler all = new PenaltiesSampler(6, -1, 1.0, 0.0, 1.0);
        for (int i = 0; i < 200; i++) all.accept(i % 2);
        a.load(l, 0, 6);
        all.apply(a);
        assertEquals(0.5f - 100f, a.logits[0], 1e-4);
        PenaltiesSampler off = new PenaltiesSampler(6, 0, 2.0, 1.0, 1.0);
        off.accept(1);
        a.load(l, 0, 6);
        off.apply(a);
        assertEquals(1f, a.logits[1]);
    }
}
