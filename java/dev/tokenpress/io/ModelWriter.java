package dev.tokenpress.io;

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.model.LlamaConfig;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.WritableByteChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.AtomicMoveNotSupportedException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.function.Consumer;

/**
 * Writes randomly initialised Llama-family models in exactly the Hugging Face layout ({@code config.json},
 * {@code generation_config.json}, {@code model.safetensors}, {@code tokenizer.json}, {@code tokenizer_config.json}),
 * for {@code tokenpress make-model} and for tests.
 *
 * <p>Weights are deterministic functions of the seed and the tensor name. Matrices are N(0, 0.02²), biases too, norm
 * weights 1 + N(0, 0.02²). Small models use exact Gaussians ({@link SplittableRandom#nextGaussian()}); models over
 * {@value #EXACT_GAUSSIAN_MAX_PARAMS} parameters use a fast approximation (sum of four uniforms). The safetensors file
 * is streamed tensor by tensor, so even the 1.2B-parameter preset never sits in memory.
 */
public final class ModelWriter {
    private ModelWriter() {}

    static final long EXACT_GAUSSIAN_MAX_PARAMS = 100_000_000L;
    private static final float INIT_STD = 0.02f;
    private static final int CHUNK_BYTES = 8 << 20;
    private static final ObjectMapper JSON = new ObjectMapper();

    /** Built-in model shapes. */
    public enum Preset {
        /** hidden 64, 2 layers, 4 heads / 2 KV heads, head dim 16, vocab 512. */
        TINY("tiny", "LlamaForCausalLM", 64, 172, 2, 4, 2, 16, 512, 1e-5f, 10000f, null, 2048),
        /** hidden 512, 8 layers, 8 heads / 2 KV heads, head dim 64, vocab 4096. */
        SMALL("small", "LlamaForCausalLM", 512, 1376, 8, 8, 2, 64, 4096, 1e-5f, 10000f, null, 4096),
        /** Exactly the shapes and hyper-parameters of Llama-3.2-1B (random weights, ~2.5 GB in BF16). */
        LLAMA_1B_SHAPE("llama-1b-shape", "LlamaForCausalLM", 2048, 8192, 16, 32, 8, 64, 128256, 1e-5f, 500000f,
                new LlamaConfig.RopeScaling("llama3", 32f, 1f, 4f, 8192), 131072),
        /**
         * Llama-3.2-1B's attention (16 layers, 32 q-heads / 8 KV heads of 64, its RoPE and context) around a 256-wide
         * residual stream, a 512-wide MLP and 512 tokens (~20 MB): long-context KV-policy work without 2.5 GB of
         * weights, e.g. a policy's host-side cost on a CPU.
         */
        LLAMA_1B_ATTENTION("llama-1b-attention", "LlamaForCausalLM", 256, 512, 16, 32, 8, 64, 512, 1e-5f, 500000f,
                new LlamaConfig.RopeScaling("llama3", 32f, 1f, 4f, 8192), 131072);

        /** The name used on the command line ({@code --preset}). */
        public final String cliName;
        private final LlamaConfig config;

        Preset(String cliName, String arch, int hidden, int inter, int layers, int heads, int kv, int headDim,
               int vocab, float eps, float theta, LlamaConfig.RopeScaling scaling, int maxPos) {
            this.cliName = cliName;
            this.config = new LlamaConfig(arch, "llama", hidden, inter, layers, heads, kv, headDim, vocab, eps, theta,
                    scaling, maxPos, true, false, null, ByteLevelBpe.bosId(vocab),
                    List.of(ByteLevelBpe.eosId(vocab)), "bfloat16");
        }

        /** The configuration this preset writes (BOS/EOS are the generated tokenizer's last two ids). */
        public LlamaConfig config() {
            return config;
        }

        /** Parses "tiny", "small", "llama-1b-shape", "llama-1b-attention" (case-insensitive; '_' accepted for '-'). */
        public static Preset parse(String s) {
            String k = s.trim().toLowerCase(Locale.ROOT).replace('_', '-');
            for (Preset p : values()) if (p.cliName.equals(k)) return p;
            throw new IllegalArgumentException("unknown preset " + s + " (choose tiny, small, llama-1b-shape or llama-1b-attention)");
        }
    }

