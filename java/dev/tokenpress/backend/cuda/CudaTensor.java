package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;

/**
 * A tensor in device memory: f32 activations and 1-D weights (norms, biases) as f32, 2-D weights as bf16.
 *
 * @param ptr device address
 */
final class CudaTensor implements Tensor {
    final int rows;
    final int cols;
    final boolean bf16;
    final long ptr;
    final long bytes;
    final String name;

    CudaTensor(int rows, int cols, boolean bf16, long ptr, long bytes, String name) {
        this.rows = rows;
        this.cols = cols;
        this.bf16 = bf16;
        this.ptr = ptr;
        this.bytes = bytes;
        this.name = name;
    }

    @Override
    public int rows() { return rows; }

    @Override
    public int cols() { return cols; }

    @Override
    public long bytes() { return bytes; }

    /** Address of row r (f32 or bf16 elements). */
    long row(int r) {
        return ptr + (long) r * cols * (bf16 ? 2 : 4);
    }

    @Override
    public String toString() {
        return "CudaTensor[" + (name == null ? "" : name + " ") + rows + "x" + cols + (bf16 ? " bf16" : " f32") + "]";
    }
}
