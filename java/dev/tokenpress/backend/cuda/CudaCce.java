package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.eval.CceLse;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.TensorData;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.ShortBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;

/**
 * Cut-Cross-Entropy log-sum-exp on the GPU ({@code tp_cce_lse}, cuda/cce_lse.cu): for the final normed hidden
 * states {@code h [n, D]} (f32 activation) and the LM head {@code W [V, D]} (bf16 weight as uploaded by
 * {@link CudaBackend#weight}), {@code lse[i] = log sum_v exp(h_i . W_v)} and {@code targetLogit[i] = h_i . W_{t_i}}
 * (NaN for a negative target) without materialising the [n, V] logits: only O(n) floats cross the bus (targets up,
 * lse and target logits down) and the device workspace is O(n) ({@link #workspaceBytes(int, int)}; variant 2 adds
 * a bf16 copy of h, 2·n·D bytes). Same result type as the CPU {@link CceLse}.
 * <p>
 * {@code precise = true} (the default) splits h into bf16 hi + lo parts (two tensor-core products, about f32
 * accuracy: parity with {@link CceLse} to ~1e-5 relative); {@code false} rounds h to bf16 like the cuBLAS matmul
 * path (half the tensor-core work). Needs D % 8 == 0 ({@link UnsupportedOpException} otherwise). Eager only (not
 * inside a captured decode step).
 * <p>
 * Implementations, chosen process-wide ({@link #setVariant}, or {@code -Dtokenpress.cuda.cceVariant=v1|v2|v3|v4|gemm}
 * read when a {@link CudaBackend} opens): {@link #GEMM} (the default, below), 1, and 2 (the native default:
 * cp.async / ldmatrix pipeline with 128 x 256 block tiles, D in chunks of 32 through 4 stages, h rounded to bf16
 * only: precise mode always runs variant 1); 3 and 4
 * are variant 2 with D in chunks of 64 through 3 or 4 stages (144.5 / 192.5 KiB of shared memory: on devices with
 * less, the next smaller shape runs). Variants 2 to 4 need a larger workspace (a bf16 copy of h).
 * <p>
 * Variant {@link #GEMM} (5, the default; Java-side, not a native variant): the logits are made chunk by chunk with
 * cuBLAS ({@code cublasGemmEx}, bf16 operands, f32 output) into one buffer of {@link #setGemmChunk rows × vocabulary
 * columns} (4096 × 2048 by default: 32 MiB), and {@code tp_lse_chunk} folds each chunk into a running
 * (max, sum) per row; {@code tp_lse_chunk_finish} ends it. The [n, V] logits never exist at once, the workspace is
 * O(n) plus the fixed chunk, and the tensor-core work is cuBLAS's own. Precise mode runs two GEMMs per chunk (bf16
 * hi and lo parts of h, the second accumulating), as variant 1 does inside its kernel. With {@link #setGemmOverlap}
 * (or {@code -Dtokenpress.cuda.cceOverlap=true}; off by default: on an H200 the same bits but slower, 8.45 against
 * 7.71 ms at the best chunk shape) two chunk buffers
 * alternate and the folds run on a second stream, so the fold of one chunk overlaps the GEMM of the next (the same
 * kernels on the same data in the same order per row: the same bits); the workspace grows by one chunk.
 */
public final class CudaCce {
    private CudaCce() {}

    /** The chunked cuBLAS implementation's variant number (see the class comment). */
    public static final int GEMM = 5;
    /**
     * Default chunk of the {@link #GEMM} variant: rows of h × vocabulary entries (32 MiB of f32 logits; the fastest
     * of the shapes timed on an H100, docs/PERFORMANCE.md).
     */
    public static final int GEMM_ROWS = 4096, GEMM_COLS = 2048;

    private static volatile boolean gemm = true; // the default: faster than every native variant on an H100
    private static volatile int gemmRows = GEMM_ROWS, gemmCols = GEMM_COLS;
    private static volatile boolean gemmOverlap = false;

    /** Device workspace bytes {@code tp_cce_lse} needs for n rows of hidden size dim under the variant set now. */
    public static long workspaceBytes(int n, int dim) {
        return workspaceBytes(n, dim, 0);
    }

