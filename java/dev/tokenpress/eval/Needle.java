package dev.tokenpress.eval;

import dev.tokenpress.io.HfTokenizer;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.model.Llama;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.function.Supplier;

/**
 * A retrieval probe in the spirit of needle-in-a-haystack / passkey tests, for what perplexity does not show: whether
 * a compressed cache still lets the model fetch one fact from far back. A line {@code KEY_123 = "qzkwvh"} (a random
 * name and six random letters) is put into a filler text at a given depth; the context ends with {@code assert
 * KEY_123 == "}; the score is the mean negative log-likelihood of the value's tokens, teacher-forced, with the policy
 * acting as in generation on the whole context first (prefill, then the value decoded one token per step — the
 * kvpress protocol: compress the context, then answer), against the full cache on the same tokens. The value's
 * letters cannot be guessed from the filler, so a low NLL means the model copied them from the needle.
 * <p>
 * The filler is a code file for the embedded model (trained on Python); any text works for other models, whose
 * own phrasing of the cue may do better — the measure is relative: policy against full cache.
 */
public final class Needle {
    private Needle() {}

    /** One needle: the tokens (context then value), where the value starts, and where the needle line was put. */
    public record Trial(int[] tokens, int valueStart, double depth, String key, String value) {}

    /**
     * One policy's scores.
     *
     * @param kv          the policy's label (spec, and quantization if any)
     * @param nll         mean NLL of the value tokens under the policy, per depth (same order as the depths)
     * @param fullNll     the same under the full cache
     * @param top1        fraction of value tokens whose argmax agrees with the full cache's, per depth
     * @param meanNll     over all trials
     * @param meanFullNll over all trials
     * @param meanTop1    over all trials
     * @param exact       fraction of trials whose greedy continuation of the cue is exactly the value, per depth
     *                    (RULER's string match: the policy compresses the context, then the answer is generated)
     * @param meanExact   over all trials
     */
    public record Result(String kv, double[] depths, double[] nll, double[] fullNll, double[] top1, double meanNll,
                         double meanFullNll, double meanTop1, double[] exact, double meanExact) {
        public double deltaNll() {
            return meanNll - meanFullNll;
        }
    }

    /**
     * Builds {@code trials} needles per depth from the filler text: about {@code contextTokens} tokens of context
     * (the filler repeated as needed, cut at line ends), the needle line at {@code depth} of it, then the cue.
     */
    public static List<Trial> trials(HfTokenizer tok, String filler, int contextTokens, double[] depths, int trials,
                                     long seed) {
        if (filler.isBlank()) throw new IllegalArgumentException("the filler text is empty");
        if (contextTokens < 32) throw new IllegalArgumentException("the context must hold at least 32 tokens, got " + contextTokens);
        String[] lines = filler.split("(?<=\n)");
        SplittableRandom r = new SplittableRandom(seed);
        List<Trial> out = new ArrayList<>();
        for (int i = 0; i < depths.length; i++)
            for (int j = 0; j < i; j++)
                if (depths[i] == depths[j]) throw new IllegalArgumentException("depth " + depths[i] + " is given twice");
        for (double depth : depths) {
            if (!(depth >= 0 && depth <= 1)) throw new IllegalArgumentException("depths must lie in [0, 1], got " + depth);
            for (int t = 0; t < trials; t++) {
                String key = "KEY_" + (100 + r.nextInt(900));
                StringBuilder v = new StringBuilder();
                for (int i = 0; i < 6; i++) v.append((char) ('a' + r.nextInt(26)));
                String value = v.toString(), needle = key + " = \"" + value + "\"\n", cue = "\n\nassert " + key + " == \"";
                int budget = contextTokens - tok.encodeNoSpecial(needle + cue).length - 1;
                // filler lines until the budget is used, starting at a random line so trials differ
                List<String> body = new ArrayList<>();
                int used = 0, at = r.nextInt(lines.length);
                while (true) {
                    String line = lines[at++ % lines.length];
                    int n = tok.encodeNoSpecial(line).length;
                    if (used + n > budget) break;
                    body.add(line);
                    used += n;
                    if (body.size() > 100_000) break;
                }
                if (body.isEmpty())
                    throw new IllegalArgumentException("no line of the filler fits in " + contextTokens
                            + " tokens of context: use a larger context or a filler with shorter lines");
                int insert = (int) Math.round(depth * body.size());
                StringBuilder ctx = new StringBuilder();
                for (int i = 0; i < body.size(); i++) {
                    if (i == insert) ctx.append(needle);
                    ctx.append(body.get(i));
                }
                if (insert >= body.size()) ctx.append(needle);
                ctx.append(cue);
                int[] c = tok.encode(ctx.toString()), val = tok.encodeNoSpecial(value);
                int[] all = Arrays.copyOf(c, c.length + val.length);
                System.arraycopy(val, 0, all, c.length, val.length);
                out.add(new Trial(all, c.length, depth, key, value));
            }
        }
        return out;
    }

