package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.HostMath;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvCacheFullException;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.kv.LongSelect;
import dev.tokenpress.model.Llama;

import java.util.Arrays;
import java.util.function.Function;

/**
 * KVzip (Kim et al., arXiv 2505.23416; kvpress's KVzipPress): query-agnostic prompt compression by context
 * reconstruction. When a prefill ends, the model is made to repeat the prompt it just read: for each chunk of
 * {@code chunk} prompt tokens it runs "\n\nRepeat the previous context exactly." (later chunks: "\n\nRepeat the part
 * of the previous context exactly, starting with" and the previous chunk's last 8 tokens), "\n" and the chunk itself,
 * teacher-forced, after the cached prompt ({@code Llama.observe}: the pass appends to the cache and is freed again).
 * A cached pair's score is the largest attention probability any query of its chunk's pass gives it, over the
 * q-heads of its KV head's group; the softmax of a query runs over the first {@code sink} tokens (from the second
 * chunk on), the chunk's own tokens and the pass's tokens up to the query, as kvpress computes it. Then the lowest
 * scores go: L·G·(n − budget) pairs over all layers and KV heads together (heads and layers keep different counts),
 * or G·(n − budget) per layer with {@code layerwise}. The first {@code sink} tokens always stay.
 *
 * <p>Only the prompt of the prefill that ends is scored and cut (tokens cached by earlier prefills stay as they are);
 * decoding appends without eviction. The pass needs free slots for its tokens: the chunk shrinks to what the cache
 * has room for. The prompts come from the model's tokenizer ({@code Llama.textEncoder}, set by the loader) or
 * {@link #setPrompts}. The scores are computed on the host from the pass's queries and one read of the keys each head's scoring subset spans.
 */
public final class KvzipPolicy extends PromptPolicy {
    public static final String FIRST = "\n\nRepeat the previous context exactly.";
    public static final String LATER = "\n\nRepeat the part of the previous context exactly, starting with";
    public static final String SUFFIX = "\n";
    /** The task name of the reconstruction pass's progress ({@link Llama#setTaskProgress}). */
    public static final String PROGRESS_TASK = "kvzip";

    /** Tokens of the previous chunk that a later chunk's instruction ends with. */
    public static final int TAIL = 8;

    private final Budget budget;
    private final int sink, chunk;
    private final boolean layerwise, plus;

    private int[] first, later, suffix; // prompt ids; null until set or taken from the model's tokenizer
    private int[] prompt;               // ids of the prefill that runs (prefillTokens)
    private int promptLength = -1;
    private float[][][] kvz;            // [layer][kvHead][slot] max attention during the reconstruction
    private int chunkStart, chunkEnd, contextEnd; // positions of the chunk being repeated, and of the pass's first token
    private int passes;                 // reconstruction passes run by the last prefill
    private float[] keys, values;
    private int[] subset, subsetPos;
    private float[][][] gram;           // KVzip+: [layer][q-head][hd * hd] W_o[h]ᵀ·W_o[h], read on first use
    private float[][][] valueNorms;     // KVzip+: [layer][kvHead][group * passSpan] |v·W_o[h]| of the pass's subset (NaN: not yet)
    private int passSpan;               // entries per q-head in valueNorms: sinks + chunk + pass

    public KvzipPolicy(String spec, Budget budget, int sink, int chunk, boolean layerwise) {
        this(spec, budget, sink, chunk, layerwise, false);
    }

    /**
     * @param plus KVzip+'s normalization (kvpress's {@code kvzip_plus_normalization}): a query row's probabilities are
     *             divided by the L2 norm of its attention input and multiplied by each key's |v·W_o[h]|₂ before the max
     */
    public KvzipPolicy(String spec, Budget budget, int sink, int chunk, boolean layerwise, boolean plus) {
        super(spec);
        if (sink < 0) throw new IllegalArgumentException("kvzip: sink must be >= 0");
        if (chunk < 1) throw new IllegalArgumentException("kvzip: chunk must be >= 1");
        this.budget = budget;
        this.sink = sink;
        this.chunk = chunk;
        this.layerwise = layerwise;
        this.plus = plus;
    }

    /** The reconstruction prompts as token ids (in place of the model's tokenizer): the first chunk's, the later chunks', the suffix. */
    public KvzipPolicy setPrompts(int[] first, int[] later, int[] suffix) {
        this.first = first.clone();
        this.later = later.clone();
        this.suffix = suffix.clone();
        return this;
    }

    /** The reconstruction score of (layer, KV head, slot) from the last prefill (0 for a pair that was not scored). */
    public float score(int layer, int head, int slot) {
        return kvz == null ? 0f : kvz[layer][head][slot];
    }

    /** Reconstruction passes (chunks) the last compressing prefill ran. */
    public int passes() { return passes; }

