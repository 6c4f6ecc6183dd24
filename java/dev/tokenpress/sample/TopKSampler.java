package dev.tokenpress.sample;

/** Keeps the k candidates with the largest logits, sorted (llama.cpp {@code top-k}); k <= 0 disables. */
public final class TopKSampler implements Sampler {
    private final int k;

    public TopKSampler(int k) {
        this.k = k;
    }

    /** The k it keeps (0 or less: off). */
    public int k() {
        return k;
    }

    @Override
    public String name() {
        return "top-k";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (k <= 0) return;
        cur.truncateTopK(k); // partial selection, not a full sort, for small k
    }
}
