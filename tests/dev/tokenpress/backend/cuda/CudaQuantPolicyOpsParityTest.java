package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.kv.quant.KvQuantSpec;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Random;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The KV-policy ops over the quantized CUDA cache (cuda/kv_quant.cu: tp_kvq_query_key_scores,
 * tp_kvq_quest_page_scores, tp_kvq_attention_stats with the lse of tp_kvq_attention_ex, tp_kvq_tidal_select) against
 * the CPU ops on a {@code QuantKvCache} filled with the same keys and values (the two quantize bit-identically, see
 * {@link CudaKvQuantParityTest}). Scores differ only by summation order (the CPU sums q·scale·code and q·zero
 * separately, the GPU dots q with the rebuilt key): tolerance 1e-3 + 1e-4·|ref| for q·k of unit-variance data;
 * probabilities 1e-6 + 1e-3·|ref|; selections are checked with {@link CudaTidalSelectParityTest#assertValidSelection}
 * (identical except at near-ties of the threshold). The ops are switched on for this class
 * ({@code tokenpress.cuda.quantPolicyOps}); off, they are refused. Skipped where CUDA is unavailable.
 */
class CudaQuantPolicyOpsParityTest {
    static Backend cpu;
    static CudaBackend gpu;
    static String switchBefore;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        switchBefore = System.getProperty("tokenpress.cuda.quantPolicyOps");
        System.setProperty("tokenpress.cuda.quantPolicyOps", "true");
        cpu = new CpuBackend();
        gpu = CudaBackend.open();
        System.out.println("[kvquant-policy-ops] " + gpu.description());
    }

    @AfterAll
    static void close() {
        if (gpu != null) TpNative.tp_set_tidal_select_variant(0);  // the library default, whatever a failure left
        if (switchBefore == null) System.clearProperty("tokenpress.cuda.quantPolicyOps");
        else System.setProperty("tokenpress.cuda.quantPolicyOps", switchBefore);
        if (gpu != null) gpu.close();
        if (cpu != null) cpu.close();
    }

    static Stream<Arguments> cases() {
        List<Arguments> out = new ArrayList<>();
        String[] specs = {"int4:group=8,residual=8", "int8", "int2:group=32,residual=32"};
        for (String s : specs)
            for (int len : new int[] {9, 81, 729})
                for (int gqa : new int[] {1, 4})
                    for (int hd : new int[] {64, 128}) out.add(Arguments.of(s, len, gqa, hd));
        out.add(Arguments.of("int4", 4097, 4, 64));
        out.add(Arguments.of("int4:group=8,residual=8", 4097, 8, 128));
        out.add(Arguments.of("int4:group=8,residual=8", 729, 12, 64));  // more q-heads per KV head than v3 takes at once
        return out.stream();
    }

    static void assertScoresClose(String what, float[] ref, float[] got, int n) {
        for (int i = 0; i < n; i++) {
            if (ref[i] == Float.NEGATIVE_INFINITY || got[i] == Float.NEGATIVE_INFINITY) {
                assertEquals(ref[i], got[i], what + " [" + i + "]: -infinity on one side only");
                continue;
            }
            assertTrue(Float.isFinite(got[i]), what + " [" + i + "]: " + got[i]);
            double tol = 1e-3 + 1e-4 * Math.abs(ref[i]);
            assertTrue(Math.abs(ref[i] - got[i]) <= tol, what + " [" + i + "]: cpu " + ref[i] + " cuda " + got[i]);
        }
    }

    @ParameterizedTest(name = "{0} len={1} gqa={2} hd={3}")
    @MethodSource("cases")
    void opsMatchCpu(String specText, int len, int gqa, int hd) {
        KvQuantSpec spec = KvQuantSpec.parse(specText);
        int hkv = 2, heads = hkv * gqa, layers = 2, cap = len + 8, layer = 1;
        SplittableRandom rnd = new SplittableRandom(len * 131L + gqa * 17L + hd + specText.hashCode());
        try (KvCache cc = cpu.newKvCache(layers, hkv, hd, cap, spec); KvCache gc = gpu.newKvCache(layers, hkv, hd, cap, spec)) {
            assertTrue(gc instanceof CudaQuantKvCache);
            CudaKvQuantParityTest.fill(cpu, gpu, cc, gc, layers, hkv, hd, len, rnd);
            // holes: a block lane (when there is one) and window entries of KV head 0
            for (int s : new int[] {1, len / 2, len - 2})
                if (s >= 0 && s < len && cc.position(layer, 0, s) >= 0) {
                    cc.free(layer, 0, s);
                    gc.free(layer, 0, s);
                }
            float[] qv = CudaParityTest.randn(rnd, heads * hd, 1.0);
            Tensor qc = CudaParityTest.act(cpu, 1, heads * hd, qv), qg = CudaParityTest.act(gpu, 1, heads * hd, qv);
            String base = specText + " len=" + len + " gqa=" + gqa + " hd=" + hd;
            for (int qpos : new int[] {len - 1, len / 2}) {
                String at = base + " qpos=" + qpos;
                // queryKeyScores
                float[][] rc = new float[heads][cap], rg = new float[heads][cap];
                cpu.queryKeyScores(rc, qc, 0, qpos, cc, layer);
                gpu.queryKeyScores(rg, qg, 0, qpos, gc, layer);
                for (int h = 0; h < heads; h++) assertScoresClose(at + " queryKeyScores head " + h, rc[h], rg[h], cap);
                // questPageScores
                for (int page : new int[] {8, 16}) {
                    int pages = (cap + page - 1) / page;
                    float[][] pc = new float[heads][pages], pg = new float[heads][pages];
                    cpu.questPageScores(pc, qc, 0, qpos, cc, layer, page);
                    gpu.questPageScores(pg, qg, 0, qpos, gc, layer, page);
                    for (int h = 0; h < heads; h++) assertScoresClose(at + " questPageScores page " + page + " head " + h, pc[h], pg[h], pages);
                }
                // decode attention with statistics, over everything and over a shuffled slot list
                stats(at + " decode", cc, gc, layer, qv, 1, heads, hd, new int[] {qpos}, 0, null);
                // the statistics' log-sum-exp comes from whichever quantized-attention kernel runs: variants 1, 2 and 4 too
                int kvq0 = TpNative.tp_kvq_attention_variant();
                try {
                    for (int v : new int[] {1, 2, 4}) {
                        assertEquals(0, TpNative.tp_kvq_set_attention_variant(v));
                        stats(at + " decode kvq v" + v, cc, gc, layer, qv, 1, heads, hd, new int[] {qpos}, 0, null);
                    }
                } finally {
                    TpNative.tp_kvq_set_attention_variant(kvq0);
                }
                stats(at + " decode selection", cc, gc, layer, qv, 1, heads, hd, new int[] {qpos}, 0, shuffled(hkv, len));
                // TidalDecode selection (tp_set_tidal_select_variant 1: one-block radix select; 2: v2's histogram,
                // collect and compact passes over the same keys): host copy checked against the CPU, the
                // device-resident one attended
                // (and the keys from the scalar scores kernel, or with quantized attention v4 from its tensor-core
                // scores mode where the layout allows it)
                int kvqBefore = TpNative.tp_kvq_attention_variant();
                try {
                for (int kvq : new int[] {3, 4})
                for (int k : new int[] {1, 7, 64})
                    for (boolean sum : new boolean[] {false, true})
                        for (int variant : new int[] {1, 2}) {
                            assertEquals(0, TpNative.tp_set_tidal_select_variant(variant));
                            assertEquals(0, TpNative.tp_kvq_set_attention_variant(kvq));
                            String what = at + " select k=" + k + " sum=" + sum + " v" + variant + " kvq v" + kvq;
                            float[][] sc = CudaTidalSelectParityTest.groupScores(cpu, qc, 0, qpos, cc, layer, heads, sum);
                            SlotSelection want = referenceSelection(sc, cc, layer, k, qpos);
                            SlotSelection got = gpu.selectTopSlots(qg, 0, qpos, gc, layer, k, sum, qpos, true);
                            CudaTidalSelectParityTest.assertValidSelection(want, got, sc, cc, layer, k, qpos, what);
                            SlotSelection dev = gpu.selectTopSlots(qg, 0, qpos, gc, layer, k, sum, qpos, false);
                            assertNull(dev.slots(), what + ": a device-resident selection");
                            SlotSelection host = gpu.hostSelection(dev);
                            CudaTidalSelectParityTest.assertSameSelection(got, host, what + " (device, downloaded)");
                            Tensor oc = cpu.allocate(1, heads * hd), og = gpu.allocate(1, heads * hd);
                            cpu.attention(oc, qc, cc, layer, new int[] {qpos}, 1, host, null);
                            gpu.attention(og, qg, gc, layer, new int[] {qpos}, 1, dev, null);
                            CudaParityTest.assertClose(what + " attention", cpu.download(oc, 0, 1), gpu.download(og, 0, 1), 1e-8, 2e-5, 1e-4);
                        }
                } finally {
                    TpNative.tp_kvq_set_attention_variant(kvqBefore);
                    TpNative.tp_set_tidal_select_variant(0);
                }
            }
            // prefill-style rows (n > 1) with probabilities from row 2 on
            int n = Math.min(len, 5);
            int[] qp = new int[n];
            for (int i = 0; i < n; i++) qp[i] = len - n + i;
            stats(base + " prefill", cc, gc, layer, CudaParityTest.randn(rnd, n * heads * hd, 1.0), n, heads, hd, qp,
                    Math.min(2, n - 1), null);
        }
    }

    /**
     * TidalDecode's selection from the CPU group scores (the CPU backend has no selectTopSlots op for its quantized
     * cache; TidalPolicy selects on the host from the same scores): per KV head the last slot holding {@code current}
     * when it is visible, then the best visible slots (ties: lower slot) up to min(k, visible), ascending.
     */
    static SlotSelection referenceSelection(float[][] score, KvCache c, int layer, int k, int current) {
        int hkv = score.length;
        int[][] slots = new int[hkv][];
        int[] count = new int[hkv];
        for (int g = 0; g < hkv; g++) {
            float[] sc = score[g];
            int[] pos = c.positions(layer, g);
            List<Integer> visible = new ArrayList<>();
            int cur = -1;
            for (int s = 0; s < sc.length; s++) {
                if (pos[s] == current) cur = s;
                if (sc[s] != Float.NEGATIVE_INFINITY) visible.add(s);
            }
            int total = Math.min(k, visible.size());
            List<Integer> chosen = new ArrayList<>();
            if (cur >= 0 && sc[cur] != Float.NEGATIVE_INFINITY && total > 0) chosen.add(cur);
            final int forced = chosen.isEmpty() ? -1 : cur;
            visible.removeIf(s -> s == forced);
            visible.sort((a, b) -> sc[a] != sc[b] ? Float.compare(sc[b], sc[a]) : Integer.compare(a, b));
            for (int i = 0; chosen.size() < total; i++) chosen.add(visible.get(i));
            Collections.sort(chosen);
            slots[g] = chosen.stream().mapToInt(Integer::intValue).toArray();
            count[g] = total;
        }
        return new SlotSelection(slots, count);
    }

    static SlotSelection shuffled(int hkv, int len) {
        int[][] sel = new int[hkv][];
        for (int h = 0; h < hkv; h++) {
            List<Integer> l = new ArrayList<>();
            for (int s = h; s < len; s += 3) l.add(s);
            Collections.shuffle(l, new Random(h + 7L * len));
            sel[h] = l.stream().mapToInt(Integer::intValue).toArray();
        }
        return SlotSelection.of(sel);
    }

    /** Attention with both statistics on the two backends: outputs, raw scores and probability sums compared. */
    static void stats(String what, KvCache cc, KvCache gc, int layer, float[] qv, int n, int heads, int hd, int[] qpos,
                      int fromRow, SlotSelection sel) {
        int hkv = cc.kvHeads(), cap = cc.capacity();
        Tensor qc = CudaParityTest.act(cpu, n, heads * hd, qv), qg = CudaParityTest.act(gpu, n, heads * hd, qv);
        Tensor oc = cpu.allocate(n, heads * hd), og = gpu.allocate(n, heads * hd);
        AttentionStats sc = AttentionStats.allocate(heads, hkv, cap), sg = AttentionStats.allocate(heads, hkv, cap);
        sc.clear();
        sg.clear();
        for (int g = 0; g < hkv; g++) {  // probability sums accumulate: start both from the same non-zero values
            for (int s = 0; s < cap; s++) sc.probSums[g][s] = sg.probSums[g][s] = 0.25f * ((s + g) % 3);
        }
        sc.fromRow = sg.fromRow = fromRow;
        cpu.attention(oc, qc, cc, layer, qpos, n, sel, sc);
        gpu.attention(og, qg, gc, layer, qpos, n, sel, sg);
        CudaParityTest.assertClose(what + " output", cpu.download(oc, 0, n), gpu.download(og, 0, n), 1e-8, 2e-5, 1e-4);
        for (int h = 0; h < heads; h++) assertScoresClose(what + " raw scores head " + h, sc.rawScores[h], sg.rawScores[h], cap);
        for (int g = 0; g < hkv; g++)
            for (int s = 0; s < cap; s++) {
                float r = sc.probSums[g][s], x = sg.probSums[g][s];
                assertTrue(Math.abs(r - x) <= 1e-6 + 1e-3 * Math.abs(r),
                        what + " probability sum KV head " + g + " slot " + s + ": cpu " + r + " cuda " + x);
            }
    }

    /**
     * readKv / writeKv over the quantized cache (RazorAttention's compensation token) against the CPU's: writes into
     * window entries and block lanes, and RazorAttention's pattern (a slot allocated for one KV head and written
     * before the next append of every head), then appends that flush and compact; after each, the window sizes,
     * bit widths and every live slot's reconstruction agree bit for bit, and so does attention (within tolerance).
     */
    @ParameterizedTest(name = "readKv/writeKv {0} hd={1}")
    @MethodSource("writeCases")
    void writeKvLikeTheCpu(String specText, int hd) {
        KvQuantSpec spec = KvQuantSpec.parse(specText);
        int hkv = 2, heads = 8, layers = 2, len = 81, cap = 160, layer = 1;
        SplittableRandom rnd = new SplittableRandom(hd * 7L + specText.hashCode());
        try (KvCache cc = cpu.newKvCache(layers, hkv, hd, cap, spec); KvCache gc = gpu.newKvCache(layers, hkv, hd, cap, spec)) {
            CudaKvQuantParityTest.fill(cpu, gpu, cc, gc, layers, hkv, hd, len, rnd);
            sameStored("after the fill", cc, gc, layer);
            // overwrite a block lane and a window entry of each head
            for (int h = 0; h < hkv; h++)
                for (int s : new int[] {3 + h, len - 2 - h}) {
                    float[] k = CudaParityTest.randn(rnd, hd, 1.0), v = CudaParityTest.randn(rnd, hd, 1.0);
                    cpu.writeKv(cc, layer, h, s, k, v);
                    gpu.writeKv(gc, layer, h, s, k, v);
                }
            sameStored("after overwrites", cc, gc, layer);
            CudaKvQuantParityTest.Staging stg = CudaKvQuantParityTest.Staging.of(cpu, gpu, 12, hkv * hd);
            // evict scattered tokens, then RazorAttention's pattern: a new slot for one head, written, then appends
            int pos = len;
            for (int round = 0; round < 6; round++) {
                int h = round % hkv, newest = -1;  // the compensation token takes the newest evicted position
                for (int g = 0; g < hkv; g++)
                    for (int s = 5 + round; s < pos && s < cap; s += 4) {
                        int p0 = cc.position(layer, g, s);
                        if (p0 >= 0 && p0 < pos - 20) {
                            cc.free(layer, g, s);
                            gc.free(layer, g, s);
                            if (g == h) newest = Math.max(newest, p0);
                        }
                    }
                assertTrue(newest >= 0, "round " + round + " evicted nothing from head " + h);
                int cs = cc.allocate(layer, h, new int[] {newest}, 1)[0];
                assertEquals(cs, gc.allocate(layer, h, new int[] {newest}, 1)[0]);
                float[] k = CudaParityTest.randn(rnd, hd, 1.0), v = CudaParityTest.randn(rnd, hd, 1.0);
                cpu.writeKv(cc, layer, h, cs, k, v);
                gpu.writeKv(gc, layer, h, cs, k, v);
                int n = 12;
                int[] p = new int[n];
                for (int i = 0; i < n; i++) p[i] = pos + i;
                CudaKvQuantParityTest.append(cpu, gpu, cc, gc, layer, p, rnd, stg);
                pos += n;
                sameStored("round " + round, cc, gc, layer);
            }
            float[] qd = CudaParityTest.randn(rnd, heads * hd, 1.0);
            CudaKvQuantParityTest.attend(cpu, gpu, "after writes", cc, gc, layer, qd, 1, heads, hd, new int[] {pos - 1}, null);
        }
    }

    static Stream<Arguments> writeCases() {
        return Stream.of(Arguments.of("int4:group=8,residual=8", 64), Arguments.of("int8:group=8,residual=8", 128),
                Arguments.of("int2", 64));
    }

    /** Window sizes, positions, bit widths and every live slot's stored key/value (bit for bit) of one layer. */
    static void sameStored(String what, KvCache cc, KvCache gc, int layer) {
        dev.tokenpress.backend.cpu.QuantKvCache q = (dev.tokenpress.backend.cpu.QuantKvCache) cc;
        CudaQuantKvCache g = (CudaQuantKvCache) gc;
        int hd = cc.headDim();
        float[] kc = new float[hd], vc = new float[hd], kg = new float[hd], vg = new float[hd];
        for (int h = 0; h < cc.kvHeads(); h++) {
            String at = what + ", head " + h;
            assertEquals(q.residentTokens(layer, h), g.residentTokens(layer, h), at + ": window size");
            for (int s = 0; s < cc.capacity(); s++) {
                assertEquals(cc.position(layer, h, s), gc.position(layer, h, s), at + ": position of slot " + s);
                if (cc.position(layer, h, s) < 0) continue;
                assertEquals(q.bitsOf(layer, h, s), g.bitsOf(layer, h, s), at + ": bits of slot " + s);
                cpu.readKv(cc, layer, h, s, kc, vc);
                gpu.readKv(gc, layer, h, s, kg, vg);
                org.junit.jupiter.api.Assertions.assertArrayEquals(kc, kg, at + ": key of slot " + s);
                org.junit.jupiter.api.Assertions.assertArrayEquals(vc, vg, at + ": value of slot " + s);
            }
        }
    }

    @Test
    void offUnlessSwitchedOn() {
        String v = System.getProperty("tokenpress.cuda.quantPolicyOps");
        System.setProperty("tokenpress.cuda.quantPolicyOps", "false");
        try (KvCache gc = gpu.newKvCache(1, 1, 64, 16, KvQuantSpec.parse("int4"))) {
            Tensor q = gpu.allocate(1, 64);
            UnsupportedOpException e = assertThrows(UnsupportedOpException.class,
                    () -> gpu.queryKeyScores(new float[1][16], q, 0, 0, gc, 0));
            assertTrue(e.getMessage().contains("tokenpress.cuda.quantPolicyOps"), e.getMessage());
            assertThrows(UnsupportedOpException.class, () -> gpu.selectTopSlots(q, 0, 0, gc, 0, 4, false, 0, true));
        } finally {
            if (v == null) System.clearProperty("tokenpress.cuda.quantPolicyOps");
            else System.setProperty("tokenpress.cuda.quantPolicyOps", v);
        }
    }
}
