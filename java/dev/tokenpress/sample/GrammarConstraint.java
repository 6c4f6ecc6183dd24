package dev.tokenpress.sample;

import java.util.Arrays;
import java.util.Set;

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
    private final Grammar grammar;
    private final String[] texts;
    private final Set<Integer> ends;
    private final VocabIndex index;
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
        this.index = VocabIndex.of(texts);
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
        if (topK > 0 && topK < cur.size && VocabIndex.bestFirst(cur, topK, this::allows)) return;
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

    /** Which token ids may come next (end tokens aside), for the current state. */
    boolean[] mask() {
        if (maskFor == state && allowed != null) return allowed;
        boolean[] ok = allowed == null ? new boolean[texts.length] : allowed;
        Arrays.fill(ok, false);
        if (!state.closed()) synchronized (grammar) {
            VocabIndex ix = index;
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