    /** Writes a preset in BF16. */
    public static LlamaConfig write(Path dir, Preset preset, long seed, Consumer<String> progress) {
        return write(dir, preset.config(), DType.BF16, seed, progress);
    }

    /** Writes a model of the given configuration in BF16. */
    public static LlamaConfig write(Path dir, LlamaConfig config, long seed, Consumer<String> progress) {
        return write(dir, config, DType.BF16, seed, progress);
    }

    /**
     * Writes a model of the given configuration with weights in {@code dtype}. BOS/EOS ids are taken from the
     * generated tokenizer (last two ids), Qwen2 always gets q/k/v biases, and {@code torch_dtype} follows
     * {@code dtype}; the configuration actually written is returned.
     */
    public static LlamaConfig write(Path dir, LlamaConfig config, DType dtype, long seed, Consumer<String> progress) {
        Consumer<String> log = progress == null ? s -> { } : progress;
        LlamaConfig cfg = normalize(config, dtype);
        try {
            Files.createDirectories(dir);
            ByteLevelBpe.Built tok = ByteLevelBpe.build(cfg.vocabSize());
            writeAtomically(dir.resolve(HfTokenizer.TOKENIZER_FILE), tok.json());
            log.accept(String.format(Locale.ROOT, "tokenizer.json: %d ids (%d merges, %d reserved special tokens)",
                    tok.vocabSize(), tok.mergeCount(), tok.reservedCount()));
            writeAtomically(dir.resolve("tokenizer_config.json"), tokenizerConfigJson(cfg));
            writeAtomically(dir.resolve(ConfigLoader.CONFIG_FILE), configJson(cfg));
            writeAtomically(dir.resolve(ConfigLoader.GENERATION_CONFIG_FILE), generationConfigJson(cfg));
            Path staleIndex = dir.resolve(SafeTensors.INDEX_FILE);
            if (Files.deleteIfExists(staleIndex)) log.accept("removed stale " + SafeTensors.INDEX_FILE);
        } catch (IOException e) {
            throw new UncheckedIOException(dir + ": cannot write model files (" + ModelLoadException.firstLine(e) + ")", e);
        }
        writeWeights(dir.resolve(SafeTensors.SINGLE_FILE), cfg, dtype, seed, log);
        return cfg;
    }

    /** The configuration {@link #write} records for {@code config} and {@code dtype}. */
    public static LlamaConfig normalize(LlamaConfig c, DType dtype) {
        if (!ConfigLoader.SUPPORTED_ARCHITECTURES.contains(c.architecture())) {
            throw new IllegalArgumentException("architecture " + c.architecture() + " is not supported");
        }
        if (c.hiddenSize() <= 0 || c.intermediateSize() <= 0 || c.numLayers() <= 0 || c.numHeads() <= 0
                || c.numKvHeads() <= 0 || c.headDim() <= 0) {
            throw new IllegalArgumentException("model sizes must be positive");
        }
        if (c.numHeads() % c.numKvHeads() != 0) {
            throw new IllegalArgumentException("num_key_value_heads must divide num_attention_heads");
        }
        if (c.headDim() % 2 != 0) throw new IllegalArgumentException("head_dim must be even");
        boolean qwen2 = c.architecture().equals("Qwen2ForCausalLM");
        String modelType = qwen2 ? "qwen2" : c.architecture().equals("Qwen3ForCausalLM") ? "qwen3"
                : c.architecture().equals("MistralForCausalLM") ? "mistral" : "llama";
        int v = c.vocabSize();
        if (v < ByteLevelBpe.MIN_VOCAB) {
            throw new IllegalArgumentException("vocab_size must be at least " + ByteLevelBpe.MIN_VOCAB);
        }
        return new LlamaConfig(c.architecture(), modelType, c.hiddenSize(), c.intermediateSize(), c.numLayers(),
                c.numHeads(), c.numKvHeads(), c.headDim(), v, c.rmsNormEps(), c.ropeTheta(), c.ropeScaling(),
                c.maxPositionEmbeddings(), c.tieWordEmbeddings(), qwen2 || c.attentionBias(), c.slidingWindow(),
                ByteLevelBpe.bosId(v), List.of(ByteLevelBpe.eosId(v)), torchDtype(dtype));
    }

