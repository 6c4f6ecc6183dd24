package dev.tokenpress.backend.cpu;

import dev.tokenpress.io.Half;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.kv.quant.Quant;

import java.util.SplittableRandom;

/**
 * One quantized group of up to G tokens (lanes) of one (layer, KV head), encoded together when they leave the
 * full-precision residual window. Keys are either per-channel segments (KIVI, ZipCache, GEAR: for each channel a
 * f16 (zero, scale) over the segment's tokens, codes packed along tokens) or per-token rows (MiKV); values are
 * always per-token rows (f16 (zero, scale) per group of channels, codes packed along channels). GEAR adds a rank-r
 * correction P·Qᵀ and sparse f16 outliers per group. Nothing here is ever expanded to a float copy: attention
 * calls {@link #keyDot} and {@link #valueAxpy}, which apply scale and zero inside the loops.
 */
final class QuantBlock {
    final int n, hd;
    /** Live lanes; the block is dropped when it reaches 0. */
    int alive;

    // keys as channel segments
    final Seg[] kSeg;
    final byte[] kSegOf;  // lane -> segment (null: single segment, lane = position)
    final short[] kSegPos;
    // keys as token rows (MiKV)
    final Rows kRows;
    final Rows vRows;
    final LowRank kLr, vLr;
    final Sparse kSp, vSp;

    /** Per-channel quantization over a set of tokens: codes [hd][m] packed along tokens. */
    static final class Seg {
        final int bits, m, rb;
        final short[] zero, scale; // [hd]
        final byte[] codes;        // [hd * rb]

        Seg(int bits, int m, int hd) {
            this.bits = bits;
            this.m = m;
            this.rb = Quant.rowBytes(m, bits);
            zero = new short[hd];
            scale = new short[hd];
            codes = new byte[hd * rb];
        }

        long bytes() { return 4L * zero.length + codes.length; }
    }

    /** Per-token quantization over groups of gs channels: codes [hd] packed along channels, one array per token. */
    static final class Rows {
        final int gs, ng;
        final byte[] bits;      // [n]
        final byte[][] codes;   // [n][rowBytes(hd, bits)]
        final short[] zero, scale; // [n * ng]
        final short[] cf;       // ZipCache channel factors [hd] or null

        Rows(int n, int hd, int gs, boolean channelFactors) {
            this.gs = gs;
            this.ng = hd / gs;
            bits = new byte[n];
            codes = new byte[n][];
            zero = new short[n * ng];
            scale = new short[n * ng];
            cf = channelFactors ? new short[hd] : null;
        }

        long bytes() {
            long b = bits.length + 4L * zero.length + (cf == null ? 0 : 2L * cf.length);
            for (byte[] c : codes) b += c.length;
            return b;
        }

        /** Quantizes row x[off..off+hd) into lane at the given bits; masked entries (outliers) skip min/max. */
        void encode(int lane, float[] x, int off, int hd, int b, boolean[] mask, int maskOff) {
            bits[lane] = (byte) b;
            byte[] c = new byte[Quant.rowBytes(hd, b)];
            codes[lane] = c;
            for (int g = 0; g < ng; g++) {
                float min = Float.POSITIVE_INFINITY, max = Float.NEGATIVE_INFINITY;
                for (int i = g * gs; i < (g + 1) * gs; i++) {
                    if (mask != null && mask[maskOff + i]) continue;
                    float v = x[off + i] / factor(i);
                    if (v < min) min = v;
                    if (v > max) max = v;
                }
                if (min > max) min = max = 0f;
                Quant.params(min, max, b, zero, scale, lane * ng + g);
                float z = Half.toFloat(zero[lane * ng + g]), s = Half.toFloat(scale[lane * ng + g]);
                for (int i = g * gs; i < (g + 1) * gs; i++)
                    Quant.put(c, 0, i, b, Quant.code(x[off + i] / factor(i), z, s, b));
            }
        }

        float factor(int ch) { return cf == null ? 1f : Half.toFloat(cf[ch]); }

