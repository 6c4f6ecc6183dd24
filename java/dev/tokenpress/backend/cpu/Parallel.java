package dev.tokenpress.backend.cpu;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;

/**
 * The thread team behind every CPU op: {@code threads - 1} persistent workers plus the calling thread. A decode
 * step issues dozens of short parallel loops (tens of microseconds each), so waking parked pool threads for each
 * would cost more than the work: workers spin briefly on a job counter before parking, and the caller takes part
 * in every loop. Deterministic: each index range is computed by exactly one thread, and which thread does it never
 * changes the result. One loop at a time (a backend is used by one thread).
 */
final class Parallel {
    /** How long an idle worker spins for the next loop before it parks (decode steps come back to back). */
    private static final long SPIN_NANOS = 200_000;

    interface Range {
        void run(int from, int to);
    }

    /** One parallel loop; workers that arrive late find every range claimed and do nothing. */
    private static final class Job {
        final Range body;
        final int n, tasks;
        final AtomicInteger next = new AtomicInteger();
        final AtomicInteger pending;
        volatile Throwable failure;

        Job(Range body, int n, int tasks) {
            this.body = body;
            this.n = n;
            this.tasks = tasks;
            this.pending = new AtomicInteger(tasks);
        }

        void run() {
            for (int i; (i = next.getAndIncrement()) < tasks; ) {
                try {
                    int from = (int) ((long) n * i / tasks), to = (int) ((long) n * (i + 1) / tasks);
                    if (from < to) body.run(from, to);
                } catch (Throwable e) {
                    failure = e;
                } finally {
                    pending.decrementAndGet();
                }
            }
        }
    }

    private final int threads;
    private final Thread[] workers;
    private volatile boolean closed;
    private volatile Job job;

    Parallel(int threads) {
        this.threads = Math.max(1, threads);
        this.workers = new Thread[this.threads - 1];
        for (int i = 0; i < workers.length; i++) {
            Thread t = new Thread(this::workerLoop, "tokenpress-cpu-" + (i + 1));
            t.setDaemon(true);
            workers[i] = t;
            t.start();
        }
    }

    int threads() {
        return threads;
    }

    /**
     * Runs body over [0, n) split into contiguous ranges of at least {@code grain} items (up to 4 per thread),
     * claimed dynamically by the caller and the workers; returns when all are done.
     */
    void forRange(int n, int grain, Range body) {
        if (n <= 0) return;
        int t = Math.min(threads * 4, Math.max(1, n / Math.max(1, grain)));
        if (t <= 1 || workers.length == 0) {
            body.run(0, n);
            return;
        }
        Job j = new Job(body, n, t);
        job = j;
        for (Thread w : workers) LockSupport.unpark(w);
        j.run();
        while (j.pending.get() > 0) Thread.onSpinWait();
        Throwable f = j.failure;
        if (f instanceof RuntimeException re) throw re;
        if (f instanceof Error e) throw e;
        if (f != null) throw new IllegalStateException(f);
    }

    private void workerLoop() {
        Job seen = null;
        while (!closed) {
            Job j = job;
            if (j != seen) {
                seen = j;
                j.run();
                continue;
            }
            long start = System.nanoTime();
            while (job == seen && !closed && System.nanoTime() - start < SPIN_NANOS) Thread.onSpinWait();
            if (job == seen && !closed) LockSupport.parkNanos(this, 5_000_000);
        }
    }

    void close() {
        closed = true;
        for (Thread w : workers) LockSupport.unpark(w);
    }
}
