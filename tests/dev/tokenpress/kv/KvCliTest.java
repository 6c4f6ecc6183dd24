package dev.tokenpress.kv;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.cli.ExitCodes;
import dev.tokenpress.cli.Main;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/** --kv on the generate and bench commands: help, usage errors, and runs with policies. */
class KvCliTest {
    @TempDir
    static Path tmp;
    static Path model;

    record Run(int code, String out, String err) {}

    static Run run(String... args) {
        StringWriter out = new StringWriter(), err = new StringWriter();
        int code = Main.run(args, new PrintWriter(out, true), new PrintWriter(err, true));
        return new Run(code, out.toString(), err.toString());
    }

    @BeforeAll
    static void makeModel() {
        model = tmp.resolve("tiny");
        Run r = run("make-model", "--preset", "tiny", "-o", model.toString(), "--seed", "5");
        assertEquals(ExitCodes.OK, r.code(), r.err());
    }

    @Test
    void kvHelpPrintsEveryPolicyAndExitsZero() {
        for (String cmd : new String[]{"generate", "bench"}) {
            Run r = run(cmd, "--kv", "help");
            assertEquals(ExitCodes.OK, r.code(), r.err());
            for (String name : KvPolicies.names()) assertTrue(r.out().contains(name), cmd + ": " + name);
        }
    }

    @Test
    void aBadSpecIsAUsageErrorOnOneLine() {
        Run r = run("generate", "-m", model.toString(), "-p", "x", "--kv", "h2o:foo=1", "--device", "cpu");
        assertEquals(ExitCodes.USAGE, r.code());
        assertEquals(1, r.err().strip().lines().count(), r.err());
        assertTrue(r.err().contains("foo") && r.err().contains("budget, recent"), r.err());
        Run b = run("bench", "-m", model.toString(), "--kv", "full,nosuch", "--device", "cpu");
        assertEquals(ExitCodes.USAGE, b.code());
        assertTrue(b.err().contains("unknown KV policy 'nosuch'"), b.err());
    }

    @Test
    void generateRunsWithAnEvictingPolicyPastItsBudget() throws Exception {
        Run r = run("generate", "-m", model.toString(), "-p", "hello world", "-n", "40", "--temp", "0", "-c", "24",
                "--kv", "window:sink=2,recent=12", "--json", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode j = new ObjectMapper().readTree(r.out());
        assertEquals("window:sink=2,recent=12", j.get("kv").asText());
        assertTrue(j.get("decode_steps").asInt() > 24 || "eos".equals(j.get("stop_reason").asText()), r.out());
        assertNotEquals("context", j.get("stop_reason").asText());
    }

    @Test
    void benchPrintsOneRowSetPerPolicy() {
        Run r = run("bench", "-m", model.toString(), "-p", "8", "-n", "4", "-r", "1", "--bandwidth-mib", "16",
                "--kv", "full,window:sink=2,recent=6,tidal:k=4", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        for (String kv : new String[]{"| full |", "| window:sink=2,recent=6 |", "| tidal:k=4,full_layers=2,reselect=auto,group=max |"}) {
            assertTrue(r.out().contains(kv), kv + "\n" + r.out());
        }
        assertEquals(6, r.out().lines().filter(l -> l.startsWith("| pp8 ") || l.startsWith("| tg4 ")).count(), r.out());
    }
}
