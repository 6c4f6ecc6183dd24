package dev.tokenpress.model;

import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.kv.KvCache;
import org.junit.jupiter.api.Test;

import java.nio.file.Path;
import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

/**
 * SpecDec++'s stopping rule in {@link ModelDrafter}: with threshold h a draft ends at the first token n (counting from
 * 1, at least minDraft) where 1 − Π_{i<n} p_i exceeds h, p_i the draft model's probability of its i-th token, the n-th
 * token included; the tokens are those of the unlimited draft. Checked on the bundled trained model over a code prompt,
 * for every crossing point of the first drafts.
 */
class DraftStopTest {
    @Test
    void aDraftEndsWhereTheEstimatedRejectionChanceFirstExceedsTheThreshold() {
        try (TokenPress tp = TokenPress.load(Path.of("models/tokenpress-tiny"), LoadOptions.defaults().withDevice("cpu"))) {
            Llama m = tp.model();
            int[] seq = tp.tokenizer().encode("def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fib");
            int max = 10;
            int[] full;
            try (ModelDrafter d = new ModelDrafter(m, 256, 0, 0f)) {
                full = d.draft(seq, seq.length, max);
            }
            assertEquals(max, full.length);
            double[] p = new double[max];
            try (KvCache c = m.newCache(256)) { // the draft's probabilities, replayed
                m.prefill(c, seq, 0, false, null);
                for (int i = 0; i < max; i++) {
                    p[i] = ModelDrafter.probability(m.logits(), full[i]);
                    m.decodeStep(c, full[i], seq.length + i);
                }
            }
            double[] reject = new double[max + 1]; // reject[n] = 1 − Π_{i<n} p_i (1-based n)
            double prod = 1;
            for (int n = 1; n <= max; n++) {
                if (n >= 2) prod *= p[n - 2];
                reject[n] = 1 - prod;
            }
            int tested = 0;
            for (int n = 2; n <= max; n++) {
                if (!(reject[n] > reject[n - 1])) continue;
                double h = (reject[n - 1] + reject[n]) / 2; // crossed at token n
                for (int minDraft : new int[] {0, n + 1}) {
                    try (ModelDrafter d = new ModelDrafter(m, 256, minDraft, 0f)) {
                        d.setStopRejection(h);
                        int[] got = d.draft(seq, seq.length, max);
                        int want = minDraft > n ? firstAbove(reject, h, minDraft, max) : n;
                        assertEquals(want, got.length, "threshold " + h + " minDraft " + minDraft + ", rejection " + Arrays.toString(reject));
                        assertArrayEquals(Arrays.copyOf(full, want), got);
                    }
                }
                tested++;
            }
            assertTrue(tested >= 2, "crossings tested: " + tested + ", p " + Arrays.toString(p));
            try (ModelDrafter d = new ModelDrafter(m, 256, 0, 0f)) {
                assertThrows(IllegalArgumentException.class, () -> d.setStopRejection(1));
                assertThrows(IllegalArgumentException.class, () -> d.setStopRejection(-0.1));
            }
        }
    }

    private static int firstAbove(double[] reject, double h, int minDraft, int max) {
        for (int n = Math.max(1, minDraft); n <= max; n++) if (reject[n] > h) return n;
        return max;
    }
}
