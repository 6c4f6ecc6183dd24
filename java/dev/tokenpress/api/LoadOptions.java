package dev.tokenpress.api;

import java.util.function.Consumer;

/**
 * How to load a model.
 *
 * @param device   "auto" (CUDA when a GPU and the native library are present, else CPU), "cpu" or "cuda"
 * @param threads  CPU threads, <= 0 for all cores
 * @param maxChunk rows per prefill chunk (activation buffers are sized for it)
 * @param log      receives diagnostic lines (stderr in the CLI); never null
 * @param progress receives progress of loading and long prefills; never null
 */
public record LoadOptions(String device, int threads, int maxChunk, Consumer<String> log, ProgressListener progress) {
    public static LoadOptions defaults() {
        return new LoadOptions("auto", 0, 256, s -> {}, ProgressListener.NONE);
    }

    public LoadOptions withDevice(String d) { return new LoadOptions(d, threads, maxChunk, log, progress); }

    public LoadOptions withThreads(int t) { return new LoadOptions(device, t, maxChunk, log, progress); }

    public LoadOptions withMaxChunk(int c) { return new LoadOptions(device, threads, c, log, progress); }

    public LoadOptions withLog(Consumer<String> l) {
        return new LoadOptions(device, threads, maxChunk, l == null ? s -> {} : l, progress);
    }

    public LoadOptions withProgress(ProgressListener p) {
        return new LoadOptions(device, threads, maxChunk, log, p == null ? ProgressListener.NONE : p);
    }
}