    /**
     * Scores a policy on the trials: for each, {@link Perplexity#run} with the value as the scored part and the full
     * cache as the baseline. {@code policy} gives a fresh policy instance per trial.
     */
    public static Result run(Llama model, List<Trial> trials, double[] depths, Supplier<KvPolicy> policy, KvQuantSpec quant,
                             Perplexity.Progress progress) {
        return run(model, trials, depths, policy, quant, progress, null);
    }

    /**
     * As {@link #run(Llama, List, double[], Supplier, KvQuantSpec, Perplexity.Progress)}, with exact match judged on
     * text: the greedy continuation, decoded with {@code decode}, must contain the value (RULER's string match; with
     * SentencePiece vocabularies the model may spell the value with other tokens than the encoding of the value
     * alone). {@code decode} null: the continuation must be the value's tokens.
     */
    public static Result run(Llama model, List<Trial> trials, double[] depths, Supplier<KvPolicy> policy, KvQuantSpec quant,
                             Perplexity.Progress progress, java.util.function.Function<int[], String> decode) {
        int d = depths.length;
        double[] nll = new double[d], full = new double[d], top1 = new double[d], exact = new double[d];
        int[] count = new int[d];
        double sum = 0, sumFull = 0, sumTop1 = 0, sumExact = 0;
        String label = null;
        int done = 0;
        for (Trial t : trials) {
            KvPolicy p = policy.get();
            // the reference is the full, unquantized cache: a run that is exactly that is its own reference
            boolean self = p == KvPolicy.FULL && (quant == null || quant.isNone());
            Perplexity.Result res = Perplexity.run(model, t.tokens(), p, self ? null : KvPolicy.FULL,
                    t.valueStart(), 0, quant, null);
            label = res.kv();
            double base = self ? res.meanNll() : res.baselineNll();
            double agree = self ? 1 : res.top1();
            int i = indexOf(depths, t.depth());
            double hit = generatesValue(model, t, policy.get(), quant, decode) ? 1 : 0;
            nll[i] += res.meanNll();
            full[i] += base;
            top1[i] += agree;
            exact[i] += hit;
            count[i]++;
            sum += res.meanNll();
            sumFull += base;
            sumTop1 += agree;
            sumExact += hit;
            if (progress != null) progress.update(++done, trials.size(), Math.exp(sum / done));
        }
        for (int i = 0; i < d; i++) {
            if (count[i] == 0) continue;
            nll[i] /= count[i];
            full[i] /= count[i];
            top1[i] /= count[i];
            exact[i] /= count[i];
        }
        int n = Math.max(1, trials.size());
        return new Result(label, depths.clone(), nll, full, top1, sum / n, sumFull / n, sumTop1 / n, exact, sumExact / n);
    }

    /**
     * Whether greedy decoding after the context (prefilled under the policy, which then acts at every decode step as in
     * generation) produces exactly the value's tokens.
     */
    static boolean generatesValue(Llama model, Trial t, KvPolicy policy, KvQuantSpec quant) {
        return generatesValue(model, t, policy, quant, null);
    }

    static boolean generatesValue(Llama model, Trial t, KvPolicy policy, KvQuantSpec quant,
                                  java.util.function.Function<int[], String> decode) {
        int start = t.valueStart(), len = t.tokens().length - start;
        int steps = decode == null ? len : len + 3; // text: room for another spelling of the value
        KvPolicy own = model.policy();
        try {
            model.setPolicy(policy);
            int slots = start + steps + 1 + policy.scratchSlots(start); // + KVzip's reconstruction pass
            try (dev.tokenpress.kv.KvCache cache = quant == null || quant.isNone() ? model.newCache(slots)
                    : model.newCache(slots, quant)) {
                model.prefill(cache, Arrays.copyOf(t.tokens(), start), 0, false, null);
                int[] out = new int[steps];
                for (int i = 0; i < steps; i++) {
                    out[i] = model.argmax();
                    if (decode == null && out[i] != t.tokens()[start + i]) return false;
                    if (i + 1 < steps) model.decodeStep(cache, out[i], start + i);
                }
                return decode == null || decode.apply(out).contains(t.value());
            }
        } finally {
            model.setPolicy(own);
        }
    }

    private static int indexOf(double[] depths, double d) {
        for (int i = 0; i < depths.length; i++) if (depths[i] == d) return i;
        throw new IllegalArgumentException("depth " + d + " is not one of " + Arrays.toString(depths));
    }
}
