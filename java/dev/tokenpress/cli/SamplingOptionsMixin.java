package dev.tokenpress.cli;

import dev.tokenpress.sample.SamplingOptions;
import picocli.CommandLine;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;

/**
 * Sampling flags with llama.cpp's names and defaults; add to a command with
 * {@code @Mixin SamplingOptionsMixin sampling;} and call {@link #toOptions()} in the command body.
 */
public class SamplingOptionsMixin {

    @Spec(Spec.Target.MIXEE)
    CommandSpec mixee;

    @Option(names = "--temp", paramLabel = "N", defaultValue = "0.8",
            description = "Temperature, applied after the truncation samplers; <= 0 always picks the most likely "
                    + "token (default: ${DEFAULT-VALUE}).")
    double temp;

    @Option(names = "--top-k", paramLabel = "N", defaultValue = "40",
            description = "Top-k sampling: keep the N most likely tokens (default: ${DEFAULT-VALUE}, 0 = disabled).")
    int topK;

    @Option(names = "--top-p", paramLabel = "N", defaultValue = "0.95",
            description = "Top-p (nucleus) sampling: keep the smallest set of tokens with total probability >= N "
                    + "(default: ${DEFAULT-VALUE}, 1.0 = disabled).")
    double topP;

    @Option(names = "--min-p", paramLabel = "N", defaultValue = "0.05",
            description = "Min-p sampling: keep tokens with probability >= N times that of the most likely one "
                    + "(default: ${DEFAULT-VALUE}, 0.0 = disabled).")
    double minP;

    @Option(names = "--typical", paramLabel = "N", defaultValue = "1.0",
            description = "Locally typical sampling, parameter p (default: ${DEFAULT-VALUE}, 1.0 = disabled).")
    double typicalP;

    @Option(names = "--repeat-last-n", paramLabel = "N", defaultValue = "64",
            description = "Last N tokens the penalties look at (default: ${DEFAULT-VALUE}, 0 = disabled, "
                    + "-1 = all tokens).")
    int repeatLastN;

    @Option(names = "--repeat-penalty", paramLabel = "N", defaultValue = "1.0",
            description = "Penalise repeated tokens: divide positive logits, multiply negative ones "
                    + "(default: ${DEFAULT-VALUE}, 1.0 = disabled).")
    double repeatPenalty;

    @Option(names = "--presence-penalty", paramLabel = "N", defaultValue = "0.0",
            description = "Repeat alpha presence penalty (default: ${DEFAULT-VALUE}, 0.0 = disabled).")
    double presencePenalty;

    @Option(names = "--frequency-penalty", paramLabel = "N", defaultValue = "0.0",
            description = "Repeat alpha frequency penalty (default: ${DEFAULT-VALUE}, 0.0 = disabled).")
    double frequencyPenalty;

    @Option(names = "--mirostat", paramLabel = "N", defaultValue = "0",
            description = "Use Mirostat sampling; top-k, top-p, min-p, typical and the penalties are ignored when "
                    + "it is on (default: ${DEFAULT-VALUE}, 0 = disabled, 1 = Mirostat, 2 = Mirostat 2.0).")
    int mirostat;

    @Option(names = "--mirostat-lr", paramLabel = "N", defaultValue = "0.1",
            description = "Mirostat learning rate, parameter eta (default: ${DEFAULT-VALUE}).")
    double mirostatLr;

    @Option(names = "--mirostat-ent", paramLabel = "N", defaultValue = "5.0",
            description = "Mirostat target entropy, parameter tau, in bits (default: ${DEFAULT-VALUE}).")
    double mirostatEnt;

    @Option(names = "--dynatemp-range", paramLabel = "N", defaultValue = "0.0",
            description = "Dynamic temperature: each step's temperature lies in [temp - N, temp + N] by the normalized "
                    + "entropy of the candidates (default: ${DEFAULT-VALUE}, 0.0 = disabled).")
    double dynatempRange;

    @Option(names = "--dynatemp-exp", paramLabel = "N", defaultValue = "1.0",
            description = "Dynamic temperature exponent (default: ${DEFAULT-VALUE}).")
    double dynatempExp;

    @Option(names = "--xtc-probability", paramLabel = "N", defaultValue = "0.0",
            description = "XTC: chance per step of removing the top tokens above --xtc-threshold but the least likely "
                    + "of them (default: ${DEFAULT-VALUE}, 0.0 = disabled).")
    double xtcProbability;

    @Option(names = "--xtc-threshold", paramLabel = "N", defaultValue = "0.1",
            description = "XTC probability threshold (default: ${DEFAULT-VALUE}, above 0.5 = disabled).")
    double xtcThreshold;

    @Option(names = "--top-nsigma", paramLabel = "N", defaultValue = "-1.0",
            description = "Top-n-sigma: keep tokens whose logit is within N standard deviations of the largest "
                    + "(default: ${DEFAULT-VALUE}, <= 0 = disabled).")
    double topNSigma;

    @Option(names = "--dry-multiplier", paramLabel = "N", defaultValue = "0.0",
            description = "DRY sampling: penalty multiplier for tokens that would extend a repeated sequence "
                    + "(default: ${DEFAULT-VALUE}, 0.0 = disabled).")
    double dryMultiplier;

