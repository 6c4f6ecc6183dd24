package dev.tokenpress.cli;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import dev.tokenpress.api.Embeddings;
import dev.tokenpress.api.TokenPress;
import picocli.CommandLine.Command;
import picocli.CommandLine.Mixin;
import picocli.CommandLine.Option;
import picocli.CommandLine.Spec;
import picocli.CommandLine.Model.CommandSpec;

import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.Callable;

/** {@code tokenpress embed}: text embeddings from the model's final hidden states, one JSON line per text. */
@Command(name = "embed", mixinStandardHelpOptions = true,
        description = "Embed texts: the final hidden states pooled (last token or mean), L2-normalized; one JSON object per line.")
public final class EmbedCommand implements Callable<Integer> {
    @Spec
    CommandSpec spec;

    @Mixin
    ModelOptions modelOptions;

    @Option(names = {"-p", "--prompt"}, paramLabel = "TEXT", description = "A text to embed (repeatable).")
    List<String> prompts;

    @Option(names = {"-f", "--file"}, paramLabel = "FILE", description = "Embed every non-empty line of a file.")
    Path file;

    @Option(names = "--pooling", paramLabel = "last|mean", defaultValue = "last",
            description = "How the token states are pooled (default: ${DEFAULT-VALUE}).")
    String pooling;

    @Option(names = "--no-normalize", description = "Leave the pooled vector as it is (no L2 normalization).")
    boolean noNormalize;

    @Override
    public Integer call() throws Exception {
        PrintWriter out = spec.commandLine().getOut(), err = spec.commandLine().getErr();
        Embeddings.Pooling pool;
        try {
            pool = Embeddings.Pooling.parse(pooling);
        } catch (IllegalArgumentException e) {
            throw new Main.UsageException("--" + e.getMessage());
        }
        List<String> texts = new ArrayList<>();
        if (prompts != null) texts.addAll(prompts);
        if (file != null) {
            if (!Files.isRegularFile(file)) throw new Main.UsageException("file not found: " + file);
            for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) if (!line.isBlank()) texts.add(line);
        }
        if (texts.isEmpty()) throw new Main.UsageException("nothing to embed: give -p TEXT or -f FILE");
        Path dir = modelOptions.resolveModel(err);
        ObjectMapper om = new ObjectMapper();
        try (TokenPress tp = TokenPress.load(dir, modelOptions.toLoadOptions(err)); Embeddings e = new Embeddings(tp)) {
            long t0 = System.nanoTime();
            int tokens = 0;
            for (String t : texts) {
                int[] ids = tp.tokenizer().encode(t);
                if (ids.length == 0) throw new Main.UsageException("a text has no tokens: " + t);
                float[] v = e.embed(ids, pool, !noNormalize);
                tokens += ids.length;
                ObjectNode o = om.createObjectNode();
                o.put("text", t);
                o.put("tokens", ids.length);
                ArrayNode a = o.putArray("embedding");
                for (float x : v) a.add(x);
                out.println(om.writeValueAsString(o));
            }
            out.flush();
            double sec = (System.nanoTime() - t0) / 1e9;
            err.printf(Locale.ROOT, "embedded %d texts (%d tokens, %s pooling, dimension %d) in %.2f s, %.1f tokens/s%n", texts.size(),
                    tokens, pool.name().toLowerCase(Locale.ROOT), tp.config().hiddenSize(), sec, tokens / sec);
        }
        return ExitCodes.OK;
    }
}
