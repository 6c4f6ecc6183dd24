package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvCacheFullException;

import java.util.Arrays;
import java.util.SplittableRandom;

/**
 * RazorAttention: retrieval heads keep the full cache; every other KV head keeps its first {@code sink} tokens,
 * its most recent L_h = max(recent, ratio * N) tokens (N = tokens seen) and one compensation token whose key and
 * value are the mean of all the keys and values it dropped.
 *
 * <p>Retrieval heads are found once per model, when the policy is attached: the model runs a probe of one
 * token followed by {@code repeats} copies of {@code probe} random tokens; for every query in the second and
 * later copies, a q-head's echo score is its attention to the earlier occurrences of the same token and its
 * induction score its attention to the tokens that followed them, averaged over those queries. A KV head
 * scores the max over its q-heads; the top (heads - echo) fraction of all KV heads by induction score and the
 * top {@code echo} fraction by echo score are the retrieval heads (msModelSlim's 14% + 1% split for
 * heads=0.15).
 *
 * <p>The compensation token takes the position of the newest token it absorbed when it was created (so every
 * later query sees it) and keeps that slot; it is weighted like one token in the softmax (the paper weights it
 * by the number of dropped tokens, which needs a per-slot logit bias the attention op does not have).
 */
public final class RazorPolicy extends EvictingPolicy {
    private final double headsFraction, echoFraction;
    private final int sink, recent;
    private final double ratio;
    private final int probeLen, repeats;
    private final long seed;

    private Object calibratedFor;
    private boolean[][] retrieval;      // [layer][kvHead]
    private double[][] induction, echo; // [layer][kvHead] probe scores

    private boolean probing;
    private double[][] probeInd, probeEcho; // [layer][qHead] sums over the probe queries
    private float[][] raw;
    private float[] probs;

    private int[][] comp;       // [layer][kvHead] compensation slot, -1 = none yet
    private int[][] compPos;    // [layer][kvHead] the position the compensation token was stored at
    private long[][] compCount; // tokens folded into it
    private float[] kBuf, vBuf, kSum, vSum;

    public RazorPolicy(String spec, double headsFraction, double echoFraction, int sink, int recent, double ratio,
                       int probeLen, int repeats, long seed) {
        super(spec);
        this.headsFraction = headsFraction;
        this.echoFraction = echoFraction;
        this.sink = sink;
        this.recent = recent;
        this.ratio = ratio;
        this.probeLen = probeLen;
        this.repeats = repeats;
        this.seed = seed;
    }

    /** [layer][kvHead] true for a retrieval head (full cache). */
    public boolean[][] retrievalHeads() {
        boolean[][] out = new boolean[retrieval.length][];
        for (int l = 0; l < out.length; l++) out[l] = retrieval[l].clone();
        return out;
    }

    /** [layer][kvHead] induction scores of the probe (max over the group's q-heads). */
    public double[][] inductionScores() { return deepCopy(induction); }

    /** [layer][kvHead] echo scores of the probe. */
    public double[][] echoScores() { return deepCopy(echo); }

    /** The compensation slot of (layer, head), -1 when the head has dropped nothing. */
    public int compensationSlot(int layer, int head) { return comp == null ? -1 : comp[layer][head]; }

    /** Tokens of the recent window L_h for a sequence of n tokens. */
    public int window(int n) {
        return Math.max(recent, (int) Math.ceil(ratio * n - 1e-9));
    }

    @Override
    protected boolean scored() { return false; }

    @Override
    public boolean runsModelOnAttach() { return headsFraction > 0; }

    @Override
    protected void onAttach() {
        if (calibratedFor == model && retrieval != null) return;
        retrieval = new boolean[layers][kvHeads];
        induction = new double[layers][kvHeads];
        echo = new double[layers][kvHeads];
        if (headsFraction > 0) calibrate();
        calibratedFor = model;
        cache = null;
    }

    @Override
    protected void reset() {
        super.reset();
        comp = new int[layers][kvHeads];
        for (int[] c : comp) Arrays.fill(c, -1);
        compCount = new long[layers][kvHeads];
        compPos = new int[layers][kvHeads];
        kBuf = new float[headDim];
        vBuf = new float[headDim];
        kSum = new float[headDim];
        vSum = new float[headDim];
        raw = new float[heads][capacity];
        probs = new float[capacity];
    }

    // ---- the head probe ---------------------------------------------------------------------------------------

    private void calibrate() {
        int v = config.vocabSize(), total = 1 + repeats * probeLen;
        SplittableRandom r = new SplittableRandom(seed);
        int[] tokens = new int[total];
        tokens[0] = config.bosTokenId() >= 0 && config.bosTokenId() < v ? config.bosTokenId() : r.nextInt(v);
        java.util.List<Integer> eos = config.eosTokenIds() == null ? java.util.List.of() : config.eosTokenIds();
        int[] block = new int[probeLen];
        for (int i = 0; i < probeLen; i++) { // random ids, avoiding the special tokens
            int t;
            do t = r.nextInt(v); while (v > 2 + eos.size() && (t == config.bosTokenId() || eos.contains(t)));
            block[i] = t;
        }
        for (int rep = 0; rep < repeats; rep++) System.arraycopy(block, 0, tokens, 1 + rep * probeLen, probeLen);
        probeInd = new double[layers][heads];
        probeEcho = new double[layers][heads];
        probing = true;
        try (KvCache pc = model.newCache(total)) {
            model.prefillWith(this, pc, tokens, 0, null); // this policy's hooks score the probe, whatever the model's policy
        } finally {
            probing = false;
        }
        int queries = (repeats - 1) * probeLen;
        for (int l = 0; l < layers; l++)
            for (int g = 0; g < kvHeads; g++) {
                double ind = Double.NEGATIVE_INFINITY, ech = Double.NEGATIVE_INFINITY;
                for (int h = g * group; h < (g + 1) * group; h++) {
                    ind = Math.max(ind, probeInd[l][h] / queries);
                    ech = Math.max(ech, probeEcho[l][h] / queries);
                }
                induction[l][g] = ind;
                echo[l][g] = ech;
            }
        int all = layers * kvHeads;
        int nEcho = (int) Math.round(echoFraction * all);
        int nInd = (int) Math.round((headsFraction - echoFraction) * all);
        markTop(induction, nInd);
        markTop(echo, nEcho);
        probeInd = probeEcho = null;
    }

