package dev.tokenpress.backend.cpu;

/** Inner loops of the CPU backend: a Vector API implementation and a scalar fallback with the same results up to rounding. */
interface Kernels {
    /** Σ a[aOff+i]·b[bOff+i], i < len. */
    float dot(float[] a, int aOff, float[] b, int bOff, int len);

    /**
     * Dot of a bf16 row with x, the row given as ints each packing two bf16 values (element 2j in the low half,
     * 2j+1 in the high half, i.e. the little-endian file layout) and x split into its even (xe) and odd (xo)
     * elements: Σ_j bf16lo(w[j])·xe[j] + bf16hi(w[j])·xo[j], j < pairs.
     */
    float dotBf16(int[] w, float[] xe, float[] xo, int xOff, int pairs);

    /**
     * Four dots at once: rows 0..3 of {@code w} (packed bf16 pairs, row i at w[i*pairs, (i+1)*pairs)) with the same
     * x; out[outOff + i*outStride] = dot(row i, x). Same per-row sum order as {@link #dotBf16}, so the results are
     * bit-identical to four separate calls.
     */
    default void dotBf16x4(int[] w, int pairs, float[] xe, float[] xo, int xOff, float[] out, int outOff, int outStride) {
        int[] row = new int[pairs];
        for (int i = 0; i < 4; i++) {
            System.arraycopy(w, i * pairs, row, 0, pairs);
            out[outOff + i * outStride] = dotBf16(row, xe, xo, xOff, pairs);
        }
    }

    /**
     * Softmax numerators in place: x[off+i] = {@link #expf}(x[off+i] - max) for i < len (-inf gives 0), returning
     * their sum accumulated in double: four running sums over the elements i ≡ 0, 1, 2, 3 (mod 4) in order, then
     * (s0 + s1) + (s2 + s3). An override must give the same bits (the Vector API's own exp gave different bits before
     * and after the JIT compiled it, so decoding was not reproducible within a run; expf is made of operations that
     * are exact in both).
     */
    default double expShifted(float[] x, int off, int len, float max) {
        for (int i = 0; i < len; i++) x[off + i] = expf(x[off + i] - max);
        return sum4(x, off, len);
    }

    /**
     * {@link #expShifted} over a candidate list that stands for a longer identity list with zeros left out: x[j] =
     * expf(x[j] - max) for j < len, and the sum {@link #sum4} would give over the identity list, each x[j] in the class
     * slots[j] mod 4 (slots ascending; the left-out entries are exponentials of -inf, zeros that add nothing).
     */
    default double expShiftedBySlot(float[] x, int len, float max, int[] slots) {
        for (int i = 0; i < len; i++) x[i] = expf(x[i] - max);
        return sum4BySlot(x, len, slots);
    }

    /** {@link #sum4} of an identity list's entries given as x[j] at index slots[j] (ascending), the others zero. */
    static double sum4BySlot(float[] x, int len, int[] slots) {
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (int j = 0; j < len; j++) {
            double v = x[j];
            switch (slots[j] & 3) {
                case 0 -> s0 += v;
                case 1 -> s1 += v;
                case 2 -> s2 += v;
                default -> s3 += v;
            }
        }
        return (s0 + s1) + (s2 + s3);
    }

    /** (s0 + s1) + (s2 + s3), s_k the double sum of x[off + i] over i < len, i ≡ k (mod 4), in order. */
    static double sum4(float[] x, int off, int len) {
        double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        int i = 0;
        for (; i + 3 < len; i += 4) {
            s0 += x[off + i];
            s1 += x[off + i + 1];
            s2 += x[off + i + 2];
            s3 += x[off + i + 3];
        }
        if (i < len) s0 += x[off + i];
        if (i + 1 < len) s1 += x[off + i + 1];
        if (i + 2 < len) s2 += x[off + i + 2];
        return (s0 + s1) + (s2 + s3);
    }

