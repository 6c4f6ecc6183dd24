package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.api.ToolCallsTest;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/** /v1/responses and /v1/messages translated into chat requests: usage, history, turns and CORS as their APIs define them. */
class ApiTranslationTest {
    static final Path MODEL = Path.of("models", "tokenpress-tiny");
    static final ObjectMapper JSON = new ObjectMapper();
    static final HttpClient http = HttpClient.newHttpClient();
    static TokenPress tp;
    static OpenAiServer hermes, thinking;

    @BeforeAll
    static void start() throws Exception {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        tp = TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2));
        hermes = OpenAiServer.start(tp, new OpenAiServer.Options("127.0.0.1", 0, 1024, null,
                ChatTemplate.fromJinja(ToolCallsTest.HERMES_TEMPLATE, "", "<|end_of_text|>", "test template"), "tiny",
                SamplingOptions.defaults(), 16, null, 0, null));
        thinking = OpenAiServer.start(tp, new OpenAiServer.Options("127.0.0.1", 0, 512, null,
                ChatTemplate.fromJinja(ReasoningServerTest.TEMPLATE, "", "<|end_of_text|>", "test template"), "tiny",
                SamplingOptions.defaults(), 8, null, 0, null, null, 1, "auto"));
    }

    @AfterAll
    static void stop() {
        if (hermes != null) hermes.close();
        if (thinking != null) thinking.close();
        if (tp != null) tp.close();
    }

    static HttpResponse<String> post(OpenAiServer s, String path, String body) throws Exception {
        return http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + s.port() + path))
                .header("Content-Type", "application/json").POST(HttpRequest.BodyPublishers.ofString(body)).build(),
                HttpResponse.BodyHandlers.ofString());
    }

    static JsonNode ok(OpenAiServer s, String path, String body) throws Exception {
        HttpResponse<String> r = post(s, path, body);
        assertEquals(200, r.statusCode(), r.body());
        return JSON.readTree(r.body());
    }

    /**
     * Anthropic: input_tokens + cache_creation_input_tokens + cache_read_input_tokens is the prompt. The server puts the
     * whole prompt in input_tokens and the reused part again in cache_read_input_tokens (counted twice).
     */
    @Test
    void anthropicUsageCountsCachedTokensOnce() throws Exception {
        String b = "{\"max_tokens\": 2, \"temperature\": 0, \"messages\": [{\"role\": \"user\", \"content\": \"Hello there\"}]}";
        ok(hermes, "/v1/messages", b); // fills the cache
        JsonNode u = ok(hermes, "/v1/messages", b).get("usage");
        int prompt = ok(hermes, "/v1/messages/count_tokens", b).get("input_tokens").asInt();
        assertTrue(u.path("cache_read_input_tokens").asInt() > 0, u.toString());
        assertEquals(prompt, u.get("input_tokens").asInt() + u.path("cache_read_input_tokens").asInt()
                + u.path("cache_creation_input_tokens").asInt(), "prompt tokens counted twice: " + u);
    }

    /** The streamed message_start usage lacks cache_read_input_tokens, which the whole answer has. */
    @Test
    void anthropicStreamedUsageHasTheSameFields() throws Exception {
        String b = "{\"max_tokens\": 2, \"temperature\": 0, \"messages\": [{\"role\": \"user\", \"content\": \"Hello there\"}]";
        JsonNode whole = ok(hermes, "/v1/messages", b + "}").get("usage");
        String body = post(hermes, "/v1/messages", b + ", \"stream\": true}").body();
        JsonNode start = JSON.readTree(body.split("\n\n")[0].split("\n")[1].substring(6));
        assertEquals("message_start", start.get("type").asText());
        JsonNode su = start.at("/message/usage");
        whole.fieldNames().forEachRemaining(f -> { if (!f.equals("output_tokens")) assertTrue(su.has(f), f + " missing from " + su); });
    }

    /** Browser clients of the Messages API send x-api-key and anthropic-version: the preflight must allow them. */
    @Test
    void corsPreflightAllowsAnthropicHeaders() throws Exception {
        HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + hermes.port() + "/v1/messages"))
                .method("OPTIONS", HttpRequest.BodyPublishers.noBody())
                .header("Origin", "http://example.com").header("Access-Control-Request-Method", "POST")
                .header("Access-Control-Request-Headers", "content-type,x-api-key,anthropic-version").build(),
                HttpResponse.BodyHandlers.ofString());
        String allowed = r.headers().firstValue("Access-Control-Allow-Headers").orElse("").toLowerCase();
        assertTrue(allowed.contains("x-api-key") && allowed.contains("anthropic-version"), allowed);
    }

    /**
     * A reasoning item sent back in a Responses input reaches the template, as a thinking block does on /v1/messages
     * and reasoning_content on /v1/chat/completions; /v1/responses drops it (a shorter prompt).
     */
    @Test
    void responsesKeepReasoningItemsLikeTheOtherEndpoints() throws Exception {
        JsonNode a = ok(thinking, "/v1/messages", """
                {"max_tokens": 1, "messages": [{"role": "user", "content": "What is two plus two?"},
                 {"role": "assistant", "content": [{"type": "thinking", "thinking": "2 + 2", "signature": ""}, {"type": "text", "text": "4"}]},
                 {"role": "user", "content": "And 3 + 3?"}]}""");
        JsonNode o = ok(thinking, "/v1/responses", """
                {"max_output_tokens": 1, "input": [{"role": "user", "content": "What is two plus two?"},
                 {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "2 + 2"}]},
                 {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "4", "annotations": []}]},
                 {"role": "user", "content": "And 3 + 3?"}]}""");
        assertEquals(a.at("/usage/input_tokens").asInt(), o.at("/usage/input_tokens").asInt(), "the reasoning item was dropped");
    }

    /** A user turn whose blocks are all empty is dropped, and the request silently turns into an assistant prefill. */
    @Test
    void anthropicEmptyUserTurnIsRefusedNotTurnedIntoPrefill() throws Exception {
        HttpResponse<String> r = post(hermes, "/v1/messages", """
                {"max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                 {"role": "user", "content": []}]}""");
        assertEquals(400, r.statusCode(), r.body());
    }

    /** Anthropic allows an empty final assistant message (a prefill of nothing); the server answers 400. */
    @Test
    void anthropicEmptyFinalAssistantMessageIsAccepted() throws Exception {
        HttpResponse<String> r = post(hermes, "/v1/messages", """
                {"max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}""");
        assertEquals(200, r.statusCode(), r.body());
    }

    /**
     * The Responses API has no prefill: an input ending with an assistant message gets a new assistant message. The
     * server continues the given message instead (the prompt lacks the turn end and a new generation prompt).
     */
    @Test
    void responsesInputEndingWithAssistantGetsANewMessage() throws Exception {
        JsonNode o = ok(hermes, "/v1/responses", """
                {"max_output_tokens": 1, "input": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}""");
        int want = tp.tokenizer().encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>assistant\n").length;
        assertEquals(want, o.at("/usage/input_tokens").asInt(), o.toString());
    }
}
