package dev.tokenpress;

import org.junit.jupiter.api.Test;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Stream;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * Every GPU test class (tests/dev/tokenpress/backend/cuda/Cuda*Test.java) is run by scripts/gpu-check.sh: in its
 * default class list and in exactly one JUnit group of each of --run-split and --run-parallel.
 */
class GpuCheckScriptTest {
    @Test
    void everyCudaTestClassIsInTheGpuCheck() throws IOException {
        String script = Files.readString(Path.of("scripts/gpu-check.sh"));
        List<String> classes;
        try (Stream<Path> s = Files.list(Path.of("tests/dev/tokenpress/backend/cuda"))) {
            classes = s.map(p -> p.getFileName().toString()).filter(n -> n.matches("Cuda\\w*Test\\.java"))
                    .map(n -> n.substring(0, n.length() - ".java".length())).sorted().toList();
        }
        assertFalse(classes.isEmpty(), "no GPU test classes found (run from the repository root)");
        Matcher m = Pattern.compile("JUNIT_CLASSES:-\"([^\"]*)\"").matcher(script);
        assertTrue(m.find(), "the default class list of scripts/gpu-check.sh");
        List<String> defaults = List.of(m.group(1).trim().split("\\s+"));
        // the group lines: "x|Class Class ...|timeout" (--run-split) and "x|Class Class ..." (--run-parallel)
        Matcher g = Pattern.compile("^\\s*\"[a-z]\\|([A-Za-z0-9 ]+)(\\|\\d+)?\"\\)?\\s*$", Pattern.MULTILINE).matcher(script);
        int split = 0, parallel = 0;
        StringBuilder splitText = new StringBuilder(), parallelText = new StringBuilder();
        while (g.find()) {
            if (g.group(2) != null) splitText.append(' ').append(g.group(1));
            else parallelText.append(' ').append(g.group(1));
        }
        List<String> splitList = List.of(splitText.toString().trim().split("\\s+"));
        List<String> parallelList = List.of(parallelText.toString().trim().split("\\s+"));
        for (String c : classes) {
            assertTrue(defaults.contains(c), c + " is missing from the default class list of scripts/gpu-check.sh");
            assertEquals(1, splitList.stream().filter(c::equals).count(), c + " must be in exactly one --run-split group");
            assertEquals(1, parallelList.stream().filter(c::equals).count(), c + " must be in exactly one --run-parallel group");
        }
    }
}