    // expf: e^d = 2^n · e^r, n = round(d · log2 e) (by adding 1.5 · 2^23 in one fused multiply-add), r = d - n · ln 2
    // (ln 2 split in two so that n · LN2_HI is exact), e^r by its Taylor series to degree 7 in Horner form (|r| <=
    // 0.347: truncation below 1e-8 relative), 2^n built from the bits of the rounded sum. Only fused multiply-adds,
    // adds, multiplies, compares and integer bit operations: every step exact IEEE, so interpreted, compiled and
    // vectorised code give the same bits.
    float EXP_MAGIC = 12582912f;                   // 1.5 · 2^23
    int EXP_MAGIC_BITS = Float.floatToRawIntBits(EXP_MAGIC);
    float EXP_LOG2E = 1.44269504f;
    float EXP_LN2_HI = 0.693145751953125f;         // ln 2 to 16 bits: n · LN2_HI is exact for |n| < 2^8
    float EXP_LN2_LO = (float) (0.6931471805599453 - 0.693145751953125); // ln 2 - LN2_HI
    float EXP_FLOOR = -87.5f;                      // below it the result is 0 (e^-87.5 ≈ 1e-38, the smallest normal floats)
    float EXP_C7 = 1f / 5040, EXP_C6 = 1f / 720, EXP_C5 = 1f / 120, EXP_C4 = 1f / 24, EXP_C3 = 1f / 6, EXP_C2 = 0.5f;

    /**
     * e^d for d <= 88 within about 1 ulp of {@link Math#exp} (0 below -87.5 instead of subnormal values; NaN stays NaN),
     * from exact IEEE operations only (see above), so every caller and every compilation of it gives the same bits.
     */
    static float expf(float d) {
        boolean under = d < EXP_FLOOR;
        float dc = under ? EXP_FLOOR : d;
        float t = Math.fma(dc, EXP_LOG2E, EXP_MAGIC);
        float n = t - EXP_MAGIC;
        float r = Math.fma(n, -EXP_LN2_HI, dc);
        r = Math.fma(n, -EXP_LN2_LO, r);
        float p = Math.fma(EXP_C7, r, EXP_C6);
        p = Math.fma(p, r, EXP_C5);
        p = Math.fma(p, r, EXP_C4);
        p = Math.fma(p, r, EXP_C3);
        p = Math.fma(p, r, EXP_C2);
        p = Math.fma(p, r, 1f);
        p = Math.fma(p, r, 1f);
        float scale = Float.intBitsToFloat((Float.floatToRawIntBits(t) - EXP_MAGIC_BITS + 127) << 23);
        return under ? 0f : p * scale;
    }

    /**
     * Four dots of one row b[bOff, +len) with a[aOff + i·aStride, +len), i < 4, into out[0, 4): each the bits of
     * {@link #dot} (an override shares the loads of b among the four).
     */
    default void dot4(float[] a, int aOff, int aStride, float[] b, int bOff, int len, float[] out) {
        for (int i = 0; i < 4; i++) out[i] = dot(a, aOff + i * aStride, b, bOff, len);
    }

    // ---- rows stored as bf16 (a KV cache with -ctk / -ctv bf16): each kernel gives the bits of its f32 form over
    // the widened row (a bf16 value widens to a float exactly), so a bf16 cache attends exactly as an f32 cache that
    // holds the same rounded values

    /** dst[dOff + i] = the float of bf16 bits src[sOff + i], i < len (exact). */
    default void widenBf16(short[] src, int sOff, float[] dst, int dOff, int len) {
        for (int i = 0; i < len; i++) dst[dOff + i] = Float.intBitsToFloat(src[sOff + i] << 16);
    }

    /** dst[dOff + i] = x[xOff + i] rounded to bf16 bits (to nearest even; a NaN stays a NaN), i < len. */
    static void roundBf16(float[] x, int xOff, short[] dst, int dOff, int len) {
        for (int i = 0; i < len; i++) dst[dOff + i] = dev.tokenpress.io.Half.floatToBf16(x[xOff + i]);
    }

