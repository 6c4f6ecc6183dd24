package dev.tokenpress.sample;

import java.util.Arrays;

/**
 * An incremental JSON recognizer (RFC 8259): fed characters one by one, it says whether the text so far can still
 * be continued into one complete JSON value ({@link #feed} returns false at the first character that makes that
 * impossible) and whether it is one now ({@link #complete}). Leading and trailing whitespace is allowed; with
 * {@code objectOnly} the value must be an object (OpenAI's {@code json_object} response format). Copies are cheap
 * ({@link #copy}), so a sampler can try a token's text on a copy.
 */
public final class JsonPrefix {
    // states
    private static final int VALUE = 0, OBJ_FIRST = 1, OBJ_KEY = 2, OBJ_COLON = 3, OBJ_NEXT = 4, ARR_FIRST = 5,
            ARR_NEXT = 6, STRING = 7, ESCAPE = 8, UNICODE = 9, NUM_MINUS = 10, NUM_ZERO = 11, NUM_INT = 12,
            NUM_DOT = 13, NUM_FRAC = 14, NUM_E = 15, NUM_ESIGN = 16, NUM_EXP = 17, LITERAL = 18, DONE = 19, DEAD = 20;
    private static final int OBJECT = 1, ARRAY = 2;

    private final boolean objectOnly;
    private final int maxWhitespace;     // longest whitespace run between tokens (-1: any)
    private int whitespace;              // the current run
    private int state = VALUE;
    private byte[] stack = new byte[16]; // open containers
    private int depth;
    private boolean keyString;           // the string being read is an object key
    private int hexLeft;                 // \\u digits still expected
    private String literal;              // true/false/null being read
    private int literalAt;

    /** A recognizer of RFC 8259 JSON (any whitespace). */
    public JsonPrefix(boolean objectOnly) {
        this(objectOnly, -1);
    }

    /**
     * For generation: whitespace between tokens limited to runs of {@code maxWhitespace} characters and none before
     * the value (as llama.cpp's JSON grammar), so a model cannot fill its budget with blanks; -1 = RFC 8259.
     */
    public JsonPrefix(boolean objectOnly, int maxWhitespace) {
        this.objectOnly = objectOnly;
        this.maxWhitespace = maxWhitespace;
    }

    /** An independent copy in the same state. */
    public JsonPrefix copy() {
        JsonPrefix c = new JsonPrefix(objectOnly, maxWhitespace);
        c.whitespace = whitespace;
        c.state = state;
        c.stack = Arrays.copyOf(stack, Math.max(stack.length, 1));
        c.depth = depth;
        c.keyString = keyString;
        c.hexLeft = hexLeft;
        c.literal = literal;
        c.literalAt = literalAt;
        return c;
    }

    /** Makes {@code dst} (same settings) a copy of this, reusing its arrays: no allocation in the sampler's loop. */
    public void copyInto(JsonPrefix dst) {
        if (dst.stack.length < depth) dst.stack = new byte[stack.length];
        System.arraycopy(stack, 0, dst.stack, 0, depth);
        dst.depth = depth;
        dst.whitespace = whitespace;
        dst.state = state;
        dst.keyString = keyString;
        dst.hexLeft = hexLeft;
        dst.literal = literal;
        dst.literalAt = literalAt;
    }

    /** Whether the text so far is one complete JSON value (followed by nothing but whitespace). */
    public boolean complete() {
        if (state == DONE) return true;
        // a top-level number ends where the text ends
        return depth == 0 && (state == NUM_ZERO || state == NUM_INT || state == NUM_FRAC || state == NUM_EXP);
    }

    /** Whether a fed character could not continue a JSON value (nothing can follow). */
    public boolean isDead() {
        return state == DEAD;
    }

    /**
     * Whether a string's characters are being read (not an escape): then any character from U+0020 on except
     * {@code "} and {@code \} is taken as it is and leaves the state unchanged.
     */
    public boolean inString() {
        return state == STRING;
    }

    /** Whether nothing can follow but whitespace. */
    public boolean done() {
        return state == DONE;
    }

    /** Feeds every character; false (and a dead state) as soon as one cannot continue a JSON value. */
    public boolean feed(CharSequence s) {
        for (int i = 0; i < s.length(); i++) if (!feed(s.charAt(i))) return false;
        return true;
    }

    /** Feeds one character; false (and a dead state) if it cannot continue a JSON value. */
    public boolean feed(char c) {
        if (maxWhitespace >= 0 && state != STRING && state != ESCAPE && state != UNICODE && state != DEAD) {
            if (ws(c)) {
                if (++whitespace > maxWhitespace || (state == VALUE && depth == 0)) return dead();
            } else {
                whitespace = 0;
            }
        }
        return step(c);
    }

