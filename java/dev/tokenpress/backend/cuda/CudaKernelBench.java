package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;

import java.util.SplittableRandom;

/**
 * Device-side measurements for {@code eval.KernelBench} and {@code tokenpress bench}: device-to-device copy
 * bandwidth and decode-attention throughput, timed with CUDA events on the backend's stream.
 */
public final class CudaKernelBench {
    private CudaKernelBench() {}

    /**
     * How the kernel measurements below are timed: {@code GRAPH} (the default) captures the timed calls into one CUDA
     * graph and replays it, as a decode step runs, so each figure is the kernels' time on the device without the host's
     * launch cost; {@code EAGER} launches every call from the host (short kernels then measure the launch rate).
     * Property {@code tokenpress.bench.timing=graph|eager}.
     */
    public enum Timing { GRAPH, EAGER }

    private static volatile Timing timing =
            "eager".equalsIgnoreCase(System.getProperty("tokenpress.bench.timing", "graph")) ? Timing.EAGER : Timing.GRAPH;

    public static Timing timing() {
        return timing;
    }

    public static void setTiming(Timing t) {
        timing = java.util.Objects.requireNonNull(t);
    }

    /** Result of one decode-attention measurement. */
    public record AttentionResult(int context, int layersRotated, double microseconds, double bytesPerCall,
                                  double gbPerSecond) {}

    /**
     * cudaMemcpyAsync device-to-device bandwidth (bytes read + bytes written per second) over a buffer of
     * {@code bytes}, best of {@code reps} timed batches.
     */
    public static double copyBandwidth(CudaBackend b, long bytes, int reps) {
        long src = b.malloc(bytes, "bandwidth source");
        long dst = b.malloc(bytes, "bandwidth destination");
        long[] e0 = {0}, e1 = {0};
        try {
            TpNative.tp_memset_async(src, 1, bytes, b.stream());
            TpNative.tp_event_create(e0);
            TpNative.tp_event_create(e1);
            TpNative.tp_memcpy_async(dst, src, bytes, b.stream()); // warm-up
            double best = 0;
            for (int r = 0; r < reps; r++) {
                int inner = 5;
                TpNative.tp_event_record(e0[0], b.stream());
                for (int i = 0; i < inner; i++) TpNative.tp_memcpy_async(dst, src, bytes, b.stream());
                TpNative.tp_event_record(e1[0], b.stream());
                TpNative.tp_event_synchronize(e1[0]);
                float[] ms = {0};
                TpNative.tp_event_elapsed_ms(ms, e0[0], e1[0]);
                best = Math.max(best, 2.0 * bytes * inner / (ms[0] * 1e-3));
            }
            return best;
        } finally {
            TpNative.tp_event_destroy(e0[0]);
            TpNative.tp_event_destroy(e1[0]);
            b.free(src);
            b.free(dst);
        }
    }

    /**
     * Decode attention for one token over {@code context} cached tokens of shape (heads, kvHeads, headDim).
     * Several layers are rotated so that the KV bytes read per call exceed the L2 cache (256 MiB in total at
     * least); bytes per call = keys + values + slot positions of one layer.
     */
    public static AttentionResult decodeAttention(CudaBackend b, int heads, int kvHeads, int headDim, int context,
                                                  int iters) {
        return decodeAttention(b, heads, kvHeads, headDim, context, iters, true);
    }

    /**
     * As {@link #decodeAttention(CudaBackend, int, int, int, int, int)}; {@code fusedMerge} picks the split merge
     * inside the split kernel (tp_decode_attention_ex with counters) or the separate merge kernel.
     */
    public static AttentionResult decodeAttention(CudaBackend b, int heads, int kvHeads, int headDim, int context,
                                                  int iters, boolean fusedMerge) {
        return decodeAttention(b, heads, kvHeads, headDim, context, iters, fusedMerge, b.attentionVariant());
    }

    /**
     * As {@link #decodeAttention(CudaBackend, int, int, int, int, int, boolean)} with the decode attention kernel
     * {@code variant} (1, 2 or 3, tp_set_attention_variant); the backend's own variant is restored afterwards.
     */
    public static AttentionResult decodeAttention(CudaBackend b, int heads, int kvHeads, int headDim, int context,
                                                  int iters, boolean fusedMerge, int variant) {
        check(TpNative.tp_set_attention_variant(variant), "attention variant");
        try {
            return decodeAttentionNow(b, heads, kvHeads, headDim, context, iters, fusedMerge);
        } finally {
            TpNative.tp_set_attention_variant(b.attentionVariant());
        }
    }

