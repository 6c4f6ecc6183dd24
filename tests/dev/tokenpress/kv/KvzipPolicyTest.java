package dev.tokenpress.kv;

import dev.tokenpress.kv.policy.KvzipPolicy;
import dev.tokenpress.kv.quant.KvQuantSpec;
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

import static org.junit.jupiter.api.Assertions.*;

/**
 * KVzip: the reconstruction scores equal a straightforward computation from a fresh cache holding the prompt and the
 * repeat pass, the cut keeps the best-scored pairs within the budget (globally or per layer), and the pass leaves
 * the cache and the logits as they were.
 */
class KvzipPolicyTest {
    static final int PROMPT = 40, CAPACITY = 160;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;
    static int[] prompt;

    @BeforeAll
    static void setUp() {
        config = KvTestSupport.config(4);
        model = KvTestSupport.model(dir, config, 8);
        prompt = KvTestSupport.tokens(PROMPT, config.vocabSize(), 11);
    }

    @AfterAll
    static void close() {
        model.close();
    }

    private static KvzipPolicy kvzip(String spec) {
        return (KvzipPolicy) KvPolicies.parse(spec, config);
    }

    /** Prefills the prompt under the policy into a new cache (closed by the caller). */
    private static KvCache prefill(KvPolicy p, int capacity) {
        model.setPolicy(p);
        KvCache c = model.newCache(capacity);
        model.prefill(c, prompt, 0, false, null);
        return c;
    }

