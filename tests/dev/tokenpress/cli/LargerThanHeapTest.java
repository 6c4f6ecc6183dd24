package dev.tokenpress.cli;

import dev.tokenpress.io.DType;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

import static org.junit.jupiter.api.Assertions.*;

/** Weights are memory-mapped: a model about twice the JVM's maximum heap loads and generates. */
class LargerThanHeapTest {
    @TempDir
    Path tmp;

    @Test
    void modelLargerThanXmxLoads() throws Exception {
        LlamaConfig c = new LlamaConfig("LlamaForCausalLM", "llama", 512, 2048, 4, 8, 2, 64, 32000, 1e-5f, 10000f, null,
                2048, false, false, null, 31998, List.of(31999), "bfloat16");
        ModelWriter.write(tmp, c, DType.BF16, 1, s -> {});
        long bytes;
        try (var files = Files.list(tmp)) {
            bytes = files.filter(p -> p.toString().endsWith(".safetensors")).mapToLong(p -> p.toFile().length()).sum();
        }
        int heapMib = 40;
        assertTrue(bytes > 2L * heapMib * 1024 * 1024, "model must be larger than the heap: " + bytes);
        String java = Path.of(System.getProperty("java.home"), "bin", "java").toString();
        Process p = new ProcessBuilder(java, "--add-modules", "jdk.incubator.vector", "-Xmx" + heapMib + "m",
                "-cp", System.getProperty("java.class.path"), "dev.tokenpress.cli.Main",
                "generate", "-m", tmp.toString(), "-p", "hello", "-n", "3", "-c", "64", "--temp", "0", "--device", "cpu")
                .redirectErrorStream(true).start();
        assertTrue(p.waitFor(120, TimeUnit.SECONDS), "timed out");
        String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
        assertEquals(0, p.exitValue(), out);
        assertTrue(out.contains("tokens/s"), out);
    }
}
