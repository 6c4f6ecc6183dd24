package dev.tokenpress.sample;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.ThreadLocalRandom;

/**
 * A sampling pipeline with llama.cpp's default order ({@code common_sampler_init}):
 * {@code penalties -> top-k -> typical -> top-p -> min-p -> temp -> dist}; with Mirostat on, the chain is
 * {@code temp -> mirostat} (or {@code mirostat-v2}) and top-k, typical, top-p, min-p and the penalties are ignored.
 * Temperature comes last, so the truncations see temperature-1 probabilities.
 * <p>
 * Usage in a generation loop: {@link #accept} every prompt token, then repeatedly {@code t = sample(logits)},
 * {@code accept(t)}. Not thread-safe; one chain per sequence. Buffers are allocated once for the vocabulary.
 */
public final class SamplerChain {
    /** k of the trace's top-k indicators when the chain has no top-k. */
    public static final int DEFAULT_TRACE_TOP_K = 40;
    /** How many of the most likely tokens a trace lists with their log-probabilities (OpenAI's top_logprobs limit). */
    public static final int TRACE_TOP_LOGPROBS = 20;

    private final int vocabSize;
    private final long seed;
    private final SamplingOptions options;
    private final List<Sampler> samplers;
    private final Sampler[] stages;
    private final TokenDataArray cur;
    private final int traceAt;       // stage index before which the trace statistics are taken
    private final int traceTopK;
    private boolean trace;
    private StepTrace lastTrace;
    private double tEntropy, tTopKEntropy, tTopKMass, tLogZ;
    private float[] tModel;          // [vocab] the model-distribution logits of the step being traced
    private int[] tTopIds;
    private double[] tTopLp;

    private SamplerChain(int vocabSize, long seed, SamplingOptions options, List<Sampler> samplers, int traceTopK) {
        if (vocabSize < 1) throw new IllegalArgumentException("vocabSize must be >= 1, got " + vocabSize);
        if (samplers.isEmpty()) throw new IllegalArgumentException("a chain needs at least one sampler");
        this.vocabSize = vocabSize;
        this.seed = seed;
        this.options = options;
        this.samplers = Collections.unmodifiableList(new ArrayList<>(samplers));
        this.stages = samplers.toArray(new Sampler[0]);
        this.cur = new TokenDataArray(vocabSize);
        int at = 0;
        while (at < stages.length && (stages[at] instanceof PenaltiesSampler || stages[at] instanceof LogitBiasSampler
                || stages[at] instanceof DrySampler)) at++;
        this.traceAt = at;
        this.traceTopK = traceTopK > 0 ? traceTopK : DEFAULT_TRACE_TOP_K;
    }

    /** Builds llama.cpp's default chain for the options (validated; a seed of -1 becomes a random seed). */
    public static SamplerChain create(SamplingOptions o, int vocabSize) {
        return create(o, vocabSize, null);
    }

    /**
     * The default chain with a constraint stage (e.g. {@link JsonConstraint}) right after the penalties (first when
     * there are none), so a trace still sees the model's distribution; null = none.
     */
    public static SamplerChain create(SamplingOptions o, int vocabSize, TokenConstraint constraint) {
        return create(o, vocabSize, null, constraint);
    }

    /**
     * The default chain with a logit bias first (llama.cpp's order; null or empty = none) and a constraint stage
     * after the penalties (null = none).
     */
    public static SamplerChain create(SamplingOptions o, int vocabSize, java.util.Map<Integer, Float> bias, TokenConstraint constraint) {
        return create(o, vocabSize, bias, constraint, DrySampler.Breakers.NONE);
    }

