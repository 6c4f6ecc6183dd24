package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicy;
import dev.tokenpress.kv.SlotSelection;
import dev.tokenpress.model.Llama;

import java.util.List;

/**
 * Policies combined with '+' in a spec ({@code h2o:budget=512+tidal:k=64}): every hook goes to each part in
 * order. At most one part selects slots for a layer; when several parts ask for attention statistics, one
 * buffer set is filled and copied to the others.
 */
public final class CompositePolicy implements KvPolicy {
    private final List<KvPolicy> parts;
    private final String spec;
    private final AttentionStats[] asked;
    private AttentionStats merged;

    public CompositePolicy(List<KvPolicy> parts) {
        this.parts = List.copyOf(parts);
        StringBuilder sb = new StringBuilder();
        for (KvPolicy p : parts) sb.append(sb.length() == 0 ? "" : "+").append(p.spec());
        this.spec = sb.toString();
        this.asked = new AttentionStats[parts.size()];
    }

    public List<KvPolicy> parts() { return parts; }

    @Override
    public String spec() { return spec; }

    @Override
    public String toString() { return spec; }

    /** Parts that run the model while attaching (RazorAttention's probe) go last, so the others see its calls attached. */
    @Override
    public void attach(Llama model) {
        for (KvPolicy p : parts) if (!runsModel(p)) p.attach(model);
        for (KvPolicy p : parts) if (runsModel(p)) p.attach(model);
    }

    private static boolean runsModel(KvPolicy p) {
        return p instanceof BasePolicy b && b.runsModelOnAttach();
    }

    @Override
    public int scratchSlots(int promptTokens) {
        int most = 0;
        for (KvPolicy p : parts) most = Math.max(most, p.scratchSlots(promptTokens));
        return most;
    }

    @Override
    public void prefillTokens(int[] tokens, int n) {
        for (KvPolicy p : parts) p.prefillTokens(tokens, n);
    }

    @Override
    public void beginPrefill(KvCache cache, int startPos, int total) {
        for (KvPolicy p : parts) p.beginPrefill(cache, startPos, total);
    }

    @Override
    public void endPrefill(KvCache cache) {
        for (KvPolicy p : parts) p.endPrefill(cache);
    }

    @Override
    public void beforeAppend(KvCache cache, int[] positions, int n) {
        for (KvPolicy p : parts) p.beforeAppend(cache, positions, n);
    }

    @Override
    public void beforeAttention(KvCache cache, int layer, Tensor q, int[] positions, int n) {
        for (KvPolicy p : parts) p.beforeAttention(cache, layer, q, positions, n);
    }

    @Override
    public SlotSelection select(KvCache cache, int layer, int n) {
        SlotSelection out = null;
        for (KvPolicy p : parts) {
            SlotSelection s = p.select(cache, layer, n);
            if (s == null) continue;
            if (out != null) throw new IllegalStateException("--kv " + spec + ": two parts select slots for layer " + layer);
            out = s;
        }
        return out;
    }

    @Override
    public AttentionStats stats(KvCache cache, int layer, int n) {
        int count = 0;
        AttentionStats only = null;
        float[][] raw = null, prob = null;
        int fromRow = 0;
        for (int i = 0; i < parts.size(); i++) {
            AttentionStats s = parts.get(i).stats(cache, layer, n);
            asked[i] = s;
            if (s == null) continue;
            count++;
            only = s;
            if (s.rawScores != null && raw == null) raw = s.rawScores;
            if (s.probSums != null) {
                if (prob != null && s.fromRow != fromRow)
                    throw new IllegalStateException("--kv " + spec + ": two parts need probability sums over different rows");
                if (prob == null) {
                    prob = s.probSums;
                    fromRow = s.fromRow;
                }
            }
        }
        if (count <= 1) return merged = only;
        merged = new AttentionStats(raw, prob, fromRow);
        return merged;
    }

    @Override
    public void afterAttention(KvCache cache, int layer, int n, AttentionStats stats) {
        for (int i = 0; i < parts.size(); i++) {
            AttentionStats s = asked[i];
            if (s != null && stats != null && s != stats) {
                // copy the filled buffers into the part's own (they were cleared by the part)
                if (s.rawScores != null && s.rawScores != stats.rawScores)
                    for (int h = 0; h < s.rawScores.length; h++)
                        System.arraycopy(stats.rawScores[h], 0, s.rawScores[h], 0, s.rawScores[h].length);
                if (s.probSums != null && s.probSums != stats.probSums)
                    for (int g = 0; g < s.probSums.length; g++)
                        for (int j = 0; j < s.probSums[g].length; j++) s.probSums[g][j] += stats.probSums[g][j];
            }
            parts.get(i).afterAttention(cache, layer, n, s);
        }
    }
}
