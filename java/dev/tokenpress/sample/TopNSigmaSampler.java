package dev.tokenpress.sample;

/**
 * Top-n-sigma (Tang et al., "Top-nσ: Not All Logits Are You Need", 2024; llama.cpp {@code top-n-sigma}): keeps the
 * candidates whose logit is at least {@code max - n * sigma}, with the mean and standard deviation (population) taken
 * over the finite logits. {@code n <= 0} disables. The candidates come out sorted with their probabilities.
 */
public final class TopNSigmaSampler implements Sampler {
    private final double n;

    public TopNSigmaSampler(double n) {
        this.n = n;
    }

    @Override
    public String name() {
        return "top-n-sigma";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (n <= 0 || cur.size <= 1) return;
        float[] lg = cur.logits;
        float max = lg[0];
        double sum = 0;
        int valid = 0;
        for (int i = 0; i < cur.size; i++) {
            if (lg[i] == Float.NEGATIVE_INFINITY) continue;
            if (lg[i] > max) max = lg[i];
            sum += lg[i];
            valid++;
        }
        double mean = valid > 0 ? sum / valid : 0;
        double acc = 0;
        for (int i = 0; i < cur.size; i++) if (lg[i] != Float.NEGATIVE_INFINITY) acc += (lg[i] - mean) * (lg[i] - mean);
        float sigma = valid > 0 ? (float) Math.sqrt(acc / valid) : 0f;
        float cut = max - (float) n * sigma;
        int w = 0;
        for (int i = 0; i < cur.size; i++) {
            if (lg[i] < cut) continue;
            cur.ids[w] = cur.ids[i];
            lg[w] = lg[i];
            cur.probs[w] = cur.probs[i];
            w++;
        }
        boolean wasSorted = cur.sorted;
        cur.size = w;
        cur.sorted = wasSorted;
        cur.softmax(true);
    }
}
