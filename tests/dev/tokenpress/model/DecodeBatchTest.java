package dev.tokenpress.model;

import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.kv.quant.KvQuantSpec;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/**
 * {@link Llama#decodeBatch}: sequences of different lengths decoded together give each sequence's logits of decoding
 * it alone (same cache contents, same policy decisions), whatever joins or leaves the batch between steps.
 */
class DecodeBatchTest {
    @TempDir
    Path tmp;

    static final int SEQS = 4, STEPS = 12;

    private Llama model(int chunk) {
        return model(chunk, "LlamaForCausalLM");
    }

    private Llama model(int chunk, String arch) {
        LlamaConfig c = LlamaEndToEndTest.config(arch, 8, 2, 8, false, false, null);
        ModelWriter.write(tmp, c, DType.F32, 3, s -> {});
        return LlamaEndToEndTest.load(tmp, c, chunk);
    }

    private static int[] prompt(int i, int vocab) {
        return LlamaEndToEndTest.tokens(5 + 7 * i, vocab, 40 + i); // lengths 5, 12, 19, 26
    }

    /** Logits of each step [STEPS][V] of sequence i decoded alone, feeding token (step * 31 + i) % V. */
    private static float[][] alone(Llama m, int i, String policy, KvQuantSpec quant) {
        int v = m.config.vocabSize();
        KvPolicy p = KvPolicies.parse(policy, m.config);
        p.attach(m);
        float[][] out = new float[STEPS][];
        try (KvCache cache = m.newCache(64, quant)) {
            int[] pr = prompt(i, v);
            m.prefillWith(p, cache, pr, 0, null);
            for (int s = 0; s < STEPS; s++) {
                m.decodeBatch(new Llama.BatchRow[]{new Llama.BatchRow(cache, p, (s * 31 + i) % v, pr.length + s)});
                out[s] = m.batchLogits(0);
            }
        }
        return out;
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"full", "h2o:budget=10,recent=3", "window:sink=2,budget=9", "tidal:k=6,full_layers=0,reselect=-1",
            "knorm:budget=8,recent=2", "full|int4", "qwen3/full", "qwen3/h2o:budget=10,recent=3"})
    void aBatchGivesEverySequenceItsOwnLogits(String spec) {
        String arch = spec.startsWith("qwen3/") ? "Qwen3ForCausalLM" : "LlamaForCausalLM"; // Qwen3: q/k norms per row
        spec = spec.substring(spec.indexOf('/') + 1);
        String policy = spec.split("\\|")[0];
        KvQuantSpec quant = spec.contains("|") ? KvQuantSpec.parse(spec.split("\\|")[1]) : KvQuantSpec.NONE;
        try (Llama m = model(SEQS, arch)) {
            int v = m.config.vocabSize();
            float[][][] ref = new float[SEQS][][];
            for (int i = 0; i < SEQS; i++) ref[i] = alone(m, i, policy, quant);
            // the same single-row steps through decodeStep under the model's policy: decodeBatch of one row is decodeStep
            KvPolicy own = KvPolicies.parse(policy, m.config);
            m.setPolicy(own);
            try (KvCache cache = m.newCache(64, quant)) {
                int[] pr = prompt(2, v);
                m.prefill(cache, pr, 0, false, null);
                for (int s = 0; s < STEPS; s++) {
                    m.decodeStep(cache, (s * 31 + 2) % v, pr.length + s);
                    assertArrayEquals(ref[2][s], m.logits(), 1e-6f, spec + ": one row is decodeStep, step " + s);
                }
            } finally {
                m.setPolicy(KvPolicy.FULL);
            }
            // all four together; sequence 3 joins two steps late and sequence 0 leaves after 8 steps
            KvCache[] caches = new KvCache[SEQS];
            KvPolicy[] policies = new KvPolicy[SEQS];
            int[] done = new int[SEQS];
            try {
                for (int i = 0; i < SEQS; i++) {
                    caches[i] = m.newCache(64, quant);
                    policies[i] = KvPolicies.parse(policy, m.config);
                    policies[i].attach(m);
                }
                for (int t = 0; t < STEPS + 2; t++) {
                    java.util.List<Integer> in = new java.util.ArrayList<>();
                    for (int i = 0; i < SEQS; i++) {
                        if (i == 3 && t < 2) continue;
                        if (i == 0 && done[0] == 8) continue;
                        if (done[i] == STEPS) continue;
                        if (done[i] == 0) m.prefillWith(policies[i], caches[i], prompt(i, v), 0, null);
                        in.add(i);
                    }
                    Llama.BatchRow[] rows = new Llama.BatchRow[in.size()];
                    for (int r = 0; r < rows.length; r++) {
                        int i = in.get(r);
                        rows[r] = new Llama.BatchRow(caches[i], policies[i], (done[i] * 31 + i) % v, prompt(i, v).length + done[i]);
                    }
                    m.decodeBatch(rows);
                    float[][] all = m.batchLogitsAll();
                    int[] greedy = m.batchArgmaxAll();
                    for (int r = 0; r < rows.length; r++) {
                        int i = in.get(r);
                        assertArrayEquals(ref[i][done[i]], m.batchLogits(r), 2e-5f, spec + ": sequence " + i + ", step " + done[i]
                                + " in a batch of " + rows.length);
                        assertArrayEquals(m.batchLogits(r), all[r], "one download of the batch: row " + r);
                        assertEquals(m.batchArgmax(r), greedy[r], "argmax of every row at once: row " + r);
                        done[i]++;
                    }
                }
                assertArrayEquals(new int[]{8, STEPS, STEPS, STEPS}, done);
            } finally {
                for (KvCache c : caches) if (c != null) c.close();
            }
        }
    }

    @Test
    void batchesAreCheckedForSizeAndSharedCaches() {
        try (Llama m = model(2); KvCache a = m.newCache(8); KvCache b = m.newCache(8); KvCache c = m.newCache(8)) {
            Llama.BatchRow ra = new Llama.BatchRow(a, null, 1, 0), rb = new Llama.BatchRow(b, null, 2, 0);
            assertTrue(assertThrows(IllegalArgumentException.class, () -> m.decodeBatch(new Llama.BatchRow[]{ra, rb, new Llama.BatchRow(c, null, 3, 0)}))
                    .getMessage().contains("1 to 2 rows"));
            assertTrue(assertThrows(IllegalArgumentException.class, () -> m.decodeBatch(new Llama.BatchRow[]{ra, new Llama.BatchRow(a, null, 2, 1)}))
                    .getMessage().contains("share a KV cache"));
            assertThrows(IllegalArgumentException.class, () -> m.decodeBatch(new Llama.BatchRow[0]));
        }
    }

    /** A cache copied after a prompt (and a freed slot) continues exactly as the original. */
    @Test
    void aCopiedCacheContinuesAsTheOriginal() {
        try (Llama m = model(4); KvCache a = m.newCache(32); KvCache b = m.newCache(32); KvCache small = m.newCache(16)) {
            int[] pr = prompt(2, m.config.vocabSize());
            m.prefill(a, pr, 0, false, null);
            a.free(1, 0, 3);
            m.backend.copyKvCache(a, b);
            for (int s = 0; s < 4; s++) {
                m.decodeStep(a, 5 + s, pr.length + s);
                float[] la = m.logits();
                m.decodeStep(b, 5 + s, pr.length + s);
                assertArrayEquals(la, m.logits(), "step " + s);
            }
            for (int l = 0; l < m.config.numLayers(); l++)
                for (int g = 0; g < m.config.numKvHeads(); g++) {
                    assertEquals(a.occupied(l, g), b.occupied(l, g));
                    assertArrayEquals(a.positions(l, g), b.positions(l, g));
                }
            assertThrows(dev.tokenpress.backend.UnsupportedOpException.class, () -> m.backend.copyKvCache(a, small));
        }
    }

    /** A row whose cache is full is left out before anything is allocated; the other rows run as before. */
    @Test
    void aFullCacheLeavesItsRowOutOfTheStep() {
        try (Llama m = model(4); KvCache small = m.newCache(6); KvCache big = m.newCache(32); KvCache ref = m.newCache(32)) {
            int v = m.config.vocabSize();
            int[] pr = prompt(0, v); // 5 tokens
            m.prefill(small, pr, 0, false, null);
            m.prefill(big, pr, 0, false, null);
            m.prefill(ref, pr, 0, false, null);
            int[] left = m.decodeBatch(new Llama.BatchRow[]{new Llama.BatchRow(small, null, 7, 5), new Llama.BatchRow(big, null, 7, 5)});
            assertArrayEquals(new int[0], left);
            int[] before = small.positions(0, 0).clone();
            left = m.decodeBatch(new Llama.BatchRow[]{new Llama.BatchRow(small, null, 8, 6), new Llama.BatchRow(big, null, 8, 6)});
            assertArrayEquals(new int[]{0}, left, "the full cache's row is left out");
            assertArrayEquals(before, small.positions(0, 0), "and its cache is untouched");
            assertThrows(IllegalStateException.class, () -> m.batchLogits(0));
            float[] got = m.batchLogits(1);
            assertNull(m.batchLogitsAll()[0], "no logits for the row left out");
            assertArrayEquals(got, m.batchLogitsAll()[1]);
            assertArrayEquals(new int[]{-1, m.batchArgmax(1)}, m.batchArgmaxAll());
            m.decodeStep(ref, 7, 5);
            m.decodeStep(ref, 8, 6);
            assertArrayEquals(m.logits(), got, 2e-5f, "the other row ran as usual");
        }
    }

    /** readKvHead reads every slot of a head as readKv reads them one by one (f32 and quantized caches). */
    @Test
    void aHeadReadInBulkEqualsSlotBySlot() {
        try (Llama m = model(4)) {
            for (String q : new String[]{"none", "int4"}) {
                try (KvCache c = m.newCache(32, KvQuantSpec.parse(q))) {
                    m.prefill(c, prompt(3, m.config.vocabSize()), 0, false, null);
                    c.free(1, 1, 2);
                    int hd = c.headDim();
                    float[] keys = new float[32 * hd], values = new float[32 * hd], k = new float[hd], v = new float[hd];
                    for (int l = 0; l < c.layers(); l++)
                        for (int g = 0; g < c.kvHeads(); g++) {
                            m.backend.readKvHead(c, l, g, keys, values);
                            for (int s = 0; s < c.highWater(l, g); s++) {
                                if (c.position(l, g, s) < 0) continue;
                                m.backend.readKv(c, l, g, s, k, v);
                                assertArrayEquals(k, java.util.Arrays.copyOfRange(keys, s * hd, (s + 1) * hd), q + " key " + l + "/" + g + "/" + s);
                                assertArrayEquals(v, java.util.Arrays.copyOfRange(values, s * hd, (s + 1) * hd), q + " value");
                            }
                        }
                }
            }
        }
    }
}
