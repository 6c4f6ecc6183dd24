package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvPolicies;
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
 * The whole-model tidal runs (device-only, sum, and a composite that downloads the selection) are compared with
 * {@link CudaPolicyModelParityTest}'s criteria; the standalone run must replay CUDA graphs.
 */
class CudaTidalSelectParityTest {
    static Backend cpu;
    static CudaBackend gpu;

    /** Both implementations of tp_tidal_select (cuda/tidal_select.cu): 1 the first, 2 the multi-block one; the default (auto) is restored after. */
    static final int[] VARIANTS = {1, 2};
    static int DEFAULT_VARIANT;

    static void setVariant(int v) {
        assertEquals(0, TpNative.tp_set_tidal_select_variant(v), "tp_set_tidal_select_variant(" + v + ")");
    }

    @BeforeAll
    static void open() {
        System.setProperty("tokenpress.cuda.deviceSelect", "true"); // the code under test is opt-in until it has passed on a GPU
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
        return a.stream();
    }

    static void assertSameSelection(SlotSelection want, SlotSelection got, String what) {
        assertNotNull(got.slots(), what);
        assertArrayEquals(want.count(), got.count(), what + ": counts");
        for (int g = 0; g < want.count().length; g++)
            assertArrayEquals(Arrays.copyOf(want.slots()[g], want.count()[g]), Arrays.copyOf(got.slots()[g], got.count()[g]),
                    what + ": KV head " + g);
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
                        p.c.free(layer, g, s);
                        p.g.free(layer, g, s);
                    }
                p.c.free(layer, 0, len - 1);
                p.g.free(layer, 0, len - 1);
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
                for (int k : new int[] {0, 1, 2, 64, 2048, Math.max(1, len - 1), len + 5})
                    for (boolean sum : new boolean[] {false, true}) {
                        SlotSelection want = cpu.selectTopSlots(qc, 1, qpos, p.c, layer, k, sum, current, true);
                        for (int variant : VARIANTS) {
                            setVariant(variant);
                            String what = "v" + variant + " hd=" + hd + " group=" + group + " len=" + len + " qpos=" + qpos + " current=" + current + " k=" + k + " sum=" + sum;
                            assertSameSelection(want, gpu.selectTopSlots(qg, 1, qpos, p.g, layer, k, sum, current, true), what + " (host copy)");
                            SlotSelection dev = gpu.selectTopSlots(qg, 1, qpos, p.g, layer, k, sum, current, false);
                            assertNull(dev.slots(), what);
                            assertSameSelection(want, gpu.hostSelection(dev), what + " (device, downloaded)");
                            if (k == 0 || k == 64 || k == 2048) {
                                // decode attention over the device selection (no upload) vs the CPU over the CPU selection
                                cpu.attention(oc, q1c, p.c, layer, new int[] {qpos}, 1, want, null);
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
        int steps = CudaPolicyModelParityTest.STEPS, promptLen = CudaPolicyModelParityTest.PROMPT;
        int[] prompt = new int[promptLen];
        for (int i = 0; i < promptLen; i++) prompt[i] = (i * 53 + 11) % cfg.vocabSize();
        try (SafeTensors st = SafeTensors.open(dir)) {
            Llama m = new Llama(cfg, Weights.load(st, cfg, b, null), b, CudaPolicyModelParityTest.CHUNK);
            m.setPolicy(KvPolicies.parse(spec, cfg));
            float[][] logits = new float[steps + 1][];
            int[] fed = new int[steps];
            try (KvCache cache = m.newCache(CudaPolicyModelParityTest.CAPACITY)) {
                m.prefill(cache, prompt, 0, false, null);
                logits[0] = m.logits();
                for (int s = 0; s < steps; s++) {
                    fed[s] = feed != null ? feed[s] : CudaPolicyModelParityTest.argmax(logits[s]);
                    m.decodeStep(cache, fed[s], promptLen + s);
                    logits[s + 1] = m.logits();
                }
            }
            return new CudaPolicyModelParityTest.Run(logits, fed);
        }
    }

    @ParameterizedTest(name = "cuda {0}")
    @ValueSource(strings = {"tidal:k=16,full_layers=1,reselect=2", "tidal:k=16,full_layers=1,reselect=2,group=sum",
            "tidal:k=8,full_layers=1,reselect=-1", "window:sink=4,budget=40+tidal:k=16,full_layers=1,reselect=2"})
    void tidalModelMatchesCpu(String spec) {
        Path dir = tmp.resolve("tidal-model");
        LlamaConfig cfg = Files.exists(dir.resolve(SafeTensors.SINGLE_FILE)) ? ConfigLoader.load(dir)
                : ModelWriter.write(dir, CudaModelParityTest.config(512, 8, 2, 64, 4), 23, s -> {});
        CudaPolicyModelParityTest.Run ref;
        try (CpuBackend c = new CpuBackend()) {
            ref = run(c, dir, cfg, spec, null);
        }
        CudaBackend b = CudaBackend.open();
        CudaPolicyModelParityTest.Run got;
        String graphs;
        int replays;
        try {
            got = run(b, dir, cfg, spec, ref.fed());
            graphs = b.graphStatus();
            replays = b.graphReplays();
        } finally {
            b.close();
        }
        CudaPolicyModelParityTest.compare("cuda " + spec + " (" + graphs + ")", ref, got);
        if (!spec.contains("+")) assertTrue(replays > 0, spec + ": a selecting decode step should replay graphs: " + graphs);
    }
}
