package dev.tokenpress.backend;

import dev.tokenpress.io.TensorData;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;

/**
 * The op contract between orchestration ({@code Llama}) and math. Activations are f32 tensors [rows, cols] that
 * a backend allocates once at their maximum row count; every op takes {@code n}, the number of leading rows in
 * use. One op has one name in every layer: {@code Backend.decodeAttention}-style names map to
 * {@code tp_<op>} in cuda/include/tokenpress.h and to a parity test case.
 *
 * <p>Shapes in comments: n = rows in use, D = hidden size, H/Hkv = q/KV heads, hd = head dim, F = MLP width,
 * V = vocabulary, O/I = matmul output/input width.
 */
public interface Backend extends AutoCloseable {

    /** "cpu" or "cuda". */
    String name();

    /** One line for stderr, e.g. "CPU: 2 threads, Vector API 256-bit". */
    String description();

    // ---- memory -------------------------------------------------------------------------------------------

    /** Makes a weight usable by this backend: 2-D [O, I] matrices and 1-D [n] vectors (norms, biases). */
    Tensor weight(TensorData data);

    /**
     * How {@link #weight} holds matrices from now on (before a model is loaded). Backends support {@link
     * WeightType#AS_STORED}; others throw {@link UnsupportedOpException} with what to do.
     */
    default void setWeightType(WeightType type) {
        if (type != WeightType.AS_STORED)
            throw new UnsupportedOpException("--weight-type " + type + " is not supported by the " + name()
                    + " backend: use --device cpu or --weight-type as-stored");
    }

    /**
     * How {@link #newKvCache} stores the keys and the values of an unquantized cache from now on ({@code -ctk} /
     * {@code -ctv}; null: the backend's own, which {@link #kvTypes} names). A backend that cannot store a type throws
     * {@link UnsupportedOpException} with what to do.
     */
    default void setKvTypes(KvType keys, KvType values) {
        KvType[] own = kvTypes();
        if ((keys != null && keys != own[0]) || (values != null && values != own[1]))
            throw new UnsupportedOpException("the " + name() + " backend stores the KV cache as keys " + own[0] + ", values "
                    + own[1] + ": drop -ctk / -ctv or use --device cpu");
    }

    /** How an unquantized cache of {@link #newKvCache} stores {keys, values}. */
    default KvType[] kvTypes() {
        return new KvType[] {KvType.F32, KvType.F32};
    }

    /** A zeroed f32 activation tensor [rows, cols]. */
    Tensor allocate(int rows, int cols);

    /** Copies {@code src} into the first src.length elements (row-major) of {@code dst}. */
    void upload(Tensor dst, float[] src);

    /** Copies {@code rows} rows starting at {@code row0} of an f32 tensor to the host. */
    float[] download(Tensor src, int row0, int rows);

    /** dst[dstRow + i] = src[srcRow + i] for i in [0, rows). */
    void copyRows(Tensor dst, int dstRow, Tensor src, int srcRow, int rows);

    /** A KV cache whose storage lives in this backend's memory. */
    KvCache newKvCache(int layers, int kvHeads, int headDim, int capacity);

    /**
     * A KV cache whose keys/values are stored as {@code quant} says (KIVI, ZipCache, MiKV, GEAR), with the
     * dequantization fused into {@link #attention}. A backend without quantized caches supports only {@code none}.
     */
    default KvCache newKvCache(int layers, int kvHeads, int headDim, int capacity, dev.tokenpress.kv.quant.KvQuantSpec quant) {
        if (quant == null || quant.isNone()) return newKvCache(layers, kvHeads, headDim, capacity);
        throw new UnsupportedOpException("the " + name() + " backend has no quantized KV cache (--kv-quant " + quant.spec() + "): use --device cpu");
    }

    // ---- ops ----------------------------------------------------------------------------------------------

    /** out[i] = table[tokens[i]]; out [n, D], table [V, D] (any weight dtype). */
    void embedding(Tensor out, Tensor table, int[] tokens, int n);

