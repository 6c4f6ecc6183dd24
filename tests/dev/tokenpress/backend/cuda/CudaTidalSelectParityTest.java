package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.kv.quant.KvQuantSpec;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static dev.tokenpress.backend.cuda.CudaParityTest.nmse;
import static org.junit.jupiter.api.Assertions.*;

/**
 * TidalDecode's device selection ({@code Backend.selectTopSlots}, cuda/tidal_select.cu) against the CPU op, and
 * decode attention over the device-resident selection against the CPU attention over the CPU selection.
 *
 * <p>Ties: the GPU sums q·k in another order than the CPU, so two slots whose scores are equal or differ in the
 * last bits may rank differently. The caches here make every score exact and distinct on both backends: q is
 * 1, 1/64, 1/4096 in three dims and 0 elsewhere, and those three key dims are integers in [-32, 31] (bf16-exact)
 * forming a distinct triple per slot, so q·k = k0 + k1/64 + k2/4096 exactly in f32 in any summation order. All
 * q-heads of a group share q (the max is that score, the sum group × score, both exact). With equal scores both
 * backends take the lower slot (+0 and -0 are equal), but which scores come out equal may differ.
 * Variants 1 and 2 compute the scores with the CPU's arithmetic per dot product and must select exactly the CPU's
 * slots. Variant 3 sums each q·k in another order (lane partials + shuffles), so in general its scores may differ
 * in the last bits and near-ties at the threshold may go either way: it is checked for what is guaranteed
 * ({@link #assertValidSelection}), on these caches and on caches with inexact scores ({@link #inexactScores}).
 * The whole-model tidal runs (device-only, sum, and a composite that downloads the selection) are compared with
 * {@link CudaPolicyModelParityTest}'s criteria; the standalone run must replay CUDA graphs.
 */
class CudaTidalSelectParityTest {
    static Backend cpu;
    static CudaBackend gpu;

    /**
     * The implementations of tp_tidal_select (cuda/tidal_select.cu): 1 the first, 2 the multi-block one, 3 v2 with
     * the coalesced score kernel (checked by {@link #assertValidSelection}); the default (auto) is restored after.
     */
    static final int[] VARIANTS = {1, 2, 3};
    /** Variants whose scores are the CPU's bit for bit (exact selection checks). */
    static boolean exact(int variant) {
        return variant != 3;
    }
    static int DEFAULT_VARIANT;

    static void setVariant(int v) {
        assertEquals(0, TpNative.tp_set_tidal_select_variant(v), "tp_set_tidal_select_variant(" + v + ")");
    }

    @BeforeAll
    static void open() {
        System.setProperty("tokenpress.cuda.deviceSelect", "true"); // the default, whatever the environment says
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        cpu = new CpuBackend();
        gpu = CudaBackend.open();
        DEFAULT_VARIANT = TpNative.tp_get_tidal_select_variant();
        System.out.println("[parity] tidal selection on " + gpu.description() + " (default variant " + DEFAULT_VARIANT + ")");
    }

    @AfterAll
    static void close() {
        System.clearProperty("tokenpress.cuda.deviceSelect");
        if (gpu != null) gpu.close();
        if (cpu != null) cpu.close();
    }

    record Pair(KvCache c, KvCache g) implements AutoCloseable {
        /** Frees the slot in both caches. */
        void free(int layer, int head, int slot) {
            c.free(layer, head, slot);
            g.free(layer, head, slot);
        }

        @Override
        public void close() {
            c.close();
            g.close();
        }
    }

