package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;

/**
 * A 2-D weight [rows, cols] quantized in blocks of {@link #BLOCK} weights along a row, each block integer codes and
 * one f32 scale {@code d} (llama.cpp's Q8_0 and Q4_0 layouts): weight = code · d. Quantized from the checkpoint once,
 * into the heap. Every matmul path computes, per row and x, the same operations in the same order (per block a sum
 * of code · x from zero, then scaled into one accumulator; see {@link Kernels#dotQ8f}), whether the codes are
 * widened in registers ({@link #dotRow}) or once for several x rows ({@link #widenRows}), so chunks and single rows
 * give the same bits.
 */
abstract class CpuBlockWeight implements Tensor {
    static final int BLOCK = 32;

    final int rows, cols, blocks; // blocks per row
    final float[] d;              // [rows * blocks]

    CpuBlockWeight(int rows, int cols) {
        this.rows = rows;
        this.cols = cols;
        this.blocks = cols / BLOCK;
        this.d = new float[Math.toIntExact((long) rows * blocks)];
    }

    /** Whether a [rows, cols] matrix can be held here (whole blocks, codes in one Java array). */
    static boolean fits(long rows, long cols) {
        return cols % BLOCK == 0 && rows * cols <= Integer.MAX_VALUE - 16;
    }

    /** The codes of rows [row, row + count) as floats (exact), row-major into dst[off, off + count · cols). */
    abstract void widenRows(int row, int count, float[] dst, int off);

    /** Row {@code row} times x[xOff, xOff + cols), the codes widened in registers. */
    abstract float dotRow(Kernels k, int row, float[] x, int xOff);

    /** Encodes src[off, off + cols) into row r. */
    abstract void setRow(Kernels k, int r, float[] src, int off);

    /** Dequantizes row r into dst[off, off + cols). */
    void rowFloats(int r, float[] dst, int off) {
        widenRows(r, 1, dst, off);
        for (int b = 0; b < blocks; b++) {
            float scale = d[r * blocks + b];
            for (int j = 0, o = off + b * BLOCK; j < BLOCK; j++) dst[o + j] *= scale;
        }
    }

    /** Quantizes a checkpoint matrix into {@code w} row by row (in parallel). */
    static <W extends CpuBlockWeight> W fill(W w, CpuWeight src, Parallel par, Kernels k) {
        // several rows per quantizer call (256 KB of floats: they stay in L2)
        int batch = Math.max(1, FILL_FLOATS / src.cols);
        par.forRange(src.rows, 64, (from, to) -> {
            float[] rows = new float[Math.min(batch, to - from) * src.cols];
            short[] sc = new short[src.cols];
            for (int r = from; r < to; r += batch) {
                int n = Math.min(batch, to - r);
                for (int i = 0; i < n; i++) src.rowFloats(r + i, rows, i * src.cols, sc);
                w.setRows(k, r, n, rows);
            }
        });
        return w;
    }

    /** Floats converted from the checkpoint per quantizer call. */
    private static final int FILL_FLOATS = 1 << 16;

    /** Encodes rows [r, r + n) from src[0, n · cols). */
    void setRows(Kernels k, int r, int n, float[] src) {
        for (int i = 0; i < n; i++) setRow(k, r + i, src, i * cols);
    }

    /** Quantizes an f32 matrix [rows, cols] into {@code w} (null: the shape is not whole blocks). */
    static <W extends CpuBlockWeight> W fill(W w, float[] m, int rows, int cols) {
        if (w == null) throw new IllegalArgumentException("block quantization needs cols % " + BLOCK + " == 0, got " + cols);
        Kernels k = Kernels.best();
        for (int r = 0; r < rows; r++) w.setRow(k, r, m, r * cols);
        return w;
    }

    @Override
    public int rows() { return rows; }

    @Override
    public int cols() { return cols; }
}
