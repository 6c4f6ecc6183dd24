package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.io.Half;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.kv.quant.Quant;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * KIVI-quantized KV cache (int8 / int4 / int2) in device memory, the CUDA counterpart of the CPU's
 * {@code QuantKvCache} (see docs/KV_QUANT.md and cuda/kv_quant.cu). Same slot model: a slot holds one token and
 * maps to a location, either an entry of the f32 residual window or a lane of a block of G tokens encoded when
 * the window reaches R + G tokens (its G oldest by position: keys per channel over the block's tokens, values per
 * token over channel groups, f16 zero/scale, packed codes).
 *
 * <p>The host keeps the bookkeeping (which slot sits in which window entry / block lane, block liveness) and
 * turns each {@code storeKv} into a plan: blocks to encode (lane sources: a row of the step's k/v or a window
 * entry's current contents) and window entries to write; the device runs the encode kernel first, then the
 * window writes, then scatters the new locations and positions. A freed block lane is marked dead; when dead lanes
 * add up to two blocks' worth the partially dead blocks are compacted as on the CPU (their live tokens decoded in
 * position order with the CPU's formulas and re-encoded into full blocks, the last one shorter): the plan decodes
 * them into scratch rows before any encode, then encodes the new blocks from there (passed on an H100). Only
 * with the policy ops over this cache (on unless {@code -Dtokenpress.cuda.quantPolicyOps=false}, read when the cache is made),
 * which the policies that evict scattered tokens need anyway; without it the pool grows instead.
 * Differences from the CPU cache, by design:
 * <ul>
 *   <li>window entries are not moved on free (a free list instead of swap-remove), so ties between equal
 *       positions may order a block's lanes differently (positions are distinct in every normal run);</li>
 *   <li>the block pool starts with ceil(C/G) + 2 blocks per (layer, KV head) (with compaction the CPU cache never
 *       needs more); should partially dead blocks leave no free one it grows by a quarter (device copy,
 *       stream-ordered), up to 2·ceil(C/G) + 2 blocks; beyond that it throws {@link UnsupportedOpException};</li>
 *   <li>{@link #bytes()} is the device memory allocated at the time (window + block pool + positions +
 *       locations + compaction scratch), not the live payload the CPU cache reports.</li>
 * </ul>
 * Decode steps over this cache are captured into CUDA graphs like those over the bf16 cache: the store plan is
 * made when the slots are allocated, outside the captured body, so a body that runs twice applies the host
 * bookkeeping once. The ops KV policies need beyond attention (statistics, queryKeyScores, questPageScores,
 * selectTopSlots, readKv / writeKv) work over the packed blocks (off with {@code -Dtokenpress.cuda.quantPolicyOps=false}).
 */
public final class CudaQuantKvCache extends KvCache {
    /** Appends also move tokens from the full-precision window into packed blocks: not undone by freeing slots. */
    @Override
    public boolean appendsReversible() {
        return false;
    }

    private static final int NONE = Integer.MIN_VALUE;

    private final CudaBackend backend;
    final KvQuantSpec spec;
    final int group, residual, resCap, bits, blockLimit;
    /** Blocks per (layer, KV head) in the pool now (its row stride); grows on demand up to blockLimit. */
    int maxBlocks;
    final long blockBytes;
    /** Device memory: window keys/values f32, block pool, positions and locations int32. */
    final long winK, winV, pos, loc;
    long pool, poolBytes;
    final long winBytes, slotBytes;

    private final int[][][] hLoc;       // [layer][head][slot]
    private final int[][][] winSlot;    // [layer][head][entry] slot or -1
    private final long[][][] winSeq;    // insertion order of each entry (tie-break of equal positions)
    private final int[][][] winFree;    // free-entry stacks
    private final int[][] winFreeCount, winCount;
    private int[][][] blockAlive;       // [layer][head][block] live lanes (0 = free)
    private int[][][] blockLanes;       // [layer][head][block] lanes of the block (G, fewer after a compaction; 0 = free)
    private final int[][] totalLanes, liveLanes;  // [layer][head] sums of blockLanes and blockAlive
    /** Whether partially dead blocks are compacted (with the policy ops over this cache, {@code quantPolicyOps}). */
    private final boolean compaction;
    /** Device scratch for compactions: decoded keys then values, f32 [scratchRows][hd] each. */
    long scratch;
    private int scratchRows;
    private long seq;
    private int[] pendingFree = new int[64];
    private int pendingFreeCount;
    private boolean closed;
    // store plans made when the last KV head of a layer is allocated (outside any graph capture or dry run, so a
    // decode step that re-runs its body applies the host bookkeeping once): [layer] plan, its slots and count
    private final Plan[] prepared;
    private final int[][][] preparedSlots;
    private final int[] preparedN;
    private final int[][][] allocating;  // [layer][head] slots of the append under way
    private final int[] allocatingHeads, allocatingN;

    CudaQuantKvCache(CudaBackend backend, int layers, int kvHeads, int headDim, int capacity, KvQuantSpec spec) {
        super(layers, kvHeads, headDim, capacity);
        if (spec.method() != KvQuantSpec.Method.KIVI)
            throw new UnsupportedOpException("the cuda backend quantizes the KV cache with KIVI only (int8, int4, int2), not --kv-quant "
                    + spec.spec() + ": use --device cpu");
        spec.check(headDim);
        this.backend = backend;
        this.spec = spec;
        this.group = spec.group();
        this.residual = spec.residual();
        this.bits = spec.bits();
        this.compaction = CudaBackend.quantPolicyOps();
        this.resCap = (int) Math.min((long) residual + group, capacity);
        int full = (capacity + group - 1) / group;
        this.maxBlocks = full + 2;
        this.blockLimit = 2 * full + 2;
        this.blockBytes = TpNative.tp_kvq_block_bytes(headDim, group, bits);
        if (blockBytes <= 0) throw new IllegalArgumentException("--kv-quant " + spec.spec() + ": no block layout for head dim " + headDim);
        long lh = (long) layers * kvHeads;
        this.winBytes = lh * resCap * headDim * 4;
        this.poolBytes = lh * maxBlocks * blockBytes;
        this.slotBytes = lh * capacity * 4;
        long[] p = new long[5];
        try {
            p[0] = backend.malloc(winBytes, "quantized KV cache window keys (" + layers + " layers x " + kvHeads + " KV heads x " + resCap + " tokens)");
            p[1] = backend.malloc(winBytes, "quantized KV cache window values");
            p[2] = backend.malloc(poolBytes, "quantized KV cache blocks (" + maxBlocks + " blocks of " + blockBytes + " bytes per KV head)");
            p[3] = backend.malloc(slotBytes, "quantized KV cache positions");
            p[4] = backend.malloc(slotBytes, "quantized KV cache locations");
        } catch (RuntimeException e) {
            for (long a : p) backend.free(a);
            throw e;
        }
        winK = p[0];
        winV = p[1];
        pool = p[2];
        pos = p[3];
        loc = p[4];
        backend.memsetNow(winK, 0, winBytes);
        backend.memsetNow(winV, 0, winBytes);
        backend.memsetNow(pool, 0, poolBytes);
        backend.memsetNow(pos, 0xFF, slotBytes);
        backend.memsetNow(loc, 0xFF, slotBytes);
        hLoc = new int[layers][kvHeads][capacity];
        winSlot = new int[layers][kvHeads][resCap];
        winSeq = new long[layers][kvHeads][resCap];
        winFree = new int[layers][kvHeads][resCap];
        winFreeCount = new int[layers][kvHeads];
        winCount = new int[layers][kvHeads];
        blockAlive = new int[layers][kvHeads][maxBlocks];
        blockLanes = new int[layers][kvHeads][maxBlocks];
        totalLanes = new int[layers][kvHeads];
        liveLanes = new int[layers][kvHeads];
        prepared = new Plan[layers];
        preparedSlots = new int[layers][][];
        preparedN = new int[layers];
        allocating = new int[layers][kvHeads][];
        allocatingHeads = new int[layers];
        allocatingN = new int[layers];
        resetHost();
    }

    /**
     * Allocates as {@link KvCache#allocate}; once every KV head of the layer has its slots for this append, the
     * store plan of the layer is made (the host bookkeeping applied, pool growth included) and kept for
     * {@link #preparedPlan}.
     */
    @Override
    public int[] allocate(int layer, int head, int[] tokenPositions, int n) {
        int[] out = super.allocate(layer, head, tokenPositions, n);
        if (allocating[layer][head] != null || (allocatingHeads[layer] > 0 && allocatingN[layer] != n)) {
            java.util.Arrays.fill(allocating[layer], null);  // a head allocated twice: no plan ahead for this append
            allocatingHeads[layer] = 0;
        }
        allocating[layer][head] = out;
        allocatingN[layer] = n;
        if (++allocatingHeads[layer] == kvHeads) {
            int[][] sl = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) sl[g] = allocating[layer][g];
            java.util.Arrays.fill(allocating[layer], null);
            allocatingHeads[layer] = 0;
            prepared[layer] = plan(layer, sl, n);
            preparedSlots[layer] = sl;
            preparedN[layer] = n;
        }
        return out;
    }

    /**
     * Forgets the append under way in {@code layer} (its slots allocated for some KV heads, no plan made yet): a
     * single-head store ({@link CudaBackend#writeKv}) between allocation and storeKv must not be mistaken for part
     * of it; the next append plans from scratch.
     */
    void forgetAppend(int layer) {
        java.util.Arrays.fill(allocating[layer], null);
        allocatingHeads[layer] = 0;
        prepared[layer] = null;
    }

    /** The plan made ahead for storeKv(layer, slots, n) when these are the slots of the last append, else null. */
    Plan preparedPlan(int layer, int[][] slots, int n) {
        Plan p = prepared[layer];
        if (p == null || preparedN[layer] != n) return null;
        int[][] ps = preparedSlots[layer];
        for (int g = 0; g < kvHeads; g++)
            for (int i = 0; i < n; i++)
                if (slots[g][i] != ps[g][i]) return null;
        return p;
    }

    private void resetHost() {
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < kvHeads; h++) {
                Arrays.fill(hLoc[l][h], NONE);
                Arrays.fill(winSlot[l][h], -1);
                for (int e = 0; e < resCap; e++) winFree[l][h][e] = resCap - 1 - e; // pops 0, 1, 2, ...
                winFreeCount[l][h] = resCap;
                winCount[l][h] = 0;
                Arrays.fill(blockAlive[l][h], 0);
                Arrays.fill(blockLanes[l][h], 0);
                totalLanes[l][h] = 0;
                liveLanes[l][h] = 0;
            }
    }

    public KvQuantSpec spec() { return spec; }

    /**
     * Device bytes allocated for this cache: window keys and values (f32, L·Hkv·min(R + G, C)·hd each), the block
     * pool (L·Hkv·maxBlocks·{@code tp_kvq_block_bytes}), positions + locations (int32 per slot) and, once a
     * compaction has run, its scratch (f32 keys and values of the tokens it moved).
     */
    @Override
    public long bytes() { return 2 * winBytes + poolBytes + 2 * slotBytes + 2L * scratchRows * headDim * 4; }

    /**
     * What a cache of {@code slots} slots per head would allocate: its window and positions/locations, a pool of
     * ceil(slots/G) + 2 blocks per head (or this one's, if it grew past that) and this one's compaction scratch.
     */
    @Override
    public long bytesWithCapacity(int slots) {
        long lh = (long) layers() * kvHeads();
        long win = Math.min((long) residual + group, Math.max(1, slots));
        long blocks = Math.max((slots + group - 1) / group + 2L, maxBlocks > (capacity() + group - 1) / group + 2 ? maxBlocks : 0);
        return 2 * lh * win * headDim() * 4 + lh * blocks * blockBytes + 2 * lh * slots * 4L + 2L * scratchRows * headDim() * 4;
    }

    /** Tokens of (layer, head) in the f32 window. */
    public int residentTokens(int layer, int head) { return winCount[layer][head]; }

    /** Bit width of the slot's token: 32 in the window, the spec's bits in a block, 0 when free. */
    public int bitsOf(int layer, int head, int slot) {
        int l = hLoc[layer][head][slot];
        return l == NONE ? 0 : l < 0 ? 32 : bits;
    }

    // ---- store plan ----------------------------------------------------------------------------------------------

    /** What one storeKv call does on the device (int arrays to stage). */
    static final class Plan {
        int blocks;        // number of blocks to encode
        int[] encode;      // g[nb] | block[nb] | src[nb][G]
        int writes;        // window entries to write
        int[] write;       // g[m] | entry[m] | row[m]
        int updates;       // loc and pos scatters
        int[] locIdx, locVal, posIdx, posVal;
        int posUpdates;
        int decodes;       // compaction: lanes decoded into the scratch rows (before any encode)
        int[] decode;      // g[m] | loc[m]
        int compacted;     // compaction: blocks encoded from the scratch rows (after the other encodes)
        int[] compact;     // g[nb] | block[nb] | lanes[nb] | row[nb][G]
    }

    /**
     * Applies storeKv(layer, slots, n) to the host bookkeeping (the order of the CPU cache: KV head by KV head,
     * token by token, flushing whenever the window reaches R + G) and returns the device work.
     */
    Plan plan(int layer, int[][] slots, int n) {
        int[] counts = new int[kvHeads];
        Arrays.fill(counts, n);
        return plan(layer, slots, counts);
    }

    /**
     * {@link #plan(int, int[][], int)} for counts[g] tokens of each KV head g (slots[g][i] receives row i of the
     * step's k/v, head g's columns): {@link CudaBackend#writeKv} stores one token of one head this way.
     */
    Plan plan(int layer, int[][] slots, int[] counts) {
        int total = 0;
        for (int g = 0; g < kvHeads; g++) total += counts[g];
        List<int[]> blocks = new ArrayList<>();   // {g, id, src...}
        List<int[]> touched = new ArrayList<>();  // {g, slot}
        List<int[]> decodes = new ArrayList<>();  // {g, loc}: compaction sources, scratch row = list index
        List<int[]> compacted = new ArrayList<>(); // {g, id, lanes, rows...}
        int[][] entryRow = new int[kvHeads][resCap];
        for (int[] r : entryRow) Arrays.fill(r, -1);
        Plan p = new Plan();
        p.posIdx = new int[total];
        p.posVal = new int[total];
        for (int g = 0; g < kvHeads; g++) {
            int[] lc = hLoc[layer][g];
            for (int i = 0; i < counts[g]; i++) {
                int slot = slots[g][i];
                release(layer, g, slot, entryRow[g]);
                if (winFreeCount[layer][g] == 0)
                    throw new IllegalStateException("quantized KV cache: window of layer " + layer + " KV head " + g + " is full");
                int e = winFree[layer][g][--winFreeCount[layer][g]];
                winSlot[layer][g][e] = slot;
                winSeq[layer][g][e] = seq++;
                entryRow[g][e] = i;
                winCount[layer][g]++;
                lc[slot] = -(e + 1);
                touched.add(new int[]{g, slot});
                p.posIdx[p.posUpdates] = flat(layer, g, slot);
                p.posVal[p.posUpdates++] = position(layer, g, slot);
                if (winCount[layer][g] >= residual + group && winCount[layer][g] >= group) {
                    blocks.add(flush(layer, g, entryRow[g], touched));
                    if (compaction && totalLanes[layer][g] - liveLanes[layer][g] >= 2 * group)
                        compact(layer, g, decodes, compacted, touched);
                }
            }
        }
        p.decodes = decodes.size();
        p.decode = columns(decodes, 2, 0);
        p.compacted = compacted.size();
        p.compact = columns(compacted, 3, group);
        if (p.decodes > scratchRows) growScratch(p.decodes);
        p.blocks = blocks.size();
        p.encode = columns(blocks, 2, group);
        List<int[]> writes = new ArrayList<>();
        for (int g = 0; g < kvHeads; g++)
            for (int e = 0; e < resCap; e++)
                if (entryRow[g][e] >= 0) writes.add(new int[]{g, e, entryRow[g][e]});
        p.writes = writes.size();
        p.write = columns(writes, 3, 0);
        p.updates = touched.size();
        p.locIdx = new int[p.updates];
        p.locVal = new int[p.updates];
        for (int u = 0; u < p.updates; u++) {
            int[] t = touched.get(u);
            p.locIdx[u] = flat(layer, t[0], t[1]);
            int v = hLoc[layer][t[0]][t[1]];
            p.locVal[u] = v == NONE ? -1 : v;
        }
        return p;
    }

    /**
     * The device plans' layout of n records {s_0 .. s_{k-1}, t_0 .. t_{m-1}} (k = scalars, m = tail): the columns
     * s_0[n] | .. | s_{k-1}[n], then the tails [n][m].
     */
    private static int[] columns(List<int[]> records, int scalars, int tail) {
        int n = records.size();
        int[] out = new int[n * (scalars + tail)];
        for (int r = 0; r < n; r++) {
            int[] x = records.get(r);
            for (int j = 0; j < scalars; j++) out[j * n + r] = x[j];
            System.arraycopy(x, scalars, out, scalars * n + r * tail, tail);
        }
        return out;
    }

    /** Moves the G oldest window tokens (by position) of (layer, g) into a new block; returns {g, id, src[G]}. */
    private int[] flush(int layer, int g, int[] entryRow, List<int[]> touched) {
        int[] pp = positions[layer][g];
        int[] ws = winSlot[layer][g];
        long[] sq = winSeq[layer][g];
        List<Integer> live = new ArrayList<>();
        for (int e = 0; e < resCap; e++) if (ws[e] >= 0) live.add(e);
        live.sort((a, b) -> pp[ws[a]] != pp[ws[b]] ? Integer.compare(pp[ws[a]], pp[ws[b]]) : Long.compare(sq[a], sq[b]));
        int id = -1;
        for (int b = 0; b < maxBlocks; b++)
            if (blockAlive[layer][g][b] == 0) {
                id = b;
                break;
            }
        if (id < 0) {
            if (maxBlocks >= blockLimit)
                throw new UnsupportedOpException("quantized CUDA KV cache: block pool of layer " + layer + " KV head " + g + " exhausted ("
                        + maxBlocks + " blocks): use --device cpu");
            id = maxBlocks;
            growPool(Math.min(blockLimit, maxBlocks + Math.max(2, maxBlocks / 4)));
        }
        int[] out = new int[2 + group];
        out[0] = g;
        out[1] = id;
        for (int t = 0; t < group; t++) {
            int e = live.get(t);
            int slot = ws[e];
            out[2 + t] = entryRow[e] >= 0 ? entryRow[e] : -(e + 1);
            entryRow[e] = -1;
            ws[e] = -1;
            winFree[layer][g][winFreeCount[layer][g]++] = e;
            winCount[layer][g]--;
            hLoc[layer][g][slot] = id * group + t;
            touched.add(new int[]{g, slot});
        }
        blockAlive[layer][g][id] = group;
        blockLanes[layer][g][id] = group;
        totalLanes[layer][g] += group;
        liveLanes[layer][g] += group;
        return out;
    }

    /**
     * The CPU cache's compaction of (layer, g), run when dead lanes add up to two blocks: the live lanes of every
     * partially dead block, in position order, are decoded (device: into scratch rows, before this step's encodes
     * can overwrite a block) and re-encoded into blocks of G lanes (the last one shorter) at the lowest free block
     * ids; the partially dead blocks are freed. Appends the decode sources {g, loc} and the new blocks
     * {g, id, lanes, rows[G]} to the plan's lists, the moved slots to {@code touched}.
     */
    private void compact(int layer, int g, List<int[]> decodes, List<int[]> compacted, List<int[]> touched) {
        int[] lc = hLoc[layer][g], alive = blockAlive[layer][g], lanes = blockLanes[layer][g];
        int hw = highWater(layer, g);
        List<Integer> moving = new ArrayList<>();
        for (int s = 0; s < hw; s++) {
            int l = lc[s];
            if (l >= 0 && alive[l / group] < lanes[l / group]) moving.add(s);
        }
        int[] pp = positions[layer][g];
        moving.sort(java.util.Comparator.comparingInt(s -> pp[s]));
        int row0 = decodes.size(), m = moving.size();
        for (int s : moving) decodes.add(new int[]{g, lc[s]});
        for (int b = 0; b < maxBlocks; b++)
            if (alive[b] > 0 && alive[b] < lanes[b]) {
                totalLanes[layer][g] -= lanes[b];
                liveLanes[layer][g] -= alive[b];
                alive[b] = 0;
                lanes[b] = 0;
            }
        for (int from = 0; from < m; from += group) {
            int n = Math.min(group, m - from), id = -1;
            for (int b = 0; b < maxBlocks && id < 0; b++) if (alive[b] == 0) id = b;
            if (id < 0) throw new IllegalStateException("quantized KV cache: no free block for a compaction");  // fewer blocks out than in
            int[] out = new int[3 + group];
            out[0] = g;
            out[1] = id;
            out[2] = n;
            for (int t = 0; t < n; t++) {
                int slot = moving.get(from + t);
                out[3 + t] = row0 + from + t;
                lc[slot] = id * group + t;
                touched.add(new int[]{g, slot});
            }
            alive[id] = n;
            lanes[id] = n;
            totalLanes[layer][g] += n;
            liveLanes[layer][g] += n;
            compacted.add(out);
        }
    }

    /** Grows the compaction scratch to at least {@code rows} decoded tokens (keys and values, f32). */
    private void growScratch(int rows) {
        int want = Math.max(rows, Math.max(4 * group, scratchRows * 2));
        long bytes = 2L * want * headDim * 4;
        long np = backend.malloc(bytes, "quantized KV cache compaction scratch (" + want + " tokens)");
        backend.synchronize();  // queued work may still read the old scratch
        backend.free(scratch);
        scratch = np;
        scratchRows = want;
    }

    /** Offset of the value rows in {@link #scratch}. */
    long scratchValues() { return (long) scratchRows * headDim * 4; }

    /**
     * Re-lays the pool out with {@code blocks} blocks per (layer, KV head): a new allocation, one device copy per
     * (layer, KV head) row in stream order (work already queued on the old pool runs first), the old pool freed.
     * Block ids, and so every location, stay valid.
     */
    private void growPool(int blocks) {
        long lh = (long) layers * kvHeads;
        long newBytes = lh * blocks * blockBytes;
        long np = backend.malloc(newBytes, "quantized KV cache blocks (grown to " + blocks + " blocks of " + blockBytes + " bytes per KV head)");
        long rowOld = (long) maxBlocks * blockBytes, rowNew = (long) blocks * blockBytes;
        backend.memsetAsync(np, 0, newBytes);
        for (long r = 0; r < lh; r++) backend.copyAsync(np + r * rowNew, pool + r * rowOld, rowOld);
        backend.synchronize();
        backend.free(pool);
        pool = np;
        poolBytes = newBytes;
        for (int l = 0; l < layers; l++)
            for (int h = 0; h < kvHeads; h++) {
                blockAlive[l][h] = Arrays.copyOf(blockAlive[l][h], blocks);
                blockLanes[l][h] = Arrays.copyOf(blockLanes[l][h], blocks);
            }
        maxBlocks = blocks;
    }

    private void release(int layer, int g, int slot, int[] entryRow) {
        int l = hLoc[layer][g][slot];
        if (l == NONE) return;
        hLoc[layer][g][slot] = NONE;
        if (l < 0) {
            int e = -l - 1;
            winSlot[layer][g][e] = -1;
            if (entryRow != null) entryRow[e] = -1;
            winFree[layer][g][winFreeCount[layer][g]++] = e;
            winCount[layer][g]--;
        } else {
            int b = l / group;
            liveLanes[layer][g]--;
            if (--blockAlive[layer][g][b] == 0) {
                totalLanes[layer][g] -= blockLanes[layer][g][b];
                blockLanes[layer][g][b] = 0;
            }
        }
    }

    int flat(int layer, int g, int slot) {
        return (int) (((long) layer * kvHeads + g) * capacity + slot);
    }

    @Override
    protected void onFree(int layer, int head, int slot) {
        release(layer, head, slot, null);
        if (pendingFreeCount == pendingFree.length) pendingFree = Arrays.copyOf(pendingFree, pendingFree.length * 2);
        pendingFree[pendingFreeCount++] = flat(layer, head, slot);
    }

    @Override
    protected void onClear() {
        pendingFreeCount = 0;
        java.util.Arrays.fill(prepared, null);
        for (int l = 0; l < layers; l++) {
            java.util.Arrays.fill(allocating[l], null);
            allocatingHeads[l] = 0;
        }
        resetHost();
        backend.memsetAsync(pos, 0xFF, slotBytes);
    }

    int pendingFreeCount() { return pendingFreeCount; }

    int[] takePendingFrees() {
        int[] out = Arrays.copyOf(pendingFree, pendingFreeCount);
        pendingFreeCount = 0;
        return out;
    }

    // ---- reading back (tests) ----------------------------------------------------------------------------------

    /** The stored representation of one slot, downloaded: window row, or the block's codes and f16 parameters. */
    public record Stored(boolean window, float[] key, float[] value, int[] keyCodes, short[] keyZero, short[] keyScale,
                         int[] valueCodes, short[] valueZero, short[] valueScale) {}

    /**
     * Downloads one slot (synchronizes): for a window token its f32 key and value; for a quantized token its
     * lane's key codes with the per-channel f16 (zero, scale) and its value codes with the per-group (zero, scale),
     * plus the reconstruction (key: zero + scale·code, value: code·scale + zero, the CPU's float formulas).
     */
    public Stored readStored(int layer, int head, int slot) {
        backend.synchronize();
        int l = hLoc[layer][head][slot];
        if (l == NONE) throw new IllegalArgumentException("slot " + slot + " of layer " + layer + " head " + head + " is free");
        int hd = headDim;
        long lh = (long) layer * kvHeads + head;
        if (l < 0) {
            float[] k = new float[hd], v = new float[hd];
            long off = (lh * resCap + (-l - 1)) * hd * 4;
            backend.downloadRaw(k, winK + off, 4L * hd);
            backend.downloadRaw(v, winV + off, 4L * hd);
            return new Stored(true, k, v, null, null, null, null, null, null);
        }
        int blk = l / group, t = l % group;
        byte[] rec = new byte[(int) blockBytes];
        backend.downloadRaw(rec, pool + (lh * maxBlocks + blk) * blockBytes, blockBytes);
        int gs = spec.valueGroup(hd), ng = hd / gs;
        int rbk = Quant.rowBytes(group, bits), rbv = Quant.rowBytes(hd, bits);
        int offKs = 2 * hd, offVz = 4 * hd, offVs = 4 * hd + 2 * group * ng, offKc = 4 * hd + 4 * group * ng;
        int offVc = offKc + hd * rbk;
        int[] kc = new int[hd], vc = new int[hd];
        short[] kz = new short[hd], ks = new short[hd], vz = new short[ng], vs = new short[ng];
        float[] k = new float[hd], v = new float[hd];
        for (int c = 0; c < hd; c++) {
            kz[c] = le16(rec, 2 * c);
            ks[c] = le16(rec, offKs + 2 * c);
            kc[c] = Quant.get(rec, offKc + c * rbk, t, bits);
            k[c] = Half.toFloat(kz[c]) + Half.toFloat(ks[c]) * kc[c];
        }
        for (int gi = 0; gi < ng; gi++) {
            vz[gi] = le16(rec, offVz + 2 * (t * ng + gi));
            vs[gi] = le16(rec, offVs + 2 * (t * ng + gi));
        }
        for (int c = 0; c < hd; c++) {
            vc[c] = Quant.get(rec, offVc + t * rbv, c, bits);
            v[c] = vc[c] * Half.toFloat(vs[c / gs]) + Half.toFloat(vz[c / gs]);
        }
        return new Stored(false, k, v, kc, kz, ks, vc, vz, vs);
    }

    private static short le16(byte[] a, int off) {
        return (short) ((a[off] & 0xFF) | (a[off + 1] & 0xFF) << 8);
    }

    @Override
    public void close() {
        if (closed) return;
        closed = true;
        backend.releaseQuantCache(this);
    }
}
