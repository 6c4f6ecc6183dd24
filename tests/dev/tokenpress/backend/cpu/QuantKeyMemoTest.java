package dev.tokenpress.backend.cpu;

import dev.tokenpress.backend.Tensor;
import dev.tokenpress.kv.quant.KvQuantSpec;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

import java.util.SplittableRandom;

import static dev.tokenpress.testutil.TestTensors.randn;
import static org.junit.jupiter.api.Assertions.assertEquals;

/** The per-block memo of a query's key terms gives bit-identical q·k to the direct dequantizing dot. */
class QuantKeyMemoTest {
    @ParameterizedTest
    @ValueSource(strings = {"int8:group=8,residual=8", "int4:group=8,residual=8", "int2:group=16,residual=8",
            "zipcache:group=8,residual=8", "mikv:group=8,residual=8,budget=8", "gear:group=8,residual=8"})
    void memoizedKeyDotIsBitIdentical(String spec) {
        int hd = 32, n = 100;
        SplittableRandom r = new SplittableRandom(spec.hashCode());
        try (CpuBackend b = new CpuBackend(1);
             QuantKvCache c = (QuantKvCache) b.newKvCache(1, 1, hd, n, KvQuantSpec.parse(spec))) {
            int[] pos = new int[n];
            for (int i = 0; i < n; i++) pos[i] = i;
            int[][] slots = {c.allocate(0, 0, pos, n)};
            Tensor k = b.allocate(n, hd), v = b.allocate(n, hd);
            b.upload(k, randn(r, n * hd, 1));
            b.upload(v, randn(r, n * hd, 1));
            b.storeKv(c, 0, k, v, slots, n);
            float[] q = randn(r, 3 * hd, 1);
            Kernels kern = Kernels.best();
            for (int row = 0; row < 3; row++) {
                QuantBlock.KeyQuery memo = new QuantBlock.KeyQuery();
                for (int s = 0; s < n; s++)
                    assertEquals(c.keyDot(0, 0, s, q, row * hd, kern), c.keyDot(0, 0, s, q, row * hd, kern, memo),
                            spec + " slot " + s);
            }
        }
    }
}
