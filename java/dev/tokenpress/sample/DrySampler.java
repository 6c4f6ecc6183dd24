package dev.tokenpress.sample;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.function.Function;

/**
 * DRY, "don't repeat yourself" (p-e-w's sampler as llama.cpp implements it, {@code dry}): a token that would extend a
 * sequence already seen in the recent context is penalized by {@code multiplier * base^(n - allowedLength)}, n the
 * length of the longest such repeat it would continue, when n >= allowedLength. Sequence breakers (strings such as a
 * newline) cut repeats: the suffix of the context considered is limited to what follows the last breaker, and a token
 * that is itself a breaker is never penalized.
 *
 * <p>Breakers are strings, matched against token texts the way llama.cpp does: a token whose text contains the
 * breaker is a single-token breaker; a token whose text ends with the breaker's beginning starts a multi-token breaker
 * whose tail is the tokenization of the rest of the string ({@link Breakers#of}). The longest repeat ending at every
 * position is found with the Z-algorithm run backwards over the window, in linear time.
 */
public final class DrySampler implements Sampler {
    private static final float FLOAT_MAX_LOG = 88.7228391f;
    private static final int MAX_CHAR_LEN = 40, MAX_SEQ_LEN = 20;

    /** Head token → tails (empty tail = a single-token breaker). */
    public static final class Breakers {
        final Map<Integer, List<int[]>> byHead;

        private Breakers(Map<Integer, List<int[]>> byHead) {
            this.byHead = byHead;
        }

        /** No breakers. */
        public static final Breakers NONE = new Breakers(Map.of());

        private static final Map<Object, Map<List<String>, Breakers>> CACHE = new java.util.WeakHashMap<>();

        /**
         * The breakers for a vocabulary: {@code tokenTexts[id]} is the text of each token (special tokens as their
         * text) and {@code tokenize} tokenizes a string without special tokens. Each string is cut to 40 characters and
         * each tail to 20 tokens (llama.cpp's limits). Results are cached per vocabulary (the texts array) and list.
         */
        public static Breakers of(List<String> breakers, String[] tokenTexts, Function<String, int[]> tokenize) {
            if (breakers.isEmpty()) return NONE;
            synchronized (CACHE) {
                Map<List<String>, Breakers> m = CACHE.computeIfAbsent(tokenTexts, k -> new HashMap<>());
                Breakers b = m.get(breakers);
                if (b == null) {
                    b = build(breakers, tokenTexts, tokenize);
                    m.put(List.copyOf(breakers), b);
                }
                return b;
            }
        }

        static Breakers build(List<String> breakers, String[] tokenTexts, Function<String, int[]> tokenize) {
            Map<Integer, List<int[]>> out = new HashMap<>();
            for (String raw : breakers) {
                if (raw == null || raw.isEmpty()) continue;
                String str = raw.length() > MAX_CHAR_LEN ? raw.substring(0, MAX_CHAR_LEN) : raw;
                for (int id = 0; id < tokenTexts.length; id++) {
                    String word = tokenTexts[id];
                    if (word == null) continue;
                    if (word.contains(str)) {
                        addTail(out, id, new int[0]);
                        continue;
                    }
                    // the token ends with a beginning of the breaker: the rest of it, tokenized, is the tail
                    for (int pos = word.indexOf(str.charAt(0)); pos >= 0; pos = word.indexOf(str.charAt(0), pos + 1)) {
                        int i = 1;
                        boolean match = true;
                        for (; i < str.length() && i + pos < word.length(); i++)
                            if (word.charAt(pos + i) != str.charAt(i)) {
                                match = false;
                                break;
                            }
                        if (!match) continue;
                        int[] tail = tokenize.apply(str.substring(i));
                        if (tail.length > MAX_SEQ_LEN) tail = Arrays.copyOf(tail, MAX_SEQ_LEN);
                        addTail(out, id, tail);
                    }
                }
            }
            return new Breakers(out);
        }

        private static void addTail(Map<Integer, List<int[]>> out, int head, int[] tail) {
            List<int[]> l = out.computeIfAbsent(head, k -> new ArrayList<>());
            for (int[] t : l) if (Arrays.equals(t, tail)) return;
            l.add(tail);
        }

        /** Whether the token alone is a breaker. */
        boolean single(int token) {
            List<int[]> l = byHead.get(token);
            if (l == null) return false;
            for (int[] t : l) if (t.length == 0) return true;
            return false;
        }
    }

