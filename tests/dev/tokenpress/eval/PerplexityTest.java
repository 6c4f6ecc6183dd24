package dev.tokenpress.eval;

import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.model.Llama;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** The perplexity evaluator against an independent reference, and its invariants. */
class PerplexityTest {
    @TempDir
    static Path tmp;
    static TokenPress tp;
    static int[] tokens;

    @BeforeAll
    static void load() {
        Path dir = tmp.resolve("tiny");
        ModelWriter.write(dir, ModelWriter.Preset.TINY, 11, s -> {});
        tp = TokenPress.load(dir, LoadOptions.defaults().withDevice("cpu").withThreads(2).withMaxChunk(48));
        SplittableRandom r = new SplittableRandom(5);
        tokens = new int[150];
        for (int i = 0; i < tokens.length; i++) tokens[i] = r.nextInt(tp.config().vocabSize() - 2);
    }

    @AfterAll
    static void close() {
        if (tp != null) tp.close();
    }

    static KvPolicy policy(String spec) {
        return KvPolicies.parse(spec, tp.config());
    }

    /** Mean NLL over the predictions of tokens[from..n), from one prefill's logits and a plain log-softmax. */
    static double referenceNll(Llama m, int[] t, int from) {
        m.setPolicy(KvPolicy.FULL);
        int v = m.config.vocabSize();
        float[] logits;
        try (KvCache c = m.newCache(t.length)) {
            logits = m.prefill(c, t, 0, true, null);
        }
        double sum = 0;
        for (int j = from; j < t.length; j++) {
            int row = (j - 1) * v;
            double max = Double.NEGATIVE_INFINITY;
            for (int i = 0; i < v; i++) max = Math.max(max, logits[row + i]);
            double s = 0;
            for (int i = 0; i < v; i++) s += Math.exp(logits[row + i] - max);
            sum += max + Math.log(s) - logits[row + t[j]];
        }
        return sum / (t.length - from);
    }

    @Test
    void fullPerplexityEqualsAReferenceComputation() {
        int prefill = 20;
        double ref = referenceNll(tp.model(), tokens, prefill);
        Perplexity.Result r = Perplexity.run(tp.model(), tokens, KvPolicy.FULL, KvPolicy.FULL, prefill, null);
        assertEquals(tokens.length - prefill, r.scored());
        assertEquals(ref, r.baselineNll(), 1e-6 * Math.abs(ref), "full-prefill baseline");
        assertEquals(ref, r.meanNll(), 1e-4 * Math.abs(ref), "decoded full policy");
        assertEquals(Math.exp(ref), r.ppl(), 1e-3 * Math.exp(ref));
        assertTrue(r.meanKld() >= -1e-9 && r.meanKld() < 1e-6, "decode vs prefill numerics: " + r.meanKld());
        assertTrue(r.top1() > 0.99);
        assertEquals(1.0, r.slotRatio(), 0);
        assertEquals(1.0, r.byteRatio(), 0);
        // a prefill of one token: every prediction but the BOS's is decoded
        Perplexity.Result one = Perplexity.run(tp.model(), tokens, KvPolicy.FULL, null, 1, null);
        assertEquals(referenceNll(tp.model(), tokens, 1), one.meanNll(), 1e-4);
        assertTrue(Double.isNaN(one.meanKld()));
    }

    /**
     * SkipDecode's cost: every layer equals the plain run bit for bit; fewer layers change the predictions, free the
     * skipped layers' slots (slot ratio above 1) and are labelled; the schedule's first scored token runs every layer.
     */
    @Test
    void skipDecodeAtFullDepthIsThePlainRunAndFewerLayersCost() {
        int layers = tp.config().numLayers(), prefill = 10, scored = tokens.length - prefill;
        Perplexity.Result plain = Perplexity.run(tp.model(), tokens, KvPolicy.FULL, KvPolicy.FULL, prefill, 0, null, null);
        Perplexity.Result all = Perplexity.run(tp.model(), tokens, KvPolicy.FULL, KvPolicy.FULL, prefill, 0, null,
                new dev.tokenpress.model.SkipDecode.Schedule(layers, layers, scored), null);
        assertEquals(plain.meanNll(), all.meanNll(), 0);
        assertEquals(plain.meanKld(), all.meanKld(), 0);
        Perplexity.Result fewer = Perplexity.run(tp.model(), tokens, KvPolicy.FULL, KvPolicy.FULL, prefill, 0, null,
                new dev.tokenpress.model.SkipDecode.Schedule(layers, 1, scored), null);
        assertTrue(fewer.meanKld() > 1e-4, "skipping layers changes the predictions: " + fewer.meanKld());
        assertTrue(fewer.slotRatio() > 1, "the skipped layers hold fewer tokens: " + fewer.slotRatio());
        assertTrue(fewer.kv().endsWith("skip:" + layers + ":1"), fewer.kv());
    }

