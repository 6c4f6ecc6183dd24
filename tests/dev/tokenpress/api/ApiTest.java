package dev.tokenpress.api;

import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/** The Java facade as another JVM application would use it. */
class ApiTest {
    @TempDir
    Path tmp;

    @Test
    void loadGenerateAndScore() {
        ModelWriter.write(tmp, ModelWriter.Preset.TINY, 5, s -> {});
        List<String> log = new ArrayList<>();
        try (TokenPress tp = TokenPress.load(tmp, LoadOptions.defaults().withDevice("cpu").withLog(log::add));
             Session s = tp.newSession(128)) {
            assertTrue(log.stream().anyMatch(l -> l.startsWith("backend: CPU")), log.toString());
            StringBuilder streamed = new StringBuilder();
            GenerationResult r = s.generate("The cat", 12, SamplingOptions.greedy(), streamed::append);
            assertEquals(r.text(), streamed.toString());
            assertTrue(r.tokens().length > 0 && r.tokens().length <= 12);
            assertEquals(r.promptTokens() + r.tokens().length - (r.stopReason().equals("length") ? 1 : 0), s.position());

            int[] toks = tp.tokenizer().encode("def f(x): return x + 1");
            float[] lp = s.logProbs(toks);
            float[] logits = s.logits(toks);
            int v = tp.config().vocabSize();
            assertEquals(toks.length - 1, lp.length);
            for (int i = 0; i < lp.length; i++) {
                assertTrue(lp[i] <= 0);
                double max = Double.NEGATIVE_INFINITY, sum = 0;
                for (int j = 0; j < v; j++) max = Math.max(max, logits[i * v + j]);
                for (int j = 0; j < v; j++) sum += Math.exp(logits[i * v + j] - max);
                assertEquals(logits[i * v + toks[i + 1]] - max - Math.log(sum), lp[i], 1e-4);
            }
        }
    }

    /**
     * Compress a context once, then ask about it: the context's prefill under kvzip is cut to the budget (its
     * reconstruction uses the loader's tokenizer), and with the full policy set afterwards the questions are appended
     * whole, the compressed context staying as it is.
     */
    @Test
    void aContextCompressedOnceServesLaterQuestions() {
        ModelWriter.write(tmp, ModelWriter.Preset.TINY, 6, s -> {});
        try (TokenPress tp = TokenPress.load(tmp, LoadOptions.defaults().withDevice("cpu"));
             Session s = tp.newSession(512)) {
            StringBuilder context = new StringBuilder();
            for (int i = 0; i < 12; i++) context.append("def f").append(i).append("(x): return x * ").append(i).append("\n");
            int[] ctx = tp.tokenizer().encode(context.toString());
            s.setPolicy(dev.tokenpress.kv.KvPolicies.parse("kvzip:budget=0.25", tp.config()));
            s.generate(ctx, 0, SamplingOptions.greedy(), null);
            dev.tokenpress.kv.KvCache c = s.cache();
            int heads = tp.config().numLayers() * tp.config().numKvHeads();
            long kept = 0;
            for (int l = 0; l < tp.config().numLayers(); l++) for (int g = 0; g < tp.config().numKvHeads(); g++) kept += c.occupied(l, g);
            assertEquals((long) heads * (int) Math.ceil(0.25 * ctx.length), kept, "the context at its budget");
            s.setPolicy(dev.tokenpress.kv.KvPolicy.FULL);
            int[] question = tp.tokenizer().encodeNoSpecial("assert f3(2) ==");
            GenerationResult r = s.generate(question, 4, SamplingOptions.greedy(), null);
            long after = 0;
            for (int l = 0; l < tp.config().numLayers(); l++) for (int g = 0; g < tp.config().numKvHeads(); g++) after += c.occupied(l, g);
            assertEquals(kept + (long) heads * (question.length + r.tokens().length - (r.stopReason().equals("length") ? 1 : 0)), after,
                    "the question and the answer appended whole");
        }
    }

