package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.quant.KvQuantSpec;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.util.SplittableRandom;

import static dev.tokenpress.testutil.TestTensors.randn;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Quest's page scores (elementwise key max/min of each page's visible slots, then Σ_i max(q_i·max_i, q_i·min_i)
 * per q-head) from the Vector API and the scalar kernels, bit for bit against a plain loop: freed slots, slots
 * above the query position, empty pages, -0/+0 ties, NaN and infinite keys, zero query elements, quantized caches.
 */
class QuestPageScoresTest {
    static final CpuBackend VECTOR = new CpuBackend(2);
    static final CpuBackend SCALAR = CpuOpsTest.scalarBackend();

    @AfterAll
    static void close() {
        VECTOR.close();
        SCALAR.close();
    }

    private static final float SENTINEL = 12345.5f;
    private static final float[] SPECIAL = {0f, -0f, 1f, -1f, 0.5f, -0.5f};
    private static final float[] NANS = {Float.NaN, Float.intBitsToFloat(0x7fc00123), Float.intBitsToFloat(0xffc00000),
            Float.intBitsToFloat(0x7f800001)};

    /** How a reference reads a slot's key (dst[0, hd)). */
    private interface Keys {
        void read(int head, int slot, float[] dst);
    }

    /** The page scores as a plain loop: every key copied out, bounds and sums in order. */
    private static void reference(float[][] out, float[] q, int qCols, int row, int queryPosition, KvCache c, int layer,
                                  int pageSize, Keys keys) {
        int hd = c.headDim(), heads = qCols / hd, group = heads / c.kvHeads();
        float[] max = new float[hd], min = new float[hd], key = new float[hd];
        for (int g = 0; g < c.kvHeads(); g++) {
            int hw = c.highWater(layer, g), pages = (hw + pageSize - 1) / pageSize;
            int[] pos = c.positions(layer, g);
            for (int p = 0; p < pages; p++) {
                boolean any = false;
                java.util.Arrays.fill(max, Float.NEGATIVE_INFINITY);
                java.util.Arrays.fill(min, Float.POSITIVE_INFINITY);
                for (int s = p * pageSize, end = Math.min(hw, (p + 1) * pageSize); s < end; s++) {
                    if (pos[s] < 0 || pos[s] > queryPosition) continue;
                    any = true;
                    keys.read(g, s, key);
                    for (int i = 0; i < hd; i++) {
                        if (key[i] > max[i]) max[i] = key[i];
                        if (key[i] < min[i]) min[i] = key[i];
                    }
                }
                for (int h = g * group; h < (g + 1) * group; h++) {
                    if (!any) {
                        out[h][p] = Float.NEGATIVE_INFINITY;
                        continue;
                    }
                    int qOff = row * qCols + h * hd;
                    float sum = 0f;
                    for (int i = 0; i < hd; i++) {
                        float qi = q[qOff + i];
                        sum += Math.max(qi * max[i], qi * min[i]);
                    }
                    out[h][p] = sum;
                }
            }
        }
    }

    private static float key(SplittableRandom r, boolean nan) {
        double u = r.nextDouble();
        if (u < 0.25) return SPECIAL[r.nextInt(SPECIAL.length)];
        if (nan && u < 0.31) return NANS[r.nextInt(NANS.length)];
        if (nan && u < 0.32) return r.nextBoolean() ? Float.POSITIVE_INFINITY : Float.NEGATIVE_INFINITY;
        return (float) r.nextGaussian();
    }

    /** Query rows with exact zeros of both signs and repeated values. */
    private static float[] query(SplittableRandom r, int n) {
        float[] q = randn(r, n, 1);
        for (int i = 0; i < n; i++) {
            double u = r.nextDouble();
            if (u < 0.05) q[i] = 0f;
            else if (u < 0.10) q[i] = -0f;
            else if (u < 0.15) q[i] = SPECIAL[r.nextInt(SPECIAL.length)];
        }
        return q;
    }

    /** Positions for n slots: most at or below qpos, some above it; then some slots freed (position -1). */
    private static void fill(KvCache c, int layer, int n, int qpos, SplittableRandom r) {
        for (int g = 0; g < c.kvHeads(); g++) {
            int[] pos = new int[n];
            for (int i = 0; i < n; i++) pos[i] = r.nextDouble() < 0.15 ? qpos + 1 + r.nextInt(50) : r.nextInt(qpos + 1);
            int[] slots = c.allocate(layer, g, pos, n);
            for (int i = 0; i < n; i++) assertEquals(i, slots[i]);
        }
    }

