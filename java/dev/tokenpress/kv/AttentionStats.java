package dev.tokenpress.kv;

import java.util.Arrays;

/**
 * Per-slot statistics an attention call can return, for the compression policies:
 * <ul>
 *   <li>{@code rawScores[h][slot]}: the raw (unscaled) q·k of q-head h for the <b>last</b> query row of the call
 *       (TidalDecode, Quest); -infinity for slots that were not attended.</li>
 *   <li>{@code probSums[g][slot]}: post-softmax probabilities summed over the q-heads of KV head g and over the
 *       query rows {@code [fromRow, n)} of the call (H2O, A2SF, SnapKV); accumulated with +=, so a caller zeroes it.</li>
 * </ul>
 * Either array may be null when not wanted.
 */
public final class AttentionStats {
    public final float[][] rawScores;
    public final float[][] probSums;
    public int fromRow;

    public AttentionStats(float[][] rawScores, float[][] probSums, int fromRow) {
        this.rawScores = rawScores;
        this.probSums = probSums;
        this.fromRow = fromRow;
    }

    /** Allocates both outputs for a cache: rawScores [numHeads][capacity], probSums [kvHeads][capacity]. */
    public static AttentionStats allocate(int numHeads, int kvHeads, int capacity) {
        return new AttentionStats(new float[numHeads][capacity], new float[kvHeads][capacity], 0);
    }

    public void clear() {
        if (rawScores != null) for (float[] r : rawScores) Arrays.fill(r, Float.NEGATIVE_INFINITY);
        if (probSums != null) for (float[] r : probSums) Arrays.fill(r, 0f);
    }
}
