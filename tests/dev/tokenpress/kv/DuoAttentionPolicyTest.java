package dev.tokenpress.kv;

import dev.tokenpress.kv.policy.DuoAttentionPolicy;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

/**
 * DuoAttention: the head scores equal the area under the cumulative attention of the mean pre-RoPE query and key,
 * rotated explicitly to their probe positions; the lowest-scored share of heads streams (sinks + recent window after
 * the prompt and at every decode step), the others keep every token; the decision stays for the sequence.
 */
class DuoAttentionPolicyTest {
    static final int PROMPT = 40, CAPACITY = 96;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;
    static int[] prompt;
    static KvTestSupport.Prefilled seen;

    @BeforeAll
    static void setUp() {
        config = KvTestSupport.config(3);
        model = KvTestSupport.model(dir, config, 8);
        prompt = KvTestSupport.tokens(PROMPT, config.vocabSize(), 41);
        seen = KvTestSupport.prefilled(model, config, prompt, CAPACITY);
    }

    @AfterAll
    static void close() {
        model.close();
    }

    /** The score by the formula with explicit rotations of the mean query (to PROBE − 1) and key (to every position). */
    static double reference(int layer, int g) {
        int hd = config.headDim(), group = config.groupSize(), probe = DuoAttentionPolicy.PROBE;
        double[] k = new double[hd], back = new double[hd];
        for (int p = 0; p < PROMPT; p++) {
            model.rope().rotate(seen.keys()[layer][g], p * hd, -p, back);
            for (int e = 0; e < hd; e++) k[e] += back[e] / PROMPT;
        }
        double total = 0;
        for (int h = g * group; h < (g + 1) * group; h++) {
            double[] q = new double[hd];
            for (int p = 0; p < PROMPT; p++) {
                model.rope().rotate(seen.queries()[layer][p], h * hd, -p, back);
                for (int e = 0; e < hd; e++) q[e] += back[e] / PROMPT;
            }
            double[] qr = rotate(q, probe - 1), kr, w = new double[probe];
            double max = Double.NEGATIVE_INFINITY, z = 0;
            for (int p = 0; p < probe; p++) {
                kr = rotate(k, p);
                double dot = 0;
                for (int e = 0; e < hd; e++) dot += qr[e] * kr[e];
                w[p] = dot / Math.sqrt(hd);
                max = Math.max(max, w[p]);
            }
            for (int p = 0; p < probe; p++) z += w[p] = Math.exp(w[p] - max);
            double cum = 0, area = 0;
            for (int p = 0; p < probe; p++) {
                cum += w[p] / z;
                area += cum;
            }
            total += area / probe;
        }
        return total / group;
    }

    /** x rotated to position p, in double (RoPE's halves convention). */
    static double[] rotate(double[] x, int p) {
        int half = x.length / 2;
        float[] inv = model.rope().invFreq();
        double[] out = new double[x.length];
        for (int j = 0; j < half; j++) {
            double a = (double) p * inv[j], c = Math.cos(a), s = Math.sin(a);
            out[j] = x[j] * c - x[j + half] * s;
            out[j + half] = x[j + half] * c + x[j] * s;
        }
        return out;
    }

    @Test
    void scoresAndStreamingHeadsFollowTheFormula() {
        DuoAttentionPolicy p = (DuoAttentionPolicy) KvPolicies.parse("duo:heads=0.5,sink=2,recent=6", config);
        model.setPolicy(p);
        try (KvCache c = model.newCache(CAPACITY)) {
            assertTrue(Double.isNaN(p.score(0, 0)));
            model.prefill(c, prompt, 0, false, null);
            int n = config.numLayers() * config.numKvHeads(), streams = 0;
            double worstStreaming = Double.NEGATIVE_INFINITY, bestRetrieval = Double.POSITIVE_INFINITY;
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) {
                    double ref = reference(l, g);
                    assertEquals(ref, p.score(l, g), 1e-9, "layer " + l + " head " + g);
                    int[] held = KvTestSupport.positions(c, l, g);
                    if (p.streaming(l, g)) {
                        streams++;
                        worstStreaming = Math.max(worstStreaming, p.score(l, g));
                        assertArrayEquals(new int[]{0, 1, 34, 35, 36, 37, 38, 39}, held, "a streaming head keeps sinks + window");
                    } else {
                        bestRetrieval = Math.min(bestRetrieval, p.score(l, g));
                        assertEquals(PROMPT, held.length, "a retrieval head keeps everything");
                    }
                }
            assertEquals(Math.round(n * 0.5), streams);
            assertTrue(worstStreaming <= bestRetrieval, "the lowest scores stream");
            for (int i = 0; i < 10; i++) {
                model.decodeStep(c, 3 + i, PROMPT + i);
                for (int l = 0; l < config.numLayers(); l++)
                    for (int g = 0; g < config.numKvHeads(); g++)
                        assertEquals(p.streaming(l, g) ? 2 + 6 : PROMPT + i + 1, c.occupied(l, g), "step " + i);
            }
            int[] window = KvTestSupport.positions(c, firstStreaming(p)[0], firstStreaming(p)[1]);
            assertArrayEquals(new int[]{0, 1, 44, 45, 46, 47, 48, 49}, window, "sinks and the newest tokens");
            // a second prompt in the same sequence keeps the decision
            boolean[][] before = new boolean[config.numLayers()][config.numKvHeads()];
            for (int l = 0; l < before.length; l++) for (int g = 0; g < before[l].length; g++) before[l][g] = p.streaming(l, g);
            model.prefill(c, KvTestSupport.tokens(5, config.vocabSize(), 2), PROMPT + 10, false, null);
            for (int l = 0; l < before.length; l++) for (int g = 0; g < before[l].length; g++) assertEquals(before[l][g], p.streaming(l, g));
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    private static int[] firstStreaming(DuoAttentionPolicy p) {
        for (int l = 0; l < config.numLayers(); l++)
            for (int g = 0; g < config.numKvHeads(); g++) if (p.streaming(l, g)) return new int[]{l, g};
        throw new AssertionError("no streaming head");
    }

    @Test
    void noStreamingHeadsOrAWindowCoveringThePromptKeepsEverything() {
        for (String spec : new String[]{"duo:heads=0,sink=2,recent=6", "duo:heads=1.0,sink=4,recent=64"}) {
            model.setPolicy(KvPolicies.parse(spec, config));
            try (KvCache c = model.newCache(CAPACITY)) {
                model.prefill(c, prompt, 0, false, null);
                for (int l = 0; l < config.numLayers(); l++)
                    for (int g = 0; g < config.numKvHeads(); g++) assertEquals(PROMPT, c.occupied(l, g), spec);
            } finally {
                model.setPolicy(KvPolicy.FULL);
            }
        }
        assertEquals("duo:heads=0.5,sink=128,recent=256", KvPolicies.parse("duoattention", config).spec());
        assertTrue(Arrays.asList(KvPolicies.names().toArray()).contains("duo"));
    }
}
