package dev.tokenpress.kv.policy;

import org.junit.jupiter.api.Test;

import java.util.Arrays;

import static org.junit.jupiter.api.Assertions.*;

/** The score keys AdaKV sorts by keep the floats' order across signs. */
class EvictionOrderTest {
    @Test
    void orderKeysSortLikeTheirFloats() {
        float[] v = {-Float.MAX_VALUE, -20f, -1.5f, -Float.MIN_VALUE, -0f, 0f, Float.MIN_VALUE, 0.5f, 3f, 7e30f, Float.MAX_VALUE};
        long[] keys = new long[v.length];
        for (int i = 0; i < v.length; i++) keys[i] = ((long) EvictingPolicy.orderKey(v[i]) << 32) | (v.length - i);
        long[] sorted = keys.clone();
        Arrays.sort(sorted);
        assertArrayEquals(keys, sorted, "a signed sort of the keys is the order of the floats, negative and positive");
        assertTrue(EvictingPolicy.orderKey(Float.NaN) > EvictingPolicy.orderKey(Float.POSITIVE_INFINITY));
    }
}
