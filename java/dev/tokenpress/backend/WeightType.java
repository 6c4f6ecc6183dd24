package dev.tokenpress.backend;

import java.util.Locale;

/** How a backend holds the model's matrices ({@code --weight-type}). */
public enum WeightType {
    /** As the checkpoint stores them (bf16, f16 or f32; the CPU reads them in place from the memory map). */
    AS_STORED("as-stored"),
    /**
     * llama.cpp's Q8_0: blocks of 32 weights along a row, each 32 signed bytes {@code round(w / d)} with
     * {@code d = max|w| / 127}; about 1.1 bytes per weight instead of 2, so a decode step streams half the bytes.
     * Quantized once at load time (the CPU holds it in the heap; CUDA reads the codes with its own GEMV).
     */
    Q8_0("q8_0"),
    /**
     * llama.cpp's Q4_0: blocks of 32 weights, 4-bit codes {@code c} with {@code w = (c - 8) · d} and one scale per
     * block; about 0.63 bytes per weight (f32 scales here), a third of bf16's. Quantized at load time (CPU only).
     */
    Q4_0("q4_0");

    private final String spec;

    WeightType(String spec) {
        this.spec = spec;
    }

    public String spec() {
        return spec;
    }

    /** Parses {@code as-stored}, {@code q8_0} or {@code q4_0} (case-insensitive). */
    public static WeightType parse(String s) {
        String v = s.trim().toLowerCase(Locale.ROOT);
        for (WeightType t : values()) if (t.spec.equals(v)) return t;
        throw new IllegalArgumentException("unknown weight type '" + s + "': use as-stored, q8_0 or q4_0");
    }

    @Override
    public String toString() {
        return spec;
    }
}
