package dev.tokenpress.backend.cuda;

import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Session-level operations on the CUDA backend (the prompt caching of the server and of chats): a session cut back
 * with truncate and fed a continuation gives the logits a fresh session over the same tokens gives, and its cache
 * holds exactly the kept tokens' slots.
 */
class CudaSessionTest {
    @TempDir
    Path tmp;

    @Test
    void truncateThenContinueMatchesAFreshSession() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        try (TokenPress tp = loadModel()) {
            int[] prompt = tp.tokenizer().encode("The cat sat on the mat and then it went to sleep for a while");
            int[] more = tp.tokenizer().encodeNoSpecial(" until a dog came by");
            int keep = prompt.length - 3;
            float[] cut, whole;
            try (Session s = tp.newSession(256)) {
                s.generate(prompt, 6, SamplingOptions.greedy(), null);
                assertTrue(s.canTruncate());
                s.truncate(keep);
                for (int l = 0; l < s.cache().layers(); l++)
                    for (int h = 0; h < s.cache().kvHeads(); h++) {
                        assertEquals(keep, s.cache().occupied(l, h));
                        assertEquals(keep, s.cache().highWater(l, h));
                    }
                s.generate(more, 0, SamplingOptions.greedy(), null);
                cut = tp.model().logits().clone();
                assertArrayEquals(concat(Arrays.copyOf(prompt, keep), more), s.tokens());
            }
            try (Session f = tp.newSession(256)) {
                f.generate(concat(Arrays.copyOf(prompt, keep), more), 0, SamplingOptions.greedy(), null);
                whole = tp.model().logits().clone();
            }
            double nmse = CudaParityTest.nmse(whole, cut);
            System.out.printf("[cuda session] truncate + continue vs fresh: nmse %.3g%n", nmse);
            assertTrue(nmse < 1e-4, "logits after truncate + continue differ from a fresh session's: nmse " + nmse);
        }
    }

    /**
     * Prompt lookup decoding on the GPU: the checked rows come from the prefill path (GEMM LM head) rather than the
     * decode path (GEMV), so this checks that the greedy tokens still come out the same on a repetitive prompt.
     */
    @Test
    void lookupDecodingGivesTheGreedyTokens() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        try (TokenPress tp = loadModel()) {
            String prompt = "one two three one two three one two three one two";
            int[][] got = new int[2][];
            // drafts of at most 3 tokens: a check of 1 + 3 rows stays on the decode path's GEMV (f32 activations);
            // more rows go to cuBLAS with bf16 activations, whose rounding may flip a near-tie of a random model
            for (int lookup : new int[] {0, 3}) {
                try (Session s = tp.newSession(256)) {
                    s.setLookup(lookup);
                    got[lookup == 0 ? 0 : 1] = s.generate(prompt, 32, SamplingOptions.greedy(), null).tokens();
                }
            }
            long[] c = tp.model().draftCounts();
            System.out.printf("[cuda session] lookup: %d of %d drafted tokens accepted%n", c[1], c[0]);
            assertArrayEquals(got[0], got[1], "lookup decoding changed the greedy tokens on the GPU");
        }
    }

    /**
     * Self-speculative decoding on the GPU: the draft (the first two layers) runs decode steps on the same backend
     * between the model's verification passes (graphs re-captured or swapped as their op sequences alternate), and
     * the greedy tokens must stay those of plain decoding; the whole model as its own draft is (nearly) always right.
     */
    @Test
    void selfSpeculativeDecodingGivesTheGreedyTokens() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        try (TokenPress tp = loadModel()) {
            String prompt = "one two three one two three one two three one two";
            int[] plain;
            try (Session s = tp.newSession(256)) {
                plain = s.generate(prompt, 40, SamplingOptions.greedy(), null).tokens();
            }
            for (int layers : new int[] {2, 4}) {
                long[] c0 = tp.model().draftCounts();
                int[] spec;
                try (Session s = tp.newSession(256)) {
                    s.setSelfDraft(layers, 3, 0, 0f); // checks of at most 4 rows: the GEMV path, as above
                    spec = s.generate(prompt, 40, SamplingOptions.greedy(), null).tokens();
                }
                long[] c = tp.model().draftCounts();
                System.out.printf("[cuda session] self draft, %d layers: %d of %d drafted tokens accepted%n", layers,
                        c[1] - c0[1], c[0] - c0[0]);
                assertArrayEquals(plain, spec, "self-speculative decoding (" + layers + " layers) changed the greedy tokens");
                // the draft's steps and the checks' 4-row passes sum in different orders: near-ties may flip
                if (layers == 4) assertTrue(c[1] - c0[1] >= 0.9 * (c[0] - c0[0]), "the whole model as its draft is nearly always right");
            }
        }
    }

    private static int[] concat(int[] a, int[] b) {
        int[] c = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, c, a.length, b.length);
        return c;
    }

    /**
     * Continuous batching on the GPU: four sequences decoded together (decodeBatch; up to 4 rows the GEMV path, the
     * batch of 6 cuBLAS) give each sequence's logits decoded alone within bf16 tolerance, and a cache copied after a
     * prompt (copyKvCache) continues as the original.
     */
    @Test
    void batchedDecodingAndCacheCopiesMatchSingleSequences() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        try (TokenPress tp = loadModel()) {
            dev.tokenpress.model.Llama m = tp.model();
            int v = tp.config().vocabSize();
            for (int run = 0; run < 3; run++) {
                int seqs = new int[] {4, 6, 4}[run];
                boolean views = run < 2; // row views of the step's tensors, then one-row copies
                m.setBatchRowViews(views);
                float[][][] alone = new float[seqs][5][];
                for (int i = 0; i < seqs; i++)
                    try (dev.tokenpress.kv.KvCache c = m.newCache(64)) {
                        int[] prompt = prompt(i, v);
                        m.prefill(c, prompt, 0, false, null);
                        for (int t = 0; t < 5; t++) {
                            m.decodeStep(c, (t * 7 + i) % v, prompt.length + t);
                            alone[i][t] = m.logits();
                        }
                    }
                dev.tokenpress.kv.KvCache[] caches = new dev.tokenpress.kv.KvCache[seqs];
                try {
                    for (int i = 0; i < seqs; i++) {
                        caches[i] = m.newCache(64);
                        m.prefill(caches[i], prompt(i, v), 0, false, null);
                    }
                    for (int t = 0; t < 5; t++) {
                        dev.tokenpress.model.Llama.BatchRow[] rows = new dev.tokenpress.model.Llama.BatchRow[seqs];
                        for (int i = 0; i < seqs; i++)
                            rows[i] = new dev.tokenpress.model.Llama.BatchRow(caches[i], null, (t * 7 + i) % v, prompt(i, v).length + t);
                        m.decodeBatch(rows);
                        float[][] all = m.batchLogitsAll();
                        int[] greedy = m.batchArgmaxAll();
                        for (int i = 0; i < seqs; i++) {
                            double nmse = CudaParityTest.nmse(alone[i][t], m.batchLogits(i));
                            assertTrue(nmse < 5e-3, seqs + " sequences (views " + views + "), sequence " + i + " step " + t
                                    + ": nmse " + nmse);
                            assertArrayEquals(m.batchLogits(i), all[i], "one download of the batch, row " + i);
                            assertEquals(m.batchArgmax(i), greedy[i], "argmax of every row at once, row " + i);
                        }
                    }
                } finally {
                    for (dev.tokenpress.kv.KvCache c : caches) if (c != null) c.close();
                    m.setBatchRowViews(true);
                }
            }
            try (dev.tokenpress.kv.KvCache a = m.newCache(64); dev.tokenpress.kv.KvCache b = m.newCache(64)) {
                int[] prompt = prompt(1, v);
                m.prefill(a, prompt, 0, false, null);
                a.free(0, 0, 2); // a queued free travels with the copy
                tp.backend().copyKvCache(a, b);
                m.decodeStep(a, 3, prompt.length);
                float[] fromA = m.logits();
                m.decodeStep(b, 3, prompt.length);
                float[] fromB = m.logits();
                assertArrayEquals(fromA, fromB, "the copy continues as the original");
                assertEquals(a.occupied(0, 0), b.occupied(0, 0));
                int hd = a.headDim();
                float[] keys = new float[64 * hd], values = new float[64 * hd], k1 = new float[hd], v1 = new float[hd];
                tp.backend().readKvHead(a, 1, 1, keys, values); // two bulk copies, widened on the host
                for (int s = 0; s < a.highWater(1, 1); s++) {
                    if (a.position(1, 1, s) < 0) continue;
                    tp.backend().readKv(a, 1, 1, s, k1, v1);
                    assertArrayEquals(k1, Arrays.copyOfRange(keys, s * hd, (s + 1) * hd), "key of slot " + s);
                    assertArrayEquals(v1, Arrays.copyOfRange(values, s * hd, (s + 1) * hd), "value of slot " + s);
                }
            }
        }
    }

    /**
     * Batched steps captured into CUDA graphs ({@code CudaBackend.setBatchGraphs}) give the logits of eager batched
     * steps bit for bit — 3 and then 6 sequences (the GEMV and the cuBLAS path), 12 steps each, the 6 with a long
     * prefill of another cache between two steps (which grows the matmul scratch: the graphs must be dropped) — and
     * are replayed.
     */
    @Test
    void batchedStepsFromGraphsMatchEagerSteps() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        try (TokenPress tp = loadModel()) {
            dev.tokenpress.model.Llama m = tp.model();
            CudaBackend gpu = (CudaBackend) tp.backend();
            int v = tp.config().vocabSize();
            for (int seqs : new int[] {3, 6}) {
                float[][][] logits = new float[2][][];
                for (int pass = 0; pass < 2; pass++) {
                    gpu.setBatchGraphs(pass == 1);
                    int replaysBefore = gpu.graphReplays();
                    dev.tokenpress.kv.KvCache[] caches = new dev.tokenpress.kv.KvCache[seqs];
                    List<float[]> got = new java.util.ArrayList<>();
                    // made before the steps and closed after them: closing a cache drops the graphs, which would hide a
                    // replay of a step whose scratch the prefill below regrew
                    dev.tokenpress.kv.KvCache other = m.newCache(256);
                    int replaysBeforeLong = 0;
                    try {
                        for (int i = 0; i < seqs; i++) {
                            caches[i] = m.newCache(64);
                            m.prefill(caches[i], prompt(i, v), 0, false, null);
                        }
                        for (int t = 0; t < 12; t++) {
                            if (t == 6 && seqs == 6) { // a long prefill between steps grows the matmul scratch a captured step reads
                                int[] longPrompt = new int[200 + pass];
                                for (int j = 0; j < longPrompt.length; j++) longPrompt[j] = (j * 13 + 1) % v;
                                m.prefill(other, longPrompt, 0, false, null);
                                replaysBeforeLong = gpu.graphReplays();
                            }
                            dev.tokenpress.model.Llama.BatchRow[] rows = new dev.tokenpress.model.Llama.BatchRow[seqs];
                            for (int i = 0; i < seqs; i++)
                                rows[i] = new dev.tokenpress.model.Llama.BatchRow(caches[i], null, (t * 5 + i) % v, prompt(i, v).length + t);
                            m.decodeBatch(rows);
                            got.addAll(Arrays.asList(m.batchLogitsAll()));
                        }
                        if (pass == 1 && seqs == 6)
                            assertTrue(gpu.graphReplays() > replaysBeforeLong, "steps after the long prefill were replayed (" + gpu.graphStatus() + ")");
                    } finally {
                        for (dev.tokenpress.kv.KvCache c : caches) if (c != null) c.close();
                        other.close();
                        gpu.setBatchGraphs(false);
                    }
                    logits[pass] = got.toArray(new float[0][]);
                    if (pass == 1)
                        assertTrue(gpu.graphReplays() > replaysBefore, seqs + " sequences: no batched step was replayed (" + gpu.graphStatus() + ")");
                }
                for (int i = 0; i < logits[0].length; i++)
                    assertArrayEquals(logits[0][i], logits[1][i], seqs + " sequences: step " + i / seqs + " row " + i % seqs
                            + " (" + gpu.graphStatus() + ")");
            }
        }
    }

    /**
     * Pooled caches ({@code CudaBackend.setBatchAttention}: a batch's caches in one allocation, a member's layers at
     * device layer l·B + b): single-sequence work on a member gives a cache of its own's logits bit for bit (prefill,
     * decode steps, a copy into and out of the pool, a cleared member reused); a batched step over members in runs
     * (members 0, 1, 2 and then 4: two runs) stores and attends in one call per run and gives the per-row path's logits
     * within rounding (RoPE by its own kernel instead of the fused RoPE + store).
     */
    @Test
    void pooledCachesAndBatchedAttention() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        try (TokenPress tp = loadModel()) {
            dev.tokenpress.model.Llama m = tp.model();
            CudaBackend gpu = (CudaBackend) tp.backend();
            int v = tp.config().vocabSize();
            boolean before = gpu.batchAttention();
            gpu.setBatchAttention(true);
            dev.tokenpress.kv.KvCache[] pool = m.newCaches(64, 5);
            try {
                assertTrue(pool[1] instanceof CudaKvCache c && c.poolSize == 5 && c.member == 1, "a pool of five");
                // single-sequence work on a member = on a cache of its own
                for (int i : new int[] {0, 3, 4}) {
                    try (dev.tokenpress.kv.KvCache own = m.newCache(64)) {
                        int[] p = prompt(i, v);
                        m.prefill(own, p, 0, false, null);
                        float[] a = m.logits();
                        m.prefill(pool[i], p, 0, false, null);
                        assertArrayEquals(a, m.logits(), "prefill on member " + i);
                        for (int t = 0; t < 3; t++) {
                            m.decodeStep(own, (t + 3) % v, p.length + t);
                            a = m.logits();
                            m.decodeStep(pool[i], (t + 3) % v, p.length + t);
                            assertArrayEquals(a, m.logits(), "decode step " + t + " on member " + i);
                        }
                        tp.backend().copyKvCache(pool[i], own); // out of the pool
                        m.decodeStep(own, 9, p.length + 3);
                        a = m.logits();
                        m.decodeStep(pool[i], 9, p.length + 3);
                        assertArrayEquals(a, m.logits(), "a copy out of member " + i + " continues as the member");
                    }
                }
                // member 3 against a copy of its own, through a clear of member 4, frees, and copies into the pool
                try (dev.tokenpress.kv.KvCache own3 = m.newCache(64)) {
                    int p3 = prompt(3, v).length + 4;
                    tp.backend().copyKvCache(pool[3], own3);
                    pool[4].clear(); // a cleared member starts over; its neighbours keep their tokens, on the device too
                    assertEquals(0, pool[4].occupied(0, 0));
                    m.decodeStep(own3, 5, p3);
                    float[] a = m.logits();
                    m.decodeStep(pool[3], 5, p3);
                    assertArrayEquals(a, m.logits(), "member 3 after member 4 was cleared");
                    own3.freeFrom(p3 - 2); // frees on a member: flat indices of its own layers
                    pool[3].freeFrom(p3 - 2);
                    m.decodeStep(own3, 6, p3 - 2);
                    a = m.logits();
                    m.decodeStep(pool[3], 6, p3 - 2);
                    assertArrayEquals(a, m.logits(), "member 3 after freeing its last tokens");
                    tp.backend().copyKvCache(own3, pool[2]);   // into the pool
                    tp.backend().copyKvCache(pool[3], pool[1]); // between members
                    m.decodeStep(own3, 7, p3 - 1);
                    a = m.logits();
                    for (int i : new int[] {1, 2}) {
                        m.decodeStep(pool[i], 7, p3 - 1);
                        assertArrayEquals(a, m.logits(), "member " + i + " after a copy into it");
                    }
                }
                // batched steps: members 0, 1, 2 (one run) and 4 (another), against the per-row path on own caches
                int[] members = {0, 1, 2, 4};
                dev.tokenpress.kv.KvCache[] own = new dev.tokenpress.kv.KvCache[members.length];
                try {
                    for (int j = 0; j < members.length; j++) {
                        int i = members[j];
                        own[j] = m.newCache(64);
                        pool[i].clear();
                        m.prefill(own[j], prompt(i, v), 0, false, null);
                        m.prefill(pool[i], prompt(i, v), 0, false, null);
                    }
                    for (int t = 0; t < 6; t++) {
                        dev.tokenpress.model.Llama.BatchRow[] a = new dev.tokenpress.model.Llama.BatchRow[members.length];
                        dev.tokenpress.model.Llama.BatchRow[] b = new dev.tokenpress.model.Llama.BatchRow[members.length];
                        for (int j = 0; j < members.length; j++) {
                            int pos = prompt(members[j], v).length + t, tok = (t * 11 + j) % v;
                            a[j] = new dev.tokenpress.model.Llama.BatchRow(own[j], null, tok, pos);
                            b[j] = new dev.tokenpress.model.Llama.BatchRow(pool[members[j]], null, tok, pos);
                        }
                        gpu.setBatchAttention(false);
                        m.decodeBatch(a);
                        float[][] ref = m.batchLogitsAll();
                        gpu.setBatchAttention(true);
                        long calls = gpu.batchAttentionCalls();
                        m.decodeBatch(b);
                        assertTrue(gpu.batchAttentionCalls() > calls, "the batched attention ran (not the per-row path)");
                        float[][] got = m.batchLogitsAll();
                        for (int j = 0; j < members.length; j++) {
                            double nmse = CudaParityTest.nmse(ref[j], got[j]);
                            assertTrue(nmse < 1e-6, "batched attention, step " + t + " row " + j + ": nmse " + nmse);
                        }
                    }
                } finally {
                    for (dev.tokenpress.kv.KvCache c : own) if (c != null) c.close();
                }
            } finally {
                for (dev.tokenpress.kv.KvCache c : pool) c.close();
                gpu.setBatchAttention(before);
            }
        }
    }

    /**
     * Prompt scoring on the GPU (echo log-probabilities) reduces each row on the device (tp_lse_rows, top-k rows):
     * the log-probabilities and alternatives are those of the downloaded logits reduced on the host.
     */
    @Test
    void promptScoresReducedOnTheDeviceMatchTheDownloadedLogits() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        try (TokenPress tp = loadModel()) {
            int v = tp.config().vocabSize();
            int[] toks = prompt(7, v);
            float[] logits;
            try (Session s = tp.newSession(256)) {
                logits = s.logits(toks);
            }
            try (Session s = tp.newSession(256)) {
                Session.Score[] sc = s.score(toks, toks.length, 4);
                assertEquals(toks.length - 1, sc.length);
                for (int i = 0; i < sc.length; i++) {
                    double m = Double.NEGATIVE_INFINITY, z = 0;
                    for (int j = 0; j < v; j++) m = Math.max(m, logits[i * v + j]);
                    for (int j = 0; j < v; j++) z += Math.exp(logits[i * v + j] - m);
                    double lse = m + Math.log(z);
                    assertEquals(logits[i * v + toks[i + 1]] - lse, sc[i].logprob(), 1e-4, "position " + i);
                    Integer[] order = new Integer[v];
                    for (int j = 0; j < v; j++) order[j] = j;
                    final int row = i;
                    Arrays.sort(order, (a, b) -> Float.compare(logits[row * v + b], logits[row * v + a]));
                    for (int k = 0; k < 4; k++) {
                        assertEquals(order[k].intValue(), sc[i].topTokens()[k], "position " + i + ", alternative " + k);
                        assertEquals(logits[i * v + order[k]] - lse, sc[i].topLogprobs()[k], 1e-4);
                    }
                }
            }
        }
    }

    /**
     * Sampled decoding on the GPU from the device's top candidates (the default where the chain allows it: top-k and
     * penalties here) draws the same tokens as reading the whole row of logits back, with the same seed.
     */
    @Test
    void samplingFromTheDevicesTopCandidatesGivesTheWholeRowsTokens() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        SamplingOptions o = SamplingOptions.defaults().withSeed(9).withTemp(1.2).withPenalties(32, 1.15, 0.2, 0.1);
        try (TokenPress tp = loadModel()) {
            int[][] got = new int[2][];
            for (int run = 0; run < 2; run++) {
                String was = System.getProperty("tokenpress.candidateSampling");
                System.setProperty("tokenpress.candidateSampling", Boolean.toString(run == 0));
                try (Session s = tp.newSession(256)) {
                    s.setIgnoreEos(true);
                    got[run] = s.generate(prompt(2, 512), 48, o, null).tokens();
                } finally {
                    if (was == null) System.clearProperty("tokenpress.candidateSampling");
                    else System.setProperty("tokenpress.candidateSampling", was);
                }
            }
            assertEquals(48, got[0].length);
            assertArrayEquals(got[1], got[0], "sampling from the device's top-k changed the tokens");
        }
    }

    /** The test model (8 q-heads, 2 KV heads of head dim 64: the kernels' smallest), written to tmp and loaded on CUDA. */
    private TokenPress loadModel() {
        ModelWriter.write(tmp, CudaModelParityTest.config(512, 8, 2, 64, 4), 5, s -> {});
        return TokenPress.load(tmp, LoadOptions.defaults().withDevice("cuda"));
    }

    private static int[] prompt(int i, int vocab) {
        int[] p = new int[6 + 3 * i];
        for (int j = 0; j < p.length; j++) p[j] = (j * 31 + i * 17 + 1) % vocab;
        return p;
    }
}
