package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.cpu.HostMath;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;

/**
 * SnapKV: prompt compression once, when the prefill ends. The last {@code window} prompt tokens form the
 * observation window; their queries' post-softmax probabilities over the older prompt tokens are summed
 * (per KV head: also over the group's q-heads), smoothed with a 1-D pooling of width {@code kernel} (stride 1,
 * padding kernel/2: max pooling, or average pooling that counts the padding), and the (budget - window)
 * best older tokens are kept with the window. Nothing is compressed when the prompt holds at most
 * {@code budget} tokens, and decoding appends without eviction, as in the paper. With a pyramid ({@code pyramidkv},
 * or {@code snapkv:pyramid=BETA}) layer l keeps its own budget, the window plus a share of (budget - window) that
 * falls linearly with depth (PyramidKV; kvpress's PyramidKVPress), the mean over the layers staying the budget.
 */
public final class SnapKvPolicy extends EvictingPolicy {
    private final Budget budget;
    private final int window, kernel;
    private final boolean maxPool;
    private AttentionStats[] prompt; // per layer: probabilities of the observation-window rows, accumulated over chunks
    private int windowStart;
    private double critical = -1;    // CriticalKV's first-stage share; negative = off
    /** CriticalKV's epsilon, added to the mean vote before it is weighted by the projected value norm (kvpress's). */
    static final double CRITICAL_EPS = 1e-4;

    public SnapKvPolicy(String spec, Budget budget, int window, int kernel, boolean maxPool) {
        super(spec);
        this.budget = budget;
        this.window = window;
        this.kernel = kernel;
        this.maxPool = maxPool;
    }

    /**
     * CriticalKV (Feng et al., arXiv 2502.03805; kvpress's CriticalKVPress around SnapKVPress): of the older tokens a head
     * keeps, the share {@code firstStage} (rounded down) goes by the pooled vote alone; the rest by the vote (as a mean
     * over the window's rows and the group's q-heads, plus {@link #CRITICAL_EPS}) times the token's projected value norm,
     * the mean over the group's q-heads h of |v·W_o[h]|₁ (W_o's columns of head h). Returns this.
     */
    public SnapKvPolicy critical(double firstStage) {
        if (!(firstStage >= 0 && firstStage <= 1)) throw new IllegalArgumentException("critical must lie in [0, 1], got " + firstStage);
        this.critical = firstStage;
        return this;
    }

    @Override
    protected boolean scored() { return false; }

    @Override
    protected boolean chunks() { return true; }

    @Override
    protected boolean adaptive() { return true; }

    @Override
    protected void reset() {
        super.reset();
        prompt = new AttentionStats[layers];
    }

    @Override
    protected int keepBefore(int layer, int head, int n) { return Integer.MAX_VALUE; }

    @Override
    protected int protectRecent(int n) { return 0; }

    @Override
    protected void onBeginPrefill() {
        windowStart = prefillStart + prefillTotal - window;
        for (AttentionStats s : prompt) if (s != null) s.clear();
    }

    @Override
    public AttentionStats stats(KvCache c, int layer, int n) {
        if (!inPrefill) return null;
        int last = callStart + n - 1;
        if (last < windowStart) return null;
        if (prompt[layer] == null) prompt[layer] = new AttentionStats(null, new float[kvHeads][capacity], 0);
        prompt[layer].fromRow = Math.max(0, windowStart - callStart);
        return prompt[layer];
    }

