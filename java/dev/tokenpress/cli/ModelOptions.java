package dev.tokenpress.cli;

import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.backend.WeightType;
import dev.tokenpress.io.ModelWriter;
import picocli.CommandLine.Option;

import java.io.PrintWriter;
import java.nio.file.Files;
import java.nio.file.Path;

/** Options shared by every command that loads a model (a picocli mixin). */
public final class ModelOptions {
    @Option(names = {"-m", "--model"}, paramLabel = "DIR",
            description = "Hugging Face model directory (config.json, *.safetensors, tokenizer.json). "
                    + "Default: the embedded model (models/tokenpress-tiny), else a generated tiny model.")
    Path model;

    @Option(names = "--device", defaultValue = "auto", paramLabel = "auto|cpu|cuda",
            description = "Where to run: auto picks CUDA when a GPU and the native library are present (default: ${DEFAULT-VALUE}).")
    String device;

    @Option(names = {"-t", "--threads"}, defaultValue = "0", description = "CPU threads (0 = all cores).")
    int threads;

    @Option(names = {"-b", "--batch-size"}, defaultValue = "256", description = "Prefill chunk size in tokens (default: ${DEFAULT-VALUE}).")
    int chunk;

    @Option(names = {"-wt", "--weight-type"}, defaultValue = "as-stored", paramLabel = "as-stored|q8_0|q4_0",
            description = "How the matrices are held: as-stored reads the checkpoint (bf16 on the GPU); q8_0 / q4_0 "
                    + "quantize them at load time to llama.cpp's Q8_0 / Q4_0 (about 1.1 / 0.63 bytes per weight: decode "
                    + "streams 1/2 / 1/3 of bf16's bytes; on the CPU in the heap; q4_0 is CPU only) (default: ${DEFAULT-VALUE}).")
    String weightType;

    @Option(names = "--rope-scaling", paramLabel = "yarn|none",
            description = "RoPE scaling in place of config.json's (as llama.cpp's flag): yarn (with --rope-scale and "
                    + "--yarn-orig-ctx; what Qwen2.5/Qwen3 model cards ask for past 32K tokens) or none (default: as configured).")
    String ropeScaling;

    @Option(names = "--rope-scale", paramLabel = "F",
            description = "YaRN's context extension factor, with --rope-scaling yarn (default: 4).")
    Double ropeScale;

    @Option(names = "--yarn-orig-ctx", paramLabel = "N",
            description = "YaRN's original context length, with --rope-scaling yarn (default: the checkpoint's max_position_embeddings).")
    Integer yarnOrigCtx;

    @Option(names = {"-ctk", "--cache-type-k"}, paramLabel = "f32|bf16",
            description = "How an unquantized KV cache stores keys (llama.cpp's flag): f32 (the CPU's default) or bf16 (half "
                    + "the bytes; at long context attention reads half as much; what CUDA always stores). Quantized caches: --kv-quant.")
    String cacheTypeK;

    @Option(names = {"-ctv", "--cache-type-v"}, paramLabel = "f32|bf16",
            description = "The same for values.")
    String cacheTypeV;

    @Option(names = "--lora", paramLabel = "DIR",
            description = "Merge a PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) into the weights at load "
                    + "time (repeatable; the --lora adapters are merged first, then the --lora-scaled ones, each in the order given; "
                    + "not into a draft model).")
    java.util.List<Path> lora = new java.util.ArrayList<>();

    @Option(names = "--lora-scaled", arity = "2", paramLabel = "DIR SCALE", hideParamSyntax = true,
            description = "As --lora with the adapter's update multiplied by SCALE (repeatable).")
    java.util.List<String> loraScaled = new java.util.ArrayList<>();

