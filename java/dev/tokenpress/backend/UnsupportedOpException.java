package dev.tokenpress.backend;

/** Thrown when a backend cannot run an op for the given shapes (e.g. a head dim a kernel does not support). */
public class UnsupportedOpException extends RuntimeException {
    public UnsupportedOpException(String message) {
        super(message);
    }
}
