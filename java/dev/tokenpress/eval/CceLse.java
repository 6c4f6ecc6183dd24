package dev.tokenpress.eval;

import dev.tokenpress.io.TensorData;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.Future;
import java.util.concurrent.atomic.AtomicInteger;

/**
 * Cut-Cross-Entropy style log-sum-exp on the CPU (Wijmans et al., "Cut Your Losses in Large-Vocabulary Language
 * Models", ICLR 2025; apple/ml-cross-entropy): for hidden states {@code h [N, D]} and an LM head {@code W [V, D]},
 * <pre>
 *   lse[i]         = log sum_v exp(h_i . W_v)
 *   targetLogit[i] = h_i . W_{t_i}
 *   nll(i)         = lse[i] - targetLogit[i]        ( = -log p(t_i | h_i) )
 * </pre>
 * without materialising the [N, V] logits. The vocabulary is cut into blocks of {@link #blockRows(int)} rows; each
 * block is converted to f32 once into a small per-thread buffer (bf16/f16/f32 read straight from the possibly
 * memory-mapped buffer), its logits are computed four hidden rows at a time, and each row keeps an online
 * (max, sum of exp) in double precision. Dot products are f32 FMA.
 * <p>
 * Parallelism: the vocabulary is split into at most {@value #MAX_CHUNKS} fixed chunks (depending only on V and D) and
 * the rows into groups of {@value #ROW_GROUP}; every (chunk, row group) item is computed sequentially by one thread
 * into its own slot, and the per-chunk states are merged in chunk order. The result is therefore bit-identical for
 * any thread count. Extra memory: O(N * chunks + threads * block * D).
 */
public final class CceLse {
    /** Targets below 0 (e.g. -100, PyTorch's ignore_index) are ignored: their target logit is NaN. */
    public static final int IGNORE_INDEX = -100;
    static final int MAX_CHUNKS = 16;
    static final int ROW_GROUP = 128;

    private CceLse() {}

    /**
     * Per-row results.
     *
     * @param lse         log-sum-exp of the logits of each row
     * @param targetLogit logit of the row's target token (NaN for an ignored target)
     */
    public record Result(float[] lse, float[] targetLogit) {
        /** Number of rows. */
        public int size() {
            return lse.length;
        }

        /** Negative log-likelihood (nats) of row i's target: {@code lse[i] - targetLogit[i]}. */
        public double nll(int i) {
            return (double) lse[i] - targetLogit[i];
        }

        /** Log-probability (nats) of row i's target. */
        public double logProb(int i) {
            return -nll(i);
        }

        /** Mean NLL over the rows with a target (NaN when there are none). */
        public double meanNll() {
            double s = 0;
            int c = 0;
            for (int i = 0; i < lse.length; i++) {
                if (!Float.isNaN(targetLogit[i])) {
                    s += nll(i);
                    c++;
                }
            }
            return c == 0 ? Double.NaN : s / c;
        }

        /** {@code exp(meanNll())}. */
        public double perplexity() {
            return Math.exp(meanNll());
        }
    }

    /** Default thread count: the available processors, at least 2. */
    public static int defaultThreads() {
        return Math.max(2, Runtime.getRuntime().availableProcessors());
    }

    /** Vocabulary rows per block for a hidden size d: about 1 MiB of f32 weights, within [16, 1024]. */
    public static int blockRows(int d) {
        return Math.max(16, Math.min(1024, (1 << 18) / Math.max(d, 1)));
    }

    /** LSE and target logits with the LM head as a tensor [V, D] of F32, F16 or BF16. */
    public static Result compute(float[] hidden, int n, int d, TensorData lmHead, int[] targets) {
        return compute(hidden, n, d, lmHead, targets, defaultThreads());
    }

    public static Result compute(float[] hidden, int n, int d, TensorData lmHead, int[] targets, int threads) {
        CceRowSource src = CceRowSource.of(lmHead);
        if (src.dim != d)
            throw new IllegalArgumentException(lmHead.name() + ": LM head " + lmHead.shapeString()
                    + " does not match hidden size " + d);
        return run(hidden, n, d, src, targets, threads);
    }

    /** LSE and target logits with the LM head as a row-major f32 array [V, D] ({@code V = lmHead.length / d}). */
    public static Result compute(float[] hidden, int n, int d, float[] lmHead, int[] targets) {
        return compute(hidden, n, d, lmHead, targets, defaultThreads());
    }

    public static Result compute(float[] hidden, int n, int d, float[] lmHead, int[] targets, int threads) {
        if (d < 1 || lmHead.length % d != 0 || lmHead.length == 0)
            throw new IllegalArgumentException("LM head length " + lmHead.length + " is not a positive multiple of d=" + d);
        return run(hidden, n, d, CceRowSource.of(lmHead, lmHead.length / d, d), targets, threads);
    }

