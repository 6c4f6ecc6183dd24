package dev.tokenpress.kv.policy;

import java.util.SplittableRandom;

/**
 * Approximate leverage scores (Chari and Van Durme, "Compactor", arXiv 2507.08143; kvpress's LeverageScorePress):
 * keys that lie off the subspace most keys span are the ones attention cannot reconstruct from the others, so they
 * stay. Per KV head, over the cached tokens: the pre-RoPE keys (the cached keys rotated back by their positions),
 * centred over the tokens, multiplied by a Gaussian sketch Φ [hd × {@code sketch}] / √sketch; with Y that product and
 * G = YᵀY + jitter·I, a token's score is y·G⁻¹·y (through the Cholesky factor, clamped at 0), z-scored over the head
 * (unbiased std, at least 1e-6). Deviation: the jitter is 1e-6 of G's mean diagonal (×10 while the factorization
 * fails, up to 5 tries) where kvpress adds 1e-2 outright, so the scores do not depend on the keys' scale. Scores are
 * recomputed from the cached keys at each cut (one bulk read of the head). The sketch is drawn once per (layer, head)
 * from {@code seed} (kvpress draws a new one per call). With sketch ≥ hd the scores are the exact leverage of the
 * centred keys up to the jitter (leverage does not change under an invertible right factor). Optional sinks and a
 * recent window are protected (kvpress has neither: the defaults are 0).
 */
public final class LeveragePolicy extends BudgetedPolicy {
    private final int sketch;
    private final long seed;
    private double[][][] phi; // [layer][head] -> [hd * sketch], drawn on first use
    private float[] keys = new float[0], values = new float[0];

    public LeveragePolicy(String spec, Budget budget, Budget recent, int sink, int sketch, long seed) {
        super(spec, budget, recent, sink);
        if (sketch < 1) throw new IllegalArgumentException("leverage: sketch must be >= 1, got " + sketch);
        this.sketch = sketch;
        this.seed = seed;
    }

    @Override
    protected void reset() {
        super.reset();
        phi = new double[layers][kvHeads][];
    }

    @Override
    protected void beforeEviction(int layer) {
        int hd = headDim, k = sketch;
        for (int g = 0; g < kvHeads; g++) {
            int[] order = slotsByPosition(layer, g);
            int n = order.length, hw = cache.highWater(layer, g);
            if (n == 0) continue;
            if (keys.length < hw * hd) {
                keys = new float[capacity * hd];
                values = new float[capacity * hd];
            }
            backend.readKvHead(cache, layer, g, keys, values);
            int[] pos = cache.positions(layer, g);
            double[][] x = new double[n][hd];
            for (int t = 0; t < n; t++) model.rope().rotate(keys, order[t] * hd, -pos[order[t]], x[t]); // pre-RoPE keys
            double[] score = leverage(x, sketch(layer, g), k);
            zscore(new double[][]{score}); // over the head
            float[] sc = this.score[layer][g];
            for (int t = 0; t < n; t++) sc[order[t]] = (float) score[t];
        }
    }

    /** Φ of (layer, head): standard Gaussians / √sketch, [hd][sketch], from the seed, drawn once. */
    private double[] sketch(int layer, int head) {
        double[] p = phi[layer][head];
        if (p != null) return p;
        return phi[layer][head] = sketch(seed, layer, head, headDim, sketch);
    }

    /** The sketch Φ of (layer, head) for {@code seed}: standard Gaussians / √k, [hd][k] row-major. */
    public static double[] sketch(long seed, int layer, int head, int hd, int k) {
        SplittableRandom r = new SplittableRandom(seed ^ (0x9E3779B97F4A7C15L * (1 + (long) layer * 65537 + head)));
        double[] p = new double[hd * k];
        double s = 1 / Math.sqrt(k);
        for (int i = 0; i < p.length; i++) p[i] = r.nextGaussian() * s;
        return p;
    }

    /**
     * Approximate leverage of each row of x [n][hd] (pre-RoPE keys): the rows centred over the n tokens, times the
     * sketch p [hd][k]; with Y that product and G = YᵀY + jitter·I ({@link #cholesky}), row t scores y_t·G⁻¹·y_t
     * (clamped at 0). Not normalized.
     */
    public static double[] leverage(double[][] x, double[] p, int k) {
        int n = x.length, hd = n == 0 ? 0 : x[0].length;
        double[] mean = new double[hd];
        for (double[] row : x) for (int d = 0; d < hd; d++) mean[d] += row[d];
        for (int d = 0; d < hd; d++) mean[d] /= n;
        double[][] y = new double[n][k];
        for (int t = 0; t < n; t++)
            for (int d = 0; d < hd; d++) {
                double v = x[t][d] - mean[d];
                if (v == 0) continue;
                for (int c = 0; c < k; c++) y[t][c] += v * p[d * k + c];
            }
        double[][] gram = new double[k][k];
        for (double[] row : y)
            for (int a = 0; a < k; a++)
                for (int b = 0; b <= a; b++) gram[a][b] += row[a] * row[b];
        double[][] l = cholesky(gram, k);
        double[] score = new double[n];
        double[] z = new double[k];
        for (int t = 0; t < n; t++) {
            double q = 0;
            for (int a = 0; a < k; a++) { // forward substitution: L z = y_t, score = |z|²
                double v = y[t][a];
                for (int b = 0; b < a; b++) v -= l[a][b] * z[b];
                z[a] = v / l[a][a];
                q += z[a] * z[a];
            }
            score[t] = Math.max(0, q);
        }
        return score;
    }

    /** z-scores in place over every entry of x (all rows together): (x − mean) / max(1e-6, unbiased std). */
    static void zscore(double[][] x) {
        double sum = 0;
        long count = 0;
        for (double[] r : x) {
            for (double v : r) sum += v;
            count += r.length;
        }
        if (count == 0) return;
        double mean = sum / count, ss = 0;
        for (double[] r : x) for (double v : r) ss += (v - mean) * (v - mean);
        double std = Math.max(1e-6, count > 1 ? Math.sqrt(ss / (count - 1)) : 0);
        for (double[] r : x) for (int i = 0; i < r.length; i++) r[i] = (r[i] - mean) / std;
    }

    /**
     * The lower Cholesky factor of the symmetric g (its lower triangle) + jitter·I: the jitter is 1e-6 of g's mean
     * diagonal (so the scores do not depend on the keys' scale), ×10 while the factorization fails, up to 5 tries.
     */
    static double[][] cholesky(double[][] g, int k) {
        double trace = 0;
        for (int a = 0; a < k; a++) trace += g[a][a];
        double jitter = Math.max(1e-30, 1e-6 * trace / k);
        for (int tries = 0; tries < 5; tries++, jitter *= 10) {
            double[][] l = new double[k][k];
            boolean ok = true;
            for (int a = 0; a < k && ok; a++)
                for (int b = 0; b <= a; b++) {
                    double v = g[a][b] + (a == b ? jitter : 0);
                    for (int c = 0; c < b; c++) v -= l[a][c] * l[b][c];
                    if (a == b) {
                        if (!(v > 0)) {
                            ok = false;
                            break;
                        }
                        l[a][a] = Math.sqrt(v);
                    } else l[a][b] = v / l[b][b];
                }
            if (ok) return l;
        }
        throw new IllegalStateException("leverage: the Cholesky factorization failed after 5 tries (non-finite keys?)");
    }
}
