package dev.tokenpress.backend.cuda;

import dev.tokenpress.kv.KvCache;

import java.util.Arrays;

/**
 * KV cache in device memory: keys and values bf16 [L][Hkv][C][hd], slot positions int32 [L][Hkv][C] (-1 free).
 * The host bookkeeping of {@link KvCache} stays authoritative; device positions are written by the KV-store
 * kernel (new tokens), and frees/clears are queued here and flushed on the stream before the next op that
 * reads them.
 */
public final class CudaKvCache extends KvCache {
    private final CudaBackend backend;
    final long keys;
    final long values;
    final long pos;
    final long kvBytes;
    final long posBytes;
    private int[] pending = new int[64]; // flat position index of freed slots
    private int pendingCount;
    private boolean closed;

    CudaKvCache(CudaBackend backend, int layers, int kvHeads, int headDim, int capacity) {
        super(layers, kvHeads, headDim, capacity);
        this.backend = backend;
        long slots = (long) layers * kvHeads * capacity;
        this.kvBytes = slots * headDim * 2;
        this.posBytes = slots * 4;
        long k = 0, v = 0, p = 0;
        try {
            k = backend.malloc(kvBytes, "KV cache keys (" + layers + " layers x " + kvHeads + " KV heads x " + capacity + " slots)");
            v = backend.malloc(kvBytes, "KV cache values");
            p = backend.malloc(posBytes, "KV cache positions");
        } catch (RuntimeException e) {
            backend.free(k);
            backend.free(v);
            throw e;
        }
        this.keys = k;
        this.values = v;
        this.pos = p;
        backend.memsetNow(pos, 0xFF, posBytes);
    }

    @Override
    public long bytes() {
        return 2 * kvBytes + posBytes;
    }

    /** Device address of keys of (layer, head) slot 0. */
    public long keysAddress(int layer, int head) {
        return keys + (((long) layer * kvHeads + head) * capacity) * headDim * 2;
    }

    /** Device address of values of (layer, head) slot 0. */
    public long valuesAddress(int layer, int head) {
        return values + (((long) layer * kvHeads + head) * capacity) * headDim * 2;
    }

    @Override
    protected void onFree(int layer, int head, int slot) {
        if (pendingCount == pending.length) pending = Arrays.copyOf(pending, pending.length * 2);
        pending[pendingCount++] = (int) (((long) layer * kvHeads + head) * capacity + slot);
    }

    @Override
    protected void onClear() {
        pendingCount = 0;
        backend.memsetAsync(pos, 0xFF, posBytes);
    }

    /** The bookkeeping of {@code src} (its device buffers are copied by the backend). */
    void copyFrom(CudaKvCache src) {
        copyBookkeepingFrom(src);
    }

    int pendingCount() {
        return pendingCount;
    }

    /** Takes the queued frees: [count] flat indices (values are all -1). */
    int[] takePending() {
        int[] out = Arrays.copyOf(pending, pendingCount);
        pendingCount = 0;
        return out;
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        backend.releaseCache(this);
    }
}
