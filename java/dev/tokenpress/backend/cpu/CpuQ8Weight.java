package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;

/**
 * A 2-D weight [rows, cols] in llama.cpp's Q8_0 layout: each row in blocks of {@link #BLOCK} weights, each block 32
 * signed bytes {@code q = round(w / d)} (in [-127, 127]) and one scale {@code d = max|w| / 127} (kept as f32 here;
 * Q8_0 files round it to f16). Quantized from the checkpoint once, into the heap.
 */
final class CpuQ8Weight implements Tensor {
    static final int BLOCK = 32;

    final int rows, cols, blocks; // blocks per row
    final byte[] q;               // [rows * cols]
    final float[] d;              // [rows * blocks]

    private CpuQ8Weight(int rows, int cols) {
        this.rows = rows;
        this.cols = cols;
        this.blocks = cols / BLOCK;
        this.q = new byte[Math.toIntExact((long) rows * cols)];
        this.d = new float[rows * blocks];
    }

    /** Whether a [rows, cols] matrix can be held as Q8_0 here (whole blocks, one Java array). */
    static boolean fits(long rows, long cols) {
        return cols % BLOCK == 0 && rows * cols <= Integer.MAX_VALUE - 16;
    }

    /** Quantizes a checkpoint matrix row by row (in parallel). */
    static CpuQ8Weight quantize(CpuWeight src, Parallel par) {
        CpuQ8Weight w = new CpuQ8Weight(src.rows, src.cols);
        par.forRange(src.rows, 64, (from, to) -> {
            float[] row = new float[src.cols];
            short[] scratch = new short[src.cols];
            for (int r = from; r < to; r++) {
                src.rowFloats(r, row, 0, scratch);
                w.setRow(r, row, 0);
            }
        });
        return w;
    }

    /** Quantizes an f32 matrix [rows, cols] (tests). */
    static CpuQ8Weight quantize(float[] m, int rows, int cols) {
        if (!fits(rows, cols)) throw new IllegalArgumentException("Q8_0 needs cols % 32 == 0, got " + cols);
        CpuQ8Weight w = new CpuQ8Weight(rows, cols);
        for (int r = 0; r < rows; r++) w.setRow(r, m, r * cols);
        return w;
    }

    private void setRow(int r, float[] src, int off) {
        for (int b = 0; b < blocks; b++) {
            int base = off + b * BLOCK;
            float amax = 0;
            for (int j = 0; j < BLOCK; j++) amax = Math.max(amax, Math.abs(src[base + j]));
            float scale = amax / 127f, inv = scale != 0 ? 1f / scale : 0f;
            d[r * blocks + b] = scale;
            int qo = r * cols + b * BLOCK;
            for (int j = 0; j < BLOCK; j++)
                q[qo + j] = (byte) Math.max(-127, Math.min(127, Math.round(src[base + j] * inv)));
        }
    }

    /** Dequantizes row r into dst[off, off + cols). */
    void rowFloats(int r, float[] dst, int off) {
        for (int b = 0; b < blocks; b++) {
            float scale = d[r * blocks + b];
            int qo = r * cols + b * BLOCK, o = off + b * BLOCK;
            for (int j = 0; j < BLOCK; j++) dst[o + j] = q[qo + j] * scale;
        }
    }

    @Override
    public int rows() { return rows; }

    @Override
    public int cols() { return cols; }

    /** Heap bytes of the codes and scales. */
    @Override
    public long bytes() { return q.length + 4L * d.length; }
}
