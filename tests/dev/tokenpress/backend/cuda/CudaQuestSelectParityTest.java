package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.kv.policy.QuestPolicy;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Quest's page selection in device memory ({@code CudaBackend.selectTopPages}, {@code tp_quest_select}) against
 * QuestPolicy's host selection computed from the same backend's page bounds ({@code questPageScores}): the same
 * bounds, so the same pages and slots exactly. Freed slots (different high-water marks and pages without a visible
 * slot), a causal cut, a current token that is absent, budgets from one page to more pages than the cache holds,
 * max and sum over the group; and decode attention over the device selection against the host selection's.
 */
class CudaQuestSelectParityTest {
    static CudaBackend gpu;

    @BeforeAll
    static void open() {
        System.setProperty("tokenpress.cuda.deviceQuest", "true"); // the default, whatever the environment says
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        gpu = CudaBackend.open();
    }

    @org.junit.jupiter.api.AfterEach
    void autoSelection() {
        if (gpu != null) TpNative.tp_set_tidal_select_variant(0);
    }

    @AfterAll
    static void close() {
        System.clearProperty("tokenpress.cuda.deviceQuest");
        if (gpu != null) gpu.close();
    }

    /** hd, group, KV heads, tokens, page size, keys (0 random, 1 every page the same rows: tied bounds, 2 q = 0). */
    static Stream<Arguments> cases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 4, 8})
                for (int len : new int[] {9, 100, 4097}) a.add(Arguments.of(hd, group, 2, len, 16, 0));
        a.add(Arguments.of(64, 4, 8, 33001, 16, 0));  // the llama-1b shape
        a.add(Arguments.of(64, 4, 2, 40000, 32, 0));
        a.add(Arguments.of(64, 4, 2, 1000, 1, 0));    // pages of one slot
        a.add(Arguments.of(64, 4, 2, 20000, 1, 0));   // 20000 pages: the selection from keys takes v2's passes
        a.add(Arguments.of(64, 4, 2, 3000, 16, 1));   // equal bounds on every full page: ties, lower page first
        a.add(Arguments.of(128, 8, 2, 3000, 8, 2));   // q = 0: every bound +0 or -0, all tied
        return a.stream();
    }

    @ParameterizedTest(name = "hd={0} group={1} hkv={2} len={3} page={4} keys={5}")
    @MethodSource("cases")
    void deviceSelectionEqualsTheHostSelection(int hd, int group, int hkv, int len, int page, int keys) {
        int heads = hkv * group, layer = 1;
        SplittableRandom r = new SplittableRandom(len * 7L + hd * 3L + group + page);
        try (KvCache c = gpu.newKvCache(2, hkv, hd, len + 4)) {
            float[][] table = null;
            if (keys == 1) { // the key row of slot s is table row s % page: every full page has the same bounds
                table = new float[page][hkv * hd];
                for (float[] row : table) for (int i = 0; i < row.length; i++) row[i] = (float) r.nextGaussian();
            }
            storeTokens(gpu, c, len, r, 1.0, table);
            if (len > 9) { // every fifth slot freed, a whole page of KV head 0, and the last slot of KV head 1
                for (int g = 0; g < hkv; g++) for (int s = 3; s < len; s += 5) c.free(layer, g, s);
                for (int s = page; s < Math.min(len, 2 * page); s++) if (c.position(layer, 0, s) >= 0) c.free(layer, 0, s);
                if (c.position(layer, 1, len - 1) >= 0) c.free(layer, 1, len - 1);
            }
            float[] qd = new float[heads * hd];
            if (keys != 2) for (int i = 0; i < qd.length; i++) qd[i] = (float) r.nextGaussian();
            Tensor q = gpu.allocate(1, heads * hd), out = gpu.allocate(1, heads * hd), outRef = gpu.allocate(1, heads * hd);
            gpu.upload(q, qd);
            int pagesCap = (len + 4 + page - 1) / page;
            float[][] bounds = new float[heads][pagesCap];
            // (query position, current position): last token; a causal cut; a current token no slot holds
            for (int[] qc : new int[][] {{len - 1, len - 1}, {len / 2, len / 2}, {len - 1, len + 9}}) {
                int qpos = qc[0], keep = qc[1];
                gpu.questPageScores(bounds, q, 0, qpos, c, layer, page);
                for (boolean sum : new boolean[] {false, true})
                    for (int allowed : new int[] {1, 2, 7, 64, pagesCap + 3})
                        for (int variant : new int[] {0, 2}) { // the selection's automatic choice, and v2's passes forced
                        check(TpNative.tp_set_tidal_select_variant(variant));
                        String what = "hd=" + hd + " group=" + group + " len=" + len + " page=" + page + " keys=" + keys
                                + " qpos=" + qpos + " keep=" + keep + " pages=" + allowed + " sum=" + sum + " selection v" + variant;
                        SlotSelection want = QuestPolicy.selectFromBounds(bounds, c, layer, group, page, allowed, sum, qpos, keep);
                        SlotSelection host = gpu.selectTopPages(q, 0, qpos, c, layer, page, allowed, sum, keep, true);
                        assertSame(want, host, what + " (host copy)");
                        SlotSelection dev = gpu.selectTopPages(q, 0, qpos, c, layer, page, allowed, sum, keep, false);
                        assertNull(dev.slots(), what);
                        assertSame(want, gpu.hostSelection(dev), what + " (device, downloaded)");
                        if (allowed == 2 || allowed == 64) {
                            gpu.attention(out, q, c, layer, new int[] {qpos}, 1, dev, null);
                            gpu.attention(outRef, q, c, layer, new int[] {qpos}, 1, want, null);
                            // the same slots; the split counts may differ (sized by the list's length or its capacity)
                            double e = CudaParityTest.nmse(gpu.download(outRef, 0, 1), gpu.download(out, 0, 1));
                            assertTrue(e < 1e-10, what + ": attention over the device selection, nmse " + e);
                        }
                        }
            }
        }
    }

    static void check(int rc) {
        assertEquals(0, rc, "tp_set_tidal_select_variant");
    }

    /**
     * Tokens at positions 0 .. len-1 into every layer and KV head of a fresh GPU cache (slot i = token i), stored in
     * chunks: keys N(0, keyScale²) (or, with a table, the row of slot s is table[s % table.length]), values N(0, 1).
     */
    static void storeTokens(CudaBackend gpu, KvCache c, int len, SplittableRandom r, double keyScale, float[][] table) {
        int hkv = c.kvHeads(), hd = c.headDim(), chunk = 4096;
        Tensor k = gpu.allocate(chunk, hkv * hd), v = gpu.allocate(chunk, hkv * hd);
        for (int done = 0; done < len; done += chunk) {
            int m = Math.min(chunk, len - done);
            float[] kd = new float[m * hkv * hd], vd = new float[m * hkv * hd];
            for (int i = 0; i < kd.length; i++) {
                kd[i] = (float) (r.nextGaussian() * keyScale);
                vd[i] = (float) r.nextGaussian();
            }
            if (table != null)
                for (int i = 0; i < m; i++) System.arraycopy(table[(done + i) % table.length], 0, kd, i * hkv * hd, hkv * hd);
            gpu.upload(k, kd);
            gpu.upload(v, vd);
            int[] pos = new int[m];
            for (int i = 0; i < m; i++) pos[i] = done + i;
            for (int l = 0; l < c.layers(); l++) {
                int[][] slots = new int[hkv][];
                for (int g = 0; g < hkv; g++) slots[g] = c.allocate(l, g, pos, m);
                gpu.storeKv(c, l, k, v, slots, m);
            }
        }
    }

    static void assertSame(SlotSelection want, SlotSelection got, String what) {
        assertNotNull(got.slots(), what);
        assertArrayEquals(want.count(), got.count(), what + ": counts");
        for (int g = 0; g < want.count().length; g++)
            assertArrayEquals(Arrays.copyOf(want.slots()[g], want.count()[g]), Arrays.copyOf(got.slots()[g], got.count()[g]),
                    what + ": KV head " + g);
    }
}