    private static AttentionResult decodeAttentionNow(CudaBackend b, int heads, int kvHeads, int headDim, int context,
                                                      int iters, boolean fusedMerge) {
        long perLayer = (long) context * kvHeads * (headDim * 4L + 4);
        int layers = (int) Math.max(1, Math.min(64, (256L << 20) / Math.max(1, perLayer) + 1));
        KvCache kv = b.newKvCache(layers, kvHeads, headDim, context);
        CudaKvCache c = (CudaKvCache) kv;
        SplittableRandom r = new SplittableRandom(42);
        fill(b, kv, layers, kvHeads, headDim, context, r);
        Tensor q = b.allocate(1, heads * headDim), out = b.allocate(1, heads * headDim);
        float[] qd = new float[heads * headDim];
        for (int i = 0; i < qd.length; i++) qd[i] = (float) (r.nextDouble() * 2 - 1);
        b.upload(q, qd);
        long ws = TpNative.tp_decode_attention_workspace_bytes(heads, headDim);
        long wsPtr = b.malloc(ws, "bench attention workspace");
        long ints = b.malloc(4L * (1 + kvHeads), "bench step values");
        int nCounters = Math.max(1, TpNative.tp_decode_attention_counters(heads, kvHeads));
        long counters = b.malloc(4L * nCounters, "bench attention counters");
        b.memsetNow(counters, 0, 4L * nCounters);
        long ctr = fusedMerge ? counters : 0;
        int[] host = new int[1 + kvHeads];
        host[0] = context - 1;
        for (int g = 0; g < kvHeads; g++) host[1 + g] = context;
        TpNative.tp_memcpy_h2d(ints, host, 4L * host.length, b.stream());
        CudaTensor qt = (CudaTensor) q, ot = (CudaTensor) out;
        float scale = (float) (1.0 / Math.sqrt(headDim));
        long[] e0 = {0}, e1 = {0};
        TpNative.tp_event_create(e0);
        TpNative.tp_event_create(e1);
        try {
            for (int i = 0; i < 3; i++) launch(b, c, qt, ot, heads, kvHeads, headDim, context, i % layers, ints, scale, wsPtr, ws, ctr);
            TpNative.tp_stream_synchronize(b.stream());
            TpNative.tp_event_record(e0[0], b.stream());
            for (int i = 0; i < iters; i++) launch(b, c, qt, ot, heads, kvHeads, headDim, context, i % layers, ints, scale, wsPtr, ws, ctr);
            TpNative.tp_event_record(e1[0], b.stream());
            TpNative.tp_event_synchronize(e1[0]);
            float[] ms = {0};
            TpNative.tp_event_elapsed_ms(ms, e0[0], e1[0]);
            double us = ms[0] * 1e3 / iters;
            double bytes = (double) context * kvHeads * (headDim * 4.0 + 4);
            return new AttentionResult(context, layers, us, bytes, bytes / (us * 1e-6) / 1e9);
        } finally {
            TpNative.tp_event_destroy(e0[0]);
            TpNative.tp_event_destroy(e1[0]);
            b.free(wsPtr);
            b.free(ints);
            b.free(counters);
            kv.close();
        }
    }

    private static void launch(CudaBackend b, CudaKvCache c, CudaTensor q, CudaTensor out, int heads, int kvHeads,
                               int hd, int context, int layer, long ints, float scale, long ws, long wsBytes,
                               long counters) {
        int rc = TpNative.tp_decode_attention_ex(out.ptr, q.ptr, c.keys, c.values, c.pos, layer, heads, kvHeads, hd,
                context, ints, 0, 1, 0, ints + 4, context, scale, 0, 0, ws, wsBytes, counters, b.stream());
        if (rc != 0) throw new CudaException("decode attention: " + CudaBackend.lastError(), rc);
    }

    /**
     * Result of {@link #tidalAttention}: µs per call of each path and bytes. fullUs/sparseUs are the backend's
     * attention variant; fullUsV1/sparseUsV1, fullUsV2/sparseUsV2 and fullUsV3/sparseUsV3 the same calls with kernel
     * variant 1, 2 and 3.
     */
    public record PolicyAttentionResult(int context, int k, int layersRotated, double fullUs, double sparseUs,
                                        double selectUs, double selectPlusSparseUs, long kvBytesPerLayer,
                                        double fullReadBytes, double sparseReadBytes, double fullUsV1,
                                        double sparseUsV1, double fullUsV2, double sparseUsV2, double fullUsV3,
                                        double sparseUsV3, double selectUsV1, double selectUsV2, double selectUsV3,
                                        int selectV3DiffSlots, double fullThenSelectUs, double attnSelectUs,
                                        int attnSelectDiffSlots, double attnSelectOutMaxDiff, double[] attnSelectHistUs,
                                        double attnSelectBatchedUs) {}

    /** Rows per block of the selection's histogram pass timed besides the default ({@code attnSelectHistUs}). */
    public static final int[] HIST_ROWS = {512, 4096, 8192};

