package dev.tokenpress.kv.policy;

/**
 * Random eviction (kvpress's RandomPress), the baseline a scoring policy has to beat: every token gets a score drawn
 * uniformly from [0, 1) by a hash of (seed, layer, KV head, position), so a run is reproducible, a token keeps its
 * score while it is cached, and heads and layers keep independent tokens. Optional sinks and a recent window are
 * protected (kvpress has neither: the defaults are 0).
 */
public final class RandomPolicy extends BudgetedPolicy {
    private final long seed;

    public RandomPolicy(String spec, Budget budget, Budget recent, int sink, long seed) {
        super(spec, budget, recent, sink);
        this.seed = seed;
    }

    @Override
    protected void beforeEviction(int layer) {
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = cache.positions(layer, g);
            float[] sc = score[layer][g];
            for (int s = 0, hw = cache.highWater(layer, g); s < hw; s++)
                if (pos[s] >= 0) sc[s] = uniform(seed, layer, g, pos[s]);
        }
    }

    /** A uniform float in [0, 1) from (seed, layer, head, position): SplitMix64's finalizer over a mixed key. */
    static float uniform(long seed, int layer, int head, int position) {
        long z = seed + 0x9E3779B97F4A7C15L * (1 + (((long) layer << 42) ^ ((long) head << 32) ^ (position & 0xFFFFFFFFL)));
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        z ^= z >>> 31;
        return (z >>> 40) * 0x1.0p-24f;
    }
}