        void decode(int lane, float[] out, int off, int hd) {
            byte[] c = codes[lane];
            int b = bits[lane];
            for (int g = 0; g < ng; g++) {
                float z = Half.toFloat(zero[lane * ng + g]), s = Half.toFloat(scale[lane * ng + g]);
                for (int i = g * gs; i < (g + 1) * gs; i++) out[off + i] = (Quant.get(c, 0, i, b) * s + z) * factor(i);
            }
        }

        /** q · x̂ with scale and zero applied per group: Σ_g s_g·Σ q̃_i·code_i + z_g·Σ q̃_i, q̃ = q·cf. */
        float dot(int lane, float[] q, int qOff) {
            byte[] c = codes[lane];
            int b = bits[lane];
            float sum = 0f;
            for (int g = 0; g < ng; g++) {
                float acc = 0f, qs = 0f;
                for (int i = g * gs; i < (g + 1) * gs; i++) {
                    float qi = q[qOff + i] * factor(i);
                    acc += qi * Quant.get(c, 0, i, b);
                    qs += qi;
                }
                sum += acc * Half.toFloat(scale[lane * ng + g]) + qs * Half.toFloat(zero[lane * ng + g]);
            }
            return sum;
        }

        /** As {@link #dot}, the lane's codes given unpacked as floats in codes[cOff..cOff+hd): same arithmetic, same result. */
        float dot(float[] codes, int cOff, float[] q, int qOff, int lane) {
            float sum = 0f;
            for (int g = 0; g < ng; g++) {
                float acc = 0f, qs = 0f;
                for (int i = g * gs; i < (g + 1) * gs; i++) {
                    float qi = q[qOff + i] * factor(i);
                    acc += qi * codes[cOff + i];
                    qs += qi;
                }
                sum += acc * Half.toFloat(scale[lane * ng + g]) + qs * Half.toFloat(zero[lane * ng + g]);
            }
            return sum;
        }

        /** out += p · x̂ without forming x̂. */
        void axpy(int lane, float p, float[] out, int oOff) {
            byte[] c = codes[lane];
            int b = bits[lane];
            for (int g = 0; g < ng; g++) {
                float ps = p * Half.toFloat(scale[lane * ng + g]), pz = p * Half.toFloat(zero[lane * ng + g]);
                for (int i = g * gs; i < (g + 1) * gs; i++) out[oOff + i] += (ps * Quant.get(c, 0, i, b) + pz) * factor(i);
            }
        }
    }

    /** Rank-r correction L = P·Qᵀ, P [n][r], Q [hd][r], f16. */
    static final class LowRank {
        final int r;
        final short[] p, q;

        LowRank(int n, int hd, int r) {
            this.r = r;
            p = new short[n * r];
            q = new short[hd * r];
        }

        long bytes() { return 2L * (p.length + q.length); }

        float at(int lane, int ch) {
            float s = 0f;
            for (int j = 0; j < r; j++) s += Half.toFloat(p[lane * r + j]) * Half.toFloat(q[ch * r + j]);
            return s;
        }

        float dot(int lane, float[] x, int off, int hd) {
            float s = 0f;
            for (int j = 0; j < r; j++) {
                float qx = 0f;
                for (int c = 0; c < hd; c++) qx += x[off + c] * Half.toFloat(q[c * r + j]);
                s += Half.toFloat(p[lane * r + j]) * qx;
            }
            return s;
        }

        void axpy(int lane, float w, float[] out, int oOff, int hd) {
            for (int j = 0; j < r; j++) {
                float pw = w * Half.toFloat(p[lane * r + j]);
                if (pw == 0f) continue;
                for (int c = 0; c < hd; c++) out[oOff + c] += pw * Half.toFloat(q[c * r + j]);
            }
        }
    }

    /** Sparse f16 corrections per lane: off [n+1], channel and value per entry. */
    static final class Sparse {
        final int[] off;
        final short[] ch, val;

        Sparse(int[] off, short[] ch, short[] val) {
            this.off = off;
            this.ch = ch;
            this.val = val;
        }

        long bytes() { return 4L * off.length + 2L * ch.length + 2L * val.length; }
    }