    /**
     * Decode attention of one token over {@code context} tokens (shape heads / kvHeads / headDim, layers rotated
     * past the L2 cache as in {@link #decodeAttention}) over everything ({@code full}) and over a device-resident
     * TidalDecode selection of k slots per KV head ({@code sparse}), the selection op itself
     * ({@code tp_tidal_select}: group scores + top-k) and selection + sparse attention back to back. Kernel launches
     * straight through TpNative on pre-staged step values (no per-call staging), timed with CUDA events.
     */
    public static PolicyAttentionResult tidalAttention(CudaBackend b, int heads, int kvHeads, int headDim, int context,
                                                       int k, int iters) {
        long[] e0 = {0}, e1 = {0};
        TpNative.tp_event_create(e0);
        TpNative.tp_event_create(e1);
        try (SparseFixture f = new SparseFixture(b, heads, kvHeads, headDim, context, k)) {
            int layers = f.layers;
            int len = Math.min(context, f.fullHint);
            IntConsumerEx full = f::full, sparse = f::sparse;
            IntConsumerEx select = l -> check(TpNative.tp_tidal_select(f.sel[l][0], f.sel[l][1], (int) f.sel[l][2],
                    f.sel[l][3], f.sel[l][4], len, f.qt.ptr, f.c.keys, f.c.pos, l, heads, kvHeads, headDim, context,
                    f.selParams, k, 0, b.stream()), "tidal select");
            IntConsumerEx both = l -> {
                select.accept(l);
                sparse.accept(l);
            };
            double[] fullV = new double[4], sparseV = new double[4];
            for (int v = 1; v <= 3; v++) {
                check(TpNative.tp_set_attention_variant(v), "attention variant");
                try {
                    fullV[v] = time(b, full, layers, iters, e0[0], e1[0]);
                    sparseV[v] = time(b, sparse, layers, iters, e0[0], e1[0]);
                } finally {
                    TpNative.tp_set_attention_variant(b.attentionVariant());
                }
            }
            double fullUs = fullV[b.attentionVariant()];
            double sparseUs = sparseV[b.attentionVariant()];
            double selectUs = time(b, select, layers, iters, e0[0], e1[0]);
            // the selection op with each tp_tidal_select variant forced (the default, usually auto, restored after)
            double[] selectV = new double[4];
            int tidalDefault = TpNative.tp_get_tidal_select_variant();
            for (int v = 1; v <= 3; v++) {
                check(TpNative.tp_set_tidal_select_variant(v), "tidal select variant");
                try {
                    selectV[v] = time(b, select, layers, iters, e0[0], e1[0]);
                } finally {
                    TpNative.tp_set_tidal_select_variant(tidalDefault);
                }
            }
            // v3 sums q·k in another order: how many of its slots (layer 0, all KV heads) v2 did not select
            int v3Diff = 0;
            try {
                check(TpNative.tp_set_tidal_select_variant(2), "tidal select variant");
                SlotSelection s2 = b.selectTopSlots(f.q, 0, context - 1, f.kv, 0, k, false, context - 1, true);
                check(TpNative.tp_set_tidal_select_variant(3), "tidal select variant");
                SlotSelection s3 = b.selectTopSlots(f.q, 0, context - 1, f.kv, 0, k, false, context - 1, true);
                for (int g = 0; g < kvHeads; g++) {
                    java.util.Set<Integer> in2 = new java.util.HashSet<>();
                    for (int i = 0; i < s2.count()[g]; i++) in2.add(s2.slots()[g][i]);
                    for (int i = 0; i < s3.count()[g]; i++) if (!in2.contains(s3.slots()[g][i])) v3Diff++;
                    v3Diff += Math.abs(s2.count()[g] - s3.count()[g]);
                }
            } finally {
                TpNative.tp_set_tidal_select_variant(tidalDefault);
            }
            double bothUs = time(b, both, layers, iters, e0[0], e1[0]);
            // a selection layer: full attention then the selection, against tp_decode_attention_select (with attention
            // v3 the keys come from the attention's own scores); then how many slots (layer 0, all KV heads) and how
            // much attention output differ between the two
            IntConsumerEx fullSelect = l -> {
                full.accept(l);
                select.accept(l);
            };
            IntConsumerEx attnSelect = l -> check(TpNative.tp_decode_attention_select(f.ot.ptr, f.qt.ptr, f.c.keys,
                    f.c.values, f.c.pos, l, heads, kvHeads, headDim, context, f.fullHint, f.scale, f.wsPtr, f.ws,
                    f.counters, -1, f.sel[l][0], f.sel[l][1], (int) f.sel[l][2], f.sel[l][3], f.sel[l][4], len,
                    f.selParams, k, 0, b.stream()), "attention + selection");
            double fullSelectUs = time(b, fullSelect, layers, iters, e0[0], e1[0]);
            double attnSelectUs = time(b, attnSelect, layers, iters, e0[0], e1[0]);
            // the same with other rows per block of the histogram pass over the attention's keys (the same selection)
            double[] histUs = new double[HIST_ROWS.length];
            try {
                for (int i = 0; i < HIST_ROWS.length; i++) {
                    check(TpNative.tp_tidal_select_set_hist_rows(HIST_ROWS[i]), "histogram rows");
                    histUs[i] = time(b, attnSelect, layers, iters, e0[0], e1[0]);
                }
            } finally {
                TpNative.tp_tidal_select_set_hist_rows(0);
            }
            // the same with the collect pass's candidate loads batched (tp_tidal_select_set_collect_batch)
            double batchedUs;
            try {
                check(TpNative.tp_tidal_select_set_collect_batch(1), "collect batch");
                batchedUs = time(b, attnSelect, layers, iters, e0[0], e1[0]);
            } finally {
                TpNative.tp_tidal_select_set_collect_batch(0);
            }
            fullSelect.accept(0);
            int[][] sepSlots = f.downloadSelection(0);
            float[] sepOut = b.download(f.out, 0, 1);
            // the workspace's keys those of -q first: a fused call that left keys unwritten would select from them
            Tensor qNeg = b.allocate(1, heads * headDim);
            float[] neg = b.download(f.q, 0, 1);
            for (int i = 0; i < neg.length; i++) neg[i] = -neg[i];
            b.upload(qNeg, neg);
            check(TpNative.tp_tidal_select(f.sel[0][0], f.sel[0][1], (int) f.sel[0][2], f.sel[0][3], f.sel[0][4], len,
                    ((CudaTensor) qNeg).ptr, f.c.keys, f.c.pos, 0, heads, kvHeads, headDim, context, f.selParams, k, 0,
                    b.stream()), "tidal select (-q)");
            attnSelect.accept(0);
            int[][] fusedSlots = f.downloadSelection(0);
            float[] fusedOut = b.download(f.out, 0, 1);
            int attnSelectDiff = 0;
            for (int g = 0; g < kvHeads; g++) {
                java.util.Set<Integer> in = new java.util.HashSet<>();
                for (int s : sepSlots[g]) in.add(s);
                for (int s : fusedSlots[g]) if (!in.contains(s)) attnSelectDiff++;
                attnSelectDiff += Math.abs(sepSlots[g].length - fusedSlots[g].length);
            }
            double outDiff = 0;
            for (int i = 0; i < sepOut.length; i++) outDiff = Math.max(outDiff, Math.abs(sepOut[i] - fusedOut[i]));
            long kvBytes = f.kv.bytes() / layers;
            double fullRead = (double) context * kvHeads * (headDim * 4.0 + 4);
            double sparseRead = (double) Math.min(k, context) * kvHeads * (headDim * 4.0 + 8);
            return new PolicyAttentionResult(context, k, layers, fullUs, sparseUs, selectUs, bothUs, kvBytes, fullRead, sparseRead,
                    fullV[1], sparseV[1], fullV[2], sparseV[2], fullV[3], sparseV[3], selectV[1], selectV[2], selectV[3], v3Diff,
                    fullSelectUs, attnSelectUs, attnSelectDiff, outDiff, histUs, batchedUs);
        } finally {
            TpNative.tp_event_destroy(e0[0]);
            TpNative.tp_event_destroy(e1[0]);
        }
    }

