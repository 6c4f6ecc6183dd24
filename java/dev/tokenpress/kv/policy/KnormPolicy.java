package dev.tokenpress.kv.policy;

import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;

/**
 * Knorm (Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression", 2024;
 * kvpress's KnormPress): keys with a <b>low</b> L2 norm draw high attention, so the tokens whose keys have the
 * largest norm are dropped first. A token's score, -||k|| of its (rotated) key in its KV head, is fixed when the
 * token is stored, so heads of one layer may keep different tokens. Needs no attention statistics; the keys are
 * read back through {@code Backend.readKv} right after they are stored. Optional sinks and a recent window are
 * protected (kvpress has neither: the defaults are 0).
 */
public final class KnormPolicy extends BudgetedPolicy {
    private float[] k, v;

    public KnormPolicy(String spec, Budget budget, Budget recent, int sink) {
        super(spec, budget, recent, sink);
    }

    @Override
    protected void reset() {
        super.reset();
        k = new float[headDim];
        v = new float[headDim];
    }

    @Override
    public void afterAttention(KvCache c, int layer, int n, AttentionStats s) {
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = c.positions(layer, g);
            float[] sc = score[layer][g];
            for (int slot = 0, hw = c.highWater(layer, g); slot < hw; slot++) {
                if (pos[slot] < callStart) continue;  // scored when it was stored (free slots too: -1)
                backend.readKv(c, layer, g, slot, k, v);
                double sum = 0;
                for (float x : k) sum += (double) x * x;
                sc[slot] = (float) -Math.sqrt(sum);
            }
        }
    }
}