    private QuantBlock(int n, int hd, Seg[] kSeg, byte[] kSegOf, short[] kSegPos, Rows kRows, Rows vRows,
                       LowRank kLr, LowRank vLr, Sparse kSp, Sparse vSp) {
        this.n = n;
        this.hd = hd;
        this.alive = n;
        this.kSeg = kSeg;
        this.kSegOf = kSegOf;
        this.kSegPos = kSegPos;
        this.kRows = kRows;
        this.vRows = vRows;
        this.kLr = kLr;
        this.vLr = vLr;
        this.kSp = kSp;
        this.vSp = vSp;
    }

    /** Bits of a lane (its value row's bit width). */
    int bits(int lane) { return vRows.bits[lane]; }

    /** Payload bytes of every array this block holds. */
    long bytes() {
        long b = 0;
        if (kSeg != null) for (Seg s : kSeg) b += s.bytes();
        if (kSegOf != null) b += kSegOf.length + 2L * kSegPos.length;
        if (kRows != null) b += kRows.bytes();
        b += vRows.bytes();
        if (kLr != null) b += kLr.bytes() + vLr.bytes();
        if (kSp != null) b += kSp.bytes() + vSp.bytes();
        return b;
    }

    // ---- encoding ---------------------------------------------------------------------------------------------

    /**
     * Encodes n tokens: keys and values [n * hd] row-major per token; bits[lane] is the lane's bit width
     * (ZipCache/MiKV choose it per token; KIVI/GEAR pass spec.bits() for all).
     */
    static QuantBlock encode(KvQuantSpec spec, int hd, float[] keys, float[] values, int n, byte[] bits) {
        KvQuantSpec.Method m = spec.method();
        int gs = spec.valueGroup(hd);
        // values: per token over channel groups (ZipCache: one group of all channels after channel normalization)
        Rows vRows = m == KvQuantSpec.Method.ZIPCACHE ? new Rows(n, hd, hd, true) : new Rows(n, hd, gs, false);
        if (vRows.cf != null) {
            for (int c = 0; c < hd; c++) {
                float amax = 0f;
                for (int t = 0; t < n; t++) amax = Math.max(amax, Math.abs(values[t * hd + c]));
                float f = (float) Math.sqrt(amax);
                vRows.cf[c] = Half.fromFloat(f > 0f ? f : 1f);
                if (Half.toFloat(vRows.cf[c]) == 0f) vRows.cf[c] = Half.fromFloat(1f);
            }
        }
        boolean gear = m == KvQuantSpec.Method.GEAR;
        boolean[] kMask = gear ? outlierMask(keys, n, hd, spec.outliers(), true) : null;
        boolean[] vMask = gear ? outlierMask(values, n, hd, spec.outliers(), false) : null;
        for (int t = 0; t < n; t++) vRows.encode(t, values, t * hd, hd, bits[t], vMask, t * hd);

        Seg[] segs = null;
        byte[] segOf = null;
        short[] segPos = null;
        Rows kRows = null;
        if (m == KvQuantSpec.Method.MIKV) {
            kRows = new Rows(n, hd, gs, false);
            for (int t = 0; t < n; t++) kRows.encode(t, keys, t * hd, hd, bits[t], null, 0);
        } else if (m == KvQuantSpec.Method.ZIPCACHE) {
            int nHi = 0;
            for (int t = 0; t < n; t++) if (bits[t] == spec.bits()) nHi++;
            int[] hi = new int[nHi], lo = new int[n - nHi];
            segOf = new byte[n];
            segPos = new short[n];
            for (int t = 0, a = 0, b = 0; t < n; t++) {
                if (bits[t] == spec.bits()) { segOf[t] = 0; segPos[t] = (short) a; hi[a++] = t; }
                else { segOf[t] = 1; segPos[t] = (short) b; lo[b++] = t; }
            }
            segs = new Seg[]{encodeSeg(keys, hi, spec.bits(), hd, null), encodeSeg(keys, lo, spec.loBits(), hd, null)};
        } else {
            int[] all = new int[n];
            for (int t = 0; t < n; t++) all[t] = t;
            segs = new Seg[]{encodeSeg(keys, all, spec.bits(), hd, kMask)};
        }
        QuantBlock blk = new QuantBlock(n, hd, segs, segOf, segPos, kRows, vRows, null, null, null, null);
        if (!gear) return blk;

        // GEAR: residual R = X − D̂ (zero at outliers), L = rank-r power iteration of R, S = X − D̂ − L at outliers
        float[] dk = new float[n * hd], dv = new float[n * hd];
        for (int t = 0; t < n; t++) {
            blk.quantKey(t, dk, t * hd);
            vRows.decode(t, dv, t * hd, hd);
        }
        LowRank kLr = lowRank(keys, dk, kMask, n, hd, spec.rank(), spec.iters());
        LowRank vLr = lowRank(values, dv, vMask, n, hd, spec.rank(), spec.iters());
        Sparse kSp = sparse(keys, dk, kMask, kLr, n, hd), vSp = sparse(values, dv, vMask, vLr, n, hd);
        return new QuantBlock(n, hd, segs, segOf, segPos, null, vRows, kLr, vLr, kSp, vSp);
    }