    /**
     * The setup of {@link #tidalAttention} and {@link #splitSweep}: a bf16 cache of {@code layers} layers (rotated
     * past the L2 cache) filled with random keys and values at positions 0..context-1, a random query, one device
     * TidalDecode selection of k slots per KV head and layer, the attention workspace and split counters, and the step
     * values (attention: query position | high-water marks; selection: high-water marks | query position | keep).
     * {@link #full} and {@link #sparse} launch decode attention over everything or over the selection.
     */
    private static final class SparseFixture implements AutoCloseable {
        final CudaBackend b;
        final int heads, kvHeads, headDim, context, layers, fullHint, kHint;
        final KvCache kv;
        final CudaKvCache c;
        final Tensor q, out;
        final CudaTensor qt, ot;
        final long[][] sel;
        final long ws, wsPtr, ints, attnInts, selParams, counters;
        final float scale;

        SparseFixture(CudaBackend b, int heads, int kvHeads, int headDim, int context, int k) {
            this.b = b;
            this.heads = heads;
            this.kvHeads = kvHeads;
            this.headDim = headDim;
            this.context = context;
            long perLayer = (long) context * kvHeads * (headDim * 4L + 4);
            layers = (int) Math.max(1, Math.min(64, (256L << 20) / Math.max(1, perLayer) + 1));
            kv = b.newKvCache(layers, kvHeads, headDim, context);
            c = (CudaKvCache) kv;
            SplittableRandom r = new SplittableRandom(42);
            fill(b, kv, layers, kvHeads, headDim, context, r);
            q = b.allocate(1, heads * headDim);
            out = b.allocate(1, heads * headDim);
            float[] qd = new float[heads * headDim];
            for (int i = 0; i < qd.length; i++) qd[i] = (float) (r.nextDouble() * 2 - 1);
            b.upload(q, qd);
            qt = (CudaTensor) q;
            ot = (CudaTensor) out;
            // one device selection per rotated layer (allocates the buffers; later calls reuse them)
            sel = new long[layers][];
            for (int l = 0; l < layers; l++)
                sel[l] = b.deviceSelectionBuffers(b.selectTopSlots(q, 0, context - 1, kv, l, k, false, context - 1, false));
            b.synchronize();
            ws = TpNative.tp_decode_attention_workspace_bytes(heads, headDim);
            wsPtr = b.malloc(ws, "bench attention workspace");
            ints = b.malloc(4L * (2 + 2 * kvHeads + 2), "bench step values");
            int[] host = new int[1 + kvHeads + kvHeads + 2];
            host[0] = context - 1;
            for (int g = 0; g < kvHeads; g++) {
                host[1 + g] = context;
                host[1 + kvHeads + g] = context;
            }
            host[1 + 2 * kvHeads] = context - 1;
            host[2 + 2 * kvHeads] = context - 1;
            TpNative.tp_memcpy_h2d(ints, host, 4L * host.length, b.stream());
            attnInts = ints;
            selParams = ints + 4L * (1 + kvHeads);
            int nCounters = Math.max(1, TpNative.tp_decode_attention_counters(heads, kvHeads));
            counters = b.malloc(4L * nCounters, "bench attention counters");
            b.memsetNow(counters, 0, 4L * nCounters);
            scale = (float) (1.0 / Math.sqrt(headDim));
            fullHint = context <= 1 ? 1 : Integer.highestOneBit(context - 1) << 1;
            kHint = k <= 1 ? 1 : Integer.highestOneBit(k - 1) << 1;
        }

