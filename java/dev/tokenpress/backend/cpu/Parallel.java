package dev.tokenpress.backend.cpu;

import java.util.concurrent.ForkJoinPool;
import java.util.concurrent.RecursiveAction;

/** A fixed pool and a static-partition parallel-for used by every CPU op. */
final class Parallel {
    private final ForkJoinPool pool;
    private final int threads;

    Parallel(int threads) {
        this.threads = Math.max(1, threads);
        this.pool = this.threads == 1 ? null : new ForkJoinPool(this.threads);
    }

    int threads() {
        return threads;
    }

    interface Range {
        void run(int from, int to);
    }

    /**
     * Runs body over [0, n) split into contiguous ranges, at least {@code grain} items each. Deterministic:
     * each index is handled by exactly one range, and results never depend on the split.
     */
    void forRange(int n, int grain, Range body) {
        if (n <= 0) return;
        int tasks = Math.min(threads * 4, Math.max(1, n / Math.max(1, grain)));
        if (tasks <= 1 || pool == null) {
            body.run(0, n);
            return;
        }
        pool.invoke(new Split(body, n, tasks, 0, tasks));
    }

    private static final class Split extends RecursiveAction {
        final Range body;
        final int n, tasks, t0, t1;

        Split(Range body, int n, int tasks, int t0, int t1) {
            this.body = body;
            this.n = n;
            this.tasks = tasks;
            this.t0 = t0;
            this.t1 = t1;
        }

        @Override
        protected void compute() {
            if (t1 - t0 == 1) {
                int from = (int) ((long) n * t0 / tasks), to = (int) ((long) n * t1 / tasks);
                if (from < to) body.run(from, to);
                return;
            }
            int mid = (t0 + t1) >>> 1;
            invokeAll(new Split(body, n, tasks, t0, mid), new Split(body, n, tasks, mid, t1));
        }
    }

    void close() {
        if (pool != null) pool.shutdown();
    }
}
