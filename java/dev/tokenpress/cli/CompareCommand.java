package dev.tokenpress.cli;

import dev.tokenpress.api.TokenPress;
import dev.tokenpress.eval.CompareReport;
import dev.tokenpress.eval.Perplexity;
import dev.tokenpress.eval.PlotWriter;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

import java.io.PrintWriter;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;

/**
 * {@code tokenpress compare}: one {@code perplexity} run per KV policy over the same text, in one table (KV bytes,
 * compression, PPL, ΔPPL, KL divergence, top-1 agreement, decode speed) and optionally a PNG of ΔPPL over memory.
 */
@Command(name = "compare", mixinStandardHelpOptions = true,
        description = {"Compare KV policies on one text: each row is exactly what 'perplexity --kv SPEC' reports "
                + "(memory, compression, PPL, ΔPPL, KLD, top-1 agreement, decode tokens/s).",
                "Results go to stdout, progress and timings to stderr."})
public final class CompareCommand implements Callable<Integer> {
    static final String DEFAULT_KV = "full,window:budget=256,h2o:budget=256,tidal:k=256";

    @Spec
    CommandSpec spec;

    @Mixin
    ModelOptions modelOptions;

    @Option(names = "--kv", paramLabel = "SPEC[,SPEC...]", defaultValue = DEFAULT_KV,
            description = "Comma-separated KV policy specs ('key=value' items without ':' continue the previous spec; "
                    + "'--kv help' lists the policies; default: ${DEFAULT-VALUE}).")
    String kv;

    @Option(names = "--kv-quant", paramLabel = "SPEC[,SPEC...]", defaultValue = "none",
            description = "KV cache quantization (comma-separated: every policy row for each, e.g. none,int8,int4; "
                    + "the baseline stays unquantized); '--kv-quant help' lists the methods (default: ${DEFAULT-VALUE}).")
    String kvQuant;

    @Mixin
    PerplexityCommand.EvalOptions eval;

    @Option(names = "--plot", paramLabel = "PNG", description = "Also write a PNG plot of ΔPPL over KV memory per policy.")
    Path plot;

    @Option(names = "--json", description = "Print one JSON object instead of the table.")
    boolean json;

    @Option(names = "--csv", description = "Print CSV instead of the table.")
    boolean csv;

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        KvOptionsMixin kvOptions = KvOptionsMixin.of(kv, kvQuant);
        if (kvOptions.printHelpIfAsked(out)) return ExitCodes.OK;
        if (json && csv) throw new Main.UsageException("--json and --csv exclude each other");
        kvOptions.validate(true);
        List<String> specs = kvOptions.specs();
        var quants = kvOptions.quants();
        modelOptions.noteCacheTypes(quants, err);
        String text = eval.validateAndRead();
        Path dir = modelOptions.resolveModel(err);
        List<Perplexity.Result> rows = new ArrayList<>();
        CompareReport.Meta meta;
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err))) {
            int[] all = tp.tokenizer().encode(text);
            int[] tokens = eval.limit(all, tp.config(), err);
            Perplexity.warmUp(tp.model(), tokens, PerplexityCommand.WARM_UP_STEPS);
            for (var q : quants)
                for (String s : specs)
                    rows.add(PerplexityCommand.evaluate(tp, tokens, KvOptionsMixin.policy(s, tp.config()), q, eval, err));
            meta = new CompareReport.Meta(dir.toString(), tp.backend().description(), CompareReport.machine(), eval.file.toString(), all.length);
        }
        if (plot != null) {
            Perplexity.Result f = rows.get(0);
            String title = String.format(Locale.ROOT, "ΔPPL vs KV memory — %s, %s (%d tokens, baseline %s)",
                    dir.getFileName(), eval.file.getFileName(), f.tokens(), f.baseline() == null ? "none" : f.baseline());
            PlotWriter.write(plot, title, rows);
            err.println("plot: " + plot);
        }
        if (json) CompareReport.json(out, meta, rows);
        else if (csv) CompareReport.csv(out, meta, rows);
        else CompareReport.markdown(out, meta, rows);
        return ExitCodes.OK;
    }
}
