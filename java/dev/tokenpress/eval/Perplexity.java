package dev.tokenpress.eval;

import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.model.Llama;

import java.util.Arrays;

/**
 * Teacher-forced perplexity with the KV policy acting exactly as during generation, against a baseline in the
 * same pass (llama-perplexity's KL-divergence mode).
 * <p>
 * For tokens {@code t[0..n)}: the policy's run prefills {@code t[0..P)} (P = {@code prefill}), then decodes
 * {@code t[P..n-1)} one token per {@link Llama#decodeStep}, so eviction and selection happen at every step, just as
 * in {@code generate}. The logits after the prefill predict {@code t[P]}; those after decoding {@code t[j-1]}
 * predict {@code t[j]}. Scored are the n − P predictions of {@code t[P..n)}; the prefilled tokens are context only.
 * <p>
 * The baseline runs the same positions in lockstep on its own cache. The {@code full} baseline is a chunked
 * prefill (one forward per {@link Llama#maxChunk()} rows, every row's logits kept for that chunk only): it is the
 * exact full-attention reference and much faster than decoding; any other baseline policy decodes like the policy.
 * Per scored position both rows are reduced to NLL, KL(baseline ‖ policy) over the full-vocabulary softmax,
 * argmax agreement and Δp, so memory is O(V) per step (O(maxChunk · V) for the full baseline's chunk).
 * <p>
 * One model serves both runs: each policy is wrapped so that it is attached to the model only once and keeps its
 * state while the other run uses the model.
 */
public final class Perplexity {
    private Perplexity() {}

    /** Receives progress: scored positions done, in all, and the running perplexity. */
    @FunctionalInterface
    public interface Progress {
        void update(int done, int total, double runningPpl);

        Progress NONE = (d, t, p) -> {};
    }

    /**
     * The figures of one evaluation.
     *
     * @param kv                 the policy's spec
     * @param baseline           the baseline's spec, or null when there was none
     * @param tokens             tokens evaluated (n)
     * @param prefill            tokens prefilled before decoding (P)
     * @param scored             predictions scored (n − P)
     * @param meanNll            policy's mean NLL, nats per scored token
     * @param nllStderr          standard error of meanNll
     * @param baselineNll        baseline's mean NLL over the same positions (NaN without a baseline)
     * @param baselineNllStderr  its standard error
     * @param meanKld            mean KL(baseline ‖ policy), nats
     * @param kldP99             99th percentile of the per-position KL
     * @param maxKld             maximum per-position KL
     * @param top1               fraction of positions with the same argmax
     * @param meanDeltaP         mean p_policy(target) − p_baseline(target)
     * @param rmsDeltaP          RMS of that difference
     * @param peakSlots          peak of the occupied KV slots summed over layers and KV heads
     * @param fullSlots          slots full attention occupies at its peak: the n − 1 tokens ever fed (the last
     *                           token is only predicted), times layers and KV heads
     * @param peakHighWater      highest slot index + 1 used by any (layer, head): the slots per head a cache needs
     * @param kvBytes            cache.bytes() of a cache with peakHighWater slots per head (allocated and measured)
     * @param fullKvBytes        cache.bytes() of a cache with n − 1 slots per head (what full attention needs)
     * @param decodeSteps        decode steps of the policy's run
     * @param decodeSeconds      wall time of those steps (forward + logits download), seconds
     * @param baselineSeconds    wall time of the baseline's forwards, seconds
     */
    public record Result(String kv, String baseline, int tokens, int prefill, int scored,
                         double meanNll, double nllStderr, double baselineNll, double baselineNllStderr,
                         double meanKld, double kldP99, double maxKld, double top1, double meanDeltaP, double rmsDeltaP,
                         long peakSlots, long fullSlots, int peakHighWater, long kvBytes, long fullKvBytes,
                         int decodeSteps, double decodeSeconds, double baselineSeconds) {
        public double ppl() { return Math.exp(meanNll); }

        /** Standard error of the perplexity (first-order: PPL · stderr(NLL)). */
        public double pplStderr() { return ppl() * nllStderr; }

        public double baselinePpl() { return Math.exp(baselineNll); }

        public double deltaPpl() { return ppl() - baselinePpl(); }

        /** Full-cache slots over the policy's peak occupied slots. */
        public double slotRatio() { return (double) fullSlots / peakSlots; }

        /** Full-cache bytes over the policy's cache bytes. */
        public double byteRatio() { return (double) fullKvBytes / kvBytes; }

        public double decodeTokensPerSecond() { return decodeSteps == 0 ? Double.NaN : decodeSteps / decodeSeconds; }
    }

    /**
     * Evaluates {@code policy} on {@code tokens} (all of them: the caller limits them to the context) against
     * {@code baseline} (null for none). The two must be distinct instances; the model's policy is {@code FULL}
     * afterwards.
     *
     * @param prefill tokens prefilled before decoding, 1 ≤ prefill < tokens.length
     */
    public static Result run(Llama model, int[] tokens, KvPolicy policy, KvPolicy baseline, int prefill, Progress progress) {
        return run(model, tokens, policy, baseline, prefill, 0, progress);
    }

