package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;

import java.util.Arrays;

/**
 * Quest: query-aware page selection for decode steps. Slots form pages of {@code page} slots; a page's
 * elementwise key max M and min m bound q·k by sum_i max(q_i M_i, q_i m_i) ({@code Backend.questPageScores}).
 * With P = budget / page pages allowed, a layer whose KV head holds more than P pages attends to the page of
 * the current token plus the P - 1 other pages with the highest bounds (the authors' kernel path); otherwise to
 * everything. The first {@code dense_layers} layers and the prefill stay dense. Nothing is evicted.
 *
 * <p>GQA: one page set per KV head, ranking a page by the max (or sum) of its bounds over the group's q-heads
 * (the reference selects per q-head on MHA).
 *
 * <p>Where the backend has {@link dev.tokenpress.backend.Backend#selectTopPages} (CUDA, opt-in) the selection is
 * made there (in device memory, read by the attention directly); otherwise here from the page bounds. Both select
 * the same slots from the same bounds.
 */
public final class QuestPolicy extends BasePolicy {
    private final int budget, page, denseLayers;
    private final boolean sum;
    private float[][] bounds;
    private SlotSelection pending;
    private int pendingLayer = -1;
    private boolean useOp = true; // the backend's selectTopPages (false after it reported unsupported)

    public QuestPolicy(String spec, int budget, int page, int denseLayers, boolean sum) {
        super(spec);
        this.budget = budget;
        this.page = page;
        this.denseLayers = denseLayers;
        this.sum = sum;
    }

    @Override
    public Kind kind() { return Kind.SELECTION; }

    @Override
    protected void reset() {
        bounds = new float[heads][(capacity + page - 1) / page];
        pending = null;
        pendingLayer = -1;
    }

    int pageBudget() { return Math.max(1, budget / page); }

    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        pending = null;
        pendingLayer = layer;
        if (!decoding(n) || layer < denseLayers) return;
        int pagesMax = 0;
        for (int g = 0; g < kvHeads; g++) pagesMax = Math.max(pagesMax, (c.highWater(layer, g) + page - 1) / page);
        int allowed = pageBudget();
        if (pagesMax <= allowed) return;
        if (useOp) { // on the backend (CUDA: in device memory, no host round trip) where it has the op
            try {
                pending = backend.selectTopPages(q, 0, positions[0], c, layer, page, allowed, sum, positions[0], false);
                return;
            } catch (UnsupportedOpException e) {
                useOp = false;
            }
        }
        pending = hostSelection(c, layer, q, positions[0], allowed);
    }

    /** Whether decode steps use the backend's selectTopPages op when it has one (default on; tests compare both). */
    public void setBackendSelect(boolean on) {
        useOp = on;
    }

    /** The selection of {@link dev.tokenpress.backend.Backend#selectTopPages}, computed here from the page bounds. */
    private SlotSelection hostSelection(KvCache c, int layer, Tensor q, int queryPosition, int allowed) {
        backend.questPageScores(bounds, q, 0, queryPosition, c, layer, page);
        return selectFromBounds(bounds, c, layer, group, page, allowed, sum, queryPosition, queryPosition);
    }

    /**
     * {@link dev.tokenpress.backend.Backend#selectTopPages}' selection from the page bounds {@code bounds[h][page]}
     * ({@link dev.tokenpress.backend.Backend#questPageScores} of the same query): per KV head the page of the last slot
     * holding {@code keepPosition} (the last page when none does; nothing when the head holds no page) plus the best
     * {@code allowed} − 1 other pages whose group score is finite (ties: lower page), then the visible slots of those
     * pages in slot order.
     */
    public static SlotSelection selectFromBounds(float[][] bounds, KvCache c, int layer, int group, int page, int allowed,
                                                 boolean sum, int queryPosition, int keepPosition) {
        int kvHeads = c.kvHeads();
        int[][] slots = new int[kvHeads][];
        int[] count = new int[kvHeads];
        for (int g = 0; g < kvHeads; g++) {
            int hw = c.highWater(layer, g), pages = (hw + page - 1) / page;
            int[] pos = c.positions(layer, g);
            int curSlot = -1;
            for (int s = hw - 1; s >= 0; s--) if (pos[s] == keepPosition) { curSlot = s; break; }
            int curPage = curSlot < 0 ? pages - 1 : curSlot / page;
            float[] score = new float[pages];
            for (int p = 0; p < pages; p++) {
                float v = sum ? 0f : Float.NEGATIVE_INFINITY;
                boolean any = false;
                for (int h = g * group; h < (g + 1) * group; h++) {
                    float b = bounds[h][p];
                    if (b == Float.NEGATIVE_INFINITY) continue;
                    any = true;
                    v = sum ? v + b : Math.max(v, b);
                }
                score[p] = any ? v : Float.NEGATIVE_INFINITY;
            }
            boolean[] chosen = new boolean[pages];
            if (curPage >= 0) {
                score[curPage] = Float.NEGATIVE_INFINITY;
                chosen[curPage] = true;
            }
            for (int p : TidalPolicy.topSlots(score, allowed - 1)) chosen[p] = true;
            int[] list = new int[Math.min(hw, allowed * page)];
            int m = 0;
            for (int p = 0; p < pages; p++) {
                if (!chosen[p]) continue;
                for (int s = p * page, end = Math.min(hw, (p + 1) * page); s < end; s++)
                    if (pos[s] >= 0 && pos[s] <= queryPosition) list[m++] = s;
            }
            slots[g] = m == list.length ? list : Arrays.copyOf(list, m);
            count[g] = m;
        }
        return new SlotSelection(slots, count);
    }

    @Override
    public SlotSelection select(KvCache c, int layer, int n) {
        return layer == pendingLayer ? pending : null;
    }
}
