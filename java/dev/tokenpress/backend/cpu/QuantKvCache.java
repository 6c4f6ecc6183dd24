package dev.tokenpress.backend.cpu;

import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.quant.KvQuantSpec;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;

/**
 * A quantized KV cache on the heap (KIVI, ZipCache, MiKV, GEAR; see docs/KV_QUANT.md). The slot model of
 * {@link KvCache} is unchanged: a slot holds one token. Each slot maps to a location ({@code loc}):
 * <ul>
 *   <li>an entry of the f32 <b>residual window</b> (the most recent tokens, at most R + G − 1 of them), or</li>
 *   <li>a lane of a {@link QuantBlock}: G tokens encoded together when they left the residual window
 *       (keys per channel over the block's tokens, values per token over channel groups).</li>
 * </ul>
 * Quantize-on-append: when the window holds R + G tokens, its G oldest (by position) are encoded into a new block.
 * Freeing a slot (eviction) frees its residual entry at once, or marks its block lane dead; a block is dropped when
 * its last lane dies. When dead lanes add up to two blocks' worth, the partially dead blocks are compacted: their
 * live tokens are decoded and re-encoded, in position order, into full blocks (one extra rounding for those
 * tokens; the error bound then holds against the first reconstruction). A reused slot always starts in the window.
 */
public final class QuantKvCache extends PackedKvCache {
    /** Appends also move tokens from the full-precision window into packed blocks: not undone by freeing slots. */
    @Override
    public boolean appendsReversible() {
        return false;
    }

    private static final int NONE = Integer.MIN_VALUE;

    final KvQuantSpec spec;
    final int group, residual, resCap;
    /** [layer][head][slot]: NONE, block*G + lane (>= 0), or -(residual index + 1). */
    private final int[][][] loc;
    /** Residual window, f32 [layer][head][resCap * hd], and the slot of each entry. */
    private final float[][][] rKeys, rValues;
    private final int[][][] rSlot;
    private final int[][] rCount;
    private final List<List<QuantBlock>> blocks; // [layer * kvHeads + head] -> blocks (null = free id)
    private final int[][] quantLive, totalLanes;
    /** ZipCache / MiKV: accumulated attention probability and number of queries that saw each slot. */
    private final float[][][] attnSum;
    private final int[][][] attnCount;

    public QuantKvCache(int layers, int kvHeads, int headDim, int capacity, KvQuantSpec spec) {
        super(layers, kvHeads, headDim, capacity);
        if (spec.isNone()) throw new IllegalArgumentException("QuantKvCache needs a quantization method, got none");
        spec.check(headDim);
        this.spec = spec;
        this.group = spec.group();
        this.residual = spec.residual();
        this.resCap = (int) Math.min((long) residual + group, capacity);
        loc = new int[layers][kvHeads][capacity];
        for (int[][] l : loc) for (int[] h : l) Arrays.fill(h, NONE);
        rKeys = new float[layers][kvHeads][resCap * headDim];
        rValues = new float[layers][kvHeads][resCap * headDim];
        rSlot = new int[layers][kvHeads][resCap];
        rCount = new int[layers][kvHeads];
        blocks = new ArrayList<>();
        for (int i = 0; i < layers * kvHeads; i++) blocks.add(new ArrayList<>());
        quantLive = new int[layers][kvHeads];
        totalLanes = new int[layers][kvHeads];
        boolean track = spec.tracksAttention();
        attnSum = track ? new float[layers][kvHeads][capacity] : null;
        attnCount = track ? new int[layers][kvHeads][capacity] : null;
    }

    public KvQuantSpec spec() { return spec; }

    /** Tokens of (layer, head) held in the f32 residual window. */
    public int residentTokens(int layer, int head) { return rCount[layer][head]; }

    /** Live quantized tokens of (layer, head). */
    public int quantizedTokens(int layer, int head) { return quantLive[layer][head]; }

    /** Blocks currently allocated for (layer, head). */
    public int blockCount(int layer, int head) {
        int c = 0;
        for (QuantBlock b : blocks(layer, head)) if (b != null) c++;
        return c;
    }

    /** Bit width of the slot's token: 32 while it sits in the residual window. */
    public int bitsOf(int layer, int head, int slot) {
        int l = loc[layer][head][slot];
        if (l == NONE) return 0;
        if (l < 0) return 32;
        return blocks(layer, head).get(l / group).bits(l % group);
    }

