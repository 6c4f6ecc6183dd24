package dev.tokenpress.kv.policy;

import dev.tokenpress.kv.KvCacheFullException;

import java.util.Arrays;

/**
 * Base of the policies that free slots. Before each append ({@link #onBeforeAppend}) every (layer, KV head)
 * is brought down to {@link #keepBefore} tokens by freeing the lowest-scored unprotected slots: protected are
 * the sink tokens (positions below {@link #sinkCount}) and the newest {@link #protectRecent} tokens already in
 * the cache. Eviction is per KV head: heads of one layer may keep different tokens. Inside a prefill only what
 * the cache cannot hold is evicted unless {@link #budgetDuringPrefill()}.
 *
 * <p>{@link Shaping} changes when and where the budget applies, for the policies that declare its keys:
 * {@code interval} (kvpress's DecodingPress: let the cache grow {@code interval} tokens past the budget, then evict
 * down to it in one go, so a costly scorer runs once per interval), {@code pyramid} (PyramidKV: lower layers keep
 * more, upper layers less, the same total) and {@code ada} (AdaKV: the layer's budget is shared by its KV heads,
 * the lowest scores across heads go first, each head keeping at least the fraction {@code ada} of its budget) and
 * {@code chunk} (ChunkKV: tokens go in runs of {@code chunk} consecutive positions, ranked by their mean score summed
 * over the layer's KV heads, and every head of a layer keeps the same tokens).
 */
public abstract class EvictingPolicy extends BasePolicy {

    /** [layer][kvHead][slot] eviction score (higher = keep), for scored policies; null for positional ones. */
    protected float[][][] score;

    /**
     * When and where the budget applies (the keys {@code interval}, {@code pyramid}, {@code ada} and {@code chunk} of a spec).
     *
     * @param interval a head grows to budget + interval tokens, then is cut back to the budget (kvpress's DecodingPress:
     *                 every interval steps); 0 = every call
     * @param pyramid  PyramidKV's beta (>= 1): layer l keeps w + round(max - l * (max - min) / (L - 1)) tokens, with w
     *                 the protected tokens, min = (B - w) / beta and max = 2 (B - w) - min (capped at the tokens there
     *                 are, min raised to keep the mean); 0 = every layer keeps B
     * @param ada      AdaKV's safeguard alpha in [0, 1]: the KV heads of a layer share heads * B slots, the lowest
     *                 scores across the heads are evicted first, each head keeps at least ceil(alpha * B) tokens;
     *                 negative = off (every head keeps B)
     * @param chunk    ChunkKV's chunk length: the unprotected tokens of a layer, in position order, form chunks of
     *                 this many (the last may be shorter); a chunk's score is the mean over its tokens of the score
     *                 summed over the layer's KV heads; the lowest-scored chunks go whole (older first on ties) until
     *                 the layer is within budget, so a cut may free up to chunk - 1 tokens more than needed; every
     *                 head keeps the same tokens; 0 = off
     * @param once     compress once per prompt, as kvpress's presses do: the first decode step after a prefill cuts to the
     *                 budget (the interval does not apply), later steps append without eviction (only what the cache
     *                 cannot hold goes); false = at every step as above
     */
    public record Shaping(int interval, double pyramid, double ada, int chunk, boolean once) {
        public static final Shaping NONE = new Shaping(0, 0, -1, 0, false);

        public Shaping(int interval, double pyramid, double ada) {
            this(interval, pyramid, ada, 0, false);
        }

        public Shaping(int interval, double pyramid, double ada, int chunk) {
            this(interval, pyramid, ada, chunk, false);
        }
    }

    private Shaping shaping = Shaping.NONE;

    /** Sets how the budget is applied; returns this. */
    public EvictingPolicy shaping(Shaping s) {
        if (s.ada() >= 0 && !adaptive()) throw new IllegalArgumentException("ada needs a scored policy");
        if (s.chunk() > 0 && !chunks()) throw new IllegalArgumentException("chunk needs a scored policy");
        if (s.chunk() > 0 && s.ada() >= 0) throw new IllegalArgumentException("chunk and ada exclude each other (chunk keeps the same tokens in every head)");
        this.shaping = s;
        return this;
    }

    public Shaping shaping() { return shaping; }

    /** The interval the cuts use: none when the prompt is cut once (its one cut goes straight to the budget). */
    private int interval() { return shaping.once() ? 0 : shaping.interval(); }

