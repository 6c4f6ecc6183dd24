package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.TensorData;

import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.IntBuffer;
import java.nio.ShortBuffer;

/** A 2-D weight [rows, cols] read in place from its memory-mapped safetensors region (bf16, f16 or f32). */
final class CpuWeight implements Tensor {
    final TensorData source;
    final DType dtype;
    final int rows, cols;
    private final IntBuffer ints;      // BF16: two elements per int (cols must be even)
    private final ShortBuffer shorts;  // F16 or BF16 with odd cols
    private final FloatBuffer floats;  // F32

    CpuWeight(TensorData t) {
        this.source = t;
        this.dtype = t.dtype();
        long[] s = t.shape();
        this.rows = s.length == 1 ? 1 : Math.toIntExact(s[0]);
        this.cols = Math.toIntExact(s.length == 1 ? s[0] : s[1]);
        var buf = t.buffer().order(ByteOrder.LITTLE_ENDIAN);
        this.ints = dtype == DType.BF16 && cols % 2 == 0 ? buf.asIntBuffer() : null;
        this.shorts = dtype != DType.F32 ? buf.asShortBuffer() : null;
        this.floats = dtype == DType.F32 ? buf.asFloatBuffer() : null;
    }

    /** True when rows can be read as packed bf16 pairs (the fast path of matmul). */
    boolean packedBf16() {
        return ints != null;
    }

    /** Copies row r as packed bf16 pairs into dst[0, cols/2). */
    void rowPairs(int r, int[] dst) {
        ints.get(r * (cols / 2), dst, 0, cols / 2);
    }

    /** Copies rows [r, r+count) as packed bf16 pairs into dst[0, count*cols/2) (rows are contiguous). */
    void rowsPairs(int r, int count, int[] dst) {
        ints.get(r * (cols / 2), dst, 0, count * (cols / 2));
    }

    /** Converts row r to f32 into dst[off, off+cols); scratch must hold cols shorts. */
    void rowFloats(int r, float[] dst, int off, short[] scratch) {
        switch (dtype) {
            case F32 -> floats.get(r * cols, dst, off, cols);
            case BF16 -> {
                shorts.get(r * cols, scratch, 0, cols);
                for (int i = 0; i < cols; i++) dst[off + i] = Float.intBitsToFloat((scratch[i] & 0xFFFF) << 16);
            }
            case F16 -> {
                shorts.get(r * cols, scratch, 0, cols);
                for (int i = 0; i < cols; i++) dst[off + i] = Half.toFloat(scratch[i]);
            }
        }
    }

    @Override
    public int rows() { return rows; }

    @Override
    public int cols() { return cols; }

    @Override
    public long bytes() { return 0; }
}
