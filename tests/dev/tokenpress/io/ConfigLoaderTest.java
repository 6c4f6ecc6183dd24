package dev.tokenpress.io;

import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class ConfigLoaderTest {

    @TempDir
    Path tmp;

    private static Path resource(String name) throws URISyntaxException {
        return Path.of(ConfigLoaderTest.class.getResource("/configs/" + name).toURI());
    }

    @Test
    void llama32_1b() throws Exception {
        LlamaConfig c = ConfigLoader.load(resource("llama-3.2-1b"));
        assertEquals("LlamaForCausalLM", c.architecture());
        assertEquals("llama", c.modelType());
        assertEquals(2048, c.hiddenSize());
        assertEquals(8192, c.intermediateSize());
        assertEquals(16, c.numLayers());
        assertEquals(32, c.numHeads());
        assertEquals(8, c.numKvHeads());
        assertEquals(64, c.headDim());
        assertEquals(128256, c.vocabSize());
        assertEquals(1e-5f, c.rmsNormEps());
        assertEquals(500000f, c.ropeTheta());
        assertEquals(new LlamaConfig.RopeScaling("llama3", 32f, 1f, 4f, 8192), c.ropeScaling());
        assertEquals(131072, c.maxPositionEmbeddings());
        assertTrue(c.tieWordEmbeddings());
        assertFalse(c.attentionBias());
        assertNull(c.slidingWindow());
        assertEquals(128000, c.bosTokenId());
        assertEquals(List.of(128001), c.eosTokenIds());
        assertEquals("bfloat16", c.torchDtype());
        assertEquals(4, c.groupSize());
        // 1.24B parameters with tied embeddings
        assertEquals(1_235_814_400L, c.parameterCount());
    }

    @Test
    void qwen25_05b() throws Exception {
        LlamaConfig c = ConfigLoader.load(resource("qwen2.5-0.5b"));
        assertEquals("Qwen2ForCausalLM", c.architecture());
        assertEquals("qwen2", c.modelType());
        assertEquals(896, c.hiddenSize());
        assertEquals(4864, c.intermediateSize());
        assertEquals(24, c.numLayers());
        assertEquals(14, c.numHeads());
        assertEquals(2, c.numKvHeads());
        assertEquals(64, c.headDim());
        assertEquals(151936, c.vocabSize());
        assertEquals(1e-6f, c.rmsNormEps());
        assertEquals(1_000_000f, c.ropeTheta());
        assertNull(c.ropeScaling());
        assertEquals(32768, c.maxPositionEmbeddings());
        assertTrue(c.tieWordEmbeddings());
        assertTrue(c.attentionBias(), "Qwen2 always has q/k/v biases");
        assertNull(c.slidingWindow(), "use_sliding_window=false disables the window");
        assertEquals(151643, c.bosTokenId());
        assertEquals(List.of(151643), c.eosTokenIds());
        assertEquals(7, c.groupSize());
    }

    @Test
    void mistral7b() throws Exception {
        LlamaConfig c = ConfigLoader.load(resource("mistral-7b-v0.1"));
        assertEquals("MistralForCausalLM", c.architecture());
        assertEquals("mistral", c.modelType());
        assertEquals(4096, c.hiddenSize());
        assertEquals(14336, c.intermediateSize());
        assertEquals(32, c.numLayers());
        assertEquals(32, c.numHeads());
        assertEquals(8, c.numKvHeads());
        assertEquals(128, c.headDim());
        assertEquals(32000, c.vocabSize());
        assertEquals(10000f, c.ropeTheta());
        assertNull(c.ropeScaling());
        assertFalse(c.tieWordEmbeddings());
        assertFalse(c.attentionBias());
        assertEquals(4096, c.slidingWindow());
        assertEquals(1, c.bosTokenId());
        assertEquals(List.of(2), c.eosTokenIds());
    }

    @Test
    void tinyLlamaChat() throws Exception {
        LlamaConfig c = ConfigLoader.load(resource("tinyllama-1.1b-chat-v1.0"));
        assertEquals("LlamaForCausalLM", c.architecture());
        assertEquals(2048, c.hiddenSize());
        assertEquals(5632, c.intermediateSize());
        assertEquals(22, c.numLayers());
        assertEquals(32, c.numHeads());
        assertEquals(4, c.numKvHeads());
        assertEquals(64, c.headDim());
        assertEquals(32000, c.vocabSize());
        assertNull(c.ropeScaling());
        assertEquals(10000f, c.ropeTheta());
        assertEquals(2048, c.maxPositionEmbeddings());
        assertFalse(c.tieWordEmbeddings());
        assertFalse(c.attentionBias());
        assertEquals(1, c.bosTokenId());
        assertEquals(List.of(2), c.eosTokenIds());
    }

    /** The same checkpoints re-saved by transformers 5.17 ("dtype", "rope_parameters", "layer_types"). */
    @Test
    void transformers5SavedConfigsMatchTheOriginals() throws Exception {
        assertEquals(ConfigLoader.load(resource("llama-3.2-1b")), ConfigLoader.load(resource("llama-3.2-1b-transformers5")));
        LlamaConfig q4 = ConfigLoader.load(resource("qwen2.5-0.5b"));
        LlamaConfig q5 = ConfigLoader.load(resource("qwen2.5-0.5b-transformers5"));
        assertEquals(q4, q5);
        assertEquals(1_000_000f, q5.ropeTheta());
        assertNull(q5.ropeScaling());
    }

    private Path dir(String config) throws Exception {
        Path d = Files.createTempDirectory(tmp, "cfg");
        Files.writeString(d.resolve("config.json"), config);
        return d;
    }

    private static String minimal(String extra) {
        return "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64,\"intermediate_size\":128,"
                + "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":300" + extra + "}";
    }

    @Test
    void defaultsAndEosMergeWithGenerationConfig() throws Exception {
        Path d = dir(minimal(",\"eos_token_id\":[5,6]"));
        Files.writeString(d.resolve("generation_config.json"), "{\"eos_token_id\":[6,7,8]}");
        LlamaConfig c = ConfigLoader.load(d);
        assertEquals(4, c.numKvHeads(), "num_key_value_heads defaults to num_attention_heads");
        assertEquals(16, c.headDim(), "head_dim defaults to hidden/heads");
        assertFalse(c.tieWordEmbeddings());
        assertFalse(c.attentionBias());
        assertNull(c.ropeScaling());
        assertEquals(10000f, c.ropeTheta());
        assertEquals(-1, c.bosTokenId());
        assertEquals(List.of(5, 6, 7, 8), c.eosTokenIds());
        assertNull(c.torchDtype());

        Path d2 = dir(minimal(",\"eos_token_id\":9,\"dtype\":\"float16\",\"attention_bias\":true"));
        Files.writeString(d2.resolve("generation_config.json"), "{\"eos_token_id\":10}");
        LlamaConfig c2 = ConfigLoader.load(d2);
        assertEquals(List.of(9, 10), c2.eosTokenIds());
        assertEquals("float16", c2.torchDtype());
        assertTrue(c2.attentionBias());
    }

    @Test
    void modelTypeInferredWithoutArchitectures() throws Exception {
        String base = "\"hidden_size\":64,\"intermediate_size\":128,\"num_hidden_layers\":2,"
                + "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"vocab_size\":300";
        assertEquals("Qwen2ForCausalLM", ConfigLoader.load(dir("{\"model_type\":\"qwen2\"," + base + "}")).architecture());
        assertTrue(ConfigLoader.load(dir("{\"model_type\":\"qwen2\"," + base + "}")).attentionBias());
        assertEquals("MistralForCausalLM",
                ConfigLoader.load(dir("{\"model_type\":\"mistral\"," + base + "}")).architecture());
        assertEquals("LlamaForCausalLM", ConfigLoader.load(dir("{\"model_type\":\"llama\"," + base + "}")).architecture());
    }

    @Test
    void transformers5RopeParameters() throws Exception {
        String cfg = minimal(",\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":500000.0,\"factor\":8.0,"
                + "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}");
        LlamaConfig c = ConfigLoader.load(dir(cfg));
        assertEquals(500000f, c.ropeTheta());
        assertEquals(new LlamaConfig.RopeScaling("llama3", 8f, 1f, 4f, 8192), c.ropeScaling());

        LlamaConfig d = ConfigLoader.load(dir(minimal(",\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1000000.0}")));
        assertEquals(1_000_000f, d.ropeTheta());
        assertNull(d.ropeScaling());
    }

    /** YaRN as Qwen2.5's and Qwen3's model cards configure it, with transformers' defaults and inferences. */
    @Test
    void yarnRopeScaling() throws Exception {
        LlamaConfig c = ConfigLoader.load(dir(minimal(",\"max_position_embeddings\":131072,\"rope_scaling\":{\"type\":\"yarn\","
                + "\"factor\":4.0,\"original_max_position_embeddings\":32768}")));
        LlamaConfig.RopeScaling s = c.ropeScaling();
        assertEquals(new LlamaConfig.RopeScaling("yarn", 4f, 1f, 32f, 32768, (float) (0.1 * Math.log(4) + 1), true), s);
        assertEquals(LlamaConfig.RopeScaling.yarn(4f, 32768), s);
        // factor from the context lengths, the original length from the top level, DeepSeek's mscale ratio, no truncation
        s = ConfigLoader.load(dir(minimal(",\"max_position_embeddings\":16384,\"original_max_position_embeddings\":4096,"
                + "\"rope_parameters\":{\"rope_type\":\"yarn\",\"rope_theta\":10000.0,\"beta_fast\":16,\"beta_slow\":2,"
                + "\"mscale\":1.0,\"mscale_all_dim\":0.5,\"truncate\":false}"))).ropeScaling();
        assertEquals(4f, s.factor());
        assertEquals(4096, s.originalMaxPositionEmbeddings());
        assertEquals(16f, s.highFreqFactor());
        assertEquals(2f, s.lowFreqFactor());
        assertEquals((float) ((0.1 * Math.log(4) + 1) / (0.05 * Math.log(4) + 1)), s.attentionFactor());
        assertFalse(s.truncate());
        s = ConfigLoader.load(dir(minimal(",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":2.0,\"attention_factor\":1.5}"))).ropeScaling();
        assertEquals(1.5f, s.attentionFactor());
        assertEquals(2048, s.originalMaxPositionEmbeddings(), "max_position_embeddings by default");
        assertFails(minimal(",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":-1.0}"), "factor");
        assertFails(minimal(",\"rope_scaling\":{\"rope_type\":\"longrope\",\"factor\":2.0}"),
                "longrope is not supported (supported: llama3, yarn, default)");

        // the frequencies (head_dim 16, original 32768): the correction range is [floor 4.42, ceil 7.43] = [4, 8], so
        // dimensions 0-4 keep their frequency and 5-7 blend towards it divided by the factor (transformers' formula)
        float[] inv = dev.tokenpress.backend.RopeTable.of(c).invFreq();
        for (int i = 0; i <= 4; i++) assertEquals((float) (1 / Math.pow(10000, i / 8.0)), inv[i], 1e-6f * inv[i], "kept " + i);
        double f7 = 1 / Math.pow(10000, 7 / 8.0);
        assertEquals(f7 / 4 * 0.75 + f7 * 0.25, inv[7], 1e-6 * f7, "three quarters interpolated");
        assertEquals((float) (0.1 * Math.log(4) + 1), dev.tokenpress.backend.RopeTable.of(c).attentionScale());
    }

    @Test
    void legacyTypeKeyAndDefaultRope() throws Exception {
        LlamaConfig c = ConfigLoader.load(dir(minimal(",\"rope_scaling\":{\"type\":\"llama3\",\"factor\":8.0,"
                + "\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,\"original_max_position_embeddings\":8192}")));
        assertEquals("llama3", c.ropeScaling().type());
        assertNull(ConfigLoader.load(dir(minimal(",\"rope_scaling\":{\"rope_type\":\"default\"}"))).ropeScaling());
    }

    private void assertFails(String config, String... fragments) throws Exception {
        Path d = dir(config);
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> ConfigLoader.load(d));
        String m = e.getMessage();
        assertFalse(m.contains("\n"), m);
        assertTrue(m.contains("config.json"), m);
        for (String f : fragments) assertTrue(m.contains(f), "'" + f + "' not in: " + m);
    }

    @Test
    void missingConfig() {
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> ConfigLoader.load(tmp));
        assertTrue(e.getMessage().contains("config.json"), e.getMessage());
        assertTrue(e.getMessage().contains("not found"), e.getMessage());
    }

    @Test
    void unsupportedArchitecture() throws Exception {
        assertFails("{\"architectures\":[\"GPT2LMHeadModel\"],\"hidden_size\":64}",
                "config.json: architecture GPT2LMHeadModel is not supported (supported: LlamaForCausalLM, "
                        + "MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)");
        assertFails("{\"model_type\":\"gemma\",\"hidden_size\":64}", "model_type gemma is not supported");
    }

    @Test
    void unsupportedRopeTypes() throws Exception {
        for (String t : new String[] {"linear", "dynamic", "longrope"}) {
            assertFails(minimal(",\"rope_scaling\":{\"rope_type\":\"" + t + "\",\"factor\":2.0}"), "rope_scaling",
                    t + " is not supported");
        }
        assertFails(minimal(",\"rope_parameters\":{\"rope_type\":\"dynamic\",\"factor\":4.0}"), "rope_parameters",
                "dynamic is not supported");
        assertFails(minimal(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8.0}"), "low_freq_factor");
    }

    @Test
    void invalidValues() throws Exception {
        assertFails("{not json", "invalid JSON");
        assertFails(minimal(",\"num_key_value_heads\":3"), "num_key_value_heads", "num_attention_heads");
        assertFails(minimal(",\"head_dim\":15"), "head_dim", "even");
        assertFails(minimal(",\"num_hidden_layers\":0").replace("\"num_hidden_layers\":2,", ""), "num_hidden_layers");
        assertFails("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":64}", "intermediate_size", "missing");
        assertFails(minimal(",\"hidden_size\":-5").replace("\"hidden_size\":64,", ""), "hidden_size");
        assertFails(minimal(",\"vocab_size\":\"big\"").replace(",\"vocab_size\":300", ""), "vocab_size");
        assertFails(minimal(",\"tie_word_embeddings\":\"yes\""), "tie_word_embeddings");
        assertFails(minimal(",\"eos_token_id\":\"</s>\""), "eos_token_id");
        assertFails("{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":66,\"intermediate_size\":128,"
                + "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"vocab_size\":300}", "hidden_size", "num_attention_heads");
    }

    @Test
    void invalidGenerationConfigNamesThatFile() throws Exception {
        Path d = dir(minimal(""));
        Files.writeString(d.resolve("generation_config.json"), "{oops");
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> ConfigLoader.load(d));
        assertTrue(e.getMessage().contains("generation_config.json"), e.getMessage());
    }
}
