package dev.tokenpress.backend.cpu;

import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.quant.KvQuantSpec;

import java.util.Arrays;

/**
 * MiniCache on the heap (cross-layer merging in depth, {@code --kv-quant minicache}; docs/KV_QUANT.md). From the
 * first merged layer s on, layers are paired (s, s+1), (s+2, s+3), ...; the layers before s and an odd last layer
 * keep f32 rows of their own, as the plain cache does.
 *
 * <p>In a pair (lower l−1, upper l) a token older than the residual window is stored once for both layers: the
 * SLERP of its two unit vectors (the shared direction e, written over the lower layer's row) and one norm per layer,
 * so x̂ = ‖x‖·e and q·k̂ = ‖k‖·(q·e). Keys and values are merged separately. Tokens leave the window G at a time
 * (the oldest by position, when the upper layer's window holds R + G); of those, the round(retain·G) pairs with
 * the largest angle keep both rows (the upper one in a pool). A token is merged only where both layers hold it in
 * the same slot; where an eviction policy kept it in one layer only, that layer's row stays exact.
 *
 * <p>Layout per (layer, KV head): lower and unpaired layers own {@code [capacity][hd]} key and value rows; paired
 * layers keep a scale per slot (the norm of a merged row, 1 for an exact one); upper layers map each slot to a pool
 * row (exact) or to {@link #MERGED} (the lower layer's row at that slot times the upper's norm). Freeing a merged
 * slot in one layer first gives the other layer its reconstruction (lower: scaled in place; upper: a pool row), so
 * an evicted token never leaves its partner without a row.
 */
public final class MiniKvCache extends PackedKvCache {
    static final int FREE = -2, MERGED = -1;

    final KvQuantSpec spec;
    final int first, group, residual;
    private final double t;
    /** [layer]: -1 unpaired, 0 the lower layer of a pair, 1 the upper. */
    private final int[] role;
    /** Lower and unpaired layers: [layer][head][capacity * hd] rows; null for upper layers. */
    final float[][][] keys, values;
    /** Paired layers: [layer][head][capacity] scale of each slot's row (the norm when merged, else 1); null otherwise. */
    final float[][][] kScale, vScale;
    /** Upper layers: [layer][head][capacity] pool row, {@link #MERGED} or {@link #FREE}; null otherwise. */
    final int[][][] kIdx, vIdx;
    /** Upper layers: [layer][head] pools of exact rows; null otherwise. */
    final Pool[][] kPool, vPool;
    /** Upper layers: [layer][head] slots in the window (not yet considered for merging), in arrival order. */
    private final int[][][] win;
    private final int[][] winCount;
    /** Tokens merged so far (keys and values each count), and pairs kept unmerged by the retention rule. */
    private long mergedRows, retainedRows;

    /** Growable f32 rows of one (layer, head) with a free list; its bytes are its arrays' lengths. */
    static final class Pool {
        final int hd;
        float[] rows;
        private int[] free = new int[8];
        private int top, freeCount;

        Pool(int hd, int initialRows) {
            this.hd = hd;
            rows = new float[Math.max(1, initialRows) * hd];
        }

        int alloc() {
            if (freeCount > 0) return free[--freeCount];
            if ((top + 1) * hd > rows.length) rows = Arrays.copyOf(rows, Math.max(top + 1, top + top / 2 + 1) * hd);
            return top++;
        }

        void release(int row) {
            if (freeCount == free.length) free = Arrays.copyOf(free, free.length * 2);
            free[freeCount++] = row;
        }

        void clear() {
            top = freeCount = 0;
        }

        long bytes() { return (long) rows.length * 4 + (long) free.length * 4; }

        int liveRows() { return top - freeCount; }
    }

