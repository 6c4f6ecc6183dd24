package dev.tokenpress.backend.cpu;

/**
 * The CPU backend's inner loops for host-side work outside the backend (a KV policy scoring on the host, whatever the
 * backend): the Vector API kernels where the module is there, the scalar ones otherwise, with the same results up to
 * rounding ({@link Kernels}).
 */
public final class HostMath {
    private static final Kernels K = Kernels.best();

    private HostMath() {}

    /** Σ a[aOff+i]·b[bOff+i], i < len. */
    public static float dot(float[] a, int aOff, float[] b, int bOff, int len) {
        return K.dot(a, aOff, b, bOff, len);
    }

    /** Four dots of b[bOff, +len) with a[aOff + i·aStride, +len), i < 4, into out[0, 4) (the loads of b shared). */
    public static void dot4(float[] a, int aOff, int aStride, float[] b, int bOff, int len, float[] out) {
        K.dot4(a, aOff, aStride, b, bOff, len, out);
    }

    /**
     * Softmax numerators in place: x[off+i] = e^(x[off+i] − max) for i < len (−∞ gives 0); returns their sum, in
     * double ({@link Kernels#expShifted}).
     */
    public static double expShifted(float[] x, int off, int len, float max) {
        return K.expShifted(x, off, len, max);
    }
}
