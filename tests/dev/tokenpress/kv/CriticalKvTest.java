package dev.tokenpress.kv;

import dev.tokenpress.backend.WeightType;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.TreeSet;

import static org.junit.jupiter.api.Assertions.*;

/**
 * CriticalKV on SnapKV: the first share of the kept prompt tokens goes by the pooled window votes, the rest by the mean
 * vote plus epsilon times the projected value norm |v·W_o[h]|₁ (mean over the group), all recomputed here from the
 * prompt's queries, keys, values and the checkpoint's W_o; and {@code Backend.weightRows} reads weights as stored.
 */
class CriticalKvTest {
    static final int PROMPT = 40, WINDOW = 4, BUDGET = 16, CAPACITY = 64;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;
    static int[] prompt;
    static float[][][] queries;          // [layer][position][H*hd]
    static float[][][] keys, values;     // [layer][head][position*hd]
    static float[][] wo;                 // [layer][D * H*hd], from the checkpoint

    @BeforeAll
    static void setUp() {
        config = KvTestSupport.config(2);
        model = KvTestSupport.model(dir, config, 8);
        prompt = KvTestSupport.tokens(PROMPT, config.vocabSize(), 31);
        KvTestSupport.Prefilled seen = KvTestSupport.prefilled(model, config, prompt, CAPACITY);
        queries = seen.queries();
        keys = seen.keys();
        values = seen.values();
        wo = new float[config.numLayers()][];
        try (SafeTensors st = SafeTensors.open(dir)) {
            for (int l = 0; l < config.numLayers(); l++) wo[l] = st.get("model.layers." + l + ".self_attn.o_proj.weight").toFloats();
        }
    }

    @AfterAll
    static void close() {
        model.close();
    }

    @Test
    void weightRowsReadTheWeightsAsTheBackendHoldsThem() {
        int width = config.numHeads() * config.headDim();
        float[] got = new float[3 * width];
        model.backend.weightRows(model.weights().layers()[1].wo(), 5, 3, got);
        assertArrayEquals(Arrays.copyOfRange(wo[1], 5 * width, 8 * width), got, "f32 checkpoint rows");
        try (SafeTensors st = SafeTensors.open(dir); CpuBackend q8 = new CpuBackend(1)) {
            q8.setWeightType(WeightType.Q8_0);
            Weights w = Weights.load(st, config, q8, null);
            float[] deq = new float[3 * width];
            q8.weightRows(w.layers()[1].wo(), 5, 3, deq);
            for (int i = 0; i < deq.length; i++) {
                float ref = wo[1][5 * width + i];
                assertEquals(ref, deq[i], 0.02 * Math.abs(ref) + 2e-3, "q8_0 row element " + i);
            }
            assertFalse(Arrays.equals(got, deq), "the q8_0 rows are the dequantized codes");
        }
    }

    /** The window's votes over the older tokens of (l, g), summed over its rows and the group's q-heads, max-pooled. */
    static double[] pooledVotes(int l, int g) {
        int hd = config.headDim(), group = config.groupSize(), old = PROMPT - WINDOW;
        double[] vote = new double[old];
        for (int h = g * group; h < (g + 1) * group; h++)
            for (int r = PROMPT - WINDOW; r < PROMPT; r++) {
                double[] z = new double[r + 1];
                double max = Double.NEGATIVE_INFINITY, sum = 0;
                for (int j = 0; j <= r; j++) {
                    for (int e = 0; e < hd; e++) z[j] += (double) queries[l][r][h * hd + e] * keys[l][g][j * hd + e];
                    z[j] /= Math.sqrt(hd);
                    max = Math.max(max, z[j]);
                }
                for (int j = 0; j <= r; j++) sum += Math.exp(z[j] - max);
                for (int j = 0; j < old; j++) vote[j] += Math.exp(z[j] - max) / sum;
            }
        double[] pooled = new double[old];
        for (int j = 0; j < old; j++) pooled[j] = Math.max(vote[j], Math.max(j > 0 ? vote[j - 1] : 0, j + 1 < old ? vote[j + 1] : 0));
        return pooled;
    }

    /** Token indices by vote, highest first. */
    static Integer[] byVote(double[] pooled) {
        Integer[] order = new Integer[pooled.length];
        for (int j = 0; j < order.length; j++) order[j] = j;
        Arrays.sort(order, (a, b) -> Double.compare(pooled[b], pooled[a]));
        return order;
    }

    /** The older prompt tokens (l, g) holds. */
    static TreeSet<Integer> keptOld(KvCache c, int l, int g) {
        TreeSet<Integer> kept = new TreeSet<>();
        for (int p : KvTestSupport.positions(c, l, g)) if (p < PROMPT - WINDOW) kept.add(p);
        return kept;
    }

