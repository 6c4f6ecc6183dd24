package dev.tokenpress.testutil;

import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.TensorData;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.util.SplittableRandom;

/** Builds in-memory tensors for op tests. */
public final class TestTensors {
    private TestTensors() {}

    /** A TensorData of the given dtype holding {@code values} (rounded to the dtype), shape [rows, cols] or [cols] if rows < 0. */
    public static TensorData of(String name, DType dtype, int rows, int cols, float[] values) {
        int n = rows < 0 ? cols : rows * cols;
        ByteBuffer b = ByteBuffer.allocateDirect(n * dtype.bytes).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < n; i++) {
            switch (dtype) {
                case F32 -> b.putFloat(i * 4, values[i]);
                case BF16 -> b.putShort(i * 2, Half.floatToBf16(values[i]));
                case F16 -> b.putShort(i * 2, Half.fromFloat(values[i]));
            }
        }
        long[] shape = rows < 0 ? new long[]{cols} : new long[]{rows, cols};
        return new TensorData(name, dtype, shape, b.asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN), Path.of("memory"));
    }

    /** Values rounded as the dtype stores them. */
    public static float[] rounded(DType dtype, float[] v) {
        float[] out = new float[v.length];
        for (int i = 0; i < v.length; i++)
            out[i] = switch (dtype) {
                case F32 -> v[i];
                case BF16 -> Half.bf16ToFloat(Half.floatToBf16(v[i]));
                case F16 -> Half.toFloat(Half.fromFloat(v[i]));
            };
        return out;
    }

    public static float[] randn(SplittableRandom r, int n, double std) {
        float[] out = new float[n];
        for (int i = 0; i < n; i++) out[i] = (float) (gaussian(r) * std);
        return out;
    }

    public static double gaussian(SplittableRandom r) {
        double u1 = r.nextDouble(), u2 = r.nextDouble();
        return Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2);
    }

    /** max |a-b| / (atol + rtol·|b|) over all elements; <= 1 means within tolerance. */
    public static double worstRatio(float[] a, double[] ref, double atol, double rtol) {
        double worst = 0;
        for (int i = 0; i < ref.length; i++) worst = Math.max(worst, Math.abs(a[i] - ref[i]) / (atol + rtol * Math.abs(ref[i])));
        return worst;
    }
}