    /**
     * Device workspace bytes for n rows of hidden size dim under a variant (1 to 5; 0 = the one set now). For
     * {@link #GEMM}: precise mode's size at the chunk set now (fast mode needs less, see {@link #gemmWorkspaceBytes}).
     */
    public static long workspaceBytes(int n, int dim, int variant) {
        if (variant == GEMM || (variant == 0 && gemm))
            return gemmWorkspaceBytes(n, dim, true, gemmRows, gemmCols, gemmOverlap);
        return TpNative.tp_cce_lse_workspace_bytes_for(n, dim, variant);
    }

    /** Selects the implementation for the whole process: 1, 2, 3, 4 (native kernels) or {@link #GEMM} (default). */
    public static void setVariant(int variant) {
        if (variant == GEMM) {
            gemm = true;
            return;
        }
        check(TpNative.tp_cce_set_variant(variant), "tp_cce_set_variant");
        gemm = false;
    }

    /** The implementation that runs now (1 to 4, or {@link #GEMM}). */
    public static int variant() {
        return gemm ? GEMM : TpNative.tp_cce_get_variant();
    }

    /**
     * The chunk of the {@link #GEMM} variant from now on (process-wide): rows of h and vocabulary entries per cuBLAS
     * call (columns are rounded up to a multiple of 4).
     */
    public static void setGemmChunk(int rows, int cols) {
        if (rows <= 0 || cols <= 0) throw new IllegalArgumentException("cce gemm chunk " + rows + " x " + cols);
        gemmRows = rows;
        gemmCols = roundUp(cols, 4);
    }

    /**
     * Whether the {@link #GEMM} variant overlaps each chunk's fold with the next chunk's GEMM (process-wide; see the
     * class comment). The workspace then holds two chunks: size it after setting this.
     */
    public static void setGemmOverlap(boolean on) {
        gemmOverlap = on;
    }

    public static boolean gemmOverlap() {
        return gemmOverlap;
    }

    /** Workspace of the {@link #GEMM} variant: bf16 h (and its lo part if precise), the chunk, and (max, sum) per row. */
    public static long gemmWorkspaceBytes(int n, int dim, boolean precise, int rowChunk, int colChunk) {
        return gemmWorkspaceBytes(n, dim, precise, rowChunk, colChunk, false);
    }

    /** {@link #gemmWorkspaceBytes(int, int, boolean, int, int)} with a second chunk buffer when {@code overlap}. */
    public static long gemmWorkspaceBytes(int n, int dim, boolean precise, int rowChunk, int colChunk, boolean overlap) {
        if (n <= 0) return 0;
        long h = align(2L * n * dim);
        long chunk = align(4L * Math.min(rowChunk, n) * roundUp(colChunk, 4));
        return h * (precise ? 2 : 1) + chunk * (overlap ? 2 : 1) + align(8L * n);
    }

    /** LSE and target logits (precise mode); {@code targets} may be null (then every target logit is NaN). */
    public static CceLse.Result compute(CudaBackend b, Tensor hidden, int n, Tensor lmHead, int[] targets) {
        return compute(b, hidden, n, lmHead, targets, true);
    }

