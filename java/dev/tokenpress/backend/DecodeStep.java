package dev.tokenpress.backend;

import dev.tokenpress.kv.KvCache;

/**
 * Everything that changes from one decode step to the next, gathered before the step runs so a backend can
 * replay a captured step (a CUDA graph) after writing these values into device memory, without re-running
 * the Java code of the forward pass.
 *
 * @param token    the input token id
 * @param position its position in the sequence
 * @param slots    [layer][kvHead] the cache slot allocated for this token (already recorded in the cache)
 * @param cache    the KV cache the step reads and writes
 */
public record DecodeStep(int token, int position, int[][] slots, KvCache cache) {}
