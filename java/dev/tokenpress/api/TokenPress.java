package dev.tokenpress.api;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Backends;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.HfTokenizer;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;

import java.nio.file.Path;
import java.util.List;

/**
 * A loaded model: the entry point for JVM applications.
 * <pre>{@code
 * try (TokenPress tp = TokenPress.load(Path.of("models/tokenpress-tiny"), LoadOptions.defaults());
 *      Session s = tp.newSession(2048)) {
 *     GenerationResult r = s.generate("def fib(n):", 64, SamplingOptions.greedy(), System.out::print);
 * }
 * }</pre>
 */
public final class TokenPress implements AutoCloseable {
    private final Path dir;
    private final LlamaConfig config;
    private final SafeTensors tensors;
    private final HfTokenizer tokenizer;
    private final Llama model;
    private final long loadMillis;
    private final ProgressListener progress;
    private final boolean ownsBackend;
    private dev.tokenpress.backend.WeightType weights = dev.tokenpress.backend.WeightType.AS_STORED;

    private TokenPress(Path dir, LlamaConfig config, SafeTensors tensors, HfTokenizer tokenizer, Llama model, long loadMillis,
                       ProgressListener progress, boolean ownsBackend) {
        this.ownsBackend = ownsBackend;
        this.progress = progress;
        this.dir = dir;
        this.config = config;
        this.tensors = tensors;
        this.tokenizer = tokenizer;
        this.model = model;
        this.loadMillis = loadMillis;
    }

    /**
     * Loads a Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
     *
     * @throws dev.tokenpress.io.ModelLoadException for a missing or malformed file (one-line message)
     * @throws dev.tokenpress.backend.DeviceUnavailableException for device "cuda" without a usable GPU
     */
    public static TokenPress load(Path dir, LoadOptions options) {
        return load(dir, options, null);
    }

    /**
     * Loads a model onto the backend of another loaded model (e.g. a draft model for speculative decoding beside its
     * target: one CPU thread team or one CUDA stream for both, used one after the other by one thread). The returned
     * object does not own the backend: closing it leaves the backend open (its device weights are freed when the
     * backend closes); options' device and threads are ignored.
     */
    public static TokenPress loadOn(Path dir, LoadOptions options, TokenPress host) {
        return load(dir, options, host.backend());
    }

    private static TokenPress load(Path dir, LoadOptions options, Backend shared) {
        long t0 = System.nanoTime();
        LlamaConfig config = config(dir, options);
        // the tokenizer loads on another thread while the weights load (or upload to a GPU) here
        HfTokenizer.Pending tokenizer = HfTokenizer.loadInBackground(dir);
        SafeTensors st;
        try {
            st = SafeTensors.open(dir);
        } catch (RuntimeException | Error e) {
            throw firstFailure(tokenizer, e);
        }
        Backend backend = shared;
        HfTokenizer tok = null;
        try {
            if (shared == null) backend = Backends.create(options.device(), options.threads(), options.log());
            if (shared == null && !backend.name().equals("cpu") && "auto".equalsIgnoreCase(options.device())) {
                // under auto, a model the GPU kernels cannot run (e.g. head dim 32) or weights they cannot read
                // (q4_0) fall back to the CPU
                try {
                    backend.newKvCache(1, 1, config.headDim(), 1).close();
                    backend.setWeightType(options.weights());
                    backend.setKvTypes(options.kvKeys(), options.kvValues());
                } catch (UnsupportedOpException e) {
                    options.log().accept("backend: falling back to CPU: " + e.getMessage());
                    backend.close();
                    backend = null;
                    backend = Backends.create("cpu", options.threads(), options.log());
                }
            }
            backend.setWeightType(options.weights());
            if (shared == null) backend.setKvTypes(options.kvKeys(), options.kvValues());
            int layers = config.numLayers();
            ProgressListener pl = options.progress();
            pl.update("load", 0, layers);
            List<dev.tokenpress.model.LoraAdapter> adapters = new java.util.ArrayList<>();
            Weights w;
            try {
                for (LoadOptions.Lora l : options.loras()) adapters.add(dev.tokenpress.model.LoraAdapter.load(l.dir(), config, l.scale()));
                java.util.function.UnaryOperator<dev.tokenpress.io.TensorData> merge = t -> {
                    for (dev.tokenpress.model.LoraAdapter a : adapters) t = a.apply(t);
                    return t;
                };
                w = Weights.load(st, config, backend, i -> {
                    pl.update("load", i, layers);
                    tokenizer.failFast();
                }, merge);
                for (dev.tokenpress.model.LoraAdapter a : adapters) {
                    a.checkAllMerged();
                    options.log().accept("lora: merged " + a.directory() + " (" + a.moduleCount() + " projections)");
                }
            } finally {
                for (dev.tokenpress.model.LoraAdapter a : adapters) a.close();
            }
            if (options.weights() != dev.tokenpress.backend.WeightType.AS_STORED)
                options.log().accept(String.format(java.util.Locale.ROOT, "weights: %s, %.1f MiB", options.weights(),
                        w.allocatedBytes() / 1048576.0));
            Llama model = new Llama(config, w, backend, options.maxChunk());
            tok = tokenizer.get();
            HfTokenizer t = tok;
            model.setTextEncoder(t::encodeNoSpecial);
            model.setTaskProgress(pl::update); // a policy's long work (KVzip's reconstruction pass) beside load and prefill
            long ms = (System.nanoTime() - t0) / 1_000_000;
            TokenPress tp = new TokenPress(dir, config, st, tok, model, ms, pl, shared == null);
            tp.weights = options.weights();
            tp.ropeOverride = options.rope();
            tp.loras = options.loras();
            return tp;
        } catch (RuntimeException | Error e) {
            if (backend != null && shared == null) backend.close();
            st.close();
            if (tok != null) {
                tok.close();
                throw e;
            }
            throw firstFailure(tokenizer, e);
        }
    }

