package dev.tokenpress.sample;

import org.junit.jupiter.api.Test;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** DRY, XTC, top-n-sigma and dynamic temperature against their definitions (llama.cpp's semantics). */
class ExtraSamplersTest {

    static DrySampler dry(double mult, double base, int allowed, int lastN, DrySampler.Breakers br, int... history) {
        DrySampler d = new DrySampler(mult, base, allowed, lastN, br);
        for (int t : history) d.accept(t);
        return d;
    }

    /** The example of llama.cpp's comments: a b c c b c y a b c. */
    @Test
    void dryFindsTheRepeatsOfTheReferenceExample() {
        int a = 1, b = 2, c = 3, y = 4;
        int[] h = {a, b, c, c, b, c, y, a, b, c};
        assertEquals(Map.of(c, 3, b, 1, y, 2), dry(1, 1.75, 1, -1, null, h).penalties());
        assertEquals(Map.of(c, 3, y, 2), dry(1, 1.75, 2, -1, null, h).penalties());
        assertEquals(Map.of(), dry(1, 1.75, 4, -1, null, h).penalties(), "no repeat reaches 4");
        // the window: only the last 4 tokens (y a b c) are scanned: nothing repeats there
        assertEquals(Map.of(), dry(1, 1.75, 1, 4, null, h).penalties());
        // the penalty: multiplier * base^(len - allowed) subtracted from the logits of c and y
        DrySampler d = dry(0.8, 2.0, 2, -1, null, h);
        TokenDataArray cur = new TokenDataArray(5);
        cur.load(new float[] {1, 1, 1, 1, 1}, 0, 5);
        d.apply(cur);
        assertArrayEquals(new float[] {1, 1, 1, 1 - 0.8f * 2, 1 - 0.8f * 1}, java.util.Arrays.copyOf(cur.logits, 5), 1e-6f);
    }

    /** The linear-time search gives what the quadratic definition gives, on random histories with many repeats. */
    @Test
    void dryMatchesTheQuadraticDefinition() {
        SplittableRandom r = new SplittableRandom(5);
        for (int trial = 0; trial < 2000; trial++) {
            int n = 1 + r.nextInt(60), alphabet = 2 + r.nextInt(4), allowed = r.nextInt(4);
            int lastN = r.nextInt(4) == 0 ? 1 + r.nextInt(n + 5) : -1;
            int[] h = new int[n];
            for (int i = 0; i < n; i++) h[i] = r.nextInt(alphabet);
            int breaker = r.nextBoolean() ? alphabet : r.nextInt(alphabet + 1); // sometimes a token of the text
            Map<Integer, List<int[]>> single = Map.of(breaker, List.of(new int[0]));
            DrySampler.Breakers br = r.nextBoolean() ? null : breakers(single);
            Map<Integer, Integer> got = dry(1, 1.75, allowed, lastN, br, h).penalties();
            assertEquals(quadratic(h, allowed, lastN, br == null ? -1 : breaker), got,
                    "history " + java.util.Arrays.toString(h) + " allowed " + allowed + " lastN " + lastN + " breaker " + (br == null ? "none" : breaker));
        }
    }

    static DrySampler.Breakers breakers(Map<Integer, List<int[]>> m) {
        String[] texts = new String[16];
        for (int i = 0; i < texts.length; i++) texts[i] = "t" + i;
        for (int id : m.keySet()) texts[id] = "X";
        return DrySampler.Breakers.build(List.of("X"), texts, s -> new int[0]);
    }

    /** Every shift k compared token by token; the repeat may not reach back to the newest breaker. */
    static Map<Integer, Integer> quadratic(int[] all, int allowed, int lastN, int breaker) {
        int n = lastN < 0 ? all.length : Math.min(all.length, lastN);
        int[] w = java.util.Arrays.copyOfRange(all, all.length - n, all.length);
        Map<Integer, Integer> out = new HashMap<>();
        if (n <= allowed) return out;
        int limit = n;
        for (int i = 0; i < n; i++)
            if (w[n - 1 - i] == breaker) {
                limit = i;
                break;
            }
        if (limit < allowed) return out;
        for (int k = 1; k < n; k++) {
            int len = 0;
            while (len + k < n && w[n - 1 - len] == w[n - 1 - len - k]) len++;
            len = Math.min(len, limit);
            if (len >= allowed) out.merge(w[n - k], len, Math::max);
        }
        return out;
    }

    /** Breakers from strings: a token containing one is a single-token breaker; one ending with its start has a tail. */
    @Test
    void dryBreakersFollowTheTokenTexts() {
        String[] texts = {"a", "b", ":\"", "x:", "\"", "\n", "ok"};
        java.util.function.Function<String, int[]> tok = s -> s.equals("\"") ? new int[] {4} : new int[] {0};
        DrySampler.Breakers br = DrySampler.Breakers.build(List.of(":\"", "\n"), texts, tok);
        assertTrue(br.single(2));
        assertTrue(br.single(5));
        assertFalse(br.single(3), "x: only starts the breaker");
        assertArrayEquals(new int[] {4}, br.byHead.get(3).get(0), "its tail is the tokenization of the rest");
        // the repeat "x: \" a b" is cut by the two-token breaker x: + \" (ids 3, 4): only what follows it counts
        int[] h = {3, 4, 0, 1, 6, 3, 4, 0, 1};
        assertEquals(Map.of(6, 4), dry(1, 1.75, 2, -1, null, h).penalties());
        assertEquals(Map.of(6, 2), dry(1, 1.75, 2, -1, br, h).penalties(), "the breaker limits the repeat to a b");
        // a single-token breaker is never penalized
        int[] nl = {5, 0, 5, 0};
        DrySampler d = dry(1, 2, 1, -1, br, nl);
        TokenDataArray cur = new TokenDataArray(7);
        cur.load(new float[] {0, 0, 0, 0, 0, 0, 0}, 0, 7);
        d.apply(cur);
        assertEquals(0f, cur.logits[5], "the newline breaker itself");
    }

    @Test
    void xtcRemovesTheTopChoicesButTheLeastLikelyOfThem() {
        float[] logits = {(float) Math.log(0.5), (float) Math.log(0.3), (float) Math.log(0.15), (float) Math.log(0.05)};
        TokenDataArray cur = new TokenDataArray(4);
        cur.load(logits, 0, 4);
        new XtcSampler(1.0, 0.1, 1).apply(cur);
        assertArrayEquals(new int[] {2, 3}, cur.tokenIds(), "0.5 and 0.3 go; 0.15, the last above 0.1, stays");
        cur.load(logits, 0, 4);
        new XtcSampler(1.0, 0.4, 1).apply(cur);
        assertArrayEquals(new int[] {0, 1, 2, 3}, cur.tokenIds(), "one token above the threshold: nothing happens");
        cur.load(logits, 0, 4);
        new XtcSampler(1.0, 0.6, 1).apply(cur);
        assertEquals(4, cur.size, "a threshold above 0.5 disables");
        // probability: about that share of the steps act
        XtcSampler half = new XtcSampler(0.5, 0.1, 7);
        int acted = 0;
        for (int i = 0; i < 4000; i++) {
            cur.load(logits, 0, 4);
            half.apply(cur);
            if (cur.size == 2) acted++;
        }
        assertEquals(2000, acted, 120);
    }

    @Test
    void topNSigmaKeepsLogitsWithinNStandardDeviationsOfTheMax() {
        float[] logits = {10, 9, 8, 2, 1, 0, Float.NEGATIVE_INFINITY};
        double mean = (10 + 9 + 8 + 2 + 1 + 0) / 6.0, var = 0;
        for (int i = 0; i < 6; i++) var += (logits[i] - mean) * (logits[i] - mean);
        double sigma = Math.sqrt(var / 6);
        TokenDataArray cur = new TokenDataArray(7);
        cur.load(logits, 0, 7);
        new TopNSigmaSampler(1.0).apply(cur);
        int keep = 0;
        for (int i = 0; i < 6; i++) if (logits[i] >= 10 - sigma) keep++;
        assertEquals(keep, cur.size);
        assertEquals(3, keep, "sigma " + sigma);
        cur.load(logits, 0, 7);
        new TopNSigmaSampler(0).apply(cur);
        assertEquals(7, cur.size, "n <= 0 disables");
    }

    @Test
    void dynamicTemperatureFollowsTheEntropy() {
        // uniform: normalized entropy 1 -> the highest temperature; one dominant token -> near the lowest
        TokenDataArray cur = new TokenDataArray(4);
        cur.load(new float[] {1, 1, 1, 1}, 0, 4);
        new TemperatureSampler(1.0, 0.5, 1.0).apply(cur);
        assertEquals(1 / 1.5f, cur.logits[0], 1e-5f);
        float[] peaked = {20, 0, 0, 0};
        cur.load(peaked, 0, 4);
        TokenDataArray ref = new TokenDataArray(4);
        ref.load(peaked, 0, 4);
        ref.softmax(true);
        double h = 0;
        for (int i = 0; i < 4; i++) if (ref.probs[i] > 0) h -= ref.probs[i] * Math.log(ref.probs[i]);
        double t = 0.5 + 1.0 * Math.pow(h / Math.log(4), 2.0);
        new TemperatureSampler(1.0, 0.5, 2.0).apply(cur);
        assertEquals(20 / t, cur.logits[0], 1e-3);
        assertTrue(t < 0.51, "a confident step cools: " + t);
        assertEquals("temp-ext", new TemperatureSampler(1, 0.5, 1).name());
    }

    @Test
    void theChainFollowsLlamaCppsOrder() {
        SamplingOptions o = SamplingOptions.defaults().withSeed(3).withDry(0.8, 1.75, 2, -1, List.of("\n"))
                .withXtc(0.5, 0.1).withTopNSigma(1.5).withDynatemp(0.3, 1.0);
        SamplerChain c = SamplerChain.create(o, 16, Map.of(1, 1f), null);
        assertEquals("logits -> logit-bias -> penalties -> dry -> top-n-sigma -> top-k -> typical -> top-p -> min-p -> xtc -> temp-ext -> dist",
                c.describe());
        assertEquals("logits -> penalties -> top-k -> typical -> top-p -> min-p -> temp -> dist",
                SamplerChain.create(SamplingOptions.defaults(), 16).describe(), "all off: the chain as before");
        assertNull(o.validationError());
        assertNotNull(o.withXtc(1.5, 0.1).validationError());
        assertNotNull(o.withDry(0.8, 0.5, 2, -1, List.of()).validationError());
        assertNotNull(o.withDynatemp(-1, 1).validationError());
        assertTrue(o.dryEnabled());
        assertFalse(o.withDry(0, 1.75, 2, -1, List.of()).dryEnabled());
    }

    /** Off by default: the options of the thirteen-argument constructor sample exactly as before. */
    @Test
    void defaultsAreOff() {
        SamplingOptions d = SamplingOptions.defaults();
        assertEquals(0, d.dryMultiplier());
        assertEquals(0, d.xtcProbability());
        assertTrue(d.topNSigma() <= 0);
        assertEquals(0, d.dynatempRange());
        assertEquals(List.of("\n", ":", "\"", "*"), d.drySequenceBreakers());
    }
}
