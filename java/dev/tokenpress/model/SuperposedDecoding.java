package dev.tokenpress.model;

import dev.tokenpress.kv.KvCache;
import dev.tokenpress.sample.NGramModel;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Set;

/**
 * Superposed Decoding (Shen et al. 2024, arXiv 2405.18400; RAIVNLab/SuperposedDecoding): k drafts from one
 * autoregressive pass. After the prompt, every step feeds one input vector, the embedding rows of the k drafts' last
 * tokens weighted by the drafts' probabilities (softmax of their cumulative log-probabilities; a token several drafts
 * end with gets their summed weight), so one KV stream serves all drafts. From the step's distribution
 * (softmax(logits / temperature), its top {@code topTokens} renormalized) each draft scores the candidates
 * v with (1 − α)·ln p(v) + α·ln p_ngram(v | draft), p_ngram interpolating the n-gram model's orders with fixed weights
 * (a draft none of whose candidates the n-grams know gets (1 − α)·ln p(v) − penalty); draft and candidate pairs are
 * ranked by cumulative log-probability, the best 2k kept, and of those the best k unfinished ones continue while
 * the ones ending with an end token join the finished drafts (the best k kept). On the first step every draft is the
 * prompt, so the 2k best candidates come from one draft. Without an n-gram model (or α = 0) the drafts share one
 * distribution and differ only by their paths. Defaults are the authors' (p15_d3 parameters): 3 drafts, 9 tokens,
 * α = 0.54, temperature 0.06, weights 0.01, 0.04, 0.15, 0.18, 0.12 for contexts of 1 to 5 tokens, penalty 200.
 */
public final class SuperposedDecoding {
    /** The authors' n-gram interpolation weights for contexts of 1 to 5 tokens (bigram to sixgram). */
    public static final double[] DEFAULT_NGRAM_WEIGHTS = {0.01, 0.04, 0.15, 0.18, 0.12};

    /**
     * @param drafts       k drafts (at least 1)
     * @param topTokens    the step distribution's top tokens each draft may extend with (at least 2k)
     * @param alpha        the n-gram model's weight in the interpolated log-probability, 0..1
     * @param temperature  divides the logits before the softmax (> 0)
     * @param ngramWeights weight of the n-gram estimate with a context of i + 1 tokens (length ≤ the model's contexts)
     * @param penalty      subtracted where the n-gram model knows none of a draft's candidates
     */
    public record Options(int drafts, int topTokens, double alpha, double temperature, double[] ngramWeights, double penalty) {
        public Options {
            if (drafts < 1) throw new IllegalArgumentException("superposed decoding needs at least one draft");
            if (topTokens < 2 * drafts)
                throw new IllegalArgumentException("superposed decoding keeps the best 2k candidates: top tokens must be >= " + 2 * drafts);
            if (!(alpha >= 0 && alpha <= 1)) throw new IllegalArgumentException("alpha must be in [0, 1], got " + alpha);
            if (!(temperature > 0)) throw new IllegalArgumentException("the temperature must be > 0, got " + temperature);
            ngramWeights = ngramWeights.clone();
        }

        public static Options defaults(int drafts) {
            return new Options(drafts, Math.max(9, 2 * drafts), 0.54, 0.06, DEFAULT_NGRAM_WEIGHTS, 200);
        }
    }

    /**
     * A draft: its generated tokens, their cumulative score (the interpolated log-probabilities, penalties included) and
     * whether it ended with an end token.
     */
    public record Draft(int[] tokens, double logProb, boolean finished) {
        /** The score per token (higher is better; comparable across drafts of different lengths). */
        public double meanLogProb() { return tokens.length == 0 ? 0 : logProb / tokens.length; }
    }

    /**
     * The drafts still running (best first) and the finished ones (best first) when generation stopped, the steps run,
     * and the seconds of the prompt's prefill and of the steps after it.
     */
    public record Result(List<Draft> alive, List<Draft> finished, int steps, double prefillSeconds, double stepSeconds,
                         boolean cacheFull) {}

    /** −∞ of the authors' code for excluded candidates: large, finite, so a draft can still rank below another. */
    static final double EXCLUDED = 1e7;

    private final Options o;
    private final NGramModel ngrams;

    /** @param ngrams the n-gram side table (null: none, the drafts share the step's distribution) */
    public SuperposedDecoding(Options options, NGramModel ngrams) {
        this.o = options;
        this.ngrams = ngrams;
        if (ngrams != null && options.ngramWeights().length > ngrams.maxContext())
            throw new IllegalArgumentException("n-gram weights for contexts up to " + options.ngramWeights().length
                    + " tokens, the n-gram model counts up to " + ngrams.maxContext());
    }