    /**
     * Several generations on one session under an evicting policy go on past the cache's capacity (the policy frees
     * room); logits() leaves the token history it prefilled; a listener that throws leaves the session holding the
     * prompt, ready for more.
     */
    @Test
    void sessionsStayConsistent() {
        ModelWriter.write(tmp, ModelWriter.Preset.TINY, 5, s -> {});
        try (TokenPress tp = TokenPress.load(tmp, LoadOptions.defaults().withDevice("cpu"))) {
            try (Session s = tp.newSession(64)) {
                s.setPolicy(dev.tokenpress.kv.KvPolicies.parse("window:sink=4,budget=48", tp.config()));
                s.generate("The cat", 100, SamplingOptions.greedy(), null);
                assertTrue(s.position() > 64, "past the capacity: " + s.position());
                GenerationResult again = s.generate(tp.tokenizer().encodeNoSpecial(" and"), 20, SamplingOptions.greedy(), null);
                assertEquals(20, again.tokens().length);
                assertFalse(s.canTruncate(), "a thinned cache cannot be cut back to a prefix");
                s.setPolicy(dev.tokenpress.kv.KvPolicy.FULL);
            }
            try (Session s = tp.newSession(64)) {
                int[] toks = tp.tokenizer().encode("def f(x): return x");
                s.generate("abc", 5, SamplingOptions.greedy(), null);
                s.logits(toks);
                assertArrayEquals(toks, s.tokens());
                assertEquals(toks.length, s.position());
                s.truncate(2);
                assertArrayEquals(java.util.Arrays.copyOf(toks, 2), s.tokens());
            }
            try (Session s = tp.newSession(64)) {
                int[] prompt = tp.tokenizer().encode("The cat");
                int[] calls = {0};
                assertThrows(IllegalStateException.class, () -> s.generate(prompt, 10, SamplingOptions.greedy(), piece -> {
                    if (++calls[0] == 3) throw new IllegalStateException("listener failed");
                }));
                assertEquals(prompt.length, s.position(), "the half-made reply is gone");
                assertArrayEquals(prompt, s.tokens());
                assertEquals(prompt.length, s.cache().occupied(0, 0));
                assertTrue(s.canTruncate());
                s.generate(tp.tokenizer().encodeNoSpecial(" sat"), 4, SamplingOptions.greedy(), null);
            }
        }
    }

    /**
     * score gives the log-probabilities logProbs gives, in chunks smaller than the text, with the most likely
     * alternatives sorted, and it continues a session: scoring the rest after a first part gives the same numbers.
     */
    @Test
    void scoreMatchesLogProbsAndContinues() {
        ModelWriter.write(tmp, ModelWriter.Preset.TINY, 5, s -> {});
        try (TokenPress tp = TokenPress.load(tmp, LoadOptions.defaults().withDevice("cpu").withMaxChunk(5))) {
            int[] toks = tp.tokenizer().encode("def f(x): return x + 1 if x > 0 else -x");
            float[] want;
            try (Session s = tp.newSession(128)) {
                want = s.logProbs(toks);
                // against every row's logits reduced here: log-softmax at the next token
                int v = tp.config().vocabSize();
                float[] lg = s.logits(toks);
                for (int i = 0; i + 1 < toks.length; i++) {
                    double m = Double.NEGATIVE_INFINITY, z = 0;
                    for (int j = 0; j < v; j++) m = Math.max(m, lg[i * v + j]);
                    for (int j = 0; j < v; j++) z += Math.exp(lg[i * v + j] - m);
                    assertEquals(lg[i * v + toks[i + 1]] - m - Math.log(z), want[i], 1e-5, "position " + i);
                }
            }
            try (Session s = tp.newSession(128)) {
                Session.Score[] sc = s.score(toks, toks.length, 3);
                assertEquals(toks.length - 1, sc.length);
                assertEquals(toks.length, s.position());
                assertArrayEquals(toks, s.tokens());
                for (int i = 0; i < sc.length; i++) {
                    assertEquals(toks[i + 1], sc[i].token());
                    assertEquals(want[i], sc[i].logprob(), 1e-4, "token " + (i + 1));
                    assertEquals(3, sc[i].topTokens().length);
                    assertTrue(sc[i].topLogprobs()[0] >= sc[i].topLogprobs()[1] && sc[i].topLogprobs()[1] >= sc[i].topLogprobs()[2]);
                    assertTrue(sc[i].topLogprobs()[0] >= sc[i].logprob() - 1e-9);
                }
            }
            try (Session s = tp.newSession(128)) {
                int half = toks.length / 2;
                Session.Score[] a = s.score(java.util.Arrays.copyOf(toks, half + 1), half, 0);
                assertEquals(half, a.length, "the last entry scores the first unfed token");
                Session.Score[] b = s.score(java.util.Arrays.copyOfRange(toks, half, toks.length), toks.length - half, 0);
                for (int i = 0; i < a.length; i++) assertEquals(want[i], a[i].logprob(), 1e-4);
                for (int i = 0; i < b.length; i++) assertEquals(want[half + i], b[i].logprob(), 1e-4);
                assertThrows(IllegalArgumentException.class, () -> s.score(toks, 0, 0));
            }
        }
    }

