package dev.tokenpress.kv.policy;

import java.util.Arrays;

/**
 * Base of the policies that decide, per (layer, KV head), whether a head streams: a streaming head keeps its first
 * {@code sink} and newest {@code recent} tokens (StreamingLLM's window), cut to it when the decision is made
 * ({@link #cutToWindow}) and kept so while decoding; the other heads keep every token (SimLayerKV's lazy layers,
 * DuoAttention's streaming heads).
 */
abstract class StreamingHeadsPolicy extends EvictingPolicy {
    protected final int sink, recent;
    protected boolean[][] streaming; // [layer][kvHead]

    protected StreamingHeadsPolicy(String spec, int sink, int recent) {
        super(spec);
        this.sink = sink;
        this.recent = recent;
    }

    @Override
    protected boolean scored() { return false; }

    @Override
    protected boolean chunks() { return false; }

    @Override
    protected void reset() {
        super.reset();
        streaming = new boolean[layers][kvHeads];
    }

    @Override
    protected int keepBefore(int layer, int head, int n) {
        return streaming[layer][head] ? sink + Math.max(0, recent - n) : Integer.MAX_VALUE;
    }

    @Override
    protected int sinkCount() { return sink; }

    @Override
    protected int protectRecent(int n) { return Math.max(0, recent - n); }

    /** Cuts (layer, head) to its window: every token at or above {@code sink} and below {@code end - recent} goes. */
    protected void cutToWindow(int layer, int head, int end) {
        int[] pos = cache.positions(layer, head);
        int hw = cache.highWater(layer, head), n = 0;
        int[] victims = new int[cache.occupied(layer, head)];
        for (int s = 0; s < hw; s++) if (pos[s] >= sink && pos[s] < end - recent) victims[n++] = s;
        evict(layer, head, Arrays.copyOf(victims, n));
    }
}