    /**
     * As {@link #run(Llama, int[], KvPolicy, KvPolicy, int, Progress)} with the policy's cache sized to
     * {@code cacheSlots} slots per head (0 = tokens.length).
     */
    public static Result run(Llama model, int[] tokens, KvPolicy policy, KvPolicy baseline, int prefill, int cacheSlots,
                             Progress progress) {
        return run(model, tokens, policy, baseline, prefill, cacheSlots, null, progress);
    }

    /**
     * As {@link #run(Llama, int[], KvPolicy, KvPolicy, int, int, Progress)} with the policy's cache stored as
     * {@code quant} says (null or none: unquantized); the baseline's cache is never quantized. A quantized run is
     * labelled {@code "<policy spec> q:<quant spec>"}.
     */
    public static Result run(Llama model, int[] tokens, KvPolicy policy, KvPolicy baseline, int prefill, int cacheSlots,
                             KvQuantSpec quant, Progress progress) {
        return run(model, tokens, policy, baseline, prefill, cacheSlots, quant, null, progress);
    }

    /**
     * As {@link #run(Llama, int[], KvPolicy, KvPolicy, int, int, KvQuantSpec, Progress)} with each decoded token run
     * through the top layers SkipDecode's {@code skip} gives it (its schedule over the scored tokens; null = every
     * layer; the full policy only), labelled {@code "<spec> skip:<max>:<min>"}: what skipping layers costs.
     */
    public static Result run(Llama model, int[] tokens, KvPolicy policy, KvPolicy baseline, int prefill, int cacheSlots,
                             KvQuantSpec quant, dev.tokenpress.model.SkipDecode.Schedule skip, Progress progress) {
        int n = tokens.length;
        if (n < 2) throw new IllegalArgumentException("perplexity needs at least 2 tokens, got " + n);
        if (prefill < 1 || prefill >= n)
            throw new IllegalArgumentException("prefill must lie in [1, " + (n - 1) + "] for " + n + " tokens, got " + prefill);
        if (policy == null) policy = KvPolicy.FULL;
        if (baseline != null && baseline == policy && policy != KvPolicy.FULL)
            throw new IllegalArgumentException("the baseline and the policy must be separate instances (parse the spec twice)");
        if (progress == null) progress = Progress.NONE;
        int scored = n - prefill;
        KvCache pc = null, bc = null;
        try {
            pc = newCache(model, (cacheSlots > 0 ? cacheSlots : n) + policy.scratchSlots(prefill), quant); // + KVzip's pass
            DecodeRows pol = new DecodeRows(model, once(policy), pc, tokens, prefill);
            pol.skip = skip;
            Rows base = null;
            if (baseline != null) {
                bc = model.newCache(n);
                base = baseline == KvPolicy.FULL ? new PrefillRows(model, bc, tokens, prefill)
                        : new DecodeRows(model, once(baseline), bc, tokens, prefill);
            }
            KldStats st = new KldStats();
            long peakSlots = 0;
            int every = Math.max(1, scored / 100);
            for (int j = prefill; j < n; j++) {
                float[] q = pol.next();
                peakSlots = Math.max(peakSlots, occupied(pc));
                if (base != null) st.add(q, base.next(), tokens[j]);
                else st.add(q, tokens[j]);
                int done = j - prefill + 1;
                if (done % every == 0 || done == scored) progress.update(done, scored, Math.exp(st.meanNll()));
            }
            int hw = highWater(pc);
            // an unquantized cache of the high-water mark; a quantized one as it ends the run (its blocks), resized
            long kvBytes = quant == null || quant.isNone() ? bytesOf(model, hw, null) : pc.bytesWithCapacity(Math.max(1, hw));
            long fullBytes = bytesOf(model, n - 1, null);
            DecodeRows dp = (DecodeRows) pol;
            String label = quant == null || quant.isNone() ? policy.spec() : policy.spec() + " q:" + quant.spec();
            if (skip != null) label += " skip:" + skip.maxLayers() + ":" + skip.minLayers();
            return new Result(label, baseline == null ? null : baseline.spec(), n, prefill, scored,
                    st.meanNll(), st.nllStderr(), st.meanBaselineNll(), st.baselineNllStderr(),
                    st.meanKld(), st.kldQuantile(0.99), st.maxKld(), st.top1Agreement(), st.meanDeltaP(), st.rmsDeltaP(),
                    peakSlots, (long) (n - 1) * pc.layers() * pc.kvHeads(), hw, kvBytes, fullBytes,
                    dp.steps, dp.nanos / 1e9, base == null ? 0 : base.nanos() / 1e9);
        } finally {
            model.setPolicy(KvPolicy.FULL);
            if (pc != null) pc.close();
            if (bc != null) bc.close();
        }
    }

