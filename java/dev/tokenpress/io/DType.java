package dev.tokenpress.io;

/** Element types of safetensors tensors that tokenpress reads. */
public enum DType {
    F32(4, "F32"), F16(2, "F16"), BF16(2, "BF16");

    /** Bytes per element. */
    public final int bytes;
    /** The name safetensors headers use. */
    public final String safetensorsName;

    DType(int bytes, String safetensorsName) {
        this.bytes = bytes;
        this.safetensorsName = safetensorsName;
    }

    /** Parses a safetensors dtype string; returns null for dtypes tokenpress does not read. */
    public static DType fromSafetensors(String name) {
        for (DType d : values()) if (d.safetensorsName.equals(name)) return d;
        return null;
    }
}