    /**
     * Prefills {@code prompt} at {@code position} into {@code cache} and generates {@code maxTokens} steps of k drafts
     * (fewer when every draft has finished or the cache is full). Each generated step after the first is one
     * {@link Llama#decodeStepEmbedded}.
     */
    public Result generate(Llama model, KvCache cache, int[] prompt, int position, int maxTokens, Set<Integer> endTokens) {
        if (prompt.length == 0) throw new IllegalArgumentException("superposed decoding needs a prompt of at least one token");
        int k = o.drafts();
        long t0 = System.nanoTime();
        model.prefill(cache, prompt, position, false, null);
        model.logits(); // the prefill's last row, so the prefill's time is its own
        long t1 = System.nanoTime();
        State st = new State(prompt, k);
        float[] emb = new float[model.config.hiddenSize()], row = new float[emb.length];
        int steps = 0;
        for (int s = 0; s < maxTokens; s++) {
            float[] logits = model.logits();
            step(st, logits, endTokens, s == 0);
            steps++;
            if (s + 1 == maxTokens || st.allFinished()) break;
            // the next input: the drafts' last tokens weighted by the drafts' probabilities
            double[] w = st.mixingWeights();
            Arrays.fill(emb, 0f);
            for (int d = 0; d < k; d++) {
                if (w[d] == 0) continue;
                model.embeddingRow(st.last(d), row);
                for (int i = 0; i < emb.length; i++) emb[i] += (float) (w[d] * row[i]);
            }
            try {
                model.decodeStepEmbedded(cache, emb, position + prompt.length + s);
            } catch (dev.tokenpress.kv.KvCacheFullException e) { // a full cache ends the drafts as plain decoding ends
                st.cacheFull = true;
                break;
            }
        }
        return st.result(steps, (t1 - t0) / 1e9, (System.nanoTime() - t1) / 1e9);
    }

    /** The drafts: their generated tokens and cumulative log-probabilities, and the finished drafts. */
    static final class State {
        final int[] prompt;
        int[][] alive;
        double[] aliveLp;
        final List<Draft> fin = new ArrayList<>();
        boolean cacheFull;

        State(int[] prompt, int k) {
            this.prompt = prompt;
            alive = new int[k][0];
            aliveLp = new double[k];
        }

        int last(int d) { return alive[d][alive[d].length - 1]; }

        boolean allFinished() {
            for (double lp : aliveLp) if (lp > -EXCLUDED / 2) return false;
            return true;
        }

        /** Softmax over the drafts' cumulative log-probabilities (a draft's weight goes to its last token's row). */
        double[] mixingWeights() {
            double max = Double.NEGATIVE_INFINITY, sum = 0;
            for (double lp : aliveLp) max = Math.max(max, lp);
            double[] w = new double[aliveLp.length];
            for (int d = 0; d < w.length; d++) sum += w[d] = Math.exp(aliveLp[d] - max);
            for (int d = 0; d < w.length; d++) w[d] /= sum;
            return w;
        }

        Result result(int steps, double prefillSeconds, double stepSeconds) {
            List<Draft> a = new ArrayList<>();
            for (int d = 0; d < alive.length; d++) a.add(new Draft(alive[d], aliveLp[d], false));
            return new Result(a, List.copyOf(fin), steps, prefillSeconds, stepSeconds, cacheFull);
        }
    }

