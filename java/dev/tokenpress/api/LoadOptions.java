package dev.tokenpress.api;

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
 */
public record LoadOptions(String device, int threads, int maxChunk, Consumer<String> log, ProgressListener progress,
                          WeightType weights, LlamaConfig.RopeScaling rope) {
    /** A {@link #rope} that removes the checkpoint's RoPE scaling. */
    public static final LlamaConfig.RopeScaling NO_ROPE_SCALING = new LlamaConfig.RopeScaling("none", 1f, 1f, 1f, 1, 1f, true);

    public LoadOptions {
        if (weights == null) weights = WeightType.AS_STORED;
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

    public LoadOptions withDevice(String d) { return new LoadOptions(d, threads, maxChunk, log, progress, weights, rope); }

    public LoadOptions withThreads(int t) { return new LoadOptions(device, t, maxChunk, log, progress, weights, rope); }

    public LoadOptions withMaxChunk(int c) { return new LoadOptions(device, threads, c, log, progress, weights, rope); }

    public LoadOptions withLog(Consumer<String> l) {
        return new LoadOptions(device, threads, maxChunk, l == null ? s -> {} : l, progress, weights, rope);
    }

    public LoadOptions withProgress(ProgressListener p) {
        return new LoadOptions(device, threads, maxChunk, log, p == null ? ProgressListener.NONE : p, weights, rope);
    }

    public LoadOptions withWeights(WeightType w) { return new LoadOptions(device, threads, maxChunk, log, progress, w, rope); }

    /** RoPE scaling in place of the checkpoint's (null: as configured; {@link #NO_ROPE_SCALING}: none). */
    public LoadOptions withRopeScaling(LlamaConfig.RopeScaling r) {
        return new LoadOptions(device, threads, maxChunk, log, progress, weights, r);
    }
}
