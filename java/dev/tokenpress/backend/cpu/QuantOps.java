package dev.tokenpress.backend.cpu;

import dev.tokenpress.io.Half;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.SlotSelection;

import java.util.Arrays;
import java.util.List;

/**
 * The CPU backend's ops over a {@link QuantKvCache}: same contract as the f32 ops of {@link CpuBackend}; keys and
 * values are read from packed storage with the dequantization inside the dot products (no dequantized copy).
 */
final class QuantOps {
    private QuantOps() {}

    /**
     * Attention; one task per KV head, so statistics (the policy's and the cache's own) are race-free. The query
     * heads sharing a KV head are handled together: each block's key codes are unpacked once for all of them and
     * its lanes' scores are computed at once ({@link QuantBlock#keyDots}), each value row is unpacked once
     * ({@link QuantBlock#valueAxpys}). Per element the arithmetic and the order of the sums are those of the
     * per-slot {@link QuantKvCache#keyDot} and {@link QuantKvCache#valueAxpy}, so the results are unchanged.
     */
    static void attention(Parallel par, Kernels k, CpuTensor o, CpuTensor qt, QuantKvCache c, int layer, int[] queryPositions,
                          int n, SlotSelection select, AttentionStats stats) {
        int hd = c.headDim(), kvHeads = c.kvHeads();
        int heads = qt.cols / hd, group = heads / kvHeads;
        float scale = (float) (1.0 / Math.sqrt(hd));
        par.forRange(kvHeads, 1, (g0, g1) -> {
            Work w = WORK.get();
            for (int g = g0; g < g1; g++)
                for (int r = 0; r < n; r++)
                    attendGroup(c, k, layer, o, qt, r, g, group, hd, scale, queryPositions[r], select, stats, n, w);
        });
    }

    /** Per-thread work arrays of the quantized attention; they only grow. */
    private static final class Work {
        final QuantBlock.Scratch blk = new QuantBlock.Scratch();
        float[] scores = new float[0];    // [group][m]
        float[] keyScores = new float[0]; // [group][blocks·G]: q·k̂ per block lane, valid where stamp[block] == epoch
        int[] stamp = new int[0];
        int epoch;
        float[] p = new float[0], inv = new float[0];
        boolean[] skip = new boolean[0], dead = new boolean[0];

        // a value run: per (head, candidate) skip flags and weights, per (head, candidate, group) scale and zero
        // terms, the candidates' rows, their kinds (0 none, 1 f32 window row, 2 unpacked quantized row)
        boolean[] rskip = new boolean[0];
        float[] rp = new float[0], rps = new float[0], rpz = new float[0], rows = new float[0];
        byte[] kind = new byte[0];
        float[] gScale = new float[0], gZero = new float[0]; // one row's value scales and zeros per group

        void run(int group, int hd, int runLen, int blockGroup) {
            int n = group * runLen;
            if (rskip.length < n) {
                rskip = new boolean[n];
                rp = new float[n];
            }
            int ngMax = Math.max(1, hd); // at most one group per channel
            if (rps.length < n * ngMax) {
                rps = new float[n * ngMax];
                rpz = new float[n * ngMax];
            }
            rows = QuantBlock.Scratch.grow(rows, runLen * hd);
            if (kind.length < runLen) kind = new byte[runLen];
            if (gScale.length < ngMax) {
                gScale = new float[ngMax];
                gZero = new float[ngMax];
            }
        }

        /** Makes room and starts a new epoch (every block's key scores stale). */
        void begin(int group, int m, int lanes, int blocks) {
            scores = QuantBlock.Scratch.grow(scores, group * m);
            keyScores = QuantBlock.Scratch.grow(keyScores, group * lanes);
            if (p.length < group) {
                p = new float[group];
                inv = new float[group];
                skip = new boolean[group];
                dead = new boolean[group];
            }
            if (stamp.length < blocks) stamp = new int[Math.max(blocks, 2 * stamp.length)];
            if (++epoch == Integer.MAX_VALUE) {
                java.util.Arrays.fill(stamp, 0);
                epoch = 1;
            }
        }
    }

    private static final ThreadLocal<Work> WORK = ThreadLocal.withInitial(Work::new);

