package dev.tokenpress.backend.cpu;

import jdk.incubator.vector.ByteVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.ShortVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorShuffle;
import jdk.incubator.vector.VectorSpecies;

/** Vector API loops (jdk.incubator.vector), preferred species width, scalar tails. */
final class VectorKernels implements Kernels {
    private static final VectorSpecies<Float> F = FloatVector.SPECIES_PREFERRED;
    private static final VectorSpecies<Integer> I = IntVector.SPECIES_PREFERRED;
    /** Shorts with one lane per float lane (bf16 rows: 64 to 256 bits, a shape at every float width). */
    private static final VectorSpecies<Short> S = VectorSpecies.of(short.class, VectorShape.forBitSize(F.length() * 16));

    /**
     * Bytes with one lane per float lane: a chunk of packed codes, spread by a shuffle before widening. None with
     * 128-bit vectors (NEON, SSE: four bytes are no vector shape); the kernels on packed codes (Q8_0 / Q4_0 weights,
     * quantized KV) then take the scalar loops, and so do the ones over widened weight codes (dotQ8f and its
     * several-row forms), so that a chunk and a single row still give the same bits; everything else stays
     * vectorised.
     */
    private static final VectorSpecies<Byte> B = byteSpecies();
    /** Per code width 2, 4, 8: lane i reads byte i·b/8 and shifts right by (i·b) mod 8. */
    private static final VectorShuffle<Byte>[] SPREAD = B == null ? null : spread();

    private static VectorSpecies<Byte> byteSpecies() {
        try {
            return VectorSpecies.of(byte.class, VectorShape.forBitSize(F.length() * 8));
        } catch (IllegalArgumentException e) {
            return null;
        }
    }
    private static final IntVector[] SHIFT = new IntVector[9];

    static {
        for (int bits : new int[]{2, 4, 8}) {
            int[] sh = new int[I.length()];
            for (int i = 0; i < sh.length; i++) sh[i] = (i * bits) & 7;
            SHIFT[bits] = IntVector.fromArray(I, sh, 0);
        }
    }

    @SuppressWarnings("unchecked")
    private static VectorShuffle<Byte>[] spread() {
        VectorShuffle<Byte>[] s = new VectorShuffle[9];
        for (int bits : new int[]{2, 4, 8}) {
            int[] idx = new int[B.length()];
            for (int i = 0; i < idx.length; i++) idx[i] = i * bits / 8;
            s[bits] = VectorShuffle.fromArray(B, idx, 0);
        }
        return s;
    }

    /**
     * {@link #SPREAD} reading from byte o of the loaded vector on ([bits][o]): a row's last whole chunk of codes at the
     * end of its array is loaded from the array's last bytes (a whole load) and spread from where it sits in them.
     */
    private static final VectorShuffle<Byte>[][] SPREAD_AT = B == null ? null : spreadAt();

    @SuppressWarnings("unchecked")
    private static VectorShuffle<Byte>[][] spreadAt() {
        VectorShuffle<Byte>[][] s = new VectorShuffle[9][];
        int l = B.length();
        for (int bits : new int[]{2, 4, 8}) {
            int step = F.length() * bits / 8;
            s[bits] = new VectorShuffle[Math.max(0, l - step) + 1];
            for (int o = 0; o + step <= l; o++) {
                int[] idx = new int[l];
                for (int i = 0; i < l; i++) idx[i] = Math.min(l - 1, o + i * bits / 8);
                s[bits][o] = VectorShuffle.fromArray(B, idx, 0);
            }
        }
        return s;
    }

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
    public void dot4(float[] a, int aOff, int aStride, float[] b, int bOff, int len, float[] out) {
        int l = F.length();
        int upper = len - len % (2 * l);
        int o1 = aOff + aStride, o2 = o1 + aStride, o3 = o2 + aStride;
        FloatVector z = FloatVector.zero(F);
        FloatVector p0 = z, q0 = z, p1 = z, q1 = z, p2 = z, q2 = z, p3 = z, q3 = z;
        int i = 0;
        for (; i < upper; i += 2 * l) { // dot's two accumulators per row, the row of b loaded once for the four
            FloatVector b0 = FloatVector.fromArray(F, b, bOff + i), b1 = FloatVector.fromArray(F, b, bOff + i + l);
            p0 = FloatVector.fromArray(F, a, aOff + i).fma(b0, p0);
            q0 = FloatVector.fromArray(F, a, aOff + i + l).fma(b1, q0);
            p1 = FloatVector.fromArray(F, a, o1 + i).fma(b0, p1);
            q1 = FloatVector.fromArray(F, a, o1 + i + l).fma(b1, q1);
            p2 = FloatVector.fromArray(F, a, o2 + i).fma(b0, p2);
            q2 = FloatVector.fromArray(F, a, o2 + i + l).fma(b1, q2);
            p3 = FloatVector.fromArray(F, a, o3 + i).fma(b0, p3);
            q3 = FloatVector.fromArray(F, a, o3 + i + l).fma(b1, q3);
        }
        out[0] = dotTail(a, aOff, b, bOff, i, len, p0.add(q0).reduceLanes(VectorOperators.ADD));
        out[1] = dotTail(a, o1, b, bOff, i, len, p1.add(q1).reduceLanes(VectorOperators.ADD));
        out[2] = dotTail(a, o2, b, bOff, i, len, p2.add(q2).reduceLanes(VectorOperators.ADD));
        out[3] = dotTail(a, o3, b, bOff, i, len, p3.add(q3).reduceLanes(VectorOperators.ADD));
    }

    private static float dotTail(float[] a, int aOff, float[] b, int bOff, int i, int len, float s) {
        for (; i < len; i++) s += a[aOff + i] * b[bOff + i];
        return s;
    }

    /** F.length() bf16 values from b[off] as floats (exact: the bits shifted into a float's upper half). */
    private static FloatVector bf16(short[] b, int off) {
        return ((IntVector) ShortVector.fromArray(S, b, off).convertShape(VectorOperators.S2I, I, 0))
                .lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
    }

    @Override
    public void widenBf16(short[] src, int sOff, float[] dst, int dOff, int len) {
        int l = F.length(), upper = len - len % l, i = 0;
        for (; i < upper; i += l) bf16(src, sOff + i).intoArray(dst, dOff + i);
        for (; i < len; i++) dst[dOff + i] = Float.intBitsToFloat(src[sOff + i] << 16);
    }

    /** {@link #dot}'s operations over the widened bf16 row (the same bits). */
    @Override
    public float dot(float[] a, int aOff, short[] b, int bOff, int len) {
        int l = F.length();
        int upper = len - len % (2 * l);
        FloatVector acc0 = FloatVector.zero(F), acc1 = FloatVector.zero(F);
        int i = 0;
        for (; i < upper; i += 2 * l) {
            acc0 = FloatVector.fromArray(F, a, aOff + i).fma(bf16(b, bOff + i), acc0);
            acc1 = FloatVector.fromArray(F, a, aOff + i + l).fma(bf16(b, bOff + i + l), acc1);
        }
        return dotTail(a, aOff, b, bOff, i, len, acc0.add(acc1).reduceLanes(VectorOperators.ADD));
    }

