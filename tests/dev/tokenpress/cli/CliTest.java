package dev.tokenpress.cli;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import dev.tokenpress.io.ModelWriter;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

import java.io.PrintWriter;
import java.io.StringWriter;
import java.nio.file.Files;
import java.nio.file.Path;

import static org.junit.jupiter.api.Assertions.*;

/** The CLI end to end, through Main.newCommandLine with captured streams: outputs and every exit code. */
class CliTest {
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
        Run r = run("make-model", "--preset", "tiny", "-o", model.toString(), "--seed", "3");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(Files.isRegularFile(model.resolve("model.safetensors")));
    }

    /** -np N decodes N sequences of the prompt together: sequence i is what generate gives with seed + i. */
    @Test
    void parallelGenerationPrintsEverySequence() throws Exception {
        Run r = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--temp", "0.9", "--seed", "4", "-np", "3",
                "--device", "cpu", "-b", "8");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.err().contains("3 sequences") && r.err().contains("seeds 4,5,6"), r.err());
        for (int i = 0; i < 3; i++) {
            Run one = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--temp", "0.9", "--seed", Integer.toString(4 + i),
                    "--device", "cpu");
            String text = one.out().endsWith("\n") ? one.out().substring(0, one.out().length() - 1) : one.out(); // generate ends with a newline
            assertTrue(r.out().contains("sequence " + i + ":\n\n" + text + "\n"), "sequence " + i + ": " + r.out() + " vs " + one.out());
        }
        Run j = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--temp", "0", "-np", "2", "--json", "--device", "cpu");
        assertEquals(ExitCodes.OK, j.code(), j.err());
        JsonNode o = new ObjectMapper().readTree(j.out());
        assertEquals(2, o.get("sequences").size());
        assertEquals(o.at("/sequences/0/text"), o.at("/sequences/1/text"), "greedy: the same text twice");
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-np", "0").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-np", "9", "-b", "8").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-np", "2", "--lookup", "4").code());
        // constrained output in the batch: each sequence as generate gives it alone
        String schema = "{\"type\": \"object\", \"properties\": {\"n\": {\"type\": \"integer\", \"minimum\": 1, \"maximum\": 99}},"
                + " \"required\": [\"n\"]}";
        Run js = run("generate", "-m", model.toString(), "-p", "x", "-n", "40", "--temp", "0.9", "--seed", "2", "-np", "2",
                "-j", schema, "--device", "cpu", "-b", "8");
        assertEquals(ExitCodes.OK, js.code(), js.err());
        for (int i = 0; i < 2; i++) {
            Run one = run("generate", "-m", model.toString(), "-p", "x", "-n", "40", "--temp", "0.9", "--seed", Integer.toString(2 + i),
                    "-j", schema, "--device", "cpu");
            String text = one.out().endsWith("\n") ? one.out().substring(0, one.out().length() - 1) : one.out();
            assertTrue(js.out().contains("sequence " + i + ":\n\n" + text + "\n"), "sequence " + i + ": " + js.out() + " vs " + one.out());
        }
        Run bench = run("bench", "-m", model.toString(), "-p", "0", "-n", "3", "-r", "1", "-np", "1,3", "--bandwidth-mib", "64",
                "--device", "cpu", "-o", "json");
        assertEquals(ExitCodes.OK, bench.code(), bench.err());
        JsonNode b = new ObjectMapper().readTree(bench.out());
        assertEquals("tg3 x3", b.at("/results/0/test").asText());
        assertEquals(3, b.at("/results/0/sequences").asInt());
        assertEquals("tg3", b.at("/results/1/test").asText());
        assertEquals(1, b.at("/results/1/sequences").asInt());
        assertTrue(b.at("/results/0/tokens_per_s").asDouble() > 0);
    }

    /** embed prints one JSON object per text with an L2-normalized vector of the model's hidden size. */
    @Test
    void embedPrintsOneVectorPerText() throws Exception {
        Run r = run("embed", "-m", model.toString(), "-p", "Hello", "-p", "world", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        String[] lines = r.out().strip().split("\n");
        assertEquals(2, lines.length);
        JsonNode o = new ObjectMapper().readTree(lines[0]);
        assertEquals("Hello", o.get("text").asText());
        double n = 0;
        for (JsonNode x : o.get("embedding")) n += x.asDouble() * x.asDouble();
        assertEquals(1.0, n, 1e-4);
        assertTrue(r.err().contains("embedded 2 texts"), r.err());
        assertEquals(ExitCodes.USAGE, run("embed", "-m", model.toString()).code());
        assertEquals(ExitCodes.USAGE, run("embed", "-m", model.toString(), "-p", "x", "--pooling", "max").code());
    }

    /** --prompt-cache: the second run restores the saved prompt and prints the same text. */
    @Test
    void promptCacheIsReusedAcrossRuns() throws Exception {
        Path file = tmp.resolve("p.cache");
        String[] args = {"generate", "-m", model.toString(), "-p", "Hello there, a longer prompt", "-n", "6", "--temp", "0",
                "--device", "cpu", "--prompt-cache", file.toString()};
        Run first = run(args);
        assertEquals(ExitCodes.OK, first.code(), first.err());
        assertTrue(first.err().contains("prompt cache: 0 of"), first.err());
        assertTrue(Files.isRegularFile(file));
        Run second = run(args);
        assertEquals(ExitCodes.OK, second.code(), second.err());
        assertEquals(first.out(), second.out());
        assertTrue(second.err().matches("(?s).*prompt cache: [1-9][0-9]* of [0-9]+ prompt tokens reused.*"), second.err());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--prompt-cache", file.toString(), "--kv", "h2o").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--prompt-cache-ro").code());
    }

    /**
     * -ctk / -ctv bf16: the cache holds keys and values in half the bytes and says so in --json; other llama.cpp cache
     * types are usage errors that name what to use; a prompt cache saved under bf16 is not restored into an f32 cache.
     */
    @Test
    void cacheTypesSetTheKvStorage() throws Exception {
        String[] base = {"generate", "-m", model.toString(), "-p", "Hello", "-n", "4", "--temp", "0", "--device", "cpu", "--json", "-c", "64"};
        Run f = run(base);
        assertEquals(ExitCodes.OK, f.code(), f.err());
        String[] bf = java.util.Arrays.copyOf(base, base.length + 4);
        System.arraycopy(new String[] {"-ctk", "bf16", "--cache-type-v", "bf16"}, 0, bf, base.length, 4);
        Run b = run(bf);
        assertEquals(ExitCodes.OK, b.code(), b.err());
        JsonNode jf = new ObjectMapper().readTree(f.out()), jb = new ObjectMapper().readTree(b.out());
        assertEquals("f32", jf.get("cache_type_k").asText());
        assertEquals("bf16", jb.get("cache_type_k").asText());
        assertEquals("bf16", jb.get("cache_type_v").asText());
        long positions = 64L * 2 * 2 * 4; // tiny: 2 layers, 2 KV heads, an int per slot
        assertEquals(jf.get("kv_bytes").asLong() - positions, 2 * (jb.get("kv_bytes").asLong() - positions), "bf16 halves the keys' and values' bytes");
        assertFalse(b.err().contains("note: -ctk"), b.err());
        // with a --kv-quant cache the flags do not apply, and the command says so
        Run q = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "2", "--device", "cpu", "-ctk", "bf16", "--kv-quant", "int8");
        assertEquals(ExitCodes.OK, q.code(), q.err());
        assertTrue(q.err().contains("note: -ctk / -ctv apply to an unquantized cache; --kv-quant int8 stores its own format"), q.err());
        Run bad = run("generate", "-m", model.toString(), "-n", "1", "--device", "cpu", "-ctk", "f16");
        assertEquals(ExitCodes.USAGE, bad.code(), bad.err());
        assertTrue(bad.err().contains("use bf16"), bad.err());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "1", "--device", "cpu", "-ctv", "q4_0").code());
        Path file = tmp.resolve("bf16.cache");
        String[] cached = {"generate", "-m", model.toString(), "-p", "Hello there, a longer prompt", "-n", "3", "--temp", "0",
                "--device", "cpu", "--prompt-cache", file.toString()};
        String[] cachedBf = java.util.Arrays.copyOf(cached, cached.length + 4);
        System.arraycopy(new String[] {"-ctk", "bf16", "-ctv", "bf16"}, 0, cachedBf, cached.length, 4);
        assertEquals(ExitCodes.OK, run(cachedBf).code());
        String[] cachedRo = java.util.Arrays.copyOf(cached, cached.length + 1);
        cachedRo[cached.length] = "--prompt-cache-ro";
        Run f32 = run(cachedRo);
        assertEquals(ExitCodes.OK, f32.code(), f32.err());
        assertTrue(f32.err().contains("saved with another model"), f32.err());
        Run again = run(cachedBf);
        assertTrue(again.err().matches("(?s).*prompt cache: [1-9][0-9]* of [0-9]+ prompt tokens reused.*"), again.err());
    }

    @Test
    void generateStreamsTextAndReportsFiguresOnStderr() {
        Run r = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "8", "--temp", "0", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.out().startsWith("Hello"), r.out());
        assertTrue(r.err().contains("tokens/s"), r.err());
        assertTrue(r.err().contains("backend: CPU"), r.err());
        // greedy is deterministic
        assertEquals(r.out(), run("generate", "-m", model.toString(), "-p", "Hello", "-n", "8", "--temp", "0", "--device", "cpu").out());
    }

    /** Scripted turns (-p repeated), a file of messages, stdin with /reset, and the errors of chat. */
    @Test
    void chatRepliesTurnByTurn() throws Exception {
        Run r = run("chat", "-m", model.toString(), "--chat-template", "chatml", "-sys", "Be brief.", "-p", "Hello",
                "-p", "And then?", "-n", "5", "--temp", "0", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.err().contains("chat format chatml"), r.err());
        assertTrue(r.err().contains("[turn 1:") && r.err().contains("[turn 2:"), r.err());
        assertTrue(r.out().endsWith("\n\n"), "a reply ends with a blank line: " + r.out());

        Path msgs = tmp.resolve("messages.txt");
        Files.writeString(msgs, "Hello\n\nAnd then?\n");
        Run f = run("chat", "-m", model.toString(), "--chat-template", "chatml", "-sys", "Be brief.", "-f", msgs.toString(),
                "-n", "5", "--temp", "0", "--device", "cpu");
        assertEquals(ExitCodes.OK, f.code(), f.err());
        assertEquals(r.out(), f.out(), "the same conversation from a file (blank lines skipped)");

        java.io.InputStream in0 = ChatCommand.stdin;
        try {
            ChatCommand.stdin = new java.io.ByteArrayInputStream("Hello\n/reset\nHello\n/exit\nnot read\n".getBytes(
                    java.nio.charset.StandardCharsets.UTF_8));
            Run s = run("chat", "-m", model.toString(), "--chat-template", "chatml", "-sys", "Be brief.", "-n", "5",
                    "--temp", "0", "--device", "cpu");
            assertEquals(ExitCodes.OK, s.code(), s.err());
            assertTrue(s.err().contains("(conversation reset)"), s.err());
            Run one = run("chat", "-m", model.toString(), "--chat-template", "chatml", "-sys", "Be brief.", "-p", "Hello",
                    "-n", "5", "--temp", "0", "--device", "cpu");
            assertEquals(one.out() + one.out(), s.out(), "after /reset the same message gets the same greedy reply");
            assertTrue(r.out().startsWith(one.out()), "the same as the scripted first turn");
        } finally {
            ChatCommand.stdin = in0;
        }

        Run noTemplate = run("chat", "-m", model.toString(), "-p", "Hello", "--device", "cpu");
        assertEquals(ExitCodes.MODEL, noTemplate.code(), noTemplate.err());
        assertTrue(noTemplate.err().contains("--chat-template"), noTemplate.err());
        Run badName = run("chat", "-m", model.toString(), "-p", "Hello", "--chat-template", "vicuna");
        assertEquals(ExitCodes.USAGE, badName.code(), badName.err());
        assertTrue(badName.err().contains("llama3, chatml, llama2, mistral"), badName.err());
        assertEquals(ExitCodes.USAGE, run("chat", "-m", model.toString(), "-p", "a", "-f", msgs.toString()).code());
        Run json = run("chat", "-m", model.toString(), "--chat-template", "chatml", "-p", "Hello", "-n", "12", "--format",
                "json", "--device", "cpu");
        assertEquals(ExitCodes.OK, json.code(), json.err());
        assertTrue(new dev.tokenpress.sample.JsonPrefix(false).feed(json.out().strip()), json.out());
    }

    @Test
    void stopStringsEndTheText() throws Exception {
        Path tiny = Path.of("models", "tokenpress-tiny");
        Assumptions.assumeTrue(Files.isRegularFile(tiny.resolve("model.safetensors")), "no embedded model");
        Run full = run("generate", "-m", tiny.toString(), "-p", "import os\n", "-n", "40", "--temp", "0", "--device", "cpu");
        String text = full.out().substring("import os\n".length());
        assertTrue(text.length() > 12, full.out());
        String stop = text.substring(8, 11);
        String want = "import os\n" + text.substring(0, text.indexOf(stop));
        Run cut = run("generate", "-m", tiny.toString(), "-p", "import os\n", "-n", "40", "--temp", "0", "--device", "cpu",
                "--stop", "never-there", "--stop", stop);
        assertEquals(ExitCodes.OK, cut.code(), cut.err());
        assertEquals(want + "\n", cut.out());
        assertTrue(cut.err().contains("stop: stop"), cut.err());
        Run j = run("generate", "-m", tiny.toString(), "-p", "import os\n", "-n", "40", "--temp", "0", "--device", "cpu",
                "--stop", stop, "--json");
        JsonNode o = new ObjectMapper().readTree(j.out());
        assertEquals(want.substring("import os\n".length()), o.get("text").asText());
        assertEquals("stop", o.get("stop_reason").asText());
    }

    @Test
    void formatJsonKeepsTheOutputJson() throws Exception {
        for (String seed : new String[] {"1", "2", "3"}) {
            Run r = run("generate", "-m", model.toString(), "-p", "x = ", "-n", "30", "--format", "json-object", "--seed", seed,
                    "--json", "--device", "cpu");
            assertEquals(ExitCodes.OK, r.code(), r.err());
            JsonNode o = new ObjectMapper().readTree(r.out());
            String text = o.get("text").asText();
            assertTrue(new dev.tokenpress.sample.JsonPrefix(true).feed(text), text);
            if (o.get("stop_reason").asText().equals("eos")) assertTrue(new ObjectMapper().readTree(text).isObject(), text);
        }
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--format", "yaml").code());
    }

    @Test
    void needleReportsEveryPolicyAgainstTheFullCache() throws Exception {
        Path tiny = Path.of("models", "tokenpress-tiny");
        Assumptions.assumeTrue(Files.isRegularFile(tiny.resolve("model.safetensors")), "no embedded model");
        Run r = run("needle", "-m", tiny.toString(), "-f", "tests/resources/eval/sample.py", "-c", "200", "--trials", "1",
                "--depths", "0.3,0.7", "--kv", "window:sink=4,budget=32", "--json", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode o = new ObjectMapper().readTree(r.out());
        assertEquals(2, o.get("results").size(), "full is added as the reference");
        assertEquals("full", o.at("/results/0/kv").asText());
        assertEquals(0.0, o.at("/results/0/delta_nll").asDouble(), 1e-12);
        assertEquals(2, o.at("/results/1/by_depth").size());
        assertTrue(o.at("/results/1/kv").asText().startsWith("window"));
        Run table = run("needle", "-m", tiny.toString(), "-f", "tests/resources/eval/sample.py", "-c", "200", "--trials", "1",
                "--depths", "0.5", "--kv", "full", "--device", "cpu");
        assertTrue(table.out().contains("| full |"), table.out());
        assertEquals(ExitCodes.USAGE, run("needle", "-m", tiny.toString(), "-f", "tests/resources/eval/sample.py", "--depths", "2").code());
    }

    @Test
    void lookupDecodingKeepsTheGreedyText() throws Exception {
        Run plain = run("generate", "-m", model.toString(), "-p", "a b a b a b", "-n", "12", "--temp", "0", "--device", "cpu");
        Run look = run("generate", "-m", model.toString(), "-p", "a b a b a b", "-n", "12", "--temp", "0", "--device", "cpu",
                "--lookup", "4");
        assertEquals(ExitCodes.OK, look.code(), look.err());
        assertEquals(plain.out(), look.out());
        assertTrue(look.err().contains("drafted tokens accepted"), look.err());
        Run j = run("generate", "-m", model.toString(), "-p", "a b a b a b", "-n", "12", "--temp", "0", "--device", "cpu",
                "--lookup", "4", "--json");
        JsonNode o = new ObjectMapper().readTree(j.out());
        assertTrue(o.get("lookup_accepted").asLong() <= o.get("lookup_drafted").asLong(), j.out());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--lookup", "-1").code());
    }

    /** -md / --draft-layers: the same text as plain decoding (sampled too), figures in --json, one-line errors. */
    @Test
    void speculativeDecodingKeepsTheText() throws Exception {
        String[] base = {"generate", "-m", model.toString(), "-p", "a b a b a b", "-n", "14", "--temp", "0.8", "--seed", "4",
                "--device", "cpu"};
        Run plain = run(base);
        Run self = run(concat(base, "--draft-layers", "1", "--draft-max", "3", "--draft-p-min", "0"));
        assertEquals(ExitCodes.OK, self.code(), self.err());
        assertEquals(plain.out(), self.out());
        assertTrue(self.err().contains("draft: the model's first 1 of 2 layers"), self.err());
        assertTrue(self.err().contains("drafted tokens accepted"), self.err());
        Run md = run(concat(base, "-md", model.toString(), "--json"));
        assertEquals(ExitCodes.OK, md.code(), md.err());
        JsonNode o = new ObjectMapper().readTree(md.out());
        assertEquals(new ObjectMapper().readTree(run(concat(base, "--json")).out()).get("text"), o.get("text"));
        assertTrue(o.get("draft_accepted").asLong() <= o.get("draft_drafted").asLong(), md.out());
        assertTrue(o.get("draft_kv_bytes").asLong() > 0, md.out());

        Path other = tmp.resolve("other-tokenizer");
        assertEquals(ExitCodes.OK, run("make-model", "--preset", "small", "-o", other.toString()).code());
        Run bad = run(concat(base, "-md", other.toString()));
        assertEquals(ExitCodes.MODEL, bad.code(), bad.err());
        assertTrue(bad.err().contains("same tokenizer") || bad.err().contains("vocabulary"), bad.err());
        assertEquals(ExitCodes.USAGE, run(concat(base, "--draft-layers", "2")).code(), "the draft must be smaller");
        assertEquals(ExitCodes.USAGE, run(concat(base, "--draft-layers", "1", "--lookup", "3")).code());
        assertEquals(ExitCodes.USAGE, run(concat(base, "--draft-layers", "1", "-md", model.toString())).code());
        assertEquals(ExitCodes.USAGE, run(concat(base, "-md", tmp.resolve("nope").toString())).code());
        assertEquals(ExitCodes.USAGE, run(concat(base, "--draft-layers", "1", "--draft-p-min", "2")).code());
    }

    /** -wt q8_0: weights quantized at load (a matrix of partial blocks stays bf16), stated on stderr; bad types refused. */
    @Test
    void q8WeightsLoadAndGenerate() throws Exception {
        Run r = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--temp", "0", "--device", "cpu", "-wt", "q8_0");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.err().contains("weights: q8_0"), r.err());
        assertTrue(r.out().startsWith("Hello"), r.out());
        Run j = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "2", "--device", "cpu", "-wt", "q4_0", "--json");
        assertEquals("q4_0", new ObjectMapper().readTree(j.out()).get("weight_type").asText(), j.out());
        Run bench = run("bench", "-m", model.toString(), "-p", "0", "-n", "4", "-r", "1", "--device", "cpu",
                "--weight-type", "q8_0", "--bandwidth-mib", "8");
        assertEquals(ExitCodes.OK, bench.code(), bench.err());
        assertTrue(bench.out().contains("tg4"), bench.out());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "-wt", "q4").code());
    }

    /** --grammar / -j / -jf constrain the text; conflicts, missing files and bad grammars are usage errors. */
    @Test
    void grammarAndSchemaOptions() throws Exception {
        Run g = run("generate", "-m", model.toString(), "-p", "", "-n", "10", "--device", "cpu", "--seed", "2",
                "--grammar", "root ::= \"(\" [a-z]{1,3} \")\"", "--json");
        assertEquals(ExitCodes.OK, g.code(), g.err());
        assertTrue(new ObjectMapper().readTree(g.out()).get("text").asText().matches("\\([a-z]{1,3}\\)"), g.out());
        Path schema = tmp.resolve("schema.json");
        Files.writeString(schema, "{\"enum\": [\"yes\", \"no\"]}");
        Run j = run("generate", "-m", model.toString(), "-p", "", "-n", "10", "--device", "cpu", "-jf", schema.toString(), "--json");
        assertEquals(ExitCodes.OK, j.code(), j.err());
        String text = new ObjectMapper().readTree(j.out()).get("text").asText().strip();
        assertTrue(text.equals("\"yes\"") || text.equals("\"no\""), j.out());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "--grammar", "root ::= x").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "-j", "{\"type\": \"date\"}").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "-jf", tmp.resolve("none.json").toString()).code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "--grammar", "root ::= \"a\"",
                "-j", "{}").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "-j", "{}", "--format", "json").code());
    }

    @Test
    void logitBiasAndIgnoreEos() throws Exception {
        Run r = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--temp", "0", "--device", "cpu",
                "-l", "7+1000", "--logit-bias", "3-inf", "--ignore-eos", "--json");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode o = new ObjectMapper().readTree(r.out());
        assertEquals("length", o.get("stop_reason").asText());
        assertEquals(6, o.get("generated_tokens").asInt());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "-l", "7*2").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "-l", "99999+1", "--device", "cpu").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "-n", "2", "--ignore-eos", "--format", "json").code());
    }

    @Test
    void entropyAdaptiveDecoding() throws Exception {
        Run r = run("generate", "-m", model.toString(), "--ead-model", model.toString(), "--ead-threshold", "-1",
                "-p", "Hello", "-n", "6", "--temp", "0", "--device", "cpu", "--json");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode o = new ObjectMapper().readTree(r.out());
        assertEquals(0, o.get("ead_small_tokens").asInt(), "below every entropy: always the model");
        assertEquals(new ObjectMapper().readTree(run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--temp", "0",
                "--device", "cpu", "--json").out()).get("text"), o.get("text"));
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--ead-model", model.toString(), "--lookup", "2").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--ead-model", tmp.resolve("none").toString()).code());
    }

    /**
     * --superposed K prints K drafts, best first; one draft without a corpus is greedy decoding (the same text as
     * --temp 0); conflicting options are usage errors.
     */
    @Test
    void superposedDecodingPrintsItsDrafts() throws Exception {
        Path corpus = tmp.resolve("corpus.txt");
        Files.writeString(corpus, "Hello there. Hello world. Hello again, world.\n");
        Run r = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--superposed", "3", "--superposed-corpus",
                corpus.toString(), "--device", "cpu", "--json");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode o = new ObjectMapper().readTree(r.out());
        assertEquals(3, o.get("drafts").size());
        for (int i = 1; i < 3; i++)
            assertTrue(o.get("drafts").get(i).get("score_per_token").asDouble() <= o.get("drafts").get(i - 1).get("score_per_token").asDouble(),
                    "best first");
        Run one = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--superposed", "1", "--device", "cpu", "--json");
        assertEquals(ExitCodes.OK, one.code(), one.err());
        assertEquals(new ObjectMapper().readTree(run("generate", "-m", model.toString(), "-p", "Hello", "-n", "6", "--temp", "0",
                "--ignore-eos", "--device", "cpu", "--json").out()).get("text").asText(),
                new ObjectMapper().readTree(one.out()).get("drafts").get(0).get("text").asText(), "one draft is greedy");
        Run text = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "4", "--superposed", "2", "--device", "cpu");
        assertEquals(ExitCodes.OK, text.code(), text.err());
        assertTrue(text.out().contains("draft 0 (") && text.out().contains("draft 1 ("), text.out());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--superposed", "2", "--lookup", "2").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--superposed", "3", "--superposed-top", "4").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--superposed", "2", "--superposed-corpus",
                tmp.resolve("none.txt").toString()).code());
    }

    /** --skip-decode MAX:MIN: every layer is plain greedy decoding; fewer layers run; bad values are usage errors. */
    @Test
    void skipDecodeRunsTheTopLayers() throws Exception {
        String greedy = new ObjectMapper().readTree(run("generate", "-m", model.toString(), "-p", "Hello", "-n", "8", "--temp", "0",
                "--device", "cpu", "--json").out()).get("text").asText();
        Run all = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "8", "--temp", "0", "--skip-decode", "2:2",
                "--device", "cpu", "--json");
        assertEquals(ExitCodes.OK, all.code(), all.err());
        JsonNode o = new ObjectMapper().readTree(all.out());
        assertEquals(greedy, o.get("text").asText(), "every layer: greedy decoding");
        assertEquals(2.0, o.get("mean_layers").asDouble());
        Run fewer = run("generate", "-m", model.toString(), "-p", "Hello", "-n", "8", "--temp", "0", "--skip-decode", "2:1",
                "--device", "cpu", "--json");
        assertEquals(ExitCodes.OK, fewer.code(), fewer.err());
        assertTrue(new ObjectMapper().readTree(fewer.out()).get("mean_layers").asDouble() < 2);
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--skip-decode", "3:1").code(), "more layers than the model's");
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--skip-decode", "1:2").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--skip-decode", "x").code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--skip-decode", "2:1", "--kv", "window:sink=2,budget=8").code());
    }

    private static String[] concat(String[] a, String... b) {
        String[] c = java.util.Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, c, a.length, b.length);
        return c;
    }

    @Test
    void generateJsonIsOneObject() throws Exception {
        Run r = run("generate", "-m", model.toString(), "-p", "abc", "-n", "5", "--json", "--seed", "7");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        JsonNode j = new ObjectMapper().readTree(r.out());
        assertEquals(5, j.get("generated_tokens").asInt() + (j.get("stop_reason").asText().equals("eos") ? 5 - j.get("generated_tokens").asInt() : 0));
        assertTrue(j.get("kv_bytes").asLong() > 0);
        assertTrue(j.has("decode_tokens_per_s") && j.has("ttft_ms") && j.has("prompt_tokens_per_s"));
        assertEquals(7, j.get("seed").asLong());
    }

    @Test
    void infoDescribesTheModel() {
        Run r = run("info", "-m", model.toString());
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.out().contains("LlamaForCausalLM"));
        assertTrue(r.out().contains("KV bytes/token"));
        assertTrue(r.out().contains("decode weights") && r.out().contains("q8_0"), r.out());
        // tiny preset: 2 layers, D 64, F 172, 4 heads of 16, 2 KV heads, vocab 512
        long params = 2L * (2L * 64 * 64 + 2L * 64 * 32 + 3L * 64 * 172) + 512L * 64;
        long[] wb = InfoCommand.decodeWeightBytes(dev.tokenpress.io.ConfigLoader.load(model));
        assertArrayEquals(new long[] {2 * params, params / 32 * 36, params / 32 * 20}, wb);
    }

    @Test
    void usageErrorsExitWith2() {
        assertEquals(ExitCodes.USAGE, run("generate", "--no-such-flag").code());
        assertEquals(ExitCodes.USAGE, run("make-model", "--preset", "huge", "-o", tmp.resolve("x").toString()).code());
        assertEquals(ExitCodes.USAGE, run("generate", "-m", model.toString(), "--top-p", "1.5").code());
        Run r = run("generate", "-m", model.toString(), "-p", "a", "-f", "b");
        assertEquals(ExitCodes.USAGE, r.code());
    }

    @Test
    void modelErrorsExitWith3InOneLine() throws Exception {
        Run r = run("generate", "-m", tmp.resolve("missing").toString(), "-p", "x");
        assertEquals(ExitCodes.MODEL, r.code());
        assertEquals(1, r.err().strip().lines().filter(l -> l.startsWith("error:")).count(), r.err());
        assertFalse(r.err().contains("\tat "), "no stack trace without --verbose");
        Path broken = tmp.resolve("broken");
        Files.createDirectories(broken);
        for (String f : new String[]{"config.json", "tokenizer.json"}) Files.copy(model.resolve(f), broken.resolve(f));
        Files.write(broken.resolve("model.safetensors"), new byte[]{1, 2, 3});
        Run b = run("info", "-m", broken.toString());
        assertEquals(ExitCodes.MODEL, b.code(), b.err());
        assertTrue(b.err().contains("model.safetensors"), b.err());
        Run v = run("info", "-m", broken.toString(), "--verbose");
        assertTrue(v.err().contains("\tat "), "--verbose adds the stack trace");
    }

    @Test
    void cudaWithoutAGpuExitsWith4() {
        org.junit.jupiter.api.Assumptions.assumeFalse(cudaUsable(), "a GPU is present");
        Run r = run("generate", "-m", model.toString(), "-p", "x", "-n", "1", "--device", "cuda");
        assertEquals(ExitCodes.DEVICE, r.code(), r.err());
        assertTrue(r.err().startsWith("error:"), r.err());
    }

    @Test
    void runtimeFailuresExitWith1() {
        // a prompt longer than the context the user asked for
        Run r = run("generate", "-m", model.toString(), "-p", "a b c d e f g h", "-c", "2", "-n", "1", "--device", "cpu");
        assertEquals(ExitCodes.RUNTIME, r.code(), r.err());
        assertTrue(r.err().contains("-c"), r.err());
    }

    static boolean cudaUsable() {
        try {
            dev.tokenpress.backend.Backends.openCuda().close();
            return true;
        } catch (RuntimeException e) {
            return false;
        }
    }

    @Test
    void benchPrintsRooflineTable() {
        Run r = run("bench", "-m", model.toString(), "-p", "8", "-n", "4", "-r", "1", "--bandwidth-mib", "64", "--device", "cpu");
        assertEquals(ExitCodes.OK, r.code(), r.err());
        assertTrue(r.out().contains("| pp8 |"), r.out());
        assertTrue(r.out().contains("| tg4 |"), r.out());
        assertTrue(r.out().contains("% of roofline"), r.out());
    }

    @Test
    void makeModelWritesTheHfLayout() {
        for (String f : new String[]{"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"})
            assertTrue(Files.isRegularFile(model.resolve(f)), f);
        assertEquals(0, ModelWriter.Preset.TINY.ordinal());
    }
}