    /**
     * Bytes allocated: the slot positions and locations (int32 each), the f32 residual window with its slot
     * index, the attention statistics of ZipCache/MiKV (f32 + int32 per slot), and the payload of every block
     * (packed codes, f16 scales/zeros, GEAR factors and outliers). JVM object headers are not counted.
     */
    @Override
    public long bytes() {
        long lh = (long) layers * kvHeads;
        long b = lh * capacity * 4 * 2;
        b += lh * resCap * ((long) headDim * 4 * 2 + 4);
        if (attnSum != null) b += lh * capacity * 8;
        for (List<QuantBlock> list : blocks) for (QuantBlock blk : list) if (blk != null) b += blk.bytes();
        return b;
    }

    /** {@link #bytes()} with the per-slot bookkeeping of {@code slots} slots and a window of min(R + G, slots). */
    @Override
    public long bytesWithCapacity(int slots) {
        long lh = (long) layers * kvHeads;
        long perSlot = 8 + (attnSum != null ? 8 : 0);
        long win = Math.min((long) residual + group, Math.max(1, slots));
        return bytes() - lh * ((long) capacity - slots) * perSlot - lh * (resCap - win) * ((long) headDim * 4 * 2 + 4);
    }

    private List<QuantBlock> blocks(int layer, int head) { return blocks.get(layer * kvHeads + head); }

    // ---- writing ---------------------------------------------------------------------------------------------

    /** Stores a token's key and value (already rotated) into a slot: it enters the residual window. */
    @Override
    void store(int layer, int head, int slot, float[] k, int kOff, float[] v, int vOff) {
        release(layer, head, slot);
        int i = rCount[layer][head]++;
        System.arraycopy(k, kOff, rKeys[layer][head], i * headDim, headDim);
        System.arraycopy(v, vOff, rValues[layer][head], i * headDim, headDim);
        rSlot[layer][head][i] = slot;
        loc[layer][head][slot] = -(i + 1);
        if (attnSum != null) {
            attnSum[layer][head][slot] = 0f;
            attnCount[layer][head][slot] = 0;
        }
        if (rCount[layer][head] >= residual + group && rCount[layer][head] >= group) flush(layer, head);
    }

    @Override
    protected void onFree(int layer, int head, int slot) {
        release(layer, head, slot);
    }

    @Override
    protected void onClear() {
        for (int[][] l : loc) for (int[] h : l) Arrays.fill(h, NONE);
        for (int[] r : rCount) Arrays.fill(r, 0);
        for (int[] r : quantLive) Arrays.fill(r, 0);
        for (int[] r : totalLanes) Arrays.fill(r, 0);
        for (List<QuantBlock> l : blocks) l.clear();
    }

    private void release(int layer, int head, int slot) {
        int l = loc[layer][head][slot];
        if (l == NONE) return;
        loc[layer][head][slot] = NONE;
        if (l < 0) {
            int i = -l - 1, last = --rCount[layer][head];
            if (i != last) {
                System.arraycopy(rKeys[layer][head], last * headDim, rKeys[layer][head], i * headDim, headDim);
                System.arraycopy(rValues[layer][head], last * headDim, rValues[layer][head], i * headDim, headDim);
                int moved = rSlot[layer][head][last];
                rSlot[layer][head][i] = moved;
                loc[layer][head][moved] = -(i + 1);
            }
            return;
        }
        List<QuantBlock> list = blocks(layer, head);
        QuantBlock b = list.get(l / group);
        quantLive[layer][head]--;
        if (--b.alive == 0) {
            list.set(l / group, null);
            totalLanes[layer][head] -= b.n;
        }
    }

    /** Encodes the G oldest residual tokens into a block. */
    private void flush(int layer, int head) {
        int n = rCount[layer][head], hd = headDim;
        int[] pos = positions[layer][head], rs = rSlot[layer][head];
        Integer[] order = new Integer[n];
        for (int i = 0; i < n; i++) order[i] = i;
        Arrays.sort(order, Comparator.comparingInt(i -> pos[rs[i]]));
        int[] slots = new int[group];
        float[] k = new float[group * hd], v = new float[group * hd];
        boolean[] taken = new boolean[n];
        for (int t = 0; t < group; t++) {
            int i = order[t];
            taken[i] = true;
            slots[t] = rs[i];
            System.arraycopy(rKeys[layer][head], i * hd, k, t * hd, hd);
            System.arraycopy(rValues[layer][head], i * hd, v, t * hd, hd);
        }
        // compact the window, keeping the remaining entries in their order
        int w = 0;
        for (int i = 0; i < n; i++) {
            if (taken[i]) continue;
            if (w != i) {
                System.arraycopy(rKeys[layer][head], i * hd, rKeys[layer][head], w * hd, hd);
                System.arraycopy(rValues[layer][head], i * hd, rValues[layer][head], w * hd, hd);
                rs[w] = rs[i];
            }
            loc[layer][head][rs[w]] = -(w + 1);
            w++;
        }
        rCount[layer][head] = w;
        place(layer, head, slots, k, v, group, initialBits(layer, head, slots));
        if (spec.method() == KvQuantSpec.Method.MIKV) enforceBudget(layer, head);
        if (totalLanes[layer][head] - quantLive[layer][head] >= 2 * group) compact(layer, head);
    }

