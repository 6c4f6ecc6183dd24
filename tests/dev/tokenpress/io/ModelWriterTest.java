package dev.tokenpress.io;

import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.condition.EnabledIfSystemProperty;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

class ModelWriterTest {

    @TempDir
    Path tmp;

    private static LlamaConfig variant(LlamaConfig c, String arch, int kvHeads, boolean tie, boolean bias) {
        return new LlamaConfig(arch, c.modelType(), c.hiddenSize(), c.intermediateSize(), c.numLayers(), c.numHeads(),
                kvHeads, c.headDim(), c.vocabSize(), c.rmsNormEps(), c.ropeTheta(), c.ropeScaling(),
                c.maxPositionEmbeddings(), tie, bias, c.slidingWindow(), c.bosTokenId(), c.eosTokenIds(), c.torchDtype());
    }

    private static Set<String> expectedNames(LlamaConfig c) {
        Set<String> s = new TreeSet<>();
        s.add("model.embed_tokens.weight");
        s.add("model.norm.weight");
        if (!c.tieWordEmbeddings()) s.add("lm_head.weight");
        for (int i = 0; i < c.numLayers(); i++) {
            String p = "model.layers." + i + ".";
            for (String n : List.of("input_layernorm.weight", "post_attention_layernorm.weight",
                    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")) {
                s.add(p + n);
            }
            if (c.attentionBias()) {
                s.add(p + "self_attn.q_proj.bias");
                s.add(p + "self_attn.k_proj.bias");
                s.add(p + "self_attn.v_proj.bias");
            }
        }
        return s;
    }

    private static void checkModel(Path dir, LlamaConfig written, DType dtype) {
        LlamaConfig loaded = ConfigLoader.load(dir);
        assertEquals(written, loaded, "config.json must load back to the written config");
        try (SafeTensors st = SafeTensors.open(dir)) {
            assertEquals(expectedNames(written), new TreeSet<>(st.names()));
            long d = written.hiddenSize(), f = written.intermediateSize(), v = written.vocabSize();
            assertArrayEquals(new long[] {v, d}, st.get("model.embed_tokens.weight").shape());
            assertArrayEquals(new long[] {written.qDim(), d}, st.get("model.layers.0.self_attn.q_proj.weight").shape());
            assertArrayEquals(new long[] {written.kvDim(), d}, st.get("model.layers.0.self_attn.k_proj.weight").shape());
            assertArrayEquals(new long[] {written.kvDim(), d}, st.get("model.layers.0.self_attn.v_proj.weight").shape());
            assertArrayEquals(new long[] {d, written.qDim()}, st.get("model.layers.0.self_attn.o_proj.weight").shape());
            assertArrayEquals(new long[] {f, d}, st.get("model.layers.0.mlp.gate_proj.weight").shape());
            assertArrayEquals(new long[] {f, d}, st.get("model.layers.0.mlp.up_proj.weight").shape());
            assertArrayEquals(new long[] {d, f}, st.get("model.layers.0.mlp.down_proj.weight").shape());
            assertArrayEquals(new long[] {d}, st.get("model.norm.weight").shape());
            if (written.attentionBias()) {
                assertArrayEquals(new long[] {written.kvDim()}, st.get("model.layers.0.self_attn.k_proj.bias").shape());
            }
            long params = 0;
            for (String n : st.names()) {
                assertEquals(dtype, st.get(n).dtype(), n);
                params += st.get(n).numel();
            }
            assertEquals(written.parameterCount(), params);
            assertEquals(params * dtype.bytes, st.totalBytes());
        }
        try (HfTokenizer t = HfTokenizer.load(dir)) {
            assertEquals(written.vocabSize(), t.vocabSize());
            assertEquals(written.bosTokenId(), t.tokenId(ByteLevelBpe.BOS));
            assertEquals(written.eosTokenIds().get(0), t.tokenId(ByteLevelBpe.EOS));
            assertEquals(written.bosTokenId(), t.encode("hi")[0]);
        }
    }

    private static double[] meanStd(float[] x) {
        double s = 0, s2 = 0;
        for (float v : x) {
            s += v;
            s2 += (double) v * v;
        }
        double m = s / x.length;
        return new double[] {m, Math.sqrt(s2 / x.length - m * m)};
    }

    @Test
    void tinyPresetLayoutValuesAndDeterminism() throws Exception {
        Path a = tmp.resolve("a"), b = tmp.resolve("b"), c = tmp.resolve("c");
        List<String> log = new ArrayList<>();
        LlamaConfig cfg = ModelWriter.write(a, ModelWriter.Preset.TINY, 42, log::add);
        assertFalse(log.isEmpty());
        assertEquals(ModelWriter.Preset.TINY.config(), cfg);
        assertEquals(64, cfg.hiddenSize());
        assertEquals(172, cfg.intermediateSize());
        assertEquals(2, cfg.numLayers());
        assertEquals(4, cfg.numHeads());
        assertEquals(2, cfg.numKvHeads());
        assertEquals(16, cfg.headDim());
        assertEquals(512, cfg.vocabSize());
        assertEquals(510, cfg.bosTokenId());
        assertEquals(List.of(511), cfg.eosTokenIds());
        assertEquals("bfloat16", cfg.torchDtype());
        checkModel(a, cfg, DType.BF16);
        for (String f : List.of("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "model.safetensors")) {
            assertTrue(Files.isRegularFile(a.resolve(f)), f);
        }
        try (var s = Files.list(a)) {
            assertEquals(5, s.count(), "no temporary files left");
        }

        try (SafeTensors st = SafeTensors.open(a)) {
            double[] w = meanStd(st.get("model.layers.0.mlp.up_proj.weight").toFloats());
            assertEquals(0.0, w[0], 0.002);
            assertEquals(0.02, w[1], 0.002);
            double[] n = meanStd(st.get("model.layers.1.input_layernorm.weight").toFloats());
            assertEquals(1.0, n[0], 0.01);
            assertTrue(n[1] > 0 && n[1] < 0.05, "norm weights: 1 + small noise");
            assertNotEquals(st.get("model.layers.0.mlp.up_proj.weight").getFloat(0),
                    st.get("model.layers.0.mlp.gate_proj.weight").getFloat(0));
        }

        ModelWriter.write(b, ModelWriter.Preset.TINY, 42, null);
        ModelWriter.write(c, ModelWriter.Preset.TINY, 43, null);
        byte[] fa = Files.readAllBytes(a.resolve("model.safetensors"));
        assertArrayEquals(fa, Files.readAllBytes(b.resolve("model.safetensors")), "same seed, same bytes");
        assertFalse(java.util.Arrays.equals(fa, Files.readAllBytes(c.resolve("model.safetensors"))));
        assertEquals(Files.readString(a.resolve("tokenizer.json")), Files.readString(c.resolve("tokenizer.json")));
        assertEquals(Files.readString(a.resolve("config.json")), Files.readString(b.resolve("config.json")));
    }

    @Test
    void gqaVariantsAndQwen2WithBiasUntied() {
        LlamaConfig base = ModelWriter.Preset.TINY.config();
        for (int kv : new int[] {4, 2, 1}) {      // group sizes 1, 2, 4
            Path d = tmp.resolve("gqa" + kv);
            LlamaConfig w = ModelWriter.write(d, variant(base, "LlamaForCausalLM", kv, true, false), 1, null);
            assertEquals(4 / kv, w.groupSize());
            checkModel(d, w, DType.BF16);
        }
        LlamaConfig eight = new LlamaConfig("LlamaForCausalLM", "llama", 128, 256, 1, 8, 1, 16, 300, 1e-5f, 10000f,
                null, 512, false, false, null, 0, List.of(0), "bfloat16");
        Path d8 = tmp.resolve("gqa8");
        LlamaConfig w8 = ModelWriter.write(d8, eight, 1, null);
        assertEquals(8, w8.groupSize());
        assertEquals(298, w8.bosTokenId(), "BOS/EOS come from the generated tokenizer");
        checkModel(d8, w8, DType.BF16);

        Path q = tmp.resolve("qwen2");
        LlamaConfig qw = ModelWriter.write(q, variant(base, "Qwen2ForCausalLM", 2, false, false), 5, null);
        assertTrue(qw.attentionBias(), "Qwen2 always gets q/k/v biases");
        assertFalse(qw.tieWordEmbeddings());
        assertEquals("qwen2", qw.modelType());
        checkModel(q, qw, DType.BF16);

        Path m = tmp.resolve("mistral");
        LlamaConfig mw = ModelWriter.write(m, variant(base, "MistralForCausalLM", 1, false, false), 5, null);
        assertEquals("mistral", mw.modelType());
        checkModel(m, mw, DType.BF16);

        Path lb = tmp.resolve("llama-bias");
        LlamaConfig lw = ModelWriter.write(lb, variant(base, "LlamaForCausalLM", 2, true, true), 5, null);
        assertTrue(lw.attentionBias());
        checkModel(lb, lw, DType.BF16);
    }

    @Test
    void f32AndF16Models() {
        for (DType dt : new DType[] {DType.F32, DType.F16}) {
            Path d = tmp.resolve(dt.name());
            LlamaConfig w = ModelWriter.write(d, ModelWriter.Preset.TINY.config(), dt, 3, null);
            assertEquals(dt == DType.F32 ? "float32" : "float16", w.torchDtype());
            checkModel(d, w, dt);
            try (SafeTensors st = SafeTensors.open(d)) {
                double[] ms = meanStd(st.get("model.embed_tokens.weight").toFloats());
                assertEquals(0.02, ms[1], 0.002);
            }
        }
    }

    @Test
    void smallPreset() {
        Path d = tmp.resolve("small");
        LlamaConfig w = ModelWriter.write(d, ModelWriter.Preset.SMALL, 1, null);
        assertEquals(512, w.hiddenSize());
        assertEquals(1376, w.intermediateSize());
        assertEquals(8, w.numLayers());
        assertEquals(8, w.numHeads());
        assertEquals(2, w.numKvHeads());
        assertEquals(64, w.headDim());
        assertEquals(4096, w.vocabSize());
        checkModel(d, w, DType.BF16);
    }

    @Test
    void llama1bShapePresetMatchesLlama32_1B() throws Exception {
        LlamaConfig p = ModelWriter.Preset.LLAMA_1B_SHAPE.config();
        LlamaConfig real = ConfigLoader.load(Path.of(getClass().getResource("/configs/llama-3.2-1b").toURI()));
        assertEquals(real.hiddenSize(), p.hiddenSize());
        assertEquals(real.intermediateSize(), p.intermediateSize());
        assertEquals(real.numLayers(), p.numLayers());
        assertEquals(real.numHeads(), p.numHeads());
        assertEquals(real.numKvHeads(), p.numKvHeads());
        assertEquals(real.headDim(), p.headDim());
        assertEquals(real.vocabSize(), p.vocabSize());
        assertEquals(real.ropeTheta(), p.ropeTheta());
        assertEquals(real.ropeScaling(), p.ropeScaling());
        assertEquals(real.maxPositionEmbeddings(), p.maxPositionEmbeddings());
        assertEquals(real.rmsNormEps(), p.rmsNormEps());
        assertEquals(real.tieWordEmbeddings(), p.tieWordEmbeddings());
        assertEquals(real.attentionBias(), p.attentionBias());
        assertEquals(real.parameterCount(), p.parameterCount());
        // its config.json text loads back to the same numbers
        Path d = Files.createDirectories(tmp.resolve("cfg1b"));
        Files.writeString(d.resolve("config.json"), ModelWriter.configJson(p));
        assertEquals(p, ConfigLoader.load(d));
        // and its tokenizer has exactly 128256 ids
        ByteLevelBpe.Built t = ByteLevelBpe.build(p.vocabSize());
        Files.writeString(d.resolve("tokenizer.json"), t.json());
        try (HfTokenizer tok = HfTokenizer.load(d)) {
            assertEquals(128256, tok.vocabSize());
            String s = "Hello world, this is the llama-1b-shape tokenizer: ünïcödé 😀";
            assertEquals(s, tok.decode(tok.encodeNoSpecial(s)));
            assertEquals(128254, tok.encode(s)[0]);
        }
    }

    @Test
    void tokenizerVocabSizesAreExact() throws Exception {
        for (int v : new int[] {258, 259, 300, 512, 1000, 4096, 20000}) {
            ByteLevelBpe.Built t = ByteLevelBpe.build(v);
            Path d = Files.createDirectories(tmp.resolve("tok" + v));
            Files.writeString(d.resolve("tokenizer.json"), t.json());
            try (HfTokenizer tok = HfTokenizer.load(d)) {
                assertEquals(v, tok.vocabSize(), "vocab " + v);
                assertEquals(v - 2, tok.tokenId(ByteLevelBpe.BOS));
                assertEquals(v - 1, tok.tokenId(ByteLevelBpe.EOS));
                String s = "naïve code: x = f(y) + 42; 🎉";
                assertEquals(s, tok.decode(tok.encodeNoSpecial(s)));
            }
        }
        assertThrows(IllegalArgumentException.class, () -> ByteLevelBpe.build(257));
    }

    @Test
    void presetNames() {
        assertEquals(ModelWriter.Preset.TINY, ModelWriter.Preset.parse("tiny"));
        assertEquals(ModelWriter.Preset.SMALL, ModelWriter.Preset.parse("SMALL"));
        assertEquals(ModelWriter.Preset.LLAMA_1B_SHAPE, ModelWriter.Preset.parse("llama-1b-shape"));
        assertEquals(ModelWriter.Preset.LLAMA_1B_SHAPE, ModelWriter.Preset.parse("llama_1b_shape"));
        assertEquals(ModelWriter.Preset.LLAMA_1B_ATTENTION, ModelWriter.Preset.parse("llama-1b-attention"));
        LlamaConfig a = ModelWriter.Preset.LLAMA_1B_ATTENTION.config(), b = ModelWriter.Preset.LLAMA_1B_SHAPE.config();
        assertEquals(b.numLayers(), a.numLayers());
        assertEquals(b.numHeads(), a.numHeads());
        assertEquals(b.numKvHeads(), a.numKvHeads());
        assertEquals(b.headDim(), a.headDim());
        assertEquals(b.ropeScaling(), a.ropeScaling());
        assertThrows(IllegalArgumentException.class, () -> ModelWriter.Preset.parse("huge"));
    }

    /** Writes the full 2.5 GB llama-1b-shape model; run with -Dtokenpress.bigTests=true. */
    @Test
    @EnabledIfSystemProperty(named = "tokenpress.bigTests", matches = "true")
    void llama1bShapeFullWrite() {
        Path d = tmp.resolve("l1b");
        List<String> log = new ArrayList<>();
        long t0 = System.nanoTime();
        LlamaConfig w = ModelWriter.write(d, ModelWriter.Preset.LLAMA_1B_SHAPE, 1, s -> {
            log.add(s);
            System.out.println(s);
        });
        double secs = (System.nanoTime() - t0) / 1e9;
        System.out.printf("llama-1b-shape written in %.1f s%n", secs);
        assertTrue(log.size() >= 5, "progress is reported");
        checkModel(d, w, DType.BF16);
        try (SafeTensors st = SafeTensors.open(d)) {
            double[] ms = meanStd(st.get("model.layers.3.self_attn.q_proj.weight").toFloats());
            assertEquals(0.0, ms[0], 0.001);
            assertEquals(0.02, ms[1], 0.001);
        }
    }
}