    /** out[i] = x[i] / rms(x[i]) * w; out [n, D] may be x; w [D]. */
    void rmsnorm(Tensor out, Tensor x, Tensor w, float eps, int n);

    /**
     * In place, each of the first {@code n} rows of {@code x} [n, heads * hd] as {@code heads} vectors of hd = {@code
     * w.cols()}: x_h = x_h * rsqrt(mean(x_h²) + eps) * w (Qwen3's q_norm / k_norm, applied before RoPE).
     */
    void rmsnormHeads(Tensor x, Tensor w, float eps, int n, int heads);

    /** out[i] = w · x[i] + bias; out [n, O], x [n, I], w [O, I] (HF Linear layout), bias [O] or null. */
    void matmul(Tensor out, Tensor x, Tensor w, Tensor bias, int n);

    /**
     * Rotary embedding in place on x [n, heads*hd] (HF rotate_half pairing i with i + hd/2), token i at
     * positions[i]; angle = positions[i] * invFreq[j] computed in f32.
     */
    void rope(Tensor x, int heads, RopeTable rope, int[] positions, int n);

    /** out = silu(gate) * up elementwise; out, gate, up [n, F]; out may be gate. */
    void swiglu(Tensor out, Tensor gate, Tensor up, int n);

    /** x += y elementwise over [n, cols]. */
    void add(Tensor x, Tensor y, int n);

    /**
     * The residual add fused with the next RMSNorm: x += y, then out = rmsnorm(x) * w; out, x, y [n, D]
     * distinct. Same result as {@link #add} then {@link #rmsnorm}; a backend may do it in one pass.
     */
    default void addRmsnorm(Tensor out, Tensor x, Tensor y, Tensor w, float eps, int n) {
        add(x, y, n);
        rmsnorm(out, x, w, eps, n);
    }

    /**
     * Whether the model should call {@link #rmsnormMatmulQkv}, {@link #matmulAdd} and {@link #rmsnormMatmulSwiglu}
     * (the norm inside the projections, the residual add inside the o/down projections) rather than
     * {@link #matmulQkv}, {@link #matmul}, {@link #addRmsnorm} and {@link #matmulSwiglu}. Both orders give the
     * same result with the default implementations; a backend that fuses the former says true.
     */
    default boolean fusesNormIntoMatmul() {
        return false;
    }

    /**
     * A projection added into the residual stream: x += a · wᵀ; x [n, D], a [n, I], w [D, I]; {@code y} [n, D] is
     * scratch (contents afterwards unspecified). Same result as {@link #matmul}(y, a, w, null, n) then
     * {@link #add}(x, y, n); a backend may do it in one pass.
     */
    default void matmulAdd(Tensor x, Tensor y, Tensor a, Tensor w, int n) {
        matmul(y, a, w, null, n);
        add(x, y, n);
    }

    /**
     * A projection added into the residual stream followed by the next RMSNorm: x += a · wᵀ, then
     * out = rmsnorm(x) * normW; out, x [n, D], a [n, I], w [D, I], {@code y} [n, D] scratch (contents afterwards
     * unspecified); out, x, y and a distinct. Same result as {@link #matmul}(y, a, w, null, n) then
     * {@link #addRmsnorm}(out, x, y, normW, eps, n); a backend may run it as one kernel.
     */
    default void matmulAddRmsnorm(Tensor out, Tensor x, Tensor y, Tensor a, Tensor w, Tensor normW, float eps, int n) {
        matmul(y, a, w, null, n);
        addRmsnorm(out, x, y, normW, eps, n);
    }

    /**
     * {@link #matmulQkv} of rmsnorm(x) · normW: {@code xn} [n, D] is scratch (contents afterwards unspecified).
     * Same result as {@link #rmsnorm}(xn, x, normW, eps, n) then matmulQkv(..., xn, ...); a backend may fuse the
     * norm into the projections.
     */
    default void rmsnormMatmulQkv(Tensor q, Tensor k, Tensor v, Tensor x, Tensor normW, float eps, Tensor xn,
                                  Tensor wq, Tensor bq, Tensor wk, Tensor bk, Tensor wv, Tensor bv, int n) {
        rmsnorm(xn, x, normW, eps, n);
        matmulQkv(q, k, v, xn, wq, bq, wk, bk, wv, bv, n);
    }

