package dev.tokenpress.kv;

import dev.tokenpress.kv.policy.CompactorPolicy;
import dev.tokenpress.kv.policy.LeveragePolicy;
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
 * Compactor: the non-causal chunked attention scores equal a straightforward double-precision computation from the
 * prompt's queries and cached keys (chunks that straddle the prefill's calls, a short last chunk), the blend adds the
 * layer-normalized leverage, and each head keeps the sinks and its best tokens within the budget.
 */
class CompactorPolicyTest {
    static final int PROMPT = 40, CAPACITY = 64, SINK = 8, SINK_END = 4, CHUNK = 6;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;
    static int[] prompt;
    static float[][][] queries; // [layer][position][H*hd] of a full-cache prefill
    static float[][][] keys, values; // [layer][head][position*hd]

    @BeforeAll
    static void setUp() {
        config = KvTestSupport.config(3);
        model = KvTestSupport.model(dir, config, 8);
        prompt = KvTestSupport.tokens(PROMPT, config.vocabSize(), 21);
        KvTestSupport.Prefilled seen = KvTestSupport.prefilled(model, config, prompt, CAPACITY);
        queries = seen.queries();
        keys = seen.keys();
        values = seen.values();
    }

    @AfterAll
    static void close() {
        model.close();
    }

    /** The reference attention part of the score, z-scored over the layer: [layer][head][position] (NaN outside the slice). */
    static double[][][] rawColumns; // [layer][head][position]: the column sums, mean over the group

    static double[][][] attentionZ() {
        rawColumns = new double[config.numLayers()][config.numKvHeads()][];
        int hd = config.headDim(), group = config.groupSize(), from = SINK, to = PROMPT - SINK_END;
        double[][][] out = new double[config.numLayers()][config.numKvHeads()][PROMPT];
        for (int l = 0; l < config.numLayers(); l++) {
            double sum = 0, ss = 0;
            int count = 0;
            for (int g = 0; g < config.numKvHeads(); g++) {
                double[] col = new double[PROMPT];
                for (int start = from; start < to; start += CHUNK) {
                    int end = Math.min(to, start + CHUNK);
                    for (int h = g * group; h < (g + 1) * group; h++)
                        for (int i = start; i < end; i++) {
                            double[] d = new double[end - start];
                            double max = Double.NEGATIVE_INFINITY, z = 0;
                            for (int j = start; j < end; j++) {
                                for (int e = 0; e < hd; e++) d[j - start] += (double) queries[l][i][h * hd + e] * keys[l][g][j * hd + e];
                                max = Math.max(max, d[j - start]);
                            }
                            for (double v : d) z += Math.exp(v - max);
                            for (int j = start; j < end; j++) col[j] += Math.exp(d[j - start] - max) / z / group;
                        }
                }
                rawColumns[l][g] = col;
                double[] s = new double[PROMPT];
                for (int j = from; j < to; j++) {
                    double norm = 0;
                    for (int e = 0; e < hd; e++) norm += (double) values[l][g][j * hd + e] * values[l][g][j * hd + e];
                    s[j] = col[j] * Math.sqrt(norm);
                }
                Arrays.fill(out[l][g], Double.NaN);
                for (int j = from; j < to; j++) {
                    out[l][g][j] = ((j > from ? s[j - 1] : 0) + s[j] + (j + 1 < to ? s[j + 1] : 0)) / 3;
                    sum += out[l][g][j];
                    count++;
                }
            }
            double mean = sum / count;
            for (double[] r : out[l]) for (double v : r) if (!Double.isNaN(v)) ss += (v - mean) * (v - mean);
            double std = Math.sqrt(ss / (count - 1));
            for (double[] r : out[l]) for (int j = 0; j < PROMPT; j++) r[j] = (r[j] - mean) / std;
        }
        return out;
    }

