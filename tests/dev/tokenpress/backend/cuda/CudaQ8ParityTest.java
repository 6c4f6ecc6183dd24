package dev.tokenpress.backend.cuda;

import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.WeightType;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.TensorData;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;
import java.util.SplittableRandom;

import static dev.tokenpress.backend.cuda.CudaParityTest.act;
import static dev.tokenpress.backend.cuda.CudaParityTest.assertClose;
import static dev.tokenpress.backend.cuda.CudaParityTest.bf16Weight;
import static dev.tokenpress.backend.cuda.CudaParityTest.f32Vector;
import static org.junit.jupiter.api.Assertions.*;

/**
 * Q8_0 weights on CUDA ({@code --weight-type q8_0}) against the CPU's Q8_0 path (the same codes and scales, from
 * one quantizer): the Q8 GEMV for n = 1..4 rows with and without bias and accumulated into its output, the
 * dequantize + cuBLAS path for prefill chunks (several row slices), the Q8 embedding, and a generated model's
 * logits after a prompt (prefill chunk: cuBLAS over dequantized slices) and after single tokens (the Q8 GEMV);
 * the GEMV variants against each other. Skipped where CUDA is unavailable.
 */
class CudaQ8ParityTest {
    static CpuBackend cpu;
    static CudaBackend gpu;

    @TempDir
    Path tmp;

    @BeforeAll
    static void open() {
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        cpu = new CpuBackend();
        gpu = CudaBackend.open();
        cpu.setWeightType(WeightType.Q8_0);
        gpu.setWeightType(WeightType.Q8_0);
        // the CPU parity bounds below are for float x (variant 1); the default variant 4 rounds x to 8 bits and has
        // tests of its own (dp4a*), which set it themselves
        variantBefore = TpNative.tp_q8_gemv_variant();
        assertEquals(0, TpNative.tp_set_q8_gemv_variant(1));
    }

    static int variantBefore = 4;

    @AfterAll
    static void close() {
        if (gpu != null) TpNative.tp_set_q8_gemv_variant(variantBefore);
        if (gpu != null) gpu.close();
        if (cpu != null) cpu.close();
    }

    @Test
    void gemvAndGemmMatchTheCpu() {
        SplittableRandom r = new SplittableRandom(7);
        int[][] shapes = {{1, 32}, {7, 64}, {333, 2048}, {4097, 256}};
        for (int[] sh : shapes) {
            int outDim = sh[0], in = sh[1];
            float[] w = CudaGemvParityTest.uniform(r, outDim * in, 0.5);
            TensorData wd = bf16Weight("w", outDim, in, w);
            Tensor wc = cpu.weight(wd), wg = gpu.weight(wd);
            assertTrue(wg.toString().contains("q8_0"), wg.toString());
            float[] bias = CudaGemvParityTest.uniform(r, outDim, 0.1);
            Tensor bc = cpu.weight(f32Vector("b", bias)), bg = gpu.weight(f32Vector("b", bias));
            for (int n : new int[] {1, 2, 3, 4, 9}) {
                float[] x = CudaGemvParityTest.uniform(r, n * in, 1.0);
                for (boolean withBias : new boolean[] {false, true}) {
                    Tensor oc = act(cpu, n, outDim, null), og = act(gpu, n, outDim, null);
                    cpu.matmul(oc, act(cpu, n, in, x), wc, withBias ? bc : null, n);
                    gpu.matmul(og, act(gpu, n, in, x), wg, withBias ? bg : null, n);
                    gpu.synchronize();
                    // n <= 4: the Q8 GEMV (f32 x); n = 9: x and the dequantized weights rounded to bf16 for cuBLAS,
                    // with CudaParityTest.matmul's bounds for that path
                    assertQ8Close(outDim + "x" + in + " n=" + n + " bias=" + withBias, n, cpu.download(oc, 0, n),
                            gpu.download(og, 0, n));
                }
                // accumulated (the residual add of matmulAdd)
                float[] base = CudaGemvParityTest.uniform(r, n * outDim, 1.0);
                Tensor xc = act(cpu, n, outDim, base), xg = act(gpu, n, outDim, base);
                Tensor yc = act(cpu, n, outDim, null), yg = act(gpu, n, outDim, null);
                cpu.matmulAdd(xc, yc, act(cpu, n, in, x), wc, n);
                gpu.matmulAdd(xg, yg, act(gpu, n, in, x), wg, n);
                gpu.synchronize();
                assertQ8Close(outDim + "x" + in + " n=" + n + " accumulate", n, cpu.download(xc, 0, n), gpu.download(xg, 0, n));
            }
            // the embedding reads the same rows
            int rows = Math.min(outDim, 3);
            int[] tokens = new int[rows];
            for (int i = 0; i < rows; i++) tokens[i] = outDim - 1 - i;
            Tensor ec = act(cpu, rows, in, null), eg = act(gpu, rows, in, null);
            cpu.embedding(ec, wc, tokens, rows);
            gpu.embedding(eg, wg, tokens, rows);
            gpu.synchronize();
            assertClose("embedding " + outDim + "x" + in, cpu.download(ec, 0, rows), gpu.download(eg, 0, rows), 1e-12, 1e-6, 1e-6);
        }
    }

