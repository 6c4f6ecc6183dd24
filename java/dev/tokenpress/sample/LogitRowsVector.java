package dev.tokenpress.sample;

import jdk.incubator.vector.DoubleVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.LongVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

/**
 * {@link LogitRows}' loops on the Vector API: floats widened to doubles lane by lane (the preferred double shape, the
 * halves of a vector of the preferred float shape), {@link LogitRows#exp}'s operations in every lane. Sums keep {@link LogitRows#LANES}
 * = 8 interleaved accumulators (element i into accumulator i mod 8: one vector of 8 doubles, or two of 4), added in
 * accumulator order at the end, then the tail in order — the scalar loops' order, so every sum has the same bits on
 * any machine, with or without the Vector API. Loaded only where the module is present and the double shape has 4 or
 * 8 lanes.
 */
final class LogitRowsVector implements LogitRows.Impl {
    private static final VectorSpecies<Double> D = DoubleVector.SPECIES_PREFERRED;
    /**
     * The only float shape: the preferred one, as the CPU backend's kernels use. (A second float shape in one process
     * makes the type profiles inside the Vector API's shared methods see two vector classes, and kernels compiled
     * after that ran the API's Java fallback: the attention of a `perplexity` run at half speed.) Its halves widen to
     * the preferred doubles.
     */
    private static final VectorSpecies<Float> FM = FloatVector.SPECIES_PREFERRED;

    private static final int L = D.length(), W = FM.length();
    private static final boolean TWO = L == 4; // two vectors per 8 accumulators
    /** The low half of a float vector: the lanes of one double vector. */
    private static final VectorMask<Float> LOW = FM.indexInRange(0, L);

    LogitRowsVector() {
        if (W != 2 * L) throw new IllegalStateException("float vectors of " + W + " lanes beside doubles of " + L);
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

    /** x[i, i + W) as floats; near the array's end only its low half, x[i, i + L), is read (the rest is 0). */
    private static FloatVector load(float[] x, int i) {
        return i + W <= x.length ? FloatVector.fromArray(FM, x, i) : FloatVector.fromArray(FM, x, i, LOW);
    }

    /** Lanes [p·L, (p + 1)·L) of v as doubles. */
    private static DoubleVector half(FloatVector v, int p) {
        return (DoubleVector) v.convertShape(VectorOperators.F2D, D, p);
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
            FloatVector v = load(x, off + i);
            a = a.add(exp(half(v, 0).sub(m)));
            if (TWO) b = b.add(exp(half(v, 1).sub(m)));
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
            FloatVector v = load(x, off + i);
            DoubleVector d = half(v, 0).sub(m), e = exp(d);
            z = z.add(e);
            zd = zd.add(times(e, d));
            if (TWO) {
                DoubleVector d2 = half(v, 1).sub(m), e2 = exp(d2);
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
        // W elements at a time: out[i, i + W) = (float) e^(x − m), the difference in float, stored as one vector;
        // their widened values go to the accumulators in element order (8 doubles: a, a; 4 doubles: a, b)
        for (; i + W <= n; i += W) {
            FloatVector d = FloatVector.fromArray(FM, x, i).sub(m);
            FloatVector p0 = (FloatVector) exp(half(d, 0)).convertShape(VectorOperators.D2F, FM, 0);
            FloatVector p1 = (FloatVector) exp(half(d, 1)).convertShape(VectorOperators.D2F, FM, -1);
            FloatVector p = p0.blend(p1, LOW.not());
            p.intoArray(out, i);
            a = a.add(half(p, 0));
            if (TWO) b = b.add(half(p, 1));
            else a = a.add(half(p, 1));
        }
        if (!TWO && i + LogitRows.LANES <= n) { // one more group of 8 (8-lane doubles): stored element by element
            FloatVector p = (FloatVector) exp(half(load(x, i).sub(m), 0)).convertShape(VectorOperators.D2F, FM, 0);
            float[] e = p.toArray();
            System.arraycopy(e, 0, out, i, L);
            a = a.add(half(p, 0));
            i += L;
        }
        return LogitRows.expIntoTail(x, i, n, m, out, sum8(a, b));
    }

    @Override
    public void klSums(float[] q, float[] b, int n, float mq, float mb, double[] out) {
        int i = 0;
        DoubleVector sq = DoubleVector.zero(D), sb = sq, t = sq, sq2 = sq, sb2 = sq, t2 = sq;
        for (; i + LogitRows.LANES <= n; i += LogitRows.LANES) {
            FloatVector qv = load(q, i), bv = load(b, i);
            DoubleVector qi = half(qv, 0), bi = half(bv, 0), eb = exp(bi.sub(mb));
            sq = sq.add(exp(qi.sub(mq)));
            sb = sb.add(eb);
            t = t.add(times(eb, bi.sub(qi)));
            if (TWO) {
                DoubleVector qj = half(qv, 1), bj = half(bv, 1), ej = exp(bj.sub(mb));
                sq2 = sq2.add(exp(qj.sub(mq)));
                sb2 = sb2.add(ej);
                t2 = t2.add(times(ej, bj.sub(qj)));
            }
        }
        LogitRows.klTail(q, b, i, n, mq, mb, sum8(sq, sq2), sum8(sb, sb2), sum8(t, t2), out);
    }
}
