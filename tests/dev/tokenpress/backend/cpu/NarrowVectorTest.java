package dev.tokenpress.backend.cpu;

import org.junit.jupiter.api.Test;

import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.SplittableRandom;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * With 128-bit vectors (NEON on Apple silicon and most Arm servers; SSE here, via -XX:MaxVectorSize=16) the CPU
 * kernels stay vectorised — they once fell back to the scalar loops entirely, since four bytes make no vector shape —
 * and the kernels over packed codes give the scalar loops' results, also with AVX2's 256-bit vectors; the kernels
 * over bf16 KV rows give the f32 kernels' bits over the widened rows at both widths.
 */
class NarrowVectorTest {
    @Test
    void vectorKernelsLoadWith128BitVectors() throws Exception {
        probe(16);
    }

    /** AVX2's width (most x86 machines without AVX-512): the packed-code kernels run in vectors there. */
    @Test
    void packedCodeKernelsAgreeWith256BitVectors() throws Exception {
        probe(32);
    }

    private static void probe(int bytes) throws Exception {
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        Process p = new ProcessBuilder(java, "--add-modules", "jdk.incubator.vector", "-XX:MaxVectorSize=" + bytes,
                "-cp", System.getProperty("java.class.path"), Probe.class.getName())
                .redirectErrorStream(true).start();
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), "timed out");
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.exitValue(), out);
        assertTrue(out.contains("Vector API " + bytes * 8 + "-bit"), out);
        assertTrue(out.contains("packed codes agree"), out);
    }

    /** Run in a JVM limited to 128-bit vectors. */
    public static final class Probe {
        public static void main(String[] args) {
            Kernels k = Kernels.best(), s = new ScalarKernels();
            System.out.println(k.describe());
            SplittableRandom r = new SplittableRandom(5);
            int cols = 256;
            float[] w = new float[cols], x = new float[cols];
            for (int i = 0; i < cols; i++) {
                w[i] = (float) r.nextGaussian();
                x[i] = (float) r.nextGaussian();
            }
            byte[] q1 = new byte[cols], q2 = new byte[cols];
            float[] d1 = new float[cols / 32], d2 = new float[cols / 32];
            k.quantizeQ8Row(w, 0, cols, q1, 0, d1, 0);
            s.quantizeQ8Row(w, 0, cols, q2, 0, d2, 0);
            check(java.util.Arrays.equals(q1, q2) && java.util.Arrays.equals(d1, d2), "q8 codes");
            check(close(k.dotQ8(q1, 0, d1, 0, x, 0, cols / 32), s.dotQ8(q1, 0, d1, 0, x, 0, cols / 32)), "q8 dot");
            k.quantizeQ4Row(w, 0, cols, q1, 0, d1, 0);
            s.quantizeQ4Row(w, 0, cols, q2, 0, d2, 0);
            check(java.util.Arrays.equals(q1, 0, cols / 2, q2, 0, cols / 2) && java.util.Arrays.equals(d1, d2), "q4 codes");
            check(close(k.dotQ4(q1, 0, d1, 0, x, 0, cols / 32), s.dotQ4(q1, 0, d1, 0, x, 0, cols / 32)), "q4 dot");
            for (int bits : new int[] {2, 4, 8}) {
                float[] u1 = new float[cols], u2 = new float[cols];
                int n = Math.min(cols, cols / 2 * 8 / bits); // codes in the q4 row's cols / 2 bytes
                k.unpackCodes(q2, 0, n, bits, u1, 0);
                s.unpackCodes(q2, 0, n, bits, u2, 0);
                check(java.util.Arrays.equals(u1, u2), bits + "-bit unpack");
            }
            check(close(k.dot(w, 0, x, 0, cols), s.dot(w, 0, x, 0, cols)), "f32 dot");
            // bf16 rows (a -ctk / -ctv bf16 cache): the f32 kernels' bits over the widened rows
            int rows = 40, hd = 72; // a vector tail at every width
            short[] b16 = new short[rows * hd];
            float[] wide = new float[rows * hd], wide2 = new float[rows * hd], qs = new float[4 * hd];
            for (int i = 0; i < b16.length; i++) b16[i] = dev.tokenpress.io.Half.floatToBf16((float) r.nextGaussian());
            for (int i = 0; i < qs.length; i++) qs[i] = (float) r.nextGaussian();
            k.widenBf16(b16, 0, wide, 0, b16.length);
            s.widenBf16(b16, 0, wide2, 0, b16.length);
            check(java.util.Arrays.equals(wide, wide2), "bf16 widening");
            float[] f1 = new float[4], f2 = new float[4];
            for (int j = 0; j < rows; j++) {
                check(Float.floatToRawIntBits(k.dot(qs, 0, b16, j * hd, hd)) == Float.floatToRawIntBits(k.dot(qs, 0, wide, j * hd, hd)), "bf16 dot");
                k.dot4(qs, 0, hd, b16, j * hd, hd, f1);
                k.dot4(qs, 0, hd, wide, j * hd, hd, f2);
                check(java.util.Arrays.equals(f1, f2), "bf16 dot4");
            }
            float[][] e = new float[3][rows];
            for (float[] ei : e) for (int j = 0; j < rows; j++) ei[j] = j % 5 == 1 ? 0f : (float) r.nextDouble();
            float[] inv = {0.5f, 0.25f, 0.125f}, o1 = new float[3 * hd], o2 = new float[3 * hd];
            boolean[] live = {true, true, true};
            k.weightedValues(e, inv, live, 3, rows, null, b16, hd, o1, 0);
            k.weightedValues(e, inv, live, 3, rows, null, wide, hd, o2, 0);
            check(java.util.Arrays.equals(o1, o2), "bf16 value sums");
            System.out.println("packed codes agree");
        }

        /** Sums in another order: equal up to rounding. */
        private static boolean close(float a, float b) {
            return Math.abs(a - b) <= 1e-4f * (1 + Math.abs(b));
        }

        private static void check(boolean ok, String what) {
            if (!ok) {
                System.out.println("MISMATCH: " + what);
                System.exit(1);
            }
        }
    }
}
