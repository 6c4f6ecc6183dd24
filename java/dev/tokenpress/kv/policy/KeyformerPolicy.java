package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;

import java.util.Arrays;
import java.util.SplittableRandom;

/**
 * Keyformer: the score of a token accumulates a Gumbel-softmax of the raw attention logits,
 * softmax((q·k/sqrt(hd) + g) / tau) with g ~ Gumbel(0, 1), over every query row; tau rises linearly from
 * {@code tau_init} at the prompt to {@code tau_end} after {@code steps} decode steps. Attention sees
 * {@code budget} tokens: the newest {@code recent} and the highest-scored of the rest (key tokens). The
 * attention output itself uses the normal softmax. Scores are per KV head (the group's q-heads summed); the
 * Gumbel noise comes from a seeded generator, so runs repeat.
 *
 * <p>Decode steps take the raw logits from the attention (rawScores); prefill chunks score each row with
 * {@code Backend.queryKeyScores}.
 */
public final class KeyformerPolicy extends EvictingPolicy {
    private final Budget budget;
    private final Budget recent;
    private final double tauInit, tauEnd;
    private final int steps;
    private final long seed;
    private SplittableRandom rng;
    private AttentionStats stats;
    private float[][] raw, add;
    private float[] row;
    private boolean added;
    private int scheduleSteps;

    /** @param steps decode steps over which tau goes from tauInit to tauEnd; 0 = the context left after the prompt */
    public KeyformerPolicy(String spec, Budget budget, Budget recent, double tauInit, double tauEnd, int steps, long seed) {
        super(spec);
        this.budget = budget;
        this.recent = recent;
        this.tauInit = tauInit;
        this.tauEnd = tauEnd;
        this.steps = steps;
        this.seed = seed;
    }

    @Override
    protected void reset() {
        super.reset();
        rng = new SplittableRandom(seed);
        stats = new AttentionStats(new float[heads][capacity], null, 0);
        raw = new float[heads][capacity];
        add = new float[kvHeads][capacity];
        row = new float[capacity];
        scheduleSteps = steps > 0 ? steps : Math.max(1, capacity);
    }

    @Override
    protected void onEndPrefill() {
        if (steps == 0) scheduleSteps = Math.max(1, capacity - seqLen);
    }

    /** The temperature of the current call: the prompt is step 0. */
    double tau() {
        int step = inPrefill ? 0 : decodeSteps;
        double t = tauInit + step * (tauEnd - tauInit) / scheduleSteps;
        return tauEnd >= tauInit ? Math.min(t, tauEnd) : Math.max(t, tauEnd);
    }

    private int budgetNow() { return Math.max(1, budget.tokens(seqLen)); }

    @Override
    protected int keepBefore(int layer, int head, int n) { return Math.max(0, budgetNow() - n); }

    @Override
    protected int protectRecent(int n) { return Math.max(0, Math.min(budgetNow(), recent.of(budgetNow())) - n); }

    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        added = false;
        if (n == 1) return;
        for (float[] a : add) Arrays.fill(a, 0f);
        double tau = tau();
        for (int r = 0; r < n; r++) {
            backend.queryKeyScores(raw, q, r, positions[r], c, layer);
            for (int h = 0; h < heads; h++) addGumbel(raw[h], c.highWater(layer, h / group), tau, add[h / group]);
        }
        added = true;
    }

    @Override
    public AttentionStats stats(KvCache c, int layer, int n) {
        if (n != 1) return null;
        stats.clear();
        return stats;
    }

    @Override
    public void afterAttention(KvCache c, int layer, int n, AttentionStats s) {
        if (!added) {
            if (s == null) return;
            for (float[] a : add) Arrays.fill(a, 0f);
            double tau = tau();
            for (int h = 0; h < heads; h++) addGumbel(s.rawScores[h], c.highWater(layer, h / group), tau, add[h / group]);
        }
        accumulate(layer, add, 1f);
    }

    /** acc[s] += softmax((raw[s]/sqrt(hd) + g_s) / tau) over the finite entries of raw[0, len). */
    private void addGumbel(float[] rawRow, int len, double tau, float[] acc) {
        double scale = 1.0 / Math.sqrt(headDim);
        double max = Double.NEGATIVE_INFINITY;
        for (int s = 0; s < len; s++) {
            if (rawRow[s] == Float.NEGATIVE_INFINITY) continue;
            double u = ((rng.nextLong() >>> 11) + 0.5) * 0x1.0p-53;    // (0, 1)
            double v = (rawRow[s] * scale - Math.log(-Math.log(u))) / tau;
            row[s] = (float) v;
            if (v > max) max = v;
        }
        if (max == Double.NEGATIVE_INFINITY) return;
        double sum = 0;
        for (int s = 0; s < len; s++) if (rawRow[s] != Float.NEGATIVE_INFINITY) sum += Math.exp(row[s] - max);
        for (int s = 0; s < len; s++)
            if (rawRow[s] != Float.NEGATIVE_INFINITY) acc[s] += (float) (Math.exp(row[s] - max) / sum);
    }
}