    /**
     * llama.cpp's default chain: logit bias, penalties, DRY (with the vocabulary's sequence breakers, from
     * {@link DrySampler.Breakers#of}), the constraint, top-n-sigma, top-k, typical, top-p, min-p, XTC, temperature
     * (dynamic when a range is set), dist; with Mirostat: the constraint, temperature, Mirostat.
     */
    public static SamplerChain create(SamplingOptions o, int vocabSize, java.util.Map<Integer, Float> bias, TokenConstraint constraint,
                                      DrySampler.Breakers dryBreakers) {
        o.validate();
        long s = resolveSeed(o.seed());
        List<Sampler> list = new ArrayList<>();
        if (bias != null && !bias.isEmpty()) list.add(new LogitBiasSampler(bias, vocabSize));
        if (o.mirostat() == 0 && constraint != null) constraint.limitTo(o.topK());
        if (o.mirostat() == 0) {
            list.add(new PenaltiesSampler(vocabSize, o.repeatLastN(), o.repeatPenalty(), o.presencePenalty(),
                    o.frequencyPenalty()));
            if (o.dryEnabled())
                list.add(new DrySampler(o.dryMultiplier(), o.dryBase(), o.dryAllowedLength(), o.dryPenaltyLastN(), dryBreakers));
            if (constraint != null) list.add(constraint);
            if (o.topNSigma() > 0) list.add(new TopNSigmaSampler(o.topNSigma()));
            list.add(new TopKSampler(o.topK()));
            list.add(new TypicalSampler(o.typicalP()));
            list.add(new TopPSampler(o.topP()));
            list.add(new MinPSampler(o.minP()));
            if (o.xtcProbability() > 0 && o.xtcThreshold() <= 0.5) list.add(new XtcSampler(o.xtcProbability(), o.xtcThreshold(), s));
            list.add(new TemperatureSampler(o.temp(), o.dynatempRange(), o.dynatempExp()));
            list.add(new DistSampler(s));
        } else if (o.mirostat() == 1) {
            if (constraint != null) list.add(constraint);
            list.add(new TemperatureSampler(o.temp()));
            list.add(new MirostatSampler(vocabSize, s, o.mirostatEnt(), o.mirostatLr(), 100));
        } else {
            if (constraint != null) list.add(constraint);
            list.add(new TemperatureSampler(o.temp()));
            list.add(new MirostatV2Sampler(s, o.mirostatEnt(), o.mirostatLr()));
        }
        return new SamplerChain(vocabSize, s, o, list, o.topK());
    }

    /**
     * A custom chain, applied in the given order. The last stage should select a token (dist, greedy, mirostat);
     * when none selected, {@link #sample} falls back to the first remaining candidate. The seed is only reported.
     */
    public static SamplerChain of(int vocabSize, long seed, Sampler... samplers) {
        return new SamplerChain(vocabSize, seed, null, List.of(samplers), DEFAULT_TRACE_TOP_K);
    }

    /** -1 -> a random non-negative 32-bit seed (reportable and reusable with --seed); others unchanged. */
    static long resolveSeed(long seed) {
        return seed == SamplingOptions.RANDOM_SEED ? ThreadLocalRandom.current().nextLong(0, 0xFFFF_FFFFL) : seed;
    }

    /** Samples a token from one position's logits ({@code logits.length >= vocabSize}; only read, never modified). */
    public int sample(float[] logits) {
        if (logits.length < vocabSize)
            throw new IllegalArgumentException("logits has " + logits.length + " entries, vocabulary is " + vocabSize);
        return sample(logits, 0);
    }

    /** Samples from the row starting at {@code offset} of a larger logits buffer. */
    public int sample(float[] logits, int offset) {
        cur.load(logits, offset, vocabSize);
        for (int i = 0; i < stages.length; i++) {
            if (trace && i == traceAt) traceStats();
            stages[i].apply(cur);
        }
        if (trace && traceAt == stages.length) traceStats();
        if (cur.selected < 0 || cur.selected >= cur.size) {
            cur.selected = 0;
            if (cur.size == 0) throw new IllegalStateException("the sampler chain left no candidates");
        }
        int token = cur.ids[cur.selected];
        if (trace) {
            float p = cur.probs[cur.selected];
            double surprise = p > 0 ? -MirostatSampler.log2(p) : Double.POSITIVE_INFINITY;
            lastTrace = new StepTrace(token, tEntropy, tTopKEntropy, tTopKMass, surprise, mirostatMu(),
                    tModel[token] - tLogZ, tTopIds, tTopLp);
        }
        return token;
    }

