package dev.tokenpress.sample;

/**
 * Diagnostics of one sampling step (enable with {@link SamplerChain#setTrace(boolean)}).
 * <p>
 * The "model distribution" is the softmax at temperature 1 of the logits after the penalties (the raw logits when
 * Mirostat is on, since its chain has no penalties), before any truncation. The top-k indicators follow Shi et al.,
 * "Understanding Likelihood Over-optimisation in Direct Alignment Algorithms" (arXiv:2410.11677), with k the chain's
 * top-k (40 when top-k is disabled).
 *
 * @param token        the sampled token
 * @param entropy      entropy of the model distribution, in nats
 * @param topKEntropy  entropy of the top-k probabilities renormalised to sum 1, in nats
 * @param topKMass     sum of the (un-renormalised) model probabilities of the top-k tokens
 * @param surprise     {@code -log2 p(token)} under the final distribution the token was drawn from, in bits
 * @param mirostatMu   Mirostat's mu after the step (bits), NaN when Mirostat is off
 * @param logprob      {@code ln p(token)} under the model distribution
 * @param topTokens    the {@link SamplerChain#TRACE_TOP_LOGPROBS} most likely tokens of the model distribution (fewer
 *                     if the vocabulary is smaller), most likely first
 * @param topLogprobs  their natural-log probabilities under the model distribution
 */
public record StepTrace(int token, double entropy, double topKEntropy, double topKMass, double surprise,
                        double mirostatMu, double logprob, int[] topTokens, double[] topLogprobs) {}
