package dev.tokenpress.io;

import java.util.Arrays;
import java.util.function.Function;

/**
 * Turns a stream of generated token ids into text increments.
 *
 * <p>{@link #push(int)} returns the text that the new token completes: the decoded text so far minus what was already
 * returned. While the decoded tail is an incomplete UTF-8 sequence (a multi-byte character split across byte-level
 * tokens shows up as U+FFFD) nothing is returned; the text comes out once the character is complete. To stay cheap
 * on long generations, only a short window of recent tokens is re-decoded: the previously emitted chunk's tokens are
 * decoded as left context (so decoders that strip a leading space or merge bytes see the same neighbourhood) and the
 * difference is emitted. The concatenation of all returned pieces plus {@link #flush()} equals the decode of all ids.
 */
public final class StreamingDecoder {
    private static final char REPLACEMENT = '\uFFFD';

    private final Function<int[], String> decoder;
    private int[] ids = new int[64];
    private int size;
    private int prefixOffset;   // start of the context window
    private int readOffset;     // tokens before this index have been emitted

    /** @param decoder decodes a whole id sequence to text (e.g. {@code HfTokenizer::decode}) */
    public StreamingDecoder(Function<int[], String> decoder) {
        this.decoder = decoder;
    }

    /** Adds one token and returns the newly completed text ("" when nothing new is complete yet). */
    public String push(int id) {
        if (size == ids.length) ids = Arrays.copyOf(ids, size * 2);
        ids[size++] = id;
        String prefixText = decodeRange(prefixOffset, readOffset);
        String newText = decodeRange(prefixOffset, size);
        if (newText.length() > prefixText.length() && newText.charAt(newText.length() - 1) != REPLACEMENT
                && newText.startsWith(prefixText)) {
            String out = newText.substring(prefixText.length());
            prefixOffset = readOffset;
            readOffset = size;
            return out;
        }
        if (newText.length() > prefixText.length() && newText.charAt(newText.length() - 1) != REPLACEMENT) {
            // The context decoded differently once more tokens arrived: fall back to a full decode.
            String all = decodeRange(0, size);
            String before = decodeRange(0, readOffset);
            prefixOffset = readOffset;
            readOffset = size;
            return all.startsWith(before) ? all.substring(before.length()) : "";
        }
        return "";
    }

    /** Returns whatever is still held back (e.g. an incomplete character at the end of generation) and resets. */
    public String flush() {
        String prefixText = decodeRange(prefixOffset, readOffset);
        String newText = decodeRange(prefixOffset, size);
        String out = newText.startsWith(prefixText) ? newText.substring(prefixText.length()) : "";
        prefixOffset = size;
        readOffset = size;
        return out;
    }

    /** Number of tokens pushed so far. */
    public int tokenCount() {
        return size;
    }

    /** Forgets all tokens. */
    public void reset() {
        size = 0;
        prefixOffset = 0;
        readOffset = 0;
    }

    private String decodeRange(int from, int to) {
        if (to <= from) return "";
        return decoder.apply(Arrays.copyOfRange(ids, from, to));
    }
}
