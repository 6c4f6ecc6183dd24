package dev.tokenpress.eval;

import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.kv.KvPolicy;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The retrieval probe: needles are where they are said to be, the full cache retrieves the value far better than a
 * window that evicted the needle, a window that still holds it changes nothing, and the full cache's own score is the
 * reference every other row is compared with.
 */
class NeedleTest {
    static final Path MODEL = Path.of("models", "tokenpress-tiny");
    static final Path FILLER = Path.of("tests", "resources", "eval", "sample.py");

    @Test
    void trialsHideTheNeedleAtTheirDepth() throws Exception {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        try (TokenPress tp = TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2))) {
            String filler = Files.readString(FILLER, StandardCharsets.UTF_8);
            List<Needle.Trial> ts = Needle.trials(tp.tokenizer(), filler, 300, new double[] {0.0, 0.5, 1.0}, 2, 7);
            assertEquals(6, ts.size());
            for (Needle.Trial t : ts) {
                String ctx = tp.tokenizer().decode(java.util.Arrays.copyOf(t.tokens(), t.valueStart()));
                int at = ctx.indexOf(t.key() + " = \"" + t.value() + "\"\n");
                assertTrue(at >= 0, ctx);
                assertTrue(ctx.endsWith("assert " + t.key() + " == \""), ctx);
                double where = (double) at / ctx.length();
                assertEquals(t.depth(), where, 0.2, "needle at " + where + " of the context, asked " + t.depth());
                assertTrue(t.tokens().length <= 300 + 8 && t.tokens().length > 200, "about 300 tokens: " + t.tokens().length);
                assertEquals(t.value(), tp.tokenizer().decode(java.util.Arrays.copyOfRange(t.tokens(), t.valueStart(), t.tokens().length)));
            }
            assertThrows(IllegalArgumentException.class, () -> Needle.trials(tp.tokenizer(), filler, 300, new double[] {1.5}, 1, 1));
            assertThrows(IllegalArgumentException.class, () -> Needle.trials(tp.tokenizer(), filler, 300, new double[] {0.5, 0.5}, 1, 1));
        }
    }

    @Test
    void evictingTheNeedleCostsRetrieval() throws Exception {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        try (TokenPress tp = TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2))) {
            String filler = Files.readString(FILLER, StandardCharsets.UTF_8);
            double[] depths = {0.5};
            List<Needle.Trial> ts = Needle.trials(tp.tokenizer(), filler, 400, depths, 3, 11);
            Needle.Result full = Needle.run(tp.model(), ts, depths, () -> KvPolicy.FULL, null, null);
            Needle.Result small = Needle.run(tp.model(), ts, depths, () -> KvPolicies.parse("window:sink=4,budget=32", tp.config()), null, null);
            Needle.Result wide = Needle.run(tp.model(), ts, depths, () -> KvPolicies.parse("window:sink=4,budget=1024", tp.config()), null, null);
            System.out.printf("[needle] full %.3f, window 32 %.3f, window 1024 %.3f%n", full.meanNll(), small.meanNll(), wide.meanNll());
            assertEquals(full.meanNll(), full.meanFullNll(), 1e-12, "the full cache is its own reference");
            assertEquals(1.0, full.meanTop1(), 0);
            // exact match: a trial counts when greedy decoding reproduces every value token, which the top-1 agreement
            // and a teacher-forced argmax check bound: the full cache's hits are the trials its argmax gets all right
            int v = tp.config().vocabSize();
            for (Needle.Trial t : ts) {
                boolean hit = Needle.generatesValue(tp.model(), t, KvPolicy.FULL, null);
                boolean allArgmax = true;
                try (dev.tokenpress.kv.KvCache c = tp.model().newCache(t.tokens().length)) {
                    float[] lg = tp.model().prefill(c, t.tokens(), 0, true, null);
                    for (int i = t.valueStart(); i < t.tokens().length; i++) {
                        int best = 0, off = (i - 1) * v;
                        for (int j = 1; j < v; j++) if (lg[off + j] > lg[off + best]) best = j;
                        allArgmax &= best == t.tokens()[i];
                    }
                }
                assertEquals(allArgmax, hit, "trial " + t.key());
                if (hit) assertTrue(Needle.generatesValue(tp.model(), t, KvPolicy.FULL, null, tp.tokenizer()::decode), "the text matches too");
            }
            assertTrue(small.meanExact() <= full.meanExact(), "evicting the needle does not help: " + small.meanExact() + " vs " + full.meanExact());
            assertEquals(full.meanNll(), small.meanFullNll(), 1e-9, "every row is compared with the same full-cache score");
            assertTrue(small.meanNll() > full.meanNll() + 1.0, "a 32-token window loses the needle: " + small.meanNll() + " vs " + full.meanNll());
            assertTrue(small.meanTop1() < 1.0);
            assertEquals(full.meanNll(), wide.meanNll(), 1e-4, "a window that holds the whole context changes nothing");
        }
    }
}
