package dev.tokenpress.backend;

import java.util.Locale;

/**
 * How an unquantized KV cache stores its keys or its values ({@code -ctk} / {@code -ctv}, llama.cpp's
 * {@code --cache-type-k} / {@code --cache-type-v}). The CPU backend stores f32 by default and bf16 on request;
 * the CUDA backend always stores bf16. Quantized caches are {@code --kv-quant}'s.
 */
public enum KvType {
    /** 4 bytes per element: the keys and values exactly as the projections computed them. */
    F32("f32", 4),
    /**
     * 2 bytes per element: bfloat16, rounded to nearest even when stored, widened exactly when read (what the CUDA
     * backend stores): half the memory, and at long context attention streams half the bytes.
     */
    BF16("bf16", 2);

    private final String spec;
    private final int bytes;

    KvType(String spec, int bytes) {
        this.spec = spec;
        this.bytes = bytes;
    }

    public String spec() {
        return spec;
    }

    /** Bytes per stored element. */
    public int bytes() {
        return bytes;
    }

    /** Parses {@code f32} or {@code bf16} (case-insensitive); other llama.cpp cache types get what to use instead. */
    public static KvType parse(String s) {
        String v = s.trim().toLowerCase(Locale.ROOT);
        for (KvType t : values()) if (t.spec.equals(v)) return t;
        String hint = switch (v) {
            case "f16" -> ": f16 is not offered (bf16 has the same size, and is what the CUDA backend stores): use bf16";
            case "q8_0", "q8_1" -> ": for 8-bit keys and values use --kv-quant int8";
            case "q4_0", "q4_1", "iq4_nl" -> ": for 4-bit keys and values use --kv-quant int4";
            case "q5_0", "q5_1" -> ": use --kv-quant int8 or int4";
            default -> ": use f32 or bf16";
        };
        throw new IllegalArgumentException("unknown KV cache type '" + s + "'" + hint);
    }

    @Override
    public String toString() {
        return spec;
    }
}