    static String torchDtype(DType d) {
        return switch (d) {
            case BF16 -> "bfloat16";
            case F16 -> "float16";
            case F32 -> "float32";
        };
    }

    /** Hugging Face tensor names and shapes of a model (sorted order is applied when writing). */
    public static List<SafeTensors.Spec> tensorSpecs(LlamaConfig c, DType dtype) {
        long d = c.hiddenSize(), f = c.intermediateSize(), v = c.vocabSize(), q = c.qDim(), kv = c.kvDim();
        List<SafeTensors.Spec> specs = new ArrayList<>();
        specs.add(new SafeTensors.Spec("model.embed_tokens.weight", dtype, new long[] {v, d}));
        for (int i = 0; i < c.numLayers(); i++) {
            String p = "model.layers." + i + ".";
            specs.add(new SafeTensors.Spec(p + "input_layernorm.weight", dtype, new long[] {d}));
            specs.add(new SafeTensors.Spec(p + "self_attn.q_proj.weight", dtype, new long[] {q, d}));
            specs.add(new SafeTensors.Spec(p + "self_attn.k_proj.weight", dtype, new long[] {kv, d}));
            specs.add(new SafeTensors.Spec(p + "self_attn.v_proj.weight", dtype, new long[] {kv, d}));
            if (c.attentionBias()) {
                specs.add(new SafeTensors.Spec(p + "self_attn.q_proj.bias", dtype, new long[] {q}));
                specs.add(new SafeTensors.Spec(p + "self_attn.k_proj.bias", dtype, new long[] {kv}));
                specs.add(new SafeTensors.Spec(p + "self_attn.v_proj.bias", dtype, new long[] {kv}));
            }
            if (c.qkNorm()) {
                specs.add(new SafeTensors.Spec(p + "self_attn.q_norm.weight", dtype, new long[] {c.headDim()}));
                specs.add(new SafeTensors.Spec(p + "self_attn.k_norm.weight", dtype, new long[] {c.headDim()}));
            }
            specs.add(new SafeTensors.Spec(p + "self_attn.o_proj.weight", dtype, new long[] {d, q}));
            specs.add(new SafeTensors.Spec(p + "post_attention_layernorm.weight", dtype, new long[] {d}));
            specs.add(new SafeTensors.Spec(p + "mlp.gate_proj.weight", dtype, new long[] {f, d}));
            specs.add(new SafeTensors.Spec(p + "mlp.up_proj.weight", dtype, new long[] {f, d}));
            specs.add(new SafeTensors.Spec(p + "mlp.down_proj.weight", dtype, new long[] {d, f}));
        }
        specs.add(new SafeTensors.Spec("model.norm.weight", dtype, new long[] {d}));
        if (!c.tieWordEmbeddings()) specs.add(new SafeTensors.Spec("lm_head.weight", dtype, new long[] {v, d}));
        return specs;
    }

