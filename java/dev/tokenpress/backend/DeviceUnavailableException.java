package dev.tokenpress.backend;

/** The requested device cannot be used (no GPU, no driver, native library missing); the CLI exits with code 4. */
public class DeviceUnavailableException extends RuntimeException {
    public DeviceUnavailableException(String message) {
        super(message);
    }

    public DeviceUnavailableException(String message, Throwable cause) {
        super(message, cause);
    }
}
