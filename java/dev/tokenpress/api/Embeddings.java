package dev.tokenpress.api;

import dev.tokenpress.kv.KvCache;

import java.util.Locale;

/**
 * Text embeddings from the model's final hidden states (after the last RMSNorm), pooled over the tokens: {@code last}
 * (the last token's state, what decoder-based embedding models such as gte-Qwen2 or e5-mistral use, and vLLM's default
 * for them) or {@code mean}; L2-normalized unless asked otherwise. (No first-token pooling: under causal attention the
 * first token's state depends on that token alone, the same BOS for every text.) Each text runs under full attention
 * in a cache this object keeps and grows as needed (close it to free it); the model's KV policy does not apply. The
 * tokenizer's post-processor decides the special tokens (a BOS, or an EOS some embedding models expect at the end).
 */
public final class Embeddings implements AutoCloseable {
    /** How the token states become one vector. */
    public enum Pooling {
        LAST, MEAN;

        /** "last" or "mean". */
        public static Pooling parse(String s) {
            try {
                return valueOf(s.trim().toUpperCase(Locale.ROOT));
            } catch (IllegalArgumentException e) {
                throw new IllegalArgumentException("pooling must be last or mean, not '" + s + "'");
            }
        }
    }

    private final TokenPress tp;
    private KvCache cache;

    public Embeddings(TokenPress tp) {
        this.tp = tp;
    }

    @Override
    public void close() {
        if (cache != null) cache.close();
        cache = null;
    }

    /** The embedding of a text (tokenized with the model's tokenizer). */
    public float[] embed(String text, Pooling pooling, boolean normalize) {
        return embed(tp.tokenizer().encode(text), pooling, normalize);
    }

    /** The embedding of a token sequence (at least one token). */
    public float[] embed(int[] tokens, Pooling pooling, boolean normalize) {
        if (tokens.length == 0) throw new IllegalArgumentException("nothing to embed: the input has no tokens");
        int d = tp.config().hiddenSize();
        if (cache == null || cache.capacity() < tokens.length) {
            if (cache != null) cache.close();
            cache = null;
            cache = tp.model().newCache(Math.max(tokens.length, 256));
        } else {
            cache.clear();
        }
        float[] h = tp.model().hiddenStates(cache, tokens);
        float[] out = new float[d];
        switch (pooling) {
            case LAST -> System.arraycopy(h, (tokens.length - 1) * d, out, 0, d);
            case MEAN -> {
                double[] acc = new double[d];
                for (int t = 0; t < tokens.length; t++) for (int i = 0; i < d; i++) acc[i] += h[t * d + i];
                for (int i = 0; i < d; i++) out[i] = (float) (acc[i] / tokens.length);
            }
        }
        if (normalize) {
            double n2 = 0;
            for (float x : out) n2 += (double) x * x;
            if (n2 > 0) {
                float inv = (float) (1 / Math.sqrt(n2));
                for (int i = 0; i < d; i++) out[i] *= inv;
            }
        }
        return out;
    }
}
