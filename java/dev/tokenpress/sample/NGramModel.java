package dev.tokenpress.sample;

import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

/**
 * Token n-gram counts for contexts of 1 to {@link #maxContext()} tokens (bigrams to (maxContext + 1)-grams), built from
 * token sequences: the side table Superposed Decoding interpolates with the model's distribution. {@link #prob} is the
 * maximum-likelihood estimate count(context, next) / count(context), and -1 for a context never seen (the authors'
 * convention: such an order is left out of the interpolation).
 */
public final class NGramModel {
    private final int maxContext;
    /** [context length - 1]: context -> (next token -> count), and context -> total. */
    private final Map<Key, Map<Integer, Integer>>[] next;
    private final Map<Key, Integer>[] totals;
    private long tokens;

    /** A context of tokens, compared by value. */
    private record Key(int[] t) {
        @Override public boolean equals(Object o) { return o instanceof Key k && Arrays.equals(t, k.t); }
        @Override public int hashCode() { return Arrays.hashCode(t); }
    }

    @SuppressWarnings("unchecked")
    public NGramModel(int maxContext) {
        if (maxContext < 1) throw new IllegalArgumentException("an n-gram model needs contexts of at least one token");
        this.maxContext = maxContext;
        next = new Map[maxContext];
        totals = new Map[maxContext];
        for (int i = 0; i < maxContext; i++) {
            next[i] = new HashMap<>();
            totals[i] = new HashMap<>();
        }
    }

    public int maxContext() { return maxContext; }

    /** Tokens added so far. */
    public long tokens() { return tokens; }

    /** Counts every n-gram of {@code seq} (each context length, each position). */
    public NGramModel add(int[] seq) {
        for (int end = 1; end < seq.length; end++) {
            int v = seq[end];
            for (int len = 1; len <= maxContext && len <= end; len++) {
                Key k = new Key(Arrays.copyOfRange(seq, end - len, end));
                next[len - 1].computeIfAbsent(k, x -> new HashMap<>()).merge(v, 1, Integer::sum);
                totals[len - 1].merge(k, 1, Integer::sum);
            }
        }
        tokens += seq.length;
        return this;
    }

    /**
     * P(next | the {@code len} tokens of {@code seq} ending before {@code end}) = count / total, or -1 when that
     * context never occurred (or {@code len} is outside 1..maxContext or longer than the sequence).
     */
    public double prob(int[] seq, int end, int len, int nextToken) {
        if (len < 1 || len > maxContext || len > end) return -1;
        Key k = new Key(Arrays.copyOfRange(seq, end - len, end));
        Integer total = totals[len - 1].get(k);
        if (total == null) return -1;
        return next[len - 1].get(k).getOrDefault(nextToken, 0) / (double) total;
    }
}
