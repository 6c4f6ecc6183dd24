package dev.tokenpress.kv.policy;

import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;

import java.util.Arrays;

/**
 * SimLayerKV (Zhang et al., arXiv 2410.13846; kvpress's SimLayerKVPress): some layers are "lazy", their last prompt
 * tokens attend almost only to the first and the most recent tokens, and those layers keep just a StreamingLLM window.
 * When a prefill ends, each layer's mass is the attention probability of its last {@code last} prompt rows on the
 * first {@code sink} and the last {@code recent} prompt tokens, averaged over the query heads and those rows; a layer
 * whose mass exceeds {@code threshold} is lazy: it is cut to its sinks and its newest {@code recent} tokens at once,
 * and keeps that window while decoding (as {@code window}); the other layers keep every token. Nothing is lazy when
 * the prompt holds at most sink + recent + last tokens or the threshold is 1 (kvpress's default, which compresses
 * nothing). The decision is made again at the end of every prefill (a lazy layer's dropped tokens stay dropped).
 */
public final class SimLayerKvPolicy extends StreamingHeadsPolicy {
    private final double threshold;
    private final int last;
    private AttentionStats[] prompt; // per layer: probabilities of the last prompt rows
    private double[] mass;
    private int lastStart;

    public SimLayerKvPolicy(String spec, double threshold, int recent, int sink, int last) {
        super(spec, sink, recent);
        if (!(threshold >= 0 && threshold <= 1)) throw new IllegalArgumentException("simlayerkv: threshold must lie in [0, 1], got " + threshold);
        if (recent < 1 || sink < 0 || last < 1) throw new IllegalArgumentException("simlayerkv: recent and last must be >= 1, sink >= 0");
        this.threshold = threshold;
        this.last = last;
    }

    /** Whether layer l was found lazy at the end of the last prefill. */
    public boolean lazy(int layer) { return streaming != null && streaming[layer][0]; }

    /** Layer l's attention mass on the sinks and the recent window at the end of the last prefill (NaN: not measured). */
    public double mass(int layer) { return mass == null ? Double.NaN : mass[layer]; }

    @Override
    protected void reset() {
        super.reset();
        prompt = new AttentionStats[layers];
        mass = new double[layers];
        Arrays.fill(mass, Double.NaN);
    }

    @Override
    protected void onBeginPrefill() {
        lastStart = prefillStart + prefillTotal - last;
        for (AttentionStats s : prompt) if (s != null) s.clear();
    }

    @Override
    public AttentionStats stats(KvCache c, int layer, int n) {
        if (!inPrefill || callStart + n - 1 < lastStart) return null;
        if (prompt[layer] == null) prompt[layer] = new AttentionStats(null, new float[kvHeads][capacity], 0);
        prompt[layer].fromRow = Math.max(0, lastStart - callStart);
        return prompt[layer];
    }

    @Override
    protected void onEndPrefill() {
        int end = prefillStart + prefillTotal, rows = Math.min(last, prefillTotal);
        boolean measurable = threshold < 1 && end > sink + recent + last;
        for (int l = 0; l < layers; l++) {
            if (prompt[l] == null) continue;
            double m = 0;
            for (int g = 0; g < kvHeads; g++) {
                int[] pos = cache.positions(l, g);
                float[] p = prompt[l].probSums[g];
                for (int s = 0, hw = cache.highWater(l, g); s < hw; s++)
                    if (pos[s] >= 0 && (pos[s] < sink || pos[s] >= end - recent)) m += p[s];
            }
            mass[l] = m / ((double) heads * rows);
            Arrays.fill(streaming[l], measurable && mass[l] > threshold);
            prompt[l].clear();
            if (!streaming[l][0]) continue;
            for (int g = 0; g < kvHeads; g++) cutToWindow(l, g, end); // the window now, as kvpress cuts the prompt
        }
    }
}
