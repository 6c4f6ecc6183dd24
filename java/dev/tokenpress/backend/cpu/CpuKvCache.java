package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.KvType;
import dev.tokenpress.kv.KvCache;

/**
 * KV storage on the heap: keys/values [layer][kvHead][slot * hd], each in f32 ({@link #keys} / {@link #values}) or
 * as bf16 bits ({@link #keys16} / {@link #values16}; the other array is then null), as {@code -ctk} / {@code -ctv}
 * chose.
 */
final class CpuKvCache extends KvCache {
    final float[][][] keys;
    final float[][][] values;
    final short[][][] keys16;
    final short[][][] values16;
    private final KvType keyType, valueType;

    CpuKvCache(int layers, int kvHeads, int headDim, int capacity) {
        this(layers, kvHeads, headDim, capacity, KvType.F32, KvType.F32);
    }

    CpuKvCache(int layers, int kvHeads, int headDim, int capacity, KvType keyType, KvType valueType) {
        super(layers, kvHeads, headDim, capacity);
        long perHead = (long) capacity * headDim;
        if (perHead > Integer.MAX_VALUE - 8) throw new IllegalArgumentException("KV capacity too large for the CPU backend: " + capacity);
        this.keyType = keyType;
        this.valueType = valueType;
        keys = keyType == KvType.F32 ? new float[layers][kvHeads][(int) perHead] : null;
        keys16 = keyType == KvType.BF16 ? new short[layers][kvHeads][(int) perHead] : null;
        values = valueType == KvType.F32 ? new float[layers][kvHeads][(int) perHead] : null;
        values16 = valueType == KvType.BF16 ? new short[layers][kvHeads][(int) perHead] : null;
    }

    KvType keyType() {
        return keyType;
    }

    KvType valueType() {
        return valueType;
    }

    @Override
    public long bytes() {
        // keys + values at their element sizes, plus the int32 position of every slot
        long elements = (long) layers * kvHeads * capacity * headDim;
        return elements * (keyType.bytes() + valueType.bytes()) + (long) layers * kvHeads * capacity * 4;
    }

    /** Key row {@code slot} of (layer, head) as floats into out[off, +hd). */
    void readKey(Kernels k, int layer, int head, int slot, float[] out, int off) {
        int hd = headDim;
        if (keys != null) System.arraycopy(keys[layer][head], slot * hd, out, off, hd);
        else k.widenBf16(keys16[layer][head], slot * hd, out, off, hd);
    }

    /** Value row {@code slot} of (layer, head) as floats into out[off, +hd). */
    void readValue(Kernels k, int layer, int head, int slot, float[] out, int off) {
        int hd = headDim;
        if (values != null) System.arraycopy(values[layer][head], slot * hd, out, off, hd);
        else k.widenBf16(values16[layer][head], slot * hd, out, off, hd);
    }

    /** q[qOff, +hd) · key row {@code slot} of (layer, head): {@link Kernels#dot} over the stored (f32 or bf16) row. */
    float keyDot(Kernels k, float[] q, int qOff, int layer, int head, int slot) {
        return keys != null ? k.dot(q, qOff, keys[layer][head], slot * headDim, headDim)
                : k.dot(q, qOff, keys16[layer][head], slot * headDim, headDim);
    }

    /** Four q rows (q[qOff + i·qStride, +hd)) · key row {@code slot} of (layer, head) into out[0, 4): {@link Kernels#dot4}. */
    void keyDot4(Kernels k, float[] q, int qOff, int qStride, int layer, int head, int slot, float[] out) {
        if (keys != null) k.dot4(q, qOff, qStride, keys[layer][head], slot * headDim, headDim, out);
        else k.dot4(q, qOff, qStride, keys16[layer][head], slot * headDim, headDim, out);
    }

    /** The keys (and values, unless valueOut is null) of slots [from, to) of (layer, head) as floats from index 0. */
    void readRange(Kernels k, int layer, int head, int from, int to, float[] keyOut, float[] valueOut) {
        int hd = headDim, n = (to - from) * hd;
        if (keys != null) System.arraycopy(keys[layer][head], from * hd, keyOut, 0, n);
        else k.widenBf16(keys16[layer][head], from * hd, keyOut, 0, n);
        if (valueOut == null) return;
        if (values != null) System.arraycopy(values[layer][head], from * hd, valueOut, 0, n);
        else k.widenBf16(values16[layer][head], from * hd, valueOut, 0, n);
    }

    /** The first n elements of (layer, head)'s keys and values as floats. */
    void readHead(Kernels k, int layer, int head, int n, float[] keyOut, float[] valueOut) {
        if (keys != null) System.arraycopy(keys[layer][head], 0, keyOut, 0, n);
        else k.widenBf16(keys16[layer][head], 0, keyOut, 0, n);
        if (values != null) System.arraycopy(values[layer][head], 0, valueOut, 0, n);
        else k.widenBf16(values16[layer][head], 0, valueOut, 0, n);
    }

    /** Stores key and value rows src[kOff, +hd) / src[vOff, +hd) into {@code slot} of (layer, head), rounded to the storage type. */
    void write(int layer, int head, int slot, float[] k, int kOff, float[] v, int vOff) {
        int hd = headDim;
        if (keys != null) System.arraycopy(k, kOff, keys[layer][head], slot * hd, hd);
        else Kernels.roundBf16(k, kOff, keys16[layer][head], slot * hd, hd);
        if (values != null) System.arraycopy(v, vOff, values[layer][head], slot * hd, hd);
        else Kernels.roundBf16(v, vOff, values16[layer][head], slot * hd, hd);
        slotChanged(layer, head, slot);
    }

    /** The first n elements of (layer, head)'s keys and values of {@code src} (a cache of the same storage types) into this one. */
    void copyRows(CpuKvCache src, int layer, int head, int n) {
        if (keys != null) System.arraycopy(src.keys[layer][head], 0, keys[layer][head], 0, n);
        else System.arraycopy(src.keys16[layer][head], 0, keys16[layer][head], 0, n);
        if (values != null) System.arraycopy(src.values[layer][head], 0, values[layer][head], 0, n);
        else System.arraycopy(src.values16[layer][head], 0, values16[layer][head], 0, n);
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
