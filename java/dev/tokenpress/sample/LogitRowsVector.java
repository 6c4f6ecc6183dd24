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
 * float shape of as many lanes), {@link LogitRows#exp}'s operations in every lane, one accumulator per lane added in
 * lane order at the end, then the tail in order. Loaded only where the module is present.
 */
final class LogitRowsVector implements LogitRows.Impl {
    private static final VectorSpecies<Double> D = DoubleVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Float> F = VectorSpecies.of(float.class, VectorShape.forBitSize(D.vectorBitSize() / 2));
    private static final VectorSpecies<Float> FM = FloatVector.SPECIES_PREFERRED;

    LogitRowsVector() {
        if (F.length() != D.length()) throw new IllegalStateException("no float shape of " + D.length() + " lanes");
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
        int i = 0, l = D.length();
        DoubleVector acc = DoubleVector.zero(D);
        for (; i + l <= n; i += l) acc = acc.add(exp(widen(x, off + i).sub(m)));
        double s = sumInOrder(acc);
        for (; i < n; i++) s += LogitRows.exp((double) x[off + i] - m);
        return s;
    }

    @Override
    public void entropySums(float[] x, int off, int n, float m, double[] out) {
        int i = 0, l = D.length();
        DoubleVector z = DoubleVector.zero(D), zd = z;
        for (; i + l <= n; i += l) {
            DoubleVector d = widen(x, off + i).sub(m), e = exp(d);
            z = z.add(e);
            zd = zd.add(e.mul(d).blend(0.0, e.compare(VectorOperators.EQ, 0.0)));
        }
        double a = sumInOrder(z), b = sumInOrder(zd);
        for (; i < n; i++) {
            double d = (double) x[off + i] - m, e = LogitRows.exp(d);
            a += e;
            b += e == 0 ? 0 : e * d;
        }
        out[0] = a;
        out[1] = b;
    }

    @Override
    public double expInto(float[] x, int n, float m, float[] out) {
        int i = 0, l = D.length();
        DoubleVector acc = DoubleVector.zero(D);
        for (; i + l <= n; i += l) {
            DoubleVector d = (DoubleVector) FloatVector.fromArray(F, x, i).sub(m).convertShape(VectorOperators.F2D, D, 0);
            FloatVector p = (FloatVector) exp(d).convertShape(VectorOperators.D2F, F, 0);
            p.intoArray(out, i);
            acc = acc.add((DoubleVector) p.convertShape(VectorOperators.F2D, D, 0));
        }
        double s = sumInOrder(acc);
        for (; i < n; i++) {
            float p = (float) LogitRows.exp(x[i] - m);
            out[i] = p;
            s += p;
        }
        return s;
    }

    @Override
    public void klSums(float[] q, float[] b, int n, float mq, float mb, double[] out) {
        int i = 0, l = D.length();
        DoubleVector sq = DoubleVector.zero(D), sb = sq, t = sq;
        for (; i + l <= n; i += l) {
            DoubleVector qi = widen(q, i), bi = widen(b, i);
            DoubleVector eb = exp(bi.sub(mb));
            sq = sq.add(exp(qi.sub(mq)));
            sb = sb.add(eb);
            t = t.add(eb.mul(bi.sub(qi)));
        }
        double a = sumInOrder(sq), c = sumInOrder(sb), d = sumInOrder(t);
        for (; i < n; i++) {
            double qi = q[i], bi = b[i];
            double eb = LogitRows.exp(bi - mb);
            a += LogitRows.exp(qi - mq);
            c += eb;
            d += eb * (bi - qi);
        }
        out[0] = a;
        out[1] = c;
        out[2] = d;
    }

    private static double sumInOrder(DoubleVector v) {
        double[] lanes = v.toArray();
        double s = 0;
        for (double x : lanes) s += x;
        return s;
    }
}