    /** One step of the drafts from the logits of the step's input (package-private for the tests). */
    void step(State st, float[] logits, Set<Integer> endTokens, boolean first) {
        int k = o.drafts();
        int[] top = topTokens(logits, o.topTokens());
        int t = top.length; // fewer where the vocabulary is smaller
        // softmax(logits / T) renormalized over its top tokens: the vocabulary's sum cancels, so only they are needed
        double[] p = new double[t];
        double zt = 0, max = logits[top[0]] / o.temperature();
        for (int j = 0; j < t; j++) zt += p[j] = Math.exp(logits[top[j]] / o.temperature() - max);
        for (int j = 0; j < t; j++) p[j] /= zt;
        int drafts = first ? 1 : k;
        double[][] lp = new double[drafts][t];
        for (int d = 0; d < drafts; d++) lp[d] = draftLogProbs(st, d, top, p);
        // the best 2k (draft, candidate) pairs by cumulative log-probability (ties: lower draft, then higher p)
        int n = drafts * t, keep = Math.min(2 * k, n);
        Integer[] idx = new Integer[n];
        for (int i = 0; i < n; i++) idx[i] = i;
        double[] score = new double[n];
        for (int i = 0; i < n; i++) score[i] = st.aliveLp[i / t] + lp[i / t][i % t];
        Arrays.sort(idx, (a, b) -> {
            int c = Double.compare(score[b], score[a]);
            return c != 0 ? c : Integer.compare(a, b);
        });
        int[][] candSeq = new int[keep][];
        double[] candLp = new double[keep];
        boolean[] done = new boolean[keep];
        for (int c = 0; c < keep; c++) {
            int i = idx[c], d = i / t, v = top[i % t];
            candSeq[c] = Arrays.copyOf(st.alive[d], st.alive[d].length + 1);
            candSeq[c][st.alive[d].length] = v;
            candLp[c] = score[i];
            done[c] = endTokens.contains(v);
        }
        // the best k unfinished continue (finished ones pushed down by EXCLUDED), the finished join the finished drafts
        Integer[] order = new Integer[keep];
        for (int c = 0; c < keep; c++) order[c] = c;
        double[] aliveScore = new double[keep];
        for (int c = 0; c < keep; c++) aliveScore[c] = candLp[c] - (done[c] ? EXCLUDED : 0);
        Arrays.sort(order, (a, b) -> {
            int c = Double.compare(aliveScore[b], aliveScore[a]);
            return c != 0 ? c : Integer.compare(a, b);
        });
        int[][] nextAlive = new int[k][];
        double[] nextLp = new double[k];
        for (int d = 0; d < k; d++) {
            int c = order[Math.min(d, keep - 1)];
            nextAlive[d] = candSeq[c];
            nextLp[d] = aliveScore[c];
        }
        for (int c = 0; c < keep; c++) if (done[c]) st.fin.add(new Draft(candSeq[c], candLp[c], true));
        st.fin.sort((a, b) -> Double.compare(b.logProb(), a.logProb()));
        while (st.fin.size() > k) st.fin.remove(st.fin.size() - 1);
        st.alive = nextAlive;
        st.aliveLp = nextLp;
    }

    /**
     * Draft d's interpolated log-probabilities of the candidates: (1 − α)·ln p + α·ln p_ngram, p_ngram the weighted
     * sum of the n-gram estimates of the contexts the sequence (prompt + draft) is long enough for, leaving out the
     * contexts the model never saw; every candidate −∞ (the n-grams know none): (1 − α)·ln p − penalty.
     */
    double[] draftLogProbs(State st, int d, int[] top, double[] p) {
        int t = top.length;
        double[] lp = new double[t];
        if (ngrams == null || o.alpha() == 0) {
            for (int j = 0; j < t; j++) lp[j] = Math.log(p[j]);
            return lp;
        }
        int[] seq = new int[st.prompt.length + st.alive[d].length];
        System.arraycopy(st.prompt, 0, seq, 0, st.prompt.length);
        System.arraycopy(st.alive[d], 0, seq, st.prompt.length, st.alive[d].length);
        double a = o.alpha();
        boolean any = false;
        for (int j = 0; j < t; j++) {
            double ng = 0;
            for (int i = 0; i < o.ngramWeights().length && i + 1 <= seq.length; i++) {
                double q = ngrams.prob(seq, seq.length, i + 1, top[j]);
                if (q >= 0) ng += o.ngramWeights()[i] * q;
            }
            lp[j] = (1 - a) * Math.log(p[j]) + a * Math.log(ng);
            any |= lp[j] != Double.NEGATIVE_INFINITY;
        }
        if (!any) for (int j = 0; j < t; j++) lp[j] = (1 - a) * Math.log(p[j]) - o.penalty();
        return lp;
    }

    /** The {@code n} largest logits' tokens, largest first (ties: lower token). */
    static int[] topTokens(float[] logits, int n) {
        int m = Math.min(n, logits.length), size = 0;
        int[] out = new int[m];
        for (int v = 0; v < logits.length; v++) { // insertion into the m best so far (m is small)
            float x = logits[v];
            if (size == m && !(x > logits[out[m - 1]])) continue;
            int at = size == m ? m - 1 : size++;
            while (at > 0 && x > logits[out[at - 1]]) {
                out[at] = out[at - 1];
                at--;
            }
            out[at] = v;
        }
        return out;
    }
}
