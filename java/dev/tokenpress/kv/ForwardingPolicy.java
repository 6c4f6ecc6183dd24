package dev.tokenpress.kv;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.model.Llama;

/**
 * A policy that passes every hook to another: the base of wrappers that add to some hooks (they override those and
 * call super), so a hook added to {@link KvPolicy} reaches the wrapped policy without each wrapper having to know it.
 */
public class ForwardingPolicy implements KvPolicy {
    protected final KvPolicy delegate;

    public ForwardingPolicy(KvPolicy delegate) {
        this.delegate = delegate;
    }

    @Override
    public void attach(Llama model) { delegate.attach(model); }

    @Override
    public void prefillTokens(int[] tokens, int n) { delegate.prefillTokens(tokens, n); }

    @Override
    public void beginPrefill(KvCache cache, int startPos, int total) { delegate.beginPrefill(cache, startPos, total); }

    @Override
    public void endPrefill(KvCache cache) { delegate.endPrefill(cache); }

    @Override
    public void beforeAppend(KvCache cache, int[] positions, int n) { delegate.beforeAppend(cache, positions, n); }

    @Override
    public void beforeAttention(KvCache cache, int layer, Tensor q, int[] positions, int n) {
        delegate.beforeAttention(cache, layer, q, positions, n);
    }

    @Override
    public SlotSelection select(KvCache cache, int layer, int n) { return delegate.select(cache, layer, n); }

    @Override
    public AttentionStats stats(KvCache cache, int layer, int n) { return delegate.stats(cache, layer, n); }

    @Override
    public void afterAttention(KvCache cache, int layer, int n, AttentionStats stats) {
        delegate.afterAttention(cache, layer, n, stats);
    }

    @Override
    public boolean speculationSafe() { return delegate.speculationSafe(); }

    @Override
    public int scratchSlots(int promptTokens) { return delegate.scratchSlots(promptTokens); }

    @Override
    public String spec() { return delegate.spec(); }
}
