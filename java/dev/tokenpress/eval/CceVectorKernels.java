package dev.tokenpress.eval;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/** Vector API kernels: one FMA accumulator per row, lane reduction, then the scalar tail in order. */
final class CceVectorKernels extends CceKernels {
    private static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;

    CceVectorKernels() {
        if (F.length() < 4) throw new IllegalStateException("no useful vector width");
        FloatVector.zero(F).reduceLanes(VectorOperators.ADD);
    }

    @Override
    String name() {
        return "vector" + F.length();
    }

    @Override
    float dot(float[] a, int aOff, float[] b, int bOff, int d) {
        int l = F.length(), up = d - d % l, i = 0;
        FloatVector acc = FloatVector.zero(F);
        for (; i < up; i += l) acc = FloatVector.fromArray(F, a, aOff + i).fma(FloatVector.fromArray(F, b, bOff + i), acc);
        float s = acc.reduceLanes(VectorOperators.ADD);
        for (; i < d; i++) s = Math.fma(a[aOff + i], b[bOff + i], s);
        return s;
    }

    @Override
    void dot4(float[] h, int h0, int h1, int h2, int h3, float[] w, int wOff, int rows, int d, float[][] out) {
        int l = F.length(), up = d - d % l;
        float[] o0 = out[0], o1 = out[1], o2 = out[2], o3 = out[3];
        for (int j = 0; j < rows; j++) {
            int wo = wOff + j * d;
            FloatVector a0 = FloatVector.zero(F), a1 = a0, a2 = a0, a3 = a0;
            int i = 0;
            for (; i < up; i += l) {
                FloatVector wv = FloatVector.fromArray(F, w, wo + i);
                a0 = FloatVector.fromArray(F, h, h0 + i).fma(wv, a0);
                a1 = FloatVector.fromArray(F, h, h1 + i).fma(wv, a1);
                a2 = FloatVector.fromArray(F, h, h2 + i).fma(wv, a2);
                a3 = FloatVector.fromArray(F, h, h3 + i).fma(wv, a3);
            }
            float s0 = a0.reduceLanes(VectorOperators.ADD), s1 = a1.reduceLanes(VectorOperators.ADD);
            float s2 = a2.reduceLanes(VectorOperators.ADD), s3 = a3.reduceLanes(VectorOperators.ADD);
            for (; i < d; i++) {
                float wi = w[wo + i];
                s0 = Math.fma(h[h0 + i], wi, s0);
                s1 = Math.fma(h[h1 + i], wi, s1);
                s2 = Math.fma(h[h2 + i], wi, s2);
                s3 = Math.fma(h[h3 + i], wi, s3);
            }
            o0[j] = s0;
            o1[j] = s1;
            o2[j] = s2;
            o3[j] = s3;
        }
    }
}
