package dev.tokenpress.kv;

import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

/**
 * StreamingLLM's positions inside the cache ({@code window:pos_shift=true}): at every attention call the sinks' keys
 * are their original keys rotated by the number of tokens evicted between the sinks and the window (checked with a
 * double-precision rotation of the keys a run without the shift stores), so a sink sits right before the window;
 * without the option the sinks keep their original keys; before any eviction nothing changes.
 */
class WindowPosShiftTest {
    static final int PROMPT = 30, STEPS = 20, CAPACITY = 64, SINK = 2, BUDGET = 10;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;
    static int[] tokens;

    @BeforeAll
    static void load() {
        config = KvTestSupport.config(3);
        model = KvTestSupport.model(dir, config, 8);
        tokens = KvTestSupport.tokens(PROMPT + STEPS, config.vocabSize(), 5);
    }

    @AfterAll
    static void close() {
        model.close();
    }

    /** One key per (layer, head, position < SINK) at each call: [call] -> key; and the last logits of every step. */
    record Run(List<Map<Long, float[]>> sinkKeys, List<Integer> oldest, List<float[]> logits) {}

    static long key(int l, int g, int p) { return ((long) l << 40) | ((long) g << 20) | p; }

    static Run run(String spec) {
        int hd = config.headDim();
        List<Map<Long, float[]>> keys = new ArrayList<>();
        List<Integer> oldest = new ArrayList<>();
        List<float[]> logits = new ArrayList<>();
        float[] k = new float[hd], v = new float[hd];
        KvPolicy policy = KvTestSupport.recording(KvPolicies.parse(spec, config), (cache, layer, n, sel) -> {
            Map<Long, float[]> m = new HashMap<>();
            int old = Integer.MAX_VALUE;
            for (int g = 0; g < config.numKvHeads(); g++) {
                int[] pos = cache.positions(layer, g);
                for (int s = 0; s < cache.highWater(layer, g); s++) {
                    if (pos[s] >= SINK) old = Math.min(old, pos[s]);
                    if (pos[s] < 0 || pos[s] >= SINK) continue;
                    model.backend.readKv(cache, layer, g, s, k, v);
                    m.put(key(layer, g, pos[s]), k.clone());
                }
            }
            keys.add(m);
            oldest.add(old);
        });
        model.setPolicy(policy);
        try (KvCache cache = model.newCache(CAPACITY)) {
            model.prefill(cache, Arrays.copyOf(tokens, PROMPT), 0, false, null);
            logits.add(model.logits());
            for (int i = 0; i < STEPS; i++) {
                model.decodeStep(cache, tokens[PROMPT + i], PROMPT + i);
                logits.add(model.logits());
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        return new Run(keys, oldest, logits);
    }

    @Test
    void theSinksSitRightBeforeTheWindow() {
        String base = "window:sink=" + SINK + ",budget=" + BUDGET;
        Run plain = run(base), shifted = run(base + ",pos_shift=true");
        Map<Long, float[]> original = new HashMap<>(); // each sink key as first seen: stored before any eviction
        for (Map<Long, float[]> m : plain.sinkKeys()) m.forEach(original::putIfAbsent);
        float[] inv = model.rope().invFreq();
        int hd = config.headDim(), half = hd / 2, checked = 0;
        assertEquals(plain.sinkKeys().size(), shifted.sinkKeys().size());
        for (int call = 0; call < plain.sinkKeys().size(); call++) {
            for (var e : plain.sinkKeys().get(call).entrySet()) // without the option: the original keys throughout
                assertArrayEquals(original.get(e.getKey()), e.getValue(), "call " + call);
            int by = shifted.oldest().get(call) == Integer.MAX_VALUE ? 0 : shifted.oldest().get(call) - SINK;
            for (var e : shifted.sinkKeys().get(call).entrySet()) {
                float[] o = original.get(e.getKey()), got = e.getValue();
                for (int j = 0; j < half; j++) {
                    double angle = (double) by * inv[j], c = Math.cos(angle), s = Math.sin(angle);
                    double a = o[j] * c - o[j + half] * s, b = o[j + half] * c + o[j] * s;
                    assertEquals(a, got[j], 1e-5 * (1 + Math.abs(a)), "call " + call + " shift " + by);
                    assertEquals(b, got[j + half], 1e-5 * (1 + Math.abs(b)), "call " + call + " shift " + by);
                }
                if (by > 0) checked++;
            }
        }
        assertTrue(checked > STEPS, checked + " shifted sink keys checked");
        // the last decode steps attend to the same tokens in both runs, but the sinks now sit elsewhere
        boolean differs = false;
        for (int i = 1; i < plain.logits().size(); i++) differs |= !Arrays.equals(plain.logits().get(i), shifted.logits().get(i));
        assertTrue(differs);
    }

    @Test
    void withoutEvictionTheShiftChangesNothing() {
        Run a = run("window:sink=2,recent=60"), b = run("window:sink=2,recent=60,pos_shift=true");
        for (int i = 0; i < a.logits().size(); i++) assertArrayEquals(a.logits().get(i), b.logits().get(i));
    }
}
