package dev.tokenpress.sample;

/**
 * Token n-gram counts for contexts of 1 to {@link #maxContext()} tokens (bigrams to (maxContext + 1)-grams), built from
 * token sequences: the side table Superposed Decoding interpolates with the model's distribution. {@link #prob} is the
 * maximum-likelihood estimate count(context, next) / count(context), and -1 for a context never seen (the authors'
 * convention: such an order is left out of the interpolation).
 *
 * <p>Contexts and (context, next) pairs are counted under 64-bit hashes in open-addressing tables of primitive longs and
 * ints (about 200 bytes per corpus token for five orders, against kilobytes for maps of boxed tuples); two different
 * n-grams sharing a hash (chance about n² / 2^65 for n of them) would add their counts.
 */
public final class NGramModel {
    private final int maxContext;
    private final LongIntTable[] next;   // [context length - 1]: hash(context, next) -> count
    private final LongIntTable[] totals; // [context length - 1]: hash(context) -> count of its continuations
    private long tokens;

    public NGramModel(int maxContext) {
        if (maxContext < 1) throw new IllegalArgumentException("an n-gram model needs contexts of at least one token");
        this.maxContext = maxContext;
        next = new LongIntTable[maxContext];
        totals = new LongIntTable[maxContext];
        for (int i = 0; i < maxContext; i++) {
            next[i] = new LongIntTable();
            totals[i] = new LongIntTable();
        }
    }

    public int maxContext() { return maxContext; }

    /** Tokens added so far. */
    public long tokens() { return tokens; }

    /** Counts every n-gram of {@code seq} (each context length, each position). */
    public NGramModel add(int[] seq) {
        for (int end = 1; end < seq.length; end++) {
            long h = SEED;
            for (int len = 1; len <= maxContext && len <= end; len++) {
                h = mix(h, seq[end - len]); // the context grows backwards: (seq[end-len], ..., seq[end-1]) hashed newest first
                totals[len - 1].add(h, 1);
                next[len - 1].add(mix(h ^ NEXT, seq[end]), 1);
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
        long h = SEED;
        for (int i = 1; i <= len; i++) h = mix(h, seq[end - i]);
        int total = totals[len - 1].get(h);
        if (total == 0) return -1;
        return next[len - 1].get(mix(h ^ NEXT, nextToken)) / (double) total;
    }

    private static final long SEED = 0x9E3779B97F4A7C15L, NEXT = 0xD1B54A32D192ED03L;

    /** One token into a running hash (splitmix64's finalizer over the combination). */
    private static long mix(long h, int token) {
        long z = h * 0xBF58476D1CE4E5B9L + token + 0x94D049BB133111EBL;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    /** long -> int counts, open addressing with linear probing; key 0 is stored beside the table. */
    static final class LongIntTable {
        private long[] keys = new long[16];
        private int[] values = new int[16];
        private int size;
        private int zeroValue;

        void add(long key, int delta) {
            if (key == 0) {
                zeroValue += delta;
                return;
            }
            if (2 * (size + 1) > keys.length) grow();
            int i = slot(key, keys.length);
            while (keys[i] != 0 && keys[i] != key) i = (i + 1) & (keys.length - 1);
            if (keys[i] == 0) {
                keys[i] = key;
                size++;
            }
            values[i] += delta;
        }

        int get(long key) {
            if (key == 0) return zeroValue;
            int i = slot(key, keys.length);
            while (keys[i] != 0) {
                if (keys[i] == key) return values[i];
                i = (i + 1) & (keys.length - 1);
            }
            return 0;
        }

        private static int slot(long key, int capacity) {
            return (int) (key ^ (key >>> 32)) & (capacity - 1);
        }

        private void grow() {
            long[] k = keys;
            int[] v = values;
            keys = new long[k.length * 2];
            values = new int[k.length * 2];
            for (int j = 0; j < k.length; j++) {
                if (k[j] == 0) continue;
                int i = slot(k[j], keys.length);
                while (keys[i] != 0) i = (i + 1) & (keys.length - 1);
                keys[i] = k[j];
                values[i] = v[j];
            }
        }
    }
}