    @Test
    void aPolicyAgainstItselfHasZeroKlAndFullAgreement() {
        for (String spec : new String[]{"window:sink=4,budget=24", "h2o:budget=24", "tidal:k=16,full_layers=1"}) {
            Perplexity.Result r = Perplexity.run(tp.model(), tokens, policy(spec), policy(spec), 10, null);
            assertEquals(0.0, r.meanKld(), 0, spec);
            assertEquals(0.0, r.maxKld(), 0, spec);
            assertEquals(1.0, r.top1(), 0, spec);
            assertEquals(0.0, r.deltaPpl(), 0, spec);
            assertEquals(0.0, r.meanDeltaP(), 0, spec);
        }
    }

    @Test
    void theBaselineRunDoesNotDisturbThePolicy() {
        for (String spec : new String[]{"window:sink=4,budget=24", "h2o:budget=24", "tidal:k=16,full_layers=1"}) {
            Perplexity.Result alone = Perplexity.run(tp.model(), tokens, policy(spec), null, 10, null);
            Perplexity.Result both = Perplexity.run(tp.model(), tokens, policy(spec), KvPolicy.FULL, 10, null);
            assertEquals(alone.meanNll(), both.meanNll(), 0, spec);
            assertEquals(alone.peakSlots(), both.peakSlots(), spec);
            if (!spec.startsWith("tidal")) assertTrue(both.meanKld() > 0, spec);
        }
        assertSame(KvPolicy.FULL, tp.model().policy());
    }

    @Test
    void kvBytesAreThoseOfACacheThatRunsTheEvaluationUnchanged() {
        Perplexity.Result r = Perplexity.run(tp.model(), tokens, policy("window:sink=4,budget=24"), KvPolicy.FULL, 10, null);
        assertTrue(r.peakHighWater() <= 25 && r.peakHighWater() >= 24, "high water " + r.peakHighWater());
        assertTrue(r.kvBytes() < r.fullKvBytes());
        assertEquals(r.fullSlots(), (long) (tokens.length - 1) * tp.config().numLayers() * tp.config().numKvHeads());
        Perplexity.Result sized = Perplexity.run(tp.model(), tokens, policy("window:sink=4,budget=24"), KvPolicy.FULL, 10,
                r.peakHighWater(), null);
        assertEquals(r.meanNll(), sized.meanNll(), 0);
        assertEquals(r.meanKld(), sized.meanKld(), 0);
        assertEquals(r.kvBytes(), sized.kvBytes());
        // a selection policy keeps (and allocates) everything
        Perplexity.Result tidal = Perplexity.run(tp.model(), tokens, policy("tidal:k=16,full_layers=1"), null, 10, null);
        assertEquals(tidal.fullKvBytes(), tidal.kvBytes());
        assertEquals(1.0, tidal.slotRatio(), 0);
    }

    @Test
    void badArgumentsAreRejected() {
        assertThrows(IllegalArgumentException.class, () -> Perplexity.run(tp.model(), new int[]{1}, KvPolicy.FULL, null, 1, null));
        assertThrows(IllegalArgumentException.class, () -> Perplexity.run(tp.model(), tokens, KvPolicy.FULL, null, tokens.length, null));
        KvPolicy p = policy("h2o:budget=24");
        assertThrows(IllegalArgumentException.class, () -> Perplexity.run(tp.model(), tokens, p, p, 10, null));
    }

    /** On the trained model, a window smaller than the text costs perplexity; full attention does not. */
    @Test
    void aSmallWindowCostsPerplexityOnTheTrainedModel() throws Exception {
        Path dir = Path.of("models", "tokenpress-tiny");
        Path text = Path.of("tests", "resources", "eval", "sample.py");
        org.junit.jupiter.api.Assumptions.assumeTrue(Files.isRegularFile(dir.resolve("model.safetensors")), "no embedded model");
        try (TokenPress t = TokenPress.load(dir, LoadOptions.defaults().withDevice("cpu").withThreads(2))) {
            int[] all = t.tokenizer().encode(Files.readString(text, StandardCharsets.UTF_8));
            int[] toks = Arrays.copyOf(all, 400);
            Perplexity.Result full = Perplexity.run(t.model(), toks, KvPolicy.FULL, KvPolicy.FULL, 32, null);
            Perplexity.Result win = Perplexity.run(t.model(), toks, KvPolicies.parse("window:sink=4,budget=64", t.config()), KvPolicy.FULL, 32, null);
            assertTrue(full.ppl() > 1.5 && full.ppl() < 30, "trained model PPL " + full.ppl());
            assertTrue(Math.abs(full.deltaPpl()) < 1e-3 * full.ppl(), "full ΔPPL " + full.deltaPpl());
            assertTrue(win.deltaPpl() > 0.05 * full.ppl(), "window ΔPPL " + win.deltaPpl());
            assertTrue(win.meanKld() > 0.01 && win.top1() < 1.0, win.toString());
            assertTrue(win.byteRatio() > 5, "window byte ratio " + win.byteRatio());
        }
    }
}