    public MiniKvCache(int layers, int kvHeads, int headDim, int capacity, KvQuantSpec spec) {
        super(layers, kvHeads, headDim, capacity);
        if (spec.method() != KvQuantSpec.Method.MINICACHE)
            throw new IllegalArgumentException("MiniKvCache needs a minicache spec, got " + spec.spec());
        long perHead = (long) capacity * headDim;
        if (perHead > Integer.MAX_VALUE - 8) throw new IllegalArgumentException("KV capacity too large for the CPU backend: " + capacity);
        this.spec = spec;
        this.first = spec.firstMergedLayer(layers);
        this.group = spec.group();
        this.residual = spec.residual();
        this.t = spec.interp();
        role = new int[layers];
        Arrays.fill(role, -1);
        for (int l = first; l + 1 < layers; l += 2) {
            role[l] = 0;
            role[l + 1] = 1;
        }
        keys = new float[layers][][];
        values = new float[layers][][];
        kScale = new float[layers][][];
        vScale = new float[layers][][];
        kIdx = new int[layers][][];
        vIdx = new int[layers][][];
        kPool = new Pool[layers][];
        vPool = new Pool[layers][];
        win = new int[layers][][];
        winCount = new int[layers][];
        int poolRows = (int) Math.min((long) residual + group, capacity);
        for (int l = 0; l < layers; l++) {
            if (role[l] != 1) {
                keys[l] = new float[kvHeads][(int) perHead];
                values[l] = new float[kvHeads][(int) perHead];
            }
            if (role[l] >= 0) {
                kScale[l] = new float[kvHeads][capacity];
                vScale[l] = new float[kvHeads][capacity];
                for (int g = 0; g < kvHeads; g++) {
                    Arrays.fill(kScale[l][g], 1f);
                    Arrays.fill(vScale[l][g], 1f);
                }
            }
            if (role[l] == 1) {
                kIdx[l] = new int[kvHeads][capacity];
                vIdx[l] = new int[kvHeads][capacity];
                for (int g = 0; g < kvHeads; g++) {
                    Arrays.fill(kIdx[l][g], FREE);
                    Arrays.fill(vIdx[l][g], FREE);
                }
                kPool[l] = new Pool[kvHeads];
                vPool[l] = new Pool[kvHeads];
                for (int g = 0; g < kvHeads; g++) {
                    kPool[l][g] = new Pool(headDim, poolRows);
                    vPool[l][g] = new Pool(headDim, poolRows);
                }
                win[l] = new int[kvHeads][poolRows];
                winCount[l] = new int[kvHeads];
            }
        }
    }

    public KvQuantSpec spec() { return spec; }

    /** Merging extends past every append: freeing the newest slots does not undo it. */
    @Override
    public boolean appendsReversible() {
        return false;
    }

    /** Whether layer l is merged with a neighbour (the lower or the upper layer of a pair). */
    public boolean paired(int layer) { return role[layer] >= 0; }

    /** Whether the key (keys = true) or value of (layer, head, slot) is stored as a shared direction and a norm. */
    public boolean merged(int layer, int head, int slot, boolean keys) {
        if (positions[layer][head][slot] < 0 || role[layer] < 0) return false;
        int up = role[layer] == 1 ? layer : layer + 1;
        if (role[layer] == 0 && positions[up][head][slot] != positions[layer][head][slot]) return false;
        return (keys ? kIdx : vIdx)[up][head][slot] == MERGED;
    }

    /** Rows merged so far (a token's key and its value count separately). */
    public long mergedRows() { return mergedRows; }

    /** Rows the retention rule kept unmerged so far. */
    public long retainedRows() { return retainedRows; }

    /**
     * Bytes allocated: the int32 position of every slot, the f32 rows of the lower and unpaired layers, the f32
     * scale of every slot of a paired layer, the int32 pool index of every slot of an upper layer, the pools'
     * rows and free lists, and the upper layers' window lists. JVM object headers are not counted.
     */
    @Override
    public long bytes() {
        return perSlotBytes() * capacity + fixedBytes();
    }

    private long perSlotBytes() {
        long b = 0;
        for (int l = 0; l < layers; l++) {
            b += 4; // position
            if (role[l] != 1) b += (long) headDim * 4 * 2;
            if (role[l] >= 0) b += 4 * 2;
            if (role[l] == 1) b += 4 * 2;
        }
        return b * kvHeads;
    }

