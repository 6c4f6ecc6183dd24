package dev.tokenpress.kv;

import dev.tokenpress.kv.policy.RazorPolicy;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.nio.file.Path;
import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

/** Evicting policies: bounded memory far past the budget, protected sinks and recent windows, slots reused. */
class EvictionTest {
    static final int CHUNK = 4;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;

    @BeforeAll
    static void load() {
        config = KvTestSupport.config(3);
        model = KvTestSupport.model(dir, config, CHUNK);
    }

    @AfterAll
    static void close() {
        model.close();
    }

    /**
     * Decodes 4x past the budget with a cache of budget + CHUNK slots (a prompt longer than the cache included):
     * no error, constant bytes, never more than {@code maxAttended} tokens per head at attention, and the sinks
     * and the newest {@code recent} tokens are always present.
     */
    @ParameterizedTest(name = "{0}")
    @CsvSource(delimiter = ';', value = {
            // spec; budget; tokens attention may see; sinks; recent window guaranteed at attention
            "window:sink=4,recent=12; 16; 16; 4; 12",
            "window:sink=2,budget=16; 16; 16; 2; 14",
            "h2o:budget=16,recent=4; 16; 17; 0; 5",
            "h2o:budget=16,recent=0.5; 16; 17; 0; 9",
            "a2sf:budget=16,recent=4,sink=2,alpha=0.9; 16; 17; 2; 5",
            "tova:budget=16; 16; 17; 0; 1",
            "tova:budget=16,heads=kv; 16; 17; 0; 1",
            "tova:budget=16+tidal:k=6,full_layers=0,reselect=-1; 16; 17; 0; 1",
            "keyformer:budget=16,recent=4,seed=7; 16; 16; 0; 4",
            "knorm:budget=16; 16; 17; 0; 1",
            "keydiff:budget=16,recent=2,sink=1; 16; 17; 1; 3",
            "lagkv:budget=16,lag=4,sink=2,interval=0; 16; 17; 2; 1",
            "lagkv:budget=16,lag=3,sink=1,recent=2,interval=3; 16; 19; 1; 3",
            "random:budget=16,recent=4,sink=1,seed=3; 16; 17; 1; 5",
            "leverage:budget=16,recent=2,sink=1; 16; 17; 1; 3",
            "knorm:budget=16,recent=4,sink=2; 16; 17; 2; 5",
            "expected:budget=16,interval=0; 16; 17; 4; 1",
            "expected:budget=16,recent=3,sink=1,cov=false,interval=2; 16; 18; 1; 4",
            "h2o:budget=16,recent=4,interval=3; 16; 19; 0; 5",
            "h2o:budget=16,recent=4,chunk=4; 16; 17; 0; 5",
            "tova:budget=16,chunk=5,interval=2; 16; 18; 0; 1",
            "expected:budget=16,recent=3,sink=1,chunk=3,interval=0; 16; 17; 1; 4",
            "keyformer:budget=16,recent=0.25,tau_init=0.5,tau_end=3,steps=20; 16; 16; 0; 4",
            "razor:heads=0,sink=2,recent=8,ratio=0; 16; 11; 2; 8",
            "window:sink=2,budget=16+tidal:k=6,full_layers=0,reselect=-1; 16; 16; 2; 14",
            "h2o:budget=16,recent=4+tidal:k=6,full_layers=0,reselect=-1; 16; 17; 0; 5"})
    void decodesFourTimesPastTheBudgetInBoundedMemory(String spec, int budget, int maxAttended, int sinks, int recent) {
        int capacity = budget + CHUNK, promptLen = 30, steps = 4 * budget;
        int[] maxSeen = {0};
        int[] checks = {0};
        KvPolicy policy = KvTestSupport.recording(KvPolicies.parse(spec, config), (cache, layer, n, sel) -> {
            int newest = -1;
            for (int g = 0; g < config.numKvHeads(); g++) {
                int[] pos = KvTestSupport.positions(cache, layer, g);
                newest = Math.max(newest, pos[pos.length - 1]);
            }
            for (int g = 0; g < config.numKvHeads(); g++) {
                int[] pos = KvTestSupport.positions(cache, layer, g);
                if (n == 1) {
                    assertTrue(cache.occupied(layer, g) <= maxAttended, spec + ": " + cache.occupied(layer, g) + " tokens at attention");
                    maxSeen[0] = Math.max(maxSeen[0], cache.occupied(layer, g));
                }
                for (int p = 0; p < Math.min(sinks, newest + 1); p++)
                    assertTrue(Arrays.binarySearch(pos, p) >= 0, spec + ": sink " + p + " evicted");
                for (int p = Math.max(0, newest - recent + 1); p <= newest; p++)
                    assertTrue(Arrays.binarySearch(pos, p) >= 0, spec + ": recent token " + p + " evicted (newest " + newest + ")");
                checks[0]++;
            }
        });
        model.setPolicy(policy);
        try (KvCache cache = model.newCache(capacity)) {
            long bytes = cache.bytes();
            int[] prompt = KvTestSupport.tokens(promptLen, config.vocabSize(), 3);
            model.prefill(cache, prompt, 0, false, null);
            int tok = model.argmax();
            for (int i = 0; i < steps; i++) {
                model.decodeStep(cache, tok, promptLen + i);
                tok = model.argmax();
                for (float v : model.logits()) assertTrue(Float.isFinite(v));
            }
            assertEquals(bytes, cache.bytes(), "memory does not grow");
            assertEquals(KvTestSupport.cpuBytes(config, capacity), cache.bytes());
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) {
                    assertTrue(cache.highWater(l, g) <= capacity);
                    assertTrue(cache.occupied(l, g) <= maxAttended);
                }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        assertEquals(maxAttended, maxSeen[0], spec + ": the cache fills up to its promise");
        assertTrue(checks[0] > steps);
    }

