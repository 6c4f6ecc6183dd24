package dev.tokenpress.eval;

/**
 * Dot-product kernels of {@link CceLse}. Every dot uses one accumulation order per row (independent of how many rows
 * are computed together), so a logit has the same float value in the log-sum-exp pass and in the target pass.
 */
abstract class CceKernels {

    /** Vector API kernels when the jdk.incubator.vector module is present, else scalar ones. */
    static final CceKernels INSTANCE = pick();

    private static CceKernels pick() {
        try {
            Class.forName("jdk.incubator.vector.FloatVector");
            return (CceKernels) Class.forName("dev.tokenpress.eval.CceVectorKernels").getDeclaredConstructor()
                    .newInstance();
        } catch (Throwable t) {
            return new Scalar();
        }
    }

    /** The implementation's name, for logs. */
    abstract String name();

    /** {@code a[aOff..aOff+d) . b[bOff..bOff+d)}. */
    abstract float dot(float[] a, int aOff, float[] b, int bOff, int d);

    /**
     * Dots of four rows of {@code h} (offsets h0..h3) with {@code rows} consecutive rows of {@code w} starting at
     * {@code wOff}; results go to {@code out[0][j]..out[3][j]} for j in [0, rows).
     */
    abstract void dot4(float[] h, int h0, int h1, int h2, int h3, float[] w, int wOff, int rows, int d,
                       float[][] out);

    /** Portable fallback: 8 interleaved partial sums per row, the same order in {@code dot} and {@code dot4}. */
    static final class Scalar extends CceKernels {
        @Override
        String name() {
            return "scalar";
        }

        @Override
        float dot(float[] a, int aOff, float[] b, int bOff, int d) {
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
            int i = 0, up = d - d % 8;
            for (; i < up; i += 8) {
                s0 += a[aOff + i] * b[bOff + i];
                s1 += a[aOff + i + 1] * b[bOff + i + 1];
                s2 += a[aOff + i + 2] * b[bOff + i + 2];
                s3 += a[aOff + i + 3] * b[bOff + i + 3];
                s4 += a[aOff + i + 4] * b[bOff + i + 4];
                s5 += a[aOff + i + 5] * b[bOff + i + 5];
                s6 += a[aOff + i + 6] * b[bOff + i + 6];
                s7 += a[aOff + i + 7] * b[bOff + i + 7];
            }
            float s = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
            for (; i < d; i++) s += a[aOff + i] * b[bOff + i];
            return s;
        }

        @Override
        void dot4(float[] h, int h0, int h1, int h2, int h3, float[] w, int wOff, int rows, int d, float[][] out) {
            for (int j = 0; j < rows; j++) {
                int wo = wOff + j * d;
                out[0][j] = dot(h, h0, w, wo, d);
                out[1][j] = dot(h, h1, w, wo, d);
                out[2][j] = dot(h, h2, w, wo, d);
                out[3][j] = dot(h, h3, w, wo, d);
            }
        }
    }
}
