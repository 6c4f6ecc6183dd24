package dev.tokenpress.api;

import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.ModelDrafter;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * A model with a sliding window (Mistral's sliding_window, 8 here) frees tokens no later query sees: a session
 * cannot truncate back past them (prompt caching falls back to feeding the prefix again), a failed or cut-back drafter
 * feeds its sequence again, and every answer equals that of a fresh start.
 */
class SlidingWindowSessionTest {
    @TempDir
    Path tmp;

    TokenPress load(String name) {
        LlamaConfig c = new LlamaConfig("MistralForCausalLM", "mistral", 64, 96, 2, 4, 2, 16, 300, 1e-5f, 10000f, null, 512,
                false, false, 8, 298, List.of(299), "float32");
        Path dir = tmp.resolve(name);
        ModelWriter.write(dir, c, 5, s -> {});
        return TokenPress.load(dir, LoadOptions.defaults().withDevice("cpu").withThreads(2));
    }

    @Test
    void truncationPastTheWindowIsRefusedAndFreshStartsAgree() {
        try (TokenPress tp = load("m")) {
            assertEquals(8, tp.model().slidingWindow());
            int[] prompt = new int[6];
            for (int i = 0; i < prompt.length; i++) prompt[i] = 10 + 7 * i;
            try (Session s = tp.newSession(64)) {
                s.generate(prompt, 2, SamplingOptions.greedy(), null);
                assertTrue(s.canTruncate(), "nothing has left the window yet");
                GenerationResult more = s.generate(new int[]{40}, 12, SamplingOptions.greedy(), null);
                assertEquals(12, more.tokens().length);
                assertFalse(s.canTruncate(), "the window has dropped tokens");
                IllegalStateException e = assertThrows(IllegalStateException.class, () -> s.truncate(4));
                assertTrue(e.getMessage().contains("sliding window"), e.getMessage());
            }
        }
    }

    @Test
    void aDrafterThatCutsBackPastTheWindowFeedsItsSequenceAgain() {
        try (TokenPress tp = load("d")) {
            int[] seq = new int[24];
            for (int i = 0; i < seq.length; i++) seq[i] = (i * 37 + 3) % 290;
            int[] other = seq.clone();
            for (int i = 12; i < other.length; i++) other[i] = (i * 11 + 5) % 290;
            ModelDrafter d = new ModelDrafter(tp.model(), 64, 0, 0f), fresh = new ModelDrafter(tp.model(), 64, 0, 0f);
            try {
                d.logitsAfter(seq, 20);                                  // 20 tokens: the window has dropped some
                float[] cutBack = d.logitsAfter(other, 16).clone();      // shares 12 tokens: a rollback past the window
                assertArrayEquals(fresh.logitsAfter(other, 16), cutBack, 1e-5f);
            } finally {
                d.close();
                fresh.close();
            }
        }
    }
}