    /** CriticalKV within one head keeping {@code budget} older tokens: the first stage by vote, the rest by vote x |W_o v|. */
    static void checkCritical(int l, int g, double[] pooled, TreeSet<Integer> kept, int budget) {
        int hd = config.headDim(), heads = config.numHeads(), group = config.groupSize(), width = heads * hd, d = config.hiddenSize();
        int first = budget / 2;
        Integer[] order = byVote(pooled);
        assertEquals(budget, kept.size(), "layer " + l + " head " + g);
        for (int i = 0; i < first; i++) assertTrue(kept.contains(order[i]), "first stage: top vote " + order[i]);
        TreeSet<Integer> stage1 = new TreeSet<>(Arrays.asList(order).subList(0, first));
        double keptMin = Double.POSITIVE_INFINITY, droppedMax = Double.NEGATIVE_INFINITY;
        for (int j = 0; j < pooled.length; j++) {
            if (stage1.contains(j)) continue;
            double norm = 0;
            for (int h = g * group; h < (g + 1) * group; h++)
                for (int r = 0; r < d; r++) {
                    double y = 0;
                    for (int e = 0; e < hd; e++) y += (double) values[l][g][j * hd + e] * wo[l][r * width + h * hd + e];
                    norm += Math.abs(y);
                }
            double score = (pooled[j] / (WINDOW * group) + 1e-4) * norm / group;
            if (kept.contains(j)) keptMin = Math.min(keptMin, score);
            else droppedMax = Math.max(droppedMax, score);
        }
        assertTrue(keptMin >= droppedMax * (1 - 1e-4), "layer " + l + " head " + g + ": kept " + keptMin + " < dropped " + droppedMax);
    }

    /**
     * AdaKV's shares of a layer: each head its ceil(alpha · budget) best votes, the rest of heads · budget to the best
     * votes across the heads.
     */
    static int[] adaShares(double[][] pooled, int budget, double alpha) {
        int heads = pooled.length, safe = (int) Math.ceil(alpha * budget - 1e-9);
        int[] share = new int[heads];
        java.util.List<double[]> rest = new java.util.ArrayList<>(); // {vote, head, index}
        for (int g = 0; g < heads; g++) {
            Integer[] order = byVote(pooled[g]);
            share[g] = safe;
            for (int i = safe; i < order.length; i++) rest.add(new double[]{pooled[g][order[i]], g, order[i]});
        }
        rest.sort((x, y) -> x[0] != y[0] ? Double.compare(y[0], x[0]) : x[1] != y[1] ? Double.compare(x[1], y[1]) : Double.compare(x[2], y[2]));
        for (int j = 0; j < heads * budget - heads * safe; j++) share[(int) rest.get(j)[1]]++;
        return share;
    }

    @Test
    void theSecondStageWeighsVotesByProjectedValueNorms() {
        model.setPolicy(KvPolicies.parse("snapkv:budget=" + BUDGET + ",window=" + WINDOW + ",kernel=3,critical=0.5", config));
        try (KvCache c = model.newCache(CAPACITY)) {
            model.prefill(c, prompt, 0, false, null);
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) checkCritical(l, g, pooledVotes(l, g), keptOld(c, l, g), BUDGET - WINDOW);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    /**
     * AdaKV over SnapKV (and CriticalAdaKV): the heads of a layer keep heads x budget older tokens in all, each at least
     * its safeguard; alone, the shared budget goes to the best votes across the heads; with critical, each head's share is
     * AdaKV's and the head fills it by CriticalKV's two stages.
     */
    @org.junit.jupiter.params.ParameterizedTest(name = "critical={0}, alpha={1}")
    @org.junit.jupiter.params.provider.CsvSource({"false,0.25", "true,0.25", "false,0.8"})
    void adaSharesTheLayersBudgetByVote(boolean critical, double alpha) {
        int keepOld = BUDGET - WINDOW, heads = config.numKvHeads();
        model.setPolicy(KvPolicies.parse("snapkv:budget=" + BUDGET + ",window=" + WINDOW + ",kernel=3,ada=" + alpha + (critical ? ",critical=0.5" : ""), config));
        try (KvCache c = model.newCache(CAPACITY)) {
            model.prefill(c, prompt, 0, false, null);
            boolean uneven = false, bound = false;
            for (int l = 0; l < config.numLayers(); l++) {
                double[][] pooled = new double[heads][];
                for (int g = 0; g < heads; g++) pooled[g] = pooledVotes(l, g);
                int[] share = adaShares(pooled, keepOld, alpha);
                int total = 0;
                for (int g = 0; g < heads; g++) {
                    TreeSet<Integer> kept = keptOld(c, l, g);
                    assertEquals(share[g], kept.size(), "layer " + l + " head " + g + "'s share");
                    total += kept.size();
                    uneven |= share[g] != keepOld;
                    bound |= share[g] == (int) Math.ceil(alpha * keepOld - 1e-9);
                    if (critical) checkCritical(l, g, pooled[g], kept, share[g]);
                    else {
                        Integer[] order = byVote(pooled[g]);
                        for (int i = 0; i < share[g]; i++) assertTrue(kept.contains(order[i]), "head " + g + " keeps its best votes");
                    }
                }
                assertEquals(heads * keepOld, total, "layer " + l);
            }
            assertTrue(uneven, "the heads' shares differ somewhere");
            if (alpha > 0.5) assertTrue(bound, "some head is held at its safeguard");
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

}
