package dev.tokenpress.api;

/**
 * What one generation did and how fast.
 *
 * @param text            the generated text (without the prompt)
 * @param tokens          generated token ids
 * @param promptTokens    number of prompt tokens
 * @param stopReason      "eos" (an EOS or stop token), "length" (-n reached), "context" (cache full) or "stop" (the
 *                        caller's stop request, e.g. a stop string)
 * @param prefillMillis   time of the prompt's forward pass
 * @param decodeSteps     decode forward passes run (each produced one sampled token)
 * @param decodeMillis    time of those decode steps including sampling
 * @param ttftMillis      time to first token (prefill + first sampling)
 * @param kvBytes         bytes allocated for the KV cache
 * @param seed            sampler seed used
 */
public record GenerationResult(String text, int[] tokens, int promptTokens, String stopReason, double prefillMillis,
                               int decodeSteps, double decodeMillis, double ttftMillis, long kvBytes, long seed) {

    /** Prompt tokens per second. */
    public double prefillTokensPerSecond() {
        return prefillMillis <= 0 ? 0 : promptTokens * 1000.0 / prefillMillis;
    }

    /** Decode tokens per second (decode steps per second). */
    public double decodeTokensPerSecond() {
        return decodeMillis <= 0 ? 0 : decodeSteps * 1000.0 / decodeMillis;
    }
}
