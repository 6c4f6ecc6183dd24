package dev.tokenpress.kv.policy;

/**
 * An evicting policy with the common budget shape: {@code budget} tokens kept (a count or a ratio of the sequence
 * before the call), of which the newest {@code recent} (a count or a ratio of the budget) and the first {@code sink}
 * positions are never evicted; the rest go by the subclass's scores.
 */
abstract class BudgetedPolicy extends EvictingPolicy {
    protected final Budget budget;
    protected final Budget recent;
    protected final int sink;

    protected BudgetedPolicy(String spec, Budget budget, Budget recent, int sink) {
        super(spec);
        this.budget = budget;
        this.recent = recent;
        this.sink = sink;
    }

    /** The budget for the call in progress (at least one token). */
    protected int budgetNow() { return Math.max(1, budget.tokens(callStart)); }

    @Override
    protected int keepBefore(int layer, int head, int n) { return budgetNow(); }

    @Override
    protected int sinkCount() { return sink; }

    @Override
    protected int protectRecent(int n) { return Math.min(budgetNow(), recent.of(budgetNow())); }
}
