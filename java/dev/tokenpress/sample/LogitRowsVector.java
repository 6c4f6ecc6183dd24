package dev.tokenpress.sample;

import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.LongVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorSpecies;

/**
 * {@link LogitRows}' loops on the Vector API: floats widened to doubles lane by lane (the preferred double shape, a
 * float shape of as many lanes), {@link LogitRows#exp}'s operations in every lane. Sums keep {@link LogitRows#LANES}
 * = 8 interleaved accumulators (element i into accumulator i mod 8: one vector of 8 doubles, or two of 4), added in
 * accumulator order at the end, then the tail in order — the scalar loops' order, so every sum has the same bits on
 * any machine, with or without the Vector API. Loaded only where the module is present and the double shape has 4 or
 * 8 lanes.
 */
final class LogitRowsVector implements LogitRows.Impl {
    private static final VectorSpecies<Double> D = DoubleVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Float> F = VectorSpecies.of(float.class, VectorShape.forBitSize(D.vectorBitSize() / 2));
    private static final VectorSpecies<Float> FM = FloatVector.SPECIES_PREFERRED;

    private static final int L = D.length();
    private static final boolean TWO = L == 4; // two vectors per 8 accumulators

    LogitRowsVector() {
        if (F.length() != L) throw new IllegalStateException("no float shape of " + L + " lanes");
        if (L != 8 && L != 4) throw new IllegalStateException("double vectors of " + L + " lanes: the scalar loops");
        exp(DoubleVector.zero(D)); // resolves the module now (the constructor fails without it)
    }

    /** {@link LogitRows#exp} in every lane (x <= 0). */
    static DoubleVector exp(DoubleVector x) {
        VectorMask<Double> under = x.compare(VectorOperators.LT, LogitRows.FLOOR);
        DoubleVector xc = x.blend(LogitRows.FLOOR, under);
        DoubleVector t = xc.lanewise(VectorOperators.FMA, LogitRows.LOG2E, LogitRows.MAGIC);
        DoubleVector n = t.sub(LogitRows.MAGIC);
        DoubleVector r = n.lanewise(VectorOperators.FMA, -LogitRows.LN2_HI, xc);
        r = n.lanewise(VectorOperators.FMA, -LogitRows.LN2_LO, r);
        DoubleVector p = DoubleVector.broadcast(D, LogitRows.C[13]);
        for (int k = 12; k >= 0; k--) p = p.lanewise(VectorOperators.FMA, r, DoubleVector.broadcast(D, LogitRows.C[k]));
        LongVector bits = t.reinterpretAsLongs().sub(LogitRows.MAGIC_BITS - 1023).lanewise(VectorOperators.LSHL, 52);
        DoubleVector scale = bits.reinterpretAsDoubles();
        return p.mul(scale).blend(0.0, under);
    }

    private static DoubleVector widen(float[] x, int i) {
        return (DoubleVector) FloatVector.fromArray(F, x, i).convertShape(VectorOperators.F2D, D, 0);
    }

    /** The 8 accumulators (lanes of a, then of b when the shape has 4 lanes) added in order. */
    private static double sum8(DoubleVector a, DoubleVector b) {
        double s = 0;
        for (double x : a.toArray()) s += x;
        if (TWO) for (double x : b.toArray()) s += x;
        return s;
    }

    @Override
    public float max(float[] x, int off, int n) {
        int i = 0, l = FM.length();
        FloatVector m = FloatVector.broadcast(FM, Float.NEGATIVE_INFINITY);
        for (; i + l <= n; i += l) m = m.max(FloatVector.fromArray(FM, x, off + i));
        float r = m.reduceLanes(VectorOperators.MAX);
        for (; i < n; i++) r = Math.max(r, x[off + i]);
        return r;
    }