    /** {@link #dot} with b a bf16 row: the bits of dot(a, widened b). */
    default float dot(float[] a, int aOff, short[] b, int bOff, int len) {
        float[] row = new float[len];
        widenBf16(b, bOff, row, 0, len);
        return dot(a, aOff, row, 0, len);
    }

    /** {@link #dot4} with b a bf16 row: the bits of dot4 over the widened row. */
    default void dot4(float[] a, int aOff, int aStride, short[] b, int bOff, int len, float[] out) {
        float[] row = new float[len];
        widenBf16(b, bOff, row, 0, len);
        dot4(a, aOff, aStride, row, 0, len, out);
    }

    /** {@link #weightedValues} over bf16 value rows: the bits of the f32 form over the widened rows. */
    default void weightedValues(float[][] e, float[] inv, boolean[] live, int hc, int m, int[] slots, short[] values,
                                int hd, float[] o, int oOff) {
        float[] row = new float[hd];
        for (int j = 0; j < m; j++) {
            int slot = slots == null ? j : slots[j];
            boolean widened = false;
            for (int i = 0; i < hc; i++) {
                if (!live[i]) continue;
                float ej = e[i][j];
                if (ej == 0f) continue;
                if (!widened) widenBf16(values, slot * hd, row, 0, hd);
                widened = true;
                axpy(ej * inv[i], row, 0, o, oOff + i * hd, hd);
            }
        }
    }

    /** y[yOff+i] += a·x[xOff+i], i < len. */
    void axpy(float a, float[] x, int xOff, float[] y, int yOff, int len);

    /**
     * Attention's weighted value sum for {@code hc} q-heads of one KV head: for each head i with live[i] (output row
     * o[oOff + i·hd, +hd)) and each of the m candidates j in order (slot = slots == null ? j : slots[j]) whose
     * numerator e[i][j] is not 0: o += (e[i][j]·inv[i]) · values[slot·hd, +hd), as {@link #axpy} computes it. The
     * default makes those axpy calls; an override must give the same bits (the same operations per element, in the
     * same order).
     */
    default void weightedValues(float[][] e, float[] inv, boolean[] live, int hc, int m, int[] slots, float[] values,
                                int hd, float[] o, int oOff) {
        for (int j = 0; j < m; j++) {
            int slot = slots == null ? j : slots[j];
            for (int i = 0; i < hc; i++) {
                if (!live[i]) continue;
                float ej = e[i][j];
                if (ej == 0f) continue;
                axpy(ej * inv[i], values, slot * hd, o, oOff + i * hd, hd);
            }
        }
    }

    /**
     * The value sum of {@link #weightedValues} over the candidates [j0, j1) only, whose rows lie one after another in
     * {@code rows} (candidate j's at rows[(j - j0)·hd, +hd): a block gathered by {@link #gatherRows}). Calls over
     * consecutive blocks give the bits of one {@link #weightedValues} call over the candidates' own rows.
     */
    default void weightedValuesBlock(float[][] e, float[] inv, boolean[] live, int hc, int j0, int j1, float[] rows,
                                     int hd, float[] o, int oOff) {
        for (int j = j0; j < j1; j++)
            for (int i = 0; i < hc; i++) {
                if (!live[i]) continue;
                float ej = e[i][j];
                if (ej == 0f) continue;
                axpy(ej * inv[i], rows, (j - j0) * hd, o, oOff + i * hd, hd);
            }
    }

    /** dst[(j - j0)·hd, +hd) = src[slots[j]·hd, +hd) for j in [j0, j1): rows of a slot list packed together. */
    default void gatherRows(float[] src, int[] slots, int j0, int j1, int hd, float[] dst) {
        for (int j = j0; j < j1; j++) System.arraycopy(src, slots[j] * hd, dst, (j - j0) * hd, hd);
    }

