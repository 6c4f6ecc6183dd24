package dev.tokenpress.eval;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.IntBuffer;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

/**
 * Measures this machine's sequential-read memory bandwidth the way the CPU matmul reads weights: each thread
 * streams its share of a large off-heap buffer in row-sized bulk copies and sums it. The median of several passes
 * is reported (bytes read / seconds).
 */
public final class Bandwidth {
    private Bandwidth() {}

    /** Whether the Vector API is usable (the sum must not be the bottleneck of a bandwidth measurement). */
    private static final boolean VECTOR = probe();

    private static boolean probe() {
        try {
            return VectorSum.sum(new int[64], 64) == 0;
        } catch (Throwable t) {
            return false;
        }
    }

    private static long scalarSum(int[] a, int len) {
        long s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int j = 0;
        for (; j + 3 < len; j += 4) {
            s0 += a[j];
            s1 += a[j + 1];
            s2 += a[j + 2];
            s3 += a[j + 3];
        }
        for (; j < len; j++) s0 += a[j];
        return s0 + s1 + s2 + s3;
    }

    /** Lane-wise int sums (wrapping) with four accumulators; only the total's use matters, not its value. */
    private static final class VectorSum {
        private static final jdk.incubator.vector.VectorSpecies<Integer> I = jdk.incubator.vector.IntVector.SPECIES_PREFERRED;

        static long sum(int[] a, int len) {
            int l = I.length(), j = 0;
            var v0 = jdk.incubator.vector.IntVector.zero(I);
            var v1 = v0;
            for (; j + 2 * l <= len; j += 2 * l) {
                v0 = v0.add(jdk.incubator.vector.IntVector.fromArray(I, a, j));
                v1 = v1.add(jdk.incubator.vector.IntVector.fromArray(I, a, j + l));
            }
            long s = v0.add(v1).reduceLanes(jdk.incubator.vector.VectorOperators.ADD);
            for (; j < len; j++) s += a[j];
            return s;
        }
    }

    /**
     * @param bytes   buffer size (use well above the last-level cache, e.g. 1 GiB)
     * @param threads reader threads
     * @param passes  timed passes (the median is reported; decode runs are sustained, so a lucky pass is no ceiling)
     * @return bytes per second
     */
    public static double sequentialRead(long bytes, int threads, int passes) throws Exception {
        int ints = (int) Math.min(Integer.MAX_VALUE - 8, bytes / 4);
        ByteBuffer buf = ByteBuffer.allocateDirect(ints * 4).order(ByteOrder.LITTLE_ENDIAN);
        IntBuffer ib = buf.asIntBuffer();
        for (int i = 0; i < ints; i += 1024) ib.put(i, i); // touch every page
        ExecutorService ex = Executors.newFixedThreadPool(threads);
        try {
            double[] rates = new double[passes];
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
                            s += VECTOR ? VectorSum.sum(row, len) : scalarSum(row, len);
                        }
                        sums[tt] = s;
                    });
                }
                for (Future<?> f : fs) f.get();
                double sec = (System.nanoTime() - t0) / 1e9;
                for (long s : sums) sink += s;
                if (p > 0) rates[p - 1] = (double) ints * 4 / sec; // pass 0 is a warm-up
            }
            if (sink == 42) System.err.print(""); // keep the sums alive
            java.util.Arrays.sort(rates);
            return passes % 2 == 1 ? rates[passes / 2] : (rates[passes / 2 - 1] + rates[passes / 2]) / 2;
        } finally {
            ex.shutdown();
        }
    }
}
