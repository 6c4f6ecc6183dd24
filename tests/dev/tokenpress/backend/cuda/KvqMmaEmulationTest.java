package dev.tokenpress.backend.cuda;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Path;

/**
 * The tensor-core quantized decode attention ({@code cuda/kvq_mma.cuh}, {@code tp_kvq_attention} variant 4) emulated
 * on the host: the harness {@code tests/resources/cuda/kvq_mma_emulation.cpp} includes the kernel header itself and
 * runs it block after block with one host thread per CUDA thread, the MMA fragments, cp.async groups and shared
 * memory of {@code mma_emulation.h} (copies landing both at issue and at the wait, poisoned until then; misaligned or
 * out-of-range shared accesses and copies counted as faults). Fourteen random packed caches — head dims 64 and 128,
 * int2 / int4 / int8, groups of 16 to 128 tokens, GQA 1 to 12 (two head chunks), in-order and permuted blocks, freed
 * slots with stale locations, future positions, lanes moved inside a block, selected-slot lists, residual-window
 * rows, NaN parameters on unused lanes, one split and several plus the merge — must match attention over the
 * dequantized cache in double precision. Skipped where g++ is missing. (On a GPU, {@code CudaKvQuantParityTest} runs
 * the kernel itself against the CPU cache.)
 */
class KvqMmaEmulationTest {
    @TempDir
    Path tmp;

    @Test
    void tensorCoreQuantizedAttentionMatchesTheDequantizedCache() throws Exception {
        Assumptions.assumeTrue(HostEmulation.gppAvailable(), "g++ not found");
        String header = Path.of("cuda/kvq_mma.cuh").toAbsolutePath().toString();
        HostEmulation.compileAndRun(tmp, "tests/resources/cuda/kvq_mma_emulation.cpp", "/*KVQ_MMA*/",
                "#include \"" + header + "\"");
    }
}
