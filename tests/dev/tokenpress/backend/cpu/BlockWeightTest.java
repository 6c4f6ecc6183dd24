package dev.tokenpress.backend.cpu;

import dev.tokenpress.api.LoadOptions;
import dev.tokenpress.api.Session;
import dev.tokenpress.api.TokenPress;
import dev.tokenpress.backend.WeightType;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.model.Llama;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.SplittableRandom;

import static dev.tokenpress.testutil.TestTensors.randn;
import static org.junit.jupiter.api.Assertions.*;

/**
 * Q8_0 and Q4_0 weights ({@code --weight-type q8_0|q4_0}): the quantizers' error bounds, the kernels against a double-precision
 * reference over the dequantized weights, every matmul path (one row, up to four, chunks of two and one x rows over
 * four code rows, leftover rows) bit-identical to the others, and a model whose logits stay close to bf16's with
 * prefill and decode steps giving the same bits.
 */
class BlockWeightTest {
    static final Path MODEL = Path.of("models", "tokenpress-tiny");

    @Test
    void quantizationErrorIsWithinHalfAScaleStep() {
        SplittableRandom r = new SplittableRandom(1);
        int rows = 5, cols = 96;
        float[] m = randn(r, rows * cols, 0.7);
        m[3] = 0f;
        for (int j = 32; j < 64; j++) m[j] = 0f; // an all-zero block: scale 0, codes 0
        CpuQ8Weight w = CpuQ8Weight.quantize(m, rows, cols);
        float[] back = new float[cols];
        for (int i = 0; i < rows; i++) {
            w.rowFloats(i, back, 0);
            for (int b = 0; b < cols / 32; b++) {
                float d = w.d[i * w.blocks + b], amax = 0;
                for (int j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(m[i * cols + b * 32 + j]));
                assertEquals(amax / 127f, d, 0f);
                for (int j = 0; j < 32; j++) {
                    int e = b * 32 + j;
                    assertTrue(Math.abs(back[e] - m[i * cols + e]) <= d / 2 * (1 + 1e-6f) + 1e-30f, "row " + i + " elem " + e);
                    assertTrue(Math.abs(w.q[i * cols + e]) <= 127);
                }
            }
        }
        assertEquals(0f, w.d[1]);
        assertEquals(rows * cols + 4L * rows * (cols / 32), w.bytes());
        assertFalse(CpuQ8Weight.fits(4, 48), "48 columns are not whole blocks");
        assertThrows(IllegalArgumentException.class, () -> CpuQ8Weight.quantize(new float[48], 1, 48));
    }

    /**
     * Weights that stress the quantizers: Gaussian weights, values at exact halves of a step, NaN, ±infinity, ±0,
     * subnormals, whole blocks so small that the scale rounds or 1/d overflows, blocks whose codes fall exactly on .5,
     * blocks with +m and -m both present (the first sets the Q4 scale's sign).
     */
    private static float[] hardWeights(SplittableRandom r, int n) {
        float[] m = randn(r, n, 0.05);
        float[] specials = {Float.NaN, Float.intBitsToFloat(0xFFC00000), Float.intBitsToFloat(0x7FC00123), // NaN payloads
                Float.intBitsToFloat(0xFF800001), Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY, -0f, 0f,
                Float.MIN_VALUE, -Float.MIN_VALUE, 1e-40f, -1e-44f, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f, -1.5f, 1e30f, -3e38f,
                127f, -127f};
        for (int i = 0; i < n / 40; i++) {
            int e = r.nextInt(n);
            m[e] = r.nextInt(3) == 0 ? specials[r.nextInt(specials.length)]
                    : (r.nextInt(255) - 127) / 2f * (float) Math.pow(2, r.nextInt(40) - 20); // halves of the step
        }
        for (int bl = 0; bl < n / 500; bl++) { // tiny blocks: the scale underflows, rounds, or 1/scale overflows
            int base = r.nextInt(n / 32) * 32;
            float s = (float) Math.pow(2, -(r.nextInt(45) + 100));
            for (int j = 0; j < 32; j++) m[base + j] = (float) r.nextGaussian() * s;
            if (bl % 3 == 0) for (int j = 0; j < 32; j++) m[base + j] = (r.nextInt(31) - 15) * Float.MIN_VALUE;
        }
        for (int bl = 0; bl < n / 1500; bl++) { // Q8 codes exactly at .5 after the scaling: max 127·2^e, others (k + 0.5)·2^e
            int base = r.nextInt(n / 32) * 32;
            float s = (float) Math.pow(2, r.nextInt(20) - 10);
            m[base] = 127 * s;
            for (int j = 1; j < 32; j++) m[base + j] = ((r.nextInt(253) - 126) + 0.5f) * s;
        }
        for (int bl = 0; bl < n / 1500; bl++) { // Q4: ±m both present, codes at .5 (w = (k - 8.5)·d')
            int base = r.nextInt(n / 32) * 32;
            float s = (float) Math.pow(2, r.nextInt(20) - 10);
            for (int j = 0; j < 32; j++) m[base + j] = (r.nextInt(17) - 8.5f) * s;
            m[base + r.nextInt(32)] = 8 * s;
            m[base + r.nextInt(32)] = -8 * s;
        }
        return m;
    }

