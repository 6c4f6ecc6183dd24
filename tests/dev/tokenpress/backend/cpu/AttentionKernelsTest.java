package dev.tokenpress.backend.cpu;

import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertEquals;

/**
 * The attention kernels that share loads among a KV head's q-heads give the bits of the per-head operations:
 * {@link VectorKernels#weightedValues} (outputs in registers over blocks of candidates, four heads per value load)
 * against one {@link VectorKernels#axpy} per candidate and head, and {@link VectorKernels#dot4} against four
 * {@link VectorKernels#dot} calls — for head dims with and without a vector tail, any number of heads (dead heads and
 * zero numerators skipped, outputs starting at -0 and value rows with infinities, which a skipped numerator must not
 * touch), all slots or a slot list.
 */
class AttentionKernelsTest {
    static final VectorKernels V = new VectorKernels();

    /** queryKeyScores by KV head (four q-heads per key load) gives every score the bits of one dot, -inf elsewhere. */
    @ParameterizedTest
    @CsvSource({"64,4,2", "64,8,4", "128,4,2", "40,4,3", "64,2,2"})
    void queryKeyScoresGiveTheDotBits(int hd, int group, int kvHeads) {
        try (CpuBackend b = new CpuBackend(2)) {
            int heads = group * kvHeads, len = 90, cap = 100, qpos = 70;
            SplittableRandom r = new SplittableRandom(hd + 31L * group + kvHeads);
            dev.tokenpress.kv.KvCache cache = b.newKvCache(1, kvHeads, hd, cap);
            int[] pos = new int[len];
            for (int i = 0; i < len; i++) pos[i] = i;
            int[][] slots = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) slots[g] = cache.allocate(0, g, pos, len);
            dev.tokenpress.backend.Tensor k = b.allocate(len, kvHeads * hd), v = b.allocate(len, kvHeads * hd);
            float[] kd = new float[len * kvHeads * hd];
            for (int i = 0; i < kd.length; i++) kd[i] = (float) r.nextGaussian();
            b.upload(k, kd);
            b.upload(v, kd);
            b.storeKv(cache, 0, k, v, slots, len);
            for (int g = 0; g < kvHeads; g++) cache.free(0, g, 5 + g);
            float[] qv = new float[heads * hd];
            for (int i = 0; i < qv.length; i++) qv[i] = (float) r.nextGaussian();
            dev.tokenpress.backend.Tensor q = b.allocate(1, heads * hd);
            b.upload(q, qv);
            float[][] out = new float[heads][cap];
            b.queryKeyScores(out, q, 0, qpos, cache, 0);
            float[][] keys = ((CpuKvCache) cache).keys[0];
            for (int h = 0; h < heads; h++)
                for (int s = 0; s < cap; s++) {
                    int p = cache.position(0, h / group, s);
                    float want = s >= len || p < 0 || p > qpos ? Float.NEGATIVE_INFINITY : V.dot(qv, h * hd, keys[h / group], s * hd, hd);
                    assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(out[h][s]), "head " + h + " slot " + s);
                }
        }
    }

    @ParameterizedTest
    @CsvSource({"64,4,300,false,true", "64,8,77,true,true", "128,4,129,false,true", "16,3,40,true,true", "40,5,33,false,true",
            "24,9,70,true,true", "64,1,5,false,true", "128,7,1,true,true", "72,4,64,true,true",
            "64,4,300,false,false", "64,9,100,true,false", "72,1,50,false,false",
            "128,4,200,false,false", "128,8,65,true,false", "256,4,40,true,false", "48,4,30,false,false"})
    void sharedLoadsGiveThePerHeadBits(int hd, int hc, int m, boolean list, boolean zeros) {
        SplittableRandom r = new SplittableRandom(hd * 131L + hc * 7L + m);
        int slotsTotal = m + 11;
        float[] values = new float[slotsTotal * hd];
        for (int i = 0; i < values.length; i++) // infinities: a zero weight must not turn them into a NaN output
            values[i] = r.nextInt(400) == 0 ? Float.POSITIVE_INFINITY : (float) r.nextGaussian();
        int[] slots = null;
        if (list) {
            slots = new int[m];
            for (int j = 0; j < m; j++) slots[j] = r.nextInt(slotsTotal);
        }
        float[][] e = new float[hc][m];
        float[] inv = new float[hc];
        boolean[] live = new boolean[hc];
        for (int i = 0; i < hc; i++) {
            live[i] = i % 5 != 4;  // a dead head (nothing visible) now and then, after a group of four that takes the four-head path
            inv[i] = (float) (1 / (1 + r.nextDouble() * m));
            for (int j = 0; j < m; j++) // some candidates weighed by some heads or by none (zeros), or by every head
                e[i][j] = zeros && (r.nextInt(list ? 2 : 6) == 0 || j % 7 == 3) ? 0f : (float) (0.01 + r.nextDouble());
        }
        float[] ref = new float[(hc + 1) * hd], got = new float[(hc + 1) * hd];
        for (int i = 0; i < ref.length; i++) ref[i] = got[i] = r.nextInt(8) == 0 ? -0f : (float) r.nextGaussian(); // -0: a zero weight must leave it
        int oOff = hd / 2;
        for (int j = 0; j < m; j++) {  // the definition: one axpy per candidate and live head, in candidate order
            int slot = slots == null ? j : slots[j];
            for (int i = 0; i < hc; i++)
                if (live[i] && e[i][j] != 0f) V.axpy(e[i][j] * inv[i], values, slot * hd, ref, oOff + i * hd, hd);
        }
        V.weightedValues(e, inv, live, hc, m, slots, values, hd, got, oOff);
        for (int i = 0; i < ref.length; i++)
            assertEquals(Float.floatToRawIntBits(ref[i]), Float.floatToRawIntBits(got[i]), "output " + i + ": " + ref[i] + " vs " + got[i]);
        // four dots sharing the row of b
        float[] a = new float[4 * hd + 3], b = new float[hd + 5], four = new float[4];
        for (int i = 0; i < a.length; i++) a[i] = (float) r.nextGaussian();
        for (int i = 0; i < b.length; i++) b[i] = (float) r.nextGaussian();
        V.dot4(a, 3, hd, b, 5, hd, four);
        for (int i = 0; i < 4; i++)
            assertEquals(Float.floatToRawIntBits(V.dot(a, 3 + i * hd, b, 5, hd)), Float.floatToRawIntBits(four[i]), "dot " + i);
    }

    /**
     * The quantized cache's value run ({@link VectorKernels#quantValueRun}: no branch around its vector updates)
     * against the plain loop of {@link Kernels#quantValueRun}, bit for bit: candidates no head weighs (kind 0) and
     * heads that skip a candidate at random (quantized rows: ps and pz of -0, as the caller sets them; window rows:
     * any weight), window rows with negative, infinite and NaN values, outputs that start at -0, +0 and NaN, one to
     * six heads (the four-head path and the rest).
     */
    /** The interface's plain loops over the vector kernels' axpy and scaleShiftAdd (what the run must equal). */
    static final Kernels PLAIN = new Kernels() {
        @Override public float dot(float[] a, int aOff, float[] b, int bOff, int len) { return V.dot(a, aOff, b, bOff, len); }
        @Override public float dotBf16(int[] w, float[] xe, float[] xo, int xOff, int pairs) { return V.dotBf16(w, xe, xo, xOff, pairs); }
        @Override public void axpy(float a, float[] x, int xOff, float[] y, int yOff, int len) { V.axpy(a, x, xOff, y, yOff, len); }
        @Override public void scaleShiftAdd(float a, float b, float[] x, int xOff, float[] f, int fOff, float[] y, int yOff, int len) {
            V.scaleShiftAdd(a, b, x, xOff, f, fOff, y, yOff, len);
        }
        @Override public float sumSquares(float[] x, int off, int len) { return V.sumSquares(x, off, len); }
        @Override public String describe() { return "plain loops over the vector kernels"; }
    };

    @ParameterizedTest
    @CsvSource({"4,32,64,2", "5,32,64,1", "1,17,64,2", "6,32,128,4", "4,9,64,1", "3,32,64,2"})
    void quantValueRunGivesThePlainLoopsBits(int hc, int nt, int hd, int ng) {
        SplittableRandom r = new SplittableRandom(hc * 101L + nt * 7L + hd + ng);
        int stride = 32, gs = hd / ng;
        for (int rep = 0; rep < 20; rep++) {
            byte[] kind = new byte[nt];
            boolean[] skip = new boolean[hc * stride];
            float[] p = new float[hc * stride], ps = new float[hc * stride * ng], pz = new float[hc * stride * ng];
            float[] rows = new float[nt * hd];
            for (int t = 0; t < nt; t++) {
                // runs of quantized rows only, of window rows only (each kind has its own loop), and mixed runs
                int mix = rep % 3;
                kind[t] = (byte) (r.nextInt(10) == 0 ? 0 : mix == 0 ? 2 : mix == 1 ? 1 : r.nextInt(6) == 0 ? 1 : 2);
                for (int d = 0; d < hd; d++)
                    rows[t * hd + d] = kind[t] == 2 ? r.nextInt(16)           // codes: non-negative integers
                            : switch (r.nextInt(30)) {                       // window rows: any float
                                case 0 -> Float.POSITIVE_INFINITY;
                                case 1 -> Float.NaN;
                                case 2 -> -0f;
                                default -> (float) r.nextGaussian();
                            };
                for (int i = 0; i < hc; i++) {
                    int q = i * stride + t;
                    skip[q] = kind[t] == 0 || r.nextInt(5) == 0;
                    p[q] = (float) r.nextDouble();
                    for (int g = 0; g < ng; g++) {
                        ps[q * ng + g] = skip[q] && kind[t] == 2 ? -0f : (float) (r.nextDouble() * 0.1);
                        pz[q * ng + g] = skip[q] && kind[t] == 2 ? -0f : (float) (r.nextGaussian() * 0.1);
                    }
                }
            }
            float[] want = new float[hc * hd + 5], got = new float[hc * hd + 5];
            for (int i = 0; i < want.length; i++)
                want[i] = got[i] = switch (r.nextInt(8)) {
                    case 0 -> -0f;
                    case 1 -> 0f;
                    case 2 -> rep % 2 == 0 ? Float.NaN : -0f;
                    default -> (float) r.nextGaussian();
                };
            PLAIN.quantValueRun(hc, nt, stride, kind, skip, p, ps, pz, ng, gs, rows, hd, want, 3);
            V.quantValueRun(hc, nt, stride, kind, skip, p, ps, pz, ng, gs, rows, hd, got, 3);
            for (int i = 0; i < want.length; i++)
                assertEquals(Float.floatToRawIntBits(want[i]), Float.floatToRawIntBits(got[i]), "element " + i + " of repetition " + rep);
        }
    }
}
