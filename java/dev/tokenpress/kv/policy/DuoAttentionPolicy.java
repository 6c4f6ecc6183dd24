package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;

import java.util.Arrays;

/**
 * DuoAttention (Xiao et al., arXiv 2410.10819; kvpress's DuoAttentionPress with its on-the-fly scoring): retrieval
 * heads keep the whole cache, streaming heads keep their first {@code sink} and last {@code recent} tokens. The heads
 * are scored from the first prompt of a sequence, as kvpress scores them from calibration texts: per layer, the mean
 * pre-RoPE query of each q-head and the mean pre-RoPE key of each KV head over the prompt, both repeated over
 * {@link #PROBE} positions and rotated there; the last query's softmax over those keys, accumulated from the first
 * position on, averaged (the area under the cumulative attention: high for a head that looks far back, low for one
 * that looks at its neighbours), and averaged over the group. The lowest-scored share {@code heads} of all KV heads
 * (over every layer) stream. Decided once per sequence, when its first prefill ends (the streaming heads are cut
 * then and keep their window while decoding); kvpress decides once per model.
 */
public final class DuoAttentionPolicy extends StreamingHeadsPolicy {
    /** Positions the mean query and key are repeated over (kvpress's q_len). */
    public static final int PROBE = 500;

    private final double headsFraction;
    private double[][] querySums;  // [layer][H*hd] pre-RoPE query sums over the first prompt
    private int[] queryRows;       // [layer]
    private double[][] scores;     // [layer][kvHead], NaN before the decision
    private boolean decided;

    public DuoAttentionPolicy(String spec, double headsFraction, int sink, int recent) {
        super(spec, sink, recent);
        if (!(headsFraction >= 0 && headsFraction <= 1)) throw new IllegalArgumentException("duo: heads must lie in [0, 1], got " + headsFraction);
        if (sink < 0 || recent < 1) throw new IllegalArgumentException("duo: sink must be >= 0 and recent >= 1");
        this.headsFraction = headsFraction;
    }

    /** Whether (layer, KV head) streams (sinks + recent window); false before the first prompt ends. */
    public boolean streaming(int layer, int head) { return streaming != null && streaming[layer][head]; }

    /** The head's score (area under the cumulative attention of its mean query and key); NaN before the decision. */
    public double score(int layer, int head) { return scores == null ? Double.NaN : scores[layer][head]; }

    @Override
    protected void reset() {
        super.reset();
        querySums = new double[layers][heads * headDim];
        queryRows = new int[layers];
        scores = new double[layers][kvHeads];
        for (double[] s : scores) Arrays.fill(s, Double.NaN);
        decided = false;
    }

    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        if (decided || !inPrefill) return;
        int hd = headDim, width = heads * hd;
        float[] rows = backend.download(q, 0, n);
        double[] back = new double[hd], sum = querySums[layer];
        for (int r = 0; r < n; r++)
            for (int h = 0; h < heads; h++) {
                model.rope().rotate(rows, r * width + h * hd, -positions[r], back); // the query before RoPE
                for (int e = 0; e < hd; e++) sum[h * hd + e] += back[e];
            }
        queryRows[layer] += n;
    }

    @Override
    protected void onEndPrefill() {
        if (decided) return;
        decided = true;
        int hd = headDim, end = prefillStart + prefillTotal;
        float[] keys = new float[capacity * hd], values = new float[capacity * hd];
        double[] back = new double[hd];
        for (int l = 0; l < layers; l++) {
            double[] q = querySums[l];
            for (int g = 0; g < kvHeads; g++) {
                backend.readKvHead(cache, l, g, keys, values);
                int[] pos = cache.positions(l, g);
                double[] k = new double[hd];
                int count = 0;
                for (int s = 0, hw = cache.highWater(l, g); s < hw; s++) {
                    if (pos[s] < prefillStart || pos[s] >= end) continue;
                    model.rope().rotate(keys, s * hd, -pos[s], back); // the key before RoPE
                    for (int e = 0; e < hd; e++) k[e] += back[e];
                    count++;
                }
                if (count == 0 || queryRows[l] == 0) continue;
                for (int e = 0; e < hd; e++) k[e] /= count;
                double sum = 0;
                for (int h = g * group; h < (g + 1) * group; h++) {
                    double[] qm = new double[hd];
                    for (int e = 0; e < hd; e++) qm[e] = q[h * hd + e] / queryRows[l];
                    sum += area(qm, k);
                }
                scores[l][g] = sum / group;
            }
        }
        int n = layers * kvHeads, pruned = (int) Math.round(n * headsFraction);
        Integer[] order = new Integer[n];
        for (int i = 0; i < n; i++) order[i] = i;
        Arrays.sort(order, (a, b) -> { // lowest first; unscored heads (NaN) last, ties in (layer, head) order
            double x = scores[a / kvHeads][a % kvHeads], y = scores[b / kvHeads][b % kvHeads];
            return Double.compare(Double.isNaN(x) ? Double.POSITIVE_INFINITY : x, Double.isNaN(y) ? Double.POSITIVE_INFINITY : y);
        });
        for (int i = 0; i < pruned; i++) streaming[order[i] / kvHeads][order[i] % kvHeads] = true;
        for (int l = 0; l < layers; l++)
            for (int g = 0; g < kvHeads; g++) if (streaming[l][g]) cutToWindow(l, g, end);
    }

    /**
     * The area under the cumulative attention of the last of {@link #PROBE} copies of the mean query over the copies of
     * the mean key, each rotated to its position: mean over p of Σ_{j <= p} softmax_j(q·k_j / √hd).
     */
    double area(double[] q, double[] k) {
        int hd = headDim, half = hd / 2;
        float[] inv = model.rope().invFreq();
        double[] logits = new double[PROBE];
        double max = Double.NEGATIVE_INFINITY, scale = 1 / Math.sqrt(hd);
        for (int p = 0; p < PROBE; p++) {
            // q at PROBE - 1 and k at p: the dot of the rotated pair depends on the distance only
            double dot = 0;
            for (int j = 0; j < half; j++) {
                double angle = (double) (PROBE - 1 - p) * inv[j], c = Math.cos(angle), s = Math.sin(angle);
                dot += (q[j] * k[j] + q[j + half] * k[j + half]) * c + (q[j] * k[j + half] - q[j + half] * k[j]) * s;
            }
            logits[p] = dot * scale;
            max = Math.max(max, logits[p]);
        }
        double z = 0;
        for (int p = 0; p < PROBE; p++) z += logits[p] = Math.exp(logits[p] - max);
        double cum = 0, area = 0;
        for (int p = 0; p < PROBE; p++) {
            cum += logits[p] / z;
            area += cum;
        }
        return area / PROBE;
    }
}
