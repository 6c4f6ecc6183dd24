package dev.tokenpress.kv.policy;

import java.util.SplittableRandom;

/**
 * CurDKV (Sengupta et al., arXiv 2509.15038; kvpress's CURPress): leverage-style scores from the squared norms of the
 * cached keys and values. Per KV head, over its cached tokens in position order: k2 = |k|², v2 = |v|² (after an
 * optional random projection of keys and values to {@code project} dimensions, Gaussian / √project, drawn once per
 * (layer, head) from {@code seed}); with {@code window} > 0 each is divided by its sum over consecutive windows of that
 * many tokens (the last window over the tokens it has); the score is k2·v2 ({@code type=kv_product}), k2, v2 or
 * (k2 + v2)/2, divided by its sum over the head. Recomputed from the cache at each cut; the first {@code sink} positions
 * are protected (kvpress gives the first 4 cached tokens the top score).
 */
public final class CurPolicy extends BudgetedPolicy {
    /** How the key and value scores combine. */
    public enum Type { KV_PRODUCT, KEY, VALUE, KV_AVG }

    private final Type type;
    private final int window, project;
    private final long seed;
    private double[][][] proj; // [layer][head] -> [hd * project], drawn on first use
    private float[] keys = new float[0], values = new float[0];

    public CurPolicy(String spec, Budget budget, Budget recent, int sink, Type type, int window, int project, long seed) {
        super(spec, budget, recent, sink);
        if (window < 0 || project < 0) throw new IllegalArgumentException("cur: window and project must be >= 0");
        this.type = type;
        this.window = window;
        this.project = project;
        this.seed = seed;
    }

    @Override
    protected void reset() {
        super.reset();
        proj = new double[layers][kvHeads][];
    }

    @Override
    protected void beforeEviction(int layer) {
        int hd = headDim;
        for (int g = 0; g < kvHeads; g++) {
            int[] order = slotsByPosition(layer, g);
            int n = order.length;
            if (n == 0) continue;
            if (keys.length < cache.highWater(layer, g) * hd) {
                keys = new float[capacity * hd];
                values = new float[capacity * hd];
            }
            backend.readKvHead(cache, layer, g, keys, values);
            double[] p = project > 0 ? projection(layer, g) : null;
            double[] k2 = new double[n], v2 = new double[n];
            for (int t = 0; t < n; t++) {
                k2[t] = squaredNorm(keys, order[t] * hd, hd, p);
                v2[t] = squaredNorm(values, order[t] * hd, hd, p);
            }
            if (window > 0) {
                normalizeWindows(k2, window);
                normalizeWindows(v2, window);
            }
            double[] s = new double[n];
            double total = 0;
            for (int t = 0; t < n; t++) {
                s[t] = switch (type) {
                    case KV_PRODUCT -> k2[t] * v2[t];
                    case KEY -> k2[t];
                    case VALUE -> v2[t];
                    case KV_AVG -> (k2[t] + v2[t]) / 2;
                };
                total += s[t];
            }
            float[] sc = score[layer][g];
            for (int t = 0; t < n; t++) sc[order[t]] = total > 0 ? (float) (s[t] / total) : 0f;
        }
    }

    /** |x[off, off + hd)|², or |x·P|² with P [hd][project] when given. */
    private double squaredNorm(float[] x, int off, int hd, double[] p) {
        double sum = 0;
        if (p == null) {
            for (int d = 0; d < hd; d++) sum += (double) x[off + d] * x[off + d];
            return sum;
        }
        for (int c = 0; c < project; c++) {
            double y = 0;
            for (int d = 0; d < hd; d++) y += x[off + d] * p[d * project + c];
            sum += y * y;
        }
        return sum;
    }

    /** Divides each run of {@code w} consecutive entries (the last run: what is left) by its sum (a zero sum gives 0). */
    static void normalizeWindows(double[] x, int w) {
        for (int from = 0; from < x.length; from += w) {
            int to = Math.min(x.length, from + w);
            double sum = 0;
            for (int i = from; i < to; i++) sum += x[i];
            for (int i = from; i < to; i++) x[i] = sum > 0 ? x[i] / sum : 0;
        }
    }

    /** The projection of (layer, head): standard Gaussians / √project, [hd][project], from the seed, drawn once. */
    private double[] projection(int layer, int head) {
        double[] p = proj[layer][head];
        if (p != null) return p;
        SplittableRandom r = new SplittableRandom(seed ^ (0xD1B54A32D192ED03L * (1 + (long) layer * 65537 + head)));
        p = new double[headDim * project];
        double s = 1 / Math.sqrt(project);
        for (int i = 0; i < p.length; i++) p[i] = r.nextGaussian() * s;
        return proj[layer][head] = p;
    }
}
