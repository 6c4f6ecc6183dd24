package dev.tokenpress.sample;

/**
 * Reductions over rows of logits in double precision: the row's maximum and the first index holding it,
 * Σ e^(x − max), Σ e^(x − max)·(x − max) (entropy), and for two rows Σ e^(b − max_b)·(b − q) (KL divergence). Over a
 * vocabulary of 128K entries these are the host's share of a scored position, a traced step or a scored prompt row
 * (with {@link Math#exp}: 1–2 ms each on a 2-core VM, more than a GPU decode step of a 1B model), so they run on the
 * Vector API where it is present (launched with {@code --add-modules jdk.incubator.vector};
 * {@code -Dtokenpress.scalar=true} forces the scalar loops). Used by the perplexity statistics, the sampler chain's
 * trace, prompt scoring ({@code echo} log-probabilities) and entropy-adaptive decoding.
 * <p>
 * The exponential is {@link #exp}: built from exact IEEE operations only (a fused multiply-add that rounds to an
 * integer, a two-part ln 2 reduction, a degree-13 Taylor polynomial in Horner form, the power of two from integer
 * bits), within about 1 ulp of {@link Math#exp}, the same bits lane by lane in the vector loops, interpreted or
 * compiled. Sums run in {@link #LANES} interleaved double accumulators added in a fixed order at the end, the same in
 * the vector and the scalar loops, so a row gives the same bits on any machine, with or without the Vector API.
 */
public final class LogitRows {
    private LogitRows() {}

    /** Interleaved accumulators of the scalar loops (the vector loops use one per lane). */
    static final int LANES = 8;

    static final double LOG2E = 1.4426950408889634;
    static final double MAGIC = 0x1.8p52;                 // adding it rounds to an integer (kept in the low bits)
    static final long MAGIC_BITS = Double.doubleToRawLongBits(MAGIC);
    static final double LN2_HI = 0x1.62e42feep-1;         // n·LN2_HI is exact for |n| < 2^21
    static final double LN2_LO = 0x1.a39ef35793c76p-33;   // ln 2 − LN2_HI
    static final double FLOOR = -708.0;                   // e^x below it counts as 0 (no subnormal results)
    static final double[] C = new double[14];             // Taylor coefficients 1/k!

    static {
        double f = 1;
        for (int k = 0; k < C.length; k++) {
            if (k > 0) f *= k;
            C[k] = 1.0 / f;
        }
    }

    /** e^x for x <= 0 (0 below {@link #FLOOR}; NaN stays NaN), from exact IEEE operations (see the class comment). */
    public static double exp(double x) {
        boolean under = x < FLOOR;
        double xc = under ? FLOOR : x;
        double t = Math.fma(xc, LOG2E, MAGIC);
        double n = t - MAGIC;
        double r = Math.fma(n, -LN2_HI, xc);
        r = Math.fma(n, -LN2_LO, r);
        double p = C[13];
        for (int k = 12; k >= 0; k--) p = Math.fma(p, r, C[k]);
        double scale = Double.longBitsToDouble((Double.doubleToRawLongBits(t) - MAGIC_BITS + 1023) << 52);
        return under ? 0.0 : p * scale;
    }

    /** The largest entry of x[off, off + n) (rows without NaN). */
    public static float max(float[] x, int off, int n) {
        return IMPL.max(x, off, n);
    }

    /** The first i < n with x[off + i] == m, or -1. */
    public static int indexOf(float[] x, int off, int n, float m) {
        return IMPL.indexOf(x, off, n, m);
    }

    /** Σ e^(x[off + i] − m), i < n, in double. */
    public static double expSum(float[] x, int off, int n, float m) {
        return IMPL.expSum(x, off, n, m);
    }

    /** log Σ e^x over x[off, off + n), in double. */
    public static double logSumExp(float[] x, int off, int n) {
        float m = max(x, off, n);
        return m + Math.log(expSum(x, off, n, m));
    }

    /**
     * out[0] = Σ e^(x − m) and out[1] = Σ e^(x − m)·(x − m) over x[off, off + n) (entries of −∞ add nothing), in
     * double: the entropy of the softmax is ln out[0] − out[1] / out[0] nats.
     */
    public static void entropySums(float[] x, int off, int n, float m, double[] out) {
        IMPL.entropySums(x, off, n, m, out);
    }

    /** Entropy of softmax(x[off, off + n)) in nats. */
    public static double entropy(float[] x, int off, int n) {
        double[] s = new double[2];
        entropySums(x, off, n, max(x, off, n), s);
        return Math.log(s[0]) - s[1] / s[0];
    }

    /**
     * out[i] = (float) e^(x[i] − m) for i < n, the difference taken in float (as {@code (float) Math.exp(x[i] - m)}
     * rounds it); returns Σ out[i] in double. A softmax's numerators ({@link TokenDataArray#softmax}).
     */
    public static double expInto(float[] x, int n, float m, float[] out) {
        return IMPL.expInto(x, n, m, out);
    }

