package dev.tokenpress.kv.quant;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.backend.cpu.QuantKvCache;
import dev.tokenpress.io.DType;
import dev.tokenpress.io.Half;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.io.SafeTensors;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.KvPolicies;
import dev.tokenpress.model.Llama;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.model.Weights;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/** KV quantization: quantizer bounds, packed storage, fused attention, model-level accuracy, memory, composition. */
class KvQuantTest {
    @TempDir
    static Path dir;
    static LlamaConfig config;
    static Llama model;

    @BeforeAll
    static void setUp() {
        // GQA: 4 q-heads, 2 KV heads, head dim 16, 2 layers
        config = new LlamaConfig("LlamaForCausalLM", "llama", 64, 96, 2, 4, 2, 16, 300, 1e-5f, 10000f, null, 4096,
                true, false, null, 298, List.of(299), "float32");
        ModelWriter.write(dir, config, DType.F32, 17, s -> {});
        CpuBackend b = new CpuBackend(2);
        model = new Llama(config, Weights.load(SafeTensors.open(dir), config, b, null), b, 16);
    }

    @AfterAll
    static void tearDown() {
        model.close();
    }

    static int[] tokens(int n, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        int[] t = new int[n];
        for (int i = 0; i < n; i++) t[i] = r.nextInt(config.vocabSize() - 2);
        return t;
    }

    // ---- spec ---------------------------------------------------------------------------------------------

    @Test
    void specParsingAndHelp() {
        assertTrue(KvQuantSpec.parse(null).isNone());
        assertTrue(KvQuantSpec.parse("none").isNone());
        KvQuantSpec s = KvQuantSpec.parse("int4");
        assertEquals(KvQuantSpec.Method.KIVI, s.method());
        assertEquals(4, s.bits());
        assertEquals(32, s.group());
        assertEquals(32, s.residual());
        assertEquals("int4:group=32,residual=32", s.spec());
        assertEquals(s, KvQuantSpec.parse(s.spec()));
        KvQuantSpec z = KvQuantSpec.parse("zipcache:ratio=0.5,hi=8");
        assertEquals(8, z.bits());
        assertEquals(2, z.loBits());
        assertEquals(0.5, z.ratio());
        KvQuantSpec g = KvQuantSpec.parse("gear:rank=4,s=0.05,group=64,residual=128");
        assertEquals(4, g.rank());
        assertEquals(0.05, g.outliers());
        assertEquals(128, g.residual());
        assertEquals(0.25, KvQuantSpec.parse("mikv").budget());
        String help = KvQuantSpec.help();
        for (String name : new String[]{"none", "int8", "int4", "int2", "zipcache", "mikv", "gear", "group", "residual",
                "ratio", "budget", "rank", "iters"})
            assertTrue(help.contains(name), name);
        for (String bad : new String[]{"int3", "int4:group=0", "int4:foo=1", "zipcache:hi=3", "mikv:budget=2.5", "gear:s=0.9", "int4:group"})
            assertThrows(IllegalArgumentException.class, () -> KvQuantSpec.parse(bad), bad);
        assertThrows(IllegalArgumentException.class, () -> KvQuantSpec.parse("int4:group=12").check(16));
    }

    // ---- quantizer ----------------------------------------------------------------------------------------