    private static void free(KvCache c, int layer, int n, SplittableRandom r) {
        for (int g = 0; g < c.kvHeads(); g++) {
            for (int s = 0; s < n - 1; s++) if (r.nextDouble() < 0.2) c.free(layer, g, s);
            // a whole run of freed slots: at least one empty page for every page size tested
            for (int s = n / 2; s < n / 2 + 40 && s < n - 1; s++) c.free(layer, g, s);
        }
    }

    private static void check(float[][] want, float[][] got, String what) {
        for (int h = 0; h < want.length; h++)
            for (int p = 0; p < want[h].length; p++) {
                float w = want[h][p], g = got[h][p];
                String at = " at head " + h + " page " + p;
                assertEquals(Float.floatToRawIntBits(w), Float.floatToRawIntBits(g), () -> what + ": want " + w + " got " + g + at);
            }
    }

    private static float[][] sentinel(int heads, int cols) {
        float[][] out = new float[heads][cols];
        for (float[] o : out) java.util.Arrays.fill(o, SENTINEL);
        return out;
    }

    @ParameterizedTest
    @ValueSource(ints = {16, 40, 64, 128})
    void f32CacheIsBitIdenticalToThePlainLoop(int hd) {
        int layers = 2, layer = 1, kvHeads = 2, n = 150, qpos = 120, rows = 2, row = 1;
        for (int group : new int[]{1, 3, 4}) {
            int heads = kvHeads * group;
            SplittableRandom r = new SplittableRandom(31L * hd + group);
            for (CpuBackend b : new CpuBackend[]{VECTOR, SCALAR})
                try (KvCache cache = b.newKvCache(layers, kvHeads, hd, n)) {
                    CpuKvCache c = (CpuKvCache) cache;
                    fill(c, layer, n, qpos, r);
                    for (int g = 0; g < kvHeads; g++) {
                        float[] k = c.keys[layer][g];
                        for (int i = 0; i < n * hd; i++) k[i] = key(r, true);
                        // dimensions whose visible keys are all NaN, or all zeros of mixed signs
                        for (int s = 0; s < n; s++) {
                            k[s * hd + 3] = NANS[s % NANS.length];
                            k[s * hd + hd - 1] = s % 3 == 0 ? -0f : 0f;
                        }
                    }
                    free(c, layer, n, r);
                    float[] qv = query(r, rows * heads * hd);
                    Tensor q = b.allocate(rows, heads * hd);
                    b.upload(q, qv);
                    for (int page : new int[]{1, 7, 16}) {
                        int pages = (n + page - 1) / page + 1;
                        float[][] want = sentinel(heads, pages), got = sentinel(heads, pages);
                        reference(want, qv, heads * hd, row, qpos, c, layer, page,
                                (g, s, dst) -> System.arraycopy(c.keys[layer][g], s * hd, dst, 0, hd));
                        b.questPageScores(got, q, row, qpos, c, layer, page);
                        check(want, got, b.description() + " hd " + hd + " group " + group + " page " + page);
                        boolean empty = false;
                        for (float v : want[0]) empty |= v == Float.NEGATIVE_INFINITY;
                        assertTrue(empty, "an empty page is covered");
                    }
                }
        }
    }

