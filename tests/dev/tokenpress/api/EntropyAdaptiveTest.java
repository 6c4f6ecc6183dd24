package dev.tokenpress.api;

import dev.tokenpress.io.ConfigLoader;
import dev.tokenpress.io.ModelWriter;
import dev.tokenpress.model.LlamaConfig;
import dev.tokenpress.sample.SamplingOptions;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;

import static org.junit.jupiter.api.Assertions.*;

/**
 * Entropy-adaptive decoding: with the threshold at +infinity every token is the small model's (the same tokens as
 * the small model decoding alone, same seed), at -infinity every token is the model's; in between both produce
 * tokens, and the session's cache holds exactly the fed tokens afterwards.
 */
class EntropyAdaptiveTest {
    static final Path MODEL = LookupDecodingTest.MODEL;

    @TempDir
    Path tmp;

    /** A different small model with the embedded model's tokenizer: 2 layers, random weights. */
    Path smallModel() throws Exception {
        LlamaConfig c = ConfigLoader.load(MODEL);
        LlamaConfig small = new LlamaConfig(c.architecture(), c.modelType(), c.hiddenSize(), c.intermediateSize(), 2,
                c.numHeads(), c.numKvHeads(), c.headDim(), c.vocabSize(), c.rmsNormEps(), c.ropeTheta(), c.ropeScaling(),
                c.maxPositionEmbeddings(), c.tieWordEmbeddings(), c.attentionBias(), c.slidingWindow(), c.bosTokenId(),
                c.eosTokenIds(), c.torchDtype());
        Path dir = tmp.resolve("small");
        ModelWriter.write(dir, small, 3, s -> {});
        for (String f : new String[] {"tokenizer.json", "tokenizer_config.json", "config.json"})
            Files.copy(MODEL.resolve(f), dir.resolve(f), StandardCopyOption.REPLACE_EXISTING);
        String cfg = Files.readString(dir.resolve("config.json")).replaceFirst("\"num_hidden_layers\"\\s*:\\s*\\d+", "\"num_hidden_layers\": 2");
        Files.writeString(dir.resolve("config.json"), cfg);
        return dir;
    }

    static int[] run(TokenPress tp, TokenPress small, double tau, SamplingOptions o, int n, long[] counts) {
        try (Session s = tp.newSession(256)) {
            if (small != null) s.setEntropyAdaptive(small, tau, 3);
            GenerationResult r = s.generate(tp.tokenizer().encode("def parse(text):\n    "), n, o, null);
            assertEquals(s.position(), s.cache().occupied(0, 0), "the cache holds exactly the fed tokens");
            int fed = r.decodeSteps(); // the generated tokens in the cache: all but the last sampled one
            int[] all = s.tokens();
            assertArrayEquals(java.util.Arrays.copyOf(r.tokens(), fed), java.util.Arrays.copyOfRange(all, all.length - fed, all.length));
            if (counts != null) System.arraycopy(s.entropyAdaptiveCounts(), 0, counts, 0, 3);
            return r.tokens();
        }
    }

    @Test
    void thresholdsChooseTheModelPerToken() throws Exception {
        Assumptions.assumeTrue(Files.isRegularFile(MODEL.resolve("model.safetensors")), "no embedded model");
        Path smallDir = smallModel();
        LoadOptions cpu = LoadOptions.defaults().withDevice("cpu").withThreads(2);
        SamplingOptions o = SamplingOptions.defaults().withTemp(0.8).withSeed(5);
        try (TokenPress tp = TokenPress.load(MODEL, cpu); TokenPress small = TokenPress.loadOn(smallDir, cpu, tp)) {
            int[] smallAlone = run(small, null, 0, o, 20, null), largeAlone = run(tp, null, 0, o, 20, null);
            assertFalse(java.util.Arrays.equals(smallAlone, largeAlone), "two different models");
            long[] c = new long[3];
            assertArrayEquals(smallAlone, run(tp, small, Double.POSITIVE_INFINITY, o, 20, c));
            assertEquals(0, c[1]);
            assertArrayEquals(largeAlone, run(tp, small, Double.NEGATIVE_INFINITY, o, 20, c));
            assertEquals(0, c[0]);
            try (Session s = tp.newSession(64)) {
                assertThrows(IllegalArgumentException.class, () -> s.setEntropyAdaptive(small, 1, 0));
            }
        }
        // a trained small model (the embedded one itself) is sure at some steps and unsure at others: both produce
        Path copy = tmp.resolve("copy");
        Files.createDirectories(copy);
        for (String f : new String[] {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
            Files.copy(MODEL.resolve(f), copy.resolve(f));
        try (TokenPress tp = TokenPress.load(MODEL, cpu); TokenPress small = TokenPress.loadOn(copy, cpu, tp)) {
            long[] c = new long[3];
            run(tp, small, 3.5, o, 40, c);
            System.out.printf("[ead] tau 3.5 bits: %d small, %d large, %d switches%n", c[0], c[1], c[2]);
            assertTrue(c[0] > 0 && c[1] > 0 && c[2] > 0, java.util.Arrays.toString(c));
        }
    }
}