    @ParameterizedTest
    @ValueSource(ints = {1, 2, 4, 8})
    void quantizerRoundTripWithinHalfAStep(int bits) {
        SplittableRandom r = new SplittableRandom(7 + bits);
        short[] zero = new short[1], scale = new short[1];
        for (int trial = 0; trial < 300; trial++) {
            int n = 1 + r.nextInt(64);
            float[] x = new float[n];
            double spread = Math.pow(10, r.nextInt(-3, 3)), shift = r.nextDouble(-3, 3);
            float min = Float.POSITIVE_INFINITY, max = Float.NEGATIVE_INFINITY;
            for (int i = 0; i < n; i++) {
                x[i] = (float) (shift + spread * r.nextGaussian());
                min = Math.min(min, x[i]);
                max = Math.max(max, x[i]);
            }
            Quant.params(min, max, bits, zero, scale, 0);
            float z = Half.toFloat(zero[0]), s = Half.toFloat(scale[0]);
            // the stored scale is the exact step rounded up by at most two f16 ulps (zero rounded down)
            double exact = (max - min) / Quant.levels(bits);
            assertTrue(s >= exact, "scale " + s + " < " + exact);
            assertTrue(s <= (max - z) / Quant.levels(bits) * (1 + 2.0 / 1024) + 1e-7, "scale too coarse");
            byte[] packed = new byte[Quant.rowBytes(n, bits)];
            for (int i = 0; i < n; i++) Quant.put(packed, 0, i, bits, Quant.code(x[i], z, s, bits));
            assertEquals((n * bits + 7) / 8, packed.length);
            for (int i = 0; i < n; i++) {
                float xh = Quant.get(packed, 0, i, bits) * s + z;
                assertTrue(Math.abs(x[i] - xh) <= s / 2 * (1 + 1e-5) + 1e-6,
                        "bits " + bits + ": |" + x[i] + " - " + xh + "| > scale/2 = " + s / 2);
            }
        }
    }

    @Test
    void packingIsDense() {
        byte[] a = new byte[2];
        for (int i = 0; i < 8; i++) Quant.put(a, 0, i, 2, i & 3);
        assertEquals((byte) 0b11100100, a[0]); // element 0 in the low bits
        for (int i = 0; i < 8; i++) assertEquals(i & 3, Quant.get(a, 0, i, 2));
        byte[] b = new byte[1];
        Quant.put(b, 0, 0, 4, 0x5);
        Quant.put(b, 0, 1, 4, 0xA);
        assertEquals((byte) 0xA5, b[0]);
    }

    // ---- the cache ----------------------------------------------------------------------------------------

    /** Stores n random tokens into every (layer, head) of a cache with storeKv, in chunks; returns keys/values [L][H][n*hd]. */
    static float[][][][] fill(CpuBackend b, KvCache cache, int n, long seed) {
        int hd = cache.headDim(), H = cache.kvHeads(), L = cache.layers();
        float[][][][] kv = new float[2][L][H][n * hd];
        SplittableRandom r = new SplittableRandom(seed);
        for (int l = 0; l < L; l++)
            for (int g = 0; g < H; g++)
                for (int i = 0; i < n * hd; i++) {
                    kv[0][l][g][i] = (float) (r.nextGaussian() * (1 + (i % hd) % 5) + (i % hd == 3 ? 4 : 0)); // channel-dependent keys
                    kv[1][l][g][i] = (float) r.nextGaussian();
                }
        int chunk = 64;
        Tensor kt = b.allocate(chunk, H * hd), vt = b.allocate(chunk, H * hd);
        for (int done = 0; done < n; done += chunk) {
            int m = Math.min(chunk, n - done);
            int[] pos = new int[m];
            for (int i = 0; i < m; i++) pos[i] = done + i;
            for (int l = 0; l < L; l++) {
                float[] kf = new float[m * H * hd], vf = new float[m * H * hd];
                int[][] slots = new int[H][];
                for (int g = 0; g < H; g++) {
                    slots[g] = cache.allocate(l, g, pos, m);
                    for (int i = 0; i < m; i++) {
                        System.arraycopy(kv[0][l][g], (done + i) * hd, kf, i * H * hd + g * hd, hd);
                        System.arraycopy(kv[1][l][g], (done + i) * hd, vf, i * H * hd + g * hd, hd);
                    }
                }
                b.upload(kt, kf);
                b.upload(vt, vf);
                b.storeKv(cache, l, kt, vt, slots, m);
            }
        }
        return kv;
    }

    static float bound(float min, float max, int bits) {
        // scale = (max − zero)/(2^b − 1) rounded up to f16, zero = min rounded down to f16
        float slack = Math.abs(min) / 1024f + 1e-6f;
        return (float) ((max - min + slack) / Quant.levels(bits) * (1 + 2.0 / 1024) / 2 + 1e-6);
    }

