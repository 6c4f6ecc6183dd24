package dev.tokenpress.kv.policy;

import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;

/**
 * TOVA (Token Omission Via Attention; Oren et al., "Transformers are Multi-State RNNs", 2024): when the cache holds
 * more than {@code budget} tokens, the tokens the <b>current</b> query attends to least are dropped: the score of a
 * token is its post-softmax probability from the last query row of the latest call, averaged over the layer's
 * heads, so all KV heads of a layer keep the same tokens (the paper's and kvpress's TOVAPress's choice;
 * {@code heads=kv} ranks each KV head by its own q-heads instead). Nothing accumulates and nothing is protected:
 * no sinks, no recent window (the paper finds the first token kept by the scores alone). A prompt runs densely
 * and is cut to the budget by its last token's attention; decoding then evicts one token per step.
 */
public final class TovaPolicy extends EvictingPolicy {
    private final Budget budget;
    private final boolean layerWide;
    private AttentionStats stats;
    private float[][] shared;   // [kvHeads][capacity]: the layer-wide score written to every head

    public TovaPolicy(String spec, Budget budget, boolean layerWide) {
        super(spec);
        this.budget = budget;
        this.layerWide = layerWide;
    }

    @Override
    protected void reset() {
        super.reset();
        stats = new AttentionStats(null, new float[kvHeads][capacity], 0);
        shared = new float[kvHeads][capacity];
    }

    private int budgetNow() { return Math.max(1, budget.tokens(callStart)); }

    @Override
    protected int keepBefore(int layer, int head, int n) { return budgetNow(); }

    @Override
    protected int protectRecent(int n) { return 0; }

    @Override
    public AttentionStats stats(KvCache c, int layer, int n) {
        stats.fromRow = n - 1; // the current query only
        stats.clear();
        return stats;
    }

    @Override
    public void afterAttention(KvCache c, int layer, int n, AttentionStats s) {
        if (s == null) return;
        float[][] add = s.probSums;
        if (layerWide && sameSlots(c, layer)) {
            // every head holds the same positions in the same slots (they always evict alike): sum the groups
            int hw = c.highWater(layer, 0);
            float[] total = shared[0];
            for (int slot = 0; slot < hw; slot++) {
                float t = 0f;
                for (int g = 0; g < kvHeads; g++) t += add[g][slot];
                total[slot] = t;
            }
            for (int g = 1; g < kvHeads; g++) System.arraycopy(total, 0, shared[g], 0, hw);
            add = shared;
        }
        accumulate(layer, add, 0f); // the latest call's attention replaces the old scores
    }

    private boolean sameSlots(KvCache c, int layer) {
        int hw = c.highWater(layer, 0);
        int[] p0 = c.positions(layer, 0);
        for (int g = 1; g < kvHeads; g++) {
            if (c.highWater(layer, g) != hw) return false;
            int[] p = c.positions(layer, g);
            for (int s = 0; s < hw; s++) if (p[s] != p0[s]) return false;
        }
        return true;
    }
}
