package dev.tokenpress.api;

import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.model.ModelDrafter;
import dev.tokenpress.sample.SamplingOptions;
import dev.tokenpress.sample.StepTrace;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.function.Consumer;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Speculative decoding (a draft model, the model's own first layers, or prompt lookup) yields exactly the tokens of
 * one-at-a-time decoding, greedy and sampled with the same seed (penalties, Mirostat, JSON output and traces
 * included), for every token limit, with the same session state afterwards; drafts are in fact accepted.
 */
class SpeculativeDecodingTest {
    static final Path MODEL = LookupDecodingTest.MODEL;
    static final String PROMPT = LookupDecodingTest.PROMPT;

    record Run(String text, int[] tokens, String stop, int position, int[] sessionTokens, int occupied,
               List<StepTrace> trace) {}

    interface Setup { void apply(Session s); }

    static Run run(TokenPress tp, Setup setup, String prompt, int maxTokens, SamplingOptions o, boolean trace) {
        try (Session s = tp.newSession(512)) {
            setup.apply(s);
            List<StepTrace> steps = new ArrayList<>();
            Consumer<StepTrace> tr = trace ? steps::add : null;
            GenerationResult r = s.generate(tp.tokenizer().encode(prompt), maxTokens, o, null, tr);
            return new Run(r.text(), r.tokens(), r.stopReason(), s.position(), s.tokens(), s.cache().occupied(0, 0), steps);
        }
    }

    static void assertSame(Run plain, Run spec, String at) {
        assertEquals(plain.text(), spec.text(), at);
        assertArrayEquals(plain.tokens(), spec.tokens(), at);
        assertEquals(plain.stop(), spec.stop(), at);
        assertEquals(plain.position(), spec.position(), at);
        assertArrayEquals(plain.sessionTokens(), spec.sessionTokens(), at);
        assertEquals(plain.occupied(), spec.occupied(), at);
        if (!at.startsWith("window"))
            assertEquals(spec.position(), spec.occupied(), "the cache holds exactly the fed tokens, " + at);
        assertEquals(plain.trace().size(), spec.trace().size(), at);
        for (int i = 0; i < plain.trace().size(); i++) {
            StepTrace a = plain.trace().get(i), b = spec.trace().get(i);
            assertEquals(a.token(), b.token(), at + " trace " + i);
            assertEquals(a.logprob(), b.logprob(), 1e-5, at + " trace " + i);
            assertEquals(a.entropy(), b.entropy(), 1e-5, at + " trace " + i);
        }
    }

    static TokenPress load() {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        return TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2));
    }

    @Test
    void greedyTokensUnchangedWithEveryDrafter() {
        try (TokenPress tp = load()) {
            Setup none = s -> {}, half = s -> s.setSelfDraft(3, 6, 0, 0f), one = s -> s.setSelfDraft(1, 4, 2, 0.5f);
            Setup stop = s -> { // SpecDec++'s stopping rule: shorter drafts, the same tokens
                s.setSelfDraft(3, 8, 1, 0f);
                s.setDraftStop(0.5);
            };
            for (int max : new int[] {1, 2, 3, 5, 8, 13, 40}) {
                Run plain = run(tp, none, PROMPT, max, SamplingOptions.greedy(), false);
                assertSame(plain, run(tp, half, PROMPT, max, SamplingOptions.greedy(), false), "3 layers, max " + max);
                assertSame(plain, run(tp, one, PROMPT, max, SamplingOptions.greedy(), false), "1 layer, max " + max);
                assertSame(plain, run(tp, stop, PROMPT, max, SamplingOptions.greedy(), false), "3 layers, draft stop, max " + max);
            }
        }
    }

    @Test
    void theWholeModelAsItsOwnDraftIsAlwaysRight() {
        try (TokenPress tp = load()) {
            long[] before = tp.model().draftCounts();
            Run plain = run(tp, s -> {}, "def main():\n", 48, SamplingOptions.greedy(), false);
            Run spec = run(tp, s -> s.setSelfDraft(tp.config().numLayers(), 5, 0, 0f), "def main():\n", 48,
                    SamplingOptions.greedy(), false);
            assertSame(plain, spec, "all layers");
            long[] after = tp.model().draftCounts();
            long drafted = after[0] - before[0], accepted = after[1] - before[1];
            assertTrue(drafted >= 30, "drafted " + drafted);
            assertEquals(drafted, accepted, "a draft model equal to the model is never wrong");
        }
    }

    @Test
    void sampledTokensUnchangedWithTheSameSeed() {
        try (TokenPress tp = load()) {
            SamplingOptions chainOpts = SamplingOptions.defaults().withTemp(0.9).withTopK(40).withTopP(0.95)
                    .withPenalties(64, 1.1, 0.1, 0.05).withSeed(11);
            SamplingOptions miro = SamplingOptions.defaults().withMirostat(2, 0.1, 5.0).withSeed(5);
            long[] before = tp.model().draftCounts();
            for (SamplingOptions o : new SamplingOptions[] {chainOpts, miro}) {
                for (int max : new int[] {1, 7, 30, 60}) {
                    for (boolean trace : new boolean[] {false, true}) {
                        String at = o + ", max " + max + ", trace " + trace;
                        Run plain = run(tp, s -> {}, PROMPT, max, o, trace);
                        assertSame(plain, run(tp, s -> s.setSelfDraft(4, 6, 0, 0f), PROMPT, max, o, trace), "self draft, " + at);
                        assertSame(plain, run(tp, s -> s.setLookup(5), PROMPT, max, o, trace), "lookup, " + at);
                        if (max == 30 && !trace) { // the checked rows sampled from their whole rows instead of candidates
                            String was = System.getProperty("tokenpress.candidateSampling");
                            System.setProperty("tokenpress.candidateSampling", "false");
                            try {
                                assertSame(plain, run(tp, s -> s.setSelfDraft(4, 6, 0, 0f), PROMPT, max, o, trace), "whole rows, " + at);
                            } finally {
                                if (was == null) System.clearProperty("tokenpress.candidateSampling");
                                else System.setProperty("tokenpress.candidateSampling", was);
                            }
                        }
                    }
                }
            }
            long[] after = tp.model().draftCounts();
            assertTrue(after[1] - before[1] > 0, "some sampled drafts accepted: " + (after[1] - before[1]));
        }
    }

    @Test
    void jsonOutputUnchanged() {
        try (TokenPress tp = load()) {
            for (SamplingOptions o : new SamplingOptions[] {SamplingOptions.greedy(),
                    SamplingOptions.defaults().withTemp(0.7).withSeed(3)}) {
                Setup json = s -> s.setOutputFormat(Session.OutputFormat.JSON);
                Run plain = run(tp, json, "config = ", 40, o, false);
                Run spec = run(tp, s -> {
                    json.apply(s);
                    s.setSelfDraft(3, 4, 0, 0f);
                }, "config = ", 40, o, false);
                assertSame(plain, spec, "json, " + o);
            }
        }
    }

    @Test
    void aSeparateDraftModelWithTheSameTokenizer(@TempDir Path tmp) throws Exception {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        Path copy = tmp.resolve("draft");
        Files.createDirectories(copy);
        for (String f : new String[] {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
            Files.copy(MODEL.resolve(f), copy.resolve(f));
        try (TokenPress tp = load();
             TokenPress draft = TokenPress.load(copy, LoadOptions.defaults().withDevice("cpu").withThreads(2))) {
            long[] before = tp.model().draftCounts();
            SamplingOptions o = SamplingOptions.defaults().withTemp(0.8).withSeed(2);
            for (int max : new int[] {3, 33}) {
                Run plain = run(tp, s -> {}, PROMPT, max, o, false);
                Run spec = run(tp, s -> s.setDraftModel(draft, 8, 0, 0.6f), PROMPT, max, o, false);
                assertSame(plain, spec, "separate draft, max " + max);
            }
            assertTrue(tp.model().draftCounts()[1] > before[1], "drafts accepted");
        }
        // the draft on the model's own backend: one thread team; closing the draft leaves the model usable
        try (TokenPress tp = load()) {
            Run plain = run(tp, s -> {}, PROMPT, 20, SamplingOptions.greedy(), false);
            try (TokenPress draft = TokenPress.loadOn(copy, LoadOptions.defaults(), tp)) {
                assertTrue(tp.backend() == draft.backend(), "one backend");
                assertSame(plain, run(tp, s -> s.setDraftModel(draft, 4, 0, 0f), PROMPT, 20, SamplingOptions.greedy(), false),
                        "draft on the shared backend");
            }
            assertSame(plain, run(tp, s -> {}, PROMPT, 20, SamplingOptions.greedy(), false), "after the draft closed");
        }
    }

    @Test
    void aDraftModelWithAnotherTokenizerIsRefused(@TempDir Path tmp) {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        Path small = tmp.resolve("small"), tiny = tmp.resolve("tiny");
        ModelWriter.write(small, ModelWriter.Preset.SMALL, 1, m -> {});  // vocabulary of 4096 too, other tokens
        ModelWriter.write(tiny, ModelWriter.Preset.TINY, 1, m -> {});    // 512 tokens
        try (TokenPress tp = load();
             TokenPress a = TokenPress.load(small, LoadOptions.defaults().withDevice("cpu").withThreads(1));
             TokenPress b = TokenPress.load(tiny, LoadOptions.defaults().withDevice("cpu").withThreads(1));
             Session s = tp.newSession(256)) {
            assertEquals(tp.config().vocabSize(), a.config().vocabSize());
            var e1 = assertThrows(IllegalArgumentException.class, () -> s.setDraftModel(a, 4, 0, 0f));
            assertTrue(e1.getMessage().contains("tokenizer"), e1.getMessage());
            var e2 = assertThrows(IllegalArgumentException.class, () -> s.setDraftModel(b, 4, 0, 0f));
            assertTrue(e2.getMessage().contains("vocabulary"), e2.getMessage());
            assertThrows(IllegalArgumentException.class, () -> s.setSelfDraft(0, 4, 0, 0f));
            assertThrows(IllegalArgumentException.class, () -> s.setSelfDraft(tp.config().numLayers() + 1, 4, 0, 0f));
            assertThrows(IllegalArgumentException.class, () -> s.setSelfDraft(2, 0, 0, 0f));
            assertThrows(IllegalArgumentException.class, () -> s.setSelfDraft(2, 4, 0, 1.5f));
        }
    }

    @Test
    void notAppliedUnderAnEvictingPolicy() {
        try (TokenPress tp = load()) {
            var policy = dev.tokenpress.kv.KvPolicies.parse("window:budget=48,sink=4", tp.config());
            Setup plainSetup = s -> s.setPolicy(policy), specSetup = s -> {
                s.setPolicy(policy);
                s.setSelfDraft(3, 4, 0, 0f);
                assertFalse(s.speculativeApplies());
            };
            long[] before = tp.model().draftCounts();
            assertSame(run(tp, plainSetup, PROMPT, 30, SamplingOptions.greedy(), false),
                    run(tp, specSetup, PROMPT, 30, SamplingOptions.greedy(), false), "window");
            assertArrayEquals(before, tp.model().draftCounts(), "nothing drafted");
            tp.model().setPolicy(null);
        }
    }

    /** A drafter that returns more than asked is cut to the request; an unbounded step count is fine. */
    @Test
    void oversizedDraftsAreCutAndStepCountsMayBeHuge() {
        try (TokenPress tp = load()) {
            var m = tp.model();
            int[] prompt = tp.tokenizer().encode(PROMPT);
            java.util.List<Integer> plain = new java.util.ArrayList<>(), spec = new java.util.ArrayList<>();
            int[] occ = new int[2];
            for (int pass = 0; pass < 2; pass++) {
                try (var cache = m.newCache(256)) {
                    m.prefill(cache, prompt, 0, false, null);
                    int first = m.argmax();
                    var out = pass == 0 ? plain : spec;
                    out.add(first);
                    java.util.function.IntPredicate take = t -> {
                        out.add(t);
                        return out.size() < 12;
                    };
                    if (pass == 0) {
                        m.decodeGreedy(cache, first, prompt.length, Integer.MAX_VALUE, take);
                    } else {
                        ModelDrafter self = new ModelDrafter(ModelDrafter.selfDraft(m, tp.config().numLayers()), 256, 0, 0f);
                        dev.tokenpress.model.Drafter greedy = (seq, len, max) -> self.draft(seq, len, max + 5); // asks for more
                        m.decodeSpeculative(cache, first, prompt.length, Integer.MAX_VALUE, null, take, prompt, prompt.length,
                                greedy, 3);
                        self.close();
                    }
                    occ[pass] = cache.occupied(0, 0);
                }
            }
            assertEquals(plain, spec);
            assertEquals(occ[0], occ[1], "the cache holds exactly the fed tokens");
        }
    }

    @Test
    void draftsFollowTheSequence() {
        try (TokenPress tp = load()) {
            ModelDrafter d = new ModelDrafter(ModelDrafter.selfDraft(tp.model(), tp.config().numLayers()), 64, 0, 0f);
            int[] seq = tp.tokenizer().encode("def f(x):\n    return x");
            int[] a = d.draft(seq, seq.length, 5);
            assertEquals(5, a.length);
            int[] b = d.draft(seq, seq.length, 5);
            assertArrayEquals(a, b, "asked again: the same draft");
            int[] shorter = d.draft(seq, seq.length - 2, 3);
            try (ModelDrafter fresh = new ModelDrafter(ModelDrafter.selfDraft(tp.model(), tp.config().numLayers()), 64, 0, 0f)) {
                assertArrayEquals(fresh.draft(seq, seq.length - 2, 3), shorter, "a shorter sequence: as from scratch");
            }
            assertEquals(0, d.draft(seq, seq.length, 0).length);
            d.close();
        }
    }
}
