package dev.tokenpress.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;

import java.io.PrintWriter;
import java.io.StringWriter;

import static org.junit.jupiter.api.Assertions.*;

/** perplexity / compare with --kv-quant: the policy's cache is quantized, the baseline's is not. */
class QuantEvalCliTest {
    static String[] run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int code = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        assertEquals(ExitCodes.OK, code, err.toString());
        return new String[]{out.toString(), err.toString()};
    }

    @Test
    void quantizedCacheCostsLittleAndIsLabelled() throws Exception {
        String[] r = run("compare", "-m", "models/tokenpress-tiny", "-f", "tests/resources/eval/sample.py", "-c", "200",
                "--kv", "full", "--kv-quant", "int8:group=16,residual=16", "--json", "--device", "cpu");
        JsonNode rows = new ObjectMapper().readTree(r[0]).get("results");
        JsonNode q = rows.get(0);
        assertTrue(q.get("kv").asText().contains("q:int8"), q.toString());
        double kld = q.get("mean_kld").asDouble();
        assertTrue(kld > 0 && kld < 0.01, "int8 KV costs a little: KLD " + kld);
        assertTrue(q.get("byte_ratio").asDouble() > 2, q.toString());
        assertEquals(ExitCodes.USAGE, Main.run(new String[]{"perplexity", "-m", "models/tokenpress-tiny", "-f",
                "tests/resources/eval/sample.py", "--kv-quant", "int3"}, new PrintWriter(new StringWriter()), new PrintWriter(new StringWriter())));
    }
}