    public static CceLse.Result compute(CudaBackend b, Tensor hidden, int n, Tensor lmHead, int[] targets,
                                        boolean precise) {
        if (!(hidden instanceof CudaTensor h) || h.bf16)
            throw new IllegalArgumentException("cce: hidden must be an f32 CUDA activation tensor, got " + hidden);
        if (lmHead instanceof CudaTensor q && q.q8)
            throw new dev.tokenpress.backend.UnsupportedOpException("cce: the CUDA log-sum-exp reads a bf16 LM head, not q8_0: load with --weight-type as-stored");
        if (!(lmHead instanceof CudaTensor w) || !w.bf16)
            throw new IllegalArgumentException("cce: LM head must be a bf16 CUDA weight tensor, got " + lmHead);
        int d = h.cols, v = w.rows;
        if (w.cols != d)
            throw new IllegalArgumentException("cce: LM head " + w + " does not match hidden size " + d);
        if (n < 0 || n > h.rows) throw new IllegalArgumentException("cce: n=" + n + " outside hidden " + h);
        if (targets != null) {
            if (targets.length < n)
                throw new IllegalArgumentException("cce: targets has " + targets.length + " entries, need " + n);
            for (int i = 0; i < n; i++)
                if (targets[i] >= v)
                    throw new IllegalArgumentException("cce: target " + targets[i] + " at row " + i
                            + " outside vocabulary of " + v);
        }
        float[] lse = new float[n], tgt = new float[n];
        Arrays.fill(tgt, Float.NaN);
        if (n == 0) return new CceLse.Result(lse, tgt);
        if (d % 8 != 0 || (h.ptr & 15) != 0 || (w.ptr & 15) != 0)
            throw new UnsupportedOpException("CUDA cce needs a hidden size divisible by 8 (got " + d
                    + "): use CceLse on the CPU");
        long wsBytes = workspaceBytes(n, d);
        long ws = 0, out = 0, tdev = 0;
        try {
            ws = b.malloc(wsBytes, "cce workspace");
            out = b.malloc(8L * n, "cce outputs");
            if (targets != null) {
                tdev = b.malloc(4L * n, "cce targets");
                check(TpNative.tp_memcpy_h2d(tdev, targets, 4L * n, b.stream()), "cce targets upload");
            }
            computeDevice(b, out, out + 4L * n, h.ptr, w.ptr, tdev, n, v, d, precise, ws, wsBytes);
            check(TpNative.tp_memcpy_d2h(lse, out, 4L * n, b.stream()), "cce download");
            if (targets != null) check(TpNative.tp_memcpy_d2h(tgt, out + 4L * n, 4L * n, b.stream()), "cce download");
        } finally {
            b.free(ws);
            b.free(out);
            b.free(tdev);
        }
        return new CceLse.Result(lse, tgt);
    }

    /**
     * Device-pointer variant (no transfers, no allocation, asynchronous on the backend's stream): lse f32 [n],
     * targetLogit f32 [n] (0 = not wanted), hidden f32 [n, dim], lmHead bf16 [vocab, dim], targets int32 [n]
     * (0 = none), workspace of {@link #workspaceBytes(int, int)} bytes (for the variant set when it runs).
     */
    public static void computeDevice(CudaBackend b, long lse, long targetLogit, long hidden, long lmHead, long targets,
                                     int n, int vocab, int dim, boolean precise, long workspace, long workspaceBytes) {
        if (gemm) {
            computeGemm(b, lse, targetLogit, hidden, lmHead, targets, n, vocab, dim, precise, workspace, workspaceBytes,
                    gemmRows, gemmCols, gemmOverlap);
            return;
        }
        check(TpNative.tp_cce_lse(lse, targetLogit, hidden, lmHead, targets, n, vocab, dim, precise ? 1 : 0,
                workspace, workspaceBytes, b.stream()), "tp_cce_lse");
    }

    /**
     * The {@link #GEMM} variant with an explicit chunk (rows of h × vocabulary entries per cublasGemmEx): same
     * arguments as {@link #computeDevice}, workspace of {@link #gemmWorkspaceBytes} bytes. Rows chunk by chunk, and
     * within a row chunk the vocabulary, so the rows' bf16 h stays in L2 while the LM head streams past it.
     */
    public static void computeGemm(CudaBackend b, long lse, long targetLogit, long hidden, long lmHead, long targets,
                                   int n, int vocab, int dim, boolean precise, long workspace, long workspaceBytes,
                                   int rowChunk, int colChunk) {
        computeGemm(b, lse, targetLogit, hidden, lmHead, targets, n, vocab, dim, precise, workspace, workspaceBytes,
                rowChunk, colChunk, false);
    }

