package dev.tokenpress.kv.policy;

import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;

/**
 * H2O (heavy-hitter oracle), the authors' real-drop cache: every attention call adds its post-softmax
 * probabilities, summed over the query rows, to a per-token score (new tokens start with their own column
 * sums); when the cache holds more than {@code budget} tokens it keeps the newest {@code recent} tokens plus
 * the (budget - recent) highest-scored older ones. Scores are per KV head: the probabilities of the group's
 * q-heads are summed (the reference is MHA-only).
 */
public final class H2OPolicy extends BudgetedPolicy {
    private AttentionStats stats;

    public H2OPolicy(String spec, Budget budget, Budget recent) {
        super(spec, budget, recent, 0);
    }

    @Override
    protected boolean attentionScores() { return true; }

    @Override
    protected void reset() {
        super.reset();
        stats = new AttentionStats(null, new float[kvHeads][capacity], 0);
    }

    @Override
    public AttentionStats stats(KvCache c, int layer, int n) {
        stats.fromRow = 0;
        stats.clear();
        return stats;
    }

    @Override
    public void afterAttention(KvCache c, int layer, int n, AttentionStats s) {
        if (s == null) return;
        accumulate(layer, s.probSums, 1f);
    }
}