    /**
     * {@link #gatherRows} of bf16 rows (a copy call per row: as fast here as vector copies of 128-byte rows, which the
     * Java 17 JIT compiled to slow code for shorts).
     */
    default void gatherRows(short[] src, int[] slots, int j0, int j1, int hd, short[] dst) {
        for (int j = j0; j < j1; j++) System.arraycopy(src, slots[j] * hd, dst, (j - j0) * hd, hd);
    }

    /** {@link #weightedValuesBlock} over gathered bf16 rows: the bits of the f32 form over the widened rows. */
    default void weightedValuesBlock(float[][] e, float[] inv, boolean[] live, int hc, int j0, int j1, short[] rows,
                                     int hd, float[] o, int oOff) {
        float[] row = new float[hd];
        for (int j = j0; j < j1; j++) {
            boolean widened = false;
            for (int i = 0; i < hc; i++) {
                if (!live[i]) continue;
                float ej = e[i][j];
                if (ej == 0f) continue;
                if (!widened) widenBf16(rows, (j - j0) * hd, row, 0, hd);
                widened = true;
                axpy(ej * inv[i], row, 0, o, oOff + i * hd, hd);
            }
        }
    }

    /**
     * Q8_0 codes and scales of one row, exactly as {@link dev.tokenpress.backend.Q8Codec#quantizeRow} (which CUDA
     * uses too, so both backends hold the same codes): an override must give the same bits for every input, NaN and
     * infinities included.
     */
    default void quantizeQ8Row(float[] src, int off, int cols, byte[] q, int qOff, float[] d, int dOff) {
        dev.tokenpress.backend.Q8Codec.quantizeRow(src, off, cols, q, qOff, d, dOff);
    }

    /**
     * Q4_0 codes and scales of {@code cols} weights (whole blocks of 32), llama.cpp's: per block the weight of largest
     * magnitude m (the first of equals; NaN never), {@code d = m / -8}, codes {@code min(15, (int) (w / d + 8.5))} (as
     * w · (1/d) + 8.5 in float), packed two per byte: element j in the low nibble of byte j, element j + 16 in the
     * high one. An override must give the same bits for every input.
     */
    default void quantizeQ4Row(float[] src, int off, int cols, byte[] q, int qOff, float[] d, int dOff) {
        for (int b = 0; b < cols / 32; b++) quantizeQ4Block(src, off + b * 32, q, qOff + b * 16, d, dOff + b);
    }

    /** One block of {@link #quantizeQ4Row}: src[base, base + 32) into q[qo, qo + 16) and d[di]. */
    static void quantizeQ4Block(float[] src, int base, byte[] q, int qo, float[] d, int di) {
        float amax = 0, max = 0;
        for (int j = 0; j < 32; j++) {
            float v = src[base + j];
            if (Math.abs(v) > amax) {
                amax = Math.abs(v);
                max = v;
            }
        }
        float scale = max / -8f, inv = scale != 0 ? 1f / scale : 0f;
        d[di] = scale;
        for (int j = 0; j < 16; j++) {
            int lo = Math.min(15, (int) (src[base + j] * inv + 8.5f));
            int hi = Math.min(15, (int) (src[base + j + 16] * inv + 8.5f));
            q[qo + j] = (byte) (lo | (hi << 4));
        }
    }

    /**
     * Σ_b d[dOff + b] · Σ_{j<32} q[qOff + 32b + j] · x[xOff + 32b + j] over {@code blocks} Q8_0 blocks: a row of a
     * {@link CpuQ8Weight} times an f32 vector (each block's sum taken first, then scaled).
     */
    default float dotQ8(byte[] q, int qOff, float[] d, int dOff, float[] x, int xOff, int blocks) {
        float acc = 0f;
        for (int b = 0; b < blocks; b++) {
            int qo = qOff + b * CpuBlockWeight.BLOCK, xo = xOff + b * CpuBlockWeight.BLOCK;
            float s = 0f;
            for (int j = 0; j < CpuBlockWeight.BLOCK; j++) s += q[qo + j] * x[xo + j];
            acc += d[dOff + b] * s;
        }
        return acc;
    }

