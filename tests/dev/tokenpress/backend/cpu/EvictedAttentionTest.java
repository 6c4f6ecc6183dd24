package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.KvType;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.Arrays;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Attention over an evicted cache (at most half the slots below the high-water mark occupied) loops over the occupied
 * slots only; it must give the bits of the loop over every slot below the high-water mark, which a selection listing
 * all of them in order still takes: outputs, raw scores and probability sums, for f32 and bf16 caches, one and several
 * query rows (causal cuts), occupied slots in runs and scattered, and a head whose slots are all free but one;
 * scores spread widely, so the softmax sum depends on grouping each term with the slot's class, not its list index.
 */
class EvictedAttentionTest {
    @ParameterizedTest
    @CsvSource({"64,F32,1,true", "64,BF16,3,false", "128,F32,2,false", "40,F32,1,false", "64,F32,4,true", "128,BF16,1,true"})
    void occupiedSlotsOnlyGiveTheBitsOfTheWholeRange(int hd, KvType type, int n, boolean runs) {
        int kvHeads = 3, group = 4, heads = kvHeads * group, len = 900;
        SplittableRandom r = new SplittableRandom(hd * 13L + type.ordinal() * 5L + n + (runs ? 1 : 0));
        try (CpuBackend b = new CpuBackend(2)) {
            b.setKvTypes(type, type);
            KvCache c = b.newKvCache(1, kvHeads, hd, len);
            CpuCacheFixture.fill(b, c, kvHeads, hd, len, r);
            // KV head 0: about a third kept, in runs or scattered; head 1: a tenth; head 2: every slot free but the last
            for (int g = 0; g < kvHeads; g++)
                for (int s = 0; s < len - 1; s++) {
                    boolean keep = g == 0 ? (runs ? (s / 37) % 3 == 0 : r.nextInt(3) == 0) : g == 1 && r.nextInt(10) == 0;
                    if (!keep) c.free(0, g, s);
                }
            for (int g = 0; g < kvHeads; g++) assertTrue(2 * c.occupied(0, g) <= c.highWater(0, g), "head " + g + " evicted enough");
            Tensor q = b.allocate(n, heads * hd);
            float[] qd = new float[n * heads * hd];
            // queries long enough that the exponentials span many binades: double sums that depend on their grouping
            for (int i = 0; i < qd.length; i++) qd[i] = (float) (4 * r.nextGaussian());
            b.upload(q, qd);
            int[] qpos = new int[n];
            for (int i = 0; i < n; i++) qpos[i] = len - n + i - (i == 0 ? 300 : 0); // the first row sees a causal cut
            Arrays.sort(qpos);
            int[][] all = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) {
                all[g] = new int[c.highWater(0, g)];
                for (int s = 0; s < all[g].length; s++) all[g][s] = s;
            }
            float[][] outs = new float[2][], raws = new float[2][], sums = new float[2][];
            for (int pass = 0; pass < 2; pass++) {
                float[][] raw = new float[heads][len], probs = new float[kvHeads][len];
                for (float[] row : raw) Arrays.fill(row, Float.NEGATIVE_INFINITY);
                Tensor out = b.allocate(n, heads * hd);
                b.attention(out, q, c, 0, qpos, n, pass == 0 ? null : SlotSelection.of(all), new AttentionStats(raw, probs, 0));
                outs[pass] = b.download(out, 0, n);
                raws[pass] = flat(raw);
                sums[pass] = flat(probs);
            }
            assertBits(outs[1], outs[0], "outputs");
            assertBits(raws[1], raws[0], "raw scores");
            assertBits(sums[1], sums[0], "probability sums");
        }
    }

    /**
     * The softmax sum over the occupied slots equals the sum over the whole range with zeros in the free slots, to the
     * bit of the double: each term in the class of its slot (terms spread over 60 binades, so grouping them by list
     * index instead would change the sums), through the vector kernels' and the interface's exponentials.
     */
    @org.junit.jupiter.api.Test
    void sumBySlotIsTheWholeRangesSum() {
        SplittableRandom r = new SplittableRandom(9);
        for (Kernels k : new Kernels[] {new VectorKernels(), new ScalarKernels()})
            for (int trial = 0; trial < 200; trial++) {
                int len = 1 + r.nextInt(600);
                float[] whole = new float[len];
                int[] slots = new int[len];
                float[] live = new float[len];
                int m = 0;
                float max = Float.NEGATIVE_INFINITY;
                for (int s = 0; s < len; s++) {
                    boolean occupied = r.nextInt(3) == 0;
                    whole[s] = occupied ? (float) (-40 * r.nextDouble()) : Float.NEGATIVE_INFINITY;
                    if (occupied) {
                        slots[m] = s;
                        live[m++] = whole[s];
                        max = Math.max(max, whole[s]);
                    }
                }
                if (m == 0) continue;
                double want = k.expShifted(whole, 0, len, max), got = k.expShiftedBySlot(live, m, max, slots);
                assertEquals(Double.doubleToRawLongBits(want), Double.doubleToRawLongBits(got), "sum, length " + len);
                for (int j = 0; j < m; j++)
                    assertEquals(Float.floatToRawIntBits(whole[slots[j]]), Float.floatToRawIntBits(live[j]), "exponential " + j);
            }
    }

    static float[] flat(float[][] a) {
        int n = 0;
        for (float[] row : a) n += row.length;
        float[] out = new float[n];
        int o = 0;
        for (float[] row : a) {
            System.arraycopy(row, 0, out, o, row.length);
            o += row.length;
        }
        return out;
    }

    static void assertBits(float[] want, float[] got, String what) {
        assertEquals(want.length, got.length, what);
        for (int i = 0; i < want.length; i++)
            assertEquals(Float.floatToRawIntBits(want[i]), Float.floatToRawIntBits(got[i]), what + " " + i + ": " + want[i] + " vs " + got[i]);
    }
}
