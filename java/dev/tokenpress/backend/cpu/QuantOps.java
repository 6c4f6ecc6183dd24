package dev.tokenpress.backend.cpu;

import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.SlotSelection;

import java.util.Arrays;

/**
 * The CPU backend's ops over a {@link QuantKvCache}: same contract as the f32 ops of {@link CpuBackend}; keys and
 * values are read from packed storage with the dequantization inside the dot products (no dequantized copy).
 */
final class QuantOps {
    private QuantOps() {}

    static void storeKv(QuantKvCache c, int layer, CpuTensor kt, CpuTensor vt, int[][] slots, int n) {
        int hd = c.headDim();
        for (int g = 0; g < c.kvHeads(); g++)
            for (int i = 0; i < n; i++) c.store(layer, g, slots[g][i], kt.data, i * kt.cols + g * hd, vt.data, i * vt.cols + g * hd);
    }

    /** Attention; one task per KV head, so statistics (the policy's and the cache's own) are race-free. */
    static void attention(Parallel par, Kernels k, CpuTensor o, CpuTensor qt, QuantKvCache c, int layer, int[] queryPositions,
                          int n, SlotSelection select, AttentionStats stats) {
        int hd = c.headDim(), kvHeads = c.kvHeads();
        int heads = qt.cols / hd, group = heads / kvHeads;
        float scale = (float) (1.0 / Math.sqrt(hd));
        par.forRange(kvHeads, 1, (g0, g1) -> {
            for (int g = g0; g < g1; g++)
                for (int r = 0; r < n; r++)
                    for (int h = g * group; h < (g + 1) * group; h++)
                        attendOne(c, k, layer, o, qt, r, h, g, hd, scale, queryPositions[r], select, stats, n);
        });
    }

    private static void attendOne(QuantKvCache c, Kernels k, int layer, CpuTensor o, CpuTensor qt, int r, int h, int g, int hd,
                                  float scale, int qpos, SlotSelection select, AttentionStats stats, int n) {
        int[] pos = c.positions(layer, g);
        int m = select == null ? c.highWater(layer, g) : select.count()[g];
        int[] list = select == null ? null : select.slots()[g];
        int qOff = r * qt.cols + h * hd, oOff = r * o.cols + h * hd;
        float[] scores = new float[m];
        float max = Float.NEGATIVE_INFINITY;
        boolean lastRow = r == n - 1;
        QuantBlock.KeyQuery memo = new QuantBlock.KeyQuery();
        for (int j = 0; j < m; j++) {
            int slot = list == null ? j : list[j];
            int p = pos[slot];
            if (p < 0 || p > qpos) {
                scores[j] = Float.NEGATIVE_INFINITY;
                continue;
            }
            float raw = c.keyDot(layer, g, slot, qt.data, qOff, k, memo);
            if (stats != null && stats.rawScores != null && lastRow) stats.rawScores[h][slot] = raw;
            scores[j] = raw * scale;
            if (scores[j] > max) max = scores[j];
        }
        Arrays.fill(o.data, oOff, oOff + hd, 0f);
        if (max == Float.NEGATIVE_INFINITY) return;
        double sum = 0;
        for (int j = 0; j < m; j++) {
            float e = scores[j] == Float.NEGATIVE_INFINITY ? 0f : (float) Math.exp(scores[j] - max);
            scores[j] = e;
            sum += e;
        }
        float inv = (float) (1.0 / sum);
        boolean collect = stats != null && stats.probSums != null && r >= stats.fromRow;
        boolean track = c.tracks();
        for (int j = 0; j < m; j++) {
            int slot = list == null ? j : list[j];
            if (scores[j] == 0f) {
                if (track && pos[slot] >= 0 && pos[slot] <= qpos) c.observe(layer, g, slot, 0f);
                continue;
            }
            float p = scores[j] * inv;
            c.valueAxpy(layer, g, slot, p, o.data, oOff, k);
            if (collect) stats.probSums[g][slot] += p;
            if (track) c.observe(layer, g, slot, p);
        }
    }

    static void queryKeyScores(Parallel par, Kernels k, float[][] out, CpuTensor qt, int row, int queryPosition, QuantKvCache c, int layer) {
        int hd = c.headDim(), heads = qt.cols / hd, group = heads / c.kvHeads();
        par.forRange(heads, 1, (h0, h1) -> {
            for (int h = h0; h < h1; h++) {
                int g = h / group, hw = c.highWater(layer, g), qOff = row * qt.cols + h * hd;
                int[] pos = c.positions(layer, g);
                float[] o = out[h];
                for (int s = 0; s < hw; s++) {
                    int p = pos[s];
                    o[s] = p < 0 || p > queryPosition ? Float.NEGATIVE_INFINITY : c.keyDot(layer, g, s, qt.data, qOff, k);
                }
                Arrays.fill(o, hw, Math.min(o.length, c.capacity()), Float.NEGATIVE_INFINITY);
            }
        });
    }
}
