package dev.tokenpress.model;

import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.sample.SamplerChain;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.*;

/**
 * SkipDecode: steps that start at a higher layer give the logits of a double-precision forward pass in which each
 * token enters at its first layer and each layer's keys are the tokens that ran it; skipped layers store nothing;
 * the schedule falls linearly and never raises the layer count; running every layer is greedy decoding.
 */
class SkipDecodeTest {
    @TempDir
    static Path dir;
    static GeneratedModel gen;
    static LlamaConfig config;
    static Llama model;
    static SafeTensors st;

    @BeforeAll
    static void setUp() {
        gen = GeneratedModel.write(dir, 4, false, 29);
        config = gen.config();
        model = gen.model();
        st = gen.st();
    }

    @AfterAll
    static void close() {
        gen.close();
    }

    @Test
    void stepsFromHigherLayersMatchAForwardPassWithTheSameSkips() {
        int[] prompt = {5, 77, 123, 9, 41, 200};
        int[] fed = {17, 250, 3, 88};
        int[] firstOf = {1, 1, 2, 3}; // never lower along the sequence
        int[] tokens = new int[prompt.length + fed.length], first = new int[tokens.length];
        System.arraycopy(prompt, 0, tokens, 0, prompt.length);
        System.arraycopy(fed, 0, tokens, prompt.length, fed.length);
        System.arraycopy(firstOf, 0, first, prompt.length, fed.length);
        double[][] ref = NaiveLlama.logitsSkipping(config, st, tokens, first);
        try (KvCache c = model.newCache(32)) {
            model.prefill(c, prompt, 0, false, null);
            for (int s = 0; s < fed.length; s++) {
                model.decodeStepFrom(c, fed[s], prompt.length + s, firstOf[s]);
                float[] got = model.logits();
                double[] want = ref[prompt.length + s];
                double scale = 0;
                for (double v : want) scale = Math.max(scale, Math.abs(v));
                for (int v = 0; v < got.length; v++)
                    assertEquals(want[v], got[v], 2e-4 * scale + 1e-5, "step " + s + " token " + v);
            }
            // a token stores keys and values only in the layers it ran
            for (int l = 0; l < config.numLayers(); l++) {
                int ran = 0;
                for (int f : firstOf) if (f <= l) ran++;
                assertEquals(prompt.length + ran, c.occupied(l, 0), "layer " + l);
            }
        }
        try (KvCache c = model.newCache(32)) {
            model.prefill(c, prompt, 0, false, null);
            assertThrows(IllegalArgumentException.class, () -> model.decodeStepFrom(c, 1, prompt.length, 4));
            model.setPolicy(KvPolicies.parse("window:sink=2,budget=8", config));
            try {
                assertThrows(UnsupportedOperationException.class, () -> model.decodeStepFrom(c, 1, prompt.length, 2));
            } finally {
                model.setPolicy(KvPolicy.FULL);
            }
        }
    }

    @Test
    void theScheduleFallsLinearlyAndEveryLayerIsGreedyDecoding() {
        SkipDecode.Schedule s = new SkipDecode.Schedule(4, 2, 5);
        int[] want = {4, 3, 3, 2, 2}; // 4 - round(2t / 4): 4 - round(0, 0.5, 1, 1.5, 2) = 4 - (0, 1, 1, 2, 2)
        for (int t = 0; t < 5; t++) assertEquals(want[t], s.activeLayers(t), "t " + t);
        for (int t = 1; t < 40; t++) assertTrue(s.activeLayers(t) <= s.activeLayers(t - 1));
        assertEquals(4, s.activeLayers(0));
        assertEquals(2, s.activeLayers(4));
        assertEquals(2, s.activeLayers(99));
        assertEquals(0, s.firstLayer(0, 4));
        assertEquals(2, s.firstLayer(4, 4));
        assertThrows(IllegalArgumentException.class, () -> new SkipDecode.Schedule(2, 3, 5));
        assertThrows(IllegalArgumentException.class, () -> new SkipDecode.Schedule(5, 1, 5).firstLayer(0, 4));

        int[] prompt = {8, 16, 32, 64};
        int steps = 10;
        int[] greedy = new int[steps];
        try (KvCache c = model.newCache(32)) {
            model.prefill(c, prompt, 0, false, null);
            for (int i = 0; i < steps; i++) {
                greedy[i] = model.argmax();
                if (i + 1 < steps) model.decodeStep(c, greedy[i], prompt.length + i);
            }
        }
        SamplerChain argmax = SamplerChain.create(dev.tokenpress.sample.SamplingOptions.greedy(), config.vocabSize());
        try (KvCache c = model.newCache(32)) {
            SkipDecode.Result r = SkipDecode.generate(model, c, prompt, 0, steps, new SkipDecode.Schedule(4, 4, steps), argmax,
                    Set.of(), t -> true);
            assertArrayEquals(greedy, r.tokens());
            assertEquals(4.0, r.meanLayers());
        }
        try (KvCache c = model.newCache(32)) {
            SkipDecode.Result r = SkipDecode.generate(model, c, prompt, 0, steps, new SkipDecode.Schedule(4, 1, steps), argmax,
                    Set.of(), t -> true);
            assertEquals(steps, r.tokens().length);
            assertEquals(greedy[0], r.tokens()[0], "the first token comes from the prompt's full pass");
            assertEquals(4, r.layersRun()[0]);
            assertEquals(4, r.layersRun()[1]);
            assertTrue(r.meanLayers() < 4);
            assertEquals(prompt.length + steps - 1, c.occupied(3, 0), "the top layer holds every token");
            assertTrue(c.occupied(0, 0) < prompt.length + steps - 1, "the bottom layer misses the skipped ones");
        }
    }
}
