package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.kv.quant.KvQuantSpec;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.fail;

/**
 * Attention statistics through the pinned buffer ({@link CudaBackend#setPinnedStats}: the first high-water entries of
 * every row, cleared rows filled on the device) give the same bits as the row-by-row copies of whole rows, and so do
 * queryKeyScores and questPageScores through it, for
 * cleared rows, rows holding earlier values (accumulation across calls, raw scores left from an earlier call, a -0),
 * decode and prefill rows, with and without a slot list, over bf16 and int4 caches whose capacity exceeds the
 * high-water mark. Skipped where CUDA is unavailable.
 */
class CudaStatsTransferTest {
    static CudaBackend gpu;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        gpu = CudaBackend.open();
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
    }

    static Stream<Arguments> cases() {
        List<Arguments> a = new ArrayList<>();
        for (String quant : new String[] {"none", "int4"})
            for (int n : new int[] {1, 5})
                for (boolean select : new boolean[] {false, true}) a.add(Arguments.of(quant, n, select, 300, 420));
        a.add(Arguments.of("none", 1, false, 36000, 36100)); // (heads + KV heads) x 36000 floats: the pinned buffer grows past 1 MiB
        return a.stream();
    }

    @ParameterizedTest(name = "pinned stats = row copies: kv-quant {0}, {1} rows, selection {2}, {3} tokens")
    @MethodSource("cases")
    void pinnedStatisticsGiveTheSameBits(String quant, int n, boolean select, int len, int cap) {
        int hkv = 2, group = 4, heads = hkv * group, hd = 64, layer = 1;
        boolean before = gpu.pinnedStats();
        SplittableRandom r = new SplittableRandom(31L * n + (select ? 7 : 0) + quant.length());
        try (KvCache c = gpu.newKvCache(2, hkv, hd, cap, KvQuantSpec.parse(quant))) {
            Tensor k = gpu.allocate(len, hkv * hd), v = gpu.allocate(len, hkv * hd);
            gpu.upload(k, random(r, len * hkv * hd));
            gpu.upload(v, random(r, len * hkv * hd));
            int[] pos = new int[len];
            for (int i = 0; i < len; i++) pos[i] = i;
            for (int l = 0; l < 2; l++) {
                int[][] slots = new int[hkv][];
                for (int g = 0; g < hkv; g++) slots[g] = c.allocate(l, g, pos, len);
                gpu.storeKv(c, l, k, v, slots, len);
            }
            // KV head 0 of the layer ends lower: its high-water mark stays, its last 25 slots are freed (the heads' marks
            // differ once a later token takes a freed slot of one head only)
            for (int s = len - 25; s < len; s++) c.free(layer, 0, s);
            int[] more = {len};
            int slot1 = c.allocate(layer, 1, more, 1)[0], slot0 = c.allocate(layer, 0, more, 1)[0];
            assertEquals(len, slot1, "head 1 grows its high-water mark");
            assertEquals(true, slot0 < len, "head 0 reuses a freed slot");
            gpu.storeKv(c, layer, k, v, new int[][] {{slot0}, {slot1}}, 1);
            for (int g = 0; g < hkv; g++)
                for (int s = 3 + g; s < len - 40; s += 11) c.free(layer, g, s); // holes below the high-water mark
            SlotSelection sel = null;
            if (select) {
                int[][] lists = new int[hkv][];
                for (int g = 0; g < hkv; g++) {
                    List<Integer> keep = new ArrayList<>();
                    for (int s = 0; s < c.highWater(layer, g); s++) if (c.position(layer, g, s) >= 0 && s % 3 != g) keep.add(s);
                    lists[g] = keep.stream().mapToInt(Integer::intValue).toArray();
                }
                sel = SlotSelection.of(lists);
            }
            float[] qv = random(r, n * heads * hd);
            Tensor q = gpu.allocate(n, heads * hd), o = gpu.allocate(n, heads * hd);
            gpu.upload(q, qv);
            int[] qpos = new int[n];
            for (int i = 0; i < n; i++) qpos[i] = len + 1 - n + i;
            for (int init = 0; init < 3; init++) {
                AttentionStats rows = AttentionStats.allocate(heads, hkv, cap), pinned = AttentionStats.allocate(heads, hkv, cap);
                prepare(rows, init, 5L + init);
                prepare(pinned, init, 5L + init);
                rows.fromRow = pinned.fromRow = n > 1 ? 1 : 0;
                float[] outRows = null, outPinned = null;
                for (int call = 0; call < 2; call++) { // the second call adds to what the first left
                    gpu.setPinnedStats(false);
                    gpu.attention(o, q, c, layer, qpos, n, sel, rows);
                    outRows = gpu.download(o, 0, n);
                    poison(c, q, o, layer, qpos, n, sel, heads, hkv, cap); // the device buffers hold NaN before the pinned call
                    gpu.setPinnedStats(true);
                    gpu.attention(o, q, c, layer, qpos, n, sel, pinned);
                    outPinned = gpu.download(o, 0, n);
                }
                String tag = quant + " n=" + n + " sel=" + select + " init=" + init;
                assertSameBits(tag + " output", outRows, outPinned);
                for (int h = 0; h < heads; h++) assertSameBits(tag + " rawScores[" + h + "]", rows.rawScores[h], pinned.rawScores[h]);
                for (int g = 0; g < hkv; g++) assertSameBits(tag + " probSums[" + g + "]", rows.probSums[g], pinned.probSums[g]);
            }
            // the policy ops' scores through the pinned buffer: the same bits as through a Java array
            for (int pages : new int[] {0, 16}) {
                float[][] a = new float[heads][cap], b = new float[heads][cap];
                for (float[] r1 : a) java.util.Arrays.fill(r1, 7f);
                for (float[] r1 : b) java.util.Arrays.fill(r1, 7f);
                gpu.setPinnedStats(false);
                if (pages == 0) gpu.queryKeyScores(a, q, n - 1, qpos[n - 1], c, layer);
                else gpu.questPageScores(a, q, n - 1, qpos[n - 1], c, layer, pages);
                gpu.setPinnedStats(true);
                if (pages == 0) gpu.queryKeyScores(b, q, n - 1, qpos[n - 1], c, layer);
                else gpu.questPageScores(b, q, n - 1, qpos[n - 1], c, layer, pages);
                for (int h = 0; h < heads; h++)
                    assertSameBits(quant + (pages == 0 ? " queryKeyScores[" : " questPageScores[") + h + "]", a[h], b[h]);
            }
        } finally {
            gpu.setPinnedStats(before);
        }
    }

    /**
     * 0: cleared; 1: earlier values everywhere (raw scores of an earlier call, sums to add to); 2: cleared but a -0 sum
     * and a -0 raw score at slot 16 of KV head 1 (outside that head's selection, so they must come back as they were).
     */
    static void prepare(AttentionStats s, int init, long seed) {
        s.clear();
        if (init == 1) {
            SplittableRandom r = new SplittableRandom(seed);
            for (float[] row : s.rawScores) for (int i = 0; i < row.length; i++) row[i] = (float) r.nextDouble(-3, 3);
            for (float[] row : s.probSums) for (int i = 0; i < row.length; i++) row[i] = (float) r.nextDouble();
        } else if (init == 2) {
            s.probSums[1][16] = -0f;
            s.rawScores[5][16] = -0f;
        }
    }

    /** An attention call through the row copies with statistics that are NaN everywhere: its results are dropped. */
    static void poison(KvCache c, Tensor q, Tensor o, int layer, int[] qpos, int n, SlotSelection sel, int heads, int hkv, int cap) {
        AttentionStats nan = AttentionStats.allocate(heads, hkv, cap);
        for (float[] row : nan.rawScores) java.util.Arrays.fill(row, Float.NaN);
        for (float[] row : nan.probSums) java.util.Arrays.fill(row, Float.NaN);
        gpu.setPinnedStats(false);
        gpu.attention(o, q, c, layer, qpos, n, sel, nan);
    }

    static float[] random(SplittableRandom r, int n) {
        float[] f = new float[n];
        for (int i = 0; i < n; i++) f[i] = (float) r.nextDouble(-1, 1);
        return f;
    }

    static void assertSameBits(String what, float[] a, float[] b) {
        assertEquals(a.length, b.length, what + ": lengths");
        for (int i = 0; i < a.length; i++)
            if (Float.floatToRawIntBits(a[i]) != Float.floatToRawIntBits(b[i]))
                fail(what + " differs at " + i + ": " + a[i] + " vs " + b[i] + " (bits " + Integer.toHexString(Float.floatToRawIntBits(a[i]))
                        + " vs " + Integer.toHexString(Float.floatToRawIntBits(b[i])) + ")");
    }
}
