package dev.tokenpress.server;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.GenerationResult;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.io.ChatTemplate;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;

import static org.junit.jupiter.api.Assertions.*;

/**
 * llama-server's /infill on the embedded model with Qwen2.5-Coder's FIM tokens added to its tokenizer (as added
 * tokens over five rare pieces): the prompt is built as llama-server builds it, extra files go first with the repository
 * and file-separator tokens, a long prefix is cut to fit, and the answer is /completion's.
 */
class InfillServerTest {
    static final Path MODEL = TinyServer.MODEL;
    static final ObjectMapper JSON = new ObjectMapper();
    static final int PRE = 4090, SUF = 4091, MID = 4092, SEP = 4093, REP = 4094;
    @TempDir
    static Path tmp;
    static TinyServer srv;
    static TokenPress tp;
    static OpenAiServer server;

    @BeforeAll
    static void start() throws Exception {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        Path dir = tmp.resolve("coder");
        Files.createDirectories(dir);
        for (String f : new String[] {"config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"})
            Files.copy(MODEL.resolve(f), dir.resolve(f));
        ObjectNode tok = (ObjectNode) JSON.readTree(MODEL.resolve("tokenizer.json").toFile());
        ArrayNode added = (ArrayNode) tok.get("added_tokens");
        String[] names = {"<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|file_sep|>", "<|repo_name|>"};
        for (int i = 0; i < names.length; i++)
            added.addObject().put("id", PRE + i).put("content", names[i]).put("single_word", false).put("lstrip", false)
                    .put("rstrip", false).put("normalized", false).put("special", true);
        Files.writeString(dir.resolve("tokenizer.json"), tok.toString());
        srv = TinyServer.start(dir, new OpenAiServer.Options("127.0.0.1", 0, 256, null, ChatTemplate.named("chatml"),
                "coder", SamplingOptions.defaults(), 16, null, 0, null));
        tp = srv.tp;
        server = srv.server;
    }

    @AfterAll
    static void stop() {
        if (srv != null) srv.close();
    }

    static HttpResponse<String> post(JsonNode body) throws Exception {
        return post("/infill", body);
    }

    static HttpResponse<String> post(String path, JsonNode body) throws Exception {
        return srv.post(path, body);
    }

    static void add(List<Integer> out, int... ids) {
        for (int id : ids) out.add(id);
    }

    static int[] ints(List<Integer> l) {
        return l.stream().mapToInt(Integer::intValue).toArray();
    }

    /** Greedy text from these tokens with the infill's stops, through the Java API. */
    static String direct(int[] tokens, int n) {
        try (Session s = tp.newSession(256)) {
            GenerationResult r = s.generate(tokens, n, SamplingOptions.greedy(), null, null, Set.of(SEP, REP));
            return r.text();
        }
    }