    /**
     * {@link #matmulSwiglu} of rmsnorm(x) · normW: {@code xn} [n, D] and {@code up} [n, F] are scratch. Same
     * result as {@link #rmsnorm}(xn, x, normW, eps, n) then matmulSwiglu(out, up, xn, ...).
     */
    default void rmsnormMatmulSwiglu(Tensor out, Tensor up, Tensor x, Tensor normW, float eps, Tensor xn,
                                     Tensor wGate, Tensor wUp, int n) {
        rmsnorm(xn, x, normW, eps, n);
        matmulSwiglu(out, up, xn, wGate, wUp, n);
    }

    /**
     * The q, k and v projections of one input: q = wq · x + bq, k = wk · x + bk, v = wv · x + bv (biases may be
     * null); q [n, H*hd], k and v [n, Hkv*hd], x [n, D]. Same result as the three {@link #matmul} calls; a
     * backend may do them in one pass.
     */
    default void matmulQkv(Tensor q, Tensor k, Tensor v, Tensor x, Tensor wq, Tensor bq, Tensor wk, Tensor bk,
                           Tensor wv, Tensor bv, int n) {
        matmul(q, x, wq, bq, n);
        matmul(k, x, wk, bk, n);
        matmul(v, x, wv, bv, n);
    }

    /**
     * The gate/up projections and SwiGLU: out = silu(wGate · x) * (wUp · x); out [n, F], x [n, D] distinct.
     * {@code up} [n, F] is scratch (its contents afterwards are unspecified). Same result as matmul into out,
     * matmul into up, {@link #swiglu}(out, out, up); a backend may do it in one pass without {@code up}.
     */
    default void matmulSwiglu(Tensor out, Tensor up, Tensor x, Tensor wGate, Tensor wUp, int n) {
        matmul(out, x, wGate, null, n);
        matmul(up, x, wUp, null, n);
        swiglu(out, out, up, n);
    }

    /**
     * {@link #matmulQkv} followed by {@link #ropeStoreKv} of its q, k and v (q [n, heads*hd], k and v
     * [n, kvHeads*hd]; x distinct from them): same result as the two calls; a backend may run them as one kernel.
     */
    default void matmulQkvRopeStoreKv(Tensor q, Tensor k, Tensor v, Tensor x, Tensor wq, Tensor bq, Tensor wk,
                                      Tensor bk, Tensor wv, Tensor bv, int heads, int kvHeads, RopeTable rope,
                                      int[] positions, KvCache cache, int layer, int[][] slots, int n) {
        matmulQkv(q, k, v, x, wq, bq, wk, bk, wv, bv, n);
        ropeStoreKv(q, heads, k, v, kvHeads, rope, positions, cache, layer, slots, n);
    }

    /**
     * Rotary embedding of q [n, heads*hd] and k [n, Hkv*hd] in place, then {@link #storeKv} of the rotated k
     * and v; same result as {@link #rope}(q), {@link #rope}(k), {@link #storeKv}. A backend may do it in one pass.
     */
    default void ropeStoreKv(Tensor q, int heads, Tensor k, Tensor v, int kvHeads, RopeTable rope, int[] positions,
                             KvCache cache, int layer, int[][] slots, int n) {
        rope(q, heads, rope, positions, n);
        rope(k, kvHeads, rope, positions, n);
        storeKv(cache, layer, k, v, slots, n);
    }

    /**
     * Writes keys k [n, Hkv*hd] (already rotated) and values v [n, Hkv*hd] of {@code layer} into the slots
     * slots[g][i] of each KV head g (allocated beforehand with {@link KvCache#allocate}).
     */
    void storeKv(KvCache cache, int layer, Tensor k, Tensor v, int[][] slots, int n);