    /** {@link #dot4}'s operations over the widened bf16 row (the same bits). */
    @Override
    public void dot4(float[] a, int aOff, int aStride, short[] b, int bOff, int len, float[] out) {
        int l = F.length();
        int upper = len - len % (2 * l);
        int o1 = aOff + aStride, o2 = o1 + aStride, o3 = o2 + aStride;
        FloatVector z = FloatVector.zero(F);
        FloatVector p0 = z, q0 = z, p1 = z, q1 = z, p2 = z, q2 = z, p3 = z, q3 = z;
        int i = 0;
        for (; i < upper; i += 2 * l) {
            FloatVector b0 = bf16(b, bOff + i), b1 = bf16(b, bOff + i + l);
            p0 = FloatVector.fromArray(F, a, aOff + i).fma(b0, p0);
            q0 = FloatVector.fromArray(F, a, aOff + i + l).fma(b1, q0);
            p1 = FloatVector.fromArray(F, a, o1 + i).fma(b0, p1);
            q1 = FloatVector.fromArray(F, a, o1 + i + l).fma(b1, q1);
            p2 = FloatVector.fromArray(F, a, o2 + i).fma(b0, p2);
            q2 = FloatVector.fromArray(F, a, o2 + i + l).fma(b1, q2);
            p3 = FloatVector.fromArray(F, a, o3 + i).fma(b0, p3);
            q3 = FloatVector.fromArray(F, a, o3 + i + l).fma(b1, q3);
        }
        out[0] = dotTail(a, aOff, b, bOff, i, len, p0.add(q0).reduceLanes(VectorOperators.ADD));
        out[1] = dotTail(a, o1, b, bOff, i, len, p1.add(q1).reduceLanes(VectorOperators.ADD));
        out[2] = dotTail(a, o2, b, bOff, i, len, p2.add(q2).reduceLanes(VectorOperators.ADD));
        out[3] = dotTail(a, o3, b, bOff, i, len, p3.add(q3).reduceLanes(VectorOperators.ADD));
    }

    private static float dotTail(float[] a, int aOff, short[] b, int bOff, int i, int len, float s) {
        for (; i < len; i++) s += a[aOff + i] * Float.intBitsToFloat(b[bOff + i] << 16);
        return s;
    }

    // Q8_0 rows: every kernel below does, per row and x, the same operations in the same order: per block a sum
    // of lane products started from zero (FMA over the block's F.length()-lane chunks), scaled into one accumulator
    // (FMA), the lanes summed at the end. The codes are exact as floats, so widened-once and in-register codes agree.

    /** 1.5 · 2^23: x + MAGIC - MAGIC rounds |x| < 2^22 to an integer (ties to even), and its bits end in x's. */
    private static final float MAGIC = 12582912f;

    /**
     * {@link dev.tokenpress.backend.Q8Codec#quantizeRow} in vectors, the same bits: the block's max |w| by lanewise
     * MAX (exact in any order; a block with a NaN gets the canonical NaN, as in the codec), the same float multiply by 1/d, and Math.round (round half up) rebuilt from exact steps without
     * a float-to-int conversion (Java 17 does not compile those to vector instructions): y clamped to [-128, 128]
     * (values beyond round beyond ±127 either way), n = y + 1.5·2^23 - 1.5·2^23 (y rounded to an integer, ties to
     * even), +1 where y - n (exact) is +0.5 (a tie that went down), clamped to [-127, 127], NaN to 0 (Math.round(NaN));
     * the byte is the low byte of the bits of n + 1.5·2^23.
     */
    @Override
    public void quantizeQ8Row(float[] src, int off, int cols, byte[] q, int qOff, float[] d, int dOff) {
        int l = F.length(), bs = CpuBlockWeight.BLOCK;
        if (B == null || bs % l != 0 || B.length() != l) {
            Kernels.super.quantizeQ8Row(src, off, cols, q, qOff, d, dOff);
            return;
        }
        for (int b = 0; b < cols / bs; b++) {
            int base = off + b * bs;
            FloatVector m = FloatVector.zero(F);
            for (int j = 0; j < bs; j += l) m = m.max(FloatVector.fromArray(F, src, base + j).abs());
            float amax = m.reduceLanes(VectorOperators.MAX);
            int qo = qOff + b * bs;
            float scale = amax / 127f;
            if (scale != scale) scale = Float.NaN; // the codec's canonical NaN
            float inv = scale != 0 ? 1f / scale : 0f;
            d[dOff + b] = scale;
            for (int j = 0; j < bs; j += l) {
                FloatVector y = FloatVector.fromArray(F, src, base + j).mul(inv).max(-128f).min(128f);
                FloatVector n = y.add(MAGIC).sub(MAGIC);
                FloatVector r = n.add(1f, y.sub(n).compare(VectorOperators.EQ, 0.5f)).max(-127f).min(127f)
                        .blend(0f, y.compare(VectorOperators.NE, y));
                r.add(MAGIC).reinterpretAsInts().convertShape(VectorOperators.I2B, B, 0).reinterpretAsBytes().intoArray(q, qo + j);
            }
        }
    }

    /**
     * {@link Kernels#quantizeQ4Row} in vectors, the same bits: per lane the first strictly largest |w| (NaN never
     * compares greater), their maximum, then the first weight of that magnitude (+0 when it is 0, as the scalar loop
     * keeps its initial 0); y = w · (1/d) + 8.5 as two roundings, as the scalar expression; (int) y clamped to 15 rebuilt
     * exactly (y is in [0, 16.5], ±∞ or NaN: y clamped to [0, 15.5], rounded by 1.5·2^23, one less where that went up;
     * NaN to 0, -∞ to 0 as the scalar packing's low byte ends up); lo + 16 · hi is the byte. y stays in [0, 16.5] up
     * to rounding even for subnormal d: where 1/d is finite, d >= 2^-128 is rounded by at most 2^-21 of itself (a
     * smaller d makes 1/d infinite, so y is ±∞ or NaN).
     */
    @Override
    public void quantizeQ4Row(float[] src, int off, int cols, byte[] q, int qOff, float[] d, int dOff) {
        int l = F.length(), bs = CpuBlockWeight.BLOCK, half = bs / 2;
        if (B == null || half % l != 0 || B.length() != l) {
            Kernels.super.quantizeQ4Row(src, off, cols, q, qOff, d, dOff);
            return;
        }
        for (int b = 0; b < cols / bs; b++) {
            int base = off + b * bs;
            FloatVector m = FloatVector.zero(F);
            for (int j = 0; j < bs; j += l) {
                FloatVector a = FloatVector.fromArray(F, src, base + j).abs();
                m = m.blend(a, a.compare(VectorOperators.GT, m));
            }
            float amax = m.reduceLanes(VectorOperators.MAX), max = 0;
            if (amax != 0)
                for (int j = 0; j < bs; j++)
                    if (Math.abs(src[base + j]) == amax) {
                        max = src[base + j];
                        break;
                    }
            int qo = qOff + b * half;
            float scale = max / -8f, inv = scale != 0 ? 1f / scale : 0f;
            d[dOff + b] = scale;
            for (int j = 0; j < half; j += l) {
                FloatVector lo = q4Code(FloatVector.fromArray(F, src, base + j), inv);
                FloatVector hi = q4Code(FloatVector.fromArray(F, src, base + half + j), inv);
                hi.mul(16f).add(lo).add(MAGIC).reinterpretAsInts().convertShape(VectorOperators.I2B, B, 0).reinterpretAsBytes()
                        .intoArray(q, qo + j);
            }
        }
    }

    /** min(15, (int) (w · inv + 8.5f)) as an exact float, 0 for NaN and -∞ (see quantizeQ4Row). */
    private static FloatVector q4Code(FloatVector w, float inv) {
        FloatVector y = w.mul(inv).add(8.5f);
        FloatVector c = y.min(15.5f).max(0f);
        FloatVector n = c.add(MAGIC).sub(MAGIC);
        return n.sub(1f, n.compare(VectorOperators.GT, c)).blend(0f, y.compare(VectorOperators.NE, y));
    }

    @Override
    public float dotQ8(byte[] q, int qOff, float[] d, int dOff, float[] x, int xOff, int blocks) {
        int l = F.length(), bs = CpuBlockWeight.BLOCK;
        if (B == null || bs % l != 0) return Kernels.super.dotQ8(q, qOff, d, dOff, x, xOff, blocks);
        FloatVector acc = FloatVector.zero(F);
        for (int b = 0; b < blocks; b++) {
            int qo = qOff + b * bs, xo = xOff + b * bs;
            FloatVector s = FloatVector.zero(F);
            for (int j = 0; j < bs; j += l) s = q8(q, qo + j).fma(FloatVector.fromArray(F, x, xo + j), s);
            acc = s.fma(FloatVector.broadcast(F, d[dOff + b]), acc);
        }
        return acc.reduceLanes(VectorOperators.ADD);
    }

