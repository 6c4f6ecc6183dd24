package dev.tokenpress.kv;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.kv.policy.TidalPolicy;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * {@code Backend.selectTopSlots} on the CPU against TidalPolicy's host selection from the attention's raw-score
 * statistics (the selection path it replaces): many random caches, GQA 1/4/8, max and sum over the group, k from 0
 * to past the cache, freed slots, a causal cut, a current token that is invisible or absent, tied scores; and the
 * whole model with tidal decoding bit for bit the same through either path.
 */
class TidalDeviceSelectTest {
    static CpuBackend cpu;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;

    @BeforeAll
    static void open() {
        cpu = new CpuBackend(2);
        config = KvTestSupport.config(8);
        model = KvTestSupport.model(dir, config, 8);
    }

    @AfterAll
    static void close() {
        if (model != null) model.close();
        if (cpu != null) cpu.close();
    }

    /** TidalPolicy.afterAttention's selection over the attention's raw scores (a copy of the host path). */
    static SlotSelection reference(float[][] raw, KvCache c, int layer, int group, int k, boolean sum, int current) {
        int kvHeads = c.kvHeads();
        int[][] slots = new int[kvHeads][];
        int[] count = new int[kvHeads];
        for (int g = 0; g < kvHeads; g++) {
            int hw = c.highWater(layer, g);
            int[] pos = c.positions(layer, g);
            float[] score = new float[hw];
            int cur = -1, visible = 0;
            for (int slot = 0; slot < hw; slot++) {
                float v = sum ? 0f : Float.NEGATIVE_INFINITY;
                boolean any = false;
                for (int h = g * group; h < (g + 1) * group; h++) {
                    float r = raw[h][slot];
                    if (r == Float.NEGATIVE_INFINITY) continue;
                    any = true;
                    v = sum ? v + r : Math.max(v, r);
                }
                score[slot] = any ? v : Float.NEGATIVE_INFINITY;
                if (any) visible++;
                if (pos[slot] == current) cur = slot;
            }
            int[] chosen = new int[Math.min(k, visible)];
            int m = 0;
            if (cur >= 0 && score[cur] != Float.NEGATIVE_INFINITY && chosen.length > 0) {
                chosen[m++] = cur;
                score[cur] = Float.NEGATIVE_INFINITY;
            }
            for (int slot : topSlots(score, chosen.length - m)) chosen[m++] = slot;
            Arrays.sort(chosen, 0, m);
            slots[g] = Arrays.copyOf(chosen, m);
            count[g] = m;
        }
        return new SlotSelection(slots, count);
    }

    static int[] topSlots(float[] score, int m) {
        if (m <= 0) return new int[0];
        int c = 0;
        for (float v : score) if (v != Float.NEGATIVE_INFINITY) c++;
        Integer[] idx = new Integer[c];
        c = 0;
        for (int i = 0; i < score.length; i++) if (score[i] != Float.NEGATIVE_INFINITY) idx[c++] = i;
        if (m < c) Arrays.sort(idx, (a, b) -> score[a] != score[b] ? Float.compare(score[b], score[a]) : Integer.compare(a, b));
        int[] out = new int[Math.min(m, c)];
        for (int i = 0; i < out.length; i++) out[i] = idx[i];
        return out;
    }

    static void assertSame(SlotSelection want, SlotSelection got, String what) {
        assertNotNull(got.slots(), what + ": the CPU op returns host arrays");
        assertArrayEquals(want.count(), got.count(), what + ": counts");
        for (int g = 0; g < want.count().length; g++) {
            assertEquals(want.count()[g], got.slots()[g].length, what + ": head " + g + " list length");
            assertArrayEquals(Arrays.copyOf(want.slots()[g], want.count()[g]), Arrays.copyOf(got.slots()[g], got.count()[g]), what + ": head " + g);
        }
    }

    /**
     * One random cache (2 layers) and query: len positions, optionally every third slot freed plus the top two of
     * KV head 0, keys drawn from {@code levels} values per element when {@code ties} (many equal scores).
     */
    void check(SplittableRandom r, int hkv, int group, int hd, int len, boolean free, boolean ties, int[] ks,
               String what) {
        int heads = hkv * group, layer = 1;
        try (KvCache c = cpu.newKvCache(2, hkv, hd, len + 3)) {
            Tensor k = cpu.allocate(len, hkv * hd), v = cpu.allocate(len, hkv * hd);
            float[] data = new float[len * hkv * hd];
            for (int i = 0; i < data.length; i++) data[i] = ties ? r.nextInt(3) - 1 : (float) r.nextGaussian();
            cpu.upload(k, data);
            cpu.upload(v, data);
            int[] pos = new int[len];
            for (int i = 0; i < len; i++) pos[i] = i;
            for (int l = 0; l < 2; l++) {
                int[][] slots = new int[hkv][];
                for (int g = 0; g < hkv; g++) slots[g] = c.allocate(l, g, pos, len);
                cpu.storeKv(c, l, k, v, slots, len);
            }
            if (free) {
                for (int g = 0; g < hkv; g++)
                    for (int s = 1; s < len; s += 3) c.free(layer, g, s);
                if (len > 3) {
                    c.free(layer, 0, len - 1);
                    c.free(layer, 0, len - 2);
                }
            }
            Tensor q = cpu.allocate(2, heads * hd), out = cpu.allocate(2, heads * hd);
            float[] qd = new float[2 * heads * hd];
            for (int i = 0; i < qd.length; i++) qd[i] = ties ? r.nextInt(3) - 1 : (float) r.nextGaussian();
            cpu.upload(q, qd);
            // queries: the last position, a causal cut, and a current position that is freed / absent / invisible
            int[][] cases = {{len - 1, len - 1}, {len / 2, len / 2}, {len - 1, 1}, {len - 1, len + 50}, {len / 3, len - 1}};
            for (int[] qc : cases) {
                int qpos = qc[0], current = qc[1];
                float[][] raw = new float[heads][c.capacity()];
                for (float[] row : raw) Arrays.fill(row, Float.NEGATIVE_INFINITY);
                AttentionStats st = new AttentionStats(raw, null, 0);
                cpu.attention(out, q, c, layer, new int[] {qpos - 1, qpos}, 2, null, st);
                for (int kk : ks)
                    for (boolean sum : new boolean[] {false, true}) {
                        String w = what + " qpos=" + qpos + " current=" + current + " k=" + kk + " sum=" + sum;
                        SlotSelection want = reference(raw, c, layer, group, kk, sum, current);
                        SlotSelection got = cpu.selectTopSlots(q, 1, qpos, c, layer, kk, sum, current, false);
                        assertSame(want, got, w);
                        assertSame(want, cpu.selectTopSlots(q, 1, qpos, c, layer, kk, sum, current, true), w + " (host copy)");
                        assertSame(want, cpu.hostSelection(got), w + " (hostSelection)");
                    }
            }
        }
    }

