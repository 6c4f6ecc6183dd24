package dev.tokenpress.backend.cpu;

import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The attention kernels that share loads among a KV head's q-heads give the bits of the per-head operations:
 * {@link VectorKernels#weightedValues} (outputs in registers over blocks of candidates, four heads per value load)
 * against one {@link VectorKernels#axpy} per candidate and head, and {@link VectorKernels#dot4} against four
 * {@link VectorKernels#dot} calls — for head dims with and without a vector tail, any number of heads (dead heads and
 * zero numerators skipped), all slots or a slot list.
 */
class AttentionKernelsTest {
    static final VectorKernels V = new VectorKernels();

    /** queryKeyScores by KV head (four q-heads per key load) gives every score the bits of one dot, -inf elsewhere. */
    @ParameterizedTest
    @CsvSource({"64,4,2", "64,8,4", "128,4,2", "40,4,3", "64,2,2"})
    void queryKeyScoresGiveTheDotBits(int hd, int group, int kvHeads) {
        try (CpuBackend b = new CpuBackend(2)) {
            int heads = group * kvHeads, len = 90, cap = 100, qpos = 70;
            SplittableRandom r = new SplittableRandom(hd + 31L * group + kvHeads);
            dev.tokenpress.kv.KvCache cache = b.newKvCache(1, kvHeads, hd, cap);
            int[] pos = new int[len];
            for (int i = 0; i < len; i++) pos[i] = i;
            int[][] slots = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) slots[g] = cache.allocate(0, g, pos, len);
            dev.tokenpress.backend.Tensor k = b.allocate(len, kvHeads * hd), v = b.allocate(len, kvHeads * hd);
            float[] kd = new float[len * kvHeads * hd];
            for (int i = 0; i < kd.length; i++) kd[i] = (float) r.nextGaussian();
            b.upload(k, kd);
            b.upload(v, kd);
            b.storeKv(cache, 0, k, v, slots, len);
            for (int g = 0; g < kvHeads; g++) cache.free(0, g, 5 + g);
            float[] qv = new float[heads * hd];
            for (int i = 0; i < qv.length; i++) qv[i] = (float) r.nextGaussian();
            dev.tokenpress.backend.Tensor q = b.allocate(1, heads * hd);
            b.upload(q, qv);
            float[][] out = new float[heads][cap];
            b.queryKeyScores(out, q, 0, qpos, cache, 0);
            float[][] keys = ((CpuKvCache) cache).keys[0];
            for (int h = 0; h < heads; h++)
                for (int s = 0; s < cap; s++) {
                    int p = cache.position(0, h / group, s);
                    float want = s >= len || p < 0 || p > qpos ? Float.NEGATIVE_INFINITY : V.dot(qv, h * hd, keys[h / group], s * hd, hd);
                    assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(out[h][s]), "head " + h + " slot " + s);
                }
        }
    }

    @ParameterizedTest
    @CsvSource({"64,4,300,false", "64,8,77,true", "128,4,129,false", "16,3,40,true", "40,5,33,false", "24,9,70,true",
            "64,1,5,false", "128,7,1,true", "72,4,64,true"})
    void sharedLoadsGiveThePerHeadBits(int hd, int hc, int m, boolean list) {
        SplittableRandom r = new SplittableRandom(hd * 131L + hc * 7L + m);
        int slotsTotal = m + 11;
        float[] values = new float[slotsTotal * hd];
        for (int i = 0; i < values.length; i++) values[i] = (float) r.nextGaussian();
        int[] slots = null;
        if (list) {
            slots = new int[m];
            for (int j = 0; j < m; j++) slots[j] = r.nextInt(slotsTotal);
        }
        float[][] e = new float[hc][m];
        float[] inv = new float[hc];
        boolean[] live = new boolean[hc];
        for (int i = 0; i < hc; i++) {
            live[i] = i % 5 != 2;  // a dead head (nothing visible) now and then
            inv[i] = (float) (1 / (1 + r.nextDouble() * m));
            for (int j = 0; j < m; j++) e[i][j] = r.nextInt(list ? 2 : 6) == 0 || j % 7 == 3 ? 0f : (float) r.nextDouble(); // some candidates weighed by no head
        }
        float[] ref = new float[(hc + 1) * hd], got = new float[(hc + 1) * hd];
        for (int i = 0; i < ref.length; i++) ref[i] = got[i] = (float) r.nextGaussian(); // outputs start non-zero
        int oOff = hd / 2;
        for (int j = 0; j < m; j++) {  // the definition: one axpy per candidate and live head, in candidate order
            int slot = slots == null ? j : slots[j];
            for (int i = 0; i < hc; i++)
                if (live[i] && e[i][j] != 0f) V.axpy(e[i][j] * inv[i], values, slot * hd, ref, oOff + i * hd, hd);
        }
        V.weightedValues(e, inv, live, hc, m, slots, values, hd, got, oOff);
        for (int i = 0; i < ref.length; i++)
            assertEquals(Float.floatToRawIntBits(ref[i]), Float.floatToRawIntBits(got[i]), "output " + i + ": " + ref[i] + " vs " + got[i]);
        // four dots sharing the row of b
        float[] a = new float[4 * hd + 3], b = new float[hd + 5], four = new float[4];
        for (int i = 0; i < a.length; i++) a[i] = (float) r.nextGaussian();
        for (int i = 0; i < b.length; i++) b[i] = (float) r.nextGaussian();
        V.dot4(a, 3, hd, b, 5, hd, four);
        for (int i = 0; i < 4; i++)
            assertEquals(Float.floatToRawIntBits(V.dot(a, 3 + i * hd, b, 5, hd)), Float.floatToRawIntBits(four[i]), "dot " + i);
    }
}