    @Override
    public float dotQ8f(float[] qf, int qOff, float[] d, int dOff, float[] x, int xOff, int blocks) {
        int l = F.length(), bs = CpuBlockWeight.BLOCK;
        if (B == null || bs % l != 0) return Kernels.super.dotQ8f(qf, qOff, d, dOff, x, xOff, blocks);
        FloatVector acc = FloatVector.zero(F);
        for (int b = 0; b < blocks; b++) {
            int qo = qOff + b * bs, xo = xOff + b * bs;
            FloatVector s = FloatVector.zero(F);
            for (int j = 0; j < bs; j += l) s = FloatVector.fromArray(F, qf, qo + j).fma(FloatVector.fromArray(F, x, xo + j), s);
            acc = s.fma(FloatVector.broadcast(F, d[dOff + b]), acc);
        }
        return acc.reduceLanes(VectorOperators.ADD);
    }

    @Override
    public void dotQ8fx4(float[] qf, float[] d, int dOff, float[] x, int xOff, int blocks, float[] out, int outOff) {
        int l = F.length(), bs = CpuBlockWeight.BLOCK, len = blocks * bs;
        if (B == null || bs % l != 0) {
            Kernels.super.dotQ8fx4(qf, d, dOff, x, xOff, blocks, out, outOff);
            return;
        }
        FloatVector a0 = FloatVector.zero(F), a1 = FloatVector.zero(F), a2 = FloatVector.zero(F), a3 = FloatVector.zero(F);
        for (int b = 0; b < blocks; b++) {
            int qo = b * bs, xo = xOff + b * bs;
            FloatVector s0 = FloatVector.zero(F), s1 = FloatVector.zero(F), s2 = FloatVector.zero(F), s3 = FloatVector.zero(F);
            for (int j = 0; j < bs; j += l) {
                FloatVector xv = FloatVector.fromArray(F, x, xo + j);
                s0 = FloatVector.fromArray(F, qf, qo + j).fma(xv, s0);
                s1 = FloatVector.fromArray(F, qf, len + qo + j).fma(xv, s1);
                s2 = FloatVector.fromArray(F, qf, 2 * len + qo + j).fma(xv, s2);
                s3 = FloatVector.fromArray(F, qf, 3 * len + qo + j).fma(xv, s3);
            }
            a0 = s0.fma(FloatVector.broadcast(F, d[dOff + b]), a0);
            a1 = s1.fma(FloatVector.broadcast(F, d[dOff + blocks + b]), a1);
            a2 = s2.fma(FloatVector.broadcast(F, d[dOff + 2 * blocks + b]), a2);
            a3 = s3.fma(FloatVector.broadcast(F, d[dOff + 3 * blocks + b]), a3);
        }
        out[outOff] = a0.reduceLanes(VectorOperators.ADD);
        out[outOff + 1] = a1.reduceLanes(VectorOperators.ADD);
        out[outOff + 2] = a2.reduceLanes(VectorOperators.ADD);
        out[outOff + 3] = a3.reduceLanes(VectorOperators.ADD);
    }

    /**
     * {@link #dotQ8fx4}'s loop over three x rows: each code vector loaded once for twelve fused multiply-adds
     * (24 accumulators, 3 x vectors and a code vector: within AVX-512's 32 registers); the same operations per
     * output, so the same bits.
     */
    @Override
    public void dotQ8fx4x3(float[] qf, float[] d, int dOff, float[] x, int xOff0, int xOff1, int xOff2, int blocks,
                           float[] out) {
        int l = F.length(), bs = CpuBlockWeight.BLOCK, len = blocks * bs;
        if (B == null || bs % l != 0) {
            Kernels.super.dotQ8fx4x3(qf, d, dOff, x, xOff0, xOff1, xOff2, blocks, out);
            return;
        }
        FloatVector z = FloatVector.zero(F);
        FloatVector a0 = z, a1 = z, a2 = z, a3 = z, c0 = z, c1 = z, c2 = z, c3 = z, e0 = z, e1 = z, e2 = z, e3 = z;
        for (int b = 0; b < blocks; b++) {
            int qo = b * bs, xo = xOff0 + qo, yo = xOff1 + qo, zo = xOff2 + qo;
            FloatVector s0 = z, s1 = z, s2 = z, s3 = z, t0 = z, t1 = z, t2 = z, t3 = z, u0 = z, u1 = z, u2 = z, u3 = z;
            for (int j = 0; j < bs; j += l) {
                FloatVector xv = FloatVector.fromArray(F, x, xo + j), yv = FloatVector.fromArray(F, x, yo + j),
                        zv = FloatVector.fromArray(F, x, zo + j);
                FloatVector w = FloatVector.fromArray(F, qf, qo + j);
                s0 = w.fma(xv, s0);
                t0 = w.fma(yv, t0);
                u0 = w.fma(zv, u0);
                w = FloatVector.fromArray(F, qf, len + qo + j);
                s1 = w.fma(xv, s1);
                t1 = w.fma(yv, t1);
                u1 = w.fma(zv, u1);
                w = FloatVector.fromArray(F, qf, 2 * len + qo + j);
                s2 = w.fma(xv, s2);
                t2 = w.fma(yv, t2);
                u2 = w.fma(zv, u2);
                w = FloatVector.fromArray(F, qf, 3 * len + qo + j);
                s3 = w.fma(xv, s3);
                t3 = w.fma(yv, t3);
                u3 = w.fma(zv, u3);
            }
            FloatVector d0 = FloatVector.broadcast(F, d[dOff + b]), d1 = FloatVector.broadcast(F, d[dOff + blocks + b]),
                    d2 = FloatVector.broadcast(F, d[dOff + 2 * blocks + b]), d3 = FloatVector.broadcast(F, d[dOff + 3 * blocks + b]);
            a0 = s0.fma(d0, a0);
            c0 = t0.fma(d0, c0);
            e0 = u0.fma(d0, e0);
            a1 = s1.fma(d1, a1);
            c1 = t1.fma(d1, c1);
            e1 = u1.fma(d1, e1);
            a2 = s2.fma(d2, a2);
            c2 = t2.fma(d2, c2);
            e2 = u2.fma(d2, e2);
            a3 = s3.fma(d3, a3);
            c3 = t3.fma(d3, c3);
            e3 = u3.fma(d3, e3);
        }
        out[0] = a0.reduceLanes(VectorOperators.ADD);
        out[1] = a1.reduceLanes(VectorOperators.ADD);
        out[2] = a2.reduceLanes(VectorOperators.ADD);
        out[3] = a3.reduceLanes(VectorOperators.ADD);
        out[4] = c0.reduceLanes(VectorOperators.ADD);
        out[5] = c1.reduceLanes(VectorOperators.ADD);
        out[6] = c2.reduceLanes(VectorOperators.ADD);
        out[7] = c3.reduceLanes(VectorOperators.ADD);
        out[8] = e0.reduceLanes(VectorOperators.ADD);
        out[9] = e1.reduceLanes(VectorOperators.ADD);
        out[10] = e2.reduceLanes(VectorOperators.ADD);
        out[11] = e3.reduceLanes(VectorOperators.ADD);
    }

