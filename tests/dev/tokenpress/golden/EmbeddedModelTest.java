package dev.tokenpress.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.Llama;
import org.junit.jupiter.api.Test;

import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The embedded default model (models/tokenpress-tiny, trained by scripts/train_tiny_model.py): our tokenizer
 * reproduces the ids Hugging Face tokenizers gave, and our engine reproduces the greedy continuations PyTorch
 * computed from the same bf16 weights (samples.json).
 */
class EmbeddedModelTest {
    static final Path MODEL = Path.of("models", "tokenpress-tiny");

    @Test
    void tokenizerAndGreedyMatchTheTrainingMachine() throws Exception {
        JsonNode samples = new ObjectMapper().readTree(MODEL.resolve("samples.json").toFile());
        try (TokenPress tp = TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu"))) {
            for (JsonNode probe : samples.get("tokenizer_probes")) {
                int[] ids = tp.tokenizer().encode(probe.get("text").asText());
                assertArrayEquals(ints(probe.get("ids")), ids, probe.get("text").asText());
                int[] noBos = java.util.Arrays.copyOfRange(ids, 1, ids.length);
                assertEquals(probe.get("decoded").asText(), tp.tokenizer().decode(noBos));
            }
            Llama m = tp.model();
            for (JsonNode p : samples.get("prompts")) {
                int[] prompt = ints(p.get("prompt_ids"));
                assertArrayEquals(prompt, tp.tokenizer().encode(p.get("prompt").asText()));
                int[] expected = ints(p.get("greedy_ids"));
                KvCache cache = m.newCache(prompt.length + expected.length + 1);
                m.prefill(cache, prompt, 0, false, null);
                int pos = prompt.length;
                for (int i = 0; i < expected.length; i++) {
                    int next = m.argmax();
                    assertEquals(expected[i], next, "prompt " + p.get("prompt").asText().strip() + ", token " + i);
                    m.decodeStep(cache, next, pos++);
                }
            }
        }
    }

    private static int[] ints(JsonNode a) {
        int[] out = new int[a.size()];
        for (int i = 0; i < out.length; i++) out[i] = a.get(i).asInt();
        return out;
    }
}
