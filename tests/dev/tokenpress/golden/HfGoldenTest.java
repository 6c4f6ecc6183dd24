package dev.tokenpress.golden;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Iterator;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

/**
 * The outside oracle: models built and run by Hugging Face transformers (scripts/hf_reference.py, fixtures in
 * tests/fixtures/hf, format version 1). The CPU engine must reproduce HF's logits at every position (f32 weights:
 * max abs error 1e-4; bf16 weights: 2e-2) and HF's greedy continuations token for token.
 */
class HfGoldenTest {
    static final Path ROOT = Path.of("tests", "fixtures", "hf");

    @ParameterizedTest
    @ValueSource(strings = {"llama-gqa-f32", "llama-gqa-bf16", "qwen2-bias-f32", "qwen2-bias-bf16", "mistral-mha-f32", "mistral-mha-bf16",
            "qwen3-qknorm-f32", "qwen3-qknorm-bf16", "qwen2-yarn-f32", "qwen2-yarn-bf16"})
    void logitsAndGreedyMatchTransformers(String name) throws IOException {
        assertEquals("1", Files.readString(ROOT.resolve("VERSION")).strip(), "fixture format version");
        Path dir = ROOT.resolve(name);
        JsonNode meta = new ObjectMapper().readTree(dir.resolve("reference.json").toFile());
        Map<String, float[]> ref = readF32(dir.resolve("reference.safetensors"));
        double tol = name.endsWith("f32") ? 1e-4 : 2e-2;
        LlamaConfig c = ConfigLoader.load(dir);
        try (SafeTensors st = SafeTensors.open(dir); CpuBackend b = new CpuBackend(2);
             Llama m = new Llama(c, Weights.load(st, c, b, null), b, 16)) {
            for (JsonNode seq : meta.get("sequences")) {
                int idx = seq.get("index").asInt();
                int[] tokens = ints(seq.get("tokens"));
                int[] greedy = ints(seq.get("greedy"));
                int v = c.vocabSize();
                KvCache cache = m.newCache(tokens.length + greedy.length + 1);
                float[] logits = m.prefill(cache, tokens, 0, true, null);
                float[] hf = ref.get("logits_" + idx);
                assertEquals(hf.length, logits.length);
                double worst = 0;
                for (int i = 0; i < hf.length; i++) worst = Math.max(worst, Math.abs(hf[i] - logits[i]));
                System.out.printf("%s seq %d: max abs logit error vs transformers %.3g%n", name, idx, worst);
                assertTrue(worst <= tol, name + " sequence " + idx + ": max abs logit error " + worst + " > " + tol);
                // greedy continuation: decode step by step through the KV cache
                int pos = tokens.length;
                for (int i = 0; i < greedy.length; i++) {
                    int next = m.argmax();
                    assertEquals(greedy[i], next, name + " sequence " + idx + ": greedy token " + i);
                    m.decodeStep(cache, next, pos++);
                }
                assertEquals(v, hf.length / tokens.length);
            }
        }
    }

    private static int[] ints(JsonNode a) {
        int[] out = new int[a.size()];
        for (int i = 0; i < out.length; i++) out[i] = a.get(i).asInt();
        return out;
    }

    /** The F32 tensors of a safetensors file (fixtures also hold I64 token ids, which the model reader rejects). */
    static Map<String, float[]> readF32(Path file) throws IOException {
        byte[] all = Files.readAllBytes(file);
        ByteBuffer bb = ByteBuffer.wrap(all).order(ByteOrder.LITTLE_ENDIAN);
        int n = (int) bb.getLong(0);
        JsonNode header = new ObjectMapper().readTree(new String(all, 8, n, java.nio.charset.StandardCharsets.UTF_8));
        Map<String, float[]> out = new java.util.HashMap<>();
        for (Iterator<Map.Entry<String, JsonNode>> it = header.fields(); it.hasNext(); ) {
            Map.Entry<String, JsonNode> e = it.next();
            if (e.getKey().equals("__metadata__") || !e.getValue().get("dtype").asText().equals("F32")) continue;
            long begin = e.getValue().get("data_offsets").get(0).asLong(), end = e.getValue().get("data_offsets").get(1).asLong();
            float[] f = new float[(int) ((end - begin) / 4)];
            for (int i = 0; i < f.length; i++) f[i] = bb.getFloat((int) (8 + n + begin + 4L * i));
            out.put(e.getKey(), f);
        }
        return out;
    }
}
