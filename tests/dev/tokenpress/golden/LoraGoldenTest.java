package dev.tokenpress.golden;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.cli.ExitCodes;
import dev.tokenpress.cli.Main;
import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.ModelLoadException;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.io.TensorData;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.LoraAdapter;
import dev.tokenpress.model.Weights;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

import static org.junit.jupiter.api.Assertions.*;

/**
 * LoRA adapters merged at load time against transformers + PEFT (tests/fixtures/hf/lora-llama-gqa, made by
 * scripts/lora_reference.py: rank 4, alpha 8, on q_proj, v_proj and down_proj of llama-gqa-f32).
 */
class LoraGoldenTest {
    static final Path ROOT = Path.of("tests", "fixtures", "hf");
    static final Path BASE = ROOT.resolve("llama-gqa-f32"), ADAPTER = ROOT.resolve("lora-llama-gqa");
    static final ObjectMapper JSON = new ObjectMapper();
    @TempDir
    Path tmp;

    static float[] logits(Path base, LoraAdapter a, int[] tokens) {
        LlamaConfig c = ConfigLoader.load(base);
        try (SafeTensors st = SafeTensors.open(base); CpuBackend b = new CpuBackend(2);
             Llama m = new Llama(c, Weights.load(st, c, b, null, a == null ? t -> t : a::apply), b, 16)) {
            KvCache cache = m.newCache(tokens.length + 1);
            return m.prefill(cache, tokens, 0, true, null);
        }
    }

    @Test
    void mergedLogitsMatchPeft() throws Exception {
        Map<String, float[]> ref = HfGoldenTest.readF32(ADAPTER.resolve("reference.safetensors"));
        float[] want = ref.get("logits_0");
        int[] tokens = JSON.readTree(BASE.resolve("reference.json").toFile()).get("sequences").get(0).get("tokens")
                .traverse(JSON).readValueAs(int[].class);
        LlamaConfig c = ConfigLoader.load(BASE);
        float[] got;
        try (LoraAdapter a = LoraAdapter.load(ADAPTER, c, 1f)) {
            got = logits(BASE, a, tokens);
            a.checkAllMerged();
            assertEquals(3 * 3, a.moduleCount(), "q, v and down of the three layers");
        }
        double worst = 0, moved = 0;
        float[] base = HfGoldenTest.readF32(BASE.resolve("reference.safetensors")).get("logits_0");
        for (int i = 0; i < want.length; i++) {
            worst = Math.max(worst, Math.abs(want[i] - got[i]));
            moved = Math.max(moved, Math.abs(want[i] - base[i]));
        }
        assertTrue(moved > 0.1, "the adapter changes the logits: " + moved);
        assertTrue(worst < 1e-4, "max abs logit error vs transformers + PEFT: " + worst);
    }

    /** A merged bf16 weight is the bf16 rounding of base + scale * alpha / r * B·A, computed here independently. */
    @Test
    void mergesInTheCheckpointsDtypeWithTheScale() {
        Path bf16 = ROOT.resolve("llama-gqa-bf16");
        LlamaConfig c = ConfigLoader.load(bf16);
        String name = "model.layers.1.self_attn.q_proj.weight";
        try (SafeTensors st = SafeTensors.open(bf16); SafeTensors ad = SafeTensors.openFile(ADAPTER.resolve("adapter_model.safetensors"));
             LoraAdapter a = LoraAdapter.load(ADAPTER, c, 0.5f)) {
            TensorData w = st.get(name), m = a.apply(w);
            float[] A = ad.get("base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight").toFloats();
            float[] B = ad.get("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight").toFloats();
            int out = (int) w.shape()[0], in = (int) w.shape()[1], r = 4;
            int checked = 0;
            for (int o = 0; o < out; o += 7)
                for (int i = 0; i < in; i += 5) {
                    double delta = 0;
                    for (int k = 0; k < r; k++) delta += (double) B[o * r + k] * A[k * in + i];
                    double want = w.getFloat((long) o * in + i) + 0.5 * 8 / 4 * delta;
                    float got = m.getFloat((long) o * in + i);
                    assertEquals(want, got, Math.abs(want) / 128 + 1e-6, "element " + o + "," + i);
                    checked++;
                }
            assertTrue(checked > 100);
            assertSame(st.get("model.layers.1.self_attn.k_proj.weight").data(), a.apply(st.get("model.layers.1.self_attn.k_proj.weight")).data(),
                    "an untouched projection is passed through");
        }
    }

