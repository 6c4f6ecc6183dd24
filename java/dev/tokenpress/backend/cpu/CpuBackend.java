package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.RopeTable;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.backend.KvType;
import dev.tokenpress.backend.WeightType;
import dev.tokenpress.io.TensorData;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;

import java.util.Arrays;

/**
 * The CPU backend and the specification every other backend is tested against: f32 activations, weights read in
 * place from the memory-mapped checkpoint (bf16 pairs unpacked in registers; never an f32 copy of the model),
 * multi-threaded over output rows / heads, Vector API inner loops with a scalar fallback.
 */
public final class CpuBackend implements Backend {
    private final Parallel par;
    private final Kernels k;
    private WeightType weightType = WeightType.AS_STORED;

    public CpuBackend() {
        this(Runtime.getRuntime().availableProcessors());
    }

    public CpuBackend(int threads) {
        this.par = new Parallel(threads);
        this.k = Kernels.best();
    }

    @Override
    public String name() { return "cpu"; }

    @Override
    public String description() {
        return "CPU: " + par.threads() + " thread" + (par.threads() == 1 ? "" : "s") + ", " + k.describe();
    }

    public int threads() { return par.threads(); }

    // ---- memory ---------------------------------------------------------------------------------------------

    @Override
    public Tensor weight(TensorData data) {
        if (data.shape().length == 1) return new CpuTensor(data.toFloats(), 1, (int) data.shape()[0]);
        if (data.shape().length != 2) throw new IllegalArgumentException(data.name() + ": expected a 1-D or 2-D tensor, got " + data.shapeString());
        CpuWeight w = new CpuWeight(data);
        // a matrix whose rows are not whole Q8_0 blocks stays as stored
        if (weightType != WeightType.AS_STORED && CpuBlockWeight.fits(w.rows, w.cols))
            return weightType == WeightType.Q8_0 ? CpuQ8Weight.quantize(w, par, k) : CpuQ4Weight.quantize(w, par, k);
        return w;
    }

    /** {@link WeightType#AS_STORED} reads the checkpoint in place; Q8_0 and Q4_0 quantize into the heap. */
    @Override
    public void setWeightType(WeightType type) {
        weightType = type == null ? WeightType.AS_STORED : type;
    }

    @Override
    public Tensor allocate(int rows, int cols) { return new CpuTensor(rows, cols); }

    @Override
    public void upload(Tensor dst, float[] src) {
        System.arraycopy(src, 0, f(dst).data, 0, src.length);
    }

    @Override
    public float[] download(Tensor src, int row0, int rows) {
        CpuTensor t = f(src);
        return Arrays.copyOfRange(t.data, row0 * t.cols, (row0 + rows) * t.cols);
    }

    @Override
    public void weightRows(Tensor w, int row0, int rows, float[] dst) {
        if (row0 < 0 || rows < 0 || row0 + rows > w.rows()) throw new IllegalArgumentException("weightRows: rows [" + row0 + ", " + (row0 + rows) + ") outside " + w.rows());
        int cols = w.cols();
        if (w instanceof CpuWeight cw) {
            short[] scratch = new short[cols];
            for (int r = 0; r < rows; r++) cw.rowFloats(row0 + r, dst, r * cols, scratch);
        } else if (w instanceof CpuBlockWeight bw) {
            for (int r = 0; r < rows; r++) bw.rowFloats(row0 + r, dst, r * cols);
        } else System.arraycopy(f(w).data, row0 * cols, dst, 0, rows * cols);
    }

    @Override
    public void copyRows(Tensor dst, int dstRow, Tensor src, int srcRow, int rows) {
        CpuTensor d = f(dst), s = f(src);
        System.arraycopy(s.data, srcRow * s.cols, d.data, dstRow * d.cols, rows * s.cols);
    }

    private volatile KvType keyType = KvType.F32, valueType = KvType.F32;

    /** f32 (the default) or bf16 for each of keys and values; a quantized cache ({@code --kv-quant}) is not affected. */
    @Override
    public void setKvTypes(KvType keys, KvType values) {
        keyType = keys == null ? KvType.F32 : keys;
        valueType = values == null ? KvType.F32 : values;
    }

    @Override
    public KvType[] kvTypes() {
        return new KvType[] {keyType, valueType};
    }

    @Override
    public KvCache newKvCache(int layers, int kvHeads, int headDim, int capacity) {
        return new CpuKvCache(layers, kvHeads, headDim, capacity, keyType, valueType);
    }

    @Override
    public KvCache newKvCache(int layers, int kvHeads, int headDim, int capacity, dev.tokenpress.kv.quant.KvQuantSpec quant) {
        if (quant == null || quant.isNone()) return newKvCache(layers, kvHeads, headDim, capacity);
        // f32 rows (MiniCache's shared directions and exact rows; the quantizers' window): not the -ctk / -ctv types
        if (quant.method() == dev.tokenpress.kv.quant.KvQuantSpec.Method.MINICACHE)
            return new MiniKvCache(layers, kvHeads, headDim, capacity, quant);
        return new QuantKvCache(layers, kvHeads, headDim, capacity, quant);
    }

    private static CpuTensor f(Tensor t) {
        if (t instanceof CpuTensor c) return c;
        throw new IllegalArgumentException("expected an f32 CPU tensor, got " + t.getClass().getSimpleName());
    }

    // ---- ops ------------------------------------------------------------------------------------------------

    @Override
    public void embedding(Tensor out, Tensor table, int[] tokens, int n) {
        CpuTensor o = f(out);
        if (table instanceof CpuBlockWeight w) {
            for (int i = 0; i < n; i++) {
                checkToken(tokens[i], w.rows);
                w.rowFloats(tokens[i], o.data, i * o.cols);
            }
        } else if (table instanceof CpuWeight w) {
            short[] scratch = new short[w.cols];
            for (int i = 0; i < n; i++) {
                checkToken(tokens[i], w.rows);
                w.rowFloats(tokens[i], o.data, i * o.cols, scratch);
            }
        } else {
            CpuTensor t = f(table);
            for (int i = 0; i < n; i++) {
                checkToken(tokens[i], t.rows);
                System.arraycopy(t.data, tokens[i] * t.cols, o.data, i * o.cols, t.cols);
            }
        }
    }