    /** The most candidates {@link #candidateCount} asks for (what a device top-k returns in one call). */
    public static final int MAX_CANDIDATES = 1024;

    /**
     * How many of the row's most likely tokens (by logit, ties to the lower id) {@link #sampleCandidates} needs to
     * choose the token {@link #sample} would choose from the whole row; 0 when only the whole row will do. Non-zero
     * when the stages before top-k can only lower logits — nothing but the penalties with repeat >= 1, presence >= 0
     * and frequency >= 0 (no logit bias, DRY, constraint or top-n-sigma, which need every logit) — and tracing is off:
     * then it is top-k's k plus the distinct tokens the penalties touch this step, at most {@link #MAX_CANDIDATES}
     * and below the vocabulary. Mirostat chains have no top-k stage and always need the whole row.
     */
    public int candidateCount() {
        if (trace) return 0;
        int extra = 0;
        for (Sampler s : stages) {
            if (s instanceof TopKSampler t) {
                long m = (long) t.k() + extra;
                return t.k() > 0 && m <= MAX_CANDIDATES && m < vocabSize ? (int) m : 0;
            }
            if (!(s instanceof PenaltiesSampler p) || !p.onlyLowers()) return 0;
            extra += p.penalisedTokens();
        }
        return 0;
    }

    /**
     * Samples from the {@code n} most likely tokens of a row instead of the whole row: {@code ids} and {@code logits}
     * as a backend's top-k returns them (any order), n >= {@link #candidateCount()}. Returns the token {@link #sample}
     * would return for the whole row, with the same state afterwards, or -1 (nothing drawn, no state changed: sample
     * the whole row instead) where the candidates cannot decide it: an id outside the vocabulary, a NaN logit, or
     * a smallest logit of zero (backends rank by IEEE comparison, which puts -0 and +0 level and NaN last; this chain
     * ranks by bits).
     * <p>
     * Why it is the same token. The candidates are put in id order, so a tie between two of them is broken as in the
     * whole row (by position = id). Let min be the smallest candidate logit. At most P = {@link
     * PenaltiesSampler#penalisedTokens} tokens are penalised, so at least n - P >= k candidates keep their raw logits,
     * all >= min, and those equal to min have lower ids than any token left out at min (the backend's order). A token
     * left out ends at or below min (penalties only lower), so it ranks after k untouched candidates and never
     * enters the top k. From top-k on, every stage sees the same k entries in the same order.
     */
    public int sampleCandidates(int[] ids, float[] logits, int n) {
        int need = candidateCount();
        if (need == 0) throw new IllegalStateException("this chain samples from the whole row (candidateCount() is 0)");
        if (n < need || n > ids.length || n > logits.length || n >= vocabSize)
            throw new IllegalArgumentException("candidates: n must be at least candidateCount() = " + need
                    + ", at most the arrays' length and below the vocabulary, got " + n);
        long[] order = new long[n];
        float min = Float.POSITIVE_INFINITY;
        for (int i = 0; i < n; i++) {
            int id = ids[i];
            float l = logits[i];
            if (id < 0 || id >= vocabSize || l != l) return -1;
            order[i] = ((long) id << 32) | i;
            min = Math.min(min, l);
        }
        if (min == 0f) return -1; // -0 and +0 rank apart here, level in a backend's top-k
        java.util.Arrays.sort(order);
        int[] sid = new int[n];
        float[] sl = new float[n];
        for (int i = 0; i < n; i++) {
            int at = (int) order[i];
            sid[i] = ids[at];
            sl[i] = logits[at];
            if (i > 0 && sid[i] == sid[i - 1]) throw new IllegalArgumentException("candidates: token " + sid[i] + " twice");
        }
        cur.set(sid, sl, n);
        for (Sampler stage : stages) stage.apply(cur);
        if (cur.selected < 0 || cur.selected >= cur.size) {
            cur.selected = 0;
            if (cur.size == 0) throw new IllegalStateException("the sampler chain left no candidates");
        }
        return cur.ids[cur.selected];
    }