    /**
     * {@link #computeGemm(CudaBackend, long, long, long, long, long, int, int, int, boolean, long, long, int, int)},
     * with {@code overlap}: two chunk buffers (workspace of {@link #gemmWorkspaceBytes(int, int, boolean, int, int,
     * boolean)}), the GEMMs on the backend's stream and the folds on a second stream created for the call; chunk k's
     * GEMM waits for the fold of chunk k - 2 (its buffer), fold k for GEMM k, and the backend's stream for the last
     * fold before the finish, so the call is ordered on the backend's stream like the plain one.
     */
    public static void computeGemm(CudaBackend b, long lse, long targetLogit, long hidden, long lmHead, long targets,
                                   int n, int vocab, int dim, boolean precise, long workspace, long workspaceBytes,
                                   int rowChunk, int colChunk, boolean overlap) {
        if (lse == 0 || hidden == 0 || lmHead == 0 || workspace == 0)
            throw new IllegalArgumentException("cce gemm: null device pointer");
        if (n < 0 || vocab <= 0 || dim <= 0 || rowChunk <= 0 || colChunk <= 0)
            throw new IllegalArgumentException("cce gemm: n=" + n + " vocab=" + vocab + " dim=" + dim + " chunk "
                    + rowChunk + " x " + colChunk);
        long need = gemmWorkspaceBytes(n, dim, precise, rowChunk, colChunk, overlap);
        if (workspaceBytes < need)
            throw new IllegalArgumentException("cce gemm: workspace of " + workspaceBytes + " bytes, needs " + need);
        if (n == 0) return;
        int rc = Math.min(rowChunk, n), vc = roundUp(colChunk, 4);
        long hBytes = align(2L * n * dim);
        long chunkBytes = align(4L * rc * vc);
        long hi = workspace, lo = precise ? hi + hBytes : 0, chunk0 = hi + hBytes * (precise ? 2 : 1);
        long chunk1 = overlap ? chunk0 + chunkBytes : chunk0;
        long state = chunk1 + chunkBytes;
        long s = b.stream(), elems = (long) n * dim;
        long s2 = 0;
        long[] gemmDone = new long[2], foldDone = new long[2];
        try {
            if (overlap) {
                long[] t = {0};
                check(TpNative.tp_stream_create(t), "cce gemm: fold stream");
                s2 = t[0];
                for (int i = 0; i < 2; i++) {
                    check(TpNative.tp_event_create(t), "cce gemm: event");
                    gemmDone[i] = t[0];
                    check(TpNative.tp_event_create(t), "cce gemm: event");
                    foldDone[i] = t[0];
                }
            }
            if (precise) check(TpNative.tp_f32_split_bf16(hi, lo, hidden, elems, s), "cce gemm: split h");
            else check(TpNative.tp_f32_to_bf16(hi, hidden, elems, s), "cce gemm: convert h");
            int k = 0;
            for (int r0 = 0; r0 < n; r0 += rc) {
                int rows = Math.min(rc, n - r0);
                for (int v0 = 0; v0 < vocab; v0 += vc, k++) {
                    int cols = Math.min(vc, vocab - v0), buf = k & 1;
                    long chunk = buf == 0 ? chunk0 : chunk1, w = lmHead + 2L * v0 * dim;
                    if (overlap && k >= 2) check(TpNative.tp_stream_wait_event(s, foldDone[buf]), "cce gemm: wait");
                    b.gemmBf16(chunk, vc, hi + 2L * r0 * dim, w, rows, cols, dim, false);
                    if (precise) b.gemmBf16(chunk, vc, lo + 2L * r0 * dim, w, rows, cols, dim, true);
                    long fs = s;
                    if (overlap) {
                        check(TpNative.tp_event_record(gemmDone[buf], s), "cce gemm: record");
                        check(TpNative.tp_stream_wait_event(s2, gemmDone[buf]), "cce gemm: wait");
                        fs = s2;
                    }
                    check(TpNative.tp_lse_chunk(state + 8L * r0, targetLogit == 0 ? 0 : targetLogit + 4L * r0, chunk,
                            targets == 0 ? 0 : targets + 4L * r0, rows, cols, vc, v0, v0 == 0 ? 1 : 0, fs), "tp_lse_chunk");
                    if (overlap) check(TpNative.tp_event_record(foldDone[buf], s2), "cce gemm: record");
                }
            }
            if (overlap && k > 0) check(TpNative.tp_stream_wait_event(s, foldDone[(k - 1) & 1]), "cce gemm: wait");
            check(TpNative.tp_lse_chunk_finish(lse, targetLogit, state, targets, n, vocab, s), "tp_lse_chunk_finish");
        } finally {
            // released once their queued work is done (cudaStreamDestroy / cudaEventDestroy do not wait)
            for (int i = 0; i < 2; i++) {
                if (gemmDone[i] != 0) TpNative.tp_event_destroy(gemmDone[i]);
                if (foldDone[i] != 0) TpNative.tp_event_destroy(foldDone[i]);
            }
            if (s2 != 0) TpNative.tp_stream_destroy(s2);
        }
    }