    /**
     * For two rows of n: out[0] = Σ e^(q − mq), out[1] = Σ e^(b − mb), out[2] = Σ e^(b − mb)·(b − q), in double.
     */
    public static void klSums(float[] q, float[] b, int n, float mq, float mb, double[] out) {
        IMPL.klSums(q, b, n, mq, mb, out);
    }

    // The in-order tails after the interleaved accumulators (both loops): entries [i, n) added one by one to the sums.

    static double expSumTail(float[] x, int off, int i, int n, float m, double s) {
        for (; i < n; i++) s += exp((double) x[off + i] - m);
        return s;
    }

    static void entropyTail(float[] x, int off, int i, int n, float m, double a, double b, double[] out) {
        for (; i < n; i++) {
            double d = (double) x[off + i] - m, e = exp(d);
            a += e;
            b += e == 0 ? 0 : e * d;
        }
        out[0] = a;
        out[1] = b;
    }

    static double expIntoTail(float[] x, int i, int n, float m, float[] out, double s) {
        for (; i < n; i++) {
            float p = (float) exp(x[i] - m);
            out[i] = p;
            s += p;
        }
        return s;
    }

    static void klTail(float[] q, float[] b, int i, int n, float mq, float mb, double a, double c, double d, double[] out) {
        for (; i < n; i++) {
            double qi = q[i], bi = b[i];
            double eb = exp(bi - mb);
            a += exp(qi - mq);
            c += eb;
            d += eb == 0 ? 0 : eb * (bi - qi); // a banned entry (-inf) adds nothing
        }
        out[0] = a;
        out[1] = c;
        out[2] = d;
    }

    /** What runs the loops: the Vector API or plain Java. */
    interface Impl {
        float max(float[] x, int off, int n);

        int indexOf(float[] x, int off, int n, float m);

        double expSum(float[] x, int off, int n, float m);

        void entropySums(float[] x, int off, int n, float m, double[] out);

        void klSums(float[] q, float[] b, int n, float mq, float mb, double[] out);

        double expInto(float[] x, int n, float m, float[] out);
    }

    static final Impl IMPL = choose();

    private static Impl choose() {
        if (!Boolean.getBoolean("tokenpress.scalar")) {
            try {
                return new LogitRowsVector();
            } catch (Throwable t) {
                // jdk.incubator.vector not resolved (launched without --add-modules): the scalar loops
            }
        }
        return new Scalar();
    }

    /** The loops without the Vector API: {@link #LANES} interleaved accumulators. */
    static final class Scalar implements Impl {
        @Override
        public float max(float[] x, int off, int n) {
            float m = Float.NEGATIVE_INFINITY;
            for (int i = 0; i < n; i++) m = Math.max(m, x[off + i]);
            return m;
        }

        @Override
        public int indexOf(float[] x, int off, int n, float m) {
            for (int i = 0; i < n; i++) if (x[off + i] == m) return i;
            return -1;
        }

        @Override
        public double expSum(float[] x, int off, int n, float m) {
            double[] acc = new double[LANES];
            int i = 0;
            for (; i + LANES <= n; i += LANES)
                for (int l = 0; l < LANES; l++) acc[l] += exp((double) x[off + i + l] - m);
            double s = 0;
            for (double a : acc) s += a;
            return expSumTail(x, off, i, n, m, s);
        }

        @Override
        public void entropySums(float[] x, int off, int n, float m, double[] out) {
            double[] z = new double[LANES], zd = new double[LANES];
            int i = 0;
            for (; i + LANES <= n; i += LANES)
                for (int l = 0; l < LANES; l++) {
                    double d = (double) x[off + i + l] - m, e = exp(d);
                    z[l] += e;
                    zd[l] += e == 0 ? 0 : e * d;
                }
            double a = 0, b = 0;
            for (int l = 0; l < LANES; l++) {
                a += z[l];
                b += zd[l];
            }
            entropyTail(x, off, i, n, m, a, b, out);
        }

        @Override
        public double expInto(float[] x, int n, float m, float[] out) {
            double[] acc = new double[LANES];
            int i = 0;
            for (; i + LANES <= n; i += LANES)
                for (int l = 0; l < LANES; l++) {
                    float p = (float) exp(x[i + l] - m);
                    out[i + l] = p;
                    acc[l] += p;
                }
            double s = 0;
            for (double a : acc) s += a;
            return expIntoTail(x, i, n, m, out, s);
        }

        @Override
        public void klSums(float[] q, float[] b, int n, float mq, float mb, double[] out) {
            double[] sq = new double[LANES], sb = new double[LANES], t = new double[LANES];
            int i = 0;
            for (; i + LANES <= n; i += LANES)
                for (int l = 0; l < LANES; l++) {
                    double qi = q[i + l], bi = b[i + l];
                    double eb = exp(bi - mb);
                    sq[l] += exp(qi - mq);
                    sb[l] += eb;
                    t[l] += eb == 0 ? 0 : eb * (bi - qi); // a banned entry (-inf) adds nothing
                }
            double a = 0, c = 0, d = 0;
            for (int l = 0; l < LANES; l++) {
                a += sq[l];
                c += sb[l];
                d += t[l];
            }
            klTail(q, b, i, n, mq, mb, a, c, d, out);
        }
    }
}
