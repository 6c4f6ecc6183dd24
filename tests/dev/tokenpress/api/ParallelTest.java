package dev.tokenpress.api;

import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.file.Files;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * {@link Parallel} on the embedded model: requests decoded together, joining and leaving the batch, produce what
 * each produces alone through a {@link Session} with the same options and seed (greedy and sampled, EOS, stop
 * strings, token limits, a KV policy).
 */
class ParallelTest {
    static final String[] PROMPTS = {"def add(a, b):", "import os\n\n\ndef main():\n", "class Stack:\n    def __init__(self):\n",
            LogitBiasTest.ENDS_AT_ONCE, "for i in range(10):\n", "# compute the mean\ndef mean(xs):"};

    static TokenPress load() {
        Assumptions.assumeTrue(Files.isRegularFile(LookupDecodingTest.MODEL.resolve("model.safetensors")), "no embedded model");
        return TokenPress.load(LookupDecodingTest.MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2));
    }

    static SamplingOptions options(int i) {
        return i % 2 == 0 ? SamplingOptions.greedy() : SamplingOptions.defaults().withTemp(0.8).withSeed(100 + i);
    }

    /**
     * Lanes that keep their caches for the life of the batch (cleared between sequences; rows stepped in lane order),
     * as on a backend that lays a batch's caches out together, give every request what per-sequence caches give.
     */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"full", "h2o:budget=20,recent=4"})
    void laneCachesKeptAcrossSequencesGiveTheSameResults(String kv) {
        try (TokenPress tp = load()) {
            List<Parallel.Request> reqs = new ArrayList<>();
            for (int i = 0; i < PROMPTS.length; i++)
                reqs.add(new Parallel.Request(tp.tokenizer().encode(PROMPTS[i]), 12 + 7 * i, options(i), List.of(), null));
            List<GenerationResult> fresh, kept;
            try (Parallel p = new Parallel(tp, 128, null, kv)) {
                fresh = p.generate(reqs, 3);
            }
            try (Parallel p = new Parallel(tp, 128, null, kv)) {
                p.keepLaneCaches(true);
                kept = p.generate(reqs, 3);
            }
            for (int i = 0; i < PROMPTS.length; i++) {
                assertArrayEquals(fresh.get(i).tokens(), kept.get(i).tokens(), kv + ", request " + i);
                assertEquals(fresh.get(i).text(), kept.get(i).text(), kv + ", request " + i);
            }
        }
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"full", "window:sink=4,budget=24", "h2o:budget=20,recent=4"})
    void everySequenceGetsWhatItGetsAlone(String kv) {
        try (TokenPress tp = load()) {
            List<Parallel.Request> reqs = new ArrayList<>();
            List<StringBuilder> streamed = new ArrayList<>();
            for (int i = 0; i < PROMPTS.length; i++) {
                StringBuilder sb = new StringBuilder();
                streamed.add(sb);
                List<String> stops = i == 4 ? List.of("License") : List.of();
                reqs.add(new Parallel.Request(tp.tokenizer().encode(PROMPTS[i]), 20 + 5 * i, options(i), stops, sb::append));
            }
            List<GenerationResult> got;
            try (Parallel p = new Parallel(tp, 128, null, kv)) {
                got = p.generate(reqs, 3);
                long[] c = p.stepCounts();
                assertTrue(c[1] >= 1.5 * c[0], "the batch holds 1.5 sequences or more on average: " + c[0] + " steps, " + c[1] + " tokens");
            }
            assertEquals(PROMPTS.length, got.size());
            for (int i = 0; i < PROMPTS.length; i++) {
                try (Session s = tp.newSession(128)) {
                    s.setPolicy(KvPolicies.parse(kv, tp.config()));
                    StopText st = new StopText(reqs.get(i).stops());
                    StringBuilder alone = new StringBuilder();
                    GenerationResult ref = s.generate(reqs.get(i).prompt(), reqs.get(i).maxTokens(), options(i),
                            piece -> alone.append(st.add(piece)), null, java.util.Set.of(), st::hit);
                    if (!st.hit()) alone.append(st.rest());
                    String what = kv + ", request " + i;
                    assertArrayEquals(ref.tokens(), got.get(i).tokens(), what);
                    assertEquals(alone.toString(), got.get(i).text(), what);
                    assertEquals(got.get(i).text(), streamed.get(i).toString(), what + ": the listener saw the text");
                    assertEquals(ref.stopReason(), got.get(i).stopReason(), what);
                    if (i % 2 == 1) assertEquals(100 + i, got.get(i).seed(), what);
                    assertEquals(reqs.get(i).prompt().length, got.get(i).promptTokens());
                }
            }
            assertEquals("eos", got.get(3).stopReason(), "the request that ends at once");
            assertEquals("stop", got.get(4).stopReason(), "the stop string");
            assertFalse(got.get(4).text().contains("License"));
            assertEquals("length", got.get(0).stopReason());
            assertEquals(20, got.get(0).tokens().length);
        }
    }

    /** One prompt, several seeds: one prefill, the other lanes copy its cache, and each text is its seed's. */
    @Test
    void requestsWithOnePromptShareItsPrefill() {
        try (TokenPress tp = load(); Parallel p = new Parallel(tp, 96, null, null)) {
            int[] prompt = tp.tokenizer().encode(PROMPTS[1]);
            List<Parallel.Request> reqs = new ArrayList<>();
            for (int i = 0; i < 4; i++)
                reqs.add(new Parallel.Request(prompt, 12, SamplingOptions.defaults().withTemp(1.0).withSeed(20 + i), null, null));
            List<GenerationResult> got = p.generate(reqs, 4);
            long[] c = p.stepCounts();
            assertEquals(1, c[2], "one prefill");
            assertEquals(3, c[3], "three copies");
            java.util.Set<String> texts = new java.util.HashSet<>();
            for (int i = 0; i < 4; i++) {
                try (Session s = tp.newSession(96)) {
                    GenerationResult ref = s.generate(prompt, 12, reqs.get(i).options(), null);
                    assertArrayEquals(ref.tokens(), got.get(i).tokens(), "seed " + (20 + i));
                }
                texts.add(got.get(i).text());
            }
            assertTrue(texts.size() > 1, "the seeds differ");
        }
        // a policy with state prefills every lane
        try (TokenPress tp = load(); Parallel p = new Parallel(tp, 96, null, "h2o:budget=16")) {
            int[] prompt = tp.tokenizer().encode(PROMPTS[1]);
            p.generate(List.of(new Parallel.Request(prompt, 4, SamplingOptions.greedy(), null, null),
                    new Parallel.Request(prompt, 4, SamplingOptions.greedy(), null, null)), 2);
            assertEquals(2, p.stepCounts()[2]);
            assertEquals(0, p.stepCounts()[3]);
        }
    }

    /** A failing listener ends its own sequence only; a cancelled future stops its sequence and frees its lane. */
    @Test
    void failuresAndCancellationsStayWithTheirSequence() {
        try (TokenPress tp = load(); Parallel p = new Parallel(tp, 96, null, null)) {
            int[] a = tp.tokenizer().encode(PROMPTS[4]), b = tp.tokenizer().encode(PROMPTS[0]);
            int[] seen = {0};
            var bad = p.submit(new Parallel.Request(a, 20, SamplingOptions.greedy(), null, piece -> {
                if (++seen[0] == 3) throw new IllegalStateException("listener broke");
            }));
            var good = p.submit(new Parallel.Request(b, 20, SamplingOptions.greedy(), null, null));
            var cancelled = p.submit(new Parallel.Request(a, 50, SamplingOptions.greedy(), null, null));
            int rounds = 0;
            while (p.step(3)) {
                if (++rounds == 4) cancelled.cancel(false);
            }
            assertTrue(bad.isCompletedExceptionally());
            assertEquals(20, good.join().tokens().length, "the other sequence ran to its end");
            assertTrue(cancelled.isCancelled());
            assertTrue(rounds < 25, "the cancelled sequence stopped: " + rounds + " rounds");
            assertEquals(0, p.activeCount());
            assertEquals(0, p.busyLanes());
            // every lane is free again: three more requests run at width 3
            List<Parallel.Request> more = new ArrayList<>();
            for (int i = 0; i < 3; i++) more.add(new Parallel.Request(b, 4, SamplingOptions.greedy(), null, null));
            assertEquals(3, p.generate(more, 3).size());
        }
    }

    /** RazorAttention's head probe runs under its own hooks when a lane installs it: the same tokens as a Session. */
    @Test
    void razorCalibratesInALane() {
        String kv = "razor:heads=0.25,sink=2,recent=8,ratio=0,probe=16,repeats=3";
        try (TokenPress tp = load(); Parallel p = new Parallel(tp, 96, null, kv); Session s = tp.newSession(96)) {
            int[] prompt = tp.tokenizer().encode(PROMPTS[5]);
            GenerationResult got = p.generate(List.of(new Parallel.Request(prompt, 16, SamplingOptions.greedy(), null, null)), 1).get(0);
            s.setPolicy(KvPolicies.parse(kv, tp.config()));
            assertArrayEquals(s.generate(prompt, 16, SamplingOptions.greedy(), null).tokens(), got.tokens());
        }
    }

    /** A prompt that shares a prefix with a running sequence's prompt copies that cache and prefills only the rest. */
    @Test
    void aSharedPrefixIsCopiedNotPrefilled() {
        try (TokenPress tp = load(); Parallel p = new Parallel(tp, 128, null, null)) {
            String system = "# A helper module for parsing configuration files and writing reports.\n";
            int[] a = tp.tokenizer().encode(system + "def load(path):"), b = tp.tokenizer().encode(system + "class Report:");
            var first = p.submit(new Parallel.Request(a, 30, SamplingOptions.greedy(), null, null));
            assertTrue(p.step(2), "A joins and runs a step");
            var second = p.submit(new Parallel.Request(b, 12, SamplingOptions.defaults().withSeed(5), null, null));
            while (p.step(2)) {
                // both run to their ends
            }
            long[] c = p.stepCounts();
            int shared = 0;
            while (shared < Math.min(a.length, b.length) && a[shared] == b[shared]) shared++;
            assertTrue(shared >= 8, "the prompts share " + shared + " tokens");
            assertEquals(shared, c[4], "the shared prefix was copied, not prefilled");
            try (Session s = tp.newSession(128)) {
                assertArrayEquals(s.generate(b, 12, SamplingOptions.defaults().withSeed(5), null).tokens(), second.join().tokens());
                s.reset();
                assertArrayEquals(s.generate(a, 30, SamplingOptions.greedy(), null).tokens(), first.join().tokens());
            }
        }
    }

    /** A long prompt joining running sequences is prefilled a chunk per round: they keep decoding meanwhile. */
    @Test
    void aLongPromptIsPrefilledBetweenTheOthersSteps() {
        try (TokenPress tp = TokenPress.load(LookupDecodingTest.MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2).withMaxChunk(8));
             Parallel p = new Parallel(tp, 256, null, null)) {
            int[] shortPrompt = tp.tokenizer().encode(PROMPTS[0]);
            int[] longPrompt = tp.tokenizer().encode(LogitBiasTest.ENDS_AT_ONCE.repeat(3) + "def main():\n");
            assertTrue(longPrompt.length > 5 * 8, "a prompt of " + longPrompt.length + " tokens: several chunks of 8");
            List<Integer> texts = new ArrayList<>();
            var a = p.submit(new Parallel.Request(shortPrompt, 40, SamplingOptions.greedy(), null, piece -> texts.add(0)));
            assertTrue(p.step(2));
            var b = p.submit(new Parallel.Request(longPrompt, 6, SamplingOptions.defaults().withSeed(2), null, piece -> texts.add(1)));
            int rounds = 0, firstB = -1;
            while (p.step(2)) {
                rounds++;
                if (firstB < 0 && texts.contains(1)) firstB = texts.indexOf(1);
            }
            int chunks = (longPrompt.length + 7) / 8;
            assertTrue(firstB >= chunks - 1, "the short sequence produced " + firstB + " pieces while the prompt's " + chunks
                    + " chunks ran");
            try (Session s = tp.newSession(256)) {
                assertArrayEquals(s.generate(longPrompt, 6, SamplingOptions.defaults().withSeed(2), null).tokens(), b.join().tokens());
                s.reset();
                assertArrayEquals(s.generate(shortPrompt, 40, SamplingOptions.greedy(), null).tokens(), a.join().tokens());
            }
            assertTrue(rounds > chunks);
        }
    }

    /**
     * Chunked prefill under failures: a listener that throws when the long prompt's first token comes ends that
     * sequence alone; a request cancelled while its prompt goes in stops there; identical long prompts prefill once
     * (the others wait and copy the cache); every lane is free afterwards.
     */
    @Test
    void chunkedPrefillsFailCancelAndShareAlone() {
        try (TokenPress tp = TokenPress.load(LookupDecodingTest.MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2).withMaxChunk(8));
             Parallel p = new Parallel(tp, 256, null, null)) {
            int[] shortPrompt = tp.tokenizer().encode(PROMPTS[0]);
            int[] longPrompt = tp.tokenizer().encode(LogitBiasTest.ENDS_AT_ONCE.repeat(3) + "def main():\n");
            var runner = p.submit(new Parallel.Request(shortPrompt, 60, SamplingOptions.greedy(), null, null));
            assertTrue(p.step(4));
            var broken = p.submit(new Parallel.Request(longPrompt, 5, SamplingOptions.greedy(), null, piece -> {
                throw new IllegalStateException("listener broke");
            }));
            var cancelled = p.submit(new Parallel.Request(tp.tokenizer().encode(PROMPTS[2].repeat(6)), 5, SamplingOptions.greedy(), null, null));
            assertTrue(p.step(4));
            cancelled.cancel(false);
            while (p.step(4)) {
                // to the end
            }
            assertTrue(broken.isCompletedExceptionally());
            assertTrue(cancelled.isCancelled());
            assertEquals(60, runner.join().tokens().length, "the running sequence was not touched");
            assertEquals(0, p.activeCount());
            assertEquals(0, p.busyLanes(), "every lane was released");
            // identical long prompts joining a running sequence: one prefill, two copies
            long[] before = p.stepCounts();
            var again = p.submit(new Parallel.Request(shortPrompt, 40, SamplingOptions.greedy(), null, null));
            assertTrue(p.step(4));
            List<java.util.concurrent.CompletableFuture<GenerationResult>> same = new ArrayList<>();
            for (int i = 0; i < 3; i++)
                same.add(p.submit(new Parallel.Request(longPrompt, 6, SamplingOptions.defaults().withSeed(30 + i), null, null)));
            while (p.step(4)) {
                // to the end
            }
            long[] after = p.stepCounts();
            assertEquals(2, after[2] - before[2], "the short prompt and one long prompt were prefilled");
            assertEquals(2, after[3] - before[3], "the other two copied its cache");
            try (Session s = tp.newSession(256)) {
                for (int i = 0; i < 3; i++) {
                    s.reset();
                    assertArrayEquals(s.generate(longPrompt, 6, SamplingOptions.defaults().withSeed(30 + i), null).tokens(), same.get(i).join().tokens());
                }
            }
            assertEquals(40, again.join().tokens().length);
            assertEquals(3, p.generate(List.of(new Parallel.Request(shortPrompt, 2, SamplingOptions.greedy(), null, null),
                    new Parallel.Request(shortPrompt, 2, SamplingOptions.greedy(), null, null),
                    new Parallel.Request(shortPrompt, 2, SamplingOptions.greedy(), null, null)), 4).size(), "every lane is free");
            assertEquals(0, p.busyLanes());
        }
    }

    @Test
    void widthAndRequestsAreChecked() {
        try (TokenPress tp = load(); Parallel p = new Parallel(tp, 64, null, null)) {
            int max = p.maxWidth();
            assertTrue(max >= 2);
            Parallel.Request r = new Parallel.Request(new int[]{1, 2}, 2, SamplingOptions.greedy(), null, null);
            assertTrue(assertThrows(IllegalArgumentException.class, () -> p.generate(List.of(r), max + 1)).getMessage().contains("1 to " + max));
            assertThrows(IllegalArgumentException.class, () -> p.generate(List.of(r), 0));
            assertThrows(IllegalArgumentException.class, () -> new Parallel.Request(new int[0], 2, SamplingOptions.greedy(), null, null));
            assertThrows(IllegalArgumentException.class, () -> new Parallel(tp, 64, null, "nosuch"));
            Parallel.Request big = new Parallel.Request(new int[100], 2, SamplingOptions.greedy(), null, null);
            assertTrue(assertThrows(IllegalArgumentException.class, () -> p.generate(List.of(r, big), 2)).getMessage().contains("raise the context size"));
            // zero tokens asked: the prompt runs, nothing is generated
            GenerationResult none = p.generate(List.of(new Parallel.Request(new int[]{5, 6, 7}, 0, SamplingOptions.greedy(), null, null)), 1).get(0);
            assertEquals(0, none.tokens().length);
            assertEquals("length", none.stopReason());
        }
    }
}
