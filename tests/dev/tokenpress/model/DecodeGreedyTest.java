package dev.tokenpress.model;

import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvCacheFullException;
import dev.tokenpress.kv.KvPolicies;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * {@link Llama#decodeGreedy}: the pipelined control flow (forced here, its feedback register emulated on the host)
 * gives the plain loop's tokens and leaves the cache as the plain loop does, also when a queued step is taken back
 * (the callback refuses a token) and when the cache runs full.
 */
class DecodeGreedyTest {
    @TempDir
    Path tmp;

    private static final int PROMPT = 5;

    /** The plain loop of the contract. */
    private static int plain(Llama m, KvCache cache, int token, int position, int maxSteps, List<Integer> seen, int stopAt) {
        int s = 0;
        while (s < maxSteps) {
            m.decodeStep(cache, token, position + s++);
            token = m.argmax();
            seen.add(token);
            if (seen.size() == stopAt) break;
        }
        return s;
    }

    private record Run(int steps, List<Integer> tokens, int[][] state, float[] nextLogits) {}

    private Run run(Llama m, Boolean pipelined, int maxSteps, int stopAt, int capacity) {
        KvCache cache = m.newCache(capacity);
        int[] prompt = LlamaEndToEndTest.tokens(PROMPT, m.config.vocabSize(), 5);
        m.prefill(cache, prompt, 0, false, null);
        int first = m.argmax();
        List<Integer> seen = new ArrayList<>();
        int steps;
        if (pipelined == null) {
            steps = plain(m, cache, first, PROMPT, maxSteps, seen, stopAt);
        } else {
            m.setPipelinedGreedy(pipelined);
            try {
                steps = m.decodeGreedy(cache, first, PROMPT, maxSteps, t -> {
                    seen.add(t);
                    return seen.size() != stopAt;
                });
            } finally {
                m.setPipelinedGreedy(null);
            }
        }
        int[][] state = new int[m.config.numLayers() * m.config.numKvHeads()][];
        for (int l = 0; l < m.config.numLayers(); l++)
            for (int g = 0; g < m.config.numKvHeads(); g++) {
                int[] pos = cache.positions(l, g);
                int[] st = java.util.Arrays.copyOf(pos, pos.length + 2);
                st[pos.length] = cache.highWater(l, g);
                st[pos.length + 1] = cache.occupied(l, g);
                state[l * m.config.numKvHeads() + g] = st;
            }
        // the cache must also serve the next step as the plain loop's does
        float[] next = null;
        if (PROMPT + steps < capacity) {
            m.decodeStep(cache, seen.get(seen.size() - 1), PROMPT + steps);
            next = m.logits();
        }
        return new Run(steps, seen, state, next);
    }

    private Llama model() {
        LlamaConfig c = LlamaEndToEndTest.config("LlamaForCausalLM", 8, 2, 8, false, false, null);
        ModelWriter.write(tmp, c, DType.F32, 3, s -> {});
        return LlamaEndToEndTest.load(tmp, c, 4);
    }

    @ParameterizedTest(name = "maxSteps={0} stopAt={1}")
    @CsvSource({"12,0", "12,1", "12,7", "12,12", "1,1", "1,0", "5,3"})
    void pipelinedMatchesPlainLoop(int maxSteps, int stopAt) {
        try (Llama m = model()) {
            Run ref = run(m, null, maxSteps, stopAt, 64);
            for (Boolean mode : new Boolean[] {true, false}) {
                Run got = run(m, mode, maxSteps, stopAt, 64);
                assertEquals(ref.steps(), got.steps(), "steps, pipelined=" + mode);
                assertEquals(ref.tokens(), got.tokens(), "tokens, pipelined=" + mode);
                assertArrayEquals(ref.state(), got.state(), "cache slots/positions, pipelined=" + mode);
                assertArrayEquals(ref.nextLogits(), got.nextLogits(), "logits of the next step, pipelined=" + mode);
            }
        }
    }

    @Test
    void fullCacheThrowsOnlyForAnAcceptedToken() {
        try (Llama m = model()) {
            int capacity = PROMPT + 4;  // room for 4 decode steps
            // 6 steps asked for, every token accepted: the 5th step finds the cache full, as in the plain loop
            assertThrows(KvCacheFullException.class, () -> run(m, null, 6, 0, capacity));
            assertThrows(KvCacheFullException.class, () -> run(m, true, 6, 0, capacity));
            // the 4th token refused: the plain loop never needs a 5th slot, and neither may the pipelined one
            Run ref = run(m, null, 6, 4, capacity), got = run(m, true, 6, 4, capacity);
            assertEquals(4, got.steps());
            assertEquals(ref.tokens(), got.tokens());
            assertArrayEquals(ref.state(), got.state());
        }
    }

    /** TidalDecode is speculation-safe: pipelined (with a refused token taken back) equals the plain loop. */
    @ParameterizedTest(name = "tidal maxSteps={0} stopAt={1}")
    @CsvSource({"12,0", "12,7", "3,2"})
    void tidalPipelinedMatchesPlainLoop(int maxSteps, int stopAt) {
        try (Llama m = model()) {
            m.setPolicy(KvPolicies.parse("tidal:k=4,full_layers=0,reselect=-1", m.config));
            assertTrue(m.policy().speculationSafe());
            Run ref = run(m, null, maxSteps, stopAt, 64), got = run(m, true, maxSteps, stopAt, 64);
            assertEquals(ref.steps(), got.steps());
            assertEquals(ref.tokens(), got.tokens());
            assertArrayEquals(ref.state(), got.state());
            assertArrayEquals(ref.nextLogits(), got.nextLogits());
        }
    }

    @Test
    void evictingPolicyTakesThePlainLoop() {
        try (Llama m = model()) {
            Run ref = run(m, null, 10, 6, 64);
            m.setPolicy(KvPolicies.parse("window:sink=2,budget=6", m.config));
            assertFalse(m.policy().speculationSafe());
            Run refWindow = run(m, null, 10, 6, 64), got = run(m, true, 10, 6, 64);
            assertEquals(refWindow.tokens(), got.tokens());
            assertArrayEquals(refWindow.state(), got.state());
            assertEquals(6, ref.steps());
        }
    }
}
