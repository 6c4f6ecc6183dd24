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
     * that computed them are kept; an entry serves any query at or after its largest position. The bounds are kept in
     * the layout the page sums read: blocks of {@link #pageBlock} pages, dimension-major, a page per lane
     * ([block][dim][lane]), so a block whose pages are all kept is scored straight from here.
     */
    private int pageSize, pageBlock;
    private float[][][] pageMax, pageMin;   // [layer][head][blocks * hd * pageBlock], allocated on first use
    private int[][][] pageCount;            // [layer][head][page]: slots covered, -1 = not known
    private int[][][] pageLast;             // [layer][head][page]: largest position covered

    /** The memo for pages of {@code size} slots in blocks of {@code block} (either changing starts it over). */
    void pageMemo(int size, int block) {
        if (pageSize == size && pageBlock == block && pageCount != null) return;
        pageSize = size;
        pageBlock = block;
        pageMax = new float[layers][kvHeads][];
        pageMin = new float[layers][kvHeads][];
        pageCount = new int[layers][kvHeads][];
        pageLast = new int[layers][kvHeads][];
    }

    /** Whether page p of (layer, head) has bounds for a query at {@code queryPosition}. */
    boolean pageKept(int layer, int head, int p, int queryPosition) {
        int[] count = pageCount[layer][head];
        return count != null && count[p] >= 0 && pageLast[layer][head][p] <= queryPosition;
    }

    /** Copies kept page p's bounds (see {@link #pageKept}) into max/min [hd]. */
    void pageBounds(int layer, int head, int p, float[] max, float[] min) {
        float[] mx = pageMax[layer][head], mn = pageMin[layer][head];
        int base = pageBase(p), b = pageBlock;
        for (int i = 0; i < headDim; i++) {
            max[i] = mx[base + i * b];
            min[i] = mn[base + i * b];
        }
    }

    /** Index of page p's first bound in the kept arrays (dimension i at + i * pageBlock). */
    int pageBase(int p) {
        return (p / pageBlock) * headDim * pageBlock + p % pageBlock;
    }

    /** The kept maxima / minima of (layer, head) (null before the first page is kept). */
    float[] keptMax(int layer, int head) {
        return pageMax[layer][head];
    }

    float[] keptMin(int layer, int head) {
        return pageMin[layer][head];
    }

    /** The number of slots behind kept page p's bounds. */
    int pageCount(int layer, int head, int p) {
        return pageCount[layer][head][p];
    }

    /** Keeps page p's bounds over {@code count} slots whose largest position is {@code last}. */
    void keepPage(int layer, int head, int p, float[] max, float[] min, int count, int last) {
        int hd = headDim, b = pageBlock;
        if (pageCount[layer][head] == null) {
            int pages = (capacity + pageSize - 1) / pageSize, blocks = (pages + b - 1) / b;
            pageMax[layer][head] = new float[blocks * hd * b];
            pageMin[layer][head] = new float[blocks * hd * b];
            pageCount[layer][head] = new int[pages];
            pageLast[layer][head] = new int[pages];
            java.util.Arrays.fill(pageCount[layer][head], -1);
        }
        float[] mx = pageMax[layer][head], mn = pageMin[layer][head];
        int base = pageBase(p);
        for (int i = 0; i < hd; i++) {
            mx[base + i * b] = max[i];
            mn[base + i * b] = min[i];
        }
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
    protected void onAllocate(int layer, int head, int slot) {
        slotChanged(layer, head, slot); // the page covers one more slot (its key follows)
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
