package dev.tokenpress.backend.cpu;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/** Vector API loops (jdk.incubator.vector), preferred species width, scalar tails. */
final class VectorKernels implements Kernels {
    private static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Integer> I = IntVector.SPECIES_PREFERRED;

    VectorKernels() {
        if (F.length() < 4 || F.length() != I.length()) throw new IllegalStateException("no useful vector width");
        // touch the API once so a missing module fails here, not in the middle of a forward pass
        FloatVector.zero(F).reduceLanes(VectorOperators.ADD);
    }

    @Override
    public float dot(float[] a, int aOff, float[] b, int bOff, int len) {
        int l = F.length();
        int upper = len - len % (2 * l);
        FloatVector acc0 = FloatVector.zero(F), acc1 = FloatVector.zero(F);
        int i = 0;
        for (; i < upper; i += 2 * l) {
            acc0 = FloatVector.fromArray(F, a, aOff + i).fma(FloatVector.fromArray(F, b, bOff + i), acc0);
            acc1 = FloatVector.fromArray(F, a, aOff + i + l).fma(FloatVector.fromArray(F, b, bOff + i + l), acc1);
        }
        float s = acc0.add(acc1).reduceLanes(VectorOperators.ADD);
        for (; i < len; i++) s += a[aOff + i] * b[bOff + i];
        return s;
    }

    @Override
    public float dotBf16(int[] w, float[] xe, float[] xo, int xOff, int pairs) {
        int l = I.length();
        int upper = pairs - pairs % (2 * l);
        FloatVector a0 = FloatVector.zero(F), a1 = FloatVector.zero(F), a2 = FloatVector.zero(F), a3 = FloatVector.zero(F);
        int j = 0;
        for (; j < upper; j += 2 * l) {
            IntVector p = IntVector.fromArray(I, w, j);
            IntVector q = IntVector.fromArray(I, w, j + l);
            FloatVector pe = p.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
            FloatVector po = p.and(0xFFFF0000).reinterpretAsFloats();
            FloatVector qe = q.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
            FloatVector qo = q.and(0xFFFF0000).reinterpretAsFloats();
            a0 = pe.fma(FloatVector.fromArray(F, xe, xOff + j), a0);
            a1 = po.fma(FloatVector.fromArray(F, xo, xOff + j), a1);
            a2 = qe.fma(FloatVector.fromArray(F, xe, xOff + j + l), a2);
            a3 = qo.fma(FloatVector.fromArray(F, xo, xOff + j + l), a3);
        }
        float s = a0.add(a1).add(a2.add(a3)).reduceLanes(VectorOperators.ADD);
        for (; j < pairs; j++) {
            int p = w[j];
            s += Float.intBitsToFloat(p << 16) * xe[xOff + j] + Float.intBitsToFloat(p & 0xFFFF0000) * xo[xOff + j];
        }
        return s;
    }

    @Override
    public void axpy(float a, float[] x, int xOff, float[] y, int yOff, int len) {
        int l = F.length();
        int upper = len - len % l;
        FloatVector av = FloatVector.broadcast(F, a);
        int i = 0;
        for (; i < upper; i += l) {
            FloatVector.fromArray(F, x, xOff + i).fma(av, FloatVector.fromArray(F, y, yOff + i)).intoArray(y, yOff + i);
        }
        for (; i < len; i++) y[yOff + i] += a * x[xOff + i];
    }

    @Override
    public float sumSquares(float[] x, int off, int len) {
        int l = F.length();
        int upper = len - len % l;
        FloatVector acc = FloatVector.zero(F);
        int i = 0;
        for (; i < upper; i += l) {
            FloatVector v = FloatVector.fromArray(F, x, off + i);
            acc = v.fma(v, acc);
        }
        float s = acc.reduceLanes(VectorOperators.ADD);
        for (; i < len; i++) s += x[off + i] * x[off + i];
        return s;
    }

    @Override
    public String describe() {
        return "Vector API " + F.vectorBitSize() + "-bit";
    }
}