    static void assertQ8Close(String what, int n, float[] ref, float[] got) {
        if (n <= 4) assertClose(what, ref, got, 1e-8, 1e-4, 1e-4);
        else assertClose(what, ref, got, 2e-5, 0.05, 0.02);
    }

    /** The fused decode GEMVs over Q8_0: q/k/v in one launch (with biases) and gate/up + SwiGLU. */
    @Test
    void fusedQkvAndSwigluMatchTheCpu() {
        SplittableRandom r = new SplittableRandom(12);
        int in = 256, qd = 256, kvd = 64, f = 704;
        String[] names = {"wq", "wk", "wv", "wg", "wu"};
        int[] rows = {qd, kvd, kvd, f, f};
        Tensor[] wc = new Tensor[5], wg = new Tensor[5];
        for (int i = 0; i < 5; i++) {
            TensorData d = bf16Weight(names[i], rows[i], in, CudaGemvParityTest.uniform(r, rows[i] * in, 0.3));
            wc[i] = cpu.weight(d);
            wg[i] = gpu.weight(d);
        }
        Tensor[] bc = new Tensor[3], bg = new Tensor[3];
        for (int i = 0; i < 3; i++) {
            TensorData d = f32Vector("b" + i, CudaGemvParityTest.uniform(r, rows[i], 0.1));
            bc[i] = cpu.weight(d);
            bg[i] = gpu.weight(d);
        }
        for (int n = 1; n <= 4; n++) {
            float[] x = CudaGemvParityTest.uniform(r, n * in, 1.0);
            Tensor xc = act(cpu, n, in, x), xg = act(gpu, n, in, x);
            Tensor[] oc = {act(cpu, n, qd, null), act(cpu, n, kvd, null), act(cpu, n, kvd, null)};
            Tensor[] og = {act(gpu, n, qd, null), act(gpu, n, kvd, null), act(gpu, n, kvd, null)};
            cpu.matmulQkv(oc[0], oc[1], oc[2], xc, wc[0], bc[0], wc[1], bc[1], wc[2], bc[2], n);
            gpu.matmulQkv(og[0], og[1], og[2], xg, wg[0], bg[0], wg[1], bg[1], wg[2], bg[2], n);
            Tensor sc = act(cpu, n, f, null), sg = act(gpu, n, f, null), uc = act(cpu, n, f, null), ug = act(gpu, n, f, null);
            cpu.matmulSwiglu(sc, uc, xc, wc[3], wc[4], n);
            gpu.matmulSwiglu(sg, ug, xg, wg[3], wg[4], n);
            gpu.synchronize();
            for (int i = 0; i < 3; i++)
                assertQ8Close("qkv " + i + " n=" + n, n, cpu.download(oc[i], 0, n), gpu.download(og[i], 0, n));
            assertQ8Close("swiglu n=" + n, n, cpu.download(sc, 0, n), gpu.download(sg, 0, n));
        }
    }