    private static CompactorPolicy run(String spec, int keep) {
        CompactorPolicy p = (CompactorPolicy) KvPolicies.parse(spec, config);
        model.setPolicy(p);
        try (KvCache c = model.newCache(CAPACITY)) {
            model.prefill(c, prompt, 0, false, null);
            checkCut(p, c, spec, keep);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        return p;
    }

    /** Every head keeps the sinks and its best scored tokens, budget in all. */
    private static void checkCut(CompactorPolicy p, KvCache c, String spec, int keep) {
        for (int l = 0; l < config.numLayers(); l++)
            for (int g = 0; g < config.numKvHeads(); g++) {
                int[] held = KvTestSupport.positions(c, l, g);
                assertEquals(keep, held.length, spec + " layer " + l + " head " + g);
                float worstKept = Float.POSITIVE_INFINITY, bestDropped = Float.NEGATIVE_INFINITY;
                for (int pos = 0; pos < PROMPT; pos++) {
                    boolean kept = Arrays.binarySearch(held, pos) >= 0;
                    if (pos < SINK || pos >= PROMPT - SINK_END) {
                        assertTrue(kept, "sink " + pos);
                        continue;
                    }
                    float s = p.score(l, g, pos); // fresh cache: slot = position
                    if (kept) worstKept = Math.min(worstKept, s);
                    else bestDropped = Math.max(bestDropped, s);
                }
                assertTrue(worstKept >= bestDropped, spec + ": kept " + worstKept + " vs dropped " + bestDropped);
            }
    }

    @Test
    void attentionOnlyScoresEqualTheNonCausalChunkedAttentionReference() {
        CompactorPolicy p = run("compactor:budget=0.5,chunk=" + CHUNK + ",blend=0", 20);
        double[][][] ref = attentionZ();
        for (int l = 0; l < config.numLayers(); l++)
            for (int g = 0; g < config.numKvHeads(); g++)
                for (int pos = 0; pos < PROMPT; pos++) {
                    if (pos < SINK || pos >= PROMPT - SINK_END) {
                        assertTrue(Float.isNaN(p.score(l, g, pos)), "sinks are not scored");
                        continue;
                    }
                    assertEquals(ref[l][g][pos], p.score(l, g, pos), 1e-4, "layer " + l + " head " + g + " position " + pos);
                    assertEquals(rawColumns[l][g][pos], p.attention(l, g, pos), 1e-5 * Math.max(1, rawColumns[l][g][pos]), "column sum");
                }
    }

    @Test
    void theDefaultBlendAddsTheLayerNormalizedLeverageWeightedByTheShareThatGoes() {
        CompactorPolicy p = run("compactor:budget=0.75,chunk=" + CHUNK + ",seed=3", 30);
        double[][][] att = attentionZ();
        int hd = config.headDim(), m = PROMPT - SINK - SINK_END;
        for (int l = 0; l < config.numLayers(); l++) {
            double[][] lev = new double[config.numKvHeads()][];
            double sum = 0, ss = 0;
            for (int g = 0; g < config.numKvHeads(); g++) {
                double[][] x = new double[m][hd];
                for (int t = 0; t < m; t++) model.rope().rotate(keys[l][g], (SINK + t) * hd, -(SINK + t), x[t]);
                lev[g] = LeveragePolicy.leverage(x, LeveragePolicy.sketch(3L, l, g, hd, 48), 48);
                for (double v : lev[g]) sum += v;
            }
            int count = m * config.numKvHeads();
            double mean = sum / count;
            for (double[] r : lev) for (double v : r) ss += (v - mean) * (v - mean);
            double std = Math.sqrt(ss / (count - 1));
            for (int g = 0; g < config.numKvHeads(); g++)
                for (int t = 0; t < m; t++) {
                    double want = 0.25 * (lev[g][t] - mean) / std + att[l][g][SINK + t];
                    assertEquals(want, p.score(l, g, SINK + t), 2e-4, "layer " + l + " head " + g + " token " + t);
                }
        }
    }

    @Test
    void aBudgetCoveringThePromptKeepsEverythingAndAbsoluteBudgetsWork() {
        CompactorPolicy all = (CompactorPolicy) KvPolicies.parse("compactor:budget=1.0", config);
        model.setPolicy(all);
        try (KvCache c = model.newCache(CAPACITY)) {
            model.prefill(c, prompt, 0, false, null);
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) assertEquals(PROMPT, c.occupied(l, g));
            assertTrue(Float.isNaN(all.score(0, 0, 10)), "nothing scored");
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        run("compactor:budget=14,chunk=7,sketch=8", 14); // the sinks and 2 more
    }
}
