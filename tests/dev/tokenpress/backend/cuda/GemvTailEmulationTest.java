package dev.tokenpress.backend.cuda;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

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
        Assumptions.assumeTrue(HostEmulation.gppAvailable(), "g++ not found");
        String header = Files.readString(Path.of("cuda/gemv_tail.cuh")), file = "cuda/gemv_tail.cuh";
        String head = "__device__ __forceinline__ void ";
        String code = block(header, "struct NormTail {", "};") + "\n\n" + block(header, "struct RopeStoreTail {", "};")
                + "\n\n" + HostEmulation.function(header, file, head, "gemv_rope_store_tail", "static void ") + "\n"
                + HostEmulation.function(header, file, head, "gemv_norm_tail", "static void ");
        HostEmulation.compileAndRun(tmp, "tests/resources/cuda/gemv_tail_emulation.cpp", "/*EPILOGUES*/", code);
    }

    /** The text from {@code start} to the first {@code end} after it (inclusive). */
    private static String block(String s, String start, String end) {
        int i = s.indexOf(start);
        assertTrue(i >= 0, "cuda/gemv_tail.cuh has no '" + start + "'");
        int j = s.indexOf(end, i);
        return s.substring(i, j + end.length());
    }
}