    /**
     * The Q8 GEMV variants (tp_set_q8_gemv_variant): 1 and 2 (I2F with each scale read on use; byte permute with the
     * scales loaded with the codes) do the same arithmetic in the same order: the same bits; 3 (lanes interleaved at 4
     * codes) sums in another order: within the CPU parity bounds of variant 1. For the plain, accumulating, fused
     * q/k/v and gate/up + SwiGLU GEMVs, on row and column counts that leave partial rounds, blocks and super-chunks.
     */
    @Test
    void gemvVariantsGiveTheSameBits() {
        SplittableRandom r = new SplittableRandom(21);
        int before = TpNative.tp_q8_gemv_variant();
        try {
            for (int[] sh : new int[][] {{7, 64}, {333, 2048}, {2048, 8192}, {4097, 256}, {5, 544}, {333, 2080}, {64, 8224}}) {
                int outDim = sh[0], in = sh[1];
                TensorData wd = bf16Weight("w", outDim, in, CudaGemvParityTest.uniform(r, outDim * in, 0.5));
                Tensor w = gpu.weight(wd), w2 = gpu.weight(bf16Weight("w2", outDim, in, CudaGemvParityTest.uniform(r, outDim * in, 0.5)));
                Tensor b = gpu.weight(f32Vector("b", CudaGemvParityTest.uniform(r, outDim, 0.1)));
                for (int n = 1; n <= 4; n++) {
                    float[] x = CudaGemvParityTest.uniform(r, n * in, 1.0), base = CudaGemvParityTest.uniform(r, n * outDim, 1.0);
                    float[][][] got = new float[3][][];
                    for (int v = 1; v <= 3; v++) got[v - 1] = everyGemv(v, n, in, outDim, x, base, w, w2, b);
                    for (int i = 0; i < got[0].length; i++) {
                        assertArrayEquals(got[0][i], got[1][i], outDim + "x" + in + " n=" + n + " output " + i);
                        assertQ8Close("variant 3, " + outDim + "x" + in + " n=" + n + " output " + i, n, got[0][i], got[2][i]);
                    }
                }
            }
        } finally {
            TpNative.tp_set_q8_gemv_variant(before);
        }
    }

    /**
     * Variant 4 (x quantized to int8 per block of 32 in shared memory, DP4A) against variant 1 (float x, itself
     * within 1e-4 of the CPU above) on the plain, accumulating, fused q/k/v and gate/up + SwiGLU GEMVs: x's 8-bit
     * rounding (at most max|x| / 254 per element, about 0.4% of x's RMS on average) bounds the difference: NMSE ≤ 2e-4
     * (about 2e-5 expected for one product, twice that for SwiGLU's) and every element within 10% of the outputs' RMS. Shapes leave partial rounds and blocks; an all-zero block of x (scale 0) and a NaN (its row all
     * NaN) are included. A call whose x does not fit the shared memory (4 rows of 12,288) runs variant 1: the same
     * bits; one row of it fits and runs the integer path (different bits).
     */
    @Test
    void dp4aVariantIsWithinXRoundingOfVariant1() {
        SplittableRandom r = new SplittableRandom(31);
        int before = TpNative.tp_q8_gemv_variant();
        try {
            for (int[] sh : new int[][] {{7, 64}, {333, 2048}, {2048, 8192}, {4097, 256}, {5, 544}, {333, 2080}, {64, 8224}, {40, 12288}}) {
                int outDim = sh[0], in = sh[1];
                Tensor w = gpu.weight(bf16Weight("w", outDim, in, CudaGemvParityTest.uniform(r, outDim * in, 0.5)));
                Tensor w2 = gpu.weight(bf16Weight("w2", outDim, in, CudaGemvParityTest.uniform(r, outDim * in, 0.5)));
                Tensor b = gpu.weight(f32Vector("b", CudaGemvParityTest.uniform(r, outDim, 0.1)));
                for (int n = 1; n <= 4; n++) {
                    float[] x = CudaGemvParityTest.uniform(r, n * in, 1.0), base = CudaGemvParityTest.uniform(r, n * outDim, 1.0);
                    java.util.Arrays.fill(x, 0, 32, 0f);                          // an all-zero block: scale 0
                    if (n == 3) x[2 * in + in / 2] = Float.NaN;                   // row 2 all NaN
                    float[][][] got = new float[2][][];
                    for (int vi = 0; vi < 2; vi++) got[vi] = everyGemv(vi == 0 ? 1 : 4, n, in, outDim, x, base, w, w2, b);
                    boolean fallsBack = (long) n * in * 9 / 8 > 47 * 1024;
                    for (int i = 0; i < got[0].length; i++) {
                        String what = "variant 4, " + outDim + "x" + in + " n=" + n + " output " + i;
                        if (fallsBack) {
                            assertArrayEquals(got[0][i], got[1][i], what + " (too large for shared memory: variant 1)");
                            continue;
                        }
                        if (in == 12288) assertFalse(java.util.Arrays.equals(got[0][i], got[1][i]), what + ": the integer path ran");
                        assertWithinXRounding(what, n, outDim, got[0][i], got[1][i], n == 3 ? 2 : -1);
                    }
                }
            }
        } finally {
            TpNative.tp_set_q8_gemv_variant(before);
        }
    }

