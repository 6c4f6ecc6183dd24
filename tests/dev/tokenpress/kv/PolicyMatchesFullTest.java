package dev.tokenpress.kv;

import dev.tokenpress.backend.KvType;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * With a budget that covers the whole context every policy must reproduce full attention bit for bit: the same
 * prompt (prefilled in chunks) and 24 greedy steps give identical logits, and the cache reports the same bytes —
 * with the cache in f32 and in bf16 ({@code -ctk / -ctv bf16}).
 */
class PolicyMatchesFullTest {
    static final int PROMPT = 20, STEPS = 24, CAPACITY = 64;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;
    static int[] prompt;
    static final java.util.Map<KvType, List<float[]>> fullLogits = new java.util.EnumMap<>(KvType.class);
    static int[] greedy;

    @BeforeAll
    static void runFull() {
        config = KvTestSupport.config(6);
        model = KvTestSupport.model(dir, config, 8);
        prompt = KvTestSupport.tokens(PROMPT, config.vocabSize(), 5);
        greedy = new int[STEPS];
        fullLogits.put(KvType.F32, run(KvPolicy.FULL, KvType.F32, true));
        fullLogits.put(KvType.BF16, run(KvPolicy.FULL, KvType.BF16, false));
    }

    /** The bf16 cache is in use: the logits move from the f32 cache's, but by little. */
    @org.junit.jupiter.api.Test
    void bf16StorageRoundsTheCacheOnly() {
        List<float[]> f = fullLogits.get(KvType.F32), b = fullLogits.get(KvType.BF16);
        boolean differs = false;
        for (int i = 0; i < f.size(); i++) {
            differs |= !java.util.Arrays.equals(f.get(i), b.get(i));
            double err = 0, ref = 0;
            for (int j = 0; j < f.get(i).length; j++) {
                double d = f.get(i)[j] - b.get(i)[j];
                err += d * d;
                ref += (double) f.get(i)[j] * f.get(i)[j];
            }
            assertTrue(err / ref < 1e-4, "step " + i + ": normalized MSE " + err / ref + " of the bf16 cache's logits");
        }
        assertTrue(differs, "a bf16 cache should round its keys and values");
    }

    @AfterAll
    static void close() {
        model.close();
    }

    /** Prefills the prompt and decodes STEPS tokens (greedy on the first run, the same tokens afterwards). */
    static List<float[]> run(KvPolicy policy, KvType kv, boolean chooseTokens) {
        model.setPolicy(policy);
        model.backend.setKvTypes(kv, kv);
        List<float[]> out = new ArrayList<>();
        try (KvCache cache = model.newCache(CAPACITY)) {
            long bytes = cache.bytes();
            model.prefill(cache, prompt, 0, false, null);
            out.add(model.logits());
            for (int i = 0; i < STEPS; i++) {
                if (chooseTokens) greedy[i] = model.argmax();
                model.decodeStep(cache, greedy[i], PROMPT + i);
                out.add(model.logits());
            }
            assertEquals(bytes, cache.bytes(), "policies never change the allocated bytes");
            assertEquals(KvTestSupport.cpuBytes(config, CAPACITY, kv.bytes()), cache.bytes());
        } finally {
            model.setPolicy(KvPolicy.FULL);
            model.backend.setKvTypes(null, null);
        }
        return out;
    }

    static java.util.stream.Stream<org.junit.jupiter.params.provider.Arguments> exactSpecs() {
        return java.util.stream.Stream.of(KvType.values()).flatMap(t -> java.util.Arrays.stream(EXACT)
                .map(s -> org.junit.jupiter.params.provider.Arguments.of(t, s)));
    }