    private static Seg encodeSeg(float[] x, int[] lanes, int bits, int hd, boolean[] mask) {
        Seg s = new Seg(bits, lanes.length, hd);
        if (lanes.length == 0) return s;
        for (int c = 0; c < hd; c++) {
            float min = Float.POSITIVE_INFINITY, max = Float.NEGATIVE_INFINITY;
            for (int lane : lanes) {
                if (mask != null && mask[lane * hd + c]) continue;
                float v = x[lane * hd + c];
                if (v < min) min = v;
                if (v > max) max = v;
            }
            if (min > max) min = max = 0f;
            Quant.params(min, max, bits, s.zero, s.scale, c);
            float z = Half.toFloat(s.zero[c]), sc = Half.toFloat(s.scale[c]);
            for (int p = 0; p < lanes.length; p++)
                Quant.put(s.codes, c * s.rb, p, bits, Quant.code(x[lanes[p] * hd + c], z, sc, bits));
        }
        return s;
    }

    /**
     * GEAR's outliers: per channel over the group's tokens (keys) or per token over channels (values), the
     * k = max(1, round(s·len/2)) largest and k smallest entries (none when s = 0 or 2k >= len).
     */
    static boolean[] outlierMask(float[] x, int n, int hd, double s, boolean perChannel) {
        boolean[] mask = new boolean[n * hd];
        if (s <= 0) return mask;
        int len = perChannel ? n : hd, lines = perChannel ? hd : n;
        int k = Math.max(1, (int) Math.round(s * len / 2));
        if (2 * k >= len) return mask;
        Integer[] idx = new Integer[len];
        for (int line = 0; line < lines; line++) {
            final int l = line;
            for (int i = 0; i < len; i++) idx[i] = i;
            java.util.Arrays.sort(idx, (a, b) -> Float.compare(x[at(l, a, hd, perChannel)], x[at(l, b, hd, perChannel)]));
            for (int i = 0; i < k; i++) {
                mask[at(l, idx[i], hd, perChannel)] = true;
                mask[at(l, idx[len - 1 - i], hd, perChannel)] = true;
            }
        }
        return mask;
    }

    private static int at(int line, int i, int hd, boolean perChannel) {
        return perChannel ? i * hd + line : line * hd + i;
    }

    /** Rank-r approximation of R = X − D̂ (zero at masked entries) by deterministic power iteration. */
    static LowRank lowRank(float[] x, float[] d, boolean[] mask, int n, int hd, int r, int iters) {
        r = Math.min(r, Math.min(n, hd));
        LowRank lr = new LowRank(n, hd, r);
        if (r == 0) return lr;
        double[] res = new double[n * hd];
        for (int i = 0; i < n * hd; i++) res[i] = mask[i] ? 0 : x[i] - d[i];
        double[] q = new double[hd * r], p = new double[n * r];
        SplittableRandom rnd = new SplittableRandom(0x6EA5L);
        for (int i = 0; i < q.length; i++) q[i] = rnd.nextDouble() * 2 - 1;
        for (int it = 0; it < iters; it++) {
            // P = R·Q, orthonormalize P's columns (Gram-Schmidt), Q = Rᵀ·P
            for (int t = 0; t < n; t++)
                for (int j = 0; j < r; j++) {
                    double s = 0;
                    for (int c = 0; c < hd; c++) s += res[t * hd + c] * q[c * r + j];
                    p[t * r + j] = s;
                }
            for (int j = 0; j < r; j++) {
                for (int k = 0; k < j; k++) {
                    double dd = 0;
                    for (int t = 0; t < n; t++) dd += p[t * r + j] * p[t * r + k];
                    for (int t = 0; t < n; t++) p[t * r + j] -= dd * p[t * r + k];
                }
                double norm = 0;
                for (int t = 0; t < n; t++) norm += p[t * r + j] * p[t * r + j];
                norm = Math.sqrt(norm);
                for (int t = 0; t < n; t++) p[t * r + j] = norm > 1e-30 ? p[t * r + j] / norm : 0;
            }
            for (int c = 0; c < hd; c++)
                for (int j = 0; j < r; j++) {
                    double s = 0;
                    for (int t = 0; t < n; t++) s += res[t * hd + c] * p[t * r + j];
                    q[c * r + j] = s;
                }
        }
        for (int i = 0; i < p.length; i++) lr.p[i] = Half.fromFloat((float) p[i]);
        for (int i = 0; i < q.length; i++) lr.q[i] = Half.fromFloat((float) q[i]);
        return lr;
    }

