package dev.tokenpress.api;

import dev.tokenpress.sample.LogitBiasSampler;
import dev.tokenpress.sample.SamplerChain;
import dev.tokenpress.sample.SamplingOptions;
import dev.tokenpress.sample.TokenDataArray;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.util.Arrays;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

/** Logit bias (first in the chain, -inf bans) and ignoring EOS, on the sampler and on the embedded model. */
class LogitBiasTest {
    static final String ENDS_AT_ONCE = "import numpy as np\n\n\nclass LinearRegression:\n    def __init__(self, lr=0.01):\n";

    @Test
    void biasIsAddedFirstAndInfinityBans() {
        TokenDataArray a = new TokenDataArray(5);
        a.load(new float[] {1, 2, 3, 4, 5}, 0, 5);
        new LogitBiasSampler(Map.of(0, 10f, 4, Float.NEGATIVE_INFINITY), 5).apply(a);
        assertArrayEquals(new float[] {11, 2, 3, 4, Float.NEGATIVE_INFINITY}, Arrays.copyOf(a.logits, 5));
        SamplerChain c = SamplerChain.create(SamplingOptions.greedy(), 5, Map.of(4, Float.NEGATIVE_INFINITY), null);
        assertTrue(c.describe().startsWith("logits -> logit-bias -> penalties"), c.describe());
        assertEquals(3, c.sample(new float[] {1, 2, 3, 4, 5}), "the banned best token is skipped");
        assertThrows(IllegalArgumentException.class, () -> new LogitBiasSampler(Map.of(5, 1f), 5));
    }

    @Test
    void ignoreEosAndBiasOnTheModel() {
        Assumptions.assumeTrue(Files.isRegularFile(LookupDecodingTest.MODEL.resolve("model.safetensors")), "no embedded model");
        try (TokenPress tp = TokenPress.load(LookupDecodingTest.MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2));
             Session s = tp.newSession(256)) {
            GenerationResult plain = s.generate(ENDS_AT_ONCE, 10, SamplingOptions.greedy(), null);
            assertEquals("eos", plain.stopReason());
            s.reset();
            s.setIgnoreEos(true);
            GenerationResult on = s.generate(ENDS_AT_ONCE, 10, SamplingOptions.greedy(), null);
            assertEquals("length", on.stopReason());
            assertEquals(10, on.tokens().length);
            for (int t : on.tokens()) assertFalse(tp.config().eosTokenIds().contains(t));
            s.setIgnoreEos(false);
            s.reset();
            // ban the greedy continuation's first token: the text changes and never contains it
            int first = s.generate("def add(a, b):", 1, SamplingOptions.greedy(), null).tokens()[0];
            s.reset();
            s.setLogitBias(Map.of(first, Float.NEGATIVE_INFINITY));
            int[] banned = s.generate("def add(a, b):", 12, SamplingOptions.greedy(), null).tokens();
            assertNotEquals(first, banned[0]);
            for (int t : banned) assertNotEquals(first, t);
            s.reset();
            s.setLogitBias(Map.of(42, 1000f)); // a huge bias: greedy picks it every time
            for (int t : s.generate("x", 5, SamplingOptions.greedy(), null).tokens()) assertEquals(42, t);
            s.setLogitBias(null);
            s.setJsonSchema("{}");
            s.setIgnoreEos(true);
            assertThrows(IllegalStateException.class, () -> s.generate("x", 5, SamplingOptions.greedy(), null));
        }
    }

    /**
     * DRY on the model: greedy decoding of a repetitive prompt repeats it; with DRY the longest stretch of the output
     * that copies an earlier stretch of the context is shorter, and the chain is exactly that of the options.
     */
    @Test
    void dryBreaksRepetitionOnTheModel() {
        Assumptions.assumeTrue(Files.isRegularFile(LookupDecodingTest.MODEL.resolve("model.safetensors")), "no embedded model");
        String prompt = "x = 1\ny = 2\nx = 1\ny = 2\nx = 1\ny = 2\n";
        try (TokenPress tp = TokenPress.load(LookupDecodingTest.MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2));
             Session s = tp.newSession(256)) {
            int[] ids = tp.tokenizer().encode(prompt);
            int[] plain = s.generate(ids, 40, SamplingOptions.greedy(), null).tokens();
            s.reset();
            int[] dry = s.generate(ids, 40, SamplingOptions.greedy().withDry(2.0, 1.75, 2, -1, java.util.List.of()), null).tokens();
            int plainRun = longestCopy(ids, plain), dryRun = longestCopy(ids, dry);
            assertTrue(dryRun < plainRun, "longest copied stretch: " + plainRun + " plain, " + dryRun + " with DRY");
            assertTrue(dryRun <= 4, "DRY stops repeats past its allowed length soon: " + dryRun);
        }
    }

    /** The longest run of generated tokens that equals a stretch ending earlier in prompt + output. */
    static int longestCopy(int[] prompt, int[] out) {
        int[] all = new int[prompt.length + out.length];
        System.arraycopy(prompt, 0, all, 0, prompt.length);
        System.arraycopy(out, 0, all, prompt.length, out.length);
        int best = 0;
        for (int end = prompt.length; end < all.length; end++)
            for (int k = 1; k <= end; k++) {
                int len = 0;
                while (end - len >= prompt.length && end - len - k >= 0 && all[end - len] == all[end - len - k]) len++;
                best = Math.max(best, len);
            }
        return best;
    }
}
