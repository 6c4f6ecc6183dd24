package dev.tokenpress.sample;

/**
 * Nucleus sampling (llama.cpp {@code top-p}): keeps the smallest prefix of the candidates, by descending probability,
 * whose cumulative probability is {@code >= p}, and at least {@code minKeep}. {@code p >= 1} disables.
 */
public final class TopPSampler implements Sampler {
    /**
     * Unsorted lists larger than this first try the top {@link #GUESS} candidates, then a logit histogram, and only
     * then sort everything; all three give the same set.
     */
    private static final int ADAPTIVE_ABOVE = 1024, GUESS = 256;

    private final float p;
    private final int minKeep;

    public TopPSampler(double p, int minKeep) {
        this.p = (float) p;
        this.minKeep = Math.max(minKeep, 1);
    }

    public TopPSampler(double p) {
        this(p, 1);
    }

    /** Histogram buckets over the logit range [max - BUCKET_RANGE, max]; lower logits share the last bucket. */
    private static final int BUCKETS = 1024;
    private static final float BUCKET_RANGE = 40f;
    private final double[] bucketMass = new double[BUCKETS];

    /**
     * Finds the nucleus without sorting everything: sums the probability per logit bucket from the top until the
     * mass reaches p, then sorts only the candidates in those buckets (they are exactly the top of a full sort).
     * Returns false (nothing changed) if float rounding leaves the sorted prefix short of p.
     */
    private boolean bucketed(TokenDataArray cur) {
        int n = cur.size;
        float[] lg = cur.logits, pr = cur.probs;
        float maxL = lg[cur.argmax()];
        float scale = BUCKETS / BUCKET_RANGE;
        java.util.Arrays.fill(bucketMass, 0);
        for (int i = 0; i < n; i++) bucketMass[bucket(maxL, lg[i], scale)] += pr[i];
        double cum = 0;
        int last = BUCKETS - 1;
        for (int b = 0; b < BUCKETS; b++) {
            cum += bucketMass[b];
            if (cum >= p) {
                last = b;
                break;
            }
        }
        int[] pos = cur.posScratch();
        int m = 0;
        for (int i = 0; i < n; i++) if (bucket(maxL, lg[i], scale) <= last) pos[m++] = i;
        cur.sortPositionsByLogit(pos, m);
        float c = 0f;
        for (int i = 0; i < m; i++) {
            c += pr[pos[i]];
            if (c >= p && i + 1 >= minKeep) {
                cur.keep(pos, i + 1);
                cur.sorted = true;
                return true;
            }
        }
        return false;
    }

    private static int bucket(float maxL, float l, float scale) {
        float x = (maxL - l) * scale;
        return x < BUCKETS - 1 ? (int) x : BUCKETS - 1; // NaN and -inf land in the last bucket
    }

    @Override
    public String name() {
        return "top-p";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (p >= 1.0f) return;
        cur.softmax(false);
        if (!cur.sorted && cur.size > ADAPTIVE_ABOVE) {
            int[] top = cur.topIndices(GUESS);
            int g = Math.min(GUESS, cur.size);
            float cum = 0f;
            for (int i = 0; i < g; i++) {
                cum += cur.probs[top[i]];
                if (cum >= p && i + 1 >= minKeep) {
                    cur.keep(top, i + 1);
                    cur.sorted = true;
                    return;
                }
            }
        }
        if (!cur.sorted && cur.size > ADAPTIVE_ABOVE && bucketed(cur)) return;
        cur.sortDescending();
        float cum = 0f;
        int last = cur.size;
        for (int i = 0; i < cur.size; i++) {
            cum += cur.probs[i];
            if (cum >= p && i + 1 >= minKeep) {
                last = i + 1;
                break;
            }
        }
        cur.size = last;
    }
}
