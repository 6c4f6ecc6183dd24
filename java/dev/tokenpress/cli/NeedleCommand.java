package dev.tokenpress.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.eval.Needle;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;

/** {@code tokenpress needle}: how well each KV policy keeps one fact retrievable from far back ({@link Needle}). */
@Command(name = "needle", mixinStandardHelpOptions = true,
        description = {"Retrieval under compression: a line KEY_123 = \"qzkwvh\" is hidden at each depth of a filler text, "
                + "the context ends with assert KEY_123 == \" and the value's tokens are scored (teacher-forced, the policy "
                + "acting on the whole context first) against the full cache: mean NLL per value token, ΔNLL and top-1 "
                + "agreement, per policy and depth.",
                "Results go to stdout, progress to stderr."})
public final class NeedleCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    ModelOptions modelOptions;

    @Option(names = "--kv", paramLabel = "SPEC[,SPEC...]", defaultValue = "full,window:budget=128,h2o:budget=128,tidal:k=128,razor",
            description = "KV policies to compare (full is always measured as the reference; default: ${DEFAULT-VALUE}).")
    String kv;

    @Option(names = "--kv-quant", paramLabel = "SPEC", defaultValue = "none", description = "KV storage for every policy.")
    String kvQuant;

    @Option(names = {"-f", "--file"}, required = true, paramLabel = "FILE", description = "Filler text (UTF-8), repeated as needed.")
    Path file;

    @Option(names = {"-c", "--ctx-size"}, defaultValue = "1024", description = "Tokens of context per trial (default: ${DEFAULT-VALUE}).")
    int ctx;

    @Option(names = "--depths", paramLabel = "D[,D...]", defaultValue = "0.1,0.5,0.9", split = ",",
            description = "Where the needle goes, as fractions of the context (default: ${DEFAULT-VALUE}).")
    double[] depths;

    @Option(names = "--trials", defaultValue = "4", description = "Needles per depth (default: ${DEFAULT-VALUE}).")
    int trials;

    @Option(names = {"-s", "--seed"}, defaultValue = "1", description = "Seed of the needles (default: ${DEFAULT-VALUE}).")
    long seed;

    @Option(names = "--json", description = "Print one JSON object instead of the table.")
    boolean json;

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        KvOptionsMixin kvOptions = KvOptionsMixin.of(kv, kvQuant);
        if (kvOptions.printHelpIfAsked(out)) return ExitCodes.OK;
        kvOptions.validate(true);
        modelOptions.noteCacheTypes(java.util.List.of(kvOptions.quant()), err);
        if (!Files.isRegularFile(file)) throw new Main.UsageException("filler text not found: " + file);
        if (trials < 1) throw new Main.UsageException("--trials must be >= 1");
        if (ctx < 64) throw new Main.UsageException("-c must be >= 64");
        for (double d : depths) if (!(d >= 0 && d <= 1)) throw new Main.UsageException("--depths must lie in [0, 1], got " + d);
        if (java.util.Arrays.stream(depths).distinct().count() != depths.length)
            throw new Main.UsageException("--depths lists a depth twice");
        List<String> specs = new ArrayList<>(kvOptions.specs());
        if (!specs.contains("full")) specs.add(0, "full"); // (quantized with --kv-quant; the reference is always unquantized)
        String filler = Files.readString(file, StandardCharsets.UTF_8);
        Path dir = modelOptions.resolveModel(err);
        List<Needle.Result> rows = new ArrayList<>();
        String backend;
        int tokens;
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err))) {
            backend = tp.backend().description();
            int maxCtx = tp.config().maxPositionEmbeddings();
            if (ctx + 16 > maxCtx) throw new Main.UsageException("-c " + ctx + " exceeds the model's context of " + maxCtx);
            List<Needle.Trial> ts = Needle.trials(tp.tokenizer(), filler, ctx, depths, trials, seed);
            tokens = ts.get(0).tokens().length;
            for (String s : specs) {
                long t0 = System.nanoTime();
                Needle.Result r = Needle.run(tp.model(), ts, depths, () -> KvOptionsMixin.policy(s, tp.config()),
                        kvOptions.quant(), null, tp.tokenizer()::decode);
                rows.add(r);
                err.printf(Locale.ROOT, "needle: %s done in %.1f s%n", r.kv(), (System.nanoTime() - t0) / 1e9);
                err.flush();
            }
        }
        if (json) {
            ObjectMapper om = new ObjectMapper();
            ObjectNode o = om.createObjectNode();
            o.put("model", dir.toString());
            o.put("backend", backend);
            o.put("filler", file.toString());
            o.put("context_tokens", tokens);
            o.put("trials_per_depth", trials);
            o.put("seed", seed);
            ArrayNode ds = o.putArray("depths");
            for (double d : depths) ds.add(d);
            ArrayNode arr = o.putArray("results");
            for (Needle.Result r : rows) {
                ObjectNode n = arr.addObject();
                n.put("kv", r.kv());
                n.put("needle_nll", r.meanNll());
                n.put("full_needle_nll", r.meanFullNll());
                n.put("delta_nll", r.deltaNll());
                n.put("top1_vs_full", r.meanTop1());
                n.put("exact_match", r.meanExact());
                ArrayNode per = n.putArray("by_depth");
                for (int i = 0; i < depths.length; i++)
                    per.addObject().put("depth", depths[i]).put("needle_nll", r.nll()[i]).put("full_needle_nll", r.fullNll()[i])
                            .put("top1_vs_full", r.top1()[i]).put("exact_match", r.exact()[i]);
            }
            out.println(om.writerWithDefaultPrettyPrinter().writeValueAsString(o));
        } else {
            out.printf(Locale.ROOT, "needle: %s, %s, ~%d tokens of context, %d needles per depth, seed %d (%s)%n", dir,
                    file, tokens, trials, seed, backend);
            StringBuilder head = new StringBuilder("| kv | exact | needle NLL | ΔNLL vs full | top-1 vs full |");
            StringBuilder rule = new StringBuilder("| --- | ---: | ---: | ---: | ---: |");
            for (double d : depths) {
                head.append(String.format(Locale.ROOT, " NLL @ %.2f |", d));
                rule.append(" ---: |");
            }
            out.println(head);
            out.println(rule);
            for (Needle.Result r : rows) {
                StringBuilder line = new StringBuilder(String.format(Locale.ROOT, "| %s | %.2f | %.3f | %+.3f | %.2f |", r.kv(),
                        r.meanExact(), r.meanNll(), r.deltaNll(), r.meanTop1()));
                for (int i = 0; i < depths.length; i++) line.append(String.format(Locale.ROOT, " %.3f |", r.nll()[i]));
                out.println(line);
            }
        }
        out.flush();
        return ExitCodes.OK;
    }
}