    private static void checkToken(int token, int vocab) {
        if (token < 0 || token >= vocab) throw new IllegalArgumentException("token id " + token + " is outside the vocabulary [0, " + vocab + ")");
    }

    @Override
    public void rmsnorm(Tensor out, Tensor x, Tensor w, float eps, int n) {
        CpuTensor o = f(out), xi = f(x), wt = f(w);
        int d = xi.cols;
        par.forRange(n, 8, (from, to) -> {
            for (int r = from; r < to; r++) {
                int off = r * d;
                float ss = k.sumSquares(xi.data, off, d) / d;
                float inv = (float) (1.0 / Math.sqrt(ss + eps));
                for (int i = 0; i < d; i++) o.data[off + i] = wt.data[i] * (xi.data[off + i] * inv);
            }
        });
    }

    @Override
    public void rmsnormHeads(Tensor x, Tensor w, float eps, int n, int heads) {
        CpuTensor xi = f(x), wt = f(w);
        int hd = wt.data.length;
        if ((long) heads * hd != xi.cols)
            throw new IllegalArgumentException("rmsnormHeads: " + heads + " heads of " + hd + " for " + xi.cols + " columns");
        par.forRange(n * heads, 32, (from, to) -> {
            for (int r = from; r < to; r++) {
                int off = r * hd;
                float ss = k.sumSquares(xi.data, off, hd) / hd;
                float inv = (float) (1.0 / Math.sqrt(ss + eps));
                for (int i = 0; i < hd; i++) xi.data[off + i] = wt.data[i] * (xi.data[off + i] * inv);
            }
        });
    }

    @Override
    public void matmul(Tensor out, Tensor x, Tensor w, Tensor bias, int n) {
        CpuTensor o = f(out), xi = f(x);
        float[] b = bias == null ? null : f(bias).data;
        if (w instanceof CpuTensor wf) { // small f32 matrices (tests)
            matmulF32(o, xi, wf.data, wf.rows, wf.cols, b, n);
            return;
        }
        if (w instanceof CpuBlockWeight qw) {
            matmulBlocks(o, xi, qw, b, n);
            return;
        }
        CpuWeight wt = (CpuWeight) w;
        int in = wt.cols, outDim = wt.rows;
        if (xi.cols != in) throw new IllegalArgumentException("matmul: x has " + xi.cols + " columns, weight expects " + in);
        if (wt.packedBf16()) {
            int pairs = in / 2;
            float[] xe = new float[n * pairs], xo = new float[n * pairs];
            for (int r = 0; r < n; r++)
                for (int j = 0; j < pairs; j++) {
                    xe[r * pairs + j] = xi.data[r * in + 2 * j];
                    xo[r * pairs + j] = xi.data[r * in + 2 * j + 1];
                }
            par.forRange(outDim, 64, (from, to) -> {
                int[] rows = weightRows(4 * pairs);
                float[] four = new float[4];
                int oi = from;
                // four weight rows at a time: each x row is loaded once for four outputs (same per-row sums)
                for (; n > 1 && oi + 4 <= to; oi += 4) {
                    wt.rowsPairs(oi, 4, rows);
                    for (int r = 0; r < n; r++) {
                        k.dotBf16x4(rows, pairs, xe, xo, r * pairs, four, 0, 1);
                        for (int i = 0; i < 4; i++) o.data[r * o.cols + oi + i] = four[i] + (b == null ? 0f : b[oi + i]);
                    }
                }
                for (; oi < to; oi++) {
                    wt.rowPairs(oi, rows);
                    float bb = b == null ? 0f : b[oi];
                    for (int r = 0; r < n; r++) o.data[r * o.cols + oi] = k.dotBf16(rows, xe, xo, r * pairs, pairs) + bb;
                }
            });
        } else {
            par.forRange(outDim, 64, (from, to) -> {
                float[] row = new float[in];
                short[] scratch = new short[in];
                for (int oi = from; oi < to; oi++) {
                    wt.rowFloats(oi, row, 0, scratch);
                    float bb = b == null ? 0f : b[oi];
                    for (int r = 0; r < n; r++) o.data[r * o.cols + oi] = k.dot(row, 0, xi.data, r * in, in) + bb;
                }
            });
        }
    }

    private void matmulBlocks(CpuTensor o, CpuTensor xi, CpuBlockWeight w, float[] b, int n) {
        int in = w.cols;
        if (xi.cols != in) throw new IllegalArgumentException("matmul: x has " + xi.cols + " columns, weight expects " + in);
        par.forRange(w.rows, 64, (from, to) -> {
            int oi = from;
            if (n > 4) { // a chunk: four rows' codes widened once, each x row loaded once for the four (same bits)
                float[] codes = new float[4 * in], sums = new float[12];
                for (; oi + 4 <= to; oi += 4) {
                    w.widenRows(oi, 4, codes, 0);
                    int r = 0;
                    for (; r + 3 <= n; r += 3) { // three x rows per pass over the four code rows
                        k.dotQ8fx4x3(codes, w.d, oi * w.blocks, xi.data, r * in, (r + 1) * in, (r + 2) * in, w.blocks, sums);
                        for (int i = 0; i < 4; i++) {
                            float bb = b == null ? 0f : b[oi + i];
                            for (int t = 0; t < 3; t++) o.data[(r + t) * o.cols + oi + i] = sums[4 * t + i] + bb;
                        }
                    }
                    for (; r < n; r++) { // the one or two left over
                        k.dotQ8fx4(codes, w.d, oi * w.blocks, xi.data, r * in, w.blocks, sums, 0);
                        for (int i = 0; i < 4; i++) o.data[r * o.cols + oi + i] = sums[i] + (b == null ? 0f : b[oi + i]);
                    }
                }
            }
            for (; oi < to; oi++) { // decode: the codes widened in registers
                float bb = b == null ? 0f : b[oi];
                for (int r = 0; r < n; r++) o.data[r * o.cols + oi] = w.dotRow(k, oi, xi.data, r * in) + bb;
            }
        });
    }