    private long fixedBytes() {
        long b = 0;
        for (int l = 0; l < layers; l++)
            if (role[l] == 1)
                for (int g = 0; g < kvHeads; g++) b += kPool[l][g].bytes() + vPool[l][g].bytes() + win[l][g].length * 4L;
        return b;
    }

    /** {@link #bytes()} with {@code slots} slots per head: the per-slot arrays scale, the pools do not. */
    @Override
    public long bytesWithCapacity(int slots) {
        return perSlotBytes() * slots + fixedBytes();
    }

    // ---- writing ---------------------------------------------------------------------------------------------

    /** Stores a token's key and value (already rotated) into an allocated slot; exact until it leaves the window. */
    @Override
    void store(int layer, int head, int slot, float[] k, int kOff, float[] v, int vOff) {
        int hd = headDim, r = role[layer];
        if (r != 1) {
            if (r == 0) {
                detachUpper(layer + 1, head, slot); // the upper layer keeps its reconstruction of the old token
                kScale[layer][head][slot] = 1f;
                vScale[layer][head][slot] = 1f;
            }
            System.arraycopy(k, kOff, keys[layer][head], slot * hd, hd);
            System.arraycopy(v, vOff, values[layer][head], slot * hd, hd);
            return;
        }
        detachLower(layer, head, slot);
        int kr = exactRow(kIdx, kPool, layer, head, slot), vr = exactRow(vIdx, vPool, layer, head, slot);
        System.arraycopy(k, kOff, kPool[layer][head].rows, kr * hd, hd);
        System.arraycopy(v, vOff, vPool[layer][head].rows, vr * hd, hd);
        kScale[layer][head][slot] = 1f;
        vScale[layer][head][slot] = 1f;
        if (!inWindow(layer, head, slot)) { // a rewritten token is considered for merging again
            int[] w = win[layer][head];
            if (winCount[layer][head] == w.length) win[layer][head] = w = Arrays.copyOf(w, w.length * 2);
            w[winCount[layer][head]++] = slot;
        }
        if (winCount[layer][head] >= residual + group && winCount[layer][head] >= group) merge(layer, head);
    }

    private int exactRow(int[][][] idx, Pool[][] pool, int layer, int head, int slot) {
        int i = idx[layer][head][slot];
        if (i >= 0) return i;
        i = pool[layer][head].alloc();
        idx[layer][head][slot] = i;
        return i;
    }

    private boolean inWindow(int layer, int head, int slot) {
        int[] w = win[layer][head];
        for (int i = 0, n = winCount[layer][head]; i < n; i++) if (w[i] == slot) return true;
        return false;
    }

    private void leaveWindow(int layer, int head, int slot) {
        int[] w = win[layer][head];
        int n = winCount[layer][head];
        for (int i = 0; i < n; i++)
            if (w[i] == slot) {
                System.arraycopy(w, i + 1, w, i, n - i - 1);
                winCount[layer][head] = n - 1;
                return;
            }
    }

    /**
     * The upper layer's slot is merged with the lower layer's row there, which is about to change: give the upper
     * layer a pool row holding its reconstruction ‖x‖·e.
     */
    private void detachUpper(int upper, int head, int slot) {
        if (upper >= layers || role[upper] != 1) return;
        int hd = headDim, lower = upper - 1;
        if (kIdx[upper][head][slot] == MERGED) {
            int row = kPool[upper][head].alloc();
            scaleRow(keys[lower][head], slot * hd, kScale[upper][head][slot], kPool[upper][head].rows, row * hd, hd);
            kIdx[upper][head][slot] = row;
            kScale[upper][head][slot] = 1f;
        }
        if (vIdx[upper][head][slot] == MERGED) {
            int row = vPool[upper][head].alloc();
            scaleRow(values[lower][head], slot * hd, vScale[upper][head][slot], vPool[upper][head].rows, row * hd, hd);
            vIdx[upper][head][slot] = row;
            vScale[upper][head][slot] = 1f;
        }
    }