    protected EvictingPolicy(String spec) {
        super(spec);
    }

    @Override
    public Kind kind() { return Kind.EVICTION; }

    /** Whether the policy ranks tokens by a score (else the oldest unprotected token goes first). */
    protected boolean scored() { return true; }

    /** Whether the policy can share a layer's budget among its heads ({@link Shaping#ada}): scored ones, and SnapKV with its votes. */
    protected boolean adaptive() { return scored(); }

    /** Whether the policy can evict whole chunks ({@link Shaping#chunk}): scored ones, and SnapKV with its votes. */
    protected boolean chunks() { return scored(); }

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

    /**
     * Called once per layer and eviction, before the victims of the layer are chosen: a policy whose scores depend on
     * the moment (they are recomputed from the cache rather than accumulated) computes them here.
     */
    protected void beforeEviction(int layer) {}

    @Override
    protected void onBeforeAppend(int[] positions, int n) {
        if (cut.length != layers * kvHeads) cut = new int[layers * kvHeads];
        else Arrays.fill(cut, 0);
        int protect = Math.max(0, protectRecent(n));
        int recentFrom = callStart - protect;
        boolean budgeted = !inPrefill && (!shaping.once() || decodeSteps == 1) || budgetDuringPrefill();
        for (int l = 0; l < layers; l++) {
            if (shaping.chunk() > 0) {
                int keep = keepBefore(l, 0, n);
                if (keep != Integer.MAX_VALUE) {
                    int room = capacity - n - reserve(l, 0);
                    keep = Math.max(0, budgeted ? Math.min(layerBudget(l, keep, protect, callStart), room) : room);
                    int occ = cache.occupied(l, 0);
                    if (occ > room || occ > keep && occ + n > keep + (budgeted ? interval() : 0)) {
                        beforeEviction(l);
                        evictChunks(l, occ - keep, recentFrom);
                    }
                    for (int g = 0; g < kvHeads; g++) checkFits(l, g, n);
                }
                continue;
            }
            if (budgeted && shaping.ada() >= 0) {
                int keep = keepBefore(l, 0, n);
                if (keep != Integer.MAX_VALUE) {
                    evictAcrossHeads(l, n, layerBudget(l, keep, protect, callStart), recentFrom);
                    continue;
                }
            }
            boolean scored = false;
            for (int g = 0; g < kvHeads; g++) {
                int keep = keepBefore(l, g, n);
                if (keep == Integer.MAX_VALUE) continue;
                int room = capacity - n - reserve(l, g);
                keep = Math.max(0, budgeted ? Math.min(layerBudget(l, keep, protect, callStart), room) : room);
                int occ = cache.occupied(l, g);
                // with an interval, the cut comes when the append would take the head past budget + interval (kvpress's
                // DecodingPress: every interval steps); without one, whenever the head holds more than its budget
                if (occ > room || occ > keep && occ + n > keep + (budgeted ? interval() : 0)) {
                    if (!scored) {
                        beforeEviction(l);
                        scored = true;
                    }
                    cut[l * kvHeads + g] = occ - keep;
                }
            }
        }
        // the victims of every (layer, head) to cut, found on the host's threads (each reads only its own head's
        // slots and scores), then freed in layer and head order, each head checked for room after its cut
        int[][] victims = new int[layers * kvHeads][];
        int[] pairs = new int[layers * kvHeads];
        int np = 0;
        for (int i = 0; i < pairs.length; i++) if (cut[i] > 0) pairs[np++] = i;
        backend.hostParallel(np, j -> {
            int i = pairs[j];
            victims[i] = victims(i / kvHeads, i % kvHeads, cut[i], recentFrom);
        });
        for (int l = 0; l < layers; l++) {
            if (shaping.chunk() > 0 || budgeted && shaping.ada() >= 0 && keepBefore(l, 0, n) != Integer.MAX_VALUE) continue;
            for (int g = 0; g < kvHeads; g++) {
                int i = l * kvHeads + g;
                if (victims[i] != null) evict(l, g, victims[i]);
                if (keepBefore(l, g, n) != Integer.MAX_VALUE) checkFits(l, g, n);
            }
        }
    }

    /** Per (layer, head): how many tokens the running {@link #onBeforeAppend} cuts (0 = none). */
    private int[] cut = new int[0];

