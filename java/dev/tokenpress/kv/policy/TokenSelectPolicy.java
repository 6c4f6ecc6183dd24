package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;

import java.util.Arrays;

/**
 * TokenSelect: per-head soft voting for decode steps. With the cached tokens in order, the candidates are
 * those after the first {@code init} and before the last {@code local}; every q-head h scores them by the raw
 * q_h·k (unscaled, as the authors' kernel), takes a softmax over the candidates, and the per-head
 * probabilities are summed into one vote. Every layer attends to the first {@code init} tokens, the {@code k}
 * best-voted candidates and the last {@code local} tokens; one token set is shared by all heads. When
 * init + k + local covers the cache the layer attends to everything. The selection cache reuses a layer's
 * previous top-k while the cosine similarity of the query to the one that made it is at least {@code reuse}
 * (0 = off, the authors' released setting; the paper uses 0.9). Prefill stays dense; nothing is evicted.
 *
 * <p>Where the backend has {@link dev.tokenpress.backend.Backend#selectTokenVotes} (CUDA, opt-in), the selection
 * cache is off and the cache holds every KV head's tokens in slot order (nothing below the top freed), the vote is
 * made there (in device memory, read by the attention directly); otherwise here on the host.
 */
public final class TokenSelectPolicy extends BasePolicy {
    private final int k, init, local;
    private final double reuse;
    private float[][] raw;
    private float[][] votes;         // [heads][capacity]: each q-head's softmax over the candidates
    private double[][] work;         // [heads][capacity]: its exponentials
    private float[][] cachedQuery;   // [layer][H*hd]
    private int[][] cachedTop;       // [layer] positions of the reused top-k
    private SlotSelection pending;
    private int pendingLayer = -1;
    private int reuses;
    private boolean useOp = true; // the backend's selectTokenVotes (false after it reported unsupported)

    public TokenSelectPolicy(String spec, int k, int init, int local, double reuse) {
        super(spec);
        this.k = k;
        this.init = init;
        this.local = local;
        this.reuse = reuse;
    }

    @Override
    public Kind kind() { return Kind.SELECTION; }

    @Override
    protected void reset() {
        raw = new float[heads][capacity];
        votes = new float[heads][capacity];
        work = new double[heads][capacity];
        cachedQuery = new float[layers][];
        cachedTop = new int[layers][];
        pending = null;
        pendingLayer = -1;
        reuses = 0;
    }

    /** Decode-step layers that reused a cached top-k so far in this sequence. */
    public int reuses() { return reuses; }

