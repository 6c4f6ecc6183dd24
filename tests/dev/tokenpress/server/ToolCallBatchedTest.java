package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.ToolCallsTest;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.*;


import static org.junit.jupiter.api.Assertions.*;

/** Tools "auto" under continuous batching (-np 2): streamed content equals the message content. */
class ToolCallBatchedTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static TinyServer srv;

    @BeforeAll
    static void start() throws Exception {
        srv = TinyServer.start(new OpenAiServer.Options("127.0.0.1", 0, 1024, null, TinyServer.hermes(), "tiny",
                SamplingOptions.defaults(), 300, null, 0, null, null, 2));
    }

    @AfterAll
    static void stop() { if (srv != null) srv.close(); }

    static String post(JsonNode b) throws Exception {
        return srv.post("/v1/chat/completions", b).body();
    }

    @Test
    void batchedStreamMatches() throws Exception {
        ObjectNode b = JSON.createObjectNode();
        b.putArray("messages").addObject().put("role", "user").put("content", "Hello there");
        b.set("tools", JSON.readTree(ToolCallsTest.TOOLS));
        b.put("temperature", 0);
        b.put("max_tokens", 40);
        b.put("n", 2);
        JsonNode o = JSON.readTree(post(b));
        assertEquals(2, o.get("choices").size(), o.toString());
        b.remove("n");
        String whole = JSON.readTree(post(b)).at("/choices/0/message/content").asText();
        b.put("stream", true);
        StringBuilder s = new StringBuilder();
        for (JsonNode e : OpenAiServerTest.events(post(b))) s.append(e.at("/choices/0/delta/content").asText(""));
        assertEquals(whole, s.toString());
    }

    /**
     * Constrained output in the batch (a demanded tool call, JSON mode): the same reply as through the session (a
     * request asking for log-probabilities runs there), alone and with two requests decoded together.
     */
    @Test
    void constrainedRepliesAreBatchedWithTheSameResult() throws Exception {
        ObjectNode call = JSON.createObjectNode();
        call.putArray("messages").addObject().put("role", "user").put("content", "What time is it in Rome?");
        call.set("tools", JSON.readTree(ToolCallsTest.TOOLS));
        call.put("temperature", 0).put("max_tokens", 120).put("tool_choice", "required").put("parallel_tool_calls", false);
        ObjectNode json = JSON.createObjectNode();
        json.putArray("messages").addObject().put("role", "user").put("content", "Give me a JSON object");
        json.put("temperature", 0).put("max_tokens", 60);
        json.putObject("response_format").put("type", "json_object");
        JsonNode callBatched = JSON.readTree(post(call)).at("/choices/0/message");
        JsonNode jsonChoice = JSON.readTree(post(json)).at("/choices/0"), jsonBatched = jsonChoice.get("message");
        call.put("logprobs", true);
        json.put("logprobs", true);
        JsonNode callAlone = JSON.readTree(post(call)).at("/choices/0/message");
        JsonNode jsonAlone = JSON.readTree(post(json)).at("/choices/0/message");
        assertEquals(callAlone.at("/tool_calls/0/function"), callBatched.at("/tool_calls/0/function"), callBatched.toString());
        assertEquals(jsonAlone.get("content"), jsonBatched.get("content"));
        if (jsonChoice.get("finish_reason").asText().equals("stop")) // a complete value (not cut by max_tokens)
            assertTrue(JSON.readTree(jsonBatched.get("content").asText()).isObject(), jsonBatched.toString());
        else
            assertTrue(jsonBatched.get("content").asText().startsWith("{"), jsonBatched.toString());
        call.remove("logprobs");
        json.remove("logprobs");
        var a = java.util.concurrent.CompletableFuture.supplyAsync(() -> {
            try {
                return JSON.readTree(post(call)).at("/choices/0/message");
            } catch (Exception e) {
                throw new RuntimeException(e);
            }
        });
        JsonNode b = JSON.readTree(post(json)).at("/choices/0/message");
        assertEquals(callAlone.at("/tool_calls/0/function"), a.get().at("/tool_calls/0/function"), "together");
        assertEquals(jsonAlone.get("content"), b.get("content"), "together");
    }
}
