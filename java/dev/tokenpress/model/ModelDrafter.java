package dev.tokenpress.model;

import dev.tokenpress.kv.KvCache;

import java.util.Arrays;

/**
 * Drafts with a smaller model that shares the target's vocabulary (speculative decoding, as llama.cpp's
 * {@code --model-draft}): the draft model decodes greedily in its own KV cache, up to the requested number of tokens,
 * and stops early once its most likely token's probability falls below {@code pMin} (after at least {@code minDraft}
 * tokens), since an unsure draft is seldom accepted and costs a draft step each.
 * <p>
 * The cache follows the sequence it is asked about: each call keeps the longest prefix it shares with what the cache
 * holds and feeds the rest, so rejected drafts, truncated or reset sessions need no notice. The last drafted token is
 * not fed (it is fed with the next call if accepted). {@link #selfDraft} makes a draft model of the target's first
 * layers (self-speculative decoding with an early exit, as Draft &amp; Verify and LayerSkip; no second model loaded).
 */
public final class ModelDrafter implements Drafter, AutoCloseable {
    private final Llama model;
    private final KvCache cache;
    private final int minDraft;
    private final float pMin;
    private double stopRejection;     // SpecDec++'s stop threshold on P(some drafted token is rejected); 0 = off
    private int[] held = new int[64]; // the tokens in the cache, token i at position i
    private int heldLen;

    /**
     * @param model    the draft model (its vocabulary must be the target's; see {@link #checkVocabulary})
     * @param capacity KV cache size of the draft, at least the target's context
     * @param minDraft tokens drafted before {@code pMin} may stop a draft
     * @param pMin     least probability of the draft model's greedy token to go on drafting (0 = always go on)
     */
    public ModelDrafter(Llama model, int capacity, int minDraft, float pMin) {
        if (minDraft < 0) throw new IllegalArgumentException("draft-min must be >= 0, got " + minDraft);
        if (!(pMin >= 0 && pMin <= 1)) throw new IllegalArgumentException("draft-p-min must be in [0, 1], got " + pMin);
        this.model = model;
        this.cache = model.newCache(capacity);
        this.minDraft = minDraft;
        this.pMin = pMin;
    }

    /**
     * A draft model made of the target's embedding, first {@code layers} layers, final norm and LM head (the same
     * weight tensors, nothing copied), on the target's backend.
     */
    public static Llama selfDraft(Llama target, int layers) {
        LlamaConfig c = target.config;
        if (layers < 1 || layers > c.numLayers())
            throw new IllegalArgumentException("draft layers must be in [1, " + c.numLayers() + "], got " + layers);
        LlamaConfig dc = new LlamaConfig(c.architecture(), c.modelType(), c.hiddenSize(), c.intermediateSize(), layers,
                c.numHeads(), c.numKvHeads(), c.headDim(), c.vocabSize(), c.rmsNormEps(), c.ropeTheta(), c.ropeScaling(),
                c.maxPositionEmbeddings(), c.tieWordEmbeddings(), c.attentionBias(), c.slidingWindow(), c.bosTokenId(),
                c.eosTokenIds(), c.torchDtype());
        Weights w = target.weights();
        Weights dw = new Weights(w.embed(), Arrays.copyOf(w.layers(), layers), w.finalNorm(), w.lmHead());
        return new Llama(dc, dw, target.backend, target.maxChunk());
    }

    /** Throws unless a draft model's logits index the target's tokens (same vocabulary size in both configs). */
    public static void checkVocabulary(LlamaConfig target, LlamaConfig draft) {
        if (target.vocabSize() != draft.vocabSize())
            throw new IllegalArgumentException("the draft model's vocabulary has " + draft.vocabSize()
                    + " tokens, the model's " + target.vocabSize() + ": use a draft model with the same tokenizer");
    }

    public Llama model() { return model; }