    /** Sample, then accept the token. */
    public int sampleAndAccept(float[] logits) {
        int t = sample(logits);
        accept(t);
        return t;
    }

    /** Records a token that became part of the context (penalty history). */
    public void accept(int token) {
        for (Sampler s : stages) s.accept(token);
    }

    /** Clears the history and Mirostat state, and restarts the RNG from {@link #seed()}. */
    public void reset() {
        for (Sampler s : stages) s.reset();
        lastTrace = null;
    }

    /** The seed in use (the drawn one when the options asked for -1). */
    public long seed() {
        return seed;
    }

    public int vocabSize() {
        return vocabSize;
    }

    /** The options this chain was created from (null for {@link #of}). */
    public SamplingOptions options() {
        return options;
    }

    public List<Sampler> samplers() {
        return samplers;
    }

    /** The chain as llama.cpp prints it, e.g. {@code logits -> penalties -> top-k -> ... -> dist}. */
    public String describe() {
        StringBuilder sb = new StringBuilder("logits");
        for (Sampler s : stages) sb.append(" -> ").append(s.name());
        return sb.toString();
    }

    @Override
    public String toString() {
        return describe();
    }

    /**
     * The candidate list as the last {@link #sample} left it: the set the token was drawn from (with normalised
     * probabilities) and the selected index. Reused by the next call.
     */
    public TokenDataArray lastCandidates() {
        return cur;
    }

    /** Turns the per-step diagnostics on or off (costs one extra pass over the vocabulary per step). */
    public void setTrace(boolean on) {
        trace = on;
        if (!on) lastTrace = null;
    }

    public boolean isTrace() {
        return trace;
    }

    /** Diagnostics of the last step, or null when tracing is off or nothing was sampled yet. */
    public StepTrace lastTrace() {
        return lastTrace;
    }

    private double mirostatMu() {
        for (Sampler s : stages) {
            if (s instanceof MirostatSampler m) return m.mu();
            if (s instanceof MirostatV2Sampler m) return m.mu();
        }
        return Double.NaN;
    }

    /** Entropy and top-k indicators of the current (untruncated, temperature-1) candidates. */
    private void traceStats() {
        int n = cur.size;
        float[] lg = cur.logits;
        float maxL = lg[cur.argmax()];
        double[] sums = new double[2];
        LogitRows.entropySums(lg, 0, n, maxL, sums);
        double z = sums[0], zl = sums[1];
        tEntropy = Math.log(z) - zl / z;
        int k = Math.min(traceTopK, n), m = Math.min(TRACE_TOP_LOGPROBS, n);
        int[] top = cur.topIndices(Math.max(k, m));
        // the most likely ones for the log-probabilities: the first m of the same selection (best first)
        tTopIds = new int[m];
        tTopLp = new double[m];
        for (int j = 0; j < m; j++) tTopIds[j] = top[j]; // positions for now
        double zk = 0, zkl = 0;
        for (int j = 0; j < k; j++) {
            double d = lg[top[j]] - maxL;
            double e = Math.exp(d);
            if (e > 0) {
                zk += e;
                zkl += e * d;
            }
        }
        tTopKMass = zk / z;
        tTopKEntropy = Math.log(zk) - zkl / zk;
        // log-probabilities: every token's model logit by id, and the most likely ones
        tLogZ = maxL + Math.log(z);
        if (tModel == null) tModel = new float[vocabSize];
        if (n < vocabSize) java.util.Arrays.fill(tModel, Float.NEGATIVE_INFINITY);
        boolean identity = n == vocabSize;
        for (int i = 0; i < n && identity; i++) identity = cur.ids[i] == i; // as loaded: copy instead of scatter
        if (identity) System.arraycopy(lg, 0, tModel, 0, n);
        else for (int i = 0; i < n; i++) tModel[cur.ids[i]] = lg[i];
        for (int j = 0; j < m; j++) {
            int pos = tTopIds[j];
            tTopIds[j] = cur.ids[pos];
            tTopLp[j] = lg[pos] - tLogZ;
        }
    }
}