    private void matmulF32(CpuTensor o, CpuTensor xi, float[] w, int outDim, int in, float[] b, int n) {
        par.forRange(outDim, 64, (from, to) -> {
            for (int oi = from; oi < to; oi++)
                for (int r = 0; r < n; r++)
                    o.data[r * o.cols + oi] = k.dot(w, oi * in, xi.data, r * in, in) + (b == null ? 0f : b[oi]);
        });
    }

    @Override
    public void rope(Tensor x, int heads, RopeTable rope, int[] positions, int n) {
        CpuTensor t = f(x);
        int hd = rope.headDim(), half = hd / 2;
        float[] inv = rope.invFreq();
        float scale = rope.attentionScale(); // YaRN's attention factor (1 otherwise: the products are unchanged)
        for (int r = 0; r < n; r++) {
            float pos = positions[r];
            float[] cos = new float[half], sin = new float[half];
            for (int j = 0; j < half; j++) {
                float angle = pos * inv[j];
                cos[j] = (float) Math.cos(angle) * scale;
                sin[j] = (float) Math.sin(angle) * scale;
            }
            for (int h = 0; h < heads; h++) {
                int base = r * t.cols + h * hd;
                for (int j = 0; j < half; j++) {
                    float a = t.data[base + j], b = t.data[base + j + half];
                    t.data[base + j] = a * cos[j] - b * sin[j];
                    t.data[base + j + half] = b * cos[j] + a * sin[j];
                }
            }
        }
    }

    @Override
    public void swiglu(Tensor out, Tensor gate, Tensor up, int n) {
        CpuTensor o = f(out), g = f(gate), u = f(up);
        int len = n * g.cols;
        par.forRange(len, 4096, (from, to) -> {
            for (int i = from; i < to; i++) {
                float a = g.data[i];
                o.data[i] = a / (1f + (float) Math.exp(-a)) * u.data[i];
            }
        });
    }

    @Override
    public void add(Tensor x, Tensor y, int n) {
        CpuTensor a = f(x), b = f(y);
        int len = n * a.cols;
        for (int i = 0; i < len; i++) a.data[i] += b.data[i];
    }

    @Override
    public void storeKv(KvCache cache, int layer, Tensor k, Tensor v, int[][] slots, int n) {
        if (cache instanceof PackedKvCache pc) { pc.storeKv(layer, f(k), f(v), slots, n); return; }
        CpuKvCache c = (CpuKvCache) cache;
        CpuTensor kt = f(k), vt = f(v);
        int hd = c.headDim();
        for (int g = 0; g < c.kvHeads(); g++)
            for (int i = 0; i < n; i++)
                c.write(layer, g, slots[g][i], kt.data, i * kt.cols + g * hd, vt.data, i * vt.cols + g * hd);
    }

    @Override
    public void attention(Tensor out, Tensor q, KvCache cache, int layer, int[] queryPositions, int n,
                          SlotSelection select, AttentionStats stats) {
        if (cache instanceof PackedKvCache pc) { pc.attention(par, k, f(out), f(q), layer, queryPositions, n, select, stats); return; }
        CpuKvCache c = (CpuKvCache) cache;
        CpuTensor o = f(out), qt = f(q);
        int hd = c.headDim(), kvHeads = c.kvHeads();
        int heads = qt.cols / hd, group = heads / kvHeads;
        float scale = (float) (1.0 / Math.sqrt(hd));
        if (stats != null) {
            // statistics accumulate per KV head: one task per KV head keeps the sums race-free and deterministic
            par.forRange(kvHeads, 1, (g0, g1) -> {
                for (int g = g0; g < g1; g++)
                    for (int r = 0; r < n; r++)
                        attendGroup(c, layer, o, qt, r, g, g * group, group, hd, scale, queryPositions[r], select, stats, n);
            });
        } else {
            // the q-heads of a KV head in one pass over its keys and values (each row read from memory once for all
            // of them), split into as many chunks as it takes to give every thread a task
            int chunks = Math.max(1, Math.min(group, (par.threads() + n * kvHeads - 1) / (n * kvHeads)));
            int per = (group + chunks - 1) / chunks;
            int tasks = n * kvHeads * chunks;
            par.forRange(tasks, 1, (from, to) -> {
                for (int idx = from; idx < to; idx++) {
                    int r = idx / (kvHeads * chunks), rest = idx % (kvHeads * chunks), g = rest / chunks, ch = rest % chunks;
                    int h0 = g * group + ch * per, hc = Math.min(per, (g + 1) * group - h0);
                    if (hc > 0) attendGroup(c, layer, o, qt, r, g, h0, hc, hd, scale, queryPositions[r], select, null, n);
                }
            });
        }
    }

