package dev.tokenpress.kv;

import dev.tokenpress.kv.policy.EvictingPolicy;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

/**
 * CaM's merge on h2o and a2sf: at every eviction, each evicted token whose draw falls below min(1, its score / the
 * mean score of the next `merge` kept tokens) adds value/count to those tokens' values; nothing else in the cache
 * changes (keys, other values); with a2sf's forgetting the run merges some tokens and not others.
 */
class CamMergeTest {
    static final int PROMPT = 16, STEPS = 20, CAPACITY = 64;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;

    @BeforeAll
    static void setUp() {
        config = KvTestSupport.config(3);
        model = KvTestSupport.model(dir, config, 8);
    }

    @AfterAll
    static void close() {
        model.close();
    }

    @ParameterizedTest
    @ValueSource(strings = {"h2o:budget=12,recent=6,merge=8", "a2sf:budget=12,recent=6,sink=1,alpha=0.1,merge=8"})
    void evictedValuesGoIntoTheNextKeptTokensWithTheirProbability(String spec) {
        EvictingPolicy p = (EvictingPolicy) KvPolicies.parse(spec, config);
        int m = p.mergeBudget(), hd = config.headDim();
        int[] counts = new int[2]; // merged, not merged
        KvPolicy check = new ForwardingPolicy(p) {
            @Override
            public void beforeAppend(KvCache c, int[] positions, int n) {
                int layers = config.numLayers(), heads = config.numKvHeads();
                float[][][] kb = new float[layers][heads][CAPACITY * hd], vb = new float[layers][heads][CAPACITY * hd];
                int[][][] posBefore = new int[layers][heads][];
                float[][][] score = new float[layers][heads][CAPACITY];
                for (int l = 0; l < layers; l++)
                    for (int g = 0; g < heads; g++) {
                        model.backend.readKvHead(c, l, g, kb[l][g], vb[l][g]);
                        posBefore[l][g] = c.positions(l, g).clone();
                        for (int s = 0; s < c.highWater(l, g); s++) score[l][g][s] = p.scoreOf(l, g, s);
                    }
                p.beforeAppend(c, positions, n);
                for (int l = 0; l < layers; l++)
                    for (int g = 0; g < heads; g++) {
                        float[] ka = new float[CAPACITY * hd], va = new float[CAPACITY * hd];
                        model.backend.readKvHead(c, l, g, ka, va);
                        int[] pos = c.positions(l, g), before = posBefore[l][g];
                        List<Integer> kept = new ArrayList<>(), victims = new ArrayList<>();
                        for (int s = 0; s < before.length; s++) {
                            if (before[s] < 0) continue;
                            if (pos[s] == before[s]) kept.add(s);
                            else victims.add(s);
                        }
                        kept.sort((a, b) -> Integer.compare(before[a], before[b]));
                        victims.sort((a, b) -> Integer.compare(before[a], before[b]));
                        double[][] want = new double[CAPACITY][hd];
                        for (int s : kept) for (int d = 0; d < hd; d++) want[s][d] = vb[l][g][s * hd + d];
                        for (int v : victims) {
                            List<Integer> targets = new ArrayList<>();
                            for (int s : kept) if (before[s] > before[v] && targets.size() < m) targets.add(s);
                            if (targets.isEmpty()) continue;
                            double mean = 0;
                            for (int t : targets) mean += score[l][g][t];
                            mean /= targets.size();
                            double prob = mean > 0 ? Math.min(1, score[l][g][v] / mean) : (score[l][g][v] > 0 ? 1 : 0);
                            boolean merged = EvictingPolicy.mergeDraw(l, g, before[v]) < prob;
                            counts[merged ? 0 : 1]++;
                            if (!merged) continue;
                            for (int t : targets)
                                for (int d = 0; d < hd; d++) want[t][d] += vb[l][g][v * hd + d] / targets.size();
                        }
                        for (int s : kept)
                            for (int d = 0; d < hd; d++) {
                                assertEquals(kb[l][g][s * hd + d], ka[s * hd + d], "keys stay (layer " + l + ")");
                                assertEquals(want[s][d], va[s * hd + d], 1e-5 * Math.max(1, Math.abs(want[s][d])),
                                        spec + " layer " + l + " head " + g + " position " + before[s]);
                            }
                    }
            }
        };
        model.setPolicy(check);
        try (KvCache c = model.newCache(CAPACITY)) {
            model.prefill(c, KvTestSupport.tokens(PROMPT, config.vocabSize(), 8), 0, false, null);
            for (int i = 0; i < STEPS; i++) model.decodeStep(c, model.argmax(), PROMPT + i);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        assertTrue(counts[0] > 0, spec + ": nothing merged");
        // h2o's sums favour the older victim over the newer tokens after it (probability 1); a2sf's forgetting does not
        if (spec.startsWith("a2sf")) assertTrue(counts[1] > 0, spec + ": merged " + counts[0] + ", kept apart " + counts[1]);
    }
}
