package dev.tokenpress.kv;

import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Key rerotation after a prompt policy's cut: each head's kept prompt keys are the keys a full-cache prefill stored,
 * rotated from their positions to contiguous ones ending at the prompt's last; values and slot positions unchanged; and
 * decoding then differs from the same cut without rerotation.
 */
class KeyRerotationTest {
    static final int PROMPT = 40, CAPACITY = 96;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;
    static int[] prompt;
    static KvTestSupport.Prefilled full;

    @BeforeAll
    static void setUp() {
        config = KvTestSupport.config(2);
        model = KvTestSupport.model(dir, config, 8);
        prompt = KvTestSupport.tokens(PROMPT, config.vocabSize(), 51);
        full = KvTestSupport.prefilled(model, config, prompt, CAPACITY);
    }

    @AfterAll
    static void close() {
        model.close();
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"snapkv:budget=16,window=4,kernel=3", "kvzip:budget=12,sink=2", "compactor:budget=14,sink=2,sink_end=2,chunk=8"})
    void keptKeysMoveToContiguousPositions(String spec) {
        int hd = config.headDim();
        float[] next = new float[2];
        float[][] logits = new float[2][];
        for (int run = 0; run < 2; run++) {
            model.setPolicy(KvPolicies.parse(spec + (run == 1 ? ",rerotate=true" : ""), config));
            try (KvCache c = model.newCache(CAPACITY)) {
                model.prefill(c, prompt, 0, false, null);
                if (run == 1)
                    for (int l = 0; l < config.numLayers(); l++)
                        for (int g = 0; g < config.numKvHeads(); g++) {
                            int[] held = KvTestSupport.positions(c, l, g);
                            assertTrue(held.length < PROMPT, "the policy cut the prompt");
                            float[] k = new float[hd], v = new float[hd];
                            double[] want = new double[hd];
                            for (int j = 0; j < held.length; j++) {
                                int p = held[j]; // a fresh cache: slot = position
                                model.backend.readKv(c, l, g, p, k, v);
                                model.rope().rotate(full.keys()[l][g], p * hd, PROMPT - held.length + j - p, want);
                                for (int e = 0; e < hd; e++) {
                                    assertEquals(want[e], k[e], 1e-5 * Math.max(1, Math.abs(want[e])), spec + " layer " + l + " head " + g + " position " + p);
                                    assertEquals(full.values()[l][g][p * hd + e], v[e], "values stay");
                                }
                            }
                        }
                model.decodeStep(c, 7, PROMPT);
                logits[run] = model.logits();
            } finally {
                model.setPolicy(KvPolicy.FULL);
            }
        }
        assertFalse(java.util.Arrays.equals(logits[0], logits[1]), spec + ": the moved keys change what decoding sees");
    }
}
