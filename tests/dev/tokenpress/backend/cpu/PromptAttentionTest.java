package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Every row of a chunk of query rows (a prompt chunk, or the rows speculative decoding checks) gets the bits it gets
 * when it attends alone (one row per call, the decode path) — what makes checked drafts agree with plain decoding:
 * causal cuts between rows, freed slots, a row that sees nothing, slot lists, GQA groups of 1 to 8 and head dims with
 * and without a vector tail, on one thread and on two.
 */
class PromptAttentionTest {
    @ParameterizedTest
    @CsvSource({"64,4,2,13,120,false,2", "64,8,1,8,64,true,2", "128,1,4,9,50,false,1", "40,3,2,21,90,true,2",
            "64,4,8,3,33,false,2", "16,5,1,17,17,false,1", "72,2,3,1,10,true,2"})
    void eachRowGetsItsOwnBits(int hd, int group, int kvHeads, int n, int len, boolean list, int threads) {
        try (CpuBackend b = new CpuBackend(threads)) {
            SplittableRandom r = new SplittableRandom(hd * 1009L + group * 31L + n);
            int heads = group * kvHeads, cap = len + 7;
            KvCache cache = b.newKvCache(1, kvHeads, hd, cap);
            int[] pos = new int[len];
            for (int i = 0; i < len; i++) pos[i] = i;
            int[][] slots = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) slots[g] = cache.allocate(0, g, pos, len);
            Tensor k = b.allocate(len, kvHeads * hd), v = b.allocate(len, kvHeads * hd);
            float[] kd = new float[len * kvHeads * hd], vd = new float[kd.length];
            for (int i = 0; i < kd.length; i++) {
                kd[i] = (float) (r.nextGaussian() * 2);
                vd[i] = (float) r.nextGaussian();
            }
            b.upload(k, kd);
            b.upload(v, vd);
            b.storeKv(cache, 0, k, v, slots, len);
            for (int g = 0; g < kvHeads; g++) if (len > 6) cache.free(0, g, 3 + g);
            SlotSelection select = null;
            if (list) {
                int[][] sel = new int[kvHeads][];
                for (int g = 0; g < kvHeads; g++) {
                    sel[g] = new int[Math.max(1, len / 2)];
                    for (int j = 0; j < sel[g].length; j++) sel[g][j] = r.nextInt(len);
                }
                select = SlotSelection.of(sel);
            }
            // the rows' positions: the first sees nothing, the others spread over the cache
            int[] qpos = new int[n];
            for (int i = 0; i < n; i++) qpos[i] = i == 0 ? -1 : Math.min(len - 1, (int) ((long) i * len / n) + r.nextInt(3));
            float[] qv = new float[n * heads * hd];
            for (int i = 0; i < qv.length; i++) qv[i] = (float) r.nextGaussian();
            Tensor q = b.allocate(n, heads * hd), o = b.allocate(n, heads * hd);
            b.upload(q, qv);
            b.attention(o, q, cache, 0, qpos, n, select, null);
            float[] got = b.download(o, 0, n);
            for (int row = 0; row < n; row++) {
                Tensor q1 = b.allocate(1, heads * hd), o1 = b.allocate(1, heads * hd);
                float[] one = new float[heads * hd];
                System.arraycopy(qv, row * heads * hd, one, 0, one.length);
                b.upload(q1, one);
                b.attention(o1, q1, cache, 0, new int[] {qpos[row]}, 1, select, null);
                float[] want = b.download(o1, 0, 1);
                for (int e = 0; e < want.length; e++)
                    assertEquals(Float.floatToRawIntBits(want[e]), Float.floatToRawIntBits(got[row * heads * hd + e]),
                            "row " + row + " (position " + qpos[row] + "), element " + e);
            }
            if (n > 1) {
                boolean nonzero = false;
                for (int e = heads * hd; e < got.length; e++) nonzero |= got[e] != 0f;
                assertTrue(nonzero, "rows after the first see the cache");
            }
        }
    }
}
