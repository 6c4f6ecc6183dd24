package dev.tokenpress.kv;

import dev.tokenpress.backend.RopeTable;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Knorm, Expected Attention and the budget shaping keys (interval, pyramid, ada) against brute-force replays of
 * their rules. Layer 0 is checked where a rule depends on keys or queries: its keys and queries depend only on the
 * tokens and positions fed, which every run here fixes.
 */
class ScoredEvictionTest {
    static final int PROMPT = 30, STEPS = 24, CAPACITY = 64;

    @TempDir
    static Path dir;
    static Llama model;
    static LlamaConfig config;
    static int[] tokens;

    @BeforeAll
    static void load() {
        config = KvTestSupport.config(3);
        model = KvTestSupport.model(dir, config, 8);
        tokens = KvTestSupport.tokens(PROMPT + STEPS, config.vocabSize(), 11);
    }

    @AfterAll
    static void close() {
        model.close();
    }

    /** What one run saw at each attention call: per layer, the positions per KV head and the call's n and start. */
    record Call(int layer, int n, int start, int[][] positions) {}

    /** Runs the prompt in chunks and STEPS decode steps over fixed tokens; reports each call per layer. */
    static List<Call> run(String spec, KvTestSupport.Observer extra, KvTestSupport.QueryObserver queries) {
        List<Call> calls = new ArrayList<>();
        KvPolicy policy = KvTestSupport.recording(KvPolicies.parse(spec, config), (cache, layer, n, sel) -> {
            int[][] pos = new int[config.numKvHeads()][];
            int start = Integer.MAX_VALUE;
            for (int g = 0; g < pos.length; g++) pos[g] = KvTestSupport.positions(cache, layer, g);
            for (int[] p : pos) start = Math.min(start, p[p.length - 1] - n + 1);
            calls.add(new Call(layer, n, start, pos));
            extra.onSelect(cache, layer, n, sel);
        }, queries);
        model.setPolicy(policy);
        try (KvCache cache = model.newCache(CAPACITY)) {
            model.prefill(cache, java.util.Arrays.copyOf(tokens, PROMPT), 0, false, null);
            for (int i = 0; i < STEPS; i++) model.decodeStep(cache, tokens[PROMPT + i], PROMPT + i);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        return calls;
    }

    static List<Call> run(String spec) {
        return run(spec, (c, l, n, s) -> {}, (c, l, q, p, n) -> {});
    }

    /** Records the L2 norm of every layer-0 key per (KV head, position) when the token is first seen. */
    static KvTestSupport.Observer keyNorms(Map<Long, Double> norms) {
        float[] k = new float[config.headDim()], v = new float[config.headDim()];
        return (cache, layer, n, sel) -> {
            if (layer != 0) return;
            for (int g = 0; g < config.numKvHeads(); g++) {
                int[] pos = cache.positions(0, g);
                for (int s = 0; s < cache.highWater(0, g); s++) {
                    if (pos[s] < 0 || norms.containsKey(key(g, pos[s]))) continue;
                    model.backend.readKv(cache, 0, g, s, k, v);
                    double sum = 0;
                    for (float x : k) sum += (double) x * x;
                    norms.put(key(g, pos[s]), Math.sqrt(sum));
                }
            }
        };
    }

    static long key(int g, int p) { return ((long) g << 32) | p; }

    /** Knorm's score of a layer-0 token: -||k||. */
    /** The policy's score: minus the norm, rounded to a float as the policy stores it (near-ties become ties). */
    static double knorm(Map<Long, Double> norms, int g, int p) { return (float) -norms.get(key(g, p)); }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"knorm:budget=10", "knorm:budget=10,interval=5"})
    void knormKeepsTheSmallestKeysOfAllTokensSeenAtEachCut(String spec) {
        Map<Long, Double> norms = new HashMap<>();
        List<Call> calls = run(spec, keyNorms(norms), (c, l, q, p, n) -> {});
        int interval = spec.contains("interval=5") ? 5 : 0, cuts = 0;
        int[][] before = null;
        for (Call c : calls) {
            if (c.layer != 0) continue;
            if (c.n == 1) {
                for (int g = 0; g < config.numKvHeads(); g++) {
                    int old = c.positions[g].length - 1;  // the call's own token is the newest
                    assertEquals(c.start, c.positions[g][old], "the new token is present");
                    assertTrue(old <= 10 + interval, spec + ": " + old + " older tokens at position " + c.start);
                    if (old != before[g].length) {  // a cut: the 10 best of every token seen so far, however long ago
                        cuts++;
                        assertEquals(10, old);
                        int gg = g;
                        List<Integer> all = new ArrayList<>();
                        for (int p = 0; p < c.start; p++) all.add(p);
                        all.sort((a, b) -> knorm(norms, gg, a) != knorm(norms, gg, b)
                                ? Double.compare(knorm(norms, gg, b), knorm(norms, gg, a)) : Integer.compare(b, a));
                        TreeSet<Integer> want = new TreeSet<>(all.subList(0, 10));
                        TreeSet<Integer> got = new TreeSet<>();
                        for (int i = 0; i < old; i++) got.add(c.positions[g][i]);
                        assertEquals(want, got, spec + ": head " + g + " at position " + c.start);
                    } else {
                        for (int i = 0; i < old; i++) assertEquals(before[g][i], c.positions[g][i], "no cut: nothing evicted");
                    }
                }
            }
            before = c.positions;
        }
        assertTrue(cuts >= (interval == 0 ? STEPS : STEPS / (interval + 1)) * config.numKvHeads() / 2, spec + ": " + cuts + " cuts");
    }

    @Test
    void intervalLetsTheCacheGrowPastTheBudgetThenCutsItBack() {
        List<Integer> sizes = new ArrayList<>();
        for (Call c : run("h2o:budget=10,recent=2,interval=4"))
            if (c.n == 1 && c.layer == 1) sizes.add(c.positions[0].length);
        // kvpress's DecodingPress with compression_interval 4, target 10: a cut every 4 steps, up to 10 + 4 tokens
        assertEquals(11, sizes.get(0), "the first decode step cuts the prompt to the budget");
        for (int i = 1; i < sizes.size(); i++)
            assertEquals(sizes.get(i - 1) == 14 ? 11 : sizes.get(i - 1) + 1, sizes.get(i), "steps " + sizes);
    }

    @Test
    void pyramidGivesLowerLayersMoreTokensWithTheSameMean() {
        // budget 16, window 4, beta 2: the pyramid share 12 runs from 18 (layer 0) to 6 (layer 2)
        int[] want = {4 + 18 + 1, 4 + 12 + 1, 4 + 6 + 1};
        for (String spec : new String[]{"h2o:budget=16,recent=4,pyramid=2", "pyramidkv:budget=16,window=4,kernel=3,beta=2",
                "snapkv:budget=16,window=4,kernel=3,pyramid=2"}) {
            int[] seen = new int[3];
            for (Call c : run(spec))
                if (c.n == 1 && c.start == PROMPT)
                    for (int g = 0; g < config.numKvHeads(); g++) {
                        assertEquals(want[c.layer], c.positions[g].length, spec + ": layer " + c.layer);
                        seen[c.layer]++;
                    }
            for (int s : seen) assertEquals(config.numKvHeads(), s, spec);
        }
    }

    @Test
    void adaSharesTheLayerBudgetAcrossHeadsByScore() {
        Map<Long, Double> norms = new HashMap<>();
        int budget = 10, safe = 3, heads = config.numKvHeads();  // ada=0.3: each head keeps >= ceil(0.3 * 10)
        List<Call> calls = run("knorm:budget=10,ada=0.3", keyNorms(norms), (c, l, q, p, n) -> {});
        int[][] before = null;
        boolean uneven = false;
        int cuts = 0;
        for (Call c : calls) {
            if (c.layer != 0) continue;
            if (c.n == 1) {
                int total = 0;
                List<long[]> kept = new ArrayList<>(), evicted = new ArrayList<>();
                for (int g = 0; g < heads; g++) {
                    TreeSet<Integer> now = new TreeSet<>();
                    for (int i = 0; i < c.positions[g].length - 1; i++) now.add(c.positions[g][i]);
                    total += now.size();
                    assertTrue(now.size() >= safe, "head " + g + " keeps its safeguard");
                    for (int p : before[g]) (now.contains(p) ? kept : evicted).add(new long[]{g, p, now.size()});
                    uneven |= now.size() != budget;
                }
                assertEquals(heads * budget, total, "the heads share heads * budget slots at position " + c.start);
                if (!evicted.isEmpty()) cuts++;
                for (long[] e : evicted)
                    for (long[] k : kept) {
                        if (k[0] != e[0] && k[2] <= safe) continue;  // a head at its safeguard keeps its best regardless
                        double ks = knorm(norms, (int) k[0], (int) k[1]), es = knorm(norms, (int) e[0], (int) e[1]);
                        assertTrue(ks >= es, "kept (head " + k[0] + ", pos " + k[1] + ") scores " + ks + " below evicted (head "
                                + e[0] + ", pos " + e[1] + ") " + es + " at position " + c.start);
                    }
            }
            before = c.positions;
        }
        assertTrue(uneven, "the heads' shares differ at some step");
        assertEquals(STEPS, cuts);
    }

    /**
     * ChunkKV: every head of a layer keeps the same tokens; a cut frees whole chunks (runs of 3 of the unprotected
     * tokens in position order) with the lowest mean knorm score summed over the heads, and no more chunks than needed.
     */
    @Test
    void chunkFreesWholeLowScoringRunsFromEveryHead() {
        Map<Long, Double> norms = new HashMap<>();
        int budget = 10, recent = 2, sink = 1, size = 3, heads = config.numKvHeads();
        List<Call> calls = run("knorm:budget=10,recent=2,sink=1,chunk=3", keyNorms(norms), (c, l, q, p, n) -> {});
        int[] before = null;
        int cuts = 0, wholeBelow = 0;
        for (Call c : calls) {
            for (int g = 1; g < heads; g++)
                assertArrayEquals(c.positions[0], c.positions[g], "layer " + c.layer + ": head " + g + " keeps head 0's tokens");
            if (c.layer != 0) continue;
            if (c.n == 1 && before != null) {
                TreeSet<Integer> now = new TreeSet<>();
                for (int p : c.positions[0]) if (p < c.start) now.add(p);
                List<Integer> cand = new ArrayList<>();
                for (int p : before) if (p >= sink && p < c.start - recent) cand.add(p);
                TreeSet<Integer> gone = new TreeSet<>();
                for (int p : before) if (!now.contains(p)) gone.add(p);
                if (!gone.isEmpty()) {
                    cuts++;
                    int need = before.length - budget;
                    double[] mean = new double[(cand.size() + size - 1) / size];
                    boolean[] out = new boolean[mean.length];
                    for (int k = 0; k < mean.length; k++) {
                        int from = k * size, to = Math.min(cand.size(), from + size), in = 0;
                        for (int i = from; i < to; i++) {
                            double s = 0;
                            for (int g = 0; g < heads; g++) s += (float) knorm(norms, g, cand.get(i));
                            mean[k] += s / (to - from);
                            if (gone.contains(cand.get(i))) in++;
                        }
                        assertTrue(in == 0 || in == to - from, "chunk " + k + " goes whole or not at all at position " + c.start);
                        out[k] = in > 0;
                    }
                    int freed = gone.size();
                    double worstGone = Double.NEGATIVE_INFINITY;
                    int worstSize = 0;
                    for (int k = 0; k < mean.length; k++) {
                        if (!out[k]) continue;
                        int sz = Math.min(cand.size(), k * size + size) - k * size;
                        if (mean[k] >= worstGone) {
                            worstGone = mean[k];
                            worstSize = sz;
                        }
                        for (int j = 0; j < mean.length; j++)
                            if (!out[j]) assertTrue(mean[k] <= mean[j] + 1e-4 * Math.abs(mean[j]),
                                    "freed chunk " + k + " (" + mean[k] + ") outscores kept chunk " + j + " (" + mean[j] + ")");
                    }
                    assertTrue(freed >= need, "enough freed at " + c.start);
                    assertTrue(freed - worstSize < need, "no chunk more than needed at " + c.start);
                    if (freed > need) wholeBelow++;
                    for (int p = 0; p < sink; p++) assertTrue(now.contains(p), "sink " + p);
                    for (int p = c.start - recent; p < c.start; p++) assertTrue(now.contains(p), "recent " + p);
                }
            }
            before = c.positions[0];
        }
        assertTrue(cuts >= STEPS / size - 1, cuts + " cuts");
        assertTrue(wholeBelow > 0, "some cut freed a whole chunk for a smaller need");
    }

    /** ChunkKV over SnapKV: the prompt before the window keeps whole chunks, the same in every head, within budget. */
    @Test
    void snapKvChunksKeepWholeRuns() {
        int budget = 14, window = 4, size = 3, heads = config.numKvHeads();
        List<Call> calls = run("snapkv:budget=14,window=4,kernel=3,chunk=3", (cache, layer, n, sel) -> {}, (c, l, q, p, n) -> {});
        boolean checked = false;
        for (Call c : calls) {
            if (c.n != 1) continue; // the first decode step sees the compressed prompt
            for (int g = 1; g < heads; g++) assertArrayEquals(c.positions[0], c.positions[g], "layer " + c.layer + " head " + g);
            int prompt = PROMPT, oldEnd = prompt - window;
            java.util.Set<Integer> kept = new java.util.TreeSet<>();
            for (int p : c.positions[0]) if (p < oldEnd) kept.add(p);
            for (int p = oldEnd; p < prompt; p++)
                assertTrue(java.util.Arrays.binarySearch(c.positions[0], p) >= 0, "window token " + p);
            assertTrue(kept.size() <= budget - window, kept + " within the budget");
            assertTrue(kept.size() > budget - window - size, "no chunk more than needed: " + kept);
            for (int from = 0; from < oldEnd; from += size) {
                int in = 0, to = Math.min(oldEnd, from + size);
                for (int p = from; p < to; p++) if (kept.contains(p)) in++;
                assertTrue(in == 0 || in == to - from, "chunk at " + from + " kept whole or not at all: " + kept);
            }
            checked = true;
        }
        assertTrue(checked);
    }

    /** One KV head's decode-step cut of layer 0: the positions it held before (ascending), those kept, the step's position. */
    interface Cut {
        void check(int g, int[] old, TreeSet<Integer> kept, int start);
    }

    /**
     * Runs {@code spec} and calls {@code cut} for every KV head that dropped tokens at a decode step of layer 0, after
     * {@code rows} got the layer-0 key and value of every token when it first appeared (keyed by {@link #key}).
     *
     * @return the number of cuts checked
     */
    static int replayCuts(String spec, Map<Long, float[][]> rows, Cut cut) {
        int hd = config.headDim(), kvHeads = config.numKvHeads();
        float[] k = new float[hd], v = new float[hd];
        int[][][] before = {null};
        int[] checked = {0};
        run(spec, (cache, layer, n, sel) -> {
            if (layer != 0) return;
            int[][] now = new int[kvHeads][];
            int start = Integer.MAX_VALUE;
            for (int g = 0; g < kvHeads; g++) {
                now[g] = KvTestSupport.positions(cache, 0, g);
                start = Math.min(start, now[g][now[g].length - 1] - n + 1);
            }
            if (n == 1 && before[0] != null)
                for (int g = 0; g < kvHeads; g++) {
                    TreeSet<Integer> kept = new TreeSet<>();
                    for (int p : now[g]) if (p < start) kept.add(p);
                    if (kept.size() == before[0][g].length) continue;
                    cut.check(g, before[0][g], kept, start);
                    checked[0]++;
                }
            for (int g = 0; g < kvHeads; g++) {
                int[] pos = cache.positions(0, g);
                for (int s = 0; s < cache.highWater(0, g); s++) {
                    if (pos[s] < 0 || rows.containsKey(key(g, pos[s]))) continue;
                    model.backend.readKv(cache, 0, g, s, k, v);
                    rows.put(key(g, pos[s]), new float[][]{k.clone(), v.clone()});
                }
            }
            before[0] = now;
        }, (c, l, q, p, n) -> {});
        return checked[0];
    }

    /** KeyDiff: at each cut the kept tokens are those least similar to the mean normalized key of the cache before it. */
    @Test
    void keyDiffKeepsTheKeysLeastLikeTheMeanDirection() {
        int hd = config.headDim();
        Map<Long, float[][]> rows = new HashMap<>();
        int checked = replayCuts("keydiff:budget=10,sink=1", rows, (g, old, kept, start) -> {
            double[] anchor = new double[hd];
            for (int p : old) {
                float[] kk = rows.get(key(g, p))[0];
                double norm = 0;
                for (float x : kk) norm += x * x;
                for (int d = 0; d < hd; d++) anchor[d] += kk[d] / Math.sqrt(norm) / old.length;
            }
            double keptMin = Double.POSITIVE_INFINITY, evictedMax = Double.NEGATIVE_INFINITY;
            for (int p : old) {
                if (p < 1) {
                    assertTrue(kept.contains(p), "the sink stays");
                    continue;
                }
                float[] kk = rows.get(key(g, p))[0];
                double dot = 0, kn = 0, an = 0;
                for (int d = 0; d < hd; d++) {
                    dot += kk[d] * anchor[d];
                    kn += kk[d] * kk[d];
                    an += anchor[d] * anchor[d];
                }
                double score = -dot / Math.sqrt(kn * an);
                if (kept.contains(p)) keptMin = Math.min(keptMin, score);
                else evictedMax = Math.max(evictedMax, score);
            }
            assertEquals(10, kept.size());
            assertTrue(keptMin >= evictedMax - 1e-5, "head " + g + " at " + start + ": kept " + keptMin + " < evicted " + evictedMax);
        });
        assertTrue(checked >= STEPS, checked + " cuts checked");
    }

    /**
     * CurDKV: at each cut the kept tokens have the largest product of their key's and value's squared norms, each
     * divided by its sum over windows of 4 consecutive cached tokens (kv_product), or the window-normalized key norm.
     */
    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"cur:budget=10,sink=2,window=4", "cur:budget=10,sink=1,window=4,type=key", "cur:budget=9,window=0,type=kv_avg"})
    void curKeepsTheLargestWindowNormalizedKeyValueNorms(String spec) {
        int hd = config.headDim(), window = spec.contains("window=0") ? 0 : 4;
        int sink = spec.contains("sink=2") ? 2 : spec.contains("sink=1") ? 1 : 4, budget = spec.contains("budget=9") ? 9 : 10;
        Map<Long, float[][]> rows = new HashMap<>();
        int checked = replayCuts(spec, rows, (g, old, kept, start) -> {
            int n = old.length;
            double[] k2 = new double[n], v2 = new double[n];
            for (int t = 0; t < n; t++) {
                float[][] kv = rows.get(key(g, old[t]));
                for (int d = 0; d < hd; d++) {
                    k2[t] += (double) kv[0][d] * kv[0][d];
                    v2[t] += (double) kv[1][d] * kv[1][d];
                }
            }
            if (window > 0)
                for (double[] x : new double[][]{k2, v2})
                    for (int from = 0; from < n; from += window) {
                        double sum = 0;
                        for (int i = from; i < Math.min(n, from + window); i++) sum += x[i];
                        for (int i = from; i < Math.min(n, from + window); i++) x[i] /= sum;
                    }
            double keptMin = Double.POSITIVE_INFINITY, evictedMax = Double.NEGATIVE_INFINITY;
            for (int t = 0; t < n; t++) {
                if (old[t] < sink) {
                    assertTrue(kept.contains(old[t]), "sink " + old[t] + " stays");
                    continue;
                }
                double score = spec.contains("type=key") ? k2[t] : spec.contains("kv_avg") ? (k2[t] + v2[t]) / 2 : k2[t] * v2[t];
                if (kept.contains(old[t])) keptMin = Math.min(keptMin, score);
                else evictedMax = Math.max(evictedMax, score);
            }
            assertEquals(budget, kept.size());
            assertTrue(keptMin >= evictedMax * (1 - 1e-5), spec + " head " + g + " at " + start + ": kept " + keptMin + " < evicted " + evictedMax);
        });
        assertTrue(checked >= STEPS, checked + " cuts checked");
    }

    @ParameterizedTest(name = "{0}")
    @ValueSource(strings = {"expected:budget=12,sink=2,future=8,interval=0", "expected:budget=12,sink=2,future=3,cov=false,vnorm=false,interval=0",
            "expected:budget=12,sink=0,recent=2,future=64,interval=2"})
    void expectedAttentionKeepsTheTokensItsFormulaRanksHighest(String spec) {
        int hd = config.headDim(), half = hd / 2, heads = config.numHeads(), kvHeads = config.numKvHeads(), group = heads / kvHeads;
        int sink = Integer.parseInt(spec.replaceAll(".*sink=(\\d+).*", "$1"));
        int future = Integer.parseInt(spec.replaceAll(".*future=(\\d+).*", "$1"));
        int recent = spec.contains("recent=2") ? 2 : 0;
        boolean cov = !spec.contains("cov=false"), vnorm = !spec.contains("vnorm=false");
        float[] inv = RopeTable.of(config).invFreq();
        List<double[][]> queries = new ArrayList<>();   // layer-0 queries before RoPE, [head][hd], positions >= sink
        Map<Long, float[][]> keys = new HashMap<>();    // layer-0 (KV head, position) -> {key, value}
        float[] k = new float[hd], v = new float[hd];
        int[] checked = {0};
        int[][][] before = {null};
        int[] queriesBefore = {0};
        List<Call> calls = run(spec, (cache, layer, n, sel) -> {
            if (layer != 0) return;
            int start = Integer.MAX_VALUE;
            int[][] now = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) {
                now[g] = KvTestSupport.positions(cache, 0, g);
                start = Math.min(start, now[g][now[g].length - 1] - n + 1);
            }
            if (n == 1 && before[0] != null) {
                // the cut of this call used the queries of the earlier calls and the tokens present at the last one
                double[][][] stat = statistics(queries.subList(0, queriesBefore[0]), start, future, inv, hd, cov);
                for (int g = 0; g < kvHeads; g++) {
                    int[] old = before[0][g];
                    TreeSet<Integer> keptNow = new TreeSet<>();
                    for (int p : now[g]) if (p < start) keptNow.add(p);
                    if (keptNow.size() == old.length) continue;  // no cut in this head
                    double[] p = new double[old.length];
                    for (int i = 0; i < group; i++) {
                        int h = g * group + i;
                        double[] z = new double[old.length];
                        double max = Double.NEGATIVE_INFINITY;
                        for (int j = 0; j < old.length; j++) {
                            if (old[j] < sink) continue;
                            float[] kk = keys.get(key(g, old[j]))[0];
                            double dot = 0, quad = 0;
                            for (int a = 0; a < hd; a++) {
                                dot += kk[a] * stat[h][0][a];
                                for (int b = 0; b < hd; b++) quad += kk[a] * stat[h][1 + a][b] * kk[b];
                            }
                            z[j] = dot / Math.sqrt(hd) + (cov ? quad / (2.0 * hd) : 0);
                            max = Math.max(max, z[j]);
                        }
                        double sum = 0;
                        for (int j = 0; j < old.length; j++) if (old[j] >= sink) sum += Math.exp(z[j] - max);
                        for (int j = 0; j < old.length; j++) if (old[j] >= sink) p[j] += Math.exp(z[j] - max) / sum / group;
                    }
                    double keptMin = Double.POSITIVE_INFINITY, evictedMax = Double.NEGATIVE_INFINITY;
                    for (int j = 0; j < old.length; j++) {
                        int pos = old[j];
                        boolean prot = pos < sink || pos >= start - recent;
                        if (prot) {
                            assertTrue(keptNow.contains(pos), spec + ": protected token " + pos + " evicted");
                            continue;
                        }
                        float[] vv = keys.get(key(g, pos))[1];
                        double vn = 0;
                        for (float x : vv) vn += (double) x * x;
                        double score = vnorm ? p[j] * Math.sqrt(vn) : p[j];
                        if (keptNow.contains(pos)) keptMin = Math.min(keptMin, score);
                        else evictedMax = Math.max(evictedMax, score);
                    }
                    assertEquals(12, keptNow.size(), spec + ": cut to the budget");
                    assertTrue(keptMin >= evictedMax - 1e-5 * Math.abs(evictedMax), spec + ": head " + g + " at position " + start
                            + " kept a token scoring " + keptMin + " and evicted one scoring " + evictedMax);
                    checked[0]++;
                }
            }
            for (int g = 0; g < kvHeads; g++) {
                int[] pos = cache.positions(0, g);
                for (int s = 0; s < cache.highWater(0, g); s++) {
                    if (pos[s] < 0 || keys.containsKey(key(g, pos[s]))) continue;
                    model.backend.readKv(cache, 0, g, s, k, v);
                    keys.put(key(g, pos[s]), new float[][]{k.clone(), v.clone()});
                }
            }
            before[0] = now;
            queriesBefore[0] = queries.size();
        }, (cache, layer, q, positions, n) -> {
            if (layer != 0) return;
            float[] rows = model.backend.download(q, 0, n);
            for (int r = 0; r < n; r++) {
                if (positions[r] < sink) continue;
                double[][] pre = new double[heads][];
                double[][] rot = rotation(positions[r], inv, hd);
                for (int h = 0; h < heads; h++) {
                    double[] post = new double[hd];
                    for (int a = 0; a < hd; a++) post[a] = rows[r * heads * hd + h * hd + a];
                    pre[h] = new double[hd];
                    for (int a = 0; a < hd; a++)  // R^T q: R is orthogonal
                        for (int b = 0; b < hd; b++) pre[h][a] += rot[b][a] * post[b];
                }
                queries.add(pre);
            }
        });
        assertFalse(calls.isEmpty());
        assertTrue(checked[0] >= 4, spec + ": " + checked[0] + " cuts checked");
    }

    /** The RoPE matrix of a position, cos(t w) I + sin(t w) P with P the rotate_half matrix (f32 angles as the model). */
    static double[][] rotation(int t, float[] inv, int hd) {
        int half = hd / 2;
        double[][] r = new double[hd][hd];
        for (int i = 0; i < hd; i++) {
            float angle = (float) t * inv[i % half];
            r[i][i] = Math.cos(angle);
            if (i < half) r[i][i + half] = -Math.sin(angle);
            else r[i][i - half] = Math.sin(angle);
        }
        return r;
    }

    /** Per q-head {R mu, R Sigma R^T rows} with R the mean rotation over [start, start + future). */
    static double[][][] statistics(List<double[][]> qs, int start, int future, float[] inv, int hd, boolean cov) {
        int heads = config.numHeads();
        double[][] rbar = new double[hd][hd];
        for (int t = start; t < start + future; t++) {
            double[][] r = rotation(t, inv, hd);
            for (int a = 0; a < hd; a++) for (int b = 0; b < hd; b++) rbar[a][b] += r[a][b] / future;
        }
        double[][][] out = new double[heads][1 + hd][hd];
        for (int h = 0; h < heads; h++) {
            double[] mu = new double[hd];
            for (double[][] q : qs) for (int a = 0; a < hd; a++) mu[a] += q[h][a] / qs.size();
            double[][] sigma = new double[hd][hd];
            if (cov)
                for (double[][] q : qs)
                    for (int a = 0; a < hd; a++)
                        for (int b = 0; b < hd; b++) sigma[a][b] += (q[h][a] - mu[a]) * (q[h][b] - mu[b]) / qs.size();
            for (int a = 0; a < hd; a++) for (int b = 0; b < hd; b++) out[h][0][a] += rbar[a][b] * mu[b];
            double[][] rs = new double[hd][hd];
            for (int a = 0; a < hd; a++) for (int b = 0; b < hd; b++) for (int c = 0; c < hd; c++) rs[a][b] += rbar[a][c] * sigma[c][b];
            for (int a = 0; a < hd; a++) for (int b = 0; b < hd; b++) for (int c = 0; c < hd; c++) out[h][1 + a][b] += rs[a][c] * rbar[b][c];
        }
        return out;
    }

    /** LagKV's lag-relative spread of the tokens of one partition against the next (softmax over the partition). */
    static double[] lagSpread(List<float[]> part, List<float[]> ref) {
        int hd = part.get(0).length, lag = part.size();
        double[] min = new double[hd], max = new double[hd], out = new double[lag];
        java.util.Arrays.fill(min, Double.POSITIVE_INFINITY);
        java.util.Arrays.fill(max, Double.NEGATIVE_INFINITY);
        for (float[] r : ref)
            for (int c = 0; c < hd; c++) {
                min[c] = Math.min(min[c], r[c]);
                max[c] = Math.max(max[c], r[c]);
            }
        double sum = 0;
        for (int t = 0; t < lag; t++) {
            double[] x = new double[hd];
            double mean = 0, ss = 0;
            for (int c = 0; c < hd; c++) mean += x[c] = (part.get(t)[c] - min[c]) / (max[c] - min[c]);
            mean /= hd;
            for (int c = 0; c < hd; c++) ss += (x[c] - mean) * (x[c] - mean);
            sum += out[t] = Math.exp(Math.sqrt(ss / (hd - 1)));
        }
        for (int t = 0; t < lag; t++) out[t] /= sum;
        return out;
    }

    /**
     * LagKV at every decode-step cut of layer 0: the sink stays, exactly the budget stays, and each evicted token ranks
     * (by its place within its partition, scored against the next partition; the last partition and the rest score 1)
     * below every kept one, or equal and older.
     */
    @Test
    void lagKvEvictsTheLowestRankedOfEachPartition() {
        int lag = 3, budget = 12;
        Map<Long, float[][]> rows = new HashMap<>();
        int checked = replayCuts("lagkv:budget=" + budget + ",lag=" + lag + ",sink=1,interval=0", rows, (g, old, kept, start) -> {
            assertEquals(budget, kept.size());
            assertTrue(kept.contains(0), "the sink stays");
            int len = old.length, end = 1 + (len - 1) / lag * lag, parts = (end - 1) / lag;
            double[] score = new double[len];
            java.util.Arrays.fill(score, 1);
            for (int part = 0; part + 1 < parts; part++) {
                int from = 1 + part * lag;
                double[] both = new double[lag];
                for (int w = 0; w < 2; w++) {
                    List<float[]> cur = new ArrayList<>(), ref = new ArrayList<>();
                    for (int t = 0; t < lag; t++) {
                        cur.add(rows.get(key(g, old[from + t]))[w]);
                        ref.add(rows.get(key(g, old[from + lag + t]))[w]);
                    }
                    double[] sp = lagSpread(cur, ref);
                    for (int t = 0; t < lag; t++) both[t] += sp[t] / 2;
                }
                for (int t = 0; t < lag; t++) {
                    int below = 0;
                    for (int u = 0; u < lag; u++) if (both[u] < both[t]) below++;
                    score[from + t] = (float) below / lag;
                }
            }
            for (int i = 1; i < len; i++) {
                if (kept.contains(old[i])) continue;
                for (int j = 1; j < len; j++)
                    if (kept.contains(old[j]))
                        assertTrue(score[i] < score[j] || score[i] == score[j] && old[i] < old[j],
                                "head " + g + " at " + start + ": evicted " + old[i] + " (" + score[i] + ") over kept " + old[j] + " (" + score[j] + ")");
            }
        });
        assertTrue(checked >= STEPS, checked + " cuts checked");
    }

    /** Random: exactly the budget at every cut, the same tokens for the same seed, other tokens for another seed. */
    @Test
    void randomEvictionIsReproducibleAndSeeded() {
        List<Call> a = run("random:budget=10,sink=1"), b = run("random:budget=10,sink=1"), c = run("random:budget=10,sink=1,seed=7");
        assertEquals(a.size(), b.size());
        boolean differs = false;
        for (int i = 0; i < a.size(); i++) {
            Call x = a.get(i), y = b.get(i), z = c.get(i);
            for (int g = 0; g < x.positions().length; g++) {
                assertArrayEquals(x.positions()[g], y.positions()[g], "call " + i);
                int old = 0;
                for (int p : x.positions()[g]) if (p < x.start()) old++;
                if (x.n() == 1) assertEquals(10, old, "call " + i);
                assertEquals(0, x.positions()[g][0], "the sink stays");
                differs |= !java.util.Arrays.equals(x.positions()[g], z.positions()[g]);
            }
        }
        assertTrue(differs, "another seed keeps other tokens");
    }

    /** Runs the prompt and the decode steps with SimLayerKV; records each layer's mass of the last prompt row's attention. */
    static dev.tokenpress.kv.policy.SimLayerKvPolicy simLayer(String spec, double[] refMass, List<int[][]> afterPrefill, List<Call> decode) {
        int hd = config.headDim(), heads = config.numHeads(), kvHeads = config.numKvHeads(), group = heads / kvHeads;
        int sink = Integer.parseInt(spec.replaceAll(".*sink=(\\d+).*", "$1")), recent = Integer.parseInt(spec.replaceAll(".*recent=(\\d+).*", "$1"));
        var inner = (dev.tokenpress.kv.policy.SimLayerKvPolicy) KvPolicies.parse(spec, config);
        float[] k = new float[hd], v = new float[hd];
        KvPolicy policy = KvTestSupport.recording(inner, (cache, layer, n, sel) -> {
            if (n != 1) return;
            int[][] pos = new int[kvHeads][];
            for (int g = 0; g < kvHeads; g++) pos[g] = KvTestSupport.positions(cache, layer, g);
            decode.add(new Call(layer, n, pos[0][pos[0].length - 1], pos));
        }, (cache, layer, q, positions, n) -> {
            if (positions[n - 1] != PROMPT - 1) return; // the last prompt row, in the prefill's last chunk
            float[] rows = model.backend.download(q, 0, n);
            double m = 0;
            for (int h = 0; h < heads; h++) {
                int g = h / group;
                int[] pos = cache.positions(layer, g);
                double[] sc = new double[cache.highWater(layer, g)];
                double max = Double.NEGATIVE_INFINITY, sum = 0;
                for (int s2 = 0; s2 < sc.length; s2++) {
                    sc[s2] = Double.NEGATIVE_INFINITY;
                    if (pos[s2] < 0 || pos[s2] > PROMPT - 1) continue;
                    model.backend.readKv(cache, layer, g, s2, k, v);
                    double d = 0;
                    for (int a = 0; a < hd; a++) d += (double) rows[(n - 1) * heads * hd + h * hd + a] * k[a];
                    sc[s2] = d / Math.sqrt(hd);
                    max = Math.max(max, sc[s2]);
                }
                for (double x : sc) if (x != Double.NEGATIVE_INFINITY) sum += Math.exp(x - max);
                for (int s2 = 0; s2 < sc.length; s2++)
                    if (sc[s2] != Double.NEGATIVE_INFINITY && (pos[s2] < sink || pos[s2] >= PROMPT - recent)) m += Math.exp(sc[s2] - max) / sum;
            }
            refMass[layer] = m / heads;
        });
        model.setPolicy(policy);
        try (KvCache cache = model.newCache(CAPACITY)) {
            model.prefill(cache, java.util.Arrays.copyOf(tokens, PROMPT), 0, false, null);
            for (int l = 0; l < config.numLayers(); l++) {
                int[][] pos = new int[kvHeads][];
                for (int g = 0; g < kvHeads; g++) pos[g] = KvTestSupport.positions(cache, l, g);
                afterPrefill.add(pos);
            }
            for (int i = 0; i < STEPS; i++) model.decodeStep(cache, tokens[PROMPT + i], PROMPT + i);
        } finally {
            model.setPolicy(KvPolicy.FULL);
        }
        return inner;
    }

    /**
     * SimLayerKV: each layer's mass is the last prompt row's attention on the sinks and the recent window (checked
     * against a double-precision softmax over the cached keys); the layers above the threshold keep exactly the window
     * from the end of the prefill on, while decoding too; the others keep every token.
     */
    @Test
    void simLayerKvCutsTheLayersWhoseLastRowLooksAtTheWindow() {
        int layers = config.numLayers(), kvHeads = config.numKvHeads(), sink = 2, recent = 8;
        double[] ref = new double[layers];
        var probe = simLayer("simlayerkv:threshold=0,sink=2,recent=8", ref, new ArrayList<>(), new ArrayList<>());
        double lo = 1, hi = 0;
        for (int l = 0; l < layers; l++) {
            assertEquals(ref[l], probe.mass(l), 1e-5, "layer " + l);
            assertTrue(probe.lazy(l) == ref[l] > 0, "layer " + l);
            lo = Math.min(lo, ref[l]);
            hi = Math.max(hi, ref[l]);
        }
        assertTrue(hi > lo, "the layers' masses differ: " + java.util.Arrays.toString(ref));
        double threshold = (lo + hi) / 2;
        List<int[][]> after = new ArrayList<>();
        List<Call> decode = new ArrayList<>();
        var p = simLayer("simlayerkv:threshold=" + threshold + ",sink=2,recent=8", ref, after, decode);
        boolean anyLazy = false, anyFull = false;
        for (int l = 0; l < layers; l++) {
            assertEquals(ref[l] > threshold, p.lazy(l), "layer " + l + " mass " + ref[l]);
            anyLazy |= p.lazy(l);
            anyFull |= !p.lazy(l);
            for (int g = 0; g < kvHeads; g++) {
                int[] pos = after.get(l)[g];
                if (!p.lazy(l)) {
                    assertEquals(PROMPT, pos.length);
                    continue;
                }
                assertEquals(sink + recent, pos.length, "layer " + l);
                for (int i = 0; i < sink; i++) assertEquals(i, pos[i]);
                for (int i = 0; i < recent; i++) assertEquals(PROMPT - recent + i, pos[sink + i]);
            }
        }
        assertTrue(anyLazy && anyFull);
        for (Call c : decode)
            for (int[] pos : c.positions())
                if (p.lazy(c.layer())) {
                    assertEquals(sink + recent, pos.length, "a lazy layer attends to its window");
                    assertEquals(c.start() - recent + 1, pos[sink]);
                } else assertEquals(c.start() + 1, pos.length, "a full layer keeps every token");
        // a threshold of 1 (kvpress's default) or a prompt within sink + recent + last: nothing is lazy
        var none = simLayer("simlayerkv:threshold=1,sink=2,recent=8", ref, new ArrayList<>(), new ArrayList<>());
        var short_ = simLayer("simlayerkv:threshold=0,sink=2,recent=28", ref, new ArrayList<>(), new ArrayList<>());
        for (int l = 0; l < layers; l++) assertFalse(none.lazy(l) || short_.lazy(l));
    }

    /** Exact leverage of each row of the centred x (n × d, n > d): diag(X (XᵀX)⁻¹ Xᵀ), by Gauss-Jordan on XᵀX. */
    static double[] leverage(double[][] x) {
        int n = x.length, d = x[0].length;
        double[] mean = new double[d];
        for (double[] r : x) for (int j = 0; j < d; j++) mean[j] += r[j] / n;
        double[][] c = new double[n][d];
        for (int t = 0; t < n; t++) for (int j = 0; j < d; j++) c[t][j] = x[t][j] - mean[j];
        double[][] a = new double[d][2 * d];
        for (double[] r : c) for (int i = 0; i < d; i++) for (int j = 0; j < d; j++) a[i][j] += r[i] * r[j];
        for (int i = 0; i < d; i++) a[i][d + i] = 1;
        for (int col = 0; col < d; col++) {
            int piv = col;
            for (int r = col + 1; r < d; r++) if (Math.abs(a[r][col]) > Math.abs(a[piv][col])) piv = r;
            double[] tmp = a[col]; a[col] = a[piv]; a[piv] = tmp;
            double v = a[col][col];
            for (int j = 0; j < 2 * d; j++) a[col][j] /= v;
            for (int r = 0; r < d; r++) {
                if (r == col) continue;
                double f = a[r][col];
                for (int j = 0; j < 2 * d; j++) a[r][j] -= f * a[col][j];
            }
        }
        double[] h = new double[n];
        for (int t = 0; t < n; t++)
            for (int i = 0; i < d; i++) for (int j = 0; j < d; j++) h[t] += c[t][i] * a[i][d + j] * c[t][j];
        return h;
    }

    /**
     * Leverage at every decode-step cut of layer 0, with a full-rank sketch (exact leverage up to the jitter): the
     * evicted token has the least leverage of the centred pre-RoPE keys (the cached keys rotated back), within 0.02.
     */
    @Test
    void leverageEvictsTheKeyMostInsideTheOthersSpan() {
        int hd = config.headDim(), half = hd / 2, budget = 24;
        float[] inv = model.rope().invFreq();
        Map<Long, float[][]> rows = new HashMap<>();
        int checked = replayCuts("leverage:budget=" + budget + ",sketch=" + hd, rows, (g, old, kept, start) -> {
            assertEquals(budget, kept.size());
            double[][] x = new double[old.length][hd];
            for (int t = 0; t < old.length; t++) { // undo RoPE at the token's position
                float[] k = rows.get(key(g, old[t]))[0];
                for (int j = 0; j < half; j++) {
                    double angle = (double) old[t] * inv[j], c = Math.cos(angle), s = Math.sin(angle);
                    x[t][j] = k[j] * c + k[j + half] * s;
                    x[t][j + half] = k[j + half] * c - k[j] * s;
                }
            }
            double[] h = leverage(x);
            double keptMin = Double.POSITIVE_INFINITY, evictedMax = Double.NEGATIVE_INFINITY;
            for (int t = 0; t < old.length; t++)
                if (kept.contains(old[t])) keptMin = Math.min(keptMin, h[t]);
                else evictedMax = Math.max(evictedMax, h[t]);
            assertTrue(evictedMax <= keptMin + 0.02, "head " + g + " at " + start + ": evicted leverage " + evictedMax + " > kept " + keptMin);
        });
        assertTrue(checked >= STEPS, checked + " cuts checked");
    }
}
