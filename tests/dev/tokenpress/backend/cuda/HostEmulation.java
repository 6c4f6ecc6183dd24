package dev.tokenpress.backend.cuda;

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
 * What the host emulation tests share: CUDA device code cut out of a source file, pasted into a C++ harness in
 * {@code tests/resources/cuda/} at its marker, compiled with g++ (that folder on the include path, for
 * {@code emulation.h}) and run; the harness prints ALL OK when every check passed.
 */
final class HostEmulation {
    private HostEmulation() {}

    static boolean gppAvailable() {
        try {
            Process p = new ProcessBuilder("g++", "--version").redirectErrorStream(true).start();
            p.getInputStream().readAllBytes();
            return p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0;
        } catch (IOException | InterruptedException e) {
            return false;
        }
    }

    /**
     * The function or kernel of {@code src} that starts with {@code head} (up to its closing brace at the start of a
     * line), with {@code head}'s qualifiers replaced by {@code qualifiers}.
     */
    static String function(String src, String file, String head, String name, String qualifiers) {
        int i = src.indexOf(head + name + "(");
        assertTrue(i >= 0, file + " has no " + name);
        int j = src.indexOf("\n}\n", i);
        return src.substring(i, j + 3).replace(head, qualifiers);
    }

    /** The harness with {@code code} at {@code marker}, compiled with g++ and run; returns its output (printed). */
    static String compileAndRun(Path tmp, String harnessFile, String marker, String code) throws Exception {
        String harness = Files.readString(Path.of(harnessFile));
        assertTrue(harness.contains(marker), harnessFile + " has no " + marker + " marker");
        Path src = tmp.resolve("emulation.cpp"), bin = tmp.resolve("emulation");
        Files.writeString(src, harness.replace(marker, code));
        String include = Path.of(harnessFile).toAbsolutePath().getParent().toString(); // emulation.h beside the harnesses
        run(List.of("g++", "-O1", "-std=c++20", "-pthread", "-ffp-contract=off", "-I", include, "-o", bin.toString(),
                src.toString()), "compile");
        String out = run(List.of(bin.toString()), "run");
        System.out.print(out);
        assertTrue(out.contains("ALL OK"), out);
        return out;
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
