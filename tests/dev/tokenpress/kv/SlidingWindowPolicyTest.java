package dev.tokenpress.kv;

import dev.tokenpress.kv.policy.RazorPolicy;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/** KV policies on a model with a sliding window (8): the window drops first, then the policy budgets what stays. */
class SlidingWindowPolicyTest {
    @TempDir
    Path dir;

    static LlamaConfig windowed() {
        return new LlamaConfig("MistralForCausalLM", "mistral", 64, 96, 2, 4, 2, 16, 300, 1e-5f, 10000f, null, 4096,
                false, false, 8, 298, List.of(299), "float32");
    }

    /** A budget of 6 under a window of 8: every step attends to 7 tokens (budget + the new one), none wasted. */
    @Test
    void thePolicyBudgetsWhatTheWindowKeeps() {
        LlamaConfig c = windowed();
        for (String spec : new String[]{"h2o:budget=6,recent=2", "knorm:budget=6", "keydiff:budget=6"}) {
            try (Llama m = KvTestSupport.model(dir.resolve(spec.substring(0, 3)), c, 4)) {
                int[] seen = new int[64];
                int[] steps = {0};
                boolean[] decoding = {false}; // prompt tokens past the window also run one at a time
                KvPolicy p = KvTestSupport.recording(KvPolicies.parse(spec, c), (cache, layer, n, sel) -> {
                    if (decoding[0] && layer == 0) seen[steps[0]++] = cache.occupied(0, 0);
                });
                m.setPolicy(p);
                try (KvCache cache = m.newCache(32)) {
                    int[] prompt = KvTestSupport.tokens(10, c.vocabSize(), 2);
                    m.prefill(cache, prompt, 0, false, null);
                    decoding[0] = true;
                    for (int i = 0; i < 20; i++) m.decodeStep(cache, (i * 13 + 1) % 290, 10 + i);
                }
                assertEquals(20, steps[0]);
                for (int i = 0; i < steps[0]; i++) assertEquals(7, seen[i], spec + ": step " + i);
            }
        }
    }

    /**
     * KVzip under a window of 8: its reconstruction pass keeps the window's tokens (the pass attends past the window,
     * nothing is dropped for it), and the cut brings what the window left of the prompt to the budget, not below it.
     */
    @Test
    void kvzipCutsWhatTheWindowLeftToTheBudget() {
        LlamaConfig c = windowed();
        try (Llama m = KvTestSupport.model(dir.resolve("kvzip"), c, 4)) {
            dev.tokenpress.kv.policy.KvzipPolicy p = (dev.tokenpress.kv.policy.KvzipPolicy) KvPolicies.parse("kvzip:budget=6,sink=0", c);
            m.setPolicy(p);
            try (KvCache cache = m.newCache(64)) {
                m.prefill(cache, KvTestSupport.tokens(20, c.vocabSize(), 4), 0, false, null);
                assertEquals(1, p.passes());
                int kept = 0;
                for (int l = 0; l < c.numLayers(); l++)
                    for (int g = 0; g < c.numKvHeads(); g++) {
                        for (int pos : KvTestSupport.positions(cache, l, g)) assertTrue(pos > 20 - 8 - 1 && pos < 20, "window and prompt: " + pos);
                        kept += cache.occupied(l, g);
                    }
                assertEquals(c.numLayers() * c.numKvHeads() * 6, kept, "the budget, on average, of the 8 prompt tokens the window left");
                for (int i = 0; i < 4; i++) m.decodeStep(cache, 5 + i, 20 + i);
            }
        }
    }

    /** Compactor under a window of 8: it scores what the window left of the prompt and keeps the budget of it, sinks included. */
    @Test
    void compactorScoresWhatTheWindowLeft() {
        LlamaConfig c = windowed();
        try (Llama m = KvTestSupport.model(dir.resolve("compactor"), c, 4)) {
            m.setPolicy(KvPolicies.parse("compactor:budget=5,sink=2,sink_end=2,chunk=4", c));
            try (KvCache cache = m.newCache(64)) {
                m.prefill(cache, KvTestSupport.tokens(20, c.vocabSize(), 5), 0, false, null);
                for (int l = 0; l < c.numLayers(); l++)
                    for (int g = 0; g < c.numKvHeads(); g++) {
                        int[] held = KvTestSupport.positions(cache, l, g);
                        assertEquals(5, held.length, "layer " + l + " head " + g);
                        assertTrue(held[0] >= 12, "the window's tokens: " + java.util.Arrays.toString(held));
                        assertEquals(18, held[3]);
                        assertEquals(19, held[4], "the end sinks stay");
                    }
                for (int i = 0; i < 4; i++) m.decodeStep(cache, 5 + i, 20 + i);
            }
        }
    }

    /** RazorAttention's compensation token is dropped by the window in time: a new one starts, never a live token. */
    @Test
    void razorsCompensationTokenNeverTakesALiveSlot() {
        LlamaConfig c = windowed();
        try (Llama m = KvTestSupport.model(dir.resolve("razor"), c, 4)) {
            KvPolicy razor = KvPolicies.parse("razor:heads=0,sink=1,recent=4,ratio=0", c);
            int[] checked = {0};
            KvPolicy p = KvTestSupport.recording(razor, (cache, layer, n, sel) -> {
                if (n != 1) return;
                for (int g = 0; g < c.numKvHeads(); g++) {
                    int cs = ((RazorPolicy) razor).compensationSlot(layer, g);
                    if (cs < 0) continue;
                    int newest = -1;
                    for (int pos : cache.positions(layer, g)) newest = Math.max(newest, pos);
                    int cp = cache.position(layer, g, cs);
                    assertTrue(cp < newest - 3, "the compensation slot holds position " + cp + ", the newest is " + newest);
                    checked[0]++;
                }
            });
            m.setPolicy(p);
            try (KvCache cache = m.newCache(32)) {
                m.prefill(cache, KvTestSupport.tokens(6, c.vocabSize(), 3), 0, false, null);
                for (int i = 0; i < 40; i++) m.decodeStep(cache, (i * 17 + 2) % 290, 6 + i);
            }
            assertTrue(checked[0] > 40, "checked " + checked[0]);
        }
    }
}