        /** The slots of layer l's device selection, per KV head (counts first). */
        int[][] downloadSelection(int l) {
            int[] count = new int[kvHeads];
            check(TpNative.tp_memcpy_d2h(count, sel[l][1], 4L * kvHeads, b.stream()), "selection download");
            int stride = (int) sel[l][2];
            int[] all = new int[kvHeads * stride];
            check(TpNative.tp_memcpy_d2h(all, sel[l][0], 4L * all.length, b.stream()), "selection download");
            int[][] out = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) out[g] = java.util.Arrays.copyOfRange(all, g * stride, g * stride + count[g]);
            return out;
        }

        void full(int l) {
            check(TpNative.tp_decode_attention_ex2(ot.ptr, qt.ptr, c.keys, c.values, c.pos, l, heads, kvHeads, headDim,
                    context, attnInts, 0, 1, 0, attnInts + 4, fullHint, scale, 0, 0, wsPtr, ws, counters, -1, b.stream()),
                    "full attention");
        }

        void sparse(int l) {
            check(TpNative.tp_decode_attention_ex2(ot.ptr, qt.ptr, c.keys, c.values, c.pos, l, heads, kvHeads, headDim,
                    context, attnInts, sel[l][0], (int) sel[l][2], sel[l][1], attnInts + 4, kHint, scale, 0, 0, wsPtr,
                    ws, counters, -1, b.stream()), "sparse attention");
        }

