package dev.tokenpress.kv;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.policy.TidalPolicy;
import dev.tokenpress.kv.policy.TokenSelectPolicy;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** Token selection (TidalDecode, Quest, TokenSelect): what each layer attends to, and the backend ops behind it. */
class SelectionTest {
    static final int PROMPT = 24, STEPS = 6;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;

    @BeforeAll
    static void load() {
        config = KvTestSupport.config(8);
        model = KvTestSupport.model(dir, config, 8);
    }

    @AfterAll
    static void close() {
        model.close();
    }

    /** Runs prompt + STEPS decode steps; the observer sees every layer of every call. */
    static void run(KvPolicy policy, KvTestSupport.Observer observer) {
        model.setPolicy(KvTestSupport.recording(policy, observer));
        try (KvCache cache = model.newCache(64)) {
            long bytes = cache.bytes();
            model.prefill(cache, KvTestSupport.tokens(PROMPT, config.vocabSize(), 21), 0, false, null);
            int tok = model.argmax();
            for (int i = 0; i < STEPS; i++) {
                model.decodeStep(cache, tok, PROMPT + i);
                tok = model.argmax();
            }
            assertEquals(bytes, cache.bytes());
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) assertEquals(PROMPT + STEPS, cache.occupied(l, g), "selection never evicts");
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
    }

    /** Checks a selection: per head exactly {@code expected} distinct occupied slots visible to position {@code current}. */
    static int[][] checkValid(KvCache cache, int layer, SlotSelection sel, int current, int expected) {
        int[][] positions = new int[config.numKvHeads()][];
        for (int g = 0; g < config.numKvHeads(); g++) {
            int count = sel.count()[g];
            if (expected >= 0) assertEquals(expected, count, "layer " + layer + " head " + g);
            Set<Integer> seen = new HashSet<>();
            positions[g] = new int[count];
            for (int i = 0; i < count; i++) {
                int slot = sel.slots()[g][i];
                assertTrue(seen.add(slot), "duplicate slot " + slot);
                int p = cache.position(layer, g, slot);
                assertTrue(p >= 0 && p <= current, "slot " + slot + " holds position " + p + " for a query at " + current);
                positions[g][i] = p;
            }
            Arrays.sort(positions[g]);
        }
        return positions;
    }

    @Test
    void tidalSelectsExactlyKAndReusesThePositionsUntilTheReselectionLayer() {
        int k = 7, full = 2, reselect = 5;
        TidalPolicy tidal = (TidalPolicy) KvPolicies.parse("tidal:k=" + k + ",full_layers=" + full + ",reselect=" + reselect, config);
        Map<Integer, int[][]> sparse = new HashMap<>();
        int[] decodeCalls = {0};
        run(tidal, (cache, layer, n, sel) -> {
            if (n > 1) {
                assertNull(sel, "prefill is dense");
                return;
            }
            int current = KvTestSupport.positions(cache, 0, 0)[cache.occupied(0, 0) - 1];
            if (layer <= full || layer == reselect) {
                assertNull(sel, "layer " + layer + " attends to everything");
                if (layer == 0) sparse.clear();
                return;
            }
            assertNotNull(sel, "layer " + layer + " is sparse");
            int[][] pos = checkValid(cache, layer, sel, current, k);
            for (int[] p : pos) assertTrue(Arrays.binarySearch(p, current) >= 0, "the current token is always kept");
            int source = layer < reselect ? full : reselect;
            assertEquals(source, tidal.selectionSource(), "layer " + layer + " uses the selection of layer " + source);
            assertArrayEquals(tidal.selectedPositions(), pos, "layer " + layer + " attends to the selected positions");
            int[][] first = sparse.putIfAbsent(source, pos);
            if (first != null)
                for (int g = 0; g < pos.length; g++)
                    assertArrayEquals(first[g], pos[g], "every sparse layer after layer " + source + " reads the same positions");
            if (layer == config.numLayers() - 1) decodeCalls[0]++;
        });
        assertEquals(STEPS, decodeCalls[0]);
    }