    /**
     * Variant 4 against a host reference of its own arithmetic: x quantized per block of 32 as the kernel does it (the
     * same float operations: max|x|, scale max / 127, codes rint(x · 127 / max) clamped), the weights' codes and
     * scales from {@link dev.tokenpress.backend.Q8Codec}, and Σ (scale_w · scale_x as a float) · (integer sum) in
     * double. Only the kernel's float accumulation differs (a few dozen roundings per output), so each output must lie
     * within 1e-5 of the sum of its terms' magnitudes: a tight check that holds for any data. Blocks of x get magnitudes
     * from 0.01 to 10 (a wrong block scale shows at once); rows and columns leave partial rounds and blocks.
     */
    @Test
    void dp4aMatchesAHostReferenceOfItsArithmetic() {
        SplittableRandom r = new SplittableRandom(41);
        int before = TpNative.tp_q8_gemv_variant();
        try {
            assertEquals(0, TpNative.tp_set_q8_gemv_variant(4));
            for (int[] sh : new int[][] {{7, 64}, {333, 2048}, {5, 544}, {2048, 8192}, {64, 8224}, {4097, 256}}) {
                int outDim = sh[0], in = sh[1], nb = in / 32;
                float[] w = CudaGemvParityTest.uniform(r, outDim * in, 0.5);
                for (int i = 0; i < w.length; i++) w[i] = Float.intBitsToFloat((dev.tokenpress.io.Half.floatToBf16(w[i]) & 0xFFFF) << 16);
                byte[] wq = new byte[outDim * in];
                float[] wd = new float[outDim * nb];
                for (int o = 0; o < outDim; o++) dev.tokenpress.backend.Q8Codec.quantizeRow(w, o * in, in, wq, o * in, wd, o * nb);
                Tensor wt = gpu.weight(bf16Weight("w", outDim, in, w));
                for (int n = 1; n <= 4; n++) {
                    float[] x = CudaGemvParityTest.uniform(r, n * in, 1.0);
                    for (int b = 0; b < n * nb; b++) {
                        float mag = (float) Math.pow(10, r.nextDouble() * 3 - 2);
                        for (int j = 0; j < 32; j++) x[b * 32 + j] *= mag;
                    }
                    // x's codes and scales, as quantize_x_shared computes them
                    byte[] xq = new byte[n * in];
                    float[] xd = new float[n * nb];
                    for (int b = 0; b < n * nb; b++) {
                        float a = 0f;
                        for (int j = 0; j < 32; j++) a = Math.max(a, Math.abs(x[b * 32 + j]));
                        xd[b] = a / 127f;
                        float id = a > 0f ? 127f / a : 0f;
                        for (int j = 0; j < 32; j++)
                            xq[b * 32 + j] = (byte) Math.max(-127, Math.min(127, (int) Math.rint(x[b * 32 + j] * id)));
                    }
                    Tensor o = act(gpu, n, outDim, null);
                    gpu.matmul(o, act(gpu, n, in, x), wt, null, n);
                    gpu.synchronize();
                    float[] got = gpu.download(o, 0, n);
                    for (int row = 0; row < n; row++)
                        for (int c = 0; c < outDim; c++) {
                            double ref = 0, mag = 0;
                            for (int b = 0; b < nb; b++) {
                                long isum = 0;
                                for (int j = 0; j < 32; j++) isum += wq[c * in + b * 32 + j] * xq[row * in + b * 32 + j];
                                double term = (double) (wd[c * nb + b] * xd[row * nb + b]) * isum;
                                ref += term;
                                mag += Math.abs(term);
                            }
                            double err = Math.abs(got[row * outDim + c] - ref);
                            if (err > 1e-5 * mag + 1e-30)
                                fail(String.format("%dx%d n=%d row %d col %d: got %.9g, reference %.9g (terms' magnitude %.4g)",
                                        outDim, in, n, row, c, got[row * outDim + c], ref, mag));
                        }
                }
            }
        } finally {
            TpNative.tp_set_q8_gemv_variant(before);
        }
    }