    @Override
    public float dotQ4(byte[] q, int qOff, float[] d, int dOff, float[] x, int xOff, int blocks) {
        int l = F.length(), bs = CpuBlockWeight.BLOCK, half = bs / 2;
        if (B == null || half % l != 0) return Kernels.super.dotQ4(q, qOff, d, dOff, x, xOff, blocks);
        // the 16-byte groups widened to int lanes, where the nibbles are split with single-uop shifts and masks
        // (byte-lane shifts are emulated on x86), then converted; low nibbles are elements j, high nibbles
        // elements 16 + j, added in dotQ8f's order (all low chunks, then all high chunks)
        FloatVector eight = FloatVector.broadcast(F, 8f);
        FloatVector acc = FloatVector.zero(F);
        for (int b = 0; b < blocks; b++) {
            int qo = qOff + b * half, xo = xOff + b * bs;
            FloatVector s = FloatVector.zero(F);
            if (l == half) { // 512-bit: one group per block, loaded once
                IntVector v = (IntVector) ByteVector.fromArray(B, q, qo).convertShape(VectorOperators.B2I, I, 0);
                FloatVector lo = ((FloatVector) v.and(0x0F).convert(VectorOperators.I2F, 0)).sub(eight);
                s = lo.fma(FloatVector.fromArray(F, x, xo), s);
                FloatVector hi = ((FloatVector) v.lanewise(VectorOperators.LSHR, 4).and(0x0F)
                        .convert(VectorOperators.I2F, 0)).sub(eight);
                s = hi.fma(FloatVector.fromArray(F, x, xo + half), s);
            } else {
                for (int j = 0; j < half; j += l) {
                    IntVector v = (IntVector) ByteVector.fromArray(B, q, qo + j).convertShape(VectorOperators.B2I, I, 0);
                    FloatVector lo = ((FloatVector) v.and(0x0F).convert(VectorOperators.I2F, 0)).sub(eight);
                    s = lo.fma(FloatVector.fromArray(F, x, xo + j), s);
                }
                for (int j = 0; j < half; j += l) {
                    IntVector v = (IntVector) ByteVector.fromArray(B, q, qo + j).convertShape(VectorOperators.B2I, I, 0);
                    FloatVector hi = ((FloatVector) v.lanewise(VectorOperators.LSHR, 4).and(0x0F)
                            .convert(VectorOperators.I2F, 0)).sub(eight);
                    s = hi.fma(FloatVector.fromArray(F, x, xo + half + j), s);
                }
            }
            acc = s.fma(FloatVector.broadcast(F, d[dOff + b]), acc);
        }
        return acc.reduceLanes(VectorOperators.ADD);
    }

    /** F.length() signed bytes from q[off] as floats. */
    private static FloatVector q8(byte[] q, int off) {
        return (FloatVector) ByteVector.fromArray(B, q, off).convertShape(VectorOperators.B2F, F, 0);
    }

    /** {@link Kernels#expShifted}: {@link Kernels#expf}'s operations lane by lane (the same bits), then the same sums. */
    @Override
    public double expShifted(float[] x, int off, int len, float max) {
        expInPlace(x, off, len, max);
        return Kernels.sum4(x, off, len);
    }

    /** {@link Kernels#expShiftedBySlot}: the vector exponentials, then the same sums. */
    @Override
    public double expShiftedBySlot(float[] x, int len, float max, int[] slots) {
        expInPlace(x, 0, len, max);
        return Kernels.sum4BySlot(x, len, slots);
    }

