package dev.tokenpress.model;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.DecodeStep;
import dev.tokenpress.backend.RopeTable;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.kv.SlotSelection;

import java.util.function.IntConsumer;

/**
 * A Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over the {@link Backend} op contract. {@link #prefill} and
 * {@link #decodeStep} both run {@link #forward}, which reads top to bottom like the architecture figure:
 * embed → L × (norm, qkv, rope, cache, attention, o-proj, residual, norm, SwiGLU MLP, residual) → norm → LM head.
 */
public final class Llama implements AutoCloseable {
    public final LlamaConfig config;
    public final Backend backend;
    private final Weights w;
    private final RopeTable rope;
    private final int maxChunk;

    // activations, allocated once for maxChunk rows
    private final Tensor x;      // [C, D] residual stream
    private final Tensor xn;     // [C, D] RMS-normed residual stream (input of the projections)
    private final Tensor xb;     // [C, D] projection output added to the residual stream
    private final Tensor q;      // [C, H*hd]
    private final Tensor k;      // [C, Hkv*hd]
    private final Tensor v;      // [C, Hkv*hd]
    private final Tensor att;    // [C, H*hd] attention output
    private final Tensor gate;   // [C, F]
    private final Tensor up;     // [C, F]
    private final Tensor last;   // [1, D] final hidden state of the last row
    private final Tensor logits; // [1, V]
    private Tensor allLogits;    // [C, V], only when all-position logits are asked for

    private KvPolicy policy = KvPolicy.FULL;
    /** Mistral's sliding window W (0 = none): a query at position p attends to positions (p - W, p]. */
    private final int window;

    // greedy token feedback (decodeGreedy)
    private Boolean pipelinedGreedy = pipelinedDefault(); // null: where the backend has token feedback; true: always; false: never
    private boolean feedbackEmbedding;      // forward embeds the backend's feedback token instead of tokens[0]
    private boolean embeddedInput;          // forward starts from x as uploaded (decodeStepEmbedded), no embedding
    private int firstLayer;                 // forward runs layers [firstLayer, L) (decodeStepFrom; 0 otherwise)
    private int emulatedRegister;           // host emulation of the feedback register (backends without one)
    private final int[] emulatedTickets = new int[2];
    private int[][] lastStepSlots;          // [layer][kvHead] slots of the last decode step

    // batched decoding (decodeBatch): the step's rows, their slots [row][layer][kvHead][1], one-row scratch
    private BatchRow[] batchRows;
    private boolean batchRowViews = true;
    private int[][][][] batchSlots;
    private int[] batchRowOf;   // the last batch: row -> its row of the logits, -1 when left out
    private Tensor q1, k1, v1, att1;

    public Llama(LlamaConfig config, Weights weights, Backend backend, int maxChunk) {
        this.config = config;
        this.backend = backend;
        this.w = weights;
        this.rope = RopeTable.of(config);
        this.maxChunk = Math.max(1, maxChunk);
        this.window = config.slidingWindow() == null ? 0 : config.slidingWindow();
        int c = this.maxChunk, d = config.hiddenSize(), f = config.intermediateSize();
        x = backend.allocate(c, d);
        xn = backend.allocate(c, d);
        xb = backend.allocate(c, d);
        q = backend.allocate(c, config.qDim());
        k = backend.allocate(c, config.kvDim());
        v = backend.allocate(c, config.kvDim());
        att = backend.allocate(c, config.qDim());
        gate = backend.allocate(c, f);
        up = backend.allocate(c, f);
        last = backend.allocate(1, d);
        logits = backend.allocate(1, config.vocabSize());
    }

    public Weights weights() { return w; }

    public int maxChunk() { return maxChunk; }

    public KvPolicy policy() { return policy; }

    public void setPolicy(KvPolicy policy) {
        this.policy = policy == null ? KvPolicy.FULL : policy;
        this.policy.attach(this);
    }

    /** A KV cache for this model in the backend's memory, {@code capacity} slots per layer and KV head. */
    public KvCache newCache(int capacity) {
        return backend.newKvCache(config.numLayers(), config.numKvHeads(), config.headDim(), capacity);
    }

    /**
     * {@code count} caches for the sequences of a batch ({@link #decodeBatch}), which a backend may lay out together
     * so that a batched step attends over several in one call ({@code Backend.newKvCaches}).
     */
    public KvCache[] newCaches(int capacity, int count) {
        return backend.newKvCaches(config.numLayers(), config.numKvHeads(), config.headDim(), capacity, count);
    }

    /** The rotary embedding's inverse frequencies and attention scale (RoPE scaling applied). */
    public RopeTable rope() { return rope; }

    /** A KV cache stored as {@code quant} says ({@code --kv-quant}); none = {@link #newCache(int)}. */
    public KvCache newCache(int capacity, dev.tokenpress.kv.quant.KvQuantSpec quant) {
        return backend.newKvCache(config.numLayers(), config.numKvHeads(), config.headDim(), capacity, quant);
    }

    /**
     * Runs tokens at positions startPos.. through the model in chunks of at most {@link #maxChunk()} rows,
     * appending them to the cache. Afterwards {@link #logits()} holds the last token's logits.
     *
     * @param allLogits when true, returns the logits of every token [n * V]; otherwise null
     * @param progress  receives the number of tokens processed so far (nullable)
     */
    public float[] prefill(KvCache cache, int[] tokens, int startPos, boolean allLogits, IntConsumer progress) {
        float[] out = allLogits ? new float[Math.multiplyExact(tokens.length, config.vocabSize())] : null;
        prefill(cache, tokens, tokens.length, startPos, allLogits
                ? (part, first) -> System.arraycopy(part, 0, out, first * config.vocabSize(), part.length) : null, progress);
        return out;
    }

    /**
     * Prefills {@code tokens[0..n)} from {@code startPos}, chunk by chunk; with {@code rows} non-null each chunk's
     * logits ([m, V], row-major) go to it with the index of the chunk's first token, so every position's logits can
     * be used without holding all of them (memory: one chunk).
     */
    public void prefill(KvCache cache, int[] tokens, int n, int startPos, java.util.function.ObjIntConsumer<float[]> rows,
                        IntConsumer progress) {
        prefillChunks(cache, tokens, n, startPos, rows == null ? null : (first, m) -> rows.accept(backend.download(allLogits(), 0, m), first), progress);
    }