    /**
     * Under Q8 GEMV variant v: the plain GEMV (with bias), the accumulating one (onto base), gate/up + SwiGLU and the
     * fused q/k/v GEMV of n rows of x, downloaded in that order (q, k and v separately).
     */
    static float[][] everyGemv(int v, int n, int in, int outDim, float[] x, float[] base, Tensor w, Tensor w2, Tensor b) {
        assertEquals(0, TpNative.tp_set_q8_gemv_variant(v));
        Tensor xt = act(gpu, n, in, x), o = act(gpu, n, outDim, null), acc = act(gpu, n, outDim, base);
        Tensor y = act(gpu, n, outDim, null), g = act(gpu, n, outDim, null), u = act(gpu, n, outDim, null);
        Tensor q = act(gpu, n, outDim, null), k = act(gpu, n, outDim, null), vv = act(gpu, n, outDim, null);
        gpu.matmul(o, xt, w, b, n);
        gpu.matmulAdd(acc, y, xt, w, n);
        gpu.matmulSwiglu(g, u, xt, w, w2, n);
        gpu.matmulQkv(q, k, vv, xt, w, b, w2, null, w, null, n);
        gpu.synchronize();
        return new float[][] {gpu.download(o, 0, n), gpu.download(acc, 0, n), gpu.download(g, 0, n),
                gpu.download(q, 0, n), gpu.download(k, 0, n), gpu.download(vv, 0, n)};
    }

    /** got within x's 8-bit rounding of ref (see above); row nanRow (or none when negative) must be all NaN in both. */
    static void assertWithinXRounding(String what, int n, int cols, float[] ref, float[] got, int nanRow) {
        double ss = 0, se = 0;
        int count = 0;
        for (int row = 0; row < n; row++)
            for (int c = 0; c < cols; c++) {
                int e = row * cols + c;
                if (row == nanRow) {
                    assertTrue(Float.isNaN(ref[e]) && Float.isNaN(got[e]), what + ": NaN row " + row + " at " + c);
                    continue;
                }
                assertTrue(Float.isFinite(got[e]), what + ": element " + e + " = " + got[e]);
                ss += (double) ref[e] * ref[e];
                count++;
            }
        double rms = Math.sqrt(ss / Math.max(1, count));
        for (int row = 0; row < n; row++) {
            if (row == nanRow) continue;
            for (int c = 0; c < cols; c++) {
                int e = row * cols + c;
                double d = (double) got[e] - ref[e];
                se += d * d;
                if (Math.abs(d) > 0.1 * rms)
                    fail(String.format("%s: element %d: ref %.7g got %.7g (outputs' RMS %.4g)", what, e, ref[e], got[e], rms));
            }
        }
        assertTrue(se <= 2e-4 * ss, what + ": nmse " + se / ss);
    }

    /** A generated model's logits with variant 4 against the CPU's Q8_0 path (float x): x's rounding in every GEMV. */
    @Test
    void dp4aModelLogitsStayCloseToTheCpu() {
        ModelWriter.write(tmp, CudaModelParityTest.config(512, 8, 2, 64, 4), 9, s -> {});
        LoadOptions q8 = LoadOptions.defaults().withWeights(WeightType.Q8_0);
        float[][] cpuLogits = new float[3][], gpuLogits = new float[3][];
        int before = TpNative.tp_q8_gemv_variant();
        try {
            assertEquals(0, TpNative.tp_set_q8_gemv_variant(4));
            for (int side = 0; side < 2; side++) {
                try (TokenPress tp = TokenPress.load(tmp, q8.withDevice(side == 0 ? "cpu" : "cuda"));
                     Session s = tp.newSession(256)) {
                    int[] prompt = tp.tokenizer().encode("the quick brown fox jumps over the lazy dog and then some more words");
                    GenerationHolder.run(s, prompt, side == 0 ? cpuLogits : gpuLogits, tp);
                }
            }
        } finally {
            TpNative.tp_set_q8_gemv_variant(before);
        }
        for (int i = 0; i < cpuLogits.length; i++) {
            double nmse = CudaParityTest.nmse(cpuLogits[i], gpuLogits[i]);
            System.out.printf("[q8_0 model, GEMV variant 4] step %d: nmse %.3g%n", i, nmse);
            assertTrue(nmse < 5e-3, "q8_0 logits with variant 4 at step " + i + ": nmse " + nmse);
        }
    }

