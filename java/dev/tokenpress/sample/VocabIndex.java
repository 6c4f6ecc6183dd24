package dev.tokenpress.sample;

import java.util.Arrays;
import java.util.Map;
import java.util.WeakHashMap;
import java.util.function.IntPredicate;

/**
 * What the constraint stages ({@link GrammarConstraint}, {@link JsonConstraint}) share: the vocabulary sorted by text,
 * with each token's code points and common prefix with the previous one, so that one walk in that order checks every
 * token while sharing the recognizer's states along common prefixes (a dead prefix rules out every token that starts
 * with it); and the best-first check that decides a top-k without looking at the whole vocabulary.
 */
final class VocabIndex {
    final int[] order;   // token ids with a text, sorted by code points
    final int[][] cps;   // [i] code points of order[i]
    final int[] lcp;     // [i] common prefix length with order[i - 1]
    final int maxLen;

    private VocabIndex(String[] texts) {
        int n = 0;
        for (String t : texts) if (t != null && !t.isEmpty()) n++;
        Integer[] ids = new Integer[n];
        int[][] byId = new int[texts.length][];
        for (int i = 0, k = 0; i < texts.length; i++)
            if (texts[i] != null && !texts[i].isEmpty()) {
                ids[k++] = i;
                byId[i] = texts[i].codePoints().toArray();
            }
        Arrays.sort(ids, (a, b) -> Arrays.compare(byId[a], byId[b]));
        order = new int[n];
        cps = new int[n][];
        lcp = new int[n];
        int m = 0;
        for (int i = 0; i < n; i++) {
            order[i] = ids[i];
            cps[i] = byId[ids[i]];
            m = Math.max(m, cps[i].length);
            if (i > 0) {
                int[] a = cps[i - 1], b = cps[i];
                int l = 0;
                while (l < a.length && l < b.length && a[l] == b[l]) l++;
                lcp[i] = l;
            }
        }
        maxLen = m;
    }

    private static final Map<String[], VocabIndex> INDEXES = new WeakHashMap<>();

    /** The index of a vocabulary's texts (built once per array). */
    static VocabIndex of(String[] texts) {
        synchronized (INDEXES) {
            return INDEXES.computeIfAbsent(texts, VocabIndex::new);
        }
    }

    /**
     * The best candidates checked one by one with {@code allows} until {@code topK} are allowed (and every candidate
     * tied with the k-th is decided): those keep their logits, every other candidate gets -inf, and the top-k stage
     * that follows keeps exactly what it would keep after a full mask. False (nothing changed) when the best
     * 4·k + 64 do not decide it: then few tokens are allowed here and a full mask is the cheaper way.
     */
    static boolean bestFirst(TokenDataArray cur, int topK, IntPredicate allows) {
        int m = Math.min(cur.size, 4 * topK + 64);
        int[] idx = cur.topIndices(m);
        boolean[] ok = new boolean[m];
        int found = 0, i = 0;
        float kth = Float.NaN;
        for (; i < m; i++) {
            if (found == topK && cur.logits[idx[i]] != kth) break; // every tie with the k-th is decided too
            ok[i] = allows.test(cur.ids[idx[i]]);
            if (ok[i] && ++found == topK) kth = cur.logits[idx[i]];
        }
        if (i == m && m < cur.size) return false;
        boolean[] keep = new boolean[cur.size]; // decided: the kept ones are allowed and among the checked
        for (int j = 0; j < i; j++) if (ok[j]) keep[idx[j]] = true;
        for (int j = 0; j < cur.size; j++)
            if (!keep[j]) {
                cur.logits[j] = Float.NEGATIVE_INFINITY;
                cur.sorted = false;
            }
        return true;
    }
}
