package dev.tokenpress.api;

import dev.tokenpress.cli.ExitCodes;
import dev.tokenpress.cli.Main;
import dev.tokenpress.model.LlamaConfig;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/**
 * RoPE scaling given at load time ({@code --rope-scaling}) in place of config.json's, on the YaRN golden fixture (yarn
 * x4 over 64 positions, max 256) with a generated tokenizer of its vocabulary.
 */
class RopeScalingOptionTest {
    @TempDir
    static Path tmp;
    static Path YARN;

    @BeforeAll
    static void copy() throws Exception {
        Path src = Path.of("tests", "fixtures", "hf", "qwen2-yarn-f32");
        YARN = tmp.resolve("qwen2-yarn");
        Files.createDirectories(YARN);
        for (String f : new String[] {"config.json", "generation_config.json", "model.safetensors"})
            Files.copy(src.resolve(f), YARN.resolve(f));
        Files.writeString(YARN.resolve("tokenizer.json"), dev.tokenpress.io.ByteLevelBpe.build(300).json());
    }

    static float[] logits(LoadOptions o, int[] tokens) {
        try (TokenPress tp = TokenPress.load(YARN, o); Session s = tp.newSession(64)) {
            return s.logits(tokens);
        }
    }

    @Test
    void replacesTheCheckpointsScaling() {
        LoadOptions base = LoadOptions.defaults().withDevice("cpu").withThreads(2);
        int[] tokens = {5, 17, 200, 3, 99, 140, 7, 250, 31, 64};
        float[] configured = logits(base, tokens);
        assertArrayEquals(configured, logits(base.withRopeScaling(LlamaConfig.RopeScaling.yarn(4f, 64)), tokens),
                "the same scaling as config.json: the same logits");
        float[] none = logits(base.withRopeScaling(LoadOptions.NO_ROPE_SCALING), tokens);
        double diff = 0;
        for (int i = 0; i < none.length; i++) diff = Math.max(diff, Math.abs(none[i] - configured[i]));
        assertTrue(diff > 1e-3, "without scaling the logits change: " + diff);
        try (TokenPress a = TokenPress.load(YARN, base.withRopeScaling(LlamaConfig.RopeScaling.yarn(2f, 0)));
             TokenPress b = TokenPress.load(YARN, base);
             TokenPress c = TokenPress.load(YARN, base.withRopeScaling(LoadOptions.NO_ROPE_SCALING))) {
            assertEquals(256, a.config().ropeScaling().originalMaxPositionEmbeddings(), "0: the checkpoint's context");
            assertEquals(2f, a.config().ropeScaling().factor());
            assertNull(c.config().ropeScaling());
            assertNotEquals(a.fingerprint(), b.fingerprint(), "a saved cache does not cross scalings");
            assertNotEquals(b.fingerprint(), c.fingerprint());
        }
    }

    @Test
    void theCommandLineFlags() {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int code = Main.run(new String[] {"generate", "-m", YARN.toString(), "--device", "cpu", "-p", "x", "-n", "1",
                "--rope-scaling", "yarn", "--rope-scale", "8"}, new PrintWriter(out, true), new PrintWriter(err, true));
        assertEquals(ExitCodes.OK, code, err.toString());
        assertTrue(err.toString().contains("rope: yarn x8.0 over 256 positions (in place of config.json's yarn)"), err.toString());
        err.getBuffer().setLength(0);
        code = Main.run(new String[] {"generate", "-m", YARN.toString(), "-p", "x", "--rope-scaling", "linear"},
                new PrintWriter(out, true), new PrintWriter(err, true));
        assertEquals(ExitCodes.USAGE, code, err.toString());
        assertTrue(err.toString().contains("--rope-scaling must be yarn or none"), err.toString());
        err.getBuffer().setLength(0);
        code = Main.run(new String[] {"generate", "-m", YARN.toString(), "-p", "x", "--rope-scale", "2"},
                new PrintWriter(out, true), new PrintWriter(err, true));
        assertEquals(ExitCodes.USAGE, code, "--rope-scale alone does nothing: refused");
    }
}
