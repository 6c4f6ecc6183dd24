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
 * attention output itself uses the normal softmax. Scores are per KV head (the group's q-heads summed, in head
 * order); the Gumbel noise of a (layer, q-head, query position) comes from its own generator, seeded from
 * {@code seed} and those three, so runs repeat and the heads can be scored on several host threads
 * ({@code Backend.hostParallel}) with the same result.
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
    private AttentionStats stats;
    private float[][] raw, add;
    private float[][] probs;   // [heads][capacity]: one call's Gumbel-softmax per q-head
    private double[][] work;   // [heads][capacity]: its logits, then exponentials
    private boolean[] scored;  // [heads]: whether the call's Gumbel-softmax of the head was written
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
        stats = new AttentionStats(new float[heads][capacity], null, 0);
        raw = new float[heads][capacity];
        add = new float[kvHeads][capacity];
        probs = new float[heads][capacity];
        work = new double[heads][capacity];
        scored = new boolean[heads];
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
            addGumbel(raw, c, layer, positions[r], tau);
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
            addGumbel(s.rawScores, c, layer, callStart + n - 1, tau());
        }
        accumulate(layer, add, 1f);
    }

    /**
     * add[g][s] += softmax((raw[h][s]/sqrt(hd) + g) / tau) over the finite entries of raw[h][0, highWater) for every
     * q-head h of KV head g, the heads in order; the noise of (layer, h) for the query at {@code position}.
     */
    private void addGumbel(float[][] rawRows, KvCache c, int layer, int position, double tau) {
        backend.hostParallel(heads, h -> scored[h] = gumbelSoftmax(rawRows[h], c.highWater(layer, h / group), tau,
                noise(layer, h, position), work[h], probs[h]));
        for (int h = 0; h < heads; h++) {
            if (!scored[h]) continue; // nothing finite to score (e.g. every visible score NaN)
            float[] rawRow = rawRows[h], p = probs[h], acc = add[h / group];
            for (int s = 0, len = c.highWater(layer, h / group); s < len; s++)
                if (rawRow[s] != Float.NEGATIVE_INFINITY) acc[s] += p[s];
        }
    }

    /** The Gumbel noise generator of (layer, q-head, query position): independent of the order heads are scored in. */
    private SplittableRandom noise(int layer, int head, int position) {
        long k = seed;
        k = mix(k ^ (0x9E3779B97F4A7C15L * (layer + 1)));
        k = mix(k ^ (0xC2B2AE3D27D4EB4FL * (head + 1)));
        k = mix(k ^ (0x165667B19E3779F9L * ((long) position + 1)));
        return new SplittableRandom(k);
    }

    /** A 64-bit finalizer (MurmurHash3's fmix64). */
    private static long mix(long z) {
        z = (z ^ (z >>> 33)) * 0xFF51AFD7ED558CCDL;
        z = (z ^ (z >>> 33)) * 0xC4CEB9FE1A85EC53L;
        return z ^ (z >>> 33);
    }

    /**
     * out[s] = softmax((raw[s]/sqrt(hd) + g_s) / tau) over the finite entries of raw[0, len) (others untouched);
     * v: scratch of at least len. Returns false, writing nothing, when no entry gives a finite logit.
     */
    private boolean gumbelSoftmax(float[] rawRow, int len, double tau, SplittableRandom rng, double[] v, float[] out) {
        double scale = 1.0 / Math.sqrt(headDim);
        double max = Double.NEGATIVE_INFINITY;
        for (int s = 0; s < len; s++) {
            if (rawRow[s] == Float.NEGATIVE_INFINITY) continue;
            double u = ((rng.nextLong() >>> 11) + 0.5) * 0x1.0p-53;    // (0, 1)
            double x = (rawRow[s] * scale - Math.log(-Math.log(u))) / tau;
            v[s] = x;
            if (x > max) max = x;
        }
        if (max == Double.NEGATIVE_INFINITY) return false;
        double sum = 0;
        for (int s = 0; s < len; s++)
            if (rawRow[s] != Float.NEGATIVE_INFINITY) sum += v[s] = Math.exp(v[s] - max);
        for (int s = 0; s < len; s++)
            if (rawRow[s] != Float.NEGATIVE_INFINITY) out[s] = (float) (v[s] / sum);
        return true;
    }
}
