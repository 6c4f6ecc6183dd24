package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.api.ToolCallsTest;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.net.http.HttpResponse;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Function calling through /v1/chat/completions on the embedded model with a template in the Hermes notation: the
 * prompt shows the tools, calls and results; a demanded call comes back as OpenAI's tool_calls (streamed as one
 * delta), valid against the tool's parameters; and requests that cannot work are refused with the reason.
 */
class ToolCallingServerTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static TinyServer srv;
    static TokenPress tp;
    static OpenAiServer server;

    @BeforeAll
    static void start() throws Exception {
        srv = TinyServer.start(new OpenAiServer.Options("127.0.0.1", 0, 1024, null, TinyServer.hermes(), "tiny",
                SamplingOptions.defaults(), 300, null, 0, null));
        tp = srv.tp;
        server = srv.server;
    }

    @AfterAll
    static void stop() {
        if (srv != null) srv.close();
    }

    static HttpResponse<String> post(String path, JsonNode body) throws Exception {
        return srv.post(path, body);
    }

    static ObjectNode request(String user) throws Exception {
        ObjectNode b = JSON.createObjectNode();
        ArrayNode m = b.putArray("messages");
        m.addObject().put("role", "user").put("content", user);
        b.set("tools", JSON.readTree(ToolCallsTest.TOOLS));
        b.put("temperature", 0);
        return b;
    }

    /** Checks one OpenAI tool call against the test tools' schemas; returns its name. */
    static String checkCall(JsonNode call) throws Exception {
        assertEquals("function", call.get("type").asText());
        assertTrue(call.get("id").asText().matches("call_[A-Za-z0-9]{24}"), call.toString());
        String name = call.at("/function/name").asText();
        JsonNode args = JSON.readTree(call.at("/function/arguments").asText());
        switch (name) {
            case "get_time" -> assertTrue(Set.of("Oslo", "Rome").contains(args.get("city").asText()), args.toString());
            case "convert" -> {
                assertTrue(args.get("value").isIntegralNumber(), args.toString());
                assertTrue(args.get("exact").isBoolean(), args.toString());
            }
            default -> fail("unknown tool " + name);
        }
        return name;
    }

    @Test
    void thePromptShowsToolsCallsAndResults() throws Exception {
        ObjectNode b = request("Time in Oslo?");
        ArrayNode m = (ArrayNode) b.get("messages");
        ObjectNode a = m.addObject().put("role", "assistant");
        a.putNull("content");
        ObjectNode call = a.putArray("tool_calls").addObject().put("id", "call_1").put("type", "function");
        call.putObject("function").put("name", "get_time").put("arguments", "{\"city\": \"Oslo\"}");
        m.addObject().put("role", "tool").put("tool_call_id", "call_1").put("content", "10:00");
        HttpResponse<String> r = post("/apply-template", b);
        assertEquals(200, r.statusCode(), r.body());
        String prompt = JSON.readTree(r.body()).get("prompt").asText();
        assertTrue(prompt.startsWith("<|im_start|>system\n# Tools\n<tools>\n{\"type\": \"function\""), prompt);
        assertTrue(prompt.endsWith("<|im_start|>user\nTime in Oslo?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n"
                + "{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call><|im_end|>\n<|im_start|>user\n"
                + "<tool_response>\n10:00\n</tool_response><|im_end|>\n<|im_start|>assistant\n"), prompt);

        // a conversation ending with the tool's result is answered
        b.put("max_tokens", 4);
        r = post("/v1/chat/completions", b);
        assertEquals(200, r.statusCode(), r.body());
        assertEquals(tp.tokenizer().encode(prompt).length, JSON.readTree(r.body()).at("/usage/prompt_tokens").asInt());
    }

    @Test
    void aDemandedCallComesBackAsToolCalls() throws Exception {
        ObjectNode b = request("What time is it in Rome?");
        b.put("tool_choice", "required");
        b.put("parallel_tool_calls", false); // this model would repeat calls until max_tokens
        b.put("max_tokens", 120);
        HttpResponse<String> r = post("/v1/chat/completions", b);
        assertEquals(200, r.statusCode(), r.body());
        JsonNode c = JSON.readTree(r.body()).at("/choices/0");
        assertEquals("tool_calls", c.get("finish_reason").asText(), r.body());
        assertTrue(c.at("/message/content").isNull(), r.body());
        JsonNode calls = c.at("/message/tool_calls");
        assertEquals(1, calls.size(), r.body());
        List<String> names = new ArrayList<>();
        for (JsonNode call : calls) names.add(checkCall(call));

        // streamed: no content, the same calls in one delta, then finish_reason tool_calls
        b.put("stream", true);
        r = post("/v1/chat/completions", b);
        assertEquals(200, r.statusCode(), r.body());
        List<JsonNode> events = OpenAiServerTest.events(r.body());
        JsonNode delta = null;
        for (JsonNode e : events) {
            JsonNode d = e.at("/choices/0/delta");
            assertFalse(d.hasNonNull("content") && !d.get("content").asText().isEmpty(), "no content: " + e);
            if (d.has("tool_calls")) {
                assertNull(delta, "one delta with the calls");
                delta = d.get("tool_calls");
            }
        }
        assertNotNull(delta, r.body());
        assertEquals("tool_calls", events.get(events.size() - 1).at("/choices/0/finish_reason").asText());
        assertEquals(names.size(), delta.size());
        for (int i = 0; i < delta.size(); i++) {
            assertEquals(i, delta.get(i).get("index").asInt());
            assertEquals(names.get(i), checkCall(delta.get(i)));
            assertEquals(calls.get(i).get("function"), delta.get(i).get("function"), "greedy: the same call");
        }

        // a named function, one call
        b.put("stream", false);
        b.putObject("tool_choice").put("type", "function").putObject("function").put("name", "convert");
        r = post("/v1/chat/completions", b);
        assertEquals(200, r.statusCode(), r.body());
        calls = JSON.readTree(r.body()).at("/choices/0/message/tool_calls");
        assertEquals(1, calls.size(), r.body());
        assertEquals("convert", checkCall(calls.get(0)));
    }

    @Test
    void withoutADemandTheReplyIsReadForCalls() throws Exception {
        // the embedded model writes prose, not calls: the same text as without tools being read, streamed or not
        ObjectNode b = request("Hello there");
        b.put("max_tokens", 24);
        JsonNode auto = JSON.readTree(post("/v1/chat/completions", b).body()).at("/choices/0");
        b.put("tool_choice", "none");
        JsonNode none = JSON.readTree(post("/v1/chat/completions", b).body()).at("/choices/0");
        assertEquals(none.at("/message/content").asText(), auto.at("/message/content").asText());
        assertFalse(auto.get("message").has("tool_calls"));
        assertNotEquals("tool_calls", auto.get("finish_reason").asText());
        b.remove("tool_choice");
        b.put("stream", true);
        StringBuilder streamed = new StringBuilder();
        for (JsonNode e : OpenAiServerTest.events(post("/v1/chat/completions", b).body()))
            streamed.append(e.at("/choices/0/delta/content").asText(""));
        assertEquals(auto.at("/message/content").asText(), streamed.toString());
    }

    @Test
    void refusesWhatCannotWork() throws Exception {
        ObjectNode b = request("x");
        b.putObject("tool_choice").put("type", "function").putObject("function").put("name", "nope");
        assertEquals(400, post("/v1/chat/completions", b).statusCode());
        b = request("x");
        b.put("tool_choice", "sometimes");
        assertEquals(400, post("/v1/chat/completions", b).statusCode());
        b = request("x");
        b.put("tool_choice", "required");
        b.putObject("response_format").put("type", "json_object");
        assertEquals(400, post("/v1/chat/completions", b).statusCode());
        b = request("x");
        b.set("tools", JSON.readTree("[{\"type\": \"function\", \"function\": {\"name\": \"bad name\"}}]"));
        HttpResponse<String> r = post("/v1/chat/completions", b);
        assertEquals(400, r.statusCode());
        assertTrue(r.body().contains("tools[0].function.name"), r.body());
        b = request("x");
        b.remove("tools");
        b.put("tool_choice", "required");
        assertEquals(400, post("/v1/chat/completions", b).statusCode(), "tool_choice without tools");
        b = request("x");
        ObjectNode a = ((ArrayNode) b.get("messages")).addObject().put("role", "assistant").put("content", "");
        a.putArray("tool_calls").addObject().putObject("function").put("name", "get_time").put("arguments", "{}");
        r = post("/v1/chat/completions", b);
        assertEquals(400, r.statusCode(), "a call without its result cannot be continued");
    }
}
