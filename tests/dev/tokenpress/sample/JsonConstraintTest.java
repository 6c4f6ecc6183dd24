package dev.tokenpress.sample;

import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;

import java.util.Set;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The JSON recognizer against Jackson's strict parser (a text is accepted whole iff Jackson parses it as exactly one
 * value; every prefix of a valid text is accepted), and the JSON sampling stage: whatever the logits, sampling with
 * it yields one valid JSON value followed by an end token.
 */
class JsonConstraintTest {
    static final ObjectMapper STRICT = new ObjectMapper().enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);

    static boolean jacksonValue(String s) {
        try {
            JsonNode n = STRICT.readTree(s);
            return n != null && !n.isMissingNode();
        } catch (Exception e) {
            return false;
        }
    }

    static boolean accepts(String s, boolean objectOnly) {
        JsonPrefix p = new JsonPrefix(objectOnly);
        return p.feed(s) && p.complete();
    }

    @Test
    void acceptsJsonAndRejectsWhereItBreaks() {
        String[] valid = {"{}", " { \"a\" : [1, -2.5e+3, true, false, null, \"x\\\\\\\"\\u00e9\"], \"b\": {} } ", "[]", "0",
                "-0.0", "\"\"", "[[[]]]", "{\"k\":{\"k\":[{\"k\":1E5}]}}", "12", "true"};
        for (String v : valid) {
            assertTrue(jacksonValue(v), v);
            assertTrue(accepts(v, false), v);
            for (int i = 0; i <= v.length(); i++) assertTrue(new JsonPrefix(false).feed(v.substring(0, i)), "prefix of " + v);
        }
        String[] invalid = {"{,}", "[1,]", "01", "1.", "-", "{\"a\"}", "{\"a\":}", "[1 2]", "tru", "truex", "\"\\x\"",
                "{\"a\":1}}", "]", "{} {}", "\"a\nb\"", "1e", "--1", "{'a':1}"};
        for (String v : invalid) {
            assertFalse(jacksonValue(v), v);
            assertFalse(accepts(v, false), v);
        }
        assertFalse(new JsonPrefix(false).feed("[1,]"), "the ] after a comma can never be fixed");
        assertTrue(new JsonPrefix(false).feed("[1,"), "but [1, still can");
        assertFalse(new JsonPrefix(true).feed("["), "json_object: the value must be an object");
        assertTrue(accepts(" {\"a\": 1}\n", true));
        JsonPrefix p = new JsonPrefix(false);
        p.feed("{\"a\": [1");
        JsonPrefix c = p.copy();
        assertTrue(c.feed("]}"));
        assertTrue(c.complete() && c.done());
        assertFalse(p.complete(), "the copy is independent");
        assertTrue(p.feed(", 2]}"));
    }

    /** A trace reports the model's distribution, not the masked one the constraint leaves. */
    @Test
    void traceSeesTheModelDistribution() {
        String[] texts = {"{", "x", "}", null};
        JsonConstraint json = new JsonConstraint(texts, Set.of(3), true);
        SamplerChain chain = SamplerChain.create(SamplingOptions.greedy(), 4, json);
        chain.setTrace(true);
        json.begin();
        float[] logits = {0f, 2f, 1f, -1f}; // "x" is the most likely token but cannot start an object
        int t = chain.sample(logits);
        assertEquals(0, t, "the constraint picks {");
        StepTrace tr = chain.lastTrace();
        double z = Math.log(Math.exp(0) + Math.exp(2) + Math.exp(1) + Math.exp(-1));
        assertEquals(0 - z, tr.logprob(), 1e-6, "ln p({) under the model");
        assertEquals(1, tr.topTokens()[0], "the model's favourite stays listed first");
        for (double lp : tr.topLogprobs()) assertTrue(Double.isFinite(lp));
    }

    @Test
    void generationLimitsWhitespace() {
        assertTrue(new JsonPrefix(false, 2).feed("[ 1,\n 2 ]"));
        assertFalse(new JsonPrefix(false, 2).feed("[1,   2]"), "a run of three");
        assertFalse(new JsonPrefix(false, 2).feed(" 1"), "nothing before the value");
        assertTrue(new JsonPrefix(false, 2).feed("\"   many   spaces   \""), "inside strings anything goes");
        assertTrue(new JsonPrefix(false).feed("     [1,      2]"), "the recognizer itself takes any whitespace");
        assertTrue(new JsonPrefix(false, 2).feed("[1  ]"), "whitespace after a number counts once");
        assertFalse(new JsonPrefix(false).feed("\"\\u\u0661\u0662\u0663\u0664\""), "\\u takes ASCII hex digits only");
        assertFalse(new JsonPrefix(false).feed("\"\\u\uFF21BCD\""), "not fullwidth letters either");
    }

    /** Random strings over JSON's alphabet: accepted whole exactly when Jackson parses them. */
    @Test
    void agreesWithJacksonOnRandomStrings() {
        SplittableRandom r = new SplittableRandom(3);
        String alphabet = "{}[]:,\" 01-.eEtrufalsn\\u9a";
        int valid = 0;
        for (int round = 0; round < 30000; round++) {
            StringBuilder sb = new StringBuilder();
            int n = 1 + r.nextInt(10);
            for (int i = 0; i < n; i++) sb.append(alphabet.charAt(r.nextInt(alphabet.length())));
            String s = sb.toString();
            boolean want = jacksonValue(s);
            assertEquals(want, accepts(s, false), "'" + s + "'");
            if (want) valid++;
        }
        assertTrue(valid > 100, "enough valid cases: " + valid);
    }

    /**
     * The walk over the vocabulary in text order (shared prefix states, dead prefixes skipped) allows exactly the
     * tokens {@link JsonConstraint#allows} allows one by one, in random states of random JSON texts, over a vocabulary
     * of single characters and many multi-character tokens with common prefixes, surrogate pairs and empty or null
     * texts; and the stage keeps the same candidates whether it checks them best-first (top-k) or masks them all.
     */
    @Test
    void theVocabularyWalkAllowsWhatEachTokenAllows() {
        SplittableRandom r = new SplittableRandom(12);
        String alphabet = "{}[]:,\" 01-.eEtrufalsn\\u9a\n";
        java.util.List<String> vocab = new java.util.ArrayList<>();
        for (char c = ' '; c < 127; c++) vocab.add(String.valueOf(c));
        vocab.add("\n");
        vocab.add("\uD83D\uDE00");            // an emoji: two chars, one code point
        vocab.add("\"\uD83D\uDE00\"");
        vocab.add(null);
        vocab.add("");
        for (int i = 0; i < 3000; i++) {
            StringBuilder sb = new StringBuilder();
            int n = 1 + r.nextInt(6);
            for (int j = 0; j < n; j++) sb.append(r.nextInt(40) == 0 ? "\uD83D\uDE00" : String.valueOf(alphabet.charAt(r.nextInt(alphabet.length()))));
            vocab.add(sb.toString());
        }
        String[] texts = vocab.toArray(new String[0]);
        int end = texts.length;
        texts = java.util.Arrays.copyOf(texts, end + 1); // the end token has no text
        int tested = 0, someAllowed = 0;
        String[] docs = {"{\"a\": [1, 2.5e-3, true, null, \"x\\u00e9y\"], \"b\": {\"c\": -0}}", "[\"\uD83D\uDE00\", {}, []]", "\"s\"", "-12.5"};
        for (String doc : docs)
            for (boolean objectOnly : new boolean[] {false, true})
                for (int cut = 0; cut <= doc.length(); cut++) {
                    JsonConstraint c = new JsonConstraint(texts, Set.of(end), objectOnly);
                    c.begin();
                    boolean fine = true;
                    for (int i = 0; i < cut && fine; i++) {
                        int id = vocab.indexOf(String.valueOf(doc.charAt(i)));
                        if (id < 0 || !c.allows(id)) fine = false; // objectOnly refuses a non-object: stop there
                        else c.accept(id);
                    }
                    boolean[] mask = c.mask();
                    for (int id = 0; id < end; id++) {
                        assertEquals(c.allows(id), mask[id], "doc " + doc + " cut " + cut + " token '" + texts[id] + "'");
                        if (mask[id]) someAllowed++;
                    }
                    tested++;
                    // best-first against the full mask through the stage itself
                    float[] logits = new float[texts.length];
                    for (int i = 0; i < logits.length; i++) logits[i] = (float) r.nextGaussian();
                    TokenDataArray a = new TokenDataArray(texts.length), b = new TokenDataArray(texts.length);
                    a.load(logits, 0, texts.length);
                    b.load(logits, 0, texts.length);
                    c.limitTo(5);
                    c.apply(a);
                    a.truncateTopK(5);
                    c.limitTo(0);
                    c.apply(b);
                    b.truncateTopK(5);
                    assertArrayEquals(java.util.Arrays.copyOf(b.ids, 5), java.util.Arrays.copyOf(a.ids, 5), "top-5 at cut " + cut);
                    assertArrayEquals(java.util.Arrays.copyOf(b.logits, 5), java.util.Arrays.copyOf(a.logits, 5));
                }
        assertTrue(tested > 100 && someAllowed > 1000, tested + " states, " + someAllowed + " allowed");
    }

    /**
     * A toy vocabulary and random logits: with the constraint first in the chain, every sampled sequence is one JSON
     * object followed by the end token, and the end token comes only then.
     */
    @Test
    void samplingStaysValidJson() {
        String[] texts = {"{", "}", "\"a\"", ":", "1", ",", " ", "x", "]", "[", "\"", "true", null, "{\"b\":"};
        int end = 12, v = texts.length;
        SplittableRandom r = new SplittableRandom(9);
        int completed = 0;
        for (int run = 0; run < 300; run++) {
            JsonConstraint json = new JsonConstraint(texts, Set.of(end), true);
            SamplerChain chain = SamplerChain.create(SamplingOptions.defaults().withTopK(0).withTopP(1).withMinP(0)
                    .withTemp(1.5).withSeed(run), v, json);
            chain.accept(7); // a prompt token: not part of the JSON
            json.begin();
            StringBuilder out = new StringBuilder();
            boolean ended = false;
            for (int step = 0; step < 60; step++) {
                float[] logits = new float[v];
                for (int i = 0; i < v; i++) logits[i] = (float) (r.nextDouble() * 4 - 2);
                int t = chain.sample(logits);
                if (t == end) {
                    ended = true;
                    break;
                }
                chain.accept(t);
                out.append(texts[t]);
                assertTrue(new JsonPrefix(true).feed(out), "run " + run + ": " + out);
            }
            if (ended) {
                completed++;
                assertTrue(jacksonValue(out.toString()) && out.toString().strip().startsWith("{"), "run " + run + ": " + out);
            }
        }
        assertTrue(completed > 50, "most runs end: " + completed);
    }
}
