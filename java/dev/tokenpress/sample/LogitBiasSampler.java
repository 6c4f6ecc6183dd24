package dev.tokenpress.sample;

import java.util.Map;

/**
 * Adds a fixed bias to the logits of chosen tokens (llama.cpp's {@code logit-bias}, OpenAI's {@code logit_bias});
 * {@code -infinity} bans a token. First in the chain, as in llama.cpp.
 */
public final class LogitBiasSampler implements Sampler {
    private final int[] ids;
    private final float[] bias;

    /** @param bias token id → bias added to its logit (ids outside the vocabulary are refused) */
    public LogitBiasSampler(Map<Integer, Float> bias, int vocabSize) {
        ids = new int[bias.size()];
        this.bias = new float[bias.size()];
        int i = 0;
        for (var e : bias.entrySet()) {
            if (e.getKey() < 0 || e.getKey() >= vocabSize)
                throw new IllegalArgumentException("logit bias for token " + e.getKey() + ", outside the vocabulary [0, " + vocabSize + ")");
            if (Float.isNaN(e.getValue())) throw new IllegalArgumentException("logit bias for token " + e.getKey() + " is NaN");
            ids[i] = e.getKey();
            this.bias[i++] = e.getValue();
        }
    }

    @Override
    public String name() {
        return "logit-bias";
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (ids.length == 0) return;
        if (cur.size == cur.capacity() && !cur.sorted && identity(cur)) { // the full vocabulary in id order
            for (int i = 0; i < ids.length; i++) cur.logits[ids[i]] += bias[i];
        } else {
            java.util.Map<Integer, Float> m = new java.util.HashMap<>();
            for (int i = 0; i < ids.length; i++) m.merge(ids[i], bias[i], Float::sum);
            for (int j = 0; j < cur.size; j++) {
                Float b = m.get(cur.ids[j]);
                if (b != null) cur.logits[j] += b;
            }
        }
        cur.sorted = false;
    }

    private boolean identity(TokenDataArray cur) {
        for (int i = 0; i < ids.length; i++) if (cur.ids[ids[i]] != ids[i]) return false;
        return true;
    }
}
