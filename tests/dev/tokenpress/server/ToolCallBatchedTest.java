package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.api.ToolCallsTest;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.*;

import java.net.URI;
import java.net.http.*;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/** Tools "auto" under continuous batching (-np 2): streamed content equals the message content. */
class ToolCallBatchedTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static TokenPress tp;
    static OpenAiServer server;

    @BeforeAll
    static void start() throws Exception {
        tp = TokenPress.load(Path.of("models", "tokenpress-tiny"), LoadOptions.defaults().withDevice("cpu").withThreads(2));
        ChatTemplate t = ChatTemplate.fromJinja(ToolCallsTest.HERMES_TEMPLATE, "", "<|end_of_text|>", "test template");
        server = OpenAiServer.start(tp, new OpenAiServer.Options("127.0.0.1", 0, 1024, null, t, "tiny",
                SamplingOptions.defaults(), 300, null, 0, null, null, 2));
    }

    @AfterAll
    static void stop() { if (server != null) server.close(); if (tp != null) tp.close(); }

    static String post(JsonNode b) throws Exception {
        return HttpClient.newHttpClient().send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + server.port() + "/v1/chat/completions"))
                .POST(HttpRequest.BodyPublishers.ofString(b.toString())).build(), HttpResponse.BodyHandlers.ofString()).body();
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
        System.out.println("BATCHED content: " + JSON.writeValueAsString(whole));
    }
}
