package dev.tokenpress.sample;

import java.util.Arrays;

/**
 * Locally typical sampling (llama.cpp {@code typical}, Meister et al. 2022): with {@code H = -sum p ln p}, orders the
 * candidates by {@code |-ln p - H|} ascending and keeps the shortest prefix whose cumulative probability exceeds
 * {@code typicalP} (at least {@code minKeep}). The result is not sorted by logit. {@code typicalP >= 1} disables.
 *
 * <p>Precisely: the softmax of the list as it stands (its sum in the list's order; a list sorted by logit, as after
 * top-k, gives the probabilities llama.cpp's sorted softmax gives), the entropy summed in list order with
 * {@link Math#log}, each score {@code (float) |-ln p - H|}; the order is by score, ties in the logit order (descending
 * logit, then position), and the prefix's mass is summed in float in that order. Lists of more than
 * {@value #BUCKETED_ABOVE} candidates (a whole vocabulary, top-k off) sort only a prefix of that order: a histogram of
 * the probability mass by score finds the score below which the mass exceeds p, and only the candidates up to there
 * are sorted (they are exactly the first ones of the full order, since the buckets are monotone in the score); when
 * the float sum over them falls short (rounding), or a flat distribution puts most of the list there, the whole list
 * is sorted. 128,256 candidates (Gaussian logits, scale 3 to 8): 9.0-9.6 ms with two full sorts, 1.3-1.7 ms so.
 */
public final class TypicalSampler implements Sampler {
    static final int BUCKETED_ABOVE = 1024;
    /** Score buckets of 1/256 nat over [0, 16); higher scores (and NaN) share the last. */
    private static final int BUCKETS = 4096;
    private static final float BUCKET_SCALE = 256f, BUCKET_LIMIT = (BUCKETS - 1) / BUCKET_SCALE;

    private final float p;
    private final int minKeep;
    private double[] ln = new double[0];
    private final double[] bucketMass = new double[BUCKETS];
    private final int[] bucketCount = new int[BUCKETS];
    private int[] order = new int[0];
    private long[] keys = new long[0];
    /** How many calls sorted only a prefix (tests). */
    long prefixSorts;

    public TypicalSampler(double p, int minKeep) {
        this.p = (float) p;
        this.minKeep = Math.max(minKeep, 1);
    }

    public TypicalSampler(double p) {
        this(p, 1);
    }

    @Override
    public String name() {
        return "typical";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (p >= 1.0f) return;
        cur.softmax(false);
        int n = cur.size;
        float[] pr = cur.probs;
        if (ln.length < n) ln = new double[cur.capacity()];
        double[] lnp = ln;
        double entropy = 0;
        for (int i = 0; i < n; i++) {
            float pi = pr[i];
            double l = Math.log(pi);
            lnp[i] = l;
            if (pi > 0f) entropy -= pi * l;
        }
        float[] score = cur.floatScratch();
        for (int i = 0; i < n; i++) score[i] = (float) Math.abs(-lnp[i] - entropy);
        if (order.length < n) {
            order = new int[cur.capacity()];
            keys = new long[cur.capacity()];
        }
        int[] pos = order;
        int m = n;
        if (n > BUCKETED_ABOVE) {
            m = prefix(score, pr, n, pos);
            if (m < 0) m = n;
            else prefixSorts++;
        }
        if (m == n) for (int i = 0; i < n; i++) pos[i] = i;
        sortByScore(cur, score, pos, m);
        int cut = cut(pr, pos, m);
        if (cut < 0 && m < n) { // the prefix's float sum fell short of the histogram's: the whole order decides
            prefixSorts--;
            for (int i = 0; i < n; i++) pos[i] = i;
            sortByScore(cur, score, pos, n);
            cut = cut(pr, pos, n);
        }
        cur.keep(pos, cut < 0 ? n : cut);
    }

    /** How many of pos[0, m) the float sum of their probabilities needs to exceed p (at least minKeep); -1: all. */
    private int cut(float[] pr, int[] pos, int m) {
        float cum = 0f;
        for (int i = 0; i < m; i++) {
            cum += pr[pos[i]];
            if (cum > p && i >= minKeep - 1) return i + 1;
        }
        return -1;
    }

    private static int bucket(float s) {
        return s < BUCKET_LIMIT ? (int) (s * BUCKET_SCALE) : BUCKETS - 1;
    }

    /**
     * Writes the positions of the candidates in the score buckets up to the one where the mass first exceeds p
     * (with minKeep of them), and one bucket more for the float sum's rounding, into pos; returns their count, or -1
     * when that would be the last bucket or more than half the list, or a score is NaN (the full sort then).
     */
    private int prefix(float[] score, float[] pr, int n, int[] pos) {
        double[] mass = bucketMass;
        int[] count = bucketCount;
        Arrays.fill(mass, 0);
        Arrays.fill(count, 0);
        for (int i = 0; i < n; i++) {
            float s = score[i];
            if (s != s) return -1; // a NaN score (from a NaN logit): its sort key may come first, its bucket last
            int b = bucket(s);
            mass[b] += pr[i];
            count[b]++;
        }
        double cum = 0;
        int c = 0, last = -1;
        for (int b = 0; b < BUCKETS - 2; b++) {
            cum += mass[b];
            c += count[b];
            if (cum > p && c >= minKeep) {
                last = b + 1;
                c += count[b + 1];
                break;
            }
        }
        if (last < 0 || c > n / 2) return -1;
        int m = 0;
        for (int i = 0; i < n; i++) if (bucket(score[i]) <= last) pos[m++] = i;
        return m;
    }

    /**
     * Sorts pos[0, m) by ascending score (the key of {@link TokenDataArray#orderByAscending}), equal scores in the
     * logit order: descending logit, then position (a sorted list's positions already are).
     */
    private void sortByScore(TokenDataArray cur, float[] score, int[] pos, int m) {
        long[] kk = keys;
        for (int j = 0; j < m; j++) {
            int bits = Float.floatToRawIntBits(score[pos[j]]);
            bits ^= (bits >> 31) & 0x7FFFFFFF;
            kk[j] = ((long) bits << 32) | (pos[j] & 0xFFFFFFFFL);
        }
        Arrays.sort(kk, 0, m);
        for (int j = 0; j < m; j++) pos[j] = (int) kk[j];
        if (cur.sorted) return;
        for (int a = 0; a < m; ) {
            int b = a + 1;
            while (b < m && kk[b] >>> 32 == kk[a] >>> 32) b++;
            if (b - a > 1) {
                int[] run = Arrays.copyOfRange(pos, a, b);
                cur.sortPositionsByLogit(run, run.length);
                System.arraycopy(run, 0, pos, a, run.length);
            }
            a = b;
        }
    }
}