    /** Keys: dims 0..2 a distinct integer triple per (slot, KV head), other dims random bf16; values random. */
    static Pair filled(int hkv, int hd, int len, int capacity, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        KvCache cc = cpu.newKvCache(2, hkv, hd, capacity), cg = gpu.newKvCache(2, hkv, hd, capacity);
        int chunk = 4096;
        Tensor kc = cpu.allocate(chunk, hkv * hd), vc = cpu.allocate(chunk, hkv * hd);
        Tensor kg = gpu.allocate(chunk, hkv * hd), vg = gpu.allocate(chunk, hkv * hd);
        int[][] perm = new int[hkv][];
        for (int g = 0; g < hkv; g++) perm[g] = permutation(r, 64 * 64 * 64);
        for (int done = 0; done < len; done += chunk) {
            int m = Math.min(chunk, len - done);
            int[] pos = new int[m];
            for (int i = 0; i < m; i++) pos[i] = done + i;
            float[] k = new float[m * hkv * hd], v = new float[m * hkv * hd];
            for (int i = 0; i < k.length; i++) {
                k[i] = bf16((float) r.nextGaussian());
                v[i] = bf16((float) r.nextGaussian());
            }
            for (int i = 0; i < m; i++)
                for (int g = 0; g < hkv; g++) {
                    int t = perm[g][done + i], off = (i * hkv + g) * hd;
                    k[off] = (t & 63) - 32;
                    k[off + 1] = ((t >> 6) & 63) - 32;
                    k[off + 2] = ((t >> 12) & 63) - 32;
                }
            cpu.upload(kc, k);
            cpu.upload(vc, v);
            gpu.upload(kg, k);
            gpu.upload(vg, v);
            for (int layer = 0; layer < 2; layer++) {
                int[][] sc = new int[hkv][], sg = new int[hkv][];
                for (int g = 0; g < hkv; g++) {
                    sc[g] = cc.allocate(layer, g, pos, m);
                    sg[g] = cg.allocate(layer, g, pos, m);
                    assertArrayEquals(sc[g], sg[g]);
                }
                cpu.storeKv(cc, layer, kc, vc, sc, m);
                gpu.storeKv(cg, layer, kg, vg, sg, m);
            }
        }
        return new Pair(cc, cg);
    }

    static float bf16(float f) {
        return Half.bf16ToFloat(Half.floatToBf16(f));
    }

    static int[] permutation(SplittableRandom r, int n) {
        int[] p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        for (int i = n - 1; i > 0; i--) {
            int j = r.nextInt(i + 1), t = p[i];
            p[i] = p[j];
            p[j] = t;
        }
        return p;
    }

    /** q rows [3, H*hd]: per KV head g one q (signs random), shared by its group's q-heads. */
    static float[] queries(SplittableRandom r, int heads, int hkv, int hd) {
        float[] q = new float[3 * heads * hd];
        int group = heads / hkv;
        for (int row = 0; row < 3; row++)
            for (int g = 0; g < hkv; g++) {
                float s0 = r.nextBoolean() ? 1 : -1, s1 = r.nextBoolean() ? 1 : -1, s2 = r.nextBoolean() ? 1 : -1;
                for (int h = g * group; h < (g + 1) * group; h++) {
                    int off = (row * heads + h) * hd;
                    q[off] = s0;
                    q[off + 1] = s1 / 64f;
                    q[off + 2] = s2 / 4096f;
                }
            }
        return q;
    }

