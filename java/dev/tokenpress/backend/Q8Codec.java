package dev.tokenpress.backend;

import dev.tokenpress.io.Half;
import dev.tokenpress.io.TensorData;

import java.nio.ByteBuffer;

/**
 * The Q8_0 quantizer every backend uses (so CPU and CUDA hold the same codes): per block of 32 weights along a row,
 * {@code d = max|w| / 127}, codes {@code round(w / d)} clamped to [-127, 127] (0 for an all-zero block; a block with
 * a NaN gets the canonical NaN as its scale and codes 0).
 */
public final class Q8Codec {
    public static final int BLOCK = 32;

    private Q8Codec() {}

    /** Encodes src[off, off + cols) into q[qOff, qOff + cols) and d[dOff, dOff + cols / 32). */
    public static void quantizeRow(float[] src, int off, int cols, byte[] q, int qOff, float[] d, int dOff) {
        for (int b = 0; b < cols / BLOCK; b++) {
            int base = off + b * BLOCK;
            float amax = 0;
            for (int j = 0; j < BLOCK; j++) amax = Math.max(amax, Math.abs(src[base + j]));
            float scale = amax / 127f;
            // one NaN for a block with any: Math.abs keeps or clears a NaN's sign depending on how the JIT compiled it
            if (scale != scale) scale = Float.NaN;
            float inv = scale != 0 ? 1f / scale : 0f;
            d[dOff + b] = scale;
            int qo = qOff + b * BLOCK;
            for (int j = 0; j < BLOCK; j++) q[qo + j] = (byte) Math.max(-127, Math.min(127, Math.round(src[base + j] * inv)));
        }
    }

    /** Row {@code row} of a 2-D checkpoint tensor [rows, cols] (bf16, f16 or f32) as floats into dst[0, cols). */
    public static void rowFloats(TensorData t, ByteBuffer buf, int row, int cols, float[] dst) {
        long base = (long) row * cols;
        for (int i = 0; i < cols; i++) {
            long e = base + i;
            dst[i] = switch (t.dtype()) {
                case BF16 -> Float.intBitsToFloat((buf.getShort(Math.toIntExact(e * 2)) & 0xFFFF) << 16);
                case F16 -> Half.toFloat(buf.getShort(Math.toIntExact(e * 2)));
                case F32 -> buf.getFloat(Math.toIntExact(e * 4));
            };
        }
    }
}
