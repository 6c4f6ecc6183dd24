package dev.tokenpress.kv;

import java.util.Arrays;

/**
 * The KV cache: per layer and KV head, a fixed array of {@code capacity} slots. A slot holds one token's key
 * (stored after RoPE) and value, and remembers that token's original position; a free slot has position -1.
 * Slots are allocated per (layer, KV head), so eviction policies may keep different tokens per head, and a
 * freed slot is reused by the next append. Backends subclass this to own the key/value storage
 * (CPU: f32 arrays; CUDA: device memory); the bookkeeping here is shared.
 *
 * <p>Attention over a layer considers, per KV head, either an explicit slot list ({@link SlotSelection}) or
 * every slot below the head's high-water mark; a slot takes part for a query at position p iff its position
 * is in [0, p] (this is the causal mask).
 */
public abstract class KvCache implements AutoCloseable {
    protected final int layers;
    protected final int kvHeads;
    protected final int headDim;
    protected final int capacity;
    /** [layer][kvHead][slot] original token position, -1 = free. */
    protected final int[][][] positions;
    /** [layer][kvHead] one past the highest slot ever used. */
    protected final int[][] highWater;
    /** [layer][kvHead] stack of freed slots below the high-water mark. */
    private final int[][][] freeStack;
    private final int[][] freeCount;
    /** [layer][kvHead] number of occupied slots. */
    private final int[][] occupied;
    /** [layer][kvHead] slots [0, highWater) hold strictly ascending positions, none free (see inPositionOrder). */
    private final boolean[][] inOrder;

    protected KvCache(int layers, int kvHeads, int headDim, int capacity) {
        if (capacity <= 0) throw new IllegalArgumentException("KV capacity must be positive, got " + capacity);
        this.layers = layers;
        this.kvHeads = kvHeads;
        this.headDim = headDim;
        this.capacity = capacity;
        this.positions = new int[layers][kvHeads][capacity];
        for (int[][] l : positions) for (int[] h : l) Arrays.fill(h, -1);
        this.highWater = new int[layers][kvHeads];
        this.freeStack = new int[layers][kvHeads][];
        this.freeCount = new int[layers][kvHeads];
        this.occupied = new int[layers][kvHeads];
        this.inOrder = new boolean[layers][kvHeads];
        for (boolean[] l : inOrder) Arrays.fill(l, true);
    }

    public int layers() { return layers; }

    public int kvHeads() { return kvHeads; }

    public int headDim() { return headDim; }

    public int capacity() { return capacity; }

    /** Bytes of key/value storage actually allocated by the backend (plus its bookkeeping buffers). */
    public abstract long bytes();

    /**
     * The bytes this cache would hold with its current contents but {@code slots} slots per head instead of its
     * capacity (what a run that never needed more than {@code slots} would have allocated). Default: {@link #bytes()}
     * scaled by slots / capacity, exact for caches whose every byte is per slot; quantized caches, whose blocks
     * and window do not scale with the capacity, override it.
     */
    public long bytesWithCapacity(int slots) {
        return bytes() / capacity * slots + bytes() % capacity * slots / capacity;
    }

    /** Slots that may hold tokens for (layer, head): attention scans [0, highWater). */
    public int highWater(int layer, int head) { return highWater[layer][head]; }

    /** Number of occupied slots of (layer, head). */
    public int occupied(int layer, int head) { return occupied[layer][head]; }

    /** Original position of the token in a slot, -1 if free. */
    public int position(int layer, int head, int slot) { return positions[layer][head][slot]; }

    /** The [capacity] position array of (layer, head); read-only by convention. */
    public int[] positions(int layer, int head) { return positions[layer][head]; }

    /**
     * Whether slots [0, highWater) of (layer, head) hold strictly ascending positions with no free slot among them:
     * true since the last {@link #clear} while every append went to the top with a later position than the slot
     * below and only the top slot was freed (a truncation); a freed slot below the top, or a refilled one, makes it
     * false until the next clear. Kept at every change, so asking costs nothing.
     */
    public boolean inPositionOrder(int layer, int head) { return inOrder[layer][head]; }

