package dev.tokenpress.sample;

import java.util.Set;

/**
 * A sampling stage that keeps generated text valid JSON (as OpenAI's {@code response_format} json modes and
 * llama.cpp's JSON grammar): before the other stages it drops every candidate whose text would make the output
 * impossible to complete as one JSON value ({@link JsonPrefix}), and the end tokens (EOS, end of turn) until the
 * value is complete; once it is, only the end tokens remain, so generation stops there. Tokens whose text cannot
 * be checked on its own (special tokens, pieces of a multi-byte character) are never chosen. It follows only the
 * tokens it is told about after {@link #begin}: the prompt before it is not JSON. Whitespace outside strings comes
 * in runs of at most 20 characters and not before the value, so a model cannot spend its budget on blanks.
 */
public final class JsonConstraint implements TokenConstraint {
    private final String[] texts;
    private final Set<Integer> ends;
    private final boolean objectOnly;
    private JsonPrefix state;
    private final JsonPrefix scratch;
    private boolean following;

    /**
     * @param texts      the text of every token id (null: never allowed)
     * @param ends       token ids that end generation (allowed only once the value is complete)
     * @param objectOnly the value must be an object
     */
    public JsonConstraint(String[] texts, Set<Integer> ends, boolean objectOnly) {
        this.texts = texts;
        this.ends = ends;
        this.objectOnly = objectOnly;
        this.state = fresh();
        this.scratch = fresh();
    }

    /** Whitespace runs of at most 20 characters between tokens (none before the value), as llama.cpp's JSON grammar. */
    private JsonPrefix fresh() {
        return new JsonPrefix(objectOnly, 20);
    }

    @Override
    public String name() {
        return objectOnly ? "json-object" : "json";
    }

    /** From now on, accepted tokens are the JSON text (call after the prompt). */
    @Override
    public void begin() {
        state = fresh();
        following = true;
        accepted++;
    }

    /** The JSON text so far is one complete value. */
    public boolean complete() {
        return state.complete();
    }

    /** Whether {@code id} may come next (what {@link #apply} keeps): end tokens once complete, else a valid continuation. */
    @Override
    public boolean allows(int id) {
        if (ends.contains(id)) return state.complete();
        if (state.done() || id < 0 || id >= texts.length || texts[id] == null || texts[id].isEmpty()) return false;
        state.copyInto(scratch);
        return scratch.feed(texts[id]);
    }

    private int topK;

    /** The chain keeps only the k largest candidates next: {@link #apply} may check the best first. */
    @Override
    public void limitTo(int k) {
        topK = Math.max(0, k);
    }

    /**
     * Drops what {@link #allows} rejects: the best candidates checked one by one when they decide the chain's top-k
     * ({@link VocabIndex#bestFirst}), else every token at once by a walk over the vocabulary in text order that
     * shares the recognizer's state along common prefixes and skips every token under a dead prefix (the same
     * answer as {@link #allows} for each token: {@code JsonConstraintTest}).
     */
    @Override
    public void apply(TokenDataArray cur) {
        if (topK > 0 && topK < cur.size && VocabIndex.bestFirst(cur, topK, this::allows)) return;
        boolean[] ok = cur.size > 64 ? mask() : null;
        for (int i = 0; i < cur.size; i++) {
            int id = cur.ids[i];
            boolean keep = ok == null || ends.contains(id) ? allows(id) : id >= 0 && id < ok.length && ok[id];
            if (!keep) {
                cur.logits[i] = Float.NEGATIVE_INFINITY;
                cur.sorted = false;
            }
        }
    }

    private VocabIndex index;
    private JsonPrefix[] at;         // at[d]: the state after a token's first d code points (shared along prefixes)
    private boolean[] allowed;       // [vocab], for the state at maskFor
    private long maskFor = -1, accepted;

    /** Which token ids may come next (end tokens aside) in the current state; one walk per state. */
    boolean[] mask() {
        if (maskFor == accepted && allowed != null) return allowed;
        if (index == null) {
            index = VocabIndex.of(texts);
            at = new JsonPrefix[index.maxLen + 1];
            for (int d = 0; d < at.length; d++) at[d] = fresh();
            allowed = new boolean[texts.length];
        }
        boolean[] ok = allowed;
        java.util.Arrays.fill(ok, false);
        if (state.inString()) {
            // inside a string: a token of plain characters is taken as it is; only the others need feeding
            if (plain == null) {
                plain = new boolean[texts.length];
                for (int id = 0; id < texts.length; id++) plain[id] = plainString(texts[id]);
            }
            for (int id = 0; id < texts.length; id++)
                if (plain[id]) ok[id] = true;
                else if (texts[id] != null && !texts[id].isEmpty()) {
                    state.copyInto(scratch);
                    ok[id] = scratch.feed(texts[id]);
                }
        } else if (!state.done()) {
            VocabIndex ix = index;
            state.copyInto(at[0]);
            int valid = 0, n = ix.order.length; // at[0 .. valid] hold the previous token's prefix states
            for (int i = 0; i < n; i++) {
                int[] cp = ix.cps[i];
                // keep states only as deep as the next token shares (sorted order: no later token shares more)
                int keep = i + 1 < n ? ix.lcp[i + 1] : 0;
                int d = Math.min(ix.lcp[i], valid);
                boolean dead = at[d].isDead();
                while (!dead && d < cp.length && d < keep) {
                    at[d].copyInto(at[d + 1]);
                    dead = !feed(at[d + 1], cp[d]);
                    d++;
                }
                valid = d;
                if (!dead && d < cp.length) { // the rest of this token in one scratch state
                    at[d].copyInto(scratch);
                    for (int k = d; k < cp.length && !dead; k++) dead = !feed(scratch, cp[k]);
                }
                if (!dead) ok[ix.order[i]] = true;
            }
        }
        maskFor = accepted;
        return ok;
    }

    private boolean[] plain;         // [vocab] texts a JSON string takes as they are (see JsonPrefix.inString)

    private static boolean plainString(String t) {
        if (t == null || t.isEmpty()) return false;
        for (int i = 0; i < t.length(); i++) {
            char c = t.charAt(i);
            if (c < 0x20 || c == '"' || c == '\\') return false;
        }
        return true;
    }

    /** Feeds one code point (a surrogate pair for one beyond the BMP, as the token's String holds it). */
    private static boolean feed(JsonPrefix p, int c) {
        return c < Character.MIN_SUPPLEMENTARY_CODE_POINT ? p.feed((char) c)
                : p.feed(Character.highSurrogate(c)) && p.feed(Character.lowSurrogate(c));
    }

    @Override
    public void accept(int token) {
        if (!following || ends.contains(token) || token < 0 || token >= texts.length || texts[token] == null) return;
        state.feed(texts[token]);
        accepted++;
    }

    @Override
    public void reset() {
        state = fresh();
        following = false;
        accepted++;
    }
}