    private static long align(long bytes) {
        return (bytes + 255) & ~255L;
    }

    private static int roundUp(int x, int m) {
        return (x + m - 1) / m * m;
    }

    private static void check(int rc, String op) {
        if (rc == TpNative.TP_OK) return;
        String msg = CudaBackend.lastError();
        switch (rc) {
            case TpNative.TP_ERR_UNSUPPORTED, TpNative.TP_ERR_UNSUPPORTED_HEAD_DIM ->
                    throw new UnsupportedOpException(op + ": " + msg);
            case TpNative.TP_ERR_BAD_ARGUMENT -> throw new IllegalArgumentException(op + ": " + msg);
            default -> throw new CudaException(op + ": " + msg, rc);
        }
    }

    // ---- benchmark ------------------------------------------------------------------------------------------

    /**
     * One {@code KernelBench cce} run (times in ms, best of the timed repetitions, CUDA events on the stream).
     *
     * @param cceMs          tp_cce_lse, h rounded to bf16 (the same products as the GEMM path)
     * @param ccePreciseMs   tp_cce_lse, split hi + lo h (the default of {@link #compute})
     * @param gemmMs         CudaBackend.matmul with n rows = f32 → bf16 conversion of h + cublasGemmEx to f32 [n, V]
     * @param naiveLsmMs     tp_lse_rows over the materialised logits (row max, sum of exp, target gather)
     * @param cceBytes       bytes allocated for the CCE path (workspace + outputs + targets)
     * @param naiveBytes     bytes allocated for the GEMM path (logits + bf16 copy of h + outputs + targets)
     * @param cceMemDelta    cudaMemGetInfo free-bytes drop across the CCE allocations
     * @param naiveMemDelta  the same for the GEMM path (matmul scratch included)
     * @param maxLseDiff     max |lse_cce - lse_naive| (both from bf16-rounded h)
     * @param maxTargetDiff  max |target_cce - target_naive| over rows with a target
     * @param splits         vocabulary splits tp_cce_lse used
     * @param cceV2Ms        tp_cce_lse variant 2 (bf16 h; includes its h → bf16 conversion kernel)
     * @param v2Bytes        bytes allocated for variant 2 (its larger workspace + outputs + targets)
     * @param v2MaxLseDiff   max |lse_v2 - lse_naive|
     * @param v2MaxTargetDiff max |target_v2 - target_naive| over rows with a target (infinite if an ignored one is
     *                       not NaN)
     * @param v2VsV1MaxLseDiff max |lse_v2 - lse_v1| (same bf16 products, other summation order)
     * @param v2Splits       vocabulary splits variant 2 used
     */
    public record BenchResult(double cceMs, double ccePreciseMs, double gemmMs, double naiveLsmMs, long cceBytes,
                              long naiveBytes, long cceMemDelta, long naiveMemDelta, double maxLseDiff,
                              double maxTargetDiff, int splits, double cceV2Ms, long v2Bytes, double v2MaxLseDiff,
                              double v2MaxTargetDiff, double v2VsV1MaxLseDiff, int v2Splits, double cceV3Ms,
                              double v3MaxLseDiff, double cceV4Ms, double v4MaxLseDiff, List<GemmRun> gemm) {}

    /**
     * One chunk shape of the {@link #GEMM} variant in {@link #bench}: ms in fast mode (bf16 h, its conversion
     * included) and precise mode (hi + lo, two GEMMs per chunk), workspace bytes of fast mode, and the fast mode's max
     * differences to the naive path (NaN times if it failed); overlapMs: fast mode with the folds overlapped
     * ({@link #setGemmOverlap}), overlapMaxDiff: the largest difference of its lse and target logits from the plain
     * run's (0 expected: the same kernels in the same order per row).
     */
    public record GemmRun(int rows, int cols, double ms, double preciseMs, long bytes, double maxLseDiff,
                          double maxTargetDiff, double overlapMs, double overlapMaxDiff) {}

    /** The chunk shapes {@link #bench} times for the {@link #GEMM} variant (rows of h × vocabulary entries). */
    public static final int[][] BENCH_GEMM_CHUNKS = {
            {GEMM_ROWS, GEMM_COLS}, {1024, 4096}, {2048, 4096}, {4096, 2048}, {4096, 4096}, {8192, 1024}, {1024, 1024}};