    @Override
    public int indexOf(float[] x, int off, int n, float m) {
        int i = 0, l = FM.length();
        for (; i + l <= n; i += l) {
            int f = FloatVector.fromArray(FM, x, off + i).compare(VectorOperators.EQ, m).firstTrue();
            if (f < l) return i + f;
        }
        for (; i < n; i++) if (x[off + i] == m) return i;
        return -1;
    }

    @Override
    public double expSum(float[] x, int off, int n, float m) {
        int i = 0;
        DoubleVector a = DoubleVector.zero(D), b = a;
        for (; i + LogitRows.LANES <= n; i += LogitRows.LANES) {
            a = a.add(exp(widen(x, off + i).sub(m)));
            if (TWO) b = b.add(exp(widen(x, off + i + 4).sub(m)));
        }
        return LogitRows.expSumTail(x, off, i, n, m, sum8(a, b));
    }

    /** e·d, 0 where e is 0 (d may be -inf there). */
    private static DoubleVector times(DoubleVector e, DoubleVector d) {
        return e.mul(d).blend(0.0, e.compare(VectorOperators.EQ, 0.0));
    }

    @Override
    public void entropySums(float[] x, int off, int n, float m, double[] out) {
        int i = 0;
        DoubleVector z = DoubleVector.zero(D), z2 = z, zd = z, zd2 = z;
        for (; i + LogitRows.LANES <= n; i += LogitRows.LANES) {
            DoubleVector d = widen(x, off + i).sub(m), e = exp(d);
            z = z.add(e);
            zd = zd.add(times(e, d));
            if (TWO) {
                DoubleVector d2 = widen(x, off + i + 4).sub(m), e2 = exp(d2);
                z2 = z2.add(e2);
                zd2 = zd2.add(times(e2, d2));
            }
        }
        LogitRows.entropyTail(x, off, i, n, m, sum8(z, z2), sum8(zd, zd2), out);
    }

    @Override
    public double expInto(float[] x, int n, float m, float[] out) {
        int i = 0;
        DoubleVector a = DoubleVector.zero(D), b = a;
        for (; i + LogitRows.LANES <= n; i += LogitRows.LANES) {
            a = a.add(expLanes(x, i, m, out));
            if (TWO) b = b.add(expLanes(x, i + 4, m, out));
        }
        return LogitRows.expIntoTail(x, i, n, m, out, sum8(a, b));
    }

    /** out[i, i + L) = (float) e^(x − m), the difference in float; returns them widened for the sum. */
    private static DoubleVector expLanes(float[] x, int i, float m, float[] out) {
        DoubleVector d = (DoubleVector) FloatVector.fromArray(F, x, i).sub(m).convertShape(VectorOperators.F2D, D, 0);
        FloatVector p = (FloatVector) exp(d).convertShape(VectorOperators.D2F, F, 0);
        p.intoArray(out, i);
        return (DoubleVector) p.convertShape(VectorOperators.F2D, D, 0);
    }

    @Override
    public void klSums(float[] q, float[] b, int n, float mq, float mb, double[] out) {
        int i = 0;
        DoubleVector sq = DoubleVector.zero(D), sb = sq, t = sq, sq2 = sq, sb2 = sq, t2 = sq;
        for (; i + LogitRows.LANES <= n; i += LogitRows.LANES) {
            DoubleVector qi = widen(q, i), bi = widen(b, i), eb = exp(bi.sub(mb));
            sq = sq.add(exp(qi.sub(mq)));
            sb = sb.add(eb);
            t = t.add(times(eb, bi.sub(qi)));
            if (TWO) {
                DoubleVector qj = widen(q, i + 4), bj = widen(b, i + 4), ej = exp(bj.sub(mb));
                sq2 = sq2.add(exp(qj.sub(mq)));
                sb2 = sb2.add(ej);
                t2 = t2.add(times(ej, bj.sub(qj)));
            }
        }
        LogitRows.klTail(q, b, i, n, mq, mb, sum8(sq, sq2), sum8(sb, sb2), sum8(t, t2), out);
    }
}
