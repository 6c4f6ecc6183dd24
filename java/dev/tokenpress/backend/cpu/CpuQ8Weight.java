package dev.tokenpress.backend.cpu;

/**
 * llama.cpp's Q8_0: each block 32 signed bytes {@code q = round(w / d)} (in [-127, 127]) and one scale
 * {@code d = max|w| / 127} (kept as f32 here; Q8_0 files round it to f16); about 1.1 bytes per weight.
 */
final class CpuQ8Weight extends CpuBlockWeight {
    final byte[] q; // [rows * cols]

    private CpuQ8Weight(int rows, int cols) {
        super(rows, cols);
        this.q = new byte[Math.toIntExact((long) rows * cols)];
    }

    /** Quantizes a checkpoint matrix row by row (in parallel). */
    static CpuQ8Weight quantize(CpuWeight src, Parallel par, Kernels k) {
        return fill(new CpuQ8Weight(src.rows, src.cols), src, par, k);
    }

    /** Quantizes an f32 matrix [rows, cols] (tests). */
    static CpuQ8Weight quantize(float[] m, int rows, int cols) {
        return fill(fits(rows, cols) ? new CpuQ8Weight(rows, cols) : null, m, rows, cols);
    }

    @Override
    void setRow(Kernels k, int r, float[] src, int off) {
        k.quantizeQ8Row(src, off, cols, q, r * cols, d, r * blocks);
    }

    /** The rows' blocks are consecutive, so n rows are quantized as one row of n · cols weights. */
    @Override
    void setRows(Kernels k, int r, int n, float[] src) {
        k.quantizeQ8Row(src, 0, n * cols, q, r * cols, d, r * blocks);
    }

    @Override
    void widenRows(int row, int count, float[] dst, int off) {
        for (int j = 0, base = row * cols, n = count * cols; j < n; j++) dst[off + j] = q[base + j];
    }

    @Override
    float dotRow(Kernels k, int row, float[] x, int xOff) {
        return k.dotQ8(q, row * cols, d, row * blocks, x, xOff, blocks);
    }

    /** Heap bytes of the codes and scales. */
    @Override
    public long bytes() { return q.length + 4L * d.length; }
}