    /**
     * The vectorised Q8_0 and Q4_0 quantizers give the scalar loops' bits (the Q8 codec is what CUDA uses too) for
     * every value; on many rows, so that the JIT compiles them.
     */
    @Test
    void vectorQuantizersGiveTheScalarBits() {
        Kernels k = Kernels.best();
        Assumptions.assumeTrue(k instanceof VectorKernels, "the Vector API module is not loaded");
        Kernels scalar = new ScalarKernels();
        SplittableRandom r = new SplittableRandom(11);
        int rows = 600, cols = 256;
        float[] m = hardWeights(r, rows * cols);
        byte[] q1 = new byte[m.length], q2 = new byte[m.length];
        float[] d1 = new float[m.length / 32], d2 = new float[m.length / 32];
        // every repetition compared: the interpreter's, C1's and C2's code must all agree
        for (int rep = 0; rep < 60; rep++) {
            for (int i = 0; i < rows; i++) {
                dev.tokenpress.backend.Q8Codec.quantizeRow(m, i * cols, cols, q1, i * cols, d1, i * cols / 32);
                k.quantizeQ8Row(m, i * cols, cols, q2, i * cols, d2, i * cols / 32);
            }
            assertSameBits(q1, d1, q2, d2, m.length, "q8, repetition " + rep);
        }
        for (int rep = 0; rep < 60; rep++) {
            for (int i = 0; i < rows; i++) {
                scalar.quantizeQ4Row(m, i * cols, cols, q1, i * cols / 2, d1, i * cols / 32);
                k.quantizeQ4Row(m, i * cols, cols, q2, i * cols / 2, d2, i * cols / 32);
            }
            assertSameBits(q1, d1, q2, d2, m.length / 2, "q4, repetition " + rep);
        }
    }

    private static void assertSameBits(byte[] q1, float[] d1, byte[] q2, float[] d2, int codes, String what) {
        for (int i = 0; i < d1.length; i++)
            if (Float.floatToRawIntBits(d1[i]) != Float.floatToRawIntBits(d2[i]))
                fail(what + ": scale of block " + i + ": " + Integer.toHexString(Float.floatToRawIntBits(d1[i])) + " vs "
                        + Integer.toHexString(Float.floatToRawIntBits(d2[i])));
        for (int i = 0; i < codes; i++) if (q1[i] != q2[i]) fail(what + ": code byte " + i + ": " + q1[i] + " vs " + q2[i]);
    }

    @Test
    void q4QuantizationFollowsLlamaCpp() {
        SplittableRandom r = new SplittableRandom(4);
        int rows = 3, cols = 64;
        float[] m = randn(r, rows * cols, 0.3);
        for (int j = 32; j < 64; j++) m[j] = 0f; // an all-zero block
        m[5] = 2f;                                 // the largest magnitude of its block: code 0 exactly
        CpuQ4Weight w = CpuQ4Weight.quantize(m, rows, cols);
        float[] back = new float[cols];
        for (int i = 0; i < rows; i++) {
            w.rowFloats(i, back, 0);
            for (int e = 0; e < cols; e++) {
                float d = Math.abs(w.d[i * w.blocks + e / 32]);
                float err = Math.abs(back[e] - m[i * cols + e]);
                assertTrue(err <= d * (1 + 1e-6f) + 1e-30f, "row " + i + " elem " + e + ": " + err + " > " + d);
            }
        }
        assertEquals(-0.25f, w.d[0], 0f, "d = max / -8");
        w.rowFloats(0, back, 0);
        assertEquals(2f, back[5], 0f, "the block's largest value is exact");
        assertEquals(0f, Math.abs(w.d[1]), "an all-zero block has scale 0");
        assertEquals(rows * cols / 2 + 4L * rows * (cols / 32), w.bytes());
    }