    /**
     * Attention of query row r for the q-heads h0 .. h0+hc-1, all of KV head g, in one pass over the candidate slots:
     * each key and value row is used for every one of those heads while it is in cache. Per head the arithmetic is
     * the one-head formula (the same dots, exponentials, sums and value accumulation, in the same order), so the
     * results do not depend on how heads are grouped; probSums of a slot gets its heads' shares in head order.
     */
    private void attendGroup(CpuKvCache c, int layer, CpuTensor o, CpuTensor qt, int r, int g, int h0, int hc, int hd,
                             float scale, int qpos, SlotSelection select, AttentionStats stats, int n) {
        int[] pos = c.positions(layer, g);
        int m = select == null ? c.highWater(layer, g) : select.count()[g];
        // every slot below the high-water mark as a list too: one loop shape whether a layer attends to all or to a
        // selection (a selecting policy's dense layers ran ~2.5x slower through the JIT's code for the rarer shape)
        int[] list = select == null ? identity(m) : select.slots()[g];
        // an evicted cache (most slots below the high-water mark free): its occupied slots as the list, so the loops
        // skip the free ones; the softmax sums each term in the class of its slot, as over the whole range, and every
        // left-out term is a zero there, so the results are the same bits
        int[] bySlot = null;
        if (select == null && 2 * c.occupied(layer, g) <= m) {
            int[] occ = liveSlots(m);
            int n2 = 0;
            for (int s = 0; s < m; s++) if (pos[s] >= 0) occ[n2++] = s;
            list = bySlot = occ;
            m = n2;
        }
        // keys and values in f32 or as bf16 (-ctk / -ctv), looked up once for the slot loop
        float[] keys = c.keys == null ? null : c.keys[layer][g], values = c.values == null ? null : c.values[layer][g];
        short[] keys16 = keys == null ? c.keys16[layer][g] : null, values16 = values == null ? c.values16[layer][g] : null;
        float[][] scores = scoreRows(hc, m);
        float[] max = new float[hc];
        Arrays.fill(max, Float.NEGATIVE_INFINITY);
        boolean lastRow = r == n - 1;
        boolean raws = stats != null && stats.rawScores != null && lastRow;
        int qBase = r * qt.cols, oBase = r * o.cols;
        float[] four = new float[4];
        // A selection's rows lie scattered over the cache. Reading them where they are, the scoring loop's work per
        // row leaves room for only a few rows' cache misses at a time; so they are first copied block by block into
        // a contiguous scratch (a tight copy loop keeps many misses in flight) and used from there: the same numbers
        // in the same order, so the same bits.
        Gather gathered = (select != null || bySlot != null) && !contiguous(list, m) ? GATHER.get().sized(hd) : null;
        int block = gathered == null ? Math.max(m, 1) : gathered.rows;
        // where the scoring loop reads key rows: the cache, or the scratch (f32 or bf16 as the cache stores them)
        float[] keyRows = gathered == null || keys == null ? keys : gathered.f32;
        short[] keyRows16 = gathered == null || keys16 == null ? keys16 : gathered.bf16;
        for (int b0 = 0; b0 < m; b0 += block) {
            int b1 = Math.min(m, b0 + block);
            if (gathered != null) {
                if (keys != null) k.gatherRows(keys, list, b0, b1, hd, gathered.f32);
                else k.gatherRows(keys16, list, b0, b1, hd, gathered.bf16);
            }
            for (int j = b0; j < b1; j++) {
                int slot = list[j];
                int p = pos[slot];
                if (p < 0 || p > qpos) {
                    for (int i = 0; i < hc; i++) scores[i][j] = Float.NEGATIVE_INFINITY;
                    continue;
                }
                scoreKey(k, qt.data, qBase, h0, hc, hd, keyRows, keyRows16, (gathered == null ? slot : j - b0) * hd, 1f,
                        scale, slot, j, scores, max, raws ? stats.rawScores : null, four);
            }
        }
        float[] inv = new float[hc];
        boolean[] live = new boolean[hc];
        if (!softmaxHeads(k, scores, max, hc, m, o.data, oBase + h0 * hd, hd, inv, live, bySlot)) return;
        // o_i += (e_ij / sum_i) · v_j over the candidates in order, each head's outputs held in registers
        if (gathered != null)
            for (int b0 = 0; b0 < m; b0 += block) {
                int b1 = Math.min(m, b0 + block);
                if (values != null) {
                    k.gatherRows(values, list, b0, b1, hd, gathered.f32);
                    k.weightedValuesBlock(scores, inv, live, hc, b0, b1, gathered.f32, hd, o.data, oBase + h0 * hd);
                } else {
                    k.gatherRows(values16, list, b0, b1, hd, gathered.bf16);
                    k.weightedValuesBlock(scores, inv, live, hc, b0, b1, gathered.bf16, hd, o.data, oBase + h0 * hd);
                }
            }
        else if (values != null) k.weightedValues(scores, inv, live, hc, m, list, values, hd, o.data, oBase + h0 * hd);
        else k.weightedValues(scores, inv, live, hc, m, list, values16, hd, o.data, oBase + h0 * hd);
        if (stats != null && stats.probSums != null && r >= stats.fromRow) addProbSums(stats.probSums[g], scores, inv, live, hc, m, list);
    }

    /**
     * One key row against q-heads h0 .. h0+hc-1 of a query row (at q[qBase]): raw = ks · q·k over the f32 row
     * ({@code rows}) or the bf16 one ({@code rows16}) at {@code off}, four heads per pass over the row (the bits of four
     * dot calls); scores[i][j] = raw · scale, the running max[i], and raw[h][slot] = raw when {@code raw} is given.
     * ks is 1 for a row stored as is (multiplying by 1 changes no bit) and a row's norm for MiniCache's merged rows.
     */
    static void scoreKey(Kernels k, float[] q, int qBase, int h0, int hc, int hd, float[] rows, short[] rows16, int off,
                         float ks, float scale, int slot, int j, float[][] scores, float[] max, float[][] raw, float[] four) {
        int i = 0;
        for (; i + 4 <= hc; i += 4) {
            if (rows != null) k.dot4(q, qBase + (h0 + i) * hd, hd, rows, off, hd, four);
            else k.dot4(q, qBase + (h0 + i) * hd, hd, rows16, off, hd, four);
            for (int t = 0; t < 4; t++) {
                float d = ks * four[t];
                if (raw != null) raw[h0 + i + t][slot] = d;
                float sc = d * scale;
                scores[i + t][j] = sc;
                if (sc > max[i + t]) max[i + t] = sc;
            }
        }
        for (; i < hc; i++) {
            int h = h0 + i;
            float d = ks * (rows != null ? k.dot(q, qBase + h * hd, rows, off, hd) : k.dot(q, qBase + h * hd, rows16, off, hd));
            if (raw != null) raw[h][slot] = d;
            float sc = d * scale;
            scores[i][j] = sc;
            if (sc > max[i]) max[i] = sc;
        }
    }

