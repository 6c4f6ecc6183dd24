package dev.tokenpress.model;

/**
 * Proposes the tokens that speculative decoding ({@link Llama#decodeSpeculative}) checks: the target model runs the
 * current token and the draft in one forward pass and keeps the draft's prefix that its own choice agrees with.
 */
public interface Drafter {
    /**
     * Up to {@code max} tokens that may follow {@code seq[0..len)}, whose last token is the one about to be fed
     * (at position {@code len - 1}; token i of the sequence is at position i). May return fewer, or none.
     */
    int[] draft(int[] seq, int len, int max);
}
