package dev.tokenpress.backend.cpu;

/**
 * llama.cpp's Q4_0: each block 16 bytes of 4-bit codes and one scale; weight j of a block is {@code (c_j − 8) · d}
 * with c_j in the low nibble of byte j for j < 16 and in the high nibble of byte j − 16 for j >= 16; {@code d =
 * m / −8} where m is the block's value of largest magnitude (so m itself is code 0 exactly), codes
 * {@code min(15, (int) (w / d + 8.5))} (llama.cpp's rounding; scale f32 here, f16 in Q4_0 files). About 0.63 bytes
 * per weight.
 */
final class CpuQ4Weight extends CpuBlockWeight {
    final byte[] q; // [rows * cols / 2]

    private CpuQ4Weight(int rows, int cols) {
        super(rows, cols);
        this.q = new byte[Math.toIntExact((long) rows * cols / 2)];
    }

    static CpuQ4Weight quantize(CpuWeight src, Parallel par, Kernels k) {
        return fill(new CpuQ4Weight(src.rows, src.cols), src, par, k);
    }

    /** Quantizes an f32 matrix [rows, cols] (tests). */
    static CpuQ4Weight quantize(float[] m, int rows, int cols) {
        return fill(fits(rows, cols) ? new CpuQ4Weight(rows, cols) : null, m, rows, cols);
    }

    @Override
    void setRow(Kernels k, int r, float[] src, int off) {
        k.quantizeQ4Row(src, off, cols, q, r * cols / 2, d, r * blocks);
    }

    /** The rows' blocks are consecutive, so n rows are quantized as one row of n · cols weights. */
    @Override
    void setRows(Kernels k, int r, int n, float[] src) {
        k.quantizeQ4Row(src, 0, n * cols, q, r * cols / 2, d, r * blocks);
    }

    @Override
    void widenRows(int row, int count, float[] dst, int off) {
        int half = BLOCK / 2;
        for (int b = 0, nb = count * blocks, qo = row * cols / 2; b < nb; b++) {
            int o = off + b * BLOCK, qb = qo + b * half;
            for (int j = 0; j < half; j++) {
                int v = q[qb + j] & 0xFF;
                dst[o + j] = (v & 0x0F) - 8;
                dst[o + j + half] = (v >>> 4) - 8;
            }
        }
    }

    @Override
    float dotRow(Kernels k, int row, float[] x, int xOff) {
        return k.dotQ4(q, row * cols / 2, d, row * blocks, x, xOff, blocks);
    }

    /** Heap bytes of the codes and scales. */
    @Override
    public long bytes() { return q.length + 4L * d.length; }
}
