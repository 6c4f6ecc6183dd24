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
        long[] keys = new long[x.length];
        int n = pack(x, skipNegInf, keys);
        dev.tokenpress.kv.LongSelect.smallestFirst(keys, 0, n, k); // the first k in order, without sorting the rest
        int[] out = new int[Math.max(0, Math.min(k, n))];
        for (int i = 0; i < out.length; i++) out[i] = (int) keys[i];
        return out;
    }

    /**
     * The same indices as {@link #largest(float[], int, boolean)}, in ascending index order: a partition of the packed
     * keys and a pass over a mark per entry instead of two sorts (the selections that only need the set).
     */
    static int[] largestAscending(float[] x, int k, boolean skipNegInf) {
        long[] keys = new long[x.length];
        int n = pack(x, skipNegInf, keys);
        int m = Math.max(0, Math.min(k, n));
        dev.tokenpress.kv.LongSelect.smallest(keys, 0, n, m);
        int[] out = new int[m];
        dev.tokenpress.kv.LongSelect.lowBitsAscending(keys, m, x.length, out, 0);
        return out;
    }

    /** keys[0, n) = (order key, index) of x's entries (-infinity left out when asked), ascending = best first; returns n. */
    private static int pack(float[] x, boolean skipNegInf, long[] keys) {
        int n = 0;
        for (int i = 0; i < x.length; i++) {
            if (skipNegInf && x[i] == Float.NEGATIVE_INFINITY) continue;
            int ordered = EvictingPolicy.scoreKey(x[i]);    // increases with the value; -0 = +0, NaN above all
            keys[n++] = ((long) ~ordered << 32) | i;         // ascending: larger values first, then lower index
        }
        return n;
    }
}