    /** The transition for one character (whitespace limits already applied). */
    private boolean step(char c) {
        switch (state) {
            case DEAD:
                return false;
            case DONE:
                return ws(c) || dead();
            case VALUE:
            case ARR_FIRST:
                if (ws(c)) return true;
                if (state == ARR_FIRST && c == ']') return closeContainer(ARRAY);
                return startValue(c);
            case OBJ_FIRST:
                if (ws(c)) return true;
                if (c == '}') return closeContainer(OBJECT);
                if (c == '"') return startString(true);
                return dead();
            case OBJ_KEY:
                if (ws(c)) return true;
                if (c == '"') return startString(true);
                return dead();
            case OBJ_COLON:
                if (ws(c)) return true;
                if (c == ':') {
                    state = VALUE;
                    return true;
                }
                return dead();
            case OBJ_NEXT:
                if (ws(c)) return true;
                if (c == ',') {
                    state = OBJ_KEY;
                    return true;
                }
                if (c == '}') return closeContainer(OBJECT);
                return dead();
            case ARR_NEXT:
                if (ws(c)) return true;
                if (c == ',') {
                    state = VALUE;
                    return true;
                }
                if (c == ']') return closeContainer(ARRAY);
                return dead();
            case STRING:
                if (c == '"') {
                    if (keyString) {
                        keyString = false;
                        state = OBJ_COLON;
                        return true;
                    }
                    return endValue();
                }
                if (c == '\\') {
                    state = ESCAPE;
                    return true;
                }
                return c >= 0x20 || dead(); // control characters must be escaped
            case ESCAPE:
                if ("\"\\/bfnrt".indexOf(c) >= 0) {
                    state = STRING;
                    return true;
                }
                if (c == 'u') {
                    state = UNICODE;
                    hexLeft = 4;
                    return true;
                }
                return dead();
            case UNICODE:
                if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) return dead();
                if (--hexLeft == 0) state = STRING;
                return true;
            case LITERAL:
                if (c != literal.charAt(literalAt)) return dead();
                if (++literalAt == literal.length()) return endValue();
                return true;
            case NUM_MINUS:
                if (c == '0') state = NUM_ZERO;
                else if (c >= '1' && c <= '9') state = NUM_INT;
                else return dead();
                return true;
            case NUM_ZERO:
                if (c == '.') state = NUM_DOT;
                else if (c == 'e' || c == 'E') state = NUM_E;
                else return endNumber(c);
                return true;
            case NUM_INT:
                if (c >= '0' && c <= '9') return true;
                if (c == '.') state = NUM_DOT;
                else if (c == 'e' || c == 'E') state = NUM_E;
                else return endNumber(c);
                return true;
            case NUM_DOT:
                if (c >= '0' && c <= '9') {
                    state = NUM_FRAC;
                    return true;
                }
                return dead();
            case NUM_FRAC:
                if (c >= '0' && c <= '9') return true;
                if (c == 'e' || c == 'E') {
                    state = NUM_E;
                    return true;
                }
                return endNumber(c);
            case NUM_E:
                if (c == '+' || c == '-') {
                    state = NUM_ESIGN;
                    return true;
                }
                if (c >= '0' && c <= '9') {
                    state = NUM_EXP;
                    return true;
                }
                return dead();
            case NUM_ESIGN:
                if (c >= '0' && c <= '9') {
                    state = NUM_EXP;
                    return true;
                }
                return dead();
            case NUM_EXP:
                if (c >= '0' && c <= '9') return true;
                return endNumber(c);
            default:
                return dead();
        }
    }

    private boolean startValue(char c) {
        boolean top = depth == 0;
        if (top && objectOnly && c != '{') return dead();
        switch (c) {
            case '{':
                push(OBJECT);
                state = OBJ_FIRST;
                return true;
            case '[':
                push(ARRAY);
                state = ARR_FIRST;
                return true;
            case '"':
                return startString(false);
            case '-':
                state = NUM_MINUS;
                return true;
            case 't':
                return startLiteral("true");
            case 'f':
                return startLiteral("false");
            case 'n':
                return startLiteral("null");
            default:
                if (c == '0') {
                    state = NUM_ZERO;
                    return true;
                }
                if (c >= '1' && c <= '9') {
                    state = NUM_INT;
                    return true;
                }
                return dead();
        }
    }

    private boolean startString(boolean key) {
        keyString = key;
        state = STRING;
        return true;
    }

    private boolean startLiteral(String word) {
        literal = word;
        literalAt = 1;
        state = LITERAL;
        return true;
    }

    /** A number ended at {@code c}, which belongs to what follows the value. */
    private boolean endNumber(char c) {
        return endValue() && step(c);
    }

    /** A value is complete: continue in its container (or finish). */
    private boolean endValue() {
        if (depth == 0) state = DONE;
        else state = stack[depth - 1] == OBJECT ? OBJ_NEXT : ARR_NEXT;
        return true;
    }

    private boolean closeContainer(int kind) {
        if (depth == 0 || stack[depth - 1] != kind) return dead();
        depth--;
        return endValue();
    }

    private void push(int kind) {
        if (depth == stack.length) stack = Arrays.copyOf(stack, depth * 2);
        stack[depth++] = (byte) kind;
    }

    private boolean dead() {
        state = DEAD;
        return false;
    }

    private static boolean ws(char c) {
        return c == ' ' || c == '\t' || c == '\n' || c == '\r';
    }
}
