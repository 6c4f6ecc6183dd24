package dev.tokenpress.model;

import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.nio.file.Path;
import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** The forward pass on generated models: against a naive reference, prefill vs decode, chunking, GQA ratios. */
class LlamaEndToEndTest {
    @TempDir
    Path tmp;

    static LlamaConfig config(String arch, int heads, int kvHeads, int headDim, boolean bias, boolean tied,
                              LlamaConfig.RopeScaling scaling) {
        String type = arch.startsWith("Qwen2") ? "qwen2" : arch.startsWith("Qwen3") ? "qwen3" : arch.startsWith("Mistral") ? "mistral" : "llama";
        return new LlamaConfig(arch, type, 48, 96, 2, heads, kvHeads, headDim, 300, 1e-5f, 10000f, scaling, 512, tied,
                bias, null, 298, List.of(299), "float32");
    }

    static int[] tokens(int n, int vocab, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        int[] t = new int[n];
        for (int i = 0; i < n; i++) t[i] = r.nextInt(vocab);
        return t;
    }

    static Llama load(Path dir, LlamaConfig c, int chunk) {
        SafeTensors st = SafeTensors.open(dir);
        CpuBackend b = new CpuBackend(2);
        return new Llama(c, Weights.load(st, c, b, null), b, chunk);
    }

    @ParameterizedTest(name = "{0} H={1} Hkv={2} hd={3} bias={4} tied={5}")
    @CsvSource({
            "LlamaForCausalLM,4,4,16,false,true",    // GQA 1
            "LlamaForCausalLM,8,2,8,false,false",    // GQA 4
            "MistralForCausalLM,8,1,16,false,false", // GQA 8
            "Qwen2ForCausalLM,4,2,16,true,false"})   // q/k/v biases, untied head
    void forwardMatchesNaiveReferenceAndDecodeMatchesPrefill(String arch, int heads, int kvHeads, int hd, boolean bias, boolean tied) {
        LlamaConfig c = config(arch, heads, kvHeads, hd, bias, tied, arch.startsWith("Llama") && heads == 8
                ? new LlamaConfig.RopeScaling("llama3", 8f, 1f, 4f, 16) : null);
        ModelWriter.write(tmp, c, DType.F32, 7, s -> {});
        int n = 13, v = c.vocabSize();
        int[] toks = tokens(n, v, 11);
        double[][] ref;
        try (SafeTensors st = SafeTensors.open(tmp)) {
            ref = NaiveLlama.logits(c, st, toks);
        }
        try (Llama m = load(tmp, c, 5)) {
            KvCache cache = m.newCache(32);
            float[] full = m.prefill(cache, toks, 0, true, null);
            double worst = 0;
            for (int i = 0; i < n; i++) for (int j = 0; j < v; j++) worst = Math.max(worst, Math.abs(full[i * v + j] - ref[i][j]));
            assertTrue(worst < 1e-4, "prefill vs naive reference: max abs error " + worst);

            // prefill 4 tokens, then decode the rest one at a time: same logits within 1e-4
            cache.clear();
            float[] part = m.prefill(cache, java.util.Arrays.copyOf(toks, 4), 0, true, null);
            for (int i = 0; i < 4 * v; i++) assertEquals(full[i], part[i], 1e-4);
            for (int i = 4; i < n; i++) {
                m.decodeStep(cache, toks[i], i);
                float[] lg = m.logits();
                for (int j = 0; j < v; j++) assertEquals(full[i * v + j], lg[j], 1e-4, "position " + i);
                assertEquals(argmax(full, i * v, v), m.argmax());
            }
        }
    }