    @Test
    void buildsTheFimPromptAsLlamaServerDoes() throws Exception {
        String prefix = "def add(a, b):\n    ", suffix = "\n\nprint(add(1, 2))\n";
        var t = tp.tokenizer();
        for (String s : new String[] {prefix, suffix})
            for (int id : t.encodeNoSpecial(s)) assertTrue(id < PRE, "the test text avoids the repurposed pieces");
        ObjectNode b = JSON.createObjectNode().put("input_prefix", prefix).put("input_suffix", suffix).put("n_predict", 8)
                .put("temperature", 0);
        HttpResponse<String> r = post(b);
        assertEquals(200, r.statusCode(), r.body());
        JsonNode j = JSON.readTree(r.body());
        List<Integer> want = new ArrayList<>();
        add(want, t.prefixIds());
        want.add(PRE);
        add(want, t.encodeNoSpecial(prefix));
        want.add(SUF);
        add(want, t.encodeNoSpecial(suffix));
        want.add(MID);
        assertEquals(want.size(), j.get("tokens_evaluated").asInt());
        assertEquals(direct(ints(want), 8), j.get("content").asText());
        assertFalse(j.get("truncated").asBoolean());

        // OpenAI's insertion: /v1/completions with a suffix is the same FIM prompt
        ObjectNode c = JSON.createObjectNode().put("prompt", prefix).put("suffix", suffix).put("max_tokens", 8).put("temperature", 0);
        HttpResponse<String> cr = post("/v1/completions", c);
        assertEquals(200, cr.statusCode(), cr.body());
        JsonNode cj = JSON.readTree(cr.body());
        assertEquals(j.get("content").asText(), cj.at("/choices/0/text").asText());
        assertEquals(want.size(), cj.at("/usage/prompt_tokens").asInt());
        c.put("echo", true);
        assertEquals(400, post("/v1/completions", c).statusCode());

        // extra files first, with the repository and file-separator tokens
        b.putArray("input_extra").addObject().put("filename", "util.py").put("text", "x = 1\n");
        b.put("prompt", "return");
        r = post(b);
        assertEquals(200, r.statusCode(), r.body());
        j = JSON.readTree(r.body());
        want.clear();
        add(want, t.prefixIds());
        want.add(REP);
        add(want, t.encodeNoSpecial("myproject\n"));
        want.add(SEP);
        add(want, t.encodeNoSpecial("util.py\n"));
        add(want, t.encodeNoSpecial("x = 1\n"));
        want.add(SEP);
        add(want, t.encodeNoSpecial("filename\n"));
        want.add(PRE);
        add(want, t.encodeNoSpecial(prefix + "return"));
        want.add(SUF);
        add(want, t.encodeNoSpecial(suffix));
        want.add(MID);
        assertEquals(want.size(), j.get("tokens_evaluated").asInt());
        assertEquals(direct(ints(want), 8), j.get("content").asText());

        // streamed: the same text in /completion's events
        b.put("stream", true);
        r = post(b);
        StringBuilder text = new StringBuilder();
        JsonNode last = null;
        for (String block : r.body().split("\n\n")) {
            if (!block.startsWith("data: ")) continue;
            last = JSON.readTree(block.substring(6));
            text.append(last.path("content").asText(""));
        }
        assertTrue(last != null && last.get("stop").asBoolean(), r.body());
        assertEquals(j.get("content").asText(), text.toString());
    }

    @Test
    void aLongPrefixIsCutToFit() throws Exception {
        String prefix = "value = compute(value)\n".repeat(120), suffix = "\nreturn value\n".repeat(40);
        ObjectNode b = JSON.createObjectNode().put("input_prefix", prefix).put("input_suffix", suffix).put("n_predict", 16)
                .put("temperature", 0);
        b.putArray("input_extra").addObject().put("filename", "a.py").put("text", "import os\n".repeat(50));
        HttpResponse<String> r = post(b);
        assertEquals(200, r.statusCode(), r.body());
        JsonNode j = JSON.readTree(r.body());
        assertTrue(j.get("truncated").asBoolean());
        int evaluated = j.get("tokens_evaluated").asInt();
        assertTrue(evaluated + 16 <= 256, evaluated + " prompt tokens");
        assertTrue(evaluated > 256 / 2, "the room is used: " + evaluated);
        assertEquals(400, post(JSON.createObjectNode().put("input_prefix", 3)).statusCode());
        assertEquals(400, post(JSON.createObjectNode().put("input_prefix", "x").put("input_extra", "y")).statusCode());
    }

    /** The room for generation counts max_completion_tokens as max_tokens; a stray suffix field on /infill is ignored. */
    @Test
    void theTokensToGenerateAreReservedWhateverTheField() throws Exception {
        String prefix = "value = compute(value)\n".repeat(60), suffix = "\nreturn value\n";
        int[] prompt = new int[2], completion = new int[2];
        String[] keys = {"max_tokens", "max_completion_tokens"};
        for (int i = 0; i < 2; i++) {
            ObjectNode c = JSON.createObjectNode().put("prompt", prefix).put("suffix", suffix).put(keys[i], 100)
                    .put("temperature", 0).put("ignore_eos", true);
            HttpResponse<String> r = post("/v1/completions", c);
            assertEquals(200, r.statusCode(), r.body());
            JsonNode j = JSON.readTree(r.body());
            prompt[i] = j.at("/usage/prompt_tokens").asInt();
            completion[i] = j.at("/usage/completion_tokens").asInt();
        }
        assertEquals(100, completion[0]);
        assertEquals(100, completion[1]);
        assertEquals(prompt[0], prompt[1]);
        HttpResponse<String> r = post(JSON.createObjectNode().put("input_prefix", "def f():\n").put("input_suffix", "\n")
                .put("suffix", "x").put("n_predict", 2));
        assertEquals(200, r.statusCode(), r.body());
    }

