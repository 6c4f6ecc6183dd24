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

import static org.junit.jupiter.api.Assertions.*;

/**
 * Anthropic's Messages API over the chat machinery: the same prompt and text as the equivalent chat request, its
 * stream events, tool_use / tool_result blocks, stop sequences, Anthropic-shaped errors and x-api-key.
 */
class AnthropicMessagesTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static TinyServer srv;
    static TokenPress tp;
    static OpenAiServer server;

    @BeforeAll
    static void start() throws Exception {
        srv = TinyServer.start(new OpenAiServer.Options("127.0.0.1", 0, 1024, null, TinyServer.hermes(), "tiny",
                SamplingOptions.defaults(), 64, null, 0, "secret"));
        tp = srv.tp;
        server = srv.server;
    }

    @AfterAll
    static void stop() {
        if (srv != null) srv.close();
    }

    static HttpResponse<String> post(String path, JsonNode body) throws Exception {
        return srv.post(path, body, "x-api-key", "secret");
    }

    static List<JsonNode> events(String body) throws Exception {
        List<JsonNode> out = new ArrayList<>();
        for (String block : body.split("\n\n")) {
            if (block.isBlank()) continue;
            String[] lines = block.split("\n");
            assertTrue(lines.length == 2 && lines[0].startsWith("event: ") && lines[1].startsWith("data: "), block);
            JsonNode d = JSON.readTree(lines[1].substring(6));
            assertEquals(lines[0].substring(7), d.get("type").asText());
            out.add(d);
        }
        return out;
    }

    static ObjectNode chatOf(String system, String user, int max) {
        ObjectNode chat = JSON.createObjectNode().put("max_tokens", max).put("temperature", 0);
        ArrayNode m = chat.putArray("messages");
        if (system != null) m.addObject().put("role", "system").put("content", system);
        m.addObject().put("role", "user").put("content", user);
        return chat;
    }

    @Test
    void textMatchesTheChatEndpointStreamedOrNot() throws Exception {
        ObjectNode b = JSON.createObjectNode().put("max_tokens", 12).put("temperature", 0);
        b.putArray("system").addObject().put("type", "text").put("text", "Be brief.");
        b.putArray("messages").addObject().put("role", "user").putArray("content").addObject().put("type", "text").put("text", "Hello there");
        HttpResponse<String> r = post("/v1/messages", b);
        assertEquals(200, r.statusCode(), r.body());
        JsonNode o = JSON.readTree(r.body());
        assertEquals("message", o.get("type").asText());
        JsonNode c = JSON.readTree(post("/v1/chat/completions", chatOf("Be brief.", "Hello there", 12)).body());
        String text = c.at("/choices/0/message/content").asText();
        assertEquals(text, o.at("/content/0/text").asText());
        assertEquals(c.at("/usage/prompt_tokens").asInt(), o.at("/usage/input_tokens").asInt() + o.at("/usage/cache_read_input_tokens").asInt());
        assertEquals(c.at("/usage/prompt_tokens").asInt(), JSON.readTree(post("/v1/messages/count_tokens", b).body()).get("input_tokens").asInt());
        String reason = c.at("/choices/0/finish_reason").asText().equals("length") ? "max_tokens" : "end_turn";
        assertEquals(reason, o.get("stop_reason").asText());

        b.put("stream", true);
        List<JsonNode> ev = events(post("/v1/messages", b).body());
        assertEquals("message_start", ev.get(0).get("type").asText());
        assertEquals(c.at("/usage/prompt_tokens").asInt(), ev.get(0).at("/message/usage/input_tokens").asInt());
        assertEquals("message_stop", ev.get(ev.size() - 1).get("type").asText());
        StringBuilder deltas = new StringBuilder();
        for (JsonNode e : ev) if (e.at("/delta/type").asText().equals("text_delta")) deltas.append(e.at("/delta/text").asText());
        assertEquals(text, deltas.toString());
        assertEquals(reason, ev.get(ev.size() - 2).at("/delta/stop_reason").asText());

        // a stop sequence taken from the text itself
        if (text.length() > 6) {
            String stop = text.substring(4, 6);
            b.put("stream", false);
            b.putArray("stop_sequences").add(stop);
            JsonNode s = JSON.readTree(post("/v1/messages", b).body());
            assertEquals("stop_sequence", s.get("stop_reason").asText(), s.toString());
            assertEquals(stop, s.get("stop_sequence").asText());
            assertEquals(text.substring(0, text.indexOf(stop)), s.at("/content/0/text").asText(""));
        }
    }

    @Test
    void toolUseAndToolResults() throws Exception {
        ArrayNode tools = JSON.createArrayNode();
        for (JsonNode t : JSON.readTree(ToolCallsTest.TOOLS)) {
            JsonNode f = t.get("function");
            tools.addObject().put("name", f.get("name").asText()).put("description", f.get("description").asText())
                    .set("input_schema", f.get("parameters"));
        }
        ObjectNode b = JSON.createObjectNode().put("max_tokens", 120).put("temperature", 0);
        b.set("tools", tools);
        b.putObject("tool_choice").put("type", "any").put("disable_parallel_tool_use", true);
        b.putArray("messages").addObject().put("role", "user").put("content", "What time is it in Rome?");
        JsonNode o = JSON.readTree(post("/v1/messages", b).body());
        assertEquals("tool_use", o.get("stop_reason").asText(), o.toString());
        JsonNode use = null;
        for (JsonNode block : o.get("content")) if (block.get("type").asText().equals("tool_use")) use = block;
        assertNotNull(use, o.toString());
        assertTrue(use.get("input").isObject());
        b.put("stream", true);
        List<JsonNode> ev = events(post("/v1/messages", b).body());
        JsonNode delta = ev.stream().filter(e -> e.at("/delta/type").asText().equals("input_json_delta")).findFirst().orElseThrow();
        assertEquals(use.get("input"), JSON.readTree(delta.at("/delta/partial_json").asText()), "greedy: the same call");
        String name = use.get("name").asText();
        assertTrue(ev.stream().anyMatch(e -> e.get("type").asText().equals("content_block_start")
                && e.at("/content_block/type").asText().equals("tool_use") && e.at("/content_block/name").asText().equals(name)));

        // tool_use sent back with its tool_result: the prompt of the equivalent chat request
        ObjectNode next = JSON.createObjectNode().put("max_tokens", 4).put("temperature", 0);
        next.set("tools", tools);
        ArrayNode m = next.putArray("messages");
        m.addObject().put("role", "user").put("content", "What time is it in Rome?");
        ArrayNode ac = m.addObject().put("role", "assistant").putArray("content");
        ac.addObject().put("type", "tool_use").put("id", "call_1").put("name", "get_time").putObject("input").put("city", "Rome");
        m.addObject().put("role", "user").putArray("content").addObject().put("type", "tool_result").put("tool_use_id", "call_1")
                .put("content", "10:00");
        ObjectNode chat = JSON.createObjectNode().put("max_tokens", 4).put("temperature", 0);
        chat.set("tools", JSON.readTree(ToolCallsTest.TOOLS));
        ArrayNode cm = chat.putArray("messages");
        cm.addObject().put("role", "user").put("content", "What time is it in Rome?");
        ObjectNode a = cm.addObject().put("role", "assistant").put("content", "");
        a.putArray("tool_calls").addObject().put("id", "call_1").put("type", "function").putObject("function")
                .put("name", "get_time").put("arguments", "{\"city\":\"Rome\"}");
        cm.addObject().put("role", "tool").put("tool_call_id", "call_1").put("content", "10:00");
        JsonNode c = JSON.readTree(post("/v1/chat/completions", chat).body());
        JsonNode resp = JSON.readTree(post("/v1/messages", next).body());
        assertEquals(c.at("/usage/prompt_tokens").asInt(), resp.at("/usage/input_tokens").asInt()
                + resp.at("/usage/cache_read_input_tokens").asInt(), resp.toString());
    }

    @Test
    void errorsAndKeysInAnthropicsShape() throws Exception {
        ObjectNode b = JSON.createObjectNode().put("max_tokens", 4);
        b.putArray("messages").addObject().put("role", "tool").put("content", "x");
        HttpResponse<String> r = post("/v1/messages", b);
        assertEquals(400, r.statusCode());
        JsonNode e = JSON.readTree(r.body());
        assertEquals("error", e.get("type").asText());
        assertEquals("invalid_request_error", e.at("/error/type").asText());
        b = JSON.createObjectNode().put("max_tokens", 4);
        b.putArray("messages").addObject().put("role", "user").putArray("content").addObject().put("type", "image");
        assertEquals(400, post("/v1/messages", b).statusCode());
        HttpResponse<String> noKey = srv.post("/v1/messages", JSON.createObjectNode());
        assertEquals(401, noKey.statusCode());
        assertEquals("authentication_error", JSON.readTree(noKey.body()).at("/error/type").asText());
    }
}
