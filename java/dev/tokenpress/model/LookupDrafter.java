package dev.tokenpress.model;

import java.util.Arrays;

/**
 * Prompt lookup decoding's drafter (n-gram speculation, as llama.cpp's lookup decoding): the longest suffix (3, 2 or
 * 1 tokens) of the sequence that occurred earlier proposes the tokens that followed its latest earlier occurrence.
 * Stateless; costs no forward pass.
 */
public final class LookupDrafter implements Drafter {
    public static final LookupDrafter INSTANCE = new LookupDrafter();

    private LookupDrafter() {}

    @Override
    public int[] draft(int[] seq, int len, int max) {
        return lookup(seq, len, max);
    }

    /** The up to {@code max} tokens that followed the latest earlier occurrence of the sequence's longest suffix. */
    public static int[] lookup(int[] seq, int len, int max) {
        if (max <= 0) return new int[0];
        for (int n = Math.min(3, len - 1); n >= 1; n--) {
            // latest start i < len - n with seq[i..i+n) == seq[len-n..len)
            for (int i = len - n - 1; i >= 0; i--) {
                boolean same = true;
                for (int j = 0; j < n && same; j++) same = seq[i + j] == seq[len - n + j];
                if (same) {
                    int from = i + n, k = Math.min(max, len - from);
                    if (k > 0) return Arrays.copyOfRange(seq, from, from + k);
                }
            }
        }
        return new int[0];
    }

    @Override
    public String toString() {
        return "prompt lookup";
    }
}