    /** Encodes n tokens into one block and points their slots at it. */
    private void place(int layer, int head, int[] slots, float[] k, float[] v, int n, byte[] bits) {
        QuantBlock b = QuantBlock.encode(spec, headDim, k, v, n, bits);
        List<QuantBlock> list = blocks(layer, head);
        int id = list.indexOf(null);
        if (id < 0) {
            id = list.size();
            list.add(b);
        } else list.set(id, b);
        for (int t = 0; t < n; t++) loc[layer][head][slots[t]] = id * group + t;
        quantLive[layer][head] += n;
        totalLanes[layer][head] += n;
    }

    /**
     * Bits of each token of a new block. ZipCache: the round(ratio·G) least salient tokens (normalized
     * accumulated attention: probability mass received / number of queries that saw the token, measured while it
     * sat in the window) get lo bits. MiKV: all start at hi; {@link #enforceBudget} demotes. Others: spec bits.
     */
    private byte[] initialBits(int layer, int head, int[] slots) {
        int n = slots.length;
        byte[] bits = new byte[n];
        Arrays.fill(bits, (byte) spec.bits());
        if (spec.method() != KvQuantSpec.Method.ZIPCACHE) return bits;
        float[] sal = new float[n];
        for (int t = 0; t < n; t++) sal[t] = saliency(layer, head, slots[t]);
        Integer[] order = new Integer[n];
        for (int t = 0; t < n; t++) order[t] = t;
        int[] pos = positions[layer][head];
        Arrays.sort(order, (a, b) -> sal[a] != sal[b] ? Float.compare(sal[a], sal[b]) : Integer.compare(pos[slots[a]], pos[slots[b]]));
        int low = (int) Math.round(spec.ratio() * n);
        for (int i = 0; i < low; i++) bits[order[i]] = (byte) spec.loBits();
        return bits;
    }

    /** ZipCache's normalized saliency of a slot. */
    float saliency(int layer, int head, int slot) {
        int c = attnCount[layer][head][slot];
        return c == 0 ? 0f : attnSum[layer][head][slot] / c;
    }

    /**
     * MiKV: at most budget − (largest window, R + G − 1) quantized tokens stay at hi bits; the ones with the least accumulated
     * attention (H2O's heavy-hitter score) are re-encoded at lo bits instead of being evicted. Never promotes.
     */
    private void enforceBudget(int layer, int head) {
        double bgt = spec.budget();
        int budget = bgt < 1 ? (int) Math.ceil(bgt * occupied(layer, head)) : (int) bgt;
        // the window grows back to R + G − 1 tokens before the next flush: reserve that much of the budget
        int allowed = Math.max(0, budget - Math.min(resCap, residual + group - 1));
        List<QuantBlock> list = blocks(layer, head);
        List<Integer> hi = new ArrayList<>();
        int hw = highWater(layer, head);
        for (int s = 0; s < hw; s++) {
            int l = loc[layer][head][s];
            if (l >= 0 && list.get(l / group).bits(l % group) == spec.bits() && spec.bits() != spec.loBits()) hi.add(s);
        }
        if (hi.size() <= allowed) return;
        float[] imp = attnSum[layer][head];
        int[] pos = positions[layer][head];
        hi.sort((a, b) -> imp[a] != imp[b] ? Float.compare(imp[a], imp[b]) : Integer.compare(pos[a], pos[b]));
        for (int i = 0; i < hi.size() - allowed; i++) {
            int l = loc[layer][head][hi.get(i)];
            list.get(l / group).requantizeLane(l % group, spec.loBits());
        }
    }