    /**
     * The f32 cache keeps each page's bounds between calls until a slot of the page changes: through appends in
     * steps, a slot allocated but not yet stored, queries that hide later slots, frees, writeKv, a copy into the cache,
     * a clear and a change of page size, every call equals the plain loop over the keys as they are then, bit for bit.
     */
    @Test
    void keptPageBoundsFollowEveryChange() {
        int layers = 1, layer = 0, kvHeads = 2, group = 2, heads = kvHeads * group, hd = 16, cap = 120;
        for (CpuBackend b : new CpuBackend[]{VECTOR, SCALAR}) {
            SplittableRandom r = new SplittableRandom(77);
            try (KvCache cache = b.newKvCache(layers, kvHeads, hd, cap); KvCache other = b.newKvCache(layers, kvHeads, hd, cap)) {
                CpuKvCache c = (CpuKvCache) cache;
                Tensor k = b.allocate(8, kvHeads * hd), v = b.allocate(8, kvHeads * hd), q = b.allocate(1, heads * hd);
                int[] page = {7};
                int[] next = {0};
                Runnable append = () -> { // up to 8 tokens at the next positions, through storeKv
                    int n = 1 + r.nextInt(8);
                    int[] pos = new int[n];
                    for (int i = 0; i < n; i++) pos[i] = next[0]++;
                    int[][] slots = new int[kvHeads][];
                    for (int g = 0; g < kvHeads; g++) slots[g] = c.allocate(layer, g, pos, n);
                    float[] kd = new float[8 * kvHeads * hd];
                    for (int i = 0; i < kd.length; i++) kd[i] = key(r, false);
                    b.upload(k, kd);
                    b.upload(v, randn(r, 8 * kvHeads * hd, 1));
                    b.storeKv(c, layer, k, v, slots, n);
                };
                java.util.function.IntConsumer checkAt = qpos -> {
                    float[] qv = query(r, heads * hd);
                    b.upload(q, qv);
                    int pages = (cap + page[0] - 1) / page[0];
                    float[][] want = sentinel(heads, pages), got = sentinel(heads, pages);
                    reference(want, qv, heads * hd, 0, qpos, c, layer, page[0],
                            (g, s, dst) -> System.arraycopy(c.keys[layer][g], s * hd, dst, 0, hd));
                    b.questPageScores(got, q, 0, qpos, c, layer, page[0]);
                    check(want, got, b.description() + " page " + page[0] + " query at " + qpos + " after " + next[0] + " tokens");
                };
                for (int step = 0; step < 40; step++) {
                    if (step % 6 == 5) { // a slot allocated into a kept page and queried before its key is stored
                        int[] pos = {next[0]};
                        for (int g = 0; g < kvHeads; g++) c.allocate(layer, g, pos, 1);
                        next[0]++;
                        checkAt.accept(next[0] - 1);
                        c.freeFrom(next[0] - 1);
                        next[0]--;
                    }
                    append.run();
                    checkAt.accept(next[0] - 1);                 // a decode step: every slot visible
                    if (step % 5 == 2) checkAt.accept(next[0] - 6); // a prefill row: later slots hidden
                    if (step % 7 == 3) {                           // frees: single slots and a tail
                        c.free(layer, 0, r.nextInt(c.highWater(layer, 0)));
                        checkAt.accept(next[0] - 1);
                        c.freeFrom(next[0] - 3);
                        next[0] -= 3;
                        checkAt.accept(next[0] - 1);
                    }
                    if (step % 9 == 4) {                           // a slot overwritten in place
                        int g = r.nextInt(kvHeads), slot = r.nextInt(c.highWater(layer, g));
                        if (c.position(layer, g, slot) >= 0) {
                            float[] kk = new float[hd], vv = new float[hd];
                            for (int i = 0; i < hd; i++) kk[i] = key(r, false);
                            b.writeKv(c, layer, g, slot, kk, vv);
                        }
                        checkAt.accept(next[0] - 1);
                    }
                    if (step == 20) {                              // another cache's contents copied in
                        other.clear();
                        int[] pos = new int[30];
                        for (int i = 0; i < 30; i++) pos[i] = i;
                        int[][] slots = new int[kvHeads][];
                        for (int g = 0; g < kvHeads; g++) slots[g] = other.allocate(layer, g, pos, 30);
                        Tensor k30 = b.allocate(30, kvHeads * hd), v30 = b.allocate(30, kvHeads * hd);
                        float[] kd = new float[30 * kvHeads * hd];
                        for (int i = 0; i < kd.length; i++) kd[i] = key(r, false);
                        b.upload(k30, kd);
                        b.upload(v30, randn(r, 30 * kvHeads * hd, 1));
                        b.storeKv(other, layer, k30, v30, slots, 30);
                        b.copyKvCache(other, c);
                        next[0] = 30;
                        checkAt.accept(29);
                    }
                    if (step == 30) page[0] = 16;                   // another page size
                    if (step == 35) {                              // a clear, then the sequence starts again
                        c.clear();
                        next[0] = 0;
                        append.run();
                        checkAt.accept(next[0] - 1);
                    }
                }
            }
        }
    }

    @ParameterizedTest
    @ValueSource(strings = {"int4:group=8,residual=8", "int8:group=16,residual=8", "gear:group=8,residual=8"})
    void quantizedCacheUsesTheReconstructedKeys(String spec) {
        int layers = 1, layer = 0, kvHeads = 2, group = 4, heads = kvHeads * group, n = 100, qpos = 80;
        for (int hd : new int[]{16, 64, 128}) {
            SplittableRandom r = new SplittableRandom(spec.hashCode() + hd);
            for (CpuBackend b : new CpuBackend[]{VECTOR, SCALAR})
                try (QuantKvCache c = (QuantKvCache) b.newKvCache(layers, kvHeads, hd, n, KvQuantSpec.parse(spec))) {
                    fill(c, layer, n, qpos, r);
                    int[][] slots = new int[kvHeads][n];
                    for (int g = 0; g < kvHeads; g++) for (int i = 0; i < n; i++) slots[g][i] = i;
                    float[] kd = new float[n * kvHeads * hd];
                    for (int i = 0; i < kd.length; i++) kd[i] = key(r, false);
                    Tensor k = b.allocate(n, kvHeads * hd), v = b.allocate(n, kvHeads * hd);
                    b.upload(k, kd);
                    b.upload(v, randn(r, n * kvHeads * hd, 1));
                    b.storeKv(c, layer, k, v, slots, n);
                    free(c, layer, n, r);
                    float[] qv = query(r, heads * hd);
                    Tensor q = b.allocate(1, heads * hd);
                    b.upload(q, qv);
                    float[] scratch = new float[hd];
                    for (int page : new int[]{1, 7, 16}) {
                        int pages = (n + page - 1) / page;
                        float[][] want = sentinel(heads, pages), got = sentinel(heads, pages);
                        reference(want, qv, heads * hd, 0, qpos, c, layer, page, (g, s, dst) -> c.read(layer, g, s, dst, scratch));
                        b.questPageScores(got, q, 0, qpos, c, layer, page);
                        check(want, got, b.description() + " " + spec + " hd " + hd + " page " + page);
                    }
                }
        }
    }