    @org.junit.jupiter.params.ParameterizedTest(name = "plus={0}")
    @org.junit.jupiter.params.provider.ValueSource(booleans = {false, true})
    void scoresEqualTheMaxAttentionOfTheRepeatPassOverSinksChunkAndPass(boolean plus) {
        int chunk = 16, sink = 2;
        KvzipPolicy p = kvzip("kvzip:budget=0.5,sink=" + sink + ",chunk=" + chunk + ",plus=" + plus);
        try (KvCache c = prefill(p, CAPACITY)) {
            assertEquals(3, p.passes(), "40 prompt tokens in chunks of 16");
            double[][][] ref = new double[config.numLayers()][config.numKvHeads()][PROMPT];
            int[] first = KvTestSupport.words(KvzipPolicy.FIRST, config.vocabSize());
            int[] later = KvTestSupport.words(KvzipPolicy.LATER, config.vocabSize());
            int[] suffix = KvTestSupport.words(KvzipPolicy.SUFFIX, config.vocabSize());
            for (int start = 0, i = 0; start < PROMPT; start += chunk, i++) {
                int end = Math.min(PROMPT, start + chunk);
                int[] lead = i == 0 ? first : concat(later, Arrays.copyOfRange(prompt, Math.max(0, start - 8), start));
                int[] pass = concat(concat(lead, suffix), Arrays.copyOfRange(prompt, start, end));
                reference(concat(prompt, pass), start, end, Math.min(sink, start), ref, plus ? outputProjections() : null);
            }
            int compared = 0;
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++)
                    for (int s = 0; s < PROMPT; s++) {
                        if (s < sink) continue; // sinks are not candidates (their chunk scores them, the cut never drops them)
                        assertEquals(ref[l][g][s], p.score(l, g, s), 2e-5 + 1e-4 * ref[l][g][s], "layer " + l + " head " + g + " slot " + s);
                        assertTrue(ref[l][g][s] > 0);
                        compared++;
                    }
            assertEquals(config.numLayers() * config.numKvHeads() * (PROMPT - sink), compared);
        }
    }

    /** W_o of every layer from the checkpoint, [layer][D * H*hd]. */
    private static float[][] outputProjections() {
        float[][] wo = new float[config.numLayers()][];
        try (dev.tokenpress.io.SafeTensors st = dev.tokenpress.io.SafeTensors.open(dir)) {
            for (int l = 0; l < wo.length; l++) wo[l] = st.get("model.layers." + l + ".self_attn.o_proj.weight").toFloats();
        }
        return wo;
    }

    /**
     * The reference: the whole sequence (prompt + pass) prefilled densely in a fresh cache (slot = position); for each
     * pass query and q-head, the softmax of its scaled raw q·k over the sinks, the chunk [start, end) and the pass up
     * to the query, maximised into ref per KV head. With wo (KVzip+), each probability is first divided by the row's
     * attention-input norm and multiplied by |v·W_o[h]|₂ of the key's value, computed directly.
     */
    private static void reference(int[] seq, int start, int end, int sinks, double[][][] ref, float[][] wo) {
        int heads = config.numHeads(), group = config.groupSize(), hd = config.headDim(), width = heads * hd, d = config.hiddenSize();
        double scale = 1.0 / Math.sqrt(config.headDim());
        KvPolicy watch = KvTestSupport.recording(KvPolicy.FULL, (c, l, n, s) -> {}, (c, layer, q, positions, n) -> {
            float[][] raw = new float[heads][c.capacity()];
            float[] hn = wo == null ? null : model.attentionInputNorms(layer, n);
            double[][] vn = new double[heads][end];
            if (wo != null)
                for (int h = 0; h < heads; h++)
                    for (int s = start; s < end; s++) {
                        float[] k = new float[hd], v = new float[hd];
                        model.backend.readKv(c, layer, h / group, s, k, v);
                        double sum = 0;
                        for (int r = 0; r < d; r++) {
                            double y = 0;
                            for (int e = 0; e < hd; e++) y += (double) v[e] * wo[layer][r * width + h * hd + e];
                            sum += y * y;
                        }
                        vn[h][s] = Math.sqrt(sum);
                    }
            for (int r = 0; r < n; r++) {
                int qp = positions[r];
                if (qp < PROMPT) continue;
                model.backend.queryKeyScores(raw, q, r, qp, c, layer);
                for (int h = 0; h < heads; h++) {
                    double max = Double.NEGATIVE_INFINITY, sum = 0;
                    for (int s = 0; s <= qp; s++) if (in(s, sinks, start, end)) max = Math.max(max, raw[h][s] * scale);
                    for (int s = 0; s <= qp; s++) if (in(s, sinks, start, end)) sum += Math.exp(raw[h][s] * scale - max);
                    for (int s = start; s < end; s++) {
                        double pr = Math.exp(raw[h][s] * scale - max) / sum;
                        if (wo != null) pr = pr * vn[h][s] / hn[r];
                        ref[layer][h / group][s] = Math.max(ref[layer][h / group][s], pr);
                    }
                }
            }
        });
        model.setPolicy(watch);
        try (KvCache c = model.newCache(seq.length)) {
            model.prefill(c, seq, 0, false, null);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    private static boolean in(int pos, int sinks, int start, int end) {
        return pos < sinks || pos >= start && pos < end || pos >= PROMPT;
    }

    /** Layer 0's attention input is rmsnorm(embedding) times the input norm weight: its norms, from the checkpoint. */
    @Test
    void attentionInputNormsAreThoseOfTheNormedHiddenStates() {
        int d = config.hiddenSize();
        float[] embed, norm;
        try (dev.tokenpress.io.SafeTensors st = dev.tokenpress.io.SafeTensors.open(dir)) {
            embed = st.get("model.embed_tokens.weight").toFloats();
            norm = st.get("model.layers.0.input_layernorm.weight").toFloats();
        }
        int[] checked = {0};
        model.setPolicy(KvTestSupport.recording(KvPolicy.FULL, (c, l, n, sel) -> {}, (c, layer, q, positions, n) -> {
            if (layer != 0) return;
            float[] got = model.attentionInputNorms(0, n);
            for (int r = 0; r < n; r++) {
                int t = prompt[positions[r]];
                double ss = 0, h2 = 0;
                for (int i = 0; i < d; i++) ss += (double) embed[t * d + i] * embed[t * d + i];
                double inv = 1 / Math.sqrt(ss / d + config.rmsNormEps());
                for (int i = 0; i < d; i++) {
                    double h = embed[t * d + i] * inv * norm[i];
                    h2 += h * h;
                }
                assertEquals(Math.sqrt(h2), got[r], 1e-4 * Math.sqrt(h2), "row " + r);
                checked[0]++;
            }
        }));
        try (KvCache c = model.newCache(CAPACITY)) {
            model.prefill(c, prompt, 0, false, null);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        assertEquals(PROMPT, checked[0]);
    }

    /**
     * first=true (kvzip, compactor, snapkv): the sequence's first prompt is cut, a later prompt is appended whole;
     * without it the later prompt is cut too.
     */
    @org.junit.jupiter.params.ParameterizedTest(name = "{0}")
    @org.junit.jupiter.params.provider.ValueSource(strings = {"kvzip:budget=0.5,sink=2", "compactor:budget=0.5,sink=2,sink_end=2,chunk=8",
            "snapkv:budget=0.5,window=4,kernel=3"})
    void firstCompressesOnlyTheFirstPrompt(String spec) {
        int[] question = KvTestSupport.tokens(12, config.vocabSize(), 77);
        long[] growth = new long[2];
        for (int run = 0; run < 2; run++) {
            model.setPolicy(KvPolicies.parse(spec + (run == 1 ? ",first=true" : ""), config));
            try (KvCache c = model.newCache(CAPACITY)) {
                model.prefill(c, prompt, 0, false, null);
                long before = occupied(c);
                assertTrue(before < (long) config.numLayers() * config.numKvHeads() * PROMPT, spec + ": the first prompt is cut");
                model.prefill(c, question, PROMPT, false, null);
                growth[run] = occupied(c) - before;
            } finally {
                model.setPolicy(KvPolicy.FULL);
            }
        }
        long whole = (long) config.numLayers() * config.numKvHeads() * question.length;
        assertEquals(whole, growth[1], spec + ",first=true appends the second prompt whole");
        assertTrue(growth[0] < whole, spec + " alone cuts the second prompt too");
    }

    private static long occupied(KvCache c) {
        long n = 0;
        for (int l = 0; l < config.numLayers(); l++) for (int g = 0; g < config.numKvHeads(); g++) n += c.occupied(l, g);
        return n;
    }

    @Test
    void theCutKeepsTheBestScoredPairsOverAllLayersAndHeads() {
        KvzipPolicy p = kvzip("kvzip:budget=0.25,sink=3");
        try (KvCache c = prefill(p, CAPACITY)) {
            assertEquals(1, p.passes());
            int keep = (int) Math.ceil(0.25 * PROMPT), kept = 0;
            float worstKept = Float.POSITIVE_INFINITY, bestDropped = Float.NEGATIVE_INFINITY;
            List<Integer> perHead = new ArrayList<>();
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) {
                    int[] held = KvTestSupport.positions(c, l, g);
                    perHead.add(held.length);
                    kept += held.length;
                    for (int s = 0; s < 3; s++) assertTrue(Arrays.binarySearch(held, s) >= 0, "sink " + s + " kept");
                    for (int pos = 3; pos < PROMPT; pos++) { // fresh cache: slot = position
                        float sc = p.score(l, g, pos);
                        if (Arrays.binarySearch(held, pos) >= 0) worstKept = Math.min(worstKept, sc);
                        else bestDropped = Math.max(bestDropped, sc);
                    }
                    assertEquals(c.occupied(l, g), held.length);
                    assertTrue(c.highWater(l, g) <= PROMPT, "the pass's slots are freed");
                }
            assertEquals(config.numLayers() * config.numKvHeads() * keep, kept, "L x G x budget pairs stay");
            assertTrue(worstKept >= bestDropped, "one threshold over all heads: kept " + worstKept + " vs dropped " + bestDropped);
            assertTrue(perHead.stream().distinct().count() > 1, "heads keep different counts: " + perHead);
        }
    }

    @Test
    void layerwiseKeepsTheBudgetInEveryLayer() {
        KvzipPolicy p = kvzip("kvzip:budget=10,sink=1,layerwise=true");
        try (KvCache c = prefill(p, CAPACITY)) {
            for (int l = 0; l < config.numLayers(); l++) {
                int kept = 0;
                float worstKept = Float.POSITIVE_INFINITY, bestDropped = Float.NEGATIVE_INFINITY;
                for (int g = 0; g < config.numKvHeads(); g++) {
                    int[] held = KvTestSupport.positions(c, l, g);
                    kept += held.length;
                    for (int pos = 1; pos < PROMPT; pos++) {
                        float sc = p.score(l, g, pos);
                        if (Arrays.binarySearch(held, pos) >= 0) worstKept = Math.min(worstKept, sc);
                        else bestDropped = Math.max(bestDropped, sc);
                    }
                }
                assertEquals(config.numKvHeads() * 10, kept, "layer " + l);
                assertTrue(worstKept >= bestDropped, "layer " + l);
            }
        }
    }

    @Test
    void observingLeavesTheCacheAndTheLogitsAsTheyWere() {
        int[] extra = KvTestSupport.tokens(30, config.vocabSize(), 3);
        List<float[]> plain = decode(false, extra), observed = decode(true, extra);
        for (int i = 0; i < plain.size(); i++) assertArrayEquals(plain.get(i), observed.get(i), "step " + i);
    }

    private static List<float[]> decode(boolean observe, int[] extra) {
        List<float[]> out = new ArrayList<>();
        int[] seen = {0};
        try (KvCache c = prefill(KvPolicy.FULL, CAPACITY)) {
            out.add(model.logits());
            if (observe) {
                KvPolicy count = new KvPolicy() {
                    @Override
                    public void beforeAttention(KvCache cache, int layer, dev.tokenpress.backend.Tensor q, int[] positions, int n) { seen[0] += n; }

                    @Override
                    public String spec() { return "count"; }
                };
                model.observe(count, c, extra, PROMPT);
                assertEquals(extra.length * config.numLayers(), seen[0], "the hooks see every row in every layer");
                assertArrayEquals(out.get(0), model.logits(), "no logits from the pass");
                for (int l = 0; l < config.numLayers(); l++)
                    for (int g = 0; g < config.numKvHeads(); g++) {
                        assertEquals(PROMPT, c.occupied(l, g));
                        assertEquals(PROMPT, c.highWater(l, g));
                    }
            }
            for (int i = 0; i < 6; i++) {
                model.decodeStep(c, (7 * i + 5) % 290, PROMPT + i);
                out.add(model.logits());
            }
        }
        return out;
    }

    /**
     * The pass reports its progress to the model's task progress: task "kvzip", the prompt tokens repeated so far of
     * the prompt's, from 0 to the whole prompt without going back, inside each pass too (the model runs 8-token chunks).
     */
    @Test
    void theReconstructionPassReportsItsProgress() {
        KvzipPolicy p = kvzip("kvzip:budget=0.5,sink=2");
        int lead = KvTestSupport.words(KvzipPolicy.FIRST, config.vocabSize()).length + 1;
        java.util.List<long[]> seen = new java.util.ArrayList<>();
        model.setTaskProgress((task, done, total) -> {
            assertEquals(KvzipPolicy.PROGRESS_TASK, task);
            seen.add(new long[] {done, total});
        });
        try (KvCache c = prefill(p, PROMPT + lead + 20)) { // several passes of at most 20 prompt tokens
            assertTrue(p.passes() >= 2, "passes " + p.passes());
            assertEquals(0, seen.get(0)[0]);
            assertEquals(PROMPT, seen.get(seen.size() - 1)[0], "ends with the whole prompt");
            for (int i = 0; i < seen.size(); i++) {
                assertEquals(PROMPT, seen.get(i)[1], "total");
                if (i > 0) assertTrue(seen.get(i)[0] >= seen.get(i - 1)[0], "done goes back at update " + i);
            }
            assertTrue(seen.size() > p.passes() + 1, "updates inside the passes: " + seen.size());
        } finally {
            model.setTaskProgress(null);
            model.setPolicy(KvPolicy.FULL);
        }
    }

    @Test
    void aChunkShrinksToTheFreeSlotsAndTooLittleRoomIsAClearError() {
        KvzipPolicy p = kvzip("kvzip:budget=0.5,sink=2");
        int lead = KvTestSupport.words(KvzipPolicy.FIRST, config.vocabSize()).length + 1; // + the suffix
        int laterLead = KvTestSupport.words(KvzipPolicy.LATER, config.vocabSize()).length + KvzipPolicy.TAIL + 1;
        try (KvCache c = prefill(p, PROMPT + lead + 20)) { // room for 20 prompt tokens in the first pass
            int perLater = lead + 20 - laterLead;
            assertEquals(1 + (PROMPT - 20 + perLater - 1) / perLater, p.passes());
        }
        assertEquals(Math.max(lead, laterLead) + PROMPT, p.scratchSlots(PROMPT), "a whole-prompt pass once the prompts are known");
        KvzipPolicy tight = kvzip("kvzip:budget=0.5");
        KvCacheFullException e = assertThrows(KvCacheFullException.class, () -> prefill(tight, PROMPT + 3).close());
        assertTrue(e.getMessage().contains("reconstruction") && e.getMessage().contains("-c"), e.getMessage());
        model.setPolicy(KvPolicy.FULL);
    }

    @Test
    void aBudgetCoveringThePromptRunsNoPassAndAQuantizedCacheComposes() {
        KvzipPolicy all = kvzip("kvzip:budget=1.0");
        try (KvCache c = prefill(all, CAPACITY)) {
            assertEquals(0, all.passes());
            assertEquals(0, all.scratchSlots(PROMPT));
            for (int g = 0; g < config.numKvHeads(); g++) assertEquals(PROMPT, c.occupied(0, g));
        }
        KvzipPolicy p = kvzip("kvzip:budget=0.5,sink=2");
        model.setPolicy(p);
        try (KvCache c = model.newCache(CAPACITY, KvQuantSpec.parse("int4:group=8,residual=8"))) {
            model.prefill(c, prompt, 0, false, null);
            long kept = 0;
            for (int l = 0; l < config.numLayers(); l++) for (int g = 0; g < config.numKvHeads(); g++) kept += c.occupied(l, g);
            assertEquals((long) config.numLayers() * config.numKvHeads() * PROMPT / 2, kept);
            for (int i = 0; i < 4; i++) {
                model.decodeStep(c, 3 + i, PROMPT + i);
                for (float x : model.logits()) assertTrue(Float.isFinite(x));
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    @Test
    void withoutATokenizerOrPromptsItSaysWhatIsMissing() {
        model.setTextEncoder(null);
        try {
            KvzipPolicy p = kvzip("kvzip:budget=0.5");
            IllegalStateException e = assertThrows(IllegalStateException.class, () -> prefill(p, CAPACITY).close());
            assertTrue(e.getMessage().contains("tokenizer"), e.getMessage());
            KvzipPolicy given = kvzip("kvzip:budget=0.5").setPrompts(new int[]{5, 6}, new int[]{7}, new int[]{8});
            try (KvCache c = prefill(given, CAPACITY)) {
                assertEquals(1, given.passes());
                assertEquals(config.numLayers() * config.numKvHeads() * PROMPT / 2,
                        java.util.stream.IntStream.range(0, config.numLayers() * config.numKvHeads())
                                .map(i -> c.occupied(i / config.numKvHeads(), i % config.numKvHeads())).sum());
            }
        } finally {
            model.setTextEncoder(text -> KvTestSupport.words(text, config.vocabSize()));
            model.setPolicy(KvPolicy.FULL);
        }
    }

    private static int[] concat(int[] a, int[] b) {
        int[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }
}
