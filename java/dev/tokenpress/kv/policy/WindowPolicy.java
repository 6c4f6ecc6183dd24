package dev.tokenpress.kv.policy;

/**
 * StreamingLLM: the first {@code sink} tokens (attention sinks) plus a window of the most recent tokens. Before
 * n tokens are appended, each KV head keeps its sinks and its newest (recent - n) tokens, so attention sees
 * sink + recent tokens (the authors' {@code evict_for_space}); the oldest non-sink tokens are freed.
 *
 * <p>Keys stay rotated at their original positions, so a window token's distance to the query is its true one (as
 * with StreamingLLM's positions inside the cache: the window is contiguous). With {@code posShift} the sinks' keys
 * are also given StreamingLLM's distances: while e tokens between the sinks and the window have been evicted, sink
 * i's key is its original key rotated by e more positions (from a copy of the original, so rotations do not
 * accumulate rounding), which puts the sinks right before the window as in StreamingLLM's cache; without it a
 * sink's distance grows with the sequence. See docs/KV_POLICIES.md.
 */
public final class WindowPolicy extends EvictingPolicy {
    private final int sink;
    private final Budget recent;   // the window, or null when budget is given
    private final Budget budget;   // sink + window, or null
    private boolean posShift;
    /** [layer][kvHead]: the shift the sinks' keys carry now; [layer][kvHead][i]: sink i's original key (null until needed). */
    private int[][] applied;
    private float[][][][] original;

    /**
     * @param sink   attention-sink tokens kept at the start
     * @param recent the recent window (null when {@code budget} is given)
     * @param budget sink + recent window (null when {@code recent} is given)
     */
    public WindowPolicy(String spec, int sink, Budget recent, Budget budget) {
        super(spec);
        this.sink = sink;
        this.recent = recent;
        this.budget = budget;
    }

    /** Gives the sinks StreamingLLM's distances to the query (see the class comment); returns this. */
    public WindowPolicy posShift(boolean on) {
        this.posShift = on;
        return this;
    }

    public boolean posShift() { return posShift; }

    @Override
    protected boolean scored() { return false; }

    @Override
    protected void reset() {
        super.reset();
        applied = new int[layers][kvHeads];
        original = new float[layers][kvHeads][][];
    }

    @Override
    protected void onBeforeAppend(int[] positions, int n) {
        super.onBeforeAppend(positions, n);
        if (!posShift || sink == 0) return;
        float[] k = new float[headDim], v = new float[headDim];
        double[] rotated = new double[headDim];
        for (int l = 0; l < layers; l++)
            for (int g = 0; g < kvHeads; g++) {
                int[] pos = cache.positions(l, g);
                // the oldest window token once the new ones are in (a prompt chunk may replace the whole window)
                int hw = cache.highWater(l, g), oldest = Integer.MAX_VALUE;
                for (int s = 0; s < hw; s++) if (pos[s] >= sink && pos[s] < oldest) oldest = pos[s];
                for (int i = 0; i < n; i++) if (positions[i] >= sink && positions[i] < oldest) oldest = positions[i];
                if (oldest == Integer.MAX_VALUE) continue; // no window token: nothing to be next to
                int shift = oldest - sink;
                if (shift == applied[l][g]) continue;
                float[][] orig = original[l][g];
                if (orig == null) orig = original[l][g] = new float[sink][];
                for (int s = 0; s < hw; s++) {
                    int p = pos[s];
                    if (p < 0 || p >= sink) continue;
                    backend.readKv(cache, l, g, s, k, v);
                    if (orig[p] == null) orig[p] = k.clone(); // still at its original rotation (shift 0)
                    model.rope().rotate(orig[p], 0, shift, rotated);
                    for (int d = 0; d < headDim; d++) k[d] = (float) rotated[d];
                    backend.writeKv(cache, l, g, s, k, v);
                }
                applied[l][g] = shift;
            }
    }

    /** The recent window for the sequence seen so far. */
    int window() {
        int w = budget != null ? budget.tokens(seqLen) - sink : recent.tokens(seqLen);
        return Math.max(1, w);
    }

    @Override
    protected int keepBefore(int layer, int head, int n) {
        return sink + Math.max(0, window() - n);
    }

    /** StreamingLLM's evict_for_space also runs before each prompt chunk. */
    @Override
    protected boolean budgetDuringPrefill() { return true; }

    @Override
    protected int sinkCount() { return sink; }

    @Override
    protected int protectRecent(int n) { return Math.max(0, window() - n); }
}