    /**
     * Attention of q [n, H*hd] (rotated) against the cache's {@code layer}; query i sits at queryPositions[i]
     * and sees the slots whose position lies in [0, queryPositions[i]]. Candidate slots per KV head g are
     * {@code select.slots[g][0..count[g])} or, when select is null, [0, highWater). Scale 1/sqrt(hd). A query
     * with no visible slot outputs zeros. out [n, H*hd]. {@code stats} (nullable) receives per-slot statistics.
     */
    void attention(Tensor out, Tensor q, KvCache cache, int layer, int[] queryPositions, int n,
                   SlotSelection select, AttentionStats stats);

    // ---- ops for KV compression policies (optional: a backend without them reports them as unsupported) ----

    /**
     * Raw (unscaled) q·k of query row {@code row} of q [n, H*hd] against the cache's {@code layer}, for the
     * query at {@code queryPosition}: out[h][slot] for every q-head h and slot in [0, highWater) of KV head
     * h / (H / Hkv); -infinity for a slot that is free or not visible (position outside [0, queryPosition]).
     * out [H][>= capacity]; entries at and above the head's high-water mark are set to -infinity. Used by
     * TokenSelect (selection before attention) and by the per-row scores of Keyformer, A2SF and the
     * RazorAttention head probe.
     */
    default void queryKeyScores(float[][] out, Tensor q, int row, int queryPosition, KvCache cache, int layer) {
        throw new UnsupportedOpException("the " + name() + " backend has no queryKeyScores op (needed by this --kv policy): use --device cpu");
    }

    /**
     * Quest's per-page upper bound of q·k: pages are runs of {@code pageSize} slots, page p = slots
     * [p*pageSize, (p+1)*pageSize) of a KV head. With M and m the elementwise max and min of the keys of the
     * page's occupied slots visible to {@code queryPosition}, out[h][p] = sum_i max(q_i*M_i, q_i*m_i) for q-head
     * h and query row {@code row}; -infinity for a page without such a slot. Covers the pages below
     * ceil(highWater / pageSize); out [H][>= that many pages].
     */
    default void questPageScores(float[][] out, Tensor q, int row, int queryPosition, KvCache cache, int layer, int pageSize) {
        throw new UnsupportedOpException("the " + name() + " backend has no questPageScores op (needed by --kv quest): use --device cpu");
    }

    /**
     * Makes {@code dst} a copy of {@code src} (same shape, both of this backend, unquantized): every stored key and
     * value and the slot bookkeeping, so a sequence can be forked after a shared prompt.
     */
    default void copyKvCache(KvCache src, KvCache dst) {
        throw new UnsupportedOpException("the " + name() + " backend cannot copy a KV cache");
    }

    /**
     * Rows [row0, row0 + rows) of a weight matrix [out, in] as loaded by this backend, dequantized to f32 on the host:
     * dst[i * in + j] = w[row0 + i][j]. For policies that weigh tokens by a projection (CriticalKV's |W_o v|).
     */
    default void weightRows(Tensor w, int row0, int rows, float[] dst) {
        throw new UnsupportedOpException("the " + name() + " backend cannot read weight rows (needed by this --kv policy): use --device cpu");
    }

    /** Copies the key and value stored in {@code slot} of (layer, KV head) to the host: key[hd], value[hd]. */
    default void readKv(KvCache cache, int layer, int head, int slot, float[] key, float[] value) {
        throw new UnsupportedOpException("the " + name() + " backend has no readKv op (needed by this --kv policy): use --device cpu");
    }

    /**
     * The keys and values of every slot below the high-water mark of (layer, KV head), in slot order:
     * keys[slot * hd ..], values[slot * hd ..] (at least highWater * hd each; a free slot's entries are unspecified).
     * For the policies that score the whole cache and for saving it. Default: {@link #readKvRange} of [0, highWater).
     */
    default void readKvHead(KvCache cache, int layer, int head, float[] keys, float[] values) {
        readKvRange(cache, layer, head, 0, cache.highWater(layer, head), keys, values);
    }

