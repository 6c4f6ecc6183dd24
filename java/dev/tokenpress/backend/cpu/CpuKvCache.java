package dev.tokenpress.backend.cpu;

import dev.tokenpress.kv.KvCache;

/** KV storage on the heap in f32: keys/values [layer][kvHead][slot * hd]. */
final class CpuKvCache extends KvCache {
    final float[][][] keys;
    final float[][][] values;

    CpuKvCache(int layers, int kvHeads, int headDim, int capacity) {
        super(layers, kvHeads, headDim, capacity);
        long perHead = (long) capacity * headDim;
        if (perHead > Integer.MAX_VALUE - 8) throw new IllegalArgumentException("KV capacity too large for the CPU backend: " + capacity);
        keys = new float[layers][kvHeads][(int) perHead];
        values = new float[layers][kvHeads][(int) perHead];
    }

    @Override
    public long bytes() {
        // f32 keys + values, plus the int32 position of every slot
        return 2L * layers * kvHeads * capacity * headDim * 4 + (long) layers * kvHeads * capacity * 4;
    }

    /** The bookkeeping of {@code src} (its keys and values are copied by the backend). */
    void copyFrom(CpuKvCache src) {
        copyBookkeepingFrom(src);
    }
}
