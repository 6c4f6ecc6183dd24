package dev.tokenpress.sample;

import org.junit.jupiter.api.Test;

import java.util.HashMap;
import java.util.Map;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The n-gram model's count table against a map (growth, key 0, keys crowding one slot) and the model's estimates
 * against counts made by scanning the corpus, for every context of a random corpus with many repeats.
 */
class NGramModelTest {
    @Test
    void theCountTableAddsLikeAMap() {
        NGramModel.LongIntTable t = new NGramModel.LongIntTable();
        Map<Long, Integer> ref = new HashMap<>();
        SplittableRandom r = new SplittableRandom(3);
        for (int i = 0; i < 50_000; i++) {
            long k = switch (i % 4) {
                case 0 -> 0L;                                 // the key kept beside the table
                case 1 -> (long) r.nextInt(64) << 40;         // the same low bits: one probe chain
                default -> r.nextLong(5_000);
            };
            t.add(k, 1 + (i % 3));
            ref.merge(k, 1 + (i % 3), Integer::sum);
        }
        for (Map.Entry<Long, Integer> e : ref.entrySet()) assertEquals((int) e.getValue(), t.get(e.getKey()), "key " + e.getKey());
        assertEquals(0, t.get(123_456_789L));
    }

    @Test
    void estimatesEqualCountsMadeByScanningTheCorpus() {
        SplittableRandom r = new SplittableRandom(8);
        int[] corpus = new int[3000];
        for (int i = 0; i < corpus.length; i++) corpus[i] = r.nextInt(6);
        NGramModel m = new NGramModel(4).add(corpus);
        for (int len = 1; len <= 4; len++)
            for (int end = len; end < 200; end++)
                for (int v = 0; v < 6; v++) {
                    int all = 0, hit = 0;
                    for (int e = len; e < corpus.length; e++) {
                        boolean same = true;
                        for (int i = 1; i <= len && same; i++) same = corpus[e - i] == corpus[end - i];
                        if (!same) continue;
                        all++;
                        if (corpus[e] == v) hit++;
                    }
                    assertEquals(all == 0 ? -1 : hit / (double) all, m.prob(corpus, end, len, v), 0, "len " + len + " end " + end + " v " + v);
                }
    }
}