    @Override
    protected void onEndPrefill() {
        if (leavesThisPrompt()) {
            for (AttentionStats st : prompt) if (st != null) st.clear();
            return;
        }
        int keepTotal = Math.max(1, budget.tokens(seqLen));
        for (int l = 0; l < layers; l++) {
            if (prompt[l] == null) continue;
            int keepLayer = Math.max(1, layerBudget(l, keepTotal, window, seqLen));  // PyramidKV: per-layer budgets
            if (shaping().chunk() > 0) {
                evictChunksByVotes(l, keepLayer);
                prompt[l].clear();
                continue;
            }
            float[] wo = critical >= 0 ? outputProjection(l) : null;
            int[][] bySlots = new int[kvHeads][];
            float[][] pooledOf = new float[kvHeads][];
            int[] keepOf = new int[kvHeads];
            for (int g = 0; g < kvHeads; g++) {
                if (cache.occupied(l, g) <= keepLayer) continue;
                int[] bySlot = slotsByPosition(l, g);
                int old = 0; // tokens before the observation window
                int[] pos = cache.positions(l, g);
                while (old < bySlot.length && pos[bySlot[old]] < windowStart) old++;
                int keepOld = Math.max(0, keepLayer - (bySlot.length - old));
                if (old <= keepOld) continue;
                float[] vote = new float[old];
                for (int i = 0; i < old; i++) vote[i] = prompt[l].probSums[g][bySlot[i]];
                bySlots[g] = bySlot;
                pooledOf[g] = pool(vote);
                keepOf[g] = keepOld;
            }
            if (shaping().ada() >= 0) adaBudgets(pooledOf, keepOf, shaping().ada());
            for (int g = 0; g < kvHeads; g++) {
                if (bySlots[g] == null) continue;
                int[] bySlot = bySlots[g];
                float[] pooled = pooledOf[g];
                int old = pooled.length, keepOld = keepOf[g];
                if (old <= keepOld) continue;
                int[] victims = new int[old - keepOld];
                boolean[] keep = new boolean[old];
                if (wo != null) criticalKeep(l, g, wo, bySlot, pooled, keepOld, keep);
                else for (int i : topIndices(pooled, keepOld)) keep[i] = true;
                int v = 0;
                for (int i = 0; i < old; i++) if (!keep[i]) victims[v++] = bySlot[i];
                evict(l, g, victims);
            }
            prompt[l].clear();
        }
        rerotatePrompt();
    }

    /**
     * ChunkKV over SnapKV's votes (kvpress's ChunkKVPress around SnapKVPress): the tokens before the observation window,
     * in position order, form chunks of {@code chunk}; a chunk's score is the mean of the pooled votes summed over the
     * layer's KV heads; the lowest chunks go whole (older first on ties) until the layer holds at most its budget, the
     * same tokens from every head.
     */
    private void evictChunksByVotes(int l, int keepLayer) {
        if (cache.occupied(l, 0) <= keepLayer) return;
        int[] bySlot = slotsByPosition(l, 0);
        int[] pos0 = cache.positions(l, 0);
        int old = 0;
        while (old < bySlot.length && pos0[bySlot[old]] < windowStart) old++;
        int need = cache.occupied(l, 0) - keepLayer;
        if (old == 0 || need <= 0) return;
        double[] sum = new double[old];
        int[] positions = new int[old];
        for (int i = 0; i < old; i++) positions[i] = pos0[bySlot[i]];
        for (int g = 0; g < kvHeads; g++) {
            int[] slots = slotsByPosition(l, g), pos = cache.positions(l, g);
            float[] vote = new float[old];
            for (int i = 0; i < old; i++) {
                if (pos[slots[i]] != positions[i])
                    throw new IllegalStateException("chunk: the heads of layer " + l + " hold different prompt tokens");
                vote[i] = prompt[l].probSums[g][slots[i]];
            }
            float[] pooled = pool(vote);
            for (int i = 0; i < old; i++) sum[i] += pooled[i];
        }
        evictLowestChunks(l, positions, sum, old, shaping().chunk(), need);
    }