    private static Sparse sparse(float[] x, float[] d, boolean[] mask, LowRank lr, int n, int hd) {
        int[] off = new int[n + 1];
        int cnt = 0;
        for (int i = 0; i < n * hd; i++) if (mask[i]) cnt++;
        short[] ch = new short[cnt], val = new short[cnt];
        int e = 0;
        for (int t = 0; t < n; t++) {
            off[t] = e;
            for (int c = 0; c < hd; c++) {
                int i = t * hd + c;
                if (!mask[i]) continue;
                ch[e] = (short) c;
                val[e++] = Half.fromFloat(x[i] - d[i] - lr.at(t, c));
            }
        }
        off[n] = e;
        return new Sparse(off, ch, val);
    }

    // ---- reading ----------------------------------------------------------------------------------------------

    /** The quantized part D̂ of a lane's key (no GEAR corrections). */
    private void quantKey(int lane, float[] out, int off) {
        if (kRows != null) {
            kRows.decode(lane, out, off, hd);
            return;
        }
        Seg s = kSeg[kSegOf == null ? 0 : kSegOf[lane]];
        int pos = kSegPos == null ? lane : kSegPos[lane];
        for (int c = 0; c < hd; c++)
            out[off + c] = Half.toFloat(s.zero[c]) + Half.toFloat(s.scale[c]) * Quant.get(s.codes, c * s.rb, pos, s.bits);
    }

    /** The reconstructed key of a lane, out[off..off+hd). */
    void key(int lane, float[] out, int off) {
        quantKey(lane, out, off);
        if (kLr != null) correct(lane, kLr, kSp, out, off);
    }

    /** The reconstructed value of a lane. */
    void value(int lane, float[] out, int off) {
        vRows.decode(lane, out, off, hd);
        if (vLr != null) correct(lane, vLr, vSp, out, off);
    }

    private void correct(int lane, LowRank lr, Sparse sp, float[] out, int off) {
        for (int c = 0; c < hd; c++) out[off + c] += lr.at(lane, c);
        for (int e = sp.off[lane]; e < sp.off[lane + 1]; e++) out[off + sp.ch[e]] += Half.toFloat(sp.val[e]);
    }

    /** q · k̂ of a lane, dequantization fused: Σ_c q_c·(z_c + s_c·code) (+ (q·Q)·P_t + sparse). */
    float keyDot(int lane, float[] q, int qOff) {
        return keyDot(lane, q, qOff, null);
    }

    /**
     * Per-query memo of the channel-wise key terms of one block: q[c]·scale[c] per channel and Σ q[c]·zero[c], per
     * segment. The lanes of a block share them, so a query computes them once per block instead of once per token;
     * the arithmetic and its order are unchanged, so results are bit-identical to the unmemoized dot.
     */
    static final class KeyQuery {
        private QuantBlock block;
        private float[] q;
        private int qOff = -1;
        private float[][] qs = new float[0][];
        private float[] zq = new float[0];
    }

