package dev.tokenpress.sample;

import java.util.SplittableRandom;

/**
 * Draws a token from the softmax of the live candidates (llama.cpp {@code dist}); leaves normalised probabilities in
 * {@link TokenDataArray#probs}.
 */
public final class DistSampler implements Sampler {
    private final long seed;
    private SplittableRandom rng;

    public DistSampler(long seed) {
        this.seed = seed;
        this.rng = new SplittableRandom(seed);
    }

    @Override
    public String name() {
        return "dist";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (cur.size == 0) {
            cur.selected = -1;
            return;
        }
        cur.selected = 0;
        if (cur.size == 1) {
            cur.probs[0] = 1f;
            return;
        }
        cur.selected = draw(cur, rng);
    }

    /**
     * Softmax of the live logits (normalised into probs) and one draw: the first index whose running sum of
     * unnormalised weights reaches {@code u * total}, {@code u} uniform in [0, 1).
     */
    static int draw(TokenDataArray cur, SplittableRandom rng) {
        int n = cur.size;
        float[] lg = cur.logits, pr = cur.probs;
        float maxL = cur.sorted ? lg[0] : lg[cur.argmax()];
        double sum = 0;
        for (int i = 0; i < n; i++) {
            float p = (float) Math.exp(lg[i] - maxL);
            pr[i] = p;
            sum += p;
        }
        double target = sum * rng.nextDouble();
        double run = 0;
        int chosen = -1;
        for (int i = 0; i < n; i++) {
            if (pr[i] <= 0f) continue; // never pick a zero-probability candidate
            run += pr[i];
            chosen = i;
            if (run >= target) break;
        }
        float inv = (float) (1.0 / sum);
        for (int i = 0; i < n; i++) pr[i] *= inv;
        return chosen < 0 ? 0 : chosen;
    }

    @Override
    public void reset() {
        rng = new SplittableRandom(seed);
    }
}