    /** Re-encodes the live tokens of partially dead blocks into full blocks (position order). */
    private void compact(int layer, int head) {
        List<QuantBlock> list = blocks(layer, head);
        int hw = highWater(layer, head), hd = headDim;
        List<Integer> moving = new ArrayList<>();
        for (int s = 0; s < hw; s++) {
            int l = loc[layer][head][s];
            if (l >= 0) {
                QuantBlock b = list.get(l / group);
                if (b.alive < b.n) moving.add(s);
            }
        }
        int[] pos = positions[layer][head];
        moving.sort(Comparator.comparingInt(s -> pos[s]));
        int m = moving.size();
        float[] k = new float[m * hd], v = new float[m * hd];
        byte[] bits = new byte[m];
        for (int i = 0; i < m; i++) {
            int l = loc[layer][head][moving.get(i)];
            QuantBlock b = list.get(l / group);
            b.key(l % group, k, i * hd);
            b.value(l % group, v, i * hd);
            bits[i] = (byte) b.bits(l % group);
        }
        for (int i = 0; i < list.size(); i++) {
            QuantBlock b = list.get(i);
            if (b != null && b.alive < b.n) {
                totalLanes[layer][head] -= b.n;
                quantLive[layer][head] -= b.alive;
                list.set(i, null);
            }
        }
        for (int from = 0; from < m; from += group) {
            int n = Math.min(group, m - from);
            int[] slots = new int[n];
            for (int t = 0; t < n; t++) slots[t] = moving.get(from + t);
            place(layer, head, slots, Arrays.copyOfRange(k, from * hd, (from + n) * hd),
                    Arrays.copyOfRange(v, from * hd, (from + n) * hd), n, Arrays.copyOfRange(bits, from, from + n));
        }
    }

    // ---- reading (fused) -------------------------------------------------------------------------------------

    /** q · k̂ of a slot (q[qOff..qOff+hd)), dequantizing inside the dot product. */
    float keyDot(int layer, int head, int slot, float[] q, int qOff, Kernels kern) {
        return keyDot(layer, head, slot, q, qOff, kern, null);
    }

    /** As above, reusing a query's per-block key terms across the block's tokens ({@code memo} is per thread). */
    float keyDot(int layer, int head, int slot, float[] q, int qOff, Kernels kern, QuantBlock.KeyQuery memo) {
        int l = loc[layer][head][slot];
        if (l < 0) return kern.dot(q, qOff, rKeys[layer][head], (-l - 1) * headDim, headDim);
        return blocks(layer, head).get(l / group).keyDot(l % group, q, qOff, memo);
    }

    /** out += p · v̂ of a slot, dequantizing inside the accumulation. */
    void valueAxpy(int layer, int head, int slot, float p, float[] out, int oOff, Kernels kern) {
        int l = loc[layer][head][slot];
        if (l < 0) kern.axpy(p, rValues[layer][head], (-l - 1) * headDim, out, oOff, headDim);
        else blocks(layer, head).get(l / group).valueAxpy(l % group, p, out, oOff);
    }

    // ---- raw views for the block-wise attention of QuantOps (read only) ------------------------------------------

    /** Slot locations of (layer, head): NONE, block·G + lane (>= 0), or −(residual index + 1). */
    int[] locations(int layer, int head) { return loc[layer][head]; }

    /** Blocks of (layer, head) by id; null entries are free ids. */
    List<QuantBlock> blockList(int layer, int head) { return blocks(layer, head); }

    float[] residualKeys(int layer, int head) { return rKeys[layer][head]; }

    float[] residualValues(int layer, int head) { return rValues[layer][head]; }

    /** Records that a query gave probability p to a slot (ZipCache saliency, MiKV importance). */
    void observe(int layer, int head, int slot, float p) {
        attnSum[layer][head][slot] += p;
        attnCount[layer][head][slot]++;
    }

    boolean tracks() { return attnSum != null; }

    /** The reconstructed key and value of a slot (for policies that read the cache, and tests). */
    @Override
    void read(int layer, int head, int slot, float[] key, float[] value) {
        int l = loc[layer][head][slot];
        if (l == NONE) throw new IllegalArgumentException("slot " + slot + " of layer " + layer + " head " + head + " is free");
        if (l < 0) {
            System.arraycopy(rKeys[layer][head], (-l - 1) * headDim, key, 0, headDim);
            System.arraycopy(rValues[layer][head], (-l - 1) * headDim, value, 0, headDim);
        } else {
            QuantBlock b = blocks(layer, head).get(l / group);
            b.key(l % group, key, 0);
            b.value(l % group, value, 0);
        }
    }

    @Override
    void attention(Parallel par, Kernels k, CpuTensor o, CpuTensor q, int layer, int[] queryPositions, int n,
                   dev.tokenpress.kv.SlotSelection select, dev.tokenpress.kv.AttentionStats stats) {
        QuantOps.attention(par, k, o, q, this, layer, queryPositions, n, select, stats);
    }

    @Override
    void queryKeyScores(Parallel par, Kernels k, float[][] out, CpuTensor q, int row, int queryPosition, int layer) {
        QuantOps.queryKeyScores(par, k, out, q, row, queryPosition, this, layer);
    }
}