    /**
     * Allocates one slot per token for (layer, head) and records the positions; reuses freed slots first.
     *
     * @return slots[n]
     * @throws KvCacheFullException when no slot is free
     */
    public int[] allocate(int layer, int head, int[] tokenPositions, int n) {
        int[] out = new int[n];
        for (int i = 0; i < n; i++) {
            int slot;
            if (freeCount[layer][head] > 0) {
                slot = freeStack[layer][head][--freeCount[layer][head]];
                inOrder[layer][head] = false;  // a refilled hole
            } else if (highWater[layer][head] < capacity) {
                slot = highWater[layer][head]++;
                if (slot > 0 && positions[layer][head][slot - 1] >= tokenPositions[i]) inOrder[layer][head] = false;
            } else throw new KvCacheFullException("KV cache is full (" + capacity + " slots per head, layer " + layer
                    + "): raise the context size (-c) or use an evicting --kv policy");
            positions[layer][head][slot] = tokenPositions[i];
            occupied[layer][head]++;
            out[i] = slot;
            onAllocate(layer, head, slot);
        }
        return out;
    }

    /** Called after a slot of (layer, head) got a position (its key and value are stored after). */
    protected void onAllocate(int layer, int head, int slot) {}

    /** Frees a slot of (layer, head) so a later append reuses it. */
    public void free(int layer, int head, int slot) {
        if (positions[layer][head][slot] < 0) return;
        positions[layer][head][slot] = -1;
        occupied[layer][head]--;
        onFree(layer, head, slot);
        if (slot == highWater[layer][head] - 1) {
            highWater[layer][head]--;
            return;
        }
        inOrder[layer][head] = false;  // a hole below the top
        int[] st = freeStack[layer][head];
        if (st == null || st.length == freeCount[layer][head]) {
            st = Arrays.copyOf(st == null ? new int[16] : st, Math.max(16, freeCount[layer][head] * 2));
            freeStack[layer][head] = st;
        }
        st[freeCount[layer][head]++] = slot;
    }

    /** Frees every slot, in every layer and KV head, that holds a position >= {@code from}. */
    public void freeFrom(int from) {
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < kvHeads; h++)
                for (int slot = highWater[l][h] - 1; slot >= 0; slot--)
                    if (positions[l][h][slot] >= from) free(l, h, slot);
    }

    /**
     * Whether freeing the slots of the newest appended token (every layer and KV head) restores the cache to the
     * state before that append, so a speculative decode step can be taken back ({@code Llama.decodeGreedy}). True
     * for plain caches; quantizing caches, whose appends also re-encode earlier tokens, say false.
     */
    public boolean appendsReversible() {
        return true;
    }

    /** Hook for backends that mirror positions elsewhere (device memory). */
    protected void onFree(int layer, int head, int slot) {}

    /** Empties the cache (all slots free). */
    public void clear() {
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < kvHeads; h++) {
                Arrays.fill(positions[l][h], -1);
                highWater[l][h] = 0;
                freeCount[l][h] = 0;
                occupied[l][h] = 0;
                inOrder[l][h] = true;
            }
        onClear();
    }

    protected void onClear() {}

    /** Whether {@code other} has this cache's shape (layers, KV heads, head dim, capacity). */
    public boolean sameShape(KvCache other) {
        return other.layers == layers && other.kvHeads == kvHeads && other.headDim == headDim && other.capacity == capacity;
    }

    /**
     * Makes this cache's bookkeeping (positions, high-water marks, free slots) a copy of {@code src}'s, for a backend
     * copying the key/value storage alongside ({@code Backend.copyKvCache}).
     */
    protected void copyBookkeepingFrom(KvCache src) {
        if (!sameShape(src)) throw new IllegalArgumentException("KV caches of different shapes");
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < kvHeads; h++) {
                System.arraycopy(src.positions[l][h], 0, positions[l][h], 0, capacity);
                highWater[l][h] = src.highWater[l][h];
                occupied[l][h] = src.occupied[l][h];
                freeCount[l][h] = src.freeCount[l][h];
                freeStack[l][h] = src.freeStack[l][h] == null ? null : src.freeStack[l][h].clone();
                inOrder[l][h] = src.inOrder[l][h];
            }
    }

    @Override
    public void close() {}
}