    /**
     * The keys (and values, unless {@code values} is null) of slots [from, to) of (layer, KV head):
     * keys[(slot - from) * hd ..] (a free slot's entries are unspecified). For policies that score part of a long cache
     * on the host (KVzip's chunk, Compactor's chunk) without reading the whole head. Default: {@link #readKv} per
     * occupied slot.
     */
    default void readKvRange(KvCache cache, int layer, int head, int from, int to, float[] keys, float[] values) {
        int hd = cache.headDim();
        float[] k = new float[hd], v = new float[hd];
        int[] pos = cache.positions(layer, head);
        for (int s = from; s < to; s++) {
            if (pos[s] < 0) continue;
            readKv(cache, layer, head, s, k, v);
            System.arraycopy(k, 0, keys, (s - from) * hd, hd);
            if (values != null) System.arraycopy(v, 0, values, (s - from) * hd, hd);
        }
    }

    /** Writes a key and value (key[hd], value[hd], already rotated) into {@code slot} of (layer, KV head). */
    default void writeKv(KvCache cache, int layer, int head, int slot, float[] key, float[] value) {
        throw new UnsupportedOpException("the " + name() + " backend has no writeKv op (needed by this --kv policy): use --device cpu");
    }

    /**
     * TidalDecode's token selection for query row {@code row} of q [n, H*hd] (the query at {@code queryPosition})
     * against the cache's {@code layer}, one list per KV head g: score(slot) = the max ({@code sumGroup} false) or
     * the sum (in q-head order) over the q-heads of g's group of the raw q·k as {@link #queryKeyScores} computes
     * it, for the visible slots in [0, highWater); the selection is the last slot holding {@code keepPosition}
     * when it is visible, plus the best min(k, visible) − 1 other visible slots (ties: lower slot; +0 and −0 tie),
     * in ascending slot order; count[g] = min(k, visible).
     *
     * <p>The result is meant for {@link #attention} of the same cache on this backend. With {@code hostCopy} false
     * a backend may keep it in its own memory and return an opaque selection whose {@code slots()} and
     * {@code count()} are null (only this backend's attention and {@link #hostSelection} can read it, and only
     * until the next call for the same cache and layer); with {@code hostCopy} true the host arrays are filled.
     * A backend without the op (or without it for this cache type) throws {@link UnsupportedOpException}.
     */
    default SlotSelection selectTopSlots(Tensor q, int row, int queryPosition, KvCache cache, int layer, int k,
                                         boolean sumGroup, int keepPosition, boolean hostCopy) {
        throw new UnsupportedOpException("the " + name() + " backend has no selectTopSlots op");
    }

    /**
     * Whether a selection policy (TidalDecode) should select through {@link #selectTopSlots} before a selection layer's
     * attention (true, the default: where the attention's raw scores would have to be copied out of device memory) or
     * from the raw-score statistics of that attention (false: where they come with it for nothing and the op would
     * read the layer's keys a second time). Both give the same slots.
     */
    default boolean selectsBeforeAttention() {
        return true;
    }

    /**
     * Quest's page selection for query row {@code row} of q against the cache's {@code layer}, one slot list per KV
     * head g: pages are runs of {@code pageSize} slots of [0, highWater); a page's score is the max ({@code sumGroup}
     * false) or the sum (in q-head order) over the group's q-heads of its {@link #questPageScores} bound, finite
     * bounds only (a page with none is not a candidate); kept are the page of the last slot holding
     * {@code keepPosition} (the last page when no slot holds it) plus the best {@code pages} − 1 other candidate
     * pages (ties: lower page), and the list holds the visible slots (position in [0, queryPosition]) of the kept
     * pages in slot order. {@code hostCopy} as for {@link #selectTopSlots}. Policies fall back to computing it on the
     * host from {@link #questPageScores} where a backend has no such op (the default: unsupported).
     */
    default SlotSelection selectTopPages(Tensor q, int row, int queryPosition, KvCache cache, int layer, int pageSize,
                                         int pages, boolean sumGroup, int keepPosition, boolean hostCopy) {
        throw new UnsupportedOpException("the " + name() + " backend has no selectTopPages op");
    }