    /** Mistral's [PREFIX]/[SUFFIX] (Codestral, whose vocabulary also has [MIDDLE]): suffix first, no middle token. */
    @Test
    void mistralsFimPutsTheSuffixFirst() throws Exception {
        Path dir = tmp.resolve("codestral");
        Files.createDirectories(dir);
        for (String f : new String[] {"config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"})
            Files.copy(MODEL.resolve(f), dir.resolve(f));
        ObjectNode tok = (ObjectNode) JSON.readTree(MODEL.resolve("tokenizer.json").toFile());
        ArrayNode added = (ArrayNode) tok.get("added_tokens");
        String[] names = {"[PREFIX]", "[MIDDLE]", "[SUFFIX]"};
        for (int i = 0; i < names.length; i++)
            added.addObject().put("id", PRE + i).put("content", names[i]).put("single_word", false).put("lstrip", false)
                    .put("rstrip", false).put("normalized", false).put("special", true);
        Files.writeString(dir.resolve("tokenizer.json"), tok.toString());
        try (TinyServer s = TinyServer.start(dir, new OpenAiServer.Options("127.0.0.1", 0, 256, null, null, "codestral",
                SamplingOptions.defaults(), 8, null, 0, null))) {
            TokenPress c = s.tp;
            OpenAiServer.Fim f = OpenAiServer.Fim.of(c.tokenizer());
            assertTrue(f.suffixFirst());
            String prefix = "def add(a, b):\n    ", suffix = "\n\nprint(add(1, 2))\n";
            HttpResponse<String> r = s.post("/infill", JSON.createObjectNode().put("input_prefix", prefix)
                    .put("input_suffix", suffix).put("n_predict", 6).put("temperature", 0));
            assertEquals(200, r.statusCode(), r.body());
            List<Integer> want = new ArrayList<>();
            add(want, c.tokenizer().prefixIds());
            want.add(PRE + 2);
            add(want, c.tokenizer().encodeNoSpecial(suffix));
            want.add(PRE);
            add(want, c.tokenizer().encodeNoSpecial(prefix));
            JsonNode j = JSON.readTree(r.body());
            assertEquals(want.size(), j.get("tokens_evaluated").asInt());
            try (Session ses = c.newSession(256)) {
                assertEquals(ses.generate(ints(want), 6, SamplingOptions.greedy(), null, null, Set.of()).text(),
                        j.get("content").asText());
            }
        }
    }

    @Test
    void aModelWithoutFimTokensIsRefused() throws Exception {
        try (TinyServer s = TinyServer.start(MODEL, new OpenAiServer.Options("127.0.0.1", 0, 256, null, null, "tiny",
                SamplingOptions.defaults(), 8, null, 0, null))) {
            HttpResponse<String> r = s.post("/infill", JSON.createObjectNode().put("input_prefix", "a"));
            assertEquals(400, r.statusCode());
            assertTrue(r.body().contains("fill-in-the-middle"), r.body());
            r = s.post("/v1/completions", JSON.createObjectNode().put("prompt", "a").put("suffix", "b"));
            assertEquals(400, r.statusCode());
            r = s.post("/v1/completions", JSON.createObjectNode().put("prompt", "a").put("suffix", "").put("max_tokens", 2));
            assertEquals(200, r.statusCode(), "an empty suffix is a plain completion: " + r.body());
        }
    }
}