    /**
     * The softmax of hc heads' scaled scores over m candidates: zeroes each head's output row o[oOff + i·hd, +hd),
     * exponentiates its scores in place against its max ({@link Kernels#expShifted}), and sets inv[i] = 1/Σ and
     * live[i] for the heads that see a candidate. False when no head sees any. With {@code bySlot} (an evicted cache's
     * occupied slots, the candidates) each sum is the one over all slots below the high-water mark
     * ({@link Kernels#expShiftedBySlot}).
     */
    static boolean softmaxHeads(Kernels k, float[][] scores, float[] max, int hc, int m, float[] o, int oOff, int hd,
                                float[] inv, boolean[] live, int[] bySlot) {
        boolean any = false;
        for (int i = 0; i < hc; i++) {
            Arrays.fill(o, oOff + i * hd, oOff + (i + 1) * hd, 0f);
            if (max[i] == Float.NEGATIVE_INFINITY) continue; // nothing visible to this head
            any = live[i] = true;
            double sum = bySlot == null ? k.expShifted(scores[i], 0, m, max[i]) : k.expShiftedBySlot(scores[i], m, max[i], bySlot);
            inv[i] = (float) (1.0 / sum);
        }
        return any;
    }

    /** sums[slot] += e·inv of every live head, candidate by candidate (slot = list == null ? j : list[j]), in head order. */
    static void addProbSums(float[] sums, float[][] e, float[] inv, boolean[] live, int hc, int m, int[] list) {
        for (int j = 0; j < m; j++) {
            int slot = list == null ? j : list[j];
            for (int i = 0; i < hc; i++) {
                if (!live[i]) continue;
                float x = e[i][j];
                if (x != 0f) sums[slot] += x * inv[i];
            }
        }
    }

    // ---- ops for KV compression policies ----------------------------------------------------------------------

    @Override
    public void queryKeyScores(float[][] out, Tensor q, int row, int queryPosition, KvCache cache, int layer) {
        if (cache instanceof PackedKvCache pc) { pc.queryKeyScores(par, k, out, f(q), row, queryPosition, layer); return; }
        CpuKvCache c = (CpuKvCache) cache;
        CpuTensor qt = f(q);
        int hd = c.headDim(), heads = qt.cols / hd, group = heads / c.kvHeads();
        if (group % 4 == 0 && c.kvHeads() >= par.threads()) {
            // by KV head: each key row read once for four of its q-heads (each score the bits of one dot)
            par.forRange(c.kvHeads(), 1, (g0, g1) -> {
                float[] four = new float[4];
                for (int g = g0; g < g1; g++) {
                    int hw = c.highWater(layer, g);
                    int[] pos = c.positions(layer, g);
                    for (int h0 = g * group; h0 < (g + 1) * group; h0 += 4) {
                        int qOff = row * qt.cols + h0 * hd;
                        float[] o0 = out[h0], o1 = out[h0 + 1], o2 = out[h0 + 2], o3 = out[h0 + 3];
                        for (int s = 0; s < hw; s++) {
                            int p = pos[s];
                            if (p < 0 || p > queryPosition) {
                                o0[s] = o1[s] = o2[s] = o3[s] = Float.NEGATIVE_INFINITY;
                                continue;
                            }
                            c.keyDot4(k, qt.data, qOff, hd, layer, g, s, four);
                            o0[s] = four[0];
                            o1[s] = four[1];
                            o2[s] = four[2];
                            o3[s] = four[3];
                        }
                        for (int h = h0; h < h0 + 4; h++)
                            Arrays.fill(out[h], hw, Math.min(out[h].length, c.capacity()), Float.NEGATIVE_INFINITY);
                    }
                }
            });
            return;
        }
        par.forRange(heads, 1, (h0, h1) -> {
            for (int h = h0; h < h1; h++) {
                int g = h / group, hw = c.highWater(layer, g), qOff = row * qt.cols + h * hd;
                int[] pos = c.positions(layer, g);
                float[] o = out[h];
                for (int s = 0; s < hw; s++) {
                    int p = pos[s];
                    o[s] = p < 0 || p > queryPosition ? Float.NEGATIVE_INFINITY : c.keyDot(k, qt.data, qOff, layer, g, s);
                }
                Arrays.fill(o, hw, Math.min(o.length, c.capacity()), Float.NEGATIVE_INFINITY);
            }
        });
    }

    /**
     * False: the attention computes the raw scores of a selection layer anyway and hands them over for nothing, while
     * {@link #selectTopSlots} would read the layer's keys a second time (decode at 8K with {@code tidal:k=2048} on a
     * 1B attention shape: 46.8–48.8 tokens/s from the statistics, 41.3–46.6 through the op).
     */
    @Override
    public boolean selectsBeforeAttention() {
        return false;
    }