    /**
     * Mistral's sliding window (HF: a query at position i sees keys j > i - W): prefill in chunks, token-by-token
     * decoding and a batch all give the naive reference's logits with the window, which differ from full attention.
     */
    @org.junit.jupiter.params.ParameterizedTest(name = "chunk {0}")
    @org.junit.jupiter.params.provider.ValueSource(ints = {1, 4, 16})
    void slidingWindowMatchesTheReference(int chunk) {
        LlamaConfig full = config("MistralForCausalLM", 4, 2, 16, false, false, null);
        LlamaConfig c = new LlamaConfig(full.architecture(), full.modelType(), full.hiddenSize(), full.intermediateSize(),
                full.numLayers(), full.numHeads(), full.numKvHeads(), full.headDim(), full.vocabSize(), full.rmsNormEps(),
                full.ropeTheta(), full.ropeScaling(), full.maxPositionEmbeddings(), full.tieWordEmbeddings(), full.attentionBias(),
                6, full.bosTokenId(), full.eosTokenIds(), full.torchDtype());
        ModelWriter.write(tmp, c, DType.F32, 7, s -> {});
        int n = 17, v = c.vocabSize();
        int[] toks = tokens(n, v, 23);
        double[][] ref, noWindow;
        try (SafeTensors st = SafeTensors.open(tmp)) {
            ref = NaiveLlama.logits(c, st, toks);
            noWindow = NaiveLlama.logits(full, st, toks);
        }
        double differs = 0;
        for (int j = 0; j < v; j++) differs = Math.max(differs, Math.abs(ref[n - 1][j] - noWindow[n - 1][j]));
        assertTrue(differs > 1e-3, "the window changes the last logits: " + differs);
        try (Llama m = load(tmp, c, chunk)) {
            assertEquals(6, m.slidingWindow());
            KvCache cache = m.newCache(32);
            float[] all = m.prefill(cache, toks, 0, true, null);
            double worst = 0;
            for (int i = 0; i < n; i++) for (int j = 0; j < v; j++) worst = Math.max(worst, Math.abs(all[i * v + j] - ref[i][j]));
            assertTrue(worst < 1e-4, "prefill vs the windowed reference: " + worst);
            for (int l = 0; l < c.numLayers(); l++)
                for (int g = 0; g < c.numKvHeads(); g++) assertTrue(cache.occupied(l, g) <= 6, "slots past the window are freed");
            cache.clear();
            m.prefill(cache, java.util.Arrays.copyOf(toks, 3), 0, false, null);
            for (int i = 3; i < n; i++) {
                m.decodeStep(cache, toks[i], i);
                float[] lg = m.logits();
                for (int j = 0; j < v; j++) assertEquals(ref[i][j], lg[j], 1e-4, "decode at " + i);
            }
            try (KvCache b = m.newCache(32)) {
                m.prefill(b, java.util.Arrays.copyOf(toks, 10), 0, false, null);
                assertArrayEquals(new int[0], m.decodeBatch(new Llama.BatchRow[]{new Llama.BatchRow(b, null, toks[10], 10)}));
                float[] lg = m.batchLogits(0);
                for (int j = 0; j < v; j++) assertEquals(ref[10][j], lg[j], 1e-4, "batched decode at 10");
            }
        }
    }

    /** The final hidden states (what embeddings pool) equal the naive reference's, whatever the chunk size. */
    @org.junit.jupiter.params.ParameterizedTest(name = "chunk {0}")
    @org.junit.jupiter.params.provider.ValueSource(ints = {1, 5, 64})
    void hiddenStatesMatchTheReference(int chunk) {
        LlamaConfig c = config("Qwen2ForCausalLM", 4, 2, 16, true, false, null);
        ModelWriter.write(tmp, c, DType.F32, 13, s -> {});
        int[] toks = tokens(11, c.vocabSize(), 8);
        double[][] ref;
        try (SafeTensors st = SafeTensors.open(tmp)) {
            ref = NaiveLlama.hidden(c, st, toks);
        }
        try (Llama m = load(tmp, c, chunk); KvCache cache = m.newCache(16)) {
            m.setPolicy(dev.tokenpress.kv.KvPolicies.parse("window:sink=1,budget=4", c)); // not used: embeddings attend to all
            float[] h = m.hiddenStates(cache, toks);
            int d = c.hiddenSize();
            assertEquals(toks.length * d, h.length);
            double worst = 0;
            for (int i = 0; i < toks.length; i++) for (int j = 0; j < d; j++) worst = Math.max(worst, Math.abs(h[i * d + j] - ref[i][j]));
            assertTrue(worst < 1e-4, "hidden states vs reference: " + worst);
            assertEquals("window:sink=1,budget=4", m.policy().spec(), "the model's policy is back");
            try (KvCache other = m.newCache(16)) {
                m.setPolicy(dev.tokenpress.kv.KvPolicy.FULL);
                m.prefill(other, java.util.Arrays.copyOf(toks, 4), 0, false, null);
                float[] before = m.logits();
                cache.clear();
                m.hiddenStates(cache, toks);
                assertArrayEquals(before, m.logits(), "hiddenStates leaves logits() alone");
            }
        }
    }

