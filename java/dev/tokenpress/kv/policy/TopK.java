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

    /**
     * The same indices as {@link #largest(float[], int, boolean)}, in ascending index order: a partition of the packed
     * keys and a pass over a mark per entry instead of two sorts (the selections that only need the set).
     */
    static int[] largestAscending(float[] x, int k, boolean skipNegInf) {
        int n = 0;
        long[] keys = new long[x.length];
        for (int i = 0; i < x.length; i++) {
            if (skipNegInf && x[i] == Float.NEGATIVE_INFINITY) continue;
            keys[n++] = ((long) ~EvictingPolicy.scoreKey(x[i]) << 32) | i;
        }
        int m = Math.max(0, Math.min(k, n));
        dev.tokenpress.kv.LongSelect.smallest(keys, 0, n, m);
        return ascending(keys, m, x.length);
    }

    /** The low 31 bits of keys[0, m) (distinct indices below {@code bound}), ascending. */
    static int[] ascending(long[] keys, int m, int bound) {
        int[] out = new int[m];
        if (m == 0) return out;
        if ((long) m * 8 < bound) { // few: sorting them is cheaper than a pass over every mark
            for (int i = 0; i < m; i++) out[i] = (int) (keys[i] & 0x7FFFFFFFL);
            java.util.Arrays.sort(out);
            return out;
        }
        boolean[] mark = new boolean[bound];
        for (int i = 0; i < m; i++) mark[(int) (keys[i] & 0x7FFFFFFFL)] = true;
        for (int i = 0, j = 0; j < m; i++) if (mark[i]) out[j++] = i;
        return out;
    }
}
