package dev.tokenpress.sample;

/**
 * Divides the logits by the temperature (llama.cpp {@code temp}). A temperature {@code <= 0} keeps only the candidate
 * with the largest logit (greedy); llama.cpp sets all others to -inf, which selects the same token.
 */
public final class TemperatureSampler implements Sampler {
    private final float temp;

    public TemperatureSampler(double temp) {
        this.temp = (float) temp;
    }

    @Override
    public String name() {
        return "temp";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (temp <= 0f) {
            int best = cur.argmax();
            cur.ids[0] = cur.ids[best];
            cur.logits[0] = cur.logits[best];
            cur.probs[0] = 1f;
            cur.size = 1;
            cur.sorted = true;
            return;
        }
        if (temp == 1f) return;
        float[] lg = cur.logits;
        for (int i = 0; i < cur.size; i++) lg[i] /= temp;
    }
}