    /**
     * TidalDecode's selection (see {@link Backend#selectTopSlots}): the same raw q·k as {@link #attention}'s
     * statistics (one dot per q-head and visible slot), reduced over the group in q-head order, top-k by
     * (score descending, slot ascending). Always returns host arrays of exactly count[g] entries.
     */
    @Override
    public SlotSelection selectTopSlots(Tensor q, int row, int queryPosition, KvCache cache, int layer, int topK,
                                        boolean sumGroup, int keepPosition, boolean hostCopy) {
        if (!(cache instanceof CpuKvCache c))
            throw new UnsupportedOpException("selectTopSlots: no CPU op for a " + (cache == null ? "null" : cache.getClass().getSimpleName()) + " cache");
        if (topK < 0) throw new IllegalArgumentException("selectTopSlots: k must be >= 0, got " + topK);
        CpuTensor qt = f(q);
        int hd = c.headDim(), hkv = c.kvHeads(), heads = qt.cols / hd, group = heads / hkv;
        if (row < 0 || row >= qt.rows) throw new IllegalArgumentException("selectTopSlots: row " + row + " outside " + qt);
        if (layer < 0 || layer >= c.layers()) throw new IllegalArgumentException("selectTopSlots: layer " + layer + " outside [0, " + c.layers() + ")");
        int[][] slots = new int[hkv][];
        int[] count = new int[hkv];
        par.forRange(hkv, 1, (g0, g1) -> {
            float[] four = new float[4];
            for (int g = g0; g < g1; g++) {
                int hw = c.highWater(layer, g);
                int[] pos = c.positions(layer, g);
                float[] score = new float[hw], dots = new float[group + 3];
                int cur = -1, visible = 0;
                for (int s = 0; s < hw; s++) {
                    int p = pos[s];
                    if (p == keepPosition) cur = s;
                    if (p < 0 || p > queryPosition) {
                        score[s] = Float.NEGATIVE_INFINITY;
                        continue;
                    }
                    int i = 0; // the group's dots, four heads per pass over the key (each the bits of one dot)
                    for (; i + 4 <= group; i += 4) {
                        c.keyDot4(k, qt.data, row * qt.cols + (g * group + i) * hd, hd, layer, g, s, four);
                        System.arraycopy(four, 0, dots, i, 4);
                    }
                    for (; i < group; i++) dots[i] = c.keyDot(k, qt.data, row * qt.cols + (g * group + i) * hd, layer, g, s);
                    float v = sumGroup ? 0f : Float.NEGATIVE_INFINITY;
                    boolean any = false;
                    for (int h = 0; h < group; h++) {
                        float r = dots[h];
                        if (r == Float.NEGATIVE_INFINITY) continue;
                        any = true;
                        v = sumGroup ? v + r : Math.max(v, r);
                    }
                    score[s] = any ? v : Float.NEGATIVE_INFINITY;
                    if (any) visible++;
                }
                int total = Math.min(topK, visible), m = 0;
                int[] chosen = new int[total];
                if (cur >= 0 && score[cur] != Float.NEGATIVE_INFINITY && total > 0) {
                    chosen[m++] = cur;
                    score[cur] = Float.NEGATIVE_INFINITY;
                }
                int rest = total - m;
                if (rest > 0) {
                    // (score descending, slot ascending) as one long: 32-bit order key (±0 equal) above 31 slot bits
                    long[] order = new long[hw];
                    int c2 = 0;
                    for (int s = 0; s < hw; s++) {
                        float v = score[s];
                        if (v == Float.NEGATIVE_INFINITY) continue;
                        int bits = v == 0f ? 0 : Float.floatToIntBits(v);
                        long key = (bits < 0 ? ~bits : bits | 0x80000000) & 0xFFFFFFFFL;
                        order[c2++] = ((0xFFFFFFFFL - key) << 31) | s;
                    }
                    // the first rest (which ones, not their order), then in slot order
                    if (rest < c2) dev.tokenpress.kv.LongSelect.smallest(order, 0, c2, rest);
                    dev.tokenpress.kv.LongSelect.lowBitsAscending(order, rest, hw, chosen, m);
                    m += rest;
                }
                if (m > 0 && chosen[0] == cur) SlotSelection.placeFirst(chosen, m); // the current slot among the rest
                slots[g] = chosen;
                count[g] = m;
            }
        });
        return new SlotSelection(slots, count);
    }

