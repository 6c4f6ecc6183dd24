package dev.tokenpress.backend.cpu;

import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;

/**
 * A CPU KV cache whose rows are not the plain f32 / bf16 arrays of {@link CpuKvCache}: quantized ({@link QuantKvCache})
 * or merged across layers ({@link MiniKvCache}). Each stores and reads its own rows and brings its own attention and
 * query-key scores; {@link CpuBackend} hands such a cache these ops, and builds Quest's page bounds from {@link #read}.
 */
abstract class PackedKvCache extends KvCache {
    PackedKvCache(int layers, int kvHeads, int headDim, int capacity) {
        super(layers, kvHeads, headDim, capacity);
    }

    /** Stores a token's key and value (already rotated) into an allocated slot. */
    abstract void store(int layer, int head, int slot, float[] k, int kOff, float[] v, int vOff);

    /** The reconstructed key and value of an occupied slot. */
    abstract void read(int layer, int head, int slot, float[] key, float[] value);

    /** {@code Backend.attention} over this cache. */
    abstract void attention(Parallel par, Kernels k, CpuTensor o, CpuTensor q, int layer, int[] queryPositions, int n,
                            SlotSelection select, AttentionStats stats);

    /** {@code Backend.queryKeyScores} over this cache. */
    abstract void queryKeyScores(Parallel par, Kernels k, float[][] out, CpuTensor q, int row, int queryPosition, int layer);

    /** {@code Backend.storeKv}: token i of k / v [n, kvHeads·hd] into slots[g][i] of each KV head g. */
    final void storeKv(int layer, CpuTensor kt, CpuTensor vt, int[][] slots, int n) {
        int hd = headDim;
        for (int g = 0; g < kvHeads; g++)
            for (int i = 0; i < n; i++) store(layer, g, slots[g][i], kt.data, i * kt.cols + g * hd, vt.data, i * vt.cols + g * hd);
    }
}
