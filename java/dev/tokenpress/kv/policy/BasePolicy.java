package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;

import java.util.Arrays;

/**
 * Shared bookkeeping of the policies: the model it is attached to, the cache and sequence it currently
 * serves (it starts over on a different or emptied cache), whether a prefill is running, and how many tokens
 * the sequence has seen. Subclasses implement the {@code on...} hooks.
 */
public abstract class BasePolicy implements KvPolicy {

    /** What a policy does, for composition: at most one of each kind in a combined spec. */
    public enum Kind { EVICTION, SELECTION }

    private final String spec;

    protected Llama model;
    protected Backend backend;
    protected LlamaConfig config;
    protected int layers, kvHeads, heads, group, headDim;
    /** The cache the state belongs to, and its slots per (layer, KV head). */
    protected KvCache cache;
    protected int capacity;
    /** Inside Llama.prefill. */
    protected boolean inPrefill;
    /** The running prefill covers positions [prefillStart, prefillStart + prefillTotal). */
    protected int prefillStart, prefillTotal;
    /** Tokens of the sequence seen so far, including the call in progress. */
    protected int seqLen;
    /** The call in progress appends positions [callStart, callStart + callN). */
    protected int callStart, callN;
    /** Decode steps since the last prefill ended (0 during a prefill). */
    protected int decodeSteps;

    protected BasePolicy(String spec) {
        this.spec = spec;
    }

    @Override
    public final String spec() { return spec; }

    @Override
    public String toString() { return spec; }

    public abstract Kind kind();

    @Override
    public void attach(Llama model) {
        this.model = model;
        this.backend = model.backend;
        this.config = model.config;
        this.layers = config.numLayers();
        this.kvHeads = config.numKvHeads();
        this.heads = config.numHeads();
        this.group = config.groupSize();
        this.headDim = config.headDim();
        this.cache = null;
        onAttach();
    }

    @Override
    public void beginPrefill(KvCache c, int startPos, int total) {
        bind(c);
        inPrefill = true;
        prefillStart = startPos;
        prefillTotal = total;
        decodeSteps = 0;
        onBeginPrefill();
    }

    @Override
    public void endPrefill(KvCache c) {
        bind(c);
        onEndPrefill();
        inPrefill = false;
    }

    @Override
    public void beforeAppend(KvCache c, int[] positions, int n) {
        bind(c);
        callStart = positions[0];
        callN = n;
        seqLen = Math.max(seqLen, positions[n - 1] + 1);
        if (!inPrefill) decodeSteps++;
        onBeforeAppend(positions, n);
    }

    /** True for a decode step (one token outside a prefill). */
    protected boolean decoding(int n) {
        return !inPrefill && n == 1;
    }

    protected void onAttach() {}

    /** Whether {@link #attach} runs the model (a calibration probe); such a policy is attached after the others. */
    public boolean runsModelOnAttach() { return false; }

    /** A new sequence (or a different cache) starts: drop all per-sequence state; {@link #cache} is set. */
    protected void reset() {}

    protected void onBeginPrefill() {}

    protected void onEndPrefill() {}

    protected void onBeforeAppend(int[] positions, int n) {}

    /** Binds the state to a cache: starts over for a different cache or one emptied since it was last seen. */
    protected final void bind(KvCache c) {
        if (model == null)
            throw new IllegalStateException("KV policy " + spec + " is not installed on a model: use Llama.setPolicy or Session.setPolicy");
        if (c != cache || (seqLen > 0 && empty(c))) {
            cache = c;
            capacity = c.capacity();
            seqLen = 0;
            inPrefill = false;
            decodeSteps = 0;
            reset();
        }
    }

    private static boolean empty(KvCache c) {
        for (int g = 0; g < c.kvHeads(); g++) if (c.occupied(0, g) > 0) return false;
        return true;
    }

    // ---- helpers --------------------------------------------------------------------------------------------

    /** The occupied slots of (layer, head) ordered by position (oldest first). */
    protected int[] slotsByPosition(int layer, int head) {
        int[] pos = cache.positions(layer, head);
        int hw = cache.highWater(layer, head);
        int[] inOrder = new int[cache.occupied(layer, head)];
        int n = 0, last = Integer.MIN_VALUE;
        boolean sorted = true;
        for (int s = 0; s < hw && sorted; s++) { // the common case: slots filled in position order, nothing to sort
            if (pos[s] < 0) continue;
            if (pos[s] <= last || n == inOrder.length) sorted = false;
            else {
                inOrder[n++] = s;
                last = pos[s];
            }
        }
        if (sorted && n == inOrder.length) return inOrder;
        long[] keys = new long[cache.occupied(layer, head)];
        int m = 0;
        for (int s = 0; s < hw; s++) if (pos[s] >= 0) keys[m++] = ((long) pos[s] << 32) | s;
        if (m < keys.length) keys = Arrays.copyOf(keys, m);
        Arrays.sort(keys);
        int[] out = new int[m];
        for (int i = 0; i < m; i++) out[i] = (int) keys[i];
        return out;
    }

    /** The slot of (layer, head) that holds {@code position}, or -1. */
    protected int slotOf(int layer, int head, int position) {
        int[] pos = cache.positions(layer, head);
        int hw = cache.highWater(layer, head);
        for (int s = hw - 1; s >= 0; s--) if (pos[s] == position) return s;
        return -1;
    }

    /**
     * Softmax of raw (unscaled) q·k scores over the finite entries of raw[0, len), with scale 1/sqrt(hd),
     * as the attention computes it; adds weight * p to acc[slot].
     */
    protected void addSoftmax(float[] raw, int len, float weight, float[] acc) {
        float scale = (float) (1.0 / Math.sqrt(headDim));
        float max = Float.NEGATIVE_INFINITY;
        for (int s = 0; s < len; s++) if (raw[s] * scale > max) max = raw[s] * scale;
        if (max == Float.NEGATIVE_INFINITY) return;
        double sum = 0;
        for (int s = 0; s < len; s++) if (raw[s] != Float.NEGATIVE_INFINITY) sum += (float) Math.exp(raw[s] * scale - max);
        float inv = (float) (1.0 / sum);
        for (int s = 0; s < len; s++)
            if (raw[s] != Float.NEGATIVE_INFINITY) acc[s] += weight * ((float) Math.exp(raw[s] * scale - max) * inv);
    }
}
