package dev.tokenpress.kv;

import dev.tokenpress.backend.cpu.CpuBackend;
import org.junit.jupiter.api.Test;

import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.*;

/**
 * {@link KvCache#inPositionOrder}, the flag the device vote of TokenSelect relies on, against a direct check of the
 * positions after every change of a random sequence of appends, truncations, frees, clears and copies.
 */
class KvCacheOrderTest {
    static boolean direct(KvCache c, int layer, int head) {
        int hw = c.highWater(layer, head), last = Integer.MIN_VALUE;
        for (int s = 0; s < hw; s++) {
            int p = c.position(layer, head, s);
            if (p < 0 || p <= last) return false;
            last = p;
        }
        return true;
    }

    @Test
    void flagFollowsEveryChange() {
        try (CpuBackend cpu = new CpuBackend(1); KvCache c = cpu.newKvCache(2, 2, 8, 64); KvCache copy = cpu.newKvCache(2, 2, 8, 64)) {
            SplittableRandom r = new SplittableRandom(5);
            int next = 0, falseSeen = 0, trueAfterTruncation = 0;
            for (int step = 0; step < 4000; step++) {
                int layer = r.nextInt(2), head = r.nextInt(2), op = r.nextInt(10);
                int hw = c.highWater(layer, head);
                if (op < 5 && c.occupied(layer, head) < 64) {  // append the next position (sometimes an earlier one)
                    int p = r.nextInt(8) == 0 ? Math.max(0, next - 3) : next++;
                    c.allocate(layer, head, new int[] {p}, 1);
                } else if (op < 7 && hw > 0) {               // truncate: the top slot
                    c.free(layer, head, hw - 1);
                    if (c.inPositionOrder(layer, head)) trueAfterTruncation++;
                } else if (op < 8 && hw > 1) {               // a slot below the top
                    c.free(layer, head, r.nextInt(hw - 1));
                } else if (op == 8 && r.nextInt(20) == 0) {
                    c.clear();
                    next = 0;
                } else if (op == 9 && r.nextInt(20) == 0) {
                    cpu.copyKvCache(c, copy);
                    for (int l = 0; l < 2; l++)
                        for (int h = 0; h < 2; h++) assertEquals(c.inPositionOrder(l, h), copy.inPositionOrder(l, h), "copy");
                }
                for (int l = 0; l < 2; l++)
                    for (int h = 0; h < 2; h++) {
                        boolean flag = c.inPositionOrder(l, h);
                        // the flag may only be conservative: true must mean in order (false is allowed for an order
                        // that was restored, e.g. a refilled hole that happens to fit)
                        if (flag) assertTrue(direct(c, l, h), "step " + step + ": flagged in order but not");
                        if (!flag) falseSeen++;
                    }
            }
            assertTrue(falseSeen > 0 && trueAfterTruncation > 0, "the sequence exercised both states");
        }
    }
}