    /** config.json, with a RoPE scaling given at load time in place of its own. */
    private static LlamaConfig config(Path dir, LoadOptions options) {
        LlamaConfig config = ConfigLoader.load(dir);
        if (options.rope() != null) {
            LlamaConfig.RopeScaling r = options.rope() == LoadOptions.NO_ROPE_SCALING ? null : options.rope();
            LlamaConfig c = config;
            if (r != null && r.type().equals("yarn") && r.originalMaxPositionEmbeddings() <= 0) // the checkpoint's context
                r = new LlamaConfig.RopeScaling("yarn", r.factor(), r.lowFreqFactor(), r.highFreqFactor(),
                        c.maxPositionEmbeddings(), r.attentionFactor(), r.truncate());
            config = new LlamaConfig(c.architecture(), c.modelType(), c.hiddenSize(), c.intermediateSize(), c.numLayers(),
                    c.numHeads(), c.numKvHeads(), c.headDim(), c.vocabSize(), c.rmsNormEps(), c.ropeTheta(), r,
                    c.maxPositionEmbeddings(), c.tieWordEmbeddings(), c.attentionBias(), c.slidingWindow(), c.bosTokenId(),
                    c.eosTokenIds(), c.torchDtype());
            options.log().accept("rope: " + (r == null ? "no scaling" : r.type() + " x" + r.factor() + " over "
                    + r.originalMaxPositionEmbeddings() + " positions") + " (in place of config.json's "
                    + (c.ropeScaling() == null ? "none" : c.ropeScaling().type()) + ")");
        }
        return config;
    }

    /**
     * After a failure elsewhere (a RuntimeException or an Error): waits for the tokenizer and closes it, and throws
     * or returns what to throw: the tokenizer's own exception if its load failed too (it is checked first, as when it
     * loaded before the weights), else {@code failure}.
     */
    private static RuntimeException firstFailure(HfTokenizer.Pending tokenizer, Throwable failure) {
        Throwable t = failure;
        try {
            tokenizer.get().close();
        } catch (RuntimeException | Error e) {
            if (e != failure) {
                e.addSuppressed(failure);
                t = e;
            }
        }
        if (t instanceof Error err) throw err;
        return (RuntimeException) t;
    }

    public Path directory() { return dir; }

    public LlamaConfig config() { return config; }

    public HfTokenizer tokenizer() { return tokenizer; }

    public Llama model() { return model; }

    public Backend backend() { return model.backend; }

    /**
     * How this model's unquantized KV caches store keys and values ({@code -ctk} / {@code -ctv}), as the fields
     * {@code cache_type_k} and {@code cache_type_v} of the CLI's and the server's JSON.
     */
    public java.util.Map<String, String> cacheTypes() {
        dev.tokenpress.backend.KvType[] t = backend().kvTypes();
        java.util.Map<String, String> m = new java.util.LinkedHashMap<>();
        m.put("cache_type_k", t[0].spec());
        m.put("cache_type_v", t[1].spec());
        return m;
    }

