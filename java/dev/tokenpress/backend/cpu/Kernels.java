package dev.tokenpress.backend.cpu;

/** Inner loops of the CPU backend: a Vector API implementation and a scalar fallback with the same results up to rounding. */
interface Kernels {
    /** Σ a[aOff+i]·b[bOff+i], i < len. */
    float dot(float[] a, int aOff, float[] b, int bOff, int len);

    /**
     * Dot of a bf16 row with x, the row given as ints each packing two bf16 values (element 2j in the low half,
     * 2j+1 in the high half, i.e. the little-endian file layout) and x split into its even (xe) and odd (xo)
     * elements: Σ_j bf16lo(w[j])·xe[j] + bf16hi(w[j])·xo[j], j < pairs.
     */
    float dotBf16(int[] w, float[] xe, float[] xo, int xOff, int pairs);

    /** y[yOff+i] += a·x[xOff+i], i < len. */
    void axpy(float a, float[] x, int xOff, float[] y, int yOff, int len);

    /** Σ x[off+i]², i < len, accumulated in float lanes. */
    float sumSquares(float[] x, int off, int len);

    String describe();

    static Kernels best() {
        if (!Boolean.getBoolean("tokenpress.scalar")) {
            try {
                return new VectorKernels();
            } catch (Throwable t) {
                // jdk.incubator.vector not resolved (launched without --add-modules): fall through
            }
        }
        return new ScalarKernels();
    }
}