    /** H2O's kept set against a brute-force replay of its rule on the attention's own probability sums. */
    @Test
    void h2oKeepsTheRecentWindowAndTheHeaviestHitters() {
        int budget = 10, recent = 3;
        KvPolicy h2o = KvPolicies.parse("h2o:budget=" + budget + ",recent=" + recent, config);
        int layers = config.numLayers(), kv = config.numKvHeads();
        @SuppressWarnings("unchecked")
        java.util.Map<Integer, Double>[][] score = new java.util.Map[layers][kv];
        for (int l = 0; l < layers; l++) for (int g = 0; g < kv; g++) score[l][g] = new java.util.HashMap<>();
        int[] callStart = {0}, checked = {0};
        KvPolicy replay = new KvPolicy() {
            @Override
            public void attach(Llama m) { h2o.attach(m); }

            @Override
            public void beginPrefill(KvCache c, int s, int t) { h2o.beginPrefill(c, s, t); }

            @Override
            public void endPrefill(KvCache c) { h2o.endPrefill(c); }

            @Override
            public void beforeAppend(KvCache c, int[] positions, int n) {
                h2o.beforeAppend(c, positions, n);
                callStart[0] = positions[0];
                if (positions[0] <= budget || n != 1) return;
                for (int l = 0; l < layers; l++)
                    for (int g = 0; g < kv; g++) {
                        java.util.Map<Integer, Double> sc = score[l][g];
                        java.util.List<Integer> old = new java.util.ArrayList<>();
                        java.util.List<Integer> keep = new java.util.ArrayList<>();
                        for (int p : sc.keySet()) (p >= positions[0] - recent ? keep : old).add(p);
                        old.sort((a, b) -> sc.get(a).equals(sc.get(b)) ? Integer.compare(b, a) : Double.compare(sc.get(b), sc.get(a)));
                        keep.addAll(old.subList(0, budget - recent));
                        int[] want = keep.stream().mapToInt(Integer::intValue).sorted().toArray();
                        assertArrayEquals(want, KvTestSupport.positions(c, l, g), "layer " + l + " head " + g + " before position " + positions[0]);
                        sc.keySet().retainAll(keep);
                        checked[0]++;
                    }
            }

            @Override
            public AttentionStats stats(KvCache c, int layer, int n) { return h2o.stats(c, layer, n); }

            @Override
            public void afterAttention(KvCache c, int layer, int n, AttentionStats st) {
                for (int g = 0; g < kv; g++)
                    for (int s = 0; s < c.highWater(layer, g); s++) {
                        int p = c.position(layer, g, s);
                        if (p < 0) continue;
                        float add = st.probSums[g][s]; // accumulate in f32 like the policy
                        Double prev = score[layer][g].get(p);
                        score[layer][g].put(p, p >= callStart[0] || prev == null ? add : (double) ((float) (double) prev + add));
                    }
                h2o.afterAttention(c, layer, n, st);
            }

            @Override
            public String spec() { return h2o.spec(); }
        };
        model.setPolicy(replay);
        try (KvCache cache = model.newCache(32)) {
            model.prefill(cache, KvTestSupport.tokens(12, config.vocabSize(), 12), 0, false, null);
            int tok = model.argmax();
            for (int i = 0; i < 20; i++) {
                model.decodeStep(cache, tok, 12 + i);
                tok = model.argmax();
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        assertEquals(20 * layers * kv, checked[0]);
    }

    /**
     * TOVA against a replay of its rule: before each decode step every KV head of a layer holds the same positions,
     * the {@code budget} with the largest probability from the previous query summed over the layer's heads.
     */
    @Test
    void tovaKeepsWhatTheLastQueryAttendedToAcrossTheLayer() {
        int budget = 9;
        KvPolicy tova = KvPolicies.parse("tova:budget=" + budget, config);
        int layers = config.numLayers(), kv = config.numKvHeads();
        @SuppressWarnings("unchecked")
        java.util.Map<Integer, Float>[] last = new java.util.Map[layers];
        int[] checked = {0};
        KvPolicy replay = new KvPolicy() {
            @Override
            public void attach(Llama m) { tova.attach(m); }

            @Override
            public void beginPrefill(KvCache c, int s, int t) { tova.beginPrefill(c, s, t); }

            @Override
            public void endPrefill(KvCache c) { tova.endPrefill(c); }

            @Override
            public void beforeAppend(KvCache c, int[] positions, int n) {
                tova.beforeAppend(c, positions, n);
                if (n != 1 || last[0] == null) return;
                for (int l = 0; l < layers; l++) {
                    java.util.Map<Integer, Float> sc = last[l];
                    java.util.List<Integer> all = new java.util.ArrayList<>(sc.keySet());
                    all.sort((a, b) -> sc.get(a).equals(sc.get(b)) ? Integer.compare(b, a) : Float.compare(sc.get(b), sc.get(a)));
                    int[] want = all.subList(0, Math.min(budget, all.size())).stream().mapToInt(Integer::intValue).sorted().toArray();
                    for (int g = 0; g < kv; g++)
                        assertArrayEquals(want, KvTestSupport.positions(c, l, g), "layer " + l + " head " + g + " before " + positions[0]);
                    checked[0]++;
                }
            }

            @Override
            public AttentionStats stats(KvCache c, int layer, int n) { return tova.stats(c, layer, n); }

            @Override
            public void afterAttention(KvCache c, int layer, int n, AttentionStats st) {
                java.util.Map<Integer, Float> sc = new java.util.HashMap<>();
                for (int g = 0; g < kv; g++)
                    for (int s = 0; s < c.highWater(layer, g); s++) {
                        int p = c.position(layer, g, s);
                        if (p >= 0) sc.merge(p, st.probSums[g][s], Float::sum);
                    }
                last[layer] = sc;
                tova.afterAttention(c, layer, n, st);
            }

            @Override
            public String spec() { return tova.spec(); }
        };
        model.setPolicy(replay);
        try (KvCache cache = model.newCache(32)) {
            model.prefill(cache, KvTestSupport.tokens(14, config.vocabSize(), 5), 0, false, null);
            int tok = model.argmax();
            for (int i = 0; i < 20; i++) {
                model.decodeStep(cache, tok, 14 + i);
                tok = model.argmax();
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        assertEquals(20 * layers, checked[0]);
    }

    @Test
    void aRatioBudgetKeepsAFractionOfTheSequence() {
        model.setPolicy(KvPolicies.parse("h2o:budget=0.5,recent=0.25", config));
        try (KvCache cache = model.newCache(128)) {
            int[] prompt = KvTestSupport.tokens(20, config.vocabSize(), 4);
            model.prefill(cache, prompt, 0, false, null);
            int tok = model.argmax();
            for (int i = 0; i < 40; i++) {
                int pos = 20 + i;
                model.decodeStep(cache, tok, pos);
                tok = model.argmax();
                int budget = (int) Math.ceil(0.5 * pos);
                for (int l = 0; l < config.numLayers(); l++)
                    for (int g = 0; g < config.numKvHeads(); g++)
                        assertTrue(cache.occupied(l, g) <= budget + 1, "step " + i + ": " + cache.occupied(l, g) + " > " + (budget + 1));
            }
            assertEquals(31, cache.occupied(0, 0), "ceil(0.5 * 59) + the new token");
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    /**
     * once=true (kvpress's prompt-only presses): the first decode step cuts each head to the same tokens the every-step
     * policy keeps at that step; later steps append without eviction until the cache is full, then only what it
     * cannot hold goes. lagkv's default interval does not delay the one cut.
     */
    @org.junit.jupiter.params.ParameterizedTest
    @org.junit.jupiter.params.provider.ValueSource(strings = {"knorm:budget=10,sink=1", "h2o:budget=10,recent=2", "lagkv:budget=10,lag=4,sink=1"})
    void onceCutsThePromptAtTheFirstDecodeStepOnly(String spec) {
        int[] prompt = KvTestSupport.tokens(30, config.vocabSize(), 12);
        int capacity = 24, steps = 18;
        int[][][] everyStep = new int[config.numLayers()][][];
        model.setPolicy(KvPolicies.parse(spec + (spec.startsWith("lagkv") ? ",interval=0" : ""), config));
        try (KvCache cache = model.newCache(capacity)) { // 30 tokens into 24 slots: the prefill keeps what fits
            model.prefill(cache, prompt, 0, false, null);
            model.decodeStep(cache, 7, 30);
            for (int l = 0; l < config.numLayers(); l++) {
                everyStep[l] = new int[config.numKvHeads()][];
                for (int g = 0; g < config.numKvHeads(); g++) everyStep[l][g] = KvTestSupport.positions(cache, l, g);
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        model.setPolicy(KvPolicies.parse(spec + ",once=true", config));
        try (KvCache cache = model.newCache(capacity)) {
            model.prefill(cache, prompt, 0, false, null);
            model.decodeStep(cache, 7, 30);
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) {
                    int[] held = KvTestSupport.positions(cache, l, g);
                    assertEquals(11, held.length, spec + ": the budget and the new token");
                    assertArrayEquals(everyStep[l][g], held, spec + " layer " + l + " head " + g);
                }
            for (int i = 1; i < steps; i++) {
                model.decodeStep(cache, 7 + i, 30 + i);
                assertEquals(Math.min(11 + i, capacity), cache.occupied(0, 0), spec + " step " + i + ": appends, then only room is made");
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        model.setPolicy(KvPolicies.parse(spec + ",once=true", config));
        try (KvCache roomy = model.newCache(64)) { // room for everything: only the budget cuts (no interval's delay)
            model.prefill(roomy, prompt, 0, false, null);
            assertEquals(30, roomy.occupied(0, 0));
            model.decodeStep(roomy, 7, 30);
            assertEquals(11, roomy.occupied(0, 0), spec);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    @Test
    void snapKvCompressesThePromptOnceAndKeepsTheWindow() {
        model.setPolicy(KvPolicies.parse("snapkv:budget=16,window=4,kernel=3,pool=max", config));
        try (KvCache cache = model.newCache(64)) {
            int[] prompt = KvTestSupport.tokens(40, config.vocabSize(), 6);
            model.prefill(cache, prompt, 0, false, null);
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) {
                    int[] pos = KvTestSupport.positions(cache, l, g);
                    assertEquals(16, pos.length);
                    for (int p = 36; p < 40; p++) assertTrue(Arrays.binarySearch(pos, p) >= 0, "window token " + p);
                }
            int tok = model.argmax();
            for (int i = 0; i < 5; i++) {
                model.decodeStep(cache, tok, 40 + i);
                tok = model.argmax();
            }
            assertEquals(21, cache.occupied(0, 0), "decoding appends without eviction");
            assertEquals(40, cache.highWater(0, 0), "new tokens reuse freed slots");
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    @Test
    void razorFoldsDroppedTokensIntoTheMeanCompensationToken() {
        int promptLen = 24;
        int[] prompt = KvTestSupport.tokens(promptLen, config.vocabSize(), 8);
        float[][] fullKeys = new float[promptLen][], fullValues = new float[promptLen][];
        int hd = config.headDim();
        try (KvCache full = model.newCache(64)) {
            model.prefill(full, prompt, 0, false, null);
            for (int p = 0; p < promptLen; p++) {
                fullKeys[p] = new float[hd];
                fullValues[p] = new float[hd];
                model.backend.readKv(full, 0, 1, p, fullKeys[p], fullValues[p]);
            }
        }
        RazorPolicy razor = (RazorPolicy) KvPolicies.parse("razor:heads=0,sink=2,recent=6,ratio=0", config);
        model.setPolicy(razor);
        try (KvCache cache = model.newCache(64)) {
            model.prefill(cache, prompt, 0, false, null);
            model.decodeStep(cache, model.argmax(), promptLen); // the first append after the prompt compresses it
            int comp = razor.compensationSlot(0, 1);
            assertTrue(comp >= 0);
            // kept: sinks 0,1, the compensation token, positions 19..23 and the new token 24
            int[] pos = KvTestSupport.positions(cache, 0, 1);
            assertEquals(2 + 1 + 5 + 1, pos.length, Arrays.toString(pos));
            assertEquals(18, cache.position(0, 1, comp), "the compensation token sits at the newest dropped position");
            // layer-0 keys depend only on token and position, so the full run's keys are the dropped ones
            float[] k = new float[hd], v = new float[hd];
            model.backend.readKv(cache, 0, 1, comp, k, v);
            for (int i = 0; i < hd; i++) {
                double mk = 0, mv = 0;
                for (int p = 2; p <= 18; p++) {
                    mk += fullKeys[p][i];
                    mv += fullValues[p][i];
                }
                assertEquals(mk / 17, k[i], 1e-5);
                assertEquals(mv / 17, v[i], 1e-5);
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    @Test
    void razorProbeKeepsTheChosenRetrievalHeadsWhole() {
        RazorPolicy razor = (RazorPolicy) KvPolicies.parse("razor:heads=0.5,echo=0.17,sink=1,recent=4,ratio=0,probe=6,repeats=3", config);
        model.setPolicy(razor);
        boolean[][] retrieval = razor.retrievalHeads();
        int count = 0;
        for (boolean[] l : retrieval) for (boolean r : l) if (r) count++;
        // 6 KV heads: round(0.33 * 6) = 2 by induction, round(0.17 * 6) = 1 by echo (the sets may overlap)
        assertTrue(count >= 2 && count <= 3, "retrieval heads: " + count);
        double[][] ind = razor.inductionScores();
        for (double[] l : ind) for (double s : l) assertTrue(s >= 0 && s <= 1 + 1e-6, "induction score " + s);
        try (KvCache cache = model.newCache(64)) {
            model.prefill(cache, KvTestSupport.tokens(20, config.vocabSize(), 9), 0, false, null);
            int tok = model.argmax();
            for (int i = 0; i < 10; i++) {
                model.decodeStep(cache, tok, 20 + i);
                tok = model.argmax();
            }
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++)
                    assertEquals(retrieval[l][g] ? 30 : 1 + 1 + 4, cache.occupied(l, g), "layer " + l + " head " + g);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }
}
