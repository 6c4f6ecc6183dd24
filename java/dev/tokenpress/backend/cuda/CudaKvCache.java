package dev.tokenpress.backend.cuda;

import dev.tokenpress.kv.KvCache;

import java.util.Arrays;

/**
 * KV cache in device memory: keys and values bf16 [L][Hkv][C][hd], slot positions int32 [L][Hkv][C] (-1 free).
 * The host bookkeeping of {@link KvCache} stays authoritative; device positions are written by the KV-store
 * kernel (new tokens), and frees/clears are queued here and flushed on the stream before the next op that
 * reads them.
 *
 * <p>A cache may be member {@code b} of a pool of {@code B} caches of one shape in one allocation laid out
 * [L][B][Hkv][C] ({@link CudaBackend#newKvCaches}): its layer l is then the device layer l·B + b of arrays addressed
 * from the pool's base ({@link #deviceLayer}), so every kernel sees an ordinary cache, and consecutive members' KV heads
 * of a layer lie one after another — one attention call covers a run of them as one cache with B·Hkv KV heads. A cache
 * of its own is a pool of one (device layer = layer).
 */
public final class CudaKvCache extends KvCache {
    private final CudaBackend backend;
    /** Base addresses of the (pool's) arrays; a layer's rows start at {@link #deviceLayer}. */
    final long keys;
    final long values;
    final long pos;
    /** This cache's share of the bytes (of its pool's arrays). */
    final long kvBytes;
    final long posBytes;
    /** Caches in the pool (1 for a cache of its own) and this cache's index in it. */
    final int poolSize, member;
    private final Pool pool;
    private int[] pending = new int[64]; // flat position index of freed slots
    private int pendingCount;
    private boolean closed;

    /** The arrays several caches share, freed when the last of them closes. */
    static final class Pool {
        final long keys, values, pos;
        int open;

        Pool(long keys, long values, long pos, int open) {
            this.keys = keys;
            this.values = values;
            this.pos = pos;
            this.open = open;
        }
    }

    CudaKvCache(CudaBackend backend, int layers, int kvHeads, int headDim, int capacity) {
        this(backend, layers, kvHeads, headDim, capacity, allocate(backend, layers, kvHeads, headDim, capacity, 1), 1, 0);
    }

    CudaKvCache(CudaBackend backend, int layers, int kvHeads, int headDim, int capacity, Pool pool, int poolSize, int member) {
        super(layers, kvHeads, headDim, capacity);
        this.backend = backend;
        long slots = (long) layers * kvHeads * capacity;
        this.kvBytes = slots * headDim * 2;
        this.posBytes = slots * 4;
        this.pool = pool;
        this.poolSize = poolSize;
        this.member = member;
        this.keys = pool.keys;
        this.values = pool.values;
        this.pos = pool.pos;
    }

    /** Allocates the arrays of {@code count} caches of one shape (positions all -1). */
    static Pool allocate(CudaBackend backend, int layers, int kvHeads, int headDim, int capacity, int count) {
        if (capacity <= 0) throw new IllegalArgumentException("KV capacity must be positive, got " + capacity);
        if (layers <= 0 || kvHeads <= 0 || count <= 0)
            throw new IllegalArgumentException("a KV cache of " + layers + " layers x " + kvHeads + " KV heads x " + count + " sequences");
        long slots = (long) layers * kvHeads * capacity * count;
        if (slots > Integer.MAX_VALUE)
            throw new IllegalArgumentException("a KV cache of " + slots + " slots (layers x KV heads x capacity" + (count == 1 ? "" : " x sequences")
                    + ") is more than the device's slot indices address (" + Integer.MAX_VALUE + "): lower the context size (-c)" + (count == 1 ? "" : " or the parallel sequences"));
        long kv = slots * headDim * 2, pb = slots * 4;
        long k = 0, v = 0, p = 0;
        String what = count == 1 ? "" : " for " + count + " sequences";
        try {
            k = backend.malloc(kv, "KV cache keys (" + layers + " layers x " + kvHeads + " KV heads x " + capacity + " slots" + what + ")");
            v = backend.malloc(kv, "KV cache values");
            p = backend.malloc(pb, "KV cache positions");
        } catch (RuntimeException e) {
            backend.free(k);
            backend.free(v);
            throw e;
        }
        backend.memsetNow(p, 0xFF, pb);
        return new Pool(k, v, p, count);
    }

    /** The layer index of the device arrays (from {@link #keys}, {@link #values}, {@link #pos}) of this cache's layer. */
    int deviceLayer(int layer) {
        return layer * poolSize + member;
    }

    /** Element offset of (layer, head, slot 0) in the device arrays, in slots. */
    long slotBase(int layer, int head) {
        return ((long) deviceLayer(layer) * kvHeads + head) * capacity;
    }

    @Override
    public long bytes() {
        return 2 * kvBytes + posBytes;
    }

    /** Device address of keys of (layer, head) slot 0. */
    public long keysAddress(int layer, int head) {
        return keys + slotBase(layer, head) * headDim * 2;
    }

    /** Device address of values of (layer, head) slot 0. */
    public long valuesAddress(int layer, int head) {
        return values + slotBase(layer, head) * headDim * 2;
    }

    @Override
    protected void onFree(int layer, int head, int slot) {
        if (pendingCount == pending.length) pending = Arrays.copyOf(pending, pending.length * 2);
        pending[pendingCount++] = (int) (slotBase(layer, head) + slot);
    }

    @Override
    protected void onClear() {
        backend.cacheStartsOver(); // a cleared cache starts a new sequence: graph failures of the last one no longer count
        pendingCount = 0;
        if (poolSize == 1) {
            backend.memsetAsync(pos, 0xFF, posBytes);
            return;
        }
        long layerBytes = 4L * kvHeads * capacity;  // this cache's positions of one layer are contiguous
        for (int l = 0; l < layers; l++) backend.memsetAsync(pos + 4L * slotBase(l, 0), 0xFF, layerBytes);
    }

    /** Whether this is the last open cache of its arrays (closing it frees them). */
    boolean lastOfPool() {
        return pool.open == 1;
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
        pool.open--;
    }
}
