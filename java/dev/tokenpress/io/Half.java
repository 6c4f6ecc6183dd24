package dev.tokenpress.io;

/** IEEE 754 half precision and bfloat16 conversions (Java 17 has no Float.float16ToFloat). */
public final class Half {
    private Half() {}

    private static final float[] F16_TABLE = new float[65536];
    static {
        for (int i = 0; i < 65536; i++) F16_TABLE[i] = slowToFloat((short) i);
    }

    /** Converts IEEE half bits to float (table lookup). */
    public static float toFloat(short h) {
        return F16_TABLE[h & 0xFFFF];
    }

    private static float slowToFloat(short hbits) {
        int h = hbits & 0xFFFF;
        int sign = (h >>> 15) & 1, exp = (h >>> 10) & 0x1F, mant = h & 0x3FF;
        float v;
        if (exp == 0) v = (float) (mant * Math.pow(2, -24));
        else if (exp == 31) v = mant == 0 ? Float.POSITIVE_INFINITY : Float.NaN;
        else v = (float) ((1 + mant / 1024.0) * Math.pow(2, exp - 15));
        return sign == 1 ? -v : v;
    }

    /** Float to IEEE half bits, round to nearest even. */
    public static short fromFloat(float f) {
        int bits = Float.floatToRawIntBits(f);
        int sign = (bits >>> 16) & 0x8000;
        int val = (bits & 0x7FFFFFFF);
        if (val >= 0x7F800000) return (short) (sign | (val > 0x7F800000 ? 0x7E00 : 0x7C00));
        if (val >= 0x477FF000) return (short) (sign | 0x7C00); // overflow to inf
        if (val < 0x38800000) { // subnormal or zero
            if (val < 0x33000000) return (short) sign;
            int e = val >>> 23;
            int m = (val & 0x7FFFFF) | 0x800000;
            int shift = 126 - e; // 113 - e + 13
            int rounded = m >>> shift;
            int rem = m & ((1 << shift) - 1);
            int half = 1 << (shift - 1);
            if (rem > half || (rem == half && (rounded & 1) == 1)) rounded++;
            return (short) (sign | rounded);
        }
        int e = ((val >>> 23) - 112) << 10;
        int m = (val >>> 13) & 0x3FF;
        int out = e | m;
        int rem = val & 0x1FFF;
        if (rem > 0x1000 || (rem == 0x1000 && (out & 1) == 1)) out++;
        return (short) (sign | out);
    }

    /** bfloat16 bits to float. */
    public static float bf16ToFloat(short b) {
        return Float.intBitsToFloat((b & 0xFFFF) << 16);
    }

    /** Float to bfloat16 bits, round to nearest even (NaN kept NaN). */
    public static short floatToBf16(float f) {
        int b = Float.floatToRawIntBits(f);
        if ((b & 0x7FFFFFFF) > 0x7F800000) return (short) ((b >>> 16) | 0x40);
        return (short) ((b + 0x7FFF + ((b >>> 16) & 1)) >>> 16);
    }
}
