package dev.tokenpress.kv.quant;

import dev.tokenpress.io.Half;

/**
 * The asymmetric min/max quantizer shared by every method, with f16 metadata, and b-bit code packing.
 *
 * <p>For a group with minimum m and maximum M: {@code zero = m↓} (m rounded down to f16),
 * {@code scale = ((M − zero)/(2^b − 1))↑} (rounded up to f16), {@code q = clamp(round((x − zero)/scale), 0, 2^b − 1)},
 * {@code x̂ = q·scale + zero}. Rounding the f16 zero down and the scale up keeps every element of [m, M] inside
 * the code range, so {@code |x − x̂| ≤ scale/2} holds with the stored scale.
 *
 * <p>Packing: codes of b ∈ {1, 2, 4, 8} bits, 8/b per byte; element e of a packed row lives in byte
 * {@code e·b/8} at bit shift {@code (e·b) mod 8} (first element in the low bits, KIVI's order within a word).
 */
public final class Quant {
    private Quant() {}

    /** Largest code of b bits. */
    public static int levels(int bits) { return (1 << bits) - 1; }

    /** Bytes of a packed row of n codes. */
    public static int rowBytes(int n, int bits) { return (n * bits + 7) >>> 3; }

    /** Half bits of the largest f16 value <= v. */
    public static short f16Down(float v) {
        short h = Half.fromFloat(v);
        if (Half.toFloat(h) > v) h = stepDown(h);
        return h;
    }

    /** Half bits of the smallest f16 value >= v (v >= 0). */
    public static short f16Up(float v) {
        short h = Half.fromFloat(v);
        if (Half.toFloat(h) < v) h = (short) (h + 1); // v >= 0: the next larger magnitude
        return h;
    }

    private static short stepDown(short h) {
        int b = h & 0xFFFF;
        if (b == 0) return (short) 0x8001;           // +0 -> smallest negative subnormal
        if ((b & 0x8000) == 0) return (short) (b - 1); // positive: smaller magnitude
        return (short) (b + 1);                        // negative: larger magnitude
    }

    /** Writes f16 (zero, scale) of a group with range [min, max] to meta[off], meta[off + 1]. */
    public static void params(float min, float max, int bits, short[] zero, short[] scale, int idx) {
        short z = f16Down(min);
        float zf = Half.toFloat(z);
        zero[idx] = z;
        scale[idx] = f16Up(Math.max(0f, (max - zf) / levels(bits)));
        // float rounding in the division could leave zero + levels*scale a hair below max: step up once
        if (Half.toFloat(z) + levels(bits) * Half.toFloat(scale[idx]) < max) scale[idx] = (short) (scale[idx] + 1);
    }

    /** The code of x in a group with the given f16 zero and scale. */
    public static int code(float x, float zero, float scale, int bits) {
        if (scale == 0f) return 0;
        int q = Math.round((x - zero) / scale);
        return q < 0 ? 0 : Math.min(q, levels(bits));
    }

    public static void put(byte[] a, int base, int e, int bits, int code) {
        int bit = e * bits, i = base + (bit >>> 3), sh = bit & 7;
        int mask = levels(bits) << sh;
        a[i] = (byte) ((a[i] & ~mask) | (code << sh));
    }

    public static int get(byte[] a, int base, int e, int bits) {
        int bit = e * bits;
        return ((a[base + (bit >>> 3)] & 0xFF) >>> (bit & 7)) & levels(bits);
    }
}
