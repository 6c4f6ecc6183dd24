package dev.tokenpress.cli;

import dev.tokenpress.api.ProgressListener;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.eval.CompareReport;
import dev.tokenpress.eval.Perplexity;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.model.LlamaConfig;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;

/**
 * {@code tokenpress perplexity}: teacher-forced perplexity of a text with a KV policy acting as in generation
 * (prefill, then one decode step per token), with ΔPPL, KL divergence and top-1 agreement against a baseline.
 */
@Command(name = "perplexity", mixinStandardHelpOptions = true,
        description = {"Perplexity of a text with a KV policy acting as during generation: the first --prefill tokens are prefilled, "
                + "the rest decoded one token per step (the policy evicts/selects at every step). Against the baseline "
                + "(run in the same command) it reports ΔPPL, mean KL divergence and top-1 agreement, like llama-perplexity's KL mode.",
                "Results go to stdout, progress and timings to stderr."})
public final class PerplexityCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    ModelOptions modelOptions;

    @Mixin
    KvOptionsMixin kvOptions;

    @Mixin
    EvalOptions eval;

    @Option(names = "--json", description = "Print one JSON object instead of the table.")
    boolean json;

    @Option(names = "--skip-decode", paramLabel = "MAX:MIN",
            description = "Decode each scored token through SkipDecode's top layers only (MAX at the first down to MIN at the "
                    + "last, linearly; full --kv policy): the cost of skipping layers, against the baseline.")
    String skipDecode;

    /** Decode steps run before timing anything (JIT warm-up). */
    static final int WARM_UP_STEPS = 64;

    /** Options shared by perplexity and compare. */
    static final class EvalOptions {
        @Option(names = {"-f", "--file"}, required = true, paramLabel = "FILE",
                description = "Text to evaluate (UTF-8); it is tokenized once, with the tokenizer's special tokens (BOS).")
        Path file;

        @Option(names = {"-c", "--ctx-size"}, defaultValue = "0",
                description = "Evaluate the first N tokens of the text; N is also the KV cache capacity (0 = min(model maximum, 4096)).")
        int ctx;

        @Option(names = "--prefill", defaultValue = "32",
                description = "Tokens prefilled before decoding starts; they are context only and not scored (default: ${DEFAULT-VALUE}).")
        int prefill;

        @Option(names = "--baseline", defaultValue = "full", paramLabel = "SPEC",
                description = "Policy to compare against, run in the same command ('full' = full-attention prefill; 'none' = no baseline; "
                        + "default: ${DEFAULT-VALUE}).")
        String baseline;

        /** Checks what can be checked before loading the model; returns the text. */
        String validateAndRead() throws java.io.IOException {
            if (ctx < 0) throw new Main.UsageException("-c must be >= 0");
            if (prefill < 1) throw new Main.UsageException("--prefill must be >= 1");
            if (!baselineNone()) KvOptionsMixin.policy(baseline, null);
            if (!Files.isRegularFile(file)) throw new Main.UsageException("text file not found: " + file);
            String text = Files.readString(file, StandardCharsets.UTF_8);
            if (text.isBlank()) throw new Main.UsageException("text file is empty: " + file);
            return text;
        }

        boolean baselineNone() {
            return baseline.trim().equalsIgnoreCase("none");
        }

        /** The evaluated tokens: the first min(ctx, text) tokens of the encoded text. */
        int[] limit(int[] all, LlamaConfig c, PrintWriter err) {
            int cap = ctx > 0 ? ctx : Math.min(c.maxPositionEmbeddings(), 4096);
            int n = Math.min(all.length, cap);
            if (n < 2) throw new Main.UsageException("the text has " + all.length + " token(s): perplexity needs at least 2");
            if (prefill >= n)
                throw new Main.UsageException("--prefill " + prefill + " leaves nothing to score in " + n + " tokens: lower --prefill or raise -c");
            if (n < all.length)
                err.printf(Locale.ROOT, "text: %d tokens, evaluating the first %d (-c %d)%n", all.length, n, cap);
            return Arrays.copyOf(all, n);
        }

        KvPolicy baselinePolicy(LlamaConfig c) {
            return baselineNone() ? null : KvOptionsMixin.policy(baseline, c);
        }
    }

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        if (kvOptions.printHelpIfAsked(out)) return ExitCodes.OK;
        kvOptions.validate(false);
        modelOptions.noteCacheTypes(java.util.List.of(kvOptions.quant()), err);
        String text = eval.validateAndRead();
        Path dir = modelOptions.resolveModel(err);
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err))) {
            int[] all = tp.tokenizer().encode(text);
            int[] tokens = eval.limit(all, tp.config(), err);
            KvPolicy policy = kvOptions.policy(tp.config());
            Perplexity.warmUp(tp.model(), tokens, WARM_UP_STEPS);
            dev.tokenpress.model.SkipDecode.Schedule skip = skipSchedule(tp, tokens.length - Math.min(eval.prefill, tokens.length - 1));
            Perplexity.Result r = evaluate(tp, tokens, policy, kvOptions.quant(), eval, skip, err);
            CompareReport.Meta meta = new CompareReport.Meta(dir.toString(), tp.backend().description(), CompareReport.machine(),
                    eval.file.toString(), all.length);
            if (json) CompareReport.json(out, meta, List.of(r));
            else CompareReport.markdown(out, meta, List.of(r));
        }
        return ExitCodes.OK;
    }

    /** --skip-decode's schedule over {@code scored} tokens (null without the option); usage errors for bad values. */
    private dev.tokenpress.model.SkipDecode.Schedule skipSchedule(TokenPress tp, int scored) {
        if (skipDecode == null) return null;
        if (!kvOptions.spec().equals("full")) throw new Main.UsageException("--skip-decode needs the full --kv policy");
        try {
            return dev.tokenpress.model.SkipDecode.Schedule.parse(skipDecode, tp.config().numLayers(), scored);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException("--" + e.getMessage());
        }
    }

    /** Runs one policy against a fresh baseline, with progress and timings on stderr. */
    static Perplexity.Result evaluate(TokenPress tp, int[] tokens, KvPolicy policy, KvQuantSpec quant, EvalOptions eval,
                                      PrintWriter err) {
        return evaluate(tp, tokens, policy, quant, eval, null, err);
    }

    /** {@link #evaluate(TokenPress, int[], KvPolicy, KvQuantSpec, EvalOptions, PrintWriter)} with SkipDecode's layers (null: all). */
    static Perplexity.Result evaluate(TokenPress tp, int[] tokens, KvPolicy policy, KvQuantSpec quant, EvalOptions eval,
                                      dev.tokenpress.model.SkipDecode.Schedule skip, PrintWriter err) {
        KvPolicy baseline = eval.baselinePolicy(tp.config());
        String name = policy.spec();
        ProgressListener bar = TerminalProgress.forStderr();
        boolean terminal = bar != ProgressListener.NONE;
        long t0 = System.nanoTime();
        int[] lastDecile = {0};
        Perplexity.Result r = Perplexity.run(tp.model(), tokens, policy, baseline, Math.min(eval.prefill, tokens.length - 1),
                0, quant, skip, (done, total, ppl) -> {
                    if (terminal) {
                        bar.update("ppl " + name, done, total);
                        return;
                    }
                    int decile = (int) (10L * done / total);
                    if (decile > lastDecile[0] || done == total) {
                        lastDecile[0] = decile;
                        err.printf(Locale.ROOT, "perplexity [%s]: %d/%d tokens, PPL so far %.4f, %.1f s%n", name, done, total, ppl,
                                (System.nanoTime() - t0) / 1e9);
                        err.flush();
                    }
                });
        err.printf(Locale.ROOT, "timings [%s]: %d decode steps in %.2f s (%.1f tokens/s)%s, total %.2f s%n", name, r.decodeSteps(),
                r.decodeSeconds(), r.decodeTokensPerSecond(),
                r.baseline() == null ? "" : String.format(Locale.ROOT, "; baseline %s %.2f s", r.baseline(), r.baselineSeconds()),
                (System.nanoTime() - t0) / 1e9);
        err.flush();
        return r;
    }
}
