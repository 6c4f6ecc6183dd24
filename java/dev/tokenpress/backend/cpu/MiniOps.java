package dev.tokenpress.backend.cpu;

import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.SlotSelection;

import java.util.Arrays;

/**
 * The CPU backend's ops over a {@link MiniKvCache}: the contract of the f32 ops of {@link CpuBackend}, each row read
 * where it lives with its scale inside the arithmetic (q·k̂ = scale · (q·row), value weights times the value's
 * scale), so no reconstructed copy is made; the f32 cache's kernels ({@code dot4}, {@code weightedValues}) do the
 * work. An exact row has scale 1, and with no merged row among the candidates every score, exponential, sum and
 * value update has the bits of the f32 cache's attention over the same rows.
 */
final class MiniOps {
    private MiniOps() {}

    /** Attention; one task per KV head (its statistics race-free), the q-heads of the group together. */
    static void attention(Parallel par, Kernels k, CpuTensor o, CpuTensor qt, MiniKvCache c, int layer, int[] queryPositions,
                          int n, SlotSelection select, AttentionStats stats) {
        int hd = c.headDim(), kvHeads = c.kvHeads();
        int heads = qt.cols / hd, group = heads / kvHeads;
        float scale = (float) (1.0 / Math.sqrt(hd));
        par.forRange(kvHeads, 1, (g0, g1) -> {
            for (int g = g0; g < g1; g++)
                for (int r = 0; r < n; r++)
                    attendGroup(c, k, layer, o, qt, r, g, group, hd, scale, queryPositions[r], select, stats, n);
        });
    }

    private static void attendGroup(MiniKvCache c, Kernels k, int layer, CpuTensor o, CpuTensor qt, int r, int g, int hc,
                                    int hd, float scale, int qpos, SlotSelection select, AttentionStats stats, int n) {
        int[] pos = c.positions(layer, g);
        int m = select == null ? c.highWater(layer, g) : select.count()[g];
        int[] list = select == null ? CpuBackend.identity(m) : select.slots()[g];
        int h0 = g * hc;
        float[][] scores = CpuBackend.scoreRows(hc, m);
        float[] max = new float[hc];
        Arrays.fill(max, Float.NEGATIVE_INFINITY);
        boolean raws = stats != null && stats.rawScores != null && r == n - 1;
        int qBase = r * qt.cols, oBase = r * o.cols;
        float[] four = new float[4];
        boolean upper = c.isUpper(layer);
        // an upper layer's key is its pool row, or the lower layer's row at the slot (merged); others own their rows
        float[] ownKeys = c.ownKeys(upper ? layer - 1 : layer, g), kScales = c.keyScales(layer, g);
        int[] kIdx = upper ? c.keyRows(layer, g) : null;
        float[] poolKeys = upper ? c.poolKeys(layer, g) : null;
        for (int j = 0; j < m; j++) {
            int slot = list[j];
            int p = pos[slot];
            if (p < 0 || p > qpos) {
                for (int i = 0; i < hc; i++) scores[i][j] = Float.NEGATIVE_INFINITY;
                continue;
            }
            // where the key lives (as MiniKvCache.row, resolved here from the arrays fetched once per call)
            float[] rows = ownKeys;
            int off = slot * hd;
            float ks = kScales == null ? 1f : kScales[slot];
            if (kIdx != null) {
                int ix = kIdx[slot];
                if (ix >= 0) {
                    rows = poolKeys;
                    off = ix * hd;
                    ks = 1f;
                }
            }
            CpuBackend.scoreKey(k, qt.data, qBase, h0, hc, hd, rows, null, off, ks, scale, slot, j, scores, max,
                    raws ? stats.rawScores : null, four);
        }
        float[] inv = new float[hc];
        boolean[] live = new boolean[hc];
        int oOff = oBase + h0 * hd;
        if (!CpuBackend.softmaxHeads(k, scores, max, hc, m, o.data, oOff, hd, inv, live, null)) return;
        // before the value norms are folded into the weights below
        if (stats != null && stats.probSums != null && r >= stats.fromRow) CpuBackend.addProbSums(stats.probSums[g], scores, inv, live, hc, m, list);
        // the value sum with the f32 cache's kernel, the value norms folded into the weights (e·‖v‖, then ·1/Σ):
        // rows this layer owns by slot in one pass; an upper layer's shared rows (the lower layer's, by slot) and
        // its own pool rows in two, each in candidate order
        float[] vs = c.valueScales(layer, g);
        if (!upper) {
            if (vs != null)
                for (int j = 0; j < m; j++) {
                    float f = vs[list[j]];
                    if (f != 1f) for (int i = 0; i < hc; i++) scores[i][j] *= f;
                }
            k.weightedValues(scores, inv, live, hc, m, list, c.ownValues(layer, g), hd, o.data, oOff);
            return;
        }
        int[] idx = c.valueRows(layer, g);
        int shared = 0;
        for (int j = 0; j < m; j++) if (idx[list[j]] == MiniKvCache.MERGED) shared++;
        if (shared == 0) { // no merged value among the candidates: pool rows only
            int[] rows = new int[m];
            for (int j = 0; j < m; j++) rows[j] = Math.max(0, idx[list[j]]);
            k.weightedValues(scores, inv, live, hc, m, rows, c.poolValues(layer, g), hd, o.data, oOff);
            return;
        }
        int own = m - shared;
        float[][] es = new float[hc][shared], eo = new float[hc][own];
        int[] sRows = new int[shared], oRows = new int[own];
        for (int j = 0, a = 0, b = 0; j < m; j++) {
            int slot = list[j], ix = idx[slot];
            if (ix == MiniKvCache.MERGED) {
                float f = vs[slot];
                for (int i = 0; i < hc; i++) es[i][a] = scores[i][j] * f;
                sRows[a++] = slot;
            } else {
                for (int i = 0; i < hc; i++) eo[i][b] = scores[i][j];
                oRows[b++] = Math.max(0, ix); // a free slot's weight is 0
            }
        }
        k.weightedValues(es, inv, live, hc, shared, sRows, c.ownValues(layer - 1, g), hd, o.data, oOff);
        k.weightedValues(eo, inv, live, hc, own, oRows, c.poolValues(layer, g), hd, o.data, oOff);
    }

    /** Raw q·k̂ of every slot below the high-water mark (−∞ for free slots and those after the query). */
    static void queryKeyScores(Parallel par, Kernels k, float[][] out, CpuTensor qt, int row, int queryPosition,
                               MiniKvCache c, int layer) {
        int hd = c.headDim(), heads = qt.cols / hd, group = heads / c.kvHeads();
        par.forRange(heads, 1, (h0, h1) -> {
            MiniKvCache.View view = new MiniKvCache.View();
            for (int h = h0; h < h1; h++) {
                int g = h / group, hw = c.highWater(layer, g), qOff = row * qt.cols + h * hd;
                int[] pos = c.positions(layer, g);
                float[] o = out[h];
                for (int s = 0; s < hw; s++) {
                    int p = pos[s];
                    if (p < 0 || p > queryPosition) {
                        o[s] = Float.NEGATIVE_INFINITY;
                        continue;
                    }
                    c.row(layer, g, s, true, view);
                    o[s] = view.scale * k.dot(qt.data, qOff, view.rows, view.off, hd);
                }
                Arrays.fill(o, hw, Math.min(o.length, c.capacity()), Float.NEGATIVE_INFINITY);
            }
        });
    }
}