    private static void writeWeights(Path file, LlamaConfig cfg, DType dtype, long seed, Consumer<String> log) {
        List<SafeTensors.Spec> specs = tensorSpecs(cfg, dtype);
        long total = 0, params = 0;
        for (SafeTensors.Spec s : specs) {
            total += s.bytes();
            params += s.numel();
        }
        final long totalBytes = total;
        final boolean exact = params <= EXACT_GAUSSIAN_MAX_PARAMS;
        log.accept(String.format(Locale.ROOT, "model.safetensors: %d tensors, %,d parameters, %,d MB %s",
                specs.size(), params, totalBytes / 1_000_000, dtype.safetensorsName));
        Map<String, String> meta = new LinkedHashMap<>();
        meta.put("format", "pt");
        ByteBuffer chunk = ByteBuffer.allocateDirect(CHUNK_BYTES).order(ByteOrder.LITTLE_ENDIAN);
        long[] done = {0};
        int[] lastPct = {0};
        long t0 = System.nanoTime();
        SafeTensors.write(file, specs, meta, (spec, out) -> {
            fill(spec, seed, exact, chunk, out);
            done[0] += spec.bytes();
            int pct = (int) (done[0] * 100 / Math.max(1, totalBytes));
            if (pct >= lastPct[0] + 5 || done[0] == totalBytes) {
                lastPct[0] = pct;
                log.accept(String.format(Locale.ROOT, "model.safetensors: %3d%% (%,d / %,d MB)", pct,
                        done[0] / 1_000_000, totalBytes / 1_000_000));
            }
        });
        log.accept(String.format(Locale.ROOT, "wrote %s in %.1f s", file, (System.nanoTime() - t0) / 1e9));
    }

    /** Deterministic per-tensor seed. */
    static long tensorSeed(long seed, String name) {
        long h = 0xcbf29ce484222325L;
        for (byte b : name.getBytes(StandardCharsets.UTF_8)) {
            h ^= b & 0xFF;
            h *= 0x100000001b3L;
        }
        return new SplittableRandom(seed ^ h).nextLong();
    }

    private static void fill(SafeTensors.Spec spec, long seed, boolean exact, ByteBuffer chunk, WritableByteChannel out)
            throws IOException {
        String n = spec.name();
        boolean norm = n.endsWith("layernorm.weight") || n.endsWith("_norm.weight") || n.equals("model.norm.weight");
        float mean = norm ? 1f : 0f;
        float std = INIT_STD;
        long s = tensorSeed(seed, n);
        SplittableRandom rnd = exact ? new SplittableRandom(s) : null;
        long state = s;
        long remaining = spec.numel();
        int elemBytes = spec.dtype().bytes;
        int perChunk = chunk.capacity() / elemBytes;
        while (remaining > 0) {
            int count = (int) Math.min(perChunk, remaining);
            chunk.clear();
            for (int i = 0; i < count; i++) {
                float g;
                if (exact) {
                    g = (float) rnd.nextGaussian();
                } else {
                    state += 0x9E3779B97F4A7C15L;           // splitmix64
                    long z = state;
                    z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
                    z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
                    z ^= z >>> 31;
                    long u = (z & 0xFFFF) + ((z >>> 16) & 0xFFFF) + ((z >>> 32) & 0xFFFF) + (z >>> 48);
                    g = (u - 131070f) * (1f / 37837.23f);   // sum of 4 uniforms, unit variance
                }
                float val = mean + std * g;
                switch (spec.dtype()) {
                    case BF16 -> chunk.putShort(Half.floatToBf16(val));
                    case F16 -> chunk.putShort(Half.fromFloat(val));
                    case F32 -> chunk.putFloat(val);
                }
            }
            chunk.flip();
            while (chunk.hasRemaining()) out.write(chunk);
            remaining -= count;
        }
    }

    // ------------------------------------------------------------------------------------------------ JSON files