    /** What a scored prefill hands over per chunk: its rows' reductions (see {@link #prefillScored}). */
    @FunctionalInterface
    public interface ScoredRows {
        /**
         * Rows {@code first .. first + m − 1} of the prefill: lse[r] = log Σ e^logits, target[r] = the logit of
         * targets[first + r] (NaN where there is none), and with top > 0 the top ids and logits of each row.
         */
        void accept(int first, int m, double[] lse, double[] target, int[][] topIds, float[][] topLogits);
    }

    /**
     * {@link #prefill} that scores every row where its logits live ({@link Backend#logSumExpRows}, and
     * {@link Backend#topKRows} for the {@code top} most likely tokens), so on a GPU a chunk's logits never cross to
     * the host: only 2 numbers per row, plus 2·top with alternatives. {@code targets[i]} is the token row i is scored
     * on (-1: none).
     */
    public void prefillScored(KvCache cache, int[] tokens, int n, int startPos, int[] targets, int top, ScoredRows rows,
                              IntConsumer progress) {
        prefillChunks(cache, tokens, n, startPos, (first, m) -> {
            int[] t = new int[m];
            for (int r = 0; r < m; r++) t[r] = first + r < targets.length ? targets[first + r] : -1;
            double[] lse = new double[m], target = new double[m];
            backend.logSumExpRows(allLogits(), m, t, lse, target);
            int[][] ids = null;
            float[][] vals = null;
            if (top > 0) {
                int k = Math.min(top, config.vocabSize());
                int[] rowsOf = new int[m], ks = new int[m];
                vals = new float[m][k];
                for (int r = 0; r < m; r++) {
                    rowsOf[r] = r;
                    ks[r] = k;
                }
                ids = backend.topKRows(allLogits(), rowsOf, ks, vals);
            }
            rows.accept(first, m, lse, target, ids, vals);
        }, progress);
    }

    private interface ChunkDone {
        void accept(int first, int m);
    }

    private void prefillChunks(KvCache cache, int[] tokens, int n, int startPos, ChunkDone rows, IntConsumer progress) {
        policy.prefillTokens(tokens, n);
        policy.beginPrefill(cache, startPos, n);
        for (int done = 0; done < n; ) {
            int m = Math.min(maxChunk, n - done);
            // sliding window: the tokens of a chunk share its keys, so past the window each token runs alone
            // (row r of a chunk from p0 may only see positions > p0 + r - W; the cache drops those <= p0 - W)
            if (window > 0 && !observing) m = Math.max(1, Math.min(m, window - (startPos + done)));
            int[] chunk = new int[m], positions = new int[m];
            for (int i = 0; i < m; i++) {
                chunk[i] = tokens[done + i];
                positions[i] = startPos + done + i;
            }
            forward(cache, chunk, positions, m, allocateSlots(cache, positions, m), rows != null);
            if (rows != null) rows.accept(done, m);
            done += m;
            if (progress != null) progress.accept(done);
        }
        policy.endPrefill(cache);
    }

    /** Runs one token at {@code position}; afterwards {@link #logits()} / {@link #argmax()} read its logits. */
    public void decodeStep(KvCache cache, int token, int position) {
        decodeStepFrom(cache, token, position, 0);
    }

    /**
     * The slots of a one-token step in layers [{@code firstLayer}, L), allocated; {@link #lastStepSlots} becomes them as
     * [layer][kvHead] (−1 in the layers below).
     */
    private int[][][] allocateStepSlots(KvCache cache, int[] positions, int firstLayer) {
        int[][][] slots = allocateSlots(cache, positions, 1, firstLayer);
        int[][] stepSlots = new int[config.numLayers()][config.numKvHeads()];
        for (int l = 0; l < stepSlots.length; l++)
            for (int g = 0; g < stepSlots[l].length; g++) stepSlots[l][g] = l < firstLayer ? -1 : slots[l][g][0];
        lastStepSlots = stepSlots;
        return slots;
    }

    /**
     * Runs one step whose input is the hidden vector {@code embedding} [D] instead of a token's embedding row (Superposed
     * Decoding feeds a weighted sum of several tokens' rows); afterwards {@link #logits()} reads its logits. The vector
     * is written into the step's input before the step runs, so a backend that replays captured steps replays this
     * one too.
     */
    public void decodeStepEmbedded(KvCache cache, float[] embedding, int position) {
        if (embedding.length != config.hiddenSize())
            throw new IllegalArgumentException("an input vector has " + config.hiddenSize() + " entries, not " + embedding.length);
        int[] positions = {position};
        int[][][] slots = allocateStepSlots(cache, positions, 0);
        backend.upload(x, embedding);
        DecodeStep step = new DecodeStep(-1, position, lastStepSlots, cache);
        embeddedInput = true;
        try {
            backend.runDecodeStep(step, () -> forward(cache, null, positions, 1, slots, false));
        } finally {
            embeddedInput = false;
        }
    }

    /**
     * One step that runs only layers [{@code firstLayer}, L) (SkipDecode, arXiv 2307.02628): the token's embedding goes
     * into layer {@code firstLayer}, and the layers below get no key or value for it (no slot is allocated there).
     * Attention in a layer sees the tokens that ran it; SkipDecode's schedule never lowers the first layer along a
     * sequence, so no later token queries a layer that a skipped token is missing from. Full policy only.
     */
    public void decodeStepFrom(KvCache cache, int token, int position, int firstLayer) {
        if (firstLayer < 0 || firstLayer >= config.numLayers())
            throw new IllegalArgumentException("first layer " + firstLayer + " outside [0, " + config.numLayers() + ")");
        if (firstLayer > 0 && policy != KvPolicy.FULL) throw new UnsupportedOperationException("skipping layers needs the full --kv policy");
        int[] positions = {position};
        int[] tokens = {token};
        int[][][] slots = allocateStepSlots(cache, positions, firstLayer);
        DecodeStep step = new DecodeStep(token, position, lastStepSlots, cache);
        this.firstLayer = firstLayer;
        try {
            backend.runDecodeStep(step, () -> forward(cache, tokens, positions, 1, slots, false));
        } finally {
            this.firstLayer = 0;
        }
    }

