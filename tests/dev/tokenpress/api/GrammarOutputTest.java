package dev.tokenpress.api;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Grammar-constrained generation on the embedded model: a JSON schema's output parses and has the schema's shape,
 * greedy and sampled, ending with the model's end token once the grammar is closed; a GBNF grammar's output is one
 * of its sentences; speculative decoding keeps the constrained text.
 */
class GrammarOutputTest {
    static final String SCHEMA = "{\"type\": \"object\", \"properties\": {\"ok\": {\"type\": \"boolean\"}, "
            + "\"n\": {\"type\": \"integer\"}, \"kind\": {\"enum\": [\"int\", \"str\"]}}, \"required\": [\"ok\", \"n\", \"kind\"]}";

    static TokenPress load() {
        Assumptions.assumeTrue(Files.isRegularFile(LookupDecodingTest.MODEL.resolve("model.safetensors")), "no embedded model");
        return TokenPress.load(LookupDecodingTest.MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2));
    }

    @Test
    void jsonSchemaOutputHasTheSchemasShape() throws Exception {
        try (TokenPress tp = load()) {
            for (SamplingOptions o : new SamplingOptions[] {SamplingOptions.greedy(),
                    SamplingOptions.defaults().withTemp(1.0).withSeed(4), SamplingOptions.defaults().withTemp(1.2).withSeed(8)}) {
                try (Session s = tp.newSession(512)) {
                    s.setJsonSchema(SCHEMA);
                    GenerationResult r = s.generate("config = ", 400, o, null); // bounded: at most 21 blanks per ws
                    assertEquals("eos", r.stopReason(), o + ": " + r.text());
                    JsonNode j = new ObjectMapper().readTree(r.text());
                    assertTrue(j.get("ok").isBoolean(), r.text());
                    assertTrue(j.get("n").isIntegralNumber(), r.text());
                    assertTrue(j.get("kind").asText().equals("int") || j.get("kind").asText().equals("str"), r.text());
                    assertEquals(3, j.size(), r.text());
                }
            }
        }
    }

    @Test
    void gbnfOutputIsASentence() {
        String gbnf = "root ::= \"def \" name \"(\" name? \"):\"\nname ::= [a-z_]{1,12}";
        var g = dev.tokenpress.sample.Grammar.parse(gbnf);
        try (TokenPress tp = load(); Session s = tp.newSession(256)) {
            s.setGrammar(gbnf);
            for (long seed : new long[] {1, 2, 3}) {
                GenerationResult r = s.generate("\n\n", 40, SamplingOptions.defaults().withSeed(seed), null);
                assertEquals("eos", r.stopReason(), r.text());
                assertTrue(g.matches(r.text()), "'" + r.text() + "'");
                s.reset();
            }
            assertThrows(IllegalArgumentException.class, () -> s.setGrammar("root ::= nothing"));
            assertThrows(IllegalArgumentException.class, () -> s.setJsonSchema("{\"allOf\": [{\"type\": \"string\"}]}"));
        }
    }

    @Test
    void speculativeDecodingKeepsTheConstrainedText() {
        try (TokenPress tp = load()) {
            String[] texts = new String[2];
            for (int i = 0; i < 2; i++) {
                try (Session s = tp.newSession(512)) {
                    s.setJsonSchema(SCHEMA);
                    if (i == 1) s.setSelfDraft(3, 4, 0, 0f);
                    texts[i] = s.generate("config = ", 400, SamplingOptions.defaults().withTemp(0.9).withSeed(6), null).text();
                }
            }
            assertEquals(texts[0], texts[1]);
        }
    }
}
