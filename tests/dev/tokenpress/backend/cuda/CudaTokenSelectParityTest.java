package dev.tokenpress.backend.cuda;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.KvCache;
import dev.tokenpress.kv.SlotSelection;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.SplittableRandom;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.*;

/**
 * TokenSelect's vote in device memory ({@code CudaBackend.selectTokenVotes}, {@code tp_tokenselect_select}) against
 * the policy's host vote from the same backend's raw scores ({@code queryKeyScores}): each q-head's softmax over the
 * candidates in double, the votes summed in head order, the k best (ties lower slot), plus the first init and last
 * local slots. The device's exponentials may differ from the host's in the last bit, so the selection is checked
 * for what that allows: the same count and fixed slots, every selected vote >= every unselected one - tol, and the
 * same set except for candidates within tol of the host's threshold. Also a causal cut (invisible candidates) and a
 * cache with a hole (null: the host votes), and decode attention over the device selection.
 */
class CudaTokenSelectParityTest {
    static CudaBackend gpu;

    @BeforeAll
    static void open() {
        System.setProperty("tokenpress.cuda.deviceTokenSelect", "true"); // the default, whatever the environment says
        Assumptions.assumeTrue(Cuda.available(), "CUDA unavailable: " + Cuda.unavailableReason());
        gpu = CudaBackend.open();
    }

    @AfterAll
    static void close() {
        System.clearProperty("tokenpress.cuda.deviceTokenSelect");
        if (gpu != null) gpu.close();
    }

    static Stream<Arguments> cases() {
        List<Arguments> a = new ArrayList<>();
        for (int hd : new int[] {64, 128})
            for (int group : new int[] {1, 4, 8})
                for (int len : new int[] {40, 700, 5000}) a.add(Arguments.of(hd, group, 2, len));
        a.add(Arguments.of(64, 4, 8, 33001)); // the llama-1b shape, past 16K: the selection's multi-block passes
        return a.stream();
    }

    @ParameterizedTest(name = "hd={0} group={1} hkv={2} len={3}")
    @MethodSource("cases")
    void deviceVoteMatchesTheHostVote(int hd, int group, int hkv, int len) {
        int heads = hkv * group, layer = 1;
        SplittableRandom r = new SplittableRandom(len * 11L + hd + group);
        try (KvCache c = gpu.newKvCache(2, hkv, hd, len + 4)) {
            CudaQuestSelectParityTest.storeTokens(gpu, c, len, r, 0.5, null);
            float[] qd = new float[heads * hd];
            for (int i = 0; i < qd.length; i++) qd[i] = (float) r.nextGaussian();
            Tensor q = gpu.allocate(1, heads * hd), out = gpu.allocate(1, heads * hd), outRef = gpu.allocate(1, heads * hd);
            gpu.upload(q, qd);
            float[][] raw = new float[heads][len + 4];
            for (int qpos : new int[] {len - 1, len - 1 - len / 4}) { // the last token; a causal cut
                gpu.queryKeyScores(raw, q, 0, qpos, c, layer);
                for (int[] kil : new int[][] {{1, 0, 0}, {16, 4, 8}, {Math.max(1, len / 3), 2, 5}, {len - 14, 4, 8}}) {
                    int kk = kil[0], init = kil[1], local = kil[2];
                    if (init + kk + local >= len) continue;
                    String what = "hd=" + hd + " group=" + group + " len=" + len + " qpos=" + qpos + " k=" + kk + " init=" + init
                            + " local=" + local;
                    float[] vote = hostVote(raw, heads, len, init, len - local);
                    SlotSelection host = gpu.selectTokenVotes(q, 0, qpos, c, layer, kk, init, local, true);
                    SlotSelection dev = gpu.selectTokenVotes(q, 0, qpos, c, layer, kk, init, local, false);
                    assertNotNull(host, what);
                    assertNull(dev.slots(), what);
                    SlotSelection down = gpu.hostSelection(dev);
                    assertArrayEquals(host.count(), down.count(), what + ": device vs host copy");
                    for (int g = 0; g < hkv; g++) {
                        assertArrayEquals(host.slots()[g], Arrays.copyOf(down.slots()[g], down.count()[g]), what + ": deterministic");
                        checkSelection(vote, host.slots()[g], host.count()[g], kk, init, local, len, heads, what + ", KV head " + g);
                    }
                    gpu.attention(out, q, c, layer, new int[] {qpos}, 1, dev, null);
                    gpu.attention(outRef, q, c, layer, new int[] {qpos}, 1, host, null);
                    double e = CudaParityTest.nmse(gpu.download(outRef, 0, 1), gpu.download(out, 0, 1));
                    assertTrue(e < 1e-10, what + ": attention over the device selection, nmse " + e);
                }
            }
            // a hole, then the hole refilled by a later token (slots no longer in position order): the op declines (the
            // policy votes on the host); a truncation (the top slot freed) keeps the order
            int[] last = {len};
            for (int g = 0; g < hkv; g++) c.free(layer, g, len - 1);
            assertNotNull(gpu.selectTokenVotes(q, 0, len - 2, c, layer, 1, 0, 0, false), "after a truncation");
            for (int g = 0; g < hkv; g++) c.free(layer, g, len / 2);
            assertNull(gpu.selectTokenVotes(q, 0, len - 2, c, layer, 1, 0, 0, false), "a cache with a hole");
            for (int g = 0; g < hkv; g++) c.allocate(layer, g, last, 1);
            assertEquals(len - 1, c.highWater(layer, 0));
            assertNull(gpu.selectTokenVotes(q, 0, len, c, layer, 1, 0, 0, false), "a refilled hole: slots out of position order");
        }
    }