    private void checkFits(int l, int g, int n) {
        if (cache.occupied(l, g) + n + reserve(l, g) > capacity)
            throw new KvCacheFullException("KV cache of " + capacity + " slots per head cannot hold the tokens --kv "
                    + spec() + " protects plus " + n + " new ones (layer " + l + "): raise the context size (-c) or lower the policy's recent window/budget");
    }

    /**
     * The budget of {@code layer} (PyramidKV) for a policy budget {@code keep} with {@code protect} protected recent
     * tokens, when the sequence holds {@code tokens} tokens.
     */
    protected int layerBudget(int layer, int keep, int protect, int tokens) {
        double beta = shaping.pyramid();
        if (beta <= 0 || layers < 2) return keep;
        int w = Math.min(keep, protect + Math.min(sinkCount(), tokens));
        double base = keep - w;
        if (base <= 0) return keep;
        double min = base / beta, max = 2 * base - min;
        double avail = Math.max(0, tokens - w);
        if (max > avail) {
            max = avail;
            min = 2 * base - max;
        }
        if (min < 0 || max < min) return keep;
        return (int) Math.max(0, w + Math.round(max - layer * (max - min) / (layers - 1)));
    }

    /**
     * AdaKV: the heads of {@code layer} keep {@code keep} tokens each on average; the lowest-scored unprotected
     * slots across all heads go first, but a head never drops below ceil(alpha * keep) tokens by this sharing, and
     * every head keeps room for the n new tokens.
     */
    private void evictAcrossHeads(int layer, int n, int keep, int recentFrom) {
        int total = 0;
        boolean overRoom = false;
        for (int g = 0; g < kvHeads; g++) {
            int occ = cache.occupied(layer, g);
            total += occ;
            if (occ + n + reserve(layer, g) > capacity) overRoom = true;
        }
        long target = (long) kvHeads * keep;
        if (!overRoom && (total <= target || total + (long) kvHeads * n <= target + (long) kvHeads * interval())) {
            for (int g = 0; g < kvHeads; g++) checkFits(layer, g, n);
            return;
        }
        beforeEviction(layer);
        int safe = (int) Math.ceil(shaping.ada() * keep - 1e-9);
        // every unprotected slot of the layer, ordered by (score, position) ascending: the eviction order
        int sinks = sinkCount();
        int count = 0;
        for (int g = 0; g < kvHeads; g++) count += cache.highWater(layer, g);
        long[] byPos = new long[count];
        int[] head = new int[count], slot = new int[count];
        int m = 0;
        int[] candidates = new int[kvHeads];
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = cache.positions(layer, g);
            int skip = excluded(layer, g);
            for (int s = 0, hw = cache.highWater(layer, g); s < hw; s++) {
                int p = pos[s];
                if (p < sinks || p >= recentFrom || s == skip) continue;
                head[m] = g;
                slot[m] = s;
                byPos[m] = ((long) p << 32) | m;
                m++;
                candidates[g]++;
            }
        }
        byPos = Arrays.copyOf(byPos, m);
        Arrays.sort(byPos);
        long[] order = new long[m];
        for (int i = 0; i < m; i++) {
            int e = (int) byPos[i];
            order[i] = ((long) orderKey(score[layer][head[e]][slot[e]]) << 32) | i;  // ties: older first
        }
        Arrays.sort(order);
        int[] occ = new int[kvHeads], evicted = new int[kvHeads];
        for (int g = 0; g < kvHeads; g++) occ[g] = cache.occupied(layer, g);
        boolean[] gone = new boolean[m];
        long need = Math.max(0, total - target);
        for (int pass = 0; pass < 2; pass++)
            for (int i = 0; i < m; i++) {
                int e = (int) byPos[(int) order[i]];
                int g = head[e];
                if (gone[e]) continue;
                boolean take;
                if (pass == 0) take = need > 0 && occ[g] - evicted[g] > safe && occ[g] - evicted[g] > 0;
                else take = occ[g] - evicted[g] + n + reserve(layer, g) > capacity;  // room for the new tokens
                if (!take) continue;
                gone[e] = true;
                evicted[g]++;
                if (pass == 0) need--;
            }
        for (int g = 0; g < kvHeads; g++) {
            if (evicted[g] > 0) {
                int[] v = new int[evicted[g]];
                int k = 0;
                for (int e = 0; e < m; e++) if (gone[e] && head[e] == g) v[k++] = slot[e];
                evict(layer, g, v);
            }
            checkFits(layer, g, n);
        }
    }

    /**
     * ChunkKV: frees whole chunks of the layer's unprotected tokens (runs of {@code chunk} in position order, as
     * head 0 holds them; every head holds the same positions) with the lowest mean score summed over the KV heads,
     * until at least {@code need} tokens are gone, from every head.
     */
    private void evictChunks(int layer, int need, int recentFrom) {
        if (need <= 0) return;
        int sinks = sinkCount();
        int[] pos0 = cache.positions(layer, 0);
        int hw0 = cache.highWater(layer, 0);
        long[] byPos = new long[hw0];
        int m = 0;
        for (int s = 0; s < hw0; s++) {
            int p = pos0[s];
            if (p >= sinks && p < recentFrom && s != excluded(layer, 0)) byPos[m++] = ((long) p << 32) | s;
        }
        byPos = Arrays.copyOf(byPos, m);
        Arrays.sort(byPos);
        int[] positions = new int[m];
        for (int i = 0; i < m; i++) positions[i] = (int) (byPos[i] >>> 32);
        // the score of each candidate position summed over the heads (slots looked up by position per head)
        double[] sum = new double[m];
        for (int g = 1; g < kvHeads; g++)
            if (cache.occupied(layer, g) != cache.occupied(layer, 0))
                throw new IllegalStateException("chunk: layer " + layer + " head " + g + " holds " + cache.occupied(layer, g)
                        + " tokens, head 0 " + cache.occupied(layer, 0) + " (the heads of a layer must keep the same tokens: "
                        + "start the sequence under this policy)");
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = cache.positions(layer, g);
            java.util.Map<Integer, Integer> slotOf = new java.util.HashMap<>();
            for (int s = 0, hw = cache.highWater(layer, g); s < hw; s++) if (pos[s] >= 0) slotOf.put(pos[s], s);
            for (int i = 0; i < m; i++) {
                Integer s = slotOf.get(positions[i]);
                if (s == null)
                    throw new IllegalStateException("chunk: layer " + layer + " head " + g + " lacks position " + positions[i]
                            + " that head 0 holds (the heads of a layer must keep the same tokens)");
                sum[i] += score[layer][g][s];
            }
        }
        evictLowestChunks(layer, positions, sum, m, shaping.chunk(), need);
    }

    /**
     * Frees from every KV head of {@code layer} whole chunks of {@code positions[0, m)} (runs of {@code size}, in the
     * given order) with the lowest mean of {@code sum} (ties: the older chunk first) until at least {@code need}
     * positions are gone.
     */
    protected void evictLowestChunks(int layer, int[] positions, double[] sum, int m, int size, int need) {
        int chunks = (m + size - 1) / size;
        long[] order = new long[chunks];
        for (int c = 0; c < chunks; c++) {
            int from = c * size, to = Math.min(m, from + size);
            double mean = 0;
            for (int i = from; i < to; i++) mean += sum[i];
            mean /= to - from;
            order[c] = ((long) orderKey((float) mean) << 32) | c;
        }
        Arrays.sort(order);
        java.util.Set<Integer> gone = new java.util.HashSet<>();
        for (int k = 0; k < chunks && gone.size() < need; k++) {
            int c = (int) order[k];
            for (int i = c * size, to = Math.min(m, c * size + size); i < to; i++) gone.add(positions[i]);
        }
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = cache.positions(layer, g);
            int[] v = new int[gone.size()];
            int k = 0;
            for (int s = 0, hw = cache.highWater(layer, g); s < hw; s++) if (pos[s] >= 0 && gone.contains(pos[s])) v[k++] = s;
            evict(layer, g, Arrays.copyOf(v, k));
        }
    }

    /** An int whose signed order is the float's order (-0 just below +0, NaN last). */
    static int orderKey(float f) {
        int b = Float.floatToIntBits(f);
        return b ^ ((b >> 31) & 0x7fffffff);
    }

    private int merge; // CaM's merge budget, 0 = off
    private boolean rerotate; // prompt policies: keys of the kept prompt moved to contiguous positions after the cut

    /**
     * Key rerotation (kvpress's KeyRerotationPress; FINCH): after a prompt policy cuts the first prompt of a sequence,
     * each head's kept prompt keys are rotated to contiguous positions ending at the prompt's last one, as if the dropped
     * tokens had never been there (new tokens then see the kept ones at the distances a cache of that length gives).
     * Slot positions stay (causality and the policies' bookkeeping use them); only the rotation of the stored keys moves,
     * from their original one in one step. Returns this.
     */
    public EvictingPolicy rerotate(boolean on) {
        this.rerotate = on;
        return this;
    }

    /** Whether kept prompt keys are rerotated after the cut. */
    public boolean rerotates() { return rerotate; }

    private boolean firstOnly; // prompt policies: only a sequence's first prompt is compressed

    /**
     * Prompt policies: compress only the first prompt of a sequence; later prompts (questions about a context, chat
     * turns) are appended whole, as kvpress compresses the context and not the question. Returns this.
     */
    public EvictingPolicy firstPromptOnly(boolean on) {
        this.firstOnly = on;
        return this;
    }

    /** Whether the prompt that is being prefilled is one the policy leaves whole ({@link #firstPromptOnly}). */
    protected boolean leavesThisPrompt() { return firstOnly && prefillStart > 0; }

    /**
     * Rotates the kept keys of the prompt that just ended (the first of the sequence) of every (layer, head) to the
     * contiguous positions end − k … end − 1 (k kept), values unchanged; a no-op unless {@link #rerotate(boolean)}.
     */
    protected void rerotatePrompt() {
        if (!rerotate || prefillStart != 0) return;
        int end = prefillStart + prefillTotal, hd = headDim;
        float[] key = new float[hd], value = new float[hd];
        double[] moved = new double[hd];
        for (int l = 0; l < layers; l++)
            for (int g = 0; g < kvHeads; g++) {
                int[] order = slotsByPosition(l, g), pos = cache.positions(l, g);
                int k = 0;
                while (k < order.length && pos[order[k]] < end) k++;
                for (int j = 0; j < k; j++) {
                    int s = order[j], by = end - k + j - pos[s];
                    if (by == 0) continue;
                    backend.readKv(cache, l, g, s, key, value);
                    model.rope().rotate(key, 0, by, moved);
                    for (int e = 0; e < hd; e++) key[e] = (float) moved[e];
                    backend.writeKv(cache, l, g, s, key, value);
                }
            }
    }

    /**
     * CaM (Zhang et al., ICML 2024; kvpress's CAMPress): before a token is evicted its value may be merged into the
     * {@code budget} kept tokens that follow it in the head (by position; fewer near the end), each getting value/count
     * added; the merge happens with probability min(1, A_evicted / mean A of those tokens), A the policy's accumulated
     * attention, drawn by {@link #mergeDraw}. Keys stay. Only for policies whose scores are attention masses
     * ({@link #attentionScores}); 0 turns it off. Returns this.
     */
    public EvictingPolicy merge(int budget) {
        if (budget < 0) throw new IllegalArgumentException("merge must be >= 0");
        if (budget > 0 && !attentionScores()) throw new IllegalArgumentException(spec() + ": merge needs a policy whose scores are accumulated attention");
        this.merge = budget;
        return this;
    }

    /** CaM's merge budget (0: off). */
    public int mergeBudget() { return merge; }

    /** Whether {@link #score} holds accumulated attention probabilities (what CaM's merge probability compares). */
    protected boolean attentionScores() { return false; }

    /** The eviction score of (layer, KV head, slot); 0 for a policy without scores. */
    public float scoreOf(int layer, int head, int slot) {
        return score == null ? 0f : score[layer][head][slot];
    }

    /**
     * The uniform draw in [0, 1) that decides whether the token at {@code position} of (layer, KV head) is merged when
     * evicted: a hash of the three, so a run is reproducible whatever the order of the evictions.
     */
    public static double mergeDraw(int layer, int head, int position) {
        long z = 0x9E3779B97F4A7C15L * (1 + ((long) layer << 40 ^ (long) head << 24 ^ position));
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        z ^= z >>> 31;
        return (z >>> 11) * 0x1.0p-53;
    }

    /** CaM: merges the victims' values into the kept tokens after them (see {@link #merge(int)}), before they are freed. */
    private void mergeValues(int layer, int head, int[] victims) {
        int[] order = slotsByPosition(layer, head), pos = cache.positions(layer, head);
        int[] sortedVictims = victims.clone();
        Arrays.sort(sortedVictims);
        int[] kept = new int[order.length];
        int nk = 0;
        for (int s : order) if (Arrays.binarySearch(sortedVictims, s) < 0) kept[nk++] = s;
        if (nk == 0) return;
        float[] sc = score[layer][head];
        float[] key = new float[headDim], value = new float[headDim], merged = new float[headDim];
        for (int s : order) { // the victims in position order
            if (Arrays.binarySearch(sortedVictims, s) < 0) continue;
            int lo = 0, hi = nk; // first kept token after the victim
            while (lo < hi) {
                int mid = (lo + hi) >>> 1;
                if (pos[kept[mid]] > pos[s]) hi = mid;
                else lo = mid + 1;
            }
            int count = Math.min(merge, nk - lo);
            if (count == 0) continue;
            double mean = 0;
            for (int i = lo; i < lo + count; i++) mean += sc[kept[i]];
            mean /= count;
            double p = mean > 0 ? Math.min(1, sc[s] / mean) : (sc[s] > 0 ? 1 : 0);
            if (!(mergeDraw(layer, head, pos[s]) < p)) continue;
            backend.readKv(cache, layer, head, s, key, merged);
            for (int i = lo; i < lo + count; i++) {
                backend.readKv(cache, layer, head, kept[i], key, value);
                for (int d = 0; d < headDim; d++) value[d] += merged[d] / count;
                backend.writeKv(cache, layer, head, kept[i], key, value);
            }
        }
    }

    /** Frees the given slots of (layer, head) and clears their scores (CaM merges their values first when on). */
    protected void evict(int layer, int head, int[] victims) {
        if (victims.length == 0) return;
        onEvict(layer, head, victims);
        if (merge > 0) mergeValues(layer, head, victims);
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
        if (m == 1) { // the common decode case: one pass, the first of the lowest in slot order
            int best = -1;
            for (int s = 0; s < hw; s++) {
                int p = pos[s];
                if (p >= sinks && p < recentFrom && s != skip && (best < 0 || before(s, best, sc, pos))) best = s;
            }
            return best < 0 ? new int[0] : new int[]{best};
        }
        int[] cand = new int[hw];
        int c = 0;
        for (int s = 0; s < hw; s++) {
            int p = pos[s];
            if (p >= sinks && p < recentFrom && s != skip) cand[c++] = s;
        }
        if (c <= m) return Arrays.copyOf(cand, c);
        return lowestFirst(cand, c, m, sc, pos);
    }

    /**
     * The first m of cand[0, c) in eviction order (lower score first, equal scores older first, equal positions lower
     * slot first; {@code sc} null: older first), by two primitive sorts of packed longs: (position, slot) gives each
     * candidate its age rank, then (score key, age rank) the order. O(c log c), independent of the positions' size.
     */
    static int[] lowestFirst(int[] cand, int c, int m, float[] sc, int[] pos) {
        long[] byAge = new long[c];
        for (int i = 0; i < c; i++) byAge[i] = ((long) pos[cand[i]] << 32) | cand[i]; // positions here are >= 0
        Arrays.sort(byAge);
        long[] keys = new long[c];
        for (int r = 0; r < c; r++) {
            int s = (int) byAge[r];
            keys[r] = ((long) (sc == null ? 0 : scoreKey(sc[s])) << 32) | r;
        }
        Arrays.sort(keys);
        int[] out = new int[m];
        for (int i = 0; i < m; i++) out[i] = (int) byAge[(int) keys[i]];
        return out;
    }

    /** Order key of a score: increases with it as a signed int, -0 equal to +0, NaN above everything. */
    static int scoreKey(float v) {
        return orderKey(v == 0f ? 0f : v);
    }

    /** {@link #victims}' order by a comparator over the slots (the definition {@link #lowestFirst} is tested against). */
    static int[] victimsByComparator(int[] cand, int c, int m, float[] sc, int[] pos) {
        Integer[] boxed = new Integer[c];
        for (int i = 0; i < c; i++) boxed[i] = cand[i];
        Arrays.sort(boxed, (a, b) -> before(a, b, sc, pos) ? -1 : before(b, a, sc, pos) ? 1 : 0);
        int[] out = new int[m];
        for (int i = 0; i < m; i++) out[i] = boxed[i];
        return out;
    }

    /** Slot a is evicted before slot b: lower score (NaN last), or equal score and older, or the same age and lower. */
    private static boolean before(int a, int b, float[] sc, int[] pos) {
        if (sc != null) {
            int ka = scoreKey(sc[a]), kb = scoreKey(sc[b]);
            if (ka != kb) return ka < kb;
        }
        return pos[a] != pos[b] ? pos[a] < pos[b] : a < b;
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
