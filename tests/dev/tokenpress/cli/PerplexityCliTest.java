package dev.tokenpress.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/** {@code tokenpress perplexity} end to end: output shapes and exit codes. */
class PerplexityCliTest {
    @TempDir
    static Path tmp;
    static Path model, text;

    record Run(int code, String out, String err) {}

    static Run run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int code = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new Run(code, out.toString(), err.toString());
    }

    @BeforeAll
    static void makeModel() throws Exception {
        model = tmp.resolve("tiny");
        Run r = run("make-model", "--preset", "tiny", "-o", model.toString(), "--seed", "3");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        text = tmp.resolve("text.txt");
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < 40; i++) sb.append("def f").append(i).append("(x): return x * ").append(i).append("\n");
        Files.writeString(text, sb.toString());
    }

    /** --skip-decode MAX:MIN: the run is labelled, costs predictions; bad values and other policies are usage errors. */
    @Test
    void skipDecodeReportsItsCost() throws Exception {
        Run r = run("perplexity", "-m", model.toString(), "-f", text.toString(), "-c", "64", "--prefill", "16",
                "--skip-decode", "2:1", "--json", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode j = new ObjectMapper().readTree(r.out()).get("results").get(0);
        assertEquals("full skip:2:1", j.get("kv").asText());
        assertTrue(j.get("mean_kld").asDouble() > 0);
        assertEquals(ExitCodes.USAGE, run("perplexity", "-m", model.toString(), "-f", text.toString(), "--skip-decode", "3:1").code());
        assertEquals(ExitCodes.USAGE, run("perplexity", "-m", model.toString(), "-f", text.toString(), "--skip-decode", "2:1",
                "--kv", "window:budget=24").code());
    }

    @Test
    void reportsPerplexityAgainstTheBaseline() throws Exception {
        Run r = run("perplexity", "-m", model.toString(), "-f", text.toString(), "-c", "80", "--prefill", "16",
                "--kv", "window:budget=24", "--json", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode j = new ObjectMapper().readTree(r.out()).get("results").get(0);
        assertEquals("window:sink=4,budget=24", j.get("kv").asText());
        assertEquals("full", j.get("baseline").asText());
        assertEquals(80, j.get("tokens").asInt());
        assertEquals(64, j.get("scored").asInt());
        assertEquals(Math.exp(j.get("mean_nll").asDouble()), j.get("ppl").asDouble(), 1e-9);
        assertEquals(j.get("ppl").asDouble() - j.get("baseline_ppl").asDouble(), j.get("delta_ppl").asDouble(), 1e-9);
        assertTrue(j.get("mean_kld").asDouble() > 0);
        assertTrue(j.get("top1_agreement").asDouble() > 0 && j.get("top1_agreement").asDouble() <= 1);
        assertTrue(j.get("kv_bytes").asLong() < j.get("full_kv_bytes").asLong());
        assertTrue(r.err().contains("perplexity [window:sink=4,budget=24]: 64/64 tokens"), r.err());
        assertTrue(r.err().contains("timings ["), r.err());

        Run table = run("perplexity", "-m", model.toString(), "-f", text.toString(), "-c", "80", "--device", "cpu");
        assertEquals(ExitCodes.OK, table.code(), table.err());
        assertTrue(table.out().contains("| kv | KV bytes |"), table.out());
        assertTrue(table.out().contains("| full |"), table.out());
        assertTrue(table.out().contains("scored 48 predictions (tokens 32..79)"), table.out());

        Run none = run("perplexity", "-m", model.toString(), "-f", text.toString(), "-c", "80", "--baseline", "none", "--json");
        assertEquals(ExitCodes.OK, none.code(), none.err());
        JsonNode n = new ObjectMapper().readTree(none.out()).get("results").get(0);
        assertTrue(n.get("baseline").isNull());
        assertFalse(n.has("mean_kld"));
    }

    @Test
    void badInputsAreUsageErrors() {
        assertEquals(ExitCodes.USAGE, run("perplexity", "-m", model.toString()).code(), "missing -f");
        Run missing = run("perplexity", "-m", model.toString(), "-f", tmp.resolve("nope.txt").toString());
        assertEquals(ExitCodes.USAGE, missing.code());
        assertTrue(missing.err().contains("text file not found"), missing.err());
        Run badKv = run("perplexity", "-m", model.toString(), "-f", text.toString(), "--kv", "nosuch:budget=3");
        assertEquals(ExitCodes.USAGE, badKv.code());
        assertTrue(badKv.err().startsWith("error: unknown KV policy"), badKv.err());
        assertEquals(ExitCodes.USAGE, run("perplexity", "-m", model.toString(), "-f", text.toString(), "--kv", "window:budget=-1").code());
        assertEquals(ExitCodes.USAGE, run("perplexity", "-m", model.toString(), "-f", text.toString(), "--baseline", "bogus").code());
        assertEquals(ExitCodes.USAGE, run("perplexity", "-m", model.toString(), "-f", text.toString(), "--prefill", "0").code());
        assertEquals(ExitCodes.USAGE, run("perplexity", "-m", model.toString(), "-f", text.toString(), "-c", "-1").code());
        assertEquals(ExitCodes.USAGE, run("perplexity", "-m", model.toString(), "-f", text.toString(), "-c", "20", "--prefill", "20").code());
        assertEquals(ExitCodes.MODEL, run("perplexity", "-m", tmp.resolve("nomodel").toString(), "-f", text.toString()).code());
        Run help = run("perplexity", "--kv", "help", "-f", text.toString());
        assertEquals(ExitCodes.OK, help.code());
        assertTrue(help.out().contains("window"));
    }
}
