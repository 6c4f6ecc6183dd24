package dev.tokenpress.kv.policy;

import dev.tokenpress.backend.cpu.CpuBackend;
import dev.tokenpress.kv.KvCache;
import org.junit.jupiter.api.Test;

import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.SplittableRandom;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

/** BasePolicy.slotsByPosition: the occupied slots in position order, with slots in order or shuffled by frees. */
class SlotsByPositionTest {
    static final class Probe extends BasePolicy {
        Probe(KvCache c) {
            super("probe");
            cache = c;
        }

        @Override
        public Kind kind() { return Kind.SELECTION; }
    }

    @Test
    void occupiedSlotsInPositionOrder() {
        SplittableRandom r = new SplittableRandom(3);
        try (CpuBackend b = new CpuBackend(1)) {
            for (int t = 0; t < 200; t++) {
                try (KvCache c = b.newKvCache(1, 1, 8, 64)) {
                    Probe p = new Probe(c);
                    int next = 0;
                    int ops = r.nextInt(1, 150);
                    for (int op = 0; op < ops; op++) {
                        boolean free = t % 3 != 0 && r.nextInt(4) == 0 && c.occupied(0, 0) > 0;
                        if (free) {
                            int hw = c.highWater(0, 0), s;
                            do s = r.nextInt(hw); while (c.position(0, 0, s) < 0);
                            c.free(0, 0, s);
                        } else if (c.occupied(0, 0) < c.capacity()) {
                            c.allocate(0, 0, new int[] {next++}, 1);
                        }
                    }
                    List<Integer> slots = new ArrayList<>();
                    for (int s = 0; s < c.highWater(0, 0); s++) if (c.position(0, 0, s) >= 0) slots.add(s);
                    slots.sort(Comparator.comparingInt(s -> c.position(0, 0, s)));
                    assertArrayEquals(slots.stream().mapToInt(Integer::intValue).toArray(), p.slotsByPosition(0, 0), "trial " + t);
                }
            }
        }
    }
}
