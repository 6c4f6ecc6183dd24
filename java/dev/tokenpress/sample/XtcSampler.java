package dev.tokenpress.sample;

import java.util.SplittableRandom;

/**
 * XTC, "exclude top choices" (llama.cpp {@code xtc}): with chance {@code probability} per step, every candidate whose
 * probability is at least {@code threshold} is removed except the least likely of them, so a likely but not the most
 * likely choice is made; nothing happens when fewer than two candidates pass the threshold. A threshold above 0.5 or a
 * probability of 0 disables it. It draws from its own RNG (seeded like the chain), so turning it on does not change
 * the draws of the final token selection.
 */
public final class XtcSampler implements Sampler {
    private final float probability, threshold;
    private final long seed;
    private SplittableRandom rng;

    public XtcSampler(double probability, double threshold, long seed) {
        this.probability = (float) probability;
        this.threshold = (float) threshold;
        this.seed = seed;
        this.rng = new SplittableRandom(seed ^ 0x9E3779B97F4A7C15L);
    }

    @Override
    public String name() {
        return "xtc";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (probability <= 0f || threshold > 0.5f || cur.size < 2) return;
        if ((float) rng.nextDouble() > probability) return;
        cur.softmax(true);
        int last = 0;
        for (int i = 0; i < cur.size; i++) {
            if (cur.probs[i] >= threshold) last = i;
            else break;
        }
        if (last == 0) return;
        int keep = cur.size - last;
        System.arraycopy(cur.ids, last, cur.ids, 0, keep);
        System.arraycopy(cur.logits, last, cur.logits, 0, keep);
        System.arraycopy(cur.probs, last, cur.probs, 0, keep);
        cur.size = keep;
    }

    @Override
    public void reset() {
        rng = new SplittableRandom(seed ^ 0x9E3779B97F4A7C15L);
    }
}
