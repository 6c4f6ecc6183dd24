package dev.tokenpress.kv.policy;

/**
 * LagKV (Liang et al., arXiv 2504.04704; kvpress's LagKVPress): attention-free scores from "lag-relative"
 * information. A KV head's cached tokens after the {@code sink} first, in position order, form partitions of
 * {@code lag} tokens; each partition is scored against the next one, its reference: every channel of a token's key
 * is normalized by the reference keys' min and max of that channel, (x − min) / (max − min), and the token's score
 * is the standard deviation of those normalized channels (unbiased, as torch's std), softmaxed over the partition's
 * tokens; the same for values, and the two averaged. A token with more lag-relative spread carries more information
 * and stays. What ranks is the token's place within its partition (rank / lag, in [0, 1)); the tail (the last
 * partition, which has no reference, and the tokens past it) scores 1 and stays unless the budget is smaller; the
 * sinks are always kept. The paper compresses each time the cache has grown by a partition: {@code interval}
 * defaults to 128, the default lag.
 * With fewer than sink + 2·lag tokens nothing can be scored: the older a token, the lower its score (a window).
 * Scores are recomputed from the cached keys and values (one bulk read of the head) each time a layer evicts.
 * Deviation: a reference channel whose min equals its max (torch: a division by zero, NaN or ±∞ scores) counts as 0
 * for every token; kvpress has no recent window, {@code recent} protects one here when given.
 */
public final class LagKvPolicy extends BudgetedPolicy {
    private final int lag;
    private float[] keys = new float[0], values = new float[0];

    public LagKvPolicy(String spec, Budget budget, Budget recent, int sink, int lag) {
        super(spec, budget, recent, sink);
        if (lag < 1) throw new IllegalArgumentException("lagkv: lag must be >= 1, got " + lag);
        this.lag = lag;
    }

    @Override
    protected void beforeEviction(int layer) {
        for (int g = 0; g < kvHeads; g++) {
            int[] order = slotsByPosition(layer, g);
            int len = order.length, hw = cache.highWater(layer, g);
            float[] sc = score[layer][g];
            if (len < sink + 2 * lag) {
                for (int i = 0; i < len; i++)
                    sc[order[i]] = i < sink ? 1f : (float) (i - sink) / (len - sink);
                continue;
            }
            if (keys.length < hw * headDim) {
                keys = new float[capacity * headDim];
                values = new float[capacity * headDim];
            }
            backend.readKvHead(cache, layer, g, keys, values); // one bulk read of the head's cached rows
            int end = sink + (len - sink) / lag * lag, parts = (end - sink) / lag;
            for (int i = 0; i < len; i++) sc[order[i]] = 1f; // sinks and tail; scored partitions are overwritten
            double[] ks = new double[lag], vs = new double[lag], both = new double[lag];
            Integer[] rank = new Integer[lag];
            for (int p = 0; p + 1 < parts; p++) {
                int from = sink + p * lag;
                spread(keys, order, from, ks);
                spread(values, order, from, vs);
                for (int t = 0; t < lag; t++) {
                    both[t] = (ks[t] + vs[t]) / 2;
                    rank[t] = t;
                }
                java.util.Arrays.sort(rank, (a, b) -> Double.compare(both[a], both[b])); // stable: ties keep the older first
                for (int r = 0; r < lag; r++) sc[order[from + rank[r]]] = (float) r / lag;
            }
        }
    }

    /**
     * The softmax over the partition's tokens of each token's standard deviation of its channels normalized by the
     * next partition's per-channel min and max. rows [slot * hd], tokens order[from .. from + lag), reference
     * order[from + lag .. from + 2·lag).
     */
    private void spread(float[] rows, int[] order, int from, double[] out) {
        int hd = headDim;
        double[] min = new double[hd], max = new double[hd];
        java.util.Arrays.fill(min, Double.POSITIVE_INFINITY);
        java.util.Arrays.fill(max, Double.NEGATIVE_INFINITY);
        for (int t = from + lag; t < from + 2 * lag; t++)
            for (int c = 0, o = order[t] * hd; c < hd; c++) {
                min[c] = Math.min(min[c], rows[o + c]);
                max[c] = Math.max(max[c], rows[o + c]);
            }
        double top = Double.NEGATIVE_INFINITY;
        double[] x = new double[hd];
        for (int t = 0; t < lag; t++) {
            int o = order[from + t] * hd;
            double mean = 0;
            for (int c = 0; c < hd; c++) {
                double range = max[c] - min[c];
                x[c] = range > 0 ? (rows[o + c] - min[c]) / range : 0;
                mean += x[c];
            }
            mean /= hd;
            double ss = 0;
            for (int c = 0; c < hd; c++) ss += (x[c] - mean) * (x[c] - mean);
            out[t] = hd > 1 ? Math.sqrt(ss / (hd - 1)) : 0;
            top = Math.max(top, out[t]);
        }
        double sum = 0;
        for (int t = 0; t < lag; t++) sum += out[t] = Math.exp(out[t] - top);
        for (int t = 0; t < lag; t++) out[t] /= sum;
    }
}