    /**
     * TokenSelect's vote for query row {@code row} of q against the cache's {@code layer}, for a cache whose KV heads
     * hold the same t tokens in slots 0 .. t−1 in position order: each q-head's softmax of its raw q·k over the
     * candidate slots [init, t − local) (double exponentials and sums, as the policy's host path), the probabilities
     * summed over the q-heads in order into one vote, and one slot list for every KV head: the first {@code init}
     * slots, the {@code k} best-voted candidates (ties: lower slot) and the last {@code local} slots, ascending. Needs
     * init + k + local < t. Returns null where the cache's layout is not that one (the policy then votes on the host);
     * {@code hostCopy} as for {@link #selectTopSlots}. Default: unsupported.
     */
    default SlotSelection selectTokenVotes(Tensor q, int row, int queryPosition, KvCache cache, int layer, int k, int init,
                                           int local, boolean hostCopy) {
        throw new UnsupportedOpException("the " + name() + " backend has no selectTokenVotes op");
    }

    /** The host arrays of a selection {@link #selectTopSlots} returned (a copy when it lives in device memory). */
    default SlotSelection hostSelection(SlotSelection selection) {
        return selection;
    }

    /** Index of the largest element of row {@code row} of an f32 tensor (ties: lowest index). */
    int argmax(Tensor x, int row);

    /** {@link #argmax} of rows [0, rows) of x, read back together. */
    default int[] argmaxRows(Tensor x, int rows) {
        int[] out = new int[rows];
        for (int r = 0; r < rows; r++) out[r] = argmax(x, r);
        return out;
    }

    /**
     * A tensor of one row that aliases row {@code row} of the f32 activation tensor t (writes through), or null when
     * this backend has no views (callers then copy rows). Valid while t is.
     */
    default Tensor rowView(Tensor t, int row) {
        return null;
    }

    // ---- greedy token feedback (Llama.decodeGreedy): the next step is queued before the host has read the token

    /**
     * Whether this backend keeps a feedback token register where it runs: {@link #argmaxToFeedback} writes the
     * greedy token of a step there and {@link #embeddingFromFeedback} reads it in the next step, so a greedy decode
     * loop can queue step t + 1 while step t still runs and read step t's token afterwards. Default: no.
     */
    default boolean tokenFeedback() {
        return false;
    }

    /** Sets the feedback register to a token the host knows (the first input of a feedback loop); queued, no wait. */
    default void setFeedbackToken(int token) {
        throw new UnsupportedOpException("the " + name() + " backend has no token feedback");
    }

    /**
     * {@link #argmax} of row {@code row} of x into the feedback register, plus a copy for the host under ticket
     * {@code slot} (0 or 1); queued, no wait. {@link #feedbackToken} returns it.
     */
    default void argmaxToFeedback(Tensor x, int row, int slot) {
        throw new UnsupportedOpException("the " + name() + " backend has no token feedback");
    }

    /** Waits for the token {@link #argmaxToFeedback} queued under {@code slot} and returns it. */
    default int feedbackToken(int slot) {
        throw new UnsupportedOpException("the " + name() + " backend has no token feedback");
    }

    /** {@link #embedding} of one row whose token id is the feedback register's (read where it lives). */
    default void embeddingFromFeedback(Tensor out, Tensor table) {
        throw new UnsupportedOpException("the " + name() + " backend has no token feedback");
    }

    /**
     * The k largest elements of row {@code row} of an f32 tensor, without a full sort: indices ordered by
     * descending value (ties: lowest index first). Only k indices and values cross to the host.
     *
     * @return indices[k]; values are written to {@code valuesOut[k]} when it is not null
     */
    int[] topK(Tensor x, int row, int k, float[] valuesOut);

    /**
     * Per row r < rows of an f32 tensor of logits: {@code lseOut[r]} = log Σ_v e^x[r][v] and {@code targetOut[r]} =
     * x[r][targets[r]] (NaN for a target outside [0, cols)), reduced where the logits live, so only 2·rows numbers
     * cross from a device (prompt scoring). The default downloads the rows and reduces them in double precision.
     */
    default void logSumExpRows(Tensor x, int rows, int[] targets, double[] lseOut, double[] targetOut) {
        int v = x.cols();
        float[] all = download(x, 0, rows);
        for (int r = 0; r < rows; r++) {
            lseOut[r] = dev.tokenpress.sample.LogitRows.logSumExp(all, r * v, v);
            int t = targets[r];
            targetOut[r] = t >= 0 && t < v ? all[r * v + t] : Double.NaN;
        }
    }

