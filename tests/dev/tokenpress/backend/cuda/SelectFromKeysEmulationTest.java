package dev.tokenpress.backend.cuda;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The selection from keys that every device selection ends with ({@code tp::launch_tidal_select_from_keys} in
 * {@code cuda/tidal_select.cu}: the histogram + plan, collect and compact kernels, used after the selection layer's
 * attention, the quantized cache's score kernel, Quest's page keys and TokenSelect's votes) emulated on the host: the
 * kernels, the device functions they call, their constants and the workspace layout are pasted into
 * {@code tests/resources/cuda/select_from_keys_emulation.cpp}, compiled with g++ and run with one host thread per CUDA
 * thread; the slots and counts must equal a straightforward top-k selection, and the histograms, tickets and candidate
 * count must be left zero, on 60 random cases (spread, heavily tied and crowded keys; KV heads of different lengths;
 * absent, invisible and out-of-range current slots; k from 0 to more than the context; the histogram pass's rows per
 * block in turn 2048, 128, 8192; the collect pass with one and with 8 candidate-list entries in flight, in turn). Skipped where g++ is missing. (On a GPU the parity tests of every selection run the
 * kernels themselves.)
 */
class SelectFromKeysEmulationTest {
    @TempDir
    Path tmp;

    @Test
    void selectionFromKeysMatchesATopK() throws Exception {
        Assumptions.assumeTrue(HostEmulation.gppAvailable(), "g++ not found");
        String file = "cuda/tidal_select.cu", src = Files.readString(Path.of(file));
        int c0 = src.indexOf("constexpr int kTileRows"), e0 = src.indexOf("enum : int {", c0);
        assertTrue(c0 >= 0 && e0 > c0, file + ": constants not found");
        String constants = src.substring(c0, src.indexOf("\n", e0) + 1);
        int l0 = src.indexOf("struct Layout {");
        assertTrue(l0 >= 0, file + ": no struct Layout");
        String layoutStruct = src.substring(l0, src.indexOf("\n};\n", l0) + 4);
        String dev = "__device__ __forceinline__ ";
        String code = constants + "\n" + layoutStruct + "\n"
                + HostEmulation.function(src, file, "Layout ", "layout", "static Layout ") + "\n"
                + HostEmulation.function(src, file, dev + "int ", "block_excl_scan", "static int ") + "\n"
                + HostEmulation.function(src, file, "template <class Count>\n" + dev + "void ", "find_bin",
                        "template <class Count>\nstatic void ") + "\n"
                + HostEmulation.function(src, file, dev + "void ", "plan_selection", "static void ") + "\n"
                + HostEmulation.function(src, file, dev + "void ", "finish_score_block", "static void ") + "\n"
                + HostEmulation.function(src, file, "__global__ void __launch_bounds__(kTileRows) ", "tidal_hist_plan_kernel",
                        "static void ") + "\n"
                + HostEmulation.function(src, file, "template <int IN_FLIGHT>\n__global__ void __launch_bounds__(kChunkThreads) ",
                        "tidal_collect_kernel", "template <int IN_FLIGHT>\nstatic void ") + "\n"
                + HostEmulation.function(src, file, "__global__ void __launch_bounds__(kChunkThreads) ", "tidal_compact_kernel",
                        "static void ");
        HostEmulation.compileAndRun(tmp, "tests/resources/cuda/select_from_keys_emulation.cpp", "/*SELECT*/", code);
    }
}
