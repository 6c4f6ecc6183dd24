package dev.tokenpress.backend.cuda;

import org.bytedeco.javacpp.Pointer;

/** A JavaCPP pointer at a raw (device or pinned host) address, for bytedeco calls that take a Pointer. */
final class RawPointer extends Pointer {
    RawPointer(long address, long bytes) {
        this.address = address;
        this.limit = bytes;
        this.capacity = bytes;
    }

    RawPointer at(long newAddress) {
        this.address = newAddress;
        return this;
    }
}
