package dev.tokenpress.backend.cuda;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * Pinned host memory mirrored by a device buffer of the same size, carved sequentially: an op writes its
 * step-varying ints (token ids, positions, slots, counts) at the next offset of the pinned side and copies them
 * to the same offset of the device side with an async memcpy on the backend stream; its kernels read the
 * device copy. The eager arena is recycled only after the stream has drained; the graph arena is reset per
 * captured step, so a replayed graph's memcpy nodes pick up whatever the host wrote at the same offsets.
 */
final class StageArena implements AutoCloseable {
    final long host;
    final long dev;
    final long size;
    private final ByteBuffer buf;
    private long off;

    StageArena(long host, long dev, long size) {
        this.host = host;
        this.dev = dev;
        this.size = size;
        this.buf = new RawPointer(host, size).asByteBuffer().order(ByteOrder.LITTLE_ENDIAN);
    }

    void reset() {
        off = 0;
    }

    long used() {
        return off;
    }

    /** Whether `count` ints fit after the current offset. */
    boolean fits(int count) {
        return off + align(4L * count) <= size;
    }

    /**
     * Writes a[0..count) at the next offset and returns that offset (bytes from the arena start).
     * The caller checked {@link #fits}.
     */
    long put(int[] a, int count) {
        long o = off;
        ByteBuffer b = buf.duplicate().order(ByteOrder.LITTLE_ENDIAN);
        b.position((int) o);
        b.asIntBuffer().put(a, 0, count);
        off += align(4L * count);
        return o;
    }

    private static long align(long bytes) {
        return Math.max(256, (bytes + 255) & ~255L);
    }

    @Override
    public void close() {}
}
