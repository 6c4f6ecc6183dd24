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
        forgetPageBounds();
    }

    // ---- Quest's page bounds, kept between calls ------------------------------------------------------------------

    /**
     * Per (layer, KV head) the elementwise key max and min of each page of {@link #pageSize} slots as
     * {@code questPageScores} computed them, with the number of slots they cover and the largest position among those;
     * a page's entry holds until a slot of the page is stored, written, freed or the cache cleared (then it is computed
     * again from the keys, as if there were no memo). Only pages whose every occupied slot was visible to the query
     * that computed them are kept; an entry serves any query at or after its largest position.
     */
    private int pageSize;
    private float[][][] pageMax, pageMin;   // [layer][head][page * hd], allocated per (layer, head) on first use
    private int[][][] pageCount;            // [layer][head][page]: slots covered, -1 = not known
    private int[][][] pageLast;             // [layer][head][page]: largest position covered

    /** The memo of (layer, head) for pages of {@code size} slots (a new page size starts it over). */
    void pageMemo(int size) {
        if (pageSize == size && pageCount != null) return;
        pageSize = size;
        pageMax = new float[layers][kvHeads][];
        pageMin = new float[layers][kvHeads][];
        pageCount = new int[layers][kvHeads][];
        pageLast = new int[layers][kvHeads][];
    }

    /** Whether page p of (layer, head) has bounds for a query at {@code queryPosition}: then they are in max/min. */
    boolean pageBounds(int layer, int head, int p, int queryPosition, float[] max, float[] min) {
        int[] count = pageCount[layer][head];
        if (count == null || count[p] < 0 || pageLast[layer][head][p] > queryPosition) return false;
        int hd = headDim;
        System.arraycopy(pageMax[layer][head], p * hd, max, 0, hd);
        System.arraycopy(pageMin[layer][head], p * hd, min, 0, hd);
        return true;
    }

    /** The number of slots behind page p's kept bounds (call after {@link #pageBounds} returned true). */
    int pageCount(int layer, int head, int p) {
        return pageCount[layer][head][p];
    }

    /** Keeps page p's bounds over {@code count} slots whose largest position is {@code last}. */
    void keepPage(int layer, int head, int p, float[] max, float[] min, int count, int last) {
        int hd = headDim;
        if (pageCount[layer][head] == null) {
            int pages = (capacity + pageSize - 1) / pageSize;
            pageMax[layer][head] = new float[pages * hd];
            pageMin[layer][head] = new float[pages * hd];
            pageCount[layer][head] = new int[pages];
            pageLast[layer][head] = new int[pages];
            java.util.Arrays.fill(pageCount[layer][head], -1);
        }
        System.arraycopy(max, 0, pageMax[layer][head], p * hd, hd);
        System.arraycopy(min, 0, pageMin[layer][head], p * hd, hd);
        pageCount[layer][head][p] = count;
        pageLast[layer][head][p] = last;
    }

    /** Slot {@code slot} of (layer, head) changed (stored, written, freed): its page's bounds are computed again. */
    void slotChanged(int layer, int head, int slot) {
        if (pageCount == null) return;
        int[] count = pageCount[layer][head];
        if (count != null) count[slot / pageSize] = -1;
    }

    /** Every page's bounds are computed again (a clear, a copy of another cache's contents). */
    void forgetPageBounds() {
        if (pageCount == null) return;
        for (int[][] l : pageCount) for (int[] h : l) if (h != null) java.util.Arrays.fill(h, -1);
    }

    @Override
    protected void onFree(int layer, int head, int slot) {
        slotChanged(layer, head, slot);
    }

    @Override
    protected void onClear() {
        forgetPageBounds();
    }
}
