package dev.tokenpress.kv.policy;

/**
 * Top-k of a score array for the policies' host-side selections: indices of the k largest values, largest first,
 * ties (+0 and -0 included) lower index first, NaN above everything — the order of a comparator sort by (value
 * descending, index ascending), done as one primitive sort of (order key, index) pairs packed into longs.
 */
final class TopK {
    private TopK() {}

    /** Indices of the k largest values of x. */
    static int[] largest(float[] x, int k) {
        return largest(x, k, false);
    }

    /** Indices of the k largest values of x, entries equal to -infinity left out when {@code skipNegInf}. */
    static int[] largest(float[] x, int k, boolean skipNegInf) {
        int n = 0;
        long[] keys = new long[x.length];
        for (int i = 0; i < x.length; i++) {
            if (skipNegInf && x[i] == Float.NEGATIVE_INFINITY) continue;
            int ordered = EvictingPolicy.scoreKey(x[i]);    // increases with the value; -0 = +0, NaN above all
            keys[n++] = ((long) ~ordered << 32) | i;         // ascending: larger values first, then lower index
        }
        dev.tokenpress.kv.LongSelect.smallestFirst(keys, 0, n, k); // the first k in order, without sorting the rest
        int[] out = new int[Math.max(0, Math.min(k, n))];
        for (int i = 0; i < out.length; i++) out[i] = (int) keys[i];
        return out;
    }
}
