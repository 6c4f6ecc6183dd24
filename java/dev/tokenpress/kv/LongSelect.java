package dev.tokenpress.kv;

import java.util.Arrays;

/**
 * The k smallest of a range of longs, in ascending order, without sorting the whole range: a partition that puts the
 * k smallest first (introselect: median-of-three quickselect that falls back to sorting a part whose partitions keep
 * coming out lopsided), then a sort of those k. Same result as {@code Arrays.sort} and taking the first k; the policies'
 * top-k over packed (score key, index) longs are O(n + k log k) instead of O(n log n).
 */
public final class LongSelect {
    private LongSelect() {}

    /** Rearranges a[from, to) so that a[from, from + k) holds its k smallest values in ascending order (k clamped). */
    public static void smallestFirst(long[] a, int from, int to, int k) {
        if (from < 0 || to > a.length || from > to) throw new IllegalArgumentException("range [" + from + ", " + to + ") of " + a.length);
        int n = to - from;
        if (k <= 0) return;
        if (k >= n || n <= 64 || k > n / 2) {
            Arrays.sort(a, from, to); // a large share: sorting all is as cheap
            return;
        }
        select(a, from, to - 1, from + k - 1, 2 * (32 - Integer.numberOfLeadingZeros(n)));
        Arrays.sort(a, from, from + k);
    }

    /**
     * Rearranges a[from, to) so that a[from, from + k) holds its k smallest values in no particular order (k clamped):
     * the same set as {@link #smallestFirst} without sorting it, for callers that only need which values they are.
     */
    public static void smallest(long[] a, int from, int to, int k) {
        if (from < 0 || to > a.length || from > to) throw new IllegalArgumentException("range [" + from + ", " + to + ") of " + a.length);
        int n = to - from;
        if (k <= 0 || k >= n) return;
        if (n <= 64) {
            Arrays.sort(a, from, to);
            return;
        }
        select(a, from, to - 1, from + k - 1, 2 * (32 - Integer.numberOfLeadingZeros(n)));
    }

    /**
     * Writes the low 31 bits of keys[0, m) — distinct indices below {@code bound}, as the packed (order key, index) longs
     * of the top-k selections carry them — into out[off, off + m) in ascending order: a pass over a mark per index, or
     * a sort when m is small against the bound.
     */
    public static void lowBitsAscending(long[] keys, int m, int bound, int[] out, int off) {
        if ((long) m * 8 < bound) { // few: sorting them is cheaper than a pass over every mark
            for (int i = 0; i < m; i++) out[off + i] = (int) (keys[i] & 0x7FFFFFFFL);
            Arrays.sort(out, off, off + m);
            return;
        }
        boolean[] mark = new boolean[bound];
        for (int i = 0; i < m; i++) mark[(int) (keys[i] & 0x7FFFFFFFL)] = true;
        for (int i = 0, j = 0; j < m; i++) if (mark[i]) out[off + j++] = i;
    }

    /** Puts the element of rank nth (as in a sorted a[lo, hi]) at nth, smaller ones before it, larger ones after. */
    private static void select(long[] a, int lo, int hi, int nth, int depth) {
        while (hi - lo > 16) {
            if (depth-- == 0) { // lopsided partitions: sort what is left
                Arrays.sort(a, lo, hi + 1);
                return;
            }
            int mid = lo + (hi - lo) / 2;
            // median of three at mid
            if (a[mid] < a[lo]) swap(a, mid, lo);
            if (a[hi] < a[lo]) swap(a, hi, lo);
            if (a[hi] < a[mid]) swap(a, hi, mid);
            long pivot = a[mid];
            int i = lo, j = hi;
            while (i <= j) { // Hoare partition around the pivot's value
                while (a[i] < pivot) i++;
                while (a[j] > pivot) j--;
                if (i <= j) {
                    swap(a, i, j);
                    i++;
                    j--;
                }
            }
            // a[lo, j] <= pivot <= a[i, hi], and a[j + 1, i - 1] == pivot
            if (nth <= j) hi = j;
            else if (nth >= i) lo = i;
            else return;
        }
        Arrays.sort(a, lo, hi + 1);
    }

    private static void swap(long[] a, int i, int j) {
        long t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}
