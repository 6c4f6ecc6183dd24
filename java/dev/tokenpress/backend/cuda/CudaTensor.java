package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;

/**
 * A tensor in device memory: f32 activations and 1-D weights (norms, biases) as f32, 2-D weights as bf16 (or Q8_0
 * codes and scales with {@code --weight-type q8_0}).
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
    /** Q8_0 weight ({@code --weight-type q8_0}): ptr holds int8 codes [rows, cols], scales f32 [rows, cols / 32]. */
    final boolean q8;
    final long scales;

    CudaTensor(int rows, int cols, boolean bf16, long ptr, long bytes, String name) {
        this(rows, cols, bf16, ptr, bytes, name, false, 0);
    }

    CudaTensor(int rows, int cols, boolean bf16, long ptr, long bytes, String name, boolean q8, long scales) {
        this.rows = rows;
        this.cols = cols;
        this.bf16 = bf16;
        this.ptr = ptr;
        this.bytes = bytes;
        this.name = name;
        this.q8 = q8;
        this.scales = scales;
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
        return "CudaTensor[" + (name == null ? "" : name + " ") + rows + "x" + cols + (q8 ? " q8_0" : bf16 ? " bf16" : " f32") + "]";
    }
}
