package dev.tokenpress.backend.cuda;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

/**
 * Quest's device page selection ({@code tp_quest_select}'s own kernels in {@code cuda/policy_ops.cu}:
 * {@code quest_page_keys_kernel} and {@code quest_expand_kernel}) emulated on the host, so the page keys, the forced
 * page and the expansion into slot lists are checked without a GPU: the kernels are pasted into
 * {@code tests/resources/cuda/quest_select_emulation.cpp}, compiled with g++ and run with one host thread per CUDA
 * thread, with a plain selection from the keys between them (tp_tidal_select's contract; that kernel has passed
 * its parity tests on a GPU). The result must equal QuestPolicy's host selection on 1,080 random cases. Skipped where
 * g++ is missing. (On a GPU, {@code CudaQuestSelectParityTest} runs the whole op.)
 */
class QuestSelectEmulationTest {
    @TempDir
    Path tmp;

    @Test
    void kernelsMatchTheHostSelection() throws Exception {
        Assumptions.assumeTrue(HostEmulation.gppAvailable(), "g++ not found");
        String src = Files.readString(Path.of("cuda/policy_ops.cu")), file = "cuda/policy_ops.cu";
        String head = "__global__ void __launch_bounds__(256) ";
        String code = HostEmulation.function(src, file, head, "quest_page_keys_kernel", "static void ") + "\n"
                + HostEmulation.function(src, file, head, "quest_expand_kernel", "static void ");
        HostEmulation.compileAndRun(tmp, "tests/resources/cuda/quest_select_emulation.cpp", "/*KERNELS*/", code);
    }
}