    /** Scores of every block lane for the query heads of one row (lazily, only blocks a slot of the list touches). */
    private static void attendGroup(QuantKvCache c, Kernels k, int layer, CpuTensor o, CpuTensor qt, int r, int g, int group,
                                    int hd, float scale, int qpos, SlotSelection select, AttentionStats stats, int n, Work w) {
        int[] pos = c.positions(layer, g), loc = c.locations(layer, g);
        List<QuantBlock> blocks = c.blockList(layer, g);
        float[] rk = c.residualKeys(layer, g), rv = c.residualValues(layer, g);
        int bg = c.group, nb = blocks.size(), lanes = nb * bg;
        int m = select == null ? c.highWater(layer, g) : select.count()[g];
        int[] list = select == null ? CpuBackend.identity(m) : select.slots()[g]; // one loop shape (see CpuBackend.attendGroup)
        int h0 = g * group, qOff = r * qt.cols + h0 * hd, oOff = r * o.cols + h0 * hd;
        w.begin(group, m, lanes, nb);
        int epoch = w.epoch;
        float[] sc = w.scores, ks = w.keyScores;
        boolean raw = stats != null && stats.rawScores != null && r == n - 1;
        for (int j = 0; j < m; j++) {
            int slot = list == null ? j : list[j];
            int p = pos[slot];
            if (p < 0 || p > qpos) {
                for (int i = 0; i < group; i++) sc[i * m + j] = Float.NEGATIVE_INFINITY;
                continue;
            }
            int l = loc[slot];
            if (l < 0) {
                int ro = (-l - 1) * hd;
                for (int i = 0; i < group; i++) {
                    float v = k.dot(qt.data, qOff + i * hd, rk, ro, hd);
                    if (raw) stats.rawScores[h0 + i][slot] = v;
                    sc[i * m + j] = v * scale;
                }
            } else {
                int b = l / bg;
                if (w.stamp[b] != epoch) {
                    blocks.get(b).keyDots(qt.data, qOff, group, ks, b * bg, lanes, w.blk, k);
                    w.stamp[b] = epoch;
                }
                for (int i = 0; i < group; i++) {
                    float v = ks[i * lanes + l];
                    if (raw) stats.rawScores[h0 + i][slot] = v;
                    sc[i * m + j] = v * scale;
                }
            }
        }
        for (int i = 0; i < group; i++) {
            int so = i * m;
            float max = Float.NEGATIVE_INFINITY;
            for (int j = 0; j < m; j++) if (sc[so + j] > max) max = sc[so + j];
            Arrays.fill(o.data, oOff + i * hd, oOff + (i + 1) * hd, 0f);
            w.dead[i] = max == Float.NEGATIVE_INFINITY;
            if (w.dead[i]) continue;
            double sum = k.expShifted(sc, so, m, max); // the f32 cache's softmax, element for element
            w.inv[i] = (float) (1.0 / sum);
        }
        boolean[] dead = w.dead;
        // the value sum in runs of candidates: rows gathered (window rows copied, quantized rows unpacked) with their
        // per-head weights, then added by quantValueRun with the outputs in registers across the run; a row with
        // channel factors or GEAR corrections ends the run and goes through valueAxpys (the same order throughout)
        w.run(group, hd, RUN, c.group);
        int ng = 1, gs = hd; // the value groups of the quantized rows seen (kinds 0 and 1 do not use them)
        for (int j0 = 0; j0 < m; j0 += RUN) {
            int j1 = Math.min(m, j0 + RUN), nt = 0, first = j0;
            for (int j = j0; j < j1; j++) {
                int slot = list == null ? j : list[j], t = nt++;
                boolean any = false;
                for (int i = 0; i < group; i++) {
                    float e = sc[i * m + j];
                    int q = i * RUN + t;
                    w.rskip[q] = dead[i] || e == 0f;
                    if (!w.rskip[q]) {
                        w.rp[q] = e * w.inv[i];
                        any = true;
                    }
                }
                w.kind[t] = 0;
                if (!any) continue;
                int l = loc[slot];
                if (l < 0) {
                    System.arraycopy(rv, (-l - 1) * hd, w.rows, t * hd, hd);
                    w.kind[t] = 1;
                    continue;
                }
                QuantBlock blk = blocks.get(l / bg);
                QuantBlock.Rows v = blk.vRows;
                int lane = l % bg;
                if (v.cf != null || blk.vLr != null) { // this row its own way, after the run before it
                    k.quantValueRun(group, t, RUN, w.kind, w.rskip, w.rp, w.rps, w.rpz, ng, gs, w.rows, hd, o.data, oOff);
                    for (int i = 0; i < group; i++) {
                        w.p[i] = w.rp[i * RUN + t];
                        w.skip[i] = w.rskip[i * RUN + t];
                    }
                    blk.valueAxpys(lane, w.p, w.skip, 0, group, o.data, oOff, w.blk, k);
                    // the statistics of the run so far and this row, then a new run after it
                    collectRun(c, stats, layer, g, group, pos, qpos, list, first, t + 1, w, collect(stats, r), dead);
                    first = j + 1;
                    nt = 0;
                    continue;
                }
                ng = v.ng;
                gs = v.gs;
                k.unpackCodes(v.codes[lane], 0, hd, v.bits[lane], w.rows, t * hd);
                for (int gg = 0; gg < ng; gg++) { // the row's f16 parameters, converted once for all heads
                    w.gScale[gg] = Half.toFloat(v.scale[lane * ng + gg]);
                    w.gZero[gg] = Half.toFloat(v.zero[lane * ng + gg]);
                }
                for (int i = 0; i < group; i++) {
                    int q = i * RUN + t;
                    if (w.rskip[q]) { // a term of exactly -0 (see Kernels.quantValueRun): adding it changes no bit
                        for (int gg = 0; gg < ng; gg++) w.rps[q * ng + gg] = w.rpz[q * ng + gg] = -0f;
                        continue;
                    }
                    float wt = w.rp[q];
                    for (int gg = 0; gg < ng; gg++) {
                        w.rps[q * ng + gg] = wt * w.gScale[gg];
                        w.rpz[q * ng + gg] = wt * w.gZero[gg];
                    }
                }
                w.kind[t] = 2;
            }
            if (nt > 0) k.quantValueRun(group, nt, RUN, w.kind, w.rskip, w.rp, w.rps, w.rpz, ng, gs, w.rows, hd, o.data, oOff);
            collectRun(c, stats, layer, g, group, pos, qpos, list, first, j1 - first, w, collect(stats, r), dead);
        }
    }