    /** The bounds themselves (a -0/+0 tie or a NaN never shows in the scores' bits): the first of equal keys stays. */
    @Test
    void vectorKeyBoundsMatchTheScalarLoopBitForBit() {
        Kernels best = Kernels.best();
        Assumptions.assumeTrue(best instanceof VectorKernels, "no Vector API kernels: " + best.describe());
        VectorKernels vk = (VectorKernels) best;
        SplittableRandom r = new SplittableRandom(11);
        for (int len : new int[]{1, 7, 8, 16, 31, 40, 64, 100, 128}) {
            float[] keys = new float[40 * len + 3];
            for (int i = 0; i < keys.length; i++) keys[i] = key(r, true);
            for (int n : new int[]{0, 1, 2, 5, 16, 40}) {
                int[] offs = new int[n];
                for (int j = 0; j < n; j++) offs[j] = r.nextInt(40 * len + 4 - len);
                int bOff = r.nextInt(3);
                float[] max = new float[bOff + len], min = new float[bOff + len], wantMax, wantMin;
                for (int i = 0; i < bOff + len; i++) {
                    max[i] = r.nextBoolean() ? Float.NEGATIVE_INFINITY : key(r, false);
                    min[i] = r.nextBoolean() ? Float.POSITIVE_INFINITY : key(r, false);
                }
                wantMax = max.clone();
                wantMin = min.clone();
                for (int j = 0; j < n; j++)
                    for (int i = 0; i < len; i++) {
                        float kv = keys[offs[j] + i];
                        if (kv > wantMax[bOff + i]) wantMax[bOff + i] = kv;
                        if (kv < wantMin[bOff + i]) wantMin[bOff + i] = kv;
                    }
                vk.keyBounds(keys, offs, n, max, min, bOff, len);
                for (int i = 0; i < bOff + len; i++) {
                    String at = "len " + len + " n " + n + " i " + i;
                    assertEquals(Float.floatToRawIntBits(wantMax[i]), Float.floatToRawIntBits(max[i]), at);
                    assertEquals(Float.floatToRawIntBits(wantMin[i]), Float.floatToRawIntBits(min[i]), at);
                }
            }
        }
    }

    /** A page of one key: the score is q·k summed in order with max(q·k, q·k) = q·k. */
    @Test
    void singleSlotPagesAndAPageLargerThanTheCache() {
        int hd = 64, kvHeads = 1, heads = 2, n = 9, qpos = 100;
        SplittableRandom r = new SplittableRandom(7);
        try (KvCache cache = VECTOR.newKvCache(1, kvHeads, hd, n)) {
            CpuKvCache c = (CpuKvCache) cache;
            int[] pos = new int[n];
            for (int i = 0; i < n; i++) pos[i] = i;
            c.allocate(0, 0, pos, n);
            float[] k = c.keys[0][0];
            for (int i = 0; i < n * hd; i++) k[i] = (float) r.nextGaussian();
            float[] qv = randn(r, heads * hd, 1);
            Tensor q = VECTOR.allocate(1, heads * hd);
            VECTOR.upload(q, qv);
            float[][] got = sentinel(heads, n);
            VECTOR.questPageScores(got, q, 0, qpos, c, 0, 1);
            for (int h = 0; h < heads; h++)
                for (int s = 0; s < n; s++) {
                    float dot = 0f;
                    for (int i = 0; i < hd; i++) dot += qv[h * hd + i] * k[s * hd + i];
                    assertEquals(dot, got[h][s], "head " + h + " slot " + s);
                }
            float[][] want = sentinel(heads, 1), one = sentinel(heads, 1);
            reference(want, qv, heads * hd, 0, qpos, c, 0, 1000, (g, s, dst) -> System.arraycopy(k, s * hd, dst, 0, hd));
            VECTOR.questPageScores(one, q, 0, qpos, c, 0, 1000);
            check(want, one, "page of 1000");
        }
    }
}