    @Option(names = "--dry-base", paramLabel = "N", defaultValue = "1.75",
            description = "DRY base: the penalty grows as base^(length - allowed length) (default: ${DEFAULT-VALUE}).")
    double dryBase;

    @Option(names = "--dry-allowed-length", paramLabel = "N", defaultValue = "2",
            description = "DRY: repeats up to N tokens are not penalized (default: ${DEFAULT-VALUE}).")
    int dryAllowedLength;

    @Option(names = "--dry-penalty-last-n", paramLabel = "N", defaultValue = "-1",
            description = "DRY: last N tokens scanned for repeats (default: ${DEFAULT-VALUE}, 0 = disabled, -1 = the whole context).")
    int dryPenaltyLastN;

    @Option(names = "--dry-sequence-breaker", paramLabel = "STRING",
            description = "DRY: a string that ends repeated sequences (repeatable; replaces the defaults \\n : \" *; "
                    + "'none' = no breakers).")
    java.util.List<String> drySequenceBreakers;

    @Option(names = {"-s", "--seed"}, paramLabel = "SEED", defaultValue = "-1",
            description = "RNG seed (default: ${DEFAULT-VALUE}, -1 = random seed; the seed used is reported).")
    long seed;

    @Option(names = {"-l", "--logit-bias"}, paramLabel = "TOKEN_ID(+/-)BIAS",
            description = "Add BIAS to a token's logit, e.g. 15043+1 or 15043-inf to ban it (repeatable).")
    java.util.List<String> logitBias;

    @Option(names = "--ignore-eos", description = "Ban the end-of-sequence tokens: generate until the token limit.")
    boolean ignoreEos;

    /** The --logit-bias values by token id (summed when a token repeats); usage errors for malformed ones. */
    public java.util.Map<Integer, Float> logitBias() {
        java.util.Map<Integer, Float> m = new java.util.LinkedHashMap<>();
        if (logitBias == null) return m;
        for (String item : logitBias) {
            java.util.regex.Matcher x = java.util.regex.Pattern.compile("\\s*(\\d+)\\s*([+-])\\s*(inf|[0-9]*\\.?[0-9]+)\\s*",
                    java.util.regex.Pattern.CASE_INSENSITIVE).matcher(item);
            if (!x.matches()) throw new Main.UsageException("--logit-bias " + item + ": use TOKEN_ID+BIAS or TOKEN_ID-BIAS, e.g. 15043+1 or 15043-inf");
            float v = x.group(3).equalsIgnoreCase("inf") ? Float.POSITIVE_INFINITY : Float.parseFloat(x.group(3));
            m.merge(Integer.parseInt(x.group(1)), x.group(2).equals("-") ? -v : v, Float::sum);
        }
        return m;
    }

    /** Puts --logit-bias and --ignore-eos on the session; usage errors for ids outside the vocabulary. */
    public void applyTo(dev.tokenpress.api.Session session, int vocabSize) {
        var m = logitBias();
        for (int id : m.keySet())
            if (id >= vocabSize) throw new Main.UsageException("--logit-bias: token " + id + " is outside the vocabulary [0, " + vocabSize + ")");
        session.setLogitBias(m);
        session.setIgnoreEos(ignoreEos);
    }

    /** The parsed flags as options; throws {@link CommandLine.ParameterException} for an out-of-range value. */
    public SamplingOptions toOptions() {
        CommandLine cl = mixee != null ? mixee.commandLine() : null;
        return toOptions(cl != null ? cl : new CommandLine(CommandSpec.create()));
    }

    /** As {@link #toOptions()}, reporting errors against the given command line. */
    public SamplingOptions toOptions(CommandLine commandLine) {
        java.util.List<String> breakers = drySequenceBreakers == null ? SamplingOptions.DEFAULT_DRY_BREAKERS
                : drySequenceBreakers.size() == 1 && drySequenceBreakers.get(0).equals("none") ? java.util.List.of()
                : unescape(drySequenceBreakers);
        SamplingOptions o = new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty,
                presencePenalty, frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed, dynatempRange, dynatempExp,
                xtcProbability, xtcThreshold, topNSigma, dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, breakers);
        String err = o.validationError();
        if (err != null) throw new CommandLine.ParameterException(commandLine, err);
        return o;
    }

    /** Breakers as typed on a command line: backslash-n, backslash-t, backslash-quote and two backslashes name characters. */
    private static java.util.List<String> unescape(java.util.List<String> raw) {
        java.util.List<String> out = new java.util.ArrayList<>();
        for (String r : raw) {
            StringBuilder b = new StringBuilder();
            for (int i = 0; i < r.length(); i++) {
                char c = r.charAt(i);
                if (c == '\\' && i + 1 < r.length()) {
                    char n = r.charAt(++i);
                    switch (n) {
                        case 'n' -> b.append('\n');
                        case 't' -> b.append('\t');
                        case '"' -> b.append('"');
                        case '\\' -> b.append('\\');
                        default -> b.append('\\').append(n);
                    }
                } else {
                    b.append(c);
                }
            }
            out.add(b.toString());
        }
        return out;
    }
}