    /**
     * SpecDec++'s stopping rule (arXiv 2405.19715; Kaffaljidhmah2/SpecDec_pp): drafting stops once the estimated
     * probability that at least one drafted token is rejected, 1 − Π p_acc, exceeds {@code threshold} (the authors'
     * example: 0.7), the token drafted at that point included; {@code minDraft} tokens always go. The authors train
     * a head on the draft model's hidden states for p_acc; here p_acc of a token is the draft model's own probability
     * of it (no trained head), and, in their order, the product at the n-th token covers the tokens before it. 0 turns
     * the rule off. Applies on top of {@code pMin}.
     */
    public void setStopRejection(double threshold) {
        if (!(threshold >= 0 && threshold < 1)) throw new IllegalArgumentException("the stop threshold must be in [0, 1), got " + threshold);
        stopRejection = threshold;
    }

    public double stopRejection() { return stopRejection; }

    /** Bytes of the draft model's KV cache. */
    public long cacheBytes() { return cache.bytes(); }

    @Override
    public int[] draft(int[] seq, int len, int max) {
        if (len < 1 || max <= 0) return new int[0];
        max = Math.min(max, cache.capacity() - len + 1); // drafts 0..max-2 are fed at positions len..len+max-2
        if (max <= 0) return new int[0];
        sync(seq, len);
        int[] out = new int[max];
        int n = 0;
        double accepted = 1, previous = 1; // SpecDec++: Π p_acc of the tokens before the latest, and the latest's p
        while (n < max) {
            int t = model.argmax();
            double p = pMin > 0 || stopRejection > 0 ? probability(model.logits(), t) : 1;
            if (pMin > 0 && n >= minDraft && p < pMin) break;
            out[n++] = t;
            if (stopRejection > 0) {
                if (n >= 2) accepted *= previous;
                previous = p;
                if (n >= minDraft && 1 - accepted > stopRejection) break;
            }
            if (n == max) break;
            try {
                model.decodeStep(cache, t, len - 1 + n); // d_(n-1) at position len + n - 1
            } catch (RuntimeException | Error e) {
                cache.freeFrom(heldLen);
                throw e;
            }
            hold(new int[] {t}, 1);
        }
        return Arrays.copyOf(out, n);
    }

    /**
     * The draft model's logits after {@code seq[0..len)} ([V]): its cache is brought to that sequence first (the
     * common prefix kept, the rest fed). For methods that consult the smaller model at every step (entropy-adaptive
     * decoding).
     */
    public float[] logitsAfter(int[] seq, int len) {
        if (len < 1 || len > cache.capacity()) throw new IllegalArgumentException("sequence of " + len + " tokens for a cache of " + cache.capacity());
        sync(seq, len);
        return model.logits();
    }

    /** Keeps what the cache shares with seq[0..len-1), feeds the rest: the model's logits then follow seq[len-1]. */
    private void sync(int[] seq, int len) {
        int keep = 0, lim = Math.min(heldLen, len - 1);
        while (keep < lim && held[keep] == seq[keep]) keep++;
        int w = model.slidingWindow();
        if (heldLen > keep && w > 0 && heldLen > w) { // the window freed tokens a rollback would need: feed again
            cache.clear();
            keep = 0;
        }
        if (heldLen > keep) cache.freeFrom(keep);
        heldLen = keep;
        int[] feed = Arrays.copyOfRange(seq, keep, len);
        try {
            if (feed.length == 1) model.decodeStep(cache, feed[0], keep);
            else model.prefill(cache, feed, keep, false, null);
        } catch (RuntimeException | Error e) {
            cache.freeFrom(keep); // whatever part of the feed got in: the cache holds exactly held[0, keep) again
            throw e;
        }
        hold(feed, feed.length);
    }

    private void hold(int[] tokens, int n) {
        if (heldLen + n > held.length) held = Arrays.copyOf(held, Math.max(2 * held.length, heldLen + n));
        System.arraycopy(tokens, 0, held, heldLen, n);
        heldLen += n;
    }

    /** softmax(logits)[t]. */
    static double probability(float[] logits, int t) {
        float max = dev.tokenpress.sample.LogitRows.max(logits, 0, logits.length);
        return Math.exp(logits[t] - max) / dev.tokenpress.sample.LogitRows.expSum(logits, 0, logits.length, max);
    }

    @Override
    public void close() {
        cache.close();
    }

    @Override
    public String toString() {
        return "draft model (" + model.config.numLayers() + " layers)";
    }
}