    /** x[off + i] = {@link Kernels#expf}(x[off + i] - max) for i < len, lane by lane (the same bits). */
    private static void expInPlace(float[] x, int off, int len, float max) {
        int l = F.length(), upper = len - len % l, i = 0;
        FloatVector c6 = FloatVector.broadcast(F, EXP_C6), c5 = FloatVector.broadcast(F, EXP_C5);
        FloatVector c4 = FloatVector.broadcast(F, EXP_C4), c3 = FloatVector.broadcast(F, EXP_C3);
        FloatVector c2 = FloatVector.broadcast(F, EXP_C2), one = FloatVector.broadcast(F, 1f);
        FloatVector log2e = FloatVector.broadcast(F, EXP_LOG2E), magic = FloatVector.broadcast(F, EXP_MAGIC);
        FloatVector ln2hi = FloatVector.broadcast(F, -EXP_LN2_HI), ln2lo = FloatVector.broadcast(F, -EXP_LN2_LO);
        for (; i < upper; i += l) {
            FloatVector d = FloatVector.fromArray(F, x, off + i).sub(max);
            VectorMask<Float> under = d.lt(EXP_FLOOR);
            FloatVector dc = d.blend(EXP_FLOOR, under);
            FloatVector t = dc.fma(log2e, magic);
            FloatVector n = t.sub(EXP_MAGIC);
            FloatVector r = n.fma(ln2hi, dc);
            r = n.fma(ln2lo, r);
            FloatVector p = FloatVector.broadcast(F, EXP_C7).fma(r, c6);
            p = p.fma(r, c5);
            p = p.fma(r, c4);
            p = p.fma(r, c3);
            p = p.fma(r, c2);
            p = p.fma(r, one);
            p = p.fma(r, one);
            FloatVector scale = ((IntVector) t.reinterpretAsInts()).sub(EXP_MAGIC_BITS - 127).lanewise(VectorOperators.LSHL, 23)
                    .reinterpretAsFloats();
            p.mul(scale).blend(0f, under).intoArray(x, off + i);
        }
        for (; i < len; i++) x[off + i] = Kernels.expf(x[off + i] - max);
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
    public void dotBf16x4(int[] w, int pairs, float[] xe, float[] xo, int xOff, float[] out, int outOff, int outStride) {
        int l = I.length();
        int upper = pairs - pairs % (2 * l);
        int o1 = pairs, o2 = 2 * pairs, o3 = 3 * pairs;
        FloatVector z = FloatVector.zero(F);
        FloatVector a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
        FloatVector a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
        int j = 0;
        for (; j < upper; j += 2 * l) {
            FloatVector e0 = FloatVector.fromArray(F, xe, xOff + j), d0 = FloatVector.fromArray(F, xo, xOff + j);
            FloatVector e1 = FloatVector.fromArray(F, xe, xOff + j + l), d1 = FloatVector.fromArray(F, xo, xOff + j + l);
            IntVector p = IntVector.fromArray(I, w, j), q = IntVector.fromArray(I, w, j + l);
            a00 = p.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().fma(e0, a00);
            a01 = p.and(0xFFFF0000).reinterpretAsFloats().fma(d0, a01);
            a02 = q.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().fma(e1, a02);
            a03 = q.and(0xFFFF0000).reinterpretAsFloats().fma(d1, a03);
            p = IntVector.fromArray(I, w, o1 + j);
            q = IntVector.fromArray(I, w, o1 + j + l);
            a10 = p.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().fma(e0, a10);
            a11 = p.and(0xFFFF0000).reinterpretAsFloats().fma(d0, a11);
            a12 = q.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().fma(e1, a12);
            a13 = q.and(0xFFFF0000).reinterpretAsFloats().fma(d1, a13);
            p = IntVector.fromArray(I, w, o2 + j);
            q = IntVector.fromArray(I, w, o2 + j + l);
            a20 = p.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().fma(e0, a20);
            a21 = p.and(0xFFFF0000).reinterpretAsFloats().fma(d0, a21);
            a22 = q.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().fma(e1, a22);
            a23 = q.and(0xFFFF0000).reinterpretAsFloats().fma(d1, a23);
            p = IntVector.fromArray(I, w, o3 + j);
            q = IntVector.fromArray(I, w, o3 + j + l);
            a30 = p.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().fma(e0, a30);
            a31 = p.and(0xFFFF0000).reinterpretAsFloats().fma(d0, a31);
            a32 = q.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats().fma(e1, a32);
            a33 = q.and(0xFFFF0000).reinterpretAsFloats().fma(d1, a33);
        }
        // same reduction order per row as dotBf16, so each result is bit-identical to a single-row call
        out[outOff] = tail(w, 0, xe, xo, xOff, j, pairs, a00.add(a01).add(a02.add(a03)).reduceLanes(VectorOperators.ADD));
        out[outOff + outStride] = tail(w, o1, xe, xo, xOff, j, pairs, a10.add(a11).add(a12.add(a13)).reduceLanes(VectorOperators.ADD));
        out[outOff + 2 * outStride] = tail(w, o2, xe, xo, xOff, j, pairs, a20.add(a21).add(a22.add(a23)).reduceLanes(VectorOperators.ADD));
        out[outOff + 3 * outStride] = tail(w, o3, xe, xo, xOff, j, pairs, a30.add(a31).add(a32.add(a33)).reduceLanes(VectorOperators.ADD));
    }

    /**
     * {@link Kernels#weightedValues} with each output chunk held in a register across a block of candidates (whose
     * value rows stay in L1 for all the heads) instead of loaded and stored per candidate: per element the same fused
     * multiply-adds ({@link #axpy}'s vector part) or multiply-then-adds (its tail), in candidate order.
     */
    @Override
    public void weightedValues(float[][] e, float[] inv, boolean[] live, int hc, int m, int[] slots, float[] values,
                               int hd, float[] o, int oOff) {
        weightedValues(e, inv, live, hc, 0, m, slots, values, null, hd, o, oOff);
    }

    /** {@link #weightedValues} over bf16 value rows: the same operations on the widened rows (the same bits). */
    @Override
    public void weightedValues(float[][] e, float[] inv, boolean[] live, int hc, int m, int[] slots, short[] values,
                               int hd, float[] o, int oOff) {
        weightedValues(e, inv, live, hc, 0, m, slots, null, values, hd, o, oOff);
    }

    /** {@link Kernels#weightedValuesBlock}: the same operations as {@link #weightedValues}, from a gathered block. */
    @Override
    public void weightedValuesBlock(float[][] e, float[] inv, boolean[] live, int hc, int j0, int j1, float[] rows,
                                    int hd, float[] o, int oOff) {
        weightedValues(e, inv, live, hc, j0, j1, null, rows, null, hd, o, oOff);
    }

    @Override
    public void gatherRows(float[] src, int[] slots, int j0, int j1, int hd, float[] dst) {
        int l = F.length(), w = 4 * l;
        // four vector loads, then four stores: a copy loop of few instructions per row keeps many rows' cache misses
        // in flight (a loop of single-vector copies compiled to code with half the rows in flight)
        if (hd == w)
            for (int j = j0; j < j1; j++) {
                int s = slots[j] * hd, d = (j - j0) * hd;
                FloatVector a0 = FloatVector.fromArray(F, src, s), a1 = FloatVector.fromArray(F, src, s + l);
                FloatVector a2 = FloatVector.fromArray(F, src, s + 2 * l), a3 = FloatVector.fromArray(F, src, s + 3 * l);
                a0.intoArray(dst, d);
                a1.intoArray(dst, d + l);
                a2.intoArray(dst, d + 2 * l);
                a3.intoArray(dst, d + 3 * l);
            }
        else
            for (int j = j0; j < j1; j++) {
                int s = slots[j] * hd, d = (j - j0) * hd, c = 0;
                for (; c + w <= hd; c += w) {
                    FloatVector a0 = FloatVector.fromArray(F, src, s + c), a1 = FloatVector.fromArray(F, src, s + c + l);
                    FloatVector a2 = FloatVector.fromArray(F, src, s + c + 2 * l), a3 = FloatVector.fromArray(F, src, s + c + 3 * l);
                    a0.intoArray(dst, d + c);
                    a1.intoArray(dst, d + c + l);
                    a2.intoArray(dst, d + c + 2 * l);
                    a3.intoArray(dst, d + c + 3 * l);
                }
                for (; c + l <= hd; c += l) FloatVector.fromArray(F, src, s + c).intoArray(dst, d + c);
                for (; c < hd; c++) dst[d + c] = src[s + c];
            }
    }

    /** {@link Kernels#weightedValuesBlock} over gathered bf16 rows (widened block by block; the same bits). */
    @Override
    public void weightedValuesBlock(float[][] e, float[] inv, boolean[] live, int hc, int j0, int j1, short[] rows,
                                    int hd, float[] o, int oOff) {
        weightedValues(e, inv, live, hc, j0, j1, null, null, rows, hd, o, oOff);
    }

    /**
     * The value sum over candidates [m0, m) with rows read from {@code values} (f32) or, when it is null, widened from
     * {@code values16} (bf16) block by block into a scratch array first: each bf16 row is widened once for all heads
     * and chunks, and the multiply-adds load float vectors from one float array either way. Candidate j's row is
     * slot slots[j], or j - m0 when slots is null.
     */
    private void weightedValues(float[][] e, float[] inv, boolean[] live, int hc, int m0, int m, int[] slots, float[] values,
                                short[] values16, int hd, float[] o, int oOff) {
        int l = F.length(), upper = hd - hd % l;
        int[] nz = new int[VALUE_BLOCK], at = new int[VALUE_BLOCK], rowAt = new int[VALUE_BLOCK];
        float[] weight = new float[VALUE_BLOCK];
        float[] rows = values != null ? values : new float[VALUE_BLOCK * hd];
        for (int j0 = m0; j0 < m; j0 += VALUE_BLOCK) {
            int j1 = Math.min(m, j0 + VALUE_BLOCK);
            // where candidate j's row starts in rows: its slot's place, or its place in the widened block (widened
            // only when a live head weighs it: masked and freed slots are never read)
            for (int j = j0; j < j1; j++) {
                int slot = slots == null ? j - m0 : slots[j];
                if (values != null) {
                    at[j - j0] = slot * hd;
                    continue;
                }
                at[j - j0] = (j - j0) * hd;
                for (int i = 0; i < hc; i++)
                    if (live[i] && e[i][j] != 0f) {
                        widenBf16(values16, slot * hd, rows, (j - j0) * hd, hd);
                        break;
                    }
            }
            int i = 0;
            // four live heads at a time: each value chunk loaded once for the four
            for (; i + 4 <= hc && live[i] && live[i + 1] && live[i + 2] && live[i + 3]; i += 4) {
                float[] e0 = e[i], e1 = e[i + 1], e2 = e[i + 2], e3 = e[i + 3];
                float v0 = inv[i], v1 = inv[i + 1], v2 = inv[i + 2], v3 = inv[i + 3];
                int b0 = oOff + i * hd, b1 = b0 + hd, b2 = b1 + hd, b3 = b2 + hd;
                // the block's candidates some of the four heads weigh (masked and freed slots: no value read at all)
                int nn = 0;
                boolean partial = false; // a candidate only some of the four weigh
                for (int j = j0; j < j1; j++) {
                    boolean w0 = e0[j] != 0f, w1 = e1[j] != 0f, w2 = e2[j] != 0f, w3 = e3[j] != 0f;
                    if (w0 || w1 || w2 || w3) nz[nn++] = j;
                    partial |= (w0 || w1 || w2 || w3) && !(w0 && w1 && w2 && w3);
                }
                if (nn == 0) continue;
                if (!partial && hd % (4 * l) == 0) {
                    // four vectors of the head dim at a time: all sixteen accumulators in registers, each candidate's
                    // four weights made once per pass and each of its row vectors loaded once (the same multiply-adds
                    // per accumulator in the same order: the same bits; 1.2x the decode speed of full attention at 8K)
                    for (int c0 = 0; c0 < hd; c0 += 4 * l) {
                        int p0 = b0 + c0, p1 = b1 + c0, p2 = b2 + c0, p3 = b3 + c0;
                        FloatVector a00 = FloatVector.fromArray(F, o, p0), a01 = FloatVector.fromArray(F, o, p0 + l);
                        FloatVector a02 = FloatVector.fromArray(F, o, p0 + 2 * l), a03 = FloatVector.fromArray(F, o, p0 + 3 * l);
                        FloatVector a10 = FloatVector.fromArray(F, o, p1), a11 = FloatVector.fromArray(F, o, p1 + l);
                        FloatVector a12 = FloatVector.fromArray(F, o, p1 + 2 * l), a13 = FloatVector.fromArray(F, o, p1 + 3 * l);
                        FloatVector a20 = FloatVector.fromArray(F, o, p2), a21 = FloatVector.fromArray(F, o, p2 + l);
                        FloatVector a22 = FloatVector.fromArray(F, o, p2 + 2 * l), a23 = FloatVector.fromArray(F, o, p2 + 3 * l);
                        FloatVector a30 = FloatVector.fromArray(F, o, p3), a31 = FloatVector.fromArray(F, o, p3 + l);
                        FloatVector a32 = FloatVector.fromArray(F, o, p3 + 2 * l), a33 = FloatVector.fromArray(F, o, p3 + 3 * l);
                        for (int t = 0; t < nn; t++) {
                            int j = nz[t], r = at[j - j0] + c0;
                            FloatVector w0 = FloatVector.broadcast(F, e0[j] * v0), w1 = FloatVector.broadcast(F, e1[j] * v1);
                            FloatVector w2 = FloatVector.broadcast(F, e2[j] * v2), w3 = FloatVector.broadcast(F, e3[j] * v3);
                            FloatVector x0 = FloatVector.fromArray(F, rows, r), x1 = FloatVector.fromArray(F, rows, r + l);
                            FloatVector x2 = FloatVector.fromArray(F, rows, r + 2 * l), x3 = FloatVector.fromArray(F, rows, r + 3 * l);
                            a00 = x0.fma(w0, a00);
                            a01 = x1.fma(w0, a01);
                            a02 = x2.fma(w0, a02);
                            a03 = x3.fma(w0, a03);
                            a10 = x0.fma(w1, a10);
                            a11 = x1.fma(w1, a11);
                            a12 = x2.fma(w1, a12);
                            a13 = x3.fma(w1, a13);
                            a20 = x0.fma(w2, a20);
                            a21 = x1.fma(w2, a21);
                            a22 = x2.fma(w2, a22);
                            a23 = x3.fma(w2, a23);
                            a30 = x0.fma(w3, a30);
                            a31 = x1.fma(w3, a31);
                            a32 = x2.fma(w3, a32);
                            a33 = x3.fma(w3, a33);
                        }
                        // written out: the same stores through a helper taking the four vectors cost 1.2x per layer
                        a00.intoArray(o, p0);
                        a01.intoArray(o, p0 + l);
                        a02.intoArray(o, p0 + 2 * l);
                        a03.intoArray(o, p0 + 3 * l);
                        a10.intoArray(o, p1);
                        a11.intoArray(o, p1 + l);
                        a12.intoArray(o, p1 + 2 * l);
                        a13.intoArray(o, p1 + 3 * l);
                        a20.intoArray(o, p2);
                        a21.intoArray(o, p2 + l);
                        a22.intoArray(o, p2 + 2 * l);
                        a23.intoArray(o, p2 + 3 * l);
                        a30.intoArray(o, p3);
                        a31.intoArray(o, p3 + l);
                        a32.intoArray(o, p3 + 2 * l);
                        a33.intoArray(o, p3 + 3 * l);
                    }
                    continue;
                }
                for (int c = 0; c < upper; c += l) {
                    FloatVector a0 = FloatVector.fromArray(F, o, b0 + c), a1 = FloatVector.fromArray(F, o, b1 + c);
                    FloatVector a2 = FloatVector.fromArray(F, o, b2 + c), a3 = FloatVector.fromArray(F, o, b3 + c);
                    if (!partial)
                        for (int t = 0; t < nn; t++) { // every listed candidate weighed by all four
                            int j = nz[t];
                            FloatVector v = FloatVector.fromArray(F, rows, at[j - j0] + c);
                            a0 = v.fma(FloatVector.broadcast(F, e0[j] * v0), a0);
                            a1 = v.fma(FloatVector.broadcast(F, e1[j] * v1), a1);
                            a2 = v.fma(FloatVector.broadcast(F, e2[j] * v2), a2);
                            a3 = v.fma(FloatVector.broadcast(F, e3[j] * v3), a3);
                        }
                    else
                        // a head's zero weight: the update is computed and blended away, not branched around (a
                        // branch whose outcome is data made C2 keep the accumulators in memory: 6x slower)
                        for (int t = 0; t < nn; t++) {
                            int j = nz[t];
                            float x0 = e0[j], x1 = e1[j], x2 = e2[j], x3 = e3[j];
                            FloatVector v = FloatVector.fromArray(F, rows, at[j - j0] + c);
                            a0 = a0.blend(v.fma(FloatVector.broadcast(F, x0 * v0), a0), weighs(x0 == 0f));
                            a1 = a1.blend(v.fma(FloatVector.broadcast(F, x1 * v1), a1), weighs(x1 == 0f));
                            a2 = a2.blend(v.fma(FloatVector.broadcast(F, x2 * v2), a2), weighs(x2 == 0f));
                            a3 = a3.blend(v.fma(FloatVector.broadcast(F, x3 * v3), a3), weighs(x3 == 0f));
                        }
                    a0.intoArray(o, b0 + c);
                    a1.intoArray(o, b1 + c);
                    a2.intoArray(o, b2 + c);
                    a3.intoArray(o, b3 + c);
                }
                if (upper < hd)
                    for (int h = i; h < i + 4; h++) valueTail(e[h], inv[h], j0, j1, at, rows, hd, upper, o, oOff + h * hd);
            }
            for (; i < hc; i++) {
                if (!live[i]) continue;
                float[] ei = e[i];
                float iv = inv[i];
                int ob = oOff + i * hd;
                int nn = 0; // the candidates this head weighs, their rows and weights: no branch inside the vector loop
                for (int j = j0; j < j1; j++) {
                    float ej = ei[j];
                    if (ej == 0f) continue;
                    rowAt[nn] = at[j - j0];
                    weight[nn++] = ej * iv;
                }
                for (int c = 0; c < upper; c += l) {
                    FloatVector acc = FloatVector.fromArray(F, o, ob + c);
                    for (int t = 0; t < nn; t++)
                        acc = FloatVector.fromArray(F, rows, rowAt[t] + c).fma(FloatVector.broadcast(F, weight[t]), acc);
                    acc.intoArray(o, ob + c);
                }
                valueTail(ei, iv, j0, j1, at, rows, hd, upper, o, ob);
            }
        }
    }

    /**
     * The elements [upper, hd) of {@link #weightedValues} for one head over candidates [j0, j1) (candidate j's row at
     * rows[at[j - j0]]): axpy's scalar tail.
     */
    private static void valueTail(float[] ei, float iv, int j0, int j1, int[] at, float[] rows, int hd, int upper,
                                  float[] o, int ob) {
        for (int d = upper; d < hd; d++) {
            float acc = o[ob + d];
            for (int j = j0; j < j1; j++) {
                float ej = ei[j];
                if (ej == 0f) continue;
                acc += ej * iv * rows[at[j - j0] + d];
            }
            o[ob + d] = acc;
        }
    }

    /** Candidates per block of {@link #weightedValues}: their value rows (8 KiB at head dim 64) stay in L1. */
    private static final int VALUE_BLOCK = 32;

    private static float tail(int[] w, int wOff, float[] xe, float[] xo, int xOff, int j, int pairs, float s) {
        for (; j < pairs; j++) {
            int p = w[wOff + j];
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
    public void columnDots(float[] a, int aOff, int rows, float[] x, int xOff, int stride, float[] out, int outOff, int len) {
        int l = F.length();
        int t = 0;
        // mul then add, never fma: each lane's sum is the scalar loop's, bit for bit
        for (; t + 2 * l <= len; t += 2 * l) {
            FloatVector acc0 = FloatVector.zero(F), acc1 = FloatVector.zero(F);
            for (int c = 0, xi = xOff + t; c < rows; c++, xi += stride) {
                float ac = a[aOff + c];
                acc0 = acc0.add(FloatVector.fromArray(F, x, xi).mul(ac));
                acc1 = acc1.add(FloatVector.fromArray(F, x, xi + l).mul(ac));
            }
            acc0.intoArray(out, outOff + t);
            acc1.intoArray(out, outOff + t + l);
        }
        for (; t + l <= len; t += l) {
            FloatVector acc = FloatVector.zero(F);
            for (int c = 0, xi = xOff + t; c < rows; c++, xi += stride) acc = acc.add(FloatVector.fromArray(F, x, xi).mul(a[aOff + c]));
            acc.intoArray(out, outOff + t);
        }
        for (; t < len; t++) {
            float acc = 0f;
            for (int c = 0; c < rows; c++) acc += a[aOff + c] * x[xOff + c * stride + t];
            out[outOff + t] = acc;
        }
    }

    @Override
    public void scaleShiftAdd(float a, float b, float[] x, int xOff, float[] f, int fOff, float[] y, int yOff, int len) {
        int l = F.length();
        int upper = len - len % l;
        int i = 0;
        if (f == null) {
            for (; i < upper; i += l) {
                FloatVector e = FloatVector.fromArray(F, x, xOff + i).mul(a).add(b);
                FloatVector.fromArray(F, y, yOff + i).add(e).intoArray(y, yOff + i);
            }
            for (; i < len; i++) y[yOff + i] += a * x[xOff + i] + b;
        } else {
            for (; i < upper; i += l) {
                FloatVector e = FloatVector.fromArray(F, x, xOff + i).mul(a).add(b).mul(FloatVector.fromArray(F, f, fOff + i));
                FloatVector.fromArray(F, y, yOff + i).add(e).intoArray(y, yOff + i);
            }
            for (; i < len; i++) y[yOff + i] += (a * x[xOff + i] + b) * f[fOff + i];
        }
    }

    /**
     * {@link Kernels#quantValueRun} with each output chunk of up to four heads held in registers across the run (one
     * load and store per chunk and run instead of per candidate); per element the same operations in candidate order.
     */
    @Override
    public void quantValueRun(int hc, int nt, int stride, byte[] kind, boolean[] skip, float[] p, float[] ps, float[] pz,
                              int ng, int gs, float[] rows, int hd, float[] o, int oOff) {
        int l = F.length();
        if (hd % l != 0 || gs % l != 0) {
            Kernels.super.quantValueRun(hc, nt, stride, kind, skip, p, ps, pz, ng, gs, rows, hd, o, oOff);
            return;
        }
        // no branch whose outcome is data around the vector updates (with both outcomes frequent C2 kept the
        // accumulators in memory: a run with a tenth of its candidates unweighed took 6.7x as long): the candidates some
        // head weighs are listed first, a quantized row a head skips adds -0, a skipped window row is blended away
        int[] cand = new int[nt];
        int nc = 0;
        for (int t = 0; t < nt; t++) if (kind[t] != 0) cand[nc++] = t;
        int i = 0;
        for (; i + 4 <= hc; i += 4) {
            int b0 = oOff + i * hd, b1 = b0 + hd, b2 = b1 + hd, b3 = b2 + hd;
            int s0 = i * stride, s1 = s0 + stride, s2 = s1 + stride, s3 = s2 + stride;
            for (int c = 0; c < hd; c += l) {
                int g = c / gs;
                FloatVector y0 = FloatVector.fromArray(F, o, b0 + c), y1 = FloatVector.fromArray(F, o, b1 + c);
                FloatVector y2 = FloatVector.fromArray(F, o, b2 + c), y3 = FloatVector.fromArray(F, o, b3 + c);
                for (int u = 0; u < nc; u++) {
                    int t = cand[u];
                    FloatVector x = FloatVector.fromArray(F, rows, t * hd + c);
                    if (kind[t] == 1) {
                        y0 = y0.blend(x.fma(FloatVector.broadcast(F, p[s0 + t]), y0), weighs(skip[s0 + t]));
                        y1 = y1.blend(x.fma(FloatVector.broadcast(F, p[s1 + t]), y1), weighs(skip[s1 + t]));
                        y2 = y2.blend(x.fma(FloatVector.broadcast(F, p[s2 + t]), y2), weighs(skip[s2 + t]));
                        y3 = y3.blend(x.fma(FloatVector.broadcast(F, p[s3 + t]), y3), weighs(skip[s3 + t]));
                    } else {
                        int q0 = (s0 + t) * ng + g, q1 = (s1 + t) * ng + g, q2 = (s2 + t) * ng + g, q3 = (s3 + t) * ng + g;
                        y0 = y0.add(x.mul(ps[q0]).add(pz[q0])); // skipped: a term of -0
                        y1 = y1.add(x.mul(ps[q1]).add(pz[q1])); // skipped: a term of -0
                        y2 = y2.add(x.mul(ps[q2]).add(pz[q2])); // skipped: a term of -0
                        y3 = y3.add(x.mul(ps[q3]).add(pz[q3])); // skipped: a term of -0
                    }
                }
                y0.intoArray(o, b0 + c);
                y1.intoArray(o, b1 + c);
                y2.intoArray(o, b2 + c);
                y3.intoArray(o, b3 + c);
            }
        }
        for (; i < hc; i++) {
            int b0 = oOff + i * hd, s0 = i * stride;
            for (int c = 0; c < hd; c += l) {
                int g = c / gs;
                FloatVector y0 = FloatVector.fromArray(F, o, b0 + c);
                for (int u = 0; u < nc; u++) {
                    int t = cand[u];
                    FloatVector x = FloatVector.fromArray(F, rows, t * hd + c);
                    if (kind[t] == 1) {
                        y0 = y0.blend(x.fma(FloatVector.broadcast(F, p[s0 + t]), y0), weighs(skip[s0 + t]));
                    } else { // skipped: a term of -0
                        int q0 = (s0 + t) * ng + g;
                        y0 = y0.add(x.mul(ps[q0]).add(pz[q0]));
                    }
                }
                y0.intoArray(o, b0 + c);
            }
        }
    }

    /** All lanes when a head weighs the candidate (skip false), none otherwise (from a compare: no branch). */
    private static VectorMask<Float> weighs(boolean skip) {
        return FloatVector.broadcast(F, skip ? 1f : 0f).compare(VectorOperators.EQ, 0f);
    }

    @Override
    public void unpackCodes(byte[] a, int base, int n, int bits, float[] out, int off) {
        if (B == null || bits != 2 && bits != 4 && bits != 8) {
            Kernels.super.unpackCodes(a, base, n, bits, out, off);
            return;
        }
        int l = F.length(), step = l * bits / 8, mask = (1 << bits) - 1;
        VectorShuffle<Byte> spread = SPREAD[bits];
        IntVector shift = SHIFT[bits];
        int e = 0;
        // whole loads only: a masked load at the array's end is not compiled to a vector load under Java 17 (it
        // showed up as its own hot frame, and int4 decode ran 25% slower); the last codes of a row that ends its array
        // go through the scalar loop instead (the same values)
        for (int k = base; e + l <= n && k + l <= a.length; e += l, k += step) {
            ByteVector bv = ByteVector.fromArray(B, a, k);
            if (bits != 8) bv = bv.rearrange(spread);
            IntVector iv = (IntVector) bv.convertShape(VectorOperators.B2I, I, 0);
            ((FloatVector) iv.lanewise(VectorOperators.LSHR, shift).and(mask).convert(VectorOperators.I2F, 0)).intoArray(out, off + e);
        }
        int bl = B.length();
        if (e + l <= n && bits != 8 && a.length >= bl) { // the next whole chunk, from the array's last bl bytes
            int k = base + e * bits / 8, q = a.length - bl;
            if (k + step <= a.length && k > q) {
                ByteVector bv = ByteVector.fromArray(B, a, q).rearrange(SPREAD_AT[bits][k - q]);
                IntVector iv = (IntVector) bv.convertShape(VectorOperators.B2I, I, 0);
                ((FloatVector) iv.lanewise(VectorOperators.LSHR, shift).and(mask).convert(VectorOperators.I2F, 0)).intoArray(out, off + e);
                e += l;
            }
        }
        if (e < n) Kernels.super.unpackCodes(a, base + e * bits / 8, n - e, bits, out, off + e);
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

    /**
     * Pages per {@link #questPageSums} call: one per lane of the preferred width, as every other float kernel. (A
     * 256-bit species for Quest on AVX-512 made its compares and blends about 1.25x faster under Java 17, but two float
     * species in one process make the type profiles inside the Vector API's shared methods, such as
     * FloatVector.intoArray, see two vector classes; kernels compiled after that ran the API's Java fallback instead
     * of vector instructions: Quest's decode steps 2.6x slower, 16.5 against 44-55 tokens/s at 8K on
     * llama-1b-attention.)
     */
    int questPages() {
        return F.length();
    }

    /**
     * Quest page bounds over key rows keys[offs[j], offs[j] + len), j < n, in that order: max[bOff+i] takes a key
     * element only when it is greater, min[bOff+i] only when it is less. Compare masks and blends, not lanewise
     * MAX/MIN, so a NaN key never replaces a bound and a tie (-0 against +0) keeps the earlier value: the scalar
     * {@code if (k > max) max = k; if (k < min) min = k;} bit for bit.
     */
    void keyBounds(float[] keys, int[] offs, int n, float[] max, float[] min, int bOff, int len) {
        int l = F.length();
        int i = 0;
        for (; i + 4 * l <= len; i += 4 * l) {
            int b0 = bOff + i, b1 = b0 + l, b2 = b1 + l, b3 = b2 + l;
            FloatVector x0 = FloatVector.fromArray(F, max, b0), x1 = FloatVector.fromArray(F, max, b1);
            FloatVector x2 = FloatVector.fromArray(F, max, b2), x3 = FloatVector.fromArray(F, max, b3);
            FloatVector y0 = FloatVector.fromArray(F, min, b0), y1 = FloatVector.fromArray(F, min, b1);
            FloatVector y2 = FloatVector.fromArray(F, min, b2), y3 = FloatVector.fromArray(F, min, b3);
            for (int j = 0; j < n; j++) {
                int o = offs[j] + i;
                FloatVector k0 = FloatVector.fromArray(F, keys, o), k1 = FloatVector.fromArray(F, keys, o + l);
                FloatVector k2 = FloatVector.fromArray(F, keys, o + 2 * l), k3 = FloatVector.fromArray(F, keys, o + 3 * l);
                x0 = x0.blend(k0, k0.compare(VectorOperators.GT, x0));
                y0 = y0.blend(k0, k0.compare(VectorOperators.LT, y0));
                x1 = x1.blend(k1, k1.compare(VectorOperators.GT, x1));
                y1 = y1.blend(k1, k1.compare(VectorOperators.LT, y1));
                x2 = x2.blend(k2, k2.compare(VectorOperators.GT, x2));
                y2 = y2.blend(k2, k2.compare(VectorOperators.LT, y2));
                x3 = x3.blend(k3, k3.compare(VectorOperators.GT, x3));
                y3 = y3.blend(k3, k3.compare(VectorOperators.LT, y3));
            }
            x0.intoArray(max, b0);
            x1.intoArray(max, b1);
            x2.intoArray(max, b2);
            x3.intoArray(max, b3);
            y0.intoArray(min, b0);
            y1.intoArray(min, b1);
            y2.intoArray(min, b2);
            y3.intoArray(min, b3);
        }
        for (; i + l <= len; i += l) {
            FloatVector x = FloatVector.fromArray(F, max, bOff + i), y = FloatVector.fromArray(F, min, bOff + i);
            for (int j = 0; j < n; j++) {
                FloatVector kv = FloatVector.fromArray(F, keys, offs[j] + i);
                x = x.blend(kv, kv.compare(VectorOperators.GT, x));
                y = y.blend(kv, kv.compare(VectorOperators.LT, y));
            }
            x.intoArray(max, bOff + i);
            y.intoArray(min, bOff + i);
        }
        for (; i < len; i++) {
            float x = max[bOff + i], y = min[bOff + i];
            for (int j = 0; j < n; j++) {
                float kv = keys[offs[j] + i];
                if (kv > x) x = kv;
                if (kv < y) y = kv;
            }
            max[bOff + i] = x;
            min[bOff + i] = y;
        }
    }

    /**
     * Quest scores of {@link #questPages()} pages at once, one per lane, for {@code heads} query rows
     * q[qOff + h·len, qOff + (h+1)·len), from bounds stored dimension-major (maxT[i·P + p], minT[i·P + p],
     * P = questPages()): sums[h·P + p] = Σ_{i<len} max(q_h[i]·maxT[i·P+p], q_h[i]·minT[i·P+p]), each lane adding
     * its terms left to right from 0 like the scalar loop. Lanewise MAX has Math.max's semantics, so a sum that is
     * not NaN has the scalar loop's bits (a NaN sum may carry another payload).
     */
    void questPageSums(float[] q, int qOff, int heads, float[] maxT, float[] minT, int len, float[] sums) {
        questPageSums(q, qOff, heads, maxT, minT, 0, len, sums);
    }

    /** {@link #questPageSums} over bounds stored from maxT/minT[tOff] on. */
    void questPageSums(float[] q, int qOff, int heads, float[] maxT, float[] minT, int tOff, int len, float[] sums) {
        int l = F.length();
        int h = 0;
        for (; h + 4 <= heads; h += 4) {
            int q0 = qOff + h * len, q1 = q0 + len, q2 = q1 + len, q3 = q2 + len;
            FloatVector s0 = FloatVector.zero(F), s1 = s0, s2 = s0, s3 = s0;
            for (int i = 0; i < len; i++) {
                FloatVector x = FloatVector.fromArray(F, maxT, tOff + i * l), y = FloatVector.fromArray(F, minT, tOff + i * l);
                FloatVector a0 = FloatVector.broadcast(F, q[q0 + i]), a1 = FloatVector.broadcast(F, q[q1 + i]);
                FloatVector a2 = FloatVector.broadcast(F, q[q2 + i]), a3 = FloatVector.broadcast(F, q[q3 + i]);
                s0 = s0.add(a0.mul(x).lanewise(VectorOperators.MAX, a0.mul(y)));
                s1 = s1.add(a1.mul(x).lanewise(VectorOperators.MAX, a1.mul(y)));
                s2 = s2.add(a2.mul(x).lanewise(VectorOperators.MAX, a2.mul(y)));
                s3 = s3.add(a3.mul(x).lanewise(VectorOperators.MAX, a3.mul(y)));
            }
            s0.intoArray(sums, h * l);
            s1.intoArray(sums, (h + 1) * l);
            s2.intoArray(sums, (h + 2) * l);
            s3.intoArray(sums, (h + 3) * l);
        }
        for (; h < heads; h++) {
            int q0 = qOff + h * len;
            FloatVector s0 = FloatVector.zero(F);
            for (int i = 0; i < len; i++) {
                FloatVector a0 = FloatVector.broadcast(F, q[q0 + i]);
                s0 = s0.add(a0.mul(FloatVector.fromArray(F, maxT, tOff + i * l)).lanewise(VectorOperators.MAX, a0.mul(FloatVector.fromArray(F, minT, tOff + i * l))));
            }
            s0.intoArray(sums, h * l);
        }
    }

    @Override
    public String describe() {
        return "Vector API " + F.vectorBitSize() + "-bit";
    }
}
