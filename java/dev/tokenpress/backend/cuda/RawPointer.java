package dev.tokenpress.backend.cuda;

import org.bytedeco.javacpp.Pointer;

/** A JavaCPP pointer at a raw (device or pinned host) address, for bytedeco calls that take a Pointer. */
final class RawPointer extends Pointer {
    RawPointer(long address, long bytes) {
        this.address = address;
        this.limit = bytes;
        this.capacity = bytes;
    }

    /** One byte per element, so {@code asByteBuffer()} spans exactly the bytes given (a plain Pointer counts 8). */
    @Override
    public int sizeof() {
        return 1;
    }

    RawPointer at(long newAddress) {
        this.address = newAddress;
        return this;
    }
}
