package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.Reasoning;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;

import java.net.http.HttpResponse;

import static org.junit.jupiter.api.Assertions.*;

/**
 * A reasoning model's template (its reply prompt opens a thinking block unless {@code enable_thinking} is false):
 * the thinking comes back as reasoning_content, whole and streamed, and chat_template_kwargs reach the template.
 */
class ReasoningServerTest {
    static final ObjectMapper JSON = new ObjectMapper();
    static final String TEMPLATE = """
            {%- for m in messages %}
                {%- if m.role == 'user' %}{{- '<|User|>' + m.content }}
                {%- elif m.role == 'assistant' %}{{- '<|Assistant|>' }}
                    {%- if m.reasoning_content is defined %}{{- '<think>' + m.reasoning_content + '</think>' }}{%- endif %}
                    {{- m.content.split('</think>')[-1] | trim + '<|end|>' }}
                {%- endif %}
            {%- endfor %}
            {%- if add_generation_prompt %}
                {{- '<|Assistant|>' }}
                {%- if enable_thinking is defined and not enable_thinking %}{{- '<think>\\n\\n</think>\\n\\n' }}
                {%- else %}{{- '<think>\\n' }}{%- endif %}
            {%- endif %}
            """;
    static TinyServer srv;
    static TokenPress tp;
    static OpenAiServer server;

    @BeforeAll
    static void start() throws Exception {
        srv = TinyServer.start(new OpenAiServer.Options("127.0.0.1", 0, 512, null,
                ChatTemplate.fromJinja(TEMPLATE, "", "<|end_of_text|>", "test template"), "tiny", SamplingOptions.defaults(),
                24, null, 0, null, null, 1, "auto"));
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

    static ObjectNode request() {
        ObjectNode b = JSON.createObjectNode();
        b.putArray("messages").addObject().put("role", "user").put("content", "What is two plus two?");
        b.put("temperature", 0);
        return b;
    }

    static JsonNode message(ObjectNode b) throws Exception {
        HttpResponse<String> r = post("/v1/chat/completions", b);
        assertEquals(200, r.statusCode(), r.body());
        return JSON.readTree(r.body()).at("/choices/0/message");
    }

    @Test
    void thinkingComesBackAsReasoningContent() throws Exception {
        ObjectNode b = request();
        String prompt = JSON.readTree(post("/apply-template", b).body()).get("prompt").asText();
        assertEquals("<|User|>What is two plus two?<|Assistant|><think>\n", prompt);
        b.put("reasoning_format", "none");
        String raw = message(b).get("content").asText();
        assertFalse(raw.isBlank());
        Reasoning.Split want = Reasoning.split(raw, true);

        b.remove("reasoning_format"); // the server's auto: this template writes thinking blocks
        JsonNode m = message(b);
        assertEquals(want.reasoning(), m.path("reasoning_content").asText(""));
        assertEquals(want.content(), m.get("content").asText());
        assertFalse(want.reasoning().isEmpty());

        b.put("stream", true);
        StringBuilder reasoning = new StringBuilder(), content = new StringBuilder();
        for (JsonNode e : OpenAiServerTest.events(post("/v1/chat/completions", b).body())) {
            reasoning.append(e.at("/choices/0/delta/reasoning_content").asText(""));
            content.append(e.at("/choices/0/delta/content").asText(""));
        }
        assertEquals(want.reasoning(), reasoning.toString());
        assertEquals(want.content(), content.toString());
    }

    /** The Responses API puts the thinking into a reasoning item, streamed as reasoning_text deltas. */
    @Test
    void responsesCarryAReasoningItem() throws Exception {
        JsonNode m = message(request());
        String reasoning = m.path("reasoning_content").asText("");
        assertFalse(reasoning.isEmpty());
        ObjectNode b = JSON.createObjectNode().put("input", "What is two plus two?").put("temperature", 0);
        JsonNode o = JSON.readTree(post("/v1/responses", b).body());
        assertEquals("reasoning", o.at("/output/0/type").asText(), o.toString());
        assertEquals(reasoning, o.at("/output/0/content/0/text").asText());
        assertEquals(m.get("content").asText(), o.at("/output/1/content/0/text").asText());
        assertTrue(o.at("/usage/output_tokens_details/reasoning_tokens").asInt() > 0);
        b.put("stream", true);
        StringBuilder deltas = new StringBuilder();
        for (String block : post("/v1/responses", b).body().split("\n\n")) {
            if (block.isBlank()) continue;
            JsonNode d = JSON.readTree(block.substring(block.indexOf("data: ") + 6));
            if (d.get("type").asText().equals("response.reasoning_text.delta")) deltas.append(d.get("delta").asText());
        }
        assertEquals(reasoning, deltas.toString());
    }

    /** An assistant message's reasoning_content reaches the template (Qwen3's shows it again within the turn). */
    @Test
    void historyReasoningReachesTheTemplate() throws Exception {
        ObjectNode b = request();
        var m = (com.fasterxml.jackson.databind.node.ArrayNode) b.get("messages");
        m.addObject().put("role", "assistant").put("content", "4").put("reasoning_content", "2 + 2");
        m.addObject().put("role", "user").put("content", "And 3 + 3?");
        String prompt = JSON.readTree(post("/apply-template", b).body()).get("prompt").asText();
        assertEquals("<|User|>What is two plus two?<|Assistant|><think>2 + 2</think>4<|end|><|User|>And 3 + 3?<|Assistant|><think>\n",
                prompt);
        ((ObjectNode) m.get(1)).remove("reasoning_content");
        prompt = JSON.readTree(post("/apply-template", b).body()).get("prompt").asText();
        assertTrue(prompt.contains("<|Assistant|>4<|end|>"), prompt);
    }

    @Test
    void templateKwargsTurnThinkingOff() throws Exception {
        ObjectNode b = request();
        b.putObject("chat_template_kwargs").put("enable_thinking", false);
        String prompt = JSON.readTree(post("/apply-template", b).body()).get("prompt").asText();
        assertTrue(prompt.endsWith("<think>\n\n</think>\n\n"), prompt);
        b.put("reasoning_format", "none");
        String raw = message(b).get("content").asText();
        b.put("reasoning_format", "deepseek");
        JsonNode m = message(b);
        Reasoning.Split want = Reasoning.split(raw, false); // the block is closed: the reply is the answer
        assertEquals(want.content(), m.get("content").asText());
        assertEquals(want.reasoning(), m.path("reasoning_content").asText(""));

        b.put("reasoning_format", "sometimes");
        assertEquals(400, post("/v1/chat/completions", b).statusCode());
        b.remove("reasoning_format");
        b.put("chat_template_kwargs", "enable_thinking=false");
        assertEquals(400, post("/v1/chat/completions", b).statusCode());
    }
}