        @Override
        public void close() {
            b.free(wsPtr);
            b.free(ints);
            b.free(counters);
            kv.close();
        }
    }

    /**
     * Result of {@link #splitSweep}: per forced split count ({@code splits[i]}, 0 = automatic) the µs per call of
     * full and of sparse (k slots per KV head) decode attention, timed in a graph and eagerly.
     */
    public record SplitSweepResult(int context, int k, int variant, int[] splits, double[] fullGraphUs,
                                   double[] fullEagerUs, double[] sparseGraphUs, double[] sparseEagerUs) {}

    /**
     * Decode attention (the backend's kernel variant) over {@code context} tokens, full and over a device selection
     * of k slots per KV head, for each forced split count ({@code tp_set_attention_splits}); one cache for all.
     * {@code deep}: with the v3 kernel's deep pipeline ({@code tp_set_attention_deep_pipeline}).
     */
    public static SplitSweepResult splitSweep(CudaBackend b, int heads, int kvHeads, int headDim, int context, int k,
                                              int iters, int[] splits, boolean deep) {
        return splitSweep(b, heads, kvHeads, headDim, context, k, iters, splits, deep, 0);
    }

    /** {@link #splitSweep} with v3's L2 prefetch set to {@code prefetchRows} (tp_set_attention_prefetch) meanwhile. */
    public static SplitSweepResult splitSweep(CudaBackend b, int heads, int kvHeads, int headDim, int context, int k,
                                              int iters, int[] splits, boolean deep, int prefetchRows) {
        long[] e0 = {0}, e1 = {0};
        TpNative.tp_event_create(e0);
        TpNative.tp_event_create(e1);
        Timing before = timing;
        int prefetchBefore = TpNative.tp_get_attention_prefetch();
        int n = splits.length;
        double[] fg = new double[n], fe = new double[n], sg = new double[n], se = new double[n];
        try (SparseFixture f = new SparseFixture(b, heads, kvHeads, headDim, context, k)) {
            IntConsumerEx full = f::full, sparse = f::sparse;
            check(TpNative.tp_set_attention_deep_pipeline(deep ? 1 : 0), "attention pipeline depth");
            check(TpNative.tp_set_attention_prefetch(prefetchRows), "attention L2 prefetch");
            for (int i = 0; i < n; i++) {
                check(TpNative.tp_set_attention_splits(splits[i]), "attention splits");
                timing = Timing.GRAPH;
                fg[i] = time(b, full, f.layers, iters, e0[0], e1[0]);
                sg[i] = time(b, sparse, f.layers, iters, e0[0], e1[0]);
                timing = Timing.EAGER;
                fe[i] = time(b, full, f.layers, iters, e0[0], e1[0]);
                se[i] = time(b, sparse, f.layers, iters, e0[0], e1[0]);
            }
            return new SplitSweepResult(context, k, b.attentionVariant(), splits.clone(), fg, fe, sg, se);
        } finally {
            timing = before;
            TpNative.tp_set_attention_splits(0);
            TpNative.tp_set_attention_deep_pipeline(0);
            TpNative.tp_set_attention_prefetch(prefetchBefore);
            TpNative.tp_event_destroy(e0[0]);
            TpNative.tp_event_destroy(e1[0]);
        }
    }

    /**
     * Result of {@link #quantAttention}: µs per decode-attention call and device bytes per layer of the cache; with a
     * TidalDecode k, also µs per selection ({@code tp_kvq_tidal_select}) and per attention over the k selected slots
     * of each KV head (NaN when not measured).
     */
    /** splitMicroseconds[i]: µs per call with split setting i of the call (tp_kvq_set_splits; empty when none). */
    public record QuantAttentionResult(int context, String spec, int layersRotated, double microseconds,
                                       long kvBytesPerLayer, double selectMicroseconds, double sparseMicroseconds,
                                       double[] splitMicroseconds) {}

    public static QuantAttentionResult quantAttention(CudaBackend b, int heads, int kvHeads, int headDim, int context,
                                                      String spec, int iters) {
        return quantAttention(b, heads, kvHeads, headDim, context, spec, iters, 0);
    }

    /**
     * Decode attention of one token over {@code context} tokens held in a KIVI-quantized device cache
     * ({@link CudaQuantKvCache}, spec e.g. "int4"), shape heads / kvHeads / headDim, layers rotated past the L2
     * cache as in {@link #decodeAttention}. The cache is filled through {@code storeKv} (quantize-on-append, the
     * residual window holding the newest tokens); the kernel ({@code tp_kvq_attention}) is launched straight
     * through TpNative on pre-staged step values and timed with CUDA events. KV bytes per layer are the cache's
     * device allocation divided by the layers.
     */
    public static QuantAttentionResult quantAttention(CudaBackend b, int heads, int kvHeads, int headDim, int context,
                                                      String spec, int iters, int tidalK) {
        return quantAttention(b, heads, kvHeads, headDim, context, spec, iters, tidalK, new int[0][]);
    }

    /**
     * {@link #quantAttention} that also times the same calls on the same cache with each {max splits, rows per split}
     * of {@code splitSettings} ({@code tp_kvq_set_splits}; the setting before is restored).
     */
    public static QuantAttentionResult quantAttention(CudaBackend b, int heads, int kvHeads, int headDim, int context,
                                                      String spec, int iters, int tidalK, int[][] splitSettings) {
        dev.tokenpress.kv.quant.KvQuantSpec qs = dev.tokenpress.kv.quant.KvQuantSpec.parse(spec);
        long perLayer = (long) context * kvHeads * (headDim + 16L);
        int layers = (int) Math.max(1, Math.min(64, (256L << 20) / Math.max(1, perLayer) + 1));
        CudaQuantKvCache c = (CudaQuantKvCache) b.newKvCache(layers, kvHeads, headDim, context, qs);
        SplittableRandom r = new SplittableRandom(42);
        fill(b, c, layers, kvHeads, headDim, context, r);
        Tensor q = b.allocate(1, heads * headDim), out = b.allocate(1, heads * headDim);
        float[] qd = new float[heads * headDim];
        for (int i = 0; i < qd.length; i++) qd[i] = (float) (r.nextDouble() * 2 - 1);
        b.upload(q, qd);
        CudaTensor qt = (CudaTensor) q, ot = (CudaTensor) out;
        b.synchronize();
        // step values: query position | high-water marks[kvHeads]
        long ints = b.malloc(4L * (1 + kvHeads), "bench step values");
        int[] host = new int[1 + kvHeads];
        host[0] = context - 1;
        for (int g = 0; g < kvHeads; g++) host[1 + g] = c.highWater(0, g);
        TpNative.tp_memcpy_h2d(ints, host, 4L * host.length, b.stream());
        long need = Math.max(16, TpNative.tp_kvq_attention_workspace_bytes(1, heads, headDim, context));
        int maxBefore = TpNative.tp_kvq_max_splits(), rowsBefore = TpNative.tp_kvq_rows_per_split();
        for (int[] mr : splitSettings) { // one workspace for every setting
            check(TpNative.tp_kvq_set_splits(mr[0], mr[1]), "tp_kvq_set_splits");
            need = Math.max(need, TpNative.tp_kvq_attention_workspace_bytes(1, heads, headDim, context));
        }
        check(TpNative.tp_kvq_set_splits(maxBefore, rowsBefore), "tp_kvq_set_splits");
        long wsBytes = need;
        long ws = b.malloc(wsBytes, "bench quantized attention workspace");
        // split counters, as the backend passes them (variant 4 merges its splits with them; the others ignore them)
        long ctrBytes = 4L * Math.max(1, TpNative.tp_decode_attention_counters(heads, kvHeads));
        long ctr = b.malloc(ctrBytes, "bench attention split counters");
        b.memsetNow(ctr, 0, ctrBytes);
        float scale = (float) (1.0 / Math.sqrt(headDim));
        long[] e0 = {0}, e1 = {0};
        TpNative.tp_event_create(e0);
        TpNative.tp_event_create(e1);
        try {
            IntConsumerEx attn = l -> check(TpNative.tp_kvq_attention_ex2(ot.ptr, qt.ptr, c.pool, c.winK, c.winV, c.pos, c.loc,
                    l, heads, kvHeads, headDim, context, c.group, c.bits, c.resCap, c.maxBlocks, 1, ints, 0, 1, 0, ints + 4,
                    context, scale, ws, wsBytes, 0, ctr, b.stream()), "quantized decode attention");
            double us = time(b, attn, layers, iters, e0[0], e1[0]);
            double[] splitUs = new double[splitSettings.length];
            try {
                for (int i = 0; i < splitSettings.length; i++) {
                    check(TpNative.tp_kvq_set_splits(splitSettings[i][0], splitSettings[i][1]), "tp_kvq_set_splits");
                    splitUs[i] = time(b, attn, layers, iters, e0[0], e1[0]);
                }
            } finally {
                TpNative.tp_kvq_set_splits(maxBefore, rowsBefore);
            }
            double selUs = Double.NaN, sparseUs = Double.NaN;
            if (tidalK > 0) {
                double[] t = quantTidal(b, c, qt, ot, heads, kvHeads, headDim, context, layers, tidalK, ints, ws, wsBytes,
                        scale, iters, e0[0], e1[0]);
                selUs = t[0];
                sparseUs = t[1];
            }
            return new QuantAttentionResult(context, qs.spec(), layers, us, c.bytes() / layers, selUs, sparseUs, splitUs);
        } finally {
            TpNative.tp_event_destroy(e0[0]);
            TpNative.tp_event_destroy(e1[0]);
            b.free(ws);
            b.free(ctr);
            b.free(ints);
            c.close();
        }
    }

    /**
     * TidalDecode over a filled quantized cache: {µs per tp_kvq_tidal_select (max over the group), µs per decode
     * attention over the k slots it selected per KV head}, layers rotated. ints = query position | high-water marks.
     */
    private static double[] quantTidal(CudaBackend b, CudaQuantKvCache c, CudaTensor qt, CudaTensor ot, int heads,
                                       int kvHeads, int headDim, int context, int layers, int k, long ints, long ws,
                                       long wsBytes, float scale, int iters, long e0, long e1) {
        int len = Math.min(context, Integer.highestOneBit(Math.max(1, context - 1)) << 1);
        long selWsBytes = TpNative.tp_tidal_select_workspace_bytes(kvHeads, len);
        long selWs = b.malloc(selWsBytes, "bench selection workspace");
        long slots = b.malloc(4L * kvHeads * k, "bench selection slots");
        long counts = b.malloc(4L * kvHeads, "bench selection counts");
        long cur = b.malloc(4L * kvHeads, "bench selection current slot");
        long params = b.malloc(4L * (kvHeads + 2), "bench selection step values");
        try {
            b.memsetNow(selWs, 0, selWsBytes);
            b.memsetNow(counts, 0, 4L * kvHeads);
            b.memsetNow(cur, 0xFF, 4L * kvHeads);
            int[] p = new int[kvHeads + 2];
            for (int g = 0; g < kvHeads; g++) p[g] = c.highWater(0, g);
            p[kvHeads] = context - 1;
            p[kvHeads + 1] = context - 1;
            TpNative.tp_memcpy_h2d(params, p, 4L * p.length, b.stream());
            IntConsumerEx select = l -> check(TpNative.tp_kvq_tidal_select(slots, counts, k, cur, selWs, len, qt.ptr, c.pool,
                    c.winK, c.pos, c.loc, l, heads, kvHeads, headDim, context, c.group, c.bits, c.resCap, c.maxBlocks,
                    params, k, 0, b.stream()), "quantized TidalDecode selection");
            double selUs = time(b, select, layers, iters, e0, e1);
            select.accept(0);  // layer 0's selection, attended in every layer (the same slots hold the same positions)
            long need = TpNative.tp_kvq_attention_workspace_bytes(1, heads, headDim, k);
            if (need > wsBytes) throw new IllegalStateException("bench workspace " + wsBytes + " < " + need);
            IntConsumerEx sparse = l -> check(TpNative.tp_kvq_attention(ot.ptr, qt.ptr, c.pool, c.winK, c.winV, c.pos, c.loc, l,
                    heads, kvHeads, headDim, context, c.group, c.bits, c.resCap, c.maxBlocks, 1, ints, slots, k, counts,
                    ints + 4, k, scale, ws, wsBytes, b.stream()), "quantized sparse decode attention");
            double sparseUs = time(b, sparse, layers, iters, e0, e1);
            return new double[] {selUs, sparseUs};
        } finally {
            b.free(selWs);
            b.free(slots);
            b.free(counts);
            b.free(cur);
            b.free(params);
        }
    }

    /** Result of {@link #gemv}: µs per call and achieved weight GB/s for each forced warps-per-row (0 = automatic). */
    public record GemvResult(int rows, int cols, int[] warpsPerRow, double[] microseconds, double[] gbPerSecond) {}

    /**
     * The decode GEMV {@code tp_gemv_bf16} (n = 1) on an O × I bf16 matrix, for the automatic warps per row and each
     * forced one ({@code tp_gemv_set_wpr} 1, 2, 4, 8), the matrix rotated among copies that together exceed the L2
     * cache so every call streams its weights from memory; CUDA events over {@code iters} calls.
     */
    public static GemvResult gemv(CudaBackend b, int rows, int cols, int iters) {
        long bytes = 2L * rows * cols;
        int copies = (int) Math.max(2, Math.min(64, (256L << 20) / bytes + 1));
        long w = b.malloc(bytes * copies, "bench GEMV weights");
        long x = b.malloc(4L * cols, "bench GEMV x");
        long o = b.malloc(4L * rows, "bench GEMV out");
        b.memsetNow(w, 0, bytes * copies);
        b.memsetNow(x, 0, 4L * cols);
        int[] wprs = {0, 1, 2, 4, 8};
        double[] us = new double[wprs.length], gbs = new double[wprs.length];
        long[] e0 = {0}, e1 = {0};
        TpNative.tp_event_create(e0);
        TpNative.tp_event_create(e1);
        try {
            for (int i = 0; i < wprs.length; i++) {
                check(TpNative.tp_gemv_set_wpr(wprs[i]), "gemv warps per row");
                IntConsumerEx call = c -> check(TpNative.tp_gemv_bf16(o, x, w + (long) c * bytes, 0, 1, rows, cols, b.stream()), "gemv");
                us[i] = time(b, call, copies, iters, e0[0], e1[0]);
                gbs[i] = bytes / (us[i] * 1e3);
            }
        } finally {
            TpNative.tp_gemv_set_wpr(0);
            TpNative.tp_event_destroy(e0[0]);
            TpNative.tp_event_destroy(e1[0]);
            b.free(w);
            b.free(x);
            b.free(o);
        }
        return new GemvResult(rows, cols, wprs, us, gbs);
    }

    /**
     * Positions 0..context-1 in every layer and KV head of {@code cache}, appended through {@code storeKv} in chunks
     * of up to 8192 tokens with uniform random keys (values the same numbers) drawn from {@code r}.
     */
    private static void fill(CudaBackend b, KvCache cache, int layers, int kvHeads, int headDim, int context,
                             SplittableRandom r) {
        int chunk = Math.min(context, 8192);
        Tensor kt = b.allocate(chunk, kvHeads * headDim), vt = b.allocate(chunk, kvHeads * headDim);
        float[] data = new float[chunk * kvHeads * headDim];
        for (int i = 0; i < data.length; i++) data[i] = (float) (r.nextDouble() * 2 - 1);
        b.upload(kt, data);
        b.upload(vt, data);
        for (int done = 0; done < context; done += chunk) {
            int m = Math.min(chunk, context - done);
            int[] pos = new int[m];
            for (int i = 0; i < m; i++) pos[i] = done + i;
            for (int l = 0; l < layers; l++) {
                int[][] slots = new int[kvHeads][];
                for (int g = 0; g < kvHeads; g++) slots[g] = cache.allocate(l, g, pos, m);
                b.storeKv(cache, l, kt, vt, slots, m);
            }
        }
    }

    private interface IntConsumerEx {
        void accept(int layer);
    }

    /** µs per call of {@code op} (layer argument rotating over {@code layers}), timed as {@link #timing()} says. */
    private static double time(CudaBackend b, IntConsumerEx op, int layers, int iters, long e0, long e1) {
        for (int i = 0; i < 3; i++) op.accept(i % layers);
        TpNative.tp_stream_synchronize(b.stream());
        if (timing == Timing.GRAPH) return timeGraph(b, op, layers, iters, e0, e1);
        TpNative.tp_event_record(e0, b.stream());
        for (int i = 0; i < iters; i++) op.accept(i % layers);
        TpNative.tp_event_record(e1, b.stream());
        TpNative.tp_event_synchronize(e1);
        float[] ms = {0};
        TpNative.tp_event_elapsed_ms(ms, e0, e1);
        return ms[0] * 1e3 / iters;
    }

    /** Graph replays per timed batch of {@link #timeGraph}. */
    private static final int GRAPH_REPLAYS = 5;

    /**
     * {@code iters} calls captured into one CUDA graph (at most 512; the layer rotating as in eager timing), one
     * untimed replay, then {@link #GRAPH_REPLAYS} replays between two events.
     */
    private static double timeGraph(CudaBackend b, IntConsumerEx op, int layers, int iters, long e0, long e1) {
        int n = Math.max(1, Math.min(iters, 512));
        long[] exec = {0};
        check(TpNative.tp_graph_begin_capture(b.stream()), "graph capture");
        RuntimeException failed = null;
        try {
            for (int i = 0; i < n; i++) op.accept(i % layers);
        } catch (RuntimeException e) {
            failed = e;
        }
        int rc = TpNative.tp_graph_end_capture(b.stream(), exec);
        if (failed != null) {
            if (exec[0] != 0) TpNative.tp_graph_destroy(exec[0]);
            throw failed;
        }
        if (rc != 0 || exec[0] == 0) throw new CudaException("graph capture of the timed calls: " + CudaBackend.lastError(), rc);
        try {
            check(TpNative.tp_graph_launch(exec[0], b.stream()), "graph launch");
            TpNative.tp_stream_synchronize(b.stream());
            TpNative.tp_event_record(e0, b.stream());
            for (int r = 0; r < GRAPH_REPLAYS; r++) check(TpNative.tp_graph_launch(exec[0], b.stream()), "graph launch");
            TpNative.tp_event_record(e1, b.stream());
            TpNative.tp_event_synchronize(e1);
            float[] ms = {0};
            TpNative.tp_event_elapsed_ms(ms, e0, e1);
            return ms[0] * 1e3 / ((double) n * GRAPH_REPLAYS);
        } finally {
            TpNative.tp_graph_destroy(exec[0]);
        }
    }

    private static void check(int rc, String what) {
        if (rc != 0) throw new CudaException(what + ": " + CudaBackend.lastError(), rc);
    }
}
