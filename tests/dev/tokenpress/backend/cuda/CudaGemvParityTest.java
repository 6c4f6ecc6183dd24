package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.TensorData;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static dev.tokenpress.backend.cuda.CudaParityTest.act;
import static dev.tokenpress.backend.cuda.CudaParityTest.assertClose;
import static dev.tokenpress.backend.cuda.CudaParityTest.bf16Exact;
import static dev.tokenpress.backend.cuda.CudaParityTest.bf16Weight;
import static dev.tokenpress.backend.cuda.CudaParityTest.f32Vector;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The decode GEMV kernel (tp_gemv_bf16, used by CudaBackend.matmul for n <= 4 rows with bf16 weights) against
 * the CPU matmul and against an exact host reference (double sums of the same bf16 weights and f32 inputs),
 * on odd output widths (1, 7, 333, 4097) and input widths (8, 64, 2056, 8192), with and without bias, n = 1..4;
 * the cuBLAS fallbacks (I % 8 != 0, n > 4, GEMV turned off); and the fused add + RMSNorm op. Every case runs
 * with Programmatic Dependent Launch off and on (the latter skipped where the device does not support it).
 * Skipped (not failed) where CUDA is unavailable.
 */
class CudaGemvParityTest {
    static CpuBackend cpu;
    static CudaBackend gpu;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        cpu = new CpuBackend();
        gpu = CudaBackend.open();
        System.out.println("[gemv parity] " + gpu.description());
    }

    @AfterAll
    static void close() {
        if (gpu != null) {
            gpu.setPdl(false);
            gpu.close();
        }
        if (cpu != null) cpu.close();
    }

    /** Sets the PDL switch for a case; a PDL case is skipped where the device does not support it. */
    static void usePdl(CudaBackend gpu, boolean pdl) {
        if (pdl) Assumptions.assumeTrue(gpu.pdlSupported(), "PDL needs sm_90+ and CUDA >= 12.3");
        gpu.setPdl(pdl);
    }

    /** The PDL modes a non-parameterized GPU test loops over: off, and on where supported. */
    static boolean[] pdlModes(CudaBackend gpu) {
        return gpu.pdlSupported() ? new boolean[] {false, true} : new boolean[] {false};
    }

    /** Each case once with PDL off and once with PDL on. */
    static Stream<Arguments> withPdl(Stream<Arguments> cases) {
        return cases.flatMap(a -> Stream.of(false, true).map(pdl -> {
            Object[] base = a.get(), args = java.util.Arrays.copyOf(base, base.length + 1);
            args[base.length] = pdl;
            return Arguments.of(args);
        }));
    }

    static float[] uniform(SplittableRandom r, int n, double scale) {
        float[] f = new float[n];
        for (int i = 0; i < n; i++) f[i] = (float) ((r.nextDouble() * 2 - 1) * scale);
        return f;
    }

    /** out[r][o] = sum_i w[o][i] * x[r][i] + bias[o], in double. */
    static float[] reference(float[] w, float[] x, float[] bias, int n, int out, int in) {
        float[] y = new float[n * out];
        for (int r = 0; r < n; r++)
            for (int o = 0; o < out; o++) {
                double s = bias == null ? 0 : bias[o];
                for (int i = 0; i < in; i++) s += (double) w[o * in + i] * x[r * in + i];
                y[r * out + o] = (float) s;
            }
        return y;
    }

    /** Runs matmul on CPU and GPU; returns {cpu, gpu, exact}. */
    static float[][] run(int n, int out, int in, boolean bias, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        float[] w = bf16Exact(uniform(r, out * in, 0.08)), x = uniform(r, n * in, 1), b = uniform(r, out, 1);
        TensorData wd = bf16Weight("w", out, in, w);
        Tensor wc = cpu.weight(wd), wg = gpu.weight(wd);
        Tensor bc = bias ? cpu.weight(f32Vector("b", b)) : null, bg = bias ? gpu.weight(f32Vector("b", b)) : null;
        Tensor xc = act(cpu, n, in, x), xg = act(gpu, n, in, x);
        Tensor oc = act(cpu, n, out, null), og = act(gpu, n, out, null);
        cpu.matmul(oc, xc, wc, bc, n);
        gpu.matmul(og, xg, wg, bg, n);
        return new float[][] {cpu.download(oc, 0, n), gpu.download(og, 0, n), reference(w, x, bias ? b : null, n, out, in)};
    }

    static Stream<Arguments> gemvCases() {
        List<Arguments> a = new ArrayList<>();
        boolean bias = false;
        for (int out : new int[] {1, 7, 333, 4097})
            for (int in : new int[] {8, 64, 2056, 8192}) {
                a.add(Arguments.of(1, out, in, bias));
                bias = !bias;
            }
        for (int n = 2; n <= CudaBackend.GEMV_MAX_ROWS; n++) {
            a.add(Arguments.of(n, 7, 64, true));
            a.add(Arguments.of(n, 333, 2056, n % 2 == 0));
            a.add(Arguments.of(n, 1, 8192, false));
        }
        return withPdl(a.stream());
    }

    @ParameterizedTest(name = "gemv n={0} O={1} I={2} bias={3} pdl={4}")
    @MethodSource("gemvCases")
    void gemvMatchesCpuAndExactReference(int n, int out, int in, boolean bias, boolean pdl) {
        usePdl(gpu, pdl);
        assertTrue(gpu.gemvEnabled(), "GEMV is on by default");
        float[][] res = run(n, out, in, bias, 31L * out + in + n);
        String what = "gemv n=" + n + " O=" + out + " I=" + in + " bias=" + bias;
        // f32 products of the same bf16 weights and f32 inputs: only the summation order differs
        assertClose(what + " vs exact", res[2], res[1], 1e-9, 2e-4 * Math.sqrt(in / 64.0 + 1), 1e-4);
        assertClose(what + " vs cpu", res[0], res[1], 1e-8, 1e-3 * Math.sqrt(in / 64.0 + 1), 1e-3);
    }

    static Stream<Arguments> fallbackCases() {
        return withPdl(Stream.of(Arguments.of(1, 300, 20, true), // I % 8 != 0
                Arguments.of(1, 17, 1030, false),                   // I % 8 != 0 (rows not 16-byte aligned)
                Arguments.of(5, 333, 2056, true),                   // n > 4
                Arguments.of(7, 300, 520, true)));
    }

    @ParameterizedTest(name = "cuBLAS fallback n={0} O={1} I={2} bias={3} pdl={4}")
    @MethodSource("fallbackCases")
    void cublasFallback(int n, int out, int in, boolean bias, boolean pdl) {
        usePdl(gpu, pdl); // the f32 -> bf16 conversion kernel before cuBLAS is a PDL launch
        float[][] res = run(n, out, in, bias, 7L * out + in + n);
        // cuBLAS rounds x to bf16 first: ~2^-9 relative error per product
        assertClose("fallback n=" + n + " O=" + out + " I=" + in, res[2], res[1], 2e-5, 0.05, 0.02);
    }

    @Test
    void gemvOffUsesCublasAndAgrees() {
        for (boolean pdl : pdlModes(gpu)) {
            gpu.setPdl(pdl);
            gemvOffUsesCublasAndAgrees(pdl);
        }
    }

    private void gemvOffUsesCublasAndAgrees(boolean pdl) {
        try {
            gpu.setGemvEnabled(false);
            float[][] res = run(1, 4097, 2056, true, 99);
            assertClose("gemv off pdl=" + pdl, res[2], res[1], 2e-5, 0.05, 0.02);
        } finally {
            gpu.setGemvEnabled(true);
        }
        float[][] res = run(1, 4097, 2056, true, 99);
        assertClose("gemv on pdl=" + pdl, res[2], res[1], 1e-9, 2e-4 * Math.sqrt(2056 / 64.0 + 1), 1e-4);
    }

    @Test
    void addRmsnormMatchesAddThenRmsnorm() {
        for (boolean pdl : pdlModes(gpu)) {
            gpu.setPdl(pdl);
            addRmsnormMatchesAddThenRmsnorm(pdl);
        }
    }

    private void addRmsnormMatchesAddThenRmsnorm(boolean pdl) {
        // d = 8192 with 1024 threads: 8 elements per thread, past the 4 norm weights loaded before the PDL wait
        for (int d : new int[] {64, 333, 2048, 4096, 8192}) {
            for (int n : new int[] {1, 3}) {
                SplittableRandom r = new SplittableRandom(d + n);
                float[] x = uniform(r, n * d, 2), y = uniform(r, n * d, 2), w = uniform(r, d, 1.5);
                Tensor wc = cpu.weight(f32Vector("w", w)), wg = gpu.weight(f32Vector("w", w));
                Tensor xc = act(cpu, n, d, x), yc = act(cpu, n, d, y), oc = act(cpu, n, d, null);
                Tensor xg = act(gpu, n, d, x), yg = act(gpu, n, d, y), og = act(gpu, n, d, null);
                cpu.add(xc, yc, n);
                cpu.rmsnorm(oc, xc, wc, 1e-5f, n);
                gpu.addRmsnorm(og, xg, yg, wg, 1e-5f, n);
                String what = "addRmsnorm d=" + d + " pdl=" + pdl;
                assertClose(what + " x", cpu.download(xc, 0, n), gpu.download(xg, 0, n), 1e-12, 1e-6, 1e-6);
                assertClose(what + " out", cpu.download(oc, 0, n), gpu.download(og, 0, n), 1e-10, 1e-5, 1e-5);
            }
        }
    }

    /**
     * A chain of dependent decode kernels with no host synchronisation in between (the layer pattern: add +
     * RMSNorm, GEMV, add + RMSNorm, gate/up + SwiGLU GEMV, GEMV, with every buffer both read by one kernel and
     * rewritten by the next), n = 1 and 3: with PDL on the result must be bit-identical to plain launches. A
     * kernel that read its input before its predecessor finished, or overwrote a buffer its predecessor still
     * read, would change it.
     */
    @Test
    void pdlChainIsBitIdenticalToPlainLaunches() {
        Assumptions.assumeTrue(gpu.pdlSupported(), "PDL needs sm_90+ and CUDA >= 12.3");
        int d = 2048, f = 4096;
        SplittableRandom r = new SplittableRandom(2024);
        ChainWeights cw = ChainWeights.random(r, d, f);
        Tensor woT = cw.wo(), wgT = cw.wg(), wuT = cw.wu(), wdT = cw.wd(), wnT = cw.wn();
        for (int n : new int[] {1, 3}) {
            float[] h0 = uniform(r, n * d, 1), t0 = uniform(r, n * d, 1);
            float[][] res = new float[2][];
            for (int mode = 0; mode < 2; mode++) {
                gpu.setPdl(mode == 1);
                res[mode] = chain(n, d, f, h0, t0, woT, wgT, wuT, wdT, wnT);
            }
            gpu.setPdl(false);
            for (float v : res[0]) assertTrue(Float.isFinite(v), "chain output finite");
            org.junit.jupiter.api.Assertions.assertArrayEquals(res[0], res[1], "PDL chain n=" + n + " differs from plain launches");
        }
    }

    /** Random bf16 weights of the chain below (o d×d, gate/up f×d, down d×f) and an f32 norm weight, on the GPU. */
    record ChainWeights(Tensor wo, Tensor wg, Tensor wu, Tensor wd, Tensor wn) {
        static ChainWeights random(SplittableRandom r, int d, int f) {
            float[] wo = bf16Exact(uniform(r, d * d, 0.03)), wg = bf16Exact(uniform(r, f * d, 0.03));
            float[] wu = bf16Exact(uniform(r, f * d, 0.03)), wd = bf16Exact(uniform(r, d * f, 0.03));
            return new ChainWeights(gpu.weight(bf16Weight("wo", d, d, wo)), gpu.weight(bf16Weight("wg", f, d, wg)),
                    gpu.weight(bf16Weight("wu", f, d, wu)), gpu.weight(bf16Weight("wd", d, f, wd)),
                    gpu.weight(f32Vector("wn", uniform(r, d, 1.5))));
        }
    }

    /** Eight rounds of add + RMSNorm, GEMV, add + RMSNorm, gate/up + SwiGLU GEMV, GEMV; the final normed state. */
    private static float[] chain(int n, int d, int f, float[] h0, float[] t0, Tensor woT, Tensor wgT, Tensor wuT,
                                 Tensor wdT, Tensor wnT) {
        Tensor h = act(gpu, n, d, h0), t = act(gpu, n, d, t0), xn = act(gpu, n, d, null);
        Tensor a = act(gpu, n, f, null), u = act(gpu, n, f, null);
        for (int it = 0; it < 8; it++) {
            gpu.addRmsnorm(xn, h, t, wnT, 1e-5f, n);  // h += t; xn = norm(h)
            gpu.matmul(t, xn, woT, null, n);           // t = Wo xn
            gpu.addRmsnorm(xn, h, t, wnT, 1e-5f, n);
            gpu.matmulSwiglu(a, u, xn, wgT, wuT, n);  // a = silu(Wg xn) * (Wu xn)
            gpu.matmul(t, a, wdT, null, n);            // t = Wd a
        }
        gpu.addRmsnorm(xn, h, t, wnT, 1e-5f, n);
        return gpu.download(xn, 0, n);
    }

    /**
     * The GEMVs' L2 prefetch before the PDL wait (tp_gemv_set_prefetch) is only a hint: the chain above with PDL on
     * gives bit-identical results with prefetch off, with only the smaller matrices (8 MiB) and with every matrix
     * prefetched; q/k/v as one launch (matmulQkv) likewise.
     */
    @Test
    void gemvPrefetchIsBitIdentical() {
        int d = 2048, f = 4096;
        SplittableRandom r = new SplittableRandom(77);
        ChainWeights cw = ChainWeights.random(r, d, f);
        Tensor woT = cw.wo(), wgT = cw.wg(), wuT = cw.wu(), wdT = cw.wd(), wnT = cw.wn();
        int before = gpu.gemvPrefetch();
        boolean pdlBefore = gpu.pdl();
        try {
            gpu.setPdl(gpu.pdlSupported());
            for (int n : new int[] {1, 3}) {
                float[] h0 = uniform(r, n * d, 1), t0 = uniform(r, n * d, 1);
                int[] limits = {0, 8, 65536};
                float[][] res = new float[limits.length][], qkv = new float[limits.length][];
                for (int i = 0; i < limits.length; i++) {
                    gpu.setGemvPrefetch(limits[i]);
                    res[i] = chain(n, d, f, h0, t0, woT, wgT, wuT, wdT, wnT);
                    Tensor x = act(gpu, n, d, h0), q = act(gpu, n, d, null), k = act(gpu, n, f, null), v = act(gpu, n, f, null);
                    gpu.matmulQkv(q, k, v, x, woT, null, wgT, null, wuT, null, n);
                    float[] all = new float[n * (d + 2 * f)];
                    System.arraycopy(gpu.download(q, 0, n), 0, all, 0, n * d);
                    System.arraycopy(gpu.download(k, 0, n), 0, all, n * d, n * f);
                    System.arraycopy(gpu.download(v, 0, n), 0, all, n * (d + f), n * f);
                    qkv[i] = all;
                }
                for (int i = 1; i < limits.length; i++) {
                    org.junit.jupiter.api.Assertions.assertArrayEquals(res[0], res[i],
                            "GEMV prefetch up to " + limits[i] + " MiB, n=" + n + ": chain differs from no prefetch");
                    org.junit.jupiter.api.Assertions.assertArrayEquals(qkv[0], qkv[i],
                            "GEMV prefetch up to " + limits[i] + " MiB, n=" + n + ": q/k/v differ from no prefetch");
                }
            }
        } finally {
            gpu.setGemvPrefetch(before);
            gpu.setPdl(pdlBefore);
        }
    }
}