    float keyDot(int lane, float[] q, int qOff, KeyQuery memo) {
        float sum;
        if (kRows != null) sum = kRows.dot(lane, q, qOff);
        else {
            int si = kSegOf == null ? 0 : kSegOf[lane];
            Seg s = kSeg[si];
            int pos = kSegPos == null ? lane : kSegPos[lane];
            if (memo == null) {
                float acc = 0f, zs = 0f;
                for (int c = 0; c < hd; c++) {
                    float qc = q[qOff + c];
                    acc += qc * Half.toFloat(s.scale[c]) * Quant.get(s.codes, c * s.rb, pos, s.bits);
                    zs += qc * Half.toFloat(s.zero[c]);
                }
                sum = acc + zs;
            } else {
                if (memo.block != this || memo.q != q || memo.qOff != qOff) prepare(memo, q, qOff);
                float[] qs = memo.qs[si];
                float acc = 0f;
                for (int c = 0; c < hd; c++) acc += qs[c] * Quant.get(s.codes, c * s.rb, pos, s.bits);
                sum = acc + memo.zq[si];
            }
        }
        if (kLr != null) {
            sum += kLr.dot(lane, q, qOff, hd);
            for (int e = kSp.off[lane]; e < kSp.off[lane + 1]; e++) sum += q[qOff + kSp.ch[e]] * Half.toFloat(kSp.val[e]);
        }
        return sum;
    }

    private void prepare(KeyQuery memo, float[] q, int qOff) {
        if (memo.qs.length < kSeg.length) {
            memo.qs = new float[kSeg.length][];
            memo.zq = new float[kSeg.length];
        }
        for (int si = 0; si < kSeg.length; si++) {
            Seg s = kSeg[si];
            if (s == null) continue;
            if (memo.qs[si] == null || memo.qs[si].length < hd) memo.qs[si] = new float[hd];
            float[] qs = memo.qs[si];
            float zs = 0f;
            for (int c = 0; c < hd; c++) {
                float qc = q[qOff + c];
                qs[c] = qc * Half.toFloat(s.scale[c]);
                zs += qc * Half.toFloat(s.zero[c]);
            }
            memo.zq[si] = zs;
        }
        memo.block = this;
        memo.q = q;
        memo.qOff = qOff;
    }

    /** out += p · v̂ of a lane, dequantization fused. */
    void valueAxpy(int lane, float p, float[] out, int oOff) {
        vRows.axpy(lane, p, out, oOff);
        if (vLr != null) {
            vLr.axpy(lane, p, out, oOff, hd);
            for (int e = vSp.off[lane]; e < vSp.off[lane + 1]; e++) out[oOff + vSp.ch[e]] += p * Half.toFloat(vSp.val[e]);
        }
    }

    // ---- reading a whole block at once (attention) -----------------------------------------------------------

    /** Per-thread work arrays of the block-wise reads; they only grow. */
    static final class Scratch {
        float[] codes = new float[0]; // unpacked key codes of the block's segments, [seg][hd][m]
        float[] qs = new float[0];    // q·scale per channel
        float[] acc = new float[0];   // Σ_c q·scale·code per segment position, [seg][G]
        float[] zq = new float[0];    // Σ q·zero per segment
        float[] row = new float[0];   // one unpacked value (or MiKV key) row
        float[] cf = new float[0];    // ZipCache channel factors as floats

        static float[] grow(float[] a, int n) { return a.length >= n ? a : new float[Math.max(n, a.length * 2)]; }
    }

