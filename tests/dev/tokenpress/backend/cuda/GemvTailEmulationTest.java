package dev.tokenpress.backend.cuda;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The decode GEMV epilogues of {@code cuda/gemv_tail.cuh} (RoPE + KV store, and the RMSNorm, run by a grid's last
 * block) emulated on the host, so their indexing, load batching and arithmetic are checked without a GPU: the
 * header's {@code RopeStoreTail} / {@code NormTail} structs and {@code gemv_rope_store_tail} / {@code gemv_norm_tail}
 * are pasted into {@code tests/resources/cuda/gemv_tail_emulation.cpp}, compiled with g++ and run with one host thread
 * per CUDA thread; RoPE + store must match {@code rope_store_kv_kernel}'s arithmetic bit for bit, the norm a double
 * reference within 1e-5. Skipped where g++ is missing. (On a GPU, {@code CudaFusedDecodeParityTest} runs the kernels
 * themselves.)
 */
class GemvTailEmulationTest {
    @TempDir
    Path tmp;

    @Test
    void epiloguesMatchTheirReferenceOnTheHost() throws Exception {
        Assumptions.assumeTrue(gppAvailable(), "g++ not found");
        String header = Files.readString(Path.of("cuda/gemv_tail.cuh"));
        String code = block(header, "struct NormTail {", "};") + "\n\n" + block(header, "struct RopeStoreTail {", "};")
                + "\n\n" + function(header, "gemv_rope_store_tail") + "\n" + function(header, "gemv_norm_tail");
        String harness = Files.readString(Path.of("tests/resources/cuda/gemv_tail_emulation.cpp"));
        assertTrue(harness.contains("/*EPILOGUES*/"), "the harness's EPILOGUES marker");
        Path src = tmp.resolve("emulation.cpp"), bin = tmp.resolve("emulation");
        Files.writeString(src, harness.replace("/*EPILOGUES*/", code));
        run(List.of("g++", "-O1", "-std=c++20", "-pthread", "-ffp-contract=off", "-o", bin.toString(), src.toString()), "compile");
        String out = run(List.of(bin.toString()), "run");
        System.out.print(out);
        assertTrue(out.contains("ALL OK"), out);
    }

    /** The text from {@code start} to the first {@code end} after it (inclusive). */
    private static String block(String s, String start, String end) {
        int i = s.indexOf(start);
        assertTrue(i >= 0, "cuda/gemv_tail.cuh has no '" + start + "'");
        int j = s.indexOf(end, i);
        return s.substring(i, j + end.length());
    }

    /** The device function {@code name} (up to its closing brace at the start of a line), as a static host function. */
    private static String function(String s, String name) {
        String head = "__device__ __forceinline__ void " + name + "(";
        int i = s.indexOf(head);
        assertTrue(i >= 0, "cuda/gemv_tail.cuh has no " + name);
        int j = s.indexOf("\n}\n", i);
        return s.substring(i, j + 3).replace("__device__ __forceinline__ ", "static ");
    }

    private static boolean gppAvailable() {
        try {
            Process p = new ProcessBuilder("g++", "--version").redirectErrorStream(true).start();
            p.getInputStream().readAllBytes();
            return p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0;
        } catch (IOException | InterruptedException e) {
            return false;
        }
    }

    private static String run(List<String> cmd, String what) throws Exception {
        Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
        String out;
        try (InputStream in = p.getInputStream()) {
            out = new String(in.readAllBytes(), StandardCharsets.UTF_8);
        }
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), what + " timed out");
        assertEquals(0, p.exitValue(), what + " failed:\n" + out);
        return out;
    }
}
