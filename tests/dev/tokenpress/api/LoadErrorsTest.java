package dev.tokenpress.api;

import dev.tokenpress.io.ModelLoadException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

/**
 * The tokenizer loads on its own thread beside the weights; a failure on either side is reported as before (the
 * tokenizer's first, as when it loaded before the weights), with nothing left open.
 */
class LoadErrorsTest {
    static final Path MODEL = Path.of("models", "tokenpress-tiny");

    @TempDir
    Path tmp;

    private Path copy(String name, String... files) throws Exception {
        Path d = Files.createDirectories(tmp.resolve(name));
        for (String f : files) Files.copy(MODEL.resolve(f), d.resolve(f));
        return d;
    }

    @Test
    void aMissingConfigComesFirst() throws Exception {
        Path d = copy("no-config", "model.safetensors"); // no tokenizer.json either
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> TokenPress.load(d, LoadOptions.defaults().withDevice("cpu")));
        assertTrue(e.getMessage().contains("config.json"), e.getMessage());
        assertEquals(0, e.getSuppressed().length);
    }

    @Test
    void aMissingTokenizerIsNamed() throws Exception {
        Path d = copy("no-tokenizer", "config.json", "model.safetensors");
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> TokenPress.load(d, LoadOptions.defaults().withDevice("cpu")));
        assertTrue(e.getMessage().contains("tokenizer.json") && e.getMessage().contains("not found"), e.getMessage());
    }

    @Test
    void theTokenizersErrorComesFirstWhenBothFail() throws Exception {
        Path d = copy("both", "config.json");
        Files.write(d.resolve("model.safetensors"), new byte[] {1, 2, 3});
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> TokenPress.load(d, LoadOptions.defaults().withDevice("cpu")));
        assertTrue(e.getMessage().contains("tokenizer.json"), e.getMessage());
        assertEquals(1, e.getSuppressed().length, "the weights' error rides along");
        assertTrue(e.getSuppressed()[0].getMessage().contains("model.safetensors"), e.getSuppressed()[0].getMessage());
    }

    @Test
    void brokenWeightsAreNamedAndTheTokenizerClosed() throws Exception {
        Path d = copy("weights", "config.json", "tokenizer.json");
        Files.write(d.resolve("model.safetensors"), new byte[] {1, 2, 3});
        ModelLoadException e = assertThrows(ModelLoadException.class, () -> TokenPress.load(d, LoadOptions.defaults().withDevice("cpu")));
        assertTrue(e.getMessage().contains("model.safetensors"), e.getMessage());
        assertEquals(0, e.getSuppressed().length);
        // and a good directory still loads, its tokenizer working
        try (TokenPress tp = TokenPress.load(MODEL, LoadOptions.defaults().withDevice("cpu"))) {
            assertTrue(tp.tokenizer().encode("def f():").length > 1);
            assertEquals("def f():", tp.tokenizer().decode(tp.tokenizer().encodeNoSpecial("def f():")));
        }
    }
}
