package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.api.GenerationResult;
import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.io.ChatTemplate.Message;
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
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CopyOnWriteArrayList;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The OpenAI-compatible server end to end over HTTP on a free port: completions and chat completions against the
 * same generation through the Java API, streaming against non-streaming, stop strings, errors, concurrent requests.
 */
class OpenAiServerTest {
    static final Path MODEL = Path.of("models", "tokenpress-tiny");
    static final ObjectMapper JSON = new ObjectMapper();
    static TokenPress tp;
    static OpenAiServer server;
    static final List<String> log = new CopyOnWriteArrayList<>();
    static final HttpClient http = HttpClient.newHttpClient();

    @BeforeAll
    static void start() throws Exception {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        tp = TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2));
        server = OpenAiServer.start(tp, new OpenAiServer.Options("127.0.0.1", 0, 256, null, ChatTemplate.named("chatml"),
                "tiny", SamplingOptions.defaults(), 16, log::add, 0, null));
    }

    @AfterAll
    static void stop() {
        if (server != null) server.close();
        if (tp != null) tp.close();
    }

    record Reply(int status, String body) {
        JsonNode json() throws Exception {
            return JSON.readTree(body);
        }
    }

    static Reply post(String path, String body) throws Exception {
        HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + server.port() + path))
                .header("Content-Type", "application/json").POST(HttpRequest.BodyPublishers.ofString(body)).build(),
                HttpResponse.BodyHandlers.ofString());
        return new Reply(r.statusCode(), r.body());
    }

    static Reply get(String path) throws Exception {
        HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + server.port() + path))
                .GET().build(), HttpResponse.BodyHandlers.ofString());
        return new Reply(r.statusCode(), r.body());
    }

    /** The text the Java API generates for these tokens (greedy, n tokens, stop tokens as given). */
    static GenerationResult direct(int[] tokens, int n, java.util.Set<Integer> stops) {
        try (Session s = tp.newSession(256)) {
            return s.generate(tokens, n, SamplingOptions.greedy(), null, null, stops);
        }
    }

    /** The data lines of a server-sent-events body, [DONE] last. */
    static List<JsonNode> events(String body) throws Exception {
        List<JsonNode> out = new ArrayList<>();
        String[] blocks = body.split("\n\n");
        assertEquals("data: [DONE]", blocks[blocks.length - 1].strip(), body);
        for (int i = 0; i < blocks.length - 1; i++) {
            assertTrue(blocks[i].startsWith("data: "), blocks[i]);
            out.add(JSON.readTree(blocks[i].substring(6)));
        }
        return out;
    }

    @Test
    void completionMatchesTheJavaApi() throws Exception {
        String prompt = "def add(a, b):";
        Reply r = post("/v1/completions", "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 12, \"temperature\": 0}");
        assertEquals(200, r.status(), r.body());
        JsonNode j = r.json();
        GenerationResult want = direct(tp.tokenizer().encode(prompt), 12, java.util.Set.of());
        assertEquals("text_completion", j.get("object").asText());
        assertEquals("tiny", j.get("model").asText());
        assertEquals(want.text(), j.at("/choices/0/text").asText());
        assertEquals(want.stopReason().equals("length") ? "length" : "stop", j.at("/choices/0/finish_reason").asText());
        assertEquals(tp.tokenizer().encode(prompt).length, j.at("/usage/prompt_tokens").asInt());
        assertEquals(want.tokens().length, j.at("/usage/completion_tokens").asInt());
        assertTrue(j.at("/timings/predicted_per_second").asDouble() > 0);

        Reply look = post("/v1/completions", "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 12, \"temperature\": 0, \"lookup\": 5}");
        assertEquals(want.text(), look.json().at("/choices/0/text").asText(), "prompt lookup decoding keeps the greedy text");
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"lookup\": -1}").status());

        // token ids as the prompt, and streaming: the same text in pieces, finish reason and usage in the last chunk
        int[] ids = tp.tokenizer().encode(prompt);
        StringBuilder list = new StringBuilder();
        for (int id : ids) list.append(list.length() == 0 ? "" : ",").append(id);
        Reply s = post("/v1/completions", "{\"prompt\": [" + list + "], \"max_tokens\": 12, \"temperature\": 0, \"stream\": true}");
        assertEquals(200, s.status(), s.body());
        List<JsonNode> ev = events(s.body());
        StringBuilder text = new StringBuilder();
        for (JsonNode e : ev) text.append(e.at("/choices/0/text").asText());
        assertEquals(want.text(), text.toString());
        assertEquals(j.at("/choices/0/finish_reason").asText(), ev.get(ev.size() - 1).at("/choices/0/finish_reason").asText());
        assertEquals(want.tokens().length, ev.get(ev.size() - 1).at("/usage/completion_tokens").asInt());
        assertTrue(ev.size() > 2, "streamed in pieces: " + s.body());
    }

    /** A stop string ends the text just before it, streaming or not; what streams never includes a part of it. */
    @Test
    void stopStringsCutTheText() throws Exception {
        GenerationResult full = direct(tp.tokenizer().encode("import os\n"), 30, java.util.Set.of());
        String t = full.text();
        assertTrue(t.length() > 12, t);
        String stop = t.substring(6, 9);
        String want = t.substring(0, t.indexOf(stop));
        String body = JSON.writeValueAsString(java.util.Map.of("prompt", "import os\n", "max_tokens", 30,
                "temperature", 0, "stop", List.of("\u0001never", stop)));
        Reply r = post("/v1/completions", body);
        assertEquals(200, r.status(), r.body());
        assertEquals(want, r.json().at("/choices/0/text").asText());
        assertEquals("stop", r.json().at("/choices/0/finish_reason").asText());
        assertTrue(r.json().at("/usage/completion_tokens").asInt() < full.tokens().length, "generation stopped early");

        Reply s = post("/v1/completions", body.replace("}", ",\"stream\":true}"));
        StringBuilder text = new StringBuilder();
        for (JsonNode e : events(s.body())) text.append(e.at("/choices/0/text").asText());
        assertEquals(want, text.toString());
    }

    @Test
    void chatCompletionUsesTheTemplate() throws Exception {
        String body = "{\"messages\": [{\"role\": \"developer\", \"content\": \"Be brief.\"}, {\"role\": \"user\", "
                + "\"content\": [{\"type\": \"text\", \"text\": \"Hello\"}, {\"type\": \"text\", \"text\": \" there\"}]}], "
                + "\"max_completion_tokens\": 10, \"temperature\": 0}";
        Reply r = post("/v1/chat/completions", body);
        assertEquals(200, r.status(), r.body());
        JsonNode j = r.json();
        ChatTemplate t = ChatTemplate.named("chatml");
        int[] tokens = tp.tokenizer().encode(t.render(List.of(Message.system("Be brief."), Message.user("Hello there")), true));
        java.util.Set<Integer> stops = new java.util.HashSet<>();
        for (int id : t.stopTokenIds(tp.tokenizer())) stops.add(id);
        GenerationResult want = direct(tokens, 10, stops);
        assertEquals("chat.completion", j.get("object").asText());
        assertEquals("assistant", j.at("/choices/0/message/role").asText());
        assertEquals(want.text(), j.at("/choices/0/message/content").asText());
        assertEquals(tokens.length, j.at("/usage/prompt_tokens").asInt());

        Reply s = post("/v1/chat/completions", body.replace("\"temperature\": 0", "\"temperature\": 0, \"stream\": true"));
        List<JsonNode> ev = events(s.body());
        assertEquals("assistant", ev.get(0).at("/choices/0/delta/role").asText());
        StringBuilder text = new StringBuilder();
        for (JsonNode e : ev) text.append(e.at("/choices/0/delta/content").asText(""));
        assertEquals(want.text(), text.toString());
        assertEquals("chat.completion.chunk", ev.get(1).get("object").asText());
    }

    @Test
    void errorsAreOpenAiShaped() throws Exception {
        Object[][] cases = {
                {"/v1/completions", "{not json", 400},
                {"/v1/completions", "{\"max_tokens\": 3}", 400},
                {"/v1/completions", "{\"prompt\": \"x\", \"n\": 2, \"stream\": true}", 400},
                {"/v1/completions", "{\"prompt\": \"x\", \"n\": 17}", 400},
                {"/v1/completions", "{\"prompt\": \"x\", \"temperature\": \"hot\"}", 400},
                {"/v1/completions", "{\"prompt\": \"x\", \"top_p\": 0}", 400},
                {"/v1/completions", "{\"prompt\": [999999]}", 400},
                {"/v1/chat/completions", "{\"messages\": []}", 400},
                {"/v1/chat/completions", "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", 400},
                {"/v1/chat/completions", "{\"messages\": [{\"role\": \"system\", \"content\": \"x\"}]}", 400},
                {"/v1/embeddings", "{}", 400},
                {"/v1/rerank", "{}", 404}};
        for (Object[] c : cases) {
            Reply r = post((String) c[0], (String) c[1]);
            assertEquals(c[2], r.status(), c[1] + " → " + r.body());
            assertFalse(r.json().at("/error/message").asText().isEmpty(), r.body());
        }
        String longPrompt = "word ".repeat(400);
        Reply tooLong = post("/v1/completions", "{\"prompt\": \"" + longPrompt + "\"}");
        assertEquals(400, tooLong.status());
        assertEquals("context_length_exceeded", tooLong.json().at("/error/code").asText(), tooLong.body());
        assertEquals(405, get("/v1/completions").status());
        assertEquals("ok", get("/health").json().get("status").asText());
        JsonNode models = get("/v1/models").json();
        assertEquals("tiny", models.at("/data/0/id").asText());
        assertEquals(256, models.at("/data/0/meta/n_ctx").asInt());
        assertTrue(log.stream().anyMatch(l -> l.startsWith("POST /v1/completions 400")), log.toString());
    }

    /**
     * A prompt that begins with the previous request's tokens reuses them (timings.cache_n) and answers as a fresh
     * cache would; cache_prompt false starts from an empty cache.
     */
    @Test
    void promptCachingReusesTheSharedBeginning() throws Exception {
        String first = "def area(r):\n    return", second = first + " 3.14 * r * r\n\ndef";
        assertEquals(200, post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", first,
                "max_tokens", 6, "temperature", 0))).status());
        Reply r = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", second, "max_tokens", 10,
                "temperature", 0)));
        assertEquals(200, r.status(), r.body());
        int[] a = tp.tokenizer().encode(first), b = tp.tokenizer().encode(second);
        int shared = 0;
        while (shared < a.length && a[shared] == b[shared]) shared++;
        assertTrue(shared > 3, "the prompts share their beginning");
        assertEquals(shared, r.json().at("/timings/cache_n").asInt(), r.body());
        assertEquals(b.length - shared, r.json().at("/timings/prompt_n").asInt(), r.body());
        assertEquals(b.length, r.json().at("/usage/prompt_tokens").asInt());
        assertEquals(direct(b, 10, java.util.Set.of()).text(), r.json().at("/choices/0/text").asText());

        Reply same = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", second, "max_tokens", 10,
                "temperature", 0)));
        assertEquals(b.length - 1, same.json().at("/timings/cache_n").asInt(), "all but the last prompt token reused");
        assertEquals(r.json().at("/choices/0/text").asText(), same.json().at("/choices/0/text").asText());
        Reply off = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", second, "max_tokens", 10,
                "temperature", 0, "cache_prompt", false)));
        assertEquals(0, off.json().at("/timings/cache_n").asInt());
        assertEquals(r.json().at("/choices/0/text").asText(), off.json().at("/choices/0/text").asText());
    }

    /**
     * A request's own KV policy decodes as the Java API does under it; the server's policy comes back for the next
     * request, whose prompt cannot reuse a cache that a window policy has thinned.
     */
    @Test
    void aRequestMayNameItsKvPolicy() throws Exception {
        String prompt = "import numpy as np\nimport os\n\ndef load(path):\n    with open(path) as f:\n";
        int[] tokens = tp.tokenizer().encode(prompt);
        String body = JSON.writeValueAsString(java.util.Map.of("prompt", prompt, "max_tokens", 12, "temperature", 0,
                "kv", "window:sink=2,budget=12"));
        Reply r = post("/v1/completions", body);
        assertEquals(200, r.status(), r.body());
        GenerationResult want;
        tp.model().setPolicy(dev.tokenpress.kv.KvPolicies.parse("window:sink=2,budget=12", tp.config()));
        try {
            want = direct(tokens, 12, java.util.Set.of());
        } finally {
            tp.model().setPolicy(dev.tokenpress.kv.KvPolicy.FULL);
        }
        assertEquals(want.text(), r.json().at("/choices/0/text").asText());
        assertNotEquals(direct(tokens, 12, java.util.Set.of()).text(), want.text(), "the window changes the text here");

        Reply next = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", prompt, "max_tokens", 12,
                "temperature", 0)));
        assertEquals(0, next.json().at("/timings/cache_n").asInt(), "nothing reused from a thinned cache");
        assertEquals(direct(tokens, 12, java.util.Set.of()).text(), next.json().at("/choices/0/text").asText());
        assertEquals("full", get("/v1/models").json().at("/data/0/meta/kv").asText());

        Reply bad = post("/v1/completions", "{\"prompt\": \"x\", \"kv\": \"lru:budget=3\"}");
        assertEquals(400, bad.status());
        assertTrue(bad.json().at("/error/message").asText().contains("window"), bad.body());
    }

    /**
     * Log-probabilities are those of the model distribution: the chosen token's equals log-softmax of the logits a
     * prefill of the prompt and the tokens before it gives, and alternatives come most likely first.
     */
    @Test
    void logprobsAreTheModelDistributions() throws Exception {
        String prompt = "def mean(xs):\n";
        Reply r = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", prompt, "max_tokens", 4,
                "temperature", 0, "logprobs", 3)));
        assertEquals(200, r.status(), r.body());
        JsonNode lp = r.json().at("/choices/0/logprobs");
        int[] ids = tp.tokenizer().encode(prompt);
        GenerationResult want = direct(ids, 4, java.util.Set.of());
        assertEquals(want.tokens().length, lp.get("tokens").size());
        int v = tp.config().vocabSize();
        int[] all = java.util.Arrays.copyOf(ids, ids.length + want.tokens().length);
        System.arraycopy(want.tokens(), 0, all, ids.length, want.tokens().length);
        float[] logits;
        try (Session s = tp.newSession(256)) {
            logits = s.logits(all);
        }
        StringBuilder text = new StringBuilder();
        for (int i = 0; i < want.tokens().length; i++) {
            int row = ids.length - 1 + i;
            double max = Double.NEGATIVE_INFINITY, z = 0;
            for (int j = 0; j < v; j++) max = Math.max(max, logits[row * v + j]);
            for (int j = 0; j < v; j++) z += Math.exp(logits[row * v + j] - max);
            double expect = logits[row * v + want.tokens()[i]] - max - Math.log(z);
            assertEquals(expect, lp.at("/token_logprobs/" + i).asDouble(), 1e-3, "token " + i);
            JsonNode top = lp.at("/top_logprobs/" + i);
            assertTrue(top.size() >= 1 && top.size() <= 3, top.toString());
            double first = top.elements().next().asDouble();
            assertEquals(expect, first, 1e-9, "greedy picks the most likely token");
            assertEquals(text.length(), lp.at("/text_offset/" + i).asInt());
            text.append(lp.at("/tokens/" + i).asText());
        }
        assertEquals(r.json().at("/choices/0/text").asText(), text.toString());

        Reply chat = post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                + "\"max_tokens\": 3, \"temperature\": 0, \"logprobs\": true, \"top_logprobs\": 2}");
        assertEquals(200, chat.status(), chat.body());
        JsonNode content = chat.json().at("/choices/0/logprobs/content");
        assertEquals(chat.json().at("/usage/completion_tokens").asInt(), content.size());
        for (JsonNode e : content) {
            assertEquals(2, e.get("top_logprobs").size());
            assertTrue(e.get("logprob").asDouble() <= 0);
            assertTrue(e.at("/top_logprobs/0/logprob").asDouble() >= e.at("/top_logprobs/1/logprob").asDouble());
        }
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"logprobs\": 2, \"stream\": true}").status());
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"logprobs\": 21}").status());
        assertEquals(400, post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                + "\"top_logprobs\": 2}").status());
    }

    /**
     * echo with logprobs: the prompt's log-probabilities equal a prefill's (what loglikelihood evaluations ask for),
     * the first is null, and a completion after it is the greedy one.
     */
    @Test
    void echoScoresThePrompt() throws Exception {
        String prompt = "import os\nimport sys\n";
        int[] ids = tp.tokenizer().encode(prompt);
        float[] want;
        try (Session s = tp.newSession(256)) {
            want = s.logProbs(ids);
        }
        Reply r = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", prompt, "max_tokens", 0,
                "echo", true, "logprobs", 1)));
        assertEquals(200, r.status(), r.body());
        JsonNode lp = r.json().at("/choices/0/logprobs");
        String promptText = tp.tokenizer().decode(java.util.Arrays.copyOfRange(ids, tp.tokenizer().prefixIds().length, ids.length));
        assertEquals(prompt, promptText, "the prompt round-trips");
        assertEquals(promptText, r.json().at("/choices/0/text").asText(), "echo gives the prompt without the BOS");
        assertEquals(ids.length, lp.get("tokens").size());
        assertTrue(lp.at("/token_logprobs/0").isNull() && lp.at("/top_logprobs/0").isNull(), lp.toString());
        for (int i = 1; i < ids.length; i++) {
            assertEquals(want[i - 1], lp.at("/token_logprobs/" + i).asDouble(), 1e-4, "token " + i);
            assertEquals(1, lp.at("/top_logprobs/" + i).size());
        }
        assertEquals(0, r.json().at("/usage/completion_tokens").asInt());

        Reply g = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", prompt, "max_tokens", 6,
                "temperature", 0, "echo", true, "logprobs", 0)));
        GenerationResult direct = direct(ids, 6, java.util.Set.of());
        assertEquals(promptText + direct.text(), g.json().at("/choices/0/text").asText());
        JsonNode glp = g.json().at("/choices/0/logprobs");
        assertEquals(ids.length + direct.tokens().length, glp.get("tokens").size());
        for (int i = 1; i < ids.length; i++)
            assertEquals(want[i - 1], glp.at("/token_logprobs/" + i).asDouble(), 1e-4, "prompt token " + i);
        Reply plainEcho = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", prompt, "max_tokens", 6,
                "temperature", 0, "echo", true)));
        assertEquals(g.json().at("/choices/0/text").asText(), plainEcho.json().at("/choices/0/text").asText());
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"echo\": true, \"stream\": true}").status());
        // every choice echoes the prompt with its log-probabilities
        Reply two = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", prompt, "max_tokens", 3,
                "echo", true, "logprobs", 1, "n", 2)));
        assertEquals(200, two.status(), two.body());
        for (int c = 0; c < 2; c++)
            assertEquals(want[0], two.json().at("/choices/" + c + "/logprobs/token_logprobs/1").asDouble(), 1e-4, "choice " + c);
    }

    /** A max_tokens far past the context is a request for "until the context is full", not a failure. */
    @Test
    void hugeMaxTokensRunsToTheContext() throws Exception {
        Reply r = post("/v1/completions", "{\"prompt\": \"def f(\", \"max_tokens\": 2000000000, \"temperature\": 0}");
        assertEquals(200, r.status(), r.body());
        assertEquals("length", r.json().at("/choices/0/finish_reason").asText());
        assertTrue(r.json().at("/usage/total_tokens").asInt() <= server.contextSize() + 1, r.body());
        Reply next = post("/v1/completions", "{\"prompt\": \"def f(\", \"max_tokens\": 3, \"temperature\": 0}");
        assertEquals(200, next.status(), "the session is fine afterwards: " + next.body());
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"stop\": [1]}").status(), "stop entries are strings");
    }

    /** response_format json_object: the text is a JSON object prefix at every length, and a whole object when it ends. */
    @Test
    void jsonObjectResponses() throws Exception {
        for (int seed = 0; seed < 4; seed++) {
            Reply r = post("/v1/completions", JSON.writeValueAsString(java.util.Map.of("prompt", "settings = ",
                    "max_tokens", 60, "temperature", 0.8, "seed", seed, "response_format", java.util.Map.of("type", "json_object"))));
            assertEquals(200, r.status(), r.body());
            String text = r.json().at("/choices/0/text").asText();
            assertTrue(new dev.tokenpress.sample.JsonPrefix(true).feed(text), "not a JSON object prefix: " + text);
            if (r.json().at("/choices/0/finish_reason").asText().equals("stop")) {
                JsonNode o = JSON.readTree(text);
                assertTrue(o.isObject(), text);
            }
        }
        Reply greedy = post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"json please\"}], "
                + "\"max_tokens\": 40, \"temperature\": 0, \"response_format\": {\"type\": \"json_object\"}}");
        assertEquals(200, greedy.status(), greedy.body());
        assertTrue(new dev.tokenpress.sample.JsonPrefix(true).feed(greedy.json().at("/choices/0/message/content").asText()),
                greedy.body());
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"response_format\": {\"type\": \"json_schema\"}}").status());
    }

    /** n choices: each a generation of its own (seed + index), usage summed, the prompt prefilled once. */
    @Test
    void severalChoices() throws Exception {
        Reply r = post("/v1/completions", "{\"prompt\": \"def f(\", \"max_tokens\": 6, \"n\": 3, \"seed\": 5, "
                + "\"temperature\": 1.0}");
        assertEquals(200, r.status(), r.body());
        JsonNode ch = r.json().get("choices");
        assertEquals(3, ch.size());
        int total = 0;
        for (int i = 0; i < 3; i++) {
            assertEquals(i, ch.get(i).get("index").asInt());
            Reply one = post("/v1/completions", "{\"prompt\": \"def f(\", \"max_tokens\": 6, \"seed\": " + (5 + i)
                    + ", \"temperature\": 1.0}");
            assertEquals(one.json().at("/choices/0/text").asText(), ch.get(i).get("text").asText(), "choice " + i);
            total += one.json().at("/usage/completion_tokens").asInt();
        }
        assertEquals(total, r.json().at("/usage/completion_tokens").asInt());
        Reply chat = post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}], "
                + "\"max_tokens\": 4, \"n\": 2, \"temperature\": 0}");
        assertEquals(chat.json().at("/choices/0/message/content").asText(), chat.json().at("/choices/1/message/content").asText(),
                "greedy choices agree");
    }

    /** Structured output: OpenAI's json_schema response format, llama-server's json_schema and grammar fields. */
    @Test
    void structuredOutputFollowsTheSchemaOrGrammar() throws Exception {
        String schema = "{\"type\": \"object\", \"properties\": {\"ok\": {\"type\": \"boolean\"}}, \"required\": [\"ok\"]}";
        Reply r = post("/v1/completions", "{\"prompt\": \"x = \", \"max_tokens\": 100, \"temperature\": 0, "
                + "\"response_format\": {\"type\": \"json_schema\", \"json_schema\": {\"name\": \"t\", \"schema\": " + schema + "}}}");
        assertEquals(200, r.status(), r.body());
        JsonNode j = JSON.readTree(r.json().at("/choices/0/text").asText());
        assertTrue(j.get("ok").isBoolean(), r.body());
        assertEquals("stop", r.json().at("/choices/0/finish_reason").asText());
        Reply f = post("/v1/completions", "{\"prompt\": \"x = \", \"max_tokens\": 100, \"seed\": 3, \"json_schema\": " + schema + "}");
        assertTrue(JSON.readTree(f.json().at("/choices/0/text").asText()).get("ok").isBoolean(), f.body());
        Reply g = post("/v1/completions", "{\"prompt\": \"x = \", \"max_tokens\": 20, \"seed\": 3, \"grammar\": \"root ::= [0-9]{2} \\\"!\\\"\"}");
        assertEquals(200, g.status(), g.body());
        assertTrue(g.json().at("/choices/0/text").asText().matches("[0-9]{2}!"), g.body());
        Reply bad = post("/v1/completions", "{\"prompt\": \"x\", \"grammar\": \"root ::= nope\"}");
        assertEquals(400, bad.status());
        assertTrue(bad.json().at("/error/message").asText().contains("'nope'"), bad.body());
        Reply badSchema = post("/v1/completions", "{\"prompt\": \"x\", \"response_format\": {\"type\": \"json_schema\", "
                + "\"json_schema\": {\"schema\": {\"type\": \"string\", \"pattern\": \"(a)\\\\1\"}}}}");
        assertEquals(400, badSchema.status(), badSchema.body());
    }

    /** OpenAI's logit_bias (-100 bans) and llama-server's list form and ignore_eos. */
    @Test
    void logitBiasAndIgnoreEos() throws Exception {
        int[] greedy = direct(tp.tokenizer().encode("def add(a, b):"), 4, java.util.Set.of()).tokens();
        Reply r = post("/v1/completions", "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 4, \"temperature\": 0, "
                + "\"logit_bias\": {\"" + greedy[0] + "\": -100}}");
        assertEquals(200, r.status(), r.body());
        assertNotEquals(tp.tokenizer().decode(greedy), r.json().at("/choices/0/text").asText());
        Reply list = post("/v1/completions", "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 3, \"temperature\": 0, "
                + "\"logit_bias\": [[42, 1000]]}");
        assertEquals(tp.tokenizer().decode(new int[] {42, 42, 42}), list.json().at("/choices/0/text").asText());
        Reply ie = post("/v1/completions", "{\"prompt\": \"import numpy as np\\n\\n\\nclass LinearRegression:\\n    def __init__(self, lr=0.01):\\n\", "
                + "\"max_tokens\": 5, \"temperature\": 0, \"ignore_eos\": true}");
        assertEquals("length", ie.json().at("/choices/0/finish_reason").asText(), ie.body());
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"logit_bias\": {\"x\": 1}}").status());
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"logit_bias\": {\"999999\": 1}}").status());
    }

    /**
     * A server with -np 4 decodes concurrent requests together (continuous batching) and answers each as the one-at-a-time
     * server does: completions greedy and seeded, a stop string, a chat turn, n choices, a streamed reply; a request the
     * batch does not take (logprobs) runs alone between its steps.
     */
    @Test
    void parallelServerBatchesConcurrentRequests() throws Exception {
        String[] bodies = {
                "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 14, \"temperature\": 0, \"cache_prompt\": false}",
                "{\"prompt\": \"import os\\n\", \"max_tokens\": 16, \"temperature\": 0.8, \"seed\": 3, \"cache_prompt\": false}",
                "{\"prompt\": \"for i in range(10):\\n\", \"max_tokens\": 30, \"temperature\": 0, \"stop\": \"License\", \"cache_prompt\": false}",
                "{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], \"max_tokens\": 10, \"temperature\": 0, \"cache_prompt\": false}",
                "{\"prompt\": \"class A:\", \"max_tokens\": 8, \"temperature\": 0.9, \"seed\": 11, \"n\": 3, \"cache_prompt\": false}",
                "{\"prompt\": \"x = [\", \"max_tokens\": 12, \"temperature\": 0, \"logprobs\": 2, \"cache_prompt\": false}"};
        String[] paths = {"/v1/completions", "/v1/completions", "/v1/completions", "/v1/chat/completions", "/v1/completions", "/v1/completions"};
        List<JsonNode> want = new ArrayList<>();
        for (int i = 0; i < bodies.length; i++) {
            Reply r = post(paths[i], bodies[i]);
            assertEquals(200, r.status(), r.body());
            want.add(r.json());
        }
        List<String> plog = new CopyOnWriteArrayList<>();
        try (OpenAiServer par = OpenAiServer.start(tp, new OpenAiServer.Options("127.0.0.1", 0, 256, null, ChatTemplate.named("chatml"),
                "tiny", SamplingOptions.defaults(), 16, plog::add, 0, null, null, 4))) {
            String base = "http://127.0.0.1:" + par.port();
            List<java.util.concurrent.CompletableFuture<HttpResponse<String>>> sent = new ArrayList<>();
            for (int i = 0; i < bodies.length; i++)
                sent.add(http.sendAsync(HttpRequest.newBuilder(URI.create(base + paths[i])).header("Content-Type", "application/json")
                        .POST(HttpRequest.BodyPublishers.ofString(bodies[i])).build(), HttpResponse.BodyHandlers.ofString()));
            HttpResponse<String> streamed = http.send(HttpRequest.newBuilder(URI.create(base + paths[0])).header("Content-Type", "application/json")
                    .POST(HttpRequest.BodyPublishers.ofString(bodies[0].replace("}", ", \"stream\": true}"))).build(),
                    HttpResponse.BodyHandlers.ofString());
            for (int i = 0; i < bodies.length; i++) {
                HttpResponse<String> r = sent.get(i).get();
                assertEquals(200, r.statusCode(), r.body());
                JsonNode got = JSON.readTree(r.body());
                assertEquals(want.get(i).at("/choices").size(), got.at("/choices").size(), bodies[i]);
                for (int c = 0; c < got.at("/choices").size(); c++) {
                    String field = paths[i].contains("chat") ? "/message/content" : "/text";
                    assertEquals(want.get(i).at("/choices/" + c + field).asText(), got.at("/choices/" + c + field).asText(), bodies[i] + " choice " + c);
                    assertEquals(want.get(i).at("/choices/" + c + "/finish_reason").asText(), got.at("/choices/" + c + "/finish_reason").asText(), bodies[i]);
                }
                assertEquals(want.get(i).at("/usage"), got.at("/usage"), bodies[i]);
            }
            assertEquals("stop", want.get(2).at("/choices/0/finish_reason").asText(), "the stop string ends the text");
            assertTrue(want.get(5).at("/choices/0/logprobs").isObject(), "logprobs ran alone");
            StringBuilder text = new StringBuilder();
            for (JsonNode e : events(streamed.body())) text.append(e.at("/choices/0/text").asText());
            assertEquals(want.get(0).at("/choices/0/text").asText(), text.toString(), "streamed from the batch");
            HttpResponse<String> metrics = http.send(HttpRequest.newBuilder(URI.create(base + "/metrics")).GET().build(),
                    HttpResponse.BodyHandlers.ofString());
            assertTrue(metrics.body().contains("tokenpress_batch_width 4"), metrics.body());
            assertTrue(metrics.body().matches("(?s).*tokenpress_batch_steps_total [1-9].*"), metrics.body());
            long batchedLines = plog.stream().filter(l -> l.contains("(batched)")).count();
            assertEquals(6, batchedLines, plog.toString());
            assertTrue(plog.stream().anyMatch(l -> l.contains("/v1/completions 200") && !l.contains("(batched)")), plog.toString());
        }
        assertThrows(IllegalArgumentException.class, () -> OpenAiServer.start(tp, new OpenAiServer.Options("127.0.0.1", 0, 64,
                null, null, "tiny", SamplingOptions.defaults(), 4, null, 0, null, new OpenAiServer.Draft(null, 2, 4, 0, 0f), 2)));
    }

    /** llama-server's DRY, XTC, top-n-sigma and dynamic-temperature fields reach the sampler chain. */
    @Test
    void extraSamplerFieldsAreHonoured() throws Exception {
        String prompt = "x = 1\\ny = 2\\nx = 1\\ny = 2\\nx = 1\\ny = 2\\n";
        String base = "{\"prompt\": \"" + prompt + "\", \"max_tokens\": 24, \"temperature\": 0, \"cache_prompt\": false";
        Reply plain = post("/v1/completions", base + "}");
        Reply dry = post("/v1/completions", base + ", \"dry_multiplier\": 2.0, \"dry_sequence_breakers\": []}");
        assertEquals(200, dry.status(), dry.body());
        assertNotEquals(plain.json().at("/choices/0/text").asText(), dry.json().at("/choices/0/text").asText());
        GenerationResult want;
        try (Session s = tp.newSession(256)) {
            want = s.generate(tp.tokenizer().encode(prompt.replace("\\n", "\n")), 24,
                    SamplingOptions.greedy().withDry(2.0, 1.75, 2, -1, List.of()), null);
        }
        assertEquals(want.text(), dry.json().at("/choices/0/text").asText());
        Reply sampled = post("/v1/completions", base.replace("\"temperature\": 0", "\"temperature\": 0.9, \"seed\": 4")
                + ", \"xtc_probability\": 1.0, \"xtc_threshold\": 0.05, \"top_n_sigma\": 2.0, \"dynatemp_range\": 0.5}");
        assertEquals(200, sampled.status(), sampled.body());
        assertEquals(400, post("/v1/completions", base + ", \"dry_base\": 0.5}").status());
        assertEquals(400, post("/v1/completions", base + ", \"dry_sequence_breakers\": \"x\"}").status());
        Reply named = post("/v1/completions", base + ", \"dynatemp_exponent\": -1}");
        assertEquals(400, named.status());
        assertTrue(named.json().at("/error/message").asText().startsWith("dynatemp_exponent"), named.body());
        assertTrue(post("/v1/completions", base + ", \"dry_penalty_last_n\": -5}").json().at("/error/message").asText()
                .startsWith("dry_penalty_last_n"));
    }

    /** vLLM's and SGLang's native /generate, as RULER's clients call them (PUT), answer the completions text. */
    @Test
    void nativeGenerateEndpointsAnswerAsVllmAndSglang() throws Exception {
        String want = post("/v1/completions", "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 10, \"temperature\": 0, "
                + "\"stop\": [\"\\n\\n\"]}").json().at("/choices/0/text").asText();
        HttpResponse<String> v = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + server.port() + "/generate"))
                .header("Content-Type", "application/json").PUT(HttpRequest.BodyPublishers.ofString(
                        "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 10, \"temperature\": 0, \"top_k\": -1, \"top_p\": 1.0, "
                                + "\"stop\": [\"\\n\\n\"]}")).build(), HttpResponse.BodyHandlers.ofString());
        assertEquals(200, v.statusCode(), v.body());
        assertEquals(want, JSON.readTree(v.body()).at("/text/0").asText());
        Reply g = post("/generate", "{\"text\": \"def add(a, b):\", \"sampling_params\": {\"max_new_tokens\": 10, "
                + "\"temperature\": 0, \"stop\": [\"\\n\\n\"]}}");
        assertEquals(200, g.status(), g.body());
        assertEquals(want, g.json().get("text").asText());
        int n = g.json().at("/meta_info/completion_tokens").asInt();
        assertTrue(n > 0 && n <= 10, g.body());
        assertEquals(n == 10 ? "length" : "stop", g.json().at("/meta_info/finish_reason/type").asText(), g.body());
        assertEquals(400, post("/generate", "{\"prompt\": \"x\", \"stream\": true}").status());
        assertEquals(400, post("/generate", "{\"text\": \"x\", \"stream\": true}").status(), "SGLang's shape too");
        assertEquals("length", post("/generate", "{\"text\": \"x\", \"sampling_params\": {\"max_new_tokens\": 2, \"temperature\": 0}, "
                + "\"ignore_eos\": true}").json().at("/meta_info/finish_reason/type").asText(), "top-level fields count");
        assertEquals(405, get("/generate").status());
    }

    /** vLLM's stop_token_ids end the text at a token id; repetition_penalty is repeat_penalty under vLLM's name. */
    @Test
    void vllmFieldNames() throws Exception {
        Reply plain = post("/v1/completions", "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 6, \"temperature\": 0}");
        int[] ids = tp.tokenizer().encode("def add(a, b):");
        int[] greedy;
        try (Session s = tp.newSession(256)) {
            greedy = s.generate(ids, 6, SamplingOptions.greedy(), null, null, java.util.Set.of()).tokens();
        }
        int k = 1; // the first greedy token that did not come before: the text stops right before it
        while (k < greedy.length - 1 && seenBefore(greedy, k)) k++;
        Reply cut = post("/v1/completions", "{\"prompt\": \"def add(a, b):\", \"max_tokens\": 6, \"temperature\": 0, "
                + "\"stop_token_ids\": [" + greedy[k] + "]}");
        assertEquals(200, cut.status(), cut.body());
        assertEquals(k, cut.json().at("/usage/completion_tokens").asInt(), cut.body());
        assertEquals("stop", cut.json().at("/choices/0/finish_reason").asText());
        assertTrue(plain.json().at("/choices/0/text").asText().startsWith(cut.json().at("/choices/0/text").asText()));
        String a = post("/v1/completions", "{\"prompt\": \"x = 1\\ny = \", \"max_tokens\": 12, \"temperature\": 0, \"repeat_penalty\": 1.5}")
                .json().at("/choices/0/text").asText();
        String b = post("/v1/completions", "{\"prompt\": \"x = 1\\ny = \", \"max_tokens\": 12, \"temperature\": 0, \"repetition_penalty\": 1.5}")
                .json().at("/choices/0/text").asText();
        assertEquals(a, b);
        assertEquals(400, post("/v1/completions", "{\"prompt\": \"x\", \"stop_token_ids\": \"1\"}").status());
    }

    /** vLLM's chat_template: the request's own Jinja template renders its messages. */
    @Test
    void aRequestsOwnChatTemplate() throws Exception {
        String body = "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], \"max_tokens\": 2, \"temperature\": 0, "
                + "\"chat_template\": \"{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                + "{% if add_generation_prompt %}<assistant>{% endif %}\"}";
        Reply t = post("/apply-template", body);
        assertEquals(200, t.status(), t.body());
        assertEquals("<user>Hi<assistant>", t.json().get("prompt").asText());
        Reply r = post("/v1/chat/completions", body);
        assertEquals(200, r.status(), r.body());
        assertEquals(tp.tokenizer().encode("<user>Hi<assistant>").length, r.json().at("/usage/prompt_tokens").asInt());
        assertEquals(400, post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                + "\"chat_template\": \"{% if %}\"}").status());
        assertEquals(400, post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}], "
                + "\"chat_template\": 3}").status());
    }

    static boolean seenBefore(int[] t, int k) {
        for (int i = 0; i < k; i++) if (t[i] == t[k]) return true;
        return false;
    }

    /** /metrics answers Prometheus text with the requests and tokens served so far. */
    @Test
    void metricsCountRequestsAndTokens() throws Exception {
        Reply r = post("/v1/completions", "{\"prompt\": \"x = \", \"max_tokens\": 5, \"temperature\": 0, \"cache_prompt\": false}");
        assertEquals(200, r.status(), r.body());
        Reply m = null;
        java.util.Map<String, Double> v = new java.util.HashMap<>();
        // the reply can reach the client before its handler has counted itself out: read until it has (bounded)
        for (int attempt = 0; attempt < 100 && (m == null || v.getOrDefault("tokenpress_requests_processing", 1.0) != 0.0); attempt++) {
            if (m != null) Thread.sleep(20);
            m = get("/metrics");
            assertEquals(200, m.status());
            v.clear();
            for (String line : m.body().split("\n")) {
                if (line.startsWith("#") || line.isBlank()) continue;
                int sp = line.lastIndexOf(' ');
                v.put(line.substring(0, sp), Double.parseDouble(line.substring(sp + 1)));
            }
        }
        assertTrue(v.getOrDefault("tokenpress_requests_total{endpoint=\"/v1/completions\",status=\"200\"}", 0.0) >= 1, m.body());
        assertTrue(v.get("tokenpress_generated_tokens_total") >= r.json().at("/usage/completion_tokens").asInt(), m.body());
        assertTrue(v.get("tokenpress_prompt_tokens_total") >= 1, m.body());
        assertEquals(0.0, v.get("tokenpress_requests_processing"), m.body());
        assertTrue(v.get("tokenpress_kv_cache_bytes") > 0);
        assertFalse(v.containsKey("tokenpress_batch_steps_total"), "no batch without -np");
        assertTrue(m.body().contains("# TYPE tokenpress_generated_tokens_total counter"));
        Reply props = get("/props");
        assertEquals(200, props.status());
        assertEquals(256, props.json().at("/default_generation_settings/n_ctx").asInt());
        assertEquals(16, props.json().at("/default_generation_settings/n_predict").asInt());
        assertEquals(1, props.json().get("total_slots").asInt());
        assertEquals("full", props.json().get("kv").asText());
        assertEquals("f32", props.json().get("cache_type_k").asText()); // the CPU cache's default storage
        assertEquals("f32", props.json().get("cache_type_v").asText());
    }

    /** /v1/embeddings: OpenAI's shape, float and base64, one vector per input, as the Java API computes them. */
    @Test
    void embeddingsAnswerInOpenAisShape() throws Exception {
        Reply r = post("/v1/embeddings", "{\"input\": [\"def add(a, b):\", \"import os\"], \"model\": \"tiny\"}");
        assertEquals(200, r.status(), r.body());
        JsonNode j = r.json();
        assertEquals("list", j.get("object").asText());
        assertEquals(2, j.get("data").size());
        float[] want;
        try (dev.tokenpress.api.Embeddings e = new dev.tokenpress.api.Embeddings(tp)) {
            want = e.embed("def add(a, b):", dev.tokenpress.api.Embeddings.Pooling.LAST, true);
        }
        JsonNode e0 = j.at("/data/0/embedding");
        assertEquals(want.length, e0.size());
        double norm = 0;
        for (int i = 0; i < want.length; i++) {
            assertEquals(want[i], e0.get(i).floatValue(), 1e-6);
            norm += e0.get(i).doubleValue() * e0.get(i).doubleValue();
        }
        assertEquals(1.0, norm, 1e-4, "L2-normalized");
        assertEquals(1, j.at("/data/1/index").asInt());
        assertTrue(j.at("/usage/prompt_tokens").asInt() > 2);
        Reply b64 = post("/v1/embeddings", "{\"input\": \"def add(a, b):\", \"encoding_format\": \"base64\"}");
        byte[] raw = java.util.Base64.getDecoder().decode(b64.json().at("/data/0/embedding").asText());
        java.nio.FloatBuffer fb = java.nio.ByteBuffer.wrap(raw).order(java.nio.ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
        for (int i = 0; i < want.length; i++) assertEquals(want[i], fb.get(i), 0f);
        Reply mean = post("/v1/embeddings", "{\"input\": [5, 6, 7], \"pooling\": \"mean\", \"normalize\": false}");
        assertEquals(200, mean.status(), mean.body());
        assertFalse(mean.json().at("/data/0/embedding/0").asDouble() == j.at("/data/0/embedding/0").asDouble());
        assertEquals(400, post("/v1/embeddings", "{\"input\": 3}").status());
        assertEquals(400, post("/v1/embeddings", "{\"input\": \"x\", \"pooling\": \"max\"}").status());
        assertEquals(400, post("/v1/embeddings", "{\"input\": \"x\", \"pooling\": \"cls\"}").status(), "meaningless under causal attention");
        assertEquals(400, post("/v1/embeddings", "{\"input\": \"x\", \"encoding_format\": \"int8\"}").status());
    }

    /** llama-server's native /completion: its field names in, {"content", "stop_type", "timings", ...} out, streamed too. */
    @Test
    void llamaServerCompletionEndpoint() throws Exception {
        String want = post("/v1/completions", "{\"prompt\": \"for i in range(10):\\n\", \"max_tokens\": 30, \"temperature\": 0, "
                + "\"stop\": [\"License\"], \"cache_prompt\": false}").json().at("/choices/0/text").asText();
        Reply r = post("/completion", "{\"prompt\": \"for i in range(10):\\n\", \"n_predict\": 30, \"temperature\": 0, "
                + "\"stop\": [\"License\"], \"cache_prompt\": false}");
        assertEquals(200, r.status(), r.body());
        JsonNode j = r.json();
        assertEquals(want, j.get("content").asText());
        assertTrue(j.get("stop").asBoolean());
        assertEquals("word", j.get("stop_type").asText(), r.body());
        assertEquals("License", j.get("stopping_word").asText(), r.body());
        assertTrue(j.get("tokens_evaluated").asInt() > 3);
        assertEquals(j.get("tokens_predicted").asInt(), j.at("/timings/predicted_n").asInt());
        assertEquals(j.get("tokens_evaluated").asInt() + j.get("tokens_predicted").asInt(), j.get("tokens_cached").asInt(),
                "llama-server: the tokens the cache holds");
        assertEquals(0, j.at("/timings/cache_n").asInt(), "cache_prompt false");
        Reply limit = post("/completion", "{\"prompt\": \"def f(x):\", \"n_predict\": 3, \"temperature\": 0}");
        assertEquals("limit", limit.json().get("stop_type").asText(), limit.body());
        assertEquals(3, limit.json().get("tokens_predicted").asInt());
        Reply s = post("/completion", "{\"prompt\": \"for i in range(10):\\n\", \"n_predict\": 30, \"temperature\": 0, "
                + "\"stop\": [\"License\"], \"cache_prompt\": false, \"stream\": true}");
        StringBuilder text = new StringBuilder();
        String[] blocks = s.body().split("\n\n");
        for (int i = 0; i < blocks.length; i++) {
            JsonNode e = JSON.readTree(blocks[i].substring(6));
            text.append(e.get("content").asText());
            assertEquals(i == blocks.length - 1, e.get("stop").asBoolean(), blocks[i]);
        }
        assertEquals(want, text.toString());
    }

    /** A conversation ending with an assistant message is continued from it (vLLM's continue_final_message). */
    @Test
    void aFinalAssistantMessageIsContinued() throws Exception {
        String body = "{\"messages\": [{\"role\": \"user\", \"content\": \"Write add.\"}, {\"role\": \"assistant\", "
                + "\"content\": \"def add(a, b):\"}], \"max_tokens\": 8, \"temperature\": 0}";
        Reply r = post("/v1/chat/completions", body);
        assertEquals(200, r.status(), r.body());
        ChatTemplate t = ChatTemplate.named("chatml");
        String rendered = t.render(List.of(Message.user("Write add."), Message.assistant("def add(a, b):")), false);
        String prefix = rendered.substring(0, rendered.lastIndexOf("def add(a, b):") + "def add(a, b):".length());
        java.util.Set<Integer> stops = new java.util.HashSet<>();
        for (int id : t.stopTokenIds(tp.tokenizer())) stops.add(id);
        GenerationResult want = direct(tp.tokenizer().encode(prefix), 8, stops);
        assertEquals(want.text(), r.json().at("/choices/0/message/content").asText());
        assertEquals(400, post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                + "\"continue_final_message\": true}").status());
        assertEquals(400, post("/v1/chat/completions", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, "
                + "{\"role\": \"assistant\", \"content\": \"\"}]}").status(), "nothing to continue from");
    }

    /** A server with a draft (the model's first layers) answers with the same text, sampled with a seed too. */
    @Test
    void speculativeServerKeepsTheText() throws Exception {
        String body = "{\"prompt\": \"def add(a, b):\\n    return a + b\\n\\ndef sub(a, b):\", \"max_tokens\": 20, "
                + "\"temperature\": 0.8, \"seed\": 9}";
        String want = post("/v1/completions", body).json().at("/choices/0/text").asText();
        long[] drafted = new long[2];
        double[] stops = {0, 0.5}; // without and with SpecDec++'s stopping rule (--draft-stop)
        for (int i = 0; i < 2; i++) {
            long[] c0 = tp.model().draftCounts();
            try (OpenAiServer server = OpenAiServer.start(tp, new OpenAiServer.Options("127.0.0.1", 0, 256, null, null, "tiny",
                    SamplingOptions.defaults(), 16, null, 0, null, new OpenAiServer.Draft(null, 3, 6, 0, 0f, stops[i])))) {
                HttpResponse<String> r = http.send(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + server.port()
                        + "/v1/completions")).header("Content-Type", "application/json")
                        .POST(HttpRequest.BodyPublishers.ofString(body)).build(), HttpResponse.BodyHandlers.ofString());
                assertEquals(200, r.statusCode(), r.body());
                assertEquals(want, JSON.readTree(r.body()).at("/choices/0/text").asText(), "stop " + stops[i]);
            }
            drafted[i] = tp.model().draftCounts()[0] - c0[0];
            assertTrue(drafted[i] > 0, "the draft drafted");
        }
        assertTrue(drafted[1] < drafted[0], "the stopping rule cut the drafts: " + java.util.Arrays.toString(drafted));
    }

    /** With an API key, every endpoint but /health wants it as a bearer token. */
    @Test
    void apiKeyGuardsTheEndpoints() throws Exception {
        try (OpenAiServer guarded = OpenAiServer.start(tp, new OpenAiServer.Options("127.0.0.1", 0, 64, null, null, "tiny",
                SamplingOptions.defaults(), 4, null, 0, "s3cret"))) {
            String base = "http://127.0.0.1:" + guarded.port();
            HttpResponse<String> no = http.send(HttpRequest.newBuilder(URI.create(base + "/v1/models")).GET().build(),
                    HttpResponse.BodyHandlers.ofString());
            assertEquals(401, no.statusCode());
            assertEquals("invalid_api_key", JSON.readTree(no.body()).at("/error/code").asText());
            HttpResponse<String> wrong = http.send(HttpRequest.newBuilder(URI.create(base + "/v1/models"))
                    .header("Authorization", "Bearer nope").GET().build(), HttpResponse.BodyHandlers.ofString());
            assertEquals(401, wrong.statusCode());
            HttpResponse<String> ok = http.send(HttpRequest.newBuilder(URI.create(base + "/v1/models"))
                    .header("Authorization", "Bearer s3cret").GET().build(), HttpResponse.BodyHandlers.ofString());
            assertEquals(200, ok.statusCode());
            HttpResponse<String> health = http.send(HttpRequest.newBuilder(URI.create(base + "/health")).GET().build(),
                    HttpResponse.BodyHandlers.ofString());
            assertEquals(200, health.statusCode());
        }
    }

    @Test
    void tokenizeAndDetokenize() throws Exception {
        Reply t = post("/tokenize", "{\"content\": \"import os\"}");
        assertEquals(200, t.status(), t.body());
        int[] ids = tp.tokenizer().encodeNoSpecial("import os");
        assertEquals(ids.length, t.json().get("tokens").size());
        for (int i = 0; i < ids.length; i++) assertEquals(ids[i], t.json().at("/tokens/" + i).asInt());
        Reply s = post("/tokenize", "{\"content\": \"import os\", \"add_special\": true, \"with_pieces\": true}");
        assertEquals(tp.tokenizer().encode("import os").length, s.json().get("tokens").size());
        assertTrue(s.json().at("/tokens/0").has("piece"), s.body());
        Reply d = post("/detokenize", JSON.writeValueAsString(java.util.Map.of("tokens", ids)));
        assertEquals("import os", d.json().get("content").asText());
        assertEquals(400, post("/detokenize", "{\"tokens\": [\"a\"]}").status());
        assertEquals(400, post("/tokenize", "{}").status());
    }

    /** Requests at once are served one after the other, each from an empty cache: the same answers as alone. */
    @Test
    void concurrentRequestsGetTheirOwnAnswers() throws Exception {
        String[] prompts = {"def f(x):", "class A:", "import sys"};
        List<CompletableFuture<HttpResponse<String>>> futures = new ArrayList<>();
        for (String p : prompts)
            futures.add(http.sendAsync(HttpRequest.newBuilder(URI.create("http://127.0.0.1:" + server.port() + "/v1/completions"))
                    .POST(HttpRequest.BodyPublishers.ofString("{\"prompt\": \"" + p + "\", \"max_tokens\": 8, \"temperature\": 0}"))
                    .build(), HttpResponse.BodyHandlers.ofString()));
        CompletableFuture.allOf(futures.toArray(CompletableFuture[]::new)).get(); // the model is free again
        for (int i = 0; i < prompts.length; i++) {
            HttpResponse<String> r = futures.get(i).get();
            assertEquals(200, r.statusCode(), r.body());
            assertEquals(direct(tp.tokenizer().encode(prompts[i]), 8, java.util.Set.of()).text(),
                    JSON.readTree(r.body()).at("/choices/0/text").asText(), prompts[i]);
        }
    }
}
