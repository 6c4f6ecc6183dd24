package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.ToolCallsTest;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.net.http.HttpResponse;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/** A reply forced by a GBNF grammar (tools "auto") read for calls, streamed and not: the same content and calls. */
class ToolCallStreamingTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static TinyServer srv;

    @BeforeAll
    static void start() throws Exception {
        srv = TinyServer.start(new OpenAiServer.Options("127.0.0.1", 0, 1024, null, TinyServer.hermes(), "tiny",
                SamplingOptions.defaults(), 300, null, 0, null));
    }

    @AfterAll
    static void stop() {
        if (srv != null) srv.close();
    }

    static HttpResponse<String> post(JsonNode body) throws Exception {
        return srv.post("/v1/chat/completions", body);
    }

    static ObjectNode forced(String reply) throws Exception {
        ObjectNode b = JSON.createObjectNode();
        b.putArray("messages").addObject().put("role", "user").put("content", "Time in Oslo?");
        b.set("tools", JSON.readTree(ToolCallsTest.TOOLS));
        b.put("temperature", 0);
        b.put("max_tokens", 200);
        b.put("grammar", "root ::= " + JSON.writeValueAsString(reply) + "\n");
        return b;
    }

    /** Content streamed as deltas vs the non-streamed message's content for the same (forced) reply. */
    static void compare(String reply) throws Exception {
        ObjectNode b = forced(reply);
        HttpResponse<String> r = post(b);
        assertEquals(200, r.statusCode(), r.body());
        JsonNode msg = JSON.readTree(r.body()).at("/choices/0/message");
        assertEquals(1, msg.get("tool_calls").size(), r.body());
        String whole = msg.get("content").isNull() ? "" : msg.get("content").asText();
        b.put("stream", true);
        StringBuilder streamed = new StringBuilder();
        int contentDeltas = 0;
        for (JsonNode e : OpenAiServerTest.events(post(b).body())) {
            JsonNode d = e.at("/choices/0/delta/content");
            if (d.isTextual()) { streamed.append(d.asText()); contentDeltas++; }
        }
        assertEquals(whole, streamed.toString(), "streamed content (" + contentDeltas + " deltas) vs message.content for "
                + JSON.writeValueAsString(reply));
    }

    @Test
    void textBeforeACallStreamsAsItIsNotStripped() throws Exception {
        compare("Sure.\n\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>");
    }

    @Test
    void aNewlineBeforeACallIsStreamedAsContentButTheMessageHasNone() throws Exception {
        compare("\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>");
    }

    /** A whole-reply JSON call whose argument mentions a Hermes tag: no content, streamed or not. */
    @Test
    void aWholeReplyJsonCallMentioningAHermesTag() throws Exception {
        compare("{\"name\": \"get_time\", \"arguments\": {\"city\": \"<tool_call>\"}}");
    }

    /** tool_choice "required" with a parameterless tool ("parameters": {}): the grammar lets "arguments" be any JSON
     *  value, the tiny model writes a string, and the reply comes back as content without tool_calls. */
    @Test
    void aRequiredCallOfAParameterlessToolComesBackAsACall() throws Exception {
        ObjectNode b = JSON.createObjectNode();
        b.putArray("messages").addObject().put("role", "user").put("content", "What time is it?");
        b.set("tools", JSON.readTree("[{\"type\": \"function\", \"function\": {\"name\": \"now\", \"parameters\": {}}}]"));
        b.put("tool_choice", "required");
        b.put("parallel_tool_calls", false);
        b.put("max_tokens", 60);
        b.put("seed", 2);
        b.put("temperature", 1.0);
        HttpResponse<String> r = post(b);
        assertEquals(200, r.statusCode(), r.body());
        JsonNode c = JSON.readTree(r.body()).at("/choices/0");
        assertEquals("tool_calls", c.get("finish_reason").asText(), r.body());
    }

    /** stop "</tool_call>" (clients set it): the call is still read, streamed or not. */
    @Test
    void aStopStringAtTheCallsEnd() throws Exception {
        ObjectNode b = forced("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>");
        b.putArray("stop").add("</tool_call>");
        JsonNode c = JSON.readTree(post(b).body()).at("/choices/0");
        assertEquals("tool_calls", c.get("finish_reason").asText(), c.toString());
        b.put("stream", true);
        List<JsonNode> ev = OpenAiServerTest.events(post(b).body());
        assertEquals("tool_calls", ev.get(ev.size() - 1).at("/choices/0/finish_reason").asText());
    }

    /** n = 2 with a forced call: both choices carry it. */
    @Test
    void twoChoicesWithTools() throws Exception {
        ObjectNode b = forced("<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>");
        b.put("n", 2);
        JsonNode o = JSON.readTree(post(b).body());
        for (JsonNode c : o.get("choices")) assertEquals("tool_calls", c.get("finish_reason").asText(), o.toString());
    }
}
