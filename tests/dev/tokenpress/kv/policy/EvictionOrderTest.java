package dev.tokenpress.kv.policy;

import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** The score keys AdaKV sorts by keep the floats' order across signs. */
class EvictionOrderTest {
    @Test
    void orderKeysSortLikeTheirFloats() {
        float[] v = {-Float.MAX_VALUE, -20f, -1.5f, -Float.MIN_VALUE, -0f, 0f, Float.MIN_VALUE, 0.5f, 3f, 7e30f, Float.MAX_VALUE};
        long[] keys = new long[v.length];
        for (int i = 0; i < v.length; i++) keys[i] = ((long) EvictingPolicy.orderKey(v[i]) << 32) | (v.length - i);
        long[] sorted = keys.clone();
        Arrays.sort(sorted);
        assertArrayEquals(keys, sorted, "a signed sort of the keys is the order of the floats, negative and positive");
        assertTrue(EvictingPolicy.orderKey(Float.NaN) > EvictingPolicy.orderKey(Float.POSITIVE_INFINITY));
    }

    /** A prompt cut's victims (packed keys, one primitive sort) in the order of the comparator over the slots. */
    @Test
    void packedVictimOrderEqualsTheComparator() {
        SplittableRandom r = new SplittableRandom(9);
        for (int t = 0; t < 400; t++) {
            int hw = r.nextInt(1, 400), c = 0;
            int[] pos = new int[hw], cand = new int[hw];
            float[] sc = new float[hw];
            int[] perm = r.ints(0, 5000).distinct().limit(hw).toArray(); // distinct positions, in no order
            for (int s = 0; s < hw; s++) {
                pos[s] = r.nextInt(8) == 0 ? -1 : perm[s];               // some free slots
                int kind = r.nextInt(3);
                sc[s] = kind == 0 ? r.nextInt(-2, 3) : kind == 1 ? (r.nextBoolean() ? 0f : -0f)
                        : r.nextInt(50) == 0 ? Float.NaN : (float) r.nextGaussian();
                if (pos[s] >= 0) cand[c++] = s;
            }
            if (t % 10 == 0 && c > 1) pos[cand[1]] = pos[cand[0]];       // a position held twice: lower slot first
            for (int m : new int[] {1, 2, c / 3, c}) {
                if (m < 1 || m > c) continue;
                boolean noScores = t % 7 == 0;
                assertArrayEquals(EvictingPolicy.victimsByComparator(cand, c, m, noScores ? null : sc, pos),
                        EvictingPolicy.lowestFirst(cand, c, m, noScores ? null : sc, pos), "trial " + t + " m " + m);
            }
        }
    }
}