    @ParameterizedTest
    @ValueSource(ints = {8, 4, 2})
    void kiviRoundTripAndExactBytes(int bits) {
        int L = 2, H = 2, hd = 16, cap = 200, n = 170, G = 8, R = 16;
        try (CpuBackend b = new CpuBackend(2);
             KvCache cache = b.newKvCache(L, H, hd, cap, KvQuantSpec.parse("int" + bits + ":group=" + G + ",residual=" + R))) {
            float[][][][] kv = fill(b, cache, n, 11);
            QuantKvCache qc = (QuantKvCache) cache;
            int flushed = (n - R) / G * G; // a group leaves the window whenever it holds R + G tokens
            float[] key = new float[hd], val = new float[hd];
            for (int l = 0; l < L; l++)
                for (int g = 0; g < H; g++) {
                    assertEquals(flushed, qc.quantizedTokens(l, g));
                    assertEquals(n - flushed, qc.residentTokens(l, g));
                    float[] K = kv[0][l][g], V = kv[1][l][g];
                    for (int t = 0; t < n; t++) {
                        b.readKv(cache, l, g, t, key, val);
                        if (t >= flushed) { // residual window: exact
                            for (int c = 0; c < hd; c++) {
                                assertEquals(K[t * hd + c], key[c]);
                                assertEquals(V[t * hd + c], val[c]);
                            }
                            continue;
                        }
                        int g0 = t / G * G;
                        for (int c = 0; c < hd; c++) { // keys: per channel over the token group
                            float mn = Float.POSITIVE_INFINITY, mx = Float.NEGATIVE_INFINITY;
                            for (int u = g0; u < g0 + G; u++) { mn = Math.min(mn, K[u * hd + c]); mx = Math.max(mx, K[u * hd + c]); }
                            assertTrue(Math.abs(K[t * hd + c] - key[c]) <= bound(mn, mx, bits), "key t=" + t + " c=" + c);
                        }
                        for (int c0 = 0; c0 < hd; c0 += G) { // values: per token over channel groups
                            float mn = Float.POSITIVE_INFINITY, mx = Float.NEGATIVE_INFINITY;
                            for (int c = c0; c < c0 + G; c++) { mn = Math.min(mn, V[t * hd + c]); mx = Math.max(mx, V[t * hd + c]); }
                            for (int c = c0; c < c0 + G; c++)
                                assertTrue(Math.abs(V[t * hd + c] - val[c]) <= bound(mn, mx, bits), "value t=" + t + " c=" + c);
                        }
                    }
                }
            // bytes: positions + locations (int32), f32 window (R + G entries + slot index), and per block:
            // keys hd f16 (zero, scale) + hd rows of G b-bit codes; values per token: bits byte, hd/G f16 pairs, hd codes
            long lh = (long) L * H, blocks = flushed / G;
            long perBlock = 4L * hd + (long) hd * ((G * bits + 7) / 8) + G * (1 + 4L * (hd / G) + (hd * bits + 7) / 8);
            long expected = lh * cap * 8 + lh * (R + G) * (hd * 8L + 4) + lh * blocks * perBlock;
            assertEquals(expected, cache.bytes());
        }
    }

