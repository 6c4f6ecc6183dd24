package dev.tokenpress.eval;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.cli.ExitCodes;
import dev.tokenpress.cli.Main;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/** {@code generate --json --trace}: one record per sampled token with the sampler's diagnostics. */
class GenerateTraceTest {
    @TempDir
    Path tmp;

    static int run(StringWriter out, StringWriter err, String... args) {
        return Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
    }

    @Test
    void traceRecordsEveryStep() throws Exception {
        Path model = tmp.resolve("tiny");
        assertEquals(ExitCodes.OK, run(new StringWriter(), new StringWriter(), "make-model", "--preset", "tiny", "-o", model.toString()));
        StringWriter out = new StringWriter(), err = new StringWriter();
        int code = run(out, err, "generate", "-m", model.toString(), "-p", "abc", "-n", "6", "--json", "--trace", "--seed", "3",
                "--mirostat", "2");
        assertEquals(ExitCodes.OK, code, err.toString());
        JsonNode j = new ObjectMapper().readTree(out.toString());
        JsonNode t = j.get("trace");
        assertEquals(j.get("generated_tokens").asInt() + (j.get("stop_reason").asText().equals("eos") ? 1 : 0), t.size());
        for (JsonNode s : t) {
            assertTrue(s.get("entropy").asDouble() >= 0);
            assertTrue(s.get("top_k_mass").asDouble() > 0 && s.get("top_k_mass").asDouble() <= 1 + 1e-9);
            assertTrue(s.get("mirostat_mu").isNumber());
        }
        // greedy with a trace gives the same text as without
        StringWriter g1 = new StringWriter(), g2 = new StringWriter();
        run(g1, new StringWriter(), "generate", "-m", model.toString(), "-p", "abc", "-n", "6", "--json", "--temp", "0");
        run(g2, new StringWriter(), "generate", "-m", model.toString(), "-p", "abc", "-n", "6", "--json", "--temp", "0", "--trace");
        ObjectMapper om = new ObjectMapper();
        assertEquals(om.readTree(g1.toString()).get("text"), om.readTree(g2.toString()).get("text"));
        assertTrue(om.readTree(g2.toString()).get("trace").get(0).get("mirostat_mu").isNull());
        assertEquals(ExitCodes.USAGE, run(new StringWriter(), new StringWriter(), "generate", "-m", model.toString(), "--trace"));
    }
}
