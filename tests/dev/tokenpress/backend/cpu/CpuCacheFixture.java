package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;

import java.util.SplittableRandom;

/** Test fixture: layer 0 of a CPU cache filled with random keys and values at positions 0 .. len-1. */
final class CpuCacheFixture {
    private CpuCacheFixture() {}

    /** Fills layer 0 of c (every KV head: positions 0 .. len-1) with Gaussian keys and values; returns {keys, values}. */
    static float[][] fill(CpuBackend b, KvCache c, int kvHeads, int hd, int len, SplittableRandom r) {
        float[] kd = new float[len * kvHeads * hd], vd = new float[len * kvHeads * hd];
        for (int i = 0; i < kd.length; i++) {
            kd[i] = (float) r.nextGaussian();
            vd[i] = (float) r.nextGaussian();
        }
        store(b, c, kvHeads, hd, len, kd, vd);
        return new float[][] {kd, vd};
    }

    /** Stores the first len rows of kd / vd ([len][kvHeads·hd]) in layer 0 of c at positions 0 .. len-1. */
    static void store(CpuBackend b, KvCache c, int kvHeads, int hd, int len, float[] kd, float[] vd) {
        int[] pos = new int[len];
        for (int i = 0; i < len; i++) pos[i] = i;
        int[][] slots = new int[kvHeads][];
        for (int g = 0; g < kvHeads; g++) slots[g] = c.allocate(0, g, pos, len);
        Tensor k = b.allocate(len, kvHeads * hd), v = b.allocate(len, kvHeads * hd);
        b.upload(k, java.util.Arrays.copyOf(kd, len * kvHeads * hd));
        b.upload(v, java.util.Arrays.copyOf(vd, len * kvHeads * hd));
        b.storeKv(c, 0, k, v, slots, len);
    }
}
