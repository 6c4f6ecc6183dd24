package dev.tokenpress.sample;

import java.util.SplittableRandom;

/**
 * Mirostat 1.0 (Basu et al. 2021) as llama.cpp implements it ({@code mirostat}): estimates the Zipf exponent
 * {@code s} from the top {@code m} probabilities, derives the top-k that would give surprise {@code mu}, samples from
 * the renormalised top-k, and moves {@code mu} by {@code -eta * (surprise - tau)}. Starts with {@code mu = 2 tau}.
 */
public final class MirostatSampler implements Sampler {
    private final int nVocab, m;
    private final double tau, eta;
    private final long seed;
    private double mu;
    private SplittableRandom rng;

    public MirostatSampler(int nVocab, long seed, double tau, double eta, int m) {
        this.nVocab = nVocab;
        this.seed = seed;
        this.tau = tau;
        this.eta = eta;
        this.m = m;
        this.mu = 2 * tau;
        this.rng = new SplittableRandom(seed);
    }

    /** The current target surprise threshold mu (bits). */
    public double mu() {
        return mu;
    }

    @Override
    public String name() {
        return "mirostat";
    }

    @Override
    public void apply(TokenDataArray cur) {
        // probabilities over all candidates; then only the top m need to be in order
        cur.softmax(false);
        int mm = Math.min(m, cur.size);
        int[] top = cur.topIndices(mm);
        double sumTiBi = 0, sumTiSq = 0;
        for (int i = 0; i < mm - 1; i++) {
            double ti = Math.log((i + 2) / (double) (i + 1));
            double bi = Math.log((double) cur.probs[top[i]] / cur.probs[top[i + 1]]);
            sumTiBi += ti * bi;
            sumTiSq += ti * ti;
        }
        double sHat = sumTiBi / sumTiSq;
        double epsHat = sHat - 1;
        double k = Math.pow(epsHat * Math.pow(2, mu) / (1 - Math.pow(nVocab, -epsHat)), 1 / sHat);
        int kk = Double.isNaN(k) ? 1 : (int) Math.max(Math.min(k, Integer.MAX_VALUE), 1);
        cur.truncateTopK(kk);
        cur.softmax(true);
        int idx = DistSampler.draw(cur, rng);
        cur.selected = idx;
        double surprise = -log2(cur.probs[idx]);
        mu -= eta * (surprise - tau);
    }

    static double log2(double x) {
        return Math.log(x) / Math.log(2);
    }

    @Override
    public void reset() {
        mu = 2 * tau;
        rng = new SplittableRandom(seed);
    }
}