    /**
     * Runs a short prefill and {@code steps} full-attention decode steps on a scratch cache so that the JIT has
     * compiled the decode path before anything is timed (the first row would otherwise pay for it).
     */
    public static void warmUp(Llama model, int[] tokens, int steps) {
        int p = Math.min(8, tokens.length);
        model.setPolicy(KvPolicy.FULL);
        try (KvCache c = model.newCache(p + steps)) {
            model.prefill(c, Arrays.copyOf(tokens, p), 0, false, null);
            for (int i = 0; i < steps; i++) {
                model.decodeStep(c, tokens[(p + i) % tokens.length], p + i);
                model.logits();
            }
        }
    }

    /** cache.bytes() of a cache with {@code slots} slots per head, allocated for the measurement. */
    private static long bytesOf(Llama model, int slots, KvQuantSpec quant) {
        try (KvCache c = newCache(model, Math.max(1, slots), quant)) {
            return c.bytes();
        }
    }


    private static KvCache newCache(Llama model, int slots, KvQuantSpec quant) {
        return quant == null || quant.isNone() ? model.newCache(slots) : model.newCache(slots, quant);
    }

    private static long occupied(KvCache c) {
        long s = 0;
        for (int l = 0; l < c.layers(); l++) for (int g = 0; g < c.kvHeads(); g++) s += c.occupied(l, g);
        return s;
    }

    private static int highWater(KvCache c) {
        int m = 0;
        for (int l = 0; l < c.layers(); l++) for (int g = 0; g < c.kvHeads(); g++) m = Math.max(m, c.highWater(l, g));
        return m;
    }

    /** The logit rows predicting t[P], t[P+1], ... in order. */
    private interface Rows {
        float[] next();

        long nanos();
    }

    /** The policy's run: prefill t[0..P), then one decode step per token. */
    private static final class DecodeRows implements Rows {
        final Llama model;
        final KvPolicy policy;
        final KvCache cache;
        final int[] tokens;
        final int prefill;
        int next = -1; // the token index whose prediction comes next
        int steps;
        long nanos;
        dev.tokenpress.model.SkipDecode.Schedule skip; // SkipDecode's layers per decoded token (null: every layer)

        DecodeRows(Llama model, KvPolicy policy, KvCache cache, int[] tokens, int prefill) {
            this.model = model;
            this.policy = policy;
            this.cache = cache;
            this.tokens = tokens;
            this.prefill = prefill;
        }

        @Override
        public float[] next() {
            model.setPolicy(policy);
            if (next < 0) {
                model.prefill(cache, Arrays.copyOf(tokens, prefill), 0, false, null);
                next = prefill + 1;
                return model.logits();
            }
            long t0 = System.nanoTime();
            if (skip == null) model.decodeStep(cache, tokens[next - 1], next - 1);
            else model.decodeStepFrom(cache, tokens[next - 1], next - 1, skip.firstLayer(steps, model.config.numLayers()));
            float[] row = model.logits(); // downloads (and so waits for) the step's logits
            nanos += System.nanoTime() - t0;
            steps++;
            next++;
            return row;
        }

        @Override
        public long nanos() { return nanos; }
    }

    /** The full-attention baseline: chunked prefill keeping one chunk of logit rows. */
    private static final class PrefillRows implements Rows {
        final Llama model;
        final KvCache cache;
        final int[] tokens;
        final int prefill;
        final int vocab;
        float[] buf;
        int bufStart, bufRows; // buf holds rows [bufStart, bufStart + bufRows)
        int fed;               // tokens run so far
        int row = -1;          // the row returned next (row r predicts t[r + 1])
        long nanos;

        PrefillRows(Llama model, KvCache cache, int[] tokens, int prefill) {
            this.model = model;
            this.cache = cache;
            this.tokens = tokens;
            this.prefill = prefill;
            this.vocab = model.config.vocabSize();
        }

        @Override
        public float[] next() {
            model.setPolicy(KvPolicy.FULL);
            long t0 = System.nanoTime();
            float[] out;
            if (row < 0) {
                model.prefill(cache, Arrays.copyOf(tokens, prefill), 0, false, null);
                fed = prefill;
                row = prefill;
                out = model.logits();
            } else {
                int r = row++;
                if (r >= bufStart + bufRows) {
                    int m = Math.min(model.maxChunk(), tokens.length - 1 - fed);
                    buf = model.prefill(cache, Arrays.copyOfRange(tokens, fed, fed + m), fed, true, null);
                    bufStart = fed;
                    bufRows = m;
                    fed += m;
                }
                out = Arrays.copyOfRange(buf, (r - bufStart) * vocab, (r - bufStart + 1) * vocab);
            }
            nanos += System.nanoTime() - t0;
            return out;
        }

        @Override
        public long nanos() { return nanos; }
    }

    /** Wraps a policy so that installing it again on the model does not reset its state. */
    static KvPolicy once(KvPolicy p) {
        if (p == KvPolicy.FULL) return p;
        return new dev.tokenpress.kv.ForwardingPolicy(p) {
            boolean attached;

            @Override
            public void attach(Llama model) {
                if (!attached) p.attach(model);
                attached = true;
            }
        };
    }
}
