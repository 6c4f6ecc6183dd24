package dev.tokenpress.io;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;

/**
 * One tensor of a safetensors file, backed by a read-only memory-mapped region (never copied onto the heap).
 *
 * @param name  the tensor name, e.g. {@code model.layers.0.self_attn.q_proj.weight}
 * @param dtype element type
 * @param shape row-major shape, e.g. [out_features, in_features] for a Linear weight
 * @param data  little-endian buffer positioned at 0 with limit = numel * dtype.bytes
 * @param file  the file it lives in (for error messages)
 */
public record TensorData(String name, DType dtype, long[] shape, ByteBuffer data, Path file) {

    public long numel() {
        long n = 1;
        for (long s : shape) n *= s;
        return n;
    }

    /** A fresh little-endian duplicate, safe to use from another thread. */
    public ByteBuffer buffer() {
        return data.duplicate().order(ByteOrder.LITTLE_ENDIAN);
    }

    /** Reads element {@code i} as a float (slow path for tests and small tensors). */
    public float getFloat(long i) {
        int idx = Math.toIntExact(i * dtype.bytes);
        return switch (dtype) {
            case F32 -> data.getFloat(idx);
            case BF16 -> Float.intBitsToFloat((data.getShort(idx) & 0xFFFF) << 16);
            case F16 -> Half.toFloat(data.getShort(idx));
        };
    }

    /** Copies the whole tensor to a float array (only for small tensors: norms, biases, tests). */
    public float[] toFloats() {
        float[] out = new float[Math.toIntExact(numel())];
        for (int i = 0; i < out.length; i++) out[i] = getFloat(i);
        return out;
    }

    public String shapeString() {
        StringBuilder sb = new StringBuilder("[");
        for (int i = 0; i < shape.length; i++) sb.append(i == 0 ? "" : ", ").append(shape[i]);
        return sb.append(']').toString();
    }
}
