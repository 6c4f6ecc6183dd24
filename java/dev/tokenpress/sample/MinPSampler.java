package dev.tokenpress.sample;

/**
 * Min-p (llama.cpp {@code min-p}): keeps candidates with {@code p >= minP * pmax}, implemented on logits as
 * {@code logit >= maxLogit + ln(minP)}, keeping at least {@code minKeep}. {@code minP <= 0} disables.
 */
public final class MinPSampler implements Sampler {
    private final float p;
    private final int minKeep;

    public MinPSampler(double p, int minKeep) {
        this.p = (float) p;
        this.minKeep = Math.max(minKeep, 1);
    }

    public MinPSampler(double p) {
        this(p, 1);
    }

    @Override
    public String name() {
        return "min-p";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (p <= 0f || cur.size == 0) return;
        float lnP = (float) Math.log(p);
        if (!cur.sorted) {
            float maxL = cur.logits[cur.argmax()];
            float minLogit = maxL + lnP;
            int count = 0;
            for (int i = 0; i < cur.size; i++) if (cur.logits[i] >= minLogit) count++;
            if (count >= minKeep) {
                // compact in place, keeping the order (write index never passes the read index)
                int w = 0;
                int[] ids = cur.ids;
                float[] lg = cur.logits, pr = cur.probs;
                for (int i = 0; i < cur.size; i++) {
                    if (lg[i] >= minLogit) {
                        ids[w] = ids[i];
                        lg[w] = lg[i];
                        pr[w] = pr[i];
                        w++;
                    }
                }
                cur.size = w;
                return;
            }
            cur.sortDescending();
        }
        float minLogit = cur.logits[0] + lnP;
        int i = 1; // the first token always passes
        for (; i < cur.size; i++) {
            if (cur.logits[i] < minLogit && i >= minKeep) break;
        }
        cur.size = i;
    }
}
