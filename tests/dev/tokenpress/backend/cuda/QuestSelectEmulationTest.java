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
        Assumptions.assumeTrue(gppAvailable(), "g++ not found");
        String src = Files.readString(Path.of("cuda/policy_ops.cu"));
        String code = kernel(src, "quest_page_keys_kernel") + "\n" + kernel(src, "quest_expand_kernel");
        String harness = Files.readString(Path.of("tests/resources/cuda/quest_select_emulation.cpp"));
        assertTrue(harness.contains("/*KERNELS*/"), "the harness's KERNELS marker");
        Path file = tmp.resolve("emulation.cpp"), bin = tmp.resolve("emulation");
        Files.writeString(file, harness.replace("/*KERNELS*/", code));
        run(List.of("g++", "-O1", "-std=c++20", "-pthread", "-ffp-contract=off", "-o", bin.toString(), file.toString()), "compile");
        String out = run(List.of(bin.toString()), "run");
        System.out.print(out);
        assertTrue(out.contains("ALL OK"), out);
    }

    /** The kernel {@code name} (up to its closing brace at the start of a line), as a static host function. */
    private static String kernel(String s, String name) {
        String head = "__global__ void __launch_bounds__(256) " + name + "(";
        int i = s.indexOf(head);
        assertTrue(i >= 0, "cuda/policy_ops.cu has no " + name);
        int j = s.indexOf("\n}\n", i);
        return s.substring(i, j + 3).replace("__global__ void __launch_bounds__(256) ", "static void ");
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
        assertTrue(p.waitFor(300, TimeUnit.SECONDS), what + " timed out");
        assertEquals(0, p.exitValue(), what + " failed:\n" + out);
        return out;
    }
}
