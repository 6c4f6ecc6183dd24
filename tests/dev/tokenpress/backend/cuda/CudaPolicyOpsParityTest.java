package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.Half;
import dev.tokenpress.kv.KvCache;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static dev.tokenpress.backend.cuda.CudaParityTest.act;
import static dev.tokenpress.backend.cuda.CudaParityTest.assertClose;
import static dev.tokenpress.backend.cuda.CudaParityTest.bf16Exact;
import static dev.tokenpress.backend.cuda.CudaParityTest.randn;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

/**
 * The KV-policy ops of the CUDA backend ({@code queryKeyScores}, {@code questPageScores}, {@code readKv},
 * {@code writeKv}; cuda/policy_ops.cu) against the CPU backend on caches with identical bf16-exact contents:
 * lengths 1, 9, 81, 4097, GQA 1/4/8, head dims 64/128, a causal cut, freed slots (inside the range and at the
 * top, so KV heads get different high-water marks) and slots re-filled through {@code writeKv}. Output arrays are
 * pre-filled with a sentinel, so the entries each op must leave untouched are checked too. Skipped (not failed)
 * where CUDA is unavailable.
 */
class CudaPolicyOpsParityTest {
    static final float SENTINEL = 12345f;
    static Backend cpu;
    static Backend gpu;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        cpu = new CpuBackend();
        gpu = CudaBackend.open();
        System.out.println("[parity] policy ops on " + gpu.description());
    }

    @AfterAll
    static void close() {
        if (gpu != null) gpu.close();
        if (cpu != null) cpu.close();
    }

    /** CPU and GPU caches (2 layers) with the same bf16-exact keys/values at positions 0..len-1. */
    record Pair(KvCache c, KvCache g, int hkv, int hd, int len) implements AutoCloseable {
        @Override
        public void close() {
            c.close();
            g.close();
        }
    }

    static Pair filled(int hkv, int hd, int len, int capacity, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        KvCache cc = cpu.newKvCache(2, hkv, hd, capacity), cg = gpu.newKvCache(2, hkv, hd, capacity);
        int chunk = 4096;
        Tensor kc = cpu.allocate(chunk, hkv * hd), vc = cpu.allocate(chunk, hkv * hd);
        Tensor kg = gpu.allocate(chunk, hkv * hd), vg = gpu.allocate(chunk, hkv * hd);
        for (int done = 0; done < len; done += chunk) {
            int m = Math.min(chunk, len - done);
            int[] pos = new int[m];
            for (int i = 0; i < m; i++) pos[i] = done + i;
            float[] k = bf16Exact(randn(r, m * hkv * hd, 1)), v = bf16Exact(randn(r, m * hkv * hd, 1));
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
        return new Pair(cc, cg, hkv, hd, len);
    }

    static Stream<Arguments> cases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 4, 8})
                for (int len : new int[] {1, 9, 81, 4097}) a.add(Arguments.of(hd, group, len));
        return a.stream();
    }

    static float[][] sentinel(int rows, int cols) {
        float[][] o = new float[rows][cols];
        for (float[] row : o) Arrays.fill(row, SENTINEL);
        return o;
    }

    /** Both ops on both backends for query row 1 of 3 at {@code qpos}, compared. */
    static void compareScores(Pair p, Tensor qc, Tensor qg, int heads, int layer, int qpos, String what) {
        int cap = p.c.capacity();
        // two extra columns past the capacity: the CPU op leaves them untouched
        float[][] oc = sentinel(heads, cap + 2), og = sentinel(heads, cap + 2);
        cpu.queryKeyScores(oc, qc, 1, qpos, p.c, layer);
        gpu.queryKeyScores(og, qg, 1, qpos, p.g, layer);
        String tag = what + " hd=" + p.hd + " len=" + p.len + " qpos=" + qpos;
        for (int h = 0; h < heads; h++) assertClose(tag + " queryKeyScores[" + h + "]", oc[h], og[h], 1e-10, 1e-4, 1e-5);
        for (int page : new int[] {1, 5, 16}) {
            int cols = (cap + page - 1) / page + 2;
            float[][] bc = sentinel(heads, cols), bg = sentinel(heads, cols);
            cpu.questPageScores(bc, qc, 1, qpos, p.c, layer, page);
            gpu.questPageScores(bg, qg, 1, qpos, p.g, layer, page);
            // a bound sums hd terms of |q|·|k| size: absolute error grows with hd
            for (int h = 0; h < heads; h++)
                assertClose(tag + " questPageScores page=" + page + " [" + h + "]", bc[h], bg[h], 1e-10, 1e-3, 1e-5);
        }
    }

    @ParameterizedTest(name = "policy ops hd={0} group={1} len={2}")
    @MethodSource("cases")
    void scores(int hd, int group, int len) {
        int hkv = 2, heads = hkv * group, layer = 1;
        try (Pair p = filled(hkv, hd, len, len + 3, 31L * hd + 7L * group + len)) {
            SplittableRandom r = new SplittableRandom(len + 11L * group);
            float[] q = randn(r, 3 * heads * hd, 1);
            Tensor qc = act(cpu, 3, heads * hd, q), qg = act(gpu, 3, heads * hd, q);
            int last = len - 1;
            compareScores(p, qc, qg, heads, layer, last, "full");
            compareScores(p, qc, qg, heads, layer, len / 2, "causal");
            compareScores(p, qc, qg, heads, layer, -1, "nothing visible");
            compareScores(p, qc, qg, heads, 0, last, "layer 0");
            if (len >= 9) {
                // free every third slot of both heads and the top two slots of head 1 (its high-water mark drops)
                for (int g = 0; g < hkv; g++)
                    for (int s = 1; s < len; s += 3) {
                        p.c.free(layer, g, s);
                        p.g.free(layer, g, s);
                    }
                for (int s = len - 1; s >= len - 2; s--) {
                    p.c.free(layer, 1, s);
                    p.g.free(layer, 1, s);
                }
                assertEquals(p.c.highWater(layer, 1), p.g.highWater(layer, 1));
                compareScores(p, qc, qg, heads, layer, last, "after free");
                // re-fill one freed slot through writeKv (bf16-exact, so both caches hold the same values): the
                // queued free must not overwrite the new position
                int[] at = {len + 5};
                int sc = p.c.allocate(layer, 0, at, 1)[0], sg = p.g.allocate(layer, 0, at, 1)[0];
                assertEquals(sc, sg);
                float[] k = bf16Exact(randn(r, hd, 1)), v = bf16Exact(randn(r, hd, 1));
                cpu.writeKv(p.c, layer, 0, sc, k, v);
                gpu.writeKv(p.g, layer, 0, sg, k, v);
                compareScores(p, qc, qg, heads, layer, len + 5, "after writeKv");
            }
        }
    }

    @Test
    void readKvAndWriteKv() {
        int hkv = 4, hd = 128, len = 81;
        try (Pair p = filled(hkv, hd, len, 100, 5)) {
            float[] kc = new float[hd], vc = new float[hd], kg = new float[hd], vg = new float[hd];
            for (int layer = 0; layer < 2; layer++)
                for (int g = 0; g < hkv; g++)
                    for (int s : new int[] {0, 1, 40, len - 1}) {
                        cpu.readKv(p.c, layer, g, s, kc, vc);
                        gpu.readKv(p.g, layer, g, s, kg, vg);
                        assertArrayEquals(kc, kg, "key layer " + layer + " head " + g + " slot " + s);
                        assertArrayEquals(vc, vg, "value layer " + layer + " head " + g + " slot " + s);
                    }
            // a write of values that are not bf16-exact: the GPU keeps them rounded to nearest even
            SplittableRandom r = new SplittableRandom(9);
            float[] k = randn(r, hd, 3), v = randn(r, hd, 3);
            k[0] = Half.bf16ToFloat((short) 0x3F80) + 0x1p-8f;  // 1 + ulp/2: exactly halfway, rounds to even (1)
            gpu.writeKv(p.g, 1, 2, 40, k, v);
            cpu.writeKv(p.c, 1, 2, 40, k, v);
            gpu.readKv(p.g, 1, 2, 40, kg, vg);
            cpu.readKv(p.c, 1, 2, 40, kc, vc);
            assertArrayEquals(bf16Exact(k), kg, "written key comes back bf16-rounded");
            assertArrayEquals(bf16Exact(v), vg, "written value comes back bf16-rounded");
            assertEquals(1f, kg[0], "ties round to even");
            assertArrayEquals(k, kc, "the CPU cache keeps f32");
            // neighbours untouched
            gpu.readKv(p.g, 1, 2, 41, kg, vg);
            cpu.readKv(p.c, 1, 2, 41, kc, vc);
            assertArrayEquals(kc, kg);
            assertArrayEquals(vc, vg);
            gpu.readKv(p.g, 1, 1, 40, kg, vg);
            cpu.readKv(p.c, 1, 1, 40, kc, vc);
            assertArrayEquals(kc, kg);
            assertThrows(IllegalArgumentException.class, () -> gpu.readKv(p.g, 1, 4, 0, new float[hd], new float[hd]));
            assertThrows(IllegalArgumentException.class, () -> gpu.writeKv(p.g, 1, 0, 100, new float[hd], new float[hd]));
        }
    }

    /** readKvRange of a range with freed slots and readKvHead against the CPU cache's (bf16-exact contents). */
    @Test
    void readKvRangeAndHead() {
        int hkv = 2, hd = 64, len = 81;
        try (Pair p = filled(hkv, hd, len, 96, 13)) {
            for (int s = 3; s < len; s += 7) {
                p.c.free(1, 1, s);
                p.g.free(1, 1, s);
            }
            for (int layer = 0; layer < 2; layer++)
                for (int g = 0; g < hkv; g++) {
                    int from = 5, to = 70;
                    float[] kc = new float[(to - from) * hd], vc = new float[(to - from) * hd];
                    float[] kg = new float[(to - from) * hd], vg = new float[(to - from) * hd];
                    cpu.readKvRange(p.c, layer, g, from, to, kc, vc);
                    gpu.readKvRange(p.g, layer, g, from, to, kg, vg);
                    int[] pos = p.c.positions(layer, g);
                    for (int s = from; s < to; s++) {
                        if (pos[s] < 0) continue;  // a free slot's entries are unspecified
                        String at = "layer " + layer + " head " + g + " slot " + s;
                        int o = (s - from) * hd;
                        assertArrayEquals(Arrays.copyOfRange(kc, o, o + hd), Arrays.copyOfRange(kg, o, o + hd), "readKvRange key " + at);
                        assertArrayEquals(Arrays.copyOfRange(vc, o, o + hd), Arrays.copyOfRange(vg, o, o + hd), "readKvRange value " + at);
                    }
                    float[] keysOnly = new float[(to - from) * hd];
                    gpu.readKvRange(p.g, layer, g, from, to, keysOnly, null);
                    assertArrayEquals(kg, keysOnly, "keys without values");
                    int hw = p.c.highWater(layer, g);
                    assertEquals(hw, p.g.highWater(layer, g));
                    float[] hc = new float[hw * hd], hg = new float[hw * hd], hvc = new float[hw * hd], hvg = new float[hw * hd];
                    cpu.readKvHead(p.c, layer, g, hc, hvc);
                    gpu.readKvHead(p.g, layer, g, hg, hvg);
                    for (int s = 0; s < hw; s++) {
                        if (pos[s] < 0) continue;
                        int o = s * hd;
                        assertArrayEquals(Arrays.copyOfRange(hc, o, o + hd), Arrays.copyOfRange(hg, o, o + hd), "readKvHead key slot " + s);
                        assertArrayEquals(Arrays.copyOfRange(hvc, o, o + hd), Arrays.copyOfRange(hvg, o, o + hd), "readKvHead value slot " + s);
                    }
                }
        }
    }

    /**
     * weightRows of a bf16 weight (uploaded as bf16) and of the same weight as Q8_0 (quantized at upload on both
     * backends the same way): the rows the CPU backend reads back, bit for bit, for a middle range and the last row.
     */
    @Test
    void weightRowsMatchTheCpuBackend() {
        int rows = 37, cols = 96;
        float[] w = bf16Exact(randn(new SplittableRandom(17), rows * cols, 0.5));
        for (var type : new dev.tokenpress.backend.WeightType[] {null, dev.tokenpress.backend.WeightType.Q8_0}) {
            try (CpuBackend c = new CpuBackend(); Backend g = CudaBackend.open()) {
                if (type != null) {
                    c.setWeightType(type);
                    g.setWeightType(type);
                }
                Tensor wc = c.weight(CudaParityTest.bf16Weight("o_proj", rows, cols, w));
                Tensor wg = g.weight(CudaParityTest.bf16Weight("o_proj", rows, cols, w));
                for (int[] range : new int[][] {{0, rows}, {5, 11}, {rows - 1, 1}}) {
                    float[] dc = new float[range[1] * cols], dg = new float[range[1] * cols];
                    c.weightRows(wc, range[0], range[1], dc);
                    g.weightRows(wg, range[0], range[1], dg);
                    String tag = (type == null ? "bf16" : type) + " rows [" + range[0] + ", " + (range[0] + range[1]) + ")";
                    for (int i = 0; i < dc.length; i++)
                        assertEquals(Float.floatToRawIntBits(dc[i]), Float.floatToRawIntBits(dg[i]), tag + " element " + i);
                    if (type == null) assertArrayEquals(Arrays.copyOfRange(w, range[0] * cols, (range[0] + range[1]) * cols), dg, tag + " = the checkpoint");
                }
                assertThrows(IllegalArgumentException.class, () -> g.weightRows(wg, rows - 1, 2, new float[2 * cols]));
            }
        }
    }

    @Test
    void rejectsBadArguments() {
        try (Pair p = filled(2, 64, 9, 16, 3)) {
            Tensor qg = act(gpu, 1, 4 * 64, new float[4 * 64]);
            float[][] out = new float[4][16];
            assertThrows(IllegalArgumentException.class, () -> gpu.questPageScores(out, qg, 0, 8, p.g, 1, 0));
            assertThrows(IllegalArgumentException.class, () -> gpu.queryKeyScores(out, qg, 1, 8, p.g, 1));
            assertThrows(IllegalArgumentException.class, () -> gpu.queryKeyScores(new float[3][16], qg, 0, 8, p.g, 1));
            assertThrows(IllegalArgumentException.class, () -> gpu.queryKeyScores(out, qg, 0, 8, p.g, 2));
        }
    }
}