    /** Row {@code token} of the embedding table as floats (dst [D]): the input vector {@link #decodeStep} feeds. */
    public void embeddingRow(int token, float[] dst) {
        if (token < 0 || token >= config.vocabSize()) throw new IllegalArgumentException("token " + token + " outside the vocabulary");
        backend.weightRows(w.embed(), token, 1, dst);
    }

    /**
     * One row of a batched decode step: {@code token} at {@code position} of the sequence whose KV cache is
     * {@code cache}, under {@code policy} (attached to this model, one instance per sequence; null = full).
     */
    public record BatchRow(KvCache cache, KvPolicy policy, int token, int position) {}

    /**
     * One decode step for several sequences at once (continuous batching): the projections, MLPs and LM head run once
     * over all rows, so the weights are read once per step for the whole batch; RoPE, the KV store, the policy's
     * hooks and attention run per row over the row's own cache. Each row's logits are those of
     * {@link #decodeStep} on its cache alone (the same ops; the matmuls over several rows may round differently).
     * Afterwards {@link #batchLogits(int)} reads row i's logits. The model's own policy ({@link #setPolicy}) is not
     * used. Rows: 1 to {@link #maxChunk()}, each with its own cache.
     *
     * <p>A row whose cache cannot take its token (its policy's {@code beforeAppend} throws
     * {@link dev.tokenpress.kv.KvCacheFullException}, or a layer and KV head has no free slot) is left out of the step
     * before any slot is allocated, so its cache keeps its state; the others run.
     *
     * @return the indices of the rows left out (empty when all ran)
     */
    public int[] decodeBatch(BatchRow[] rows) {
        int n = rows.length;
        if (n < 1 || n > maxChunk)
            throw new IllegalArgumentException("a batch holds 1 to " + maxChunk + " rows (the prefill chunk, -b), not " + n);
        java.util.Set<KvCache> seen = java.util.Collections.newSetFromMap(new java.util.IdentityHashMap<>());
        for (BatchRow r : rows)
            if (!seen.add(r.cache())) throw new IllegalArgumentException("two rows of a batch share a KV cache: one row per sequence");
        int[] rowOf = new int[n];
        int m = 0;
        java.util.List<Integer> dropped = new java.util.ArrayList<>();
        for (int i = 0; i < n; i++) {
            BatchRow r = rows[i];
            KvPolicy p = r.policy() == null ? KvPolicy.FULL : r.policy();
            boolean fits;
            try {
                dropOutsideWindow(r.cache(), r.position());
                p.beforeAppend(r.cache(), new int[]{r.position()}, 1);
                fits = hasFreeSlot(r.cache());
            } catch (dev.tokenpress.kv.KvCacheFullException e) {
                fits = false;
            }
            if (fits) rowOf[i] = m++;
            else {
                rowOf[i] = -1;
                dropped.add(i);
            }
        }
        batchRowOf = rowOf;
        if (m == 0) return dropped.stream().mapToInt(Integer::intValue).toArray();
        BatchRow[] run = new BatchRow[m];
        int[] tokens = new int[m], positions = new int[m];
        int[][][][] slots = new int[m][][][];
        for (int i = 0; i < n; i++) {
            if (rowOf[i] < 0) continue;
            BatchRow r = rows[i];
            int j = rowOf[i];
            run[j] = r;
            tokens[j] = r.token();
            positions[j] = r.position();
            int[] pos = {r.position()};
            slots[j] = new int[config.numLayers()][config.numKvHeads()][];
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) slots[j][l][g] = r.cache().allocate(l, g, pos, 1);
        }
        allLogits(); // allocated before the step (a captured step cannot allocate)
        if (q1 == null) {
            q1 = backend.allocate(1, config.qDim());
            k1 = backend.allocate(1, config.kvDim());
            v1 = backend.allocate(1, config.kvDim());
            att1 = backend.allocate(1, config.qDim());
        }
        batchRows = run;
        batchSlots = slots;
        try {
            int count = m;
            backend.runBatchStep(count, () -> forward(null, tokens, positions, count, null, true));
        } catch (RuntimeException | Error e) {
            batchRowOf = null; // no logits of this step to read
            throw e;
        } finally {
            batchRows = null;
            batchSlots = null;
        }
        return dropped.stream().mapToInt(Integer::intValue).toArray();
    }

    /** Mistral's sliding window: frees the slots no query from {@code position} on can see (positions <= p - W). */
    private void dropOutsideWindow(KvCache cache, int position) {
        int floor = position - window;
        if (window <= 0 || floor < 0) return;
        for (int l = 0; l < cache.layers(); l++)
            for (int g = 0; g < cache.kvHeads(); g++) {
                int[] pos = cache.positions(l, g);
                for (int s = cache.highWater(l, g) - 1; s >= 0; s--)
                    if (pos[s] >= 0 && pos[s] <= floor) cache.free(l, g, s);
            }
    }

    /** The model's sliding window in tokens (Mistral's {@code sliding_window}), 0 when attention sees everything. */
    public int slidingWindow() { return window; }

    /** Whether every layer and KV head of the cache has a free slot. */
    private static boolean hasFreeSlot(KvCache c) {
        for (int l = 0; l < c.layers(); l++)
            for (int g = 0; g < c.kvHeads(); g++) if (c.occupied(l, g) >= c.capacity()) return false;
        return true;
    }

    /**
     * Whether batched steps run attention on row views of the step's tensors where the backend has them (the
     * default) or through one-row copies (for comparisons).
     */
    public void setBatchRowViews(boolean on) {
        batchRowViews = on;
    }

    /** Logits [V] of row {@code row} of the last {@link #decodeBatch} (a row it left out has none). */
    public float[] batchLogits(int row) {
        return backend.download(allLogits(), batchRow(row), 1);
    }

    /** Greedy token of row {@code row} of the last {@link #decodeBatch}, computed where the logits live. */
    public int batchArgmax(int row) {
        return backend.argmax(allLogits(), batchRow(row));
    }

    /**
     * {@link #batchLogits} of every row of the last {@link #decodeBatch} in one download ([row][V]; null for a row
     * it left out).
     */
    public float[][] batchLogitsAll() {
        int[] rowOf = batchRowOf();
        int m = 0;
        for (int j : rowOf) m = Math.max(m, j + 1);
        float[] all = m == 0 ? new float[0] : backend.download(allLogits(), 0, m);
        int v = config.vocabSize();
        float[][] out = new float[rowOf.length][];
        for (int i = 0; i < rowOf.length; i++)
            if (rowOf[i] >= 0) out[i] = java.util.Arrays.copyOfRange(all, rowOf[i] * v, (rowOf[i] + 1) * v);
        return out;
    }

    /**
     * The {@code k[i]} largest logits of row i of the last {@link #decodeBatch}, best first (ties: lower id first),
     * computed where the logits live and read back together; values into {@code valuesOut[i]} (k[i] entries). Null
     * for a row with k[i] <= 0 or one the batch left out.
     */
    public int[][] batchTopLogits(int[] k, float[][] valuesOut) {
        int[] rowOf = batchRowOf();
        if (k.length != rowOf.length) throw new IllegalArgumentException(k.length + " k for " + rowOf.length + " rows");
        int[] rows = new int[rowOf.length], kk = new int[rowOf.length];
        for (int i = 0; i < rowOf.length; i++) {
            rows[i] = Math.max(rowOf[i], 0);
            kk[i] = rowOf[i] >= 0 ? k[i] : 0;
        }
        return backend.topKRows(allLogits(), rows, kk, valuesOut);
    }

    /** {@link #batchArgmax} of every row of the last {@link #decodeBatch}, read back together (-1 for a row it left out). */
    public int[] batchArgmaxAll() {
        int[] rowOf = batchRowOf();
        int m = 0;
        for (int j : rowOf) m = Math.max(m, j + 1);
        int[] idx = m == 0 ? new int[0] : backend.argmaxRows(allLogits(), m);
        int[] out = new int[rowOf.length];
        for (int i = 0; i < rowOf.length; i++) out[i] = rowOf[i] >= 0 ? idx[rowOf[i]] : -1;
        return out;
    }

    private int[] batchRowOf() {
        if (batchRowOf == null) throw new IllegalStateException("no batched step has run");
        return batchRowOf;
    }

    private int batchRow(int row) {
        if (batchRowOf == null || row < 0 || row >= batchRowOf.length)
            throw new IllegalArgumentException("row " + row + " is not a row of the last batch");
        if (batchRowOf[row] < 0) throw new IllegalStateException("row " + row + " was left out of the last batch: its cache is full");
        return batchRowOf[row];
    }

    /**
     * {@link #prefill(KvCache, int[], int, boolean, IntConsumer)} under {@code policy} (attached to this model) instead of
     * the model's own policy, for a sequence decoded with {@link #decodeBatch}.
     */
    public void prefillWith(KvPolicy policy, KvCache cache, int[] tokens, int startPos, IntConsumer progress) {
        KvPolicy own = this.policy;
        this.policy = policy == null ? KvPolicy.FULL : policy;
        try {
            prefill(cache, tokens, startPos, false, progress);
        } finally {
            this.policy = own;
        }
    }

    /** {@code -Dtokenpress.pipelinedGreedy=false} turns pipelined greedy decoding off (true forces it); unset: auto. */
    private static Boolean pipelinedDefault() {
        String v = System.getProperty("tokenpress.pipelinedGreedy", System.getenv("TOKENPRESS_PIPELINED_GREEDY"));
        if (v == null || v.isBlank() || v.equalsIgnoreCase("auto")) return null;
        return !(v.equalsIgnoreCase("false") || v.equals("0"));
    }

    /**
     * Pipelined greedy decoding in {@link #decodeGreedy}: {@code null} (the default) where the backend has token
     * feedback ({@link Backend#tokenFeedback}), {@code true} also where it has none (the register then lives on the
     * host: the same control flow without the overlap, for tests), {@code false} never.
     */
    public void setPipelinedGreedy(Boolean mode) {
        this.pipelinedGreedy = mode;
    }

    /**
     * Greedy decoding from {@code token} at {@code position}: up to {@code maxSteps} decode steps; after each, the
     * greedy next token goes to {@code onToken}, and decoding goes on with it while onToken returns true and steps
     * remain. Returns the number of steps run. Tokens, logits and the cache end as this plain loop leaves them:
     * <pre>
     * for (int s = 0; s &lt; maxSteps; ) {
     *     decodeStep(cache, token, position + s++);
     *     token = argmax();
     *     if (!onToken.test(token)) break;
     * }</pre>
     * Where the backend has token feedback, the policy is {@code full} or otherwise {@link KvPolicy#speculationSafe}
     * (TidalDecode) and the cache's appends are reversible, the
     * step for a token is queued before that token reaches the host (its embedding reads the backend's feedback
     * register), so the host's work for a step (slot bookkeeping, step values, launch) overlaps the device's work
     * on the previous one; a step queued for a token that onToken refuses is taken back (its slots freed).
     *
     * @throws dev.tokenpress.kv.KvCacheFullException when the cache cannot take a token onToken accepted, as the
     *                                                 plain loop would
     */
    public int decodeGreedy(KvCache cache, int token, int position, int maxSteps, java.util.function.IntPredicate onToken) {
        if (maxSteps <= 0) return 0;
        boolean device = backend.tokenFeedback();
        boolean pipe = pipelinedGreedy == null ? device : pipelinedGreedy;
        if (!pipe || (policy != KvPolicy.FULL && !policy.speculationSafe()) || !cache.appendsReversible()) {
            int s = 0;
            while (s < maxSteps) {
                decodeStep(cache, token, position + s++);
                token = argmax();
                if (!onToken.test(token)) break;
            }
            return s;
        }
        if (device) backend.setFeedbackToken(token);
        else emulatedRegister = token;
        decodeStepFromFeedback(cache, position, device);
        argmaxToFeedback(0, device);
        int steps = 1, ticket = 0;
        while (true) {
            dev.tokenpress.kv.KvCacheFullException full = null;
            boolean queued = false;
            if (steps < maxSteps) {
                try {
                    decodeStepFromFeedback(cache, position + steps, device); // input: the token of the step before
                    argmaxToFeedback(ticket ^ 1, device);
                    queued = true;
                } catch (dev.tokenpress.kv.KvCacheFullException e) {
                    full = e;
                }
            }
            int t = device ? backend.feedbackToken(ticket) : emulatedTickets[ticket];
            if (!onToken.test(t)) {
                if (queued) takeBackLastStep(cache, position + steps);
                return steps;
            }
            if (full != null) throw full;
            if (!queued) return steps;
            steps++;
            ticket ^= 1;
        }
    }

    /** Drafted and accepted tokens of speculative decoding since this model was made. */
    private long drafted, draftAccepted;

    /** {drafted, accepted} tokens of speculative decoding ({@link #decodeSpeculative}) so far. */
    public long[] draftCounts() {
        return new long[] {drafted, draftAccepted};
    }

    /** Picks the token that follows a position from its logits ([V], only read): sampling, or a constrained choice. */
    @FunctionalInterface
    public interface TokenChooser {
        int choose(float[] logits);

        /**
         * The sampler chain behind {@link #choose}, when choosing is nothing but that chain's {@code sample}: then a
         * row's top candidates may stand for the row ({@link #sample}'s rule); null (the default) always passes the row.
         */
        default dev.tokenpress.sample.SamplerChain chain() {
            return null;
        }
    }

    /**
     * The chooser's token for row {@code row} of the last pass's logits (-1: the last token's, {@link #logits()}):
     * from the row's top candidates where the chooser's chain can decide from them, as {@link #sample} does, else
     * from the whole row.
     */
    private int choose(TokenChooser c, int row) {
        int t = c.chain() == null ? -1 : fromCandidates(c.chain(), row);
        return t >= 0 ? t : c.choose(row < 0 ? logits() : backend.download(allLogits(), row, 1));
    }

    /**
     * The chain's token for row {@code row} of the last pass's logits (-1: the last token's) from the row's top
     * candidates where they decide it, else -1 (nothing drawn): the whole row is the caller's.
     */
    private int fromCandidates(dev.tokenpress.sample.SamplerChain chain, int row) {
        int m = candidateSampling() ? chain.candidateCount() : 0;
        if (m == 0) return -1;
        float[] values = new float[m];
        int[] ids = backend.topK(row < 0 ? logits : allLogits(), Math.max(row, 0), m, values);
        return ids.length == m ? chain.sampleCandidates(ids, values, m) : -1;
    }

    /**
     * Speculative decoding: before each step the drafter proposes up to {@code maxDraft} tokens; one forward pass over
     * the current token and the draft gives the logits after each of them, and the tokens are chosen from those
     * rows in order, the draft's tokens kept while they equal the choice, the rest freed again (llama.cpp's
     * verification: every token is chosen from the target's own logits after the tokens before it). So the tokens
     * are exactly those of one-token-at-a-time decoding with the same chooser (a seeded sampler draws the same
     * numbers in the same order), and a pass can yield several tokens for about the price of one: the weights are
     * read once for all rows.
     * <p>
     * Contract as {@link #decodeGreedy}: {@code token} is the first token to feed (at {@code position}),
     * {@code onToken} receives each next token and returns false to stop (that token is not fed), at most
     * {@code maxSteps} tokens are fed; returns how many were. {@code chooser} picks a token from a row's logits (null:
     * the argmax, computed where the logits live). {@code context[0..contextLen)} are the tokens before {@code token}
     * (token i at position i). Needs the full policy and a cache whose appends can be freed exactly ({@link
     * KvCache#appendsReversible}); otherwise it decodes one token at a time. Afterwards {@link #logits()} may hold a
     * rejected draft position's logits rather than the last fed token's.
     */
    public int decodeSpeculative(KvCache cache, int token, int position, int maxSteps, TokenChooser chooser,
                                 java.util.function.IntPredicate onToken, int[] context, int contextLen,
                                 Drafter drafter, int maxDraft) {
        if (policy != KvPolicy.FULL || window > 0 || !cache.appendsReversible() || maxDraft <= 0 || drafter == null) {
            if (chooser == null) return decodeGreedy(cache, token, position, maxSteps, onToken);
            int fed = 0, cur = token;
            while (fed < maxSteps) {
                decodeStep(cache, cur, position + fed);
                fed++;
                int next = choose(chooser, -1);
                if (!onToken.test(next)) return fed;
                cur = next;
            }
            return fed;
        }
        int[] seq = java.util.Arrays.copyOf(context, Math.max(16, contextLen + 64));
        int len = contextLen;
        int fed = 0, cur = token;
        while (fed < maxSteps) {
            int want = Math.min(maxDraft, Math.min(maxSteps - fed - 1, maxChunk - 1));
            if (len + 2 + want > seq.length) seq = java.util.Arrays.copyOf(seq, (int) Math.min(Integer.MAX_VALUE - 8,
                    Math.max(2L * seq.length, (long) len + 2 + want)));
            seq[len++] = cur;
            int[] draft = drafter.draft(seq, len, want);
            if (draft.length > want) draft = java.util.Arrays.copyOf(draft, want); // a drafter may not widen the pass
            int m = 1 + draft.length;
            if (m == 1) {
                decodeStep(cache, cur, position + fed); // nothing to check: a plain step (graphs, fused decode ops)
            } else {
                int[] feed = new int[m], positions = new int[m];
                feed[0] = cur;
                System.arraycopy(draft, 0, feed, 1, draft.length);
                for (int i = 0; i < m; i++) positions[i] = position + fed + i;
                policy.beginPrefill(cache, positions[0], m);
                forward(cache, feed, positions, m, allocateSlots(cache, positions, m), true);
                policy.endPrefill(cache);
            }
            drafted += draft.length;
            fed++;                                          // cur is in the cache
            for (int i = 0; ; i++) {
                // the token after feed[i]: draft[i] stays iff it is the one chosen there
                int t = chooser == null ? (m > 1 ? backend.argmax(allLogits(), i) : argmax()) : choose(chooser, m > 1 ? i : -1);
                if (i < draft.length && t == draft[i]) {
                    draftAccepted++;
                    if (!onToken.test(t)) {                 // draft[i] is not to be fed after all
                        cache.freeFrom(position + fed);
                        return fed;
                    }
                    seq[len++] = t;
                    fed++;
                    continue;
                }
                if (i < draft.length) cache.freeFrom(position + fed); // draft[i..] rejected
                if (!onToken.test(t)) return fed;
                cur = t;
                break;
            }
        }
        return fed;
    }

    /** A decode step at {@code position} whose input token is the feedback register's. */
    private void decodeStepFromFeedback(KvCache cache, int position, boolean device) {
        if (!device) {
            decodeStep(cache, emulatedRegister, position);
            return;
        }
        feedbackEmbedding = true;
        try {
            decodeStep(cache, 0, position); // token 0: a placeholder, the embedding reads the register
        } finally {
            feedbackEmbedding = false;
        }
    }

    private void argmaxToFeedback(int ticket, boolean device) {
        if (device) {
            backend.argmaxToFeedback(logits, 0, ticket);
        } else {
            emulatedRegister = backend.argmax(logits, 0);
            emulatedTickets[ticket] = emulatedRegister;
        }
    }

    /** Frees the slots of the last decode step (a speculative step at {@code position} nobody asked for). */
    private void takeBackLastStep(KvCache cache, int position) {
        for (int l = 0; l < lastStepSlots.length; l++)
            for (int g = 0; g < lastStepSlots[l].length; g++) {
                int slot = lastStepSlots[l][g];
                if (slot >= 0 && cache.position(l, g, slot) == position) cache.free(l, g, slot); // -1: a skipped layer
            }
    }

    /** Logits of the last token processed, [V]. */
    public float[] logits() {
        return backend.download(logits, 0, 1);
    }

    /** The device-side logits of the last token, [1, V] (for on-device argmax / top-k). */
    public Tensor logitsTensor() {
        return logits;
    }

    /**
     * The sampled token of the last position: where the chain can decide it from the most likely tokens alone
     * ({@link dev.tokenpress.sample.SamplerChain#candidateCount}: top-k on, only penalties that lower logits before
     * it, no trace) those come from {@link #topLogits} — on a GPU a device top-k, so k ids and values cross instead of
     * the whole row — and the chain samples from them: the same token as from the whole row, the same chain state
     * after. Otherwise, or when the candidates cannot decide it, the whole row is read.
     * {@code -Dtokenpress.candidateSampling=false} always reads the whole row.
     */
    public int sample(dev.tokenpress.sample.SamplerChain chain) {
        int t = fromCandidates(chain, -1);
        return t >= 0 ? t : chain.sample(logits());
    }

    /** Whether sampling may use the top candidates ({@code -Dtokenpress.candidateSampling}, default true). */
    public static boolean candidateSampling() {
        return Boolean.parseBoolean(System.getProperty("tokenpress.candidateSampling", "true"));
    }

    /**
     * The {@code k} largest logits of the last token processed, best first (ties: lower id first), computed where the
     * logits live, so only k ids and values cross from a device; values into {@code valuesOut} (k entries) when given.
     */
    public int[] topLogits(int k, float[] valuesOut) {
        return backend.topK(logits, 0, k, valuesOut);
    }

    /** Greedy token of the last position, computed where the logits live. */
    public int argmax() {
        return backend.argmax(logits, 0);
    }

    /** Lets the policy evict, then allocates one slot per (layer, KV head, token): [L][Hkv][n]. */
    private int[][][] allocateSlots(KvCache cache, int[] positions, int n) {
        return allocateSlots(cache, positions, n, 0);
    }

    /** Slots for n tokens in layers [firstLayer, L) (null below: a skipped layer stores nothing). */
    private int[][][] allocateSlots(KvCache cache, int[] positions, int n, int firstLayer) {
        if (!observing) dropOutsideWindow(cache, positions[0]); // first: the policy then sees (and budgets) only what stays visible
        policy.beforeAppend(cache, positions, n);
        int[][][] slots = new int[config.numLayers()][config.numKvHeads()][];
        for (int l = firstLayer; l < slots.length; l++)
            for (int g = 0; g < slots[l].length; g++) slots[l][g] = cache.allocate(l, g, positions, n);
        return slots;
    }

    /**
     * RoPE + KV store of layer l's q/k/v (unless {@code stored}: done with the projections), the KV policy's hooks and
     * attention into {@code att}.
     */
    private void attentionBlock(KvCache cache, int[] positions, int n, int[][][] slots, int l, boolean stored) {
        Weights.Layer lw = w.layers()[l];
        if (lw.qNorm() != null) { // Qwen3: each head's q and k RMS-normalized before RoPE
            int rows = batchRows != null ? batchRows.length : n;
            backend.rmsnormHeads(q, lw.qNorm(), config.rmsNormEps(), rows, config.numHeads());
            backend.rmsnormHeads(k, lw.kNorm(), config.rmsNormEps(), rows, config.numKvHeads());
        }
        if (batchRows != null) {
            batchAttention(l);
            return;
        }
        LlamaConfig c = config;
        if (!stored)
            backend.ropeStoreKv(q, c.numHeads(), k, v, c.numKvHeads(), // q [n, H*hd], k [n, Hkv*hd] rotated;
                    rope, positions, cache, l, slots[l], n);          // cache[l] <- k, v
        policy.beforeAttention(cache, l, q, positions, n);
        SlotSelection sel = policy.select(cache, l, n);
        AttentionStats stats = policy.stats(cache, l, n);
        backend.attention(att, q, cache, l, positions, n, sel, stats); // att [n, H*hd]
        policy.afterAttention(cache, l, n, stats);
    }

    /**
     * {@link #attentionBlock} of a batched step: row by row, each over its own cache under its own policy; on row
     * views of q, k, v and att where the backend has them (no copies), else through one-row scratch tensors.
     */
    private void batchAttention(int l) {
        LlamaConfig c = config;
        int rows = batchRows.length;
        boolean full = true;
        for (BatchRow r : batchRows) full &= r.policy() == null || r.policy() == KvPolicy.FULL;
        if (full) { // no per-row hooks: the backend may store and attend for all rows in a few calls
            KvCache[] caches = new KvCache[rows];
            int[] pos = new int[rows];
            int[][] rowSlots = new int[rows][c.numKvHeads()];
            for (int i = 0; i < rows; i++) {
                caches[i] = batchRows[i].cache();
                pos[i] = batchRows[i].position();
                for (int g = 0; g < c.numKvHeads(); g++) rowSlots[i][g] = batchSlots[i][l][g][0];
            }
            if (backend.batchDecodeAttention(att, q, c.numHeads(), k, v, c.numKvHeads(), rope, pos, caches, l, rowSlots, rows))
                return;
        }
        for (int i = 0; i < batchRows.length; i++) {
            BatchRow r = batchRows[i];
            KvPolicy p = r.policy() == null ? KvPolicy.FULL : r.policy();
            int[] pos = {r.position()};
            Tensor qi = null, ki = null, vi = null, ai = null;
            if (batchRowViews) {
                qi = backend.rowView(q, i);
                ki = backend.rowView(k, i);
                vi = backend.rowView(v, i);
                ai = backend.rowView(att, i);
            }
            boolean views = qi != null && ki != null && vi != null && ai != null;
            if (!views) {
                backend.copyRows(q1, 0, q, i, 1);
                backend.copyRows(k1, 0, k, i, 1);
                backend.copyRows(v1, 0, v, i, 1);
                qi = q1;
                ki = k1;
                vi = v1;
                ai = att1;
            }
            backend.ropeStoreKv(qi, c.numHeads(), ki, vi, c.numKvHeads(), rope, pos, r.cache(), l, batchSlots[i][l], 1);
            p.beforeAttention(r.cache(), l, qi, pos, 1);
            SlotSelection sel = p.select(r.cache(), l, 1);
            AttentionStats stats = p.stats(r.cache(), l, 1);
            backend.attention(ai, qi, r.cache(), l, pos, 1, sel, stats);
            p.afterAttention(r.cache(), l, 1, stats);
            if (!views) backend.copyRows(att, i, att1, 0, 1);
        }
    }

    /** The forward pass over n tokens (rows) at the given positions, whose cache slots are already allocated. */
    private void forward(KvCache cache, int[] tokens, int[] positions, int n, int[][][] slots, boolean allRows) {
        Backend b = backend;
        LlamaConfig c = config;
        float eps = c.rmsNormEps();
        if (embeddedInput && n == 1) { /* x [1, D] uploaded by decodeStepEmbedded */ }
        else if (feedbackEmbedding && n == 1) b.embeddingFromFeedback(x, w.embed()); // x [1, D] of the register's token
        else b.embedding(x, w.embed(), tokens, n);                   // x [n, D]
        if (b.fusesNormIntoMatmul()) {
            // each RMSNorm inside the projections that read it, each residual add inside the projection that feeds it
            for (int l = firstLayer; l < c.numLayers(); l++) {
                Weights.Layer lw = w.layers()[l];
                b.rmsnormMatmulQkv(q, k, v, x, lw.attnNorm(), eps, xn, // q, k, v of norm(x); xn scratch
                        lw.wq(), lw.bq(), lw.wk(), lw.bk(), lw.wv(), lw.bv(), n);
                attentionBlock(cache, positions, n, slots, l, false); // att [n, H*hd]
                b.matmulAdd(x, xb, att, lw.wo(), n);                  // x += att·Wo; xb scratch
                b.rmsnormMatmulSwiglu(gate, up, x, lw.mlpNorm(), eps, xn, lw.wGate(), lw.wUp(), n);
                b.matmulAdd(x, xb, gate, lw.wDown(), n);              // x += gate·Wdown
            }
        } else {
            b.rmsnorm(xn, x, w.layers()[firstLayer].attnNorm(), eps, n); // xn [n, D] = norm(x)
            for (int l = firstLayer; l < c.numLayers(); l++) {
                Weights.Layer lw = w.layers()[l];
                // --- attention block (its input norm was fused into the previous residual add) ---
                boolean stored = lw.qNorm() == null && batchRows == null; // no per-head norm between them
                if (stored)                                           // q, k, v as below, then RoPE + KV store
                    b.matmulQkvRopeStoreKv(q, k, v, xn, lw.wq(), lw.bq(), lw.wk(), lw.bk(), lw.wv(), lw.bv(),
                            c.numHeads(), c.numKvHeads(), rope, positions, cache, l, slots[l], n);
                else
                    b.matmulQkv(q, k, v, xn, lw.wq(), lw.bq(), lw.wk(), lw.bk(), // q [n, H*hd], k [n, Hkv*hd],
                            lw.wv(), lw.bv(), n);                     // v [n, Hkv*hd]
                attentionBlock(cache, positions, n, slots, l, stored); // att [n, H*hd]
                b.matmulAddRmsnorm(xn, x, xb, att, lw.wo(), lw.mlpNorm(), eps, n); // x += att·Wo; xn = norm(x); xb scratch
                // --- MLP block ---
                b.matmulSwiglu(gate, up, xn, lw.wGate(), lw.wUp(), n); // gate [n, F] = silu(xn·Wg) * (xn·Wu); up scratch
                // x += gate·Wdown; xn = the next layer's norm(x), after the last layer the final norm(x)
                b.matmulAddRmsnorm(xn, x, xb, gate, lw.wDown(),
                        l + 1 < c.numLayers() ? w.layers()[l + 1].attnNorm() : w.finalNorm(), eps, n);
            }
            // xn [n, D]: the final hidden states
            if (observing) return;                                    // observe(): no logits
            if (hiddenOut != null) {
                hiddenOut.accept(b.download(xn, 0, n));
                return;                                               // no logits asked for (logits() stays as it was)
            }
            b.copyRows(last, 0, xn, n - 1, 1);                        // last [1, D]
            b.matmul(logits, last, w.lmHead(), null, 1);              // logits [1, V]
            if (allRows) b.matmul(allLogits(), xn, w.lmHead(), null, n); // allLogits [n, V]
            return;
        }
        if (observing) return;                                        // observe(): no logits
        if (hiddenOut != null) {
            b.rmsnorm(xb, x, w.finalNorm(), eps, n);                  // the final hidden states, [n, D]
            hiddenOut.accept(b.download(xb, 0, n));
            return;                                                   // no logits asked for (logits() stays as it was)
        }
        b.copyRows(last, 0, x, n - 1, 1);                             // last [1, D]
        b.rmsnorm(last, last, w.finalNorm(), eps, 1);
        b.matmul(logits, last, w.lmHead(), null, 1);                  // logits [1, V]
        if (allRows) {
            b.rmsnorm(xb, x, w.finalNorm(), eps, n);
            b.matmul(allLogits(), xb, w.lmHead(), null, n);           // allLogits [n, V]
        }
    }

    private java.util.function.Consumer<float[]> hiddenOut;  // hiddenStates: receives each chunk's final hidden states
    private boolean observing;                               // observe(): no LM head, no sliding-window drop
    private java.util.function.Function<String, int[]> textEncoder;

    /**
     * Runs {@code tokens} at positions {@code startPos..} through the model under {@code hooks} in place of the
     * model's policy, then frees their slots again: a pass that only watches the attention (KVzip's context
     * reconstruction scores the cached context by how the model attends to it while repeating it). Every position
     * at or above {@code startPos} is freed afterwards, so the cache must hold nothing there. No logits are computed
     * ({@link #logits()} keeps what the last prefill or step left), and a sliding-window model keeps its older tokens
     * during the pass (the window is not applied). The cache needs a free slot per token in every layer and KV head;
     * afterwards it holds the tokens it held before (a quantizing cache may have encoded its residual window sooner).
     */
    public void observe(KvPolicy hooks, KvCache cache, int[] tokens, int startPos) {
        observe(hooks, cache, tokens, startPos, null);
    }

    /** {@link #observe(KvPolicy, KvCache, int[], int)}, with {@code progress} given the tokens run so far after each chunk. */
    public void observe(KvPolicy hooks, KvCache cache, int[] tokens, int startPos, IntConsumer progress) {
        if (observing) throw new IllegalStateException("observe() does not nest");
        if (batchRows != null) throw new IllegalStateException("observe() inside a batched step");
        KvPolicy own = policy;
        policy = hooks == null ? KvPolicy.FULL : hooks;
        observing = true;
        try {
            prefillChunks(cache, tokens, tokens.length, startPos, null, progress);
        } finally {
            observing = false;
            policy = own;
            cache.freeFrom(startPos);
        }
    }

    /** Receives the progress of long work a policy does for this model (KVzip's reconstruction pass). */
    @FunctionalInterface
    public interface TaskProgress {
        /** {@code done} of {@code total} units of {@code task} finished (done == total: the task ended). */
        void update(String task, long done, long total);
    }

    private TaskProgress taskProgress = (task, done, total) -> {};

    /** Where policies report long work (TokenPress passes its load options' progress listener); null: nowhere. */
    public void setTaskProgress(TaskProgress p) {
        taskProgress = p == null ? (task, done, total) -> {} : p;
    }

    public TaskProgress taskProgress() {
        return taskProgress;
    }

    private float[][] attnNormHost; // [layer] the input norm weights on the host, read on first use

    /**
     * The L2 norms of the attention inputs of the n rows of the call in progress (rmsnorm(x) times the layer's input
     * norm weight: the hidden states the attention projects), valid inside the policy hooks of {@code layer}; computed on
     * the host from the residual stream (one download of the rows). KVzip+ divides by them.
     */
    public float[] attentionInputNorms(int layer, int n) {
        if (attnNormHost == null) attnNormHost = new float[config.numLayers()][];
        if (attnNormHost[layer] == null) {
            Tensor w = this.w.layers()[layer].attnNorm();
            float[] h = new float[w.rows() * w.cols()];
            backend.weightRows(w, 0, w.rows(), h);
            attnNormHost[layer] = h;
        }
        float[] wn = attnNormHost[layer], rows = backend.download(x, 0, n), out = new float[n];
        int d = config.hiddenSize();
        for (int r = 0; r < n; r++) {
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double) rows[r * d + i] * rows[r * d + i];
            double inv = 1.0 / Math.sqrt(ss / d + config.rmsNormEps()), norm = 0;
            for (int i = 0; i < d; i++) {
                double h = rows[r * d + i] * inv * wn[i];
                norm += h * h;
            }
            out[r] = (float) Math.sqrt(norm);
        }
        return out;
    }

    /** Sets how text becomes token ids without special tokens (the loader sets the model's tokenizer); null = none. */
    public void setTextEncoder(java.util.function.Function<String, int[]> encoder) {
        this.textEncoder = encoder;
    }

    /** The tokenizer's text to ids (no special tokens), for policies that feed the model text (KVzip); null when none was set. */
    public java.util.function.Function<String, int[]> textEncoder() { return textEncoder; }

    /**
     * The final hidden states (after the last RMSNorm, before the LM head) of {@code tokens} at positions 0.., [n * D]
     * row-major, from a prefill into {@code cache} under the full policy (what embedding models pool). The cache holds
     * the tokens afterwards; {@link #logits()} is not updated.
     */
    public float[] hiddenStates(KvCache cache, int[] tokens) {
        int d = config.hiddenSize();
        float[] out = new float[Math.multiplyExact(tokens.length, d)];
        int[] at = {0};
        KvPolicy own = policy;
        policy = KvPolicy.FULL;
        hiddenOut = rows -> {
            System.arraycopy(rows, 0, out, at[0], rows.length);
            at[0] += rows.length;
        };
        try {
            prefill(cache, tokens, tokens.length, 0, null, null);
        } finally {
            hiddenOut = null;
            policy = own;
        }
        return out;
    }

    private Tensor allLogits() {
        if (allLogits == null) allLogits = backend.allocate(maxChunk, config.vocabSize());
        return allLogits;
    }

    @Override
    public void close() {
        backend.close();
    }
}
