package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.RopeTable;
import dev.tokenpress.backend.Backend;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.TensorData;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static dev.tokenpress.backend.cuda.CudaGemvParityTest.reference;
import static dev.tokenpress.backend.cuda.CudaGemvParityTest.uniform;
import static dev.tokenpress.backend.cuda.CudaGemvParityTest.usePdl;
import static dev.tokenpress.backend.cuda.CudaGemvParityTest.withPdl;
import static dev.tokenpress.backend.cuda.CudaParityTest.act;
import static dev.tokenpress.backend.cuda.CudaParityTest.assertClose;
import static dev.tokenpress.backend.cuda.CudaParityTest.bf16Exact;
import static dev.tokenpress.backend.cuda.CudaParityTest.bf16Weight;
import static dev.tokenpress.backend.cuda.CudaParityTest.f32Vector;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The fused decode ops of CudaBackend against the CPU's default (unfused) ops and against the CUDA unfused path
 * (the toggles off): matmulQkv (tp_gemv_bf16_multi: q, k, v rows in one launch, with/without biases, odd row
 * counts), matmulSwiglu (tp_gemv_bf16_swiglu), ropeStoreKv (tp_rope_store_kv: rotated q, k and the stored bf16
 * keys/values/positions bit-identical to rope + rope + storeKv), n = 1..4 (and n > 4: the fallbacks). Every
 * case runs with Programmatic Dependent Launch off and on (on: skipped where unsupported). Skipped (not failed) where CUDA is unavailable.
 */