    @Test
    void fusedAttentionEqualsAttentionOverReconstructedCache() {
        for (String spec : new String[]{"int4:group=8,residual=8", "int2:group=16,residual=0", "zipcache:group=8,residual=8",
                "mikv:group=8,residual=8,budget=20", "gear:group=16,residual=0,rank=2,s=0.1"}) {
            int L = 1, H = 2, hd = 16, n = 90, heads = 4;
            try (CpuBackend b = new CpuBackend(2);
                 KvCache cache = b.newKvCache(L, H, hd, 128, KvQuantSpec.parse(spec))) {
                fill(b, cache, n, 3);
                SplittableRandom r = new SplittableRandom(5);
                float[] q = new float[heads * hd];
                for (int i = 0; i < q.length; i++) q[i] = (float) r.nextGaussian();
                Tensor qt = b.allocate(1, heads * hd), out = b.allocate(1, heads * hd);
                b.upload(qt, q);
                int qpos = 80; // tokens after it are masked
                b.attention(out, qt, cache, 0, new int[]{qpos}, 1, null, null);
                float[] got = b.download(out, 0, 1);
                float[] key = new float[hd], val = new float[hd];
                for (int h = 0; h < heads; h++) {
                    int g = h / 2;
                    double[] s = new double[n];
                    double max = Double.NEGATIVE_INFINITY, sum = 0;
                    for (int t = 0; t <= qpos; t++) {
                        b.readKv(cache, 0, g, t, key, val);
                        double d = 0;
                        for (int c = 0; c < hd; c++) d += q[h * hd + c] * key[c];
                        s[t] = d / Math.sqrt(hd);
                        max = Math.max(max, s[t]);
                    }
                    double[] o = new double[hd];
                    for (int t = 0; t <= qpos; t++) {
                        double e = Math.exp(s[t] - max);
                        sum += e;
                        b.readKv(cache, 0, g, t, key, val);
                        for (int c = 0; c < hd; c++) o[c] += e * val[c];
                    }
                    for (int c = 0; c < hd; c++)
                        assertEquals(o[c] / sum, got[h * hd + c], 2e-4, spec + " head " + h + " ch " + c);
                }
            }
        }
    }

    // ---- model level --------------------------------------------------------------------------------------

    /** Logits of a prefill + greedy decode: [steps + 1][V]. */
    static float[][] run(KvQuantSpec quant, String policy, int cap, int prompt, int steps) {
        model.setPolicy(policy == null ? null : KvPolicies.parse(policy, config));
        try (KvCache cache = model.newCache(cap, quant)) {
            int[] toks = tokens(prompt, 42);
            model.prefill(cache, toks, 0, false, null);
            float[][] out = new float[steps + 1][];
            out[0] = model.logits();
            int pos = prompt;
            for (int s = 1; s <= steps; s++) {
                model.decodeStep(cache, (s * 37) % 250, pos++); // fixed tokens: every cache sees the same inputs
                out[s] = model.logits();
            }
            return out;
        } finally {
            model.setPolicy(null);
        }
    }

    static double maxDiff(float[][] a, float[][] b) {
        double m = 0;
        for (int i = 0; i < a.length; i++)
            for (int j = 0; j < a[i].length; j++) {
                assertTrue(Float.isFinite(b[i][j]));
                m = Math.max(m, Math.abs(a[i][j] - b[i][j]));
            }
        return m;
    }

    @Test
    void residualWindowCoveringTheContextReproducesF32Exactly() {
        float[][] ref = run(KvQuantSpec.NONE, null, 96, 40, 20);
        for (String s : new String[]{"int2:residual=96", "int4:group=8,residual=128", "zipcache:residual=96",
                "mikv:residual=96", "gear:residual=96,group=16"})
            assertEquals(0.0, maxDiff(ref, run(KvQuantSpec.parse(s), null, 96, 40, 20)), s);
    }

    @Test
    void logitErrorGrowsAsBitsShrink() {
        float[][] ref = run(KvQuantSpec.NONE, null, 128, 60, 30);
        double e8 = maxDiff(ref, run(KvQuantSpec.parse("int8:group=8,residual=8"), null, 128, 60, 30));
        double e4 = maxDiff(ref, run(KvQuantSpec.parse("int4:group=8,residual=8"), null, 128, 60, 30));
        double e2 = maxDiff(ref, run(KvQuantSpec.parse("int2:group=8,residual=8"), null, 128, 60, 30));
        double scaleRef = maxDiff(new float[ref.length][ref[0].length], ref);
        System.out.printf(Locale.ROOT, "logit max |diff| vs f32 (max |logit| %.3f): int8 %.2e, int4 %.2e, int2 %.2e%n", scaleRef, e8, e4, e2);
        assertTrue(e8 < 1e-2 * scaleRef, "int8 " + e8);
        assertTrue(e8 < e4 && e4 < e2, e8 + " " + e4 + " " + e2);
        for (String s : new String[]{"zipcache:group=8,residual=8", "mikv:group=8,residual=8", "gear:group=8,residual=8,bits=2"}) {
            double e = maxDiff(ref, run(KvQuantSpec.parse(s), null, 128, 60, 30));
            System.out.printf(Locale.ROOT, "%s: %.2e%n", s, e);
            assertTrue(e < e2 * 1.5, s + " " + e);
        }
    }

