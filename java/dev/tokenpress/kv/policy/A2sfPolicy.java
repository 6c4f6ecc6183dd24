package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;

/**
 * A2SF: H2O's accumulated attention with a forgetting factor alpha, S <- alpha * S + A_t for every query row
 * t in order, so a prompt of L rows weights row q by alpha^(L-1-q) (the newest row by 1). Before each append
 * the cache keeps {@code sink} first tokens, the newest {@code recent} tokens and the highest-scored of the
 * rest, {@code budget} in all; decode steps keep evicting (the paper's per-step variant). Scores are summed
 * over a KV head's q-heads, as the authors' current code does.
 *
 * <p>Decode steps read the probabilities from the attention (probSums); prefill chunks need each row's own
 * weight, so their rows are scored separately with {@code Backend.queryKeyScores}.
 */
public final class A2sfPolicy extends BudgetedPolicy {
    private final float alpha;
    private AttentionStats stats;
    private float[][] raw, add;
    private boolean added;

    public A2sfPolicy(String spec, Budget budget, Budget recent, int sink, float alpha) {
        super(spec, budget, recent, sink);
        this.alpha = alpha;
    }

    @Override
    protected boolean attentionScores() { return true; }

    @Override
    protected void reset() {
        super.reset();
        stats = new AttentionStats(null, new float[kvHeads][capacity], 0);
        raw = new float[heads][capacity];
        add = new float[kvHeads][capacity];
    }

    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        added = false;
        if (n == 1) return; // one row: the attention's probabilities serve
        for (float[] a : add) java.util.Arrays.fill(a, 0f);
        for (int r = 0; r < n; r++) {
            backend.queryKeyScores(raw, q, r, positions[r], c, layer);
            float w = (float) Math.pow(alpha, n - 1 - r);
            for (int h = 0; h < heads; h++) addSoftmax(raw[h], c.highWater(layer, h / group), w, add[h / group]);
        }
        added = true;
    }

    @Override
    public AttentionStats stats(KvCache c, int layer, int n) {
        if (n != 1) return null;
        stats.fromRow = 0;
        stats.clear();
        return stats;
    }

    @Override
    public void afterAttention(KvCache c, int layer, int n, AttentionStats s) {
        if (added) accumulate(layer, add, (float) Math.pow(alpha, n));
        else if (s != null) accumulate(layer, s.probSums, alpha);
    }
}