    /** The adapter directory copied, its config changed by {@code edit}, its tensor keys renamed by {@code rename}. */
    Path variant(String name, java.util.function.Consumer<ObjectNode> edit, java.util.function.UnaryOperator<String> rename) throws Exception {
        Path d = tmp.resolve(name);
        Files.createDirectories(d);
        ObjectNode cfg = (ObjectNode) JSON.readTree(ADAPTER.resolve("adapter_config.json").toFile());
        edit.accept(cfg);
        Files.writeString(d.resolve("adapter_config.json"), cfg.toString());
        byte[] all = Files.readAllBytes(ADAPTER.resolve("adapter_model.safetensors"));
        int n = (int) java.nio.ByteBuffer.wrap(all).order(java.nio.ByteOrder.LITTLE_ENDIAN).getLong(0);
        ObjectNode header = (ObjectNode) JSON.readTree(new String(all, 8, n, java.nio.charset.StandardCharsets.UTF_8));
        ObjectNode renamed = JSON.createObjectNode();
        header.fields().forEachRemaining(e -> renamed.set(e.getKey().equals("__metadata__") ? e.getKey() : rename.apply(e.getKey()), e.getValue()));
        byte[] h = renamed.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8);
        int pad = (8 - h.length % 8) % 8;
        java.io.ByteArrayOutputStream out = new java.io.ByteArrayOutputStream();
        out.write(java.nio.ByteBuffer.allocate(8).order(java.nio.ByteOrder.LITTLE_ENDIAN).putLong(h.length + pad).array());
        out.write(h);
        for (int i = 0; i < pad; i++) out.write(' ');
        out.write(all, 8 + n, all.length - 8 - n);
        Files.write(d.resolve("adapter_model.safetensors"), out.toByteArray());
        return d;
    }

    /** The merged q_proj of {@code layer} against base + alpha / r * B·A computed here (f32 base). */
    static void checkMergedQ(LoraAdapter a, int layer, double alpha) {
        String name = "model.layers." + layer + ".self_attn.q_proj.weight";
        try (SafeTensors st = SafeTensors.open(BASE); SafeTensors ad = SafeTensors.openFile(ADAPTER.resolve("adapter_model.safetensors"))) {
            TensorData w = st.get(name), m = a.apply(w);
            float[] A = ad.get("base_model.model.model.layers." + layer + ".self_attn.q_proj.lora_A.weight").toFloats();
            float[] B = ad.get("base_model.model.model.layers." + layer + ".self_attn.q_proj.lora_B.weight").toFloats();
            int in = (int) w.shape()[1];
            for (int o = 0; o < w.shape()[0]; o += 9)
                for (int i = 0; i < in; i += 7) {
                    double delta = 0;
                    for (int k = 0; k < 4; k++) delta += (double) B[o * 4 + k] * A[k * in + i];
                    assertEquals(w.getFloat((long) o * in + i) + alpha / 4 * delta, m.getFloat((long) o * in + i), 1e-5,
                            name + " with alpha " + alpha);
                }
        }
    }

    /** alpha_pattern as PEFT matches it (a regular expression ending the module name, the first key that matches). */
    @Test
    void alphaPatternsMatchAsPeftDoes() throws Exception {
        LlamaConfig c = ConfigLoader.load(BASE);
        Path regex = variant("regex", cfg -> cfg.putObject("alpha_pattern").put("q_proj|v_proj", 32), k -> k);
        try (LoraAdapter a = LoraAdapter.load(regex, c, 1f)) {
            checkMergedQ(a, 0, 32);
        }
        Path first = variant("first", cfg -> cfg.putObject("alpha_pattern").put("model.layers.1.self_attn.q_proj", 64).put("q_proj", 16), k -> k);
        try (LoraAdapter a = LoraAdapter.load(first, c, 1f)) {
            checkMergedQ(a, 1, 64);
            checkMergedQ(a, 0, 16);
        }
        // PEFT's ".default" adapter name in the keys
        Path named = variant("named", cfg -> {}, k -> k.replace(".weight", ".default.weight"));
        try (LoraAdapter a = LoraAdapter.load(named, c, 1f)) {
            checkMergedQ(a, 2, 8);
            assertEquals(9, a.moduleCount());
        }
        // activated LoRA: PEFT cannot merge it (its update applies after the invocation tokens only)
        Path alora = variant("alora", cfg -> cfg.putArray("alora_invocation_tokens").add(5).add(6), k -> k);
        assertThrows(ModelLoadException.class, () -> LoraAdapter.load(alora, c, 1f));
    }

    @Test
    void refusesAdaptersItCannotMerge() throws Exception {
        LlamaConfig c = ConfigLoader.load(BASE);
        Path dora = tmp.resolve("dora");
        Files.createDirectories(dora);
        ObjectNode cfg = (ObjectNode) JSON.readTree(ADAPTER.resolve("adapter_config.json").toFile());
        Files.copy(ADAPTER.resolve("adapter_model.safetensors"), dora.resolve("adapter_model.safetensors"));
        Files.writeString(dora.resolve("adapter_config.json"), cfg.deepCopy().put("use_dora", true).toString());
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> LoraAdapter.load(dora, c, 1f));
        assertTrue(e.getMessage().contains("DoRA"), e.getMessage());
        ObjectNode saved = cfg.deepCopy();
        saved.putArray("modules_to_save").add("lm_head");
        Files.writeString(dora.resolve("adapter_config.json"), saved.toString());
        assertThrows(ModelLoadException.class, () -> LoraAdapter.load(dora, c, 1f));
        assertThrows(ModelLoadException.class, () -> LoraAdapter.load(tmp.resolve("missing"), c, 1f));
        // a model with fewer layers than the adapter touches
        LlamaConfig one = new LlamaConfig(c.architecture(), c.modelType(), c.hiddenSize(), c.intermediateSize(), 1, c.numHeads(),
                c.numKvHeads(), c.headDim(), c.vocabSize(), c.rmsNormEps(), c.ropeTheta(), c.ropeScaling(), c.maxPositionEmbeddings(),
                c.tieWordEmbeddings(), c.attentionBias(), c.slidingWindow(), c.bosTokenId(), c.eosTokenIds(), c.torchDtype());
        e = assertThrows(ModelLoadException.class, () -> LoraAdapter.load(ADAPTER, one, 1f));
        assertTrue(e.getMessage().contains("not a layer"), e.getMessage());
    }

    /** Through the API and the command line: the merged model, a different fingerprint, the log line. */
    @Test
    void loadsThroughTheApiAndTheCommandLine() throws Exception {
        Path dir = tmp.resolve("model");
        Files.createDirectories(dir);
        for (String f : new String[] {"config.json", "generation_config.json", "model.safetensors"})
            Files.copy(BASE.resolve(f), dir.resolve(f));
        Files.writeString(dir.resolve("tokenizer.json"), dev.tokenpress.io.ByteLevelBpe.build(320).json());
        int[] tokens = {3, 40, 7, 100, 250, 9, 31};
        LoadOptions o = LoadOptions.defaults().withDevice("cpu").withThreads(2);
        try (TokenPress plain = TokenPress.load(dir, o);
             TokenPress merged = TokenPress.load(dir, o.withLoras(List.of(new LoadOptions.Lora(ADAPTER, 1f))));
             Session s = merged.newSession(16)) {
            float[] api = s.logits(tokens);
            float[] direct = logits(BASE, LoraAdapter.load(ADAPTER, ConfigLoader.load(BASE), 1f), tokens);
            float[] last = java.util.Arrays.copyOfRange(direct, direct.length - api.length, direct.length);
            assertArrayEquals(last, api, 1e-5f);
            assertNotEquals(plain.fingerprint(), merged.fingerprint());
            // the same weights with another alpha are another model
            Path alpha16 = variant("alpha16", cfg -> cfg.put("lora_alpha", 16), k -> k);
            try (TokenPress other = TokenPress.load(dir, o.withLoras(List.of(new LoadOptions.Lora(alpha16, 1f))))) {
                assertNotEquals(merged.fingerprint(), other.fingerprint());
            }
        }
        StringWriter out = new StringWriter(), err = new StringWriter();
        int code = Main.run(new String[] {"generate", "-m", dir.toString(), "--device", "cpu", "-p", "x", "-n", "2",
                "--lora-scaled", ADAPTER.toString(), "0.5"}, new PrintWriter(out, true), new PrintWriter(err, true));
        assertEquals(ExitCodes.OK, code, err.toString());
        assertTrue(err.toString().contains("lora: merged " + ADAPTER + " (9 projections)"), err.toString());
        code = Main.run(new String[] {"generate", "-m", dir.toString(), "-p", "x", "--lora", tmp.resolve("nope").toString()},
                new PrintWriter(out, true), new PrintWriter(err, true));
        assertEquals(ExitCodes.MODEL, code);
    }
}