    /**
     * One pass of a full chunk: the longer instruction, the suffix and min(chunk, promptTokens) tokens (96 slots for
     * the instruction and suffix while their ids are not known yet); 0 when the budget keeps the whole prompt.
     */
    @Override
    public int scratchSlots(int promptTokens) {
        if (budget.tokens(promptTokens) >= promptTokens) return 0;
        int lead = first == null ? 96 : Math.max(first.length, later.length + TAIL) + suffix.length;
        return lead + Math.min(chunk, promptTokens);
    }

    @Override
    protected int sinkCount() { return sink; }

    @Override
    protected void reset() {
        super.reset();
        kvz = null;
    }

    @Override
    public void prefillTokens(int[] tokens, int n) {
        if (prompt == null || prompt.length < n) prompt = new int[Math.max(n, 16)];
        System.arraycopy(tokens, 0, prompt, 0, n);
        promptLength = n;
    }

    @Override
    protected void onEndPrefill() {
        passes = 0;
        if (leavesThisPrompt()) return;
        int n = prefillTotal, keep = Math.max(0, budget.tokens(n));
        int sinks = Math.max(0, Math.min(sink, prefillStart + n) - prefillStart); // sink positions inside this prefill
        if (keep >= n || sinks >= n) return;  // nothing to cut: no reconstruction pass either
        if (promptLength != n)
            throw new IllegalStateException("kvzip: the prefill's token ids were not passed to the policy (KvPolicy.prefillTokens)");
        prompts();
        contextEnd = prefillStart + n;
        if (kvz == null) kvz = new float[layers][kvHeads][capacity];
        for (float[][] l : kvz) for (float[] h : l) Arrays.fill(h, 0f);
        int room = capacity;
        for (int l = 0; l < layers; l++)
            for (int g = 0; g < kvHeads; g++) room = Math.min(room, capacity - cache.occupied(l, g));
        Hooks hooks = new Hooks();
        int[] ctx = Arrays.copyOf(prompt, n);
        Llama.TaskProgress progress = model.taskProgress(); // prompt tokens repeated so far, of n
        progress.update(PROGRESS_TASK, 0, n);
        for (int start = 0, i = 0; start < n; i++) {
            int[] lead = i == 0 ? first : concat(later, Arrays.copyOfRange(ctx, Math.max(0, start - TAIL), start));
            int fits = room - lead.length - suffix.length;
            if (fits < 1)
                throw new KvCacheFullException("kvzip: the KV cache has " + room + " free slots per head, its reconstruction pass needs at least "
                        + (lead.length + suffix.length + 1) + ": raise the context size (-c)");
            int len = Math.min(Math.min(chunk, fits), n - start);
            chunkStart = prefillStart + start;
            chunkEnd = chunkStart + len;
            if (plus) startPassNorms(lead.length + suffix.length + len);
            int done = start, head = lead.length + suffix.length, last = len;
            model.observe(hooks, cache, concat(concat(lead, suffix), Arrays.copyOfRange(ctx, start, start + len)), contextEnd,
                    ran -> { if (ran > head && ran < head + last) progress.update(PROGRESS_TASK, done + ran - head, n); });
            passes++;
            start += len;
            progress.update(PROGRESS_TASK, start, n);
        }
        cut(n, keep);
        rerotatePrompt();
    }

    /** The prompt ids: set by {@link #setPrompts}, else encoded once with the model's tokenizer. */
    private void prompts() {
        if (first != null) return;
        Function<String, int[]> enc = model.textEncoder();
        if (enc == null)
            throw new IllegalStateException("kvzip needs the model's tokenizer for its reconstruction prompt: load the model through TokenPress, or call setPrompts");
        first = enc.apply(FIRST);
        later = enc.apply(LATER);
        suffix = enc.apply(SUFFIX);
    }

