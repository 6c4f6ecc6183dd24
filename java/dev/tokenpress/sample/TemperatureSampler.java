package dev.tokenpress.sample;

/**
 * Divides the logits by the temperature (llama.cpp {@code temp}, and {@code temp-ext} with a dynamic range). A
 * temperature {@code <= 0} keeps only the candidate with the largest logit (greedy); llama.cpp sets all others to -inf,
 * which selects the same token. With {@code range > 0} (dynamic temperature, "DynaTemp") the temperature of a step is
 * {@code lo + (hi - lo) * (H / Hmax)^exp} with lo = max(0, temp - range), hi = temp + range, H the entropy of the
 * candidates' softmax and Hmax = ln(size):
 * confident steps cool, uncertain ones heat up.
 */
public final class TemperatureSampler implements Sampler {
    private final float temp, range, exponent;

    public TemperatureSampler(double temp) {
        this(temp, 0, 1);
    }

    public TemperatureSampler(double temp, double range, double exponent) {
        this.temp = (float) temp;
        this.range = (float) range;
        this.exponent = (float) exponent;
    }

    @Override
    public String name() {
        return range > 0f ? "temp-ext" : "temp";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (range > 0f) {
            if (cur.size <= 1) return;
            float minTemp = Math.max(0f, temp - range), maxTemp = temp + range;
            float maxEntropy = (float) -Math.log(1.0 / cur.size);
            cur.softmax(true);
            float entropy = 0f;
            for (int i = 0; i < cur.size; i++) {
                float p = cur.probs[i];
                if (p > 0f) entropy -= p * (float) Math.log(p);
            }
            float dyn = minTemp + (maxTemp - minTemp) * (float) Math.pow(entropy / maxEntropy, exponent);
            scale(cur, dyn);
            cur.softmax(false);
            return;
        }
        scale(cur, temp);
    }

    private static void scale(TokenDataArray cur, float t) {
        if (t <= 0f) {
            int best = cur.argmax();
            cur.ids[0] = cur.ids[best];
            cur.logits[0] = cur.logits[best];
            cur.probs[0] = 1f;
            cur.size = 1;
            cur.sorted = true;
            return;
        }
        if (t == 1f) return;
        float[] lg = cur.logits;
        for (int i = 0; i < cur.size; i++) lg[i] /= t;
    }
}
