package dev.tokenpress.api;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.io.ChatTemplate.Message;
import dev.tokenpress.io.ChatTemplate.ToolCall;
import dev.tokenpress.sample.Grammar;
import org.junit.jupiter.api.Test;

import java.util.List;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Function calling: the calls read from each family's notation, what may be streamed before a call is certain, the
 * grammars that demand a call, and tools and tool messages through a model's chat template.
 */
public class ToolCallsTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static final Set<String> NAMES = Set.of("get_time", "convert");

    public static final String TOOLS = """
            [{"type": "function", "function": {"name": "get_time", "description": "Current time in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Rome"]}},
                             "required": ["city"]}}},
             {"type": "function", "function": {"name": "convert", "description": "Celsius to Fahrenheit",
              "parameters": {"type": "object", "properties": {"value": {"type": "integer"}, "exact": {"type": "boolean"}},
                             "required": ["value", "exact"]}}}]""";

    /** A ChatML template with tools in the Hermes notation (as Qwen2.5's and Hermes' templates write them). */
    public static final String HERMES_TEMPLATE = """
            {%- if tools %}
                {{- '<|im_start|>system\\n' }}
                {%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
                {{- '# Tools\\n<tools>' }}
                {%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}
                {{- '\\n</tools>\\nCall one as <tool_call>\\n{"name": NAME, "arguments": OBJECT}\\n</tool_call><|im_end|>\\n' }}
            {%- elif messages[0].role == 'system' %}
                {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
            {%- endif %}
            {%- for message in messages %}
                {%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
                    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
                {%- elif message.role == 'assistant' %}
                    {{- '<|im_start|>assistant' }}
                    {%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
                    {%- for call in message.tool_calls %}
                        {%- if call.function is defined %}{%- set call = call.function %}{%- endif %}
                        {{- '\\n<tool_call>\\n{"name": "' + call.name + '", "arguments": ' + call.arguments | tojson + '}\\n</tool_call>' }}
                    {%- endfor %}
                    {{- '<|im_end|>\\n' }}
                {%- elif message.role == 'tool' %}
                    {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
                    {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
                    {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
                {%- endif %}
            {%- endfor %}
            {%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
            """;

    /** A Llama 3.1-style template: a tool call is a message with a tool_calls key, written as {"name", "parameters"}. */
    static final String LLAMA3_TEMPLATE = """
            {{- bos_token }}
            {%- for message in messages %}
                {%- if 'tool_calls' in message %}
                    {%- set call = message.tool_calls[0].function %}
                    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{"name": "' + call.name + '", "parameters": ' + call.arguments | tojson + '}<|eot_id|>' }}
                {%- elif message.role == 'tool' %}
                    {{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}
                {%- else %}
                    {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}
                {%- endif %}
                {%- if loop.first and tools is not none %}
                    {{- '<|start_header_id|>system<|end_header_id|>\\n\\nAnswer with {"name": function name, "parameters": arguments}.' }}
                    {%- for t in tools %}{{- '\\n' + t | tojson }}{%- endfor %}
                    {{- '<|eot_id|>' }}
                {%- endif %}
            {%- endfor %}
            {%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
            """;

    static final String MISTRAL_TEMPLATE = """
            {%- for message in messages %}
                {%- if message.role == 'user' %}
                    {%- if loop.last and tools is not none %}{{- '[AVAILABLE_TOOLS]' + tools | tojson + '[/AVAILABLE_TOOLS]' }}{%- endif %}
                    {{- '[INST]' + message.content + '[/INST]' }}
                {%- elif message.tool_calls is defined and message.tool_calls is not none %}
                    {{- '[TOOL_CALLS]' + message.tool_calls | map(attribute='function') | list | tojson + eos_token }}
                {%- elif message.role == 'tool' %}
                    {{- '[TOOL_RESULTS]{"call_id": "' + message.tool_call_id + '", "content": ' + message.content | tojson + '}[/TOOL_RESULTS]' }}
                {%- else %}
                    {{- message.content + eos_token }}
                {%- endif %}
            {%- endfor %}
            """;

    static JsonNode tools() throws Exception {
        return JSON.readTree(TOOLS);
    }

    static JsonNode args(ToolCall c) throws Exception {
        return JSON.readTree(c.arguments());
    }

    @Test
    void readsHermesBlocks() throws Exception {
        ToolCalls.Parsed p = ToolCalls.parse("Let me check both.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": "
                + "{\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": "
                + "\"Rome\"}}\n</tool_call>", NAMES);
        assertEquals("Let me check both.", p.content(), "the text before the calls, without trailing blanks");
        assertEquals(2, p.calls().size());
        assertEquals("get_time", p.calls().get(0).name());
        assertEquals("{\"city\":\"Oslo\"}", p.calls().get(0).arguments());
        assertEquals("Rome", args(p.calls().get(1)).get("city").asText());

        // the reply ended at the end of turn before the closing tag
        p = ToolCalls.parse("<tool_call>\n{\"name\": \"convert\", \"arguments\": {\"value\": 3, \"exact\": true}}", NAMES);
        assertEquals("", p.content());
        assertEquals(List.of(new ToolCall("", "convert", "{\"value\":3,\"exact\":true}")), p.calls());

        // any block that is not a call of an offered tool leaves the whole reply as content
        for (String bad : new String[] {
                "<tool_call>{\"name\": \"get_weather\", \"arguments\": {}}</tool_call>",
                "<tool_call>{\"name\": \"get_time\", \"arguments\": {\"city\": }</tool_call>",
                "<tool_call>{\"name\": \"get_time\", \"arguments\": [1]}</tool_call>",
                "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call><tool_call>{\"name\": \"x\"}</tool_call>",
                "<tool_call>{\"name\": \"get_time\", \"arguments\": {}}</tool_call> and then some text"}) {
            p = ToolCalls.parse(bad, NAMES);
            assertFalse(p.hasCalls(), bad);
            assertEquals(bad, p.content());
        }
    }

    @Test
    void readsLlamaAndMistralNotations() throws Exception {
        ToolCalls.Parsed p = ToolCalls.parse("<|python_tag|>{\"name\": \"get_time\", \"parameters\": {\"city\": \"Rome\"}}", NAMES);
        assertEquals("", p.content());
        assertEquals("Rome", args(p.calls().get(0)).get("city").asText());
        p = ToolCalls.parse(" {\"name\": \"get_time\", \"parameters\": {\"city\": \"Oslo\"}}; {\"name\": \"convert\", "
                + "\"arguments\": \"{\\\"value\\\": 7, \\\"exact\\\": false}\"}\n", NAMES);
        assertEquals(2, p.calls().size());
        assertEquals(7, args(p.calls().get(1)).get("value").asInt(), "arguments written as a JSON string");
        // JSON that is not a call of an offered tool is an answer
        for (String answer : new String[] {"{\"name\": \"Bob\", \"arguments\": {}}", "{\"city\": \"Oslo\"}", "[1, 2]",
                "{\"name\": \"get_time\", \"parameters\": {}} trailing", "It is {\"name\": \"get_time\"}"})
            assertFalse(ToolCalls.parse(answer, NAMES).hasCalls(), answer);

        p = ToolCalls.parse("[TOOL_CALLS] [{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}, "
                + "{\"name\": \"convert\", \"arguments\": {\"value\": 1, \"exact\": true}}]", NAMES);
        assertEquals(List.of("get_time", "convert"), p.calls().stream().map(ToolCall::name).toList());
        p = ToolCalls.parse("Sure.[TOOL_CALLS]get_time[ARGS]{\"city\": \"Rome\"}[TOOL_CALLS]convert[ARGS]{\"value\": 2, "
                + "\"exact\": false}", NAMES);
        assertEquals("Sure.", p.content());
        assertEquals(List.of("get_time", "convert"), p.calls().stream().map(ToolCall::name).toList());
        assertEquals(2, args(p.calls().get(1)).get("value").asInt());
        assertFalse(ToolCalls.parse("[TOOL_CALLS]unknown[ARGS]{}", NAMES).hasCalls());
        // the list without its control token (what a grammar can spell)
        assertTrue(ToolCalls.parse("[{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}]", NAMES).hasCalls());
    }

    @Test
    void streamsOnlyWhatCannotBeginACall() {
        assertEquals(0, ToolCalls.streamableLength(""));
        assertEquals(0, ToolCalls.streamableLength("  "));
        assertEquals(0, ToolCalls.streamableLength("{\"na"));
        assertEquals(0, ToolCalls.streamableLength("\n[{"));
        assertEquals(0, ToolCalls.streamableLength("<"));
        assertEquals(0, ToolCalls.streamableLength("<tool_c"));
        assertEquals(0, ToolCalls.streamableLength("<|python_ta"));
        assertEquals(0, ToolCalls.streamableLength("[TOOL"));
        assertEquals(2, ToolCalls.streamableLength("<b"));
        assertEquals(5, ToolCalls.streamableLength("Hello"));
        assertEquals(5, ToolCalls.streamableLength("Hello <tool"), "the blank before a possible call waits too");
        assertEquals(5, ToolCalls.streamableLength("Hello <"));
        assertEquals(5, ToolCalls.streamableLength("Hello <tool_call>{\"name\""));
        assertEquals(6, ToolCalls.streamableLength("Hello,<tool"));
        assertEquals(5, ToolCalls.streamableLength("Sure.[TOOL_CALLS]get_time"));
        assertEquals(11, ToolCalls.streamableLength("Hello <b> x"));
        // monotone: what was streamable stays so as the reply grows
        String reply = "Sure, one moment <tool_call>\n{\"name\": \"get_time\"}";
        int before = 0;
        for (int i = 0; i <= reply.length(); i++) {
            int n = ToolCalls.streamableLength(reply.substring(0, i));
            assertTrue(n >= before && n <= i, "at " + i);
            before = n;
        }
    }

    @Test
    void validatesTheToolsList() throws Exception {
        assertEquals(List.of("get_time", "convert"), List.copyOf(ToolCalls.names(tools())));
        for (String bad : new String[] {"{}", "[{\"type\": \"function\"}]", "[{\"type\": \"code\", \"function\": {\"name\": \"f\"}}]",
                "[{\"type\": \"function\", \"function\": {\"name\": \"a b\"}}]",
                "[{\"type\": \"function\", \"function\": {\"name\": \"f\"}}, {\"type\": \"function\", \"function\": {\"name\": \"f\"}}]",
                "[{\"type\": \"function\", \"function\": {\"name\": \"f\", \"parameters\": 3}}]"})
            assertThrows(IllegalArgumentException.class, () -> ToolCalls.names(JSON.readTree(bad)), bad);
    }

    @Test
    void grammarsDemandCallsInTheFamilysNotation() throws Exception {
        Grammar hermes = Grammar.parse(ToolCalls.grammar(tools(), null, true, ToolCalls.Style.HERMES));
        String oslo = "{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}";
        String conv = "{\"name\": \"convert\", \"arguments\": {\"value\": -12, \"exact\": true}}";
        assertTrue(hermes.matches("<tool_call>\n" + oslo + "\n</tool_call>"));
        assertTrue(hermes.matches("<tool_call>\n" + oslo + "\n</tool_call>\n<tool_call>\n" + conv + "\n</tool_call>"));
        assertFalse(hermes.matches(oslo), "the tags are part of the notation");
        assertFalse(hermes.matches("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"),
                "arguments follow the parameters schema");
        assertFalse(hermes.matches("<tool_call>\n{\"name\": \"convert\", \"arguments\": {\"value\": 1.5, \"exact\": true}}\n</tool_call>"));
        assertFalse(hermes.matches(""), "a call is demanded");

        Grammar one = Grammar.parse(ToolCalls.grammar(tools(), "convert", false, ToolCalls.Style.HERMES));
        assertTrue(one.matches("<tool_call>\n" + conv + "\n</tool_call>"));
        assertFalse(one.matches("<tool_call>\n" + oslo + "\n</tool_call>"), "only the named function");
        assertFalse(one.matches("<tool_call>\n" + conv + "\n</tool_call>\n<tool_call>\n" + conv + "\n</tool_call>"),
                "one call without parallel calls");
        assertThrows(IllegalArgumentException.class, () -> ToolCalls.grammar(tools(), "nope", true, ToolCalls.Style.HERMES));

        Grammar llama = Grammar.parse(ToolCalls.grammar(tools(), null, true, ToolCalls.Style.LLAMA3_JSON));
        assertTrue(llama.matches("{\"name\": \"get_time\", \"parameters\": {\"city\": \"Rome\"}}"));
        assertFalse(llama.matches(oslo), "Llama writes parameters");
        Grammar mistral = Grammar.parse(ToolCalls.grammar(tools(), null, true, ToolCalls.Style.MISTRAL));
        assertTrue(mistral.matches("[" + oslo + ", " + conv + "]"));
        assertFalse(mistral.matches(oslo));
        // every sentence reads back as the calls it spells
        assertEquals(2, ToolCalls.parse("<tool_call>\n" + oslo + "\n</tool_call>\n<tool_call>\n" + conv + "\n</tool_call>",
                NAMES).calls().size());
    }

    @Test
    void grammarsKeepEachToolsDefinitionsApart() throws Exception {
        JsonNode tools = JSON.readTree("""
                [{"type": "function", "function": {"name": "a", "parameters": {"type": "object",
                   "properties": {"x": {"$ref": "#/$defs/item"}}, "required": ["x"],
                   "$defs": {"item": {"type": "integer"}}}}},
                 {"type": "function", "function": {"name": "b", "parameters": {"type": "object",
                   "properties": {"x": {"$ref": "#/definitions/item"}}, "required": ["x"],
                   "definitions": {"item": {"type": "boolean"}}}}},
                 {"type": "function", "function": {"name": "c", "parameters": {"type": "object",
                   "properties": {"code": {"type": "string", "pattern": "^(a)\\\\1$"}}}}},
                 {"type": "function", "function": {"name": "d"}}]""");
        Grammar g = Grammar.parse(ToolCalls.grammar(tools, null, false, ToolCalls.Style.LLAMA3_JSON));
        assertTrue(g.matches("{\"name\": \"a\", \"parameters\": {\"x\": 5}}"));
        assertFalse(g.matches("{\"name\": \"a\", \"parameters\": {\"x\": true}}"));
        assertTrue(g.matches("{\"name\": \"b\", \"parameters\": {\"x\": true}}"));
        assertFalse(g.matches("{\"name\": \"b\", \"parameters\": {\"x\": 5}}"));
        // a schema feature the grammar cannot enforce (a backreference) leaves any JSON object; no parameters likewise
        assertTrue(g.matches("{\"name\": \"c\", \"parameters\": {\"code\": \"lower\", \"other\": [1]}}"));
        assertTrue(g.matches("{\"name\": \"d\", \"parameters\": {}}"));
        assertFalse(g.matches("{\"name\": \"d\", \"parameters\": 1}"));
    }

    @Test
    void stylesComeFromTheTemplates() {
        assertEquals(ToolCalls.Style.HERMES, ToolCalls.styleOf(ChatTemplate.fromJinja(HERMES_TEMPLATE, "", "<|im_end|>", "t")));
        assertEquals(ToolCalls.Style.LLAMA3_JSON, ToolCalls.styleOf(ChatTemplate.fromJinja(LLAMA3_TEMPLATE, "<s>", "", "t")));
        assertEquals(ToolCalls.Style.MISTRAL, ToolCalls.styleOf(ChatTemplate.fromJinja(MISTRAL_TEMPLATE, "<s>", "</s>", "t")));
        assertEquals(ToolCalls.Style.GENERIC, ToolCalls.styleOf(ChatTemplate.named("chatml")));
        assertTrue(ToolCalls.newId(ToolCalls.Style.MISTRAL).matches("[A-Za-z0-9]{9}"));
        assertTrue(ToolCalls.newId(ToolCalls.Style.HERMES).matches("call_[A-Za-z0-9]{24}"));
    }

    /** A conversation with a call and its results, through each template: arguments reach them as a mapping. */
    @Test
    void templatesSeeToolsCallsAndResults() throws Exception {
        List<Message> conv = List.of(
                Message.system("Be brief."),
                Message.user("Time in Oslo and Rome?"),
                Message.assistant("", List.of(new ToolCall("c1", "get_time", "{\"city\": \"Oslo\"}"),
                        new ToolCall("c2", "get_time", "{\"city\":\"Rome\"}"))),
                Message.tool("c1", "10:00"),
                Message.tool("c2", "10:00"));
        ChatTemplate hermes = ChatTemplate.fromJinja(HERMES_TEMPLATE, "", "<|im_end|>", "t");
        String text = hermes.render(conv, true, tools());
        assertTrue(text.startsWith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n{\"type\": \"function\", \"function\": "
                + "{\"name\": \"get_time\", \"description\": \"Current time in a city\""), text);
        assertTrue(text.contains("<|im_start|>user\nTime in Oslo and Rome?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
                + "{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>\n<tool_call>\n{\"name\": "
                + "\"get_time\", \"arguments\": {\"city\": \"Rome\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n"
                + "<tool_response>\n10:00\n</tool_response>\n<tool_response>\n10:00\n</tool_response><|im_end|>\n"
                + "<|im_start|>assistant\n"), text);
        assertEquals(hermes.render(conv.subList(0, 2), true), "<|im_start|>system\nBe brief.<|im_end|>\n"
                + "<|im_start|>user\nTime in Oslo and Rome?<|im_end|>\n<|im_start|>assistant\n", "no tools: none shown");

        ChatTemplate llama = ChatTemplate.fromJinja(LLAMA3_TEMPLATE, "<|begin_of_text|>", "", "t");
        text = llama.render(List.of(conv.get(1), conv.get(2), conv.get(3)), true, tools());
        assertTrue(text.contains("<|start_header_id|>assistant<|end_header_id|>\n\n{\"name\": \"get_time\", \"parameters\": "
                + "{\"city\": \"Oslo\"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n10:00<|eot_id|>"), text);
        assertTrue(text.contains("Answer with {\"name\""), text);
        // a message without calls has no tool_calls key (Llama's template asks whether the key is there)
        assertFalse(llama.render(List.of(Message.user("hi"), Message.assistant("hello")), false, null).contains("parameters"));

        ChatTemplate mistral = ChatTemplate.fromJinja(MISTRAL_TEMPLATE, "<s>", "</s>", "t");
        text = mistral.render(List.of(conv.get(1), conv.get(2), conv.get(3), Message.user("Thanks")), false, tools());
        assertTrue(text.contains("[TOOL_CALLS][{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}, {\"name\": "
                + "\"get_time\", \"arguments\": {\"city\": \"Rome\"}}]</s>[TOOL_RESULTS]{\"call_id\": \"c1\", \"content\": "
                + "\"10:00\"}[/TOOL_RESULTS][AVAILABLE_TOOLS]"), text);
        // arguments that are not a JSON object reach the template as the text given
        text = mistral.render(List.of(Message.user("x"), Message.assistant("", List.of(new ToolCall("c", "f", "not json")))),
                false, null);
        assertTrue(text.contains("\"arguments\": \"not json\""), text);
    }

    @Test
    void builtInFormatsAndToolFreeTemplatesRefuseTools() throws Exception {
        ChatTemplate chatml = ChatTemplate.named("chatml");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> chatml.render(List.of(Message.user("x")), true, tools()));
        assertTrue(e.getMessage().contains("built-in chatml"), e.getMessage());
        assertThrows(IllegalArgumentException.class, () -> chatml.render(List.of(Message.user("x"), Message.tool("c", "1")), true));
        assertThrows(IllegalArgumentException.class, () -> chatml.render(List.of(Message.user("x"),
                Message.assistant("", List.of(new ToolCall("c", "f", "{}")))), true));
        assertEquals(chatml.render(List.of(Message.user("x")), true),
                chatml.render(List.of(Message.user("x")), true, JSON.readTree("[]")), "an empty list is no tools");
        ChatTemplate plain = ChatTemplate.fromJinja("{% for m in messages %}{{ m.content }}{% endfor %}", "", "", "t");
        assertFalse(plain.acceptsTools());
        assertThrows(IllegalArgumentException.class, () -> plain.render(List.of(Message.user("x")), true, tools()));
        assertThrows(IllegalArgumentException.class, () -> new Message("user", "x", List.of(new ToolCall("c", "f", "{}")), null));
        assertThrows(IllegalArgumentException.class, () -> new Message("assistant", "x", List.of(), "c1"));
        assertThrows(IllegalArgumentException.class, () -> new ToolCall("c", "", "{}"));
    }
}
