package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.HostMath;
import dev.tokenpress.kv.KvCache;

import java.util.Arrays;

/**
 * Compactor (Chari and Van Durme, arXiv 2507.08143; kvpress's CompactorPress): query-agnostic prompt compression
 * that blends two calibrated scores of the prompt's own tokens, computed when the prefill ends.
 *
 * <ul>
 *   <li>Non-causal chunked attention (kvpress's NonCausalAttnPress): the prompt past the first {@code sink} and before
 *   the last {@code sink_end} tokens is cut into chunks of {@code chunk} tokens; inside a chunk every query attends to
 *   every key of the chunk (softmax of the unscaled q·k, as kvpress computes it), and a key's score is its column sum
 *   over the chunk's queries, averaged over the q-heads of its group, times its value's L2 norm, average-pooled over
 *   neighbouring tokens (width 3, padding counted), z-scored over the layer.</li>
 *   <li>Approximate leverage of the pre-RoPE keys ({@link LeveragePolicy}: centred, sketched with {@code sketch}
 *   Gaussian columns from {@code seed}), over the same tokens, z-scored over the layer.</li>
 * </ul>
 *
 * The score is blend·leverage + attention, {@code blend} defaulting to the share of the prompt that goes (kvpress's
 * default: the compression ratio). Every KV head keeps the sinks and its best {@code budget} − sinks other tokens of
 * the prompt. Decoding appends without eviction. The queries are taken in {@link #beforeAttention} while the prompt
 * is prefilled, a chunk's attention is computed as soon as its last key is stored, so a layer holds at most one
 * chunk of queries.
 */
public final class CompactorPolicy extends PromptPolicy {
    private final Budget budget;
    private final int sinkStart, sinkEnd, chunk, sketch;
    private final double blend; // NaN: the share of the prompt that goes
    private final long seed;

    private boolean active;
    private int sliceStart, sliceEnd;     // positions [sliceStart, sliceEnd) are scored
    private float[][][] attn;             // [layer][kvHead][slot] column sums, mean over the group
    private float[][] pendingQ;           // [layer] queries of the chunk being filled, [chunk][H*hd]
    private int[] pendingRows;            // [layer] rows held
    private float[][][] finalScore;       // [layer][kvHead][slot] the blended score of the last cut (NaN: not scored)
    private float[] keys = new float[0], values = new float[0];

    public CompactorPolicy(String spec, Budget budget, int sinkStart, int sinkEnd, int chunk, int sketch, double blend, long seed) {
        super(spec);
        if (sinkStart < 0 || sinkEnd < 0) throw new IllegalArgumentException("compactor: sink and sink_end must be >= 0");
        if (chunk < 1 || sketch < 1) throw new IllegalArgumentException("compactor: chunk and sketch must be >= 1");
        this.budget = budget;
        this.sinkStart = sinkStart;
        this.sinkEnd = sinkEnd;
        this.chunk = chunk;
        this.sketch = sketch;
        this.blend = blend;
        this.seed = seed;
    }

    /** The blended score of (layer, KV head, slot) at the last cut; NaN for a slot that was not scored. */
    public float score(int layer, int head, int slot) {
        return finalScore == null ? Float.NaN : finalScore[layer][head][slot];
    }

    /** The non-causal attention column sum (mean over the group) of (layer, KV head, slot) from the last prompt. */
    public float attention(int layer, int head, int slot) {
        return attn == null ? 0f : attn[layer][head][slot];
    }

    @Override
    protected void reset() {
        super.reset();
        attn = null;
        finalScore = null;
        pendingQ = null;
    }

