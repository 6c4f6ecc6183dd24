package dev.tokenpress.backend.cuda;

/** A CUDA or kernel call failed; the message names the op and the native error. */
public class CudaException extends RuntimeException {
    public final int status;

    public CudaException(String message, int status) {
        super(message);
        this.status = status;
    }
}