    static Stream<Arguments> cases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 4, 8})
                for (int len : new int[] {1, 9, 81, 4097, 33001}) a.add(Arguments.of(hd, group, 2, len));
        a.add(Arguments.of(64, 4, 8, 33001));   // the llama-1b shape
        a.add(Arguments.of(64, 4, 2, 131075));  // past 128K
        // v2's score kernel with exactly 48 KiB of dynamic shared memory (plus its static 160 bytes): opt-in needed
        a.add(Arguments.of(64, 16, 2, 20000));
        a.add(Arguments.of(128, 12, 2, 20000));
        return a.stream();
    }

    static void assertSameSelection(SlotSelection want, SlotSelection got, String what) {
        assertNotNull(got.slots(), what);
        assertArrayEquals(want.count(), got.count(), what + ": counts");
        for (int g = 0; g < want.count().length; g++)
            assertArrayEquals(Arrays.copyOf(want.slots()[g], want.count()[g]), Arrays.copyOf(got.slots()[g], got.count()[g]),
                    what + ": KV head " + g);
    }

    /**
     * The CPU's group scores of selectTopSlots per KV head, score[g][slot] for slot in [0, highWater) (-infinity =
     * not visible): queryKeyScores' raw q·k reduced over the group in q-head order (max or sum).
     */
    static float[][] groupScores(Tensor q, int row, int queryPos, KvCache c, int layer, int heads, boolean sum) {
        return groupScores(cpu, q, row, queryPos, c, layer, heads, sum);
    }

    /** {@link #groupScores} with the given CPU backend. */
    static float[][] groupScores(Backend cpu, Tensor q, int row, int queryPos, KvCache c, int layer, int heads, boolean sum) {
        int hkv = c.kvHeads(), group = heads / hkv;
        float[][] raw = new float[heads][c.capacity()];
        cpu.queryKeyScores(raw, q, row, queryPos, c, layer);
        float[][] score = new float[hkv][];
        for (int g = 0; g < hkv; g++) {
            int hw = c.highWater(layer, g);
            score[g] = new float[hw];
            for (int s = 0; s < hw; s++) {
                float v = sum ? 0f : Float.NEGATIVE_INFINITY;
                boolean any = false;
                for (int h = g * group; h < (g + 1) * group; h++) {
                    float r = raw[h][s];
                    if (r == Float.NEGATIVE_INFINITY) continue;
                    any = true;
                    v = sum ? v + r : Math.max(v, r);
                }
                score[g][s] = any ? v : Float.NEGATIVE_INFINITY;
            }
        }
        return score;
    }

    /**
     * What a selection whose scores may differ from the CPU's in the last bits guarantees, per KV head g: exactly
     * count = min(k, visible) (the CPU's count) distinct visible slots below the high-water mark in ascending order;
     * the slot holding {@code current} (the last one) included when it is visible and count > 0; every other
     * selected slot's CPU score >= every other unselected visible slot's CPU score - tol; and the set equal to the
     * CPU's except for slots whose CPU scores are within tol of the CPU's threshold (its lowest selected score
     * other than the current slot's). tol = 1e-5 * (1 + max |visible score|) (>= 1e-5 * (1 + |threshold|)): the
     * rounding of a reordered f32 sum scales with the magnitudes summed, not with the result.
     */
    static void assertValidSelection(SlotSelection want, SlotSelection got, float[][] score, KvCache c, int layer,
                                     int k, int current, String what) {
        assertNotNull(got.slots(), what);
        assertEquals(want.count().length, got.count().length, what + ": KV heads");
        for (int g = 0; g < score.length; g++) {
            String wg = what + ": KV head " + g;
            float[] sc = score[g];
            int hw = sc.length;
            int[] pos = c.positions(layer, g);
            int visible = 0, cur = -1;
            float maxAbs = 0f;
            for (int s = 0; s < hw; s++) {
                if (pos[s] == current) cur = s;
                if (sc[s] != Float.NEGATIVE_INFINITY) {
                    visible++;
                    maxAbs = Math.max(maxAbs, Math.abs(sc[s]));
                }
            }
            int total = Math.min(k, visible);
            assertEquals(total, want.count()[g], wg + ": CPU count");
            assertEquals(total, got.count()[g], wg + ": count");
            int[] gs = Arrays.copyOf(got.slots()[g], total), ws = Arrays.copyOf(want.slots()[g], total);
            boolean[] in = new boolean[hw], inWant = new boolean[hw];
            for (int i = 0; i < total; i++) {
                int s = gs[i];
                assertTrue(s >= 0 && s < hw, wg + ": slot " + s + " outside [0, " + hw + ")");
                if (i > 0) assertTrue(s > gs[i - 1], wg + ": not strictly ascending at " + i + ": " + gs[i - 1] + ", " + s);
                assertTrue(sc[s] != Float.NEGATIVE_INFINITY, wg + ": slot " + s + " is not visible");
                in[s] = true;
                inWant[ws[i]] = true;
            }
            boolean forced = cur >= 0 && sc[cur] != Float.NEGATIVE_INFINITY && total > 0;
            if (forced) assertTrue(in[cur], wg + ": the current slot " + cur + " is missing");
            float minSel = Float.POSITIVE_INFINITY, maxUnsel = Float.NEGATIVE_INFINITY, thr = Float.POSITIVE_INFINITY;
            for (int s = 0; s < hw; s++) {
                if ((forced && s == cur) || sc[s] == Float.NEGATIVE_INFINITY) continue;
                if (in[s]) minSel = Math.min(minSel, sc[s]);
                else maxUnsel = Math.max(maxUnsel, sc[s]);
                if (inWant[s]) thr = Math.min(thr, sc[s]);
            }
            double tol = 1e-5 * (1 + maxAbs);
            if (minSel != Float.POSITIVE_INFINITY && maxUnsel != Float.NEGATIVE_INFINITY)
                assertTrue(minSel >= maxUnsel - tol, wg + ": a selected score " + minSel + " below an unselected " + maxUnsel + " (tol " + tol + ")");
            int differ = 0;
            for (int s = 0; s < hw; s++) {
                if (in[s] == inWant[s]) continue;
                differ++;
                assertTrue(Math.abs(sc[s] - thr) <= tol, wg + ": slot " + s + " (score " + sc[s] + ") selected " + in[s]
                        + " but " + inWant[s] + " on the CPU, not a near-tie of the threshold " + thr + " (tol " + tol + ")");
            }
        }
    }

    @ParameterizedTest(name = "hd={0} group={1} hkv={2} len={3}")
    @MethodSource("cases")
    void selectionMatchesCpu(int hd, int group, int hkv, int len) {
        int heads = hkv * group, layer = 1;
        SplittableRandom r = new SplittableRandom(len * 31L + hd + group);
        try (Pair p = filled(hkv, hd, len, len + 5, r.nextLong())) {
            // every third slot of layer 1 freed plus the top two of KV head 0 (different high-water marks)
            if (len > 9) {
                for (int g = 0; g < hkv; g++)
                    for (int s = 2; s < len; s += 3) {
                        p.free(layer, g, s);
                    }
                p.free(layer, 0, len - 1);
            }
            float[] qd = queries(r, heads, hkv, hd);
            Tensor qc = cpu.allocate(3, heads * hd), qg = gpu.allocate(3, heads * hd);
            cpu.upload(qc, qd);
            gpu.upload(qg, qd);
            Tensor oc = cpu.allocate(1, heads * hd), og = gpu.allocate(1, heads * hd);
            Tensor q1c = cpu.allocate(1, heads * hd), q1g = gpu.allocate(1, heads * hd);
            cpu.copyRows(q1c, 0, qc, 1, 1);
            gpu.copyRows(q1g, 0, qg, 1, 1);
            // (query position, current position): last token; causal cut; current freed/absent; invisible current
            int[][] qcases = {{len - 1, len - 1}, {len / 2, len / 2}, {len - 1, len + 7}, {len / 3, len - 2}};
            for (int[] qcase : qcases) {
                int qpos = qcase[0], current = qcase[1];
                float[][][] scores = {groupScores(qc, 1, qpos, p.c, layer, heads, false), groupScores(qc, 1, qpos, p.c, layer, heads, true)};
                for (int k : new int[] {0, 1, 2, 64, 2048, Math.max(1, len - 1), len + 5})
                    for (boolean sum : new boolean[] {false, true}) {
                        SlotSelection want = cpu.selectTopSlots(qc, 1, qpos, p.c, layer, k, sum, current, true);
                        for (int variant : VARIANTS) {
                            setVariant(variant);
                            String what = "v" + variant + " hd=" + hd + " group=" + group + " len=" + len + " qpos=" + qpos + " current=" + current + " k=" + k + " sum=" + sum;
                            SlotSelection host = gpu.selectTopSlots(qg, 1, qpos, p.g, layer, k, sum, current, true);
                            SlotSelection dev = gpu.selectTopSlots(qg, 1, qpos, p.g, layer, k, sum, current, false);
                            assertNull(dev.slots(), what);
                            SlotSelection down = gpu.hostSelection(dev);
                            if (exact(variant)) {
                                assertSameSelection(want, host, what + " (host copy)");
                                assertSameSelection(want, down, what + " (device, downloaded)");
                            } else {
                                float[][] sc = scores[sum ? 1 : 0];
                                assertValidSelection(want, host, sc, p.c, layer, k, current, what + " (host copy)");
                                assertSameSelection(host, down, what + " (device, downloaded; deterministic)");
                            }
                            if (k == 0 || k == 64 || k == 2048) {
                                // decode attention over the device selection (no upload) vs the CPU over the same
                                // selection (the CPU's own where the variant is exact)
                                cpu.attention(oc, q1c, p.c, layer, new int[] {qpos}, 1, exact(variant) ? want : down, null);
                                gpu.attention(og, q1g, p.g, layer, new int[] {qpos}, 1, dev, null);
                                double e = nmse(cpu.download(oc, 0, 1), gpu.download(og, 0, 1));
                                assertTrue(e < 1e-4, what + ": attention nmse " + e);
                            }
                        }
                    }
            }
            setVariant(DEFAULT_VARIANT);
            // a replaced device selection is refused, not read
            SlotSelection a = gpu.selectTopSlots(qg, 1, len - 1, p.g, layer, 4, false, len - 1, false);
            gpu.selectTopSlots(qg, 1, len - 1, p.g, layer, 4, false, len - 1, false);
            assertThrows(IllegalArgumentException.class, () -> gpu.hostSelection(a));
        }
    }

    static Stream<Arguments> fusedCases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 4, 8})
                for (int len : new int[] {1, 9, 81, 4097, 33001}) a.add(Arguments.of(hd, group, 2, len));
        a.add(Arguments.of(64, 4, 8, 33001));   // the llama-1b shape
        a.add(Arguments.of(64, 4, 2, 131075));  // past 128K: the selection's multi-block passes
        a.add(Arguments.of(64, 12, 2, 4097));   // more than 8 q-heads per KV head: the two calls
        return a.stream();
    }

    /**
     * The selection layer's attention making the selection ({@code tp_decode_attention_select} through
     * {@link CudaBackend#setFusedSelect}): a queued selectTopSlots, then the layer's attention. With the tensor-core
     * attention (v3, the default) and at most 8 q-heads per KV head the keys come from the attention's own scores:
     * the output must equal the plain attention's and the selection must pass {@link #assertValidSelection} against
     * the CPU (Gaussian q, so the scores are rounded); with attention v2 (the two calls) both must be the separate
     * calls' exactly. Freed slots (different high-water marks), a causal cut and an absent current token included.
     */
    @ParameterizedTest(name = "hd={0} group={1} hkv={2} len={3}")
    @MethodSource("fusedCases")
    void selectionFromTheLayersAttention(int hd, int group, int hkv, int len) {
        int heads = hkv * group, layer = 1;
        SplittableRandom r = new SplittableRandom(len * 13L + hd * 5L + group);
        try (Pair p = filled(hkv, hd, len, len + 5, r.nextLong())) {
            if (len > 9) {
                for (int g = 0; g < hkv; g++)
                    for (int s = 4; s < len; s += 5) {
                        p.free(layer, g, s);
                    }
                p.free(layer, 1, len - 1);
            }
            float[] qd = new float[heads * hd];
            for (int i = 0; i < qd.length; i++) qd[i] = (float) r.nextGaussian();
            Tensor qc = cpu.allocate(1, heads * hd), qg = gpu.allocate(1, heads * hd), qNeg = gpu.allocate(1, heads * hd);
            Tensor plain = gpu.allocate(1, heads * hd), fused = gpu.allocate(1, heads * hd);
            cpu.upload(qc, qd);
            gpu.upload(qg, qd);
            float[] neg = qd.clone();
            for (int i = 0; i < neg.length; i++) neg[i] = -neg[i];
            gpu.upload(qNeg, neg);
            int variant = gpu.attentionVariant();
            try {
                for (int attn : new int[] {3, 2}) {
                    gpu.setAttentionVariant(attn);
                    boolean keysFromAttention = attn == 3 && group <= 8;
                    for (int[] qcase : new int[][] {{len - 1, len - 1}, {len / 2, len / 2}, {len - 1, len + 7}}) {
                        int qpos = qcase[0], current = qcase[1];
                        for (boolean sum : new boolean[] {false, true}) {
                            float[][] sc = groupScores(qc, 0, qpos, p.c, layer, heads, sum);
                            for (int k : new int[] {0, 1, 64, 2048, len + 5}) {
                                String what = "attention v" + attn + " hd=" + hd + " group=" + group + " len=" + len + " qpos=" + qpos
                                        + " current=" + current + " k=" + k + " sum=" + sum;
                                SlotSelection want = cpu.selectTopSlots(qc, 0, qpos, p.c, layer, k, sum, current, true);
                                gpu.setFusedSelect(false);
                                SlotSelection sep = gpu.selectTopSlots(qg, 0, qpos, p.g, layer, k, sum, current, true);
                                gpu.attention(plain, qg, p.g, layer, new int[] {qpos}, 1, null, null);
                                float[] outPlain = gpu.download(plain, 0, 1);
                                // the workspace's keys now those of -q: a fused call that left any key unwritten
                                // would select from them
                                gpu.selectTopSlots(qNeg, 0, qpos, p.g, layer, k, sum, current, true);
                                gpu.setFusedSelect(true);
                                long calls = gpu.fusedSelectCalls();
                                SlotSelection dev = gpu.selectTopSlots(qg, 0, qpos, p.g, layer, k, sum, current, false);
                                gpu.attention(fused, qg, p.g, layer, new int[] {qpos}, 1, null, null);
                                assertEquals(calls + 1, gpu.fusedSelectCalls(), what + ": the attention made the selection");
                                SlotSelection got = gpu.hostSelection(dev);
                                float[] outFused = gpu.download(fused, 0, 1);
                                for (int i = 0; i < outPlain.length; i++)
                                    assertEquals(outPlain[i], outFused[i], 1e-6f * (1 + Math.abs(outPlain[i])), what + ": attention output " + i);
                                if (keysFromAttention) {
                                    assertValidSelection(want, got, sc, p.c, layer, k, current, what);
                                } else {
                                    assertArrayEquals(outPlain, outFused, what + ": the two calls' attention output");
                                    assertSameSelection(sep, got, what + ": the two calls' selection");
                                }
                            }
                        }
                    }
                }
            } finally {
                gpu.setFusedSelect(false);
                gpu.setAttentionVariant(variant);
            }
            // the same fused call with the selection's passes on a second stream: the same selection and output, the
            // selection joined by the op that reads it (here the host copy, then a sparse attention over it)
            gpu.setFusedSelect(true);
            boolean sideBefore = gpu.sideSelect();
            Tensor sparse = gpu.allocate(1, heads * hd), sparseOne = gpu.allocate(1, heads * hd);
            try {
                for (int k : new int[] {1, 64, 2048}) {
                    String what = "second stream hd=" + hd + " group=" + group + " len=" + len + " k=" + k;
                    gpu.setSideSelect(false);
                    SlotSelection one = gpu.selectTopSlots(qg, 0, len - 1, p.g, layer, k, false, len - 1, false);
                    gpu.attention(plain, qg, p.g, layer, new int[] {len - 1}, 1, null, null);
                    SlotSelection oneHost = gpu.hostSelection(one);
                    float[] outOne = gpu.download(plain, 0, 1);
                    gpu.attention(sparseOne, qg, p.g, layer, new int[] {len - 1}, 1, one, null); // while it is current
                    gpu.selectTopSlots(qNeg, 0, len - 1, p.g, layer, k, false, len - 1, true); // -q's keys in the workspace
                    gpu.setSideSelect(true);
                    SlotSelection two = gpu.selectTopSlots(qg, 0, len - 1, p.g, layer, k, false, len - 1, false);
                    gpu.attention(fused, qg, p.g, layer, new int[] {len - 1}, 1, null, null);
                    gpu.attention(sparse, qg, p.g, layer, new int[] {len - 1}, 1, two, null); // joins the second stream
                    assertSameSelection(oneHost, gpu.hostSelection(two), what + ": selection");
                    assertArrayEquals(outOne, gpu.download(fused, 0, 1), what + ": attention output");
                    assertArrayEquals(gpu.download(sparseOne, 0, 1), gpu.download(sparse, 0, 1), what + ": sparse attention");
                }
            } finally {
                gpu.setSideSelect(sideBefore);
                gpu.setFusedSelect(false);
            }
            // a queued selection that another op needs first runs on its own: here a sparse attention over it
            gpu.setFusedSelect(true);
            try {
                SlotSelection dev = gpu.selectTopSlots(qg, 0, len - 1, p.g, layer, 16, false, len - 1, false);
                gpu.attention(fused, qg, p.g, layer, new int[] {len - 1}, 1, dev, null); // not the full attention: flushed
                SlotSelection want = cpu.selectTopSlots(qc, 0, len - 1, p.c, layer, 16, false, len - 1, true);
                float[][] sc = groupScores(qc, 0, len - 1, p.c, layer, heads, false);
                assertValidSelection(want, gpu.hostSelection(dev), sc, p.c, layer, 16, len - 1, "flushed before a sparse attention");
                Tensor oc = cpu.allocate(1, heads * hd);
                cpu.attention(oc, qc, p.c, layer, new int[] {len - 1}, 1, gpu.hostSelection(dev), null);
                double e = nmse(cpu.download(oc, 0, 1), gpu.download(fused, 0, 1));
                assertTrue(e < 1e-4, "attention over a flushed selection: nmse " + e);
            } finally {
                gpu.setFusedSelect(false);
            }
        }
    }

    /**
     * The collect pass with its candidate loads batched ({@code tp_tidal_select_set_collect_batch(1)}) selects exactly
     * what the one-at-a-time pass selects: the selection op (v3 from 16K on) and the selection from the layer's
     * attention, past 16K where the multi-block passes run, group max and sum, k from 1 to more than the context.
     */
    @ParameterizedTest(name = "hkv={0} len={1}")
    @org.junit.jupiter.params.provider.CsvSource({"8,33001", "2,131075", "3,20000"})
    void batchedCollectSelectsTheSame(int hkv, int len) {
        int hd = 64, group = 4, heads = hkv * group, layer = 1;
        SplittableRandom r = new SplittableRandom(len * 7L + hkv);
        try (Pair p = filled(hkv, hd, len, len + 5, r.nextLong())) {
            for (int s = 6; s < len; s += 11) p.g.free(layer, hkv - 1, s); // a head with holes
            float[] qd = new float[heads * hd];
            for (int i = 0; i < qd.length; i++) qd[i] = (float) r.nextGaussian();
            Tensor qg = gpu.allocate(1, heads * hd), out = gpu.allocate(1, heads * hd);
            gpu.upload(qg, qd);
            try {
                for (boolean fused : new boolean[] {false, true})
                    for (boolean sum : new boolean[] {false, true})
                        for (int k : new int[] {1, 2048, len + 5}) {
                            String what = "hkv=" + hkv + " len=" + len + " fused=" + fused + " sum=" + sum + " k=" + k;
                            gpu.setFusedSelect(fused);
                            SlotSelection[] got = new SlotSelection[2];
                            for (int batch = 0; batch <= 1; batch++) {
                                assertEquals(TpNative.TP_OK, TpNative.tp_tidal_select_set_collect_batch(batch));
                                SlotSelection dev = gpu.selectTopSlots(qg, 0, len - 1, p.g, layer, k, sum, len - 1, !fused);
                                if (fused) gpu.attention(out, qg, p.g, layer, new int[] {len - 1}, 1, null, null);
                                got[batch] = gpu.hostSelection(dev);
                            }
                            assertSameSelection(got[0], got[1], what);
                        }
            } finally {
                TpNative.tp_tidal_select_set_collect_batch(0);
                gpu.setFusedSelect(false);
            }
        }
    }

    static Stream<Arguments> inexactCases() {
        // head dims the CUDA KV cache holds (64, 128); a group of 3 leaves v3 a register head unused
        return Stream.of(Arguments.of(64, 4, 8, 33001), Arguments.of(128, 8, 2, 33001), Arguments.of(128, 3, 2, 9000),
                Arguments.of(64, 12, 2, 4097), Arguments.of(64, 1, 2, 100));
    }

    /**
     * Gaussian q (every q-head its own): the scores are rounded, so only v1 and v2 agree bit for bit; every variant
     * must pass {@link #assertValidSelection} against the CPU. A group of 3 (v3: one register head unused) and of 12
     * (v3 falls back to v2's score kernel) included.
     */
    @ParameterizedTest(name = "hd={0} group={1} hkv={2} len={3}")
    @MethodSource("inexactCases")
    void inexactScores(int hd, int group, int hkv, int len) {
        int heads = hkv * group, layer = 1;
        SplittableRandom r = new SplittableRandom(len * 17L + hd * 3L + group);
        try (Pair p = filled(hkv, hd, len, len + 5, r.nextLong())) {
            for (int g = 0; g < hkv; g++)
                for (int s = 5; s < len; s += 7) {
                    p.free(layer, g, s);
                }
            float[] qd = new float[heads * hd];
            for (int i = 0; i < qd.length; i++) qd[i] = (float) r.nextGaussian();
            Tensor qc = cpu.allocate(1, heads * hd), qg = gpu.allocate(1, heads * hd);
            cpu.upload(qc, qd);
            gpu.upload(qg, qd);
            try {
                for (int[] qcase : new int[][] {{len - 1, len - 1}, {len / 3, len - 2}}) {
                    int qpos = qcase[0], current = qcase[1];
                    for (boolean sum : new boolean[] {false, true}) {
                        float[][] sc = groupScores(qc, 0, qpos, p.c, layer, heads, sum);
                        for (int k : new int[] {1, 64, 2048, Math.max(1, len - 1)}) {
                            SlotSelection want = cpu.selectTopSlots(qc, 0, qpos, p.c, layer, k, sum, current, true);
                            SlotSelection[] got = new SlotSelection[4];
                            for (int variant : VARIANTS) {
                                setVariant(variant);
                                String what = "v" + variant + " hd=" + hd + " group=" + group + " len=" + len + " qpos=" + qpos + " current=" + current + " k=" + k + " sum=" + sum;
                                got[variant] = gpu.selectTopSlots(qg, 0, qpos, p.g, layer, k, sum, current, true);
                                assertValidSelection(want, got[variant], sc, p.c, layer, k, current, what);
                            }
                            assertSameSelection(got[1], got[2], "v1 vs v2 hd=" + hd + " group=" + group + " len=" + len + " k=" + k + " sum=" + sum);
                        }
                    }
                }
            } finally {
                setVariant(DEFAULT_VARIANT);
            }
        }
    }

    /** Closing a cache frees its device selections: a handle made for it is refused afterwards, not read. */
    @Test
    void selectionOfAClosedCacheIsNoLongerCurrent() {
        int hkv = 2, hd = 64, heads = 8, len = 100;
        Pair p = filled(hkv, hd, len, len + 4, 5);
        Tensor qg = gpu.allocate(3, heads * hd);  // queries() gives three rows
        gpu.upload(qg, queries(new SplittableRandom(6), heads, hkv, hd));
        SlotSelection s = gpu.selectTopSlots(qg, 0, len - 1, p.g(), 1, 8, false, len - 1, false);
        assertNotNull(gpu.hostSelection(s).slots());
        p.close();
        assertThrows(IllegalArgumentException.class, () -> gpu.hostSelection(s));
    }

    @Test
    void quantizedOrForeignCachesAreUnsupported() {
        try (KvCache c = cpu.newKvCache(1, 1, 64, 8)) {
            Tensor q = gpu.allocate(1, 64);
            assertThrows(dev.tokenpress.backend.UnsupportedOpException.class,
                    () -> gpu.selectTopSlots(q, 0, 0, c, 0, 4, false, 0, false));
        }
    }

    @TempDir
    static Path tmp;

    /** Prompt + STEPS decode steps of CudaPolicyModelParityTest's model (same seed and shape), fed {@code feed} or greedy. */
    static CudaPolicyModelParityTest.Run run(Backend b, Path dir, LlamaConfig cfg, String spec, int[] feed) {
        int[] prompt = new int[CudaPolicyModelParityTest.PROMPT];
        for (int i = 0; i < prompt.length; i++) prompt[i] = (i * 53 + 11) % cfg.vocabSize();
        return CudaPolicyModelParityTest.run(b, dir, cfg, prompt, spec, KvQuantSpec.NONE, feed);
    }

    @ParameterizedTest(name = "cuda {0}")
    @ValueSource(strings = {"tidal:k=16,full_layers=1,reselect=2", "tidal:k=16,full_layers=1,reselect=2,group=sum",
            "tidal:k=8,full_layers=1,reselect=-1", "window:sink=4,budget=40+tidal:k=16,full_layers=1,reselect=2"})
    void tidalModelMatchesCpu(String spec) {
        tidalModel(spec, false, false);
    }

    /**
     * The same runs with the selection made by the selection layers' attention ({@link CudaBackend#setFusedSelect}):
     * the standalone policy selects through it (in CUDA graphs), the composite (selections translated on the host)
     * through the plain op.
     */
    @ParameterizedTest(name = "cuda fused selection {0}")
    @ValueSource(strings = {"tidal:k=16,full_layers=1,reselect=2", "tidal:k=16,full_layers=1,reselect=2,group=sum",
            "window:sink=4,budget=40+tidal:k=16,full_layers=1,reselect=2"})
    void tidalModelWithTheSelectionFromAttentionMatchesCpu(String spec) {
        tidalModel(spec, true, false);
    }

    /**
     * The same with that selection's passes on a second stream ({@link CudaBackend#setSideSelect}), joined before
     * the next op that may read it: in CUDA graphs (fork and join as graph edges) and eagerly (the first step).
     */
    @ParameterizedTest(name = "cuda fused selection on a second stream {0}")
    @ValueSource(strings = {"tidal:k=16,full_layers=1,reselect=2", "tidal:k=16,full_layers=1,reselect=2,group=sum"})
    void tidalModelWithTheSelectionOnASecondStreamMatchesCpu(String spec) {
        tidalModel(spec, true, true);
    }

    private void tidalModel(String spec, boolean fusedSelect, boolean side) {
        Path dir = tmp.resolve("tidal-model");
        LlamaConfig cfg = Files.exists(dir.resolve(SafeTensors.SINGLE_FILE)) ? ConfigLoader.load(dir)
                : ModelWriter.write(dir, CudaModelParityTest.config(512, 8, 2, 64, 4), 23, s -> {});
        CudaPolicyModelParityTest.Run ref;
        try (CpuBackend c = new CpuBackend()) {
            ref = run(c, dir, cfg, spec, null);
        }
        CudaBackend b = CudaBackend.open();
        b.setFusedSelect(fusedSelect);
        b.setSideSelect(side);
        CudaPolicyModelParityTest.Run got;
        String graphs;
        int replays;
        long fusedCalls;
        try {
            got = run(b, dir, cfg, spec, ref.fed());
            graphs = b.graphStatus();
            replays = b.graphReplays();
            fusedCalls = b.fusedSelectCalls();
        } finally {
            b.close();
        }
        CudaPolicyModelParityTest.compare("cuda " + spec + (fusedSelect ? " fused selection" : "") + (side ? " on a second stream" : "")
                + " (" + graphs + ")", ref, got);
        if (!spec.contains("+")) assertTrue(replays > 0, spec + ": a selecting decode step should replay graphs: " + graphs);
        if (fusedSelect && !spec.contains("+")) assertTrue(fusedCalls > 0, spec + ": no selection was made by an attention call");
        if (!fusedSelect || spec.contains("+")) assertEquals(0, fusedCalls, spec + ": selections made by attention calls");
    }
}
