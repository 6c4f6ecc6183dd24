package dev.tokenpress.sample;

/**
 * A sampling stage that restricts which tokens may come next so the generated text keeps a form (JSON, a grammar):
 * it drops the candidates that would break the form and the end tokens until the text is complete.
 */
public interface TokenConstraint extends Sampler {
    /** From now on, accepted tokens are the constrained text (call after the prompt). */
    void begin();

    /** Whether token {@code id} may come next (what {@link #apply} keeps). */
    boolean allows(int id);

    /**
     * Tells the stage that the chain keeps only the {@code k} largest remaining candidates after it (top-k; 0 = no
     * such stage), so it may check candidates best-first and stop once k are allowed. Default: ignored.
     */
    default void limitTo(int k) {}
}
