package dev.tokenpress.backend.cuda;

import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

/**
 * TokenSelect's device vote ({@code tp_tokenselect_select}'s own kernels in {@code cuda/policy_ops.cu}:
 * {@code tokenselect_softmax_kernel}, {@code tokenselect_vote_kernel}, {@code tokenselect_expand_kernel}) emulated on
 * the host: pasted into {@code tests/resources/cuda/tokenselect_emulation.cpp}, compiled with g++ and run with one
 * host thread per CUDA thread, a plain selection from the keys in place of tp_tidal_select's (passed on a GPU); the
 * votes must be the policy's host votes within 1e-6 and the slot lists its selection (near-ties aside) on 81 random
 * cases: invisible candidates, a q-head that sees none, init / local / k from 1 to all candidates but one. Skipped
 * where g++ is missing. (On a GPU, {@code CudaTokenSelectParityTest} runs the whole op.)
 */
class TokenSelectEmulationTest {
    @TempDir
    Path tmp;

    @Test
    void kernelsMatchTheHostVote() throws Exception {
        Assumptions.assumeTrue(HostEmulation.gppAvailable(), "g++ not found");
        String file = "cuda/policy_ops.cu", src = Files.readString(Path.of(file));
        String code = HostEmulation.function(src, file, "__global__ void __launch_bounds__(512) ", "tokenselect_softmax_kernel", "static void ")
                + "\n" + HostEmulation.function(src, file, "__global__ void __launch_bounds__(256) ", "tokenselect_vote_kernel", "static void ")
                + "\n" + HostEmulation.function(src, file, "__global__ void __launch_bounds__(256) ", "tokenselect_expand_kernel", "static void ");
        HostEmulation.compileAndRun(tmp, "tests/resources/cuda/tokenselect_emulation.cpp", "/*KERNELS*/", code);
    }
}