    @Test
    void tidalPicksTheTopKByTheGroupsMaxRawScoreAndKeepsTheCurrentToken() {
        int k = 6, full = 2;
        TidalPolicy tidal = (TidalPolicy) KvPolicies.parse("tidal:k=" + k + ",full_layers=" + full + ",reselect=-1", config);
        int heads = config.numHeads(), group = config.groupSize();
        int[][][] expected = new int[1][][];
        int[] compared = {0};
        KvPolicy rec = KvTestSupport.recording(tidal, (cache, layer, n, sel) -> {
            if (n == 1 && layer == full + 1) {
                assertArrayEquals(expected[0], tidal.selectedPositions());
                compared[0]++;
            }
        }, (cache, layer, q, positions, n) -> {
            if (n != 1 || layer != full) return;
            // brute force: rank every visible slot by the max raw q·k over the group, keep the current token
            float[][] raw = new float[heads][64];
            model.backend.queryKeyScores(raw, q, 0, positions[0], cache, layer);
            expected[0] = new int[config.numKvHeads()][];
            for (int g = 0; g < config.numKvHeads(); g++) {
                int[] pos = cache.positions(layer, g);
                java.util.List<int[]> cand = new java.util.ArrayList<>(); // {slot, score bits}
                float[] score = new float[cache.highWater(layer, g)];
                for (int s = 0; s < score.length; s++) {
                    score[s] = Float.NEGATIVE_INFINITY;
                    for (int h = g * group; h < (g + 1) * group; h++) score[s] = Math.max(score[s], raw[h][s]);
                    if (pos[s] >= 0 && pos[s] != positions[0]) cand.add(new int[]{s});
                }
                cand.sort((a, b) -> score[a[0]] != score[b[0]] ? Float.compare(score[b[0]], score[a[0]]) : Integer.compare(a[0], b[0]));
                int[] want = new int[k];
                want[0] = positions[0];
                for (int i = 1; i < k; i++) want[i] = pos[cand.get(i - 1)[0]];
                Arrays.sort(want);
                expected[0][g] = want;
            }
        });
        model.setPolicy(rec);
        try (KvCache cache = model.newCache(64)) {
            model.prefill(cache, KvTestSupport.tokens(PROMPT, config.vocabSize(), 23), 0, false, null);
            int tok = model.argmax();
            for (int i = 0; i < STEPS; i++) {
                model.decodeStep(cache, tok, PROMPT + i);
                tok = model.argmax();
            }
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        assertEquals(STEPS, compared[0]);
    }

    @Test
    void tidalAutoReselectionLayerFollowsTheDepth() {
        assertEquals(13, TidalPolicy.resolveReselect(-2, 2, 32), "the authors' layer 13 for 32-layer Llama");
        assertEquals(3, TidalPolicy.resolveReselect(-2, 2, 8));
        assertEquals(-1, TidalPolicy.resolveReselect(-2, 2, 4), "too shallow for a second selection");
        assertEquals(-1, TidalPolicy.resolveReselect(-1, 2, 32));
    }

    @Test
    void questAttendsToWholePagesAndTheCurrentPage() {
        int page = 4, budget = 12; // 3 pages of 4
        run(KvPolicies.parse("quest:budget=" + budget + ",page=" + page + ",dense_layers=2", config), (cache, layer, n, sel) -> {
            if (n > 1 || layer < 2) {
                assertNull(sel);
                return;
            }
            assertNotNull(sel);
            int current = KvTestSupport.positions(cache, 0, 0)[cache.occupied(0, 0) - 1];
            int[][] pos = checkValid(cache, layer, sel, current, -1);
            for (int g = 0; g < pos.length; g++) {
                assertTrue(Arrays.binarySearch(pos[g], current) >= 0, "the current page is always attended");
                Set<Integer> pages = new HashSet<>();
                for (int i = 0; i < sel.count()[g]; i++) pages.add(sel.slots()[g][i] / page);
                assertEquals(3, pages.size(), "budget / page pages");
                for (int p : pages) // whole pages (the current one may be partial)
                    for (int s = p * page; s < Math.min((p + 1) * page, cache.highWater(layer, g)); s++) {
                        int slot = s;
                        assertTrue(Arrays.stream(sel.slots()[g], 0, sel.count()[g]).anyMatch(x -> x == slot), "slot " + s + " of page " + p);
                    }
            }
        });
    }

    @Test
    void tokenSelectAttendsToInitTopKAndLocalTokensSharedByAllHeads() {
        int k = 5, init = 2, local = 3;
        run(KvPolicies.parse("tokenselect:k=" + k + ",init=" + init + ",local=" + local, config), (cache, layer, n, sel) -> {
            if (n > 1) {
                assertNull(sel);
                return;
            }
            int current = KvTestSupport.positions(cache, 0, 0)[cache.occupied(0, 0) - 1];
            int[][] pos = checkValid(cache, layer, sel, current, init + k + local);
            for (int g = 0; g < pos.length; g++) {
                assertArrayEquals(pos[0], pos[g], "one token set for all heads");
                for (int p = 0; p < init; p++) assertEquals(p, pos[g][p]);
                for (int i = 0; i < local; i++) assertEquals(current - i, pos[g][pos[g].length - 1 - i]);
            }
        });
    }

    @Test
    void tokenSelectSelectionCacheReusesTopKForSimilarQueries() {
        TokenSelectPolicy ts = (TokenSelectPolicy) KvPolicies.parse("tokenselect:k=5,init=2,local=3,reuse=0.000001", config);
        run(ts, (cache, layer, n, sel) -> {});
        assertTrue(ts.reuses() > 0, "a tiny threshold reuses the cached top-k");
    }

    /** The backend ops behind query-aware selection, against the cache contents and the attention's own scores. */
    @Test
    void queryKeyScoresMatchAttentionAndQuestBoundsAreUpperBounds() {
        int layer = 3, page = 5, hd = config.headDim(), heads = config.numHeads();
        try (KvCache cache = model.newCache(64)) {
            model.prefill(cache, KvTestSupport.tokens(23, config.vocabSize(), 2), 0, false, null);
            Tensor q = model.backend.allocate(1, heads * hd);
            Tensor out = model.backend.allocate(1, heads * hd);
            float[] qv = new float[heads * hd];
            SplittableRandom r = new SplittableRandom(1);
            for (int i = 0; i < qv.length; i++) qv[i] = (float) r.nextGaussian();
            model.backend.upload(q, qv);
            int qpos = 17; // sees positions 0..17 only
            float[][] raw = new float[heads][64];
            model.backend.queryKeyScores(raw, q, 0, qpos, cache, layer);
            AttentionStats stats = AttentionStats.allocate(heads, config.numKvHeads(), 64);
            stats.clear();
            model.backend.attention(out, q, cache, layer, new int[]{qpos}, 1, null, stats);
            for (int h = 0; h < heads; h++) {
                assertArrayEquals(stats.rawScores[h], raw[h], "head " + h);
                for (int s = 0; s < 64; s++) assertEquals(s <= qpos, raw[h][s] != Float.NEGATIVE_INFINITY, "slot " + s);
            }
            float[][] bounds = new float[heads][(64 + page - 1) / page];
            model.backend.questPageScores(bounds, q, 0, qpos, cache, layer, page);
            for (int h = 0; h < heads; h++)
                for (int p = 0; p < 5; p++) {
                    float best = Float.NEGATIVE_INFINITY;
                    for (int s = p * page; s < Math.min(23, (p + 1) * page); s++) best = Math.max(best, raw[h][s]);
                    if (best == Float.NEGATIVE_INFINITY) assertEquals(Float.NEGATIVE_INFINITY, bounds[h][p], "page " + p + " is not visible");
                    else assertTrue(bounds[h][p] >= best - 1e-4, "head " + h + " page " + p + ": bound " + bounds[h][p] + " < " + best);
                }
            // a page with a single key: the bound is that q·k
            float[][] one = new float[heads][64];
            model.backend.questPageScores(one, q, 0, qpos, cache, layer, 1);
            for (int h = 0; h < heads; h++)
                for (int s = 0; s <= qpos; s++) assertEquals(raw[h][s], one[h][s], 1e-4);
        }
    }

    @Test
    void readAndWriteKvRoundTrip() {
        int hd = config.headDim();
        try (KvCache cache = model.newCache(16)) {
            model.prefill(cache, KvTestSupport.tokens(5, config.vocabSize(), 3), 0, false, null);
            float[] k = new float[hd], v = new float[hd], k2 = new float[hd], v2 = new float[hd];
            for (int i = 0; i < hd; i++) {
                k[i] = i;
                v[i] = -i;
            }
            model.backend.writeKv(cache, 1, 1, 3, k, v);
            model.backend.readKv(cache, 1, 1, 3, k2, v2);
            assertArrayEquals(k, k2);
            assertArrayEquals(v, v2);
            model.backend.readKv(cache, 1, 0, 3, k2, v2);
            assertFalse(Arrays.equals(k, k2), "other heads untouched");
        }
    }
}
