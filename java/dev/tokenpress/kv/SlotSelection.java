package dev.tokenpress.kv;

/**
 * Which slots each KV head of one layer attends to (token selection, e.g. TidalDecode's top-k). All q-heads of a
 * KV head's group share its list, so each selected slot is read once per group.
 *
 * @param slots  [kvHeads][>= count[h]] slot indices
 * @param count  [kvHeads] number of valid entries in slots[h] (0 = attend to nothing)
 */
public record SlotSelection(int[][] slots, int[] count) {

    public static SlotSelection of(int[][] slots) {
        int[] count = new int[slots.length];
        for (int i = 0; i < slots.length; i++) count[i] = slots[i].length;
        return new SlotSelection(slots, count);
    }

    /** Moves a[0] to its place among a[1, m), which ascend, so that a[0, m) ascends (O(m), for one extra slot). */
    public static void placeFirst(int[] a, int m) {
        if (m < 2) return;
        int v = a[0], i = 0;
        for (; i + 1 < m && a[i + 1] < v; i++) a[i] = a[i + 1];
        a[i] = v;
    }
}
