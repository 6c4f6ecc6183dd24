package dev.tokenpress.cli;

import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.model.LlamaConfig;
import picocli.CommandLine.Option;

import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.List;

/**
 * The {@code --kv SPEC} option (KV cache compression policy); add with {@code @Mixin KvOptionsMixin kv;}.
 * {@code --kv help} prints every policy; a bad spec is a usage error.
 */
public class KvOptionsMixin {

    @Option(names = "--kv", paramLabel = "SPEC", defaultValue = "full",
            description = "KV cache policy NAME[:key=value,...], e.g. window:sink=4,budget=512, h2o:budget=0.2, tidal:k=128, "
                    + "snapkv, keyformer, a2sf, tova, quest, tokenselect, razor; join an evicting and a selecting one with '+'. "
                    + "'--kv help' lists all with their parameters (default: ${DEFAULT-VALUE}).")
    String kv;

    @Option(names = "--kv-quant", paramLabel = "SPEC", defaultValue = "none",
            description = "KV cache storage NAME[:key=value,...]: none, int8, int4, int2 (KIVI), zipcache, mikv, gear (quantized), "
                    + "minicache (cross-layer merging); "
                    + "composes with --kv (bench: a comma-separated list, every --kv spec for each). '--kv-quant help' lists all "
                    + "with their parameters (default: ${DEFAULT-VALUE}).")
    String kvQuant;

    /**
     * Prints the policy list for {@code --kv help} or the method list for {@code --kv-quant help}; a command
     * returns {@link ExitCodes#OK} right away when this returns true.
     */
    /** Options from a command's own --kv / --kv-quant fields (commands that take a list of policies). */
    static KvOptionsMixin of(String kv, String kvQuant) {
        KvOptionsMixin o = new KvOptionsMixin();
        o.kv = kv;
        o.kvQuant = kvQuant;
        return o;
    }

    public boolean printHelpIfAsked(PrintWriter out) {
        if (helpRequested()) printHelp(out);
        else if (quantHelpRequested()) printQuantHelp(out);
        else return false;
        return true;
    }

    /** True for {@code --kv-quant help}: the command prints {@link #printQuantHelp} and exits 0. */
    public boolean quantHelpRequested() {
        return kvQuant != null && kvQuant.trim().equalsIgnoreCase("help");
    }

    public void printQuantHelp(PrintWriter out) {
        out.print(dev.tokenpress.kv.quant.KvQuantSpec.help());
        out.flush();
    }

    /** The {@code --kv-quant} spec; a malformed one is a usage error. */
    public dev.tokenpress.kv.quant.KvQuantSpec quant() {
        try {
            return dev.tokenpress.kv.quant.KvQuantSpec.parse(kvQuant);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException(e.getMessage());
        }
    }

    /**
     * The comma-separated {@code --kv-quant} specs of a command that compares several (compare, bench): an item with
     * '=' but no ':' continues the previous spec ({@code int4:group=32,residual=64,int8}); usage errors.
     */
    public List<dev.tokenpress.kv.quant.KvQuantSpec> quants() {
        List<dev.tokenpress.kv.quant.KvQuantSpec> out = new ArrayList<>();
        try {
            for (String s : KvPolicies.splitList(kvQuant == null ? "none" : kvQuant.trim()))
                out.add(dev.tokenpress.kv.quant.KvQuantSpec.parse(s));
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException(e.getMessage().replace("--kv list", "--kv-quant list"));
        }
        return out;
    }

    /** True for {@code --kv help}: the command prints {@link #printHelp} and exits 0. */
    public boolean helpRequested() {
        return kv != null && kv.trim().equalsIgnoreCase("help");
    }

    public void printHelp(PrintWriter out) {
        out.print(KvPolicies.help());
        out.flush();
    }

    /** The raw spec text. */
    public String spec() {
        return kv == null ? "full" : kv.trim();
    }

    /**
     * Checks the spec's syntax and values before a model is loaded; throws a usage error.
     *
     * @param list whether the command takes a comma-separated list of specs (bench)
     */
    public void validate(boolean list) {
        if (list) for (String s : specs()) policy(s, null);
        else policy(spec(), null);
    }

    /** The policy for one spec and model. */
    public static KvPolicy policy(String spec, LlamaConfig config) {
        try {
            return KvPolicies.parse(spec, config);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException(e.getMessage());
        }
    }

    /** The single policy of a command that runs one (generate). */
    public KvPolicy policy(LlamaConfig config) {
        return policy(spec(), config);
    }

    /** The comma-separated list of specs of a command that compares several (bench). */
    public List<String> specs() {
        try {
            return new ArrayList<>(KvPolicies.splitList(spec()));
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException(e.getMessage());
        }
    }
}
