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
}
