package dev.tokenpress.api;

import org.junit.jupiter.api.Test;

import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** Stop strings over streamed pieces: what is sent never contains any part of a stop string that then completes. */
class StopTextTest {
    static String feed(StopText s, String... pieces) {
        StringBuilder sent = new StringBuilder();
        for (String p : pieces) sent.append(s.add(p));
        if (!s.hit()) sent.append(s.rest());
        return sent.toString();
    }

    @Test
    void cutsBeforeAStopThatSpansPieces() {
        StopText s = new StopText(List.of("\n\n", "END"));
        assertEquals("ab", s.add("ab"));
        assertEquals("c", s.add("c\n"), "a trailing newline may start a stop: held back");
        assertEquals("", s.add("\nmore"));
        assertTrue(s.hit());
        assertEquals("abc", s.text());
        assertEquals("", s.add("ignored"), "nothing after the stop");
    }

    @Test
    void heldBackTextComesOutWhenNoStopFollows() {
        StopText s = new StopText(List.of("END"));
        assertEquals("x", s.add("xE"));
        assertEquals("", s.add("N"));
        assertEquals("ENd", s.add("d"));
        assertFalse(s.hit());
        assertEquals("", s.rest());
        StopText t = new StopText(List.of("END"));
        assertEquals("", t.add("EN"));
        assertEquals("EN", t.rest(), "generation ended: what was held back is sent");
    }

    @Test
    void theEarliestStopWinsAndEmptyStopsAreIgnored() {
        StopText s = new StopText(List.of("", "cd", "b"));
        assertEquals("a", feed(s, "abcd"));
        assertEquals("a", s.text());
        assertEquals("", feed(new StopText(List.of("x")), "x"));
        assertEquals("hello", feed(new StopText(List.of()), "hel", "lo"));
    }

    /** Random texts and piece boundaries: the sent text is the text before the first stop, exactly. */
    @Test
    void randomPiecesAgreeWithIndexOf() {
        SplittableRandom r = new SplittableRandom(5);
        List<String> stops = List.of("aba", "cc", "bcb");
        for (int round = 0; round < 2000; round++) {
            StringBuilder t = new StringBuilder();
            int n = 1 + r.nextInt(20);
            for (int i = 0; i < n; i++) t.append("abc".charAt(r.nextInt(3)));
            String text = t.toString();
            int cut = text.length();
            for (String stop : stops) {
                int i = text.indexOf(stop);
                if (i >= 0) cut = Math.min(cut, i);
            }
            StopText s = new StopText(stops);
            StringBuilder sent = new StringBuilder();
            int at = 0;
            while (at < text.length()) {
                int len = 1 + r.nextInt(4);
                String piece = text.substring(at, Math.min(text.length(), at + len));
                at += piece.length();
                String out = s.add(piece);
                sent.append(out);
                assertTrue(text.startsWith(sent.toString()), text);
                assertTrue(sent.length() <= cut, "sent past a stop: " + text + " -> " + sent);
            }
            if (!s.hit()) sent.append(s.rest());
            assertEquals(text.substring(0, cut), sent.toString(), text);
            assertEquals(cut < text.length(), s.hit(), text);
        }
    }
}