    /** config.json text for a configuration (keys sorted, as transformers writes them). */
    public static String configJson(LlamaConfig c) {
        boolean qwen2 = c.architecture().equals("Qwen2ForCausalLM");
        boolean qwen3 = c.architecture().equals("Qwen3ForCausalLM");
        boolean mistral = c.architecture().equals("MistralForCausalLM");
        Map<String, Object> m = new TreeMap<>();
        m.put("architectures", List.of(c.architecture()));
        if (!qwen2) m.put("attention_bias", c.attentionBias());
        m.put("attention_dropout", 0.0);
        m.put("bos_token_id", c.bosTokenId());
        m.put("eos_token_id", c.eosTokenIds().size() == 1 ? c.eosTokenIds().get(0) : c.eosTokenIds());
        m.put("head_dim", c.headDim());
        m.put("hidden_act", "silu");
        m.put("hidden_size", c.hiddenSize());
        m.put("initializer_range", 0.02);
        m.put("intermediate_size", c.intermediateSize());
        m.put("max_position_embeddings", c.maxPositionEmbeddings());
        if (!qwen2 && !qwen3 && !mistral) m.put("mlp_bias", false);
        m.put("model_type", c.modelType());
        m.put("num_attention_heads", c.numHeads());
        m.put("num_hidden_layers", c.numLayers());
        m.put("num_key_value_heads", c.numKvHeads());
        m.put("rms_norm_eps", exactDecimal(c.rmsNormEps()));
        if (c.ropeScaling() == null) {
            m.put("rope_scaling", null);
        } else {
            LlamaConfig.RopeScaling r = c.ropeScaling();
            Map<String, Object> rs = new TreeMap<>();
            rs.put("factor", exactDecimal(r.factor()));
            if (r.type().equals("yarn")) {
                rs.put("beta_fast", exactDecimal(r.highFreqFactor()));
                rs.put("beta_slow", exactDecimal(r.lowFreqFactor()));
                rs.put("attention_factor", exactDecimal(r.attentionFactor()));
                if (!r.truncate()) rs.put("truncate", false);
            } else {
                rs.put("high_freq_factor", exactDecimal(r.highFreqFactor()));
                rs.put("low_freq_factor", exactDecimal(r.lowFreqFactor()));
            }
            rs.put("original_max_position_embeddings", r.originalMaxPositionEmbeddings());
            rs.put("rope_type", r.type());
            m.put("rope_scaling", rs);
        }
        m.put("rope_theta", exactDecimal(c.ropeTheta()));
        if (qwen2 || qwen3 || mistral) m.put("sliding_window", c.slidingWindow());
        if (qwen2 || qwen3) {
            m.put("use_sliding_window", false);
            m.put("max_window_layers", c.numLayers());
        }
        m.put("tie_word_embeddings", c.tieWordEmbeddings());
        m.put("torch_dtype", c.torchDtype() == null ? "bfloat16" : c.torchDtype());
        m.put("transformers_version", "4.45.0");
        m.put("use_cache", true);
        m.put("vocab_size", c.vocabSize());
        return pretty(m);
    }

    static String generationConfigJson(LlamaConfig c) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("_from_model_config", true);
        m.put("bos_token_id", c.bosTokenId());
        m.put("eos_token_id", c.eosTokenIds().size() == 1 ? c.eosTokenIds().get(0) : c.eosTokenIds());
        m.put("transformers_version", "4.45.0");
        return pretty(m);
    }

    static String tokenizerConfigJson(LlamaConfig c) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("bos_token", ByteLevelBpe.BOS);
        m.put("eos_token", ByteLevelBpe.EOS);
        m.put("clean_up_tokenization_spaces", false);
        m.put("model_max_length", c.maxPositionEmbeddings());
        m.put("tokenizer_class", "PreTrainedTokenizerFast");
        return pretty(m);
    }

    /** The shortest decimal that reads back as the same float (1e-5f is written 1.0E-5, not 9.99...E-6). */
    private static double exactDecimal(float f) {
        return Double.parseDouble(Float.toString(f));
    }

    private static String pretty(Object o) {
        try {
            return JSON.writerWithDefaultPrettyPrinter().writeValueAsString(o) + "\n";
        } catch (JsonProcessingException e) {
            throw new IllegalStateException(e);
        }
    }

    private static void writeAtomically(Path file, String text) throws IOException {
        Path abs = file.toAbsolutePath();
        Path tmp = Files.createTempFile(abs.getParent(), "." + abs.getFileName(), ".tmp");
        try {
            Files.writeString(tmp, text, StandardCharsets.UTF_8);
            try {
                Files.move(tmp, abs, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            } catch (AtomicMoveNotSupportedException e) {
                Files.move(tmp, abs, StandardCopyOption.REPLACE_EXISTING);
            }
        } finally {
            Files.deleteIfExists(tmp);
        }
    }
}