    /** The upper layer's merged slot is about to change: the lower layer's row there becomes its exact ‖x‖·e. */
    private void detachLower(int upper, int head, int slot) {
        int hd = headDim, lower = upper - 1;
        if (kIdx[upper][head][slot] == MERGED) {
            float[] row = keys[lower][head];
            scaleRow(row, slot * hd, kScale[lower][head][slot], row, slot * hd, hd);
            kScale[lower][head][slot] = 1f;
            kIdx[upper][head][slot] = FREE;
        }
        if (vIdx[upper][head][slot] == MERGED) {
            float[] row = values[lower][head];
            scaleRow(row, slot * hd, vScale[lower][head][slot], row, slot * hd, hd);
            vScale[lower][head][slot] = 1f;
            vIdx[upper][head][slot] = FREE;
        }
    }

    private static void scaleRow(float[] src, int sOff, float s, float[] dst, int dOff, int len) {
        for (int i = 0; i < len; i++) dst[dOff + i] = s * src[sOff + i];
    }

    @Override
    protected void onFree(int layer, int head, int slot) {
        int r = role[layer];
        if (r == 0) {
            detachUpper(layer + 1, head, slot);
            kScale[layer][head][slot] = 1f;
            vScale[layer][head][slot] = 1f;
        } else if (r == 1) {
            detachLower(layer, head, slot);
            int ki = kIdx[layer][head][slot], vi = vIdx[layer][head][slot];
            if (ki >= 0) kPool[layer][head].release(ki);
            if (vi >= 0) vPool[layer][head].release(vi);
            kIdx[layer][head][slot] = vIdx[layer][head][slot] = FREE;
            kScale[layer][head][slot] = vScale[layer][head][slot] = 1f;
            leaveWindow(layer, head, slot);
        }
    }

    @Override
    protected void onClear() {
        for (int l = 0; l < layers; l++) {
            if (role[l] >= 0)
                for (int g = 0; g < kvHeads; g++) {
                    Arrays.fill(kScale[l][g], 1f);
                    Arrays.fill(vScale[l][g], 1f);
                }
            if (role[l] == 1)
                for (int g = 0; g < kvHeads; g++) {
                    Arrays.fill(kIdx[l][g], FREE);
                    Arrays.fill(vIdx[l][g], FREE);
                    kPool[l][g].clear();
                    vPool[l][g].clear();
                    winCount[l][g] = 0;
                }
        }
        mergedRows = retainedRows = 0;
    }

    /**
     * The G oldest window tokens of an upper layer leave the window: where the lower layer holds the same token in
     * the same slot, keys and values are merged separately, except the round(retain·G) candidates with the largest
     * angle between the two layers' vectors (ties: the older token), which stay exact in both layers.
     */
    private void merge(int upper, int head) {
        int lower = upper - 1, n = winCount[upper][head], hd = headDim;
        int[] w = win[upper][head], posU = positions[upper][head], posL = positions[lower][head];
        Integer[] order = new Integer[n];
        for (int i = 0; i < n; i++) order[i] = i;
        Arrays.sort(order, (a, b) -> Integer.compare(posU[w[a]], posU[w[b]]));
        int[] batch = new int[group];
        boolean[] taken = new boolean[n];
        for (int i = 0; i < group; i++) {
            taken[order[i]] = true;
            batch[i] = w[order[i]];
        }
        int kept = 0;
        for (int i = 0; i < n; i++) if (!taken[i]) w[kept++] = w[i];
        winCount[upper][head] = kept;
        int cands = 0;
        int[] cand = new int[group];
        for (int s : batch) if (posL[s] == posU[s] && posU[s] >= 0) cand[cands++] = s;
        if (cands == 0) return;
        int retain = (int) Math.round(spec.ratio() * group);
        mergeRows(keys[lower][head], kScale[lower][head], kPool[upper][head], kIdx[upper][head], kScale[upper][head],
                cand, cands, retain, posU, hd);
        mergeRows(values[lower][head], vScale[lower][head], vPool[upper][head], vIdx[upper][head], vScale[upper][head],
                cand, cands, retain, posU, hd);
    }