    private static int[] concat(int[] a, int[] b) {
        int[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    /**
     * Evicts the lowest-scored candidates (pairs of this prompt past the sinks) until the prompt's pairs still cached
     * number at most L·G·keep over all (layer, head) pairs at once, or G·keep per layer; ties go in (layer, head,
     * slot) order. Normally L·G·(n − keep) go; fewer when some of the prompt is gone already (a sliding window).
     */
    private void cut(int n, int keep) {
        if ((long) layers * kvHeads * capacity > 0xFFFFFFFFL)
            throw new IllegalStateException("kvzip: layers x KV heads x capacity exceeds 2^32");
        int groups = layerwise ? layers : 1, layersPer = layerwise ? 1 : layers;
        for (int part = 0; part < groups; part++) {
            int l0 = part * layersPer, l1 = l0 + layersPer;
            long[] keysOf = new long[(int) Math.min(Integer.MAX_VALUE - 8, (long) layersPer * kvHeads * n)];
            int m = 0;
            long present = 0;
            for (int l = l0; l < l1; l++)
                for (int g = 0; g < kvHeads; g++) {
                    int[] pos = cache.positions(l, g);
                    for (int s = 0, hw = cache.highWater(l, g); s < hw; s++) {
                        int p = pos[s];
                        if (p < prefillStart || p >= contextEnd) continue;
                        present++;
                        if (p < sink) continue;
                        long flat = ((long) l * kvHeads + g) * capacity + s;
                        keysOf[m++] = ((long) Float.floatToIntBits(kvz[l][g][s]) << 32) | flat; // scores >= 0: bits order as values
                    }
                }
            int prune = (int) Math.min(m, Math.max(0, present - (long) keep * layersPer * kvHeads));
            LongSelect.smallestFirst(keysOf, 0, m, prune);
            int[][][] victims = new int[layersPer][kvHeads][];
            int[][] count = new int[layersPer][kvHeads];
            for (int i = 0; i < prune; i++) {
                long flat = keysOf[i] & 0xFFFFFFFFL;
                count[(int) (flat / capacity / kvHeads) - l0][(int) (flat / capacity % kvHeads)]++;
            }
            for (int l = 0; l < layersPer; l++) for (int g = 0; g < kvHeads; g++) victims[l][g] = new int[count[l][g]];
            for (int[] c : count) Arrays.fill(c, 0);
            for (int i = 0; i < prune; i++) {
                long flat = keysOf[i] & 0xFFFFFFFFL;
                int l = (int) (flat / capacity / kvHeads) - l0, g = (int) (flat / capacity % kvHeads);
                victims[l][g][count[l][g]++] = (int) (flat % capacity);
            }
            for (int l = 0; l < layersPer; l++) for (int g = 0; g < kvHeads; g++) evict(l0 + l, g, victims[l][g]);
        }
    }

    /** Query rows one piece of host work scores (per q-head). */
    private static final int ROWS = 32;

    /**
     * Scores one call of the reconstruction pass in one layer: for each query row and q-head, the softmax over the
     * sinks, the chunk and the pass's tokens up to the row, and its largest value per chunk pair. The scaled dots of a
     * row come from the CPU backend's vectorized kernels ({@code HostMath}: four q-heads of the group per key load, the
     * softmax numerators by its exp). Per KV head, blocks of rows run through {@code Backend.hostParallel}, each into
     * its own maxima.
     */
    private void score(int layer, Tensor q, int[] positions, int n) {
        int hd = headDim, width = heads * hd;
        float[] qh = backend.download(q, 0, n);
        if (keys == null || keys.length < capacity * hd) {
            keys = new float[capacity * hd];
            values = plus ? new float[capacity * hd] : null;
            subset = new int[capacity];
            subsetPos = new int[capacity];
        }
        float scale = (float) (1.0 / Math.sqrt(hd));
        int sinkEnd = Math.min(sink, chunkStart), tasks = (n + ROWS - 1) / ROWS;
        float[] hn = plus ? model.attentionInputNorms(layer, n) : null;
        if (plus) gram(layer);
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = cache.positions(layer, g);
            int m = 0;
            for (int s = 0, hw = cache.highWater(layer, g); s < hw; s++) {
                int p = pos[s];
                if (p >= 0 && (p < sinkEnd || p >= chunkStart && p < chunkEnd || p >= contextEnd)) {
                    subsetPos[m] = p;
                    subset[m++] = s;
                }
            }
            if (m == 0) continue;
            int lo = subset[0], count = m, head0 = g * group;
            backend.readKvRange(cache, layer, g, lo, subset[m - 1] + 1, keys, plus ? values : null); // the slots the subset spans, not the whole head
            float[][] vn = plus ? valueNorms(layer, g, lo, count, sinkEnd) : null;
            float[][] part = new float[tasks][];
            backend.hostParallel(tasks, t -> {
                int r0 = t * ROWS, r1 = Math.min(n, r0 + ROWS);
                float[][] d = new float[group][count];
                float[] most = new float[count], four = new float[4];
                for (int r = r0; r < r1; r++) {
                    int qp = positions[r], qOff = r * width + head0 * hd;
                    for (int i = 0; i < count; i++) { // the group's q-heads against key i: its loads shared by four
                        int kOff = (subset[i] - lo) * hd, j = 0;
                        for (; j + 3 < group; j += 4) {
                            HostMath.dot4(qh, qOff + j * hd, hd, keys, kOff, hd, four);
                            for (int u = 0; u < 4; u++) d[j + u][i] = four[u] * scale;
                        }
                        for (; j < group; j++) d[j][i] = HostMath.dot(qh, qOff + j * hd, keys, kOff, hd) * scale;
                    }
                    for (int j = 0; j < group; j++) {
                        float[] dh = d[j];
                        float max = Float.NEGATIVE_INFINITY;
                        for (int i = 0; i < count; i++) {
                            if (subsetPos[i] > qp) dh[i] = Float.NEGATIVE_INFINITY; // causal: the pass's later tokens
                            else if (dh[i] > max) max = dh[i];
                        }
                        if (max == Float.NEGATIVE_INFINITY) continue;
                        float inv = (float) (1.0 / HostMath.expShifted(dh, 0, count, max)); // dh: the numerators
                        for (int i = 0; i < count; i++) {
                            int p = subsetPos[i];
                            if (p < chunkStart || p >= chunkEnd) continue;
                            float pr = dh[i] * inv;
                            if (vn != null) pr = pr * vn[j][i] / hn[r]; // KVzip+
                            if (pr > most[i]) most[i] = pr;
                        }
                    }
                }
                part[t] = most;
            });
            float[] best = kvz[layer][g];
            for (float[] most : part)
                for (int i = 0; i < count; i++) if (most[i] > best[subset[i]]) best[subset[i]] = most[i];
        }
    }

    /** KVzip+: a new pass (sinks + chunk + {@code passLength} tokens) starts; its value norms are computed as needed. */
    private void startPassNorms(int passLength) {
        passSpan = Math.min(sink, chunkStart) + (chunkEnd - chunkStart) + passLength;
        if (valueNorms == null) valueNorms = new float[layers][kvHeads][];
        for (float[][] l : valueNorms)
            for (int g = 0; g < kvHeads; g++) {
                if (l[g] == null || l[g].length < group * passSpan) l[g] = new float[group * passSpan];
                Arrays.fill(l[g], Float.NaN);
            }
    }

    /** W_o[h]ᵀ·W_o[h] of layer's q-heads (hd × hd), from W_o [D, H*hd] read once. */
    private void gram(int layer) {
        if (gram == null) gram = new float[layers][][];
        if (gram[layer] != null) return;
        dev.tokenpress.backend.Tensor w = model.weights().layers()[layer].wo();
        int d = w.rows(), width = w.cols(), hd = headDim;
        float[] wo = new float[Math.multiplyExact(d, width)];
        backend.weightRows(w, 0, d, wo);
        float[][] out = new float[heads][hd * hd];
        backend.hostParallel(heads, h -> {
            double[] acc = new double[hd * hd];
            for (int r = 0; r < d; r++)
                for (int a = 0, o = r * width + h * hd; a < hd; a++) {
                    double x = wo[o + a];
                    if (x == 0) continue;
                    for (int b = 0; b < hd; b++) acc[a * hd + b] += x * wo[o + b];
                }
            for (int i = 0; i < acc.length; i++) out[h][i] = (float) acc[i];
        });
        gram[layer] = out;
    }

    /**
     * KVzip+: |v·W_o[h]|₂ = sqrt(v·G_h·vᵀ) of the subset's values (read into {@link #values} from slot {@code lo}) for
     * the group's q-heads, [j][i]; each computed once per pass and kept by its place in the pass (sinks, chunk, pass).
     */
    private float[][] valueNorms(int layer, int g, int lo, int count, int sinkEnd) {
        int hd = headDim, head0 = g * group, chunkLen = chunkEnd - chunkStart;
        float[] cached = valueNorms[layer][g];
        float[][] out = new float[group][count];
        float[][] gl = gram[layer];
        backend.hostParallel((count + 63) / 64, b -> {
            for (int i = b * 64; i < Math.min(count, b * 64 + 64); i++) {
                int p = subsetPos[i];
                int at = p < sinkEnd ? p : p < chunkEnd ? sinkEnd + (p - chunkStart) : sinkEnd + chunkLen + (p - contextEnd);
                for (int j = 0; j < group; j++) {
                    float v = cached[j * passSpan + at];
                    if (Float.isNaN(v)) {
                        float[] gh = gl[head0 + j];
                        double q = 0;
                        for (int a = 0, vo = (subset[i] - lo) * hd; a < hd; a++) {
                            double row = 0;
                            for (int c = 0; c < hd; c++) row += gh[a * hd + c] * values[vo + c];
                            q += values[vo + a] * row;
                        }
                        v = (float) Math.sqrt(Math.max(0, q));
                        cached[j * passSpan + at] = v;
                    }
                    out[j][i] = v;
                }
            }
        });
        return out;
    }

    /** The hooks of the reconstruction pass: score every layer's queries; nothing else. */
    private final class Hooks implements KvPolicy {
        @Override
        public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
            score(layer, q, positions, n);
        }

        @Override
        public String spec() { return KvzipPolicy.this.spec() + " (reconstruction)"; }
    }
}
