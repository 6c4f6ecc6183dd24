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
 * OpenAI's Responses API over the chat machinery: the same prompt and text as the equivalent chat request, streamed
 * as the API's named events, function tools in its flat shape, and function_call / function_call_output items.
 */
class ResponsesApiTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static TinyServer srv;
    static TokenPress tp;
    static OpenAiServer server;

    @BeforeAll
    static void start() throws Exception {
        srv = TinyServer.start(new OpenAiServer.Options("127.0.0.1", 0, 1024, null, TinyServer.hermes(), "tiny",
                SamplingOptions.defaults(), 64, null, 0, null));
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

    record Event(String name, JsonNode data) {}

    /** The named events of a Responses stream. */
    static List<Event> events(String body) throws Exception {
        List<Event> out = new ArrayList<>();
        for (String block : body.split("\n\n")) {
            if (block.isBlank()) continue;
            String[] lines = block.split("\n");
            assertTrue(lines.length == 2 && lines[0].startsWith("event: ") && lines[1].startsWith("data: "), block);
            JsonNode d = JSON.readTree(lines[1].substring(6));
            assertEquals(lines[0].substring(7), d.get("type").asText());
            assertEquals(out.size(), d.get("sequence_number").asInt());
            out.add(new Event(d.get("type").asText(), d));
        }
        return out;
    }

    @Test
    void textMatchesTheChatEndpointStreamedOrNot() throws Exception {
        ObjectNode b = JSON.createObjectNode().put("instructions", "Be brief.").put("input", "Hello there")
                .put("max_output_tokens", 12).put("temperature", 0);
        HttpResponse<String> r = post("/v1/responses", b);
        assertEquals(200, r.statusCode(), r.body());
        JsonNode o = JSON.readTree(r.body());
        assertEquals("response", o.get("object").asText());
        assertTrue(o.get("id").asText().startsWith("resp_"));
        ObjectNode chat = JSON.createObjectNode().put("max_tokens", 12).put("temperature", 0);
        chat.putArray("messages").add(JSON.createObjectNode().put("role", "system").put("content", "Be brief."))
                .add(JSON.createObjectNode().put("role", "user").put("content", "Hello there"));
        JsonNode c = JSON.readTree(post("/v1/chat/completions", chat).body());
        String text = c.at("/choices/0/message/content").asText();
        JsonNode msg = o.at("/output/0");
        assertEquals("message", msg.get("type").asText());
        assertEquals("assistant", msg.get("role").asText());
        assertEquals(text, msg.at("/content/0/text").asText());
        assertEquals("output_text", msg.at("/content/0/type").asText());
        assertEquals(c.at("/usage/prompt_tokens").asInt(), o.at("/usage/input_tokens").asInt());
        assertEquals(c.at("/usage/completion_tokens").asInt(), o.at("/usage/output_tokens").asInt());
        boolean cut = c.at("/choices/0/finish_reason").asText().equals("length");
        assertEquals(cut ? "incomplete" : "completed", o.get("status").asText());
        if (cut) assertEquals("max_output_tokens", o.at("/incomplete_details/reason").asText());

        b.put("stream", true);
        r = post("/v1/responses", b);
        assertEquals(200, r.statusCode(), r.body());
        List<Event> ev = events(r.body());
        assertEquals("response.created", ev.get(0).name());
        assertEquals("response.in_progress", ev.get(1).name());
        Event last = ev.get(ev.size() - 1);
        assertEquals(cut ? "response.incomplete" : "response.completed", last.name());
        StringBuilder deltas = new StringBuilder();
        for (Event e : ev) if (e.name().equals("response.output_text.delta")) deltas.append(e.data().get("delta").asText());
        assertEquals(text, deltas.toString());
        assertTrue(ev.stream().anyMatch(e -> e.name().equals("response.output_text.done") && e.data().get("text").asText().equals(text)));
        assertEquals(text, last.data().at("/response/output/0/content/0/text").asText());
        assertEquals(o.at("/usage/input_tokens"), last.data().at("/response/usage/input_tokens"));
        assertEquals(o.at("/usage/output_tokens"), last.data().at("/response/usage/output_tokens"));
        assertTrue(last.data().at("/response/usage/input_tokens_details/cached_tokens").asInt() > 0, "the prompt was cached");
    }

    @Test
    void functionToolsAndTheirResults() throws Exception {
        ArrayNode tools = JSON.createArrayNode();
        for (JsonNode t : JSON.readTree(ToolCallsTest.TOOLS)) { // the chat shape flattened into the Responses shape
            ObjectNode f = tools.addObject().put("type", "function");
            f.setAll((ObjectNode) t.get("function"));
        }
        ObjectNode b = JSON.createObjectNode().put("input", "What time is it in Rome?").put("temperature", 0)
                .put("tool_choice", "required").put("parallel_tool_calls", false).put("max_output_tokens", 120);
        b.set("tools", tools);
        JsonNode o = JSON.readTree(post("/v1/responses", b).body());
        JsonNode call = null;
        for (JsonNode item : o.get("output")) if (item.get("type").asText().equals("function_call")) call = item;
        assertNotNull(call, o.toString());
        assertTrue(call.get("call_id").asText().startsWith("call_"), call.toString());
        String name = call.get("name").asText();
        assertTrue(name.equals("get_time") || name.equals("convert"), name);
        assertTrue(JSON.readTree(call.get("arguments").asText()).isObject());

        b.put("stream", true);
        List<Event> ev = events(post("/v1/responses", b).body());
        Event done = ev.stream().filter(e -> e.name().equals("response.function_call_arguments.done")).findFirst().orElseThrow();
        assertEquals(call.get("arguments").asText(), done.data().get("arguments").asText(), "greedy: the same call");
        assertEquals("response.completed", ev.get(ev.size() - 1).name());

        // the call and its output sent back: the same prompt as the chat request with tool_calls and a tool message
        ObjectNode next = JSON.createObjectNode().put("max_output_tokens", 4).put("temperature", 0);
        next.set("tools", tools);
        ArrayNode in = next.putArray("input");
        in.addObject().put("role", "user").put("content", "What time is it in Rome?");
        in.addObject().put("type", "function_call").put("call_id", "call_1").put("name", "get_time").put("arguments", "{\"city\": \"Rome\"}");
        in.addObject().put("type", "function_call_output").put("call_id", "call_1").put("output", "10:00");
        JsonNode resp = JSON.readTree(post("/v1/responses", next).body());
        ObjectNode chat = JSON.createObjectNode().put("max_tokens", 4).put("temperature", 0);
        chat.set("tools", JSON.readTree(ToolCallsTest.TOOLS));
        ArrayNode m = chat.putArray("messages");
        m.addObject().put("role", "user").put("content", "What time is it in Rome?");
        ObjectNode a = m.addObject().put("role", "assistant");
        a.putNull("content");
        a.putArray("tool_calls").addObject().put("id", "call_1").put("type", "function").putObject("function")
                .put("name", "get_time").put("arguments", "{\"city\": \"Rome\"}");
        m.addObject().put("role", "tool").put("tool_call_id", "call_1").put("content", "10:00");
        JsonNode c = JSON.readTree(post("/v1/chat/completions", chat).body());
        assertEquals(c.at("/usage/prompt_tokens").asInt(), resp.at("/usage/input_tokens").asInt(), resp.toString());
        assertEquals(c.at("/choices/0/message/content").asText(), resp.at("/output/0/content/0/text").asText());
    }

    @Test
    void refusesWhatItCannotDo() throws Exception {
        assertEquals(400, post("/v1/responses", JSON.createObjectNode().put("input", "x").put("previous_response_id", "resp_1")).statusCode());
        assertEquals(400, post("/v1/responses", JSON.createObjectNode()).statusCode());
        ObjectNode b = JSON.createObjectNode().put("input", "x");
        b.putArray("tools").addObject().put("type", "web_search");
        assertEquals(400, post("/v1/responses", b).statusCode());
        b = JSON.createObjectNode();
        b.putArray("input").addObject().put("type", "image").put("url", "x");
        assertEquals(400, post("/v1/responses", b).statusCode());
    }
}