    /**
     * Four consecutive rows of widened codes ({@code qf[i·32·blocks ..]}, scales {@code d[dOff + i·blocks ..]}) times
     * one x: out[outOff + i] = {@link #dotQ8f} of row i, bit-identical to four separate calls (x loaded once).
     */
    default void dotQ8fx4(float[] qf, float[] d, int dOff, float[] x, int xOff, int blocks, float[] out, int outOff) {
        int len = blocks * CpuBlockWeight.BLOCK;
        for (int i = 0; i < 4; i++) out[outOff + i] = dotQ8f(qf, i * len, d, dOff + i * blocks, x, xOff, blocks);
    }

    /** {@link #dotQ8fx4} for three x rows: out[4i .. 4i + 4) for x at xOff_i (each bit-identical). */
    default void dotQ8fx4x3(float[] qf, float[] d, int dOff, float[] x, int xOff0, int xOff1, int xOff2, int blocks,
                            float[] out) {
        dotQ8fx4(qf, d, dOff, x, xOff0, blocks, out, 0);
        dotQ8fx4(qf, d, dOff, x, xOff1, blocks, out, 4);
        dotQ8fx4(qf, d, dOff, x, xOff2, blocks, out, 8);
    }

    /**
     * {@link #dotQ8} for Q4_0 codes ({@link CpuQ4Weight}: 16 bytes per block, code j − 8 of a block in the low nibble
     * of byte j for j < 16, the high nibble of byte j − 16 otherwise): the same operations as {@link #dotQ8f} over
     * the widened codes.
     */
    default float dotQ4(byte[] q, int qOff, float[] d, int dOff, float[] x, int xOff, int blocks) {
        float acc = 0f;
        int half = CpuBlockWeight.BLOCK / 2;
        for (int b = 0; b < blocks; b++) {
            int qo = qOff + b * half, xo = xOff + b * CpuBlockWeight.BLOCK;
            float s = 0f;
            for (int j = 0; j < half; j++) s += ((q[qo + j] & 0x0F) - 8) * x[xo + j];
            for (int j = 0; j < half; j++) s += (((q[qo + j] & 0xFF) >>> 4) - 8) * x[xo + half + j];
            acc += d[dOff + b] * s;
        }
        return acc;
    }

    /**
     * {@link #dotQ8} over codes already widened to floats ({@code qf}, exact): the same arithmetic in the same order,
     * so a chunk that widens a row once gets the bits a single row gets.
     */
    default float dotQ8f(float[] qf, int qOff, float[] d, int dOff, float[] x, int xOff, int blocks) {
        float acc = 0f;
        for (int b = 0; b < blocks; b++) {
            int qo = qOff + b * CpuBlockWeight.BLOCK, xo = xOff + b * CpuBlockWeight.BLOCK;
            float s = 0f;
            for (int j = 0; j < CpuBlockWeight.BLOCK; j++) s += qf[qo + j] * x[xo + j];
            acc += d[dOff + b] * s;
        }
        return acc;
    }

    /**
     * Dots of a vector with the columns of a row-major matrix: out[outOff+t] = Σ_{c<rows} a[aOff+c]·x[xOff+c·stride+t]
     * for t < len, each sum taken in c order from 0 with a separate multiply and add (no fused multiply-add), so every
     * implementation gives the results of the plain scalar loop bit for bit.
     */
    default void columnDots(float[] a, int aOff, int rows, float[] x, int xOff, int stride, float[] out, int outOff, int len) {
        for (int t = 0; t < len; t++) {
            float acc = 0f;
            for (int c = 0; c < rows; c++) acc += a[aOff + c] * x[xOff + c * stride + t];
            out[outOff + t] = acc;
        }
    }

    /**
     * y[yOff+i] += a·x[xOff+i] + b, i < len; with f non-null y[yOff+i] += (a·x[xOff+i] + b)·f[fOff+i]. Separate
     * multiplies and adds (no fused multiply-add): bit-identical to the scalar loop in every implementation.
     */
    default void scaleShiftAdd(float a, float b, float[] x, int xOff, float[] f, int fOff, float[] y, int yOff, int len) {
        if (f == null) for (int i = 0; i < len; i++) y[yOff + i] += a * x[xOff + i] + b;
        else for (int i = 0; i < len; i++) y[yOff + i] += (a * x[xOff + i] + b) * f[fOff + i];
    }

