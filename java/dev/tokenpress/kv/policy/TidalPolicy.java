package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.UnsupportedOpException;
import dev.tokenpress.kv.AttentionStats;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;

import java.util.Arrays;

/**
 * TidalDecode: position-persistent sparse attention for decode steps (prefill stays dense). Layers below
 * {@code full_layers} attend to everything. Layer {@code full_layers} (the selection layer) and layer
 * {@code reselect} attend to everything and pick the top-k tokens by raw q·k; every other layer attends only
 * to the positions picked by the latest selection layer above it, so all sparse layers between two selections
 * read the same positions. As in the authors' kernels, the current token is always kept and the other k-1
 * are the best of the rest. Nothing is evicted: memory is kept, attention reads less.
 *
 * <p>GQA: one selection per KV head, ranking a slot by the max (or sum) of its raw scores over the group's
 * q-heads, so the attention reads each selected slot once per group (the reference selects per q-head on MHA).
 *
 * <p>Where the backend has {@link dev.tokenpress.backend.Backend#selectTopSlots} and prefers it
 * ({@link dev.tokenpress.backend.Backend#selectsBeforeAttention}: CUDA) a selection layer selects through it before
 * its attention and asks for no statistics; on CUDA the selection then stays in device
 * memory when every layer holds the same positions in the same slots (this policy alone: nothing is ever freed),
 * otherwise it is downloaded to be translated per layer. Other backends use the raw-score statistics of the
 * selection layer's attention. Both paths select the same slots.
 */
public final class TidalPolicy extends BasePolicy {
    private final int k;
    private final int fullLayers;
    private final int reselectSpec; // -2 = auto, -1 = none
    private final boolean sum;
    private int reselect;
    private AttentionStats stats;
    private int[][] selSlots;      // [kvHead][k] selection in the selecting layer's slots, ascending
    private int[][] selPositions;  // [kvHead][k] their positions
    private int[] selCount;
    private int selLayer = -1;
    private SlotSelection selection;
    private boolean useOp = true;      // the backend's selectTopSlots (false after it reported unsupported)
    private boolean opChosen;          // useOp set by setBackendSelect (otherwise the backend's preference decides)
    private boolean opSelected;        // the current layer's selection was made by the op (no statistics)
    private boolean deviceOnly;        // selection has no host arrays (selSlots/selPositions not filled)

    /** @param reselect the re-selection layer; -2 = auto (13/32 of the depth, the authors' default for 32 layers), -1 = none */
    public TidalPolicy(String spec, int k, int fullLayers, int reselect, boolean sum) {
        super(spec);
        this.k = k;
        this.fullLayers = fullLayers;
        this.reselectSpec = reselect;
        this.sum = sum;
    }

    @Override
    public Kind kind() { return Kind.SELECTION; }

    /** The re-selection layer for a model of {@code layers} layers given the spec value; -1 = none. */
    public static int resolveReselect(int spec, int fullLayers, int layers) {
        int r = spec == -2 ? (int) Math.round(layers * 13.0 / 32.0) : spec;
        return r > fullLayers && r < layers ? r : -1;
    }

    @Override
    protected void onAttach() {
        reselect = resolveReselect(reselectSpec, fullLayers, layers);
    }

    /** The layer that selects (full_layers) and the re-selection layer (-1 = none), as resolved for the model. */
    public int selectionLayer() { return fullLayers; }

    public int reselectionLayer() { return reselect; }

    @Override
    protected void reset() {
        stats = new AttentionStats(new float[heads][capacity], null, 0);
        selSlots = new int[kvHeads][];
        selPositions = new int[kvHeads][];
        selCount = new int[kvHeads];
        selection = null;
        selLayer = -1;
        deviceOnly = false;
        opSelected = false;
    }

    /**
     * Whether selection layers use the backend's selectTopSlots op when it has one, or the raw-score statistics of
     * their attention (default: as {@link dev.tokenpress.backend.Backend#selectsBeforeAttention} says; tests compare both).
     */
    public void setBackendSelect(boolean on) {
        useOp = on;
        opChosen = true;
    }

    /** Evicts nothing, and each step selects anew at its selection layers before any sparse layer reads it. */
    @Override
    public boolean speculationSafe() {
        return true;
    }

    @Override
    public void beforeAttention(KvCache c, int layer, Tensor q, int[] positions, int n) {
        opSelected = false;
        if (!useOp || !decoding(n) || !selecting(layer) || !opChosen && !backend.selectsBeforeAttention()) return;
        boolean aligned = alignedLayout(c);
        SlotSelection s;
        try {
            s = backend.selectTopSlots(q, n - 1, positions[n - 1], c, layer, k, sum, callStart, !aligned);
        } catch (UnsupportedOpException e) {
            useOp = false;
            return;
        }
        opSelected = true;
        selLayer = layer;
        selection = s;
        deviceOnly = s.slots() == null;
        if (deviceOnly) return;
        for (int g = 0; g < kvHeads; g++) {
            int m = s.count()[g];
            int[] pos = c.positions(layer, g);
            selSlots[g] = java.util.Arrays.copyOf(s.slots()[g], m);
            selCount[g] = m;
            selPositions[g] = new int[m];
            for (int i = 0; i < m; i++) selPositions[g][i] = pos[selSlots[g][i]];
        }
    }

