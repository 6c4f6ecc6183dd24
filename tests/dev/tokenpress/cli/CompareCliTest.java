package dev.tokenpress.cli;

import dev.tokenpress.model.LlamaConfig;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import javax.imageio.ImageIO;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/** {@code tokenpress compare}: its rows are separate perplexity runs; plot, CSV and exit codes. */
class CompareCliTest {
    @TempDir
    static Path tmp;
    static Path model, text;
    static final ObjectMapper JSON = new ObjectMapper();

    record Run(int code, String out, String err) {}

    static Run run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int code = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new Run(code, out.toString(), err.toString());
    }

    @BeforeAll
    static void makeModel() throws Exception {
        model = tmp.resolve("tiny");
        assertEquals(ExitCodes.OK, run("make-model", "--preset", "tiny", "-o", model.toString(), "--seed", "4").code());
        text = tmp.resolve("text.txt");
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 40; i++) sb.append("for i in range(").append(i).append("):\n    total += i * ").append(i % 7).append("\n");
        Files.writeString(text, sb.toString());
    }

    @Test
    void rowsEqualSeparatePerplexityRunsAndThePlotIsAPng() throws Exception {
        Path png = tmp.resolve("out/plot.png");
        String[] specs = {"full", "window:budget=24", "h2o:budget=24,recent=8", "tidal:k=16"};
        Run c = run("compare", "-m", model.toString(), "-f", text.toString(), "-c", "72", "--prefill", "8",
                "--kv", String.join(",", specs), "--json", "--plot", png.toString(), "--device", "cpu");
        assertEquals(ExitCodes.OK, c.code(), c.err());
        JsonNode rows = JSON.readTree(c.out()).get("results");
        assertEquals(specs.length, rows.size());
        for (int i = 0; i < specs.length; i++) {
            Run p = run("perplexity", "-m", model.toString(), "-f", text.toString(), "-c", "72", "--prefill", "8",
                    "--kv", specs[i], "--json", "--device", "cpu");
            assertEquals(ExitCodes.OK, p.code(), p.err());
            JsonNode a = rows.get(i), b = JSON.readTree(p.out()).get("results").get(0);
            for (String f : new String[]{"kv", "baseline", "tokens", "scored", "ppl", "mean_nll", "baseline_ppl", "delta_ppl",
                    "mean_kld", "kld_p99", "max_kld", "top1_agreement", "mean_delta_p", "kv_bytes", "full_kv_bytes", "peak_slots",
                    "slot_ratio", "byte_ratio", "decode_steps"})
                assertEquals(b.get(f), a.get(f), specs[i] + " " + f);
        }
        assertEquals(0.0, rows.get(0).get("delta_ppl").asDouble(), 1e-3, "full vs the full-prefill baseline");
        assertTrue(rows.get(1).get("byte_ratio").asDouble() > 2);
        byte[] head = Files.readAllBytes(png);
        assertEquals((byte) 0x89, head[0]);
        assertEquals('P', head[1]);
        assertNotNull(ImageIO.read(png.toFile()));
        assertTrue(c.err().contains("plot: "), c.err());
    }

    @Test
    void csvAndTable() {
        Run csv = run("compare", "-m", model.toString(), "-f", text.toString(), "-c", "48", "--kv", "full,window:budget=20", "--csv");
        assertEquals(ExitCodes.OK, csv.code(), csv.err());
        String[] lines = csv.out().trim().split("\n");
        assertEquals(3, lines.length, csv.out());
        assertTrue(lines[0].startsWith("kv,baseline,tokens,prefill,scored,kv_bytes"));
        assertTrue(lines[2].startsWith("\"window:sink=4,budget=20\",\"full\",48,32,16,"), lines[2]);
        Run md = run("compare", "-m", model.toString(), "-f", text.toString(), "-c", "48", "--kv", "full,window:budget=20,sink=2");
        assertEquals(ExitCodes.OK, md.code(), md.err());
        assertTrue(md.out().contains("| window:sink=2,budget=20 |"), md.out());
    }

    /** MiniCache in a --kv-quant list: its row carries the canonical spec, merges layers (fewer bytes) and costs PPL. */
    @Test
    void minicacheRowsMergeLayers() throws Exception {
        Run c = run("compare", "-m", model.toString(), "-f", text.toString(), "-c", "48", "--kv", "full",
                "--kv-quant", "none,minicache:start=0,group=8,residual=8", "--json", "--device", "cpu");
        assertEquals(ExitCodes.OK, c.code(), c.err());
        JsonNode rows = JSON.readTree(c.out()).get("results");
        assertEquals(2, rows.size(), c.out());
        assertEquals("full q:minicache:t=0.6,start=0,retain=0.05,group=8,residual=8", rows.get(1).get("kv").asText());
        assertTrue(rows.get(1).get("kv_bytes").asLong() < rows.get(0).get("kv_bytes").asLong(), c.out());
        assertTrue(rows.get(1).get("mean_kld").asDouble() > 0, c.out());
    }

    /**
     * KVzip through the loader: its reconstruction prompts come from the model's tokenizer, the cache gets room for the
     * pass (the prompt fills most of -c), and the prompt is cut to the budget on average.
     */
    @Test
    void kvzipRepeatsThePromptWithTheModelsTokenizer() throws Exception {
        Run c = run("compare", "-m", model.toString(), "-f", text.toString(), "-c", "72", "--prefill", "60",
                "--kv", "full,kvzip:budget=15", "--json", "--device", "cpu");
        assertEquals(ExitCodes.OK, c.code(), c.err());
        JsonNode rows = JSON.readTree(c.out()).get("results");
        assertEquals("kvzip:budget=15,sink=4,chunk=2048,layerwise=false,plus=false", rows.get(1).get("kv").asText());
        LlamaConfig cfg = dev.tokenpress.io.ConfigLoader.load(model);
        long heads = (long) cfg.numLayers() * cfg.numKvHeads();
        assertEquals(heads * (15 + 11), rows.get(1).get("peak_slots").asLong(), "15 prompt tokens per head on average + 11 decoded");
        assertTrue(rows.get(1).get("mean_kld").asDouble() > 0, c.out());
    }

    /** A list of --kv-quant specs: every policy for each, in that order, each row as a separate run labels it. */
    @Test
    void quantizationListsGiveEveryCombination() throws Exception {
        Run c = run("compare", "-m", model.toString(), "-f", text.toString(), "-c", "48", "--kv", "full,window:budget=20",
                "--kv-quant", "none,int8:group=8,residual=8,int4:group=8,residual=8", "--json", "--device", "cpu");
        assertEquals(ExitCodes.OK, c.code(), c.err());
        JsonNode rows = JSON.readTree(c.out()).get("results");
        String[] want = {"full", "window:sink=4,budget=20", "full q:int8:group=8,residual=8",
                "window:sink=4,budget=20 q:int8:group=8,residual=8", "full q:int4:group=8,residual=8",
                "window:sink=4,budget=20 q:int4:group=8,residual=8"};
        assertEquals(want.length, rows.size(), c.out());
        for (int i = 0; i < want.length; i++) assertEquals(want[i], rows.get(i).get("kv").asText());
        // the quantized caches' bytes are what their blocks hold at the end (not an empty cache's): int8 > int4
        long f32 = rows.get(0).get("kv_bytes").asLong(), i8 = rows.get(2).get("kv_bytes").asLong(),
                i4 = rows.get(4).get("kv_bytes").asLong();
        assertTrue(f32 > i8 && i8 > i4, f32 + " / " + i8 + " / " + i4);
        Run one = run("perplexity", "-m", model.toString(), "-f", text.toString(), "-c", "48", "--kv", "window:budget=20",
                "--kv-quant", "int4:group=8,residual=8", "--json", "--device", "cpu");
        JsonNode r1 = JSON.readTree(one.out()).get("results").get(0);
        for (String f : new String[] {"kv", "ppl", "mean_kld", "kv_bytes"}) assertEquals(r1.get(f), rows.get(5).get(f), f);
        assertEquals(ExitCodes.USAGE, run("compare", "-m", model.toString(), "-f", text.toString(), "--kv-quant", "none,int5").code());
        Run b = run("bench", "-m", model.toString(), "-p", "0", "-n", "2", "-r", "1", "--kv-quant", "none,int8",
                "--bandwidth-mib", "8", "--device", "cpu", "-o", "csv");
        assertEquals(ExitCodes.OK, b.code(), b.err());
        assertTrue(b.out().contains(",\"full\""), b.out());
        assertTrue(b.out().contains("full q:int8"), b.out());
    }

    @Test
    void badInputsAreUsageErrors() {
        assertEquals(ExitCodes.USAGE, run("compare", "-m", model.toString()).code());
        assertEquals(ExitCodes.USAGE, run("compare", "-m", model.toString(), "-f", tmp.resolve("missing.py").toString()).code());
        assertEquals(ExitCodes.USAGE, run("compare", "-m", model.toString(), "-f", text.toString(), "--kv", "full,bogus").code());
        assertEquals(ExitCodes.USAGE, run("compare", "-m", model.toString(), "-f", text.toString(), "--kv", "full,,h2o").code());
        assertEquals(ExitCodes.USAGE, run("compare", "-m", model.toString(), "-f", text.toString(), "--json", "--csv").code());
    }
}