    /** The policy's host vote over the candidates [from, to) of an aligned cache (slot i = the i-th token). */
    static float[] hostVote(float[][] raw, int heads, int t, int from, int to) {
        float[] vote = new float[t];
        double[] e = new double[t];
        for (int h = 0; h < heads; h++) {
            float max = Float.NEGATIVE_INFINITY;
            for (int i = from; i < to; i++) max = Math.max(max, raw[h][i]);
            if (max == Float.NEGATIVE_INFINITY) continue;
            double sum = 0;
            for (int i = from; i < to; i++) sum += e[i] = Math.exp(raw[h][i] - max);
            for (int i = from; i < to; i++) vote[i] += (float) (e[i] / sum);
        }
        return vote;
    }

    /**
     * count = init + k + local; the first init and last local slots; k candidates, ascending; every selected vote >=
     * every unselected candidate's - tol; the set equal to the host's top-k (ties lower slot) except near-ties.
     */
    static void checkSelection(float[] vote, int[] slots, int count, int k, int init, int local, int t, int heads, String what) {
        assertEquals(init + k + local, count, what + ": count");
        for (int i = 0; i < init; i++) assertEquals(i, slots[i], what + ": first slots");
        for (int i = 0; i < local; i++) assertEquals(t - local + i, slots[init + k + i], what + ": last slots");
        boolean[] in = new boolean[t];
        for (int i = 0; i < k; i++) {
            int s = slots[init + i];
            assertTrue(s >= init && s < t - local, what + ": candidate " + s);
            if (i > 0) assertTrue(s > slots[init + i - 1], what + ": ascending");
            in[s] = true;
        }
        Integer[] idx = new Integer[t - init - local];
        for (int i = 0; i < idx.length; i++) idx[i] = init + i;
        Arrays.sort(idx, (x, y) -> vote[x] != vote[y] ? Float.compare(vote[y], vote[x]) : Integer.compare(x, y));
        // the device's exp may differ from Java's in the last bit: at most one float ulp per q-head in a vote; an exact
        // tie (e.g. 0 of invisible candidates) must go to the lower slot as on the host
        float thr = vote[idx[k - 1]];
        double tol = thr == 0f ? 0 : 2.0 * heads * Math.ulp(thr);
        float minIn = Float.POSITIVE_INFINITY, maxOut = Float.NEGATIVE_INFINITY;
        for (int i = init; i < t - local; i++) {
            if (in[i]) minIn = Math.min(minIn, vote[i]);
            else maxOut = Math.max(maxOut, vote[i]);
        }
        if (maxOut != Float.NEGATIVE_INFINITY)
            assertTrue(minIn >= maxOut - 2.0 * heads * Math.ulp(maxOut), what + ": selected " + minIn + " below unselected " + maxOut);
        boolean[] want = new boolean[t];
        for (int i = 0; i < k; i++) want[idx[i]] = true;
        for (int i = init; i < t - local; i++)
            if (in[i] != want[i]) assertTrue(Math.abs(vote[i] - thr) <= tol, what + ": slot " + i + " vote " + vote[i] + " not a near-tie of " + thr);
    }
}