    public long loadMillis() { return loadMillis; }

    private long fingerprint = -1;
    private LlamaConfig.RopeScaling ropeOverride;  // a load option's RoPE scaling (null: config.json's)
    private List<LoadOptions.Lora> loras = List.of();  // adapters merged at load time

    /**
     * A fingerprint of the checkpoint: CRC-32 of config.json and of the first MiB of every .safetensors file (their
     * headers and first tensors), the weight type loaded ({@code --weight-type}), the KV cache's storage when not f32
     * ({@code -ctk} / {@code -ctv} bf16, and every CUDA cache: the keys of later layers depend on it), a RoPE scaling given at load
     * time ({@code --rope-scaling}) and merged LoRA adapters ({@code --lora}), so a saved KV cache
     * ({@link Session#saveCache}) is not restored into another model.
     */
    public synchronized long fingerprint() {
        if (fingerprint >= 0) return fingerprint;
        java.util.zip.CRC32 crc = new java.util.zip.CRC32();
        try {
            crc.update(weights.name().getBytes(java.nio.charset.StandardCharsets.UTF_8)); // q8_0 / q4_0 change the keys too
            dev.tokenpress.backend.KvType[] kv = backend().kvTypes(); // so does a cache rounded to bf16 before the last layer
            if (kv[0] != dev.tokenpress.backend.KvType.F32 || kv[1] != dev.tokenpress.backend.KvType.F32)
                crc.update(("kv " + kv[0] + " " + kv[1]).getBytes(java.nio.charset.StandardCharsets.UTF_8));
            if (ropeOverride != null) // so does another RoPE scaling
                crc.update(ropeOverride.toString().getBytes(java.nio.charset.StandardCharsets.UTF_8));
            for (LoadOptions.Lora l : loras) { // and merged adapters (their weights' first MiB and scale)
                crc.update(Float.toString(l.scale()).getBytes(java.nio.charset.StandardCharsets.UTF_8));
                crc.update(java.nio.file.Files.readAllBytes(l.dir().resolve("adapter_config.json"))); // alpha, rsLoRA, patterns
                try (var in = java.nio.file.Files.newInputStream(l.dir().resolve("adapter_model.safetensors"))) {
                    crc.update(in.readNBytes(1 << 20));
                }
            }
            crc.update(java.nio.file.Files.readAllBytes(dir.resolve("config.json")));
            java.util.List<java.nio.file.Path> files;
            try (var list = java.nio.file.Files.list(dir)) {
                files = list.filter(f -> f.getFileName().toString().endsWith(".safetensors")).sorted().toList();
            }
            byte[] buf = new byte[1 << 20];
            for (java.nio.file.Path f : files)
                try (var in = java.nio.file.Files.newInputStream(f)) {
                    int n = in.readNBytes(buf, 0, buf.length);
                    crc.update(buf, 0, n);
                }
        } catch (java.io.IOException e) {
            throw new dev.tokenpress.io.ModelLoadException(dir + ": cannot read the checkpoint for its fingerprint: " + e.getMessage());
        }
        fingerprint = crc.getValue();
        return fingerprint;
    }

    /** The progress listener given at load time (sessions report long prefills to it). */
    public ProgressListener progress() { return progress; }

    /** A new conversation state with a KV cache of {@code contextSize} tokens (<= 0: min(model max, 4096)). */
    public Session newSession(int contextSize) {
        int ctx = contextSize > 0 ? contextSize : Math.min(config.maxPositionEmbeddings(), 4096);
        return new Session(this, ctx);
    }

    /** As {@link #newSession(int)}, with the KV cache quantized as {@code quant} says (KIVI, ZipCache, MiKV, GEAR). */
    public Session newSession(int contextSize, dev.tokenpress.kv.quant.KvQuantSpec quant) {
        int ctx = contextSize > 0 ? contextSize : Math.min(config.maxPositionEmbeddings(), 4096);
        return new Session(this, ctx, quant);
    }

    @Override
    public void close() {
        if (ownsBackend) model.close();
        tensors.close();
        tokenizer.close();
    }
}