    @Test
    void int4IsAtLeast3p5TimesSmallerThanBf16() {
        int hd = 128, cap = 131072;
        try (CpuBackend b = new CpuBackend(2);
             KvCache q4 = b.newKvCache(1, 1, hd, cap, KvQuantSpec.parse("int4:group=128,residual=128"));
             KvCache f32 = b.newKvCache(1, 1, hd, cap)) {
            fill(b, q4, cap, 1);
            long bf16 = 2L * cap * hd * 2 + cap * 4L; // the f32 cache's layout at 2 bytes per element
            double vsBf16 = (double) bf16 / q4.bytes(), vsF32 = (double) f32.bytes() / q4.bytes();
            System.out.printf(Locale.ROOT, "int4 g128 hd128 cap %d: %d bytes; %.2fx smaller than bf16, %.2fx than f32%n",
                    cap, q4.bytes(), vsBf16, vsF32);
            assertTrue(vsBf16 >= 3.5, "ratio " + vsBf16);
            assertTrue(vsF32 >= 6.5, "ratio " + vsF32);
        }
    }

    @Test
    void composesWithWindowEvictionWithoutGrowth() {
        int cap = 48 + 16;
        for (String q : new String[]{"int4:group=8,residual=8", "zipcache:group=8,residual=8", "mikv:group=8,residual=8,budget=12",
                "gear:group=8,residual=8"}) {
            model.setPolicy(KvPolicies.parse("window:sink=4,budget=48", config));
            try (KvCache cache = model.newCache(cap, KvQuantSpec.parse(q))) {
                model.prefill(cache, tokens(40, 9), 0, false, null);
                long peak = 0;
                int pos = 40;
                for (int s = 0; s < 300; s++) {
                    model.decodeStep(cache, model.argmax(), pos++);
                    for (float v : model.logits()) assertTrue(Float.isFinite(v));
                    if (s == 100) peak = cache.bytes();
                    if (s > 100) assertTrue(cache.bytes() <= peak + 2L * 2 * 2 * 4 * 16 * 8 * 8, q + ": grew to " + cache.bytes());
                    for (int l = 0; l < config.numLayers(); l++)
                        for (int g = 0; g < config.numKvHeads(); g++) {
                            assertTrue(cache.occupied(l, g) <= 48 + 1);
                            QuantKvCache qc = (QuantKvCache) cache;
                            assertEquals(cache.occupied(l, g), qc.residentTokens(l, g) + qc.quantizedTokens(l, g));
                            assertTrue(qc.blockCount(l, g) <= (48 + 1) / 8 + 3, q + " blocks " + qc.blockCount(l, g));
                        }
                }
            } finally {
                model.setPolicy(null);
            }
        }
    }

    @Test
    void composesWithH2oAndSelection() {
        for (String p : new String[]{"h2o:budget=32,recent=8", "tidal:k=16", "quest:budget=16", "window:sink=4,budget=32+tidal:k=8"}) {
            float[][] out = run(KvQuantSpec.parse("int4:group=8,residual=8"), p, 32 + 16 + 80, 40, 60);
            for (float[] row : out) for (float v : row) assertTrue(Float.isFinite(v), p);
        }
    }

