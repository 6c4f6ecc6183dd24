package dev.tokenpress.kv.policy;

import dev.tokenpress.kv.KvCache;

/**
 * KeyDiff (Park et al., arXiv 2504.15364; kvpress's KeyDiffPress): tokens whose keys point the way most keys point
 * carry the least distinct information, so the tokens whose key is most similar to the anchor, the mean of the KV
 * head's L2-normalized cached keys, go first: score = -cos(k, anchor). The anchor moves with the cache, so the scores
 * are recomputed from the cached keys (read with {@code Backend.readKv}) each time a layer evicts; evicting every step
 * makes this the paper's block-wise iterative form with blocks of one token. Optional sinks and a recent window are
 * protected (kvpress has neither: the defaults are 0).
 */
public final class KeyDiffPolicy extends BudgetedPolicy {
    private float[] k, v;
    private float[] keys = new float[0], values = new float[0];  // the head being scored, [slot * hd]
    private float[][] unit;  // per slot of the head being scored: the normalized key

    public KeyDiffPolicy(String spec, Budget budget, Budget recent, int sink) {
        super(spec, budget, recent, sink);
    }

    @Override
    protected void reset() {
        super.reset();
        k = new float[headDim];
        v = new float[headDim];
        unit = new float[capacity][];
    }

    @Override
    protected void beforeEviction(int layer) {
        for (int g = 0; g < kvHeads; g++) {
            KvCache c = cache;
            int[] pos = c.positions(layer, g);
            int hw = c.highWater(layer, g);
            double[] anchor = new double[headDim];
            int count = 0;
            if (keys.length < hw * headDim) {
                keys = new float[capacity * headDim];
                values = new float[capacity * headDim];
            }
            backend.readKvHead(c, layer, g, keys, values); // one bulk read of the head's cached keys
            for (int slot = 0; slot < hw; slot++) {
                if (pos[slot] < 0) continue;
                System.arraycopy(keys, slot * headDim, k, 0, headDim);
                double n2 = 0;
                for (float x : k) n2 += (double) x * x;
                float inv = n2 > 0 ? (float) (1.0 / Math.sqrt(n2)) : 0f;
                float[] u = unit[slot] == null ? (unit[slot] = new float[headDim]) : unit[slot];
                for (int d = 0; d < headDim; d++) {
                    u[d] = k[d] * inv;
                    anchor[d] += u[d];
                }
                count++;
            }
            double an = 0;
            for (int d = 0; d < headDim; d++) {
                anchor[d] /= Math.max(1, count);
                an += anchor[d] * anchor[d];
            }
            double anorm = Math.sqrt(an);
            float[] sc = score[layer][g];
            for (int slot = 0; slot < hw; slot++) {
                if (pos[slot] < 0) {
                    sc[slot] = 0f;
                    continue;
                }
                double dot = 0;
                float[] u = unit[slot];
                for (int d = 0; d < headDim; d++) dot += u[d] * anchor[d];
                sc[slot] = anorm > 0 ? (float) (-dot / anorm) : 0f; // -cos(k, anchor): the normalized key has norm 1 (or 0)
            }
        }
    }
}