    /**
     * True when every layer holds the same positions in the same slots, so a selection in the selecting layer's
     * slots applies to every layer as is: this policy runs alone (nothing frees slots, and every layer allocates
     * the same slots for the same tokens) and no KV head has a freed slot below its high-water mark.
     */
    private boolean alignedLayout(KvCache c) {
        if (model == null || model.policy() != this) return false;
        for (int g = 0; g < kvHeads; g++) {
            int hw = c.highWater(0, g);
            for (int l = 0; l < layers; l++)
                if (c.highWater(l, g) != hw || c.occupied(l, g) != hw) return false;
        }
        return true;
    }

    private boolean selecting(int layer) { return layer == fullLayers || layer == reselect; }

    @Override
    public SlotSelection select(KvCache c, int layer, int n) {
        if (!decoding(n) || layer <= fullLayers || layer == reselect || selection == null) return null;
        return translate(layer);
    }

    @Override
    public AttentionStats stats(KvCache c, int layer, int n) {
        if (!decoding(n) || !selecting(layer) || opSelected) return null;
        stats.clear();
        return stats;
    }

    @Override
    public void afterAttention(KvCache c, int layer, int n, AttentionStats s) {
        if (s == null || !decoding(n) || !selecting(layer) || opSelected) return;
        deviceOnly = false;
        int current = callStart;
        backend.hostParallel(kvHeads, g -> {
            int hw = c.highWater(layer, g);
            int[] pos = c.positions(layer, g);
            float[] score = new float[hw];
            int cur = -1, visible = 0;
            for (int slot = 0; slot < hw; slot++) {
                float v = sum ? 0f : Float.NEGATIVE_INFINITY;
                boolean any = false;
                for (int h = g * group; h < (g + 1) * group; h++) {
                    float r = s.rawScores[h][slot];
                    if (r == Float.NEGATIVE_INFINITY) continue;
                    any = true;
                    v = sum ? v + r : Math.max(v, r);
                }
                score[slot] = any ? v : Float.NEGATIVE_INFINITY;
                if (any) visible++;
                if (pos[slot] == current) cur = slot;
            }
            int[] chosen = new int[Math.min(k, visible)];
            int m = 0;
            if (cur >= 0 && score[cur] != Float.NEGATIVE_INFINITY && chosen.length > 0) {
                chosen[m++] = cur;
                score[cur] = Float.NEGATIVE_INFINITY;
            }
            boolean withCur = m == 1;
            for (int slot : topSlotsAscending(score, chosen.length - m)) chosen[m++] = slot;
            if (withCur) SlotSelection.placeFirst(chosen, m); // the current slot among the ascending rest
            selSlots[g] = Arrays.copyOf(chosen, m);
            selCount[g] = m;
            selPositions[g] = new int[m];
            for (int i = 0; i < m; i++) selPositions[g][i] = pos[chosen[i]];
        });
        selLayer = layer;
        selection = new SlotSelection(selSlots.clone(), selCount.clone());
    }

    /** The current selection in the slots of {@code layer}: the same slots when they hold the same positions. */
    private SlotSelection translate(int layer) {
        if (deviceOnly) return selection; // every layer holds the same positions in the same slots
        boolean same = true;
        for (int g = 0; g < kvHeads && same; g++) {
            int[] pos = cache.positions(layer, g);
            for (int i = 0; i < selCount[g]; i++)
                if (selSlots[g][i] >= capacity || pos[selSlots[g][i]] != selPositions[g][i]) {
                    same = false;
                    break;
                }
        }
        if (same) return selection;
        int[][] slots = new int[kvHeads][];
        int[] count = new int[kvHeads];
        for (int g = 0; g < kvHeads; g++) {
            int[] pos = cache.positions(layer, g);
            int hw = cache.highWater(layer, g);
            java.util.HashMap<Integer, Integer> at = new java.util.HashMap<>();
            for (int s = 0; s < hw; s++) if (pos[s] >= 0) at.put(pos[s], s);
            int[] out = new int[selCount[g]];
            int m = 0;
            for (int i = 0; i < selCount[g]; i++) {
                Integer s = at.get(selPositions[g][i]);
                if (s != null) out[m++] = s;
            }
            Arrays.sort(out, 0, m);
            slots[g] = out;
            count[g] = m;
        }
        return new SlotSelection(slots, count);
    }

    /** The m slots with the largest finite scores (ties: lower slot). */
    public static int[] topSlots(float[] score, int m) {
        if (m <= 0) return new int[0];
        return TopK.largest(score, m, true);
    }

    /** {@link #topSlots}'s slots in ascending order (one pass over a mark per slot instead of sorting twice). */
    public static int[] topSlotsAscending(float[] score, int m) {
        if (m <= 0) return new int[0];
        return TopK.largestAscending(score, m, true);
    }

    /** Positions per KV head of the latest selection (for tests and logs); null before the first decode step. */
    public int[][] selectedPositions() {
        if (selection == null) return null;
        if (deviceOnly) {
            SlotSelection h = backend.hostSelection(selection);
            int[][] out = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) {
                int[] pos = cache.positions(selLayer, g);
                out[g] = new int[h.count()[g]];
                for (int i = 0; i < out[g].length; i++) out[g][i] = pos[h.slots()[g][i]];
            }
            return out;
        }
        int[][] out = new int[kvHeads][];
        for (int g = 0; g < kvHeads; g++) out[g] = selPositions[g].clone();
        return out;
    }

    /** The layer that made the latest selection (-1 = none yet). */
    public int selectionSource() { return selLayer; }
}