    private void mergeRows(float[] lowRows, float[] lowScale, Pool pool, int[] upIdx, float[] upScale, int[] cand, int n,
                           int retain, int[] pos, int hd) {
        double[] angle = new double[n];
        float[] dir = new float[n * hd];
        float[] normL = new float[n], normU = new float[n];
        for (int j = 0; j < n; j++) {
            int s = cand[j];
            angle[j] = slerp(lowRows, s * hd, pool.rows, upIdx[s] * hd, hd, t, dir, j * hd, normL, normU, j);
        }
        Integer[] order = new Integer[n];
        for (int j = 0; j < n; j++) order[j] = j;
        // the most distinct first (a pair that cannot be merged, NaN, counts as the most distinct), then the older
        Arrays.sort(order, (a, b) -> {
            int c = Double.compare(angle[b], angle[a]);
            return c != 0 ? c : Integer.compare(pos[cand[a]], pos[cand[b]]);
        });
        for (int i = 0; i < n; i++) {
            int j = order[i];
            if (i < retain || Double.isNaN(angle[j])) {
                retainedRows++;
                continue;
            }
            int s = cand[j];
            System.arraycopy(dir, j * hd, lowRows, s * hd, hd);
            lowScale[s] = normL[j];
            upScale[s] = normU[j];
            pool.release(upIdx[s]);
            upIdx[s] = MERGED;
            mergedRows++;
        }
    }

    /**
     * The shared direction of rows a and b: e = sin((1−t)Ω)/sin Ω · a/‖a‖ + sin(tΩ)/sin Ω · b/‖b‖ with Ω the angle
     * between them (computed in double, written normalized to dir[dOff, +hd)), and their norms into normA[j] /
     * normB[j]. Nearly parallel rows (sin Ω < 1e-6) interpolate linearly; a zero row takes the other's direction.
     *
     * @return Ω, or NaN when the pair has no shared direction (opposite, or a non-finite element)
     */
    static double slerp(float[] a, int aOff, float[] b, int bOff, int hd, double t, float[] dir, int dOff,
                        float[] normA, float[] normB, int j) {
        double aa = 0, bb = 0, ab = 0;
        for (int i = 0; i < hd; i++) {
            double x = a[aOff + i], y = b[bOff + i];
            aa += x * x;
            bb += y * y;
            ab += x * y;
        }
        double na = Math.sqrt(aa), nb = Math.sqrt(bb);
        if (!Double.isFinite(na) || !Double.isFinite(nb)) return Double.NaN;
        normA[j] = (float) na;
        normB[j] = (float) nb;
        double wa, wb, omega;
        if (na == 0 || nb == 0) { // a zero row is restored exactly by its zero norm; the other keeps its direction
            if (na == 0 && nb == 0) {
                Arrays.fill(dir, dOff, dOff + hd, 0f);
                return 0;
            }
            wa = na == 0 ? 0 : 1 / na;
            wb = nb == 0 ? 0 : 1 / nb;
            omega = 0;
        } else {
            double cos = Math.max(-1, Math.min(1, ab / (na * nb)));
            omega = Math.acos(cos);
            double sin = Math.sin(omega);
            if (sin < 1e-6) {
                if (cos < 0) return Double.NaN; // opposite directions: no shared one
                wa = (1 - t) / na;
                wb = t / nb;
            } else {
                wa = Math.sin((1 - t) * omega) / sin / na;
                wb = Math.sin(t * omega) / sin / nb;
            }
        }
        double ee = 0;
        double[] e = new double[hd];
        for (int i = 0; i < hd; i++) {
            e[i] = wa * a[aOff + i] + wb * b[bOff + i];
            ee += e[i] * e[i];
        }
        double inv = 1 / Math.sqrt(ee);
        if (!(ee > 0) || !Double.isFinite(inv)) return Double.NaN;
        for (int i = 0; i < hd; i++) dir[dOff + i] = (float) (e[i] * inv);
        return omega;
    }