    @Test
    void chunkSizeDoesNotChangeLogits() {
        LlamaConfig c = config("LlamaForCausalLM", 4, 2, 16, false, true, null);
        ModelWriter.write(tmp, c, DType.BF16, 3, s -> {});
        int[] toks = tokens(20, c.vocabSize(), 5);
        float[] a, b;
        try (Llama m = load(tmp, c, 1)) {
            a = m.prefill(m.newCache(20), toks, 0, true, null);
        }
        try (Llama m = load(tmp, c, 64)) {
            b = m.prefill(m.newCache(20), toks, 0, true, null);
        }
        for (int i = 0; i < a.length; i++) assertEquals(a[i], b[i], 1e-4);
    }

    @Test
    void greedyDecodingIsDeterministic() {
        LlamaConfig c = config("LlamaForCausalLM", 4, 2, 16, false, true, null);
        ModelWriter.write(tmp, c, DType.BF16, 9, s -> {});
        int[][] runs = new int[2][];
        for (int r = 0; r < 2; r++) {
            try (Llama m = load(tmp, c, 8)) {
                KvCache cache = m.newCache(64);
                int[] prompt = tokens(6, c.vocabSize(), 1);
                m.prefill(cache, prompt, 0, false, null);
                int[] out = new int[30];
                for (int i = 0; i < out.length; i++) {
                    out[i] = m.argmax();
                    m.decodeStep(cache, out[i], prompt.length + i);
                }
                runs[r] = out;
            }
        }
        assertArrayEquals(runs[0], runs[1]);
    }

    @Test
    void kvCacheReportsAllocatedBytes() {
        LlamaConfig c = config("LlamaForCausalLM", 4, 2, 16, false, true, null);
        ModelWriter.write(tmp, c, DType.BF16, 9, s -> {});
        try (Llama m = load(tmp, c, 8)) {
            KvCache cache = m.newCache(100);
            // f32 keys + values + an int position per slot, for 2 layers x 2 KV heads x 100 slots x 16 dims
            assertEquals(2L * 2 * 2 * 100 * 16 * 4 + 2L * 2 * 100 * 4, cache.bytes());
        }
    }

    private static int argmax(float[] x, int off, int len) {
        int best = 0;
        for (int i = 1; i < len; i++) if (x[off + i] > x[off + best]) best = i;
        return best;
    }

    /**
     * The two layer orders of Llama.forward — norm inside the projections and residual inside the o/down
     * projections ({@code fusesNormIntoMatmul}) vs matmul + addRmsnorm — give bit-identical logits on the CPU,
     * whose default implementations of the fused contract calls run the plain ops in the plain order.
     */
    @Test
    void fusedNormLayerOrderIsBitIdentical() {
        LlamaConfig c = config("Qwen2ForCausalLM", 8, 2, 8, true, false, null);
        ModelWriter.write(tmp, c, DType.F32, 5, s -> {});
        int[] toks = tokens(9, c.vocabSize(), 3);
        float[][] got = new float[2][];
        for (int mode = 0; mode < 2; mode++) {
            CpuBackend cpu = new CpuBackend(2);
            boolean fused = mode == 1;
            dev.tokenpress.backend.Backend b = (dev.tokenpress.backend.Backend) java.lang.reflect.Proxy.newProxyInstance(
                    getClass().getClassLoader(), new Class<?>[] {dev.tokenpress.backend.Backend.class}, (proxy, method, args) -> {
                        if (method.getName().equals("fusesNormIntoMatmul")) return fused;
                        if (method.isDefault() && fused && method.getName().matches("rmsnormMatmul.*|matmulAdd"))
                            return java.lang.reflect.InvocationHandler.invokeDefault(proxy, method, args);
                        try {
                            return method.invoke(cpu, args);
                        } catch (java.lang.reflect.InvocationTargetException e) {
                            throw e.getCause();
                        }
                    });
            try (SafeTensors st = SafeTensors.open(tmp); Llama m = new Llama(c, Weights.load(st, c, b, null), b, 4)) {
                KvCache cache = m.newCache(32);
                m.prefill(cache, toks, 0, false, null);
                float[] acc = m.logits().clone();
                for (int s = 0; s < 5; s++) {
                    m.decodeStep(cache, m.argmax(), toks.length + s);
                    float[] l = m.logits();
                    float[] grown = java.util.Arrays.copyOf(acc, acc.length + l.length);
                    System.arraycopy(l, 0, grown, acc.length, l.length);
                    acc = grown;
                }
                got[mode] = acc;
            }
        }
        assertArrayEquals(got[0], got[1], "logits of the two layer orders");
    }
}