    /** The prefill path in many weight-row slices: offsets into the output, the codes and the scales. */
    @Test
    void slicedGemmMatchesTheCpu() {
        SplittableRandom r = new SplittableRandom(8);
        int outDim = 301, in = 96, n = 7;
        float[] w = CudaGemvParityTest.uniform(r, outDim * in, 0.5), x = CudaGemvParityTest.uniform(r, n * in, 1.0);
        TensorData wd = bf16Weight("w", outDim, in, w);
        Tensor wc = cpu.weight(wd), wg = gpu.weight(wd);
        try {
            gpu.setQ8SliceBytes(2L * in * 40); // 40 rows per slice: 8 slices, the last one partial
            Tensor oc = act(cpu, n, outDim, null), og = act(gpu, n, outDim, null);
            cpu.matmul(oc, act(cpu, n, in, x), wc, null, n);
            gpu.matmul(og, act(gpu, n, in, x), wg, null, n);
            gpu.synchronize();
            assertQ8Close("sliced " + outDim + "x" + in, n, cpu.download(oc, 0, n), gpu.download(og, 0, n));
        } finally {
            gpu.setQ8SliceBytes(64L << 20);
        }
    }

    /** Greedy decoding on the GPU (decode steps in CUDA graphs, the embedding from the feedback register). */
    @Test
    void greedyTokensMatchTheCpu() {
        ModelWriter.write(tmp, CudaModelParityTest.config(512, 8, 2, 64, 4), 10, s -> {});
        LoadOptions q8 = LoadOptions.defaults().withWeights(WeightType.Q8_0);
        int[][] got = new int[2][];
        for (int side = 0; side < 2; side++)
            try (TokenPress tp = TokenPress.load(tmp, q8.withDevice(side == 0 ? "cpu" : "cuda")); Session s = tp.newSession(256)) {
                // a 3-token prompt: its prefill takes the GEMV path too (f32 x on both sides), so near-ties do not flip
                got[side] = s.generate(new int[] {1, 2, 3}, 24, SamplingOptions.greedy(), null).tokens();
            }
        assertArrayEquals(got[0], got[1], "greedy q8_0 tokens, CPU vs GPU");
    }

    @Test
    void modelLogitsMatchTheCpu() {
        ModelWriter.write(tmp, CudaModelParityTest.config(512, 8, 2, 64, 4), 9, s -> {});
        LoadOptions q8 = LoadOptions.defaults().withWeights(WeightType.Q8_0);
        float[][] cpuLogits = new float[3][], gpuLogits = new float[3][];
        for (int side = 0; side < 2; side++) {
            try (TokenPress tp = TokenPress.load(tmp, q8.withDevice(side == 0 ? "cpu" : "cuda"));
                 Session s = tp.newSession(256)) {
                int[] prompt = tp.tokenizer().encode("the quick brown fox jumps over the lazy dog and then some more words");
                GenerationHolder.run(s, prompt, side == 0 ? cpuLogits : gpuLogits, tp);
            }
        }
        for (int i = 0; i < cpuLogits.length; i++) {
            double nmse = CudaParityTest.nmse(cpuLogits[i], gpuLogits[i]);
            System.out.printf("[q8_0 model] step %d: nmse %.3g%n", i, nmse);
            assertTrue(nmse < 1e-3, "q8_0 logits at step " + i + ": nmse " + nmse);
        }
    }

    /** A prompt, then two single tokens fed: the logits after each. */
    static final class GenerationHolder {
        static void run(Session s, int[] prompt, float[][] out, TokenPress tp) {
            s.generate(prompt, 0, SamplingOptions.greedy(), null);
            out[0] = tp.model().logits();
            s.generate(new int[] {5}, 0, SamplingOptions.greedy(), null);
            out[1] = tp.model().logits();
            s.generate(new int[] {9}, 0, SamplingOptions.greedy(), null);
            out[2] = tp.model().logits();
        }
    }
}
