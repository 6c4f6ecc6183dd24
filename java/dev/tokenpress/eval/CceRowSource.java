package dev.tokenpress.eval;

import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.TensorData;

import java.nio.FloatBuffer;
import java.nio.ShortBuffer;

/**
 * Reads blocks of rows of a [V, D] matrix as f32. A reader is per thread: it owns its staging buffers and its own
 * view of the (possibly memory-mapped) data, and copies only the rows asked for.
 */
abstract class CceRowSource {
    final int rows, dim;

    CceRowSource(int rows, int dim) {
        this.rows = rows;
        this.dim = dim;
    }

    /** A per-thread reader for blocks of at most {@code maxRows} rows. */
    abstract Reader reader(int maxRows);

    abstract static class Reader {
        /**
         * Makes rows {@code [start, start+count)} available as f32 and returns the array holding them; row r is at
         * {@link #offset()} + (r - start) * dim. The array may be the reader's buffer (overwritten by the next call).
         */
        abstract float[] load(int start, int count);

        abstract int offset();
    }

    static CceRowSource of(float[] w, int rows, int dim) {
        return new CceRowSource(rows, dim) {
            @Override
            Reader reader(int maxRows) {
                return new Reader() {
                    int off;

                    @Override
                    float[] load(int start, int count) {
                        off = start * dim;
                        return w;
                    }

                    @Override
                    int offset() {
                        return off;
                    }
                };
            }
        };
    }

    static CceRowSource of(TensorData t) {
        long[] shape = t.shape();
        if (shape.length != 2)
            throw new IllegalArgumentException(t.name() + ": LM head must be 2-D [V, D], got " + t.shapeString());
        if (shape[0] < 1 || shape[1] < 1 || shape[0] * shape[1] > Integer.MAX_VALUE)
            throw new IllegalArgumentException(t.name() + ": unsupported LM head shape " + t.shapeString());
        int v = (int) shape[0], d = (int) shape[1];
        long need = (long) v * d * t.dtype().bytes;
        if (t.data().limit() < need)
            throw new IllegalArgumentException(t.name() + ": buffer holds " + t.data().limit() + " bytes, shape "
                    + t.shapeString() + " " + t.dtype() + " needs " + need);
        DType dt = t.dtype();
        return new CceRowSource(v, d) {
            @Override
            Reader reader(int maxRows) {
                float[] buf = new float[maxRows * d];
                if (dt == DType.F32) {
                    FloatBuffer fb = t.buffer().rewind().asFloatBuffer();
                    return new Reader() {
                        @Override
                        float[] load(int start, int count) {
                            fb.get(start * d, buf, 0, count * d);
                            return buf;
                        }

                        @Override
                        int offset() {
                            return 0;
                        }
                    };
                }
                ShortBuffer sb = t.buffer().rewind().asShortBuffer();
                short[] raw = new short[maxRows * d];
                boolean bf16 = dt == DType.BF16;
                return new Reader() {
                    @Override
                    float[] load(int start, int count) {
                        int n = count * d;
                        sb.get(start * d, raw, 0, n);
                        if (bf16) {
                            for (int i = 0; i < n; i++) buf[i] = Float.intBitsToFloat((raw[i] & 0xFFFF) << 16);
                        } else {
                            for (int i = 0; i < n; i++) buf[i] = Half.toFloat(raw[i]);
                        }
                        return buf;
                    }

                    @Override
                    int offset() {
                        return 0;
                    }
                };
            }
        };
    }
}
