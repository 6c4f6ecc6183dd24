package dev.tokenpress.sample;

/** Selects the candidate with the largest logit (llama.cpp {@code greedy}); the first one on ties. */
public final class GreedySampler implements Sampler {
    @Override
    public String name() {
        return "greedy";
    }

    @Override
    public void apply(TokenDataArray cur) {
        cur.selected = cur.argmax();
    }
}
