package dev.tokenpress.api;

import dev.tokenpress.model.LookupDrafter;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Prompt lookup decoding gives exactly the greedy tokens: the same text, stop reasons, positions, session tokens and
 * cache occupancy as plain greedy decoding, for every token limit (stops inside accepted drafts included), while
 * drafts are in fact accepted on a repetitive prompt.
 */
class LookupDecodingTest {
    static final Path MODEL = Path.of("models", "tokenpress-tiny");

    static final String PROMPT = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\n"
            + "def mul(a, b):\n    return a * b\n\n\ndef div(a, b):\n    return a / b\n\n\ndef";

    record Run(String text, int[] tokens, String stop, int position, int[] sessionTokens, int occupied) {}

    static Run run(TokenPress tp, int lookup, int maxTokens) {
        try (Session s = tp.newSession(512)) {
            s.setLookup(lookup);
            GenerationResult r = s.generate(PROMPT, maxTokens, SamplingOptions.greedy(), null);
            return new Run(r.text(), r.tokens(), r.stopReason(), s.position(), s.tokens(), s.cache().occupied(0, 0));
        }
    }

    @Test
    void sameTokensAsGreedyAndDraftsAccepted() {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        try (TokenPress tp = TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu").withThreads(2))) {
            long[] before = tp.model().draftCounts();
            for (int max : new int[] {1, 2, 3, 5, 8, 13, 40}) {
                Run plain = run(tp, 0, max), look = run(tp, 6, max);
                String at = "max " + max;
                assertEquals(plain.text(), look.text(), at);
                assertArrayEquals(plain.tokens(), look.tokens(), at);
                assertEquals(plain.stop(), look.stop(), at);
                assertEquals(plain.position(), look.position(), at);
                assertArrayEquals(plain.sessionTokens(), look.sessionTokens(), at);
                assertEquals(plain.occupied(), look.occupied(), at);
                assertEquals(look.position(), look.occupied(), "the cache holds exactly the fed tokens, " + at);
            }
            long[] after = tp.model().draftCounts();
            long drafted = after[0] - before[0], accepted = after[1] - before[1];
            System.out.printf("[lookup] drafted %d, accepted %d%n", drafted, accepted);
            assertTrue(accepted > 0 && accepted <= drafted, "drafted " + drafted + ", accepted " + accepted);
        }
    }

    @Test
    void draftsFollowTheLatestEarlierOccurrenceOfTheLongestSuffix() {
        int[] seq = {1, 2, 3, 4, 9, 2, 3, 7, 8, 1, 2, 3};
        assertArrayEquals(new int[] {4, 9}, LookupDrafter.lookup(seq, seq.length, 2), "1 2 3 (the longest suffix) was followed by 4 9");
        assertArrayEquals(new int[] {4, 9, 2, 3}, LookupDrafter.lookup(seq, seq.length, 4));
        int[] two = {1, 2, 3, 4, 9, 2, 3, 7, 8, 5, 2, 3};
        assertArrayEquals(new int[] {7, 8}, LookupDrafter.lookup(two, two.length, 2), "2 3: its latest earlier occurrence");
        assertArrayEquals(new int[] {4, 9, 2}, LookupDrafter.lookup(seq, 4 + 0 + 3, 3), "prefix 1 2 3 4 9 2 3: '2 3' after 1");
        assertArrayEquals(new int[0], LookupDrafter.lookup(new int[] {5, 6, 7}, 3, 4), "no earlier occurrence");
        assertArrayEquals(new int[] {5}, LookupDrafter.lookup(new int[] {5, 5}, 2, 4), "a repeat drafts itself");
        assertArrayEquals(new int[0], LookupDrafter.lookup(seq, seq.length, 0));
        assertArrayEquals(new int[0], LookupDrafter.lookup(new int[] {1}, 1, 3));
        int[] longer = Arrays.copyOf(seq, 20);
        assertArrayEquals(new int[] {4, 9, 2}, LookupDrafter.lookup(longer, seq.length, 3), "only [0, len) counts");
    }
}