    private final float multiplier, base;
    private final int allowedLength, lastN;
    private final Breakers breakers;
    private int[] history = new int[256];  // accepted tokens, oldest first
    private int count;

    /**
     * @param lastN tokens of the context scanned; -1 = all accepted tokens
     */
    public DrySampler(double multiplier, double base, int allowedLength, int lastN, Breakers breakers) {
        this.multiplier = (float) multiplier;
        this.base = (float) base;
        this.allowedLength = allowedLength;
        this.lastN = lastN;
        this.breakers = breakers == null ? Breakers.NONE : breakers;
    }

    private boolean enabled() {
        return multiplier != 0f && base >= 1f && lastN != 0;
    }

    @Override
    public String name() {
        return "dry";
    }

    @Override
    public void accept(int token) {
        if (!enabled()) return;
        if (count == history.length) {
            if (lastN > 0 && count >= 2 * lastN) { // keep the window only
                System.arraycopy(history, count - lastN, history, 0, lastN);
                count = lastN;
            } else {
                history = Arrays.copyOf(history, 2 * history.length);
            }
        }
        history[count++] = token;
    }

    @Override
    public void reset() {
        count = 0;
    }

    /** The token {@code i} places back from the newest (0 = newest), as llama.cpp's {@code rat(i)}. */
    private int rat(int i) {
        return history[count - 1 - i];
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (!enabled()) return;
        Map<Integer, Integer> maxRepeat = penalties();
        if (maxRepeat.isEmpty()) return;
        int maxExponent = base > 1.000001f ? (int) (FLOAT_MAX_LOG / (float) Math.log(base)) : 0;
        for (int i = 0; i < cur.size; i++) {
            Integer len = maxRepeat.get(cur.ids[i]);
            if (len == null || breakers.single(cur.ids[i])) continue;
            int exp = len - allowedLength;
            if (maxExponent > 0 && exp > maxExponent) exp = maxExponent;
            cur.logits[i] -= multiplier * (float) Math.pow(base, exp);
        }
        cur.sorted = false;
    }

    /** Token → the longest repeat (>= allowedLength) it would extend; empty when nothing is penalized. */
    Map<Integer, Integer> penalties() {
        int n = lastN < 0 ? count : Math.min(count, lastN);
        Map<Integer, Integer> out = new HashMap<>();
        if (n <= allowedLength) return out;
        // step 1: the repeat may not reach back past the newest breaker (a head with its whole tail)
        int repLimit = n;
        for (int i = 0; i < n; i++) {
            List<int[]> tails = breakers.byHead.get(rat(i));
            if (tails == null) continue;
            int longest = -1;
            for (int[] tail : tails) {
                if (tail.length <= longest || tail.length > i) continue;
                boolean match = true;
                for (int off = 0; off < tail.length; off++)
                    if (tail[off] != rat(i - off - 1)) {
                        match = false;
                        break;
                    }
                if (match) longest = tail.length;
            }
            if (longest >= 0) {
                repLimit = i - longest;
                break;
            }
        }
        if (repLimit < allowedLength) return out;
        // step 2: repeat[last - k] = length of the longest common suffix of the window and the window shifted by k
        // (capped at repLimit), by the Z-algorithm over the reversed window
        int last = n - 1;
        int[] repeat = new int[n];
        int lt = 0, rt = 0;
        for (int k = 1; k < n; k++) {
            if (k > rt) {
                int len = 0;
                while (len + k < n && rat(len) == rat(len + k)) len++;
                repeat[last - k] = Math.min(len, repLimit);
                if (len > 0) {
                    lt = k;
                    rt = k + len - 1;
                }
            } else {
                int p = k - lt;
                int right = rt - k + 1;
                if (repeat[last - p] < right) {
                    repeat[last - k] = Math.min(repeat[last - p], repLimit);
                } else {
                    int i = rt + 1;
                    while (i < n && rat(i) == rat(i - k)) i++;
                    repeat[last - k] = Math.min(i - k, repLimit);
                    lt = k;
                    rt = i - 1;
                }
            }
        }
        // step 3: the token after each repeat would extend it
        for (int i = 0; i < n - 1; i++) {
            int len = repeat[i];
            if (len < allowedLength) continue;
            int token = rat(n - 2 - i);
            out.merge(token, len, Math::max);
        }
        return out;
    }
}