    @Test
    void q4KernelsMatchTheWidenedCodes() {
        SplittableRandom r = new SplittableRandom(5);
        int rows = 6, cols = 160, blocks = cols / 32;
        CpuQ4Weight w = CpuQ4Weight.quantize(randn(r, rows * cols, 1.0), rows, cols);
        float[] x = randn(r, cols, 1.0), codes = new float[cols], deq = new float[cols];
        for (Kernels k : new Kernels[] {Kernels.best(), new ScalarKernels()}) {
            for (int i = 0; i < rows; i++) {
                w.widenRows(i, 1, codes, 0);
                float got = w.dotRow(k, i, x, 0);
                assertEquals(k.dotQ8f(codes, 0, w.d, i * blocks, x, 0, blocks), got, 0f, k.describe() + " row " + i);
                w.rowFloats(i, deq, 0);
                double ref = 0;
                for (int j = 0; j < cols; j++) ref += (double) deq[j] * x[j];
                assertEquals(ref, got, 1e-4 * (1 + Math.abs(ref)), k.describe() + " row " + i);
            }
        }
    }

    @Test
    void kernelsMatchTheReferenceAndEachOther() {
        SplittableRandom r = new SplittableRandom(2);
        int rows = 9, cols = 160, blocks = cols / 32; // an odd block count and a leftover row
        CpuQ8Weight w = CpuQ8Weight.quantize(randn(r, rows * cols, 1.0), rows, cols);
        float[] x = randn(r, 2 * cols, 1.0);
        float[] deq = new float[cols];
        for (Kernels k : new Kernels[] {Kernels.best(), new ScalarKernels()}) {
            for (int i = 0; i < rows; i++) {
                w.rowFloats(i, deq, 0);
                double ref = 0;
                for (int j = 0; j < cols; j++) ref += (double) deq[j] * x[cols + j];
                float got = k.dotQ8(w.q, i * cols, w.d, i * blocks, x, cols, blocks);
                assertEquals(ref, got, 1e-4 * (1 + Math.abs(ref)), k.describe() + " row " + i);
                float[] codes = new float[cols];
                for (int j = 0; j < cols; j++) codes[j] = w.q[i * cols + j];
                assertEquals(got, k.dotQ8f(codes, 0, w.d, i * blocks, x, cols, blocks), 0f, "widened codes, same bits");
            }
            float[] codes = new float[4 * cols], four = new float[4], twelve = new float[12];
            for (int j = 0; j < 4 * cols; j++) codes[j] = w.q[2 * cols + j]; // rows 2..5
            k.dotQ8fx4(codes, w.d, 2 * blocks, x, 0, blocks, four, 0);
            k.dotQ8fx4x3(codes, w.d, 2 * blocks, x, 0, cols, 0, blocks, twelve);
            for (int i = 0; i < 4; i++) {
                float one0 = k.dotQ8(w.q, (2 + i) * cols, w.d, (2 + i) * blocks, x, 0, blocks);
                float one1 = k.dotQ8(w.q, (2 + i) * cols, w.d, (2 + i) * blocks, x, cols, blocks);
                assertEquals(one0, four[i], 0f, k.describe() + " x4 row " + i);
                assertEquals(one0, twelve[i], 0f, k.describe() + " x4x3 row " + i);
                assertEquals(one1, twelve[4 + i], 0f, k.describe() + " x4x3 second x, row " + i);
                assertEquals(one0, twelve[8 + i], 0f, k.describe() + " x4x3 third x, row " + i);
            }
        }
    }

    @Test
    void matmulRowCountsGiveTheSameBits() {
        SplittableRandom r = new SplittableRandom(3);
        int out = 70, in = 96; // 17 groups of four rows and two left over
        float[] m = randn(r, out * in, 0.5);
        matmulRowCounts(CpuQ8Weight.quantize(m, out, in), r);
        matmulRowCounts(CpuQ4Weight.quantize(m, out, in), r);
    }