    /**
     * q·k̂ of every lane of the block for nq queries at q[qOff + i·hd], i < nq: out[outOff + i·outStride + lane].
     * Each segment's codes are unpacked once for all queries and the dots run across the segment's tokens (codes
     * are packed along tokens, channel by channel); per lane the arithmetic and its order are those of
     * {@link #keyDot}, so the results are bit-identical to it.
     */
    void keyDots(float[] q, int qOff, int nq, float[] out, int outOff, int outStride, Scratch s, Kernels k) {
        if (kRows != null) {
            s.row = Scratch.grow(s.row, hd);
            for (int lane = 0; lane < n; lane++) {
                k.unpackCodes(kRows.codes[lane], 0, hd, kRows.bits[lane], s.row, 0);
                for (int i = 0; i < nq; i++)
                    out[outOff + i * outStride + lane] = corrected(lane, kRows.dot(s.row, 0, q, qOff + i * hd, lane), q, qOff + i * hd);
            }
            return;
        }
        int segs = kSeg.length, g = 0;
        for (Seg sg : kSeg) g = Math.max(g, sg.m);
        s.codes = Scratch.grow(s.codes, segs * hd * g);
        s.qs = Scratch.grow(s.qs, hd);
        s.acc = Scratch.grow(s.acc, segs * g);
        s.zq = Scratch.grow(s.zq, segs);
        float[] codes = s.codes, qs = s.qs, acc = s.acc;
        for (int si = 0; si < segs; si++) {
            Seg sg = kSeg[si];
            for (int c = 0; c < hd; c++) k.unpackCodes(sg.codes, c * sg.rb, sg.m, sg.bits, codes, si * hd * g + c * sg.m);
        }
        for (int i = 0; i < nq; i++) {
            int qo = qOff + i * hd;
            for (int si = 0; si < segs; si++) {
                Seg sg = kSeg[si];
                if (sg.m == 0) continue;
                float zs = 0f;
                for (int c = 0; c < hd; c++) {
                    float qc = q[qo + c];
                    qs[c] = qc * Half.toFloat(sg.scale[c]);
                    zs += qc * Half.toFloat(sg.zero[c]);
                }
                s.zq[si] = zs;
                k.columnDots(qs, 0, hd, codes, si * hd * g, sg.m, acc, si * g, sg.m);
            }
            int o = outOff + i * outStride;
            for (int lane = 0; lane < n; lane++) {
                int si = kSegOf == null ? 0 : kSegOf[lane];
                int pos = kSegPos == null ? lane : kSegPos[lane];
                out[o + lane] = corrected(lane, acc[si * g + pos] + s.zq[si], q, qo);
            }
        }
    }

    /** GEAR's low-rank and sparse key terms added to a lane's dot, in {@link #keyDot}'s order. */
    private float corrected(int lane, float sum, float[] q, int qOff) {
        if (kLr != null) {
            sum += kLr.dot(lane, q, qOff, hd);
            for (int e = kSp.off[lane]; e < kSp.off[lane + 1]; e++) sum += q[qOff + kSp.ch[e]] * Half.toFloat(kSp.val[e]);
        }
        return sum;
    }

    /**
     * out += p_i · v̂ of a lane for nq queries: weights p[pOff + i], outputs at out[oOff + i·hd]; a query whose
     * weight flag skip[pOff + i] is set is left alone. The lane's codes are unpacked once; per query the arithmetic
     * is {@link #valueAxpy}'s, bit for bit.
     */
    void valueAxpys(int lane, float[] p, boolean[] skip, int pOff, int nq, float[] out, int oOff, Scratch s, Kernels k) {
        Rows v = vRows;
        s.row = Scratch.grow(s.row, hd);
        k.unpackCodes(v.codes[lane], 0, hd, v.bits[lane], s.row, 0);
        float[] cf = null;
        if (v.cf != null) {
            s.cf = Scratch.grow(s.cf, hd);
            cf = s.cf;
            for (int c = 0; c < hd; c++) cf[c] = Half.toFloat(v.cf[c]);
        }
        for (int i = 0; i < nq; i++) {
            if (skip[pOff + i]) continue;
            float w = p[pOff + i];
            int o = oOff + i * hd;
            for (int g = 0; g < v.ng; g++) {
                float ps = w * Half.toFloat(v.scale[lane * v.ng + g]), pz = w * Half.toFloat(v.zero[lane * v.ng + g]);
                k.scaleShiftAdd(ps, pz, s.row, g * v.gs, cf, g * v.gs, out, o + g * v.gs, v.gs);
            }
            if (vLr != null) {
                vLr.axpy(lane, w, out, o, hd);
                for (int e = vSp.off[lane]; e < vSp.off[lane + 1]; e++) out[o + vSp.ch[e]] += w * Half.toFloat(vSp.val[e]);
            }
        }
    }

    /** MiKV demotion: re-encodes a lane's token-wise key and value at fewer bits. */
    void requantizeLane(int lane, int bits) {
        float[] k = new float[hd], v = new float[hd];
        key(lane, k, 0);
        value(lane, v, 0);
        kRows.encode(lane, k, 0, hd, bits, null, 0);
        vRows.encode(lane, v, 0, hd, bits, null, 0);
    }
}
