package dev.tokenpress.api;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.sample.Grammar;
import dev.tokenpress.sample.JsonSchemaGrammar;
import org.junit.jupiter.api.Test;

import java.util.Set;

import static org.junit.jupiter.api.Assertions.*;

/** Demanded-call grammars for parameter schemas as clients write them: every sentence reads back as a call. */
class ToolCallGrammarTest {
    static final ObjectMapper JSON = new ObjectMapper();

    /** {@code "parameters": {}} (a function without parameters, as OpenAI's docs allow): arguments must be an object. */
    @Test
    void emptyParametersStillDemandAnObject() throws Exception {
        JsonNode tools = JSON.readTree("[{\"type\": \"function\", \"function\": {\"name\": \"now\", \"parameters\": {}}}]");
        Grammar g = Grammar.parse(ToolCalls.grammar(tools, null, false, ToolCalls.Style.HERMES));
        for (String args : new String[] {"5", "\"x\"", "null", "[1]"})
            assertFalse(g.matches("<tool_call>\n{\"name\": \"now\", \"arguments\": " + args + "}\n</tool_call>"), args);
        String ok = "<tool_call>\n{\"name\": \"now\", \"arguments\": {\"tz\": \"UTC\"}}\n</tool_call>";
        assertTrue(g.matches(ok));
        assertTrue(ToolCalls.parse(ok, Set.of("now")).hasCalls());
        assertTrue(g.matches("<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call>"));
    }

    /** {@code "$ref": "#/properties/a"} (zod-to-json-schema's default strategy) resolves inside the combined grammar. */
    @Test
    void aRefIntoTheToolsOwnPropertiesIsFollowed() throws Exception {
        JsonNode tools = JSON.readTree("[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": {"
                + "\"type\": \"object\", \"properties\": {\"a\": {\"type\": \"string\"}, \"b\": {\"$ref\": \"#/properties/a\"}},"
                + "\"required\": [\"a\", \"b\"]}}}]");
        assertNotNull(JsonSchemaGrammar.toGbnf(tools.get(0).at("/function/parameters")), "the schema alone compiles");
        Grammar g = Grammar.parse(ToolCalls.grammar(tools, null, false, ToolCalls.Style.HERMES));
        assertTrue(g.matches("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"x\", \"b\": \"y\"}}\n</tool_call>"));
        assertFalse(g.matches("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"x\", \"b\": 3}}\n</tool_call>"),
                "b follows a's schema");
    }

    /** A parameters schema whose root is a $ref (zod-to-json-schema with a name) still constrains the arguments. */
    @Test
    void aRootRefSchemaStillConstrains() throws Exception {
        JsonNode tools = JSON.readTree("[{\"type\": \"function\", \"function\": {\"name\": \"get_time\", \"parameters\": "
                + "{\"$ref\": \"#/definitions/Args\", \"definitions\": {\"Args\": {\"type\": \"object\", \"properties\": "
                + "{\"city\": {\"type\": \"string\", \"enum\": [\"Oslo\", \"Rome\"]}}, \"required\": [\"city\"]}}}}}]");
        Grammar g = Grammar.parse(ToolCalls.grammar(tools, null, false, ToolCalls.Style.HERMES));
        assertTrue(g.matches("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>"));
        assertFalse(g.matches("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"x\": 1}}\n</tool_call>"));
    }

    /** A definition named "root" beside a pointer into the schema: both keep their meaning. */
    @Test
    void aDefinitionNamedRootBesideASelfPointer() throws Exception {
        JsonNode tools = JSON.readTree("[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": "
                + "{\"type\": \"object\", \"properties\": {\"a\": {\"$ref\": \"#/$defs/root\"}, \"b\": {\"$ref\": \"#/properties/a\"}},"
                + "\"required\": [\"a\"], \"$defs\": {\"root\": {\"type\": \"integer\"}}}}}]");
        Grammar g = Grammar.parse(ToolCalls.grammar(tools, null, false, ToolCalls.Style.HERMES));
        assertTrue(g.matches("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 5}}\n</tool_call>"));
        assertTrue(g.matches("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 5, \"b\": 6}}\n</tool_call>"));
        assertFalse(g.matches("<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": \"x\"}}\n</tool_call>"));
    }

    /** Llama 3's JSON call whose argument mentions a Hermes tag is still read as a call; junk after JSON is not. */
    @Test
    void theWholeReplyAsJsonIsTriedFirstAndMustEndThere() {
        Set<String> names = Set.of("say");
        ToolCalls.Parsed p = ToolCalls.parse("{\"name\": \"say\", \"parameters\": {\"text\": \"use <tool_call> tags\"}}", names);
        assertTrue(p.hasCalls());
        assertEquals("{\"text\":\"use <tool_call> tags\"}", p.calls().get(0).arguments());
        assertFalse(ToolCalls.parse("<tool_call>{\"name\": \"say\", \"arguments\": {}} trailing</tool_call>", names).hasCalls());
        assertEquals("Sure.", ToolCalls.parse("Sure.\n\n<tool_call>{\"name\": \"say\", \"arguments\": {}}</tool_call>", names)
                .content(), "the content before a call loses its trailing blanks");
        assertEquals(5, ToolCalls.streamableLength("Sure.\n\n<tool"));
        assertEquals(5, ToolCalls.streamableLength("Sure.\n"), "trailing blanks wait for what follows");
    }
}
