package dev.tokenpress.api;

import dev.tokenpress.backend.KvType;
import dev.tokenpress.backend.WeightType;
import dev.tokenpress.model.LlamaConfig;

import java.util.function.Consumer;

/**
 * How to load a model.
 *
 * @param device   "auto" (CUDA when a GPU and the native library are present, else CPU), "cpu" or "cuda"
 * @param threads  CPU threads, <= 0 for all cores
 * @param maxChunk rows per prefill chunk (activation buffers are sized for it)
 * @param log      receives diagnostic lines (stderr in the CLI); never null
 * @param progress receives progress of loading and long prefills; never null
 * @param weights  how the matrices are held: as stored, or quantized to Q8_0 or Q4_0 at load time (Q4_0: CPU only)
 * @param rope     RoPE scaling in place of config.json's ({@link #NO_ROPE_SCALING} removes it; null = as configured),
 *                 e.g. YaRN for a Qwen2.5 checkpoint whose card asks for it past 32K tokens
 * @param loras    PEFT LoRA adapters merged into the weights at load time, in order (empty = none)
 * @param kvKeys   how an unquantized KV cache stores keys ({@code -ctk}: f32 or bf16; null = the backend's own: f32 on
 *                 the CPU, bf16 on CUDA, which stores nothing else); not applied by {@link TokenPress#loadOn}
 * @param kvValues the same for values ({@code -ctv})
 */
public record LoadOptions(String device, int threads, int maxChunk, Consumer<String> log, ProgressListener progress,
                          WeightType weights, LlamaConfig.RopeScaling rope, java.util.List<Lora> loras,
                          KvType kvKeys, KvType kvValues) {
    /** A LoRA adapter directory and the factor its update is merged with (1 = as trained). */
    public record Lora(java.nio.file.Path dir, float scale) {}

    /** A {@link #rope} that removes the checkpoint's RoPE scaling. */
    public static final LlamaConfig.RopeScaling NO_ROPE_SCALING = new LlamaConfig.RopeScaling("none", 1f, 1f, 1f, 1, 1f, true);

    public LoadOptions {
        if (weights == null) weights = WeightType.AS_STORED;
        loras = loras == null ? java.util.List.of() : java.util.List.copyOf(loras);
    }

    public LoadOptions(String device, int threads, int maxChunk, Consumer<String> log, ProgressListener progress,
                       WeightType weights, LlamaConfig.RopeScaling rope, java.util.List<Lora> loras) {
        this(device, threads, maxChunk, log, progress, weights, rope, loras, null, null);
    }

    public LoadOptions(String device, int threads, int maxChunk, Consumer<String> log, ProgressListener progress,
                       WeightType weights, LlamaConfig.RopeScaling rope) {
        this(device, threads, maxChunk, log, progress, weights, rope, null);
    }

    public LoadOptions(String device, int threads, int maxChunk, Consumer<String> log, ProgressListener progress) {
        this(device, threads, maxChunk, log, progress, WeightType.AS_STORED, null);
    }

    public LoadOptions(String device, int threads, int maxChunk, Consumer<String> log, ProgressListener progress,
                       WeightType weights) {
        this(device, threads, maxChunk, log, progress, weights, null);
    }

    public static LoadOptions defaults() {
        return new LoadOptions("auto", 0, 256, s -> {}, ProgressListener.NONE);
    }

    public LoadOptions withDevice(String d) { return new LoadOptions(d, threads, maxChunk, log, progress, weights, rope, loras, kvKeys, kvValues); }

    public LoadOptions withThreads(int t) { return new LoadOptions(device, t, maxChunk, log, progress, weights, rope, loras, kvKeys, kvValues); }

    public LoadOptions withMaxChunk(int c) { return new LoadOptions(device, threads, c, log, progress, weights, rope, loras, kvKeys, kvValues); }

    public LoadOptions withLog(Consumer<String> l) {
        return new LoadOptions(device, threads, maxChunk, l == null ? s -> {} : l, progress, weights, rope, loras, kvKeys, kvValues);
    }

    public LoadOptions withProgress(ProgressListener p) {
        return new LoadOptions(device, threads, maxChunk, log, p == null ? ProgressListener.NONE : p, weights, rope, loras, kvKeys, kvValues);
    }

    public LoadOptions withWeights(WeightType w) { return new LoadOptions(device, threads, maxChunk, log, progress, w, rope, loras, kvKeys, kvValues); }

    /** LoRA adapters to merge at load time (in order). */
    public LoadOptions withLoras(java.util.List<Lora> l) {
        return new LoadOptions(device, threads, maxChunk, log, progress, weights, rope, l, kvKeys, kvValues);
    }

    /** RoPE scaling in place of the checkpoint's (null: as configured; {@link #NO_ROPE_SCALING}: none). */
    public LoadOptions withRopeScaling(LlamaConfig.RopeScaling r) {
        return new LoadOptions(device, threads, maxChunk, log, progress, weights, r, loras, kvKeys, kvValues);
    }

    /** How an unquantized KV cache stores keys and values ({@code -ctk} / {@code -ctv}; null: the backend's own). */
    public LoadOptions withKvTypes(KvType keys, KvType values) {
        return new LoadOptions(device, threads, maxChunk, log, progress, weights, rope, loras, keys, values);
    }
}
