package dev.tokenpress.api;

import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

/** A saved KV cache restored into a new session continues exactly as the session that saved it. */
class PromptCacheTest {
    @TempDir
    Path tmp;

    @Test
    void aRestoredCacheContinuesAsTheOriginal() throws Exception {
        Assumptions.assumeTrue(Files.isRegularFile(LookupDecodingTest.MODEL.resolve("model.safetensors")), "no embedded model");
        try (TokenPress tp = TokenPress.load(LookupDecodingTest.MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2))) {
            int[] prompt = tp.tokenizer().encode("import os\n\n\ndef main():\n    path = os.path.join(");
            int[] more = tp.tokenizer().encodeNoSpecial("\"data\", name)\n");
            Path file = tmp.resolve("prompt.cache");
            int[] held, want;
            try (Session s = tp.newSession(256)) {
                s.generate(prompt, 0, SamplingOptions.greedy(), null);
                held = s.tokens();
                s.saveCache(file);
                want = s.generate(more, 16, SamplingOptions.greedy(), null).tokens();
            }
            try (Session s = tp.newSession(256)) {
                assertArrayEquals(held, s.loadCache(file));
                assertArrayEquals(held, s.tokens());
                assertArrayEquals(want, s.generate(more, 16, SamplingOptions.greedy(), null).tokens(), "continues as the original");
                // cut back to a prefix and fed a different continuation: as a fresh session
                s.loadCache(file);
                s.truncate(5);
                int[] alt = s.generate(Arrays.copyOfRange(prompt, 5, prompt.length), 8, SamplingOptions.greedy(), null).tokens();
                try (Session f = tp.newSession(256)) {
                    assertArrayEquals(f.generate(prompt, 8, SamplingOptions.greedy(), null).tokens(), alt);
                }
            }
            try (Session small = tp.newSession(4)) {
                assertThrows(IllegalArgumentException.class, () -> small.loadCache(file), "more tokens than the context");
            }
            Path cut = tmp.resolve("cut.cache");
            byte[] all = Files.readAllBytes(file);
            Files.write(cut, Arrays.copyOf(all, all.length / 2));
            try (Session s = tp.newSession(256)) {
                assertTrue(assertThrows(IllegalArgumentException.class, () -> s.loadCache(cut)).getMessage().contains("truncated"));
                assertEquals(0, s.tokens().length, "a failed load leaves an empty session");
                Files.writeString(cut, "not a cache at all");
                assertThrows(IllegalArgumentException.class, () -> s.loadCache(cut));
                s.setPolicy(dev.tokenpress.kv.KvPolicies.parse("h2o:budget=16", tp.config()));
                assertThrows(IllegalStateException.class, () -> s.loadCache(file), "a policy that evicts never saw those keys");
                s.generate(prompt, 0, SamplingOptions.greedy(), null);
                assertThrows(IllegalStateException.class, () -> s.saveCache(tmp.resolve("h2o.cache")), "a policy that evicts");
            }
        }
    }
}
