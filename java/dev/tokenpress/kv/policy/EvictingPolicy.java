package dev.tokenpress.kv.policy;

import dev.tokenpress.kv.KvCacheFullException;

import java.util.Arrays;

/**
 * Base of the policies that free slots. Before each append ({@link #onBeforeAppend}) every (layer, KV head)
 * is brought down to {@link #keepBefore} tokens by freeing the lowest-scored unprotected slots: protected are
 * the sink tokens (positions below {@link #sinkCount}) and the newest {@link #protectRecent} tokens already in
 * the cache. Eviction is per KV head: heads of one layer may keep different tokens. Inside a prefill only what
 * the cache cannot hold is evicted unless {@link #budgetDuringPrefill()}.
 */
public abstract class EvictingPolicy extends BasePolicy {

    /** [layer][kvHead][slot] eviction score (higher = keep), for scored policies; null for positional ones. */
    protected float[][][] score;

    protected EvictingPolicy(String spec) {
        super(spec);
    }

    @Override
    public Kind kind() { return Kind.EVICTION; }

    /** Whether the policy ranks tokens by a score (else the oldest unprotected token goes first). */
    protected boolean scored() { return true; }

    @Override
    protected void reset() {
        score = scored() ? new float[layers][kvHeads][capacity] : null;
    }

    /** Tokens (layer, head) may keep before n new ones are appended; Integer.MAX_VALUE = no eviction now. */
    protected abstract int keepBefore(int layer, int head, int n);

    /** Positions below this are never evicted. */
    protected int sinkCount() { return 0; }

    /** The newest this-many tokens already in the cache are never evicted before n new ones are appended. */
    protected abstract int protectRecent(int n);

    /** A slot of (layer, head) that is never a candidate (-1 = none). */
    protected int excluded(int layer, int head) { return -1; }

    /** Called with the slots about to be freed from (layer, head), before they are freed. */
    protected void onEvict(int layer, int head, int[] victims) {}

    /** Extra slots the policy needs free after eviction besides the n appended ones (a compensation token). */
    protected int reserve(int layer, int head) { return 0; }

    /**
     * Whether prompt chunks are evicted down to the budget too. False (the default) follows the references
     * that run the whole prompt densely and compress afterwards: inside a prefill only what the cache cannot
     * hold is evicted, and the first decode step brings the cache down to the budget.
     */
    protected boolean budgetDuringPrefill() { return false; }

    @Override
    protected void onBeforeAppend(int[] positions, int n) {
        int recentFrom = callStart - Math.max(0, protectRecent(n));
        for (int l = 0; l < layers; l++)
            for (int g = 0; g < kvHeads; g++) {
                int keep = keepBefore(l, g, n);
                if (keep == Integer.MAX_VALUE) continue;
                int room = capacity - n - reserve(l, g);
                keep = Math.max(0, inPrefill && !budgetDuringPrefill() ? room : Math.min(keep, room));
                int occ = cache.occupied(l, g);
                if (occ > keep) evict(l, g, victims(l, g, occ - keep, recentFrom));
                if (cache.occupied(l, g) + n + reserve(l, g) > capacity)
                    throw new KvCacheFullException("KV cache of " + capacity + " slots per head cannot hold the tokens --kv "
                            + spec() + " protects plus " + n + " new ones (layer " + l + "): raise the context size (-c) or lower the policy's recent window/budget");
            }
    }

    /** Frees the given slots of (layer, head) and clears their scores. */
    protected void evict(int layer, int head, int[] victims) {
        if (victims.length == 0) return;
        onEvict(layer, head, victims);
        for (int s : victims) {
            cache.free(layer, head, s);
            if (score != null) score[layer][head][s] = 0f;
        }
    }

    /**
     * Up to m unprotected slots of (layer, head) with the lowest scores (ties and unscored: oldest first);
     * candidates have positions in [sinkCount, recentFrom).
     */
    protected int[] victims(int layer, int head, int m, int recentFrom) {
        int[] pos = cache.positions(layer, head);
        int hw = cache.highWater(layer, head), sinks = sinkCount(), skip = excluded(layer, head);
        float[] sc = score == null ? null : score[layer][head];
        int[] cand = new int[hw];
        int c = 0;
        for (int s = 0; s < hw; s++) {
            int p = pos[s];
            if (p >= sinks && p < recentFrom && s != skip) cand[c++] = s;
        }
        if (c <= m) return Arrays.copyOf(cand, c);
        if (m == 1) { // the common decode case: one linear scan
            int best = cand[0];
            for (int i = 1; i < c; i++) if (before(cand[i], best, sc, pos)) best = cand[i];
            return new int[]{best};
        }
        Integer[] boxed = new Integer[c];
        for (int i = 0; i < c; i++) boxed[i] = cand[i];
        Arrays.sort(boxed, (a, b) -> before(a, b, sc, pos) ? -1 : before(b, a, sc, pos) ? 1 : 0);
        int[] out = new int[m];
        for (int i = 0; i < m; i++) out[i] = boxed[i];
        return out;
    }

    /** Slot a is evicted before slot b: lower score, or equal score and older. */
    private static boolean before(int a, int b, float[] sc, int[] pos) {
        if (sc != null && sc[a] != sc[b]) return sc[a] < sc[b];
        return pos[a] < pos[b];
    }

    /**
     * Adds this call's per-slot contribution add[g][slot] to the scores of {@code layer}: the call's new tokens
     * (positions >= callStart) start from it, older tokens are first multiplied by {@code decay}.
     */
    protected void accumulate(int layer, float[][] add, float decay) {
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = cache.positions(layer, g);
            float[] sc = score[layer][g], a = add[g];
            for (int s = 0, hw = cache.highWater(layer, g); s < hw; s++) {
                int p = pos[s];
                if (p < 0) sc[s] = 0f;
                else if (p >= callStart) sc[s] = a[s];
                else sc[s] = decay * sc[s] + a[s];
            }
        }
    }
}