    @Override
    public void questPageScores(float[][] out, Tensor q, int row, int queryPosition, KvCache cache, int layer, int pageSize) {
        if (pageSize < 1) throw new IllegalArgumentException("questPageScores: page size must be >= 1, got " + pageSize);
        CpuTensor qt = f(q);
        int hd = cache.headDim(), heads = qt.cols / hd, group = heads / cache.kvHeads();
        // quantized or merged: bounds from the reconstructed keys, so selection and attention see the same keys
        PackedKvCache qc = cache instanceof PackedKvCache x ? x : null;
        CpuKvCache plain = qc == null ? (CpuKvCache) cache : null;
        float[][] direct = plain == null || plain.keys == null ? null : plain.keys[layer]; // null: quantized or bf16 keys
        // ScalarKernels without the Vector API module: VectorKernels is only referenced otherwise
        VectorKernels vk = k instanceof ScalarKernels ? null : (VectorKernels) k;
        // Vector API: the bounds of `block` pages stored dimension-major, their scores one page per lane
        int block = vk == null ? 1 : vk.questPages();
        if (plain != null) plain.pageMemo(pageSize, block); // pages whose slots have not changed keep their bounds
        // one task per KV head: the page bounds (elementwise key max/min) are built once and shared by the group
        par.forRange(cache.kvHeads(), 1, (g0, g1) -> {
            float[] max = new float[hd], min = new float[hd];
            float[] maxT = new float[block * hd], minT = new float[block * hd], sums = new float[group * block];
            boolean[] any = new boolean[block];
            int[] offs = new int[Math.min(pageSize, cache.capacity())], zero = {0};
            float[] key = qc == null ? null : new float[hd], scratch = qc == null ? null : new float[hd];
            // bf16 keys: a page's visible rows widened here, then bounded as f32 rows are
            float[] widened = plain != null && direct == null ? new float[Math.min(pageSize, cache.capacity()) * hd] : null;
            for (int g = g0; g < g1; g++) {
                int hw = cache.highWater(layer, g), pages = (hw + pageSize - 1) / pageSize;
                int[] pos = cache.positions(layer, g);
                float[] keys = direct != null ? direct[g] : widened;
                int qOff = row * qt.cols + g * group * hd;
                for (int p0 = 0; p0 < pages; p0 += block) {
                    int nb = Math.min(block, pages - p0);
                    if (vk != null && plain != null) { // a block whose pages are all kept: scored from the kept bounds
                        boolean kept = true;
                        for (int b = 0; b < nb && kept; b++) kept = plain.pageKept(layer, g, p0 + b, queryPosition);
                        if (kept) {
                            float[] kMax = plain.keptMax(layer, g), kMin = plain.keptMin(layer, g);
                            int off = plain.pageBase(p0);
                            vk.questPageSums(qt.data, qOff, group, kMax, kMin, off, hd, sums);
                            for (int h = 0; h < group; h++)
                                for (int b = 0; b < nb; b++) {
                                    float v = plain.pageCount(layer, g, p0 + b) > 0 ? sums[h * block + b] : Float.NEGATIVE_INFINITY;
                                    if (Float.isNaN(v)) v = questScore(qt.data, qOff + h * hd, kMax, kMin, off + b, block, hd);
                                    out[g * group + h][p0 + b] = v;
                                }
                            continue;
                        }
                    }
                    for (int b = 0; b < nb; b++) {
                        int p = p0 + b, n = 0;
                        if (plain != null && plain.pageKept(layer, g, p, queryPosition)) {
                            plain.pageBounds(layer, g, p, max, min);
                            n = plain.pageCount(layer, g, p);
                        } else {
                            Arrays.fill(max, Float.NEGATIVE_INFINITY);
                            Arrays.fill(min, Float.POSITIVE_INFINITY);
                            boolean hidden = false; // an occupied slot after the query: these bounds are the query's only
                            int last = -1;
                            for (int s = p * pageSize, end = Math.min(hw, (p + 1) * pageSize); s < end; s++) {
                                if (pos[s] < 0) continue;
                                if (pos[s] > queryPosition) {
                                    hidden = true;
                                    continue;
                                }
                                last = Math.max(last, pos[s]);
                                if (widened != null) {
                                    plain.readKey(k, layer, g, s, widened, n * hd);
                                    offs[n] = n * hd;
                                    n++;
                                    continue;
                                }
                                if (keys != null) {
                                    offs[n++] = s * hd;
                                    continue;
                                }
                                qc.read(layer, g, s, key, scratch);
                                n++;
                                if (vk != null) vk.keyBounds(key, zero, 1, max, min, 0, hd);
                                else keyBounds(key, zero, 1, max, min, hd);
                            }
                            if (keys != null && n > 0) {
                                if (vk != null) vk.keyBounds(keys, offs, n, max, min, 0, hd);
                                else keyBounds(keys, offs, n, max, min, hd);
                            }
                            if (plain != null && !hidden) plain.keepPage(layer, g, p, max, min, n, last);
                        }
                        any[b] = n > 0;
                        if (vk != null) {
                            for (int i = 0; i < hd; i++) {
                                maxT[i * block + b] = max[i];
                                minT[i * block + b] = min[i];
                            }
                            continue;
                        }
                        for (int h = 0; h < group; h++)
                            out[g * group + h][p] = n == 0 ? Float.NEGATIVE_INFINITY
                                    : questScore(qt.data, qOff + h * hd, max, min, 0, 1, hd);
                    }
                    if (vk == null) continue;
                    vk.questPageSums(qt.data, qOff, group, maxT, minT, hd, sums);
                    for (int h = 0; h < group; h++)
                        for (int b = 0; b < nb; b++) {
                            float v = any[b] ? sums[h * block + b] : Float.NEGATIVE_INFINITY;
                            // a NaN sum's payload may differ from the scalar loop's: that loop recomputes it
                            if (Float.isNaN(v)) v = questScore(qt.data, qOff + h * hd, maxT, minT, b, block, hd);
                            out[g * group + h][p0 + b] = v;
                        }
                }
            }
        });
    }

    /** Page bounds of key rows keys[offs[j], offs[j] + len), j < n: a key replaces a bound only when beyond it. */
    private static void keyBounds(float[] keys, int[] offs, int n, float[] max, float[] min, int len) {
        for (int j = 0; j < n; j++)
            for (int i = 0, o = offs[j]; i < len; i++) {
                float kv = keys[o + i];
                if (kv > max[i]) max[i] = kv;
                if (kv < min[i]) min[i] = kv;
            }
    }

    /** Σ_{i<len} max(q[qOff+i]·max[off + i·stride], q[qOff+i]·min[off + i·stride]), added left to right. */
    private static float questScore(float[] q, int qOff, float[] max, float[] min, int off, int stride, int len) {
        float sum = 0f;
        for (int i = 0; i < len; i++) {
            float qi = q[qOff + i];
            sum += Math.max(qi * max[off + i * stride], qi * min[off + i * stride]);
        }
        return sum;
    }

    /** Bytes of f32 rows in a thread's gather scratch (rows of a slot list copied together): a block that stays in L2. */
    static final int GATHER_BYTES = 64 << 10;

    /** A thread's gather scratch: {@link #rows} rows of hd floats or of hd bf16 values. */
    static final class Gather {
        int hd, rows;
        float[] f32 = new float[0];
        short[] bf16 = new short[0];

        Gather sized(int headDim) {
            if (headDim != hd) {
                hd = headDim;
                rows = Math.max(16, GATHER_BYTES / 4 / hd);
                f32 = new float[rows * hd];
                bf16 = new short[rows * hd];
            }
            return this;
        }
    }

    private static final ThreadLocal<Gather> GATHER = ThreadLocal.withInitial(Gather::new);

    private static final ThreadLocal<int[][]> WEIGHT_ROWS = ThreadLocal.withInitial(() -> new int[1][0]);

    /** This thread's buffer of at least n ints for packed bf16 weight rows (a matmul's tasks reuse it). */
    static int[] weightRows(int n) {
        return atLeast(WEIGHT_ROWS, n);
    }

    private static final ThreadLocal<int[][]> LIVE = ThreadLocal.withInitial(() -> new int[1][0]);

    /** This thread's buffer of at least n ints for the occupied slots of an evicted cache (attendGroup). */
    static int[] liveSlots(int n) {
        return atLeast(LIVE, n);
    }

    /** The int array this thread's holder keeps, grown to at least n first. */
    private static int[] atLeast(ThreadLocal<int[][]> buffer, int n) {
        int[][] holder = buffer.get();
        if (holder[0].length < n) holder[0] = new int[n];
        return holder[0];
    }

    private static final ThreadLocal<float[][]> SCORES = ThreadLocal.withInitial(() -> new float[0][0]);

