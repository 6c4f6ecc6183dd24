package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;
import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;
import java.util.concurrent.atomic.AtomicReference;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The attention's per-thread score rows ({@link CpuBackend#scoreRows}) and packed weight rows
 * ({@link CpuBackend#weightRows}) are reused from call to call: a request that fits gets the same arrays, a larger one
 * grows them, and an attention call after a longer one (stale scores beyond its candidates in the rows) gives the bits
 * it gives on a thread that never attended before.
 */
class ScoreScratchTest {
    @Test
    void rowsAreReusedAndGrow() throws Exception {
        onFreshThread(() -> {
            float[][] a = CpuBackend.scoreRows(4, 100);
            assertTrue(a.length >= 4 && a[0].length >= 100);
            assertSame(a, CpuBackend.scoreRows(2, 50), "a smaller request reuses the rows");
            assertSame(a, CpuBackend.scoreRows(4, 100), "an equal request reuses the rows");
            float[][] b = CpuBackend.scoreRows(3, 300);
            assertTrue(b.length >= 4 && b[0].length >= 300 && b[b.length - 1].length >= 300, "grown in both directions");
            float[][] c = CpuBackend.scoreRows(8, 10);
            assertTrue(c.length >= 8 && c[0].length >= 300, "more rows keep the longer length");
            int[] w = CpuBackend.weightRows(64);
            assertSame(w, CpuBackend.weightRows(32));
            assertTrue(CpuBackend.weightRows(65).length >= 65);
            return null;
        });
    }

    @Test
    void attentionAfterALongerCallGivesTheSameBits() throws Exception {
        int hd = 64, kvHeads = 2, heads = 8, longLen = 900, shortLen = 37;
        SplittableRandom r = new SplittableRandom(3);
        float[] kd = new float[longLen * kvHeads * hd], vd = new float[longLen * kvHeads * hd], qd = new float[heads * hd];
        for (int i = 0; i < kd.length; i++) {
            kd[i] = (float) r.nextGaussian();
            vd[i] = (float) r.nextGaussian();
        }
        for (int i = 0; i < qd.length; i++) qd[i] = (float) r.nextGaussian();
        float[] fresh = onFreshThread(() -> attend(kd, vd, qd, hd, kvHeads, heads, longLen, shortLen, false));
        float[] after = onFreshThread(() -> attend(kd, vd, qd, hd, kvHeads, heads, longLen, shortLen, true));
        assertArrayEquals(fresh, after, "the same output bits");
    }

    /** Attention of one query over the first shortLen tokens, optionally after one over all longLen (one thread). */
    static float[] attend(float[] kd, float[] vd, float[] qd, int hd, int kvHeads, int heads, int longLen, int shortLen,
                          boolean longFirst) {
        try (CpuBackend b = new CpuBackend(1)) {
            Tensor q = b.allocate(1, heads * hd), out = b.allocate(1, heads * hd);
            b.upload(q, qd);
            if (longFirst) attendOver(b, kd, vd, q, out, hd, kvHeads, longLen);
            return attendOver(b, kd, vd, q, out, hd, kvHeads, shortLen);
        }
    }

    static float[] attendOver(CpuBackend b, float[] kd, float[] vd, Tensor q, Tensor out, int hd, int kvHeads, int len) {
        try (KvCache c = b.newKvCache(1, kvHeads, hd, len)) {
            CpuCacheFixture.store(b, c, kvHeads, hd, len, kd, vd);
            b.attention(out, q, c, 0, new int[] {len - 1}, 1, null, null);
            return b.download(out, 0, 1);
        }
    }

    interface Body<T> {
        T run() throws Exception;
    }

    /** Runs body on a new thread (its own, empty scratch) and returns its result. */
    static <T> T onFreshThread(Body<T> body) throws Exception {
        AtomicReference<T> result = new AtomicReference<>();
        AtomicReference<Throwable> error = new AtomicReference<>();
        Thread t = new Thread(() -> {
            try {
                result.set(body.run());
            } catch (Throwable e) {
                error.set(e);
            }
        });
        t.start();
        t.join();
        if (error.get() instanceof Exception e) throw e;
        if (error.get() instanceof Error e) throw e;
        return result.get();
    }
}
