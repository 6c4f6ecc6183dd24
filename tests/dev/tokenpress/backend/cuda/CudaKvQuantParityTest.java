package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.backend.cpu.QuantKvCache;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.kv.quant.Quant;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The KIVI-quantized CUDA KV cache (cuda/kv_quant.cu, {@link CudaQuantKvCache}) against the CPU
 * {@link QuantKvCache} with the same spec and the same appended f32 keys/values: both quantize with the same
 * arithmetic, so the window/block partition, every code and every f16 zero/scale must be identical (checked by
 * reading the stored slots back: reconstructions compared bit for bit); attention outputs then differ only by
 * summation order (tolerance 2e-5 + 1e-4·|ref|, NMSE 1e-8). Plus a whole-model run (generated model, prefill + 32
 * decode steps, CUDA int4 vs CPU int4 logits by NMSE). Skipped where CUDA is unavailable.
 */
class CudaKvQuantParityTest {
    static Backend cpu;
    static CudaBackend gpu;

    @TempDir
    Path tmp;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        cpu = new CpuBackend();
        gpu = CudaBackend.open();
        System.out.println("[kvquant-parity] " + gpu.description());
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
        if (cpu != null) cpu.close();
    }

    static Stream<Arguments> cases() {
        List<Arguments> out = new ArrayList<>();
        String[] specs = {"int8", "int4", "int2"};
        String[] params = {":group=8,residual=8", ""};
        int[] lens = {1, 9, 81, 729, 4097};
        int[] gqas = {1, 4, 8};
        int[] hds = {64, 128};
        for (String s : specs)
            for (String p : params)
                for (int len : lens)
                    for (int gqa : gqas)
                        for (int hd : hds)
                            if (len < 4097 || (gqa == 4 && !s.equals("int8"))) out.add(Arguments.of(s + p, len, gqa, hd));
        return out.stream();
    }

    @ParameterizedTest(name = "{0} len={1} gqa={2} hd={3}")
    @MethodSource("cases")
    void storeAndAttend(String specText, int len, int gqa, int hd) {
        KvQuantSpec spec = KvQuantSpec.parse(specText);
        int hkv = 2, heads = hkv * gqa, layers = 2, cap = len + 8;
        SplittableRandom rnd = new SplittableRandom(len * 31L + gqa * 7L + hd + specText.hashCode());
        KvCache cc = cpu.newKvCache(layers, hkv, hd, cap, spec);
        KvCache gc = gpu.newKvCache(layers, hkv, hd, cap, spec);
        assertTrue(cc instanceof QuantKvCache && gc instanceof CudaQuantKvCache);
        CudaQuantKvCache g = (CudaQuantKvCache) gc;
        try {
            fill(cpu, gpu, cc, gc, layers, hkv, hd, len, rnd);
            int layer = 1;
            // stored representation: same partition, bit-identical reconstruction (same codes and f16 parameters)
            QuantKvCache q = (QuantKvCache) cc;
            float[] key = new float[hd], val = new float[hd];
            int stepSlots = len > 1000 ? 13 : 1;
            for (int h = 0; h < hkv; h++) {
                assertEquals(q.residentTokens(layer, h), g.residentTokens(layer, h), "window size of head " + h);
                for (int s = 0; s < len; s += stepSlots) {
                    assertEquals(q.bitsOf(layer, h, s), g.bitsOf(layer, h, s), "bits of slot " + s);
                    cpu.readKv(cc, layer, h, s, key, val);
                    CudaQuantKvCache.Stored st = g.readStored(layer, h, s);
                    assertArrayEquals(key, st.key(), "key of slot " + s + " head " + h);
                    assertArrayEquals(val, st.value(), "value of slot " + s + " head " + h);
                    if (!st.window())
                        for (int c = 0; c < hd; c++) {
                            assertTrue(st.keyCodes()[c] <= Quant.levels(spec.bits()));
                            assertTrue(st.valueCodes()[c] <= Quant.levels(spec.bits()));
                        }
                }
            }
            // decode attention: last position, a causal cut, a shuffled slot list
            float[] qd = CudaParityTest.randn(rnd, heads * hd, 1.0);
            attend("decode", cc, gc, layer, qd, 1, heads, hd, new int[]{len - 1}, null);
            attend("decode cut", cc, gc, layer, qd, 1, heads, hd, new int[]{len / 2}, null);
            int[][] sel = new int[hkv][];
            for (int h = 0; h < hkv; h++) {
                List<Integer> l = new ArrayList<>();
                for (int s = h; s < len; s += 3) l.add(s);
                java.util.Collections.shuffle(l, new java.util.Random(h + len));
                sel[h] = l.stream().mapToInt(Integer::intValue).toArray();
            }
            attend("decode selection", cc, gc, layer, qd, 1, heads, hd, new int[]{len - 1}, SlotSelection.of(sel));
            // prefill-style attention: the last rows (n > 1)
            int n = Math.min(len, 5);
            int[] qp = new int[n];
            for (int i = 0; i < n; i++) qp[i] = len - n + i;
            attend("prefill", cc, gc, layer, CudaParityTest.randn(rnd, n * heads * hd, 1.0), n, heads, hd, qp, null);
            // free three slots (a block lane when there is one, and window entries), attend again
            for (int s : new int[]{0, len / 2, len - 1})
                if (s < len && cc.position(layer, 0, s) >= 0) {
                    cc.free(layer, 0, s);
                    gc.free(layer, 0, s);
                }
            attend("after frees", cc, gc, layer, qd, 1, heads, hd, new int[]{len - 1}, null);
        } finally {
            cc.close();
            gc.close();
        }
    }

    /**
     * Appends the same random keys and values (positions 0 .. len-1) to a CPU cache and a CUDA cache of every layer:
     * a large first chunk (several block flushes in one call), then chunks of 7; the slots allocated must agree.
     */
    static void fill(Backend cpu, Backend gpu, KvCache cc, KvCache gc, int layers, int hkv, int hd, int len,
                     SplittableRandom rnd) {
        Staging st = Staging.of(cpu, gpu, Math.max(7, Math.max(1, (2 * len) / 3)), hkv * hd);
        for (int layer = 0; layer < layers; layer++) {
            int done = 0;
            while (done < len) {
                int cnt = done == 0 ? Math.max(1, (2 * len) / 3) : Math.min(7, len - done);
                cnt = Math.min(cnt, len - done);
                int[] pos = new int[cnt];
                for (int i = 0; i < cnt; i++) pos[i] = done + i;
                append(cpu, gpu, cc, gc, layer, pos, rnd, st);
                done += cnt;
            }
        }
    }

    /** k/v tensors of up to {@code rows} tokens on the CPU and the GPU, for {@link #append}. */
    record Staging(Tensor kc, Tensor vc, Tensor kg, Tensor vg) {
        static Staging of(Backend cpu, Backend gpu, int rows, int cols) {
            return new Staging(cpu.allocate(rows, cols), cpu.allocate(rows, cols), gpu.allocate(rows, cols),
                    gpu.allocate(rows, cols));
        }
    }

    /**
     * Appends tokens at positions {@code pos} with the same random keys and values (unit normal, from {@code rnd}) to
     * {@code layer} of a CPU cache and a CUDA cache; the slots the two allocate must agree.
     */
    static void append(Backend cpu, Backend gpu, KvCache cc, KvCache gc, int layer, int[] pos, SplittableRandom rnd,
                       Staging st) {
        int cnt = pos.length, hkv = cc.kvHeads(), hd = cc.headDim();
        float[] k = CudaParityTest.randn(rnd, cnt * hkv * hd, 1.0), v = CudaParityTest.randn(rnd, cnt * hkv * hd, 1.0);
        int[][] cs = new int[hkv][], gs = new int[hkv][];
        for (int h = 0; h < hkv; h++) {
            cs[h] = cc.allocate(layer, h, pos, cnt);
            gs[h] = gc.allocate(layer, h, pos, cnt);
            assertArrayEquals(cs[h], gs[h]);
        }
        cpu.upload(st.kc(), k);
        cpu.upload(st.vc(), v);
        gpu.upload(st.kg(), k);
        gpu.upload(st.vg(), v);
        cpu.storeKv(cc, layer, st.kc(), st.vc(), cs, cnt);
        gpu.storeKv(gc, layer, st.kg(), st.vg(), gs, cnt);
    }

    static void attend(String what, KvCache cc, KvCache gc, int layer, float[] qv, int n, int heads, int hd, int[] qpos,
                       SlotSelection sel) {
        attend(cpu, gpu, what, cc, gc, layer, qv, n, heads, hd, qpos, sel);
    }

    /** {@link #attend} with the caller's backends (for other test classes, whose JVM may not run this one). */
    static void attend(Backend cpu, Backend gpu, String what, KvCache cc, KvCache gc, int layer, float[] qv, int n,
                       int heads, int hd, int[] qpos, SlotSelection sel) {
        Tensor qc = CudaParityTest.act(cpu, n, heads * hd, qv), qg = CudaParityTest.act(gpu, n, heads * hd, qv);
        Tensor oc = cpu.allocate(n, heads * hd), og = gpu.allocate(n, heads * hd);
        cpu.attention(oc, qc, cc, layer, qpos, n, sel, null);
        float[] ref = cpu.download(oc, 0, n);
        int variant = TpNative.tp_kvq_attention_variant();
        try {
            for (int v : new int[] {1, 2, 3, 4}) {  // every kernel of tp_kvq_attention
                assertEquals(0, TpNative.tp_kvq_set_attention_variant(v));
                gpu.attention(og, qg, gc, layer, qpos, n, sel, null);
                CudaParityTest.assertClose(what + " (kernel v" + v + ")", ref, gpu.download(og, 0, n), 1e-8, 2e-5, 1e-4);
            }
            // other split counts of a decode call (tp_kvq_set_splits): many short splits, a few long ones
            int maxSplits = TpNative.tp_kvq_max_splits(), rows = TpNative.tp_kvq_rows_per_split();
            try {
                for (int v : new int[] {3, 4})
                    for (int[] mr : new int[][] {{1024, 32}, {3, 64}}) {
                        assertEquals(0, TpNative.tp_kvq_set_attention_variant(v));
                        assertEquals(0, TpNative.tp_kvq_set_splits(mr[0], mr[1]));
                        gpu.attention(og, qg, gc, layer, qpos, n, sel, null);
                        CudaParityTest.assertClose(what + " (kernel v" + v + ", at most " + mr[0] + " splits of " + mr[1] + ")",
                                ref, gpu.download(og, 0, n), 1e-8, 2e-5, 1e-4);
                    }
            } finally {
                TpNative.tp_kvq_set_splits(maxSplits, rows);
            }
        } finally {
            TpNative.tp_kvq_set_attention_variant(variant);
        }
    }

    @Test
    void bytesAreTheDeviceAllocation() {
        KvQuantSpec spec = KvQuantSpec.parse("int4");
        int layers = 3, hkv = 2, hd = 128, cap = 1000;
        try (CudaQuantKvCache c = (CudaQuantKvCache) gpu.newKvCache(layers, hkv, hd, cap, spec)) {
            int g = spec.group(), ng = hd / spec.valueGroup(hd);
            long rec = 4L * hd + 4L * g * ng + (long) hd * Quant.rowBytes(g, 4) + (long) g * Quant.rowBytes(hd, 4);
            rec = (rec + 15) / 16 * 16;
            assertEquals(rec, TpNative.tp_kvq_block_bytes(hd, g, 4));
            int full = (cap + g - 1) / g, maxBlocks = full + 2;
            long lh = (long) layers * hkv;
            long expect = 2 * lh * (g + spec.residual()) * hd * 4 + lh * maxBlocks * rec + 2 * lh * cap * 4;
            assertEquals(expect, c.bytes());
        }
    }

    /**
     * Scattered evictions (every other quantized token freed, the freed slots refilled, eight rounds) on the CPU
     * cache and the CUDA cache side by side: the CUDA cache compacts partially dead blocks as the CPU does, so after
     * every round the window sizes, every live slot's bit width and stored reconstruction (bit for bit) agree, the
     * block pool has not grown, and attention over the two caches agrees.
     */
    @ParameterizedTest(name = "{0} hd={1}")
    @MethodSource("compactionCases")
    void scatteredEvictionsCompactLikeTheCpu(String specText, int hd) {
        KvQuantSpec spec = KvQuantSpec.parse(specText);
        int layers = 1, hkv = 2, heads = 8, cap = 64, layer = 0;
        SplittableRandom rnd = new SplittableRandom(7);
        KvCache cc = cpu.newKvCache(layers, hkv, hd, cap, spec);
        String switchBefore = System.getProperty("tokenpress.cuda.quantPolicyOps");
        System.setProperty("tokenpress.cuda.quantPolicyOps", "true");  // compaction comes with the policy ops
        try (CudaQuantKvCache g = (CudaQuantKvCache) gpu.newKvCache(layers, hkv, hd, cap, spec)) {
            if (switchBefore == null) System.clearProperty("tokenpress.cuda.quantPolicyOps");
            else System.setProperty("tokenpress.cuda.quantPolicyOps", switchBefore);
            int blocks0 = g.maxBlocks;
            Staging stg = Staging.of(cpu, gpu, 8, hkv * hd);
            int next = 0;
            List<Integer>[] freed = new List[hkv];
            for (int h = 0; h < hkv; h++) freed[h] = new ArrayList<>();
            float[] key = new float[hd], val = new float[hd];
            for (int round = 0; round < 8; round++) {
                // store: first round fills the cache, later rounds refill the freed slots, in chunks of 8
                int todo = round == 0 ? cap : freed[0].size();
                while (todo > 0) {
                    int cnt = Math.min(8, todo);
                    int[] pos = new int[cnt];
                    for (int i = 0; i < cnt; i++) pos[i] = next + i;
                    append(cpu, gpu, cc, g, layer, pos, rnd, stg);
                    next += cnt;
                    todo -= cnt;
                }
                QuantKvCache q = (QuantKvCache) cc;
                for (int h = 0; h < hkv; h++) {
                    String at = "round " + round + " head " + h;
                    assertEquals(q.residentTokens(layer, h), g.residentTokens(layer, h), at + ": window size");
                    for (int s = 0; s < cap; s++) {
                        assertEquals(cc.position(layer, h, s), g.position(layer, h, s), at + ": position of slot " + s);
                        if (cc.position(layer, h, s) < 0) continue;
                        assertEquals(q.bitsOf(layer, h, s), g.bitsOf(layer, h, s), at + ": bits of slot " + s);
                        cpu.readKv(cc, layer, h, s, key, val);
                        CudaQuantKvCache.Stored st = g.readStored(layer, h, s);
                        assertArrayEquals(key, st.key(), at + ": key of slot " + s);
                        assertArrayEquals(val, st.value(), at + ": value of slot " + s);
                    }
                }
                // free every other quantized token of each head
                for (int h = 0; h < hkv; h++) {
                    freed[h].clear();
                    boolean take = true;
                    for (int s = 0; s < cap; s++)
                        if (g.position(layer, h, s) >= 0 && g.bitsOf(layer, h, s) == spec.bits()) {
                            if (take) freed[h].add(s);
                            take = !take;
                        }
                    for (int s : freed[h]) {
                        cc.free(layer, h, s);
                        g.free(layer, h, s);
                    }
                }
            }
            assertEquals(blocks0, g.maxBlocks, "compaction keeps the pool at its initial size");
            float[] qd = CudaParityTest.randn(rnd, heads * hd, 1.0);
            attend("after compactions", cc, g, layer, qd, 1, heads, hd, new int[]{next}, null);
        } finally {
            cc.close();
        }
    }

    static Stream<Arguments> compactionCases() {
        return Stream.of(Arguments.of("int4:group=8,residual=8", 64), Arguments.of("int2:group=8,residual=8", 64),
                Arguments.of("int8:group=8,residual=8", 128));
    }

    @Test
    void unsupportedMethodsAndOpsAreRefused() {
        assertThrows(UnsupportedOpException.class, () -> gpu.newKvCache(1, 1, 64, 16, KvQuantSpec.parse("zipcache")));
        assertThrows(UnsupportedOpException.class, () -> gpu.newKvCache(1, 1, 64, 16, KvQuantSpec.parse("gear")));
        String before = System.getProperty("tokenpress.cuda.quantPolicyOps");
        System.setProperty("tokenpress.cuda.quantPolicyOps", "false"); // the policy ops turned off: refused
        try (KvCache c = gpu.newKvCache(1, 1, 64, 16, KvQuantSpec.parse("int4"))) {
            assertThrows(UnsupportedOpException.class, () -> gpu.readKv(c, 0, 0, 0, new float[64], new float[64]));
        } finally {
            if (before == null) System.clearProperty("tokenpress.cuda.quantPolicyOps");
            else System.setProperty("tokenpress.cuda.quantPolicyOps", before);
        }
        System.setProperty("tokenpress.cuda.quantPolicyOps", "true"); // on (the default): a free slot is a bad argument
        try (KvCache c = gpu.newKvCache(1, 1, 64, 16, KvQuantSpec.parse("int4"))) {
            assertThrows(IllegalArgumentException.class, () -> gpu.readKv(c, 0, 0, 0, new float[64], new float[64]));
        } finally {
            if (before == null) System.clearProperty("tokenpress.cuda.quantPolicyOps");
            else System.setProperty("tokenpress.cuda.quantPolicyOps", before);
        }
        KvCache none = gpu.newKvCache(1, 1, 64, 16, KvQuantSpec.NONE);
        assertTrue(none instanceof CudaKvCache);
        none.close();
    }

    @Test
    void modelInt4Small() {
        model("int4:group=8,residual=8");
    }

    @Test
    void modelInt4Default() {
        model("int4");
    }

    /**
     * The whole model with the tensor-core quantized attention (variant 4, which a backend opened with
     * {@code tokenpress.cuda.quantAttention=v4} selects; groups of 32 are aligned runs, the window the f32 stages).
     */
    @Test
    void modelInt4DefaultKernelV4() {
        String prop = System.getProperty("tokenpress.cuda.quantAttention");
        int before = TpNative.tp_kvq_attention_variant();
        System.setProperty("tokenpress.cuda.quantAttention", "v4");
        try {
            model("int4");
            assertEquals(4, TpNative.tp_kvq_attention_variant(), "the backends of the run chose variant 4");
        } finally {
            if (prop == null) System.clearProperty("tokenpress.cuda.quantAttention");
            else System.setProperty("tokenpress.cuda.quantAttention", prop);
            TpNative.tp_kvq_set_attention_variant(before);
        }
    }

    void model(String specText) {
        KvQuantSpec spec = KvQuantSpec.parse(specText);
        LlamaConfig cfg = ModelWriter.write(tmp.resolve("m"), CudaModelParityTest.config(512, 8, 2, 64, 4), 11, s -> {});
        int prompt = 50, steps = 32, ctx = 128;
        int[] tokens = new int[prompt];
        for (int i = 0; i < prompt; i++) tokens[i] = (i * 37 + 5) % cfg.vocabSize();
        float[][] ref = new float[steps + 1][];
        int[] next = new int[steps];
        try (SafeTensors st = SafeTensors.open(tmp.resolve("m")); Backend c = new CpuBackend()) {
            Llama m = new Llama(cfg, Weights.load(st, cfg, c, null), c, 64);
            KvCache cache = m.newCache(ctx, spec);
            m.prefill(cache, tokens, 0, false, null);
            ref[0] = m.logits();
            for (int s = 0; s < steps; s++) {
                next[s] = m.argmax();
                m.decodeStep(cache, next[s], prompt + s);
                ref[s + 1] = m.logits();
            }
        }
        // pass 0: CUDA graphs (the default: quantized decode steps are captured too), pass 1: eager
        float[][][] runs = new float[2][steps + 1][];
        String status = null;
        int replays = 0;
        for (int pass = 0; pass < 2; pass++) {
            float[][] g = runs[pass];
            try (SafeTensors st = SafeTensors.open(tmp.resolve("m"))) {
                CudaBackend b = CudaBackend.open();
                try {
                    b.setGraphsEnabled(pass == 0);
                    Llama m = new Llama(cfg, Weights.load(st, cfg, b, null), b, 64);
                    KvCache cache = m.newCache(ctx, spec);
                    assertTrue(cache instanceof CudaQuantKvCache);
                    m.prefill(cache, tokens, 0, false, null);
                    g[0] = m.logits();
                    for (int s = 0; s < steps; s++) {
                        m.decodeStep(cache, next[s], prompt + s);
                        g[s + 1] = m.logits();
                    }
                    if (pass == 0) {
                        status = b.graphStatus();
                        replays = b.graphReplays();
                    }
                    cache.close();
                } finally {
                    b.close();
                }
            }
        }
        float[][] got = runs[0];
        double graphVsEager = 0;
        for (int s = 0; s <= steps; s++) graphVsEager = Math.max(graphVsEager, CudaParityTest.nmse(runs[1][s], runs[0][s]));
        System.out.printf("[kvquant-parity] model %s: graph vs eager worst nmse %.3g, %d graph replays%n", specText,
                graphVsEager, replays);
        assertTrue(replays > steps / 2, specText + ": quantized decode steps should replay CUDA graphs: " + status);
        assertTrue(graphVsEager < 1e-10, specText + ": graph replay differs from eager, worst nmse " + graphVsEager);
        double worst = 0;
        for (int s = 0; s <= steps; s++) {
            for (float x : got[s]) assertTrue(Float.isFinite(x), "non-finite logit at step " + s);
            worst = Math.max(worst, CudaParityTest.nmse(ref[s], got[s]));
        }
        System.out.printf("[kvquant-parity] model %s: worst nmse cuda-vs-cpu %.3g; %s%n", specText, worst, status);
        assertTrue(worst < 5e-3, specText + ": CUDA logits differ from CPU, worst nmse " + worst);
    }
}
