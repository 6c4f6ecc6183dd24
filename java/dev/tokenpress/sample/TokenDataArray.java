package dev.tokenpress.sample;

import java.util.Arrays;

/**
 * The candidate list a {@link Sampler} works on, like llama.cpp's {@code llama_token_data_array}: parallel arrays of
 * token ids, logits and probabilities, the live {@link #size}, whether the first {@code size} entries are sorted by
 * descending logit, and the index the selecting sampler chose.
 * <p>
 * All buffers are allocated once for the capacity (the vocabulary size) and reused; sorting permutes by gathering into
 * scratch buffers and swapping, so never keep a reference to {@link #ids}, {@link #logits} or {@link #probs} across a
 * call that may reorder (any method of this class or any {@link Sampler#apply}).
 * <p>
 * Ties in logit are broken by position (the earlier entry first), so every operation here is deterministic.
 */
public final class TokenDataArray {
    /** Below this k, top-k selection uses a bounded heap (O(n log k)); above it, a full sort of packed keys. */
    private static final int HEAP_LIMIT = 2048;

    /** Token ids of the candidates; entries at and beyond {@link #size} are garbage. */
    public int[] ids;
    /** Logits of the candidates. */
    public float[] logits;
    /** Probabilities; only meaningful after a sampler computed them (see {@link #softmax}). */
    public float[] probs;
    /** Number of live candidates. */
    public int size;
    /** True when the first {@link #size} entries are in descending logit order. */
    public boolean sorted;
    /** Index (into the live entries) of the chosen candidate, or -1 before a selecting sampler ran. */
    public int selected = -1;

    private final int capacity;
    private int[] scratchIds;
    private float[] scratchLogits;
    private float[] scratchProbs;
    private long[] keys;
    private long[] heap = new long[64];
    private int[] topIdx = new int[64];

    public TokenDataArray(int capacity) {
        if (capacity < 1) throw new IllegalArgumentException("capacity must be >= 1, got " + capacity);
        this.capacity = capacity;
        ids = new int[capacity];
        logits = new float[capacity];
        probs = new float[capacity];
        scratchIds = new int[capacity];
        scratchLogits = new float[capacity];
        scratchProbs = new float[capacity];
    }

    public int capacity() {
        return capacity;
    }

    /** Loads one row of logits as candidates {@code 0..n-1} with ids equal to their index (copies; src is untouched). */
    public void load(float[] src, int offset, int n) {
        if (n < 1 || n > capacity) throw new IllegalArgumentException("n must be in [1, " + capacity + "], got " + n);
        System.arraycopy(src, offset, logits, 0, n);
        for (int i = 0; i < n; i++) ids[i] = i;
        Arrays.fill(probs, 0, n, 0f);
        size = n;
        sorted = false;
        selected = -1;
    }

    /** Loads explicit (id, logit) pairs, e.g. a restricted candidate list. */
    public void set(int[] tokenIds, float[] tokenLogits, int n) {
        if (n < 1 || n > capacity) throw new IllegalArgumentException("n must be in [1, " + capacity + "], got " + n);
        System.arraycopy(tokenIds, 0, ids, 0, n);
        System.arraycopy(tokenLogits, 0, logits, 0, n);
        Arrays.fill(probs, 0, n, 0f);
        size = n;
        sorted = false;
        selected = -1;
    }

    /** The chosen token id, or -1 when nothing was selected. */
    public int selectedToken() {
        return selected >= 0 && selected < size ? ids[selected] : -1;
    }

    /** The live token ids as a new array (for tests and diagnostics). */
    public int[] tokenIds() {
        return Arrays.copyOf(ids, size);
    }

    /** Index of the largest logit among the live entries (first one on ties). */
    public int argmax() {
        if (sorted) return 0;
        int best = 0;
        float bl = logits[0];
        for (int i = 1; i < size; i++) {
            if (logits[i] > bl) {
                bl = logits[i];
                best = i;
            }
        }
        return best;
    }

    /**
     * Softmax of the live logits into {@link #probs} (as llama.cpp's {@code llama_sampler_softmax_impl}), first sorting
     * when {@code doSort} and not yet sorted. Sums in double precision; the exponentials are {@link LogitRows#exp}'s.
     */
    public void softmax(boolean doSort) {
        if (size <= 0) throw new IllegalStateException("empty candidate list");
        if (doSort && !sorted) sortDescending();
        float maxL = sorted ? logits[0] : logits[argmax()];
        double sum = LogitRows.expInto(logits, size, maxL, probs); // (float) e^(l − max), on the Vector API
        float inv = (float) (1.0 / sum);
        for (int i = 0; i < size; i++) probs[i] *= inv;
    }

    /** Sorts all live entries by descending logit. */
    public void sortDescending() {
        if (sorted) return;
        int n = size;
        fillTopIndices(n);
        gather(topIdx, n);
        sorted = true;
    }

    /**
     * Keeps only the {@code k} entries with the largest logits, in descending order (llama.cpp's
     * {@code partial_sort_inplace}); size becomes {@code min(k, size)} and the array is sorted.
     */
    public void truncateTopK(int k) {
        if (k <= 0) return;
        k = Math.min(k, size);
        if (sorted) {
            size = k;
            return;
        }
        fillTopIndices(k);
        gather(topIdx, k);
        size = k;
        sorted = true;
    }