    @Test
    void matchesHostSelectionOnRandomCaches() {
        SplittableRandom r = new SplittableRandom(5);
        int cases = 0;
        for (int group : new int[] {1, 4, 8})
            for (int len : new int[] {1, 2, 9, 81, 600})
                for (boolean free : new boolean[] {false, true})
                    for (int hd : new int[] {16, 64}) {
                        int[] ks = {0, 1, 2, 7, len - 1, len, len + 5, 2048};
                        check(r, 2, group, hd, len, free, false, ks, "group=" + group + " len=" + len + " free=" + free + " hd=" + hd);
                        cases++;
                    }
        assertEquals(60, cases);
    }

    @Test
    void tiesGoToTheLowerSlot() {
        SplittableRandom r = new SplittableRandom(9);
        for (int group : new int[] {1, 4})
            for (boolean free : new boolean[] {false, true})
                check(r, 2, group, 16, 300, free, true, new int[] {1, 3, 17, 100, 299}, "ties group=" + group + " free=" + free);
    }

    @Test
    void signedZerosTie() {
        // scores of exactly +0 and -0 (q orthogonal to every key) rank as equal: the lower slot wins
        int hd = 16;
        try (KvCache c = cpu.newKvCache(1, 1, hd, 8)) {
            Tensor k = cpu.allocate(8, hd), v = cpu.allocate(8, hd);
            float[] data = new float[8 * hd];
            for (int s = 0; s < 8; s++) data[s * hd + 1] = s % 2 == 0 ? 1f : -1f; // key dim 1 = ±1
            cpu.upload(k, data);
            cpu.upload(v, data);
            int[] pos = {0, 1, 2, 3, 4, 5, 6, 7};
            cpu.storeKv(c, 0, k, v, new int[][] {c.allocate(0, 0, pos, 8)}, 8);
            Tensor q = cpu.allocate(1, hd);
            float[] qd = new float[hd];
            qd[1] = -0f; // q·k = ±0
            cpu.upload(q, qd);
            float[][] raw = new float[1][8];
            for (float[] row : raw) Arrays.fill(row, Float.NEGATIVE_INFINITY);
            cpu.attention(cpu.allocate(1, hd), q, c, 0, new int[] {7}, 1, null, new AttentionStats(raw, null, 0));
            SlotSelection want = reference(raw, c, 0, 1, 4, false, 7);
            assertSame(want, cpu.selectTopSlots(q, 0, 7, c, 0, 4, false, 7, false), "±0");
            assertArrayEquals(new int[] {0, 1, 2, 7}, want.slots()[0]);
        }
    }

    /** Decodes with tidal through the op and through the statistics path; returns the logits of every step. */
    static List<float[]> decode(String spec, boolean op, List<int[][]> selections) {
        KvPolicy p = KvPolicies.parse(spec, config);
        TidalPolicy t = p instanceof TidalPolicy tp ? tp : null;
        if (p instanceof dev.tokenpress.kv.policy.CompositePolicy cp)
            for (KvPolicy part : cp.parts()) if (part instanceof TidalPolicy tp) t = tp;
        assertNotNull(t);
        t.setBackendSelect(op);
        model.setPolicy(p);
        List<float[]> out = new ArrayList<>();
        try (KvCache cache = model.newCache(64)) {
            model.prefill(cache, KvTestSupport.tokens(30, config.vocabSize(), 3), 0, false, null);
            int tok = model.argmax();
            for (int i = 0; i < 12; i++) {
                model.decodeStep(cache, tok, 30 + i);
                out.add(model.logits().clone());
                selections.add(t.selectedPositions());
                tok = model.argmax();
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        return out;
    }

    @Test
    void modelDecodesBitIdenticallyThroughTheOp() {
        for (String spec : new String[] {"tidal:k=5", "tidal:k=9,full_layers=1,reselect=4,group=sum", "tidal:k=1",
                "window:budget=20,sink=2+tidal:k=6", "h2o:budget=24+tidal:k=7,full_layers=1"}) {
            List<int[][]> selOp = new ArrayList<>(), selStats = new ArrayList<>();
            List<float[]> a = decode(spec, true, selOp), b = decode(spec, false, selStats);
            for (int i = 0; i < a.size(); i++) {
                assertArrayEquals(b.get(i), a.get(i), spec + " step " + i + ": logits");
                int[][] x = selOp.get(i), y = selStats.get(i);
                assertEquals(y.length, x.length);
                for (int g = 0; g < x.length; g++) assertArrayEquals(y[g], x[g], spec + " step " + i + " head " + g);
            }
        }
    }
}
