package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;

/** An f32 activation (or small f32 weight vector) on the Java heap, row-major [rows, cols]. */
final class CpuTensor implements Tensor {
    final float[] data;
    final int rows, cols;

    CpuTensor(int rows, int cols) {
        this(new float[Math.multiplyExact(rows, cols)], rows, cols);
    }

    CpuTensor(float[] data, int rows, int cols) {
        this.data = data;
        this.rows = rows;
        this.cols = cols;
    }

    @Override
    public int rows() { return rows; }

    @Override
    public int cols() { return cols; }

    @Override
    public long bytes() { return 4L * data.length; }
}
