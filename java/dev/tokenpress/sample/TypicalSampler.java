package dev.tokenpress.sample;

/**
 * Locally typical sampling (llama.cpp {@code typical}, Meister et al. 2022): with {@code H = -sum p ln p}, orders the
 * candidates by {@code |-ln p - H|} ascending and keeps the shortest prefix whose cumulative probability exceeds
 * {@code typicalP} (at least {@code minKeep}). The result is not sorted by logit. {@code typicalP >= 1} disables.
 */
public final class TypicalSampler implements Sampler {
    private final float p;
    private final int minKeep;

    public TypicalSampler(double p, int minKeep) {
        this.p = (float) p;
        this.minKeep = Math.max(minKeep, 1);
    }

    public TypicalSampler(double p) {
        this(p, 1);
    }

    @Override
    public String name() {
        return "typical";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (p >= 1.0f) return;
        cur.softmax(true);
        int n = cur.size;
        double entropy = 0;
        for (int i = 0; i < n; i++) {
            float pi = cur.probs[i];
            if (pi > 0f) entropy -= pi * Math.log(pi);
        }
        float[] score = cur.floatScratch();
        for (int i = 0; i < n; i++) score[i] = (float) Math.abs(-Math.log(cur.probs[i]) - entropy);
        int[] order = cur.orderByAscending(score);
        float cum = 0f;
        int last = n;
        for (int i = 0; i < n; i++) {
            cum += cur.probs[order[i]];
            if (cum > p && i >= minKeep - 1) {
                last = i + 1;
                break;
            }
        }
        cur.keep(order, last);
    }
}
