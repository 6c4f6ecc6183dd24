package dev.tokenpress.sample;

/**
 * Sampling parameters with llama.cpp's names, meanings and defaults ({@code common_params_sampling}).
 *
 * @param temp             temperature, applied last in the chain; {@code <= 0} picks the most likely remaining token
 * @param topK             keep the {@code topK} most likely tokens; {@code <= 0} disables
 * @param topP             nucleus: keep the smallest prefix with cumulative probability {@code >= topP}; 1 disables
 * @param minP             keep tokens with {@code p >= minP * pmax}; 0 disables
 * @param typicalP         locally typical sampling mass; {@code >= 1} disables
 * @param repeatLastN      how many of the last accepted tokens the penalties look at; 0 disables, -1 = all of them
 * @param repeatPenalty    divides positive logits / multiplies negative logits of recent tokens; 1 disables
 * @param presencePenalty  subtracted once from the logit of every recent token; 0 disables
 * @param frequencyPenalty subtracted {@code count} times from the logit of every recent token; 0 disables
 * @param mirostat         0 off, 1 Mirostat, 2 Mirostat 2.0 (replaces top-k/typical/top-p/min-p and the penalties)
 * @param mirostatLr       Mirostat learning rate, eta
 * @param mirostatEnt      Mirostat target surprise (entropy) in bits, tau
 * @param seed             RNG seed; -1 draws a random one ({@link SamplerChain#seed()} reports the seed used)
 */
public record SamplingOptions(
        double temp,
        int topK,
        double topP,
        double minP,
        double typicalP,
        int repeatLastN,
        double repeatPenalty,
        double presencePenalty,
        double frequencyPenalty,
        int mirostat,
        double mirostatLr,
        double mirostatEnt,
        long seed) {

    /** The seed value that asks for a random seed. */
    public static final long RANDOM_SEED = -1;

    /** llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05, typical off, penalties off, no Mirostat. */
    public static SamplingOptions defaults() {
        return new SamplingOptions(0.8, 40, 0.95, 0.05, 1.0, 64, 1.0, 0.0, 0.0, 0, 0.1, 5.0, RANDOM_SEED);
    }

    /** The defaults with temperature 0: always the most likely token (after the penalties, which are off). */
    public static SamplingOptions greedy() {
        return defaults().withTemp(0.0);
    }

    /** True when sampling is deterministic argmax ({@code temp <= 0}). */
    public boolean isGreedy() {
        return temp <= 0;
    }

    /**
     * Checks the ranges and returns a one-line description of the first problem, or null when all values are valid.
     * The same checks back {@link #validate()} and the command-line mixin.
     */
    public String validationError() {
        if (!Double.isFinite(temp)) return "--temp must be a finite number, got " + temp;
        if (!(topP > 0 && topP <= 1)) return "--top-p must be in (0, 1], got " + topP;
        if (!(minP >= 0 && minP <= 1)) return "--min-p must be in [0, 1], got " + minP;
        if (!(typicalP > 0 && typicalP <= 1)) return "--typical must be in (0, 1], got " + typicalP;
        if (repeatLastN < -1) return "--repeat-last-n must be >= -1 (-1 = all tokens), got " + repeatLastN;
        if (!(repeatPenalty > 0) || !Double.isFinite(repeatPenalty))
            return "--repeat-penalty must be a finite number > 0, got " + repeatPenalty;
        if (!Double.isFinite(presencePenalty)) return "--presence-penalty must be finite, got " + presencePenalty;
        if (!Double.isFinite(frequencyPenalty)) return "--frequency-penalty must be finite, got " + frequencyPenalty;
        if (mirostat < 0 || mirostat > 2) return "--mirostat must be 0, 1 or 2, got " + mirostat;
        if (!(mirostatLr > 0) || !Double.isFinite(mirostatLr))
            return "--mirostat-lr must be a finite number > 0, got " + mirostatLr;
        if (!(mirostatEnt > 0) || !Double.isFinite(mirostatEnt))
            return "--mirostat-ent must be a finite number > 0, got " + mirostatEnt;
        if (seed < RANDOM_SEED) return "--seed must be >= 0, or -1 for a random seed, got " + seed;
        return null;
    }

    /** Throws {@link IllegalArgumentException} (one-line message) when a value is out of range; returns this. */
    public SamplingOptions validate() {
        String err = validationError();
        if (err != null) throw new IllegalArgumentException(err);
        return this;
    }

    public SamplingOptions withTemp(double v) {
        return new SamplingOptions(v, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed);
    }

    public SamplingOptions withTopK(int v) {
        return new SamplingOptions(temp, v, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed);
    }

    public SamplingOptions withTopP(double v) {
        return new SamplingOptions(temp, topK, v, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed);
    }

    public SamplingOptions withMinP(double v) {
        return new SamplingOptions(temp, topK, topP, v, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed);
    }

    public SamplingOptions withTypicalP(double v) {
        return new SamplingOptions(temp, topK, topP, minP, v, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed);
    }

    /** Sets all four penalty parameters. */
    public SamplingOptions withPenalties(int lastN, double repeat, double presence, double frequency) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, lastN, repeat, presence, frequency, mirostat,
                mirostatLr, mirostatEnt, seed);
    }

    /** Sets the Mirostat version (0, 1, 2), learning rate eta and target surprise tau. */
    public SamplingOptions withMirostat(int version, double lr, double ent) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, version, lr, ent, seed);
    }

    public SamplingOptions withSeed(long v) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, v);
    }

    /** One line in the spirit of llama.cpp's sampling parameter print-out. */
    public String summary() {
        return String.format(java.util.Locale.ROOT,
                "repeat_last_n = %d, repeat_penalty = %.3f, frequency_penalty = %.3f, presence_penalty = %.3f, "
                        + "top_k = %d, top_p = %.3f, min_p = %.3f, typical_p = %.3f, temp = %.3f, "
                        + "mirostat = %d, mirostat_lr = %.3f, mirostat_ent = %.3f",
                repeatLastN, repeatPenalty, frequencyPenalty, presencePenalty, topK, topP, minP, typicalP, temp,
                mirostat, mirostatLr, mirostatEnt);
    }
}
