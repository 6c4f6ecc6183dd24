package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.RopeTable;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;

/**
 * Expected Attention (kvpress's ExpectedAttentionPress, arXiv 2510.00636): a token is kept for the attention that
 * <b>future</b> queries are expected to pay it. Per layer and q-head the queries seen so far (before RoPE, the first
 * {@code sink} positions left out) give a mean mu and a covariance Sigma; RoPE averaged over the next {@code future}
 * positions, R = mean_t (cos_t I + sin_t P) (HF rotate_half layout), moves them to mu' = R mu and Sigma' = R Sigma R^T.
 * For a Gaussian query, E[exp(q.k / sqrt(d))] = exp(k.mu' / sqrt(d) + k^T Sigma' k / (2d)); its softmax over the
 * cached tokens of the KV head (sinks left out) is averaged over the group's q-heads and scaled by the value's norm,
 * (p + eps) * ||v||. Scores are recomputed from the cache (keys and values read through {@code Backend.readKv}) each
 * time a layer evicts, so the default {@code interval} lets the cache grow past its budget before it is cut back.
 *
 * <p>Deviations from kvpress: the statistics cover every query since the sequence started (kvpress: the prompt's,
 * or the last 256 during decoding) and are kept as running sums; the averaged rotation starts at the current
 * position (kvpress's decoding press starts it at its buffer length).
 */
public final class ExpectedAttentionPolicy extends BudgetedPolicy {
    private final int future;
    private final boolean covariance, vnorm;
    private final float epsilon;
    private RopeTable rope;
    private long[] count;           // [layer] queries in the statistics
    private double[][][] sum;       // [layer][q-head][hd]
    private double[][][] outer;     // [layer][q-head][hd*(hd+1)/2] upper triangle of sum q q^T
    private float[] k, v, row;
    private float[] keys = new float[0], values = new float[0];  // the head being scored, [slot * hd]
    private float[][] mu, sigma;    // per q-head of the layer being scored: R mu, R Sigma R^T [hd*hd]
    private int rotatedAt = -1;
    private float[] cosAvg, sinAvg;

    public ExpectedAttentionPolicy(String spec, Budget budget, Budget recent, int sink, int future, boolean covariance,
                                   boolean vnorm, double epsilon) {
        super(spec, budget, recent, sink);
        this.future = future;
        this.covariance = covariance;
        this.vnorm = vnorm;
        this.epsilon = (float) epsilon;
    }

    @Override
    protected void onAttach() {
        rope = RopeTable.of(config);
    }

    @Override
    protected void reset() {
        super.reset();
        count = new long[layers];
        sum = new double[layers][heads][headDim];
        outer = covariance ? new double[layers][heads][headDim * (headDim + 1) / 2] : null;
        k = new float[headDim];
        v = new float[headDim];
        row = new float[headDim];
        mu = new float[heads][headDim];
        sigma = covariance ? new float[heads][headDim * headDim] : null;
        rotatedAt = -1;
    }