    /**
     * truncate keeps a prefix of what a session processed: the tokens, the cache's slots and what decoding from
     * there gives are those of a session that only ever saw the prefix; policies that evict or select, and quantized
     * caches, refuse it.
     */
    @Test
    void truncateKeepsAPrefix() {
        ModelWriter.write(tmp, ModelWriter.Preset.TINY, 5, s -> {});
        try (TokenPress tp = TokenPress.load(tmp, LoadOptions.defaults().withDevice("cpu"))) {
            int[] prompt = tp.tokenizer().encode("The cat sat on the mat and then");
            int[] more = tp.tokenizer().encodeNoSpecial(" a dog came");
            try (Session s = tp.newSession(128); Session fresh = tp.newSession(128)) {
                GenerationResult r = s.generate(prompt, 6, SamplingOptions.greedy(), null);
                int[] all = s.tokens();
                assertEquals(s.position(), all.length);
                assertArrayEquals(prompt, java.util.Arrays.copyOf(all, prompt.length));
                assertArrayEquals(java.util.Arrays.copyOf(r.tokens(), 5), java.util.Arrays.copyOfRange(all, prompt.length, all.length));
                int keep = prompt.length - 2;
                assertTrue(s.canTruncate());
                s.truncate(keep);
                assertEquals(keep, s.position());
                assertArrayEquals(java.util.Arrays.copyOf(prompt, keep), s.tokens());
                for (int l = 0; l < s.cache().layers(); l++)
                    for (int h = 0; h < s.cache().kvHeads(); h++) {
                        assertEquals(keep, s.cache().occupied(l, h));
                        assertEquals(keep, s.cache().highWater(l, h));
                    }
                GenerationResult a = s.generate(more, 6, SamplingOptions.greedy(), null);
                int[] both = new int[keep + more.length];
                System.arraycopy(prompt, 0, both, 0, keep);
                System.arraycopy(more, 0, both, keep, more.length);
                GenerationResult b = fresh.generate(both, 6, SamplingOptions.greedy(), null);
                assertArrayEquals(b.tokens(), a.tokens());
                assertThrows(IllegalArgumentException.class, () -> s.truncate(s.position() + 1));
                s.setPolicy(dev.tokenpress.kv.KvPolicies.parse("window:budget=16", tp.config()));
                assertFalse(s.canTruncate());
                assertThrows(IllegalStateException.class, () -> s.truncate(1));
                s.setPolicy(dev.tokenpress.kv.KvPolicy.FULL);
            }
            try (Session q = tp.newSession(128, dev.tokenpress.kv.quant.KvQuantSpec.parse("int4"))) {
                assertFalse(q.canTruncate(), "a quantized cache re-encodes earlier tokens on append");
            }
        }
    }

    /**
     * Greedy generation through the pipelined loop (forced here; the CPU has no device feedback register, so it is
     * emulated on the host) and the plain loop: the same tokens, stop reasons, decode steps and session positions —
     * for a length stop, a context stop and a second turn in the same session.
     */
    @Test
    void pipelinedGreedyGenerationMatchesThePlainLoop() {
        ModelWriter.write(tmp, ModelWriter.Preset.TINY, 5, s -> {});
        List<List<Object>> runs = new ArrayList<>();
        for (Boolean pipelined : new Boolean[] {false, true}) {
            List<Object> got = new ArrayList<>();
            try (TokenPress tp = TokenPress.load(tmp, LoadOptions.defaults().withDevice("cpu"))) {
                tp.model().setPipelinedGreedy(pipelined);
                try (Session s = tp.newSession(64)) {
                    for (String prompt : new String[] {"The cat", " and then"}) {
                        GenerationResult r = s.generate(prompt, 9, SamplingOptions.greedy(), null);
                        got.add(java.util.Arrays.toString(r.tokens()) + " " + r.stopReason() + " " + r.decodeSteps()
                                + " @" + s.position());
                    }
                }
                int prompt = tp.tokenizer().encode("The cat").length;
                try (Session s = tp.newSession(prompt + 5)) {  // the context fills before 20 tokens
                    GenerationResult r = s.generate("The cat", 20, SamplingOptions.greedy(), null);
                    got.add(java.util.Arrays.toString(r.tokens()) + " " + r.stopReason() + " " + r.decodeSteps()
                            + " @" + s.position());
                    assertEquals("context", r.stopReason(), "pipelined=" + pipelined);
                }
            }
            runs.add(got);
        }
        assertEquals(runs.get(0), runs.get(1));
    }

    @Test
    void sameSeedSameSample() {
        ModelWriter.write(tmp, ModelWriter.Preset.TINY, 5, s -> {});
        SamplingOptions o = SamplingOptions.defaults().withSeed(99);
        String[] out = new String[2];
        for (int i = 0; i < 2; i++) {
            try (TokenPress tp = TokenPress.load(tmp, LoadOptions.defaults().withDevice("cpu")); Session s = tp.newSession(64)) {
                out[i] = s.generate("Once", 16, o, null).text();
            }
        }
        assertEquals(out[0], out[1]);
    }
}