    /**
     * This thread's score rows for one attention call: at least hc rows of at least m floats each, reused from call to
     * call (only [0, m) of a row is read after it is written). Allocated per call they were most of what a decode step
     * allocated (128 KB per KV head and layer at 8K tokens, about 16 MB per step of a 1B attention shape), and the
     * garbage brought collections into the steps: a 180 ms full collection of the heap that holds the KV cache.
     */
    static float[][] scoreRows(int hc, int m) {
        float[][] s = SCORES.get();
        int cols = s.length == 0 ? 0 : s[0].length;
        if (s.length < hc || cols < m) {
            s = new float[Math.max(hc, s.length)][Math.max(m, cols)];
            SCORES.set(s);
        }
        return s;
    }

    /** Whether list[0, m) is one run of consecutive slots (read in place: nothing to gather). */
    static boolean contiguous(int[] list, int m) {
        return m == 0 || list[m - 1] - list[0] == m - 1;
    }

    private static volatile int[] identity = new int[0];

    /** A shared read-only array whose first n entries are 0 .. n-1. */
    static int[] identity(int n) {
        int[] id = identity;
        if (id.length >= n) return id;
        id = new int[Math.max(n, 2 * id.length)];
        for (int i = 0; i < id.length; i++) id[i] = i;
        identity = id;
        return id;
    }

    /** The backend's thread team (between ops it is idle). */
    @Override
    public void hostParallel(int n, java.util.function.IntConsumer body) {
        par.forRange(n, 1, (from, to) -> {
            for (int i = from; i < to; i++) body.accept(i);
        });
    }

    @Override
    public void copyKvCache(KvCache src, KvCache dst) {
        if (!(src instanceof CpuKvCache s) || !(dst instanceof CpuKvCache d) || !s.sameShape(d)
                || s.keyType() != d.keyType() || s.valueType() != d.valueType())
            throw new UnsupportedOpException("copyKvCache needs two unquantized CPU caches of one shape and storage type");
        for (int l = 0; l < s.layers(); l++)
            for (int g = 0; g < s.kvHeads(); g++) d.copyRows(s, l, g, s.highWater(l, g) * s.headDim());
        d.copyFrom(s); // the destination's kept page bounds are dropped with its old contents
    }

    @Override
    public void readKv(KvCache cache, int layer, int head, int slot, float[] key, float[] value) {
        if (cache instanceof PackedKvCache pc) { pc.read(layer, head, slot, key, value); return; }
        CpuKvCache c = (CpuKvCache) cache;
        c.readKey(k, layer, head, slot, key, 0);
        c.readValue(k, layer, head, slot, value, 0);
    }

    @Override
    public void readKvRange(KvCache cache, int layer, int head, int from, int to, float[] keys, float[] values) {
        if (!(cache instanceof CpuKvCache c) || from >= to) {
            Backend.super.readKvRange(cache, layer, head, from, to, keys, values);
            return;
        }
        c.readRange(k, layer, head, from, to, keys, values);
    }

    @Override
    public void readKvHead(KvCache cache, int layer, int head, float[] keys, float[] values) {
        if (!(cache instanceof CpuKvCache c)) {
            Backend.super.readKvHead(cache, layer, head, keys, values);
            return;
        }
        c.readHead(k, layer, head, c.highWater(layer, head) * c.headDim(), keys, values);
    }

    @Override
    public void writeKv(KvCache cache, int layer, int head, int slot, float[] key, float[] value) {
        if (cache instanceof PackedKvCache pc) { pc.store(layer, head, slot, key, 0, value, 0); return; }
        ((CpuKvCache) cache).write(layer, head, slot, key, 0, value, 0);
    }

    @Override
    public int argmax(Tensor x, int row) {
        CpuTensor t = f(x);
        int best = 0, off = row * t.cols;
        for (int i = 1; i < t.cols; i++) if (t.data[off + i] > t.data[off + best]) best = i;
        return best;
    }

    @Override
    public int[] topK(Tensor x, int row, int kk, float[] valuesOut) {
        CpuTensor t = f(x);
        int off = row * t.cols, len = t.cols;
        kk = Math.min(kk, len);
        // a min-heap of the best kk (value, index); ties prefer the lower index
        int[] heap = new int[kk];
        int size = 0;
        for (int i = 0; i < len; i++) {
            if (size < kk) {
                heap[size] = i;
                siftUp(heap, size++, t.data, off);
            } else if (better(t.data, off, i, heap[0])) {
                heap[0] = i;
                siftDown(heap, size, t.data, off);
            }
        }
        Integer[] idx = new Integer[size];
        for (int i = 0; i < size; i++) idx[i] = heap[i];
        Arrays.sort(idx, (a, b) -> better(t.data, off, a, b) ? -1 : better(t.data, off, b, a) ? 1 : 0);
        int[] res = new int[size];
        for (int i = 0; i < size; i++) {
            res[i] = idx[i];
            if (valuesOut != null) valuesOut[i] = t.data[off + idx[i]];
        }
        return res;
    }

    /** a ranks before b: larger value, or equal value and lower index. */
    private static boolean better(float[] d, int off, int a, int b) {
        float va = d[off + a], vb = d[off + b];
        return va > vb || (va == vb && a < b);
    }

    private static void siftUp(int[] h, int i, float[] d, int off) {
        while (i > 0) {
            int p = (i - 1) / 2;
            if (better(d, off, h[p], h[i])) { int t = h[p]; h[p] = h[i]; h[i] = t; i = p; } else break;
        }
    }

    private static void siftDown(int[] h, int size, float[] d, int off) {
        int i = 0;
        while (true) {
            int l = 2 * i + 1, r = l + 1, w = i;
            if (l < size && better(d, off, h[w], h[l])) w = l;
            if (r < size && better(d, off, h[w], h[r])) w = r;
            if (w == i) return;
            int t = h[w]; h[w] = h[i]; h[i] = t; i = w;
        }
    }

    @Override
    public void close() {
        par.close();
    }
}
