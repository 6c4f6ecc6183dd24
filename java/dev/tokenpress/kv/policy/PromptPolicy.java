package dev.tokenpress.kv.policy;

/**
 * Base of the policies that compress a prompt once, when its prefill ends ({@link #onEndPrefill}), with scores of
 * their own, and append without eviction while decoding (KVzip, Compactor).
 */
abstract class PromptPolicy extends EvictingPolicy {
    protected PromptPolicy(String spec) {
        super(spec);
    }

    @Override
    protected boolean scored() { return false; }

    @Override
    protected boolean chunks() { return false; }

    @Override
    protected int keepBefore(int layer, int head, int n) { return Integer.MAX_VALUE; }

    @Override
    protected int protectRecent(int n) { return 0; }
}
