package dev.tokenpress.cli;

import dev.tokenpress.io.ModelWriter;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.Locale;
import java.util.concurrent.Callable;

/** {@code tokenpress make-model}: a random-initialised model in exact Hugging Face layout, for tests and benchmarks. */
@Command(name = "make-model", mixinStandardHelpOptions = true,
        description = "Write a random-initialised model (config.json, bf16 model.safetensors, byte-level BPE tokenizer.json).")
public final class MakeModelCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Option(names = "--preset", required = true, paramLabel = "tiny|small|llama-1b-shape|llama-1b-attention",
            description = "tiny (~0.1M params), small (~30M), llama-1b-shape (Llama-3.2-1B's dimensions, ~2.5 GB), "
                    + "llama-1b-attention (Llama-3.2-1B's attention around a 256-wide stream and 512 tokens, ~20 MB).")
    String preset;

    @Option(names = {"-o", "--output"}, required = true, paramLabel = "DIR", description = "Output directory.")
    Path output;

    @Option(names = "--seed", defaultValue = "42", description = "Initialisation seed (default: ${DEFAULT-VALUE}).")
    long seed;

    @Override
    public Integer call() {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        ModelWriter.Preset p = switch (preset.toLowerCase(Locale.ROOT)) {
            case "tiny" -> ModelWriter.Preset.TINY;
            case "small" -> ModelWriter.Preset.SMALL;
            case "llama-1b-shape" -> ModelWriter.Preset.LLAMA_1B_SHAPE;
            case "llama-1b-attention" -> ModelWriter.Preset.LLAMA_1B_ATTENTION;
            default -> throw new Main.UsageException("unknown preset '" + preset + "': use tiny, small, llama-1b-shape or llama-1b-attention");
        };
        long t0 = System.nanoTime();
        ModelWriter.write(output, p, seed, line -> {
            err.println(line);
            err.flush();
        });
        err.printf(Locale.ROOT, "wrote %s in %.1f s%n", output, (System.nanoTime() - t0) / 1e9);
        out.println(output);
        out.flush();
        return ExitCodes.OK;
    }
}