    private static Result run(float[] hidden, int n, int d, CceRowSource src, int[] targets, int threads) {
        if (n < 0 || d < 1) throw new IllegalArgumentException("need n >= 0 and d >= 1, got n=" + n + " d=" + d);
        if ((long) n * d > hidden.length)
            throw new IllegalArgumentException("hidden has " + hidden.length + " floats, need n*d = " + (long) n * d);
        if (targets != null && targets.length < n)
            throw new IllegalArgumentException("targets has " + targets.length + " entries, need " + n);
        final int v = src.rows;
        if (targets != null) {
            for (int i = 0; i < n; i++) {
                if (targets[i] >= v)
                    throw new IllegalArgumentException("target " + targets[i] + " at row " + i
                            + " outside vocabulary of " + v);
            }
        }
        float[] lse = new float[n];
        float[] tgt = new float[n];
        Arrays.fill(tgt, Float.NaN);
        if (n == 0) return new Result(lse, tgt);

        final int bRows = blockRows(d);
        final int nBlocks = (v + bRows - 1) / bRows;
        final int nChunks = Math.min(nBlocks, MAX_CHUNKS);
        final int nGroups = (n + ROW_GROUP - 1) / ROW_GROUP;
        final int items = nChunks * nGroups;
        final double[] m = new double[nChunks * n];
        final double[] s = new double[nChunks * n];
        Arrays.fill(m, Double.NEGATIVE_INFINITY);

        final AtomicInteger next = new AtomicInteger();
        Runnable worker = () -> {
            CceRowSource.Reader reader = src.reader(bRows);
            float[][] tile = new float[4][bRows];
            int item;
            while ((item = next.getAndIncrement()) < items) {
                int c = item / nGroups, g = item % nGroups;
                int b0 = (int) ((long) c * nBlocks / nChunks), b1 = (int) ((long) (c + 1) * nBlocks / nChunks);
                int r0 = g * ROW_GROUP, r1 = Math.min(n, r0 + ROW_GROUP);
                for (int b = b0; b < b1; b++) {
                    int start = b * bRows, cnt = Math.min(bRows, v - start);
                    float[] w = reader.load(start, cnt);
                    int wOff = reader.offset();
                    int i = r0;
                    for (; i + 4 <= r1; i += 4) {
                        CceKernels.INSTANCE.dot4(hidden, i * d, (i + 1) * d, (i + 2) * d, (i + 3) * d, w, wOff, cnt,
                                d, tile);
                        for (int k = 0; k < 4; k++) absorb(tile[k], cnt, c * n + i + k, m, s, targets, i + k, start, tgt);
                    }
                    for (; i < r1; i++) {
                        float[] t0 = tile[0];
                        for (int j = 0; j < cnt; j++) t0[j] = CceKernels.INSTANCE.dot(hidden, i * d, w, wOff + j * d, d);
                        absorb(t0, cnt, c * n + i, m, s, targets, i, start, tgt);
                    }
                }
            }
        };

        int workers = Math.max(1, Math.min(threads, items));
        if (workers == 1) {
            worker.run();
        } else {
            ForkJoinPool pool = new ForkJoinPool(workers);
            try {
                List<Future<?>> fs = new ArrayList<>(workers);
                for (int k = 0; k < workers; k++) fs.add(pool.submit(worker));
                for (Future<?> f : fs) f.get();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new IllegalStateException("interrupted", e);
            } catch (ExecutionException e) {
                Throwable cause = e.getCause();
                if (cause instanceof RuntimeException re) throw re;
                if (cause instanceof Error er) throw er;
                throw new IllegalStateException(cause);
            } finally {
                pool.shutdownNow();
            }
        }

        // merge the per-chunk states in chunk order (fixed, independent of the thread count)
        for (int i = 0; i < n; i++) {
            double mx = Double.NEGATIVE_INFINITY;
            for (int c = 0; c < nChunks; c++) mx = Math.max(mx, m[c * n + i]);
            if (mx == Double.NEGATIVE_INFINITY || Double.isNaN(mx)) {
                lse[i] = (float) mx;
                continue;
            }
            double sum = 0;
            for (int c = 0; c < nChunks; c++) {
                double mc = m[c * n + i];
                if (mc != Double.NEGATIVE_INFINITY) sum += s[c * n + i] * Math.exp(mc - mx);
            }
            lse[i] = (float) (mx + Math.log(sum));
        }
        return new Result(lse, tgt);
    }

    /** Folds one row's logits of a block into its online (max, sum) state; picks up the target logit if in range. */
    private static void absorb(float[] logits, int cnt, int slot, double[] m, double[] s, int[] targets, int row,
                               int start, float[] tgt) {
        float bm = Float.NEGATIVE_INFINITY;
        for (int j = 0; j < cnt; j++) if (logits[j] > bm) bm = logits[j];
        if (targets != null) {
            int t = targets[row] - start;
            if (t >= 0 && t < cnt) tgt[row] = logits[t];
        }
        if (bm == Float.NEGATIVE_INFINITY) return; // all -inf (or NaN): nothing to add
        double mOld = m[slot];
        double mNew = Math.max(mOld, bm);
        double acc = mOld == Double.NEGATIVE_INFINITY ? 0 : s[slot] * Math.exp(mOld - mNew);
        for (int j = 0; j < cnt; j++) acc += Math.exp(logits[j] - mNew);
        m[slot] = mNew;
        s[slot] = acc;
    }
}
