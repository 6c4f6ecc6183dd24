package dev.tokenpress.sample;

/**
 * One stage of a sampling chain, like llama.cpp's {@code llama_sampler}: it transforms the candidate list (filters,
 * rescales, or selects a token by setting {@link TokenDataArray#selected}).
 */
public interface Sampler {
    /** The name llama.cpp prints for this stage, e.g. {@code top-k}. */
    String name();

    /** Transforms the candidates in place. */
    void apply(TokenDataArray cur);

    /** Called with every token that becomes part of the context (prompt and generated). */
    default void accept(int token) {}

    /** Forgets the accepted history and adaptive state (the RNG restarts from the same seed). */
    default void reset() {}
}