    @Test
    void zipcacheAndMikvAssignBitsBySaliency() {
        // ZipCache: ratio of each flushed group at lo bits
        model.setPolicy(null);
        try (KvCache cache = model.newCache(128, KvQuantSpec.parse("zipcache:group=8,residual=8,ratio=0.25"))) {
            model.prefill(cache, tokens(72, 1), 0, false, null);
            QuantKvCache qc = (QuantKvCache) cache;
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) {
                    int lo = 0, hi = 0;
                    for (int s = 0; s < cache.highWater(l, g); s++) {
                        int bits = qc.bitsOf(l, g, s);
                        if (bits == 2) lo++;
                        else if (bits == 4) hi++;
                    }
                    assertEquals(qc.quantizedTokens(l, g), lo + hi);
                    assertEquals(qc.quantizedTokens(l, g) / 4, lo); // 2 of every 8
                }
        }
        // MiKV: at most budget tokens at high precision, window included; the rest kept (not evicted) at lo bits
        try (KvCache cache = model.newCache(128, KvQuantSpec.parse("mikv:group=8,residual=8,budget=24"))) {
            model.prefill(cache, tokens(100, 2), 0, false, null);
            QuantKvCache qc = (QuantKvCache) cache;
            for (int l = 0; l < config.numLayers(); l++)
                for (int g = 0; g < config.numKvHeads(); g++) {
                    int high = 0, low = 0;
                    for (int s = 0; s < cache.highWater(l, g); s++) {
                        int bits = qc.bitsOf(l, g, s);
                        if (bits == 32 || bits == 8) high++;
                        else if (bits == 2) low++;
                    }
                    assertEquals(100, high + low);
                    assertTrue(high <= 24, "high " + high);
                    assertTrue(high >= qc.residentTokens(l, g));
                }
        }
    }

    @Test
    void gearCorrectionBeatsPlainQuantizationAtTheSameBits() {
        int hd = 16, n = 64;
        double errPlain = 0, errGear = 0;
        for (String spec : new String[]{"int2:group=32,residual=0", "gear:bits=2,group=32,residual=0,rank=4,s=0.1"}) {
            try (CpuBackend b = new CpuBackend(1); KvCache cache = b.newKvCache(1, 1, hd, n, KvQuantSpec.parse(spec))) {
                float[][][][] kv = fill(b, cache, n, 21);
                float[] key = new float[hd], val = new float[hd];
                double e = 0;
                for (int t = 0; t < n; t++) {
                    b.readKv(cache, 0, 0, t, key, val);
                    for (int c = 0; c < hd; c++) {
                        e += Math.pow(kv[0][0][0][t * hd + c] - key[c], 2);
                        e += Math.pow(kv[1][0][0][t * hd + c] - val[c], 2);
                    }
                }
                if (spec.startsWith("int2")) errPlain = e;
                else errGear = e;
            }
        }
        System.out.printf(Locale.ROOT, "squared reconstruction error, 2-bit: KIVI %.3f, GEAR %.3f%n", errPlain, errGear);
        assertTrue(errGear < 0.7 * errPlain, errGear + " vs " + errPlain);
    }

    @Test
    void evictionInsideBlocksCompactsThemAndKeepsTheSurvivors() {
        int hd = 16, G = 8, n = 96, cap = 128;
        try (CpuBackend b = new CpuBackend(1);
             KvCache cache = b.newKvCache(1, 1, hd, cap, KvQuantSpec.parse("int8:group=8,residual=8"))) {
            float[][][][] kv = fill(b, cache, n, 4);
            QuantKvCache qc = (QuantKvCache) cache;
            for (int s = 0; s < 80; s += 2) cache.free(0, 0, s); // every other quantized token: 10 half-dead blocks
            assertEquals(11, qc.blockCount(0, 0)); // slots 0..87 are quantized
            // appending G more tokens flushes a group, and the 5 blocks' worth of dead lanes trigger compaction
            float[] key = new float[hd], val = new float[hd];
            for (int t = 0; t < G; t++) {
                int slot = cache.allocate(0, 0, new int[]{n + t}, 1)[0];
                b.writeKv(cache, 0, 0, slot, kv[0][0][0], kv[1][0][0]);
            }
            assertEquals(96 - 40 + G, cache.occupied(0, 0));
            assertEquals(cache.occupied(0, 0), qc.residentTokens(0, 0) + qc.quantizedTokens(0, 0));
            assertTrue(qc.blockCount(0, 0) <= (qc.quantizedTokens(0, 0) + G - 1) / G + 1, "blocks " + qc.blockCount(0, 0));
            for (int s = 1; s < 80; s += 2) { // survivors: decoded and re-encoded once, int8 stays close
                b.readKv(cache, 0, 0, s, key, val);
                for (int c = 0; c < hd; c++) {
                    assertEquals(kv[0][0][0][s * hd + c], key[c], 0.1, "key " + s);
                    assertEquals(kv[1][0][0][s * hd + c], val[c], 0.05, "value " + s);
                }
            }
        }
    }

    // ---- MiniCache (cross-layer merging; storage and ops: MiniKvCacheTest) --------------------------------

    @Test
    void minicacheWithAWindowCoveringTheContextReproducesTheF32CacheExactly() {
        float[][] ref = run(KvQuantSpec.NONE, null, 96, 40, 20);
        assertEquals(0.0, maxDiff(ref, run(KvQuantSpec.parse("minicache:start=0,residual=96"), null, 96, 40, 20)));
        // a model whose layers are not paired at all (start past the last pair) is the f32 cache too
        assertEquals(0.0, maxDiff(ref, run(KvQuantSpec.parse("minicache:start=2,group=4,residual=0"), null, 96, 40, 20)));
        // with merging the logits move, less when more pairs are retained
        double all = maxDiff(ref, run(KvQuantSpec.parse("minicache:start=0,group=8,residual=8,retain=0"), null, 96, 40, 20));
        double half = maxDiff(ref, run(KvQuantSpec.parse("minicache:start=0,group=8,residual=8,retain=0.5"), null, 96, 40, 20));
        System.out.printf(Locale.ROOT, "minicache logit max |diff| vs f32: retain 0 %.3e, retain 0.5 %.3e%n", all, half);
        assertTrue(all > 0 && half > 0);
        assertTrue(half < all, half + " vs " + all);
    }

    @Test
    void minicacheComposesWithEvictionAndSelectionWithoutGrowth() {
        int cap = 48 + 16;
        model.setPolicy(KvPolicies.parse("window:sink=4,budget=48", config));
        try (KvCache cache = model.newCache(cap, KvQuantSpec.parse("minicache:start=0,group=8,residual=8"))) {
            model.prefill(cache, new int[]{5, 9, 13, 200, 17, 3, 8, 9, 10, 11, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49}, 0, false, null);
            long peak = 0;
            int pos = 20;
            for (int s = 0; s < 300; s++) {
                model.decodeStep(cache, model.argmax(), pos++);
                for (float v : model.logits()) assertTrue(Float.isFinite(v));
                if (s == 100) peak = cache.bytes();
                if (s > 100) assertEquals(peak, cache.bytes(), "freed pool rows are reused");
                for (int l = 0; l < 2; l++)
                    for (int g = 0; g < config.numKvHeads(); g++) assertTrue(cache.occupied(l, g) <= 48 + 1);
            }
            assertTrue(((dev.tokenpress.backend.cpu.MiniKvCache) cache).mergedRows() > 0);
        } finally {
            model.setPolicy(null);
        }
        List<String> bad = new ArrayList<>();
        for (String p : new String[]{"h2o:budget=32,recent=8", "tidal:k=16", "quest:budget=16", "snapkv:budget=24,window=8", "razor",
                "window:sink=4,budget=32+tidal:k=8"}) {
            float[][] out = run(KvQuantSpec.parse("minicache:start=0,group=8,residual=8"), p, 32 + 16 + 80, 40, 60);
            for (float[] row : out) for (float v : row) if (!Float.isFinite(v)) bad.add(p);
        }
        assertEquals(List.of(), bad);
    }
}
