package dev.tokenpress.sample;

import java.util.Arrays;
import java.util.Map;
import java.util.Set;
import java.util.WeakHashMap;

/**
 * A sampling stage that keeps generated text a prefix of a sentence of a {@link Grammar} (llama.cpp's
 * {@code --grammar}, {@code --json-schema}): every candidate whose text would leave the grammar is dropped, and the
 * end tokens until the text is a complete sentence; once no rule can go on, only the end tokens remain. Tokens whose
 * text cannot be checked on its own (special tokens, pieces of a multi-byte character) are never chosen.
 * <p>
 * All tokens are checked at once by walking the vocabulary in code-point order: a token shares the states of its
 * common prefix with the previous one, and a dead prefix rules out every token that starts with it, so a step costs
 * one pass over the vocabulary plus one memoized transition per live prefix character.
 */
public final class GrammarConstraint implements TokenConstraint {
    /** The vocabulary sorted by text, with each token's code points and common prefix with the previous one. */
    private static final class Index {
        final int[] order;   // token ids with a text, sorted by code points
        final int[][] cps;   // [i] code points of order[i]
        final int[] lcp;     // [i] common prefix length with order[i - 1]
        final int maxLen;

        Index(String[] texts) {
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
    }

    private static final Map<String[], Index> INDEXES = new WeakHashMap<>();

    private static Index index(String[] texts) {
        synchronized (INDEXES) {
            return INDEXES.computeIfAbsent(texts, Index::new);
        }
    }

    private final Grammar grammar;
    private final String[] texts;
    private final Set<Integer> ends;
    private final Index index;
    private final String name;
    private Grammar.State state;
    private boolean following;
    private Grammar.State maskFor;   // the state the mask below was computed for
    private boolean[] allowed;       // [vocab]

    /**
     * @param grammar the grammar the generated text must follow
     * @param texts   the text of every token id (null: never allowed)
     * @param ends    token ids that end generation (allowed only once the text is a sentence)
     * @param name    the stage's name in the chain, e.g. "grammar" or "json-schema"
     */
    public GrammarConstraint(Grammar grammar, String[] texts, Set<Integer> ends, String name) {
        this.grammar = grammar;
        this.texts = texts;
        this.ends = ends;
        this.name = name;
        this.index = index(texts);
        this.state = grammar.initial();
    }

    @Override
    public String name() { return name; }

    @Override
    public void begin() {
        state = grammar.initial();
        following = true;
    }

    /** The text so far is a complete sentence. */
    public boolean complete() { return state.accepting(); }

    @Override
    public boolean allows(int id) {
        if (ends.contains(id)) return state.accepting();
        if (state.closed() || id < 0 || id >= texts.length || texts[id] == null || texts[id].isEmpty()) return false;
        return !grammar.advance(state, texts[id]).dead();
    }

    private int topK;

    /**
     * Tells the stage that the chain keeps only the {@code k} largest remaining candidates next (top-k; 0 = no
     * such stage): {@link #apply} may then check candidates from the largest logit down until it has k allowed ones
     * (and every candidate tied with the k-th), and drop the rest unchecked; the top-k stage keeps exactly what it
     * would keep after a full mask.
     */
    @Override
    public void limitTo(int k) {
        topK = Math.max(0, k);
    }

    @Override
    public void apply(TokenDataArray cur) {
        if (topK > 0 && topK < cur.size && applyTopK(cur)) return;
        boolean[] ok = mask();
        for (int i = 0; i < cur.size; i++) {
            int id = cur.ids[i];
            boolean keep = ends.contains(id) ? state.accepting() : id >= 0 && id < ok.length && ok[id];
            if (!keep) {
                cur.logits[i] = Float.NEGATIVE_INFINITY;
                cur.sorted = false;
            }
        }
    }

    /** The best candidates checked one by one; false when they do not decide the top k (then mask everything). */
    private boolean applyTopK(TokenDataArray cur) {
        int m = Math.min(cur.size, 4 * topK + 64);
        int[] idx = cur.topIndices(m);
        boolean[] ok = new boolean[m];
        int found = 0, i = 0;
        float kth = Float.NaN;
        for (; i < m; i++) {
            if (found == topK && cur.logits[idx[i]] != kth) break; // every tie with the k-th is decided too
            ok[i] = allows(cur.ids[idx[i]]);
            if (ok[i] && ++found == topK) kth = cur.logits[idx[i]];
        }
        // undecided: few of the best are allowed, so few tokens are allowed at all here, and the sorted walk of
        // mask() (which skips whole dead prefixes) is the cheaper way
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

    /** Which token ids may come next (end tokens aside), for the current state. */
    boolean[] mask() {
        if (maskFor == state && allowed != null) return allowed;
        boolean[] ok = allowed == null ? new boolean[texts.length] : allowed;
        Arrays.fill(ok, false);
        if (!state.closed()) synchronized (grammar) {
            Index ix = index;
            Grammar.State[] at = new Grammar.State[ix.maxLen + 1]; // at[d]: state after the first d code points
            at[0] = state;
            int valid = 0;   // at[0 .. valid] hold the current token's prefix states
            for (int i = 0; i < ix.order.length; i++) {
                int[] cp = ix.cps[i];
                int l = Math.min(ix.lcp[i], valid);
                // the shared prefix may already be dead: then so is this token
                int d = l;
                boolean dead = at[d].dead();
                while (!dead && d < cp.length) {
                    Grammar.State s = grammar.step(at[d], cp[d]);
                    at[++d] = s;
                    dead = s.dead();
                }
                valid = d;
                if (!dead) ok[ix.order[i]] = true;
            }
        }
        allowed = ok;
        maskFor = state;
        return ok;
    }

    @Override
    public void accept(int token) {
        if (!following || ends.contains(token) || token < 0 || token >= texts.length || texts[token] == null) return;
        state = grammar.advance(state, texts[token]);
    }

    @Override
    public void reset() {
        state = grammar.initial();
        following = false;
    }
}