    // ---- reading ---------------------------------------------------------------------------------------------

    /** Where a slot's key (keys = true) or value row lives: the array, the offset and the scale, into a view. */
    void row(int layer, int head, int slot, boolean k, View out) {
        int hd = headDim, r = role[layer];
        if (r != 1) {
            out.rows = (k ? keys : values)[layer][head];
            out.off = slot * hd;
            out.scale = r == 0 ? (k ? kScale : vScale)[layer][head][slot] : 1f;
            return;
        }
        int i = (k ? kIdx : vIdx)[layer][head][slot];
        if (i >= 0) {
            out.rows = (k ? kPool : vPool)[layer][head].rows;
            out.off = i * hd;
            out.scale = 1f;
        } else {
            out.rows = (k ? keys : values)[layer - 1][head];
            out.off = slot * hd;
            out.scale = (k ? kScale : vScale)[layer][head][slot];
        }
    }

    /** Whether layer l is the upper layer of a pair (its rows live in its pool or in the lower layer's). */
    boolean isUpper(int layer) { return role[layer] == 1; }

    /** Key rows [capacity][hd] a lower or unpaired layer owns. */
    float[] ownKeys(int layer, int head) { return keys[layer][head]; }

    /** Per-slot key scales of a paired layer (null for an unpaired one). */
    float[] keyScales(int layer, int head) { return role[layer] >= 0 ? kScale[layer][head] : null; }

    /** An upper layer's key location per slot: a pool row, {@link #MERGED} or {@link #FREE}. */
    int[] keyRows(int layer, int head) { return kIdx[layer][head]; }

    /** An upper layer's key pool rows. */
    float[] poolKeys(int layer, int head) { return kPool[layer][head].rows; }

    /** Value rows [capacity][hd] a lower or unpaired layer owns. */
    float[] ownValues(int layer, int head) { return values[layer][head]; }

    /** Per-slot value scales of a paired layer (null for an unpaired one). */
    float[] valueScales(int layer, int head) { return role[layer] >= 0 ? vScale[layer][head] : null; }

    /** An upper layer's value location per slot: a pool row, {@link #MERGED} or {@link #FREE}. */
    int[] valueRows(int layer, int head) { return vIdx[layer][head]; }

    /** An upper layer's value pool rows. */
    float[] poolValues(int layer, int head) { return vPool[layer][head].rows; }

    /** A row reference: rows[off, +hd) times scale. */
    static final class View {
        float[] rows;
        int off;
        float scale;
    }

    /** The reconstructed key and value of an occupied slot (scale · row). */
    @Override
    void read(int layer, int head, int slot, float[] key, float[] value) {
        if (positions[layer][head][slot] < 0)
            throw new IllegalArgumentException("slot " + slot + " of layer " + layer + " head " + head + " is free");
        View v = new View();
        row(layer, head, slot, true, v);
        scaleRow(v.rows, v.off, v.scale, key, 0, headDim);
        row(layer, head, slot, false, v);
        scaleRow(v.rows, v.off, v.scale, value, 0, headDim);
    }

    @Override
    void attention(Parallel par, Kernels k, CpuTensor o, CpuTensor q, int layer, int[] queryPositions, int n,
                   dev.tokenpress.kv.SlotSelection select, dev.tokenpress.kv.AttentionStats stats) {
        MiniOps.attention(par, k, o, q, this, layer, queryPositions, n, select, stats);
    }

    @Override
    void queryKeyScores(Parallel par, Kernels k, float[][] out, CpuTensor q, int row, int queryPosition, int layer) {
        MiniOps.queryKeyScores(par, k, out, q, row, queryPosition, this, layer);
    }
}
