package dev.tokenpress.kv;

import org.junit.jupiter.api.Test;

import java.util.Arrays;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * The k smallest first, in order (smallestFirst) or as a set (smallest): the same as sorting the whole range, for every k,
 * with duplicates and adversarial orders.
 */
class LongSelectTest {
    @Test
    void firstKEqualTheSortedRange() {
        SplittableRandom r = new SplittableRandom(11);
        for (int trial = 0; trial < 400; trial++) {
            int n = 1 + r.nextInt(trial < 200 ? 300 : 20000);
            long[] a = new long[n + 7];
            int kind = trial % 5;
            for (int i = 0; i < a.length; i++)
                a[i] = switch (kind) {
                    case 0 -> r.nextLong();
                    case 1 -> r.nextInt(5);                 // many duplicates
                    case 2 -> i;                            // ascending
                    case 3 -> -i;                           // descending
                    default -> (i % 2 == 0 ? i : -i) * 31L;  // organ-pipe-like
                };
            int from = 3, to = 3 + n;
            long[] sorted = a.clone();
            Arrays.sort(sorted, from, to);
            for (int k : new int[] {0, 1, 2, n / 8, n / 4, n / 2, n - 1, n, n + 5}) {
                long[] b = a.clone();
                LongSelect.smallestFirst(b, from, to, k);
                int kk = Math.max(0, Math.min(k, n));
                assertArrayEquals(Arrays.copyOfRange(sorted, from, from + kk), Arrays.copyOfRange(b, from, from + kk),
                        "n " + n + " k " + k + " kind " + kind);
                // the unordered variant: the same values in the first k, the rest a permutation of the others
                long[] u = a.clone();
                LongSelect.smallest(u, from, to, k);
                long[] head = Arrays.copyOfRange(u, from, from + kk);
                Arrays.sort(head);
                assertArrayEquals(Arrays.copyOfRange(sorted, from, from + kk), head, "smallest: n " + n + " k " + k + " kind " + kind);
                long[] tail = Arrays.copyOfRange(u, from + kk, to);
                Arrays.sort(tail);
                assertArrayEquals(Arrays.copyOfRange(sorted, from + kk, to), tail, "smallest: the others after them");
                assertEquals(a[0], u[0], "smallest: outside the range untouched");
                assertEquals(a[a.length - 1], u[u.length - 1], "smallest: outside the range untouched");
                long[] rest = Arrays.copyOfRange(b, from, to), all = Arrays.copyOfRange(a, from, to);
                Arrays.sort(rest);
                Arrays.sort(all);
                assertArrayEquals(all, rest, "a permutation of the range");
                assertEquals(a[0], b[0], "outside the range untouched");
                assertEquals(a[a.length - 1], b[b.length - 1], "outside the range untouched");
            }
        }
        assertThrows(IllegalArgumentException.class, () -> LongSelect.smallestFirst(new long[3], 2, 1, 1));
        assertThrows(IllegalArgumentException.class, () -> LongSelect.smallest(new long[3], 0, 4, 1));
    }
}