    /**
     * Positions of the {@code k} largest logits, best first, without changing this array. The returned buffer is
     * internal and reused: read its first {@code min(k, size)} entries before the next call.
     */
    public int[] topIndices(int k) {
        k = Math.min(Math.max(k, 0), size);
        if (sorted) {
            ensureTopIdx(k);
            for (int i = 0; i < k; i++) topIdx[i] = i;
            return topIdx;
        }
        fillTopIndices(k);
        return topIdx;
    }

    /** Keeps the entries at the given positions, in that order (positions must be distinct); clears sorted. */
    public void keep(int[] positions, int n) {
        gather(positions, n);
        size = n;
        sorted = false;
    }

    // --- internals ---

    /** Reorders (gathers) the entries at {@code pos[0..n)} into slots {@code 0..n)} by swapping with scratch. */
    private void gather(int[] pos, int n) {
        int[] ni = scratchIds;
        float[] nl = scratchLogits, np = scratchProbs;
        for (int j = 0; j < n; j++) {
            int p = pos[j];
            ni[j] = ids[p];
            nl[j] = logits[p];
            np[j] = probs[p];
        }
        scratchIds = ids;
        scratchLogits = logits;
        scratchProbs = probs;
        ids = ni;
        logits = nl;
        probs = np;
    }

    private void ensureTopIdx(int k) {
        if (topIdx.length < k) topIdx = new int[Math.max(k, topIdx.length * 2)];
    }

    /**
     * Sortable key of entry i: larger key = larger logit, and for equal logits the smaller position. Lets the long
     * comparison do both, so no object comparator is needed.
     */
    private static long key(float logit, int pos) {
        int bits = Float.floatToRawIntBits(logit);
        bits ^= (bits >> 31) & 0x7FFFFFFF; // monotone float -> signed int
        if (logit != logit) bits = Integer.MIN_VALUE; // NaN ranks last, as in the backends' top-k
        return ((long) bits << 32) | (~pos & 0xFFFFFFFFL);
    }

    private static int posOf(long key) {
        return ~(int) key;
    }

    /** Writes the positions of the top {@code k} logits (descending) into {@link #topIdx}. */
    private void fillTopIndices(int k) {
        int n = size;
        ensureTopIdx(k);
        if (k == 0) return;
        if (k <= HEAP_LIMIT && (long) k * 8 <= n) {
            if (heap.length < k) heap = new long[Math.max(k, heap.length * 2)];
            long[] h = heap;
            for (int i = 0; i < k; i++) h[i] = key(logits[i], i);
            for (int i = k / 2 - 1; i >= 0; i--) siftDown(h, i, k);
            long min = h[0];
            for (int i = k; i < n; i++) {
                long kk = key(logits[i], i);
                if (kk > min) {
                    h[0] = kk;
                    siftDown(h, 0, k);
                    min = h[0];
                }
            }
            Arrays.sort(h, 0, k);
            for (int j = 0; j < k; j++) topIdx[j] = posOf(h[k - 1 - j]);
        } else {
            if (keys == null) keys = new long[capacity];
            long[] kk = keys;
            for (int i = 0; i < n; i++) kk[i] = key(logits[i], i);
            Arrays.sort(kk, 0, n);
            for (int j = 0; j < k; j++) topIdx[j] = posOf(kk[n - 1 - j]);
        }
    }

    private static void siftDown(long[] h, int i, int n) {
        long v = h[i];
        while (true) {
            int c = 2 * i + 1;
            if (c >= n) break;
            if (c + 1 < n && h[c + 1] < h[c]) c++;
            if (h[c] >= v) break;
            h[i] = h[c];
            i = c;
        }
        h[i] = v;
    }

    /**
     * Sorts the live entries by ascending {@code score[pos]} (ties: earlier position first) and returns the order in
     * an internal buffer of positions (used by the typical sampler). Scores must be non-negative or at least non-NaN.
     */
    int[] orderByAscending(float[] score) {
        int n = size;
        if (keys == null) keys = new long[capacity];
        long[] kk = keys;
        for (int i = 0; i < n; i++) {
            int bits = Float.floatToRawIntBits(score[i]);
            bits ^= (bits >> 31) & 0x7FFFFFFF;
            kk[i] = ((long) bits << 32) | (i & 0xFFFFFFFFL);
        }
        Arrays.sort(kk, 0, n);
        ensureTopIdx(n);
        for (int j = 0; j < n; j++) topIdx[j] = (int) kk[j];
        return topIdx;
    }

    /**
     * Sorts the positions {@code pos[0..m)} by descending logit (ties: earlier position first), in place: the order
     * a full sort would give them.
     */
    void sortPositionsByLogit(int[] pos, int m) {
        if (keys == null) keys = new long[capacity];
        long[] kk = keys;
        for (int j = 0; j < m; j++) kk[j] = key(logits[pos[j]], pos[j]);
        Arrays.sort(kk, 0, m);
        for (int j = 0; j < m; j++) pos[j] = posOf(kk[m - 1 - j]);
    }

    /** A float scratch buffer of the capacity, reused (the typical sampler's scores). */
    private float[] floatScratch;

    float[] floatScratch() {
        if (floatScratch == null) floatScratch = new float[capacity];
        return floatScratch;
    }

    /** A position buffer of the capacity, reused (filters that compact candidates). */
    private int[] posScratch;

    int[] posScratch() {
        if (posScratch == null) posScratch = new int[capacity];
        return posScratch;
    }
}
