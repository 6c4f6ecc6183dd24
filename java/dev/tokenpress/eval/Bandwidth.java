package dev.tokenpress.eval;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.IntBuffer;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/**
 * Measures this machine's sequential-read memory bandwidth the way the CPU matmul reads weights: each thread
 * streams its share of a large off-heap buffer in row-sized bulk copies and sums it. The best of several passes
 * is reported (bytes read / seconds).
 */
public final class Bandwidth {
    private Bandwidth() {}

    /**
     * @param bytes   buffer size (use well above the last-level cache, e.g. 1 GiB)
     * @param threads reader threads
     * @param passes  timed passes (best one reported)
     * @return bytes per second
     */
    public static double sequentialRead(long bytes, int threads, int passes) throws Exception {
        int ints = (int) Math.min(Integer.MAX_VALUE - 8, bytes / 4);
        ByteBuffer buf = ByteBuffer.allocateDirect(ints * 4).order(ByteOrder.LITTLE_ENDIAN);
        IntBuffer ib = buf.asIntBuffer();
        for (int i = 0; i < ints; i += 1024) ib.put(i, i); // touch every page
        ExecutorService ex = Executors.newFixedThreadPool(threads);
        try {
            double best = 0;
            long sink = 0;
            for (int p = 0; p < passes + 1; p++) {
                long t0 = System.nanoTime();
                Future<?>[] fs = new Future<?>[threads];
                long[] sums = new long[threads];
                for (int t = 0; t < threads; t++) {
                    final int tt = t;
                    fs[t] = ex.submit(() -> {
                        int from = (int) ((long) ints * tt / threads), to = (int) ((long) ints * (tt + 1) / threads);
                        int[] row = new int[1024];
                        long s = 0;
                        for (int i = from; i < to; i += row.length) {
                            int len = Math.min(row.length, to - i);
                            ib.get(i, row, 0, len);
                            for (int j = 0; j < len; j++) s += row[j];
                        }
                        sums[tt] = s;
                    });
                }
                for (Future<?> f : fs) f.get();
                double sec = (System.nanoTime() - t0) / 1e9;
                for (long s : sums) sink += s;
                if (p > 0) best = Math.max(best, (double) ints * 4 / sec); // pass 0 is a warm-up
            }
            if (sink == 42) System.err.print(""); // keep the sums alive
            return best;
        } finally {
            ex.shutdown();
        }
    }
}
