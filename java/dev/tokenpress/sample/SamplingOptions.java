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
 * @param dynatempRange    dynamic temperature: the temperature moves within temp ± this with the normalized entropy of
 *                         the candidates; 0 disables
 * @param dynatempExp      dynamic temperature exponent applied to the normalized entropy
 * @param xtcProbability   XTC (exclude top choices): the chance per step of removing every candidate above
 *                         {@code xtcThreshold} but the least likely of them; 0 disables
 * @param xtcThreshold     XTC probability threshold; above 0.5 disables
 * @param topNSigma        top-n-sigma: keep candidates whose logit is within n standard deviations of the largest;
 *                         {@code <= 0} disables
 * @param dryMultiplier    DRY ("don't repeat yourself"): penalty multiplier for tokens that would extend a repeated
 *                         sequence; 0 disables
 * @param dryBase          DRY exponential base (>= 1)
 * @param dryAllowedLength DRY: repeats up to this long are not penalized
 * @param dryPenaltyLastN  DRY: how many of the last tokens are scanned; 0 disables, -1 = all of them
 * @param drySequenceBreakers DRY: strings that end a repeated sequence (llama.cpp: newline, colon, quote, asterisk)
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
        long seed,
        double dynatempRange,
        double dynatempExp,
        double xtcProbability,
        double xtcThreshold,
        double topNSigma,
        double dryMultiplier,
        double dryBase,
        int dryAllowedLength,
        int dryPenaltyLastN,
        java.util.List<String> drySequenceBreakers) {

    /** The seed value that asks for a random seed. */
    public static final long RANDOM_SEED = -1;

    /** llama.cpp's default DRY sequence breakers. */
    public static final java.util.List<String> DEFAULT_DRY_BREAKERS = java.util.List.of("\n", ":", "\"", "*");

    public SamplingOptions {
        drySequenceBreakers = drySequenceBreakers == null ? java.util.List.of() : java.util.List.copyOf(drySequenceBreakers);
    }

    /** The thirteen classic parameters, with dynamic temperature, XTC, top-n-sigma and DRY off (llama.cpp's defaults). */
    public SamplingOptions(double temp, int topK, double topP, double minP, double typicalP, int repeatLastN,
                           double repeatPenalty, double presencePenalty, double frequencyPenalty, int mirostat,
                           double mirostatLr, double mirostatEnt, long seed) {
        this(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty, frequencyPenalty, mirostat,
                mirostatLr, mirostatEnt, seed, 0.0, 1.0, 0.0, 0.1, -1.0, 0.0, 1.75, 2, -1, DEFAULT_DRY_BREAKERS);
    }

    /**
     * llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05, typical off, penalties off, no Mirostat,
     * dynamic temperature, XTC, top-n-sigma and DRY off.
     */
    public static SamplingOptions defaults() {
        return new SamplingOptions(0.8, 40, 0.95, 0.05, 1.0, 64, 1.0, 0.0, 0.0, 0, 0.1, 5.0, RANDOM_SEED);
    }

    /** Whether DRY acts (multiplier above 0, base >= 1, a non-empty window). */
    public boolean dryEnabled() {
        return dryMultiplier != 0 && dryBase >= 1 && dryPenaltyLastN != 0;
    }

    /** The defaults with temperature 0: always the most likely token (after the penalties, which are off). */
    public static SamplingOptions greedy() {
        return defaults().withTemp(0.0);
    }

    /** True when sampling is deterministic ({@code temp <= 0} without a dynamic temperature range). */
    public boolean isGreedy() {
        return temp <= 0 && dynatempRange == 0;
    }

    /**
     * True when these options pick the model's most likely token itself: greedy, and no sampler that changes logits
     * (penalties, DRY, XTC) — so a backend's argmax can stand for the sampler chain (with no logit bias and no
     * constraint, which the caller checks).
     */
    public boolean isPlainGreedy() {
        return temp <= 0 && repeatPenalty == 1f && presencePenalty == 0f && frequencyPenalty == 0f && !dryEnabled()
                && dynatempRange == 0 && !(xtcProbability > 0 && xtcThreshold <= 0.5);
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
        if (!(dynatempRange >= 0) || !Double.isFinite(dynatempRange)) return "--dynatemp-range must be a finite number >= 0, got " + dynatempRange;
        if (!(dynatempExp >= 0) || !Double.isFinite(dynatempExp)) return "--dynatemp-exp must be a finite number >= 0, got " + dynatempExp;
        if (!(xtcProbability >= 0 && xtcProbability <= 1)) return "--xtc-probability must be in [0, 1], got " + xtcProbability;
        if (!(xtcThreshold >= 0 && xtcThreshold <= 1)) return "--xtc-threshold must be in [0, 1] (above 0.5 turns XTC off), got " + xtcThreshold;
        if (!Double.isFinite(topNSigma)) return "--top-nsigma must be a finite number (<= 0 = off), got " + topNSigma;
        if (!(dryMultiplier >= 0) || !Double.isFinite(dryMultiplier)) return "--dry-multiplier must be a finite number >= 0, got " + dryMultiplier;
        if (!(dryBase >= 1) || !Double.isFinite(dryBase)) return "--dry-base must be a finite number >= 1, got " + dryBase;
        if (dryAllowedLength < 0) return "--dry-allowed-length must be >= 0, got " + dryAllowedLength;
        if (dryPenaltyLastN < -1) return "--dry-penalty-last-n must be >= -1 (-1 = all tokens), got " + dryPenaltyLastN;
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
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed, dynatempRange, dynatempExp, xtcProbability,
                xtcThreshold, topNSigma, dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, drySequenceBreakers);
    }

    public SamplingOptions withTopK(int v) {
        return copy(v, topP, minP, typicalP);
    }

    public SamplingOptions withTopP(double v) {
        return copy(topK, v, minP, typicalP);
    }

    public SamplingOptions withMinP(double v) {
        return copy(topK, topP, v, typicalP);
    }

    public SamplingOptions withTypicalP(double v) {
        return copy(topK, topP, minP, v);
    }

    private SamplingOptions copy(int k, double p, double min, double typical) {
        return new SamplingOptions(temp, k, p, min, typical, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed, dynatempRange, dynatempExp, xtcProbability,
                xtcThreshold, topNSigma, dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, drySequenceBreakers);
    }

    /** Sets all four penalty parameters. */
    public SamplingOptions withPenalties(int lastN, double repeat, double presence, double frequency) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, lastN, repeat, presence, frequency, mirostat,
                mirostatLr, mirostatEnt, seed, dynatempRange, dynatempExp, xtcProbability, xtcThreshold, topNSigma,
                dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, drySequenceBreakers);
    }

    /** Sets the Mirostat version (0, 1, 2), learning rate eta and target surprise tau. */
    public SamplingOptions withMirostat(int version, double lr, double ent) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, version, lr, ent, seed, dynatempRange, dynatempExp, xtcProbability, xtcThreshold,
                topNSigma, dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, drySequenceBreakers);
    }

    public SamplingOptions withSeed(long v) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, v, dynatempRange, dynatempExp, xtcProbability,
                xtcThreshold, topNSigma, dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, drySequenceBreakers);
    }

    /** Sets dynamic temperature: temp ± range, following the normalized entropy raised to exp. */
    public SamplingOptions withDynatemp(double range, double exp) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed, range, exp, xtcProbability, xtcThreshold,
                topNSigma, dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, drySequenceBreakers);
    }

    /** Sets XTC's probability and threshold. */
    public SamplingOptions withXtc(double probability, double threshold) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed, dynatempRange, dynatempExp, probability,
                threshold, topNSigma, dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, drySequenceBreakers);
    }

    /** Sets top-n-sigma's n ({@code <= 0} off). */
    public SamplingOptions withTopNSigma(double n) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed, dynatempRange, dynatempExp, xtcProbability,
                xtcThreshold, n, dryMultiplier, dryBase, dryAllowedLength, dryPenaltyLastN, drySequenceBreakers);
    }

    /** Sets DRY's multiplier, base, allowed length, window (-1 = all tokens) and sequence breakers. */
    public SamplingOptions withDry(double multiplier, double base, int allowedLength, int penaltyLastN, java.util.List<String> breakers) {
        return new SamplingOptions(temp, topK, topP, minP, typicalP, repeatLastN, repeatPenalty, presencePenalty,
                frequencyPenalty, mirostat, mirostatLr, mirostatEnt, seed, dynatempRange, dynatempExp, xtcProbability,
                xtcThreshold, topNSigma, multiplier, base, allowedLength, penaltyLastN, breakers);
    }

    /** One line in the spirit of llama.cpp's sampling parameter print-out. */
    public String summary() {
        return String.format(java.util.Locale.ROOT,
                "repeat_last_n = %d, repeat_penalty = %.3f, frequency_penalty = %.3f, presence_penalty = %.3f, "
                        + "dry_multiplier = %.3f, dry_base = %.3f, dry_allowed_length = %d, dry_penalty_last_n = %d, "
                        + "top_k = %d, top_p = %.3f, min_p = %.3f, xtc_probability = %.3f, xtc_threshold = %.3f, "
                        + "typical_p = %.3f, top_n_sigma = %.3f, temp = %.3f, dynatemp_range = %.3f, dynatemp_exp = %.3f, "
                        + "mirostat = %d, mirostat_lr = %.3f, mirostat_ent = %.3f",
                repeatLastN, repeatPenalty, frequencyPenalty, presencePenalty, dryMultiplier, dryBase, dryAllowedLength,
                dryPenaltyLastN, topK, topP, minP, xtcProbability, xtcThreshold, typicalP, topNSigma, temp, dynatempRange,
                dynatempExp, mirostat, mirostatLr, mirostatEnt);
    }
}