    /** Random h [n, d] (f32) and W [v, d] (bf16), random targets with every 17th row ignored. */
    public static BenchResult bench(CudaBackend b, int n, int d, int v, int reps) {
        SplittableRandom r = new SplittableRandom(11);
        // W: a random 8 MiB bf16 pattern repeated (timing does not depend on the values)
        long wElems = (long) v * d;
        ByteBuffer wb = ByteBuffer.allocateDirect(Math.toIntExact(2 * wElems)).order(ByteOrder.LITTLE_ENDIAN);
        short[] pattern = new short[1 << 22];
        float ws = (float) (2.0 / Math.sqrt(d));
        for (int i = 0; i < pattern.length; i++)
            pattern[i] = Half.floatToBf16((float) ((r.nextDouble() * 2 - 1) * ws));
        ShortBuffer sb = wb.asShortBuffer();
        for (long done = 0; done < wElems; done += pattern.length)
            sb.put(pattern, 0, (int) Math.min(pattern.length, wElems - done));
        CudaTensor w = (CudaTensor) b.weight(new TensorData("bench lm_head", DType.BF16, new long[] {v, d}, wb, null));
        wb = null;
        CudaTensor h = (CudaTensor) b.allocate(n, d);
        float[] hv = new float[n * d];
        for (int i = 0; i < hv.length; i++) hv[i] = (float) (r.nextDouble() * 2 - 1);
        b.upload(h, hv);
        int[] targets = new int[n];
        for (int i = 0; i < n; i++) targets[i] = i % 17 == 16 ? CceLse.IGNORE_INDEX : r.nextInt(v);
        b.synchronize();

        long[] e0 = {0}, e1 = {0};
        check(TpNative.tp_event_create(e0), "event");
        check(TpNative.tp_event_create(e1), "event");
        long cceWs = 0, cceOut = 0, tdev = 0, nOut = 0;
        CudaTensor logits = null;
        int variant0 = variant();
        try {
            // -- CCE path (variant 1)
            setVariant(1);
            long free0 = memFree();
            long wsBytes = workspaceBytes(n, d, 1);
            cceWs = b.malloc(wsBytes, "bench cce workspace");
            cceOut = b.malloc(8L * n, "bench cce outputs");
            tdev = b.malloc(4L * n, "bench targets");
            long cceMemDelta = free0 - memFree();
            long cceBytes = wsBytes + 8L * n + 4L * n;
            check(TpNative.tp_memcpy_h2d(tdev, targets, 4L * n, b.stream()), "targets upload");
            final long fWs = cceWs, fOut = cceOut, fT = tdev;
            double ccePrecise = time(b, e0[0], e1[0], reps, () ->
                    computeDevice(b, fOut, fOut + 4L * n, h.ptr, w.ptr, fT, n, v, d, true, fWs, wsBytes));
            double cceFast = time(b, e0[0], e1[0], reps, () ->
                    computeDevice(b, fOut, fOut + 4L * n, h.ptr, w.ptr, fT, n, v, d, false, fWs, wsBytes));
            float[] lseC = new float[n], tgtC = new float[n];
            check(TpNative.tp_memcpy_d2h(lseC, cceOut, 4L * n, b.stream()), "download");
            check(TpNative.tp_memcpy_d2h(tgtC, cceOut + 4L * n, 4L * n, b.stream()), "download");
            int splits = TpNative.tp_cce_lse_splits(n, v);
            b.free(cceWs);
            cceWs = 0;

            // -- naive path: cuBLAS logits [n, V] f32, then log-softmax statistics
            long free1 = memFree();
            logits = (CudaTensor) b.allocate(n, v);
            nOut = b.malloc(8L * n, "bench naive outputs");
            final CudaTensor lg = logits;
            double gemm = time(b, e0[0], e1[0], reps, () -> b.matmul(lg, h, w, null, n));
            long naiveMemDelta = free1 - memFree(); // after the first matmul: its bf16 input scratch is in
            long naiveBytes = 4L * n * v + 2L * n * d + 8L * n + 4L * n;
            final long fN = nOut;
            double lsm = time(b, e0[0], e1[0], reps, () ->
                    check(TpNative.tp_lse_rows(fN, fN + 4L * n, lg.ptr, fT, n, v, b.stream()), "tp_lse_rows"));
            float[] lseN = new float[n], tgtN = new float[n];
            check(TpNative.tp_memcpy_d2h(lseN, nOut, 4L * n, b.stream()), "download");
            check(TpNative.tp_memcpy_d2h(tgtN, nOut + 4L * n, 4L * n, b.stream()), "download");

            // -- CCE variants 2, 3 and 4 (bf16 h only), last: a failure there (NaN times) leaves the figures above
            // intact
            double[] famMs = new double[5];
            float[][] famLse = new float[5][], famTgt = new float[5][];
            long v2Bytes = 0;
            int v2Splits = 0;
            for (int fv = 2; fv <= 4; fv++) {
                famMs[fv] = Double.NaN;
                famLse[fv] = new float[n];
                famTgt[fv] = new float[n];
                Arrays.fill(famLse[fv], Float.NaN);
                try {
                    setVariant(fv);
                    long wsB = workspaceBytes(n, d, fv);
                    cceWs = b.malloc(wsB, "bench cce v" + fv + " workspace");
                    if (fv == 2) v2Bytes = wsB + 8L * n + 4L * n;
                    final long fWs2 = cceWs;
                    check(TpNative.tp_memset_async(cceOut, 0xff, 8L * n, b.stream()), "memset"); // NaN until written
                    famMs[fv] = time(b, e0[0], e1[0], reps, () ->
                            computeDevice(b, fOut, fOut + 4L * n, h.ptr, w.ptr, fT, n, v, d, false, fWs2, wsB));
                    check(TpNative.tp_memcpy_d2h(famLse[fv], cceOut, 4L * n, b.stream()), "download");
                    check(TpNative.tp_memcpy_d2h(famTgt[fv], cceOut + 4L * n, 4L * n, b.stream()), "download");
                    if (fv == 2) v2Splits = TpNative.tp_cce_lse_splits(n, v);
                } catch (RuntimeException e) {
                    System.err.println("cce variant " + fv + " failed: " + e);
                    famMs[fv] = Double.NaN;
                } finally {
                    setVariant(variant0);
                    if (cceWs != 0) b.free(cceWs);
                    cceWs = 0;
                }
            }
            // -- the chunked cuBLAS variant over several chunk shapes, last as well
            List<GemmRun> gemmRuns = new ArrayList<>();
            for (int[] c : BENCH_GEMM_CHUNKS) {
                // room for the precise runs and the overlapped run's second chunk; fastB: what the plain fast mode needs
                long wsB = gemmWorkspaceBytes(n, d, true, c[0], c[1], true), fastB = gemmWorkspaceBytes(n, d, false, c[0], c[1]);
                float[] lseG = new float[n], tgtG = new float[n];
                double ms = Double.NaN, pms = Double.NaN, oms = Double.NaN, odiff = Double.NaN;
                try {
                    cceWs = b.malloc(wsB, "bench cce gemm workspace");
                    final long fWs2 = cceWs;
                    check(TpNative.tp_memset_async(cceOut, 0xff, 8L * n, b.stream()), "memset");
                    ms = time(b, e0[0], e1[0], reps, () -> computeGemm(b, fOut, fOut + 4L * n, h.ptr, w.ptr, fT, n, v,
                            d, false, fWs2, wsB, c[0], c[1]));
                    check(TpNative.tp_memcpy_d2h(lseG, cceOut, 4L * n, b.stream()), "download");
                    check(TpNative.tp_memcpy_d2h(tgtG, cceOut + 4L * n, 4L * n, b.stream()), "download");
                    pms = time(b, e0[0], e1[0], reps, () -> computeGemm(b, fOut, fOut + 4L * n, h.ptr, w.ptr, fT, n, v,
                            d, true, fWs2, wsB, c[0], c[1]));
                    check(TpNative.tp_memset_async(cceOut, 0xff, 8L * n, b.stream()), "memset");
                    oms = time(b, e0[0], e1[0], reps, () -> computeGemm(b, fOut, fOut + 4L * n, h.ptr, w.ptr, fT, n, v,
                            d, false, fWs2, wsB, c[0], c[1], true));
                    float[] lseO = new float[n], tgtO = new float[n];
                    check(TpNative.tp_memcpy_d2h(lseO, cceOut, 4L * n, b.stream()), "download");
                    check(TpNative.tp_memcpy_d2h(tgtO, cceOut + 4L * n, 4L * n, b.stream()), "download");
                    double[] dO = diffs(lseO, tgtO, lseG, tgtG, targets, n);
                    odiff = Math.max(dO[0], dO[1]);
                } catch (RuntimeException e) {
                    System.err.println("cce gemm chunk " + c[0] + "x" + c[1] + " failed: " + e);
                    if (Double.isNaN(ms)) Arrays.fill(lseG, Float.NaN);
                } finally {
                    if (cceWs != 0) b.free(cceWs);
                    cceWs = 0;
                }
                double[] dg = diffs(lseG, tgtG, lseN, tgtN, targets, n);
                gemmRuns.add(new GemmRun(c[0], c[1], ms, pms, fastB, dg[0], dg[1], oms, odiff));
            }
            double cceV2 = famMs[2];
            float[] lse2 = famLse[2], tgt2 = famTgt[2];
            double[] d1 = diffs(lseC, tgtC, lseN, tgtN, targets, n), d2 = diffs(lse2, tgt2, lseN, tgtN, targets, n);
            double d21 = 0;
            for (int i = 0; i < n; i++) d21 = Math.max(d21, Math.abs((double) lse2[i] - lseC[i]));
            if (Double.isNaN(d21)) d21 = Double.POSITIVE_INFINITY;
            double[] d3 = diffs(famLse[3], famTgt[3], lseN, tgtN, targets, n), d4 = diffs(famLse[4], famTgt[4], lseN, tgtN, targets, n);
            return new BenchResult(cceFast, ccePrecise, gemm, lsm, cceBytes, naiveBytes, cceMemDelta, naiveMemDelta,
                    d1[0], d1[1], splits, cceV2, v2Bytes, d2[0], d2[1], d21, v2Splits, famMs[3], d3[0], famMs[4], d4[0],
                    gemmRuns);
        } finally {
            setVariant(variant0);
            TpNative.tp_event_destroy(e0[0]);
            TpNative.tp_event_destroy(e1[0]);
            b.free(cceWs);
            b.free(cceOut);
            b.free(tdev);
            b.free(nOut);
            if (logits != null) b.free(logits.ptr);
            b.free(h.ptr);
            b.free(w.ptr);
        }
    }