class CudaFusedDecodeParityTest {
    static CpuBackend cpu;
    static CudaBackend gpu;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        cpu = new CpuBackend();
        gpu = CudaBackend.open();
        System.out.println("[fused decode parity] " + gpu.description());
    }

    @AfterAll
    static void close() {
        if (gpu != null) {
            gpu.setPdl(false);
            gpu.close();
        }
        if (cpu != null) cpu.close();
    }

    static Stream<Arguments> qkvCases() {
        List<Arguments> a = new ArrayList<>();
        a.add(Arguments.of(1, 2048, 512, 2048, false));   // llama-1b shape
        a.add(Arguments.of(1, 512, 128, 512, true));
        a.add(Arguments.of(1, 333, 7, 2056, true));       // odd rows: blocks straddle no matrix boundary
        a.add(Arguments.of(1, 64, 64, 8192, false));
        for (int n = 2; n <= CudaBackend.GEMV_MAX_ROWS; n++) a.add(Arguments.of(n, 256, 64, 520, n % 2 == 0));
        a.add(Arguments.of(5, 256, 64, 512, true));       // n > 4: three cuBLAS matmuls
        return withPdl(a.stream());
    }

    @ParameterizedTest(name = "qkv n={0} Oq={1} Okv={2} I={3} bias={4} pdl={5}")
    @MethodSource("qkvCases")
    void matmulQkv(int n, int oq, int okv, int in, boolean bias, boolean pdl) {
        usePdl(gpu, pdl);
        SplittableRandom r = new SplittableRandom(31L * oq + okv + in + n);
        float[] x = uniform(r, n * in, 1);
        int[] rows = {oq, okv, okv};
        float[][] w = new float[3][], b = new float[3][];
        Tensor[] wc = new Tensor[3], wg = new Tensor[3], bc = new Tensor[3], bg = new Tensor[3];
        Tensor[] oc = new Tensor[3], og = new Tensor[3], ou = new Tensor[3];
        for (int m = 0; m < 3; m++) {
            w[m] = bf16Exact(uniform(r, rows[m] * in, 0.08));
            b[m] = uniform(r, rows[m], 1);
            TensorData wd = bf16Weight("w" + m, rows[m], in, w[m]);
            wc[m] = cpu.weight(wd);
            wg[m] = gpu.weight(wd);
            if (bias && m != 2) { // v without bias: mixed null / non-null biases
                bc[m] = cpu.weight(f32Vector("b" + m, b[m]));
                bg[m] = gpu.weight(f32Vector("b" + m, b[m]));
            }
            oc[m] = act(cpu, n, rows[m], null);
            og[m] = act(gpu, n, rows[m], null);
            ou[m] = act(gpu, n, rows[m], null);
        }
        Tensor xc = act(cpu, n, in, x), xg = act(gpu, n, in, x);
        cpu.matmulQkv(oc[0], oc[1], oc[2], xc, wc[0], bc[0], wc[1], bc[1], wc[2], bc[2], n);
        assertTrue(gpu.fusedQkv(), "fused QKV is the default");
        gpu.matmulQkv(og[0], og[1], og[2], xg, wg[0], bg[0], wg[1], bg[1], wg[2], bg[2], n);
        try {
            gpu.setFusedQkv(false);
            gpu.matmulQkv(ou[0], ou[1], ou[2], xg, wg[0], bg[0], wg[1], bg[1], wg[2], bg[2], n);
        } finally {
            gpu.setFusedQkv(true);
        }
        boolean gemv = n <= CudaBackend.GEMV_MAX_ROWS;
        for (int m = 0; m < 3; m++) {
            String what = "qkv[" + m + "] n=" + n + " O=" + rows[m] + " I=" + in;
            float[] exact = reference(w[m], x, bc[m] == null ? null : b[m], n, rows[m], in);
            float[] fused = gpu.download(og[m], 0, n);
            if (gemv) {
                assertClose(what + " vs exact", exact, fused, 1e-9, 2e-4 * Math.sqrt(in / 64.0 + 1), 1e-4);
                assertClose(what + " vs cpu", cpu.download(oc[m], 0, n), fused, 1e-8, 1e-3 * Math.sqrt(in / 64.0 + 1), 1e-3);
                assertClose(what + " vs unfused", gpu.download(ou[m], 0, n), fused, 1e-9, 2e-4 * Math.sqrt(in / 64.0 + 1), 1e-4);
            } else {
                assertClose(what + " (cuBLAS) vs exact", exact, fused, 2e-5, 0.05, 0.02);
            }
        }
    }

    static Stream<Arguments> swigluCases() {
        List<Arguments> a = new ArrayList<>();
        a.add(Arguments.of(1, 8192, 2048));    // llama-1b shape
        a.add(Arguments.of(1, 2048, 512));
        a.add(Arguments.of(1, 333, 2056));
        a.add(Arguments.of(1, 7, 8192));
        for (int n = 2; n <= CudaBackend.GEMV_MAX_ROWS; n++) a.add(Arguments.of(n, 1000, 520));
        a.add(Arguments.of(6, 512, 256));      // n > 4: the unfused ops
        return withPdl(a.stream());
    }

    @ParameterizedTest(name = "swiglu n={0} F={1} D={2} pdl={3}")
    @MethodSource("swigluCases")
    void matmulSwiglu(int n, int f, int d, boolean pdl) {
        usePdl(gpu, pdl);
        SplittableRandom r = new SplittableRandom(17L * f + d + n);
        float[] x = uniform(r, n * d, 1);
        float[] wgv = bf16Exact(uniform(r, f * d, 0.08)), wuv = bf16Exact(uniform(r, f * d, 0.08));
        TensorData wgd = bf16Weight("gate", f, d, wgv), wud = bf16Weight("up", f, d, wuv);
        Tensor wgc = cpu.weight(wgd), wuc = cpu.weight(wud), wgg = gpu.weight(wgd), wug = gpu.weight(wud);
        Tensor xc = act(cpu, n, d, x), xg = act(gpu, n, d, x);
        Tensor oc = act(cpu, n, f, null), uc = act(cpu, n, f, null);
        Tensor og = act(gpu, n, f, null), ug = act(gpu, n, f, null), ou = act(gpu, n, f, null), uu = act(gpu, n, f, null);
        cpu.matmulSwiglu(oc, uc, xc, wgc, wuc, n);
        assertTrue(gpu.fusedSwiglu(), "fused gate/up + SwiGLU is the default");
        gpu.matmulSwiglu(og, ug, xg, wgg, wug, n);
        try {
            gpu.setFusedSwiglu(false);
            gpu.matmulSwiglu(ou, uu, xg, wgg, wug, n);
        } finally {
            gpu.setFusedSwiglu(true);
        }
        float[] g = reference(wgv, x, null, n, f, d), u = reference(wuv, x, null, n, f, d);
        float[] exact = new float[n * f];
        for (int i = 0; i < exact.length; i++) exact[i] = (float) (g[i] / (1 + Math.exp(-g[i])) * u[i]);
        float[] fused = gpu.download(og, 0, n);
        String what = "swiglu n=" + n + " F=" + f + " D=" + d;
        boolean gemv = n <= CudaBackend.GEMV_MAX_ROWS;
        double tol = gemv ? 4e-4 * Math.sqrt(d / 64.0 + 1) : 0.05;
        assertClose(what + " vs exact", exact, fused, gemv ? 1e-8 : 2e-5, tol, gemv ? 2e-4 : 0.02);
        assertClose(what + " vs cpu", cpu.download(oc, 0, n), fused, gemv ? 1e-8 : 2e-5, gemv ? 2 * tol : 0.05, gemv ? 2e-3 : 0.02);
        assertClose(what + " vs unfused", gpu.download(ou, 0, n), fused, 1e-8, tol, 1e-3);
    }

    static Stream<Arguments> ropeCases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int n : new int[] {1, 3, 37}) a.add(Arguments.of(hd, n, 4, 32 / (hd / 64) / 4 * 4));
        a.add(Arguments.of(64, 1, 8, 32));
        a.add(Arguments.of(128, 2, 2, 2));
        return withPdl(a.stream());
    }

    @ParameterizedTest(name = "ropeStoreKv hd={0} n={1} Hkv={2} H={3} pdl={4}")
    @MethodSource("ropeCases")
    void ropeStoreKv(int hd, int n, int hkv, int heads, boolean pdl) {
        usePdl(gpu, pdl);
        LlamaConfig cfg = CudaModelParityTest.config(heads * hd, heads, hkv, hd, 2);
        RopeTable rope = RopeTable.of(cfg);
        SplittableRandom r = new SplittableRandom(hd * 1000L + n * 10L + hkv);
        float[] q = uniform(r, n * heads * hd, 2), k = uniform(r, n * hkv * hd, 2), v = uniform(r, n * hkv * hd, 2);
        int cap = n + 40, layer = 1;
        int[] pos = new int[n];
        for (int i = 0; i < n; i++) pos[i] = 100_000 + 577 * i; // large angles
        KvCache cc = cpu.newKvCache(2, hkv, hd, cap), cf = gpu.newKvCache(2, hkv, hd, cap), cu = gpu.newKvCache(2, hkv, hd, cap);
        try {
            int[][] sc = new int[hkv][], sf = new int[hkv][], su = new int[hkv][];
            for (int g = 0; g < hkv; g++) {
                cc.allocate(layer, g, new int[] {5, 6, 7}, 3); // occupy a few slots first
                cf.allocate(layer, g, new int[] {5, 6, 7}, 3);
                cu.allocate(layer, g, new int[] {5, 6, 7}, 3);
                sc[g] = cc.allocate(layer, g, pos, n);
                sf[g] = cf.allocate(layer, g, pos, n);
                su[g] = cu.allocate(layer, g, pos, n);
                assertArrayEquals(sc[g], sf[g]);
            }
            Tensor qc = act(cpu, n, heads * hd, q), kc = act(cpu, n, hkv * hd, k), vc = act(cpu, n, hkv * hd, v);
            Tensor qf = act(gpu, n, heads * hd, q), kf = act(gpu, n, hkv * hd, k), vf = act(gpu, n, hkv * hd, v);
            Tensor qu = act(gpu, n, heads * hd, q), ku = act(gpu, n, hkv * hd, k), vu = act(gpu, n, hkv * hd, v);
            cpu.ropeStoreKv(qc, heads, kc, vc, hkv, rope, pos, cc, layer, sc, n);
            assertTrue(gpu.fusedRopeStoreKv(), "fused rope + KV store is the default");
            gpu.ropeStoreKv(qf, heads, kf, vf, hkv, rope, pos, cf, layer, sf, n);
            try {
                gpu.setFusedRopeStoreKv(false);
                gpu.ropeStoreKv(qu, heads, ku, vu, hkv, rope, pos, cu, layer, su, n);
            } finally {
                gpu.setFusedRopeStoreKv(true);
            }
            String what = "ropeStoreKv hd=" + hd + " n=" + n;
            // the same f32 arithmetic as the separate rope kernel (identical unless the compiler contracts differently)
            assertClose(what + " q vs unfused", gpu.download(qu, 0, n), gpu.download(qf, 0, n), 1e-12, 1e-6, 1e-6);
            assertClose(what + " k vs unfused", gpu.download(ku, 0, n), gpu.download(kf, 0, n), 1e-12, 1e-6, 1e-6);
            assertClose(what + " q vs cpu", cpu.download(qc, 0, n), gpu.download(qf, 0, n), 1e-10, 1e-5, 1e-5);
            assertClose(what + " k vs cpu", cpu.download(kc, 0, n), gpu.download(kf, 0, n), 1e-10, 1e-5, 1e-5);
            float[] kf1 = new float[hd], vf1 = new float[hd], ku1 = new float[hd], vu1 = new float[hd];
            float[] kc1 = new float[hd], vc1 = new float[hd];
            for (int g = 0; g < hkv; g++)
                for (int i = 0; i < n; i++) {
                    int slot = sf[g][i];
                    gpu.readKv(cf, layer, g, slot, kf1, vf1);
                    gpu.readKv(cu, layer, g, slot, ku1, vu1);
                    cpu.readKv(cc, layer, g, slot, kc1, vc1);
                    // at most one bf16 step apart (a rounding tie of an f32 that differs in its last bit)
                    assertClose(what + " stored key vs unfused", ku1, kf1, 1e-6, 1e-6, 1.0 / 128);
                    assertArrayEquals(vu1, vf1, what + " stored value g=" + g + " i=" + i);
                    assertClose(what + " stored key vs cpu", kc1, kf1, 1e-4, 1e-2, 1e-2); // bf16 vs f32
                    assertClose(what + " stored value vs cpu", vc1, vf1, 1e-4, 1e-2, 1e-2);
                }
        } finally {
            cc.close();
            cf.close();
            cu.close();
        }
    }

    static Stream<Arguments> normCases() {
        List<Arguments> a = new ArrayList<>();
        a.add(Arguments.of(1, 2048, 512, 8192, 2048));  // llama-1b shape
        a.add(Arguments.of(1, 333, 7, 1000, 2056));     // odd rows
        for (int n = 2; n <= CudaBackend.GEMV_MAX_ROWS; n++) a.add(Arguments.of(n, 256, 64, 520, 512));
        a.add(Arguments.of(5, 256, 64, 512, 256));      // n > 4: the unfused ops
        return withPdl(a.stream());
    }

    /**
     * RMSNorm fused into the q/k/v and gate/up GEMVs and the residual add fused into the o/down GEMV
     * (setFusedNorm): against the same ops unfused on the GPU (the same arithmetic except the order of the
     * norm's sum of squares) and against the CPU.
     */
    @ParameterizedTest(name = "fused norm n={0} Oq={1} Okv={2} F={3} D={4} pdl={5}")
    @MethodSource("normCases")
    void fusedNormAndResidual(int n, int oq, int okv, int f, int d, boolean pdl) {
        usePdl(gpu, pdl);
        SplittableRandom r = new SplittableRandom(7L * oq + 13L * f + d + n);
        float[] x = uniform(r, n * d, 2), nw = uniform(r, d, 1.5);
        TensorData nwd = f32Vector("norm", nw);
        Tensor nwc = cpu.weight(nwd), nwg = gpu.weight(nwd);
        int[] rows = {oq, okv, okv};
        Tensor[] wc = new Tensor[3], wg = new Tensor[3];
        for (int m = 0; m < 3; m++) {
            TensorData wd = bf16Weight("w" + m, rows[m], d, bf16Exact(uniform(r, rows[m] * d, 0.08)));
            wc[m] = cpu.weight(wd);
            wg[m] = gpu.weight(wd);
        }
        TensorData gd = bf16Weight("gate", f, d, bf16Exact(uniform(r, f * d, 0.08)));
        TensorData ud = bf16Weight("up", f, d, bf16Exact(uniform(r, f * d, 0.08)));
        TensorData dd = bf16Weight("down", d, f, bf16Exact(uniform(r, d * f, 0.08)));
        Tensor gc = cpu.weight(gd), uc = cpu.weight(ud), dc = cpu.weight(dd);
        Tensor gg = gpu.weight(gd), ug = gpu.weight(ud), dg = gpu.weight(dd);
        float[] a = uniform(r, n * f, 1);
        String what = "fused norm n=" + n + " D=" + d + " pdl=" + pdl;
        float[][] res = new float[2][];  // per mode: q | k | v | swiglu | x after matmulAdd, concatenated
        for (int mode = 0; mode < 2; mode++) {
            gpu.setFusedNorm(mode == 1);
            try {
                res[mode] = fusedNormRun(gpu, n, d, f, rows, x, a, nwg, wg, gg, ug, dg);
            } finally {
                gpu.setFusedNorm(false);
            }
        }
        float[] ref = fusedNormRun(cpu, n, d, f, rows, x, a, nwc, wc, gc, uc, dc);
        boolean gemv = n <= CudaBackend.GEMV_MAX_ROWS;
        double tol = 4e-4 * Math.sqrt(Math.max(d, f) / 64.0 + 1);
        assertClose(what + " fused vs unfused", res[0], res[1], 1e-10, tol, 1e-4);
        assertClose(what + " fused vs cpu", ref, res[1], gemv ? 1e-8 : 2e-5, gemv ? 2 * tol : 0.05, gemv ? 2e-3 : 0.02);
    }

    private static float[] fusedNormRun(Backend b, int n, int d, int f, int[] rows, float[] x, float[] a, Tensor nw,
                                        Tensor[] w, Tensor wg, Tensor wu, Tensor wd) {
        Tensor xt = act(b, n, d, x), xn = act(b, n, d, null), at = act(b, n, f, a), y = act(b, n, d, null);
        Tensor[] o = {act(b, n, rows[0], null), act(b, n, rows[1], null), act(b, n, rows[2], null)};
        Tensor sw = act(b, n, f, null), up = act(b, n, f, null);
        b.rmsnormMatmulQkv(o[0], o[1], o[2], xt, nw, 1e-5f, xn, w[0], null, w[1], null, w[2], null, n);
        b.rmsnormMatmulSwiglu(sw, up, xt, nw, 1e-5f, xn, wg, wu, n);
        b.matmulAdd(xt, y, at, wd, n);
        List<float[]> parts = List.of(b.download(o[0], 0, n), b.download(o[1], 0, n), b.download(o[2], 0, n),
                b.download(sw, 0, n), b.download(xt, 0, n));
        int len = 0;
        for (float[] p : parts) len += p.length;
        float[] out = new float[len];
        int off = 0;
        for (float[] p : parts) {
            System.arraycopy(p, 0, out, off, p.length);
            off += p.length;
        }
        return out;
    }
}