    static final String[] EXACT = {
            "full",
            "window:sink=4,recent=64",
            "window:sink=4,budget=1.0",
            "window:sink=4,recent=64,pos_shift=true",
            "h2o:budget=64,recent=8",
            "h2o:budget=1.0,recent=0.5",
            "a2sf:budget=64,recent=4,sink=2,alpha=0.9",
            "tova:budget=64",
            "tova:budget=1.0,heads=kv",
            "snapkv:budget=64,window=8,kernel=3,pool=avg",
            "snapkv:budget=1.0,window=8",
            "keyformer:budget=1.0,recent=0.3,seed=3",
            "knorm:budget=64",
            "keydiff:budget=1.0,sink=2",
            "lagkv:budget=1.0,lag=4,sink=2,interval=0",
            "random:budget=64,seed=5",
            "leverage:budget=1.0,sketch=8",
            "simlayerkv:recent=64",
            "simlayerkv:threshold=1,recent=4",
            "kvzip:budget=1.0",
            "compactor:budget=1.0",
            "h2o:budget=64,recent=8,merge=4",
            "cur:budget=1.0,project=8",
            "snapkv:budget=1.0,window=8,critical=0.5",
            "knorm:budget=64,once=true",
            "duo:heads=1.0,sink=4,recent=64",
            "snapkv:budget=1.0,window=8,ada=0.2,critical=0.5",
            "snapkv:budget=1.0,window=8,rerotate=true",
            "knorm:budget=1.0,recent=2,sink=1,ada=0.2",
            "expected:budget=64,interval=0",
            "expected:budget=1.0,cov=false,vnorm=false,interval=3",
            "h2o:budget=64,recent=8,ada=0.2,interval=4",
            "h2o:budget=1.0,recent=4,pyramid=20",
            "tova:budget=1.0,heads=kv,ada=0",
            "h2o:budget=64,recent=8,chunk=5",
            "snapkv:budget=1.0,window=8,chunk=4",
            "pyramidkv:budget=1.0,window=4,kernel=3",
            "pyramidkv:budget=64,window=4",
            "tidal:k=64,full_layers=2,reselect=4",
            "tidal:k=64,full_layers=2,reselect=4,group=sum",
            "quest:budget=64,page=4,dense_layers=1",
            "tokenselect:k=64,init=2,local=4",
            "tokenselect:k=40,init=2,local=4,reuse=0.9",
            "razor:heads=0.25,echo=0.1,sink=2,recent=64,ratio=0,probe=8,repeats=3",
            "h2o:budget=64,recent=8+tidal:k=64,reselect=4",
            "razor:heads=0.25,sink=2,recent=64,ratio=0,probe=8,repeats=3+tidal:k=64,reselect=4",
            "window:sink=2,recent=64+quest:budget=64,page=4"};

    @ParameterizedTest(name = "{0} {1}")
    @org.junit.jupiter.params.provider.MethodSource("exactSpecs")
    void reproducesFullAttentionExactly(KvType kv, String spec) {
        KvPolicy policy = KvPolicies.parse(spec, config);
        List<float[]> got = run(policy, kv, false), full = fullLogits.get(kv);
        assertEquals(full.size(), got.size());
        for (int i = 0; i < got.size(); i++)
            assertArrayEquals(full.get(i), got.get(i), spec + " (" + kv + " cache): logits differ at step " + i);
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"window:sink=2,recent=6", "h2o:budget=8,recent=2", "a2sf:budget=8,recent=2",
            "tova:budget=8", "tova:budget=8,heads=kv", "snapkv:budget=8,window=4,kernel=3", "keyformer:budget=8,recent=2", "tidal:k=4,reselect=4",
            "knorm:budget=8", "keydiff:budget=8", "lagkv:budget=8,lag=4,interval=0", "random:budget=8", "leverage:budget=8", "simlayerkv:threshold=0,sink=2,recent=4", "kvzip:budget=8,chunk=8", "compactor:budget=10,chunk=4", "h2o:budget=8,recent=2,merge=4", "cur:budget=8", "snapkv:budget=8,window=4,kernel=3,critical=0.5", "knorm:budget=8,once=true", "duo:heads=0.5,sink=2,recent=4", "snapkv:budget=8,window=4,kernel=3,ada=0.2", "expected:budget=8,interval=0", "expected:budget=8,cov=false,interval=4", "h2o:budget=8,recent=2,ada=0.2",
            "pyramidkv:budget=8,window=4,kernel=3", "h2o:budget=8,recent=2,pyramid=4", "quest:budget=8,page=4", "tokenselect:k=4,init=1,local=2", "razor:heads=0,sink=2,recent=4,ratio=0",
            "razor:heads=0.25,sink=2,recent=6,ratio=0,probe=8,repeats=3+tidal:k=4,reselect=4"})
    void aTightBudgetChangesTheLogits(String spec) {
        List<float[]> got = run(KvPolicies.parse(spec, config), KvType.F32, false), full = fullLogits.get(KvType.F32);
        boolean differs = false;
        for (int i = 0; i < got.size() && !differs; i++) differs = !java.util.Arrays.equals(full.get(i), got.get(i));
        assertTrue(differs, spec + " should attend to fewer tokens than full attention");
    }
}