    /** {max |lse - lse_ref|, max |target - target_ref| over rows with a target}; NaN / a non-NaN ignored target → ∞. */
    private static double[] diffs(float[] lse, float[] tgt, float[] lseRef, float[] tgtRef, int[] targets, int n) {
        double dl = 0, dt = 0;
        for (int i = 0; i < n; i++) {
            dl = Math.max(dl, Math.abs((double) lse[i] - lseRef[i]));
            if (targets[i] >= 0) dt = Math.max(dt, Math.abs((double) tgt[i] - tgtRef[i]));
            else if (!Float.isNaN(tgt[i])) dt = Double.POSITIVE_INFINITY; // ignored target must be NaN
        }
        if (Double.isNaN(dl)) dl = Double.POSITIVE_INFINITY;
        if (Double.isNaN(dt)) dt = Double.POSITIVE_INFINITY;
        return new double[] {dl, dt};
    }

    private static long memFree() {
        long[] free = {0}, total = {0};
        check(TpNative.tp_mem_get_info(free, total), "cudaMemGetInfo");
        return free[0];
    }

    /** One warm-up call, then best of {@code reps} single timed calls (ms). */
    private static double time(CudaBackend b, long e0, long e1, int reps, Runnable call) {
        call.run();
        check(TpNative.tp_stream_synchronize(b.stream()), "synchronize");
        double best = Double.POSITIVE_INFINITY;
        for (int i = 0; i < reps; i++) {
            check(TpNative.tp_event_record(e0, b.stream()), "event record");
            call.run();
            check(TpNative.tp_event_record(e1, b.stream()), "event record");
            check(TpNative.tp_event_synchronize(e1), "event synchronize");
            float[] ms = {0};
            check(TpNative.tp_event_elapsed_ms(ms, e0, e1), "event elapsed");
            best = Math.min(best, ms[0]);
        }
        return best;
    }
}
