package dev.tokenpress.kv;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.model.Llama;

/**
 * Decides which tokens the KV cache keeps (eviction frees slots) and which slots each layer attends to
 * (selection). The forward pass calls these hooks; {@link #FULL} keeps everything and attends to everything.
 *
 * <p>Order of the calls ({@code Llama}): {@link #attach} once when the policy is installed; per
 * {@code prefill}: {@link #prefillTokens}, {@link #beginPrefill}, then per chunk {@link #beforeAppend} and the forward pass, then
 * {@link #endPrefill}; per decode step: {@link #beforeAppend} and the forward pass. In the forward pass, per
 * layer after the new keys/values are stored: {@link #beforeAttention}, {@link #select}, {@link #stats}, the
 * attention, {@link #afterAttention}.
 *
 * <p>A policy with state (scores, selections) belongs to one model and one sequence at a time; it starts
 * over when it sees a different or an emptied cache. Policies are made from spec strings by
 * {@link KvPolicies#parse}.
 */
public interface KvPolicy {

    /**
     * Called when the policy is installed on a model ({@code Llama.setPolicy}). A policy that needs the
     * backend (query-aware selection) or a calibration run on the model (RazorAttention's head probe) does it here.
     */
    default void attach(Llama model) {}

    /**
     * Called right before {@link #beginPrefill} with the ids of the prefill's tokens, {@code tokens[0..n)} (the array
     * is the caller's: copy what is kept). A policy that feeds the prompt to the model again (KVzip) keeps them.
     */
    default void prefillTokens(int[] tokens, int n) {}

    /** Called at the start of {@code Llama.prefill} for {@code total} tokens at positions [startPos, startPos + total). */
    default void beginPrefill(KvCache cache, int startPos, int total) {}

    /** Called at the end of {@code Llama.prefill}, after the last chunk; a prompt-compressing policy (SnapKV) compresses here. */
    default void endPrefill(KvCache cache) {}

    /** Called before n tokens at {@code positions} are appended; an evicting policy frees slots here. */
    default void beforeAppend(KvCache cache, int[] positions, int n) {}

    /**
     * Called per layer after the call's keys/values are stored and before {@link #select}, with the rotated
     * queries q [n, H*hd] of the call at {@code positions}: query-aware selection (Quest, TokenSelect) scores
     * the cache here through the backend.
     */
    default void beforeAttention(KvCache cache, int layer, Tensor q, int[] positions, int n) {}

    /** Slots per KV head that {@code layer} attends to for the current call, or null for all. */
    default SlotSelection select(KvCache cache, int layer, int n) { return null; }

    /** Statistics buffers the attention of {@code layer} should fill for the current call, or null. */
    default AttentionStats stats(KvCache cache, int layer, int n) { return null; }

    /** Called after the attention of {@code layer}, with the statistics it filled (null when none asked). */
    default void afterAttention(KvCache cache, int layer, int n, AttentionStats stats) {}

    /**
     * Whether a decode step may be queued before the caller has accepted its token and be taken back afterwards
     * ({@code Llama.decodeGreedy}'s pipelined loop frees the slots of such a step): true when the policy evicts
     * nothing and every per-step decision it keeps is made again at each step from that step's data. Default false.
     */
    default boolean speculationSafe() {
        return false;
    }

    /**
     * Free slots per KV head the policy needs beyond the sequence while a prefill of {@code promptTokens} tokens ends
     * (KVzip's reconstruction pass appends and frees them again); a caller that sizes a cache to the sequence adds
     * this. Default 0.
     */
    default int scratchSlots(int promptTokens) { return 0; }

    /** The spec string that recreates this policy, e.g. "full" or "window:sink=4,recent=252". */
    String spec();

    KvPolicy FULL = () -> "full";
}