    /**
     * {@link #topK} of several rows, read back together where the tensor lives on a device: row {@code rows[i]}'s
     * {@code k[i]} largest (none for k[i] <= 0, null then) with their values into {@code valuesOut[i]} (k[i] entries;
     * valuesOut may be null).
     */
    default int[][] topKRows(Tensor x, int[] rows, int[] k, float[][] valuesOut) {
        int[][] out = new int[rows.length][];
        for (int i = 0; i < rows.length; i++)
            if (k[i] > 0) out[i] = topK(x, rows[i], k[i], valuesOut == null ? null : valuesOut[i]);
        return out;
    }

    /**
     * Runs one decode step. {@code body} issues the step's ops (the forward pass for {@code step}); a backend
     * may instead replay a previously captured body with the new step values (CUDA graphs). The default runs
     * the body. Host arrays the body passes to ops are derived only from {@code step}.
     */
    default void runDecodeStep(DecodeStep step, Runnable body) {
        body.run();
    }

    /**
     * {@code count} KV caches of one shape for the sequences of a batch (continuous batching's lanes). A backend may
     * lay them out together so that a batched step attends over several in one call ({@link #batchDecodeAttention});
     * the default makes {@code count} caches of their own.
     */
    default KvCache[] newKvCaches(int layers, int kvHeads, int headDim, int capacity, int count) {
        KvCache[] out = new KvCache[count];
        try {
            for (int i = 0; i < count; i++) out[i] = newKvCache(layers, kvHeads, headDim, capacity);
        } catch (RuntimeException | Error e) {
            for (KvCache c : out) if (c != null) c.close();
            throw e;
        }
        return out;
    }

    /**
     * Whether {@link #newKvCaches} lays caches out for {@link #batchDecodeAttention}, so that a batch's lanes should keep
     * theirs for the life of the batch (cleared between sequences) rather than take a new one per sequence.
     */
    default boolean batchesKvCaches() {
        return false;
    }

    /**
     * RoPE, KV store and decode attention of a batched step in a few calls instead of a few per row: row i of q
     * [rows, heads·hd] and k, v [rows, kvHeads·hd] is the token at positions[i] of the sequence whose cache is
     * caches[i], its slots slots[i][g] already allocated; afterwards row i of att holds its attention over everything
     * its cache holds (the full policy: no slot list, no statistics). Every token a cache holds must be at a position no
     * later than its row's. Returns false, having done nothing, where the backend has no such path for these caches (the
     * caller then runs the rows one by one); the default returns false.
     */
    default boolean batchDecodeAttention(Tensor att, Tensor q, int heads, Tensor k, Tensor v, int kvHeads, RopeTable rope,
                                         int[] positions, KvCache[] caches, int layer, int[][] slots, int rows) {
        return false;
    }

    /**
     * Runs one batched decode step ({@code Llama.decodeBatch}) of {@code rows} rows: {@code body} issues the ops of the
     * forward pass over them, the host arrays it passes derived only from the rows' tokens, positions and already-allocated
     * slots. A backend may replay a captured body instead (CUDA graphs, while the same sequences run); the default
     * runs the body.
     */
    default void runBatchStep(int rows, Runnable body) {
        body.run();
    }

    /** Waits until all queued work has finished (no-op on CPU). */
    default void synchronize() {}

    /**
     * Host work of a KV policy split over the host's threads: runs {@code body.accept(i)} once for every i in [0, n),
     * in any order and possibly at the same time, and returns when all have run (a failure is rethrown). The calls
     * must be independent (each writes only its own outputs), so the result does not depend on the threads, and must
     * not call the backend's ops. The default runs them in order on the calling thread.
     */
    default void hostParallel(int n, java.util.function.IntConsumer body) {
        for (int i = 0; i < n; i++) body.accept(i);
    }

    @Override
    void close();
}
