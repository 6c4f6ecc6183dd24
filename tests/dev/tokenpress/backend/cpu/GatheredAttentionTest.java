package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.KvType;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.Arrays;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Attention over a scattered slot list copies the listed rows block by block into a contiguous scratch before using
 * them ({@link Kernels#gatherRows}, {@link Kernels#weightedValuesBlock}); it must give the bits of attention over the
 * same rows read where they lie. Kernel level: the block form against the plain value sum over the list, for f32 and
 * bf16 rows, vector and scalar kernels, head dims with and without vector tails. Backend level: attention with a
 * scattered selection (longer than a gather block, unsorted or sorted, with masked and repeated slots) against
 * attention over a second cache holding only the selected rows, in list order, at the same positions — outputs, raw
 * scores and probability sums bit for bit, for f32 and bf16 caches and several query rows.
 */
class GatheredAttentionTest {
    static final Kernels VECTOR = new VectorKernels(), SCALAR = new ScalarKernels();

    @ParameterizedTest
    @CsvSource({"64,4,700,true", "64,5,300,false", "128,4,513,true", "40,3,257,true", "72,9,90,false", "16,1,40,true"})
    void blocksOfGatheredRowsGiveTheListsBits(int hd, int hc, int m, boolean vector) {
        Kernels k = vector ? VECTOR : SCALAR;
        SplittableRandom r = new SplittableRandom(hd * 17L + hc * 5L + m + (vector ? 1 : 0));
        int total = 3 * m + 7;
        float[] values = new float[total * hd];
        short[] values16 = new short[total * hd];
        for (int i = 0; i < values.length; i++) {
            values[i] = r.nextInt(300) == 0 ? Float.POSITIVE_INFINITY : (float) r.nextGaussian();
            values16[i] = dev.tokenpress.io.Half.floatToBf16(values[i]);
        }
        int[] list = new int[m];
        for (int j = 0; j < m; j++) list[j] = r.nextInt(total);
        float[][] e = new float[hc][m];
        float[] inv = new float[hc];
        boolean[] live = new boolean[hc];
        for (int i = 0; i < hc; i++) {
            live[i] = i % 5 != 4;
            inv[i] = (float) (1 / (1 + r.nextDouble() * m));
            for (int j = 0; j < m; j++) e[i][j] = r.nextInt(4) == 0 ? 0f : (float) (0.01 + r.nextDouble());
        }
        int oOff = 3, len = oOff + hc * hd;
        float[] start = new float[len];
        for (int i = 0; i < len; i++) start[i] = r.nextInt(8) == 0 ? -0f : (float) r.nextGaussian();
        for (boolean bf16 : new boolean[] {false, true}) {
            float[] want = start.clone(), got = start.clone();
            if (bf16) k.weightedValues(e, inv, live, hc, m, list, values16, hd, want, oOff);
            else k.weightedValues(e, inv, live, hc, m, list, values, hd, want, oOff);
            int block = 1 + r.nextInt(200);  // blocks of any length, the last one short
            float[] rows = new float[block * hd];
            short[] rows16 = new short[block * hd];
            for (int b0 = 0; b0 < m; b0 += block) {
                int b1 = Math.min(m, b0 + block);
                if (bf16) {
                    k.gatherRows(values16, list, b0, b1, hd, rows16);
                    for (int j = b0; j < b1; j++)
                        for (int d = 0; d < hd; d++)
                            assertEquals(values16[list[j] * hd + d], rows16[(j - b0) * hd + d], "bf16 row " + j);
                    k.weightedValuesBlock(e, inv, live, hc, b0, b1, rows16, hd, got, oOff);
                } else {
                    k.gatherRows(values, list, b0, b1, hd, rows);
                    for (int j = b0; j < b1; j++)
                        for (int d = 0; d < hd; d++)
                            assertEquals(Float.floatToRawIntBits(values[list[j] * hd + d]),
                                    Float.floatToRawIntBits(rows[(j - b0) * hd + d]), "f32 row " + j);
                    k.weightedValuesBlock(e, inv, live, hc, b0, b1, rows, hd, got, oOff);
                }
            }
            for (int i = 0; i < len; i++)
                assertEquals(Float.floatToRawIntBits(want[i]), Float.floatToRawIntBits(got[i]),
                        (bf16 ? "bf16" : "f32") + " output " + i + ": " + want[i] + " vs " + got[i]);
        }
    }

    @Test
    void contiguousListsAreReadInPlace() {
        assertTrue(CpuBackend.contiguous(new int[] {5, 6, 7, 8}, 4));
        assertTrue(CpuBackend.contiguous(new int[] {9, 1, 2}, 0));
        assertTrue(CpuBackend.contiguous(new int[] {3, 99}, 1));
        assertFalse(CpuBackend.contiguous(new int[] {5, 6, 8, 9}, 4));
        assertFalse(CpuBackend.contiguous(new int[] {0, 2, 4, 3}, 3));
    }

    @ParameterizedTest
    @CsvSource({"64,F32,F32,true,1", "64,BF16,BF16,false,3", "128,F32,BF16,true,2", "128,BF16,F32,false,1",
            "40,F32,F32,false,2", "64,F32,F32,false,3"})
    void scatteredSelectionGivesTheBitsOfTheRowsReadInPlace(int hd, KvType keyType, KvType valueType, boolean sorted,
                                                           int n) {
        int kvHeads = 2, group = 4, heads = kvHeads * group, len = 1500, m = 600, cap = len + n;
        SplittableRandom r = new SplittableRandom(hd * 7L + keyType.ordinal() * 3L + valueType.ordinal() + n);
        try (CpuBackend b = new CpuBackend(2)) {
            b.setKvTypes(keyType, valueType);
            KvCache full = b.newKvCache(1, kvHeads, hd, cap), packed = b.newKvCache(1, kvHeads, hd, m);
            float[][] kv = CpuCacheFixture.fill(b, full, kvHeads, hd, len, r);
            float[] kd = kv[0], vd = kv[1];
            int queryPos = len - 40; // the query rows sit at queryPos .. queryPos + n - 1: later slots are masked
            // each KV head's list: m slots at random (some repeated), then sorted or not
            int[][] list = new int[kvHeads][m];
            for (int g = 0; g < kvHeads; g++) {
                for (int j = 0; j < m; j++) list[g][j] = r.nextInt(len);
                if (sorted) Arrays.sort(list[g]);
            }
            // the second cache: list[g][j]'s row at slot j, at the same position
            for (int g = 0; g < kvHeads; g++) {
                int[] p = new int[m];
                for (int j = 0; j < m; j++) p[j] = list[g][j];
                int[] at = packed.allocate(0, g, p, m);
                for (int j = 0; j < m; j++) assertEquals(j, at[j]);
            }
            Tensor pk = b.allocate(m, kvHeads * hd), pv = b.allocate(m, kvHeads * hd);
            float[] pkd = new float[m * kvHeads * hd], pvd = new float[m * kvHeads * hd];
            for (int g = 0; g < kvHeads; g++)
                for (int j = 0; j < m; j++) {
                    System.arraycopy(kd, list[g][j] * kvHeads * hd + g * hd, pkd, j * kvHeads * hd + g * hd, hd);
                    System.arraycopy(vd, list[g][j] * kvHeads * hd + g * hd, pvd, j * kvHeads * hd + g * hd, hd);
                }
            b.upload(pk, pkd);
            b.upload(pv, pvd);
            int[][] identity = new int[kvHeads][m];
            for (int g = 0; g < kvHeads; g++) for (int j = 0; j < m; j++) identity[g][j] = j;
            b.storeKv(packed, 0, pk, pv, identity, m);

            float[] qd = new float[n * heads * hd];
            for (int i = 0; i < qd.length; i++) qd[i] = (float) r.nextGaussian();
            Tensor q = b.allocate(n, heads * hd), o1 = b.allocate(n, heads * hd), o2 = b.allocate(n, heads * hd);
            b.upload(q, qd);
            int[] qp = new int[n];
            for (int i = 0; i < n; i++) qp[i] = queryPos + i;
            for (boolean withStats : new boolean[] {false, true}) {
                AttentionStats s1 = withStats ? AttentionStats.allocate(heads, kvHeads, cap) : null;
                AttentionStats s2 = withStats ? AttentionStats.allocate(heads, kvHeads, m) : null;
                if (withStats) {
                    s1.clear();
                    s2.clear();
                }
                b.attention(o1, q, full, 0, qp, n, SlotSelection.of(list), s1);
                b.attention(o2, q, packed, 0, qp, n, null, s2);
                float[] got = b.download(o1, 0, n), want = b.download(o2, 0, n);
                for (int i = 0; i < want.length; i++)
                    assertEquals(Float.floatToRawIntBits(want[i]), Float.floatToRawIntBits(got[i]),
                            "output " + i + " (stats " + withStats + "): " + want[i] + " vs " + got[i]);
                if (!withStats) continue;
                for (int h = 0; h < heads; h++)
                    for (int j = 0; j < m; j++) {
                        int slot = list[h / group][j];
                        assertEquals(Float.floatToRawIntBits(s2.rawScores[h][j]), Float.floatToRawIntBits(s1.rawScores[h][slot]),
                                "raw score of head " + h + " at slot " + slot);
                    }
                for (int g = 0; g < kvHeads; g++) {
                    // a slot listed twice gets both shares in one sum: compared where a slot is listed once (or not)
                    int[] seen = new int[cap];
                    float[] want2 = new float[cap];
                    for (int j = 0; j < m; j++) {
                        seen[list[g][j]]++;
                        want2[list[g][j]] = s2.probSums[g][j];
                    }
                    for (int slot = 0; slot < cap; slot++)
                        if (seen[slot] < 2)
                            assertEquals(Float.floatToRawIntBits(want2[slot]), Float.floatToRawIntBits(s1.probSums[g][slot]),
                                    "probability sum of KV head " + g + " at slot " + slot);
                }
            }
        }
    }
}