    /** Whether decode steps use the backend's selectTokenVotes op when it has one (default on; tests compare both). */
    public void setBackendSelect(boolean on) {
        useOp = on;
    }

    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        pending = null;
        pendingLayer = layer;
        if (!decoding(n)) return;
        // on the backend (CUDA: in device memory) without the selection cache; the op returns null unless every KV
        // head holds the tokens in slots 0 .. t-1 in position order (KvCache.inPositionOrder), and the host votes then
        if (useOp && reuse <= 0) {
            int t = c.occupied(layer, 0);
            if (init + k + local >= t) return;
            try {
                SlotSelection s = backend.selectTokenVotes(q, 0, positions[0], c, layer, k, init, local, false);
                if (s != null) {
                    pending = s;
                    return;
                }
            } catch (UnsupportedOpException e) {
                useOp = false;
            }
        }
        // the tokens in order (all heads hold the same positions unless an evicting policy is combined)
        int[] order = slotsByPosition(layer, 0);
        int[][] ords = new int[kvHeads][]; // each KV head's slots in position order, made once per layer
        ords[0] = order;
        int[] pos0 = c.positions(layer, 0);
        int t = order.length;
        if (init + k + local >= t) return;
        int candFrom = init, candTo = t - local;
        int[] top = null;
        float[] qv = null;
        if (reuse > 0) {
            qv = backend.download(q, 0, 1);
            if (cachedQuery[layer] != null && cosine(qv, cachedQuery[layer]) >= reuse) {
                top = cachedTop[layer];
                reuses++;
            }
        }
        if (top == null) {
            backend.queryKeyScores(raw, q, 0, positions[0], c, layer);
            int cands = candTo - candFrom;
            for (int g = 1; g < kvHeads; g++) if (ords[g] == null) ords[g] = slotsByPosition(layer, g);
            // each q-head's softmax over the candidates on the host's threads, then the votes summed in head order
            int cf = candFrom, ct = candTo;
            backend.hostParallel(heads, h -> headVote(raw[h], ords[h / group], cf, ct, work[h], votes[h]));
            float[] vote = new float[cands];
            for (int h = 0; h < heads; h++) {
                float[] v = votes[h];
                for (int i = 0; i < cands; i++) vote[i] += v[i];
            }
            int[] best = SnapKvPolicy.topIndices(vote, k);
            top = new int[best.length];
            for (int i = 0; i < best.length; i++) top[i] = pos0[order[best[i] + candFrom]];
            if (reuse > 0) {
                cachedQuery[layer] = qv;
                cachedTop[layer] = top;
            }
        }
        // selected positions: first init, the top-k, last local
        int[] want = new int[init + top.length + local];
        int m = 0;
        for (int i = 0; i < init; i++) want[m++] = pos0[order[i]];
        for (int p : top) want[m++] = p;
        for (int i = t - local; i < t; i++) want[m++] = pos0[order[i]];
        Arrays.sort(want, 0, m);
        int u = 0; // a reused top-k may overlap the local window
        for (int i = 0; i < m; i++) if (u == 0 || want[i] != want[u - 1]) want[u++] = want[i];
        m = u;
        int[][] slots = new int[kvHeads][];
        int[] count = new int[kvHeads];
        for (int g = 0; g < kvHeads; g++) {
            if (ords[g] == null) ords[g] = slotsByPosition(layer, g);
            int[] ord = ords[g];
            int[] pos = c.positions(layer, g);
            int[] out = new int[m];
            int j = 0, cnt = 0;
            for (int i = 0; i < m; i++) {      // both lists ascend by position
                while (j < ord.length && pos[ord[j]] < want[i]) j++;
                if (j < ord.length && pos[ord[j]] == want[i]) out[cnt++] = ord[j];
            }
            Arrays.sort(out, 0, cnt);
            slots[g] = out;
            count[g] = cnt;
        }
        pending = new SlotSelection(slots, count);
    }

    @Override
    public SlotSelection select(KvCache c, int layer, int n) {
        return layer == pendingLayer ? pending : null;
    }

    /**
     * One q-head's vote: out[i - from] = softmax over the candidates [from, to) of the raw scores of their slots
     * (slotOfIndex[i]); 0 for candidates the head's KV head does not hold and for every candidate when it sees none.
     */
    private static void headVote(float[] r, int[] slotOfIndex, int from, int to, double[] e, float[] out) {
        int end = Math.min(to, slotOfIndex.length);
        Arrays.fill(out, 0, to - from, 0f);
        float max = Float.NEGATIVE_INFINITY;
        for (int i = from; i < end; i++) max = Math.max(max, r[slotOfIndex[i]]);
        if (max == Float.NEGATIVE_INFINITY) return;
        double sumExp = 0;
        for (int i = from; i < end; i++) sumExp += e[i - from] = Math.exp(r[slotOfIndex[i]] - max);
        for (int i = from; i < end; i++) out[i - from] = (float) (e[i - from] / sumExp);
    }

    private static double cosine(float[] a, float[] b) {
        double ab = 0, aa = 0, bb = 0;
        for (int i = 0; i < a.length; i++) {
            ab += (double) a[i] * b[i];
            aa += (double) a[i] * a[i];
            bb += (double) b[i] * b[i];
        }
        return aa == 0 || bb == 0 ? 0 : ab / Math.sqrt(aa * bb);
    }
}
