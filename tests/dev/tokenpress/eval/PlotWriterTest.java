package dev.tokenpress.eval;

import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import javax.imageio.ImageIO;
import java.awt.image.BufferedImage;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;

import static org.junit.jupiter.api.Assertions.*;

class PlotWriterTest {
    @TempDir
    Path tmp;

    static Perplexity.Result row(String kv, double nll, long bytes) {
        return new Perplexity.Result(kv, "full", 100, 10, 90, nll, 0.01, 2.0, 0.01, 0.1, 0.5, 0.9, 0.9, 0, 0.01,
                100, 400, 25, bytes, 4000, 89, 0.5, 0.1);
    }

    @Test
    void writesAValidPngAtomically() throws Exception {
        Path png = tmp.resolve("sub/plot.png");
        PlotWriter.write(png, "ΔPPL vs KV memory", List.of(row("full", 2.0, 4000), row("window:budget=25", 2.3, 1000),
                row("h2o:budget=25", 2.2, 1100)));
        byte[] b = Files.readAllBytes(png);
        assertArrayEquals(new byte[]{(byte) 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'}, Arrays.copyOf(b, 8));
        BufferedImage img = ImageIO.read(png.toFile());
        assertNotNull(img);
        assertEquals(1200, img.getWidth());
        assertEquals(600, img.getHeight());
        try (var s = Files.list(png.getParent())) {
            assertEquals(1, s.count(), "no temporary file is left behind");
        }
    }

    @Test
    void ticksCoverTheRange() {
        double[] t = PlotWriter.ticks(-0.03, 3.7);
        assertTrue(t[0] <= -0.03 && t[t.length - 1] >= 3.7);
        assertTrue(t.length >= 3 && t.length <= 9, Arrays.toString(t));
    }
}
