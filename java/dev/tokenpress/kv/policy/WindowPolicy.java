package dev.tokenpress.kv.policy;

/**
 * StreamingLLM: the first {@code sink} tokens (attention sinks) plus a window of the most recent tokens. Before
 * n tokens are appended, each KV head keeps its sinks and its newest (recent - n) tokens, so attention sees
 * sink + recent tokens (the authors' {@code evict_for_space}); the oldest non-sink tokens are freed.
 *
 * <p>Deviation: keys stay rotated at their original positions (StreamingLLM re-rotates cached keys with
 * positions inside the cache); see docs/KV_POLICIES.md.
 */
public final class WindowPolicy extends EvictingPolicy {
    private final int sink;
    private final Budget recent;   // the window, or null when budget is given
    private final Budget budget;   // sink + window, or null

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

    @Override
    protected boolean scored() { return false; }

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
