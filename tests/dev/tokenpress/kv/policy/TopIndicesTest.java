package dev.tokenpress.kv.policy;

import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

/**
 * The policies' host-side top-k ({@link TopK}: SnapKV's and TokenSelect's topIndices, TidalDecode's and Quest's
 * topSlots, topSlotsAscending) against a comparator sort of boxed indices by the same order.
 */
class TopIndicesTest {
    static int[] reference(float[] x, int k) {
        Integer[] idx = new Integer[x.length];
        for (int i = 0; i < x.length; i++) idx[i] = i;
        Arrays.sort(idx, (a, b) -> x[a] != x[b] ? Float.compare(x[b], x[a]) : Integer.compare(a, b));
        int[] out = new int[Math.min(k, x.length)];
        for (int i = 0; i < out.length; i++) out[i] = idx[i];
        return out;
    }

    @Test
    void sameOrderAsTheBoxedSort() {
        SplittableRandom r = new SplittableRandom(5);
        float[] special = {0f, -0f, Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, Float.MIN_VALUE,
                -Float.MIN_VALUE, Float.MAX_VALUE, -Float.MAX_VALUE, 1f, -1f};
        for (int t = 0; t < 500; t++) {
            int n = t < 450 ? r.nextInt(0, 300) : r.nextInt(300, 5000); // the long ones mark slots instead of sorting
            float[] x = new float[n];
            for (int i = 0; i < n; i++) {
                int kind = r.nextInt(4);
                x[i] = kind == 0 ? special[r.nextInt(special.length)]          // ±0, NaN, infinities, extremes
                        : kind == 1 ? (float) r.nextInt(-3, 4)                  // many ties
                        : (float) r.nextGaussian();
            }
            for (int k : new int[] {0, 1, n / 2, n, n + 3}) {
                assertArrayEquals(reference(x, k), SnapKvPolicy.topIndices(x, k), "n " + n + " k " + k + " " + Arrays.toString(x));
                // TidalDecode's and Quest's host selection: the same order over the entries that are not -infinity
                int[] finite = Arrays.stream(reference(x, n)).filter(i -> x[i] != Float.NEGATIVE_INFINITY).limit(k).toArray();
                assertArrayEquals(finite, TidalPolicy.topSlots(x, k), "topSlots n " + n + " k " + k);
                int[] asc = finite.clone();
                Arrays.sort(asc);
                assertArrayEquals(asc, TidalPolicy.topSlotsAscending(x, k), "topSlotsAscending n " + n + " k " + k);
            }
        }
    }
}