    /** Adds the call's queries (rotated at their positions) to the layer's statistics, un-rotated. */
    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        int first = 0;
        while (first < n && positions[first] < sink) first++;
        if (first == n) return;
        float[] qs = backend.download(q, first, n - first);
        int hd = headDim, half = hd / 2, stride = heads * hd;
        float[] inv = rope.invFreq();
        for (int r = first; r < n; r++) {
            float pos = positions[r];
            for (int h = 0; h < heads; h++) {
                int base = (r - first) * stride + h * hd;
                for (int j = 0; j < half; j++) {  // inverse rotation: the query before RoPE
                    float angle = pos * inv[j];
                    float cs = (float) Math.cos(angle), sn = (float) Math.sin(angle);
                    float a = qs[base + j], b = qs[base + j + half];
                    row[j] = a * cs + b * sn;
                    row[j + half] = b * cs - a * sn;
                }
                double[] s = sum[layer][h];
                for (int i = 0; i < hd; i++) s[i] += row[i];
                if (outer != null) {
                    double[] o = outer[layer][h];
                    int t = 0;
                    for (int i = 0; i < hd; i++) {
                        double ri = row[i];
                        for (int j = i; j < hd; j++) o[t++] += ri * row[j];
                    }
                }
            }
            count[layer]++;
        }
    }

    @Override
    protected void beforeEviction(int layer) {
        prepareStatistics(layer);
        int hd = headDim;
        float invSqrt = (float) (1.0 / Math.sqrt(hd));
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = cache.positions(layer, g);
            int hw = cache.highWater(layer, g);
            float[] sc = score[layer][g];
            float[][] z = new float[group][hw];
            float[] vn = new float[hw];
            if (keys.length < hw * hd) {
                keys = new float[capacity * hd];
                values = new float[capacity * hd];
            }
            backend.readKvHead(cache, layer, g, keys, values); // one bulk read of the head's cached keys and values
            for (int slot = 0; slot < hw; slot++) {
                if (pos[slot] < sink) continue;  // free slots (-1) and sinks stay out of the softmax
                System.arraycopy(keys, slot * hd, k, 0, hd);
                System.arraycopy(values, slot * hd, v, 0, hd);
                double n2 = 0;
                for (float x : v) n2 += (double) x * x;
                vn[slot] = (float) Math.sqrt(n2);
                for (int i = 0; i < group; i++) {
                    int h = g * group + i;
                    float[] m = mu[h];
                    float dot = 0f;
                    for (int d = 0; d < hd; d++) dot += k[d] * m[d];
                    float zz = dot * invSqrt;
                    if (sigma != null) {
                        float[] s = sigma[h];
                        float quad = 0f;
                        for (int a = 0; a < hd; a++) {
                            float acc = 0f;
                            int off = a * hd;
                            for (int b = 0; b < hd; b++) acc += s[off + b] * k[b];
                            quad += k[a] * acc;
                        }
                        zz += quad / (2f * hd);
                    }
                    z[i][slot] = zz;
                }
            }
            float[] p = new float[hw];
            for (int i = 0; i < group; i++) {
                float max = Float.NEGATIVE_INFINITY;
                for (int slot = 0; slot < hw; slot++) if (pos[slot] >= sink && z[i][slot] > max) max = z[i][slot];
                if (max == Float.NEGATIVE_INFINITY) break;
                double total = 0;
                for (int slot = 0; slot < hw; slot++) if (pos[slot] >= sink) total += Math.exp(z[i][slot] - max);
                float w = (float) (1.0 / (total * group));
                for (int slot = 0; slot < hw; slot++)
                    if (pos[slot] >= sink) p[slot] += (float) Math.exp(z[i][slot] - max) * w;
            }
            for (int slot = 0; slot < hw; slot++) {
                if (pos[slot] < 0) sc[slot] = 0f;
                else if (pos[slot] < sink) sc[slot] = Float.MAX_VALUE;
                else sc[slot] = vnorm ? (p[slot] + epsilon) * vn[slot] : p[slot];
            }
        }
    }

    /** mu' = R mu and Sigma' = R Sigma R^T of every q-head of the layer, R averaged over the next `future` positions. */
    private void prepareStatistics(int layer) {
        int hd = headDim, half = hd / 2;
        if (rotatedAt != callStart) {
            float[] inv = rope.invFreq();
            cosAvg = new float[half];
            sinAvg = new float[half];
            for (int j = 0; j < half; j++) {
                double cs = 0, sn = 0;
                for (int t = 0; t < future; t++) {
                    float angle = (float) (callStart + t) * inv[j];  // the f32 angle RoPE itself uses
                    cs += Math.cos(angle);
                    sn += Math.sin(angle);
                }
                cosAvg[j] = (float) (cs / future);
                sinAvg[j] = (float) (sn / future);
            }
            rotatedAt = callStart;
        }
        long n = count[layer];
        double[] mean = new double[hd];
        double[] cov = new double[hd * hd];
        for (int h = 0; h < heads; h++) {
            double[] s = sum[layer][h];
            for (int i = 0; i < hd; i++) mean[i] = n == 0 ? 0 : s[i] / n;
            rotate(mean, 0, 1, mu[h]);
            if (sigma == null) continue;
            double[] o = outer[layer][h];
            int t = 0;
            for (int i = 0; i < hd; i++)
                for (int j = i; j < hd; j++, t++) {
                    double c = n == 0 ? 0 : o[t] / n - mean[i] * mean[j];
                    cov[i * hd + j] = c;
                    cov[j * hd + i] = c;
                }
            // A = R Sigma (rotate each column), then Sigma' = A R^T (rotate each row of A)
            double[] col = new double[hd];
            float[] out = new float[hd];
            double[] a = new double[hd * hd];
            for (int c = 0; c < hd; c++) {
                for (int i = 0; i < hd; i++) col[i] = cov[i * hd + c];
                rotate(col, 0, 1, out);
                for (int i = 0; i < hd; i++) a[i * hd + c] = out[i];
            }
            float[] sg = sigma[h];
            for (int r = 0; r < hd; r++) {
                rotate(a, r * hd, 1, out);
                System.arraycopy(out, 0, sg, r * hd, hd);
            }
        }
    }

    /** out = R x for x = src[off + i * step], R the averaged rotation (rotate_half layout). */
    private void rotate(double[] src, int off, int step, float[] out) {
        int half = headDim / 2;
        for (int j = 0; j < half; j++) {
            double a = src[off + j * step], b = src[off + (j + half) * step];
            out[j] = (float) (cosAvg[j] * a - sinAvg[j] * b);
            out[j + half] = (float) (cosAvg[j] * b + sinAvg[j] * a);
        }
    }
}
