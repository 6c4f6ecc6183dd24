package dev.tokenpress.io;

import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;
import java.util.function.Function;

import static org.junit.jupiter.api.Assertions.assertEquals;

class StreamingDecoderTest {

    /** Each id is one byte; decoding is lossy UTF-8 (like a byte-level tokenizer without merges). */
    private static final Function<int[], String> BYTES = ids -> {
        byte[] b = new byte[ids.length];
        for (int i = 0; i < ids.length; i++) b[i] = (byte) ids[i];
        return new String(b, StandardCharsets.UTF_8);
    };

    private static int[] bytesOf(String s) {
        byte[] b = s.getBytes(StandardCharsets.UTF_8);
        int[] r = new int[b.length];
        for (int i = 0; i < b.length; i++) r[i] = b[i] & 0xFF;
        return r;
    }

    @Test
    void emitsCompleteCharactersOnly() {
        StreamingDecoder sd = new StreamingDecoder(BYTES);
        int[] ids = bytesOf("aé😀b");
        String[] expect = {"a", "", "é", "", "", "", "😀", "b"};
        for (int i = 0; i < ids.length; i++) assertEquals(expect[i], sd.push(ids[i]), "step " + i);
        assertEquals("", sd.flush());
        assertEquals(8, sd.tokenCount());
    }

    @Test
    void flushReleasesAnIncompleteTail() {
        StreamingDecoder sd = new StreamingDecoder(BYTES);
        int[] ids = bytesOf("x😀");
        assertEquals("x", sd.push(ids[0]));
        assertEquals("", sd.push(ids[1]));
        assertEquals("", sd.push(ids[2]));
        assertEquals("\uFFFD", sd.flush());
    }

    @Test
    void invalidByteInTheMiddleIsEventuallyEmitted() {
        StreamingDecoder sd = new StreamingDecoder(BYTES);
        StringBuilder sb = new StringBuilder();
        sb.append(sd.push('a')).append(sd.push(0x80)).append(sd.push('b')).append(sd.push('c'));
        assertEquals("a\uFFFDbc", sb.toString());
    }

    @Test
    void longStreamsConcatenateToFullDecode() {
        String text = "Streaming ünïcödé text 🎉 with many tokens. ".repeat(50);
        StreamingDecoder sd = new StreamingDecoder(BYTES);
        StringBuilder sb = new StringBuilder();
        for (int id : bytesOf(text)) sb.append(sd.push(id));
        sb.append(sd.flush());
        assertEquals(text, sb.toString());
        sd.reset();
        assertEquals(0, sd.tokenCount());
        assertEquals("h", sd.push('h'));
    }
}
