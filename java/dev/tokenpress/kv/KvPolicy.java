package dev.tokenpress.kv;

/**
 * Decides which tokens the KV cache keeps (eviction frees slots) and which slots each layer attends to
 * (selection). The forward pass calls these hooks; {@link #FULL} keeps everything and attends to everything.
 */
public interface KvPolicy {

    /** Called before n tokens at {@code positions} are appended; an evicting policy frees slots here. */
    default void beforeAppend(KvCache cache, int[] positions, int n) {}

    /** Slots per KV head that {@code layer} attends to for the current call, or null for all. */
    default SlotSelection select(KvCache cache, int layer, int n) { return null; }

    /** Statistics buffers the attention of {@code layer} should fill for the current call, or null. */
    default AttentionStats stats(KvCache cache, int layer, int n) { return null; }

    /** Called after the attention of {@code layer}, with the statistics it filled (null when none asked). */
    default void afterAttention(KvCache cache, int layer, int n, AttentionStats stats) {}

    /** The spec string that recreates this policy, e.g. "full" or "window:sink=4,recent=252". */
    String spec();

    KvPolicy FULL = () -> "full";
}