    /**
     * The value sum of a run of candidates of a quantized cache for {@code hc} query heads: for candidate t < nt (in
     * order) and head i < hc whose {@code skip[i·stride + t]} is false, with x_t = rows[t·hd, +hd): kind[t] == 1 (an f32
     * window row): out_i += p[i·stride + t] · x_t as {@link #axpy}; kind[t] == 2 (a quantized row, its codes unpacked
     * into x_t): per channel group g < ng of gs channels, out_i[g] += ps[q·ng + g] · x_t[g] + pz[q·ng + g] (q = i·stride +
     * t) as {@link #scaleShiftAdd} without factors; kind[t] == 0: nothing. out_i = o[oOff + i·hd, +hd). Per element
     * the same operations in candidate order as those calls, so an override (outputs held in registers across the
     * run) gives the same bits. A kind-2 entry that is skipped has ps and pz of -0 (the caller's part): its codes are
     * non-negative, so its term c·(-0) + (-0) is exactly -0 and adding it leaves every output bit as it is, NaN
     * included; an override may add it instead of branching (whether a head weighs a candidate is data, and a
     * mispredicted branch per head and candidate made the run three times slower).
     */
    default void quantValueRun(int hc, int nt, int stride, byte[] kind, boolean[] skip, float[] p, float[] ps, float[] pz,
                               int ng, int gs, float[] rows, int hd, float[] o, int oOff) {
        for (int t = 0; t < nt; t++) {
            if (kind[t] == 0) continue;
            for (int i = 0; i < hc; i++) {
                int q = i * stride + t;
                if (skip[q]) continue;
                if (kind[t] == 1) axpy(p[q], rows, t * hd, o, oOff + i * hd, hd);
                else
                    for (int g = 0; g < ng; g++)
                        scaleShiftAdd(ps[q * ng + g], pz[q * ng + g], rows, t * hd + g * gs, null, 0, o, oOff + i * hd + g * gs, gs);
            }
        }
    }

    /**
     * Unpacks n codes of b bits (element e at bit e·b of a[base..], first element in the low bits) to floats
     * out[off..off+n); exact integers, so every implementation gives the same floats.
     */
    default void unpackCodes(byte[] a, int base, int n, int bits, float[] out, int off) {
        int e = 0;
        switch (bits) {
            case 8 -> {
                for (; e < n; e++) out[off + e] = a[base + e] & 0xFF;
            }
            case 4 -> {
                for (int k = base; e + 2 <= n; e += 2, k++) {
                    int b = a[k] & 0xFF;
                    out[off + e] = b & 15;
                    out[off + e + 1] = b >>> 4;
                }
            }
            case 2 -> {
                for (int k = base; e + 4 <= n; e += 4, k++) {
                    int b = a[k] & 0xFF;
                    out[off + e] = b & 3;
                    out[off + e + 1] = (b >>> 2) & 3;
                    out[off + e + 2] = (b >>> 4) & 3;
                    out[off + e + 3] = b >>> 6;
                }
            }
            default -> { }
        }
        for (; e < n; e++) {
            int bit = e * bits;
            out[off + e] = ((a[base + (bit >>> 3)] & 0xFF) >>> (bit & 7)) & ((1 << bits) - 1);
        }
    }

    /** Σ x[off+i]², i < len, accumulated in float lanes. */
    float sumSquares(float[] x, int off, int len);

    String describe();

    static Kernels best() {
        if (!Boolean.getBoolean("tokenpress.scalar")) {
            try {
                return new VectorKernels();
            } catch (Throwable t) {
                // jdk.incubator.vector not resolved (launched without --add-modules): fall through
            }
        }
        return new ScalarKernels();
    }
}
