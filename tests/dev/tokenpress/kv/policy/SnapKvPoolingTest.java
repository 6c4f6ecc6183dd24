package dev.tokenpress.kv.policy;

import org.junit.jupiter.api.Test;

import static org.junit.jupiter.api.Assertions.*;

/** SnapKV's 1-D pooling matches torch's max_pool1d / avg_pool1d(count_include_pad=True) with padding kernel/2. */
class SnapKvPoolingTest {
    @Test
    void maxAndAveragePoolingWithPadding() {
        float[] x = {1, 5, 2, 0, 3};
        SnapKvPolicy max = new SnapKvPolicy("snapkv", Budget.count(8), 2, 3, true);
        assertArrayEquals(new float[]{5, 5, 5, 3, 3}, max.pool(x));
        SnapKvPolicy avg = new SnapKvPolicy("snapkv", Budget.count(8), 2, 3, false);
        assertArrayEquals(new float[]{2f, 8f / 3, 7f / 3, 5f / 3, 1f}, avg.pool(x), 1e-6f);
        SnapKvPolicy one = new SnapKvPolicy("snapkv", Budget.count(8), 2, 1, true);
        assertArrayEquals(x, one.pool(x));
    }

    @Test
    void topIndicesPreferLowerIndicesOnTies() {
        assertArrayEquals(new int[]{1, 3, 0}, SnapKvPolicy.topIndices(new float[]{1, 5, 0, 5, 0}, 3));
        assertArrayEquals(new int[]{1, 2}, TidalPolicy.topSlots(new float[]{Float.NEGATIVE_INFINITY, 2, 2, 1}, 2));
        assertEquals(1, TidalPolicy.topSlots(new float[]{Float.NEGATIVE_INFINITY, 2}, 5).length, "only finite scores");
    }
}
