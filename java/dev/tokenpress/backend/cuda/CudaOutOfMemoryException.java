package dev.tokenpress.backend.cuda;

/** A device allocation failed: says how much was requested and how much was free. */
public class CudaOutOfMemoryException extends RuntimeException {
    public final long requestedBytes;
    public final long freeBytes;

    public CudaOutOfMemoryException(String what, long requestedBytes, long freeBytes, long totalBytes) {
        super(String.format("out of GPU memory allocating %s: requested %s, free %s of %s "
                        + "(use a smaller context -c, a compressing --kv policy, or a smaller model)",
                what, mib(requestedBytes), mib(freeBytes), mib(totalBytes)));
        this.requestedBytes = requestedBytes;
        this.freeBytes = freeBytes;
    }

    private static String mib(long b) {
        return b < 0 ? "?" : String.format("%.1f MiB", b / 1048576.0);
    }
}