    private static void matmulRowCounts(CpuBlockWeight w, SplittableRandom r) {
        int out = w.rows, in = w.cols;
        float[] bias = randn(r, out, 0.1);
        try (CpuBackend b = new CpuBackend(2)) {
            float[] xs = randn(r, 9 * in, 1.0);
            CpuTensor x9 = new CpuTensor(xs, 9, in), o9 = new CpuTensor(9, out);
            b.matmul(o9, x9, w, new CpuTensor(bias, 1, out), 9);   // chunk path: triples of x rows
            // decode path (up to four rows), and chunks whose x rows end in two single rows (5, 8) or one (7)
            for (int rows : new int[] {1, 3, 4, 5, 7, 8}) {
                float[] part = java.util.Arrays.copyOf(xs, rows * in);
                CpuTensor o = new CpuTensor(rows, out);
                b.matmul(o, new CpuTensor(part, rows, in), w, new CpuTensor(bias, 1, out), rows);
                for (int i = 0; i < rows * out; i++) assertEquals(o9.data[i], o.data[i], 0f, rows + " rows, element " + i);
            }
            // embedding rows are the dequantized rows
            CpuTensor e = new CpuTensor(2, in);
            b.embedding(e, w, new int[] {5, 69}, 2);
            float[] row = new float[in];
            w.rowFloats(69, row, 0);
            for (int j = 0; j < in; j++) assertEquals(row[j], e.data[in + j], 0f);
        }
    }

    @Test
    void modelLogitsStayCloseAndChunksMatchSteps() {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        LoadOptions cpu = LoadOptions.defaults().withDevice("cpu").withThreads(2);
        String text = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n";
        double nllRef;
        float[] refLast;
        try (TokenPress tp = TokenPress.load(MODEL, cpu); Session s = tp.newSession(256)) {
            assertEquals(0, tp.model().weights().allocatedBytes() - normsAndBiases(tp), "bf16 matrices are read in place");
            nllRef = meanNll(s.logProbs(tp.tokenizer().encode(text)));
            refLast = tp.model().logits();
        }
        // type, bytes per 32 weights (codes + an f32 scale), largest logits nmse, largest relative NLL change
        Object[][] cases = {{WeightType.Q8_0, 36L, 1e-3, 0.02}, {WeightType.Q4_0, 20L, 3e-2, 0.10}};
        for (Object[] c : cases) {
            WeightType type = (WeightType) c[0];
            try (TokenPress tp = TokenPress.load(MODEL, cpu.withWeights(type)); Session s = tp.newSession(256)) {
                long params = 0;
                for (var l : tp.model().weights().layers())
                    params += (long) l.wq().rows() * l.wq().cols() * 2 + 2L * l.wk().rows() * l.wk().cols() + 3L * l.wGate().rows() * l.wGate().cols();
                params += (long) tp.config().vocabSize() * tp.config().hiddenSize(); // tied embedding / LM head, once
                long held = tp.model().weights().allocatedBytes() - normsAndBiases(tp);
                assertEquals(params / 32 * (long) c[1], held, type + ": codes plus an f32 scale per 32 weights");
                int[] tokens = tp.tokenizer().encode(text);
                double nll = meanNll(s.logProbs(tokens));
                float[] last = tp.model().logits();
                double num = 0, den = 0;
                for (int i = 0; i < last.length; i++) {
                    num += (last[i] - refLast[i]) * (double) (last[i] - refLast[i]);
                    den += refLast[i] * (double) refLast[i];
                }
                System.out.printf("[%s] mean NLL %.5f vs %.5f (bf16); last-position logits nmse %.3g%n", type, nll, nllRef, num / den);
                assertTrue(num / den < (double) c[2], type + " logits nmse " + num / den);
                assertTrue(Math.abs(nll - nllRef) < (double) c[3] * nllRef, type + " NLL " + nll + " vs " + nllRef);

                Llama m = tp.model();
                KvCache a = m.newCache(64), b = m.newCache(64);
                float[] all = m.prefill(a, tokens, 0, true, null);
                int v = tp.config().vocabSize();
                for (int i = 0; i < tokens.length; i++) {
                    m.decodeStep(b, tokens[i], i);
                    float[] step = m.logits();
                    for (int j = 0; j < v; j++) assertEquals(all[i * v + j], step[j], 0f, type + " position " + i + " token " + j);
                }
            }
        }
    }

    private static long normsAndBiases(TokenPress tp) {
        var w = tp.model().weights();
        long sum = w.finalNorm().bytes();
        for (var l : w.layers()) {
            sum += l.attnNorm().bytes() + l.mlpNorm().bytes();
            for (var t : new dev.tokenpress.backend.Tensor[] {l.bq(), l.bk(), l.bv()}) if (t != null) sum += t.bytes();
        }
        return sum;
    }

    private static double meanNll(float[] lp) {
        double s = 0;
        for (float v : lp) s -= v;
        return s / lp.length;
    }
}
