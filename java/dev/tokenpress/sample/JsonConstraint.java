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

    @Override
    public void apply(TokenDataArray cur) {
        for (int i = 0; i < cur.size; i++) {
            if (!allows(cur.ids[i])) {
                cur.logits[i] = Float.NEGATIVE_INFINITY;
                cur.sorted = false;
            }
        }
    }

    @Override
    public void accept(int token) {
        if (!following || ends.contains(token) || token < 0 || token >= texts.length || texts[token] == null) return;
        state.feed(texts[token]);
    }

    @Override
    public void reset() {
        state = fresh();
        following = false;
    }
}
