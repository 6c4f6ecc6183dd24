package dev.tokenpress.sample;

import java.util.SplittableRandom;

/**
 * Mirostat 2.0 as defined by llama.cpp ({@code mirostat-v2}): keeps the candidates whose surprise
 * {@code -log2 p} is at most {@code mu} (at least the most likely one), samples from them renormalised, and moves
 * {@code mu} by {@code -eta * (surprise - tau)} with the surprise under the renormalised distribution.
 * Starts with {@code mu = 2 tau}.
 */
public final class MirostatV2Sampler implements Sampler {
    private final double tau, eta;
    private final long seed;
    private double mu;
    private SplittableRandom rng;

    public MirostatV2Sampler(long seed, double tau, double eta) {
        this.seed = seed;
        this.tau = tau;
        this.eta = eta;
        this.mu = 2 * tau;
        this.rng = new SplittableRandom(seed);
    }

    /** The current surprise threshold mu (bits). */
    public double mu() {
        return mu;
    }

    @Override
    public String name() {
        return "mirostat-v2";
    }

    @Override
    public void apply(TokenDataArray cur) {
        // Same set as "sort, then cut at the first token with surprise > mu": surprise is monotone in the logit, so
        // filter first and sort only the survivors.
        cur.softmax(false);
        int n = cur.size;
        int[] pos = cur.posScratch();
        int kept = 0;
        float minP = (float) Math.pow(2, -mu); // -log2 p > mu  <=>  p < 2^-mu
        float[] pr = cur.probs;
        for (int i = 0; i < n; i++) {
            if (pr[i] > 0f && !(pr[i] < minP)) pos[kept++] = i;
        }
        if (kept == 0) {
            cur.truncateTopK(1);
        } else {
            if (kept < n) cur.keep(pos, kept);
            cur.sortDescending();
        }
        cur.softmax(true);
        int idx = DistSampler.draw(cur, rng);
        cur.selected = idx;
        double surprise = -MirostatSampler.log2(cur.probs[idx]);
        mu -= eta * (surprise - tau);
    }

    @Override
    public void reset() {
        mu = 2 * tau;
        rng = new SplittableRandom(seed);
    }
}