    @Override
    protected void onBeginPrefill() {
        int n = prefillTotal;
        int left = Math.min(sinkStart, n), right = Math.min(sinkEnd, Math.max(0, n - left));
        sliceStart = prefillStart + left;
        sliceEnd = prefillStart + n - right;
        active = budget.tokens(n) < n && sliceEnd > sliceStart && !leavesThisPrompt();
        if (!active) return;
        if (attn == null) attn = new float[layers][kvHeads][capacity];
        else for (float[][] l : attn) for (float[] h : l) Arrays.fill(h, 0f);
        if (pendingQ == null) {
            pendingQ = new float[layers][];
            pendingRows = new int[layers];
        }
        Arrays.fill(pendingRows, 0);
    }

    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        if (!inPrefill || !active || positions[n - 1] < sliceStart || positions[0] >= sliceEnd) return;
        int width = heads * headDim;
        float[] rows = backend.download(q, 0, n);
        if (pendingQ[layer] == null) pendingQ[layer] = new float[chunk * width];
        for (int r = 0; r < n; r++) {
            int p = positions[r];
            if (p < sliceStart || p >= sliceEnd) continue;
            int start = sliceStart + (p - sliceStart) / chunk * chunk, end = Math.min(sliceEnd, start + chunk);
            System.arraycopy(rows, r * width, pendingQ[layer], (p - start) * width, width);
            pendingRows[layer]++;
            if (p == end - 1) { // the chunk's last query: all its keys are stored
                attendChunk(layer, start, end);
                pendingRows[layer] = 0;
            }
        }
    }

    /**
     * Non-causal attention inside [start, end): column sums per key, mean over the group, into attn. The chunk's keys
     * are gathered per KV head first; the heads then run through {@code Backend.hostParallel} on the CPU backend's
     * vectorized dot and exp ({@code HostMath}).
     */
    private void attendChunk(int layer, int start, int end) {
        int m = end - start, hd = headDim, width = heads * hd;
        if (pendingRows[layer] != m)
            throw new IllegalStateException("compactor: layer " + layer + " saw " + pendingRows[layer] + " of the " + m + " queries of positions [" + start + ", " + end + ")");
        float[] q = pendingQ[layer];
        ensureScratch();
        float[][] chunkKeys = new float[kvHeads][m * hd];
        int[][] slots = new int[kvHeads][];
        for (int g = 0; g < kvHeads; g++) {
            slots[g] = slotsOf(layer, g, start, end);
            int lo = Integer.MAX_VALUE, hi = -1;
            for (int x : slots[g]) if (x >= 0) {
                lo = Math.min(lo, x);
                hi = Math.max(hi, x);
            }
            if (hi < 0) continue;
            backend.readKvRange(cache, layer, g, lo, hi + 1, keys, null); // the slots the chunk spans
            for (int j = 0; j < m; j++) if (slots[g][j] >= 0) System.arraycopy(keys, (slots[g][j] - lo) * hd, chunkKeys[g], j * hd, hd);
        }
        backend.hostParallel(kvHeads, g -> {
            float[] kc = chunkKeys[g], row = new float[m];
            double[] col = new double[m];
            int[] slot = slots[g];
            for (int h = g * group; h < (g + 1) * group; h++)
                for (int i = 0; i < m; i++) {
                    float max = Float.NEGATIVE_INFINITY;
                    for (int j = 0; j < m; j++) {
                        row[j] = slot[j] < 0 ? Float.NEGATIVE_INFINITY : HostMath.dot(q, i * width + h * hd, kc, j * hd, hd);
                        if (row[j] > max) max = row[j];
                    }
                    double inv = 1.0 / HostMath.expShifted(row, 0, m, max); // a key a sliding window dropped weighs 0
                    for (int j = 0; j < m; j++) col[j] += row[j] * inv;
                }
            float[] a = attn[layer][g];
            for (int j = 0; j < m; j++) if (slot[j] >= 0) a[slot[j]] = (float) (col[j] / group);
        });
    }

    /** The slot of every position in [start, end) of (layer, head), in position order; -1 where a sliding window dropped it. */
    private int[] slotsOf(int layer, int head, int start, int end) {
        int[] out = new int[end - start];
        Arrays.fill(out, -1);
        int[] pos = cache.positions(layer, head);
        for (int s = 0, hw = cache.highWater(layer, head); s < hw; s++)
            if (pos[s] >= start && pos[s] < end) out[pos[s] - start] = s;
        return out;
    }

    private void ensureScratch() {
        if (keys.length < capacity * headDim) {
            keys = new float[capacity * headDim];
            values = new float[capacity * headDim];
        }
    }

    @Override
    protected void onEndPrefill() {
        if (!active) return;
        active = false;
        int n = prefillTotal, keep = Math.max(1, budget.tokens(n));
        double b = Double.isNaN(blend) ? 1.0 - (double) keep / n : blend;
        if (finalScore == null) finalScore = new float[layers][kvHeads][capacity];
        ensureScratch();
        for (int l = 0; l < layers; l++) {
            double[][] att = new double[kvHeads][], lev = new double[kvHeads][];
            int[][] slots = new int[kvHeads][], positions = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) {
                backend.readKvHead(cache, l, g, keys, values);
                int[] all = slotsOf(l, g, sliceStart, sliceEnd); // the slice's tokens a sliding window left
                int m = 0;
                for (int x : all) if (x >= 0) m++;
                int[] slot = new int[m], pos = new int[m];
                for (int t = 0, i = 0; t < all.length; t++)
                    if (all[t] >= 0) {
                        slot[i] = all[t];
                        pos[i++] = sliceStart + t;
                    }
                slots[g] = slot;
                positions[g] = pos;
                double[] s = new double[m];
                double[][] x = new double[m][headDim];
                for (int t = 0; t < m; t++) {
                    double norm = 0;
                    for (int e = 0, o = slot[t] * headDim; e < headDim; e++) norm += (double) values[o + e] * values[o + e];
                    s[t] = attn[l][g][slot[t]] * Math.sqrt(norm);
                    model.rope().rotate(keys, slot[t] * headDim, -pos[t], x[t]); // pre-RoPE key
                }
                att[g] = pool3(s);
                lev[g] = m == 0 ? new double[0] : LeveragePolicy.leverage(x, LeveragePolicy.sketch(seed, l, g, headDim, sketch), sketch);
            }
            LeveragePolicy.zscore(att); // over the layer
            LeveragePolicy.zscore(lev);
            for (int g = 0; g < kvHeads; g++) {
                float[] fs = finalScore[l][g];
                Arrays.fill(fs, Float.NaN);
                int m = slots[g].length;
                float[] sc = new float[m];
                for (int t = 0; t < m; t++) fs[slots[g][t]] = sc[t] = (float) (b * lev[g][t] + att[g][t]);
                int others = Math.max(0, keep - (promptTokensCached(l, g) - m)); // the sinks that are cached stay
                if (others >= m) continue;
                boolean[] kept = new boolean[m];
                for (int t : TopK.largest(sc, others)) kept[t] = true;
                int[] victims = new int[m - others];
                int v = 0;
                for (int t = 0; t < m; t++) if (!kept[t]) victims[v++] = slots[g][t];
                evict(l, g, victims);
            }
        }
        rerotatePrompt();
    }

    /** Tokens of the prompt that ends still cached in (layer, head). */
    private int promptTokensCached(int layer, int head) {
        int[] pos = cache.positions(layer, head);
        int count = 0;
        for (int s = 0, hw = cache.highWater(layer, head); s < hw; s++)
            if (pos[s] >= prefillStart && pos[s] < prefillStart + prefillTotal) count++;
        return count;
    }

    /** Average pooling of width 3, stride 1, padding 1 that counts the padding (F.avg_pool1d's default). */
    static double[] pool3(double[] x) {
        int n = x.length;
        double[] out = new double[n];
        for (int i = 0; i < n; i++) out[i] = ((i > 0 ? x[i - 1] : 0) + x[i] + (i + 1 < n ? x[i + 1] : 0)) / 3;
        return out;
    }
}