    /**
     * AdaKV over SnapKV's votes (kvpress's AdaKVPress around SnapKVPress; with {@code critical}, its CriticalAdaKVPress):
     * the heads being cut share the sum of their budgets; each keeps its ceil(alpha · budget) best-voted older tokens,
     * the rest of the shared budget goes to the best votes across the heads (ties: lower head, then older token); keep[g]
     * becomes each head's share, which the head then fills by vote (or by CriticalKV's two stages).
     */
    static void adaBudgets(float[][] votes, int[] keep, double alpha) {
        int heads = votes.length, total = 0, n = 0;
        if (heads > 255) throw new IllegalArgumentException("ada: more than 255 KV heads per layer");
        for (int g = 0; g < heads; g++)
            if (votes[g] != null) {
                total += keep[g];
                n += votes[g].length;
            }
        long[] order = new long[n];
        int m = 0;
        int[] share = new int[heads];
        for (int g = 0; g < heads; g++) {
            if (votes[g] == null) continue;
            int safe = (int) Math.min(votes[g].length, Math.ceil(alpha * keep[g] - 1e-9));
            boolean[] sure = new boolean[votes[g].length];
            for (int i : topIndices(votes[g], safe)) sure[i] = true;
            share[g] = safe;
            total -= safe;
            if (votes[g].length >= 1 << 24) throw new IllegalArgumentException("ada: more than 2^24 prompt tokens");
            for (int i = 0; i < votes[g].length; i++) // the rest compete: the highest vote first, ties in (head, token) order
                if (!sure[i]) order[m++] = ((long) ~EvictingPolicy.orderKey(votes[g][i]) << 32) | ((long) g << 24) | i;
        }
        java.util.Arrays.sort(order, 0, m);
        for (int j = 0; j < Math.min(total, m); j++) share[(int) (order[j] >>> 24 & 0xFF)]++;
        for (int g = 0; g < heads; g++) if (votes[g] != null) keep[g] = share[g];
    }

    /** W_o [D, H*hd] of layer l on the host (CriticalKV). */
    private float[] outputProjection(int l) {
        dev.tokenpress.backend.Tensor w = model.weights().layers()[l].wo();
        float[] out = new float[Math.multiplyExact(w.rows(), w.cols())];
        backend.weightRows(w, 0, w.rows(), out);
        return out;
    }

    /**
     * CriticalKV's two stages over the older tokens i of (l, g) (slots bySlot[i], pooled votes): the first
     * floor(keepOld · critical) by vote, then the best by (vote / (rows · group) + eps) · projected value norm.
     */
    private void criticalKeep(int l, int g, float[] wo, int[] bySlot, float[] pooled, int keepOld, boolean[] keep) {
        int old = pooled.length, first = (int) Math.floor(keepOld * critical + 1e-9);
        for (int i : topIndices(pooled, first)) keep[i] = true;
        int rest = keepOld - first;
        if (rest <= 0) return;
        float[] norms = projectedNorms(l, g, wo, bySlot, old);
        double rows = (double) Math.min(window, prefillTotal) * group;
        float[] second = new float[old];
        for (int i = 0; i < old; i++)
            second[i] = keep[i] ? Float.NEGATIVE_INFINITY : (float) ((pooled[i] / rows + CRITICAL_EPS) * norms[i]);
        for (int i : topIndices(second, rest)) keep[i] = true;
    }

    /** Mean over the group's q-heads h of |v·W_o[h]|₁ for the values in slots bySlot[0, n) of (l, g). */
    float[] projectedNorms(int l, int g, float[] wo, int[] bySlot, int n) {
        int hd = headDim, width = heads * hd, d = wo.length / width;
        float[] keys = new float[cache.highWater(l, g) * hd], values = new float[keys.length];
        backend.readKvHead(cache, l, g, keys, values);
        float[] out = new float[n];
        backend.hostParallel((n + 63) / 64, b -> {
            for (int i = b * 64; i < Math.min(n, b * 64 + 64); i++) {
                double sum = 0;
                for (int h = g * group; h < (g + 1) * group; h++)
                    for (int r = 0; r < d; r++) sum += Math.abs(HostMath.dot(values, bySlot[i] * hd, wo, r * width + h * hd, hd));
                out[i] = (float) (sum / group);
            }
        });
        return out;
    }

    /** 1-D pooling with stride 1 and padding kernel/2 (max: padding never wins; avg: padding counts as 0). */
    float[] pool(float[] x) {
        int n = x.length, pad = kernel / 2;
        float[] out = new float[n];
        for (int i = 0; i < n; i++) {
            float acc = maxPool ? Float.NEGATIVE_INFINITY : 0f;
            for (int j = i - pad; j <= i + pad; j++) {
                if (j < 0 || j >= n) continue;
                acc = maxPool ? Math.max(acc, x[j]) : acc + x[j];
            }
            out[i] = maxPool ? acc : acc / kernel;
        }
        return out;
    }

    /** Indices of the k largest values, largest first (ties: lower index; {@link TopK}). */
    static int[] topIndices(float[] x, int k) {
        return TopK.largest(x, k);
    }
}