    /** Candidates per value run. */
    private static final int RUN = 32;

    private static boolean collect(AttentionStats stats, int r) {
        return stats != null && stats.probSums != null && r >= stats.fromRow;
    }

    /**
     * The statistics of a run's candidates j0 .. j0 + n − 1 (their weights at run positions 0 .. n − 1): the policy's
     * probability sums and the cache's own attention tracking, per candidate and head in order.
     */
    private static void collectRun(QuantKvCache c, AttentionStats stats, int layer, int g, int group, int[] pos, int qpos,
                                   int[] list, int j0, int n, Work w, boolean collect, boolean[] dead) {
        boolean track = c.tracks();
        if (!collect && !track) return;
        for (int t = 0; t < n; t++) {
            int slot = list == null ? j0 + t : list[j0 + t];
            for (int i = 0; i < group; i++) {
                if (dead[i]) continue;
                int q = i * RUN + t;
                if (w.rskip[q]) {
                    if (track && pos[slot] >= 0 && pos[slot] <= qpos) c.observe(layer, g, slot, 0f);
                    continue;
                }
                if (collect) stats.probSums[g][slot] += w.rp[q];
                if (track) c.observe(layer, g, slot, w.rp[q]);
            }
        }
    }

    /** q·k̂ of every slot for one query row, block-wise as in {@link #attention} (bit-identical to the per-slot dot). */
    static void queryKeyScores(Parallel par, Kernels k, float[][] out, CpuTensor qt, int row, int queryPosition, QuantKvCache c, int layer) {
        int hd = c.headDim(), heads = qt.cols / hd, group = heads / c.kvHeads(), bg = c.group;
        par.forRange(heads, 1, (h0, h1) -> {
            Work w = WORK.get();
            for (int h = h0; h < h1; h++) {
                int g = h / group, hw = c.highWater(layer, g), qOff = row * qt.cols + h * hd;
                int[] pos = c.positions(layer, g), loc = c.locations(layer, g);
                List<QuantBlock> blocks = c.blockList(layer, g);
                float[] rk = c.residualKeys(layer, g);
                int nb = blocks.size();
                w.begin(1, 0, nb * bg, nb);
                float[] o = out[h], ks = w.keyScores;
                for (int s = 0; s < hw; s++) {
                    int p = pos[s];
                    if (p < 0 || p > queryPosition) {
                        o[s] = Float.NEGATIVE_INFINITY;
                        continue;
                    }
                    int l = loc[s];
                    if (l < 0) {
                        o[s] = k.dot(qt.data, qOff, rk, (-l - 1) * hd, hd);
                        continue;
                    }
                    int b = l / bg;
                    if (w.stamp[b] != w.epoch) {
                        blocks.get(b).keyDots(qt.data, qOff, 1, ks, b * bg, 0, w.blk, k);
                        w.stamp[b] = w.epoch;
                    }
                    o[s] = ks[l];
                }
                Arrays.fill(o, hw, Math.min(o.length, c.capacity()), Float.NEGATIVE_INFINITY);
            }
        });
    }
}