    private void markTop(double[][] s, int count) {
        Integer[] idx = new Integer[layers * kvHeads];
        for (int i = 0; i < idx.length; i++) idx[i] = i;
        Arrays.sort(idx, (a, b) -> {
            int c = Double.compare(s[b / kvHeads][b % kvHeads], s[a / kvHeads][a % kvHeads]);
            return c != 0 ? c : Integer.compare(a, b);
        });
        for (int i = 0; i < count && i < idx.length; i++) retrieval[idx[i] / kvHeads][idx[i] % kvHeads] = true;
    }

    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        if (!probing) return;
        // the probe cache is fresh and nothing is evicted while probing: slot == position
        for (int row = 0; row < n; row++) {
            int p = positions[row];
            if (p < 1 + probeLen) continue;
            int rep = (p - 1) / probeLen, m = (p - 1) % probeLen;
            backend.queryKeyScores(raw, q, row, p, c, layer);
            for (int h = 0; h < heads; h++) {
                int hw = c.highWater(layer, h / group);
                Arrays.fill(probs, 0, hw, 0f);
                addSoftmax(raw[h], hw, 1f, probs);
                double ind = 0, ech = 0;
                for (int prev = 0; prev < rep; prev++) {
                    int j = 1 + prev * probeLen + m;
                    ech += probs[j];
                    ind += probs[j + 1];
                }
                probeInd[layer][h] += ind;
                probeEcho[layer][h] += ech;
            }
        }
    }

    // ---- compression ------------------------------------------------------------------------------------------

    @Override
    protected int keepBefore(int layer, int head, int n) { return Integer.MAX_VALUE; }

    @Override
    protected int protectRecent(int n) { return 0; }

    @Override
    protected void onBeforeAppend(int[] positions, int n) {
        if (probing) return;
        int win = window(callStart);
        for (int l = 0; l < layers; l++)
            for (int g = 0; g < kvHeads; g++) {
                if (retrieval[l][g]) continue;
                int c0 = comp[l][g];
                if (c0 >= 0 && cache.position(l, g, c0) != compPos[l][g]) { // freed under us (a sliding window): start over
                    comp[l][g] = -1;
                    compCount[l][g] = 0;
                }
                // the prompt runs densely and is compressed by the first decode step (or when the cache is full)
                if (inPrefill && cache.occupied(l, g) + n + (comp[l][g] < 0 ? 1 : 0) <= capacity) continue;
                // newest tokens kept before the append; shrunk if the cache cannot hold sinks + window + compensation
                int protect = Math.max(0, Math.min(win - n, capacity - n - 1 - sink));
                int recentFrom = callStart - protect;
                int[] pos = cache.positions(l, g);
                int hw = cache.highWater(l, g), cs = comp[l][g];
                int[] victims = new int[hw];
                int m = 0, newest = -1;
                for (int s = 0; s < hw; s++) {
                    int p = pos[s];
                    if (p >= sink && p < recentFrom && s != cs) {
                        victims[m++] = s;
                        newest = Math.max(newest, p);
                    }
                }
                if (m > 0) fold(l, g, Arrays.copyOf(victims, m), newest);
                if (cache.occupied(l, g) + n > capacity)
                    throw new KvCacheFullException("KV cache of " + capacity + " slots per head is too small for --kv " + spec()
                            + " (sinks + compensation token + " + n + " new tokens): raise the context size (-c)");
            }
    }

    /** Folds the victims' keys and values into the compensation token of (layer, head) and frees them. */
    private void fold(int layer, int head, int[] victims, int newestPosition) {
        Arrays.fill(kSum, 0f);
        Arrays.fill(vSum, 0f);
        for (int s : victims) {
            backend.readKv(cache, layer, head, s, kBuf, vBuf);
            for (int i = 0; i < headDim; i++) {
                kSum[i] += kBuf[i];
                vSum[i] += vBuf[i];
            }
        }
        evict(layer, head, victims);
        long old = compCount[layer][head], total = old + victims.length;
        int cs = comp[layer][head];
        if (cs < 0) {
            cs = cache.allocate(layer, head, new int[]{newestPosition}, 1)[0];
            comp[layer][head] = cs;
            compPos[layer][head] = newestPosition;
            for (int i = 0; i < headDim; i++) {
                kBuf[i] = kSum[i] / total;
                vBuf[i] = vSum[i] / total;
            }
        } else {
            backend.readKv(cache, layer, head, cs, kBuf, vBuf);
            for (int i = 0; i < headDim; i++) {
                kBuf[i] = (float) ((kBuf[i] * (double) old + kSum[i]) / total);
                vBuf[i] = (float) ((vBuf[i] * (double) old + vSum[i]) / total);
            }
        }
        backend.writeKv(cache, layer, head, cs, kBuf, vBuf);
        compCount[layer][head] = total;
    }

    private static double[][] deepCopy(double[][] a) {
        double[][] out = new double[a.length][];
        for (int i = 0; i < a.length; i++) out[i] = a[i].clone();
        return out;
    }
}
