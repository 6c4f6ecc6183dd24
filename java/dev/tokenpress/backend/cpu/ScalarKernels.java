package dev.tokenpress.backend.cpu;

/** Plain Java loops: the fallback when the Vector API module is not available. */
final class ScalarKernels implements Kernels {
    @Override
    public float dot(float[] a, int aOff, float[] b, int bOff, int len) {
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 3 < len; i += 4) {
            s0 += a[aOff + i] * b[bOff + i];
            s1 += a[aOff + i + 1] * b[bOff + i + 1];
            s2 += a[aOff + i + 2] * b[bOff + i + 2];
            s3 += a[aOff + i + 3] * b[bOff + i + 3];
        }
        for (; i < len; i++) s0 += a[aOff + i] * b[bOff + i];
        return (s0 + s1) + (s2 + s3);
    }

    @Override
    public float dotBf16(int[] w, float[] xe, float[] xo, int xOff, int pairs) {
        float s0 = 0, s1 = 0;
        for (int j = 0; j < pairs; j++) {
            int p = w[j];
            s0 += Float.intBitsToFloat(p << 16) * xe[xOff + j];
            s1 += Float.intBitsToFloat(p & 0xFFFF0000) * xo[xOff + j];
        }
        return s0 + s1;
    }

    @Override
    public void axpy(float a, float[] x, int xOff, float[] y, int yOff, int len) {
        for (int i = 0; i < len; i++) y[yOff + i] += a * x[xOff + i];
    }

    @Override
    public float sumSquares(float[] x, int off, int len) {
        float s = 0;
        for (int i = 0; i < len; i++) s += x[off + i] * x[off + i];
        return s;
    }

    @Override
    public String describe() {
        return "scalar";
    }
}