    LoadOptions toLoadOptions(PrintWriter err) {
        if (!device.equals("auto") && !device.equals("cpu") && !device.equals("cuda"))
            throw new Main.UsageException("--device must be auto, cpu or cuda, not '" + device + "'");
        if (chunk < 1) throw new Main.UsageException("--batch-size must be at least 1");
        WeightType wt;
        try {
            wt = WeightType.parse(weightType);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException("--weight-type: " + e.getMessage());
        }
        dev.tokenpress.model.LlamaConfig.RopeScaling rope = null;
        if ((ropeScale != null || yarnOrigCtx != null) && !"yarn".equals(ropeScaling))
            throw new Main.UsageException("--rope-scale and --yarn-orig-ctx go with --rope-scaling yarn");
        if (ropeScaling != null) {
            switch (ropeScaling) {
                case "none" -> rope = LoadOptions.NO_ROPE_SCALING;
                case "yarn" -> {
                    double scale = ropeScale == null ? 4 : ropeScale;
                    int orig = yarnOrigCtx == null ? 0 : yarnOrigCtx;
                    if (!(scale >= 1) || Double.isInfinite(scale)) throw new Main.UsageException("--rope-scale must be >= 1");
                    if (orig < 0) throw new Main.UsageException("--yarn-orig-ctx must be >= 0");
                    rope = dev.tokenpress.model.LlamaConfig.RopeScaling.yarn((float) scale, orig);
                }
                default -> throw new Main.UsageException("--rope-scaling must be yarn or none, not '" + ropeScaling + "'");
            }
        }
        java.util.List<LoadOptions.Lora> loras = new java.util.ArrayList<>();
        for (Path p : lora) loras.add(new LoadOptions.Lora(p, 1f));
        for (int i = 0; i + 1 < loraScaled.size(); i += 2) {
            float s;
            try {
                s = Float.parseFloat(loraScaled.get(i + 1));
            } catch (NumberFormatException e) {
                throw new Main.UsageException("--lora-scaled " + loraScaled.get(i) + " " + loraScaled.get(i + 1) + ": the scale is not a number");
            }
            if (!(s > 0) || Float.isInfinite(s)) throw new Main.UsageException("--lora-scaled: the scale must be positive");
            loras.add(new LoadOptions.Lora(Path.of(loraScaled.get(i)), s));
        }
        return new LoadOptions(device, threads, chunk, line -> {
            err.println(line);
            err.flush();
        }, TerminalProgress.forStderr(), wt, rope, loras, kvType("--cache-type-k", cacheTypeK), kvType("--cache-type-v", cacheTypeV));
    }

    private static dev.tokenpress.backend.KvType kvType(String flag, String value) {
        if (value == null) return null;
        try {
            return dev.tokenpress.backend.KvType.parse(value);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException(flag + ": " + e.getMessage());
        }
    }

    /**
     * The model directory: -m, else the embedded trained model next to the installation, else a generated
     * random tiny model under ~/.cache/tokenpress (created on first use).
     */
    Path resolveModel(PrintWriter err) {
        if (model != null) return model;
        String home = System.getProperty("tokenpress.home");
        for (Path p : new Path[]{home == null ? null : Path.of(home, "models", "tokenpress-tiny"), Path.of("models", "tokenpress-tiny")}) {
            if (p != null && Files.isRegularFile(p.resolve("config.json"))) {
                err.println("model: " + p + " (embedded default)");
                return p;
            }
        }
        Path gen = Path.of(System.getProperty("user.home"), ".cache", "tokenpress", "models", "tiny-random");
        if (!Files.isRegularFile(gen.resolve("model.safetensors"))) {
            err.println("model: generating a random tiny model in " + gen + " (no embedded model found)");
            ModelWriter.write(gen, ModelWriter.Preset.TINY, 42, s -> {});
        } else {
            err.println("model: " + gen + " (generated random tiny model)");
        }
        return gen;
    }

    /**
     * One stderr line when -ctk / -ctv were given but every cache the command makes is a --kv-quant one, which stores
     * its own format: the flags would otherwise be ignored without a word.
     */
    void noteCacheTypes(java.util.List<dev.tokenpress.kv.quant.KvQuantSpec> quants, java.io.PrintWriter err) {
        if (cacheTypeK == null && cacheTypeV == null) return;
        for (var q : quants) if (q == null || q.isNone()) return;
        err.println("note: -ctk / -ctv apply to an unquantized cache; --kv-quant " + quants.get(0).spec().replaceAll(":.*", "")
                + (quants.size() > 1 ? " (and the other --kv-quant rows)" : "") + " stores its own format");
        err.flush();
    }
}
